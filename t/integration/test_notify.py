"""Upload notifications end to end: an upload to a real proftpd becomes a
mail submitted to a real Postfix (STARTTLS required, SASL XOAUTH2 checked by
Dovecot against the token stand-in) and delivered into Dovecot, where each
test reads it back and checks headers, body and attachment."""

import base64
import email
import email.policy
import os
import re
import signal
import subprocess
import time
import uuid

import pytest

from mailservers import Postfix
from netutil import free_port
from test_accounts import ALICE, AccountServer, wait_for
from test_foundation import curl_upload


@pytest.fixture(scope="module")
def mail_users():
    # Any address is a mailbox: each test uses recipients of its own.
    return []


def rcpt(tag):
    return "%s-%s@contoso.test" % (tag, uuid.uuid4().hex[:8])


@pytest.fixture
def notifier(make_proftpd, tokensvc, tokensvc_app, pki, postfix):
    """factory(rules, smtp=None, **proftpd kwargs) -> AccountServer."""
    made = []

    def factory(rules, smtp=None, seed=True, **kw):
        smtp = smtp or "smtp://127.0.0.1:%d" % postfix.smtp_port
        a = AccountServer(lambda **k: make_proftpd(**dict(k, **kw)),
                          tokensvc, tokensvc_app, pki, extra="smtp=" + smtp)
        # <Global>: the rules reach the SFTP virtual host too.
        a.srv.global_conf += "\n<Global>\n" + rules + "\n</Global>\n"
        if seed:
            a.seed()
        made.append(a)
        return a

    return factory


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def sent_lines(a):
    return [line for line in a.srv.log_text().splitlines()
            if "notification for" in line and " sent to " in line]


# -- the round trip -----------------------------------------------------------

@pytest.mark.parametrize("proto", ["ftp", "ftps", "sftp", "scp"])
def test_upload_is_notified(notifier, dovecot, pki, proto):
    to = rcpt("ops")
    a = notifier('MailOAuthNotify notify to=%s "subject=New file %%{basename} '
                 'from %%u"' % to, tls=True, sftp=True)
    a.srv.start()
    data = os.urandom(3000)
    curl_upload(a.srv, proto, "report-%s.bin" % proto, data, pki=pki)
    raw = dovecot.wait_for_messages(to, 1, timeout=30)[0]
    msg = parse(raw)
    assert msg["Subject"] == "New file report-%s.bin from alice" % proto
    assert msg["From"] == ALICE
    assert msg["To"] == to
    assert msg["Message-ID"] and msg["Date"]
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_body(("plain",)).get_content()
    path = os.path.join(a.srv.home("alice"), "report-%s.bin" % proto)
    assert path in body
    assert "(3000 bytes)" in body
    assert proto in body
    assert len(sent_lines(a)) == 1
    time.sleep(1)
    assert len(dovecot.messages(to)) == 1


def test_default_texts_say_the_time_with_its_offset(notifier, dovecot,
                                                    monkeypatch):
    """%{iso8601} has no zone; the default body and digest line use
    %{iso8601-tz}, which has the server's UTC offset."""
    monkeypatch.setenv("TZ", "XST-5:30")     # POSIX: UTC+05:30
    one, digest = rcpt("tz"), rcpt("tzdigest")
    a = notifier("MailOAuthNotify notify to=%s\n"
                 "MailOAuthNotify notify to=%s digest=1\n"
                 "MailOAuthNotify notify to=%s \"subject=%%{iso8601-tz}|"
                 "%%{iso8601}\"" % (one, digest, one))
    a.srv.start()
    curl_upload(a.srv, "ftp", "tz.txt", b"x")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+05:30"
    msgs = [parse(m) for m in dovecot.wait_for_messages(one, 2, timeout=30)]
    plain = [m for m in msgs if m["Subject"] == "File received: tz.txt"][0]
    body = plain.get_body(("plain",)).get_content()
    assert re.search(r"via ftp at %s\.$" % stamp, body.strip()), body
    # An explicit one in a subject, next to the zoneless kind.
    subj = [m["Subject"] for m in msgs if m is not plain][0]
    assert re.match(r"^%s\|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}$"
                    % stamp, subj), subj
    raw = dovecot.wait_for_messages(digest, 1, timeout=30)[0]
    body = parse(raw).get_body(("plain",)).get_content()
    assert re.search(r"tz\.txt \(1 bytes\) by alice from \S+ via ftp at %s"
                     % stamp, body), body


def test_utf8_subject_and_names(notifier, dovecot, pki):
    to = rcpt("utf8")
    a = notifier('MailOAuthNotify notify to=%s "from-name=Dépôt FTP" '
                 '"subject=Reçu : %%{basename}"' % to)
    a.srv.start()
    curl_upload(a.srv, "ftp", "r%C3%A9sum%C3%A9-%E6%97%A5%E6%9C%AC.txt",
                "données".encode())
    msg = parse(dovecot.wait_for_messages(to, 1, timeout=30)[0])
    assert msg["Subject"] == "Reçu : résumé-日本.txt"
    assert msg["From"].addresses[0].display_name == "Dépôt FTP"
    raw = dovecot.messages(to)[0]
    assert all(len(line) <= 998 for line in raw.split(b"\n"))
    assert b"\xc3" not in raw.split(b"\n\n")[0], "raw 8-bit in headers"


def test_hostile_file_name_cannot_inject_headers(notifier, dovecot):
    to = rcpt("safe")
    victim = rcpt("victim")
    a = notifier("MailOAuthNotify notify to=%s \"subject=Got %%{basename}\""
                 % to)
    a.srv.start()
    # curl refuses CR/LF in FTP paths; send the command by hand instead.
    import ftplib
    import io
    ftp = ftplib.FTP()
    ftp.connect(a.srv.host, a.srv.port)
    ftp.login("alice", a.srv.password)
    try:
        # FTP cannot carry CR/LF in a name; TAB and DEL are the closest a
        # client gets, and the name then lands in Subject and body.
        ftp.storbinary("STOR evil\x7f\tBcc: %s.txt" % victim,
                       io.BytesIO(b"x"))
    finally:
        ftp.quit()
    raw = dovecot.wait_for_messages(to, 1, timeout=30)[0]
    msg = parse(raw)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    header_names = [line.split(b":")[0] for line in
                    raw.split(b"\n\n")[0].split(b"\n")
                    if line and not line[:1].isspace()]
    assert b"Bcc" not in header_names
    assert "Bcc: %s.txt" % victim in msg["Subject"] or \
        victim in msg["Subject"]
    time.sleep(2)
    assert dovecot.messages(victim) == []


def test_per_directory_rules_nearest_wins(notifier, dovecot, make_proftpd):
    top, partner_a, partner_b = rcpt("top"), rcpt("pa"), rcpt("pb")
    rules = ("MailOAuthNotify notify to=%s\n"
             "<Directory ~/partner-a>\n  MailOAuthNotify notify to=%s\n"
             "</Directory>\n"
             "<Directory ~/partner-b>\n  MailOAuthNotify notify to=%s "
             "match=*.pdf\n</Directory>\n"
             "<Directory ~/quiet>\n  MailOAuthNotify none\n</Directory>\n"
             % (top, partner_a, partner_b))
    a = notifier(rules)
    a.srv._prepare()
    home = a.srv.home("alice")
    for d in ("partner-a", "partner-b", "quiet"):
        os.makedirs(os.path.join(home, d))
        os.chown(os.path.join(home, d), 2001, 2001)
    a.srv.start()
    curl_upload(a.srv, "ftp", "root.txt", b"1")
    curl_upload(a.srv, "ftp", "partner-a/a.txt", b"2")
    curl_upload(a.srv, "ftp", "partner-b/b.pdf", b"3")
    curl_upload(a.srv, "ftp", "partner-b/skip.txt", b"4")
    curl_upload(a.srv, "ftp", "quiet/q.txt", b"5")
    assert b"root.txt" in dovecot.wait_for_messages(top, 1, timeout=30)[0]
    assert b"a.txt" in dovecot.wait_for_messages(partner_a, 1, timeout=30)[0]
    assert b"b.pdf" in dovecot.wait_for_messages(partner_b, 1, timeout=30)[0]
    time.sleep(2)
    assert len(dovecot.messages(top)) == 1
    assert len(dovecot.messages(partner_a)) == 1
    assert len(dovecot.messages(partner_b)) == 1
    assert "q.txt" in a.srv.log_text()  # logged, not mailed


def test_attachment_up_to_limit(notifier, dovecot):
    to = rcpt("att")
    a = notifier("MailOAuthNotify notify to=%s attach=64K" % to)
    a.srv.start()
    small = os.urandom(50000)
    curl_upload(a.srv, "ftp", "small.bin", small)
    curl_upload(a.srv, "ftp", "big.bin", os.urandom(70000))
    msgs = dovecot.wait_for_messages(to, 2, timeout=30)
    by_name = {}
    for raw in msgs:
        m = parse(raw)
        atts = list(m.iter_attachments())
        by_name["small" if b"small.bin" in raw.split(b"\n\n")[0] or
                any(p.get_filename() == "small.bin" for p in atts)
                else "big"] = atts
    assert [p.get_filename() for p in by_name["small"]] == ["small.bin"]
    assert by_name["small"][0].get_content() == small
    assert by_name["big"] == []


def test_digest_one_mail_per_window(notifier, dovecot):
    to = rcpt("digest")
    a = notifier('MailOAuthNotify notify to=%s digest=4 "subject=Drop box"'
                 % to)
    a.srv.start()
    for i in range(6):
        curl_upload(a.srv, "ftp", "batch-%d.csv" % i, b"x" * (i + 1))
    raw = dovecot.wait_for_messages(to, 1, timeout=30)[0]
    msg = parse(raw)
    assert msg["Subject"] == "Drop box (6 uploads)"
    body = msg.get_body(("plain",)).get_content()
    for i in range(6):
        assert "batch-%d.csv (%d bytes)" % (i, i + 1) in body
    time.sleep(5)
    assert len(dovecot.messages(to)) == 1


def test_unknown_account_fails_syntax_check(notifier):
    a = notifier("MailOAuthNotify nosuch to=%s" % rcpt("x"), seed=False)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert "no MailOAuthAccount named 'nosuch'" in res.stderr


@pytest.mark.parametrize("rule, hint", [
    ("MailOAuthNotify notify", "no recipients: add to=address"),
    ("MailOAuthNotify notify to=not-an-address", "is not an email address"),
    ("MailOAuthNotify notify to=a@b.c attach=lots", "write e.g. attach=10M"),
    ("MailOAuthNotify notify to=a@b.c digest=soon", "write e.g. digest=10m"),
    ("MailOAuthNotify notify to=a@b.c colour=red", "unknown setting 'colour'"),
    ("MailOAuthNotify notify to=a@b.c burst=drop", "write burst=digest"),
])
def test_rule_mistakes_fail_syntax_check(notifier, rule, hint):
    a = notifier(rule, seed=False)
    res = a.srv.syntax_check()
    assert res.returncode != 0
    assert hint in res.stderr and "on line" in res.stderr


# -- faults ------------------------------------------------------------------

def test_smtp_down_then_back_delivers_each_once(notifier, dovecot, pki,
                                                 mail_workdir):
    """The SMTP server is unreachable during a burst of uploads, then comes
    back: every notification arrives, exactly once."""
    to = rcpt("burst")
    port = free_port()
    a = notifier("MailOAuthNotify notify to=%s" % to,
                 smtp="smtp://127.0.0.1:%d" % port)
    a.srv.start()
    n = 12
    for i in range(n):
        curl_upload(a.srv, "ftp", "burst-%02d.txt" % i, b"%d" % i)
    a.srv.wait_log("cannot send notifications through", timeout=20)
    time.sleep(2)
    late_dir = os.path.join(mail_workdir, "late-%s" % uuid.uuid4().hex[:6])
    os.makedirs(late_dir)
    os.chmod(late_dir, 0o755)
    late = Postfix(late_dir, pki, dovecot)
    late.smtp_port = port
    try:
        late.start()
        dovecot.wait_for_messages(to, n, timeout=120)
        time.sleep(3)
        msgs = dovecot.messages(to)
        assert len(msgs) == n, "%d mails for %d uploads" % (len(msgs), n)
        for i in range(n):
            assert sum(b"burst-%02d.txt" % i in m for m in msgs) == 1
        text = a.srv.log_text()
        assert text.count("cannot send notifications through") == 1
        assert "work again after" in text
    finally:
        late.stop()


def test_server_without_starttls_is_refused(notifier, postfix):
    to = rcpt("plain")
    a = notifier("MailOAuthNotify notify to=%s" % to,
                 smtp="smtp://%s:%d" % (postfix.plain_host,
                                        postfix.smtp_plain_port))
    a.srv.start()
    before = len(postfix.logs())
    curl_upload(a.srv, "ftp", "secret.txt", b"x")
    text = a.srv.wait_log("does not offer STARTTLS", timeout=20)
    assert "refusing to log in over an unencrypted connection" in text
    # Nothing was lost: the event waits in the queue.
    queue = os.path.join(a.srv.state_dir, "queue")
    assert [f for f in os.listdir(queue) if f.endswith(".ev")]
    # And no credential crossed the wire: Postfix saw a session, no AUTH.
    time.sleep(1)
    new = postfix.logs()[before:]
    assert "disconnect from" in new
    assert "sasl_method" not in new and "auth=" not in new


def test_expired_token_mid_batch_is_refreshed(notifier, dovecot, tokensvc):
    to = rcpt("expiry")
    a = notifier("MailOAuthNotify notify to=%s" % to)
    a.srv.start()
    curl_upload(a.srv, "ftp", "first.txt", b"1")
    dovecot.wait_for_messages(to, 1, timeout=30)
    # The server now rejects the token the worker holds, and a new worker
    # (so a new connection) must log in with it again.
    tokensvc.expire_access_tokens()
    for pid in a.srv.worker_pids():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: a.srv.worker_pids(), what="a new worker")
    curl_upload(a.srv, "ftp", "second.txt", b"2")
    curl_upload(a.srv, "ftp", "third.txt", b"3")
    dovecot.wait_for_messages(to, 3, timeout=40)
    assert a.refreshes("ok"), "no refresh after the rejection"
    time.sleep(1)
    assert len(dovecot.messages(to)) == 3


def test_worker_killed_while_sending_loses_nothing(notifier, dovecot):
    to = rcpt("crash")
    a = notifier("MailOAuthNotify notify to=%s" % to)
    a.srv.start()
    n = 15
    for i in range(n):
        curl_upload(a.srv, "ftp", "c-%02d.txt" % i, b"x")
        if i % 5 == 4:
            for pid in a.srv.worker_pids():
                os.kill(pid, signal.SIGKILL)
    msgs = dovecot.wait_for_messages(to, n, timeout=60)
    time.sleep(3)
    msgs = dovecot.messages(to)
    # At least once; a kill between the server's 250 and the queue
    # removal may repeat one mail, never lose one.
    assert n <= len(msgs) <= n + 3


def test_rejected_recipient_goes_to_dead_letter(notifier, dovecot):
    to = "someone@elsewhere.invalid"
    good = rcpt("good")
    a = notifier("MailOAuthNotify notify to=%s\n"
                 "<Directory ~/ok>\n  MailOAuthNotify notify to=%s\n"
                 "</Directory>" % (to, good))
    a.srv._prepare()
    os.makedirs(os.path.join(a.srv.home("alice"), "ok"))
    os.chown(os.path.join(a.srv.home("alice"), "ok"), 2001, 2001)
    a.srv.start()
    curl_upload(a.srv, "ftp", "lost.txt", b"x")
    text = a.srv.wait_log("refused for good", timeout=30)
    assert "deadletter" in text
    dead = os.path.join(a.srv.state_dir, "deadletter")
    assert len([f for f in os.listdir(dead) if f.endswith(".ev")]) == 1
    # The queue moves on.
    curl_upload(a.srv, "ftp", "ok/fine.txt", b"y")
    dovecot.wait_for_messages(good, 1, timeout=30)


BACKLOG = re.compile(r"account notify: (\d+) notifications? waits? for the "
                     r"send rate \((\d+) a minute\); at this rate the last "
                     r"goes out in about (\d+) minutes?")
CLEARED = re.compile(r"account notify: send-rate backlog cleared: (\d+) "
                     r"notifications? sent in \d+ s")


def test_rate_limit_makes_mail_wait_not_drop(notifier, dovecot):
    to = rcpt("rate")
    a = notifier("MailOAuthNotify notify to=%s" % to)
    a.srv.extra_conf = a.srv.extra_conf.replace("smtp=", "send-rate=3 smtp=")
    a.srv.start()
    pids = stopped_worker(a)
    for i in range(5):
        ftp_store(a, "r-%d.txt" % i, b"x")
    resume(pids)
    dovecot.wait_for_messages(to, 3, timeout=30)
    time.sleep(5)
    assert len(dovecot.messages(to)) == 3
    queue = os.path.join(a.srv.state_dir, "queue")
    assert len([f for f in os.listdir(queue) if f.endswith(".ev")]) == 2
    # Held back mail is said once, with how long it will take.
    text = a.srv.log_text()
    assert [m.groups() for m in BACKLOG.finditer(text)] == \
        [("2", "3", "1")], text
    assert not CLEARED.search(text)
    # The window moves on after a minute; nothing was dropped.
    dovecot.wait_for_messages(to, 5, timeout=90)
    a.srv.wait_log("send-rate backlog cleared", timeout=10)
    text = a.srv.log_text()
    assert [m.group(1) for m in CLEARED.finditer(text)] == ["2"], text
    assert len(BACKLOG.findall(text)) == 1


def test_burst_digest_folds_a_backlog_into_one_mail(notifier, dovecot):
    to = rcpt("burst")
    a = notifier('MailOAuthNotify notify to=%s burst=digest "subject=Drop"'
                 % to)
    a.srv.extra_conf = a.srv.extra_conf.replace("smtp=", "send-rate=2 smtp=")
    a.srv.start()
    # Two uploads: the rate lets both go, one mail each.
    for i in range(2):
        ftp_store(a, "first-%d.csv" % i, b"x")
    msgs = [parse(m) for m in dovecot.wait_for_messages(to, 2, timeout=30)]
    assert sorted(m["Subject"] for m in msgs) == ["Drop", "Drop"]
    # Six more while the minute's two are spent: one digest, once the
    # window lets one more mail go.
    pids = stopped_worker(a)
    for i in range(6):
        ftp_store(a, "burst-%d.csv" % i, b"y" * (i + 1))
    resume(pids)
    raw = dovecot.wait_for_messages(to, 3, timeout=90)
    digest = [parse(m) for m in raw if b"burst-0.csv" in m]
    assert len(digest) == 1
    assert digest[0]["Subject"] == "Drop (6 uploads)"
    body = digest[0].get_body(("plain",)).get_content()
    assert "6 uploads arrived, more than the 2 a minute" in body
    for i in range(6):
        assert "burst-%d.csv (%d bytes)" % (i, i + 1) in body
    time.sleep(3)
    assert len(dovecot.messages(to)) == 3
    text = a.srv.log_text()
    assert "notification for a digest of 6 uploads (burst=digest: the " \
        "send-rate backlog of the rule at " in text
    assert [m.groups() for m in BACKLOG.finditer(text)] == \
        [("1", "2", "1")], text
    assert [m.group(1) for m in CLEARED.finditer(text)] == ["1"], text


def test_from_other_than_mailbox_reported_at_startup(notifier):
    a = notifier("MailOAuthNotify notify to=%s from=other@contoso.test"
                 % rcpt("x"))
    a.srv.start()
    text = a.srv.log_text()
    assert "sends as other@contoso.test, but account 'notify' is mailbox " \
        "%s" % ALICE in text
    assert "SendAsDenied" in text


def test_message_id_is_stable_and_unique(notifier, dovecot):
    to = rcpt("mid")
    a = notifier("MailOAuthNotify notify to=%s" % to)
    a.srv.start()
    curl_upload(a.srv, "ftp", "one.txt", b"1")
    curl_upload(a.srv, "ftp", "two.txt", b"2")
    msgs = [parse(m) for m in dovecot.wait_for_messages(to, 2, timeout=30)]
    ids = [m["Message-ID"] for m in msgs]
    # Derived from the queued event: a resend after a crash keeps it.
    assert all(re.match(r"^<\d+\.\d+-\d+-\d{12}\.mailoauth@contoso\.test>$",
                        i) for i in ids), ids
    assert len(set(ids)) == 2


def test_rules_per_user_with_mod_ifsession(notifier, dovecot):
    everyone, alices = rcpt("all"), rcpt("alice")
    a = notifier("MailOAuthNotify notify to=%s\n"
                 "<IfUser alice>\n  MailOAuthNotify notify to=%s\n</IfUser>"
                 % (everyone, alices), modules=["mod_ifsession.c"],
                 users={"alice": 2001, "bob": 2002})
    a.srv.start()
    curl_upload(a.srv, "ftp", "from-bob.txt", b"b", user="bob")
    curl_upload(a.srv, "ftp", "from-alice.txt", b"a", user="alice")
    # As with other directives, <IfUser> settings replace the server's for
    # that user: the most specific rules win.
    assert b"from-alice.txt" in dovecot.wait_for_messages(alices, 1,
                                                          timeout=30)[0]
    assert b"from-bob.txt" in dovecot.wait_for_messages(everyone, 1,
                                                        timeout=30)[0]
    time.sleep(2)
    assert len(dovecot.messages(alices)) == 1
    assert len(dovecot.messages(everyone)) == 1


# -- attach=: what the worker may send ----------------------------------------

NOBODY = 65534      # the daemon's User in these tests, and so the worker's


def stopped_worker(a):
    """SIGSTOP the worker: uploads then wait in the journal, as they do
    behind a digest window, a send-rate backlog or an SMTP outage, while
    the test changes the file system under them."""
    pids = wait_for(lambda: a.srv.worker_pids(), what="the worker")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def resume(pids):
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def ftp_store(a, name, data):
    """STOR over one session, then NOOP: its answer comes after the STOR's
    LOG_CMD handlers ran, so the upload is recorded when this returns."""
    import ftplib
    import io
    ftp = ftplib.FTP()
    ftp.connect(a.srv.host, a.srv.port)
    ftp.login("alice", a.srv.password)
    try:
        ftp.storbinary("STOR " + name, io.BytesIO(data))
        ftp.voidcmd("NOOP")
    finally:
        ftp.quit()


def user_dir(path, uid, mode=0o755):
    os.makedirs(path)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def test_attach_never_follows_a_swapped_directory(notifier, dovecot):
    """The directory an upload sits in is replaced by a symlink while the
    mail waits, once to a directory of the worker's user holding a canary
    under the uploaded name, once to the real tokens directory: neither
    file goes out; both mails do, saying the file was not attached."""
    to = rcpt("swap")
    a = notifier("MailOAuthNotify notify to=%s attach=64K" % to)
    a.srv._prepare()
    home = a.srv.home("alice")
    user_dir(os.path.join(home, "d"), 2001)
    user_dir(os.path.join(home, "t"), 2001)
    canary_dir = os.path.join(a.srv.dir, "canary")
    user_dir(canary_dir, NOBODY, 0o700)
    canary = ("CANARY-%s" % uuid.uuid4().hex).encode()
    with open(os.path.join(canary_dir, "notify.json"), "wb") as f:
        f.write(canary)
    os.chown(os.path.join(canary_dir, "notify.json"), NOBODY, NOBODY)
    a.srv.start()
    token_bytes = open(a.token_file, "rb").read()
    refresh = a.tokens()["refresh_token"].encode()

    pids = stopped_worker(a)
    try:
        ftp_store(a, "d/notify.json", b"first upload")
        ftp_store(a, "t/notify.json", b"second upload")
        for sub, target in (("d", canary_dir),
                            ("t", os.path.dirname(a.token_file))):
            os.rename(os.path.join(home, sub), os.path.join(home, sub + ".0"))
            os.symlink(target, os.path.join(home, sub))
    finally:
        resume(pids)

    msgs = dovecot.wait_for_messages(to, 2, timeout=30)
    # The worker may have refreshed meanwhile: the old and the new tokens.
    secrets = (canary, refresh, token_bytes[:40],
               a.tokens()["refresh_token"].encode(),
               open(a.token_file, "rb").read()[:40])
    for raw in msgs:
        m = parse(raw)
        assert list(m.iter_attachments()) == []
        body = m.get_body(("plain",)).get_content()
        assert "The file was not attached" in body
        for secret in secrets:
            assert secret not in raw
            assert base64.b64encode(secret)[:20] not in raw
    text = a.srv.log_text()
    assert text.count("not attaching the file: a symbolic link is on its "
                      "path") == 2


def test_attach_limit_applies_to_the_file_as_it_is(notifier, dovecot):
    """A file within attach= when uploaded, grown past it before the worker
    gets to it, is not attached; one of the right size is, whole."""
    to = rcpt("grow")
    a = notifier("MailOAuthNotify notify to=%s attach=64K" % to)
    a.srv.start()
    small = os.urandom(3000)
    pids = stopped_worker(a)
    try:
        ftp_store(a, "grows.bin", os.urandom(1000))
        ftp_store(a, "stays.bin", small)
        with open(os.path.join(a.srv.home("alice"), "grows.bin"), "ab") as f:
            f.write(os.urandom(70000))
    finally:
        resume(pids)

    by_name = {}
    for raw in dovecot.wait_for_messages(to, 2, timeout=30):
        m = parse(raw)
        name = "grows" if b"grows.bin" in raw else "stays"
        by_name[name] = m
    assert list(by_name["grows"].iter_attachments()) == []
    assert "The file was not attached: it is larger than 65536 bytes." in \
        by_name["grows"].get_body(("plain",)).get_content()
    atts = list(by_name["stays"].iter_attachments())
    assert [p.get_content() for p in atts] == [small]
    assert "not attached" not in \
        by_name["stays"].get_body(("plain",)).get_content()


def test_line_breaks_in_a_file_name_are_shown_escaped(notifier, dovecot,
                                                      pki):
    """A name with CR LF (possible over SFTP) cannot start a body line: it
    shows as \\r\\n, and no line of the mail reads "Bcc: ..."."""
    to = rcpt("esc")
    victim = rcpt("victim")
    a = notifier("MailOAuthNotify notify to=%s" % to, sftp=True)
    a.srv.start()
    curl_upload(a.srv, "sftp", "x%%0D%%0ABcc:%%20%s%%0D%%0A.txt" % victim,
                b"x", pki=pki)
    raw = dovecot.wait_for_messages(to, 1, timeout=30)[0]
    body = parse(raw).get_body(("plain",)).get_content()
    assert "x\\r\\nBcc: %s\\r\\n.txt" % victim in body
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    assert not [ln for ln in lines if ln.lstrip().lower().startswith(b"bcc")]
    assert parse(raw)["Bcc"] is None
    time.sleep(2)
    assert dovecot.messages(victim) == []


def test_attach_from_a_chrooted_session(notifier, dovecot):
    """Under DefaultRoot the session records the file through its own,
    chrooted view; the worker finds the same file by its real path."""
    to = rcpt("chroot")
    a = notifier("MailOAuthNotify notify to=%s attach=64K" % to,
                 default_root=True)
    a.srv.start()
    data = os.urandom(2000)
    curl_upload(a.srv, "ftp", "jailed.bin", data)
    m = parse(dovecot.wait_for_messages(to, 1, timeout=30)[0])
    assert [p.get_content() for p in m.iter_attachments()] == [data]
