"""Ingestion's IMAP side against real Dovecot, through a front that can do
what Exchange Online does and Dovecot cannot (t/lib/imapfront.py): end a
session when its token expires, and hold a large fetch half-way so that
the worker can be killed at that moment.

  - a task with from=/to=/subject= decides from the header alone: mail it
    does not take is never downloaded, and stays unread;
  - a message is read with BODY.PEEK[]: a worker killed mid-fetch leaves
    it exactly as it was (with BODY[] the server had marked it read);
  - short-lived tokens: sessions log in again before expiry, and a BYE
    AccessTokenExpired costs one more try, never a message or an error.
"""

import os
import re
import signal

import pytest

from imapfront import IMAPFront
from test_accounts import ALICE, AccountServer, wait_for
from test_ingest import (UID, clear_mailbox, flags, make_mail, sha, uids,
                         visible, wait_files)


@pytest.fixture
def front(pki, dovecot):
    f = IMAPFront(pki, dovecot.host, dovecot.imaps_port,
                  host=dovecot.host).start()
    yield f
    f.close()


@pytest.fixture
def via_front(make_proftpd, tokensvc, tokensvc_app, pki, dovecot, front):
    """factory(settings) -> AccountServer (not started: call .go()) whose
    task reads INBOX through the front."""

    def factory(settings="", every=1):
        clear_mailbox(dovecot)
        a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                          extra="imap=imaps://%s:%d"
                          % (front.host, front.port))
        inbox = os.path.join(a.srv.home("alice"), "inbox")
        a.srv.extra_conf += (
            "\nMailOAuthIngest t1 account=notify every=%d dir=%s "
            "owner=%d:%d %s\n" % (every, inbox, UID, UID, settings))
        a.seed()
        a.inbox = inbox

        a.dirs = [inbox]

        def task(name, settings):
            """Another task on the same folder, into its own directory."""
            d = os.path.join(a.srv.home("alice"), name)
            a.srv.extra_conf += (
                "MailOAuthIngest %s account=notify every=%d dir=%s "
                "owner=%d:%d %s\n" % (name, every, d, UID, UID, settings))
            a.dirs.append(d)
            return d
        a.task = task

        def go():
            a.srv._prepare()
            for d in a.dirs:
                os.makedirs(d, exist_ok=True)
                os.chown(d, UID, UID)
                os.chmod(d, 0o755)
            a.srv.start()
            return a
        a.go = go
        return a

    return factory


def test_unwanted_mail_is_decided_from_its_header_alone(via_front, dovecot,
                                                       front):
    a = via_front('"subject=Scan *"')
    big = os.urandom(2 * 1024 * 1024)
    # Raw UTF-8 and an RFC 2047 subject: decoded as the full check does.
    dovecot.deliver(ALICE, make_mail([("other.bin", big,
                                       "application/octet-stream")],
                                     subject="Invoice 7 \u00fcml"))
    dovecot.deliver(ALICE, make_mail([("scan.txt", b"s", "text/plain")],
                                     subject="Scan 42 \u00e4"))
    other, scan = uids(dovecot)
    a.go()
    wait_files(a.inbox, 1)
    wait_for(lambda: "\\Seen" in flags(dovecot, scan), timeout=20,
             what="the scan taken")
    # UIDs go in order: the other message was decided before the scan was
    # taken, from its header.
    assert [c for c in front.commands
            if re.search(rb"UID FETCH %d BODY\.PEEK\[HEADER\]" % other, c,
                         re.I)]
    assert visible(a.inbox) == ["scan.txt"]
    fetched = [c for c in front.body_fetches()]
    assert [c for c in fetched
            if re.search(rb"UID FETCH %d " % other, c)] == [], fetched
    assert [c for c in fetched if re.search(rb"UID FETCH %d " % scan, c)]
    assert "\\Seen" not in flags(dovecot, other)


def test_worker_killed_mid_fetch_leaves_the_message_unseen(via_front,
                                                           dovecot, front):
    data = os.urandom(3 * 1024 * 1024)
    a = via_front()
    dovecot.deliver(ALICE, make_mail([("big.bin", data,
                                       "application/octet-stream")]))
    uid = uids(dovecot)[0]
    # Every body fetch is held after its first 256 KB, until released.
    front.stall_pattern = rb"(?i)UID FETCH \d+ BODY(\.PEEK)?\[\]"
    front.stall_after = 256 * 1024
    a.go()
    wait_for(front.stalled.is_set, timeout=30, what="a fetch under way")
    pids = a.srv.worker_pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not set(pids) & set(a.srv.worker_pids()), timeout=10,
             what="the worker gone")

    # Nothing taken, nothing changed: the message is as it was found.
    assert "\\Seen" not in flags(dovecot, uid)
    assert visible(a.inbox) == []
    assert front.body_fetches()
    assert all(b"BODY.PEEK[]" in c.upper() for c in front.body_fetches())

    # The next worker takes it, once, and only then marks it read.
    front.release()
    wait_files(a.inbox, 1, timeout=60)
    wait_for(lambda: "\\Seen" in flags(dovecot, uid), timeout=20,
             what="\\Seen after the deposit")
    assert visible(a.inbox) == ["big.bin"]
    with open(os.path.join(a.inbox, "big.bin"), "rb") as f:
        assert sha(f.read()) == sha(data)


def test_short_lived_tokens_take_every_message_once(via_front, dovecot,
                                                    front, tokensvc):
    # Tokens live 2 s; the front ends each session 2 s after its login,
    # as Exchange does at token expiry; every answer takes 0.4 s, so one
    # run outlives its token.
    tokensvc.set_config(expires_in=2)
    front.session_seconds = 2
    front.latency = 0.4
    a = via_front()
    n = 20
    payloads = {}
    for i in range(n):
        name = "t%02d.bin" % i
        payloads[name] = os.urandom(20000 + i)
        dovecot.deliver(ALICE, make_mail([(name, payloads[name],
                                           "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, n, timeout=150)
    wait_for(lambda: all("\\Seen" in flags(dovecot, u) for u in uids(dovecot)),
             timeout=30, what="every message \\Seen")

    files = sorted(visible(a.inbox))
    assert files == sorted(payloads), files
    for name, data in payloads.items():
        with open(os.path.join(a.inbox, name), "rb") as f:
            assert sha(f.read()) == sha(data), name
    # Several token lifetimes went by, each with its own login.
    assert front.logins >= 6, front.logins
    # An expiring token is routine: no error line for it.
    log = a.srv.log_text()
    errors = [line for line in log.splitlines()
              if re.search(r"ingest t1: (cannot|UID \d+: after-action)|"
                           r"AccessTokenExpired|login refused", line)]
    assert errors == [], errors


def test_session_ended_by_the_server_is_resumed_without_errors(
        via_front, dovecot, front, tokensvc):
    # The server ends sessions before the token's own expiry says so (1.2 s
    # after each login, tokens live 30 s): every BYE AccessTokenExpired
    # gets a fresh token and one more try, and no error line.
    tokensvc.set_config(expires_in=30)
    front.session_seconds = 1.2
    front.latency = 0.4
    a = via_front()
    n = 6
    payloads = {}
    for i in range(n):
        name = "b%02d.bin" % i
        payloads[name] = os.urandom(30000 + i)
        dovecot.deliver(ALICE, make_mail([(name, payloads[name],
                                           "application/octet-stream")]))
    a.go()
    wait_files(a.inbox, n, timeout=120)
    wait_for(lambda: all("\\Seen" in flags(dovecot, u) for u in uids(dovecot)),
             timeout=30, what="every message \\Seen")
    files = sorted(visible(a.inbox))
    assert files == sorted(payloads), files
    for name, data in payloads.items():
        with open(os.path.join(a.inbox, name), "rb") as f:
            assert sha(f.read()) == sha(data), name
    assert front.byes > 0
    log = a.srv.log_text()
    errors = [line for line in log.splitlines()
              if re.search(r"ingest t1: (cannot|UID \d+: after-action)|"
                           r"AccessTokenExpired|login refused", line)]
    assert errors == [], errors


def test_tasks_on_one_folder_share_one_session(via_front, dovecot, front):
    a = via_front('"subject=Scan *"')
    invoices = a.task("t2", '"subject=Invoice *"')
    orders = a.task("t3", '"subject=Order *"')
    for subject, name in (("Scan 1", "scan.txt"), ("Invoice 2", "inv.txt"),
                          ("Order 3", "order.txt")):
        dovecot.deliver(ALICE, make_mail([(name, name.encode(),
                                           "text/plain")], subject=subject))
    a.go()
    wait_files(a.inbox, 1)
    wait_files(invoices, 1)
    wait_files(orders, 1)
    assert visible(a.inbox) == ["scan.txt"]
    assert visible(invoices) == ["inv.txt"]
    assert visible(orders) == ["order.txt"]
    # Three tasks, one session: one login for commands, one for bodies.
    assert front.logins == 2, front.commands
