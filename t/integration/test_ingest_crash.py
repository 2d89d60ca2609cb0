"""Exactly once across kill -9: the worker (and its deposit helper) die at
each step of taking a message, or at random moments of a long run, and the
restarted worker carries on.  Every attachment ends up in the owner's
directory exactly once with its bytes, and every message is flagged.

The owner's directory is mode 0700, as an FTP user's home usually is: the
worker's User cannot even look into it, so whatever must be known about
its contents after a crash has to come from the root deposit helper.

The crash points exist only in build/mailoauthd-crashtest (compiled with
-DMAILOAUTH_CRASHPOINTS, never installed): the worker reads "NAME N" from
<statedir>/crashpoint as it starts, removes it, and dies with SIGKILL the
Nth time it passes NAME; the helper's points kill the worker and the
helper.  That build also restarts a dead worker after 1 second."""

import json
import os
import random
import re
import signal
import time

import pytest

from test_accounts import ALICE, AccountServer, wait_for
from test_ingest import UID, clear_mailbox, make_mail, sha, uids

CRASHTEST = os.environ.get("MAILOAUTH_CRASHTEST_PROGRAM") or os.path.join(
    os.path.dirname(os.path.abspath(
        os.environ.get("MAILOAUTH_PROGRAM", "build/mailoauthd"))),
    "mailoauthd-crashtest")

needs_crashtest = pytest.mark.skipif(
    not os.path.exists(CRASHTEST),
    reason="build/mailoauthd-crashtest not built (make check-integration "
    "builds it)")

NOBODY = 65534

# Where a kill -9 may land, in the order a message goes through them:
# helper: temporary file written, flushed, renamed into place, directory
# flushed; worker: request line in the ledger, done line, flag, state file.
POINTS = ["intent-written", "temp-written", "temp-synced", "renamed",
          "dir-synced", "ledger-written", "after-action", "state-written"]

# The points after which the file is in place but not recorded: the
# restarted worker must find it (in a directory it cannot search).
FOUND_AFTER = {"renamed", "dir-synced"}


def unseen(dovecot):
    r = dovecot.doveadm("search", "-u", ALICE, "mailbox", "INBOX", "unseen",
                        check=False)
    return [line for line in r.stdout.decode().splitlines() if line.strip()]


def owner_files(d):
    """Every name in d (as root: the test can look where the worker
    cannot); hidden temporary files apart."""
    return sorted(f for f in os.listdir(d) if not f.startswith("."))


class Crashable:
    """A proftpd running the crash-test build with one ingest task into a
    0700 directory of alice's."""

    def __init__(self, make_proftpd, tokensvc, tokensvc_app, pki, dovecot,
                 settings=""):
        clear_mailbox(dovecot)
        self.dovecot = dovecot
        self.a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                               extra="imap=imaps://%s:%d"
                               % (dovecot.host, dovecot.imaps_port))
        self.srv = self.a.srv
        self.srv.program = CRASHTEST
        self.inbox = os.path.join(self.srv.home("alice"), "inbox")
        self.srv.extra_conf += (
            "\nMailOAuthIngest t1 account=notify every=1 dir=%s "
            "owner=%d:%d %s\n" % (self.inbox, UID, UID, settings))
        self.metadata = "metadata=on" in settings
        self.a.seed()
        self.payloads = {}
        self.messages = 0

    def deliver(self, count, parts=2, size=(20000, 200000), prefix="m"):
        for i in range(self.messages, self.messages + count):
            atts = []
            for k in range(parts):
                name = "%s%03d-%d.bin" % (prefix, i, k)
                data = os.urandom(random.randint(*size))
                self.payloads[name] = data
                atts.append((name, data, "application/octet-stream"))
            self.dovecot.deliver(ALICE, make_mail(atts))
            self.messages += 1

    def start(self, crashpoint=None):
        self.srv._prepare()
        os.makedirs(self.inbox, exist_ok=True)
        os.chown(self.inbox, UID, UID)
        os.chmod(self.inbox, 0o700)
        os.makedirs(self.srv.state_dir, exist_ok=True)
        os.chown(self.srv.state_dir, NOBODY, NOBODY)
        os.chmod(self.srv.state_dir, 0o700)
        if crashpoint:
            path = os.path.join(self.srv.state_dir, "crashpoint")
            with open(path, "w") as f:
                f.write("%s %d\n" % crashpoint)
        self.srv.start()

    def crashes(self):
        return len(re.findall(r"worker \(pid \d+\) exited unexpectedly "
                              r"after \d+ seconds \(signal 9\)",
                              self.srv.log_text()))

    def done(self):
        if not os.path.isdir(self.inbox):
            return False
        want = len(self.payloads) + (self.messages if self.metadata else 0)
        return (len(owner_files(self.inbox)) >= want and
                not unseen(self.dovecot))

    def check(self):
        """Every attachment exactly once, with its bytes; every message
        flagged; the owner's directory still closed to others."""
        files = owner_files(self.inbox)
        if self.metadata:
            meta = [f for f in files if f.endswith(".json")]
            assert len(meta) == self.messages, meta
            for name in meta:
                with open(os.path.join(self.inbox, name)) as f:
                    listed = [x["name"] for x in json.load(f)["files"]]
                assert all(x in self.payloads for x in listed), listed
            files = [f for f in files if not f.endswith(".json")]
        assert files == sorted(self.payloads), (
            "missing: %s; extra: %s" % (
                sorted(set(self.payloads) - set(files)),
                sorted(set(files) - set(self.payloads))))
        for name, data in self.payloads.items():
            path = os.path.join(self.inbox, name)
            with open(path, "rb") as f:
                assert sha(f.read()) == sha(data), name
            assert os.stat(path).st_uid == UID
        assert not [f for f in os.listdir(self.inbox) if " (" in f]
        assert unseen(self.dovecot) == []
        assert len(uids(self.dovecot)) == self.messages
        assert os.stat(self.inbox).st_mode & 0o777 == 0o700


@pytest.fixture
def crashable(make_proftpd, tokensvc, tokensvc_app, pki, dovecot):
    return Crashable(make_proftpd, tokensvc, tokensvc_app, pki, dovecot)


@needs_crashtest
@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step_neither_loses_nor_duplicates(crashable, point,
                                                        nth):
    c = crashable
    # 3 messages of 2 attachments: 6 deposits, 3 flags, 4 state writes
    # (the first run's included), so the 3rd hit of every point exists.
    c.deliver(3)
    c.start(crashpoint=(point, nth))
    wait_for(lambda: c.crashes() >= 1, timeout=30,
             what="the worker killed at %s #%d" % (point, nth))
    wait_for(c.done, timeout=60, what="every file and flag after the crash")
    # Nothing more may come: a run after the last message changes nothing.
    c.srv.wait_log("worker started", count=2, timeout=10)
    time.sleep(2.5)
    c.check()
    assert c.crashes() == 1, c.srv.log_text()
    if point in FOUND_AFTER:
        # Found in place by the helper, in a directory the worker cannot
        # search, rather than deposited twice.
        assert "was deposited before a restart" in c.srv.log_text()


@needs_crashtest
@pytest.mark.parametrize("point", ["intent-written", "renamed",
                                   "dir-synced"])
def test_kill_while_writing_metadata(make_proftpd, tokensvc, tokensvc_app,
                                     pki, dovecot, point):
    """The metadata file is made again after a crash, with another time of
    taking: the one written before the crash is still found, not joined by
    a second."""
    c = Crashable(make_proftpd, tokensvc, tokensvc_app, pki, dovecot,
                  settings="metadata=on")
    c.deliver(2)
    # Each message: two attachments, then its metadata (the 3rd deposit).
    c.start(crashpoint=(point, 3))
    wait_for(lambda: c.crashes() >= 1, timeout=30,
             what="the worker killed at %s #3" % point)
    wait_for(c.done, timeout=60, what="every file and flag after the crash")
    c.srv.wait_log("worker started", count=2, timeout=10)
    time.sleep(2.5)
    c.check()
    assert c.crashes() == 1, c.srv.log_text()
    if point in FOUND_AFTER:
        assert "was deposited before a restart" in c.srv.log_text()


def count_files(d):
    try:
        return sum(1 for f in os.listdir(d) if not f.startswith("."))
    except OSError:
        return 0


@needs_crashtest
def test_random_kills_during_a_long_run(crashable):
    """kill -9 of the worker at least ten times while about sixty messages
    are taken: half at a random moment once it is depositing, half the
    instant a new file shows in the directory (the file is in place, its
    ledger line likely not yet written: the moment a blind check
    duplicates)."""
    c = crashable
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    random.seed(seed)
    size = (100000, 1500000)
    c.deliver(60, parts=1, size=size)
    c.start()
    kills = 0
    batches = 0
    deadline = time.monotonic() + 300
    while kills < 10:
        assert time.monotonic() < deadline, "only %d kills (seed %d)" % (
            kills, seed)
        if c.done():
            # The run ended before ten kills: more mail, more kills.
            batches += 1
            c.deliver(10, parts=1, size=size, prefix="b%d-" % batches)
        pids = wait_for(c.srv.worker_pids, timeout=20, interval=0.01,
                        what="a worker to kill")
        before = count_files(c.inbox)
        limit = time.monotonic() + 10
        while count_files(c.inbox) == before and time.monotonic() < limit:
            time.sleep(0.0005)
        if kills % 2 == 0:
            time.sleep(rnd.uniform(0, 0.5))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        wait_for(lambda: c.crashes() >= kills, timeout=20,
                 what="kill %d noticed" % kills)
    wait_for(c.done, timeout=180, what="every file and flag after %d kills"
             " (seed %d)" % (kills, seed))
    time.sleep(2.5)
    c.check()
    assert kills >= 10
    assert c.crashes() == kills
    print("random kills: seed %d, %d kills, %d messages, %d files, %d found "
          "in place after a kill" % (
              seed, kills, c.messages, len(c.payloads),
              c.srv.log_text().count("was deposited before a restart")))
