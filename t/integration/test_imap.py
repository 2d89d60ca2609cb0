"""The IMAP session of mail ingestion (mod_mailoauth/lib/mail/imap.c) against a real
Dovecot with XOAUTH2 checked by the token stand-in.

imap.c is C: t/tools/imapctl.c drives one session, reading operations on
stdin and answering each with a JSON line, so a test can act on the server
(deliver, kick, change flags) between two operations of one session and see
the effects with doveadm. The driver is built here from the same units the
module is built from.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from mailservers import Dovecot
from signin import sign_in
from tokensvc_fixtures import DEFAULT_REDIRECT_URI

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ALICE = "alice@contoso.test"
CAROL = "carol@contoso.test"


# -- the driver -----------------------------------------------------------

@pytest.fixture(scope="session")
def imapctl(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("imapctl") / "imapctl")
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libcurl", "openssl", "jansson"],
        check=True, capture_output=True, text=True).stdout.split()
    units = ["mail/imap.c", "mail/imapresp.c", "mail/imaputf7.c",
             "mail/mailauth.c", "util/trace.c", "util/jsonwrap.c",
             "util/yield.c"]
    cmd = [os.environ.get("CC", "cc"), "-std=gnu99", "-D_GNU_SOURCE",
           "-Wall", "-Wextra", "-O2",
           "-I" + os.path.join(TOP, "mod_mailoauth", "include"), "-o", out,
           os.path.join(TOP, "t", "tools", "imapctl.c")] + \
        [os.path.join(TOP, "mod_mailoauth", "lib", u) for u in units] + flags
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, "building imapctl failed:\n%s\n%s" % (
        " ".join(cmd), r.stderr)
    return out


class Session:
    """One imapctl process: one mailoauth_imap session."""

    def __init__(self, binary, url, user, ca, token, workdir, extra=()):
        self.token_file = os.path.join(workdir, "token-%s" %
                                       secrets.token_hex(4))
        self.set_token_file(token)
        self.stderr_path = os.path.join(workdir, "imapctl.stderr")
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "--url", url, "--user", user, "--ca", ca,
             "--token-file", self.token_file, "--trace"] + list(extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True)

    def set_token_file(self, token):
        with open(self.token_file, "w") as f:
            f.write(token)
        os.chmod(self.token_file, 0o600)

    def op(self, *fields):
        self.proc.stdin.write("\t".join(str(f) for f in fields) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "imapctl died (rc %s)" % self.proc.poll()
        return json.loads(line)

    def ok(self, *fields):
        r = self.op(*fields)
        assert r["status"] == "ok", r
        return r

    def use_token(self, token):
        self.set_token_file(token)
        return self.op("token", self.token_file)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path)


@pytest.fixture
def tokens(tokensvc, tokensvc_app):
    """tokens(user) -> a fresh access token the stand-in will vouch for."""
    def get(user=ALICE):
        if user != ALICE:
            tokensvc.add_user(user)
        return sign_in(tokensvc, tokensvc_app, user,
                       DEFAULT_REDIRECT_URI)["access_token"]
    return get


@pytest.fixture
def folder(dovecot, request):
    """A fresh folder of alice's for this test (names with a space)."""
    name = "T %s %s" % (request.node.name[:30].replace("[", "-")
                        .replace("]", ""), secrets.token_hex(3))
    dovecot.doveadm("mailbox", "create", "-u", ALICE, name)
    return name


@pytest.fixture
def session(imapctl, dovecot, pki, tokens, workdir):
    """session(folder, user=ALICE, token=None, url=None) -> Session."""
    made = []

    def factory(folder="INBOX", user=ALICE, token=None, url=None,
                extra=()):
        url = url or "imaps://%s:%d/%s" % (
            dovecot.host, dovecot.imaps_port, quote_path(folder))
        s = Session(imapctl, url, user, pki.ca_cert,
                    token if token is not None else tokens(user), workdir,
                    extra)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def quote_path(folder):
    from urllib.parse import quote
    return quote(folder, safe="/")


def message(subject, body="Hello.\r\n", extra=b""):
    return (("From: sender@example.com\r\nTo: alice@contoso.test\r\n"
             "Subject: %s\r\nMessage-ID: <%s@example.com>\r\n\r\n%s")
            % (subject, secrets.token_hex(8), body)).encode() + extra


def _status(text):
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def flags(dovecot, user, folder, uid):
    r = dovecot.doveadm("-f", "flow", "fetch", "-u", user, "flags",
                        "mailbox", folder, "uid", str(uid))
    return r.stdout.decode().strip()


def logins(dovecot, user=ALICE):
    return len([l for l in dovecot.logs().splitlines()
                if "Login: user=<%s>" % user in l])


def wait_logins(dovecot, n, user=ALICE, timeout=5.0):
    deadline = time.monotonic() + timeout
    while logins(dovecot, user) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return logins(dovecot, user)


# -- select and search ------------------------------------------------------

def test_select_reports_uidvalidity_uidnext_exists(dovecot, folder, session):
    for i in range(3):
        dovecot.deliver(ALICE, message("m%d" % i), mailbox=folder)
    want = _status(dovecot.doveadm("mailbox", "status", "-u", ALICE,
                                   "messages uidnext uidvalidity",
                                   folder).stdout.decode())
    s = session(folder)
    r = s.ok("select")
    assert r["uidvalidity"] == want["uidvalidity"]
    assert r["uidnext"] == want["uidnext"] == 4
    assert r["exists"] == 3
    assert r["read_only"] is False

    # New mail shows at the next select.
    dovecot.deliver(ALICE, message("late"), mailbox=folder)
    r = s.ok("select")
    assert (r["uidnext"], r["exists"]) == (5, 4)


def test_search_from_a_uid(dovecot, folder, session):
    for i in range(5):
        dovecot.deliver(ALICE, message("m%d" % i), mailbox=folder)
    s = session(folder)
    s.ok("select")
    assert s.ok("search", 1)["uids"] == [1, 2, 3, 4, 5]
    assert s.ok("search", 3)["uids"] == [3, 4, 5]
    assert s.ok("search", 2, 2)["uids"] == [2, 3]

    # Nothing new since the select: answered without asking the server.
    before = s.ok("search", 5)["requests"]
    r = s.ok("search", 6)
    assert r["uids"] == [] and r["requests"] == before

    # Only unseen ones (another client's change shows from the next select).
    dovecot.doveadm("flags", "add", "-u", ALICE, "\\Seen", "mailbox", folder,
                    "uid", "4")
    s.ok("select")
    assert s.ok("search", 3, "unseen")["uids"] == [3, 5]


def test_search_never_returns_a_uid_below_from(dovecot, folder, session):
    # "UID SEARCH UID 5:*" matches the highest UID (4) when no UID >= 5
    # exists: the highest message was expunged, so UIDNEXT (6) is above it.
    for i in range(5):
        dovecot.deliver(ALICE, message("m%d" % i), mailbox=folder)
    dovecot.doveadm("expunge", "-u", ALICE, "mailbox", folder, "uid", "5")
    s = session(folder)
    r = s.ok("select")
    assert r["uidnext"] == 6 and r["exists"] == 4
    assert s.ok("search", 5)["uids"] == []
    assert s.ok("search", 4)["uids"] == [4]


def test_search_large_mailbox_in_ranges(dovecot, session, mail_workdir):
    # More UIDs than one SEARCH range holds (2000), whose answer line (22 KB)
    # reaches the session in more than one piece.
    n = 2150
    # Dovecot's mail user reads it: not under pytest's private tmp_path.
    mbox_dir = os.path.join(mail_workdir, "bulk-mbox")
    os.makedirs(mbox_dir)
    with open(os.path.join(mbox_dir, "bulk"), "wb") as f:
        for i in range(n):
            f.write(b"From sender@example.com Mon Jan  1 00:00:00 2024\n" +
                    message("bulk %d" % i).replace(b"\r\n", b"\n") + b"\n")
    shutil.chown(mbox_dir, "mail", "mail")
    shutil.chown(os.path.join(mbox_dir, "bulk"), "mail", "mail")
    r = dovecot.doveadm("-o", "mail_fsync=never", "import", "-u", CAROL,
                        "mbox:%s:INBOX=%s/bulk" % (mbox_dir, mbox_dir), "",
                        "all")
    assert not r.stderr, r.stderr

    s = session("INBOX", user=CAROL)
    r = s.ok("select")
    assert r["exists"] == n
    before = r["requests"]
    r = s.ok("search", 1)
    assert r["uids"] == list(range(1, n + 1))
    assert r["requests"] - before == 2
    assert s.ok("search", 1990, 20)["uids"] == list(range(1990, 2010))
    assert s.ok("search", 2100, "unseen")["uids"] == list(range(2100, n + 1))
    # Sizes of 1000 messages: in requests small enough for libcurl.
    r = s.ok("info", ",".join(str(u) for u in range(1, 1001)))
    assert r["found"] == 1000
    assert [i["uid"] for i in r["info"]] == list(range(1, 1001))


# -- fetch ------------------------------------------------------------------

def test_fetch_is_byte_identical_and_leaves_flags(dovecot, folder, session,
                                               workdir):
    raw = message("bytes", body="line 1\r\n\tline 2 \xe4\r\n.\r\n..dots\r\n"
                  "no final line end")
    # (No NUL: Dovecot stores it as 0x80, IMAP cannot carry it in BODY[].)
    raw += b"\r\n--\r\n8bit \xff\xfe\x80 end"
    dovecot.deliver(ALICE, raw, mailbox=folder)
    s = session(folder)
    s.ok("select")
    info = s.ok("info", 1)["info"][0]
    assert info == {"uid": 1, "size": len(raw), "flags": []}

    out = os.path.join(workdir, "m1")
    r = s.ok("fetch", 1, out)
    assert r["bytes"] == r["size"] == len(raw)
    assert r["was_seen"] is False
    with open(out, "rb") as f:
        assert f.read() == raw

    # The fetch is "UID FETCH n BODY.PEEK[]": no flag changes; marking it
    # seen is the caller's after-action.
    assert "\\Seen" not in flags(dovecot, ALICE, folder, 1)
    s.ok("seen", 1, 1)
    assert "\\Seen" in flags(dovecot, ALICE, folder, 1)
    r = s.ok("fetch", 1, out)
    assert r["was_seen"] is True
    s.ok("seen", 1, 0)
    assert "\\Seen" not in flags(dovecot, ALICE, folder, 1)


def test_fetch_twenty_megabytes_streams(dovecot, folder, session, workdir):
    body = base64.encodebytes(os.urandom(15 * 1024 * 1024)).replace(
        b"\n", b"\r\n")
    raw = message("big", body="") + body
    assert len(raw) > 20 * 1000 * 1000
    dovecot.deliver(ALICE, raw, mailbox=folder)
    s = session(folder)
    s.ok("select")
    out = os.path.join(workdir, "big")
    t0 = time.monotonic()
    r = s.ok("fetch", 1, out, 64 * 1024 * 1024)
    took = time.monotonic() - t0
    assert r["bytes"] == len(raw)
    with open(out, "rb") as f:
        assert hashlib.sha256(f.read()).digest() == \
            hashlib.sha256(raw).digest()
    hwm = s.ok("stats")["vmhwm_kb"]
    assert 0 < hwm < 30 * 1024, "imapctl peaked at %d kB" % hwm
    print("20 MB fetch: %.2f s, VmHWM %d kB" % (took, hwm))


def test_fetch_over_the_cap_is_not_downloaded(dovecot, folder, session,
                                              workdir):
    raw = message("capped", body="x" * 5000 + "\r\n")
    dovecot.deliver(ALICE, raw, mailbox=folder)
    s = session(folder)
    s.ok("select")
    before = s.ok("stats")["requests"]
    out = os.path.join(workdir, "capped")
    r = s.op("fetch", 1, out, 4096)
    assert r["status"] == "message too large", r
    assert r["size"] == len(raw) and r["bytes"] == 0
    # Only the size was asked for: the message is still unseen.
    assert r["requests"] - before == 1
    assert "\\Seen" not in flags(dovecot, ALICE, folder, 1)
    assert os.path.getsize(out) == 0


def test_fetch_of_a_missing_message_is_gone(dovecot, folder, session,
                                            workdir):
    dovecot.deliver(ALICE, message("one"), mailbox=folder)
    s = session(folder)
    s.ok("select")
    r = s.op("fetch", 7, os.path.join(workdir, "none"))
    assert r["status"] == "message gone", r
    r = s.op("seen", 7, 1)
    assert r["status"] == "message gone", r
    # Nothing above made the connection unusable.
    assert s.ok("search", 1)["uids"] == [1]
    assert s.ok("stats")["connections"] == 1


# -- one connection ----------------------------------------------------------

def test_operations_share_one_login(dovecot, folder, session, workdir):
    for i in range(3):
        dovecot.deliver(ALICE, message("m%d" % i), mailbox=folder)
    before = logins(dovecot)
    s = session(folder)
    s.ok("select")
    for uid in s.ok("search", 1)["uids"]:
        s.ok("info", uid)
        s.ok("fetch", uid, os.path.join(workdir, "m%d" % uid))
        s.ok("seen", uid, 1)
    for _ in range(10):
        s.ok("select")
        s.ok("search", 4)
    # One connection for commands, one for bodies (BODY.PEEK[], which
    # libcurl's requests cannot carry).
    r = s.ok("stats")
    assert r["connections"] == 2
    assert wait_logins(dovecot, before + 2) == before + 2
    time.sleep(0.3)
    assert logins(dovecot) == before + 2


def test_dropped_connection_is_reopened_once(dovecot, folder, session):
    dovecot.deliver(ALICE, message("m"), mailbox=folder)
    before = logins(dovecot)
    s = session(folder)
    s.ok("select")
    dovecot.doveadm("kick", ALICE)
    r = s.ok("search", 1)
    assert r["uids"] == [1]
    assert r["connections"] == 2
    # The failed attempt and its repetition: two requests for one search.
    assert r["requests"] == 3
    assert wait_logins(dovecot, before + 2) == before + 2
    # The server closes it between polls: the select goes through too.
    dovecot.doveadm("kick", ALICE)
    assert s.ok("select")["connections"] == 3


def test_idle_connection_is_not_reused_past_the_limit(dovecot, folder,
                                                      session):
    s = session(folder, extra=["--max-idle", "1"])
    s.ok("select")
    time.sleep(0.3)
    assert s.ok("select")["connections"] == 1
    time.sleep(2.1)
    assert s.ok("select")["connections"] == 2


def test_starttls_url(dovecot, folder, session):
    # imap://host:143 style: STARTTLS, then the same login and commands.
    dovecot.deliver(ALICE, message("m"), mailbox=folder)
    s = session(url="imap://%s:%d/%s" % (dovecot.imap_host,
                                         dovecot.imap_port,
                                         quote_path(folder)))
    assert s.ok("select")["exists"] == 1
    assert s.ok("search", 1)["uids"] == [1]


def test_new_token_means_new_login(dovecot, folder, session, tokens):
    s = session(folder)
    s.ok("select")
    s.use_token(tokens())
    r = s.ok("select")
    assert r["connections"] == 2


# -- flags, move, delete -----------------------------------------------------

def test_flags_move_and_delete(dovecot, folder, session):
    for i in range(4):
        dovecot.deliver(ALICE, message("m%d" % i), mailbox=folder)
    target = "Processed/%s Ünïcödé" % secrets.token_hex(3)
    s = session(folder)
    s.ok("select")
    assert s.ok("caps")["caps"] == ["IMAP4rev1", "MOVE", "UIDPLUS", "IDLE"]

    s.ok("seen", 1, 1)
    assert "\\Seen" in flags(dovecot, ALICE, folder, 1)
    s.ok("seen", 1, 0)
    assert "\\Seen" not in flags(dovecot, ALICE, folder, 1)

    # A missing target is an error, unless asked to create it.
    r = s.op("move", 2, target)
    assert r["status"] == "mailbox problem", r
    assert "TRYCREATE" in r["reply"]
    r = s.ok("move", 2, target, "create")
    assert r["new_uid"] == 1
    r = s.ok("move", 3, target, "create")
    assert r["new_uid"] == 2
    moved = dovecot.messages(ALICE, target)
    assert [b"Subject: m1" in m for m in moved] == [True, False]
    assert b"Subject: m2" in moved[1]

    s.ok("delete", 4)
    left = dovecot.messages(ALICE, folder)
    assert len(left) == 1 and b"Subject: m0" in left[0]
    st = _status(dovecot.doveadm("mailbox", "status", "-u", ALICE,
                                 "messages", folder).stdout.decode())
    assert st["messages"] == 1

    assert s.op("move", 4, target)["status"] == "message gone"
    assert s.op("delete", 4)["status"] == "message gone"
    r = s.ok("select")
    assert r["exists"] == 1


def test_create_folder(dovecot, session):
    name = "Ingest %s/Done & Dusted" % secrets.token_hex(3)
    s = session()
    s.ok("create", name)
    listed = dovecot.doveadm("mailbox", "list", "-u", ALICE).stdout.decode()
    assert name in listed.splitlines()
    r = s.ok("create", name)
    assert "exists" in r["reply"]
    # Creating what exists cost no new connection.
    assert r["connections"] == 1


@pytest.fixture(scope="module")
def dovecot_without_move(mail_workdir, mail_pki, mail_introspection_url,
                         mail_users):
    class NoMove(Dovecot):
        def _write_config(self):
            super()._write_config()
            with open(self.config, "a") as f:
                f.write("imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID "
                        "ENABLE IDLE UIDPLUS\n")
    path = os.path.join(mail_workdir, "nomove")
    os.makedirs(path, mode=0o755, exist_ok=True)
    server = NoMove(path, mail_pki,
                    mail_introspection_url, users=mail_users)
    server.start()
    yield server
    server.stop()


def test_move_without_move_capability(dovecot_without_move, session):
    dv = dovecot_without_move
    name = "Src %s" % secrets.token_hex(3)
    dv.doveadm("mailbox", "create", "-u", ALICE, name)
    for i in range(2):
        dv.deliver(ALICE, message("m%d" % i), mailbox=name)
    s = session(url="imaps://%s:%d/%s" % (dv.host, dv.imaps_port,
                                          quote_path(name)))
    s.ok("select")
    assert "MOVE" not in s.ok("caps")["caps"]
    r = s.ok("move", 1, "Archive", "create")
    assert r["new_uid"] >= 1
    assert len(dv.messages(ALICE, name)) == 1
    assert b"Subject: m0" in dv.messages(ALICE, "Archive")[-1]
    # COPY, STORE \Deleted, UID EXPUNGE of that one UID only.
    with open(s.stderr_path) as f:
        trace = f.read()
    assert "UID COPY 1 " in trace and "UID EXPUNGE 1" in trace
    assert "UID MOVE" not in trace


# -- failures ------------------------------------------------------------------

def test_refused_token_is_authfail_then_refresh_works(dovecot, folder,
                                                      session, tokens):
    s = session(folder, token="eyJ0eXAiOiJKV1QifQ.not-a-real-token." +
                secrets.token_urlsafe(1500))
    r = s.op("select")
    assert r["status"] == "login refused", r
    assert '"status":"401"' in r["reply"].replace(" ", "")
    assert r["hint"] and "401" in r["hint"]
    # The caller refreshes once and tries again.
    s.use_token(tokens())
    assert s.ok("select")["exists"] == 0


def test_token_of_another_user_is_refused(dovecot, folder, session, tokens):
    s = session(folder, token=tokens(CAROL))
    assert s.op("select")["status"] == "login refused"


def test_missing_folder_is_mailbox(dovecot, session):
    s = session("No Such Folder %s" % secrets.token_hex(3))
    r = s.op("select")
    assert r["status"] == "mailbox problem", r
    assert "doesn't exist" in r["reply"]
    # UID commands need a selected folder.
    r = s.op("search", 1)
    assert r["status"] == "refused", r
    assert "select it first" in r["reply"]


def test_uidvalidity_change_is_noticed(dovecot, folder, session):
    dovecot.deliver(ALICE, message("m"), mailbox=folder)
    s = session(folder)
    old = s.ok("select")["uidvalidity"]
    dovecot.doveadm("mailbox", "update", "-u", ALICE, "--uid-validity",
                    str(old + 1000), folder)
    dovecot.doveadm("kick", ALICE)
    # A UID command may not act on what UID 1 means now, nor any after it
    # until the folder was selected again.
    r = s.op("search", 1)
    assert r["status"] == "message gone", r
    assert "UIDVALIDITY" in r["reply"]
    r = s.op("seen", 1, 1)
    assert r["status"] == "message gone", r
    assert "\\Seen" not in flags(dovecot, ALICE, folder, 1)
    assert s.ok("select")["uidvalidity"] == old + 1000
    assert s.ok("search", 1)["uids"] == [1]


def test_certificate_not_trusted_is_config(imapctl, dovecot, tokens,
                                           workdir):
    s = Session(imapctl, "imaps://%s:%d/INBOX" % (dovecot.host,
                                                   dovecot.imaps_port),
                ALICE, "/etc/ssl/certs/ca-certificates.crt", tokens(),
                workdir)
    try:
        assert s.op("select")["status"] == "configuration problem"
    finally:
        s.close()


# -- an Exchange-shaped server ---------------------------------------------------

class ScriptedIMAP:
    """Answers like Exchange Online: XOAUTH2 with a JSON error challenge,
    and "BAD User is authenticated but not connected" on SELECT."""

    EXCHANGE_CAPS = ("IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS "
                     "MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+")

    def __init__(self, pki, good_token, caps=EXCHANGE_CAPS, message=None,
                 claimed_size=None):
        self.good = good_token
        self.caps = caps
        # With a message: a folder holding it as UID 1, whose RFC822.SIZE
        # may be claimed smaller than what the FETCH then sends.
        self.message = message
        self.claimed_size = claimed_size
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.chain, pki.key)
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            # A session has two connections at once (commands, bodies).
            threading.Thread(target=self.one, args=(conn,),
                             daemon=True).start()

    def one(self, conn):
        try:
            self.session(self.ctx.wrap_socket(conn, server_side=True))
        except (OSError, ssl.SSLError):
            pass

    def session(self, c):
        f = c.makefile("rwb")

        def say(text):
            f.write(text.encode() + b"\r\n")
            f.flush()

        self.connections += 1
        say("* OK The Microsoft Exchange IMAP4 service is ready.")
        while True:
            line = f.readline()
            if not line:
                return
            parts = line.decode().rstrip("\r\n").split(" ")
            tag, cmd = parts[0], parts[1].upper() if len(parts) > 1 else ""
            if cmd == "CAPABILITY":
                say("* CAPABILITY " + self.caps)
                say(tag + " OK CAPABILITY completed.")
            elif cmd == "AUTHENTICATE":
                resp = base64.b64decode(parts[3]).decode()
                if ("auth=Bearer %s\x01" % self.good) in resp:
                    say(tag + " OK AUTHENTICATE completed.")
                else:
                    err = base64.b64encode(json.dumps(
                        {"status": "401", "schemes": "bearer",
                         "scope": "https://outlook.office365.com/"}).encode())
                    say("+ " + err.decode())
                    f.readline()
                    say(tag + " NO AUTHENTICATE failed.")
            elif self.message is not None and cmd in ("SELECT", "EXAMINE",
                                                      "UID"):
                self.folder_command(tag, cmd, parts, say, f)
            elif cmd == "LOGOUT":
                say("* BYE Microsoft Exchange Server IMAP4 server signing "
                    "off.")
                say(tag + " OK LOGOUT completed.")
                return
            else:
                say(tag + " BAD User is authenticated but not connected.")

    def folder_command(self, tag, cmd, parts, say, f):
        if cmd in ("SELECT", "EXAMINE"):
            say("* 1 EXISTS")
            say("* OK [UIDVALIDITY 14] UIDVALIDITY value")
            say("* OK [UIDNEXT 2] The next unique identifier value")
            say(tag + " OK [READ-%s] %s completed." % (
                "WRITE" if cmd == "SELECT" else "ONLY", cmd))
        elif parts[-1] in ("BODY[]", "BODY.PEEK[]"):
            f.write(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(self.message))
            f.write(self.message + b")\r\n")
            say(tag + " OK FETCH completed.")
        else:
            size = self.claimed_size or len(self.message)
            say("* 1 FETCH (UID 1 RFC822.SIZE %d FLAGS ())" % size)
            say(tag + " OK FETCH completed.")

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_exchange_answers(imapctl, pki, workdir):
    good = secrets.token_urlsafe(1200)
    srv = ScriptedIMAP(pki, good)
    url = "imaps://127.0.0.1:%d/INBOX" % srv.port
    s = Session(imapctl, url, ALICE, pki.ca_cert, good, workdir)
    bad = Session(imapctl, url, ALICE, pki.ca_cert, "x" + good, workdir)
    try:
        r = s.op("select")
        assert r["status"] == "mailbox problem", r
        assert "User is authenticated but not connected" in r["reply"]
        assert "ImapEnabled" in r["hint"]

        r = bad.op("select")
        assert r["status"] == "login refused", r
        assert "401" in r["hint"]
    finally:
        s.close()
        bad.close()
        srv.close()


def test_server_without_xoauth2_is_config(imapctl, pki, workdir):
    good = secrets.token_urlsafe(100)
    srv = ScriptedIMAP(pki, good, caps="IMAP4rev1 AUTH=PLAIN SASL-IR")
    s = Session(imapctl, "imaps://127.0.0.1:%d/INBOX" % srv.port, ALICE,
                pki.ca_cert, good, workdir)
    try:
        r = s.op("select")
        assert r["status"] == "configuration problem", r
        assert "does not offer XOAUTH2" in r["reply"]
    finally:
        s.close()
        srv.close()


def test_fetch_cap_holds_when_the_size_was_wrong(imapctl, pki, workdir):
    # The server claims 100 bytes, then sends a megabyte: the fetch stops
    # at the literal's announced size, before the first byte is stored.
    good = secrets.token_urlsafe(100)
    big = b"Subject: big\r\n\r\n" + b"x" * (1024 * 1024)
    srv = ScriptedIMAP(pki, good, message=big, claimed_size=100)
    s = Session(imapctl, "imaps://127.0.0.1:%d/INBOX" % srv.port, ALICE,
                pki.ca_cert, good, workdir)
    out = os.path.join(workdir, "capped")
    try:
        s.ok("select")
        r = s.op("fetch", 1, out, 4096)
        assert r["status"] == "message too large", r
        assert r["bytes"] == 0 and os.path.getsize(out) == 0
        # The fetch connection went with the aborted transfer; the next
        # one works (the session's command connection stays).
        r = s.ok("fetch", 1, out)
        assert r["bytes"] == len(big)
        assert r["connections"] == 3 == srv.connections
        with open(out, "rb") as f:
            assert f.read() == big
    finally:
        s.close()
        srv.close()
