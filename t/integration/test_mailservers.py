"""The mail server harness behaves like Exchange Online from a client's side.

Real Dovecot and Postfix (t/lib/mailservers.py) against a tiny HTTPS
introspection stub defined here, so these tests depend on nothing else.
"""

import base64
import imaplib
import json
import os
import re
import secrets
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir, "lib"))

from mailservers import Postfix  # noqa: E402
from mailservers_fixtures import *  # noqa: E402,F401,F403

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="Postfix instances need root")

ALICE = "alice@contoso.test"
BOB = "bob@contoso.test"


def fake_token(n=2000):
    """Opaque, JWT-looking and Microsoft-sized (1,500-2,500 chars)."""
    head = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9."
    return (head + secrets.token_urlsafe(n))[:n - 44] + "." + \
        secrets.token_urlsafe(43)[:43]


TOKENS = {fake_token(): ALICE, fake_token(): BOB}
ALICE_TOKEN = next(t for t, u in TOKENS.items() if u == ALICE)
BOB_TOKEN = next(t for t, u in TOKENS.items() if u == BOB)
BAD_TOKEN = fake_token()


class IntrospectionStub:
    """RFC 7662 introspection over HTTPS: POST token=... -> active/username."""

    def __init__(self, pki, tokens):
        stub = self
        self.tokens = tokens
        self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                token = form.get("token", [""])[0]
                stub.requests.append((self.path,
                                      self.headers.get("Content-Type"), token))
                user = stub.tokens.get(token) if self.path == "/introspect" \
                    else None
                answer = {"active": True, "username": user,
                          "scope": "https://outlook.office.com/IMAP."
                                   "AccessAsUser.All"} if user \
                    else {"active": False}
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.chain, pki.key)
        self.server.socket = ctx.wrap_socket(self.server.socket,
                                             server_side=True)
        self.url = "https://127.0.0.1:%d/introspect" % \
            self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def introspection(mail_pki):
    stub = IntrospectionStub(mail_pki, TOKENS)
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def mail_introspection_url(introspection):   # overrides the plugin default
    return introspection.url


@pytest.fixture(scope="module")
def tls(mail_pki):
    """A client context that verifies the test CA and the host name."""
    return ssl.create_default_context(cafile=mail_pki.ca_cert)


def xoauth2(user, token):
    return "user=%s\x01auth=Bearer %s\x01\x01" % (user, token)


class XOAuth2:
    """smtplib authobject: initial response, then "" to an error challenge."""

    def __init__(self, user, token):
        self.user, self.token, self.challenges = user, token, []

    def __call__(self, challenge=None):
        if challenge is None:
            return xoauth2(self.user, self.token)
        self.challenges.append(challenge)
        return ""


def imaps(dovecot, tls):
    return imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port,
                             ssl_context=tls, timeout=10)


def message(sender, to, subject, body="Hello.\n"):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    return msg


def unique(prefix):
    return "%s %s" % (prefix, secrets.token_hex(4))


# -- IMAP (outlook.office365.com:993) ----------------------------------------

def test_imaps_xoauth2_with_long_token(dovecot, tls, introspection):
    assert len(ALICE_TOKEN) == 2000
    imap = imaps(dovecot, tls)
    assert "AUTH=XOAUTH2" in imap.capabilities
    typ, _ = imap.authenticate("XOAUTH2",
                               lambda _: xoauth2(ALICE, ALICE_TOKEN))
    assert typ == "OK"
    typ, folders = imap.list()
    names = b"\n".join(folders)
    for folder in (b'"/" INBOX', b'"/" "Sent Items"', b'"/" "Deleted Items"'):
        assert folder in names
    imap.logout()
    # Dovecot asked the token service the RFC 7662 way.
    path, ctype, token = introspection.requests[-1]
    assert (path, ctype, token) == (
        "/introspect", "application/x-www-form-urlencoded", ALICE_TOKEN)


def test_imaps_wrong_token_fails_fast(dovecot, tls):
    started = time.monotonic()
    for _ in range(3):   # no penalty building up across attempts
        imap = imaps(dovecot, tls)
        challenges = []

        def answer(challenge):
            challenges.append(challenge)
            return xoauth2(ALICE, BAD_TOKEN) if len(challenges) == 1 else ""

        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.authenticate("XOAUTH2", answer)
        # The failure comes as a "+ base64(JSON)" challenge, like Exchange.
        assert json.loads(challenges[1])["status"] == "401"
    assert time.monotonic() - started < 1.5


def test_imaps_token_of_another_mailbox_fails(dovecot, tls):
    imap = imaps(dovecot, tls)
    with pytest.raises(imaplib.IMAP4.error):
        imap.authenticate("XOAUTH2", lambda c: xoauth2(ALICE, BOB_TOKEN)
                          if not c else "")
    assert dovecot.wait_for_log(
        r"Username '%s' did not match '%s'" % (ALICE, BOB))


def test_imap_starttls_listener_needs_tls_before_auth(dovecot, tls):
    # On 127.0.0.2 the client (127.0.0.1) is not "secured" by IP equality.
    imap = imaplib.IMAP4(dovecot.imap_host, dovecot.imap_port, timeout=10)
    assert "STARTTLS" in imap.capabilities
    assert "LOGINDISABLED" in imap.capabilities
    assert not [c for c in imap.capabilities if c.startswith("AUTH=")]
    imap.starttls(tls)
    assert "AUTH=XOAUTH2" in imap.capabilities
    typ, _ = imap.authenticate("XOAUTH2",
                               lambda _: xoauth2(ALICE, ALICE_TOKEN))
    assert typ == "OK"
    imap.logout()


# -- SMTP submission (smtp.office365.com:587) --------------------------------

def test_smtp_starttls_xoauth2_send_and_read_back(postfix, dovecot, tls):
    subject = unique("Upload notification")
    smtp = postfix.smtp()
    smtp.ehlo()
    assert "starttls" in smtp.esmtp_features
    assert "auth" not in smtp.esmtp_features
    smtp.starttls(context=tls)
    smtp.ehlo()
    assert "XOAUTH2" in smtp.esmtp_features["auth"].split()
    # The initial response alone is longer than Postfix's stock 2048 limit.
    assert len(base64.b64encode(xoauth2(ALICE, ALICE_TOKEN).encode())) > 2048
    code, _ = smtp.auth("XOAUTH2", XOAuth2(ALICE, ALICE_TOKEN))
    assert code == 235
    smtp.send_message(message(ALICE, BOB, subject, "A file arrived.\n"))
    smtp.quit()

    stored = dovecot.wait_for_message(BOB, subject)
    assert b"A file arrived." in stored

    imap = imaps(dovecot, tls)
    imap.authenticate("XOAUTH2", lambda _: xoauth2(BOB, BOB_TOKEN))
    imap.select("INBOX", readonly=True)
    typ, data = imap.uid("SEARCH", None, "SUBJECT", '"%s"' % subject)
    uids = data[0].split()
    assert len(uids) == 1
    typ, data = imap.uid("FETCH", uids[0], "(BODY.PEEK[])")
    assert data[0][1].replace(b"\r\n", b"\n") == stored
    imap.logout()


def test_smtp_auth_refused_before_starttls(postfix):
    smtp = postfix.smtp()
    smtp.ehlo()
    assert "auth" not in smtp.esmtp_features
    code, reply = smtp.docmd("AUTH", "XOAUTH2")
    assert code == 530 and b"STARTTLS" in reply
    code, _ = smtp.docmd("MAIL FROM:<%s>" % ALICE)
    assert code == 530
    smtp.quit()


def test_smtp_mail_without_auth_is_refused(postfix, tls):
    smtp = postfix.smtp()
    smtp.starttls(context=tls)
    smtp.ehlo()
    code, reply = smtp.docmd("MAIL FROM:<%s>" % ALICE)
    assert code == 530 and b"5.7.57" in reply
    smtp.quit()


def test_smtp_failed_xoauth2_gets_json_challenge_then_535(postfix, tls):
    smtp = postfix.smtp()
    smtp.starttls(context=tls)
    smtp.ehlo()
    auth = XOAuth2(ALICE, BAD_TOKEN)
    started = time.monotonic()
    with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
        smtp.auth("XOAUTH2", auth)
    assert time.monotonic() - started < 0.5
    assert failed.value.smtp_code == 535
    assert json.loads(auth.challenges[0]) == {
        "status": "401", "schemes": "bearer", "scope": "mail"}
    # The session survives: a good token still works on it.
    code, _ = smtp.auth("XOAUTH2", XOAuth2(ALICE, ALICE_TOKEN))
    assert code == 235
    smtp.quit()


def test_smtp_sending_as_another_mailbox_is_refused(postfix, tls):
    smtp = postfix.smtp()
    smtp.starttls(context=tls)
    smtp.ehlo()
    smtp.auth("XOAUTH2", XOAuth2(ALICE, ALICE_TOKEN))
    code, reply = smtp.docmd("MAIL FROM:<%s>" % BOB)
    assert code == 553 and b"not owned by user" in reply
    smtp.rset()
    assert smtp.docmd("MAIL FROM:<%s>" % ALICE)[0] == 250
    assert smtp.docmd("RCPT TO:<nobody@contoso.test>")[0] == 550
    assert smtp.docmd("RCPT TO:<someone@fabrikam.test>")[0] == 550
    smtp.quit()


def test_plain_listener_offers_auth_but_no_starttls(postfix):
    smtp = postfix.smtp(plain=True)
    smtp.ehlo()
    assert "starttls" not in smtp.esmtp_features
    assert "XOAUTH2" in smtp.esmtp_features["auth"].split()
    with pytest.raises(smtplib.SMTPNotSupportedError):
        smtp.starttls()
    code, _ = smtp.docmd("STARTTLS")
    assert code == 502
    smtp.quit()
    # What a client did there is in the session summary (no "auth=").
    line = postfix.wait_for_log(
        r"postfix/plain/smtpd\[\d+\]: disconnect from .* starttls=0/1")[-1]
    assert " auth=" not in line


# -- Local delivery and reading without OAuth --------------------------------

def test_deliver_lmtp_and_messages(dovecot):
    raw = b"From: x@fabrikam.test\nTo: carol@contoso.test\n" \
          b"Subject: saved\n\nbody\n"
    dovecot.deliver("carol@contoso.test", raw)
    assert dovecot.messages("carol@contoso.test")[-1] == raw

    dovecot.deliver("carol@contoso.test", raw, mailbox="Archive")
    assert dovecot.messages("carol@contoso.test", "Archive") == [raw]

    lmtp = dovecot.lmtp()
    lmtp.ehlo("test")
    lmtp.sendmail("x@fabrikam.test", ["carol@contoso.test"],
                  raw.replace(b"saved", b"over lmtp"))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        lmtp.sendmail("x@fabrikam.test", ["nobody@contoso.test"], raw)
    lmtp.quit()
    assert dovecot.wait_for_message("carol@contoso.test", b"over lmtp")
    assert len(dovecot.wait_for_messages("carol@contoso.test", 2)) == 2


# -- curl, the command-line tool ---------------------------------------------

def curl_version():
    out = subprocess.run(["curl", "--version"], capture_output=True,
                         text=True).stdout
    return tuple(int(x) for x in out.split()[1].split(".")[:3])


def curl_send(port, ca, sender, rcpt, token, workdir, subject):
    path = os.path.join(workdir, "curl-%s.eml" % secrets.token_hex(4))
    with open(path, "wb") as f:
        f.write(bytes(message(sender, rcpt, subject)))
    r = subprocess.run(
        ["curl", "-sS", "-v", "--url", "smtp://127.0.0.1:%d" % port,
         "--ssl-reqd", "--cacert", ca, "--mail-from", sender,
         "--mail-rcpt", rcpt, "--user", sender, "--oauth2-bearer", token,
         "--login-options", "AUTH=XOAUTH2", "--upload-file", path],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    return re.search(r"queued as (\w+)", r.stderr).group(1)


def sasl_method(postfix, queue_id):
    line = postfix.wait_for_log(r"%s: client=.*sasl_method=" % queue_id)[0]
    return re.search(r"sasl_method=(\w+)", line).group(1)


def test_curl_cli_sends_with_bearer_token(postfix, dovecot, mail_pki,
                                          mail_workdir):
    subject = unique("curl")
    qid = curl_send(postfix.smtp_port, mail_pki.ca_cert, ALICE, BOB,
                    ALICE_TOKEN, mail_workdir, subject)
    dovecot.wait_for_message(BOB, subject)
    # curl's --oauth2-bearer also sets CURLAUTH_BEARER as the HTTP auth
    # type, which before curl 8.6.0 overrides AUTH=XOAUTH2 on mail URLs:
    # offered both, curl 7.88 picks OAUTHBEARER despite --login-options.
    method = sasl_method(postfix, qid)
    if curl_version() < (8, 6, 0):
        assert method == "OAUTHBEARER"
    else:
        assert method in ("XOAUTH2", "OAUTHBEARER")


@pytest.fixture
def another_postfix(mail_workdir, mail_pki, dovecot):
    """Factory for an extra Postfix instance (about 0.5 s each)."""
    made = []

    def make(**kwargs):
        workdir = tempfile.mkdtemp(prefix="postfix-", dir=mail_workdir)
        os.chmod(workdir, 0o755)
        server = Postfix(workdir, mail_pki, dovecot, **kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


def test_stock_line_length_limit_cuts_inline_initial_response(
        another_postfix, tls):
    stock = another_postfix(line_length_limit=2048)
    response = base64.b64encode(xoauth2(ALICE, ALICE_TOKEN).encode()).decode()
    smtp = stock.smtp()
    smtp.starttls(context=tls)
    smtp.ehlo()
    code, reply = smtp.docmd("AUTH", "XOAUTH2 " + response)
    assert code == 535 and b"Invalid base64" in reply
    # The same response after an empty 334 is read whole.
    assert smtp.docmd("AUTH", "XOAUTH2")[0] == 334
    assert smtp.docmd(response)[0] == 235
    smtp.quit()


def test_curl_cli_uses_xoauth2_when_only_xoauth2_offered(
        another_postfix, dovecot, mail_pki, mail_workdir):
    postfix_xoauth2_only = another_postfix(mechanisms=["xoauth2"])
    smtp = postfix_xoauth2_only.smtp()
    smtp.starttls(context=ssl.create_default_context(
        cafile=mail_pki.ca_cert))
    smtp.ehlo()
    assert smtp.esmtp_features["auth"].split() == ["XOAUTH2"]
    smtp.quit()
    subject = unique("curl xoauth2")
    qid = curl_send(postfix_xoauth2_only.smtp_port, mail_pki.ca_cert,
                    ALICE, BOB, ALICE_TOKEN, mail_workdir, subject)
    assert sasl_method(postfix_xoauth2_only, qid) == "XOAUTH2"
    dovecot.wait_for_message(BOB, subject)


def test_curl_cli_imaps(dovecot, mail_pki):
    r = subprocess.run(
        ["curl", "-sS", "imaps://127.0.0.1:%d/INBOX" % dovecot.imaps_port,
         "--cacert", mail_pki.ca_cert, "--user", ALICE,
         "--oauth2-bearer", ALICE_TOKEN, "--login-options", "AUTH=XOAUTH2",
         "-X", "EXAMINE INBOX"],
        capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "UIDVALIDITY" in r.stdout
    if curl_version() < (8, 6, 0):   # see test_curl_cli_sends_with_bearer...
        assert dovecot.wait_for_log(r"imap-login: .*Login: user=<%s>, "
                                    r"method=OAUTHBEARER" % ALICE)
