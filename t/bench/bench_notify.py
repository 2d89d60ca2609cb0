#!/usr/bin/python3
"""Benchmark: upload notifications, measured side by side in one run.

 (a) N small FTP uploads in one session with a notification rule, against
     proftpd without the module: added latency before 226, upload rate.
 (b) M notifications from upload to delivered in a Dovecot mailbox (through
     Postfix with STARTTLS and XOAUTH2), against the classic recipe of
     running msmtp (XOAUTH2 via passwordeval) once per upload, as mod_exec
     users do.
 (c) Token-endpoint requests and SMTP connections each approach used.
 (d) The same M notifications through Microsoft Graph sendMail
     (transport=graph, against the Graph stand-in delivering into the same
     Dovecot, without its Sent Items copy), against curl run once per
     upload posting the base64 MIME message to sendMail.

Usage: bench_notify.py [N] [M]     (defaults 2000 and 1000; root needed)
"""

import base64
import ftplib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "t", "lib"))

from certs import TestPKI  # noqa: E402
from graphsvc import GraphService  # noqa: E402
from mailservers import Dovecot, Postfix  # noqa: E402
from proftpd import ProFTPD  # noqa: E402
from signin import GRAPH_SCOPES, sign_in, write_token_file  # noqa: E402
from tokensvc import TokenService  # noqa: E402

USER = "alice@contoso.test"
REDIRECT = "http://localhost:8400/callback"


def count(dovecot, user):
    res = dovecot.doveadm("mailbox", "status", "-u", user, "messages",
                          "INBOX")
    m = re.search(rb"messages=(\d+)", res.stdout)
    return int(m.group(1)) if m else 0


def wait_count(dovecot, user, n, timeout):
    deadline = time.monotonic() + timeout
    while True:
        c = count(dovecot, user)
        if c >= n or time.monotonic() > deadline:
            return c
        time.sleep(0.05)


def smtp_connections(postfix, since):
    # smtpd logs "connect from" per session ("disconnect from" too).
    return len(re.findall(r"(?<!dis)connect from", postfix.logs()[since:]))


def uploads(srv, n, prefix, payload):
    lat = []
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port)
    ftp.login("alice", srv.password)
    for i in range(n):
        t0 = time.perf_counter()
        ftp.storbinary("STOR %s-%05d.bin" % (prefix, i), io.BytesIO(payload))
        lat.append(time.perf_counter() - t0)
    ftp.quit()
    return lat


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    base = tempfile.mkdtemp(prefix="mailoauth-bench.", dir="/tmp")
    os.chmod(base, 0o755)
    payload = os.urandom(1024)
    started = []
    try:
        pki = TestPKI(os.path.join(base, "pki")).create()
        svc = TokenService(os.path.join(base, "tokensvc"), pki).start()
        started.append(svc)
        app = svc.add_app(redirect_uris=[REDIRECT])
        svc.add_user(USER)
        dovecot = Dovecot(base, pki, svc.introspect_url, users=[]).start()
        started.append(dovecot)
        postfix = Postfix(base, pki, dovecot).start()
        started.append(postfix)

        secret = os.path.join(base, "secret")
        with open(secret, "w") as f:
            f.write(app["secret"])
        os.chmod(secret, 0o600)
        account = ("MailOAuthAccount bench authority=%s tenant=contoso.test "
                   "client-id=%s client-secret=file:%s mailbox=%s ca-file=%s "
                   "proxy=none smtp=smtp://127.0.0.1:%d send-rate=1000"
                   % (svc.url, app["client_id"], secret, USER, pki.ca_cert,
                      postfix.smtp_port))

        # (a) upload latency, module off vs on (with a rule).
        plain = ProFTPD(os.path.join(base, "plain"), module, pki=pki,
                        load_module=False, trace_level=0).start()
        started.append(plain)
        uploads(plain, 20, "warm", payload)
        lat_plain = uploads(plain, n, "a", payload)
        plain.stop()

        rcpt_a = "bench-a@contoso.test"
        srv = ProFTPD(os.path.join(base, "module"), module, pki=pki,
                      trace_level=0,
                      extra_conf=account + "\nMailOAuthNotify bench to=%s"
                      % rcpt_a)
        toks = sign_in(svc, app, USER, REDIRECT)
        write_token_file(os.path.join(srv.state_dir, "tokens", "bench.json"),
                         "bench", USER, toks, 65534)
        srv.start()
        started.append(srv)
        uploads(srv, 20, "warm", payload)
        wait_count(dovecot, rcpt_a, 20, 60)
        svc.reset_stats()
        lat_mod = uploads(srv, n, "a", payload)
        delivered_a = wait_count(dovecot, rcpt_a, 20 + n, 600)

        # (b) upload to delivered: the module ...
        rcpt_b = "bench-b@contoso.test"
        srv.stop()
        srv.extra_conf = account + "\nMailOAuthNotify bench to=%s" % rcpt_b
        srv.start()
        svc.reset_stats()
        log_mark = len(postfix.logs())
        t0 = time.perf_counter()
        uploads(srv, m, "b", payload)
        got = wait_count(dovecot, rcpt_b, m, 600)
        mod_secs = time.perf_counter() - t0
        mod_tokens = sum(svc.stats()["endpoints"].get("token", {}).values()) \
            if isinstance(svc.stats().get("endpoints", {}).get("token"), dict) \
            else len([e for e in svc.stats()["log"]
                      if e.get("endpoint") == "token"])
        mod_conns = smtp_connections(postfix, log_mark)
        srv.stop()

        # ... and msmtp run once per upload, reading the token each time.
        rcpt_c = "bench-c@contoso.test"
        token_file = os.path.join(base, "msmtp.token")
        with open(token_file, "w") as f:
            f.write(toks["access_token"])
        conf = os.path.join(base, "msmtprc")
        with open(conf, "w") as f:
            f.write("account bench\nhost 127.0.0.1\nport %d\ntls on\n"
                    "tls_starttls on\ntls_trust_file %s\nauth xoauth2\n"
                    "user %s\npasswordeval cat %s\nfrom %s\n"
                    % (postfix.smtp_port, pki.ca_cert, USER, token_file, USER))
        os.chmod(conf, 0o600)
        log_mark = len(postfix.logs())
        t0 = time.perf_counter()
        for i in range(m):
            body = ("From: %s\r\nTo: %s\r\nSubject: File received: b-%05d.bin"
                    "\r\n\r\nalice uploaded b-%05d.bin (1024 bytes).\r\n"
                    % (USER, rcpt_c, i, i))
            subprocess.run(["msmtp", "-C", conf, "-a", "bench", rcpt_c],
                           input=body.encode(), check=True)
        got_c = wait_count(dovecot, rcpt_c, m, 600)
        msmtp_secs = time.perf_counter() - t0
        msmtp_conns = smtp_connections(postfix, log_mark)

        # (d) Graph: the module with transport=graph ...
        graph = GraphService(pki, svc, dovecot).start()
        started.append(graph)
        graph.sent_items = False
        rcpt_d = "bench-d@contoso.test"
        gtoks = sign_in(svc, app, USER, REDIRECT, scopes=GRAPH_SCOPES)
        srv.extra_conf = (account + " transport=graph graph=%s\n"
                          "MailOAuthNotify bench to=%s" % (graph.url, rcpt_d))
        write_token_file(os.path.join(srv.state_dir, "tokens", "bench.json"),
                         "bench", USER, gtoks, 65534)
        srv.start()
        svc.reset_stats()
        t0 = time.perf_counter()
        uploads(srv, m, "d", payload)
        got_d = wait_count(dovecot, rcpt_d, m, 600)
        graph_secs = time.perf_counter() - t0
        graph_tokens = len([e for e in svc.stats()["log"]
                            if e.get("endpoint") == "token"])
        srv.stop()

        # ... and curl once per upload, as a mod_exec script would.
        rcpt_e = "bench-e@contoso.test"
        url = "%s/v1.0/users/%s/sendMail" % (graph.url, USER)
        headers = os.path.join(base, "curl.headers")
        with open(headers, "w") as f:
            f.write("Authorization: Bearer %s\nContent-Type: text/plain\n"
                    % gtoks["access_token"])
        os.chmod(headers, 0o600)
        t0 = time.perf_counter()
        for i in range(m):
            body = ("From: %s\r\nTo: %s\r\nSubject: File received: "
                    "e-%05d.bin\r\n\r\nalice uploaded e-%05d.bin (1024 "
                    "bytes).\r\n" % (USER, rcpt_e, i, i))
            subprocess.run(["curl", "-sS", "-f", "--cacert", pki.ca_cert,
                            "-H", "@" + headers, "--data-binary", "@-", url],
                           input=base64.b64encode(body.encode()),
                           check=True, capture_output=True)
        got_e = wait_count(dovecot, rcpt_e, m, 600)
        curl_secs = time.perf_counter() - t0

        med_plain = statistics.median(lat_plain) * 1e3
        med_mod = statistics.median(lat_mod) * 1e3
        print()
        print("(a) %d uploads of 1 KiB, one FTP session" % n)
        print("%-34s %10s %10s %12s" % ("", "median ms", "p95 ms",
                                         "uploads/s"))
        for label, lat in (("proftpd without mod_mailoauth", lat_plain),
                           ("proftpd + mod_mailoauth, notifying", lat_mod)):
            print("%-34s %10.3f %10.3f %12.1f"
                  % (label, statistics.median(lat) * 1e3,
                     statistics.quantiles(lat, n=20)[18] * 1e3,
                     len(lat) / sum(lat)))
        print("added latency per upload (median): %+.3f ms; rate ratio %.3f; "
              "notifications delivered: %d/%d"
              % (med_mod - med_plain,
                 (len(lat_mod) / sum(lat_mod)) /
                 (len(lat_plain) / sum(lat_plain)), delivered_a - 20, n))
        print()
        print("(b)+(c) %d notifications, upload to delivered in Dovecot" % m)
        print("%-34s %9s %11s %12s %12s" % ("", "seconds", "mails/s",
                                             "token reqs", "SMTP conns"))
        print("%-34s %9.1f %11.1f %12d %12d"
              % ("mod_mailoauth worker", mod_secs, got / mod_secs,
                 mod_tokens, mod_conns))
        print("%-34s %9.1f %11.1f %12s %12d"
              % ("msmtp once per upload", msmtp_secs, got_c / msmtp_secs,
                 "0 (a)", msmtp_conns))
        print("%-34s %9.1f %11.1f %12d %12s"
              % ("mod_mailoauth, transport=graph", graph_secs,
                 got_d / graph_secs, graph_tokens, "-"))
        print("%-34s %9.1f %11.1f %12s %12s"
              % ("curl sendMail once per upload", curl_secs,
                 got_e / curl_secs, "0 (a)", "-"))
        print("(a) msmtp and curl cannot refresh tokens: they were handed a "
              "valid one; keeping it valid is left to a cron job.")
    finally:
        for s in reversed(started):
            try:
                s.stop()
            except Exception:
                pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
