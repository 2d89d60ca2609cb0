"""A real proftpd with mod_mailoauth loaded, on loopback ports of our choosing.

Everything (config, module directory, users, logs, state) lives in one work
directory, so tests never touch the system's proftpd.  The daemon runs in
the foreground (-n) as a child of the test, and stop() takes down whatever
is left of it, worker included, even when a test failed half-way.
"""

import atexit
import os
import shutil
import signal
import subprocess
import time

from netutil import free_port, wait_port

DEBIAN_MODULE_DIR = "/usr/lib/proftpd"
DEFAULT_PASSWORD = "secret-Pa55"

# Every trace channel of the module: tests run them at the highest level to
# prove that no secret reaches a trace line.
TRACE_CHANNELS = ("mailoauth", "mailoauth.spool", "mailoauth.worker",
                  "mailoauth.oauth", "mailoauth.tokens", "mailoauth.tokenstore",
                  "mailoauth.registry", "mailoauth.mailauth",
                  "mailoauth.message", "mailoauth.smtp", "mailoauth.notify",
                  "mailoauth.imap", "mailoauth.mime", "mailoauth.names",
                  "mailoauth.ingest", "mailoauth.deposit", "mailoauth.tnef")


def _hash_password(password):
    out = subprocess.run(["openssl", "passwd", "-6", password], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def pids_of(pattern):
    """PIDs whose command line contains pattern (from /proc, no ps parsing)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmdline:
            found.append(int(entry))
    return found


def proc_status(pid):
    """The fields of /proc/PID/status as a dict (empty if pid is gone)."""
    fields = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
    except OSError:
        pass
    return fields


def alive(pid):
    status = proc_status(pid)
    return bool(status) and not status.get("State", "").startswith("Z")


class ProFTPD:
    """One proftpd instance.

    users: {name: uid}; each gets a home directory and the password
    DEFAULT_PASSWORD.  sftp/tls add an SFTP virtual host / FTPS on the main
    port.  extra_conf is appended inside the main server context; global_conf
    is appended at the end of the file (vhosts, <Global> ...).  controls:
    mod_ctrls on, with its socket in the work directory (see ftpdctl()).
    """

    def __init__(self, workdir, module, proftpd="/usr/sbin/proftpd",
                 users=None, pki=None, sftp=False, tls=False,
                 default_root=False, root_revoke=False, engine=True,
                 extra_conf="", global_conf="", trace_level=20,
                 daemon_user="nobody", daemon_group="nogroup",
                 load_module=True, modules=(), controls=False):
        self.dir = workdir
        self.module = module
        # mailoauthd is built beside the module.
        self.program = os.environ.get("MAILOAUTH_PROGRAM") or os.path.join(
            os.path.dirname(os.path.abspath(module)), "mailoauthd")
        self.proftpd = proftpd
        self.users = users or {"alice": 2001}
        self.pki = pki
        self.sftp = sftp
        self.tls = tls
        self.default_root = default_root
        self.root_revoke = root_revoke
        self.engine = engine
        self.extra_conf = extra_conf
        self.global_conf = global_conf
        self.trace_level = trace_level
        self.daemon_user = daemon_user
        self.daemon_group = daemon_group
        self.load_module = load_module
        self.modules = list(modules)
        self.controls = controls
        self.ctrls_socket = os.path.join(workdir, "ctrls.sock")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.sftp_port = free_port() if sftp else None
        self.proc = None
        self.password = DEFAULT_PASSWORD

        self.conf = os.path.join(workdir, "proftpd.conf")
        self.module_dir = os.path.join(workdir, "modules")
        self.state_dir = os.path.join(workdir, "state")
        self.log = os.path.join(workdir, "mailoauth.log")
        self.syslog = os.path.join(workdir, "proftpd.log")
        self.tracelog = os.path.join(workdir, "trace.log")
        self.pidfile = os.path.join(workdir, "proftpd.pid")
        self.stderr_path = os.path.join(workdir, "proftpd.stderr")
        atexit.register(self.stop)

    # -- setup ---------------------------------------------------------
    def home(self, user):
        return os.path.join(self.dir, "home", user)

    def _prepare(self):
        os.makedirs(self.dir, exist_ok=True)
        # The daemon's User must be able to reach the state directory.
        os.chmod(self.dir, 0o755)
        if not os.path.isdir(self.module_dir):
            os.makedirs(self.module_dir)
            os.chmod(self.module_dir, 0o755)
            for name in os.listdir(DEBIAN_MODULE_DIR):
                if name.endswith(".so") and name != "mod_mailoauth.so":
                    os.symlink(os.path.join(DEBIAN_MODULE_DIR, name),
                               os.path.join(self.module_dir, name))
        target = os.path.join(self.module_dir, "mod_mailoauth.so")
        if os.path.lexists(target):
            os.unlink(target)
        os.symlink(self.module, target)

        lines = []
        for user, uid in self.users.items():
            home = self.home(user)
            os.makedirs(home, exist_ok=True)
            os.chown(home, uid, uid)
            os.chmod(home, 0o755)
            lines.append("%s:%s:%d:%d::%s:/bin/sh\n"
                         % (user, _hash_password(self.password), uid, uid,
                            home))
        passwd = os.path.join(self.dir, "ftpd.passwd")
        with open(passwd, "w") as f:
            f.writelines(lines)
        os.chmod(passwd, 0o600)
        if self.sftp:
            self._hostkey = os.path.join(self.dir, "ssh_host_ed25519_key")
            if not os.path.exists(self._hostkey):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                                "-m", "PEM", "-f", self._hostkey], check=True)
            # A client key for OpenSSH's scp/sftp, which cannot be given a
            # password non-interactively; mod_sftp wants RFC 4716 keys.
            self.client_key = os.path.join(self.dir, "client_key")
            if not os.path.exists(self.client_key):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                                "-f", self.client_key], check=True)
            keys_dir = os.path.join(self.dir, "authorized_keys")
            os.makedirs(keys_dir, exist_ok=True)
            rfc4716 = subprocess.run(
                ["ssh-keygen", "-e", "-f", self.client_key + ".pub"],
                check=True, capture_output=True, text=True).stdout
            for user in self.users:
                with open(os.path.join(keys_dir, user), "w") as f:
                    f.write(rfc4716)
        with open(self.conf, "w") as f:
            f.write(self.config_text())

    def config_text(self):
        d = self.dir
        load = list(self.modules)
        if self.load_module:
            load.append("mod_mailoauth.c")
        if self.tls:
            load.insert(0, "mod_tls.c")
        if self.sftp:
            load.insert(0, "mod_sftp.c")
        c = []
        c.append("ModulePath %s\n" % self.module_dir)
        c.append("ModuleControlsACLs insmod,rmmod allow user root\n")
        for m in load:
            c.append("LoadModule %s\n" % m)
        c.append("""
ServerType standalone
ServerName "mod_mailoauth test server"
DefaultServer on
DefaultAddress {host}
SocketBindTight on
Port {port}
User {user}
Group {group}
PidFile {d}/proftpd.pid
ScoreboardFile {d}/proftpd.scoreboard
SystemLog {d}/proftpd.log
TransferLog {d}/xferlog
WtmpLog off
UseReverseDNS off
DelayEngine off
AuthUserFile {d}/ftpd.passwd
AuthOrder mod_auth_file.c
RequireValidShell off
AllowStoreRestart on
AllowOverwrite on
Umask 022
MaxInstances 200
TraceLog {d}/trace.log
Trace {trace}
<Limit LOGIN>
  AllowAll
</Limit>
""".format(host=self.host, port=self.port, user=self.daemon_user,
           group=self.daemon_group, d=d,
           trace=" ".join("%s:%d" % (ch, self.trace_level)
                          for ch in TRACE_CHANNELS)))
        c.append("<IfModule mod_mailoauth.c>\n")
        if self.engine:
            c.append("MailOAuthEngine on\n")
        c.append("MailOAuthLog %s\n" % self.log)
        c.append("MailOAuthStateDir %s\n" % self.state_dir)
        c.append("MailOAuthProgram %s\n" % self.program)
        c.append("</IfModule>\n")
        if self.default_root:
            c.append("DefaultRoot ~\n")
        if self.root_revoke:
            c.append("RootRevoke on\n")
        if self.tls:
            c.append("""<IfModule mod_tls.c>
  TLSEngine on
  TLSLog {d}/tls.log
  TLSProtocol TLSv1.2 TLSv1.3
  TLSECCertificateFile {cert}
  TLSECCertificateKeyFile {key}
  TLSRequired off
  TLSOptions NoSessionReuseRequired
</IfModule>
""".format(d=d, cert=self.pki.cert, key=self.pki.key))
        if self.controls:
            c.append("""<IfModule mod_ctrls.c>
  ControlsEngine on
  ControlsSocket {sock}
  ControlsLog {d}/controls.log
  ControlsACLs all allow user root
</IfModule>
""".format(sock=self.ctrls_socket, d=d))
        c.append(self.extra_conf + "\n")
        if self.sftp:
            c.append("""<VirtualHost {host}>
  Port {port}
  ServerName "mod_mailoauth sftp"
  SFTPEngine on
  SFTPLog {d}/sftp.log
  SFTPHostKey {key}
  SFTPAuthMethods publickey password
  SFTPAuthorizedUserKeys file:{d}/authorized_keys/%u
  AuthUserFile {d}/ftpd.passwd
  AuthOrder mod_auth_file.c
  RequireValidShell off
  AllowOverwrite on
  AllowStoreRestart on
  <IfModule mod_mailoauth.c>
    MailOAuthEngine {engine}
  </IfModule>
{dr}{rr}</VirtualHost>
""".format(host=self.host, port=self.sftp_port, d=d, key=self._hostkey,
           engine="on" if self.engine else "off",
           dr="  DefaultRoot ~\n" if self.default_root else "",
           rr="  RootRevoke on\n" if self.root_revoke else ""))
        c.append(self.global_conf + "\n")
        return "".join(c)

    # -- lifecycle -----------------------------------------------------
    def syntax_check(self):
        """Runs proftpd -t on the config; returns the CompletedProcess."""
        self._prepare()
        return subprocess.run([self.proftpd, "-t", "-c", self.conf],
                              capture_output=True, text=True, timeout=30)

    def start(self, wait_worker=True):
        self._prepare()
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [self.proftpd, "-n", "-q", "-c", self.conf],
            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        stderr.close()
        try:
            self._wait_listening(self.port)
            if self.sftp:
                self._wait_listening(self.sftp_port)
            if wait_worker and self.engine and self.load_module:
                self.wait_log("worker started", timeout=10)
        except Exception:
            self.stop()
            raise AssertionError("proftpd did not start:\n" + self.diagnostics())
        return self

    def _wait_listening(self, port, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("proftpd exited with %s" % self.proc.returncode)
            try:
                wait_port(self.host, port, timeout=0.2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _descends(self, pid, master=None):
        """Whether pid is a child or grandchild of the master (the worker's
        parent is the supervisor the master started)."""
        master = str(master or self.pid)
        ppid = proc_status(pid).get("PPid")
        return ppid == master or (
            ppid is not None and ppid.isdigit() and
            proc_status(int(ppid)).get("PPid") == master)

    def supervisor_pids(self):
        """Live mod_mailoauth supervisors of this instance."""
        return [p for p in pids_of("mailoauth supervisor")
                if proc_status(p).get("PPid") == str(self.pid) and alive(p)]

    def worker_pids(self):
        """Live mod_mailoauth worker processes of this instance."""
        return [p for p in pids_of("mailoauth worker")
                if self._descends(p) and alive(p)]

    def ssh_options(self):
        return ["-i", self.client_key, "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]

    def restart(self):
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, timeout=10):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        workers = [p for p in pids_of("mailoauth ")
                   if self._descends(p, proc.pid)]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of this instance (sessions, a stuck worker) is
        # in its own process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    # -- observation ---------------------------------------------------
    def ftpdctl(self, *args, timeout=30):
        """Runs ftpdctl against this server; returns (exit code, output
        without ftpdctl's "ftpdctl: " prefixes)."""
        r = subprocess.run(["ftpdctl", "-s", self.ctrls_socket] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        out = "\n".join(line[len("ftpdctl: "):] if
                        line.startswith("ftpdctl: ") else line
                        for line in (r.stdout + r.stderr).splitlines())
        return r.returncode, out

    def read(self, path):
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_text(self):
        return self.read(self.log)

    def wait_log(self, needle, count=1, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if text.count(needle) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(
                    "%r seen %d/%d times in MailOAuthLog after %.0fs:\n%s"
                    % (needle, text.count(needle), count, timeout, text))
            time.sleep(0.05)

    def diagnostics(self):
        parts = []
        for name in (self.stderr_path, self.syslog, self.log, self.tracelog):
            text = self.read(name)
            if text:
                parts.append("== %s\n%s" % (name, text[-4000:]))
        return "\n".join(parts)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
