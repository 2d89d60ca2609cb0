"""A person's sign-in against the token stand-in, stored as ftpmailoauth
stores it: for tests, the sandbox and benchmarks that need a signed-in
account without driving a browser."""

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from tokensvc import pkce_pair

MAIL_SCOPES = ("https://outlook.office.com/SMTP.Send "
               "https://outlook.office.com/IMAP.AccessAsUser.All "
               "offline_access openid email")


GRAPH_SCOPES = ("https://graph.microsoft.com/Mail.Send offline_access "
                "openid email")
# Files over 3 MB go through a draft: Mail.ReadWrite as well.
GRAPH_LARGE_SCOPES = ("https://graph.microsoft.com/Mail.Send "
                      "https://graph.microsoft.com/Mail.ReadWrite "
                      "offline_access openid email")


def sign_in(svc, app, user, redirect, tenant="contoso.test",
            scopes=MAIL_SCOPES):
    """Authorization code + PKCE; returns the token endpoint's JSON."""
    verifier, challenge = pkce_pair()
    params = {"client_id": app["client_id"], "response_type": "code",
              "redirect_uri": redirect, "scope": scopes, "state": "s",
              "code_challenge": challenge, "code_challenge_method": "S256",
              "login_hint": user}
    res = svc.sign_in(svc.authorize_endpoint(tenant) + "?" +
                      urllib.parse.urlencode(params))
    assert res.status == 302 and res.code, res
    form = {"client_id": app["client_id"], "client_secret": app["secret"],
            "grant_type": "authorization_code", "code": res.code,
            "redirect_uri": redirect, "code_verifier": verifier}
    req = urllib.request.Request(svc.token_endpoint(tenant),
                                 data=urllib.parse.urlencode(form).encode())
    ctx = ssl.create_default_context(cafile=svc.ca_file)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def write_token_file(path, account, user, toks, uid, expired=False,
                     due_in=None):
    """The token file format of mod_mailoauth/lib/oauth/tokenstore.c, mode 0600.

    due_in: make the worker's refresh due in that many seconds (an access
    token of a normal lifetime, signed in an hour ago).
    """
    now = int(time.time())
    expires = now + toks["expires_in"]
    refreshed = now
    if expired:
        expires = now - 1
    elif due_in is not None:
        expires, refreshed = now + due_in + 600, now - 3600
    record = {
        "version": 1, "account": account, "grant": "delegated",
        "refresh_token": toks["refresh_token"],
        "access_token": toks["access_token"],
        "access_expires": expires,
        "scope": toks.get("scope", ""),
        "identity": {"username": user},
        "obtained_at": refreshed, "refreshed_at": refreshed,
    }
    tokens_dir = os.path.dirname(path)
    for d in (os.path.dirname(tokens_dir), tokens_dir):
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, uid)
        os.chmod(d, 0o700)
    tmp = path + ".seed"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.chown(tmp, uid, uid)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)
