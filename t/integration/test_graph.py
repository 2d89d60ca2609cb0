"""Notifications through Microsoft Graph sendMail (transport=graph), end to
end: an upload to a real proftpd becomes a base64 MIME sendMail request to
the Graph stand-in (t/lib/graphsvc.py), which checks the token's audience
and permissions at the token stand-in as Graph does and delivers the mail
over LMTP into the real Dovecot, where each test reads it back."""

import email
import email.policy
import os
import subprocess
import time
import uuid

import pytest

from graphsvc import GraphService
from signin import (GRAPH_LARGE_SCOPES, GRAPH_SCOPES, sign_in,
                    write_token_file)
from test_accounts import ACCOUNT, ALICE, NOBODY, REDIRECT, AccountServer, \
    wait_for
from test_foundation import curl_upload
from test_signin import (  # noqa: F401  (fixtures)
    TOOL, tool, env, web_app, start_signin)


@pytest.fixture(scope="module")
def mail_users():
    return [ALICE, "ops@contoso.test", "audit@contoso.test",
            "boss@contoso.test"]


@pytest.fixture(scope="module")
def graphsvc(pki, tokensvc_server, dovecot):
    svc = GraphService(pki, tokensvc_server, dovecot).start()
    yield svc
    svc.stop()


@pytest.fixture
def graph(graphsvc):
    graphsvc.reset()
    return graphsvc


def seed_graph(a, user=ALICE, scopes=GRAPH_SCOPES):
    toks = sign_in(a.svc, a.app, user, REDIRECT, scopes=scopes)
    write_token_file(a.token_file, ACCOUNT, user, toks, NOBODY)
    return toks


@pytest.fixture
def graph_notifier(make_proftpd, tokensvc, tokensvc_app, pki, graph):
    def factory(rules, grant="delegated", seed=True, extra="",
                scopes=GRAPH_SCOPES):
        a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                          grant=grant, extra="transport=graph graph=%s %s"
                          % (graph.url, extra))
        a.srv.global_conf += "\n<Global>\n" + rules + "\n</Global>\n"
        if seed and grant == "delegated":
            seed_graph(a, scopes=scopes)
        return a
    return factory


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def count(dovecot, user, mailbox="INBOX"):
    try:
        return len(dovecot.messages(user, mailbox))
    except RuntimeError:
        return 0


def test_upload_is_notified_through_graph_with_attachment(graph_notifier,
                                                          graph, dovecot):
    tag = uuid.uuid4().hex[:8]
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       'bcc=audit@contoso.test attach=1M '
                       '"subject=Graph %s %%{basename}"' % tag)
    a.srv.start()
    data = os.urandom(1024)
    curl_upload(a.srv, "ftp", "g-%s.bin" % tag, data)
    raw = dovecot.wait_for_message("ops@contoso.test", "Graph " + tag,
                                   timeout=30)
    msg = parse(raw)
    assert msg["From"] == ALICE
    assert msg["To"] == "ops@contoso.test"
    # Graph takes Bcc from the header and removes it before delivery.
    assert msg["Bcc"] is None
    atts = list(msg.iter_attachments())
    assert len(atts) == 1 and atts[0].get_content() == data
    blind = parse(dovecot.wait_for_message("audit@contoso.test",
                                           "Graph " + tag, timeout=10))
    assert blind["Bcc"] is None
    # Exchange keeps what was sent in Sent Items.
    dovecot.wait_for_message(ALICE, "Graph " + tag, timeout=10,
                             mailbox="Sent Items")
    wait_for(lambda: graph.statuses() == [202], timeout=5, what="one 202")
    a.srv.wait_log("sent to ops@contoso.test")
    assert "Microsoft Graph (%s)" % graph.url in a.srv.log_text()


def test_throttled_graph_waits_retry_after_and_sends_once(graph_notifier,
                                                          graph, dovecot):
    tag = uuid.uuid4().hex[:8]
    graph.inject(429, count=2, retry_after=2)
    a = graph_notifier('MailOAuthNotify notify to=boss@contoso.test '
                       '"subject=Throttled %s"' % tag)
    a.srv.start()
    curl_upload(a.srv, "ftp", "t.txt", b"x")
    dovecot.wait_for_message("boss@contoso.test", "Throttled " + tag,
                             timeout=40)
    # (Recorded once the answer is made, just after delivery.)
    wait_for(lambda: graph.statuses() == [429, 429, 202], timeout=5,
             what="429, 429, 202")
    time.sleep(1)
    assert len([m for m in dovecot.messages("boss@contoso.test")
                if ("Throttled " + tag).encode() in m]) == 1
    log = a.srv.log_text()
    # One plain line when it starts failing, one when it works again.
    assert log.count("cannot send notifications through Microsoft Graph") \
        == 1, log
    assert "ApplicationThrottled" in log
    assert "work again" in log


def test_graph_refusal_keeps_mail_queued_and_says_what_to_grant(
        graph_notifier, graph, dovecot, tokensvc, tokensvc_app):
    """App-only without the Mail.Send application role: Graph answers 403
    ErrorAccessDenied; the mail waits (nothing is lost), the log names the
    permission, and once it is granted the mail goes."""
    tokensvc.update_app(tokensvc_app["client_id"], graph_roles=[])
    tag = uuid.uuid4().hex[:8]
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       '"subject=AppOnly %s"' % tag, grant="app-only")
    a.srv.start()
    curl_upload(a.srv, "ftp", "a.txt", b"app-only")
    a.srv.wait_log("ErrorAccessDenied", timeout=30)
    log = a.srv.log_text()
    assert "Mail.Send application permission" in log
    assert a.app["secret"] not in log
    assert count(dovecot, "ops@contoso.test") == 0 or not any(
        ("AppOnly " + tag).encode() in m
        for m in dovecot.messages("ops@contoso.test"))
    tokensvc.update_app(tokensvc_app["client_id"], graph_roles=["Mail.Send"])
    # The queue retries with backoff (at least 5 s after the first failure).
    dovecot.wait_for_message("ops@contoso.test", "AppOnly " + tag,
                             timeout=60)
    wait_for(lambda: 202 in graph.statuses(), timeout=5, what="a 202")


def test_outlook_token_is_refused_by_graph_and_replaced(graph_notifier,
                                                        graph, dovecot):
    """A token of the wrong audience (signed in for SMTP/IMAP before the
    account changed to transport=graph) gets Graph's 401; the worker
    refreshes for Graph once and sends: the refresh token is not bound to
    a resource, and the user consented to Mail.Send."""
    tag = uuid.uuid4().hex[:8]
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       '"subject=Audience %s"' % tag, seed=False)
    # Consent for Graph first, then a token file holding an Outlook token.
    seed_graph(a)
    a.seed()
    a.srv.start()
    curl_upload(a.srv, "ftp", "aud.txt", b"aud")
    dovecot.wait_for_message("ops@contoso.test", "Audience " + tag,
                             timeout=30)
    wait_for(lambda: graph.statuses()[-1:] == [202], timeout=5,
             what="a 202 last")
    st = graph.statuses()
    assert st[0] == 401 and st[-1] == 202, st


def test_ingest_task_on_a_graph_account_fails_syntax_check(graph_notifier,
                                                           graph):
    a = graph_notifier("", seed=False)
    a.srv.extra_conf += ("\nMailOAuthIngest in account=%s dir=/tmp "
                         "owner=nobody every=15m" % ACCOUNT)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert "has transport=graph" in res.stderr
    assert "MailOAuthAccount of its own" in res.stderr


@pytest.mark.parametrize("extra, message", [
    ("transport=pigeon", "transport 'pigeon' must be smtp"),
    ("graph=http://graph.example", "must be an https:// URL"),
])
def test_graph_setting_mistakes_fail_syntax_check(make_proftpd, tokensvc,
                                                  tokensvc_app, pki, extra,
                                                  message):
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki, extra=extra)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert message in res.stderr


@pytest.mark.parametrize("size", [3500 * 1024, 40 * 1024 * 1024])
def test_large_attachment_goes_through_an_upload_session(graph_notifier,
                                                         graph, dovecot,
                                                         size):
    """Over one request's 4 MB: a draft without the file, the file in
    Content-Range pieces of at most 4 MB without the bearer token, then
    send; the recipient gets the exact bytes, Drafts keeps nothing."""
    tag = uuid.uuid4().hex[:8]
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       'attach=50M "subject=Big %s"' % tag,
                       scopes=GRAPH_LARGE_SCOPES)
    a.srv.start()
    data = os.urandom(size)
    curl_upload(a.srv, "ftp", "big-%s.bin" % tag, data)
    raw = dovecot.wait_for_message("ops@contoso.test", "Big " + tag,
                                   timeout=120)
    atts = list(parse(raw).iter_attachments())
    assert len(atts) == 1
    assert atts[0].get_filename() == "big-%s.bin" % tag
    assert atts[0].get_content() == data
    wait_for(lambda: graph.statuses()[-1:] == [202], timeout=5,
             what="the send's 202")
    reqs = graph.requests
    puts = [r for r in reqs if r[0] == "PUT"]
    assert len(puts) == -(-size // (12 * 320 * 1024))
    assert all(r[4] <= 4 * 1024 * 1024 for r in reqs)
    assert not any(r[1].endswith("/sendMail") for r in reqs)
    assert reqs[-1][0] == "POST" and reqs[-1][1].endswith("/send") \
        and reqs[-1][2] == 202
    assert graph.drafts == {}


def test_large_file_without_mail_readwrite_says_what_to_grant(
        graph_notifier, graph, dovecot):
    """Mail.Send alone cannot make a draft: the notification stays queued
    (not a dead letter) and the log names Mail.ReadWrite."""
    tag = uuid.uuid4().hex[:8]
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       'attach=50M "subject=NoRW %s"' % tag)
    a.srv.start()
    curl_upload(a.srv, "ftp", "big.bin", os.urandom(3500 * 1024))
    text = a.srv.wait_log("draft for a large file refused", timeout=30)
    assert "HTTP 403 ErrorAccessDenied" in text
    assert "Mail.ReadWrite" in text and "attach= at 3M" in text
    assert os.listdir(os.path.join(a.srv.state_dir, "deadletter")) == []
    assert not any(r[0] == "PUT" for r in graph.requests)


def test_throttled_upload_piece_waits_retry_after(graph_notifier, graph,
                                                  dovecot):
    """A piece answered 503 Retry-After 3 ends the upload (the draft is
    deleted) and nothing more is asked of Graph for at least those 3
    seconds; then the message goes, once."""
    tag = uuid.uuid4().hex[:8]
    graph.upload_faults.append([503, 3, "ServiceUnavailable"])
    a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                       'attach=50M "subject=Wait %s"' % tag,
                       scopes=GRAPH_LARGE_SCOPES)
    a.srv.start()
    data = os.urandom(5 * 1024 * 1024)
    curl_upload(a.srv, "ftp", "wait.bin", data)
    raw = dovecot.wait_for_message("ops@contoso.test", "Wait " + tag,
                                   timeout=60)
    assert list(parse(raw).iter_attachments())[0].get_content() == data
    reqs = graph.requests
    i = [k for k, r in enumerate(reqs) if r[2] == 503][0]
    # The refused piece, then the draft deleted, then nothing until the
    # retry's new draft.
    assert reqs[i + 1][0] == "DELETE"
    assert reqs[i + 2][0] == "POST" and reqs[i + 2][1].endswith("/messages")
    assert graph.times[i + 2] - graph.times[i] >= 3.0
    assert len(graph.deleted) == 1 and graph.drafts == {}


def test_expired_upload_session_deletes_the_draft_and_retries(
        graph_notifier, graph, dovecot):
    """The session expires mid-upload (404): the draft is deleted, and the
    next attempt uploads again from the start; one mail arrives."""
    tag = uuid.uuid4().hex[:8]
    orig = graph._upload
    calls = []

    def expiring(path, headers, body, size):
        calls.append(path)
        if len(calls) == 2:
            graph.expire_upload_sessions()
        return orig(path, headers, body, size)

    graph._upload = expiring
    try:
        a = graph_notifier('MailOAuthNotify notify to=ops@contoso.test '
                           'attach=50M "subject=Expiry %s"' % tag,
                           scopes=GRAPH_LARGE_SCOPES)
        a.srv.start()
        data = os.urandom(9 * 1024 * 1024)
        curl_upload(a.srv, "ftp", "exp.bin", data)
        raw = dovecot.wait_for_message("ops@contoso.test", "Expiry " + tag,
                                       timeout=120)
    finally:
        graph._upload = orig
    assert list(parse(raw).iter_attachments())[0].get_content() == data
    assert len(graph.deleted) == 1
    assert graph.drafts == {}
    time.sleep(1)
    assert len([m for m in dovecot.messages("ops@contoso.test")
                if ("Expiry " + tag).encode() in m]) == 1
    assert "ItemNotFound" in a.srv.log_text()


def test_throttled_burst_of_1000_is_delivered_exactly_once(graph_notifier,
                                                           graph, dovecot):
    """1,000 uploads in one FTP session, every 97th Graph request answered
    429 Retry-After 1: every notification arrives once, none twice."""
    import ftplib
    import io
    n = 1000
    tag = uuid.uuid4().hex[:8]
    graph.throttle_every = 97
    graph.sent_items = False        # (checked above; slow to save 1,000)
    a = graph_notifier('MailOAuthNotify notify to=boss@contoso.test '
                       'burst=wait "subject=%s %%{basename}"' % tag,
                       extra="send-rate=1000")
    a.srv.start()
    ftp = ftplib.FTP()
    ftp.connect(a.srv.host, a.srv.port)
    ftp.login("alice", a.srv.password)
    try:
        for i in range(n):
            ftp.storbinary("STOR f%04d.txt" % i, io.BytesIO(b"%d" % i))
    finally:
        ftp.quit()
    wait_for(lambda: len(graph.sent) >= n, timeout=300, interval=1,
             what="%d sendMail requests accepted" % n)
    time.sleep(2)
    assert len(graph.sent) == n
    msgs = dovecot.messages("boss@contoso.test")
    mine = [m for m in msgs if tag.encode() in m]
    names = sorted(parse(m)["Subject"].split()[-1] for m in mine)
    assert names == ["f%04d.txt" % i for i in range(n)]
    throttled = [r for r in graph.requests if r[2] == 429]
    assert len(throttled) >= n // 97
    assert not [r for r in graph.requests if r[2] not in (202, 429)]


def test_tool_test_sends_a_graph_test_message(graph_notifier, graph,
                                              dovecot):
    """ftpmailoauth test on a transport=graph account: a real message from
    the mailbox to itself through Graph (no other harmless call exists
    that Mail.Send alone may make); IMAP is said not to apply."""
    a = graph_notifier("")
    a.srv._prepare()
    r = subprocess.run([TOOL, "-c", a.srv.conf, "test", "notify"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, no_proxy="*", NO_PROXY="*"))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "OK: Graph accepted the message" in out
    assert "SMTP" not in out and "IMAP imaps://" not in out
    dovecot.wait_for_message(ALICE, "mod_mailoauth test message", timeout=10)
    assert a.app["secret"] not in out
    toks = a.tokens()
    assert toks["access_token"] not in out
    # Without the permission: the hint names it, exit status 1.
    graph.inject(403, code="ErrorAccessDenied")
    r = subprocess.run([TOOL, "-c", a.srv.conf, "test", "notify"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, no_proxy="*", NO_PROXY="*"))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "FAILED: HTTP 403 ErrorAccessDenied" in out
    assert "Hint: Microsoft Graph refused: the token lacks Mail.Send" in out


# -- ftpmailoauth signin for transport=graph ----------------------------------

def test_signin_for_graph_asks_graph_and_names_missing_permission(env):
    """A transport=graph account signs in for Graph Mail.Send, and the tool
    names a missing Graph permission rather than SMTP/IMAP ones."""
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect,
                    extra=["transport=graph"])
    proc, url = start_signin(env, "notify")
    assert "graph.microsoft.com%2FMail.Send" in url
    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    assert "was not granted" not in out
    assert "Mail.Send" in out       # the granted scopes line

    # Scopes overridden without Mail.Send: the warning names it.
    app, redirect = web_app(env.svc)
    env.add_account("other", app, redirect=redirect, extra=[
        "transport=graph",
        '"scopes=https://graph.microsoft.com/User.Read offline_access '
        'openid email"'])
    proc, url = start_signin(env, "other")
    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    assert "WARNING: Mail.Send was not granted: notifications through " \
        "Microsoft Graph" in out
    assert "SMTP.Send was not granted" not in out


def test_app_only_graph_signin_checks_mail_send_role(env):
    app = env.svc.add_app(app_only=True, app_only_mailbox=ALICE)
    env.add_account("scanner", app, grant="app-only",
                    extra=["transport=graph"])
    rc, out = env.run("signin", "scanner")
    assert rc == 0, out
    assert "Application permissions: (none)" in out
    assert "WARNING: the Graph token does not carry Mail.Send" in out
    env.svc.update_app(app["client_id"], graph_roles=["Mail.Send"])
    rc, out = env.run("signin", "scanner")
    assert rc == 0, out
    assert "Application permissions: Mail.Send" in out
    assert "WARNING" not in out
