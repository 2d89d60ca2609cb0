"""Real Dovecot and Postfix, run privately, shaped like Exchange Online.

The integration tests talk to the same programs production talks to, minus
Microsoft: Dovecot plays outlook.office365.com (IMAPS, XOAUTH2 checked by
token introspection) and Postfix plays smtp.office365.com (submission with
STARTTLS required before AUTH, SASL through Dovecot, delivery over LMTP into
Dovecot so a sent message can be read back).

Layout under the work directory (both servers are private instances: their
own configuration, sockets, queue, logs and mail; nothing under /etc/dovecot,
/etc/postfix or /var is read or written, and systemd is never involved):

    dovecot/dovecot.conf        generated; `dovecot -F -c` runs it
    dovecot/oauth2.conf.ext     passdb oauth2: introspection settings
    dovecot/users               passwd-file userdb (one line per user)
    dovecot/tls/                copies of the test certificate, key and CA
    dovecot/run/                base_dir: auth, lmtp and doveadm sockets
    dovecot/state/              state_dir
    dovecot/mail/<user>/Maildir mail, owned by the mail uid
    dovecot/dovecot.log         everything Dovecot logs
    postfix/etc/                config_directory: main.cf, master.cf, maps
    postfix/queue/              queue_directory (Postfix builds it itself)
    postfix/data/               data_directory
    postfix/postfix.log         maillog_file, written by postlogd

Listeners (all on loopback; ports picked free at construction):

    Dovecot  127.0.0.1:imaps_port   IMAP with implicit TLS (like port 993)
             127.0.0.2:imap_port    IMAP with STARTTLS (like port 143)
             127.0.0.1:lmtp_port    LMTP, also the unix socket lmtp_socket
             auth_socket            SASL for Postfix (smtpd_sasl_type=dovecot)
    Postfix  127.0.0.1:smtp_port    submission: STARTTLS, then AUTH (like 587)
             127.0.0.2:smtp_plain_port  optional: no STARTTLS at all, AUTH
                                    offered (and accepted) in clear text, so
                                    a client can be shown to refuse it; the
                                    session summary in logs() ("disconnect
                                    from ... ehlo=1 quit=1") lists auth=N
                                    only if the client sent AUTH

Pitfalls, found the hard way:

* Run as root. Postfix must be; Dovecot could run unprivileged but then every
  service user must be the caller, which this harness does not attempt.
* The work directory must be traversable by other users (0755 on it and every
  parent): Dovecot's mail processes run as the `mail` user, its auth process
  as `dovecot`, and Postfix's daemons as `postfix`, all reaching into it.
  pytest's tmp_path lives under /tmp/pytest-of-root (mode 0700), so the
  fixtures make their own directory with tempfile.mkdtemp() instead.
  check_traversable() fails early with a clear message.
* Dovecot treats a client whose IP equals the server's IP as "secured": on
  127.0.0.1 it happily accepts AUTH before STARTTLS. The STARTTLS listeners
  whose TLS enforcement a test relies on therefore listen on 127.0.0.2; a
  client connecting there still comes from 127.0.0.1, so it is not secured.
  (IMAPS on 127.0.0.1 is fine: it is TLS from the first byte. Postfix
  enforces STARTTLS itself, so its submission port stays on 127.0.0.1.)
* Failed logins must be fast, which takes three settings: the anvil
  "auth penalty" socket disabled (listener mode 0: Dovecot never creates
  it, so the auth process runs without penalties); auth_failure_delay = 0;
  and the passdb extra field `nodelay`, because Dovecot 2.3 still queues a
  failure for its 500 ms failure timer otherwise. A failing passdb rolls back
  the fields it set, so `nodelay` comes from a first static passdb that
  authenticates nobody (`noauthenticate`, i.e. go on to the oauth2 passdb).
  A failed XOAUTH2 login then answers in milliseconds, after the usual
  base64 JSON challenge {"status":"401","schemes":"bearer","scope":"mail"}.
* The oauth2 passdb compares the introspected `username` with the user named
  in XOAUTH2/OAUTHBEARER; a token for someone else fails like Exchange does.
* An XOAUTH2 response carrying a Microsoft-sized token (1,500-2,500 chars)
  is about 2,100-3,400 base64 chars. Stock Postfix (line_length_limit 2048)
  cuts an initial response sent on the AUTH command line and answers
  "535 5.7.8 ... Invalid base64 data in initial response", yet reads the
  same response whole when it is sent after an empty 334. Exchange Online
  accepts the long AUTH line, so this harness raises line_length_limit to
  16384 by default; pass line_length_limit=2048 for stock Postfix behaviour
  (to test a client's fallback to sending the response after the 334).
  (curl sends SMTP responses after the 334 unless CURLOPT_SASL_IR is set;
  for IMAP it uses SASL-IR, which Dovecot accepts at these sizes.)
* Postfix with its own config_directory: `postfix -c DIR start` works as root
  without listing DIR in /etc/postfix's alternate_config_directories (that
  check only applies to non-root callers such as sendmail/postdrop, which
  the tests never use). `postfix start` runs post-install create-missing,
  which builds queue_directory and data_directory from the system
  postfix-files. Every service runs unchrooted (chroot column `n`) so the
  absolute paths to Dovecot's sockets work. Listeners name their address in
  master.cf (127.0.0.2:port), which Postfix binds although inet_interfaces
  only names 127.0.0.1 (inet_interfaces cannot name 127.0.0.2: it is not an
  interface address, only part of lo's 127.0.0.0/8).
* Logging: no syslog is assumed. Postfix writes maillog_file through its
  postlogd service (the file must be under maillog_file_prefixes), Dovecot
  writes log_path.
* Stopping: Postfix via `postfix -c DIR stop`, then any process still
  working in this instance's queue directory is killed; Dovecot via SIGTERM
  to its master and, a quarter second later, SIGKILL to its process group
  (a graceful shutdown spends a full second waiting for children). Both
  stop() methods are idempotent and registered with atexit.
"""

import atexit
import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import time

from netutil import free_port, wait_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def check_traversable(path):
    """Raise if some directory above path is closed to other users."""
    path = os.path.abspath(path)
    while True:
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            raise RuntimeError(
                "%s is not traversable by other users (mode %o): Dovecot and "
                "Postfix drop privileges and cannot reach their files; use a "
                "work directory such as tempfile.mkdtemp() made 0755"
                % (path, stat.S_IMODE(mode)))
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _pid_alive(pid):
    """True while pid runs; a zombie waiting for its reaper counts as gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_for_log(read, pattern, timeout):
    """Lines of read() matching regex pattern, waiting until there is one."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        lines = [l for l in read().splitlines() if rx.search(l)]
        if lines:
            return lines
        if time.monotonic() > deadline:
            raise TimeoutError("no log line matches %r:\n%s"
                               % (pattern, read()[-3000:]))
        time.sleep(0.05)


class Dovecot:
    """A private Dovecot 2.3: IMAPS/IMAP+STARTTLS with OAuth2, LMTP, SASL.

    users: mailbox addresses known to the userdb; LMTP (and so Postfix)
    rejects anyone else with 550 like an unknown recipient. Empty: every
    address is a mailbox. Whether a user can log in is decided only by the
    token service at introspection_url.
    mechanisms: SASL mechanisms offered (Exchange Online offers XOAUTH2
    only; OAUTHBEARER is there by default so clients can be checked to pick
    the one they were told to).
    """

    host = "127.0.0.1"
    imap_host = "127.0.0.2"

    def __init__(self, workdir, pki, introspection_url, users=(),
                 mechanisms=("xoauth2", "oauthbearer"), debug=False):
        self.dir = os.path.join(os.path.abspath(workdir), "dovecot")
        self.pki = pki
        self.introspection_url = introspection_url
        self.users = [u.lower() for u in users]
        self.mechanisms = list(mechanisms)
        self.debug = debug
        self.imaps_port = free_port(self.host)
        self.imap_port = free_port(self.imap_host)
        self.lmtp_port = free_port(self.host)
        self.config = os.path.join(self.dir, "dovecot.conf")
        self.run_dir = os.path.join(self.dir, "run")
        self.mail_dir = os.path.join(self.dir, "mail")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.lmtp_socket = os.path.join(self.run_dir, "lmtp")
        self.auth_socket = os.path.join(self.run_dir, "auth-postfix")
        self.mail_user = "mail"   # uid/gid owning the Maildirs
        self.proc = None

    # -- configuration ---------------------------------------------------

    def _write_config(self):
        tls = os.path.join(self.dir, "tls")
        state = os.path.join(self.dir, "state")
        for d in (self.dir, tls, self.run_dir, state):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        # Copies, so the unprivileged auth process can read the CA however
        # the PKI directory's parents are protected.
        cert = os.path.join(tls, "server-chain.pem")
        key = os.path.join(tls, "server.key")
        ca = os.path.join(tls, "ca.pem")
        shutil.copyfile(self.pki.chain, cert)
        shutil.copyfile(self.pki.key, key)
        shutil.copyfile(self.pki.ca_cert, ca)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        os.chmod(ca, 0o644)

        pw = pwd.getpwnam(self.mail_user)
        os.makedirs(self.mail_dir, exist_ok=True)
        os.chown(self.mail_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.mail_dir, 0o755)

        # passwd-file userdb: user:password:uid:gid:gecos:home:shell:extra
        users = os.path.join(self.dir, "users")
        _write(users, "".join(
            "%s::%d:%d::%s::\n" % (u, pw.pw_uid, pw.pw_gid,
                                   os.path.join(self.mail_dir, u))
            for u in self.users))
        if self.users:
            userdb = "driver = passwd-file\n  args = username_format=%Lu " + \
                users
        else:
            userdb = ("driver = static\n  args = uid=%d gid=%d home=%s/%%Lu "
                      "allow_all_users=yes" % (pw.pw_uid, pw.pw_gid,
                                               self.mail_dir))

        oauth2 = os.path.join(self.dir, "oauth2.conf.ext")
        _write(oauth2, """\
# passdb oauth2: every token is checked by RFC 7662 introspection.
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
tls_ca_cert_file = {ca}
timeout_msecs = 10000
debug = {debug}
""".format(url=self.introspection_url, ca=ca,
           debug="yes" if self.debug else "no"))

        dh = "/usr/share/dovecot/dh.pem"
        _write(self.config, """\
# Private test instance; see t/lib/mailservers.py.
instance_name = mailoauth-{imaps_port}
base_dir = {run}
state_dir = {state}
protocols = imap lmtp
listen = {host}
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
auth_verbose = yes
auth_debug = {debug}
mail_debug = {debug}
verbose_ssl = {debug}

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}
ssl_min_protocol = TLSv1.2
# Never accept a token over an unencrypted connection (see the docstring
# about clients on the server's own IP).
disable_plaintext_auth = yes

auth_mechanisms = {mechs}
# Failed logins answer at once: no delay, no anvil penalty (below).
auth_failure_delay = 0
auth_cache_size = 0

first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir

# Exchange-like folder names and hierarchy separator.
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox "Sent Items" {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox "Deleted Items" {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox "Junk Email" {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
}}

# Failed logins are queued and released by a 500 ms timer even with
# auth_failure_delay = 0; only the "nodelay" extra field skips the queue.
# A failing passdb rolls back the fields it set, so nodelay comes from this
# first passdb, which authenticates nobody (noauthenticate: on to the next).
passdb {{
  driver = static
  args = nopassword=y noauthenticate=y nodelay=y
}}
passdb {{
  driver = oauth2
  args = {oauth2}
}}
userdb {{
  {userdb}
}}

service anvil {{
  # Mode 0: the socket is not created, so auth runs without penalties.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {imap_host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
service auth {{
  # For Postfix's smtpd (smtpd_sasl_type = dovecot).
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
""".format(imaps_port=self.imaps_port, imap_port=self.imap_port,
           lmtp_port=self.lmtp_port, host=self.host, imap_host=self.imap_host,
           run=self.run_dir, state=state,
           log=self.log_path, debug="yes" if self.debug else "no",
           cert=cert, key=key,
           ssl_dh=("ssl_dh = <%s" % dh) if os.path.exists(dh) else "",
           mechs=" ".join(self.mechanisms), uid=pw.pw_uid, gid=pw.pw_gid,
           oauth2=oauth2, userdb=userdb))

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        if self.proc is not None:
            return self
        check_traversable(os.path.dirname(self.dir))
        self._write_config()
        stderr = open(os.path.join(self.dir, "stderr.log"), "ab")
        atexit.register(self.stop)
        # -F: stay in the foreground, so Popen holds the master's pid; a new
        # session gives the whole instance one process group to kill.
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", self.config], stdin=subprocess.DEVNULL,
            stdout=stderr, stderr=stderr, start_new_session=True)
        stderr.close()
        try:
            for port, host in ((self.imaps_port, self.host),
                               (self.imap_port, self.imap_host),
                               (self.lmtp_port, self.host)):
                self._wait(lambda: wait_port(host, port, timeout=0.2))
            self._wait(lambda: self._need(self.auth_socket))
        except Exception:
            self.stop()
            raise
        return self

    def _need(self, path):
        if not os.path.exists(path):
            raise TimeoutError(path)

    def _wait(self, probe, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited with %d:\n%s"
                                   % (self.proc.returncode, self.logs()))
            try:
                return probe()
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("dovecot did not come up:\n%s"
                                       % self.logs())
                time.sleep(0.05)

    def stop(self):
        proc, self.proc = self.proc, None
        atexit.unregister(self.stop)
        if proc is None:
            return
        pgid = proc.pid   # leader of its own session/process group
        if proc.poll() is None:
            # SIGTERM makes the master tell every child to go, then it waits
            # a second for them; nothing here needs that second.
            proc.terminate()
            try:
                proc.wait(0.25)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    # -- mail access without OAuth -----------------------------------------

    def doveadm(self, *args, input=None, check=True):
        """Run doveadm against this instance; returns CompletedProcess."""
        r = subprocess.run([DOVEADM, "-c", self.config] + list(args),
                           input=input, capture_output=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError("doveadm %s failed (%d): %s"
                               % (" ".join(args), r.returncode,
                                  r.stderr.decode(errors="replace")))
        return r

    def deliver(self, user, message, mailbox="INBOX"):
        """Store one RFC 5322 message (bytes) in the user's mailbox."""
        if isinstance(message, str):
            message = message.encode()
        self.doveadm("save", "-u", user, "-m", mailbox, input=message)

    def lmtp(self):
        """An smtplib.LMTP client connected to the LMTP socket."""
        return smtplib.LMTP(self.lmtp_socket)

    def messages(self, user, mailbox="INBOX"):
        """Raw messages (bytes, LF line ends as stored) in UID order."""
        found = self.doveadm("search", "-u", user, "mailbox", mailbox, "all")
        uids = [line.split()[1].decode()
                for line in found.stdout.splitlines()]   # "<guid> <uid>"
        return [self._fetch_text(user, mailbox, uid) for uid in uids]

    def _fetch_text(self, user, mailbox, uid):
        # The flow formatter prints "text=<message>" with nothing escaped
        # when a single field is asked for; strip the prefix and the final
        # newline doveadm adds.
        raw = self.doveadm("-f", "flow", "fetch", "-u", user, "text",
                           "mailbox", mailbox, "uid", uid).stdout
        assert raw.startswith(b"text="), raw[:80]
        raw = raw[len(b"text="):]
        return raw[:-1] if raw.endswith(b"\n") else raw

    def wait_for_messages(self, user, n, timeout=10.0, mailbox="INBOX"):
        """Wait until the mailbox holds at least n messages; return them."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages(user, mailbox)
            if len(msgs) >= n:
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError("%s/%s has %d messages, wanted %d\n%s"
                                   % (user, mailbox, len(msgs), n,
                                      self.logs()))
            time.sleep(0.1)

    def wait_for_message(self, user, contains, timeout=10.0, mailbox="INBOX"):
        """Wait for a message containing bytes `contains`; return it."""
        if isinstance(contains, str):
            contains = contains.encode()
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages(user, mailbox) if contains in m]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise TimeoutError("no message with %r in %s/%s\n%s"
                                   % (contains, user, mailbox, self.logs()))
            time.sleep(0.1)

    def logs(self):
        return _read(os.path.join(self.dir, "stderr.log")) + \
            _read(self.log_path)

    def wait_for_log(self, pattern, timeout=5.0):
        """Log lines matching regex pattern (waits for at least one)."""
        return _wait_for_log(self.logs, pattern, timeout)


# master.cf entries besides the smtpd listeners: the stock set, unchrooted.
_POSTFIX_SERVICES = """\
pickup     unix  n  -  n  60    1  pickup
cleanup    unix  n  -  n  -     0  cleanup
qmgr       unix  n  -  n  300   1  qmgr
tlsmgr     unix  -  -  n  1000? 1  tlsmgr
rewrite    unix  -  -  n  -     -  trivial-rewrite
bounce     unix  -  -  n  -     0  bounce
defer      unix  -  -  n  -     0  bounce
trace      unix  -  -  n  -     0  bounce
verify     unix  -  -  n  -     1  verify
flush      unix  n  -  n  1000? 0  flush
proxymap   unix  -  -  n  -     -  proxymap
proxywrite unix  -  -  n  -     1  proxymap
smtp       unix  -  -  n  -     -  smtp
relay      unix  -  -  n  -     -  smtp
showq      unix  n  -  n  -     -  showq
error      unix  -  -  n  -     -  error
retry      unix  -  -  n  -     -  error
discard    unix  -  -  n  -     -  discard
lmtp       unix  -  -  n  -     -  lmtp
anvil      unix  -  -  n  -     1  anvil
scache     unix  -  -  n  -     1  scache
postlog    unix-dgram n - n -   1  postlogd
"""


class Postfix:
    """A private Postfix 3.7 instance shaped like smtp.office365.com:587.

    Mail for `domains` goes over LMTP into `dovecot`; RCPT TO anywhere else
    gets 550 5.4.1, and to a mailbox Dovecot does not know (when it was
    given users) 550 5.1.1. Nothing ever leaves the machine. MAIL FROM needs
    AUTH (530 5.7.57 otherwise, as Exchange says), and AUTH needs STARTTLS.

    plain_listener: also run smtp_plain_port on 127.0.0.2 with no STARTTLS
    and AUTH offered in clear text, for testing that a client refuses it.
    check_sender: MAIL FROM must be the authenticated mailbox (Exchange's
    SendAsDenied; Postfix answers 553 5.7.1 "not owned by user").
    line_length_limit: see the module docstring (Postfix's default is 2048).
    mechanisms: SASL mechanisms to offer out of Dovecot's, e.g. ["xoauth2"]
    for exactly what Exchange Online offers; default: all of Dovecot's.
    """

    host = "127.0.0.1"
    plain_host = "127.0.0.2"

    def __init__(self, workdir, pki, dovecot, domains=("contoso.test",),
                 plain_listener=False, check_sender=True,
                 line_length_limit=16384, mechanisms=None):
        self.dir = os.path.join(os.path.abspath(workdir), "postfix")
        self.pki = pki
        self.dovecot = dovecot
        self.domains = list(domains)
        self.plain_listener = plain_listener
        self.check_sender = check_sender
        self.line_length_limit = line_length_limit
        self.mechanisms = mechanisms
        self.smtp_port = free_port(self.host)
        self.smtp_plain_port = (free_port(self.plain_host)
                                if plain_listener else None)
        self.config_dir = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "queue")
        self.log_path = os.path.join(self.dir, "postfix.log")
        self.started = False

    def _write_config(self):
        # The postfix command chdirs to queue_directory before anything else,
        # so it must exist; `postfix start` fills it in (post-install
        # create-missing).
        for d in (self.dir, self.config_dir, self.queue_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        tls = os.path.join(self.config_dir, "tls")
        os.makedirs(tls, exist_ok=True)
        chain = os.path.join(tls, "server-chain.pem")
        key = os.path.join(tls, "server.key")
        shutil.copyfile(self.pki.chain, chain)
        shutil.copyfile(self.pki.key, key)
        os.chmod(chain, 0o644)
        os.chmod(key, 0o600)

        senders = os.path.join(self.config_dir, "senders.regexp")
        # Each address is owned by the login of the same name.
        _write(senders, "/^(.+)$/ ${1}\n")
        vmailbox = os.path.join(self.config_dir, "vmailbox")
        _write(vmailbox, "".join("%s ok\n" % u for u in self.dovecot.users))

        restrict = ["permit_sasl_authenticated",
                    "check_client_access static:{530 5.7.57 Client not "
                    "authenticated to send mail}"]
        if self.check_sender:
            restrict.insert(0, "reject_authenticated_sender_login_mismatch")
        main = """\
# Private test instance; see t/lib/mailservers.py.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {dir}

myhostname = smtp.{domain}
mydomain = {domain}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
biff = no
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = yes
# Exchange Online's default limit is 35 MB.
message_size_limit = 36700160
line_length_limit = {line_length_limit}

# Every configured domain is a Dovecot domain reached over LMTP; nothing
# ever leaves the machine (the error transport makes smtpd refuse other
# recipients at RCPT TO).
virtual_mailbox_domains = {domains}
virtual_mailbox_maps = {vmaps}
virtual_transport = lmtp:unix:{lmtp}
default_transport = error:5.4.1 this test server delivers only to {domains}
relay_transport = $default_transport
local_transport = $default_transport

smtpd_banner = $myhostname ESMTP test service ready
smtpd_tls_chain_files = {key}, {chain}
smtpd_tls_loglevel = 1
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth}
smtpd_sasl_authenticated_header = no
smtpd_sasl_mechanism_filter = {mech_filter}
smtpd_sender_login_maps = regexp:{senders}
# Like Exchange: no MAIL FROM without AUTH (530 5.7.57), rejected at once.
smtpd_delay_reject = no
smtpd_sender_restrictions = {restrict}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
""".format(queue=self.queue_dir, data=os.path.join(self.dir, "data"),
           log=self.log_path, dir=self.dir, domain=self.domains[0],
           domains=", ".join(self.domains),
           vmaps=("texthash:" + vmailbox) if self.dovecot.users else "",
           lmtp=self.dovecot.lmtp_socket, key=key, chain=chain,
           auth=self.dovecot.auth_socket, senders=senders,
           line_length_limit=self.line_length_limit,
           mech_filter=(", ".join(self.mechanisms) if self.mechanisms
                        else "!external, static:rest"),
           restrict=", ".join(restrict))
        _write(os.path.join(self.config_dir, "main.cf"), main)

        master = """\
{host}:{port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_auth_only=yes
  -o smtpd_sasl_auth_enable=yes
""".format(host=self.host, port=self.smtp_port)
        if self.plain_listener:
            master += """\
{host}:{port} inet n - n - - smtpd
  -o syslog_name=postfix/plain
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
  -o smtpd_sasl_auth_enable=yes
""".format(host=self.plain_host, port=self.smtp_plain_port)
        _write(os.path.join(self.config_dir, "master.cf"),
               master + _POSTFIX_SERVICES)
        # Postfix re-reads a main.cf modified in the last couple of seconds
        # until it is old enough (an editor might still be writing it), which
        # costs ~2s per command on a fresh instance. Backdate the files.
        past = time.time() - 60
        for name in os.listdir(self.config_dir):
            path = os.path.join(self.config_dir, name)
            if os.path.isfile(path):
                os.utime(path, (past, past))

    def _postfix(self, *args, check=True):
        # Output goes to a file, not a pipe: the master daemon inherits the
        # descriptors and holds a pipe open for seconds after `start`.
        out_path = os.path.join(self.dir, "postfix-command.log")
        with open(out_path, "w+") as out:
            r = subprocess.run([POSTFIX, "-c", self.config_dir] + list(args),
                               stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, timeout=60)
            out.seek(0)
            output = out.read()
        if check and r.returncode != 0:
            raise RuntimeError("postfix %s failed (%d):\n%s\n%s"
                               % (" ".join(args), r.returncode, output,
                                  self.logs()))
        return output

    def start(self):
        if self.started:
            return self
        if os.geteuid() != 0:
            raise RuntimeError("Postfix can only be started as root")
        check_traversable(os.path.dirname(self.dir))
        self._write_config()
        atexit.register(self.stop)
        self.started = True
        try:
            self._postfix("start")
            ports = [(self.host, self.smtp_port)]
            if self.plain_listener:
                ports.append((self.plain_host, self.smtp_plain_port))
            for host, port in ports:
                wait_port(host, port, timeout=15)
        except Exception:
            self.stop()
            raise
        return self

    def _master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _instance_pids(self):
        """Processes of this instance: Postfix daemons chdir to the queue."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink("/proc/%s/cwd" % entry)
            except OSError:
                continue
            if cwd == self.queue_dir or cwd.startswith(self.queue_dir + "/"):
                pids.append(int(entry))
        return pids

    def stop(self):
        if not self.started:
            return
        self.started = False
        atexit.unregister(self.stop)
        master = self._master_pid()
        self._postfix("stop", check=False)
        pids = self._instance_pids() + ([master] if master else [])
        if not _wait_gone(pids, 10):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_gone(pids, 5)

    def smtp(self, plain=False, timeout=10):
        """An smtplib.SMTP connected to the submission (or plain) port."""
        if plain:
            return smtplib.SMTP(self.plain_host, self.smtp_plain_port,
                                timeout=timeout)
        return smtplib.SMTP(self.host, self.smtp_port, timeout=timeout)

    def queue(self):
        """`postqueue -p` output for this instance."""
        return subprocess.run(["postqueue", "-c", self.config_dir, "-p"],
                              capture_output=True, text=True).stdout

    def logs(self):
        return _read(self.log_path)

    def wait_for_log(self, pattern, timeout=5.0):
        """Log lines matching regex pattern (waits for at least one).

        postlogd writes asynchronously; a session's summary line, e.g.
        "postfix/plain/smtpd[..]: disconnect from ... ehlo=1 quit=1
        commands=2", appears only after the client has gone.
        """
        return _wait_for_log(self.logs, pattern, timeout)
