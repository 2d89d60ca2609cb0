#!/usr/bin/python3
"""Benchmark: what the module costs an FTP upload.

Measures, in one run and on the same machine, proftpd with mod_mailoauth
recording uploads against proftpd without the module:
  * one session, N uploads: time from STOR to the 226 reply, per upload
  * N sessions of one upload each (login, STOR, QUIT): uploads per second,
    which includes the journal each session opens
Prints a table.  Usage: bench_uploads.py [N]
"""

import ftplib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "t", "lib"))

from proftpd import ProFTPD  # noqa: E402


def one_session(srv, n, payload):
    lat = []
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port)
    ftp.login("alice", srv.password)
    for i in range(n):
        t0 = time.perf_counter()
        ftp.storbinary("STOR s-%05d.bin" % i, io.BytesIO(payload))
        lat.append(time.perf_counter() - t0)
    ftp.quit()
    return lat


def many_sessions(srv, n, payload):
    t0 = time.perf_counter()
    for i in range(n):
        ftp = ftplib.FTP()
        ftp.connect(srv.host, srv.port)
        ftp.login("alice", srv.password)
        ftp.storbinary("STOR m-%05d.bin" % i, io.BytesIO(payload))
        ftp.quit()
    return n / (time.perf_counter() - t0)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    base = tempfile.mkdtemp(prefix="mailoauth-bench.", dir="/tmp")
    os.chmod(base, 0o755)
    payload = os.urandom(1024)
    results = {}
    try:
        for label, kwargs in (("without mod_mailoauth", {"load_module": False}),
                              ("with mod_mailoauth", {})):
            srv = ProFTPD(os.path.join(base, label.replace(" ", "-")), module,
                          trace_level=0, **kwargs).start()
            try:
                # Warm up (page cache, first fork).
                one_session(srv, 20, payload)
                lat = one_session(srv, n, payload)
                rate = many_sessions(srv, max(n // 4, 50), payload)
                if kwargs == {}:
                    srv.wait_log("upload event", count=20 + n + max(n // 4, 50),
                                 timeout=120)
                results[label] = (lat, rate)
            finally:
                srv.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print()
    print("Upload cost, %d uploads of 1 KiB in one FTP session; %d one-upload "
          "sessions" % (n, max(n // 4, 50)))
    print("%-24s %10s %10s %10s %14s" % ("server", "median ms", "p95 ms",
                                          "mean ms", "sessions/s"))
    for label, (lat, rate) in results.items():
        q = statistics.quantiles(lat, n=20)
        print("%-24s %10.3f %10.3f %10.3f %14.1f"
              % (label, statistics.median(lat) * 1e3, q[18] * 1e3,
                 statistics.mean(lat) * 1e3, rate))
    base_lat, base_rate = results["without mod_mailoauth"]
    mod_lat, mod_rate = results["with mod_mailoauth"]
    print("added latency per upload (median): %+.3f ms; session rate ratio: "
          "%.3f" % ((statistics.median(mod_lat) - statistics.median(base_lat))
                    * 1e3, mod_rate / base_rate))


if __name__ == "__main__":
    main()
