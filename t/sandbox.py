#!/usr/bin/python3
"""A self-contained local sandbox: proftpd with mod_mailoauth on loopback.

  sandbox.py start   build nothing, start the sandbox, show an upload
                     reaching the worker, leave it running
  sandbox.py stop    stop it and remove its files
  sandbox.py status  what runs and where

No Azure account or network is needed: everything listens on 127.0.0.1.
"""

import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))

from certs import TestPKI  # noqa: E402
from proftpd import ProFTPD, alive  # noqa: E402

BASE = os.environ.get("MAILOAUTH_SANDBOX", "/tmp/mailoauth-sandbox")
USER = "demo"


def say(text=""):
    print(text, flush=True)


def pid_from(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop():
    pid = pid_from(os.path.join(BASE, "ftp", "proftpd.pid"))
    if pid and alive(pid):
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.1)
        say("stopped proftpd (pid %d)" % pid)
    subprocess.run(["rm", "-rf", BASE])


def start():
    if os.geteuid() != 0:
        sys.exit("the sandbox starts proftpd as root (it switches to 'nobody'):"
                 " run it with sudo")
    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    if not os.path.exists(module):
        sys.exit("%s is missing: run ./configure && make first" % module)
    stop()
    os.makedirs(BASE)
    os.chmod(BASE, 0o755)
    pki = TestPKI(os.path.join(BASE, "pki")).create()
    srv = ProFTPD(os.path.join(BASE, "ftp"), module,
                  proftpd=os.environ.get("PROFTPD", "/usr/sbin/proftpd"),
                  users={USER: 2001}, pki=pki, tls=True, sftp=True,
                  trace_level=10)
    srv.password = USER
    srv.start()
    # From here on the sandbox outlives this script.
    srv.proc = None

    say("proftpd with mod_mailoauth is running on 127.0.0.1")
    say("  FTP/FTPS port %d, SFTP/SCP port %d, user '%s', password '%s'"
        % (srv.port, srv.sftp_port, USER, srv.password))
    say("  worker log: %s" % srv.log)
    say()
    sample = os.path.join(BASE, "hello.txt")
    with open(sample, "w") as f:
        f.write("Hello from the mod_mailoauth sandbox\n")
    cmd = ["curl", "-sS", "-T", sample, "-u", "%s:%s" % (USER, srv.password),
           "ftp://127.0.0.1:%d/hello.txt" % srv.port]
    say("Uploading a file:  " + " ".join(cmd))
    subprocess.run(cmd, check=True)
    srv.wait_log("upload event", timeout=15)
    say()
    say("The worker received it (%s):" % srv.log)
    for line in srv.log_text().splitlines():
        say("  " + line)
    say()
    say("Try more uploads, then watch the log:")
    say("  curl -T FILE ftp://%s:%s@127.0.0.1:%d/"
        % (USER, srv.password, srv.port))
    say("  curl --ssl-reqd --cacert %s -T FILE ftp://%s:%s@127.0.0.1:%d/"
        % (pki.ca_cert, USER, srv.password, srv.port))
    say("  curl -k -T FILE sftp://%s:%s@127.0.0.1:%d/~/"
        % (USER, srv.password, srv.sftp_port))
    say("  tail -f %s" % srv.log)
    say("Stop it with: make sandbox-stop")


def status():
    pid = pid_from(os.path.join(BASE, "ftp", "proftpd.pid"))
    if pid and alive(pid):
        say("sandbox proftpd running (pid %d) in %s" % (pid, BASE))
    else:
        say("no sandbox running")


if __name__ == "__main__":
    action = sys.argv[1] if len(sys.argv) > 1 else "start"
    {"start": start, "stop": stop, "status": status}.get(
        action, lambda: sys.exit(__doc__))()
