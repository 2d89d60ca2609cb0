"""Process boundaries: the module's processes are fresh images of mailoauthd
(fork+exec), holding none of the master's memory or descriptors, and the
master runs no timer of the module's.

Real proftpd, real Dovecot (ingestion, so that every role runs), the token
service stand-in.
"""

import os
import pwd
import re
import signal
import shutil
import stat
import time
import uuid

import pytest

from proftpd import alive, pids_of, proc_status
from test_accounts import wait_for
from test_accounts import NOBODY
from test_ingest import (  # noqa: F401  (ingester is a fixture)
    flags, ingester, make_mail, uids, visible)
from test_ingest_hostile import helper_of, save, wait_handled


def read_memory(pid):
    """Every readable mapping of pid, as one bytes object per region."""
    regions = []
    with open("/proc/%d/maps" % pid) as maps, \
            open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or (len(fields) > 5 and
                                        fields[5] == "[vvar]"):
                continue
            try:
                mem.seek(start)
                regions.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue
    return regions


def fd_targets(pid):
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            pass
    return out


def roles(a):
    """{role: pid} of one running instance, every role present."""
    worker = wait_for(lambda: a.srv.worker_pids(), timeout=15,
                      what="worker")[0]
    sup = a.srv.supervisor_pids()
    found = {"supervisor": sup[0] if sup else None, "worker": worker,
             "deposit": helper_of(worker),
             "parser": helper_of(worker, "mailoauth parser"),
             "tnef": helper_of(worker, "mailoauth TNEF helper")}
    assert None not in found.values(), found
    return found


def test_no_role_holds_the_masters_memory(ingester, dovecot):
    """A string that exists only in proftpd.conf outside the module's
    directives (as another module's password would) is in the master's
    memory, and in none of the module's processes: they are exec'd, not
    forked."""
    marker = "MARKER-%s" % uuid.uuid4().hex
    a = ingester("tnef=on", start=False)
    a.srv.extra_conf += '\nServerIdent on "%s"\n' % marker
    uid = save(dovecot, make_mail([("m.txt", b"m", "text/plain")]))
    a.go()
    wait_handled(a, uid)
    pids = roles(a)
    needle = marker.encode()

    # The check can see the marker where it is.
    assert any(needle in r for r in read_memory(a.srv.pid))
    for role, pid in pids.items():
        assert not any(needle in r for r in read_memory(pid)), \
            "%s (pid %d) holds the master's configuration" % (role, pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            assert f.read().split(b"\0")[1] in (
                b"supervisor", b"worker", b"deposit", b"parser", b"tnef")


def test_each_role_has_only_its_descriptors(ingester, dovecot):
    a = ingester("tnef=on", start=False)
    uid = save(dovecot, make_mail([("m.txt", b"m", "text/plain")]))
    a.go()
    wait_handled(a, uid)
    pids = roles(a)
    srv = a.srv

    def is_null(t):
        return t == "/dev/null"

    sup = fd_targets(pids["supervisor"])
    # stdio on /dev/null, the master's socket, MailOAuthLog, TraceLog;
    # while a worker runs, its socket.
    assert sorted(sup) == [0, 1, 2, 3, 4, 5, 6], sup
    assert all(is_null(sup[fd]) for fd in (0, 1, 2)), sup
    assert sup[3].startswith("socket:") and sup[6].startswith("socket:")
    assert sup[4] == srv.log and sup[5] == srv.tracelog, sup

    work = fd_targets(pids["worker"])
    assert all(is_null(work[fd]) for fd in (0, 1, 2)), work
    assert work[3].startswith("socket:")
    assert work[4] == srv.log and work[5] == srv.tracelog, work
    # Nothing else of the master's: no listener, scoreboard, SystemLog,
    # TransferLog, configuration.
    master_files = set(fd_targets(srv.pid).values())
    for fd, target in work.items():
        if fd <= 5:
            continue
        assert target.startswith(("socket:", "anon_inode:", "pipe:")) or \
            target.startswith(srv.state_dir), (fd, target)
        assert target not in master_files or target.startswith("anon"), \
            (fd, target)

    dep = fd_targets(pids["deposit"])
    assert sorted(dep) == [0, 1, 2, 3], dep
    assert dep[3].startswith("socket:")
    tnef = fd_targets(pids["tnef"])
    assert sorted(tnef) == [0, 1, 2, 3], tnef
    parser = fd_targets(pids["parser"])
    assert sorted(parser) == [0, 1, 2, 3], parser
    assert all(is_null(parser[fd]) for fd in (0, 1, 2)), parser
    assert parser[3].startswith("socket:"), parser
    for p in (pids["deposit"], pids["tnef"], pids["parser"]):
        with open("/proc/%d/environ" % p, "rb") as f:
            assert f.read().strip(b"\0") == b""


def test_parser_holds_no_token(ingester, dovecot):
    """The process that parses the mail runs as User, with nothing of the
    worker's: no token in its memory, no descriptor but its socket while
    idle, no environment, no way to gain privileges."""
    a = ingester("metadata=on", start=False)
    uid = save(dovecot, make_mail([("p.pdf", b"%PDF-1.4 x", "application/pdf")]))
    a.go()
    wait_handled(a, uid)
    pids = roles(a)
    parser = pids["parser"]
    toks = a.tokens()
    secrets = [toks["access_token"].encode(), toks["refresh_token"].encode()]

    # The check can see a token where it is.
    assert any(secrets[0] in r for r in read_memory(pids["worker"]))
    for needle in secrets:
        assert not any(needle in r for r in read_memory(parser)), \
            "the parser holds a token"

    st = proc_status(parser)
    assert st["Uid"].split() == [str(NOBODY)] * 4, st["Uid"]
    assert st["Gid"].split()[0] == str(pwd.getpwnam("nobody").pw_gid)
    assert st["Groups"].split() in ([], [st["Gid"].split()[0]]), st["Groups"]
    assert st["NoNewPrivs"] == "1"
    if os.uname().machine in ("x86_64", "aarch64"):
        assert st["Seccomp"] == "2", st["Seccomp"]
    assert st["CapEff"] == "0000000000000000"
    assert sorted(fd_targets(parser)) == [0, 1, 2, 3]
    with open("/proc/%d/environ" % parser, "rb") as f:
        assert f.read().strip(b"\0") == b""
    # The worker reads the mail only through it.
    assert "started parser pid %d" % parser in a.srv.read(a.srv.tracelog)


def test_parser_killed_mid_run_loses_nothing(ingester, dovecot):
    """A parser that dies, idle or in the middle of a message: the message
    stays for the next run and is taken then, each file exactly once, by a
    new parser of the same worker."""
    a = ingester()
    worker = a.srv.worker_pids()[0]
    first = wait_for(lambda: helper_of(worker, "mailoauth parser"),
                     timeout=15, what="parser")
    deposit = helper_of(worker)
    # A second run has begun: the first one's cleanup, its only use of the
    # deposit helper on an empty folder, is over.
    wait_for(lambda: a.srv.read(a.srv.tracelog).count("task t1: run") >= 2,
             timeout=15, what="two runs")

    # Idle: the next message finds it gone.
    os.kill(first, signal.SIGKILL)
    # The deposit of a.bin will wait, with the parser in the middle of the
    # message (b.bin next).
    os.kill(deposit, signal.SIGSTOP)
    try:
        small, big = os.urandom(1000), os.urandom(4 * 1024 * 1024)
        uid = save(dovecot, make_mail([("a.bin", small, "application/pdf"),
                                       ("b.bin", big, "application/pdf")]))
        a.srv.wait_log("UID %d: the parser died" % uid, timeout=30)
        wait_for(lambda: re.search(r"sent request \d+ \(op 1\)",
                                   a.srv.read(a.srv.tracelog)),
                 timeout=30, what="the deposit of a.bin")
        second = helper_of(worker, "mailoauth parser")
        assert second not in (None, first)
        os.kill(second, signal.SIGKILL)
    finally:
        os.kill(deposit, signal.SIGCONT)

    wait_handled(a, uid, timeout=90)
    assert a.srv.log_text().count("UID %d: the parser died" % uid) == 2
    assert sorted(os.listdir(a.inbox)) == ["a.bin", "b.bin"]
    for name, data in (("a.bin", small), ("b.bin", big)):
        with open(os.path.join(a.inbox, name), "rb") as f:
            assert f.read() == data, name
    assert "\\Seen" in flags(dovecot, uid)
    assert a.srv.worker_pids() == [worker]
    assert helper_of(worker, "mailoauth parser") not in (None, first, second)


def test_master_runs_no_timer(make_proftpd):
    """The master is woken by nothing of the module's: an idle master with
    the module active switches context as often as one without it (the
    1-second supervision timer it once had delayed every new connection by
    up to 0.2 s)."""
    counts = {}
    for loaded in (False, True):
        srv = make_proftpd(load_module=loaded).start(wait_worker=loaded)
        time.sleep(1)

        def switches():
            st = proc_status(srv.pid)
            return int(st["voluntary_ctxt_switches"]) + \
                int(st["nonvoluntary_ctxt_switches"])
        before = switches()
        time.sleep(4)
        counts[loaded] = switches() - before
        srv.stop()
    assert counts[True] <= counts[False] + 1, counts


def test_worker_crash_restarted_by_supervisor_not_master(make_proftpd):
    srv = make_proftpd().start()
    sup = srv.supervisor_pids()
    assert len(sup) == 1
    first = srv.worker_pids()[0]
    assert proc_status(first)["PPid"] == str(sup[0])
    os.kill(first, 9)
    srv.wait_log("restarting it in 1 seconds", timeout=5)
    second = wait_for(lambda: [p for p in srv.worker_pids() if p != first],
                      timeout=5, what="replacement worker")[0]
    assert proc_status(second)["PPid"] == str(sup[0])
    assert srv.supervisor_pids() == sup


@pytest.mark.parametrize("mode,why", [
    (0o775, "writable by no one else"),
    (0o757, "writable by no one else"),
    (None, "No such file or directory"),
])
def test_program_must_be_root_only(make_proftpd, mode, why):
    srv = make_proftpd()
    srv._prepare()
    copy = os.path.join(srv.dir, "mailoauthd")
    if mode is not None:
        shutil.copy(srv.program, copy)
        os.chmod(copy, mode)
    srv.program = copy
    srv._prepare()
    res = srv.syntax_check()
    assert res.returncode != 0
    line = [i for i, text in enumerate(open(srv.conf), 1)
            if text.startswith("MailOAuthProgram")][0]
    assert "MailOAuthProgram" in res.stderr and why in res.stderr, res.stderr
    assert "line %d of '%s'" % (line, srv.conf) in res.stderr, res.stderr
