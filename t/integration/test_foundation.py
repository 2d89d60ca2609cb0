"""The foundation: the module loads, its worker lives and dies with the
master, configuration mistakes stop proftpd -t, and every completed upload
(FTP, FTPS, SFTP, SCP) reaches the worker exactly once."""

import ftplib
import io
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from netutil import free_port
from proftpd import alive, pids_of, proc_status


def curl_upload(srv, url_scheme, name, data, pki=None, user="alice",
                append=False):
    path = os.path.join(srv.dir, "upload-src-" + str(abs(hash(name))))
    with open(path, "wb") as f:
        f.write(data)
    if url_scheme == "scp":
        # OpenSSH's scp in the classic SCP protocol (-O): libssh2's SCP
        # client closes the channel before the server confirms the file.
        cmd = ["scp", "-O", "-q", "-P", str(srv.sftp_port)] + \
            srv.ssh_options() + [path, "%s@%s:%s" % (user, srv.host, name)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, "scp failed: %s" % res.stderr
        return
    port = srv.sftp_port if url_scheme == "sftp" else srv.port
    # The user's home is the login directory; ~ is relative to it for SSH.
    prefix = "/~/" if url_scheme == "sftp" else "/"
    url = "%s://%s:%d%s%s" % (url_scheme if url_scheme != "ftps" else "ftp",
                               srv.host, port, prefix, name)
    cmd = ["curl", "-sS", "--max-time", "30", "-u",
           "%s:%s" % (user, srv.password), "-T", path, url]
    if url_scheme == "ftps":
        cmd[1:1] = ["--ssl-reqd", "--cacert", pki.ca_cert]
    if url_scheme == "sftp":
        cmd[1:1] = ["--insecure"]
    if append:
        cmd[1:1] = ["--append"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, "curl %s failed: %s" % (url_scheme, res.stderr)


def upload_events(srv):
    return [line for line in srv.log_text().splitlines()
            if "upload event " in line]


def field(line, name):
    m = re.search(r' %s="([^"]*)"' % name, line)
    return m.group(1) if m else None


def wait_for(predicate, timeout=10, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


# -- the worker process ---------------------------------------------------

def test_one_worker_runs_as_the_daemon_user(make_proftpd):
    srv = make_proftpd().start()
    workers = srv.worker_pids()
    assert len(workers) == 1
    status = proc_status(workers[0])
    # Real, effective, saved and filesystem IDs all dropped to nobody.
    assert status["Uid"].split() == ["65534"] * 4
    assert status["Gid"].split() == ["65534"] * 4
    assert status["Groups"].split() == ["65534"]
    assert "worker started (pid %d, uid 65534, gid 65534)" % workers[0] \
        in srv.log_text()


def test_worker_does_not_hold_the_ftp_port(make_proftpd):
    srv = make_proftpd().start()
    worker = srv.worker_pids()[0]
    fds = os.listdir("/proc/%d/fd" % worker)
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (worker, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    listening = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":  # LISTEN
                listening.add(cols[9])
    assert not inodes & listening


def test_no_worker_when_engine_off(make_proftpd):
    srv = make_proftpd(engine=False).start(wait_worker=False)
    time.sleep(1)
    assert srv.worker_pids() == []


def test_restarts_leave_exactly_one_worker(make_proftpd):
    srv = make_proftpd().start()
    seen = set(srv.worker_pids())
    for i in range(5):
        srv.restart()
        srv.wait_log("worker started", count=i + 2, timeout=15)
        workers = wait_for(lambda: srv.worker_pids() if len(srv.worker_pids()) == 1 else None,
                           what="exactly one worker")
        assert workers[0] not in seen, "restart reused the old worker"
        seen.add(workers[0])
    time.sleep(1.5)
    assert len(srv.worker_pids()) == 1
    assert alive(srv.pid)
    # Each old worker said why it went, and it was the restart.
    text = srv.log_text()
    exits = re.findall(r"worker \(pid (\d+)\) exiting: (.*)", text)
    assert len(exits) == 5, text
    assert all(why == "the server is restarting" for _, why in exits), exits
    assert {int(pid) for pid, _ in exits} == seen - set(srv.worker_pids())


def test_sigterm_stops_worker_within_5s(make_proftpd):
    srv = make_proftpd().start()
    worker = srv.worker_pids()[0]
    start = time.monotonic()
    os.kill(srv.pid, signal.SIGTERM)
    wait_for(lambda: not alive(worker), timeout=5, what="worker exit")
    assert time.monotonic() - start < 5
    srv.proc.wait(5)
    assert "worker (pid %d) exiting: the server is stopping" % worker \
        in srv.log_text()


def test_worker_exits_when_master_dies(make_proftpd):
    srv = make_proftpd().start()
    worker = srv.worker_pids()[0]
    os.kill(srv.pid, signal.SIGKILL)
    wait_for(lambda: not alive(worker), timeout=5, what="orphaned worker exit")
    srv.wait_log("worker (pid %d) exiting: the master process is gone"
                 % worker)


def test_crashed_worker_is_restarted_with_backoff(make_proftpd):
    srv = make_proftpd().start()
    first = srv.worker_pids()[0]
    os.kill(first, signal.SIGKILL)
    srv.wait_log("restarting it in 1 seconds", timeout=5)
    second = wait_for(lambda: [p for p in srv.worker_pids() if p != first],
                      timeout=5, what="replacement worker")[0]
    os.kill(second, signal.SIGKILL)
    # A worker that keeps dying waits longer each time.
    srv.wait_log("restarting it in 2 seconds", timeout=5)
    wait_for(lambda: [p for p in srv.worker_pids() if p not in (first, second)],
             timeout=6, what="third worker")
    # The FTP service is unaffected by the crash loop.
    curl_upload(srv, "ftp", "during-crash.txt", b"x")
    srv.wait_log("upload event", timeout=10)


def test_syntax_check_leaves_no_process(make_proftpd):
    srv = make_proftpd()
    res = srv.syntax_check()
    assert res.returncode == 0, res.stderr
    time.sleep(0.5)
    assert pids_of(srv.conf) == []
    assert pids_of("mailoauth worker") == [] or all(
        proc_status(p).get("PPid") != "1" for p in pids_of("mailoauth worker"))


# -- configuration mistakes ----------------------------------------------

def conf_line(srv, directive):
    """Line number of the config line that is directive (or starts with it
    followed by arguments)."""
    with open(srv.conf) as f:
        lines = [line.strip() for line in f]
    for n, text in enumerate(lines, 1):
        if text == directive:
            return n
    for n, text in enumerate(lines, 1):
        if text.startswith(directive + " "):
            return n
    raise AssertionError("%s not in config" % directive)


@pytest.mark.parametrize("extra, directive, hint", [
    ("MailOAuthEngine maybe", "MailOAuthEngine maybe",
     "write MailOAuthEngine on or MailOAuthEngine off"),
    ("MailOAuthEngine", "MailOAuthEngine", "MailOAuthEngine: missing parameters"),
    ("MailOAuthLog mailoauth.log", "MailOAuthLog mailoauth.log",
     "not an absolute path: write e.g. MailOAuthLog /var/log/proftpd/mailoauth.log"),
    ("MailOAuthStateDir state", "MailOAuthStateDir state",
     "not an absolute path: write e.g. MailOAuthStateDir /var/lib/proftpd/mailoauth"),
])
def test_bad_directive_fails_syntax_check(make_proftpd, extra, directive, hint):
    srv = make_proftpd(extra_conf=extra)
    res = srv.syntax_check()
    assert res.returncode != 0
    line = conf_line(srv, directive.strip())
    assert "on line %d of '%s'" % (line, srv.conf) in res.stderr, res.stderr
    assert hint in res.stderr


def test_directive_in_wrong_context_fails(make_proftpd):
    srv = make_proftpd(global_conf="<VirtualHost 127.0.0.1>\n"
                       "  Port 0\n  MailOAuthLog /tmp/x.log\n</VirtualHost>")
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "MailOAuthLog" in res.stderr and "line" in res.stderr


def test_state_dir_with_missing_parent_fails(make_proftpd):
    srv = make_proftpd()
    srv._prepare()
    srv.state_dir = os.path.join(srv.dir, "no", "such", "state")
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "MailOAuthStateDir: cannot create '%s'" % srv.state_dir in res.stderr
    assert "line %d of '%s'" % (conf_line(srv, "MailOAuthStateDir"), srv.conf) \
        in res.stderr


def test_state_dir_open_to_others_is_refused(make_proftpd):
    srv = make_proftpd()
    os.makedirs(srv.state_dir)
    os.chmod(srv.state_dir, 0o777)
    res = srv.syntax_check()
    assert res.returncode != 0
    assert "must belong to the server's User (uid 65534) and be mode 0700" \
        in res.stderr
    assert "chmod 0700" in res.stderr


def test_unwritable_log_path_is_one_clear_error(make_proftpd):
    srv = make_proftpd()
    srv.log = os.path.join(srv.dir, "missing-dir", "mailoauth.log")
    srv._prepare()
    proc = subprocess.run([srv.proftpd, "-n", "-q", "-c", srv.conf],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "MailOAuthLog: cannot open '%s'" % srv.log in proc.stderr
    assert "Segmentation" not in proc.stderr


def test_state_dir_created_private(make_proftpd):
    srv = make_proftpd().start()
    for sub in ("", "spool", "queue"):
        st = os.lstat(os.path.join(srv.state_dir, sub))
        assert stat.S_ISDIR(st.st_mode)
        assert st.st_uid == 65534
        assert stat.S_IMODE(st.st_mode) == 0o700


# -- upload events ----------------------------------------------------------

@pytest.mark.parametrize("proto", ["ftp", "ftps", "sftp", "scp"])
def test_upload_event_per_protocol(make_proftpd, pki, proto):
    srv = make_proftpd(tls=True, sftp=True).start()
    data = os.urandom(12345)
    before = time.time()
    curl_upload(srv, proto, "report-%s.bin" % proto, data, pki=pki)
    srv.wait_log("upload event", timeout=10)
    events = upload_events(srv)
    assert len(events) == 1, events
    ev = events[0]
    assert field(ev, "path") == os.path.join(srv.home("alice"),
                                             "report-%s.bin" % proto)
    assert field(ev, "size") == "12345"
    assert field(ev, "bytes") == "12345"
    assert field(ev, "user") == "alice"
    assert field(ev, "protocol") == proto
    assert field(ev, "remote") == "127.0.0.1"
    assert before - 1 <= float(field(ev, "time")) <= time.time() + 1
    # One event per upload, not per session or per command.
    time.sleep(1)
    assert len(upload_events(srv)) == 1


def test_append_reports_whole_file_size(make_proftpd):
    srv = make_proftpd().start()
    curl_upload(srv, "ftp", "log.txt", b"a" * 100)
    curl_upload(srv, "ftp", "log.txt", b"b" * 50, append=True)
    srv.wait_log("upload event", count=2)
    ev = upload_events(srv)[1]
    assert field(ev, "command") == "APPE"
    assert field(ev, "size") == "150"
    assert field(ev, "bytes") == "50"


def test_failed_upload_makes_no_event(make_proftpd):
    srv = make_proftpd(extra_conf="<Directory ~/locked>\n  <Limit STOR>\n"
                       "    DenyAll\n  </Limit>\n</Directory>")
    srv._prepare()
    os.makedirs(os.path.join(srv.home("alice"), "locked"))
    srv.start()
    path = os.path.join(srv.dir, "src.txt")
    with open(path, "w") as f:
        f.write("x")
    res = subprocess.run(["curl", "-sS", "-u", "alice:" + srv.password, "-T",
                          path, "ftp://127.0.0.1:%d/locked/x.txt" % srv.port],
                         capture_output=True, text=True)
    assert res.returncode != 0
    curl_upload(srv, "ftp", "ok.txt", b"fine")
    srv.wait_log("upload event")
    time.sleep(0.5)
    events = upload_events(srv)
    assert len(events) == 1 and field(events[0], "path").endswith("/ok.txt")


@pytest.mark.parametrize("proto", ["ftp", "sftp"])
def test_chroot_and_root_revoke(make_proftpd, pki, proto):
    srv = make_proftpd(sftp=True, default_root=True, root_revoke=True).start()
    curl_upload(srv, proto, "jailed.txt", b"inside the jail", pki=pki)
    srv.wait_log("upload event")
    ev = upload_events(srv)[0]
    # The worker gets the real path, not the one inside the chroot.
    assert field(ev, "path") == os.path.join(srv.home("alice"), "jailed.txt")
    assert field(ev, "size") == "15"


def test_hostile_file_name_cannot_forge_log_lines(make_proftpd):
    srv = make_proftpd().start()
    name = 'evil" user="root\x7f.txt'
    curl_upload(srv, "ftp", name.replace('"', "%22").replace(" ", "%20")
                .replace("\x7f", "%7F"), b"x")
    srv.wait_log("upload event")
    ev = upload_events(srv)[0]
    assert field(ev, "user") == "alice"
    assert 'evil\\x22 user=\\x22root\\x7f.txt' in ev


def test_local_user_cannot_inject_events(make_proftpd):
    srv = make_proftpd().start()
    spool = os.path.join(srv.state_dir, "spool")
    attacker = r"""
import os, sys
os.setgid(2002); os.setgroups([]); os.setuid(2002)
try:
    fd = os.open(sys.argv[1] + "/1.0-1.j", os.O_WRONLY | os.O_CREAT, 0o600)
except PermissionError:
    sys.exit(0)
sys.exit(1)
"""
    res = subprocess.run(["/usr/bin/python3", "-c", attacker, spool])
    assert res.returncode == 0, "an ordinary user could write to the spool"
    # Journals of live sessions are private to the daemon user too.
    sess = subprocess.Popen(["curl", "-sS", "-u", "alice:" + srv.password,
                             "--limit-rate", "1k", "-T", "/dev/zero",
                             "--max-filesize", "100000", "--max-time", "3",
                             "ftp://127.0.0.1:%d/slow.bin" % srv.port],
                            stderr=subprocess.DEVNULL)
    try:
        journals = wait_for(lambda: [j for j in os.listdir(spool)
                                     if j.endswith(".j")], what="a journal")
        st = os.stat(os.path.join(spool, journals[0]))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 65534
    finally:
        sess.kill()
        sess.wait()


def journals(srv):
    spool = os.path.join(srv.state_dir, "spool")
    return [j for j in os.listdir(spool) if j.endswith(".j")]


def test_journal_only_for_logged_in_sessions(make_proftpd):
    """Connections that never log in leave nothing in the spool; a login
    makes a journal, which the worker removes once the session ends."""
    srv = make_proftpd().start()
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=10)
    ftp.sendcmd("NOOP")
    assert journals(srv) == []
    with pytest.raises(ftplib.error_perm):
        ftp.login("alice", "wrong password")
    assert journals(srv) == []
    ftp.login("alice", srv.password)
    assert len(journals(srv)) == 1
    ftp.quit()
    wait_for(lambda: journals(srv) == [], timeout=15,
             what="the ended session's empty journal to be removed")
    assert "damaged" not in srv.log_text()


def test_no_journal_in_a_vhost_with_the_engine_off(make_proftpd):
    port = free_port()
    srv = make_proftpd()
    srv.global_conf = """<VirtualHost 127.0.0.1>
  Port %d
  ServerName "engine off"
  AuthUserFile %s/ftpd.passwd
  AuthOrder mod_auth_file.c
  RequireValidShell off
  AllowOverwrite on
  <IfModule mod_mailoauth.c>
    MailOAuthEngine off
  </IfModule>
</VirtualHost>""" % (port, srv.dir)
    srv.start()
    ftp = ftplib.FTP()
    ftp.connect(srv.host, port, timeout=10)
    ftp.login("alice", srv.password)
    assert journals(srv) == []
    ftp.storbinary("STOR off.txt", io.BytesIO(b"not notified"))
    ftp.quit()
    assert os.path.exists(os.path.join(srv.home("alice"), "off.txt"))
    # The engine-on server beside it still records its uploads.
    curl_upload(srv, "ftp", "on.txt", b"notified")
    srv.wait_log("upload event")
    time.sleep(1)
    assert [os.path.basename(field(e, "path")) for e in upload_events(srv)] \
        == ["on.txt"]


def tree_state(top):
    """Everything about a directory tree that a stray create, chown or
    chmod would change."""
    state = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [""] + dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            state.append((os.path.join(dirpath, name), st.st_uid, st.st_gid,
                          st.st_mode, st.st_size, st.st_mtime_ns))
    return sorted(state)


@pytest.mark.parametrize("canary_owner", [0, 65534])
def test_spool_swapped_for_a_symlink_creates_nothing(make_proftpd,
                                                      canary_owner):
    """A process running as User replaces the spool with a symbolic link:
    nothing is created, changed or chowned where it points, and uploads
    still work."""
    srv = make_proftpd().start()
    canary = os.path.join(srv.dir, "canary")
    os.mkdir(canary)
    os.chown(canary, canary_owner, canary_owner)
    os.chmod(canary, 0o700)
    with open(os.path.join(canary, "keep"), "w") as f:
        f.write("x")
    os.chown(os.path.join(canary, "keep"), canary_owner, canary_owner)
    before = tree_state(canary)

    spool = os.path.join(srv.state_dir, "spool")
    swap = r"""
import os, sys
os.setgid(65534); os.setgroups([]); os.setuid(65534)
os.rename(sys.argv[1], sys.argv[1] + ".away")
os.symlink(sys.argv[2], sys.argv[1])
"""
    subprocess.run(["/usr/bin/python3", "-c", swap, spool, canary],
                   check=True)

    curl_upload(srv, "ftp", "after-swap.txt", b"still stored")
    with open(os.path.join(srv.home("alice"), "after-swap.txt"), "rb") as f:
        assert f.read() == b"still stored"
    assert tree_state(canary) == before
    srv.wait_log("cannot open an upload journal")
    assert srv.log_text().count("cannot open an upload journal") == 1
    time.sleep(1)
    assert tree_state(canary) == before


def test_events_survive_worker_downtime(make_proftpd):
    """Uploads made while the worker is dead are delivered once it is back."""
    srv = make_proftpd().start()
    worker = srv.worker_pids()[0]
    os.kill(worker, signal.SIGSTOP)
    try:
        for i in range(5):
            curl_upload(srv, "ftp", "while-down-%d.txt" % i, b"data")
        assert upload_events(srv) == []
    finally:
        os.kill(worker, signal.SIGKILL)
    srv.wait_log("upload event", count=5, timeout=15)
    time.sleep(1)
    names = sorted(os.path.basename(field(e, "path")) for e in upload_events(srv))
    assert names == ["while-down-%d.txt" % i for i in range(5)]


def test_worker_killed_repeatedly_loses_and_duplicates_nothing(make_proftpd):
    srv = make_proftpd().start()
    n = 40
    killer_stop = time.monotonic() + 6

    import threading

    def killer():
        while time.monotonic() < killer_stop:
            for pid in srv.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.7)

    t = threading.Thread(target=killer)
    t.start()
    try:
        for i in range(n):
            curl_upload(srv, "ftp", "burst-%03d.txt" % i, b"%d" % i)
    finally:
        t.join()
    srv.wait_log("upload event", count=n, timeout=60)
    time.sleep(2)
    names = [os.path.basename(field(e, "path")) for e in upload_events(srv)]
    assert sorted(names) == ["burst-%03d.txt" % i for i in range(n)]


def test_module_symbols_bind_to_their_own_libraries(make_proftpd):
    """proftpd exports functions whose names libraries also use (its bundled
    JSON code has json_delete()): the module must not end up calling
    ProFTPD's copy where it meant jansson's."""
    srv = make_proftpd()
    srv._prepare()
    res = subprocess.run([srv.proftpd, "-t", "-c", srv.conf],
                         env=dict(os.environ, LD_DEBUG="bindings", LD_BIND_NOW="1"),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr[-2000:]
    bindings = re.findall(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: "
                          r"normal symbol `([^']+)'", res.stderr)
    ours = [(to, sym) for frm, to, sym in bindings
            if frm.endswith("mod_mailoauth.so")]
    assert ours, "no bindings seen for the module"
    wrong = [sym for to, sym in ours
             if os.path.basename(to) == "proftpd" and sym.startswith("json_")]
    assert wrong == []


def test_every_trace_channel_is_documented():
    """Each channel the code traces on has its row in the Trace table of
    the module's documentation, and the table names no other."""
    top = os.path.join(os.path.dirname(__file__), "..", "..")
    used = set()
    for d in ("mod_mailoauth", "contrib"):
        for dirpath, _, names in os.walk(os.path.join(top, d)):
            for name in names:
                if not name.endswith(".c"):
                    continue
                with open(os.path.join(dirpath, name)) as f:
                    text = f.read()
                used.update(re.findall(
                    r'trace_channel = "(mailoauth[a-z.]*)"', text))
                used.update(re.findall(
                    r'(?:mailoauth_trace|pr_trace_msg)\("(mailoauth[a-z.]*)"',
                    text))
    with open(os.path.join(top, "doc", "mod_mailoauth.html")) as f:
        doc = f.read()
    table = doc[doc.index('<a name="Trace">'):]
    table = table[:table.index("</table>")]
    documented = set(re.findall(r"<tr><td><code>(mailoauth[a-z.]*)</code>",
                                table))
    assert len(used) >= 17, used
    assert used == documented, (used - documented, documented - used)
