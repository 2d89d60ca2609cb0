#!/usr/bin/python3
"""Benchmark: mail-to-folder ingestion, measured side by side in one run.

Everything runs against one private Dovecot on loopback (IMAPS offering
only XOAUTH2, as Exchange Online does, checked by introspection at the
token stand-in), with the same signed-in account's access token for every
contender; the clients run as nobody, like the module's worker:

 (a) N messages, each with an M MB attachment (random bytes, base64), taken
     from a folder into a directory:
       * proftpd + mod_mailoauth, one MailOAuthIngest task (every=1,
         after=seen): from the worker's start (its first run begins at
         once; the stored token is valid, so no token request is made) to
         the last file's final name appearing in the directory;
       * getmail6 (SimpleIMAPSSLRetriever, use_xoauth2, password_command
         printing the token) into a Maildir, then munpack once per message
         into the directory; both steps, and each alone;
       * the transfer floor: one curl process fetching every message over
         one IMAPS connection to /dev/null.
     Each contender starts from the same N unseen messages, with nothing
     dirty in the page cache (sync(2) before each run); the rounds are
     repeated (order rotated) and medians printed.  Every file's sha256 is
     checked afterwards, outside the timing.
 (b) One message with a BIG MB attachment: peak memory (and time) of the
     module's worker and deposit helper against getmail6 and munpack.
 (c) Arrival-to-disk latency: messages saved one at a time (doveadm
     save), each timed from the command's return to the file's name
     appearing (inotify), for the module polling (every=1, idle=off), the
     module with IMAP IDLE (every=15m, so polling cannot explain it) and
     getmail6 --idle delivering to munpack.

Usage: bench_ingest.py [--n 200] [--mb 2] [--repeat 3] [--big-mb 1024]
                       [--big-repeat 1] [--latency-n 30]
--big-mb 0 skips (b), --latency-n 0 skips (c).  Root needed; getmail6,
mpack, curl, time, Dovecot and proftpd must be installed
(t/setup-debian.sh).  The 1 GiB part needs about 13 GiB of memory (for
getmail6) and 6 GiB of disk in /tmp.  MAILOAUTH_MODULE names the
module (default build/mod_mailoauth.so), PROFTPD the daemon; BENCH_KEEP=1
keeps the work directory.
"""

import argparse
import base64
import ctypes
import hashlib
import os
import pwd
import random
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "t", "lib"))

from certs import TestPKI  # noqa: E402
from mailservers import DOVEADM, Dovecot  # noqa: E402
from proftpd import ProFTPD, pids_of, proc_status  # noqa: E402
from signin import sign_in, write_token_file  # noqa: E402
from tokensvc import TokenService  # noqa: E402

ALICE = "alice@contoso.test"
REDIRECT = "http://localhost:8400/callback"
ACCOUNT = "bench"
OWNER = 2001                 # the FTP user "alice" of t/lib/proftpd.py
MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Program -> Debian package, for the message when one is missing.
TOOLS = (("getmail", "getmail6"), ("munpack", "mpack"), ("curl", "curl"),
         ("openssl", "openssl"), ("dovecot", "dovecot-core"),
         ("doveadm", "dovecot-core"))
TOOL = {}                        # program -> absolute path, set in main()
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin",
                               "/usr/bin", "/sbin", "/bin"])
GNU_TIME = "/usr/bin/time"       # not the shell keyword
MEASURE_DIR = None               # set in main(): where time writes

_children = set()            # Popen objects still running, killed on exit


def die(msg, code=2):
    sys.stderr.write("bench_ingest.py: %s\n" % msg)
    sys.exit(code)


def note(msg):
    sys.stderr.write("[bench_ingest %s] %s\n" % (time.strftime("%H:%M:%S"),
                                                 msg))
    sys.stderr.flush()


def mem_available():
    """MemAvailable in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


# -- the unprivileged user the clients run as (like the module's worker) ---

NOBODY = pwd.getpwnam("nobody")


def chown_tree(path, uid, gid):
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


# -- processes ----------------------------------------------------------------

class Measured:
    """One finished child: wall seconds, peak RSS (KiB), CPU seconds,
    bytes written for storage."""

    def __init__(self, secs, maxrss_kib, cpu, written, rc, stderr):
        self.secs = secs
        self.maxrss_kib = maxrss_kib
        self.cpu = cpu
        self.written = written
        self.rc = rc
        self.stderr = stderr


def run_measured(cmd, timeout, cwd=None, env=None, stdout=None):
    """Runs cmd as nobody under GNU time, which reports the command's peak
    RSS: a child of this Python process would carry the parent's resident
    size in ru_maxrss (Linux keeps the high-water mark of the memory image
    that exec replaced), a child of the small time program does not.  The
    CPU seconds (time's own are negligible) come from wait4()."""
    errf = tempfile.TemporaryFile()
    out = stdout if stdout is not None else subprocess.DEVNULL
    fd, rssfile = tempfile.mkstemp(prefix="rss.", dir=MEASURE_DIR)
    os.close(fd)
    os.chown(rssfile, NOBODY.pw_uid, NOBODY.pw_gid)
    t0 = time.monotonic()
    p = subprocess.Popen([GNU_TIME, "-f", "%M", "-o", rssfile] + list(cmd),
                         stdin=subprocess.DEVNULL, stdout=out,
                         stderr=errf, cwd=cwd, env=env,
                         user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                         extra_groups=[], start_new_session=True)
    _children.add(p)
    timer = threading.Timer(timeout, _killpg, (p.pid,))
    timer.start()
    try:
        while True:
            try:
                _, status, ru = os.wait4(p.pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        timer.cancel()
    secs = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    _children.discard(p)
    _killpg(p.pid)           # anything it left behind
    errf.seek(0)
    err = errf.read().decode(errors="replace")
    errf.close()
    maxrss = float("nan")
    with open(rssfile) as f:
        for line in f:
            if line.strip().isdigit():
                maxrss = int(line)
    os.unlink(rssfile)
    # ru_oublock is the kernel's write_bytes / 512 (/proc/PID/io).
    return Measured(secs, maxrss, ru.ru_utime + ru.ru_stime,
                    ru.ru_oublock * 512, p.returncode, err)


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def proc_cpu(pid):
    """utime + stime of a live process, seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def proc_written(pid):
    """Bytes a live process caused to be written for storage."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return float("nan")


def proc_hwm_kib(pid):
    v = proc_status(pid).get("VmHWM", "")
    m = re.match(r"(\d+)\s*kB", v)
    return int(m.group(1)) if m else float("nan")


# -- watching a directory for final names -------------------------------------

class DirWatch:
    """Final names appearing in one directory (hidden temporary names are
    ignored), with the time each was seen: inotify through ctypes, or a
    5 ms listing poll where inotify cannot be had."""

    IN_MOVED_TO = 0x00000080
    IN_CREATE = 0x00000100
    IN_CLOEXEC = 0o2000000
    IN_NONBLOCK = 0o4000

    def __init__(self, path):
        self.path = path
        self.seen = {}           # name -> (monotonic, wall)
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(self.IN_CLOEXEC | self.IN_NONBLOCK)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            wd = libc.inotify_add_watch(fd, os.fsencode(path),
                                        self.IN_MOVED_TO | self.IN_CREATE)
            if wd < 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "inotify_add_watch")
            self.fd = fd
            self.how = "inotify"
        except (OSError, AttributeError):
            self.how = "5 ms polling"
        # Names already there count as seen now.
        self._scan()

    def _record(self, name):
        if name and not name.startswith(".") and name not in self.seen:
            self.seen[name] = (time.monotonic(), time.time())

    def _scan(self):
        try:
            for name in os.listdir(self.path):
                self._record(name)
        except OSError:
            pass

    def wait(self, until, timeout):
        """Waits until until(self.seen) is true or timeout seconds pass;
        returns whether it became true."""
        deadline = time.monotonic() + timeout
        while not until(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.fd < 0:
                time.sleep(min(0.005, left))
                self._scan()
                continue
            r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if not r:
                continue
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            off = 0
            while off + 16 <= len(buf):
                _, mask, _, nlen = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + nlen].split(b"\0", 1)[0]
                off += 16 + nlen
                self._record(os.fsdecode(name))
        return True

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- messages -------------------------------------------------------------------

B64_CHUNK = 57 * 16384           # whole 76-character base64 lines per chunk


def write_message(f, name, size, subject):
    """Writes a message with one attachment of size random bytes (base64)
    to the binary file f; returns the attachment's sha256."""
    boundary = "=_bench_%s" % uuid.uuid4().hex
    f.write(("From: Scanner <scanner@contoso.test>\n"
             "To: %s\n"
             "Subject: %s\n"
             "Date: %s\n"
             "Message-ID: <%s@contoso.test>\n"
             "MIME-Version: 1.0\n"
             "Content-Type: multipart/mixed; boundary=\"%s\"\n"
             "\n"
             "--%s\n"
             "Content-Type: text/plain; charset=us-ascii\n"
             "\n"
             "See attached.\n"
             "\n"
             "--%s\n"
             "Content-Type: application/octet-stream; name=\"%s\"\n"
             "Content-Disposition: attachment; filename=\"%s\"\n"
             "Content-Transfer-Encoding: base64\n"
             "\n"
             % (ALICE, subject,
                time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
                uuid.uuid4().hex, boundary, boundary, boundary, name, name))
             .encode())
    h = hashlib.sha256()
    left = size
    while left > 0:
        chunk = os.urandom(min(B64_CHUNK, left))
        left -= len(chunk)
        h.update(chunk)
        f.write(base64.encodebytes(chunk))
    f.write(("--%s--\n" % boundary).encode())
    return h.hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


# -- the bench ------------------------------------------------------------------

class Bench:
    def __init__(self, args, base, module, proftpd_bin):
        self.args = args
        self.base = base
        self.module = module
        self.proftpd_bin = proftpd_bin
        self.started = []
        self.seq = 0

    # setup ---------------------------------------------------------------
    def setup(self):
        self.pki = TestPKI(os.path.join(self.base, "pki")).create()
        self.svc = TokenService(os.path.join(self.base, "tokensvc"),
                                self.pki).start()
        self.started.append(self.svc)
        self.app = self.svc.add_app(redirect_uris=[REDIRECT])
        self.svc.add_user(ALICE)
        # Only XOAUTH2, as Exchange Online offers: curl would otherwise
        # pick OAUTHBEARER (its --login-options AUTH=XOAUTH2 is ignored
        # with a bearer token in curl 7.88).
        self.dovecot = Dovecot(self.base, self.pki, self.svc.introspect_url,
                               users=[ALICE], mechanisms=("xoauth2",)).start()
        self.started.append(self.dovecot)
        self.secret = os.path.join(self.base, "client.secret")
        with open(self.secret, "w") as f:
            f.write(self.app["secret"])
        os.chmod(self.secret, 0o600)

    def fresh_token(self):
        """A person's sign-in: refresh + access token (valid an hour)."""
        self.toks = sign_in(self.svc, self.app, ALICE, REDIRECT)
        return self.toks

    def token_requests(self):
        st = self.svc.stats()
        return sum(st.get("token_requests", {}).values())

    def workdir(self, label):
        self.seq += 1
        d = os.path.join(self.base, "%02d-%s" % (self.seq, label))
        os.makedirs(d)
        os.chmod(d, 0o755)
        return d

    # Dovecot ---------------------------------------------------------------
    def doveadm(self, *args, check=True):
        return self.dovecot.doveadm(*args, check=check)

    def create_folder(self, folder):
        self.doveadm("mailbox", "create", "-u", ALICE, folder, check=False)

    def save(self, path, folder):
        with open(path, "rb") as f:
            r = subprocess.run([DOVEADM, "-c", self.dovecot.config, "save",
                                "-u", ALICE, "-m", folder], stdin=f,
                               capture_output=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError("doveadm save failed: %s"
                               % r.stderr.decode(errors="replace"))

    def fill_folder(self, folder, n, size, prefix):
        """n messages of one attachment each; returns {name: sha256}."""
        self.create_folder(folder)
        expected = {}
        tmp = os.path.join(self.base, "message.eml")
        for i in range(n):
            name = "%s-%04d.bin" % (prefix, i + 1)
            with open(tmp, "wb") as f:
                expected[name] = write_message(f, name, size,
                                               "%s %d" % (folder, i + 1))
            self.save(tmp, folder)
        os.unlink(tmp)
        return expected

    def settle(self):
        """Before each timed run: nothing left dirty by the setup or the
        previous contender is written back during this one's timing."""
        os.sync()

    def unseen(self, folder):
        r = self.doveadm("search", "-u", ALICE, "mailbox", folder, "unseen")
        return len(r.stdout.splitlines())

    def reset_unseen(self, folder, n):
        self.doveadm("flags", "remove", "-u", ALICE, "\\Seen", "mailbox",
                     folder, "all")
        got = self.unseen(folder)
        if got != n:
            raise RuntimeError("%s has %d unseen messages after the reset, "
                               "not %d" % (folder, got, n))

    def dovecot_log(self):
        try:
            with open(self.dovecot.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def logins_since(self, mark):
        """IMAP logins since mark, and the SASL mechanisms they used."""
        found = re.findall(r"imap-login: (?:Info: )?Login: user=<[^>]*>, "
                           r"method=([A-Z0-9-]+)", self.dovecot_log()[mark:])
        return len(found), sorted(set(found))

    # verification ------------------------------------------------------------
    def verify(self, directory, expected, who, owner=None):
        names = sorted(n for n in os.listdir(directory))
        visible = [n for n in names if not n.startswith(".")]
        missing = sorted(set(expected) - set(visible))
        if missing:
            raise RuntimeError("%s: %d of %d files missing in %s (first: %s)"
                               % (who, len(missing), len(expected), directory,
                                  missing[:3]))
        bad = [n for n in expected
               if sha_file(os.path.join(directory, n)) != expected[n]]
        if bad:
            raise RuntimeError("%s: %d files differ from what was sent "
                               "(first: %s)" % (who, len(bad), bad[:3]))
        extra = sorted(set(names) - set(expected))
        if owner is not None:
            for n in expected:
                st = os.stat(os.path.join(directory, n))
                if (st.st_uid, st.st_gid) != owner:
                    raise RuntimeError("%s: %s belongs to %d:%d, not %d:%d"
                                       % (who, n, st.st_uid, st.st_gid,
                                          owner[0], owner[1]))
        return extra

    # contenders -----------------------------------------------------------------
    def run_module(self, folder, expected, timeout, wait_first_run=False,
                   every=1, settings=""):
        """A proftpd with one task on folder.  Returns a result dict (and
        with wait_first_run, the started server and its watch instead of
        waiting for files)."""
        d = self.workdir("mod_mailoauth")
        account = ("MailOAuthAccount %s authority=%s tenant=contoso.test "
                   "client-id=%s client-secret=file:%s mailbox=%s ca-file=%s "
                   "proxy=none imap=imaps://%s:%d"
                   % (ACCOUNT, self.svc.url, self.app["client_id"],
                      self.secret, ALICE, self.pki.ca_cert, self.dovecot.host,
                      self.dovecot.imaps_port))
        srv = ProFTPD(d, self.module, proftpd=self.proftpd_bin, pki=self.pki,
                      trace_level=0)
        inbox = os.path.join(srv.home("alice"), "inbox")
        srv.extra_conf = (account + "\nMailOAuthIngest t1 account=%s "
                          "every=%d dir=%s owner=%d:%d folder=%s after=seen "
                          "%s\n" % (ACCOUNT, every, inbox, OWNER, OWNER,
                                    folder, settings))
        srv._prepare()
        os.makedirs(inbox, exist_ok=True)
        os.chown(inbox, OWNER, OWNER)
        os.chmod(inbox, 0o755)
        write_token_file(os.path.join(srv.state_dir, "tokens",
                                      ACCOUNT + ".json"),
                         ACCOUNT, ALICE, self.toks, NOBODY.pw_uid)
        watch = DirWatch(inbox)
        tok0 = self.token_requests()
        mark = len(self.dovecot_log())
        self.started.append(srv)
        t_popen = time.time()
        srv.start(wait_worker=False)
        t_worker = self.worker_start_time(srv)
        if wait_first_run:
            state = os.path.join(srv.state_dir, "tasks", "t1.json")
            deadline = time.monotonic() + 30
            while not os.path.exists(state):
                if time.monotonic() > deadline:
                    raise RuntimeError("the task's first run did not end:\n"
                                       + srv.diagnostics())
                time.sleep(0.01)
            return srv, watch, inbox
        n = len(expected)
        ok = watch.wait(lambda seen: len(seen) >= n, timeout)
        if not ok:
            raise RuntimeError("mod_mailoauth: %d of %d files after %ds:\n%s"
                               % (len(watch.seen), n, timeout,
                                  srv.diagnostics()))
        t_end = max(w for _, w in watch.seen.values())
        t_first = min(w for _, w in watch.seen.values())
        watch.close()
        workers = srv.worker_pids()
        if len(workers) != 1:
            raise RuntimeError("expected one worker, found %s" % workers)
        worker = workers[0]
        helpers = [p for p in pids_of("mailoauth deposit helper")
                   if proc_status(p).get("PPid") == str(worker)]
        cpu_w = proc_cpu(worker)
        cpu_h = sum(proc_cpu(p) for p in helpers)
        wr_w = proc_written(worker)
        wr_h = sum(proc_written(p) for p in helpers)
        # after=seen: the last message is flagged after its file is there.
        deadline = time.monotonic() + 60
        while self.unseen(folder) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("mod_mailoauth: %d messages still unseen"
                                   % self.unseen(folder))
            time.sleep(0.05)
        hwm_w = proc_hwm_kib(worker)
        hwm_h = max([proc_hwm_kib(p) for p in helpers] or [float("nan")])
        log = srv.log_text()
        srv.stop()
        self.started.remove(srv)
        extra = self.verify(inbox, expected, "mod_mailoauth",
                            owner=(OWNER, OWNER))
        leftovers = os.listdir(os.path.join(srv.state_dir, "tmp")) \
            if os.path.isdir(os.path.join(srv.state_dir, "tmp")) else []
        res = {
            "secs": t_end - t_worker, "first": t_first - t_worker,
            "startup": t_worker - t_popen,
            "rss_kib": hwm_w, "helper_rss_kib": hwm_h,
            "cpu": cpu_w + cpu_h, "cpu_worker": cpu_w, "cpu_helper": cpu_h,
            "written": wr_w + wr_h, "written_worker": wr_w,
            "written_helper": wr_h,
            "logins": self.logins_since(mark)[0],
            "mechs": self.logins_since(mark)[1],
            "token_reqs": self.token_requests() - tok0,
            "deposited_lines": log.count(": deposited "),
            "extra_files": extra, "tmp_leftovers": leftovers,
            "errors": [l for l in log.splitlines()
                       if "ingest t1" in l and ": deposited " not in l and
                       "with IMAP IDLE" not in l],
        }
        shutil.rmtree(d, ignore_errors=True)
        return res

    def worker_start_time(self, srv):
        """Wall time of the worker's start, from its MailOAuthLog line
        (milliseconds); else when the line was first seen."""
        deadline = time.monotonic() + 15
        rx = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*worker "
                        r"started", re.M)
        while True:
            text = srv.log_text()
            m = rx.search(text)
            if m:
                t = time.mktime(time.strptime(m.group(1),
                                              "%Y-%m-%d %H:%M:%S"))
                return t + int(m.group(2)) / 1000.0
            if "worker started" in text:
                return time.time()
            if time.monotonic() > deadline:
                raise RuntimeError("no worker started:\n" + srv.diagnostics())
            time.sleep(0.002)

    def run_getmail(self, folder, expected, timeout):
        """getmail6 into a Maildir, then munpack once per message."""
        n = len(expected)
        d = self.workdir("getmail6")
        gdir = os.path.join(d, "getmail")
        maildir = os.path.join(d, "Maildir")
        out = os.path.join(d, "out")
        for sub in (gdir, out, maildir, os.path.join(maildir, "cur"),
                    os.path.join(maildir, "new"),
                    os.path.join(maildir, "tmp")):
            os.makedirs(sub, exist_ok=True)
        token = os.path.join(gdir, "token")
        with open(token, "w") as f:
            f.write(self.toks["access_token"])
        os.chmod(token, 0o600)
        rc = os.path.join(gdir, "getmailrc")
        with open(rc, "w") as f:
            f.write("""\
[retriever]
type = SimpleIMAPSSLRetriever
server = {host}
port = {port}
username = {user}
use_xoauth2 = True
password_command = ("/bin/cat", "{token}")
ca_certs = {ca}
mailboxes = ("{folder}",)
# Only unread mail, flagged read ("deleted" with \\Seen) once delivered:
# what after=seen does.
imap_search = UNSEEN
imap_on_delete = (\\Seen)

[destination]
type = Maildir
path = {maildir}/

[options]
read_all = true
delete = true
verbose = 0
""".format(host=self.dovecot.host, port=self.dovecot.imaps_port, user=ALICE,
           token=token, ca=self.pki.ca_cert, folder=folder, maildir=maildir))
        chown_tree(d, NOBODY.pw_uid, NOBODY.pw_gid)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": gdir,
               "LANG": "C.UTF-8"}
        mark = len(self.dovecot_log())
        g = run_measured([TOOL["getmail"], "--getmaildir", gdir, "--rcfile", rc,
                          "--quiet"], timeout, env=env)
        msgs = sorted(os.path.join(maildir, "new", m)
                      for m in os.listdir(os.path.join(maildir, "new")))
        if g.rc != 0 or len(msgs) != n:
            raise RuntimeError("getmail6 exited %d with %d of %d messages "
                               "delivered:\n%s" % (g.rc, len(msgs), n,
                                                   g.stderr[-3000:]))
        logins, mechs = self.logins_since(mark)
        still_unseen = self.unseen(folder)
        # munpack, once per message, as a shell loop would run it.
        t0 = time.monotonic()
        cpu = 0.0
        rss = 0
        written = 0
        for m in msgs:
            r = run_measured([TOOL["munpack"], "-q", "-C", out, m], timeout,
                             env=env)
            if r.rc != 0:
                raise RuntimeError("munpack %s exited %d: %s"
                                   % (m, r.rc, r.stderr[-2000:]))
            cpu += r.cpu
            written += r.written
            rss = max(rss, r.maxrss_kib)
        mp = Measured(time.monotonic() - t0, rss, cpu, written, 0, "")
        extra = self.verify(out, expected, "getmail6+munpack")
        shutil.rmtree(d, ignore_errors=True)
        return {"getmail": g, "munpack": mp, "logins": logins, "mechs": mechs,
                "unseen_after": still_unseen, "extra_files": extra,
                "getmail_stderr": g.stderr.strip()}

    def run_curl(self, folder, expected, timeout):
        """One curl process, every message (UID 1..n) to /dev/null."""
        n = len(expected)
        d = self.workdir("curl")
        cfg = os.path.join(d, "curl.conf")
        with open(cfg, "w") as f:
            f.write('silent\nshow-error\ncacert = "%s"\nuser = "%s:"\n'
                    'oauth2-bearer = "%s"\n'
                    'write-out = "%%{size_download} %%{num_connects}\\n"\n'
                    % (self.pki.ca_cert, ALICE, self.toks["access_token"]))
            for uid in range(1, n + 1):
                f.write('url = "imaps://%s:%d/%s;UID=%d"\n'
                        'output = "/dev/null"\n'
                        % (self.dovecot.host, self.dovecot.imaps_port,
                           folder, uid))
        os.chmod(cfg, 0o600)
        chown_tree(d, NOBODY.pw_uid, NOBODY.pw_gid)
        outp = os.path.join(d, "out")
        mark = len(self.dovecot_log())
        with open(outp, "w") as o:
            os.chown(outp, NOBODY.pw_uid, NOBODY.pw_gid)
            r = run_measured([TOOL["curl"], "-K", cfg], timeout, stdout=o)
        with open(outp) as o:
            lines = [l.split() for l in o.read().splitlines() if l.strip()]
        if r.rc != 0 or len(lines) != n:
            raise RuntimeError("curl exited %d after %d of %d fetches: %s"
                               % (r.rc, len(lines), n, r.stderr[-2000:]))
        bytes_ = sum(int(l[0]) for l in lines)
        connects = sum(int(l[1]) for l in lines)
        shutil.rmtree(d, ignore_errors=True)
        logins, mechs = self.logins_since(mark)
        return {"curl": r, "logins": logins, "mechs": mechs,
                "connects": connects, "bytes": bytes_}


# -- tables -----------------------------------------------------------------------

def med(values):
    values = [v for v in values if v == v]      # drop NaN
    return statistics.median(values) if values else float("nan")


def fmt(v, spec):
    if v is None or v != v:
        return "-"
    return format(v, spec)


HEAD = "%-42s %8s %7s %7s %9s %7s %9s %6s"
TITLES = ("", "seconds", "MB/s", "msgs/s", "RSS MiB", "CPU s", "disk MiB",
          "logins")


def row(label, secs=None, mb=None, n=None, rss_kib=None, cpu=None,
        written=None, logins=None):
    """One line; mb and n turn seconds into rates."""
    ok = secs is not None and secs == secs and secs > 0
    return HEAD % (label, fmt(secs, ".2f"),
                   fmt(mb / secs if ok and mb else None, ".1f"),
                   fmt(n / secs if ok and n else None, ".1f"),
                   fmt(rss_kib / 1024.0 if rss_kib is not None else None,
                       ".1f"),
                   fmt(cpu, ".2f"),
                   fmt(written / MiB if written is not None else None,
                       ".0f"),
                   fmt(logins, ".0f"))


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- main -------------------------------------------------------------------------

def check_prerequisites(module, proftpd_bin):
    if os.geteuid() != 0:
        die("run as root: it starts proftpd and Dovecot and deposits files "
            "as other users")
    missing = set()
    for prog, pkg in TOOLS:
        TOOL[prog] = shutil.which(prog, path=SEARCH_PATH)
        if TOOL[prog] is None:
            missing.add(pkg)
    if not os.access(GNU_TIME, os.X_OK):
        missing.add("time")
    missing = sorted(missing)
    if missing:
        die("missing program(s) from Debian package(s): %s; run "
            "t/setup-debian.sh (or apt-get install %s)"
            % (", ".join(missing), " ".join(missing)))
    if not os.path.exists(module):
        die("mod_mailoauth.so not built (%s): run ./configure && make" % module)
    if not os.access(proftpd_bin, os.X_OK):
        die("no proftpd at %s (Debian package proftpd-core)" % proftpd_bin)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200,
                    help="messages in (a) (default 200)")
    ap.add_argument("--mb", type=float, default=2,
                    help="attachment size in (a), MiB (default 2)")
    ap.add_argument("--big-mb", type=float, default=1024,
                    help="attachment size in (b), MiB; 0 skips (b)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of (a); medians are printed (default 3)")
    ap.add_argument("--big-repeat", type=int, default=1,
                    help="rounds of (b) (default 1)")
    ap.add_argument("--latency-n", type=int, default=30,
                    help="messages in (c); 0 skips (c) (default 30)")
    ap.add_argument("--latency-kb", type=int, default=100,
                    help="attachment size in (c), KiB (default 100)")
    ap.add_argument("--seed", type=int, default=1,
                    help="seed of the pauses between deliveries in (c)")
    args = ap.parse_args()
    if args.n < 1 or args.repeat < 1 or args.big_repeat < 1 or args.mb <= 0:
        die("--n, --repeat, --big-repeat and --mb must be positive")

    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    proftpd_bin = os.environ.get("PROFTPD", "/usr/sbin/proftpd")
    check_prerequisites(module, proftpd_bin)

    # SIGTERM (make killed, a CI timeout) cleans up like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    base = tempfile.mkdtemp(prefix="mailoauth-bench-ingest.", dir="/tmp")
    os.chmod(base, 0o755)
    global MEASURE_DIR
    MEASURE_DIR = os.path.join(base, "measure")
    os.makedirs(MEASURE_DIR)
    os.chown(MEASURE_DIR, NOBODY.pw_uid, NOBODY.pw_gid)
    b = Bench(args, base, module, proftpd_bin)
    try:
        b.setup()
        out = []
        out += bench_throughput(b)
        if args.big_mb > 0:
            out += bench_big(b)
        if args.latency_n > 0:
            out += bench_latency(b)
        print()
        print("\n".join(out))
    finally:
        for p in list(_children):
            _killpg(p.pid)
        for s in reversed(b.started):
            try:
                s.stop()
            except Exception:
                pass
        if os.environ.get("BENCH_KEEP"):
            note("work directory kept: %s" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)


def contender_rows(mods, gms, curls, mb, n):
    """The table: medians over the runs of each contender (an empty list:
    that contender failed, its rows are left out)."""
    lines = [HEAD % TITLES]
    if mods:
        lines.append(row("mod_mailoauth worker + deposit helper",
                         med([r["secs"] for r in mods]), mb, n,
                         med([r["rss_kib"] for r in mods]),
                         med([r["cpu"] for r in mods]),
                         med([r["written"] for r in mods]),
                         med([r["logins"] for r in mods])))
        lines.append(row("  worker alone (peak RSS = VmHWM)",
                         rss_kib=med([r["rss_kib"] for r in mods]),
                         cpu=med([r["cpu_worker"] for r in mods]),
                         written=med([r["written_worker"] for r in mods])))
        lines.append(row("  deposit helper alone (VmHWM)",
                         rss_kib=med([r["helper_rss_kib"] for r in mods]),
                         cpu=med([r["cpu_helper"] for r in mods]),
                         written=med([r["written_helper"] for r in mods])))
    if gms:
        lines.append(row("getmail6 + munpack (both steps)",
                         med([r["getmail"].secs + r["munpack"].secs
                              for r in gms]), mb, n,
                         med([max(r["getmail"].maxrss_kib,
                                  r["munpack"].maxrss_kib) for r in gms]),
                         med([r["getmail"].cpu + r["munpack"].cpu
                              for r in gms]),
                         med([r["getmail"].written + r["munpack"].written
                              for r in gms]),
                         med([r["logins"] for r in gms])))
        lines.append(row("  getmail6 -> Maildir",
                         med([r["getmail"].secs for r in gms]), mb, n,
                         med([r["getmail"].maxrss_kib for r in gms]),
                         med([r["getmail"].cpu for r in gms]),
                         med([r["getmail"].written for r in gms]),
                         med([r["logins"] for r in gms])))
        lines.append(row("  munpack, once per message",
                         med([r["munpack"].secs for r in gms]), mb, n,
                         med([r["munpack"].maxrss_kib for r in gms]),
                         med([r["munpack"].cpu for r in gms]),
                         med([r["munpack"].written for r in gms])))
    if curls:
        lines.append(row("curl, one process, to /dev/null (floor)",
                         med([r["curl"].secs for r in curls]), mb, n,
                         med([r["curl"].maxrss_kib for r in curls]),
                         med([r["curl"].cpu for r in curls]),
                         med([r["curl"].written for r in curls]),
                         med([r["logins"] for r in curls])))
    return lines


LEGEND = ("MB/s: attachment payload (MiB); RSS: peak, module = VmHWM of the "
          "process (the first row shows the worker's), others = GNU time's "
          "maximum RSS (munpack: its largest run); CPU: user+system; disk: "
          "write_bytes (what a process sent to be stored, temporary files "
          "included); logins: IMAP logins Dovecot logged.")


def bench_throughput(b):
    a = b.args
    n = a.n
    size = int(a.mb * MiB)
    mb_total = n * size / MiB
    folder = "Bench"
    note("(a) saving %d messages of %s MiB into Dovecot (load %s)"
         % (n, a.mb, loadavg()))
    expected = b.fill_folder(folder, n, size, "att")
    msg_bytes = None
    timeout = max(600, int(mb_total * 2))

    # Warm-up, untimed: the page cache and Dovecot's indexes, for everyone.
    b.fresh_token()
    warm = b.run_curl(folder, expected, timeout)
    msg_bytes = warm["bytes"]
    contenders = ["mod", "getmail", "curl"]
    runs = {c: [] for c in contenders}
    load0 = loadavg()
    for k in range(a.repeat):
        b.fresh_token()
        order = contenders[k % 3:] + contenders[:k % 3]
        for c in order:
            b.reset_unseen(folder, n)
            b.settle()
            note("(a) round %d/%d: %s (load %s)" % (k + 1, a.repeat, c,
                                                    loadavg()))
            if c == "mod":
                r = b.run_module(folder, expected, timeout)
            elif c == "getmail":
                r = b.run_getmail(folder, expected, timeout)
            else:
                r = b.run_curl(folder, expected, timeout)
            runs[c].append(r)
    b.reset_unseen(folder, n)

    mods, gms, curls = runs["mod"], runs["getmail"], runs["curl"]
    lines = []
    lines.append("(a) %d messages, each with a %s MiB attachment (random "
                 "bytes, base64; %.0f MiB of messages on the wire), folder "
                 "to directory," % (n, a.mb, msg_bytes / MiB))
    lines.append("    IMAPS + XOAUTH2 from a private Dovecot on loopback; "
                 "medians of %d rounds (order rotated)" % a.repeat)
    lines += contender_rows(mods, gms, curls, mb_total, n)
    lines.append(LEGEND)
    g_secs = [r["getmail"].secs for r in gms]
    m_secs = [r["munpack"].secs for r in gms]
    lines.append("SASL mechanisms seen by Dovecot: %s."
                 % ", ".join(sorted({m for r in mods + gms + curls
                                     for m in r["mechs"]})))
    lines.append("every round, seconds: module %s; getmail6 %s; munpack %s; "
                 "curl %s" % (
                     " ".join("%.2f" % r["secs"] for r in mods),
                     " ".join("%.2f" % s for s in g_secs),
                     " ".join("%.2f" % s for s in m_secs),
                     " ".join("%.2f" % r["curl"].secs for r in curls)))
    lines.append("module: timed from the worker's start (MailOAuthLog, ms) to "
                 "the %d-th final name (inotify); first file after %.2f s; "
                 "proftpd start to worker start %.2f s (not counted); token "
                 "requests during the runs: %s; curl connections: %s."
                 % (n, med([r["first"] for r in mods]),
                    med([r["startup"] for r in mods]),
                    ",".join(str(r["token_reqs"]) for r in mods),
                    ",".join(str(r["connects"]) for r in curls)))
    notes = set()
    for r in mods:
        if r["extra_files"] or r["tmp_leftovers"]:
            notes.add("module left extra files: %s %s"
                      % (r["extra_files"][:5], r["tmp_leftovers"][:5]))
        for e in r["errors"][:3]:
            notes.add("module log: " + e)
    for r in gms:
        if r["extra_files"]:
            notes.add("munpack also wrote %d other files, e.g. %s"
                      % (len(r["extra_files"]), r["extra_files"][:2]))
        if r["unseen_after"]:
            notes.add("getmail6 left %d messages unseen" % r["unseen_after"])
        if r["getmail_stderr"]:
            notes.add("getmail6 stderr: " + r["getmail_stderr"][:300])
    lines += sorted(notes)
    lines.append("all files byte-identical (sha256) in every run.  The "
                 "module and getmail6 fsync() each file before counting it "
                 "delivered; munpack does not (its data reaches the disk "
                 "after its timing).")
    lines.append("load average (1/5/15 min) before: %s, after: %s."
                 % (load0, loadavg()))
    lines.append("")
    return lines


def bench_big(b):
    a = b.args
    size = int(a.big_mb * MiB)
    folder = "Big"
    note("(b) writing one message with a %s MiB attachment (load %s)"
         % (a.big_mb, loadavg()))
    b.create_folder(folder)
    path = os.path.join(b.base, "big.eml")
    with open(path, "wb") as f:
        sha = write_message(f, "big.bin", size, "big attachment")
    msg_size = os.path.getsize(path)
    note("(b) saving it into Dovecot (%.0f MiB)" % (msg_size / MiB))
    b.save(path, folder)
    os.unlink(path)
    expected = {"big.bin": sha}
    timeout = max(1800, int(a.big_mb * 3))
    contenders = ["mod", "getmail", "curl"]
    res = {c: [] for c in contenders}
    failed = {}
    # getmail6 holds the parsed message in Python: about 9x the message.
    avail = mem_available()
    if avail is not None and avail < 10 * msg_size:
        failed["getmail"] = RuntimeError(
            "skipped: it needs about %.0f GiB of memory for this message, "
            "%.1f GiB are available" % (10 * msg_size / GiB, avail / GiB))
        note("(b) getmail6 %s" % failed["getmail"])
    load0 = loadavg()
    for k in range(a.big_repeat):
        b.fresh_token()
        order = contenders[k % 3:] + contenders[:k % 3]
        for c in order:
            if c in failed:
                continue
            b.reset_unseen(folder, 1)
            b.settle()
            note("(b) round %d/%d: %s (load %s)" % (k + 1, a.big_repeat, c,
                                                    loadavg()))
            try:
                if c == "mod":
                    res[c].append(b.run_module(folder, expected, timeout))
                elif c == "getmail":
                    res[c].append(b.run_getmail(folder, expected, timeout))
                else:
                    res[c].append(b.run_curl(folder, expected, timeout))
            except RuntimeError as e:
                # One contender failing (say, out of memory) still leaves
                # the others' numbers.
                failed[c] = e
                note("(b) %s failed: %s" % (c, str(e)[:2000]))
    b.reset_unseen(folder, 1)
    mb = size / MiB
    lines = ["(b) one message with a %s MiB attachment (%.0f MiB message); "
             "%s of %d round%s" % (a.big_mb, msg_size / MiB,
                                   "medians" if a.big_repeat > 1 else "one",
                                   a.big_repeat,
                                   "s" if a.big_repeat > 1 else "")]
    lines += contender_rows(res["mod"], res["getmail"], res["curl"], mb, 0)
    for c, e in failed.items():
        lines.append("%s FAILED: %s" % (c, str(e)[:400]))
    ok = [c for c in ("mod", "getmail") if res[c]]
    lines.append("sha256 of the deposited file checked: %s."
                 % (", ".join({"mod": "mod_mailoauth",
                               "getmail": "getmail6+munpack"}[c]
                              for c in ok) or "none succeeded"))
    mods = res["mod"]
    if mods:
        lines.append("every round, seconds: module %s; getmail6+munpack %s; "
                     "curl %s; token requests by the module: %s."
                     % (" ".join("%.2f" % r["secs"] for r in mods),
                        " ".join("%.2f" % (r["getmail"].secs +
                                           r["munpack"].secs)
                                 for r in res["getmail"]),
                        " ".join("%.2f" % r["curl"].secs
                                 for r in res["curl"]),
                        ",".join(str(r["token_reqs"]) for r in mods)))
    lines.append("load average (1/5/15 min) before: %s, after: %s."
                 % (load0, loadavg()))
    lines.append("")
    return lines


def latency_rounds(b, folder, watch, where, prefix, label):
    """Saves --latency-n messages one at a time into folder; each is timed
    from doveadm save's return to its file appearing in watch's directory.
    Returns (latencies, save times), in ms."""
    a = b.args
    rng = random.Random(a.seed)
    lat, save_ms = [], []
    tmp = os.path.join(b.base, "lat.eml")
    try:
        for i in range(a.latency_n):
            name = "%s-%03d.bin" % (prefix, i + 1)
            with open(tmp, "wb") as f:
                sha = write_message(f, name, a.latency_kb * 1024,
                                    "latency %s %d" % (prefix, i + 1))
            # A random phase against a polling task's one-second cycle.
            b.settle()
            time.sleep(rng.uniform(0, 1.0))
            t0 = time.monotonic()
            b.save(tmp, folder)
            t_ret = time.monotonic()
            if not watch.wait(lambda seen: name in seen, 30):
                raise RuntimeError("(c) %s: %s did not arrive in 30 s:\n%s"
                                   % (label, name, where()))
            lat.append((watch.seen[name][0] - t_ret) * 1000)
            save_ms.append((t_ret - t0) * 1000)
            # munpack writes under the final name: wait for the whole file.
            path = os.path.join(watch.path, name)
            deadline = time.monotonic() + 30
            while sha_file(path) != sha:
                if time.monotonic() > deadline:
                    raise RuntimeError("(c) %s: %s differs from what was "
                                       "sent" % (label, name))
                time.sleep(0.01)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lat, save_ms


def latency_module(b, folder, every, settings, label):
    b.doveadm("expunge", "-u", ALICE, "mailbox", folder, "all", check=False)
    srv, watch, inbox = b.run_module(folder, {}, 60, wait_first_run=True,
                                     every=every, settings=settings)
    try:
        if "idle=off" not in settings:
            deadline = time.monotonic() + 30
            while "with IMAP IDLE" not in srv.log_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("(c) %s: the IDLE watcher did not "
                                       "start:\n%s" % (label,
                                                       srv.diagnostics()))
                time.sleep(0.02)
            time.sleep(0.5)          # the run that idling starts
        return latency_rounds(b, folder, watch, srv.diagnostics,
                              "lat-%d" % every, label)
    finally:
        watch.close()
        srv.stop()
        b.started.remove(srv)


def latency_getmail(b, folder):
    """getmail6 --idle FOLDER, delivering each message to munpack
    (MDA_external), which writes the attachment into a directory."""
    b.doveadm("expunge", "-u", ALICE, "mailbox", folder, "all", check=False)
    d = b.workdir("getmail6-idle")
    gdir = os.path.join(d, "getmail")
    out = os.path.join(d, "out")
    for sub in (gdir, out):
        os.makedirs(sub, exist_ok=True)
    token = os.path.join(gdir, "token")
    with open(token, "w") as f:
        f.write(b.toks["access_token"])
    os.chmod(token, 0o600)
    rc = os.path.join(gdir, "getmailrc")
    with open(rc, "w") as f:
        f.write("""\
[retriever]
type = SimpleIMAPSSLRetriever
server = {host}
port = {port}
username = {user}
use_xoauth2 = True
password_command = ("/bin/cat", "{token}")
ca_certs = {ca}
mailboxes = ("{folder}",)
imap_search = UNSEEN
imap_on_delete = (\\Seen)

[destination]
type = MDA_external
path = {munpack}
arguments = ("-q", "-C", "{out}")
# munpack says "reading from standard input" on stderr.
ignore_stderr = true

[options]
read_all = true
delete = true
verbose = 0
""".format(host=b.dovecot.host, port=b.dovecot.imaps_port, user=ALICE,
           token=token, ca=b.pki.ca_cert, folder=folder, munpack=TOOL["munpack"],
           out=out))
    chown_tree(d, NOBODY.pw_uid, NOBODY.pw_gid)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": gdir,
           "LANG": "C.UTF-8"}
    errf = tempfile.TemporaryFile()
    p = subprocess.Popen([TOOL["getmail"], "--getmaildir", gdir, "--rcfile",
                          rc, "--idle", folder], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=errf, env=env,
                         user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                         extra_groups=[], start_new_session=True)
    _children.add(p)
    watch = DirWatch(out)

    def where():
        errf.seek(0)
        return "getmail6 %s; stderr:\n%s" % (
            "running" if p.poll() is None else "exited %s" % p.returncode,
            errf.read().decode(errors="replace")[-3000:])
    try:
        # One message first: once it is out, getmail6 is idling.
        prime = os.path.join(b.base, "prime.eml")
        with open(prime, "wb") as f:
            write_message(f, "prime.bin", 1024, "prime")
        b.save(prime, folder)
        os.unlink(prime)
        if not watch.wait(lambda seen: "prime.bin" in seen, 60):
            raise RuntimeError("(c) getmail6 --idle took nothing:\n"
                               + where())
        time.sleep(1.0)
        return latency_rounds(b, folder, watch, where, "lat-getmail",
                              "getmail6 --idle")
    finally:
        watch.close()
        _killpg(p.pid)
        p.wait()
        _children.discard(p)
        errf.close()
        shutil.rmtree(d, ignore_errors=True)


def bench_latency(b):
    a = b.args
    folder = "Latency"
    b.create_folder(folder)
    b.fresh_token()
    note("(c) %d deliveries one at a time, per contender (load %s)"
         % (a.latency_n, loadavg()))
    rows = [
        ("mod_mailoauth every=1, idle=off (polling)",
         lambda: latency_module(b, folder, 1, "idle=off", "polling")),
        ("mod_mailoauth every=15m, IMAP IDLE",
         lambda: latency_module(b, folder, 900, "", "IDLE")),
        ("getmail6 --idle %s + munpack (MDA_external)" % folder,
         lambda: latency_getmail(b, folder)),
    ]
    results = []
    for label, fn in rows:
        results.append((label,) + fn())
    lines = ["(c) arrival to disk: %d messages (%d KiB attachment) saved one "
             "at a time per contender, a random 0-1 s pause before each; ms "
             "from doveadm save's return to the file's name appearing"
             % (a.latency_n, a.latency_kb)]
    lines.append("%-50s %8s %8s %8s %8s" % ("", "median", "p95", "max",
                                            "min"))
    for label, lat, _ in results:
        lines.append("%-50s %8.0f %8.0f %8.0f %8.0f"
                     % (label, statistics.median(lat), pct(lat, 0.95),
                        max(lat), min(lat)))
    save_ms = [v for _, _, s in results for v in s]
    lines.append("%-50s %8.0f %8.0f %8.0f %8.0f"
                 % ("doveadm save itself (not counted)",
                    statistics.median(save_ms), pct(save_ms, 0.95),
                    max(save_ms), min(save_ms)))
    lines.append("mod_mailoauth's names are final (written, fsynced, then "
                 "renamed); munpack creates its file under the final name "
                 "and writes into it, so its row is counted at creation.  "
                 "sha256 checked for each file; load average (1/5/15 min) "
                 "after: %s." % loadavg())
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
