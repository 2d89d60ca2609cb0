"""Reloads (SIGHUP, Debian's `systemctl reload proftpd`) with client secrets
in every documented arrangement: the FTP service keeps running, and a secret
that went missing between two reloads costs only its own account."""

import ftplib
import os
import random
import time

from signin import sign_in, write_token_file
from test_tokensvc import ALICE, REDIRECT

NOBODY = 65534
HUPS = 20
NOTIFY_ENV = "MAILOAUTH_TEST_NOTIFY_SECRET"
OTHER_ENV = "MAILOAUTH_TEST_OTHER_SECRET"


def ftp_answers(srv):
    """Logs in and lists the home directory: the service works."""
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=20)
    try:
        ftp.login("alice", srv.password)
        ftp.retrlines("LIST", lambda line: None)
    finally:
        try:
            ftp.quit()
        except ftplib.all_errors:
            ftp.close()


def account_line(name, source, tokensvc, app, pki):
    return ("MailOAuthAccount %s authority=%s tenant=contoso.test "
            "client-id=%s client-secret=%s mailbox=%s ca-file=%s proxy=none "
            "redirect-uri=%s\n" % (name, tokensvc.url, app["client_id"], source,
                                   ALICE, pki.ca_cert, REDIRECT))


class ReloadServer:
    """AuthUserFile (which switches privileges while parsed) comes before
    the accounts, as in the base configuration."""

    def __init__(self, make_proftpd, tokensvc, app, pki):
        self.svc, self.app, self.pki = tokensvc, app, pki
        self.srv = make_proftpd()
        os.makedirs(self.srv.dir, exist_ok=True)
        self.secret_file = os.path.join(self.srv.dir, "notify.secret")
        with open(self.secret_file, "w") as f:
            f.write(app["secret"] + "\n")
        os.chmod(self.secret_file, 0o600)
        self.configure("file:" + self.secret_file)

    def configure(self, notify_source):
        self.srv.extra_conf = (
            account_line("notify", notify_source, self.svc, self.app,
                         self.pki) +
            account_line("other", "env:" + OTHER_ENV, self.svc, self.app,
                         self.pki))

    def rewrite(self):
        with open(self.srv.conf, "w") as f:
            f.write(self.srv.config_text())

    def reload_and_wait(self):
        """One reload, waited for: its new worker has started."""
        before = self.srv.log_text().count("worker started")
        self.srv.restart()
        self.srv.wait_log("worker started", count=before + 1, timeout=20)


def hup_storm(rs, rng, what):
    srv = rs.srv
    for i in range(HUPS):
        srv.restart()
        time.sleep(rng.uniform(0, 0.4))
        assert srv.proc.poll() is None, (
            "proftpd exited after SIGHUP %d with the secret %s:\n%s"
            % (i + 1, what, srv.diagnostics()))
        ftp_answers(srv)
    # The last reload has been carried out too.
    rs.reload_and_wait()
    ftp_answers(srv)
    assert "fatal" not in srv.read(srv.syslog)


def test_reloads_keep_serving_with_every_secret_arrangement(
        make_proftpd, tokensvc, tokensvc_app, pki, monkeypatch):
    monkeypatch.setenv(NOTIFY_ENV, tokensvc_app["secret"])
    monkeypatch.setenv(OTHER_ENV, tokensvc_app["secret"])
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print("random seed", seed)

    rs = ReloadServer(make_proftpd, tokensvc, tokensvc_app, pki)
    srv = rs.srv
    srv.start()
    ftp_answers(srv)

    # As the README says: install -m 0600, owned by root.
    hup_storm(rs, rng, "owned by root")

    os.chown(rs.secret_file, NOBODY, NOBODY)
    hup_storm(rs, rng, "owned by User")

    rs.configure("env:" + NOTIFY_ENV)
    rs.rewrite()
    hup_storm(rs, rng, "in the environment")

    assert "cannot be used" not in srv.log_text()


def test_secret_gone_before_reload_costs_only_its_account(
        make_proftpd, tokensvc, tokensvc_app, pki, monkeypatch):
    monkeypatch.setenv(OTHER_ENV, tokensvc_app["secret"])
    rs = ReloadServer(make_proftpd, tokensvc, tokensvc_app, pki)
    srv = rs.srv
    # The other account is signed in: the worker reports it on each start.
    toks = sign_in(tokensvc, tokensvc_app, ALICE, REDIRECT)
    write_token_file(os.path.join(srv.state_dir, "tokens", "other.json"),
                     "other", ALICE, toks, NOBODY)
    srv.start()
    srv.wait_log("account other (")
    reports = srv.log_text().count("account other (")

    os.unlink(rs.secret_file)
    rs.reload_and_wait()
    srv.wait_log("account other (", count=reports + 1)

    assert srv.proc.poll() is None, srv.diagnostics()
    ftp_answers(srv)
    lines = [l for l in srv.log_text().splitlines() if "notify" in l]
    bad = [l for l in lines if rs.secret_file in l]
    assert len(bad) == 1, lines
    assert "account notify cannot be used" in bad[0]
    assert "No such file or directory" in bad[0]
    assert "install -m 0600" in bad[0] and "then reload" in bad[0]
    assert "fatal" not in srv.log_text()

    # Further reloads neither stop the server nor repeat the account's
    # trouble more than once each.
    rs.reload_and_wait()
    ftp_answers(srv)
    assert srv.log_text().count(rs.secret_file) == 2

    # proftpd -t still refuses the configuration, naming file, line and fix.
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "cannot read client secret file '%s'" % rs.secret_file in res.stderr
    assert "on line" in res.stderr and srv.conf in res.stderr
    assert "install -m 0600" in res.stderr
