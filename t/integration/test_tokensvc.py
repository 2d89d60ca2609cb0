"""The Entra ID stand-in behaves like Microsoft's token service.

Every other test that talks OAuth trusts this one: if the stand-in accepted
something Microsoft refuses, the product could pass here and fail in the
field.  So each test checks an observable answer (status, error, AADSTS
code, headers), with TLS verification on, through plain urllib.
"""

import base64
import http.client
import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tokensvc import DEFAULT_TENANT_ID, TokenService, pkce_pair


TENANT = "contoso.test"
REDIRECT = "http://localhost:8400/callback"
ALICE = "alice@contoso.test"
BOB = "bob@contoso.test"
SMTP = "https://outlook.office.com/SMTP.Send"
IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"
MAIL_SCOPES = "%s %s offline_access openid email" % (SMTP, IMAP)
APP_ONLY_SCOPE = "https://outlook.office365.com/.default"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                  r"[0-9a-f]{12}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")


# ---------------------------------------------------------------- helpers

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Resp(%d, %r)" % (self.status, self.body[:300])


def http_post(svc, url, form=None, data=None, headers=None, timeout=10):
    if data is None:
        data = urllib.parse.urlencode(form or {}).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {})
    ctx = ssl.create_default_context(cafile=svc.ca_file)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            return Resp(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Resp(e.code, e.headers, e.read())


def token(svc, form, tenant=TENANT, **kw):
    return http_post(svc, svc.token_endpoint(tenant), form, **kw)


def authorize_url(svc, app, scope=MAIL_SCOPES, redirect=REDIRECT,
                  state="st-1", challenge=None, tenant=TENANT, **extra):
    params = {"client_id": app["client_id"], "response_type": "code",
              "redirect_uri": redirect, "scope": scope, "state": state,
              "code_challenge": challenge or pkce_pair()[1],
              "code_challenge_method": "S256"}
    params.update(extra)
    params = {k: v for k, v in params.items() if v is not None}
    return svc.authorize_endpoint(tenant) + "?" + urllib.parse.urlencode(params)


def get_code(svc, app, user=ALICE, redirect=REDIRECT, **kw):
    verifier, challenge = pkce_pair()
    res = svc.sign_in(authorize_url(svc, app, redirect=redirect,
                                    challenge=challenge, login_hint=user,
                                    **kw))
    assert res.status == 302 and res.code, res
    return res.code, verifier


def redeem(svc, app, code, verifier, redirect=REDIRECT, **extra):
    form = {"client_id": app["client_id"], "client_secret": app["secret"],
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": redirect, "code_verifier": verifier}
    form.update(extra)
    return token(svc, form)


def sign_in_tokens(svc, app, user=ALICE, **kw):
    code, verifier = get_code(svc, app, user=user, **kw)
    r = redeem(svc, app, code, verifier)
    assert r.status == 200, r
    return r.json


def refresh(svc, app, rt, timeout=10, **extra):
    form = {"client_id": app["client_id"], "client_secret": app["secret"],
            "grant_type": "refresh_token", "refresh_token": rt}
    form.update(extra)
    return token(svc, form, timeout=timeout)


def client_credentials(svc, app, scope=APP_ONLY_SCOPE, tenant=TENANT,
                       secret=None):
    return token(svc, {"client_id": app["client_id"],
                       "client_secret": secret or app["secret"],
                       "grant_type": "client_credentials", "scope": scope},
                 tenant=tenant)


def introspect(svc, tok):
    r = http_post(svc, svc.introspect_url, {"token": tok})
    assert r.status == 200
    return r.json


def jwt_claims(tok):
    part = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def assert_entra_error(r, status, error, code):
    """Status, error and code as Microsoft sends them, and the body shape a
    client may rely on (never on the description's wording)."""
    assert r.status == status, r
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json
    assert body["error"] == error, body
    assert body["error_codes"] == [code], body
    desc = body["error_description"]
    assert desc.startswith("AADSTS%d: " % code), desc
    assert "\r\nTrace ID: %s\r\n" % body["trace_id"] in desc
    assert "\r\nCorrelation ID: %s\r\n" % body["correlation_id"] in desc
    assert desc.endswith("\r\nTimestamp: " + body["timestamp"])
    assert GUID.match(body["trace_id"]) and GUID.match(body["correlation_id"])
    assert STAMP.match(body["timestamp"])
    assert body["error_uri"] == \
        "https://login.microsoftonline.com/error?code=%d" % code
    return body


@pytest.fixture
def app(tokensvc):
    a = tokensvc.add_app(redirect_uris=[REDIRECT])
    tokensvc.add_user(ALICE, display_name="Alice Example")
    tokensvc.add_user(BOB, display_name="Bob Example")
    return a


# ------------------------------------------------- authorization code + PKCE

def test_auth_code_pkce_success(tokensvc, app):
    verifier, challenge = pkce_pair()
    state = "x y&z=1/é"
    res = tokensvc.sign_in(authorize_url(tokensvc, app, state=state,
                                         challenge=challenge,
                                         login_hint=ALICE))
    assert res.status == 302
    assert res.location.startswith(REDIRECT + "?")
    assert res.params["state"] == state
    assert GUID.match(res.params["session_state"])

    r = redeem(tokensvc, app, res.code, verifier)
    assert r.status == 200, r
    body = r.json
    assert body["token_type"] == "Bearer"
    # Full-URL Exchange scopes; offline_access shows only as a refresh token.
    assert body["scope"].split() == [SMTP, IMAP]
    assert body["expires_in"] == 3599 and isinstance(body["expires_in"], int)
    assert body["ext_expires_in"] == 3599
    assert body["refresh_token"] and body["access_token"]
    claims = jwt_claims(body["id_token"])
    assert claims["preferred_username"] == ALICE
    assert claims["name"] == "Alice Example"
    assert claims["tid"] == DEFAULT_TENANT_ID and claims["aud"] == \
        app["client_id"]
    assert GUID.match(claims["oid"]) and claims["email"] == ALICE
    at = jwt_claims(body["access_token"])
    assert at["aud"] == "https://outlook.office.com"
    assert at["scp"] == "SMTP.Send IMAP.AccessAsUser.All"
    assert at["upn"] == ALICE


def test_wrong_verifier_fails_and_burns_code(tokensvc, app):
    code, verifier = get_code(tokensvc, app)
    r = redeem(tokensvc, app, code, pkce_pair()[0])
    assert_entra_error(r, 400, "invalid_grant", 501481)
    r = redeem(tokensvc, app, code, verifier)
    assert_entra_error(r, 400, "invalid_grant", 54005)


def test_missing_verifier_fails(tokensvc, app):
    code, _ = get_code(tokensvc, app)
    r = redeem(tokensvc, app, code, None)
    assert_entra_error(r, 400, "invalid_grant", 501481)


def test_code_reuse_rejected(tokensvc, app):
    code, verifier = get_code(tokensvc, app)
    assert redeem(tokensvc, app, code, verifier).status == 200
    r = redeem(tokensvc, app, code, verifier)
    assert_entra_error(r, 400, "invalid_grant", 54005)


def test_code_expiry_and_redirect_binding(tokensvc, app):
    code, verifier = get_code(tokensvc, app)
    r = redeem(tokensvc, app, code, verifier,
               redirect="http://localhost:8400/other")
    assert_entra_error(r, 400, "invalid_grant", 70000)
    tokensvc.set_config(code_lifetime=0)
    code, verifier = get_code(tokensvc, app)
    assert_entra_error(redeem(tokensvc, app, code, verifier), 400,
                       "invalid_grant", 70008)
    r = redeem(tokensvc, app, "1.AUEAnot-a-code", verifier)
    assert_entra_error(r, 400, "invalid_grant", 9002313)


def test_authorize_page_errors(tokensvc, app):
    def page(url):
        res = tokensvc.sign_in(url)
        assert res.status == 400 and res.location is None, res
        return res.body

    assert "AADSTS700016:" in page(authorize_url(
        tokensvc, dict(app, client_id="0b0e0a7c-1111-2222-3333-444455556666")))
    assert "AADSTS50011:" in page(authorize_url(
        tokensvc, app, redirect="http://localhost:8401/callback"))
    assert "AADSTS50194:" in page(authorize_url(tokensvc, app,
                                                tenant="common"))
    assert "AADSTS90002:" in page(authorize_url(tokensvc, app,
                                                tenant="fabrikam.test"))
    assert "AADSTS50034:" in page(authorize_url(
        tokensvc, app, login_hint="nobody@contoso.test"))


def test_authorize_errors_go_to_redirect_uri(tokensvc, app):
    def error_of(url):
        res = tokensvc.sign_in(url)
        assert res.status == 302 and "code" not in res.params, res
        assert res.params["state"] == "st-1"
        assert res.params["error_uri"].startswith(
            "https://login.microsoftonline.com/error?code=")
        return res.params["error"], res.params["error_description"]

    url = authorize_url(tokensvc, app, login_hint=ALICE)
    no_pkce = url.replace("code_challenge_method=S256", "")
    no_pkce = re.sub(r"code_challenge=[^&]*", "", no_pkce)
    assert error_of(no_pkce)[0] == "invalid_request"
    plain = url.replace("code_challenge_method=S256",
                        "code_challenge_method=plain")
    assert error_of(plain)[0] == "invalid_request"
    implicit = url.replace("response_type=code", "response_type=token")
    assert error_of(implicit)[0] == "unsupported_response_type"
    bad_scope = authorize_url(tokensvc, app, scope="https://outlook.office"
                              ".com/Nonsense.All", login_hint=ALICE)
    assert error_of(bad_scope)[0] == "invalid_scope"
    # Application roles come only with client credentials and /.default.
    app_role = authorize_url(tokensvc, app, scope="https://outlook.office365"
                             ".com/IMAP.AccessAsApp", login_hint=ALICE)
    assert error_of(app_role)[0] == "invalid_scope"


def test_consent_declined(tokensvc, app):
    tokensvc.next_sign_in(decline=True)
    res = tokensvc.sign_in(authorize_url(tokensvc, app, state="keep me",
                                         login_hint=ALICE))
    assert res.status == 302 and res.location.startswith(REDIRECT + "?")
    assert "code" not in res.params
    assert res.params["error"] == "access_denied"
    assert res.params["error_description"].startswith("AADSTS65004:")
    assert res.params["error_uri"].endswith("code=65004")
    assert res.params["state"] == "keep me"
    # One-shot: the next sign-in succeeds.
    get_code(tokensvc, app)


def test_next_user_overrides_login_hint(tokensvc, app):
    tokensvc.next_sign_in(user=BOB)
    body = sign_in_tokens(tokensvc, app, user=ALICE)
    assert jwt_claims(body["id_token"])["preferred_username"] == BOB
    assert introspect(tokensvc, body["access_token"])["username"] == BOB


def test_redirect_uri_matching(tokensvc):
    tokensvc.add_user(ALICE)
    # Path-less URIs come back with "/"; the token request repeats the
    # redirect_uri exactly as sent to authorize.
    web = tokensvc.add_app(redirect_uris=["http://localhost:8400"])
    code, verifier = get_code(tokensvc, web, redirect="http://localhost:8400")
    res = tokensvc.sign_in(authorize_url(tokensvc, web, login_hint=ALICE,
                                         redirect="http://localhost:8400"))
    assert res.location.startswith("http://localhost:8400/?code=")
    assert redeem(tokensvc, web, code, verifier,
                  redirect="http://localhost:8400").status == 200
    # A confidential (web) registration matches the port exactly...
    assert tokensvc.sign_in(authorize_url(
        tokensvc, web, redirect="http://localhost:8401")).status == 400
    # ...a public client's loopback registration takes any port.
    pub = tokensvc.add_app(redirect_uris=["http://localhost"], secret=False,
                           public_client=True)
    res = tokensvc.sign_in(authorize_url(tokensvc, pub, login_hint=ALICE,
                                         redirect="http://localhost:53117"))
    assert res.location.startswith("http://localhost:53117/?code=")


def test_sign_in_follow_delivers_to_loopback_listener(tokensvc, app):
    import http.server
    import threading
    seen = {}

    class Catch(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["path"] = self.path
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Catch)
    port = srv.server_address[1]
    threading.Thread(target=srv.handle_request, daemon=True).start()
    redirect = "http://127.0.0.1:%d/cb" % port
    tokensvc.update_app(app["client_id"], redirect_uris=[redirect])
    res = tokensvc.sign_in(authorize_url(tokensvc, app, redirect=redirect,
                                         login_hint=ALICE), follow=True)
    srv.server_close()
    assert res.delivered_status == 200 and res.delivered_body == b"ok"
    assert seen["path"].startswith("/cb?code=")


# ------------------------------------------------------------ refresh tokens

def test_rotation_lenient(tokensvc, app):
    rt1 = sign_in_tokens(tokensvc, app)["refresh_token"]
    r2 = refresh(tokensvc, app, rt1)
    assert r2.status == 200, r2
    rt2 = r2.json["refresh_token"]
    assert rt2 != rt1
    assert r2.json["scope"].split() == [SMTP, IMAP]
    assert "id_token" in r2.json       # openid was in the original grant
    # Microsoft keeps the old one valid; every answer still rotates.
    r3 = refresh(tokensvc, app, rt1)
    assert r3.status == 200
    assert r3.json["refresh_token"] not in (rt1, rt2)
    assert refresh(tokensvc, app, rt2).status == 200


def test_rotation_strict(tokensvc, app):
    tokensvc.set_config(rotation="strict")
    rt1 = sign_in_tokens(tokensvc, app)["refresh_token"]
    r2 = refresh(tokensvc, app, rt1)
    assert r2.status == 200
    rt2 = r2.json["refresh_token"]
    assert_entra_error(refresh(tokensvc, app, rt1), 400, "invalid_grant",
                       70000)
    r3 = refresh(tokensvc, app, rt2)
    assert r3.status == 200
    assert_entra_error(refresh(tokensvc, app, rt2), 400, "invalid_grant",
                       70000)


def test_refresh_token_bound_to_client_and_user(tokensvc, app):
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    other = tokensvc.add_app(redirect_uris=[REDIRECT])
    assert_entra_error(refresh(tokensvc, other, rt), 400, "invalid_grant",
                       70000)
    r = refresh(tokensvc, app, rt)
    assert introspect(tokensvc, r.json["access_token"])["username"] == ALICE
    assert tokensvc.token_info(r.json["refresh_token"])["user"] == ALICE


@pytest.mark.parametrize("code", [70008, 700082, 70043, 50076, 50079,
                                  50173, 65001, 50126])
def test_revoked_refresh_token_needs_sign_in(tokensvc, app, code):
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    assert tokensvc.revoke_refresh_tokens(user=ALICE, code=code) == 1
    body = assert_entra_error(refresh(tokensvc, app, rt), 400,
                              "invalid_grant", code)
    if code in (50076, 50079):
        assert body["suberror"] == "basic_action"
    if code == 65001:
        assert body["suberror"] == "consent_required"
    # A fresh interactive sign-in works again.
    assert refresh(tokensvc, app,
                   sign_in_tokens(tokensvc, app)["refresh_token"]).status == 200


def test_revocation_is_per_user(tokensvc, app):
    rt_alice = sign_in_tokens(tokensvc, app)["refresh_token"]
    rt_bob = sign_in_tokens(tokensvc, app, user=BOB)["refresh_token"]
    tokensvc.revoke_refresh_tokens(user=BOB)
    assert refresh(tokensvc, app, rt_alice).status == 200
    assert_entra_error(refresh(tokensvc, app, rt_bob), 400, "invalid_grant",
                       70008)


def test_refresh_token_inactivity_expiry(tokensvc, app):
    tokensvc.set_config(refresh_token_lifetime=0.5)
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    time.sleep(0.6)
    assert_entra_error(refresh(tokensvc, app, rt), 400, "invalid_grant",
                       700082)


def test_refresh_scope_rules(tokensvc, app):
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    r = refresh(tokensvc, app, rt, scope=SMTP + " offline_access")
    assert r.status == 200
    # The token covers everything consented for that resource.
    assert r.json["scope"].split() == [SMTP, IMAP]
    mixed = SMTP + " https://graph.microsoft.com/Mail.Read"
    assert_entra_error(refresh(tokensvc, app, rt, scope=mixed), 400,
                       "invalid_scope", 28000)
    assert_entra_error(refresh(tokensvc, app, rt, scope="https://outlook."
                               "office.com/Bogus.Perm"), 400,
                       "invalid_scope", 70011)
    assert_entra_error(refresh(tokensvc, app, rt, scope="https://outlook."
                               "office.com/POP.AccessAsUser.All"), 400,
                       "invalid_grant", 65001)
    assert_entra_error(refresh(tokensvc, app, rt, scope="https://mail.example"
                               "/SMTP.Send"), 400, "invalid_resource", 500011)


# ------------------------------------------------------- client credentials

def test_client_credentials(tokensvc):
    app = tokensvc.add_app(app_only=True, app_only_mailbox="scanner@contoso"
                           ".test")
    r = client_credentials(tokensvc, app)
    assert r.status == 200, r
    body = r.json
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert "refresh_token" not in body and "id_token" not in body
    claims = jwt_claims(body["access_token"])
    assert claims["aud"] == "https://outlook.office365.com"
    assert sorted(claims["roles"]) == ["IMAP.AccessAsApp", "SMTP.SendAsApp"]
    info = introspect(tokensvc, body["access_token"])
    assert info["active"] is True
    assert info["username"] == "scanner@contoso.test"
    # Tenant GUID and domain name address the same directory.
    assert client_credentials(tokensvc, app,
                              tenant=DEFAULT_TENANT_ID).status == 200
    assert_entra_error(client_credentials(tokensvc, app, scope=IMAP), 400,
                       "invalid_scope", 1002012)
    assert_entra_error(client_credentials(tokensvc, app, tenant="common"),
                       400, "invalid_request", 9001023)
    assert_entra_error(client_credentials(
        tokensvc, app, scope=APP_ONLY_SCOPE +
        " https://graph.microsoft.com/.default"), 400, "invalid_scope", 28000)


def test_client_credentials_without_permission_is_useless(tokensvc):
    # Microsoft still issues a token; Exchange (here: introspection) refuses.
    app = tokensvc.add_app(app_only=False, app_only_mailbox="scanner@contoso"
                           ".test")
    r = client_credentials(tokensvc, app)
    assert r.status == 200
    assert "roles" not in jwt_claims(r.json["access_token"])
    assert introspect(tokensvc, r.json["access_token"]) == {"active": False}
    tokensvc.update_app(app["client_id"], app_only=True)
    r = client_credentials(tokensvc, app)
    assert introspect(tokensvc, r.json["access_token"])["active"] is True


# ---------------------------------------------------------- misconfiguration

def misconfig_cases():
    def secret_id(svc, app):
        return client_credentials(svc, app, secret=app["secret_id"])

    def expired(svc, app):
        svc.update_app(app["client_id"], secret_expired=True)
        return client_credentials(svc, app)

    def no_secret(svc, app):
        return refresh(svc, dict(app, secret=""), "1.Ax")

    def unknown_app(svc, app):
        return client_credentials(svc, dict(
            app, client_id="9a9a9a9a-0000-4000-8000-000000000001"))

    def other_tenant(svc, app):
        svc.add_app(tenant_id="7d3c1e2f-0000-4000-8000-00000000fab1",
                    tenant_domains=["fabrikam.test"])
        return client_credentials(svc, app, tenant="fabrikam.test")

    def common(svc, app):
        return token(svc, {"client_id": app["client_id"], "grant_type":
                           "refresh_token", "refresh_token": "x",
                           "client_secret": app["secret"]}, tenant="common")

    def organizations(svc, app):
        return token(svc, {"client_id": app["client_id"], "grant_type":
                           "refresh_token", "refresh_token": "x",
                           "client_secret": app["secret"]},
                     tenant="organizations")

    def unknown_tenant(svc, app):
        return client_credentials(svc, app, tenant="nowhere.test")

    def json_body(svc, app):
        return token(svc, None, data=json.dumps(
            {"grant_type": "client_credentials"}).encode(),
            headers={"Content-Type": "application/json"})

    def duplicate(svc, app):
        return token(svc, None, data=b"grant_type=client_credentials&"
                     b"grant_type=client_credentials")

    def bad_grant(svc, app):
        return token(svc, {"grant_type": "password", "client_id":
                           app["client_id"]})

    return [
        ("secret_id_instead_of_value", secret_id, 401, "invalid_client",
         7000215),
        ("secret_expired", expired, 401, "invalid_client", 7000222),
        ("confidential_without_secret", no_secret, 401, "invalid_client",
         7000218),
        ("unknown_app", unknown_app, 400, "unauthorized_client", 700016),
        ("app_of_other_tenant", other_tenant, 400, "unauthorized_client",
         700016),
        ("single_tenant_on_common", common, 400, "invalid_request", 50194),
        ("single_tenant_on_organizations", organizations, 400,
         "invalid_request", 50194),
        ("unknown_tenant", unknown_tenant, 400, "invalid_request", 90002),
        ("json_body", json_body, 400, "invalid_request", 900144),
        ("duplicate_parameter", duplicate, 400, "invalid_request", 9000411),
        ("unsupported_grant", bad_grant, 400, "unsupported_grant_type", 70003),
    ]


@pytest.mark.parametrize("name,call,status,error,code", misconfig_cases(),
                         ids=[c[0] for c in misconfig_cases()])
def test_misconfiguration(tokensvc, name, call, status, error, code):
    app = tokensvc.add_app(app_only=True)
    assert_entra_error(call(tokensvc, app), status, error, code)


def test_multi_tenant_app_may_use_common(tokensvc, app):
    tokensvc.update_app(app["client_id"], multi_tenant=True)
    rt = sign_in_tokens(tokensvc, app, tenant="common")["refresh_token"]
    assert token(tokensvc, {"client_id": app["client_id"],
                            "client_secret": app["secret"],
                            "grant_type": "refresh_token",
                            "refresh_token": rt},
                 tenant="organizations").status == 200


def test_token_endpoint_wants_post(tokensvc):
    ctx = ssl.create_default_context(cafile=tokensvc.ca_file)
    try:
        urllib.request.urlopen(tokensvc.token_endpoint(), context=ctx)
        raise AssertionError("GET accepted")
    except urllib.error.HTTPError as e:
        r = Resp(e.code, e.headers, e.read())
    assert_entra_error(r, 400, "invalid_request", 900561)


def test_correlation_id_and_keep_alive(tokensvc):
    ctx = ssl.create_default_context(cafile=tokensvc.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", tokensvc.port,
                                       context=ctx, timeout=5)
    cri = "0f1e2d3c-4b5a-4969-8877-665544332211"
    path = urllib.parse.urlsplit(tokensvc.token_endpoint()).path
    conn.request("POST", path, body="grant_type=client_credentials",
                 headers={"Content-Type": "application/x-www-form-urlencoded",
                          "client-request-id": cri})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert body["correlation_id"] == cri
    assert resp.getheader("client-request-id") == cri
    sock = conn.sock
    conn.request("GET", "/_control/stats")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())
    assert conn.sock is sock          # same connection: keep-alive works
    conn.close()


# ---------------------------------------------------------------- device code

def devicecode(svc, app, scope="%s %s offline_access" % (SMTP, IMAP)):
    r = http_post(svc, svc.devicecode_endpoint(),
                  {"client_id": app["client_id"], "scope": scope})
    assert r.status == 200, r
    return r.json


def poll(svc, app, dc, secret=True):
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "client_id": app["client_id"], "device_code": dc}
    if secret:
        form["client_secret"] = app["secret"]
    return token(svc, form)


def test_device_code_flow(tokensvc, app):
    tokensvc.set_config(device_interval=1, device_slow_down_increment=1)
    d = devicecode(tokensvc, app)
    assert re.fullmatch(r"[A-Z0-9]{9}", d["user_code"])
    assert d["interval"] == 1 and d["expires_in"] == 900
    assert d["verification_uri"].startswith(tokensvc.url + "/")
    assert d["user_code"] in d["message"]
    assert d["verification_uri"] in d["message"]
    assert_entra_error(poll(tokensvc, app, d["device_code"]), 400,
                       "authorization_pending", 70016)
    # Too soon after the last poll: slow_down, and the interval grows.
    assert poll(tokensvc, app, d["device_code"]).json["error"] == "slow_down"
    tokensvc.approve_device(d["user_code"], ALICE)
    time.sleep(2.05)
    r = poll(tokensvc, app, d["device_code"])
    assert r.status == 200, r
    assert r.json["scope"].split() == [SMTP, IMAP] and r.json["refresh_token"]
    assert introspect(tokensvc, r.json["access_token"])["username"] == ALICE
    assert poll(tokensvc, app, d["device_code"]).json["error"] == \
        "invalid_grant"


def test_device_code_declined(tokensvc, app):
    tokensvc.set_config(device_interval=0)
    d = devicecode(tokensvc, app)
    tokensvc.decline_device(d["user_code"])
    assert_entra_error(poll(tokensvc, app, d["device_code"]), 400,
                       "authorization_declined", 65004)


def test_device_code_expired(tokensvc, app):
    tokensvc.set_config(device_interval=0, device_expires_in=1)
    d = devicecode(tokensvc, app)
    assert d["expires_in"] == 1
    time.sleep(1.1)
    assert_entra_error(poll(tokensvc, app, d["device_code"]), 400,
                       "expired_token", 70019)
    with pytest.raises(Exception, match="expired"):
        tokensvc.approve_device(d["user_code"], ALICE)


def test_device_code_public_client_and_page(tokensvc, app):
    tokensvc.set_config(device_interval=0)
    pub = tokensvc.add_app(public_client=True, secret=False)
    d = devicecode(tokensvc, pub)
    # The person's side, through the verification page itself.
    page = http_post(tokensvc, d["verification_uri"],
                     {"otc": d["user_code"].lower(), "login": BOB})
    assert page.status == 200 and b"Signed in" in page.body
    r = poll(tokensvc, pub, d["device_code"], secret=False)
    assert r.status == 200 and introspect(
        tokensvc, r.json["access_token"])["username"] == BOB
    # A confidential app must authenticate its polls.
    d = devicecode(tokensvc, app)
    assert_entra_error(poll(tokensvc, app, d["device_code"], secret=False),
                       401, "invalid_client", 7000218)


def test_device_code_wants_one_resource(tokensvc, app):
    r = http_post(tokensvc, tokensvc.devicecode_endpoint(),
                  {"client_id": app["client_id"],
                   "scope": SMTP + " https://graph.microsoft.com/User.Read"})
    assert_entra_error(r, 400, "invalid_scope", 28000)


# --------------------------------------------------------------------- faults

def test_429_with_retry_after(tokensvc, app):
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    tokensvc.inject("http", count=2, status=429, retry_after=7)
    for _ in range(2):
        r = refresh(tokensvc, app, rt)
        assert r.status == 429 and r.headers["Retry-After"] == "7"
        assert r.json["error"] == "temporarily_unavailable"
    assert refresh(tokensvc, app, rt).status == 200


def test_5xx_json_and_html(tokensvc, app):
    tokensvc.inject("http", status=503)
    assert_entra_error(client_credentials(tokensvc, app), 503,
                       "temporarily_unavailable", 90033)
    tokensvc.inject("html", status=502)
    r = client_credentials(tokensvc, app)
    assert r.status == 502 and r.headers["Content-Type"] == "text/html"
    with pytest.raises(ValueError):
        r.json


def test_injected_error_and_grant_filter(tokensvc, app):
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    tokensvc.inject("error", error="invalid_grant", code=50076,
                    grant_type="refresh_token",
                    extra={"suberror": "basic_action"})
    # Another grant type passes the fault by.
    assert token(tokensvc, {"client_id": app["client_id"],
                            "client_secret": app["secret"],
                            "grant_type": "client_credentials",
                            "scope": APP_ONLY_SCOPE}).status == 200
    body = assert_entra_error(refresh(tokensvc, app, rt), 400,
                              "invalid_grant", 50076)
    assert body["suberror"] == "basic_action"
    assert refresh(tokensvc, app, rt).status == 200


def test_slow_answer(tokensvc, app):
    tokensvc.set_config(rotation="strict")
    rt = sign_in_tokens(tokensvc, app)["refresh_token"]
    tokensvc.inject("delay", seconds=1.5)
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError, urllib.error.URLError)):
        refresh(tokensvc, app, rt, timeout=0.5)
    # Threaded: others are served while that answer is still held back.
    assert tokensvc.stats()["faults_pending"] == 0
    assert time.monotonic() - t0 < 1.3
    # The late request was still processed: strict rotation burned rt.
    assert_entra_error(refresh(tokensvc, app, rt), 400, "invalid_grant",
                       70000)


def test_malformed_json(tokensvc, app):
    tokensvc.inject("malformed")
    r = client_credentials(tokensvc, app)
    assert r.status == 200
    with pytest.raises(ValueError):
        r.json
    assert client_credentials(tokensvc, app).json["access_token"]


def raw_post(svc, form):
    ctx = ssl.create_default_context(cafile=svc.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", svc.port, context=ctx,
                                       timeout=5)
    path = urllib.parse.urlsplit(svc.token_endpoint()).path
    conn.request("POST", path, body=urllib.parse.urlencode(form),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    return conn, conn.getresponse()


def test_truncated_json(tokensvc, app):
    form = {"client_id": app["client_id"], "client_secret": app["secret"],
            "grant_type": "client_credentials", "scope": APP_ONLY_SCOPE}
    tokensvc.inject("truncated")
    conn, resp = raw_post(tokensvc, form)
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()
    tokensvc.inject("truncated", mode="cut")
    conn, resp = raw_post(tokensvc, form)
    body = resp.read()
    assert len(body) == int(resp.getheader("Content-Length"))
    with pytest.raises(ValueError):
        json.loads(body)
    conn.close()


@pytest.mark.parametrize("kind", ["reset", "close"])
def test_connection_dropped_without_answer(tokensvc, app, kind):
    tokensvc.inject(kind)
    with pytest.raises((ConnectionError, http.client.HTTPException,
                        ssl.SSLError, urllib.error.URLError)):
        client_credentials(tokensvc, app)
    assert client_credentials(tokensvc, app).status == 200


# ---------------------------------------------------------- stats and tokens

def test_stats_count_by_grant_type(tokensvc, app):
    tokens = sign_in_tokens(tokensvc, app)
    refresh(tokensvc, app, tokens["refresh_token"])
    tokensvc.revoke_refresh_tokens()
    refresh(tokensvc, app, tokens["refresh_token"])
    client_credentials(tokensvc, app)
    tokensvc.inject("http", status=429, retry_after=1)
    client_credentials(tokensvc, app)
    st = tokensvc.stats()
    assert st["token_requests"] == {"authorization_code": 1,
                                    "refresh_token": 2,
                                    "client_credentials": 2}
    outcomes = [(e["grant_type"], e["outcome"]) for e in st["log"]
                if e["endpoint"] == "token"]
    assert outcomes == [("authorization_code", "ok"),
                        ("refresh_token", "ok"),
                        ("refresh_token", "invalid_grant/70008"),
                        ("client_credentials", "ok"),
                        ("client_credentials", "fault:http")]
    assert all(e["client_id"] == app["client_id"] for e in st["log"]
               if e["outcome"] != "fault:http")


def test_token_lengths_and_shape(tokensvc, app):
    first = sign_in_tokens(tokensvc, app)
    ats, rts = [first["access_token"]], [first["refresh_token"]]
    for _ in range(12):
        r = refresh(tokensvc, app, rts[-1]).json
        ats.append(r["access_token"])
        rts.append(r["refresh_token"])
    ats.append(client_credentials(tokensvc, app).json["access_token"])
    for tok in ats + rts:
        assert 1500 <= len(tok) <= 2500, len(tok)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", tok)
    for tok in ats:
        header, payload, sig = tok.split(".")
        assert json.loads(base64.urlsafe_b64decode(header + "==="))["typ"] \
            == "JWT"
        assert jwt_claims(tok)["exp"] > time.time()
    assert len(set(ats)) == len(ats) and len(set(rts)) == len(rts)
    assert len({len(t) for t in ats}) > 3       # sizes vary too


# -------------------------------------------------------------- introspection

def test_introspection(tokensvc, app):
    at = sign_in_tokens(tokensvc, app)["access_token"]
    info = introspect(tokensvc, at)
    assert info["active"] is True and info["username"] == ALICE
    assert IMAP in info["scope"].split()
    assert info["client_id"] == app["client_id"]
    assert 3500 < info["exp"] - time.time() <= 3600
    assert introspect(tokensvc, "not-a-token") == {"active": False}
    assert tokensvc.expire_access_tokens(user=ALICE) == 1
    assert introspect(tokensvc, at) == {"active": False}


def test_introspection_natural_expiry(tokensvc, app):
    tokensvc.set_config(expires_in=1)
    body = sign_in_tokens(tokensvc, app)
    assert body["expires_in"] == 1
    assert introspect(tokensvc, body["access_token"])["active"] is True
    time.sleep(1.05)
    assert introspect(tokensvc, body["access_token"]) == {"active": False}


def test_introspection_rejects_graph_tokens(tokensvc, app):
    # Bare scope names mean Microsoft Graph: a valid token, useless for mail.
    body = sign_in_tokens(tokensvc, app, scope="SMTP.Send offline_access")
    assert body["scope"] == "SMTP.Send"
    assert jwt_claims(body["access_token"])["aud"] == \
        "https://graph.microsoft.com"
    assert introspect(tokensvc, body["access_token"]) == {"active": False}


# ----------------------------------------------------------------- lifecycle

def test_state_file_survives_restart(tmp_path, pki):
    state = str(tmp_path / "state.json")
    svc = TokenService(str(tmp_path), pki, state_file=state).start()
    try:
        app = svc.add_app(redirect_uris=[REDIRECT])
        svc.add_user(ALICE)
        rt = sign_in_tokens(svc, app)["refresh_token"]
        svc.stop()
        svc.stop()                  # idempotent
        assert svc.proc is None
        svc.start()
        r = refresh(svc, app, rt)
        assert r.status == 200, r
    finally:
        svc.stop()
