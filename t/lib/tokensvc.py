#!/usr/bin/python3
"""Local stand-in for the Microsoft identity platform (Entra ID) token service.

It speaks the v2.0 endpoints mod_mailoauth and its operator CLI use
(authorize, token, devicecode), answers Dovecot's oauth2 passdb on
/introspect, and is driven by tests through JSON calls under /_control/.

The rule it follows: anything that works here must also work against
login.microsoftonline.com.  Where Microsoft is lenient in a way we never want
to rely on (PKCE optional, code_challenge_method=plain, several resources in
one device-code request) the stand-in is strict; where Microsoft is strict
(exact redirect URIs, single resource per token, secret value not secret ID)
the stand-in is equally strict and answers with the same error codes, so the
product's error classification is exercised on realistic bodies.

Run as a server:
    /usr/bin/python3 t/lib/tokensvc.py --host 127.0.0.1 --port N \
        --cert CHAIN.pem --key KEY.pem [--state-file F]
Use from tests: TokenService(workdir, pki).start(); see the class below.
Standard library only, but for python3-cryptography where client assertions
(certificate credentials) are checked.
"""

import argparse
import atexit
import base64
import copy
import hashlib
import html
import http.client
import http.server
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import string
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# --------------------------------------------------------------------------
# Microsoft facts the stand-in models
# --------------------------------------------------------------------------

DEFAULT_TENANT_ID = "5f1b3a6e-8c2d-4e0f-9a7b-1c2d3e4f5a6b"
DEFAULT_TENANT_DOMAINS = ["contoso.test", "contoso.onmicrosoft.com"]

EXCHANGE = "exchange"
GRAPH = "graph"
# Both Exchange Online identifier URIs name one resource.
RESOURCE_HOSTS = {
    "outlook.office.com": EXCHANGE,
    "outlook.office365.com": EXCHANGE,
    "graph.microsoft.com": GRAPH,
}
RESOURCE_APP_IDS = {
    EXCHANGE: "00000002-0000-0ff1-ce00-000000000000",
    GRAPH: "00000003-0000-0000-c000-000000000000",
}
DELEGATED_PERMISSIONS = {
    EXCHANGE: ["SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All",
               "EWS.AccessAsUser.All", "Mail.Read", "Mail.ReadWrite",
               "Mail.Send", "User.Read"],
    GRAPH: ["User.Read", "Mail.Read", "Mail.ReadWrite", "Mail.Send",
            "SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All"],
}
OIDC_SCOPES = ["openid", "profile", "email", "offline_access"]
META_TENANTS = ("common", "organizations", "consumers")

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Clock skew Microsoft tolerates on nbf/exp of a client assertion.
ASSERTION_SKEW = 300
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials",
               DEVICE_GRANT)

# Descriptions for the codes that mean "a person has to sign in again".
# Tests ask for them by number through /_control/revoke.
REAUTH_TEXT = {
    70008: "The provided authorization code or refresh token has expired due "
           "to inactivity. Send a new interactive authorization request for "
           "this user and resource.",
    700082: "The refresh token has expired due to inactivity. The token was "
            "issued on {issued} and was inactive for 90.00:00:00.",
    70043: "The refresh token has expired or is invalid due to sign-in "
           "frequency checks by conditional access. The token was issued on "
           "{issued} and the maximum allowed lifetime for this request is "
           "86400.",
    50076: "Due to a configuration change made by your administrator, or "
           "because you moved to a new location, you must use multi-factor "
           "authentication to access '{resource_id}'.",
    50079: "Due to a configuration change made by your administrator, or "
           "because you moved to a new location, you must enroll in "
           "multi-factor authentication to access '{resource_id}'.",
    50173: "The provided grant has expired due to it being revoked, a fresh "
           "auth token is needed. The user might have changed or reset their "
           "password. The grant was issued on '{issued}' and the "
           "TokensValidFrom date (before which tokens are not valid) for this "
           "user is '{now}'.",
    65001: "The user or administrator has not consented to use the "
           "application with ID '{client_id}' named '{app_name}'. Send an "
           "interactive authorization request for this user and resource.",
    50126: "Error validating credentials due to invalid username or "
           "password.",
    70000: "Provided grant is invalid or malformed.",
}
class _Blank(dict):
    def __missing__(self, key):
        return "..."


def reauth_text(code, **context):
    text = REAUTH_TEXT.get(code, "Provided grant is invalid or malformed.")
    return text.format_map(_Blank(context))


# Microsoft adds a suberror to some of them; MSAL keys its UI on it.
REAUTH_SUBERROR = {50076: "basic_action", 50079: "basic_action",
                   65001: "consent_required"}

DEFAULT_CONFIG = {
    "rotation": "lenient",          # "lenient" (Microsoft) or "strict"
    "expires_in": 3599,             # access token lifetime, seconds
    "ext_expires_in": None,         # None: same as expires_in
    "refresh_token_lifetime": 90 * 86400,   # sliding, from last use
    "code_lifetime": 600,
    "device_expires_in": 900,
    "device_interval": 5,
    # RFC 8628: a slow_down answer raises the required interval for good.
    "device_slow_down_increment": 5,
}

B64URL = string.ascii_letters + string.digits + "-_"
SECRET_CHARS = string.ascii_letters + string.digits + "_.~-"
USER_CODE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def now():
    return time.time()


def utc_stamp(t=None):
    # Microsoft's format: "2023-05-25 13:21:24Z"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t or now()))


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rand_chars(n, alphabet=B64URL):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def pkce_pair():
    """(code_verifier, code_challenge) for S256, as a client would make."""
    verifier = b64u(os.urandom(32))
    challenge = b64u(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge


def b64u_decode(text):
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cert_record(pem):
    """A certificate as the app registration keeps it (Certificates &
    secrets): its thumbprints and validity."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"pem": pem,
            "thumbprint": hashlib.sha1(der).hexdigest().upper(),
            "x5t": b64u(hashlib.sha1(der).digest()),
            "x5t_s256": b64u(hashlib.sha256(der).digest()),
            "not_before": cert.not_valid_before.strftime("%m/%d/%Y %H:%M:%S"),
            "not_after": cert.not_valid_after.strftime("%m/%d/%Y %H:%M:%S")}


def new_client_secret():
    # Portal-made secret values are 40 characters with "~" in them; the
    # punctuation catches clients that forget to URL-encode the form body.
    return rand_chars(3, string.ascii_letters + string.digits) + "8Q~" + \
        rand_chars(34, SECRET_CHARS)


def jwt_like(header, claims, lo=1500, hi=2500):
    """A JWT-shaped string of a random length in [lo, hi].

    Microsoft's access tokens are opaque to clients and vary in size with
    the claims; real Exchange tokens are 1,500-2,500 characters.  The
    signature is random bytes: clients must not validate access tokens, so
    nothing here is verifiable on purpose."""
    target = lo + 60 + secrets.randbelow(hi - lo - 120)
    head = b64u(json.dumps(header, separators=(",", ":")).encode())
    sig = b64u(os.urandom(256))
    claims = dict(claims)
    claims["xms_pad"] = ""
    for _ in range(4):
        body = b64u(json.dumps(claims, separators=(",", ":")).encode())
        missing = target - (len(head) + len(body) + len(sig) + 2)
        if abs(missing) < 4:
            break
        want = max(0, len(claims["xms_pad"]) + (missing * 3) // 4)
        claims["xms_pad"] = rand_chars(want)
    token = "%s.%s.%s" % (head, body, sig)
    assert lo <= len(token) <= hi, len(token)
    return token


def opaque_token(prefix, lo, hi):
    # Microsoft's refresh tokens and codes are not JWTs ("1.AVEA..."); a
    # client that tries to decode them would break there, so it breaks here.
    n = lo + secrets.randbelow(hi - lo + 1)
    return prefix + rand_chars(n - len(prefix))


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class EntraError(Exception):
    """An error the token-style endpoints answer with Entra's JSON body."""

    def __init__(self, status, error, code, text, **extra):
        super().__init__("%s AADSTS%d: %s" % (error, code, text))
        self.status = status
        self.error = error
        self.code = code
        self.text = text
        self.extra = extra


def missing_param(name):
    return EntraError(400, "invalid_request", 900144,
                      "The request body must contain the following "
                      "parameter: '%s'." % name)


class PageError(Exception):
    """An error the authorize endpoint can only show as a page: the browser
    can't be sent back to a redirect URI that isn't trusted."""

    def __init__(self, code, text):
        super().__init__("AADSTS%d: %s" % (code, text))
        self.code = code
        self.text = text


class RedirectError(Exception):
    """An authorize error reported to the (validated) redirect URI."""

    def __init__(self, error, code, text):
        super().__init__("%s AADSTS%d: %s" % (error, code, text))
        self.error = error
        self.code = code
        self.text = text


class ControlError(Exception):
    pass


# --------------------------------------------------------------------------
# Scopes
# --------------------------------------------------------------------------

class ScopeSet:
    """A parsed scope parameter.

    resources: canonical resource -> list of (permission, host) in request
    order; oidc: the OpenID/offline scopes; order: resources in order of
    first appearance (Microsoft issues a token for the first one)."""

    def __init__(self, text, tenant_name="the tenant"):
        self.raw = text
        self.resources = {}
        self.order = []
        self.oidc = []
        self.default = {}          # resource -> host for "<resource>/.default"
        for item in text.split():
            low = item.lower()
            if low in OIDC_SCOPES:
                if low not in self.oidc:
                    self.oidc.append(low)
                continue
            if "://" in item:
                parts = urllib.parse.urlsplit(item)
                host = (parts.hostname or "").lower()
                perm = parts.path.lstrip("/")
                res = RESOURCE_HOSTS.get(host)
                if res is None:
                    raise EntraError(
                        400, "invalid_resource", 500011,
                        "The resource principal named %s://%s was not found "
                        "in the tenant named %s. This can happen if the "
                        "application has not been installed by the "
                        "administrator of the tenant or consented to by any "
                        "user in the tenant. You might have sent your "
                        "authentication request to the wrong tenant."
                        % (parts.scheme, parts.netloc, tenant_name))
            else:
                # A bare permission name means Microsoft Graph.
                host, perm, res = "graph.microsoft.com", item, GRAPH
            if res not in self.order:
                self.order.append(res)
                self.resources[res] = []
            if perm.lower() == ".default":
                self.default[res] = host
                continue
            # Application roles (IMAP.AccessAsApp...) are not scopes: an app
            # gets them only through "<resource>/.default".
            known = {p.lower(): p for p in DELEGATED_PERMISSIONS[res]}
            canon = known.get(perm.lower())
            if canon is None:
                raise EntraError(
                    400, "invalid_scope", 70011,
                    "The provided value for the input parameter 'scope' is "
                    "not valid. The scope %s is not valid." % item)
            if all(p != canon for p, _ in self.resources[res]):
                self.resources[res].append((canon, host))

    def host_of(self, res):
        for _, host in self.resources.get(res, []):
            return host
        return self.default.get(res)

    def require_single_resource(self):
        if len(self.order) > 1:
            raise EntraError(
                400, "invalid_scope", 28000,
                "Provided value for the input parameter scope is not valid "
                "because it contains more than one resource. Scope %s is not "
                "valid." % self.raw)


def scope_string(res, perms, host, oidc):
    """The scope value of a token answer.  Exchange permissions come back as
    full URLs; Graph ones as bare names together with the OpenID scopes.
    offline_access is never echoed (its effect is the refresh_token)."""
    if res == GRAPH:
        return " ".join(list(perms) + [s for s in oidc
                                       if s != "offline_access"])
    return " ".join("https://%s/%s" % (host, p) for p in perms)


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------

class State:
    """Everything the service knows, guarded by one lock.

    All of it is plain JSON so that --state-file can carry it across a
    restart of the service (faults are deliberately not persisted)."""

    PERSISTED = ("config", "tenants", "apps", "users", "consents", "codes",
                 "refresh", "access", "devices", "user_codes", "sign_ins",
                 "stats", "jtis")

    def __init__(self, path=None):
        self.lock = threading.RLock()
        self.path = path
        self.reset()
        if path and os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            for key in self.PERSISTED:
                if key in data:
                    setattr(self, key, data[key])

    def reset(self):
        self.config = dict(DEFAULT_CONFIG)
        self.tenants = {DEFAULT_TENANT_ID: {
            "id": DEFAULT_TENANT_ID, "domains": list(DEFAULT_TENANT_DOMAINS)}}
        self.apps = {}
        self.users = {}
        self.consents = {}          # "client|user" -> {resource: [perms]}
        self.codes = {}
        self.refresh = {}
        self.access = {}
        self.devices = {}
        self.user_codes = {}
        self.sign_ins = []          # queued browser outcomes for authorize
        self.faults = []
        self.stats = {"requests": {}, "token_requests": {}, "log": []}
        self.jtis = {}              # client assertion jti -> its exp

    def save(self):
        if not self.path:
            return
        with self.lock:
            data = {k: getattr(self, k) for k in self.PERSISTED}
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    # -- lookups ---------------------------------------------------------

    def find_tenant(self, name):
        low = name.lower()
        for t in self.tenants.values():
            if low == t["id"].lower() or low in (d.lower() for d in t["domains"]):
                return t
        return None

    def tenant_label(self, tid):
        t = self.tenants.get(tid)
        return t["domains"][0] if t and t["domains"] else tid

    def user(self, name):
        return self.users.get((name or "").lower())

    # -- bookkeeping -----------------------------------------------------

    def record(self, endpoint, grant_type=None, client_id=None, user=None,
               outcome="ok", status=200, client_auth=None):
        with self.lock:
            req = self.stats["requests"]
            req[endpoint] = req.get(endpoint, 0) + 1
            if endpoint == "token":
                key = grant_type or "(none)"
                tr = self.stats["token_requests"]
                tr[key] = tr.get(key, 0) + 1
            self.stats["log"].append({
                "time": round(now(), 3), "endpoint": endpoint,
                "grant_type": grant_type, "client_id": client_id,
                "user": user, "outcome": outcome, "status": status,
                "client_auth": client_auth})
            del self.stats["log"][:-1000]

    def take_fault(self, endpoint, grant_type):
        with self.lock:
            for fault in self.faults:
                if fault.get("endpoint", "token") != endpoint:
                    continue
                if fault.get("grant_type") and fault["grant_type"] != grant_type:
                    continue
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                return fault
        return None


# --------------------------------------------------------------------------
# The protocol: pure functions of (state, request) -> answer
# --------------------------------------------------------------------------

class Service:
    def __init__(self, state, base_url):
        self.state = state
        self.base_url = base_url

    # -- shared checks ---------------------------------------------------

    def resolve(self, tenant_name, client_id, page=False):
        """Tenant path segment and client_id -> (app, tid of the request).

        Raises the error Microsoft gives for an unknown tenant, an app that
        isn't in that tenant, and a single-tenant app used through /common
        or /organizations."""
        st = self.state

        def fail(status, error, code, text):
            if page:
                return PageError(code, text)
            return EntraError(status, error, code, text)

        low = tenant_name.lower()
        tenant = None
        if low not in META_TENANTS:
            tenant = st.find_tenant(tenant_name)
            if tenant is None:
                raise fail(400, "invalid_request", 90002,
                           "Tenant '%s' not found. Check to make sure you "
                           "have the correct tenant ID and are signing into "
                           "the correct cloud. Check with your subscription "
                           "administrator, this may happen if there are no "
                           "active subscriptions for the tenant."
                           % tenant_name)
        if not client_id:
            if page:
                raise PageError(900144, "The request body must contain the "
                                "following parameter: 'client_id'.")
            raise missing_param("client_id")
        app = st.apps.get(client_id)
        if app is None or (tenant is not None and not app["multi_tenant"]
                           and app["tenant_id"] != tenant["id"]):
            where = tenant["domains"][0] if tenant and tenant["domains"] \
                else tenant_name
            raise fail(400, "unauthorized_client", 700016,
                       "Application with identifier '%s' was not found in the "
                       "directory '%s'. This can happen if the application "
                       "has not been installed by the administrator of the "
                       "tenant or consented to by any user in the tenant. You "
                       "may have sent your authentication request to the "
                       "wrong tenant." % (client_id, where))
        if low == "consumers":
            raise fail(400, "invalid_request", 9002331,
                       "Application '%s'(%s) is configured for use by Azure "
                       "Active Directory users only. Please do not use the "
                       "/consumers endpoint to serve this request."
                       % (client_id, app["name"]))
        if low in ("common", "organizations") and not app["multi_tenant"]:
            raise fail(400, "invalid_request", 50194,
                       "Application '%s'(%s) is not configured as a "
                       "multi-tenant application. Usage of the /common "
                       "endpoint is not supported for such applications "
                       "created after '10/15/2018'. Use a tenant-specific "
                       "endpoint or configure the application to be "
                       "multi-tenant." % (client_id, app["name"]))
        return app, (tenant["id"] if tenant else app["tenant_id"])

    def authenticate_client(self, app, secret, confidential_only=False):
        if secret:
            for s in app["secrets"]:
                if secret == s["value"]:
                    if s["expired"]:
                        raise EntraError(
                            401, "invalid_client", 7000222,
                            "The provided client secret keys for app '%s' are "
                            "expired. Visit the Azure portal to create new "
                            "keys for your app: https://aka.ms/NewClientSecret"
                            ", or consider using certificate credentials for "
                            "added security: https://aka.ms/certCreds."
                            % app["client_id"])
                    return "1"
            # Pasting the secret's ID instead of its value is the classic
            # mistake; Microsoft answers it with the same code as any other
            # wrong secret, just with a pointed description.
            raise EntraError(
                401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent "
                "in the request is the client secret value, not the client "
                "secret ID, for a secret added to app '%s'."
                % app["client_id"])
        if confidential_only or not app["public_client"]:
            raise EntraError(
                401, "invalid_client", 7000218,
                "The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.")
        return "0"

    def authenticate_assertion(self, app, tenant_name, form, info):
        """A client assertion (certificate credential) checked as Microsoft
        does: form of the JWT, PS256/RS256 signature by a certificate
        registered on the app (x5t#S256 or x5t names it), aud = this token
        endpoint, iss = sub = client_id, nbf/exp, and a jti not seen
        before.  Returns appidacr "2" (certificate)."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        st = self.state
        info["client_auth"] = "assertion"
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise EntraError(
                400, "invalid_request", 50027 if form.get(
                    "client_assertion_type") else 900144,
                "Invalid client_assertion_type '%s'; expected '%s'."
                % (form.get("client_assertion_type"), ASSERTION_TYPE)
                if form.get("client_assertion_type") else
                "The request body must contain the following parameter: "
                "'client_assertion_type'.")
        jwt = form.get("client_assertion") or ""
        malformed = EntraError(400, "invalid_request", 50027,
                               "JWT token is invalid or malformed.")
        parts = jwt.split(".")
        if len(parts) != 3 or any("=" in p for p in parts):
            raise malformed
        try:
            header = json.loads(b64u_decode(parts[0]))
            claims = json.loads(b64u_decode(parts[1]))
            sig = b64u_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise malformed
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise malformed
        if header.get("alg") not in ("PS256", "RS256"):
            raise malformed
        cert = None
        tp_s256, tp_sha1 = header.get("x5t#S256"), header.get("x5t")
        for c in app.get("certificates", []):
            if (tp_s256 and tp_s256 == c["x5t_s256"]) or \
                    (tp_sha1 and tp_sha1 == c["x5t"]):
                cert = c
                break
        # Microsoft names the key by its thumbprint in hex.
        try:
            shown = b64u_decode(tp_s256 or tp_sha1 or "").hex().upper()
        except ValueError:
            shown = ""
        if cert is None:
            raise EntraError(
                401, "invalid_client", 700027,
                "Client assertion failed signature validation. [Reason - "
                "The key was not found., Thumbprint of key used by client: "
                "'%s', Please visit the Azure Portal, Graph Explorer or "
                "directly use MS Graph to see configured keys for app Id "
                "'%s'.]" % (shown, app["client_id"]))
        pub = x509.load_pem_x509_certificate(cert["pem"].encode()).public_key()
        signed = (parts[0] + "." + parts[1]).encode()
        try:
            if header["alg"] == "PS256":
                pub.verify(sig, signed, padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()),
                    salt_length=hashes.SHA256.digest_size), hashes.SHA256())
            else:
                pub.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise EntraError(
                401, "invalid_client", 700027,
                "Client assertion failed signature validation. [Reason - "
                "Key was found, but use of the key to verify the signature "
                "failed., Thumbprint of key used by client: '%s', Found key "
                "'Start=%s, End=%s']" % (shown, cert["not_before"],
                                         cert["not_after"]))
        if claims.get("iss") != app["client_id"] or \
                claims.get("sub") != app["client_id"]:
            raise EntraError(
                401, "invalid_client", 700021,
                "Client assertion application identifier doesn't match "
                "'client_id' parameter. Review the documentation at "
                "https://docs.microsoft.com/en-us/azure/active-directory/"
                "develop/active-directory-certificate-credentials .")
        tenant = st.find_tenant(tenant_name)
        names = {tenant_name}
        if tenant is not None:
            names.add(tenant["id"])
            names.update(tenant["domains"])
        expected = {"%s/%s/oauth2/v2.0/token" % (self.base_url, n)
                    for n in names}
        if claims.get("aud") not in expected:
            raise EntraError(
                401, "invalid_client", 700023,
                "Client assertion audience claim does not match Realm "
                "issuer. Review the documentation at https://docs.microsoft."
                "com/azure/active-directory/develop/active-directory-"
                "certificate-credentials .")
        t = now()
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int) or not isinstance(nbf, int) or \
                not claims.get("jti"):
            raise malformed
        if t > exp + ASSERTION_SKEW or t + ASSERTION_SKEW < nbf:
            raise EntraError(
                401, "invalid_client", 700024,
                "Client assertion is not within its valid time range. "
                "Current time: %s, assertion valid from %s, expiry time of "
                "assertion %s. Review the documentation at https://learn."
                "microsoft.com/entra/identity-platform/certificate-"
                "credentials" % (utc_stamp(t), utc_stamp(nbf),
                                 utc_stamp(exp)))
        for old in [j for j, e in st.jtis.items() if e + ASSERTION_SKEW < t]:
            del st.jtis[old]
        key = app["client_id"] + "|" + str(claims["jti"])
        if key in st.jtis:
            # Microsoft does not document its answer to a replayed jti; the
            # stand-in refuses it as a failed client assertion.
            raise EntraError(
                401, "invalid_client", 700027,
                "Client assertion failed signature validation. [Reason - "
                "The assertion was already used (jti '%s' replayed).]"
                % claims["jti"])
        st.jtis[key] = exp
        info["assertion"] = {"header": header, "claims": claims}
        return "2"

    # -- tokens ----------------------------------------------------------

    def _times(self):
        cfg = self.state.config
        t = int(now())
        exp_in = int(cfg["expires_in"])
        ext = cfg["ext_expires_in"]
        return t, exp_in, int(ext) if ext is not None else exp_in

    def _access_token(self, app, tid, res, host, user=None, perms=(),
                      roles=None, appidacr="1"):
        t, exp_in, _ = self._times()
        aud = "https://%s" % host
        claims = {
            "aud": aud, "iss": "https://sts.windows.net/%s/" % tid,
            "iat": t, "nbf": t, "exp": t + exp_in,
            "aio": rand_chars(60), "app_displayname": app["name"],
            "appid": app["client_id"], "appidacr": appidacr,
            "idp": "https://sts.windows.net/%s/" % tid,
            "rh": "1.A" + rand_chars(60) + ".", "tid": tid,
            "uti": rand_chars(22), "ver": "1.0",
            "xms_ftd": rand_chars(44), "xms_idrel": "7 %d" % (t % 30),
        }
        if user is not None:
            claims.update({
                "acct": 0, "acr": "1", "amr": ["pwd", "mfa"],
                "family_name": user["display_name"].split()[-1],
                "given_name": user["display_name"].split()[0],
                "idtyp": "user", "ipaddr": "127.0.0.1",
                "name": user["display_name"], "oid": user["oid"],
                "puid": user["puid"], "scp": " ".join(perms),
                "sid": str(uuid.uuid4()), "signin_state": ["kmsi"],
                "sub": b64u(hashlib.sha256(
                    (user["oid"] + app["client_id"]).encode()).digest()),
                "unique_name": user["username"], "upn": user["username"],
                "wids": ["b79fbf4d-3ef9-4689-8143-76b194e85509"],
            })
        else:
            claims.update({"idtyp": "app", "oid": app["sp_oid"],
                           "sub": app["sp_oid"], "roles": list(roles or [])})
            if not roles:
                del claims["roles"]
        header = {"typ": "JWT", "nonce": rand_chars(43), "alg": "RS256",
                  "x5t": rand_chars(27), "kid": rand_chars(27)}
        token = jwt_like(header, claims)
        # The record keeps the exact expiry; the claims carry whole seconds.
        self.state.access[token] = {
            "client_id": app["client_id"], "tid": tid, "resource": res,
            "aud": aud, "user": user["username"] if user else None,
            "scope": None, "roles": list(roles or []), "exp": now() + exp_in,
            "app_only": user is None, "iat": t}
        return token, exp_in

    def _id_token(self, app, tid, user, oidc, nonce=None):
        t = int(now())
        claims = {
            "aud": app["client_id"],
            "iss": "%s/%s/v2.0" % (self.base_url, tid),
            "iat": t, "nbf": t, "exp": t + 3600,
            "name": user["display_name"], "oid": user["oid"],
            "preferred_username": user["username"],
            "rh": "1.A" + rand_chars(60) + ".",
            "sub": b64u(hashlib.sha256(
                (user["oid"] + app["client_id"]).encode()).digest()),
            "tid": tid, "uti": rand_chars(22), "ver": "2.0",
        }
        if "email" in oidc:
            claims["email"] = user["username"]
        if nonce:
            claims["nonce"] = nonce
        header = {"typ": "JWT", "alg": "RS256", "kid": rand_chars(27)}
        # Unverifiable signature: clients read the claims, they don't check it.
        return ".".join([
            b64u(json.dumps(header, separators=(",", ":")).encode()),
            b64u(json.dumps(claims, separators=(",", ":")).encode()),
            b64u(os.urandom(256))])

    def _new_refresh_token(self, grant, app):
        rt = opaque_token("1.A", 1500, 2500)
        t = now()
        rec = dict(grant)
        rec.update({"issued": t, "last_used": t, "revoked": None,
                    "expires_at": t + float(
                        self.state.config["refresh_token_lifetime"])})
        rec["client_id"] = app["client_id"]
        self.state.refresh[rt] = rec
        return rt

    def issue_delegated(self, app, grant, res, host, appidacr):
        """Answer for a user grant (code, refresh, device code).

        grant: client_id, user, tid, oidc, offline, nonce.  The access token
        carries every permission the user consented to for that resource,
        not just the ones requested: Microsoft does the same."""
        st = self.state
        user = st.user(grant["user"])
        consent = st.consents.get("%s|%s" % (app["client_id"],
                                             user["username"].lower()), {})
        perms = consent.get(res, [])
        tid = grant["tid"]
        token, exp_in = self._access_token(app, tid, res, host, user=user,
                                           perms=perms, appidacr=appidacr)
        scope = scope_string(res, perms, host, grant["oidc"])
        st.access[token]["scope"] = scope
        _, _, ext = self._times()
        answer = {"token_type": "Bearer", "scope": scope,
                  "expires_in": exp_in, "ext_expires_in": ext,
                  "access_token": token}
        if grant["offline"]:
            answer["refresh_token"] = self._new_refresh_token(
                dict(grant, resource=res, host=host), app)
        if "openid" in grant["oidc"]:
            answer["id_token"] = self._id_token(app, tid, user, grant["oidc"],
                                                grant.get("nonce"))
        return answer

    def add_consent(self, app, user, scopes):
        key = "%s|%s" % (app["client_id"], user["username"].lower())
        consent = self.state.consents.setdefault(key, {})
        for res in scopes.order:
            have = consent.setdefault(res, [])
            wanted = [p for p, _ in scopes.resources[res]]
            if res in scopes.default:
                wanted += app["delegated_permissions"] if res == EXCHANGE \
                    else ["User.Read"]
            for p in wanted:
                if p not in have:
                    have.append(p)

    def check_consented(self, app, username, scopes):
        consent = self.state.consents.get(
            "%s|%s" % (app["client_id"], username.lower()), {})
        for res in scopes.order:
            for perm, _ in scopes.resources[res]:
                if perm not in consent.get(res, []):
                    raise EntraError(
                        400, "invalid_grant", 65001,
                        reauth_text(65001, client_id=app["client_id"],
                                    app_name=app["name"]),
                        suberror="consent_required")

    # -- token endpoint --------------------------------------------------

    def token(self, tenant_name, form, basic, info):
        """POST /{tenant}/oauth2/v2.0/token -> answer dict.  info collects
        grant_type, client_id and user for the request log."""
        st = self.state
        info["client_id"] = form.get("client_id") or (basic or (None,))[0]
        grant_type = form.get("grant_type")
        if not grant_type:
            raise missing_param("grant_type")
        if grant_type not in GRANT_TYPES:
            raise EntraError(400, "unsupported_grant_type", 70003,
                             "The app requested an unsupported grant type "
                             "'%s'." % grant_type)
        client_id = info["client_id"]
        if grant_type == "client_credentials" and \
                tenant_name.lower() in ("common", "consumers"):
            raise EntraError(400, "invalid_request", 9001023,
                             "The grant type is not supported over the "
                             "/common or /consumers endpoints. Please use the "
                             "/organizations or tenant-specific endpoint.")
        secret = form.get("client_secret") or (basic[1] if basic else None)
        with st.lock:
            app, tid = self.resolve(tenant_name, client_id)
            if "client_assertion" in form or "client_assertion_type" in form:
                if secret:
                    raise EntraError(
                        400, "invalid_request", 90014,
                        "The request has both 'client_secret' and "
                        "'client_assertion'; send one.")
                appidacr = self.authenticate_assertion(app, tenant_name,
                                                       form, info)
            else:
                info["client_auth"] = "secret" if secret else "none"
                appidacr = self.authenticate_client(
                    app, secret,
                    confidential_only=grant_type == "client_credentials")
            handler = {"authorization_code": self._grant_code,
                       "refresh_token": self._grant_refresh,
                       "client_credentials": self._grant_client_credentials,
                       DEVICE_GRANT: self._grant_device}[grant_type]
            return handler(app, tid, form, appidacr, info)

    def _grant_code(self, app, tid, form, appidacr, info):
        st = self.state
        code = form.get("code")
        if not code:
            raise missing_param("code")
        redirect_uri = form.get("redirect_uri")
        if not redirect_uri:
            raise missing_param("redirect_uri")
        rec = st.codes.get(code)
        if rec is None:
            raise EntraError(400, "invalid_grant", 9002313,
                             "Invalid request. Request is malformed or "
                             "invalid.")
        info["user"] = rec["user"]
        if rec["client_id"] != app["client_id"]:
            raise EntraError(400, "invalid_grant", 70000,
                             "The provided value for the 'code' parameter is "
                             "not valid. The code was issued to a different "
                             "client.")
        if rec["used"]:
            raise EntraError(400, "invalid_grant", 54005,
                             "OAuth2 Authorization code was already redeemed, "
                             "please retry with a new valid code or use an "
                             "existing refresh token.")
        # Any redemption attempt burns the code, so a wrong verifier can't
        # be retried against it.
        rec["used"] = True
        if now() > rec["expires_at"]:
            raise EntraError(400, "invalid_grant", 70008, REAUTH_TEXT[70008])
        if redirect_uri != rec["redirect_uri"]:
            raise EntraError(400, "invalid_grant", 70000,
                             "The provided value for the 'redirect_uri' is not "
                             "valid. The value must exactly match the redirect "
                             "URI used to obtain the authorization code.")
        verifier = form.get("code_verifier") or ""
        if b64u(hashlib.sha256(verifier.encode()).digest()) != rec["challenge"]:
            raise EntraError(400, "invalid_grant", 501481,
                             "The Code_Verifier does not match the "
                             "code_challenge supplied in the authorization "
                             "request.")
        res, host = rec["resource"], rec["host"]
        if form.get("scope"):
            scopes = ScopeSet(form["scope"], st.tenant_label(tid))
            scopes.require_single_resource()
            try:
                self.check_consented(app, rec["user"], scopes)
            except EntraError as e:
                e.error = "consent_required"
                raise
            if scopes.order:
                res = scopes.order[0]
                host = scopes.host_of(res)
        grant = {"user": rec["user"], "tid": rec["tid"], "oidc": rec["oidc"],
                 "offline": "offline_access" in rec["oidc"],
                 "nonce": rec.get("nonce"), "client_id": app["client_id"]}
        return self.issue_delegated(app, grant, res, host, appidacr)

    def _grant_refresh(self, app, tid, form, appidacr, info):
        st = self.state
        rt = form.get("refresh_token")
        if not rt:
            raise missing_param("refresh_token")
        rec = st.refresh.get(rt)
        if rec is None:
            raise EntraError(400, "invalid_grant", 9002313,
                             "Invalid request. Request is malformed or "
                             "invalid.")
        info["user"] = rec["user"]
        if rec["client_id"] != app["client_id"]:
            raise EntraError(400, "invalid_grant", 70000,
                             "Provided grant is invalid or malformed. The "
                             "refresh token was issued to a different client.")
        t = now()
        if rec["revoked"] is None and t > rec["expires_at"]:
            rec["revoked"] = 700082
        if rec["revoked"] is not None:
            code = rec["revoked"]
            text = reauth_text(code, issued=utc_stamp(rec["issued"]),
                               now=utc_stamp(), client_id=app["client_id"],
                               app_name=app["name"],
                               resource_id=RESOURCE_APP_IDS.get(
                                   rec["resource"], ""))
            extra = {}
            if code in REAUTH_SUBERROR:
                extra["suberror"] = REAUTH_SUBERROR[code]
            raise EntraError(400, "invalid_grant", code, text, **extra)
        res, host = rec["resource"], rec["host"]
        if form.get("scope"):
            scopes = ScopeSet(form["scope"], st.tenant_label(tid))
            scopes.require_single_resource()
            self.check_consented(app, rec["user"], scopes)
            if scopes.order:
                res = scopes.order[0]
                host = scopes.host_of(res)
        # The refresh token slides: use renews its 90 days.
        rec["last_used"] = t
        rec["expires_at"] = t + float(st.config["refresh_token_lifetime"])
        grant = {k: rec[k] for k in ("user", "tid", "oidc", "offline",
                                     "client_id")}
        grant["offline"] = True
        answer = self.issue_delegated(app, grant, res, host, appidacr)
        if st.config["rotation"] == "strict":
            rec["revoked"] = 70000
        return answer

    def _grant_client_credentials(self, app, tid, form, appidacr, info):
        st = self.state
        scope = form.get("scope")
        if not scope:
            raise missing_param("scope")
        for item in scope.split():
            if not item.lower().endswith("/.default"):
                raise EntraError(
                    400, "invalid_scope", 1002012,
                    "The provided value for scope %s is not valid. Client "
                    "credential flows must have a scope value with /.default "
                    "suffixed to the resource identifier (application ID "
                    "URI)." % item)
        scopes = ScopeSet(scope, st.tenant_label(tid))
        scopes.require_single_resource()
        res = scopes.order[0]
        host = scopes.host_of(res)
        # Microsoft issues a token even when no application permission was
        # granted; it just has no roles, and Exchange refuses it later.
        roles = app["app_roles"] if (res == EXCHANGE and
                                     host == "outlook.office365.com") else []
        if res == GRAPH:
            roles = app.get("graph_roles", [])
        token, exp_in = self._access_token(app, tid, res, host, roles=roles,
                                           appidacr=appidacr)
        st.access[token]["scope"] = " ".join(roles)
        _, _, ext = self._times()
        return {"token_type": "Bearer", "expires_in": exp_in,
                "ext_expires_in": ext, "access_token": token}

    def _grant_device(self, app, tid, form, appidacr, info):
        st = self.state
        device_code = form.get("device_code")
        if not device_code:
            raise missing_param("device_code")
        rec = st.devices.get(device_code)
        if rec is None or rec["client_id"] != app["client_id"]:
            raise EntraError(400, "bad_verification_code", 70000,
                             "The provided value for the input parameter "
                             "'device_code' is not valid.")
        info["user"] = rec.get("user")
        t = now()
        if rec["status"] == "redeemed":
            raise EntraError(400, "invalid_grant", 54005,
                             "The device code was already redeemed, please "
                             "start a new device code request or use the "
                             "refresh token.")
        if t > rec["expires_at"]:
            raise EntraError(400, "expired_token", 70019,
                             "Verification code expired.")
        last, rec["last_poll"] = rec["last_poll"], t
        if last is not None and t - last < rec["interval"] - 0.02:
            rec["interval"] += int(st.config["device_slow_down_increment"])
            raise EntraError(400, "slow_down", 70016,
                             "OAuth 2.0 device flow error. Polling too fast; "
                             "wait at least %d seconds between requests."
                             % rec["interval"])
        if rec["status"] == "pending":
            raise EntraError(400, "authorization_pending", 70016,
                             "OAuth 2.0 device flow error. Authorization is "
                             "pending. Continue polling.")
        if rec["status"] == "declined":
            raise EntraError(400, "authorization_declined", 65004,
                             "User declined to consent to access the app.")
        rec["status"] = "redeemed"
        grant = {"user": rec["user"], "tid": rec["tid"], "oidc": rec["oidc"],
                 "offline": "offline_access" in rec["oidc"],
                 "client_id": app["client_id"]}
        return self.issue_delegated(app, grant, rec["resource"], rec["host"],
                                    appidacr)

    # -- devicecode endpoint ---------------------------------------------

    def devicecode(self, tenant_name, form):
        st = self.state
        with st.lock:
            app, tid = self.resolve(tenant_name, form.get("client_id"))
            if not form.get("scope"):
                raise missing_param("scope")
            scopes = ScopeSet(form["scope"], st.tenant_label(tid))
            # Microsoft would quietly pick the first resource; one device
            # sign-in yields one token, so ask for one resource.
            scopes.require_single_resource()
            res = scopes.order[0] if scopes.order else GRAPH
            host = scopes.host_of(res) or "graph.microsoft.com"
            device_code = opaque_token("DAQABIQEAAA", 280, 320)
            while True:
                user_code = rand_chars(9, USER_CODE_CHARS)
                if user_code not in st.user_codes:
                    break
            cfg = st.config
            expires_in = int(cfg["device_expires_in"])
            st.devices[device_code] = {
                "client_id": app["client_id"], "tid": tid,
                "user_code": user_code, "scope": form["scope"],
                "oidc": scopes.oidc, "resource": res, "host": host,
                "consent_scopes": form["scope"],
                "expires_at": now() + expires_in,
                "interval": int(cfg["device_interval"]),
                "last_poll": None, "status": "pending", "user": None}
            st.user_codes[user_code] = device_code
            uri = "%s/common/oauth2/deviceauth" % self.base_url
            return {"user_code": user_code, "device_code": device_code,
                    "verification_uri": uri, "expires_in": expires_in,
                    "interval": int(cfg["device_interval"]),
                    "message": "To sign in, use a web browser to open the "
                               "page %s and enter the code %s to "
                               "authenticate." % (uri, user_code)}, app

    def device_decide(self, user_code, username=None, approve=True):
        st = self.state
        with st.lock:
            dc = st.user_codes.get((user_code or "").strip().upper())
            rec = st.devices.get(dc)
            if rec is None:
                raise ControlError("unknown user_code %r" % user_code)
            if now() > rec["expires_at"]:
                raise ControlError("user_code %s has expired" % user_code)
            if rec["status"] != "pending":
                raise ControlError("user_code %s is already %s"
                                   % (user_code, rec["status"]))
            if not approve:
                rec["status"] = "declined"
                return rec
            user = st.user(username)
            if user is None:
                raise ControlError("unknown user %r" % username)
            app = st.apps[rec["client_id"]]
            self.add_consent(app, user, ScopeSet(rec["consent_scopes"]))
            rec["status"] = "approved"
            rec["user"] = user["username"]
            return rec

    # -- authorize endpoint ------------------------------------------------

    @staticmethod
    def redirect_matches(app, uri):
        """Registered redirect URIs match exactly (case-sensitive path).

        For public clients (desktop/mobile platform) Microsoft ignores the
        port of a loopback URI, since such apps listen on an ephemeral port;
        confidential (web) registrations keep the exact match."""
        if uri in app["redirect_uris"]:
            return True
        if not app["public_client"]:
            return False
        want = urllib.parse.urlsplit(uri)
        if want.hostname not in ("localhost", "127.0.0.1"):
            return False
        for reg in app["redirect_uris"]:
            have = urllib.parse.urlsplit(reg)
            if (have.scheme, have.hostname, have.path, have.query) == \
                    (want.scheme, want.hostname, want.path, want.query):
                return True
        return False

    def authorize(self, tenant_name, params):
        """-> ("redirect", redirect_uri, response_mode, params) or raises."""
        st = self.state
        with st.lock:
            app, tid = self.resolve(tenant_name, params.get("client_id"),
                                    page=True)
            redirect_uri = params.get("redirect_uri")
            if not redirect_uri:
                raise PageError(900144, "The request body must contain the "
                                "following parameter: 'redirect_uri'.")
            if not self.redirect_matches(app, redirect_uri):
                raise PageError(
                    50011, "The redirect URI '%s' specified in the request "
                    "does not match the redirect URIs configured for the "
                    "application '%s'. Make sure the redirect URI sent in the "
                    "request matches one added to your application in the "
                    "Azure portal. Navigate to "
                    "https://aka.ms/redirectUriMismatchError to learn more "
                    "about how to fix this." % (redirect_uri, app["client_id"]))
            mode = params.get("response_mode") or "query"
            if mode not in ("query", "fragment", "form_post"):
                raise RedirectError("invalid_request", 900144,
                                    "The provided value for the input "
                                    "parameter 'response_mode' is not valid.")
            rtype = params.get("response_type")
            if not rtype:
                raise RedirectError("invalid_request", 900144,
                                    "The request body must contain the "
                                    "following parameter: 'response_type'.")
            if rtype != "code":
                raise RedirectError("unsupported_response_type", 700051,
                                    "response_type '%s' is not enabled for "
                                    "the application." % rtype)
            if not params.get("scope"):
                raise RedirectError("invalid_request", 900144,
                                    "The request body must contain the "
                                    "following parameter: 'scope'.")
            try:
                scopes = ScopeSet(params["scope"], st.tenant_label(tid))
            except EntraError as e:
                raise RedirectError(e.error, e.code, e.text)
            # PKCE: Microsoft only recommends it; the product must always send
            # it with S256, so the stand-in insists.
            challenge = params.get("code_challenge")
            if not challenge:
                raise RedirectError("invalid_request", 900144,
                                    "The request body must contain the "
                                    "following parameter: 'code_challenge'.")
            if params.get("code_challenge_method") != "S256":
                raise RedirectError("invalid_request", 501491,
                                    "The code_challenge_method must be "
                                    "'S256'.")
            if not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
                raise RedirectError("invalid_request", 501491,
                                    "Invalid size of Code_Challenge "
                                    "parameter.")
            # Who signs in: a queued control decision first (it models what
            # the person actually does in the browser), else login_hint,
            # else the only user there is.
            decision = st.sign_ins.pop(0) if st.sign_ins else {}
            if decision.get("decline"):
                raise RedirectError("access_denied", 65004,
                                    "User declined to consent to access the "
                                    "app.")
            name = decision.get("user") or params.get("login_hint")
            if not name and len(st.users) == 1:
                name = next(iter(st.users.values()))["username"]
            if not name:
                raise PageError(50058, "A silent sign-in request was sent but "
                                "no user is signed in. (Stand-in: pass "
                                "login_hint or queue a sign-in through "
                                "/_control/sign_in.)")
            user = st.user(name)
            if user is None:
                raise PageError(50034, "The user account %s does not exist in "
                                "the '%s' directory. To sign into this "
                                "application, the account must be added to "
                                "the directory." % (name, st.tenant_label(tid)))
            self.add_consent(app, user, scopes)
            res = scopes.order[0] if scopes.order else GRAPH
            code = opaque_token("1.AUEA", 900, 1100)
            st.codes[code] = {
                "client_id": app["client_id"], "user": user["username"],
                "tid": tid, "oidc": scopes.oidc, "resource": res,
                "host": scopes.host_of(res) or "graph.microsoft.com",
                "redirect_uri": redirect_uri, "challenge": challenge,
                "nonce": params.get("nonce"), "used": False,
                "expires_at": now() + float(st.config["code_lifetime"])}
            return redirect_uri, mode, {"code": code,
                                        "session_state": str(uuid.uuid4()),
                                        "user": user["username"]}

    # -- introspection (Dovecot) -------------------------------------------

    def introspect(self, token):
        """RFC 7662 answer as Dovecot's oauth2 passdb wants it.

        Active means: Exchange would accept this token.  So a Graph token,
        an app-only token without Exchange roles, and an expired token are
        all inactive.  username is the signed-in mailbox, or for app-only
        tokens the mailbox the test granted the app (Dovecot compares it
        with the login name, as Exchange checks the mailbox permission)."""
        st = self.state
        with st.lock:
            rec = st.access.get(token or "")
            if rec is None or now() >= rec["exp"] or rec["resource"] != EXCHANGE:
                return {"active": False}, rec
            if rec["app_only"]:
                app = st.apps.get(rec["client_id"])
                if not rec["roles"] or not app or not app["app_only_mailbox"]:
                    return {"active": False}, rec
                username = app["app_only_mailbox"]
            else:
                username = rec["user"]
            return {"active": True, "username": username,
                    "scope": rec["scope"], "client_id": rec["client_id"],
                    "token_type": "Bearer", "exp": int(rec["exp"]),
                    "iat": rec["iat"], "aud": rec["aud"],
                    "sub": username}, rec

    # -- control API -----------------------------------------------------

    def control(self, name, body):
        st = self.state
        fn = getattr(self, "ctl_" + name.replace("/", "_"), None)
        if fn is None:
            raise ControlError("unknown control call %r" % name)
        with st.lock:
            return fn(body)

    def ctl_reset(self, body):
        self.state.reset()
        return {"reset": True}

    def ctl_config(self, body):
        cfg = self.state.config
        for key, value in body.items():
            if key not in DEFAULT_CONFIG:
                raise ControlError("unknown config key %r" % key)
            if key == "rotation" and value not in ("lenient", "strict"):
                raise ControlError("rotation must be lenient or strict")
            cfg[key] = value
        return dict(cfg)

    def ctl_tenant(self, body):
        tid = body.get("tenant_id") or str(uuid.uuid4())
        t = self.state.tenants.setdefault(tid, {"id": tid, "domains": []})
        for d in body.get("domains", []):
            if d not in t["domains"]:
                t["domains"].append(d)
        return t

    def ctl_app(self, body):
        st = self.state
        client_id = body.get("client_id") or str(uuid.uuid4())
        app = st.apps.get(client_id)
        if app is None:
            tid = body.get("tenant_id") or DEFAULT_TENANT_ID
            self.ctl_tenant({"tenant_id": tid,
                             "domains": body.get("tenant_domains", [])})
            secret = body.get("secret", True)
            app = {"client_id": client_id, "name": "mod_mailoauth test",
                   "tenant_id": tid, "multi_tenant": False,
                   "public_client": False,
                   "redirect_uris": ["http://localhost"],
                   "secrets": [], "delegated_permissions":
                       ["SMTP.Send", "IMAP.AccessAsUser.All"],
                   "app_roles": [], "app_only_mailbox": None,
                   "sp_oid": str(uuid.uuid4())}
            if secret:
                app["secrets"].append({
                    "id": body.get("secret_id") or str(uuid.uuid4()),
                    "value": new_client_secret() if secret is True else secret,
                    "expired": False})
            st.apps[client_id] = app
        elif body.get("tenant_domains"):
            self.ctl_tenant({"tenant_id": app["tenant_id"],
                             "domains": body["tenant_domains"]})
        for key in ("name", "multi_tenant", "public_client", "redirect_uris",
                    "delegated_permissions", "app_roles", "app_only_mailbox",
                    "graph_roles"):
            if key in body:
                app[key] = body[key]
        if body.get("app_only") and "app_roles" not in body:
            app["app_roles"] = ["IMAP.AccessAsApp", "SMTP.SendAsApp"]
        if body.get("app_only") is False and "app_roles" not in body:
            app["app_roles"] = []
        if "secret_expired" in body:
            for s in app["secrets"]:
                s["expired"] = bool(body["secret_expired"])
        for pem in body.get("certificates", []):
            app.setdefault("certificates", []).append(cert_record(pem))
        if body.get("remove_secrets"):
            app["secrets"] = []
        if body.get("add_secret"):
            app["secrets"].append({"id": str(uuid.uuid4()),
                                   "value": new_client_secret(),
                                   "expired": False})
        return self.app_view(app)

    def app_view(self, app):
        view = copy.deepcopy(app)
        valid = [s for s in app["secrets"] if not s["expired"]] or app["secrets"]
        view["secret"] = valid[-1]["value"] if valid else None
        view["secret_id"] = valid[-1]["id"] if valid else None
        t = self.state.tenants[app["tenant_id"]]
        view["tenant_domains"] = list(t["domains"])
        return view

    def ctl_user(self, body):
        st = self.state
        name = body.get("username")
        if not name or "@" not in name:
            raise ControlError("username must be a mailbox address")
        user = st.users.get(name.lower())
        if user is None:
            local = name.split("@")[0]
            user = {"username": name,
                    "display_name": local.replace(".", " ").title(),
                    "oid": str(uuid.uuid4()),
                    "puid": "1003%012X" % secrets.randbelow(16 ** 12)}
            st.users[name.lower()] = user
        for key in ("display_name", "oid"):
            if body.get(key):
                user[key] = body[key]
        return dict(user)

    def ctl_sign_in(self, body):
        if body.get("user") and self.state.user(body["user"]) is None:
            raise ControlError("unknown user %r" % body["user"])
        entry = {"user": body.get("user"), "decline": bool(body.get("decline"))}
        for _ in range(int(body.get("count", 1))):
            self.state.sign_ins.append(dict(entry))
        return {"queued": len(self.state.sign_ins)}

    FAULT_KINDS = ("http", "html", "error", "delay", "malformed", "truncated",
                   "reset", "close")

    def ctl_fault(self, body):
        kind = body.get("kind")
        if kind not in self.FAULT_KINDS:
            raise ControlError("fault kind must be one of %s"
                               % ", ".join(self.FAULT_KINDS))
        fault = dict(body)
        fault["count"] = int(body.get("count", 1))
        fault.setdefault("endpoint", "token")
        self.state.faults.append(fault)
        return {"pending": len(self.state.faults)}

    def ctl_faults_clear(self, body):
        n = len(self.state.faults)
        self.state.faults.clear()
        return {"cleared": n}

    def ctl_device_approve(self, body):
        rec = self.device_decide(body.get("user_code"), body.get("user"), True)
        return {"status": rec["status"], "user": rec["user"]}

    def ctl_device_decline(self, body):
        rec = self.device_decide(body.get("user_code"), approve=False)
        return {"status": rec["status"]}

    def _match(self, rec, body):
        user = body.get("user")
        if user and (rec.get("user") or "").lower() != user.lower():
            return False
        if body.get("client_id") and rec["client_id"] != body["client_id"]:
            return False
        return True

    def ctl_revoke(self, body):
        code = int(body.get("code", 70008))
        n = 0
        for rec in self.state.refresh.values():
            if rec["revoked"] is None and self._match(rec, body):
                rec["revoked"] = code
                n += 1
        if code == 65001:
            # Consent withdrawn: a new sign-in has to ask for it again.
            for key in list(self.state.consents):
                cid, user = key.split("|", 1)
                if self._match({"client_id": cid, "user": user}, body):
                    del self.state.consents[key]
        return {"revoked": n}

    def ctl_expire_access(self, body):
        n = 0
        t = now()
        for rec in self.state.access.values():
            if rec["exp"] > t and self._match(rec, body):
                rec["exp"] = t - 1
                n += 1
        return {"expired": n}

    def ctl_token_info(self, body):
        token = body.get("token", "")
        st = self.state
        for kind, table in (("access_token", st.access),
                            ("refresh_token", st.refresh),
                            ("code", st.codes)):
            if token in table:
                return dict(table[token], kind=kind)
        return {"kind": None}

    def ctl_stats(self, body):
        st = self.state
        out = copy.deepcopy(st.stats)
        out["faults_pending"] = sum(f["count"] for f in st.faults)
        out["refresh_tokens"] = {
            "total": len(st.refresh),
            "valid": sum(1 for r in st.refresh.values() if r["revoked"] is None)}
        return out

    def ctl_stats_reset(self, body):
        self.state.stats = {"requests": {}, "token_requests": {}, "log": []}
        return {"reset": True}


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tokensvc"
    sys_version = ""
    timeout = 60          # idle keep-alive connections don't pin a thread

    def setup(self):
        # TLS handshake in the connection's own thread, so one slow client
        # can't stall accept() for everybody.
        self.request.settimeout(10)
        self.request = self.server.ssl_context.wrap_socket(
            self.request, server_side=True)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            # The server only closes the raw socket, which TLS detached.
            try:
                self.request.close()
            except OSError:
                pass

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (utc_stamp(), fmt % args))

    @property
    def svc(self):
        return self.server.service

    @property
    def state(self):
        return self.server.service.state

    # -- I/O helpers -----------------------------------------------------

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > 1 << 20:
                    raise ValueError("body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def send(self, status, body=b"", ctype="application/json; charset=utf-8",
             headers=(), declared_length=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(
            len(body) if declared_length is None else declared_length))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        self.send_header("x-ms-request-id", self.trace_id)
        if self.correlation_id_from_client:
            self.send_header("client-request-id", self.correlation_id)
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status, obj, headers=()):
        self.send(status, json.dumps(obj), headers=headers)

    def entra_body(self, error, code, text, extra=None):
        ts = utc_stamp()
        body = {
            "error": error,
            "error_description": "AADSTS%d: %s\r\nTrace ID: %s\r\n"
                                 "Correlation ID: %s\r\nTimestamp: %s"
                                 % (code, text, self.trace_id,
                                    self.correlation_id, ts),
            "error_codes": [code], "timestamp": ts,
            "trace_id": self.trace_id, "correlation_id": self.correlation_id,
            "error_uri": "https://login.microsoftonline.com/error?code=%d"
                         % code}
        body.update(extra or {})
        return body

    def error_page(self, code, text, status=400):
        page = ("<!DOCTYPE html><html><head><title>Sign in to your account"
                "</title></head><body><h1>Sorry, but we're having trouble "
                "signing you in.</h1><p id=\"error\">AADSTS%d: %s</p>"
                "<p>Request Id: %s<br>Correlation Id: %s<br>Timestamp: %s"
                "</p></body></html>"
                % (code, html.escape(text), self.trace_id,
                   self.correlation_id, utc_stamp()))
        self.send(status, page, ctype="text/html; charset=utf-8")

    # -- dispatch --------------------------------------------------------

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def dispatch(self):
        self.trace_id = str(uuid.uuid4())
        # Microsoft uses the client's client-request-id as correlation id.
        cri = self.headers.get("client-request-id")
        self.correlation_id_from_client = bool(cri)
        self.correlation_id = cri or str(uuid.uuid4())
        url = urllib.parse.urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send_json(400, self.entra_body(
                "invalid_request", 90014, "Malformed request body."))
            return
        try:
            if parts[:1] == ["_control"]:
                self.handle_control("/".join(parts[1:]), body)
            elif parts == ["introspect"]:
                self.handle_introspect(url, body)
            elif len(parts) == 4 and parts[1:3] == ["oauth2", "v2.0"] and \
                    parts[3] in ("token", "devicecode", "authorize"):
                getattr(self, "handle_" + parts[3])(parts[0], url, body)
            elif len(parts) == 3 and parts[1:] == ["oauth2", "deviceauth"]:
                self.handle_deviceauth(url, body)
            elif len(parts) == 4 and parts[1:] == [
                    "v2.0", ".well-known", "openid-configuration"]:
                self.handle_discovery(parts[0])
            else:
                self.error_page(900561, "The requested endpoint does not "
                                "exist.", status=404)
        finally:
            # GET /authorize makes codes too, so every request may change state.
            if self.state.path and parts[:2] != ["_control", "stats"]:
                try:
                    self.state.save()
                except OSError as e:
                    self.log_message("state save failed: %s", e)

    def parse_form(self, body):
        """Form fields, as Microsoft reads them: only from a form-encoded
        body, and a repeated parameter is an error, not a choice."""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype.lower() != "application/x-www-form-urlencoded":
            return {}
        pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"),
                                       keep_blank_values=True)
        form = {}
        for k, v in pairs:
            if k in form:
                raise EntraError(400, "invalid_request", 9000411,
                                 "The request is not properly formatted. The "
                                 "parameter '%s' is duplicated." % k)
            form[k] = v
        return form

    def basic_auth(self):
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            return None
        try:
            raw = base64.b64decode(auth[6:].strip()).decode()
            cid, _, secret = raw.partition(":")
            return (urllib.parse.unquote_plus(cid),
                    urllib.parse.unquote_plus(secret))
        except (ValueError, UnicodeDecodeError):
            return None

    # -- faults ------------------------------------------------------------

    def run_with_fault(self, endpoint, grant_type, produce):
        """Answer via produce() -> (status, obj, headers, log) unless a
        queued fault for this endpoint says otherwise."""
        fault = self.state.take_fault(endpoint, grant_type)
        if fault is None:
            status, obj, headers = produce()
            self.send_json(status, obj, headers)
            return
        kind = fault["kind"]
        log = {"grant_type": grant_type, "outcome": "fault:" + kind}
        if kind == "delay":
            # The work is done first: a client that gives up waiting has
            # still, for example, had its refresh token rotated.
            status, obj, headers = produce(log=False)
            self.state.record(endpoint, status=status, **log)
            time.sleep(float(fault.get("seconds", 5)))
            try:
                self.send_json(status, obj, headers)
            except OSError:
                pass
            return
        status = int(fault.get("status", 200 if kind in ("malformed",
                                                         "truncated") else 503))
        self.state.record(endpoint, status=status, **log)
        headers = []
        if fault.get("retry_after") is not None:
            headers.append(("Retry-After", str(fault["retry_after"])))
        if kind == "http":
            if status == 429:
                default = ("temporarily_unavailable", 90055,
                           "Too many requests. Please retry after some time.")
            else:
                default = ("temporarily_unavailable", 90033,
                           "A transient error has occurred. Please try "
                           "again.")
            self.send_json(status, self.entra_body(
                fault.get("error", default[0]),
                int(fault.get("code", default[1])),
                fault.get("description", default[2])), headers)
        elif kind == "error":
            self.send_json(int(fault.get("status", 400)), self.entra_body(
                fault.get("error", "invalid_grant"),
                int(fault.get("code", 70008)),
                fault.get("description", reauth_text(
                    int(fault.get("code", 70008)))),
                fault.get("extra")), headers)
        elif kind == "html":
            page = ("<html><head><title>%d Service Unavailable</title></head>"
                    "<body><h1>Service Unavailable</h1><p>The service is "
                    "temporarily unavailable.</p></body></html>" % status)
            self.send(status, page, ctype="text/html", headers=headers)
        elif kind == "malformed":
            self.send(status, b'{"token_type":"Bearer","expires_in":3599,'
                              b'"access_token":eyJ0eXAi...',
                      headers=headers)
        elif kind == "truncated":
            body = json.dumps({"token_type": "Bearer", "expires_in": 3599,
                               "access_token": rand_chars(1800)}).encode()
            cut = body[:len(body) // 2]
            if fault.get("mode", "short") == "short":
                # Promise the whole body, deliver half, hang up.
                self.close_connection = True
                self.send(status, cut, headers=headers,
                          declared_length=len(body))
            else:
                self.send(status, cut, headers=headers)
        elif kind in ("reset", "close"):
            self.close_connection = True
            sock = self.connection
            if kind == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # -- endpoints ---------------------------------------------------------

    def handle_token(self, tenant, url, body):
        if self.command != "POST":
            self.state.record("token", outcome="invalid_request/900561",
                              status=400)
            self.send_json(400, self.entra_body(
                "invalid_request", 900561, "The endpoint only accepts POST, "
                "OPTIONS requests. Received a %s request." % self.command))
            return
        try:
            form = self.parse_form(body)
        except EntraError as e:
            form = {"__error__": e}
        grant_type = form.get("grant_type") if "__error__" not in form else None

        def produce(log=True):
            info = {"grant_type": grant_type, "client_id": form.get(
                "client_id")}
            try:
                if "__error__" in form:
                    raise form["__error__"]
                answer = self.svc.token(tenant, form, self.basic_auth(), info)
                status, obj, outcome = 200, answer, "ok"
            except EntraError as e:
                status = e.status
                obj = self.entra_body(e.error, e.code, e.text, e.extra)
                outcome = "%s/%d" % (e.error, e.code)
            if log:
                self.state.record("token", grant_type=info.get("grant_type"),
                                  client_id=info.get("client_id"),
                                  user=info.get("user"), outcome=outcome,
                                  status=status,
                                  client_auth=info.get("client_auth"))
                if info.get("assertion"):
                    self.state.stats.setdefault("assertions", []).append(
                        info["assertion"])
            return status, obj, ()

        self.run_with_fault("token", grant_type, produce)

    def handle_devicecode(self, tenant, url, body):
        def produce(log=True):
            client_id = None
            try:
                form = self.parse_form(body)
                client_id = form.get("client_id")
                answer, _ = self.svc.devicecode(tenant, form)
                status, obj, outcome = 200, answer, "ok"
            except EntraError as e:
                status = e.status
                obj = self.entra_body(e.error, e.code, e.text, e.extra)
                outcome = "%s/%d" % (e.error, e.code)
            if log:
                self.state.record("devicecode", client_id=client_id,
                                  outcome=outcome, status=status)
            return status, obj, ()

        self.run_with_fault("devicecode", None, produce)

    def handle_authorize(self, tenant, url, body):
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if self.command == "POST":
            try:
                params.update(self.parse_form(body))
            except EntraError as e:
                self.error_page(e.code, e.text)
                return
        state_param = params.get("state")
        try:
            redirect_uri, mode, result = self.svc.authorize(tenant, params)
        except PageError as e:
            self.state.record("authorize", client_id=params.get("client_id"),
                              outcome="page/%d" % e.code, status=400)
            self.error_page(e.code, e.text)
            return
        except RedirectError as e:
            self.state.record("authorize", client_id=params.get("client_id"),
                              outcome="%s/%d" % (e.error, e.code), status=302)
            ts = utc_stamp()
            answer = [("error", e.error),
                      ("error_description",
                       "AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\n"
                       "Timestamp: %s" % (e.code, e.text, self.trace_id,
                                          self.correlation_id, ts)),
                      ("error_uri", "https://login.microsoftonline.com/error"
                                    "?code=%d" % e.code)]
            if state_param is not None:
                answer.append(("state", state_param))
            self.redirect(params["redirect_uri"],
                          params.get("response_mode") or "query", answer)
            return
        self.state.record("authorize", client_id=params.get("client_id"),
                          user=result["user"], outcome="ok", status=302)
        answer = [("code", result["code"])]
        if state_param is not None:
            answer.append(("state", state_param))
        answer.append(("session_state", result["session_state"]))
        self.redirect(redirect_uri, mode, answer)

    def redirect(self, redirect_uri, mode, answer):
        parts = urllib.parse.urlsplit(redirect_uri)
        # Microsoft answers to a path-less redirect URI with a "/" added.
        path = parts.path or "/"
        if mode == "form_post":
            base = urllib.parse.urlunsplit(parts._replace(path=path))
            fields = "".join('<input type="hidden" name="%s" value="%s"/>'
                             % (html.escape(k), html.escape(v))
                             for k, v in answer)
            page = ('<html><head><title>Working...</title></head><body '
                    'onload="document.forms[0].submit()"><form method="POST" '
                    'name="hiddenform" action="%s">%s<noscript><p>Script is '
                    'disabled. Click Submit to continue.</p><input '
                    'type="submit" value="Submit"/></noscript></form></body>'
                    '</html>' % (html.escape(base), fields))
            self.send(200, page, ctype="text/html; charset=utf-8")
            return
        encoded = urllib.parse.urlencode(answer, quote_via=urllib.parse.quote)
        if mode == "fragment":
            location = urllib.parse.urlunsplit(
                parts._replace(path=path, fragment=encoded))
        else:
            query = parts.query + "&" + encoded if parts.query else encoded
            location = urllib.parse.urlunsplit(
                parts._replace(path=path, query=query))
        self.send(302, "", ctype="text/html; charset=utf-8",
                  headers=[("Location", location)])

    def handle_deviceauth(self, url, body):
        """The page a person would open; tests normally use the control API."""
        message = ""
        if self.command == "POST":
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
            try:
                approve = form.get("action", "approve") != "decline"
                self.svc.device_decide(form.get("otc"), form.get("login"),
                                       approve)
                message = ("<p id=\"result\">%s. You may now close this "
                           "window.</p>" % ("Signed in" if approve
                                            else "Sign-in declined"))
            except ControlError as e:
                message = "<p id=\"result\">Error: %s</p>" % html.escape(str(e))
        page = ("<!DOCTYPE html><html><head><title>Enter code</title></head>"
                "<body><h1>Enter code</h1>%s<form method=\"POST\">"
                "<input name=\"otc\" placeholder=\"Code\"/>"
                "<input name=\"login\" placeholder=\"Email\"/>"
                "<button name=\"action\" value=\"approve\">Next</button>"
                "<button name=\"action\" value=\"decline\">Cancel</button>"
                "</form></body></html>" % message)
        self.send(200, page, ctype="text/html; charset=utf-8")

    def handle_discovery(self, tenant):
        base = "%s/%s" % (self.server.service.base_url, tenant)
        tid = tenant
        t = self.state.find_tenant(tenant)
        if t:
            tid = t["id"]
        self.send_json(200, {
            "token_endpoint": base + "/oauth2/v2.0/token",
            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
            "issuer": "%s/%s/v2.0" % (self.server.service.base_url, tid),
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email",
                                 "offline_access"],
            "tenant_region_scope": "EU"})

    def handle_introspect(self, url, body):
        token = None
        auth = self.headers.get("Authorization", "")
        try:
            token = self.parse_form(body).get("token")
        except EntraError:
            pass
        if not token:
            token = dict(urllib.parse.parse_qsl(url.query)).get("token")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()

        def produce(log=True):
            answer, rec = self.svc.introspect(token)
            if log:
                self.state.record(
                    "introspect", client_id=rec and rec["client_id"],
                    user=answer.get("username"),
                    outcome="active" if answer["active"] else "inactive")
            return 200, answer, ()

        self.run_with_fault("introspect", None, produce)

    def handle_control(self, name, body):
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ControlError("control body must be a JSON object")
            answer = self.svc.control(name, data)
        except (ControlError, ValueError, KeyError, TypeError) as e:
            self.send_json(400, {"control_error": str(e)})
            return
        self.send_json(200, answer)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, socket.timeout)):
            sys.stderr.write("%s connection from %s: %s\n"
                             % (utc_stamp(), client_address[0], exc))
            return
        super().handle_error(request, client_address)


def serve(host, port, cert, key, state_file=None):
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("tokensvc: refusing to listen on non-loopback %s"
                         % host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    Server.address_family = family
    server = Server((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server.ssl_context = ctx
    url_host = "[%s]" % host if ":" in host else host
    base_url = "https://%s:%d" % (url_host, server.server_address[1])
    server.service = Service(State(state_file), base_url)
    sys.stderr.write("%s tokensvc listening on %s\n" % (utc_stamp(), base_url))
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# --------------------------------------------------------------------------
# Controller used by tests
# --------------------------------------------------------------------------

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") \
    else sys.executable


class BrowserResult:
    """What a browser saw at the authorize endpoint (and, with follow=True,
    what the redirect target answered)."""

    def __init__(self, status, location, body):
        self.status = status
        self.location = location
        self.body = body
        self.params = {}
        if location:
            parts = urllib.parse.urlsplit(location)
            self.params = dict(urllib.parse.parse_qsl(
                parts.query or parts.fragment, keep_blank_values=True))
        self.delivered_status = None
        self.delivered_body = None

    @property
    def code(self):
        return self.params.get("code")

    def __repr__(self):
        return "BrowserResult(%d, %r)" % (self.status, self.location)


class TokenService:
    """Start, drive and stop the stand-in from a test.

        svc = TokenService(workdir, pki).start()
        app = svc.add_app(redirect_uris=["http://localhost:8400/cb"])
        svc.add_user("alice@contoso.test")
        svc.authority("contoso.test")  -> https://127.0.0.1:PORT/contoso.test
    """

    def __init__(self, workdir, pki, host="127.0.0.1", state_file=None):
        self.workdir = workdir
        self.pki = pki
        self.host = host
        self.port = None
        self.state_file = state_file
        self.proc = None
        self._atexit = False
        self.log_path = os.path.join(workdir, "tokensvc.log")
        self._ctx = ssl.create_default_context(cafile=pki.ca_cert)

    # -- lifecycle -------------------------------------------------------

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "https://%s:%d" % (host, self.port)

    @property
    def ca_file(self):
        return self.pki.ca_cert

    def start(self, timeout=10.0):
        from netutil import free_port, wait_port
        if self.proc is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        for _ in range(3):     # the port can be taken between check and bind
            self.port = free_port(self.host)
            cmd = [PYTHON, "-B", os.path.abspath(__file__), "--host",
                   self.host, "--port", str(self.port), "--cert",
                   self.pki.chain, "--key", self.pki.key]
            if self.state_file:
                cmd += ["--state-file", self.state_file]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL)
            try:
                wait_port(self.host, self.port, timeout)
                # Ours answering, over TLS, not just something bound there.
                if self.proc.poll() is None and self.stats() is not None:
                    return self
            except (TimeoutError, OSError, ControlError):
                pass
            self._kill()
        self.proc = None
        raise RuntimeError("tokensvc did not start; see %s" % self.log_path)

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        self._kill()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- URLs ------------------------------------------------------------

    def authority(self, tenant=DEFAULT_TENANT_DOMAINS[0]):
        return "%s/%s" % (self.url, tenant)

    def token_endpoint(self, tenant=DEFAULT_TENANT_DOMAINS[0]):
        return self.authority(tenant) + "/oauth2/v2.0/token"

    def authorize_endpoint(self, tenant=DEFAULT_TENANT_DOMAINS[0]):
        return self.authority(tenant) + "/oauth2/v2.0/authorize"

    def devicecode_endpoint(self, tenant=DEFAULT_TENANT_DOMAINS[0]):
        return self.authority(tenant) + "/oauth2/v2.0/devicecode"

    @property
    def introspect_url(self):
        return self.url + "/introspect"

    # -- control API -----------------------------------------------------

    def _control(self, name, payload=None, method="POST"):
        data = None if method == "GET" else json.dumps(payload or {}).encode()
        req = urllib.request.Request(
            "%s/_control/%s" % (self.url, name), data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ctx,
                                        timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            raise ControlError("%s: HTTP %d %s" % (name, e.code, detail))

    def reset(self):
        """Forget everything: apps, users, tokens, faults, stats, config."""
        return self._control("reset")

    def set_config(self, **config):
        """rotation, expires_in, ext_expires_in, refresh_token_lifetime,
        code_lifetime, device_expires_in, device_interval,
        device_slow_down_increment.  Returns the whole config."""
        return self._control("config", config)

    def add_tenant(self, tenant_id=None, domains=()):
        return self._control("tenant", {"tenant_id": tenant_id,
                                        "domains": list(domains)})

    def add_app(self, client_id=None, secret=True, secret_id=None,
                secret_expired=False, tenant_id=None, tenant_domains=None,
                redirect_uris=("http://localhost",), public_client=False,
                multi_tenant=False, app_only=False, app_only_mailbox=None,
                name="mod_mailoauth test", delegated_permissions=None,
                app_roles=None, certificates=()):
        """Register an app.  secret=True makes one, a string sets its value,
        False makes none; certificates: PEM certificates uploaded to it.
        Returns the app with "secret" and "secret_id"."""
        body = {"client_id": client_id, "secret": secret,
                "secret_id": secret_id, "tenant_id": tenant_id,
                "tenant_domains": list(tenant_domains or []),
                "redirect_uris": list(redirect_uris),
                "public_client": public_client, "multi_tenant": multi_tenant,
                "app_only": app_only, "app_only_mailbox": app_only_mailbox,
                "name": name, "certificates": list(certificates)}
        if secret_expired:
            body["secret_expired"] = True
        if delegated_permissions is not None:
            body["delegated_permissions"] = list(delegated_permissions)
        if app_roles is not None:
            body["app_roles"] = list(app_roles)
        return self._control("app", body)

    def update_app(self, client_id, **fields):
        """Change a registered app: secret_expired, add_secret, app_only,
        app_roles, app_only_mailbox, redirect_uris, public_client, ..."""
        fields["client_id"] = client_id
        return self._control("app", fields)

    def add_user(self, username, display_name=None, oid=None):
        return self._control("user", {"username": username,
                                      "display_name": display_name,
                                      "oid": oid})

    def next_sign_in(self, user=None, decline=False, count=1):
        """Queue what the person at the browser does on the next authorize:
        sign in as user (overrides login_hint) or decline consent."""
        return self._control("sign_in", {"user": user, "decline": decline,
                                         "count": count})

    def inject(self, fault, count=1, **params):
        """Queue a fault for the next count matching requests.

        fault: "http" (status, retry_after, error, code, description),
        "html" (status: an HTML error page), "error" (status, error, code,
        description, extra: any Entra-shaped error), "delay" (seconds; the
        request is processed, the answer is late), "malformed" (invalid
        JSON), "truncated" (mode "short": Content-Length larger than the
        body, then close; "cut": half a JSON document), "reset" (TCP RST, no
        answer), "close" (clean close, no answer).
        endpoint: "token" (default), "devicecode" or "introspect";
        grant_type: only requests of that grant type consume it."""
        params.update({"kind": fault, "count": count})
        return self._control("fault", params)

    def clear_faults(self):
        return self._control("faults/clear")

    def approve_device(self, user_code, user):
        return self._control("device/approve", {"user_code": user_code,
                                                "user": user})

    def decline_device(self, user_code):
        return self._control("device/decline", {"user_code": user_code})

    def revoke_refresh_tokens(self, user=None, client_id=None, code=70008):
        """Make matching refresh tokens fail with invalid_grant and code
        (70008, 700082, 70043, 50076, 50079, 50173, 65001, 50126, ...).
        Returns how many were revoked."""
        return self._control("revoke", {"user": user, "client_id": client_id,
                                        "code": code})["revoked"]

    def expire_access_tokens(self, user=None, client_id=None):
        return self._control("expire_access", {
            "user": user, "client_id": client_id})["expired"]

    def token_info(self, token):
        """Server-side record of an access token, refresh token or code."""
        return self._control("token_info", {"token": token})

    def stats(self):
        """{"requests": {endpoint: n}, "token_requests": {grant_type: n},
        "log": [{time, endpoint, grant_type, client_id, user, outcome,
        status}], "faults_pending": n, "refresh_tokens": {...}}"""
        return self._control("stats", method="GET")

    def reset_stats(self):
        return self._control("stats/reset")

    # -- acting as the browser ---------------------------------------------

    def sign_in(self, authorize_url, user=None, decline=False, follow=False,
                timeout=10):
        """Open authorize_url the way a browser would, without following the
        redirect.  With follow=True the redirect is then delivered (GET) to
        its target, e.g. a CLI's loopback listener."""
        if user or decline:
            self.next_sign_in(user=user, decline=decline)
        parts = urllib.parse.urlsplit(authorize_url)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                           context=self._ctx, timeout=timeout)
        try:
            conn.request("GET", parts.path + "?" + parts.query)
            resp = conn.getresponse()
            result = BrowserResult(resp.status, resp.getheader("Location"),
                                   resp.read().decode("utf-8", "replace"))
        finally:
            conn.close()
        if follow and result.location:
            try:
                with urllib.request.urlopen(result.location,
                                            timeout=timeout) as r:
                    result.delivered_status = r.status
                    result.delivered_body = r.read()
            except urllib.error.HTTPError as e:
                result.delivered_status = e.code
                result.delivered_body = e.read()
        return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True, help="certificate chain (PEM)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--state-file")
    args = ap.parse_args()
    serve(args.host, args.port, args.cert, args.key, args.state_file)


if __name__ == "__main__":
    main()
