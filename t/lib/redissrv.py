"""A private redis-server (Debian's) on a loopback port, for the cluster tests.

Not the system service: each test module starts its own, with its data in a
work directory, the append-only file fsynced on every write (as the cluster
deployment guide asks), and no RDB snapshots.  stop() and start() again
keep the port and the data: a Redis restart loses nothing.
"""

import atexit
import os
import shutil
import subprocess
import time

from netutil import free_port, wait_port

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def available():
    return os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)


class RedisServer:
    def __init__(self, workdir, port=None, password=None):
        self.dir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.password = password
        self.proc = None
        self.logfile = os.path.join(workdir, "redis.log")
        atexit.register(self.stop)

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", self.host,
               "--save", "", "--appendonly", "yes",
               "--appendfsync", "always", "--dir", self.dir,
               "--logfile", self.logfile, "--daemonize", "no"]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_port(self.host, self.port, timeout=10)
        # Accepting connections is not yet serving: wait for PONG.
        deadline = time.monotonic() + 10
        while self.cli("PING").strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer:\n"
                                   + self.log_text())
            time.sleep(0.05)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(self, *args):
        cmd = [REDIS_CLI, "-h", self.host, "-p", str(self.port)]
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
        res = subprocess.run(cmd + list(args), capture_output=True, text=True,
                             timeout=10, env=env)
        return res.stdout

    def log_text(self):
        try:
            with open(self.logfile) as f:
                return f.read()
        except OSError:
            return ""

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
