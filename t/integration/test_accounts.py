"""OAuth accounts in proftpd: configuration checks, and the worker's token
lifecycle against the Microsoft stand-in (refresh before expiry, rotation
stored before use, error classes, crashes), ending in real XOAUTH2 logins
to Dovecot with the tokens the worker refreshed."""

import base64
import imaplib
import json
import os
import signal
import ssl
import time

import pytest

from proftpd import alive
from signin import sign_in, write_token_file
from test_tokensvc import ALICE, REDIRECT

ACCOUNT = "notify"
NOBODY = 65534


def wait_for(predicate, timeout=15, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


class AccountServer:
    """A proftpd whose MailOAuthAccount points at the token stand-in."""

    def __init__(self, make_proftpd, tokensvc, app, pki, grant="delegated",
                 secret=None, extra=""):
        self.svc = tokensvc
        self.app = app
        self.srv = make_proftpd(extra_conf="")
        os.makedirs(self.srv.dir, exist_ok=True)
        self.secret_file = os.path.join(self.srv.dir, "notify.secret")
        with open(self.secret_file, "w") as f:
            f.write((secret if secret is not None else app["secret"]) + "\n")
        os.chmod(self.secret_file, 0o600)
        line = ("MailOAuthAccount %s authority=%s tenant=contoso.test "
                "client-id=%s client-secret=file:%s mailbox=%s ca-file=%s "
                "proxy=none grant=%s redirect-uri=%s %s"
                % (ACCOUNT, tokensvc.url, app["client_id"], self.secret_file,
                   ALICE, pki.ca_cert, grant, REDIRECT, extra))
        self.srv.extra_conf = line
        self.token_file = os.path.join(self.srv.state_dir, "tokens",
                                       ACCOUNT + ".json")

    def seed(self, expired=False, due_in=None, user=ALICE):
        """A person's sign-in, stored as the sign-in tool stores it."""
        toks = sign_in(self.svc, self.app, user, REDIRECT)
        write_token_file(self.token_file, ACCOUNT, user, toks, NOBODY,
                         expired=expired, due_in=due_in)
        return toks

    def expire_on_disk(self):
        """Time passes: the stored access token is now stale."""
        rec = self.tokens()
        rec["access_expires"] = int(time.time()) - 1
        tmp = self.token_file + ".edit"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.chown(tmp, NOBODY, NOBODY)
        os.chmod(tmp, 0o600)
        os.rename(tmp, self.token_file)

    def tokens(self):
        with open(self.token_file) as f:
            return json.load(f)

    def refreshes(self, outcome=None):
        log = self.svc.stats()["log"]
        return [e for e in log if e.get("grant_type") == "refresh_token"
                and (outcome is None or str(e.get("outcome", "")).startswith(outcome))]


@pytest.fixture
def account(make_proftpd, tokensvc, tokensvc_app, pki):
    def factory(**kw):
        return AccountServer(make_proftpd, tokensvc, tokensvc_app, pki, **kw)
    return factory


def imap_login(dovecot, pki, user, token):
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    imap = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=ctx)
    try:
        raw = "user=%s\x01auth=Bearer %s\x01\x01" % (user, token)
        typ, _ = imap.authenticate("XOAUTH2", lambda _: raw.encode())
        return typ
    finally:
        try:
            imap.logout()
        except Exception:
            pass


# -- configuration ------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ("tennant=x", "unknown setting 'tennant': did you mean 'tenant='?"),
    ("client-secret=Abc~123secretvalue", "client-secret must name where the secret is"),
    ("grant=sometimes", "write grant=delegated"),
    ("mailbox=nobody", "is not an email address"),
])
def test_account_mistakes_fail_syntax_check(account, extra, message):
    a = account(extra=extra)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert "MailOAuthAccount: account 'notify'" in res.stderr
    assert "on line" in res.stderr and a.srv.conf in res.stderr
    assert "Abc~123secretvalue" not in res.stderr


def test_secret_file_must_be_private(account):
    a = account()
    a.srv._prepare()
    os.chmod(a.secret_file, 0o644)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert "chmod 0600 '%s'" % a.secret_file in res.stderr
    assert a.app["secret"] not in res.stderr


def test_missing_secret_file_named(account):
    a = account()
    a.srv._prepare()
    os.unlink(a.secret_file)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert "cannot read client secret file '%s'" % a.secret_file in res.stderr


def test_duplicate_account_refused(account, tokensvc, tokensvc_app, pki):
    a = account()
    a.srv.extra_conf += "\n" + a.srv.extra_conf
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert "account 'notify' is already defined" in res.stderr


# -- the worker's token lifecycle -----------------------------------------------

def test_account_without_signin_says_what_to_run(account):
    a = account()
    a.srv.start()
    text = a.srv.wait_log("nobody has signed in yet")
    assert "run ftpmailoauth -c %s signin notify" % a.srv.conf in text
    assert text.count("nobody has signed in yet") == 1


def test_refresh_before_expiry_rotates_and_works_with_dovecot(
        account, tokensvc, dovecot, pki):
    # An access token a few seconds from the refresh margin.
    a = account()
    seeded = a.seed(due_in=3)
    a.srv.start()
    a.srv.wait_log("signed in as %s" % ALICE)
    wait_for(lambda: a.refreshes("ok"), what="a refresh")
    new = wait_for(lambda: (a.tokens() if a.tokens()["refresh_token"]
                            != seeded["refresh_token"] else None),
                   what="the rotated refresh token on disk")
    assert new["access_token"] != seeded["access_token"]
    assert new["access_expires"] > time.time() + 500
    st = os.stat(a.token_file)
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, NOBODY)
    # The refreshed token is accepted by a real XOAUTH2 server.
    assert imap_login(dovecot, pki, ALICE, new["access_token"]) == "OK"


def test_refreshed_token_file_gets_the_servers_group(make_proftpd, tokensvc,
                                                      tokensvc_app, pki):
    """The worker runs as User and Group: the token file it rewrites is
    the server's Group's (documented under MailOAuthAccount)."""
    import grp
    a = AccountServer(lambda **k: make_proftpd(daemon_group="daemon", **k),
                      tokensvc, tokensvc_app, pki)
    seeded = a.seed(expired=True)
    a.srv.start()
    wait_for(lambda: a.tokens()["refresh_token"] != seeded["refresh_token"],
             timeout=20, what="the refreshed token file")
    st = os.stat(a.token_file)
    assert (st.st_uid, st.st_gid) == (NOBODY, grp.getgrnam("daemon").gr_gid)
    assert st.st_mode & 0o777 == 0o600


def test_valid_token_is_reused(account, tokensvc):
    a = account()
    a.seed()
    a.srv.start()
    a.srv.wait_log("signed in as %s" % ALICE)
    time.sleep(2)
    assert a.refreshes() == []


def test_rotation_persists_across_worker_restarts(account, tokensvc):
    # Strict rotation: only the newest refresh token works, so every
    # refresh after a restart proves the rotated one was stored first.
    tokensvc.set_config(rotation="strict")
    a = account()
    current = a.seed(expired=True)["refresh_token"]
    a.srv.start()
    for i in range(3):
        # Kill the worker once the rotated token is on disk.
        current = wait_for(lambda: (a.tokens()["refresh_token"]
                                    if a.tokens()["refresh_token"] != current
                                    else None),
                           timeout=20, what="rotation %d stored" % (i + 1))
        os.kill(a.srv.worker_pids()[0], signal.SIGKILL)
        a.expire_on_disk()
        wait_for(lambda: a.srv.worker_pids(), what="a new worker")
    wait_for(lambda: a.tokens()["refresh_token"] != current, timeout=20,
             what="a refresh by the last worker")
    assert len(a.refreshes("ok")) >= 4
    assert a.refreshes("invalid_grant") == []


def test_reauth_needed_logged_once_without_retry_storm(account, tokensvc):
    a = account()
    a.seed(expired=True)
    tokensvc.revoke_refresh_tokens(code=70008)
    a.srv.start()
    a.srv.wait_log("a person must sign in again")
    # Longer than the worker's periodic look at the token file.
    time.sleep(12)
    text = a.srv.log_text()
    assert text.count("a person must sign in again") == 1
    assert "70008" in text
    assert "ftpmailoauth -c %s signin notify" % a.srv.conf in text
    assert len(a.refreshes()) == 1


def test_new_signin_picked_up_without_restart(account, tokensvc):
    a = account()
    a.seed(expired=True)
    tokensvc.revoke_refresh_tokens(code=70008)
    a.srv.start()
    a.srv.wait_log("a person must sign in again")
    worker = a.srv.worker_pids()[0]
    a.seed(due_in=1)   # the operator signs in again
    wait_for(lambda: a.refreshes("ok"), timeout=45,
             what="a refresh with the new sign-in")
    assert a.srv.worker_pids() == [worker]
    # The end of "must sign in again" is logged too, once.
    line = ("account notify: new sign-in as %s found in %s; the account is "
            "usable again" % (ALICE, a.token_file))
    a.srv.wait_log(line)
    assert a.srv.log_text().count(line) == 1


def test_wrong_secret_value_is_a_configuration_error(account, tokensvc,
                                                     tokensvc_app):
    a = account(secret=tokensvc_app["secret_id"])
    a.seed(expired=True)
    a.srv.start()
    text = a.srv.wait_log("7000215")
    assert "fix the configuration" in text
    assert "Value" in text and "Secret ID" in text


def test_transient_failures_retried_and_logged_twice(account, tokensvc):
    a = account()
    a.seed(expired=True)
    tokensvc.inject("http", count=2, status=503)
    a.srv.start()
    a.srv.wait_log("works again after 2 failures", timeout=40)
    text = a.srv.log_text()
    assert text.count("token refresh failing") == 1
    assert len(a.refreshes("ok")) == 1


def test_throttling_honours_retry_after(account, tokensvc):
    a = account()
    a.seed(expired=True)
    tokensvc.inject("http", count=1, status=429, retry_after=3)
    a.srv.start()
    a.srv.wait_log("token refresh failing", timeout=10)
    start = time.monotonic()
    wait_for(lambda: a.refreshes("ok"), timeout=20, what="retry")
    assert time.monotonic() - start >= 2.0


def test_worker_killed_during_refresh_leaves_usable_token(account, tokensvc,
                                                          dovecot, pki):
    # The token service rotates, then answers slowly; the worker dies before
    # it could store the answer.  Microsoft keeps the previous refresh token
    # valid, so the next worker refreshes with what is on disk.
    a = account()
    a.seed(expired=True)
    tokensvc.inject("delay", count=1, seconds=5)
    a.srv.start(wait_worker=False)
    wait_for(lambda: a.svc.stats()["log"] and a.srv.worker_pids(),
             what="the slow refresh to start")
    time.sleep(1)
    for pid in a.srv.worker_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: a.refreshes("ok") and
             a.tokens()["access_expires"] > time.time() + 60,
             timeout=30, what="a usable token after the crash")
    assert imap_login(dovecot, pki, ALICE, a.tokens()["access_token"]) == "OK"


def test_app_only_account(account, tokensvc, tokensvc_app, dovecot, pki):
    tokensvc.update_app(tokensvc_app["client_id"], app_only=True,
                        app_only_mailbox=ALICE)
    a = account(grant="app-only")
    a.srv.start()
    a.srv.wait_log("app-only")
    cc = wait_for(lambda: [e for e in tokensvc.stats()["log"]
                           if e.get("grant_type") == "client_credentials"],
                  what="a client-credentials request")
    assert str(cc[0]["outcome"]).startswith("ok")


def test_no_secret_or_token_in_any_log(account, tokensvc, tokensvc_app):
    a = account()
    seeded = a.seed(due_in=2)
    a.srv.start()
    wait_for(lambda: a.refreshes("ok"), what="a refresh")
    a.srv.stop()
    final = a.tokens()
    secrets = [tokensvc_app["secret"], seeded["refresh_token"],
               seeded["access_token"], final["refresh_token"],
               final["access_token"]]
    # Pieces too: a token cut in half in a log line is still a leak.
    pieces = [s[:24] for s in secrets] + [s[-24:] for s in secrets]
    for path in (a.srv.log, a.srv.tracelog, a.srv.syslog, a.srv.stderr_path):
        text = a.srv.read(path)
        for p in pieces:
            assert p not in text, "secret material in %s" % path
    assert "mailoauth.tokens" in a.srv.read(a.srv.tracelog)
