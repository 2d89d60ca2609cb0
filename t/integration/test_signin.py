"""The operator's tool, ftpmailoauth, end to end: browser sign-in through its
own redirect listener, device code, app-only, status, and XOAUTH2 logins to
the real Dovecot (IMAPS) and Postfix (STARTTLS) with the tokens it stores.

The identity provider is the Entra ID stand-in (t/lib/tokensvc.py); the
tool reads a proftpd.conf written here, with MailOAuthAccount lines spread
over an Include, a line continuation and quotes, as operators write them.
Every output of the tool is checked for secrets at the end of each test.
"""

import json
import os
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from netutil import free_port

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TOOL = os.environ.get("MAILOAUTH_TOOL",
                      os.path.join(TOP, "build", "ftpmailoauth"))

ALICE = "alice@contoso.test"
BOB = "bob@contoso.test"
SCANNER = "scanner@contoso.test"
NOBODY = 65534
CALLBACK = "/register_microsoft_graph_api/"
URL_RE = re.compile(r"^\s+(https://\S+/oauth2/v2\.0/authorize\?\S+)$", re.M)


@pytest.fixture(scope="module")
def mail_users():
    # Dovecot's users: the app-only test reads the scanner mailbox.
    return [ALICE, BOB, "carol@contoso.test", SCANNER]


@pytest.fixture(scope="session")
def tool():
    if not os.access(TOOL, os.X_OK):
        pytest.fail("%s not built: run make (or set MAILOAUTH_TOOL)" % TOOL)
    return TOOL


class Tool:
    """One proftpd.conf with accounts, and runs of ftpmailoauth against it.

    Every output is kept; check_secrets() proves none of them holds the
    client secret or a token."""

    def __init__(self, tool, workdir, tokensvc, pki):
        self.tool = tool
        self.dir = workdir
        self.svc = tokensvc
        self.pki = pki
        self.state_dir = os.path.join(workdir, "state")
        self.token_dir = os.path.join(self.state_dir, "tokens")
        self.conf = os.path.join(workdir, "proftpd.conf")
        self.outputs = []
        self.secrets = set()
        self.accounts = {}
        self.procs = []
        self.group = "nogroup"
        os.makedirs(os.path.join(workdir, "accounts.d"))
        self.env = dict(os.environ, no_proxy="*", NO_PROXY="*")

    # -- configuration -------------------------------------------------

    def add_account(self, name, app, mailbox=ALICE, grant="delegated",
                    redirect=None, smtp=None, imap=None, secret=None,
                    extra=()):
        secret_file = os.path.join(self.dir, name + ".secret")
        value = secret if secret is not None else app["secret"]
        with open(secret_file, "w") as f:
            f.write(value + "\n")
        os.chmod(secret_file, 0o600)
        self.secrets.add(value)
        words = ["authority=%s" % self.svc.url, "tenant=contoso.test",
                 "client-id=%s" % app["client_id"],
                 '"client-secret=file:%s"' % secret_file,
                 "mailbox=%s" % mailbox, "grant=%s" % grant,
                 "ca-file=%s" % self.pki.ca_cert, "proxy=none"]
        if redirect:
            words.append("redirect-uri=%s" % redirect)
        if smtp:
            words.append("smtp=%s" % smtp)
        if imap:
            words.append("imap=%s" % imap)
        words.extend(extra)
        # Continued over several lines, as a long directive usually is.
        text = "MailOAuthAccount %s %s \\\n    %s \\\n    %s\n" % (
            name, " ".join(words[:3]), " ".join(words[3:6]),
            " ".join(words[6:]))
        with open(os.path.join(self.dir, "accounts.d", name + ".conf"),
                  "w") as f:
            f.write("# account %s\n%s" % (name, text))
        self.accounts[name] = {"app": app, "mailbox": mailbox}
        self.write_conf()

    def write_conf(self):
        with open(self.conf, "w") as f:
            f.write("""# written by test_signin.py
ServerName "ftpmailoauth test"
User nobody
Group %s
<IfModule mod_mailoauth.c>
  MailOAuthEngine on
  MailOAuthStateDir %s
  Include %s/accounts.d/*.conf
</IfModule>
<Anonymous /srv/ftp>
  # not the daemon's user: must not own the token files
  User ftp
  Group nogroup
</Anonymous>
""" % (self.group, self.state_dir, self.dir))

    def token_file(self, name):
        return os.path.join(self.token_dir, name + ".json")

    def tokens(self, name):
        with open(self.token_file(name)) as f:
            data = json.load(f)
        for key in ("access_token", "refresh_token"):
            if data.get(key):
                self.secrets.add(data[key])
        return data

    # -- running -------------------------------------------------------

    def cmd(self, *args):
        return [self.tool, "-c", self.conf] + list(args)

    def run(self, *args, input=None, timeout=30):
        r = subprocess.run(self.cmd(*args), input=input, capture_output=True,
                           text=True, timeout=timeout, env=self.env)
        out = r.stdout + r.stderr
        self.outputs.append(out)
        return r.returncode, out

    def start(self, *args):
        proc = Running(self.cmd(*args), self.env)
        self.procs.append(proc)
        return proc

    def check_secrets(self):
        for name in self.accounts:
            if os.path.exists(self.token_file(name)):
                try:
                    self.tokens(name)
                except (OSError, ValueError):
                    pass
        outputs = self.outputs + [p.output() for p in self.procs]
        for out in outputs:
            for secret in self.secrets:
                assert secret not in out, "a secret was printed:\n" + out

    def stop(self):
        for p in self.procs:
            p.kill()


class Running:
    """A tool process whose output is read as it comes."""

    def __init__(self, cmd, env):
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        self.lines = []
        self.queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self.queue.put(line)

    def output(self):
        return "".join(self.lines)

    def wait_for(self, pattern, timeout=15):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while True:
            m = rx.search(self.output())
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and
                             self.queue.empty()):
                raise AssertionError("no %r in the output:\n%s"
                                     % (pattern, self.output()))
            try:
                self.queue.get(timeout=min(left, 0.2))
            except queue.Empty:
                pass

    def finish(self, timeout=20):
        rc = self.proc.wait(timeout)
        time.sleep(0.05)
        return rc, self.output()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def env(tool, workdir, tokensvc, pki):
    t = Tool(tool, workdir, tokensvc, pki)
    tokensvc.add_user(ALICE, display_name="Alice Example")
    tokensvc.add_user(BOB, display_name="Bob Example")
    yield t
    t.stop()
    t.check_secrets()


def web_app(tokensvc):
    """An app registered with a loopback redirect URI on a free port."""
    port = free_port()
    redirect = "http://localhost:%d%s" % (port, CALLBACK)
    app = tokensvc.add_app(redirect_uris=[redirect])
    return app, redirect


def start_signin(env, name, *extra):
    proc = env.start("signin", *extra, name)
    url = proc.wait_for(URL_RE.pattern).group(1)
    if "--no-listen" not in extra:
        proc.wait_for(r"^Waiting for the browser")
    return proc, url


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def signed_in(env, name="notify", user=None):
    """A browser sign-in; returns the token file's contents."""
    app, redirect = web_app(env.svc)
    env.add_account(name, app, redirect=redirect,
                    smtp=getattr(env, "smtp_url", None),
                    imap=getattr(env, "imap_url", None))
    proc, url = start_signin(env, name)
    res = env.svc.sign_in(url, user=user, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    return env.tokens(name), out


# --------------------------------------------------------------- browser

def test_browser_signin_end_to_end(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    proc, url = start_signin(env, "notify")

    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert q["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", q["code_challenge"])
    assert q["redirect_uri"] == redirect and q["login_hint"] == ALICE
    assert len(q["state"]) >= 16
    assert "SMTP.Send" in q["scope"] and "offline_access" in q["scope"]
    assert "ssh -L" in proc.output()

    # The listener serves the callback path only.
    port = urllib.parse.urlsplit(redirect).port
    status, _ = http_get("http://127.0.0.1:%d/favicon.ico" % port)
    assert status == 404

    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    assert res.delivered_status == 200
    assert b"Signed in as alice@contoso.test" in res.delivered_body
    rc, out = proc.finish()
    assert rc == 0, out
    assert "Signed in as alice@contoso.test (Alice Example)." in out
    assert "Granted scopes: https://outlook.office.com/SMTP.Send " \
        "https://outlook.office.com/IMAP.AccessAsUser.All" in out
    assert "WARNING" not in out

    # The token file: the server's User owns it, nobody else can read it.
    path = env.token_file("notify")
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == NOBODY
    assert path in out and "(owner nobody)" in out
    for d in (env.state_dir, env.token_dir):
        st = os.stat(d)
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == NOBODY
    lock = os.stat(os.path.join(env.token_dir, "notify.lock"))
    assert lock.st_mode & 0o777 == 0o600 and lock.st_uid == NOBODY

    data = env.tokens("notify")
    assert data["grant"] == "delegated"
    assert data["identity"]["username"] == ALICE
    assert env.svc.token_info(data["refresh_token"])["kind"] == \
        "refresh_token"
    assert data["access_expires"] > time.time() + 3000
    assert "last_error" not in data
    grants = env.svc.stats()["token_requests"]
    assert grants == {"authorization_code": 1}, grants


def test_signin_as_another_user_warns(env):
    data, out = signed_in(env, user=BOB)
    assert data["identity"]["username"] == BOB
    assert "Signed in as bob@contoso.test (Bob Example)." in out
    assert "WARNING: signed in as bob@contoso.test, but the account's " \
        "mailbox is alice@contoso.test" in out
    assert "SendAsDenied" in out

    rc, out = env.run("status", "notify")
    assert rc == 1, out
    assert "WARNING: signed in as bob@contoso.test, not as the mailbox " \
        "alice@contoso.test" in out


def test_missing_scope_warns(env):
    # Only SMTP asked for (a quoted word with spaces in proftpd.conf): the
    # sign-in cannot serve mail-to-folder tasks, and the tool says so.
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect, extra=[
        '"scopes=https://outlook.office.com/SMTP.Send offline_access openid '
        'email"'])
    proc, url = start_signin(env, "notify")
    assert "IMAP" not in urllib.parse.unquote(url)
    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    assert "WARNING: IMAP.AccessAsUser.All was not granted" in out
    assert "SMTP.Send was not granted" not in out


def test_declined_consent_shows_aadsts(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    proc, url = start_signin(env, "notify")
    res = env.svc.sign_in(url, decline=True, follow=True)
    assert res.delivered_status == 400
    page = res.delivered_body.decode()
    assert "AADSTS65004" in page and "declined to consent" in page
    rc, out = proc.finish()
    assert rc == 1, out
    assert "access_denied (AADSTS65004)" in out
    assert "declined to consent" in out
    assert "ftpmailoauth -c %s signin notify" % env.conf in out
    assert not os.path.exists(env.token_file("notify"))


def test_state_mismatch_rejected(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    proc, url = start_signin(env, "notify")

    # An answer for another sign-in (old tab, or forged): refused, not
    # redeemed, and the real one still works afterwards.
    status, page = http_get(redirect + "?code=1.AUEAforged&state=bogus")
    assert status == 400 and "does not match" in page
    status, _ = http_get(redirect + "?code=1.AUEAforged")
    assert status == 400
    proc.wait_for(r"state does not match")
    assert proc.proc.poll() is None

    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    assert env.svc.stats()["token_requests"] == {"authorization_code": 1}
    assert "1.AUEAforged" not in out


def test_no_listen_paste(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    proc, url = start_signin(env, "notify", "--no-listen")
    proc.wait_for(r"paste it here")
    res = env.svc.sign_in(url)
    env.secrets.add(res.code)
    proc.proc.stdin.write(res.location + "\n")
    proc.proc.stdin.flush()
    rc, out = proc.finish()
    assert rc == 0, out
    assert "Signed in as alice@contoso.test" in out
    assert env.tokens("notify")["identity"]["username"] == ALICE


def test_signin_port_in_use(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    import socket
    port = urllib.parse.urlsplit(redirect).port
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        rc, out = env.run("signin", "notify")
    assert rc == 1, out
    assert "port %d" % port in out and "--no-listen" in out


# ----------------------------------------------------------- device code

def device_env(env):
    env.svc.set_config(device_interval=1)
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    proc = env.start("signin", "--device", "notify")
    code = proc.wait_for(r"^User code: (\S+)$").group(1)
    assert proc.wait_for(r"^Verification URL: (\S+)$").group(1).startswith(
        env.svc.url)
    return proc, code


def test_device_code_signin(env):
    proc, code = device_env(env)
    assert "enter the code" in proc.output() and code in proc.output()
    time.sleep(1.5)      # a poll or two while pending
    env.svc.approve_device(code, ALICE)
    rc, out = proc.finish()
    assert rc == 0, out
    assert "Signed in as alice@contoso.test (Alice Example)." in out
    data = env.tokens("notify")
    assert data["identity"]["username"] == ALICE and data["refresh_token"]
    assert os.stat(env.token_file("notify")).st_uid == NOBODY


def test_token_file_gets_the_servers_group(env):
    """The tool writes as User and Group: the token file is the server's
    Group's, not root's and not User's own group (documented)."""
    import grp
    env.group = "daemon"
    proc, code = device_env(env)
    env.svc.approve_device(code, ALICE)
    rc, out = proc.finish()
    assert rc == 0, out
    st = os.stat(env.token_file("notify"))
    assert (st.st_uid, st.st_gid) == (NOBODY, grp.getgrnam("daemon").gr_gid)
    assert st.st_mode & 0o777 == 0o600


def test_device_code_declined(env):
    proc, code = device_env(env)
    env.svc.decline_device(code)
    rc, out = proc.finish()
    assert rc == 1, out
    assert "declined" in out and "AADSTS65004" in out
    assert not os.path.exists(env.token_file("notify"))


def test_device_code_expired(env):
    env.svc.set_config(device_expires_in=2)
    proc, _ = device_env(env)
    rc, out = proc.finish()
    assert rc == 1, out
    assert "code expired" in out
    assert not os.path.exists(env.token_file("notify"))


@pytest.mark.parametrize("fault, said", [
    (dict(fault="html", status=400),
     "config: the device-code endpoint refused the request [HTTP 400]"),
    (dict(fault="error", status=400, error="invalid_request", code=4242424,
          description="Bad request."),
     "the device-code endpoint refused the request as malformed"),
])
def test_device_code_start_refused_names_its_endpoint(env, fault, said):
    """The device-code endpoint, not the token endpoint, refused: the
    message says which one did."""
    env.svc.set_config(device_interval=1)
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    kind = fault.pop("fault")
    env.svc.inject(kind, endpoint="devicecode", **fault)
    rc, out = env.run("signin", "--device", "notify", timeout=20)
    assert rc != 0, out
    assert "cannot start the device code sign-in" in out, out
    assert said in out, out
    assert "token endpoint" not in out, out
    assert not os.path.exists(env.token_file("notify"))


def test_device_code_slow_down_and_trouble(env):
    # One poll meets a 503, the next a slow_down: the tool keeps polling,
    # five seconds more slowly from then on (RFC 8628 3.5).
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    env.svc.inject("http", status=503, grant_type=grant)
    env.svc.inject("error", status=400, error="slow_down", code=70016,
                   description="Polling too fast.", grant_type=grant)
    proc, code = device_env(env)
    env.svc.approve_device(code, ALICE)
    rc, out = proc.finish(timeout=30)
    assert rc == 0, out
    assert "WARNING: the token service is having trouble" in out
    assert "AADSTS90033" in out
    polls = [e["time"] for e in env.svc.stats()["log"]
             if e["endpoint"] == "token" and e["grant_type"] == grant]
    assert len(polls) == 3, polls
    assert 0.9 <= polls[1] - polls[0] < 3
    assert polls[2] - polls[1] >= 5.9


# -------------------------------------------------------------- app-only

def test_client_credentials(env, dovecot, postfix):
    app = env.svc.add_app(app_only=True, app_only_mailbox=SCANNER)
    env.add_account("scanner", app, mailbox=SCANNER, grant="app-only",
                    smtp="smtp://127.0.0.1:%d" % postfix.smtp_port,
                    imap="imaps://127.0.0.1:%d" % dovecot.imaps_port)
    rc, out = env.run("signin", "scanner")
    assert rc == 0, out
    assert "No sign-in is needed" in out
    assert "Application permissions: IMAP.AccessAsApp, SMTP.SendAsApp" in out
    data = env.tokens("scanner")
    assert data["grant"] == "app-only" and "refresh_token" not in data
    assert env.svc.stats()["token_requests"] == {"client_credentials": 1}

    rc, out = env.run("test", "scanner", "imap")
    assert rc == 0, out
    assert "from the token file" in out and "OK: logged in" in out

    rc, out = env.run("status", "scanner")
    assert rc == 0, out
    assert "none needed (app-only)" in out


def test_client_credentials_problems(env):
    # No application permission granted: a token, but a useless one.
    app = env.svc.add_app(app_only=False, app_only_mailbox=SCANNER)
    env.add_account("scanner", app, mailbox=SCANNER, grant="app-only")
    rc, out = env.run("signin", "scanner")
    assert rc == 0, out
    assert "WARNING: the token carries no application permissions" in out

    # The secret's ID pasted instead of its value.
    env.add_account("scanner", app, mailbox=SCANNER, grant="app-only",
                    secret=app["secret_id"])
    rc, out = env.run("signin", "scanner")
    assert rc == 1, out
    assert "AADSTS7000215" in out and "Value" in out


# ----------------------------------------------------------------- status

def test_status(env):
    data, _ = signed_in(env)
    app, redirect = web_app(env.svc)
    env.add_account("reader", app, mailbox=BOB, redirect=redirect)

    rc, out = env.run("status", "notify")
    assert rc == 0, out
    assert re.search(r"signed in as:\s+alice@contoso.test \(Alice Example\)",
                     out)
    assert re.search(r"access token:\s+expires in 5\dm", out)
    assert re.search(r"refresh token: last used \d+s ago", out)
    assert re.search(r"last error:\s+none", out)
    assert env.token_file("notify") in out

    # All accounts: one not signed in yet says how to sign in.
    rc, out = env.run("status")
    assert rc == 1, out
    assert "notify\n" in out and "reader\n" in out
    assert "nobody yet: run ftpmailoauth -c %s signin reader" % env.conf \
        in out

    # A revoked sign-in: the error lands in the file and in status.
    env.svc.revoke_refresh_tokens(user=ALICE, code=70008)
    data["access_expires"] = int(time.time()) - 1
    write_tokens(env.token_file("notify"), data)
    rc, out = env.run("test", "notify", "smtp")
    assert rc == 1, out
    assert "AADSTS70008" in out and "signin notify" in out
    rc, out = env.run("status", "notify")
    assert rc == 1, out
    assert re.search(r"last error:\s+reauth AADSTS70008 at ", out)


# ------------------------------------------------- the state dir is User's

def canary_state(path):
    """Everything about a directory and its files that root could change."""
    def one(p):
        st = os.lstat(p)
        with open(p, "rb") if os.path.isfile(p) else open(os.devnull, "rb") \
                as f:
            data = f.read()
        return (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                st.st_mtime_ns, st.st_ctime_ns, data)
    return {name: one(os.path.join(path, name))
            for name in [".", *sorted(os.listdir(path))]}


def test_state_dir_tricks_reach_nothing_of_roots(env):
    """What User controls (the token directory) cannot make the tool, run
    as root, create, change or chown anything elsewhere."""
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)
    os.makedirs(env.state_dir)
    os.chown(env.state_dir, NOBODY, NOBODY)
    os.chmod(env.state_dir, 0o700)
    canary = os.path.join(env.dir, "canary")
    os.makedirs(canary)
    os.chmod(canary, 0o755)
    for name in ("victim", "notify.json", "notify.lock"):
        with open(os.path.join(canary, name), "w") as f:
            f.write("root's own %s\n" % name)
        os.chmod(os.path.join(canary, name), 0o644)

    # As User: the token directory becomes a symlink to the canary.
    os.symlink(canary, env.token_dir)
    os.lchown(env.token_dir, NOBODY, NOBODY)
    before = canary_state(canary)
    rc, out = env.run("status", "notify")
    assert rc != 0, out
    rc, out = env.run("signin", "--device", "notify", timeout=10)
    assert rc != 0 and "symbolic links are refused" in out, out
    assert canary_state(canary) == before

    # A real token directory whose lock and token files are hard links to
    # root's files (planted here as root: protected_hardlinks would stop
    # User, but not every system has it).
    os.unlink(env.token_dir)
    os.makedirs(env.token_dir)
    os.chown(env.token_dir, NOBODY, NOBODY)
    os.chmod(env.token_dir, 0o700)
    os.link(os.path.join(canary, "victim"), env.token_file("notify"))
    os.link(os.path.join(canary, "notify.lock"),
            os.path.join(env.token_dir, "notify.lock"))
    before = canary_state(canary)
    rc, out = env.run("status", "notify")
    assert rc != 0 and "links" in out, out
    proc, url = start_signin(env, "notify")
    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc != 0 and "lock file" in out and "links" in out, out
    assert canary_state(canary) == before

    # Once User's directory is clean again, signing in works as before.
    for name in ("notify.json", "notify.lock"):
        os.unlink(os.path.join(env.token_dir, name))
    before = canary_state(canary)
    proc, url = start_signin(env, "notify")
    res = env.svc.sign_in(url, follow=True)
    env.secrets.add(res.code)
    rc, out = proc.finish()
    assert rc == 0, out
    for name in ("notify.json", "notify.lock"):
        st = os.stat(os.path.join(env.token_dir, name))
        assert (st.st_uid, st.st_nlink, st.st_mode & 0o777) == \
            (NOBODY, 1, 0o600)
    assert canary_state(canary) == before


def test_run_as_user_just_works(env):
    signed_in(env)

    def become_nobody():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    r = subprocess.run(env.cmd("status", "notify"), capture_output=True,
                       text=True, timeout=30, env=env.env,
                       preexec_fn=become_nobody)
    env.outputs.append(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "signed in as:  alice@contoso.test" in r.stdout


def write_tokens(path, data):
    tmp = path + ".edit"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.chown(tmp, NOBODY, NOBODY)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


# ------------------------------------------------------------------- test

@pytest.fixture
def mail(env, dovecot, postfix):
    env.smtp_url = "smtp://127.0.0.1:%d" % postfix.smtp_port
    env.imap_url = "imaps://127.0.0.1:%d" % dovecot.imaps_port
    return env


def test_test_refreshes_then_logs_in(mail, postfix):
    # An hour-old access token with 4 minutes left, inside the refresh
    # margin: the tool refreshes it (under the lock, rotated refresh token
    # stored) before logging in with it.
    before, _ = signed_in(mail)
    now = int(time.time())
    before.update(access_expires=now + 240, refreshed_at=now - 3360,
                  obtained_at=now - 3360)
    write_tokens(mail.token_file("notify"), before)
    rc, out = mail.run("test", "notify")
    assert rc == 0, out
    assert "Access token: refreshed just now" in out
    assert "SMTP smtp://127.0.0.1:%d as alice@contoso.test (STARTTLS " \
        "required):" % postfix.smtp_port in out
    assert "C: STARTTLS" in out and "C: AUTH XOAUTH2" in out
    assert "S: 235 2.7.0 Authentication successful" in out
    assert "C: [SASL response hidden]" in out
    assert "IMAP imaps://" in out and "EXAMINE INBOX" in out
    assert out.count("OK: logged in") == 2, out

    after = mail.tokens("notify")
    assert after["refresh_token"] != before["refresh_token"]
    assert after["access_token"] != before["access_token"]
    assert after["refreshed_at"] >= now
    assert after["access_expires"] > now + 3000
    assert os.stat(mail.token_file("notify")).st_uid == NOBODY
    assert mail.svc.stats()["token_requests"] == {
        "authorization_code": 1, "refresh_token": 1}
    postfix.wait_for_log(r"auth=1 quit=1")


def test_test_rejected_token_shows_challenge(mail):
    signed_in(mail)
    # Exchange no longer accepts the token the file still holds.
    mail.svc.expire_access_tokens(user=ALICE)
    # With every trace line shown: none may hold a secret either.
    rc, out = mail.run("-vvv", "test", "notify", "imap")
    assert rc == 0, out
    assert "[mailoauth.tokens:" in out and "[mailoauth.oauth:" in out
    assert 'XOAUTH2 error (decoded): {"status":"401","schemes":"bearer",' \
        '"scope":"mail"}' in out
    assert "Hint: XOAUTH2 error 401" in out
    assert "getting a new one and trying once more" in out
    assert out.count("OK: logged in") == 1


def test_test_wrong_mailbox_fails_with_hint(mail):
    signed_in(mail, user=BOB)
    rc, out = mail.run("test", "notify", "smtp")
    assert rc == 1, out
    assert out.count('"status":"401"') >= 2
    assert "another account than mailbox=" in out
    assert "FAILED: SMTP server" in out


# ------------------------------------------------------ configuration errors

def test_config_errors(env):
    app, redirect = web_app(env.svc)
    env.add_account("notify", app, redirect=redirect)

    rc, out = env.run("status", "nosuch")
    assert rc == 2 and "no MailOAuthAccount named 'nosuch'" in out
    assert "(accounts: notify)" in out

    path = os.path.join(env.dir, "accounts.d", "typo.conf")
    with open(path, "w") as f:
        f.write("\n\nMailOAuthAccount typo tennant=x client-id=y "
                "mailbox=a@b.test\n")
    rc, out = env.run("status", "typo")
    assert rc == 2, out
    assert "%s:3: MailOAuthAccount typo" % path in out
    assert "did you mean 'tenant='" in out
    os.unlink(path)

    rc, out = env.run("-c", os.path.join(env.dir, "missing.conf"), "status")
    assert rc == 2 and "missing.conf" in out

    rc, out = env.run("frobnicate")
    assert rc == 2


def test_account_from_flags_only(env):
    env.svc.set_config(device_interval=1)
    app, redirect = web_app(env.svc)
    secret = os.path.join(env.dir, "flags.secret")
    with open(secret, "w") as f:
        f.write(app["secret"])
    os.chmod(secret, 0o600)
    env.secrets.add(app["secret"])
    env.accounts["flags"] = {}
    tokens = os.path.join(env.dir, "flagtokens")
    cmd = [env.tool, "--tenant", "contoso.test", "--client-id",
           app["client_id"], "--client-secret-file", secret, "--mailbox",
           ALICE, "--authority", env.svc.url, "--ca-file", env.pki.ca_cert,
           "--token-dir", tokens, "--owner", "nobody", "signin", "--device",
           "flags"]
    proc = Running(cmd, env.env)
    env.procs.append(proc)
    code = proc.wait_for(r"^User code: (\S+)$").group(1)
    env.svc.approve_device(code, ALICE)
    rc, out = proc.finish()
    assert rc == 0, out
    path = os.path.join(tokens, "flags.json")
    assert os.stat(path).st_uid == NOBODY
    with open(path) as f:
        data = json.load(f)
    env.secrets.update([data["access_token"], data["refresh_token"]])
