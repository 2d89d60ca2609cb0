"""Operators' tools against a running server: `ftpdctl mailoauth status|run
TASK|retry` (mod_ctrls, MailOAuthControlsACLs), the metrics file for
node_exporter's textfile collector (MailOAuthMetricsFile) read with
Prometheus' own parser, and `ftpmailoauth status --json`."""

import json
import os
import shutil
import stat
import subprocess
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_accounts import ALICE, wait_for
from test_foundation import curl_upload
from test_ingest import ingester, make_mail, visible  # noqa: F401 (fixture)
from test_notify import notifier  # noqa: F401 (fixture)
from test_signin import TOOL

NOBODY = 65534
ALLOW_ALL = "MailOAuthControlsACLs all allow user root\n"


@pytest.fixture(scope="module")
def mail_users():
    # Any address is a mailbox.
    return []


def rcpt(tag):
    return "%s-%s@contoso.test" % (tag, uuid.uuid4().hex[:8])


def status_file(srv):
    with open(os.path.join(srv.state_dir, "status.json")) as f:
        return json.load(f)


def wait_status(srv, pred, what, timeout=20):
    def check():
        try:
            doc = status_file(srv)
        except (OSError, ValueError):
            return None
        return doc if pred(doc) else None
    return wait_for(check, timeout=timeout, what=what)


def metrics(path):
    """{(name, labels): value} of every sample in the file."""
    with open(path) as f:
        text = f.read()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def with_controls(a, acls=ALLOW_ALL):
    a.srv.controls = True
    a.srv.extra_conf += "\n" + acls


# -- ftpdctl --------------------------------------------------------------


def test_status_shows_accounts_queue_and_counters(notifier, dovecot):
    to = rcpt("ctl")
    a = notifier("MailOAuthNotify notify to=%s" % to)
    with_controls(a)
    a.srv.start()
    curl_upload(a.srv, "ftp", "one.txt", b"1")
    curl_upload(a.srv, "ftp", "two.txt", b"2")
    dovecot.wait_for_messages(to, 2, timeout=30)
    wait_status(a.srv, lambda d: d["notifications"]["sent"] == 2,
                "2 sent in the status file")

    code, out = a.srv.ftpdctl("mailoauth", "status")
    assert code == 0, out
    assert "account notify (delegated): ok" in out
    assert "0 queued" in out and "0 dead letters" in out
    assert "2 sent, 0 failed attempts, 0 dead-lettered" in out
    assert "last error: none" in out


def test_acls_refuse_what_is_not_allowed(notifier):
    a = notifier("MailOAuthNotify notify to=%s" % rcpt("acl"))
    with_controls(a, "MailOAuthControlsACLs status allow user root\n")
    a.srv.start()
    wait_status(a.srv, lambda d: True, "a status file")

    code, out = a.srv.ftpdctl("mailoauth", "status")
    assert code == 0 and "account notify" in out, out
    for action in (["retry"], ["run", "t1"]):
        code, out = a.srv.ftpdctl("mailoauth", *action)
        assert "access denied" in out, out
    assert "on request" not in a.srv.log_text()

    # After a restart (the module is loaded again) the control is still
    # there, with the ACLs as the configuration now says.
    with open(a.srv.conf, "a") as f:
        f.write("\nMailOAuthControlsACLs retry allow user root\n")
    a.srv.restart()
    a.srv.wait_log("worker started", count=2, timeout=20)
    code, out = a.srv.ftpdctl("mailoauth", "retry")
    assert "asked the worker to move the dead letters" in out, out
    code, out = a.srv.ftpdctl("mailoauth", "run", "t1")
    assert "access denied" in out, out
    a.srv.wait_log("no dead letters to retry")


def test_no_acl_denies_everything(notifier):
    a = notifier("MailOAuthNotify notify to=%s" % rcpt("acl"))
    with_controls(a, "")
    a.srv.start()
    code, out = a.srv.ftpdctl("mailoauth", "status")
    assert "access denied" in out and "account" not in out, out


def test_bad_acl_action_fails_syntax_check(notifier):
    a = notifier("MailOAuthNotify notify to=%s" % rcpt("acl"))
    with_controls(a, "MailOAuthControlsACLs status,flush allow user root\n")
    r = a.srv.syntax_check()
    assert r.returncode != 0
    assert "unknown mailoauth action: 'flush'" in r.stdout + r.stderr


def test_run_makes_a_task_run_now(ingester, dovecot):
    # every=1h: after its first run, the task would not look again for an
    # hour; only `run` can make it take the new mail.
    a = ingester(every=3600, start=False)
    with_controls(a)
    a.go()
    wait_status(a.srv, lambda d: d["tasks"][0]["last_success"] is not None,
                "the first run")
    first = status_file(a.srv)["tasks"][0]
    assert first["next_run"] - first["last_run"] >= 3500

    dovecot.deliver(ALICE, make_mail([("now.txt", b"now\n", "text/plain")]))
    code, out = a.srv.ftpdctl("mailoauth", "run", "t1")
    assert code == 0 and "run task t1 now" in out, out
    wait_for(lambda: "now.txt" in visible(a.inbox), timeout=30,
             what="now.txt deposited")
    a.srv.wait_log("ingest t1: run now, as asked with ftpdctl")
    doc = wait_status(a.srv, lambda d: d["tasks"][0]["messages"] == 1,
                      "1 message counted")
    assert doc["tasks"][0]["errors"] == 0

    code, out = a.srv.ftpdctl("mailoauth", "run", "nosuch")
    assert "no MailOAuthIngest task named 'nosuch'" in out, out


def test_retry_sends_dead_letters_again(notifier, dovecot, postfix):
    to = rcpt("retry")
    # A mail server that is not there: the event waits in the queue...
    a = notifier("MailOAuthNotify notify to=%s" % to,
                 smtp="smtp://127.0.0.1:1")
    with_controls(a)
    a.srv.start()
    curl_upload(a.srv, "ftp", "late.txt", b"late")
    queue = os.path.join(a.srv.state_dir, "queue")
    dead = os.path.join(a.srv.state_dir, "deadletter")
    wait_for(lambda: [f for f in os.listdir(queue) if f.endswith(".ev")],
             timeout=20, what="a queued event")
    a.srv.stop()
    # ... and, as after a permanent refusal, moves to the dead letters.
    for name in os.listdir(queue):
        os.rename(os.path.join(queue, name), os.path.join(dead, name))
    a.srv.extra_conf = a.srv.extra_conf.replace(
        "smtp=smtp://127.0.0.1:1", "smtp=smtp://127.0.0.1:%d"
        % postfix.smtp_port)
    a.srv.start()
    doc = wait_status(a.srv, lambda d: d["notifications"]["dead_letters"] == 1,
                      "1 dead letter in the status")
    assert doc["notifications"]["queued"] == 0

    code, out = a.srv.ftpdctl("mailoauth", "retry")
    assert code == 0 and "dead letters back to the queue" in out, out
    dovecot.wait_for_messages(to, 1, timeout=30)
    a.srv.wait_log("1 dead letter moved back to the queue")
    assert [f for f in os.listdir(dead) if f.endswith(".ev")] == []
    wait_status(a.srv, lambda d: d["notifications"]["sent"] == 1 and
                d["notifications"]["dead_letters"] == 0, "sent after retry")


# -- metrics ----------------------------------------------------------------


def test_metrics_file_matches_what_happened(notifier, dovecot):
    to = rcpt("metrics")
    a = notifier("MailOAuthNotify notify to=%s" % to, seed=False)
    # The stored access token has expired: the worker refreshes it once.
    a.seed(expired=True)
    mdir = os.path.join(a.srv.dir, "node-exporter")
    os.makedirs(mdir)
    os.chown(mdir, NOBODY, 0)
    prom = os.path.join(mdir, "mailoauth.prom")
    a.srv.extra_conf += "\nMailOAuthMetricsFile %s\n" % prom
    a.srv.start()
    curl_upload(a.srv, "ftp", "m1.txt", b"1")
    curl_upload(a.srv, "ftp", "m2.txt", b"2")
    dovecot.wait_for_messages(to, 2, timeout=30)

    def sent_two():
        try:
            m = metrics(prom)
        except OSError:
            return None
        return m if m.get(("mailoauth_notifications_sent_total", ())) == 2 \
            else None
    m = wait_for(sent_two, timeout=20, what="sent_total 2 in the metrics")
    assert m[("mailoauth_notifications_failed_total", ())] == 0
    assert m[("mailoauth_notifications_dead_lettered_total", ())] == 0
    assert m[("mailoauth_notifications_queued", ())] == 0
    assert m[("mailoauth_notifications_dead_letters", ())] == 0
    assert m[("mailoauth_notifications_oldest_queued_age_seconds", ())] == 0
    acct = (("account", "notify"),)
    assert m[("mailoauth_account_ok", acct)] == 1
    assert m[("mailoauth_token_refreshes_total", acct)] == 1
    assert m[("mailoauth_token_refresh_failures_total", acct)] == 0
    # A delegated account's refresh token: about 90 days left.
    assert 89 * 86400 < m[("mailoauth_refresh_token_lapse_seconds",
                           acct)] <= 90 * 86400
    st = os.stat(prom)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert [f for f in os.listdir(mdir)] == ["mailoauth.prom"]

    # The same through ftpmailoauth, for other monitoring.
    r = subprocess.run([TOOL, "-c", a.srv.conf, "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["notifications"]["sent"] == 2
    assert doc["accounts"][0]["name"] == "notify"
    assert doc["accounts"][0]["state"] == "ok"


def test_metrics_count_ingested_mail(ingester, dovecot):
    a = ingester(start=False)
    mdir = os.path.join(a.srv.dir, "node-exporter")
    os.makedirs(mdir)
    os.chown(mdir, NOBODY, 0)
    prom = os.path.join(mdir, "mailoauth.prom")
    a.srv.extra_conf += "\nMailOAuthMetricsFile %s\n" % prom
    dovecot.deliver(ALICE, make_mail([("a.txt", b"a\n", "text/plain")]))
    dovecot.deliver(ALICE, make_mail([("b.txt", b"b\n", "text/plain")]))
    a.go()
    task = (("task", "t1"),)

    def two():
        try:
            m = metrics(prom)
        except OSError:
            return None
        return m if m.get(("mailoauth_ingest_messages_total", task)) == 2 \
            else None
    m = wait_for(two, timeout=30, what="2 messages in the metrics")
    assert m[("mailoauth_ingest_bytes_total", task)] > 200
    assert m[("mailoauth_ingest_errors_total", task)] == 0
    assert ("mailoauth_ingest_last_success_timestamp_seconds", task) in m


def test_metrics_directory_user_cannot_write_fails_syntax_check(notifier):
    a = notifier("MailOAuthNotify notify to=%s" % rcpt("m"))
    mdir = os.path.join(a.srv.dir, "rootonly")
    os.makedirs(mdir)
    os.chmod(mdir, 0o755)
    a.srv.extra_conf += "\nMailOAuthMetricsFile %s/m.prom\n" % mdir
    r = a.srv.syntax_check()
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "MailOAuthMetricsFile" in out and "User cannot write" in out, out
