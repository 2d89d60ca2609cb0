"""Certificate credentials end to end: MailOAuthAccount client-cert= makes
the worker and ftpmailoauth prove the app with a client assertion JWT
(PS256, x5t#S256) instead of a client secret.  The token stand-in checks
each assertion as Entra ID does (signature by a registered certificate,
aud, iss/sub, nbf/exp, jti replay); the mail goes through the real Postfix
into Dovecot."""

import base64
import datetime
import hashlib
import json
import os
import re
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from test_accounts import ALICE, wait_for
from test_foundation import curl_upload
from test_signin import (  # noqa: F401  (fixtures)
    Tool, tool, env, web_app, start_signin)

ACCOUNT = "notify"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# base64url of '{"alg":"PS256",' : the start of every assertion we make.
ASSERTION_START = "eyJhbGciOiJQUzI1NiIs"


@pytest.fixture(scope="module")
def mail_users():
    # Any address is a mailbox: each test uses recipients of its own.
    return []


def make_cert(directory, name, days=365, combined=True):
    """An RSA key and self-signed certificate made with openssl, as the
    documentation says; returns (key_file, cert_file, cert_pem)."""
    key = os.path.join(directory, name + ".key")
    crt = os.path.join(directory, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048",
                    "-nodes", "-keyout", key, "-out", crt, "-days", str(days),
                    "-subj", "/CN=%s" % name], check=True,
                   capture_output=True)
    with open(crt) as f:
        pem = f.read()
    if combined:
        with open(key, "a") as f:
            f.write(pem)
    os.chmod(key, 0o600)
    return key, crt, pem


def account_line(svc, app, key, pki, grant="app-only", extra=""):
    return ("MailOAuthAccount %s authority=%s tenant=contoso.test "
            "client-id=%s client-cert=file:%s mailbox=%s ca-file=%s "
            "proxy=none grant=%s %s"
            % (ACCOUNT, svc.url, app["client_id"], key, ALICE, pki.ca_cert,
               grant, extra))


def token_log(svc, grant_type):
    return [e for e in svc.stats()["log"]
            if e.get("grant_type") == grant_type]


def no_secret_in_logs(srv, key_file):
    with open(key_file) as f:
        key_lines = [line for line in f.read().splitlines()
                     if line and not line.startswith("-----")]
    for path in (srv.log, srv.tracelog, srv.syslog, srv.stderr_path):
        text = srv.read(path)
        assert ASSERTION_START not in text, "an assertion in %s" % path
        for line in key_lines[:3]:
            assert line not in text, "key material in %s" % path


def rcpt(tag):
    return "%s-%s@contoso.test" % (tag, uuid.uuid4().hex[:8])


# -- the module ---------------------------------------------------------------

def test_app_only_certificate_sends_a_notification(make_proftpd, tokensvc,
                                                   pki, postfix, dovecot):
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    key, _, pem = make_cert(srv.dir, "notify")
    app = tokensvc.add_app(secret=False, app_only=True,
                           app_only_mailbox=ALICE, certificates=[pem])
    to = rcpt("ops")
    srv.extra_conf = account_line(
        tokensvc, app, key, pki,
        extra="smtp=smtp://127.0.0.1:%d" % postfix.smtp_port)
    srv.global_conf += ("\n<Global>\nMailOAuthNotify notify to=%s "
                        "\"subject=New file %%{basename}\"\n</Global>\n" % to)
    srv.start()
    curl_upload(srv, "ftp", "cert-report.bin", os.urandom(2000), pki=pki)
    raw = dovecot.wait_for_messages(to, 1, timeout=30)[0]
    assert b"Subject: New file cert-report.bin" in raw

    cc = token_log(tokensvc, "client_credentials")
    assert cc and all(e["client_auth"] == "assertion" for e in cc)
    assert str(cc[0]["outcome"]).startswith("ok")
    seen = tokensvc.stats()["assertions"][0]
    assert seen["header"]["alg"] == "PS256"
    der = subprocess.run(["openssl", "x509", "-outform", "DER"], input=pem
                         .encode(), capture_output=True, check=True).stdout
    assert seen["header"]["x5t#S256"] == base64.urlsafe_b64encode(
        hashlib.sha256(der).digest()).rstrip(b"=").decode()
    claims = seen["claims"]
    assert claims["aud"] == "%s/contoso.test/oauth2/v2.0/token" % tokensvc.url
    assert claims["iss"] == claims["sub"] == app["client_id"]
    assert claims["exp"] - claims["nbf"] == 600
    srv.stop()
    no_secret_in_logs(srv, key)


def test_worker_start_warns_of_an_expiring_certificate(make_proftpd,
                                                      tokensvc, pki):
    """Operators read MailOAuthLog, not only ftpmailoauth status: a
    certificate (or declared secret) ending within 30 days is said there
    at every worker start, with its thumbprint."""
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    key, _, pem = make_cert(srv.dir, "notify", days=10)
    app = tokensvc.add_app(secret=False, app_only=True,
                           app_only_mailbox=ALICE, certificates=[pem])
    srv.extra_conf = account_line(tokensvc, app, key, pki)
    srv.start()
    text = srv.wait_log("expires on", timeout=15)
    thumb = app["certificates"][0]["thumbprint"]
    assert re.search(r"account notify: its certificate \(thumbprint %s\) "
                     r"expires on \d{4}-\d\d-\d\d, in (9|10) days" % thumb,
                     text), text
    srv.stop()

    # A fresh certificate and no declared secret expiry: nothing said.
    srv2 = make_proftpd()
    os.makedirs(srv2.dir, exist_ok=True)
    key2, _, pem2 = make_cert(srv2.dir, "fresh", days=365)
    app2 = tokensvc.add_app(secret=False, app_only=True,
                            app_only_mailbox=ALICE, certificates=[pem2])
    srv2.extra_conf = account_line(tokensvc, app2, key2, pki)
    srv2.start()
    srv2.wait_log("token ready", timeout=15)
    assert "expire" not in srv2.log_text()


def test_unregistered_key_is_logged_plainly(make_proftpd, tokensvc, pki):
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    _, _, registered = make_cert(srv.dir, "uploaded")
    key, _, _ = make_cert(srv.dir, "other")
    app = tokensvc.add_app(secret=False, app_only=True,
                           app_only_mailbox=ALICE, certificates=[registered])
    srv.extra_conf = account_line(tokensvc, app, key, pki)
    srv.start()
    text = srv.wait_log("AADSTS700027", timeout=20)
    assert "fix the configuration" in text or "configuration" in text
    assert "Certificates & secrets" in text
    assert "ftpmailoauth cert" in text
    srv.stop()
    no_secret_in_logs(srv, key)


def test_key_file_readable_by_others_fails_syntax_check(make_proftpd,
                                                        tokensvc, pki):
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    key, _, pem = make_cert(srv.dir, "notify")
    app = tokensvc.add_app(secret=False, app_only=True, certificates=[pem])
    srv.extra_conf = account_line(tokensvc, app, key, pki)
    srv._prepare()
    assert srv.syntax_check().returncode == 0
    os.chmod(key, 0o644)
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "MailOAuthAccount: account 'notify'" in res.stderr
    assert "on line" in res.stderr and srv.conf in res.stderr
    assert "private key file '%s' is readable by others" % key in res.stderr
    assert "chmod 0600 '%s'" % key in res.stderr
    assert "PRIVATE KEY" not in res.stderr


def test_secret_and_certificate_exclude_each_other(make_proftpd, tokensvc,
                                                   pki):
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    key, _, pem = make_cert(srv.dir, "notify")
    app = tokensvc.add_app(app_only=True, certificates=[pem])
    srv.extra_conf = account_line(tokensvc, app, key, pki,
                                  extra="client-secret=env:NOPE")
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "client-secret= and client-cert= exclude each other" in res.stderr


def test_delegated_refresh_with_certificate(make_proftpd, tokensvc, pki,
                                            dovecot):
    from signin import sign_in, write_token_file
    from test_tokensvc import REDIRECT
    srv = make_proftpd()
    os.makedirs(srv.dir, exist_ok=True)
    key, _, pem = make_cert(srv.dir, "notify")
    # The seed signs in with a secret; the worker refreshes with the key.
    app = tokensvc.add_app(redirect_uris=[REDIRECT], certificates=[pem])
    tokensvc.add_user(ALICE, display_name="Alice Example")
    srv.extra_conf = account_line(tokensvc, app, key, pki,
                                  grant="delegated",
                                  extra="redirect-uri=%s" % REDIRECT)
    token_file = os.path.join(srv.state_dir, "tokens", ACCOUNT + ".json")
    toks = sign_in(tokensvc, app, ALICE, REDIRECT)
    write_token_file(token_file, ACCOUNT, ALICE, toks, 65534, expired=True)
    srv.start()
    ok = wait_for(lambda: [e for e in token_log(tokensvc, "refresh_token")
                           if str(e["outcome"]).startswith("ok")],
                  timeout=20, what="a refresh")
    assert ok[0]["client_auth"] == "assertion"
    srv.stop()
    no_secret_in_logs(srv, key)


# -- ftpmailoauth -------------------------------------------------------------

def add_cert_account(env, name, app, key, grant="delegated", redirect=None,
                     extra=()):
    words = ["authority=%s" % env.svc.url, "tenant=contoso.test",
             "client-id=%s" % app["client_id"], "client-cert=file:%s" % key,
             "mailbox=%s" % ALICE, "grant=%s" % grant,
             "ca-file=%s" % env.pki.ca_cert, "proxy=none"] + list(extra)
    if redirect:
        words.append("redirect-uri=%s" % redirect)
    with open(os.path.join(env.dir, "accounts.d", name + ".conf"), "w") as f:
        f.write("MailOAuthAccount %s %s\n" % (name, " ".join(words)))
    env.accounts[name] = {"app": app, "mailbox": ALICE}
    env.write_conf()


def test_delegated_browser_signin_with_certificate(env):
    key, _, pem = make_cert(env.dir, "notify")
    app, redirect = web_app(env.svc)
    env.svc.update_app(app["client_id"], certificates=[pem],
                       remove_secrets=True)
    add_cert_account(env, "notify", app, key, redirect=redirect)
    proc, url = start_signin(env, "notify")
    res = env.svc.sign_in(url, user=ALICE, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    assert env.tokens("notify")["refresh_token"]
    code = token_log(env.svc, "authorization_code")
    assert code[0]["client_auth"] == "assertion"
    assert str(code[0]["outcome"]).startswith("ok")
    assert ASSERTION_START not in out


def test_cert_command_prints_the_thumbprint_openssl_shows(env):
    key, crt, pem = make_cert(env.dir, "notify")
    app = env.svc.add_app(secret=False, app_only=True, certificates=[pem])
    add_cert_account(env, "notify", app, key, grant="app-only")
    rc, out = env.run("cert", "notify")
    assert rc == 0, out
    fp = subprocess.run(["openssl", "x509", "-in", crt, "-noout",
                         "-fingerprint", "-sha1"], capture_output=True,
                        text=True, check=True).stdout
    sha1 = fp.strip().split("=", 1)[1].replace(":", "")
    assert "thumbprint (SHA-1): %s" % sha1 in out
    assert sha1 == app["certificates"][0]["thumbprint"]
    fp256 = subprocess.run(["openssl", "x509", "-in", crt, "-noout",
                            "-fingerprint", "-sha256"], capture_output=True,
                           text=True, check=True).stdout
    assert fp256.strip().split("=", 1)[1].replace(":", "") in out
    assert "subject:            CN=notify" in out
    # The key shares the file: the tool says how to upload the certificate
    # alone.
    assert "openssl x509 -in %s -out notify.crt" % key in out
    assert "PRIVATE KEY" not in out


def test_status_warns_of_an_expiring_certificate(env):
    key, _, pem = make_cert(env.dir, "notify", days=10)
    app = env.svc.add_app(secret=False, app_only=True, certificates=[pem])
    add_cert_account(env, "notify", app, key, grant="app-only")
    rc, out = env.run("status", "notify")
    assert rc == 1, out
    assert re.search(r"WARNING: the certificate expires in (9|10) days", out), \
        out
    assert "thumbprint %s" % app["certificates"][0]["thumbprint"] in out

    key2, _, pem2 = make_cert(env.dir, "fresh", days=365)
    app2 = env.svc.add_app(secret=False, app_only=True, certificates=[pem2])
    add_cert_account(env, "notify", app2, key2, grant="app-only")
    rc, out = env.run("status", "notify")
    assert rc == 0, out
    assert "WARNING" not in out and "cert expiry:" in out


def test_status_shows_a_declared_secret_expiry(env):
    app = env.svc.add_app(app_only=True)
    soon = (datetime.datetime.utcnow() + datetime.timedelta(days=5)).strftime(
        "%Y-%m-%d")
    env.add_account("notify", app, grant="app-only",
                    extra=("secret-expires=%s" % soon,))
    rc, out = env.run("status", "notify")
    assert rc == 1, out
    assert "client secret: expires %s" % soon in out
    assert re.search(r"WARNING: the client secret expires in [45] days", out)

    env.add_account("notify", app, grant="app-only",
                    extra=("secret-expires=2020-01-31",))
    rc, out = env.run("status", "notify")
    assert "ERROR: the client secret expired on 2020-01-31" in out


def test_device_code_refused_says_use_the_browser(env):
    env.svc.set_config(device_interval=1)
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    port = urllib.parse.urlsplit(redirect).port
    env.svc.inject("error", endpoint="token", grant_type=DEVICE_GRANT,
                   status=400, error="invalid_grant", code=53003,
                   description="Access has been blocked by Conditional "
                   "Access policies. The access policy does not allow token "
                   "issuance.")
    proc = env.start("signin", "--device", "notify")
    proc.wait_for(r"^User code: (\S+)$")
    rc, out = proc.finish()
    assert rc == 1, out
    assert "does not allow device code sign-in (AADSTS53003" in out
    assert "ssh -L %d:localhost:%d " % (port, port) in out
    assert "signin notify" in out


# -- the stand-in -------------------------------------------------------------

def assertion(key_file, cert_pem, client_id, aud, now=None, jti=None,
              lifetime=600):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64u(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER)
    now = int(time.time()) if now is None else now
    head = {"alg": "PS256", "typ": "JWT",
            "x5t#S256": b64u(hashlib.sha256(der).digest())}
    body = {"aud": aud, "iss": client_id, "sub": client_id,
            "jti": jti or str(uuid.uuid4()), "nbf": now, "iat": now,
            "exp": now + lifetime}
    signed = b64u(json.dumps(head).encode()) + "." + \
        b64u(json.dumps(body).encode())
    sig = key.sign(signed.encode(), padding.PSS(
        mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
    return signed + "." + b64u(sig)


def post_token(svc, pki, form):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    req = urllib.request.Request(
        svc.token_endpoint("contoso.test"),
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_stand_in_checks_assertions_like_entra(tokensvc, pki, tmp_path):
    key, _, pem = make_cert(str(tmp_path), "app")
    other_key, _, other_pem = make_cert(str(tmp_path), "other")
    app = tokensvc.add_app(secret=False, app_only=True, certificates=[pem])
    aud = tokensvc.token_endpoint("contoso.test")

    def cc(jwt, kind=ASSERTION_TYPE):
        return post_token(tokensvc, pki, {
            "client_id": app["client_id"], "grant_type": "client_credentials",
            "scope": "https://outlook.office365.com/.default",
            "client_assertion_type": kind, "client_assertion": jwt})

    good = assertion(key, pem, app["client_id"], aud)
    status, body = cc(good)
    assert status == 200, body
    # The same assertion (same jti) again: refused.
    status, body = cc(good)
    assert (status, body["error"], body["error_codes"]) == \
        (401, "invalid_client", [700027])
    assert "already used" in body["error_description"]

    cases = [
        (assertion(other_key, other_pem, app["client_id"], aud),
         401, "invalid_client", 700027, "The key was not found"),
        (assertion(other_key, pem, app["client_id"], aud),
         401, "invalid_client", 700027, "verify the signature failed"),
        (assertion(key, pem, app["client_id"], aud,
                   now=int(time.time()) - 3600),
         401, "invalid_client", 700024, "not within its valid time range"),
        (assertion(key, pem, app["client_id"], aud.replace("contoso.test",
                                                           "common")),
         401, "invalid_client", 700023, "audience claim"),
        (assertion(key, pem, str(uuid.uuid4()), aud),
         401, "invalid_client", 700021, "doesn't match 'client_id'"),
        ("not.a.jwt", 400, "invalid_request", 50027, "invalid or malformed"),
    ]
    for jwt, want_status, error, code, text in cases:
        status, body = cc(jwt)
        assert (status, body["error"], body["error_codes"]) == \
            (want_status, error, [code]), body
        assert text in body["error_description"], body

    status, body = cc(assertion(key, pem, app["client_id"], aud),
                      kind="urn:nonsense")
    assert status == 400 and body["error_codes"] == [50027]
