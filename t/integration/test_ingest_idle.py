"""IMAP IDLE for pull tasks, against real Dovecot: with every=15m, mail is
taken the moment it arrives because the task's watcher connection is told
(* n EXISTS); idle=off and a server without IDLE leave polling alone."""

import json
import os
import time

import pytest

from mailservers import Dovecot
from test_accounts import ALICE, AccountServer
from test_ingest import UID, clear_mailbox, make_mail, visible, wait_files

EVERY = 900          # 15 minutes: polling cannot explain a quick deposit
WATCHING = "watching folder 'INBOX' with IMAP IDLE"

# Dovecot 2.3's capabilities after login, without IDLE.
NO_IDLE_CAPS = (
    "IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE SORT "
    "SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT "
    "MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS "
    "LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY "
    "PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL- NOTIFY SPECIAL-USE")


class NoIdleDovecot(Dovecot):
    """A Dovecot that does not offer IDLE (imap_capability override)."""

    def _write_config(self):
        super()._write_config()
        with open(self.config, "a") as f:
            f.write("\nprotocol imap {\n  imap_capability = %s\n}\n"
                    % NO_IDLE_CAPS)


@pytest.fixture(scope="module")
def dovecot_noidle(mail_workdir, mail_pki, mail_introspection_url,
                   mail_users):
    workdir = os.path.join(mail_workdir, "noidle")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    server = NoIdleDovecot(workdir, mail_pki, mail_introspection_url,
                           users=mail_users)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def task(make_proftpd, tokensvc, tokensvc_app, pki):
    """factory(server, settings, every) -> started AccountServer."""

    def factory(server, settings="", every=EVERY):
        clear_mailbox(server)
        a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                          extra="imap=imaps://%s:%d"
                          % (server.host, server.imaps_port))
        inbox = os.path.join(a.srv.home("alice"), "inbox")
        a.srv.extra_conf += (
            "\nMailOAuthIngest t1 account=notify every=%d dir=%s "
            "owner=%d:%d %s\n" % (every, inbox, UID, UID, settings))
        a.seed()
        a.inbox = inbox
        a.srv._prepare()
        os.makedirs(inbox, exist_ok=True)
        os.chown(inbox, UID, UID)
        os.chmod(inbox, 0o755)
        a.srv.start()
        return a

    return factory


def first_run_done(a, timeout=15):
    """Waits until the task has run once (the status file says so)."""
    path = os.path.join(a.srv.state_dir, "status.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                tasks = json.load(f)["tasks"]
            if tasks and tasks[0]["last_run"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("task t1 did not run:\n" + a.srv.diagnostics())


def test_idle_takes_new_mail_at_once(task, dovecot):
    a = task(dovecot)
    first_run_done(a)
    a.srv.wait_log(WATCHING, timeout=15)
    time.sleep(0.5)                   # the run that idling triggers
    assert visible(a.inbox) == []

    data = os.urandom(50000)
    start = time.monotonic()
    dovecot.deliver(ALICE, make_mail([("idle.pdf", data,
                                       "application/pdf")]))
    wait_files(a.inbox, 1, timeout=15)
    took = time.monotonic() - start
    print("arrival to file on disk: %.2f s" % took)
    with open(os.path.join(a.inbox, "idle.pdf"), "rb") as f:
        assert f.read() == data

    # The watcher was told, and made the task run.
    trace = a.srv.read(a.srv.tracelog)
    assert "IDLE: new mail" in trace
    assert "run now (IDLE)" in trace
    # One line when it started idling, none per message.
    assert a.srv.log_text().count(WATCHING) == 1

    # A second message, on the same watcher.
    dovecot.deliver(ALICE, make_mail([("two.txt", b"two\n", "text/plain")]))
    wait_files(a.inbox, 2, timeout=15)


def test_idle_is_renewed_and_still_wakes(task, dovecot):
    a = task(dovecot, settings="idle-renew=1")
    first_run_done(a)
    a.srv.wait_log(WATCHING, timeout=15)
    # DONE, then IDLE again, twice over.
    deadline = time.monotonic() + 15
    while a.srv.read(a.srv.tracelog).count("renewing IDLE") < 2:
        assert time.monotonic() < deadline, a.srv.diagnostics()
        time.sleep(0.2)
    dovecot.deliver(ALICE, make_mail([("renewed.txt", b"r\n",
                                       "text/plain")]))
    wait_files(a.inbox, 1, timeout=15)
    assert a.srv.log_text().count(WATCHING) == 1
    assert "IMAP IDLE is not available" not in a.srv.log_text()


def test_dropped_watcher_reconnects_and_logs_once(task, dovecot):
    a = task(dovecot)
    first_run_done(a)
    a.srv.wait_log(WATCHING, timeout=15)
    # The server ends every session of the user, the watcher's too.
    dovecot.doveadm("kick", ALICE)
    a.srv.wait_log("IMAP IDLE is not available", timeout=15)
    # Back after the first backoff step (5 s), and the task runs once.
    a.srv.wait_log(WATCHING, count=2, timeout=20)
    dovecot.deliver(ALICE, make_mail([("back.txt", b"b\n", "text/plain")]))
    wait_files(a.inbox, 1, timeout=15)
    log = a.srv.log_text()
    assert log.count("IMAP IDLE is not available") == 1, log


def test_watcher_logs_in_again_before_the_token_expires(task, dovecot,
                                                        tokensvc):
    # Exchange ends a session whose token expired: the watcher must not
    # wait for that.  A 30 s token: a fresh login after about 15 s.
    tokensvc.set_config(expires_in=30)
    a = task(dovecot)
    first_run_done(a)
    a.srv.wait_log(WATCHING, timeout=15)
    deadline = time.monotonic() + 30
    while "before the token expires" not in a.srv.read(a.srv.tracelog):
        assert time.monotonic() < deadline, a.srv.diagnostics()
        time.sleep(0.2)
    dovecot.deliver(ALICE, make_mail([("fresh.txt", b"f\n", "text/plain")]))
    wait_files(a.inbox, 1, timeout=15)
    log = a.srv.log_text()
    assert log.count(WATCHING) == 1, log
    assert "IMAP IDLE is not available" not in log


def test_idle_off_waits_for_the_poll(task, dovecot):
    a = task(dovecot, settings="idle=off")
    first_run_done(a)
    time.sleep(0.5)
    dovecot.deliver(ALICE, make_mail([("late.txt", b"late\n",
                                       "text/plain")]))
    time.sleep(15)
    assert visible(a.inbox) == []
    assert "IMAP IDLE" not in a.srv.log_text()
    assert "IDLE:" not in a.srv.read(a.srv.tracelog)


def test_server_without_idle_falls_back_to_polling(task, dovecot_noidle):
    a = task(dovecot_noidle, every=2)
    a.srv.wait_log("IMAP IDLE cannot be used", timeout=15)
    dovecot_noidle.deliver(ALICE, make_mail([("polled.txt", b"p\n",
                                              "text/plain")]))
    wait_files(a.inbox, 1, timeout=15)
    time.sleep(3)                     # more polls, no more lines
    log = a.srv.log_text()
    assert log.count("IMAP IDLE cannot be used") == 1, log
    assert "does not offer IDLE" in log
    assert WATCHING not in log


@pytest.mark.parametrize("setting,hint", [
    ("idle=sometimes", "write idle=on or idle=off"),
    ("colour=blue", "tnef, idle)"),
])
def test_idle_setting_is_checked(make_proftpd, tokensvc, tokensvc_app, pki,
                                 setting, hint):
    a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki)
    a.srv.extra_conf += ("\nMailOAuthIngest t1 account=notify every=60 "
                         "dir=/srv/in owner=2001:2001 %s\n" % setting)
    r = a.srv.syntax_check()
    assert r.returncode != 0
    assert hint in r.stderr + r.stdout, r.stderr
