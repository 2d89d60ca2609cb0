"""Several ProFTPD nodes, one Redis (MailOAuthRedis): three real proftpd
instances, each with its own state directory and worker, share one private
redis-server (Debian's, AOF fsynced on every write), one Postfix/Dovecot and
the token stand-in with strict refresh-token rotation (a refresh token works
once).  The cluster makes one refresh per token lifetime, never spends a
refresh token twice (invalid_grant), and delivers every notification, also
across a Redis outage, which each node logs once when it starts and once
when it ends."""

import json
import os
import time
import uuid

import pytest

from redissrv import RedisServer, available
from test_accounts import ACCOUNT, AccountServer, wait_for
from test_foundation import curl_upload
from test_signin import TOOL, Running

pytestmark = pytest.mark.skipif(not available(),
                                reason="redis-server not installed")

# Short-lived access tokens: the worker refreshes at half their life.
LIFETIME = 20
NODES = 3


@pytest.fixture(scope="module")
def mail_users():
    # Any address is a mailbox: each test uses recipients of its own.
    return []


@pytest.fixture(scope="module")
def redis():
    workdir = "/tmp/mailoauth-tests/redis-%s" % uuid.uuid4().hex[:8]
    srv = RedisServer(workdir).start()
    yield srv
    srv.cleanup()


def rcpt(tag):
    return "%s-%s@contoso.test" % (tag, uuid.uuid4().hex[:8])


class Cluster:
    def __init__(self, nodes, redis, prefix, to):
        self.nodes = nodes
        self.redis = redis
        self.prefix = prefix
        self.to = to
        self.uploads = 0

    @property
    def key(self):
        return "%s:tokens:%s" % (self.prefix, ACCOUNT)

    def record(self):
        text = self.redis.cli("GET", self.key).strip()
        return json.loads(text) if text else None

    def upload(self, node=None):
        n = self.nodes[self.uploads % len(self.nodes) if node is None
                       else node]
        self.uploads += 1
        curl_upload(n.srv, "ftp", "file-%03d.txt" % self.uploads,
                    b"upload %d" % self.uploads)

    def logs(self):
        return [n.srv.log_text() for n in self.nodes]


def make_nodes(make_proftpd, tokensvc, tokensvc_app, pki, postfix, redis,
               count=NODES):
    prefix = "c%s" % uuid.uuid4().hex[:8]
    to = rcpt("cluster")
    smtp = "smtp://127.0.0.1:%d" % postfix.smtp_port
    nodes = []
    for i in range(count):
        a = AccountServer(make_proftpd, tokensvc, tokensvc_app, pki,
                          extra="smtp=" + smtp)
        a.srv.extra_conf += ("\nMailOAuthRedis 127.0.0.1:%d prefix=%s\n"
                             "Trace mailoauth.cluster:20\n"
                             % (redis.port, prefix))
        a.srv.global_conf += ("\n<Global>\nMailOAuthNotify notify to=%s\n"
                              "</Global>\n" % to)
        nodes.append(a)
    return Cluster(nodes, redis, prefix, to)


@pytest.fixture
def cluster(make_proftpd, tokensvc, tokensvc_app, pki, postfix, redis):
    """Three nodes sharing redis; node 0 holds the sign-in at start."""
    tokensvc.set_config(rotation="strict", expires_in=LIFETIME)
    c = make_nodes(make_proftpd, tokensvc, tokensvc_app, pki, postfix, redis)
    nodes = c.nodes

    # One sign-in, on node 0; it becomes the cluster's when node 0 starts.
    nodes[0].seed()
    nodes[0].srv.start()
    wait_for(c.record, timeout=20, what="the token record in Redis")
    for a in nodes[1:]:
        a.srv.start()
    return c


def refreshes(tokensvc):
    return [e for e in tokensvc.stats()["log"]
            if e.get("grant_type") == "refresh_token"]


def assert_one_refresh_per_lifetime(entries, span):
    bad = [e for e in entries if e["status"] != 200]
    assert not bad, "refreshes refused: %r" % bad
    times = sorted(e["time"] for e in entries)
    # Each token is refreshed once, at half its life: two refreshes closer
    # than that would be two nodes refreshing the same token.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= LIFETIME / 2 - 2 for g in gaps), gaps
    assert len(times) <= span / (LIFETIME / 2 - 2) + 1, times
    # ...and the tokens did get refreshed, by the cluster, all along.
    assert len(times) >= span / LIFETIME - 1, times


def assert_no_token_in_logs(c):
    rec = c.record()
    for a in c.nodes:
        for path in (a.srv.log, a.srv.tracelog):
            try:
                with open(path) as f:
                    text = f.read()
            except OSError:
                continue
            assert rec["refresh_token"] not in text, path
            assert rec["access_token"] not in text, path


def test_bad_redis_settings_fail_syntax_check(make_proftpd):
    srv = make_proftpd()
    for line, message in [
            ("MailOAuthRedis 127.0.0.1:99999", "is not host:port"),
            ("MailOAuthRedis 127.0.0.1 prefix=a:b", "prefix="),
            ("MailOAuthRedis sentinel=127.0.0.1:26379", "master=NAME"),
            ("MailOAuthRedis 127.0.0.1 password=Inline-Pa55word",
             "password=file:"),
            ("MailOAuthRedis 127.0.0.1 password=file:/nonexistent/redis.pw",
             "cannot read the Redis password file"),
            ("MailOAuthRedis 127.0.0.1 colour=blue", "unknown setting")]:
        srv.extra_conf = line
        res = srv.syntax_check()
        assert res.returncode != 0, line
        assert message in res.stderr, res.stderr
        assert "on line" in res.stderr and srv.conf in res.stderr
        assert "Inline-Pa55word" not in res.stderr

    srv.extra_conf = "MailOAuthRedis 127.0.0.1:6390 prefix=ok db=2"
    res = srv.syntax_check()
    assert res.returncode == 0, res.stderr


def test_one_refresh_per_token_lifetime(cluster, tokensvc, dovecot):
    """Two minutes of uploads on all three nodes: the stand-in sees one
    refresh per token lifetime, never a refresh token spent twice, and
    every notification arrives."""
    c = cluster
    # Slow answers (the refresh token rotated at once, the answer two
    # seconds later): nodes whose refresh falls due together would surely
    # overlap, were it not for the lease.
    tokensvc.inject("delay", count=1000, seconds=2,
                    grant_type="refresh_token")
    tokensvc.reset_stats()
    start = time.monotonic()
    while time.monotonic() - start < 110:
        c.upload()
        time.sleep(1.5)
    span = time.monotonic() - start

    dovecot.wait_for_messages(c.to, c.uploads, timeout=90)
    assert_one_refresh_per_lifetime(refreshes(tokensvc), span)

    # Every node sent mail, with the tokens the cluster shares.
    for text in c.logs():
        assert text.count("notification for") >= c.uploads // NODES - 1
        assert "must sign in again" not in text
        assert "invalid_grant" not in text
    # The record in Redis is the one the stand-in considers valid: the
    # rotated refresh token reached Redis (once the refresh in flight, if
    # any, has had its late answer).
    tokensvc.clear_faults()

    def current():
        info = tokensvc.token_info(c.record()["refresh_token"])
        assert info.get("kind") == "refresh_token", info
        return info.get("revoked") is None
    wait_for(current, timeout=15, what="a valid refresh token in Redis")
    assert_no_token_in_logs(c)
    # The refreshes were made under the lease (traced, with keys only).
    traces = ""
    for a in c.nodes:
        with open(a.srv.tracelog) as f:
            traces += f.read()
    assert "<mailoauth.cluster:9>: lease %s:refresh:%s acquired" % (
        c.prefix, ACCOUNT) in traces
    time.sleep(2)
    assert len(dovecot.messages(c.to)) == c.uploads


def test_redis_outage(cluster, tokensvc, dovecot, redis):
    """Redis away for longer than a token lives: uploads are notified once
    it is back; each node logs one line when the outage starts and one when
    it ends; no refresh token is spent twice."""
    c = cluster
    tokensvc.reset_stats()
    start = time.monotonic()
    for _ in range(6):
        c.upload()
        time.sleep(1)
    dovecot.wait_for_messages(c.to, c.uploads, timeout=60)

    redis.stop()
    down = time.monotonic()
    while time.monotonic() - down < LIFETIME + 5:
        c.upload()
        time.sleep(2)
    for a in c.nodes:
        a.srv.wait_log("cannot be reached", timeout=30)

    redis.start()
    # The append-only file kept the record.
    assert c.record() is not None
    for a in c.nodes:
        a.srv.wait_log("reachable again", timeout=30)
    for _ in range(4):
        c.upload()
        time.sleep(1)

    dovecot.wait_for_messages(c.to, c.uploads, timeout=90)
    span = time.monotonic() - start
    entries = refreshes(tokensvc)
    assert not [e for e in entries if e["status"] != 200], entries
    gaps = [b - a for a, b in zip(sorted(e["time"] for e in entries),
                                  sorted(e["time"] for e in entries)[1:])]
    assert all(g >= LIFETIME / 2 - 2 for g in gaps), gaps
    assert len(entries) <= span / (LIFETIME / 2 - 2) + 1

    for text in c.logs():
        assert text.count("cannot be reached") == 1, text
        assert text.count("reachable again") == 1, text
        assert "must sign in again" not in text
    time.sleep(2)
    assert len(dovecot.messages(c.to)) == c.uploads
    assert_no_token_in_logs(c)


def test_signin_on_one_node_reaches_all(make_proftpd, tokensvc, tokensvc_app,
                                        pki, postfix, redis, dovecot):
    """Nobody signed in: `ftpmailoauth signin` on node 1 (reading node 1's
    proftpd.conf, MailOAuthRedis included) makes the account usable on
    every node."""
    tokensvc.set_config(device_interval=1)
    c = make_nodes(make_proftpd, tokensvc, tokensvc_app, pki, postfix, redis,
                   count=2)
    for a in c.nodes:
        a.srv.start()
        a.srv.wait_log("nobody has signed in yet", timeout=20)

    proc = Running([TOOL, "-c", c.nodes[1].srv.conf, "signin", "--device",
                    ACCOUNT], dict(os.environ, no_proxy="*", NO_PROXY="*"))
    try:
        code = proc.wait_for(r"^User code: (\S+)$").group(1)
        tokensvc.approve_device(code, "alice@contoso.test")
        rc, out = proc.finish()
    finally:
        proc.kill()
    assert rc == 0, out
    rec = c.record()
    assert rec and rec["identity"]["username"] == "alice@contoso.test"
    assert rec["refresh_token"] not in out and rec["access_token"] not in out

    c.nodes[0].srv.wait_log("found in Redis", timeout=30)
    for a in c.nodes:
        a.srv.wait_log("token ready", timeout=30)
    c.upload(0)
    c.upload(1)
    dovecot.wait_for_messages(c.to, 2, timeout=60)
    # Node 0 used the sign-in as it was: no refresh was needed.
    assert not refreshes(tokensvc)
    assert_no_token_in_logs(c)
