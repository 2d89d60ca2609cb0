#!/usr/bin/python3
"""Benchmark: what the module costs the proftpd master.

Measures, in one run and on the same machine, proftpd with mod_mailoauth
active (engine on, its supervisor and worker running) against the same
configuration without the module:
  * connect-to-greeting: time from TCP connect to the 220 line, over N
    connections spaced 150 ms apart (spaced, so that each one meets the
    master idle, as a timer of the master's would find it);
  * shutdown: time from SIGTERM to the master's exit (after it has
    stopped the module's processes), over R starts and stops;
  * the master's context switches over 5 idle seconds (a periodic timer
    shows here as wake-ups).
Prints a table.  Usage: bench_master.py [N] [R]
"""

import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(TOP, "t", "lib"))

from proftpd import ProFTPD, proc_status  # noqa: E402


def greeting_ms(srv):
    t0 = time.perf_counter()
    s = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        f = s.makefile("rb")
        line = f.readline()
        elapsed = (time.perf_counter() - t0) * 1000
        assert line.startswith(b"220"), line
        s.sendall(b"QUIT\r\n")
        f.readline()
    finally:
        s.close()
    return elapsed


def switches(pid):
    st = proc_status(pid)
    return int(st["voluntary_ctxt_switches"]) + \
        int(st["nonvoluntary_ctxt_switches"])


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * len(values))) - 1))
    return values[k]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    module = os.environ.get("MAILOAUTH_MODULE",
                            os.path.join(TOP, "build", "mod_mailoauth.so"))
    base = tempfile.mkdtemp(prefix="mailoauth-bench.", dir="/tmp")
    os.chmod(base, 0o755)
    results = {}
    try:
        for label, kwargs in (("without mod_mailoauth", {"load_module": False}),
                              ("with mod_mailoauth", {})):
            wd = os.path.join(base, label.replace(" ", "-"))
            lat, stops = [], []
            srv = ProFTPD(wd, module, trace_level=0, **kwargs).start()
            try:
                greeting_ms(srv)            # warm up
                time.sleep(1)
                before = switches(srv.pid)
                time.sleep(5)
                idle = switches(srv.pid) - before
                for _ in range(n):
                    time.sleep(0.15)
                    lat.append(greeting_ms(srv))
            finally:
                srv.stop()
            for _ in range(rounds):
                srv = ProFTPD(wd, module, trace_level=0, **kwargs).start()
                time.sleep(0.5)
                t0 = time.perf_counter()
                os.kill(srv.pid, signal.SIGTERM)
                srv.proc.wait(15)
                stops.append((time.perf_counter() - t0) * 1000)
                srv.stop()
            results[label] = (lat, stops, idle)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print()
    print("The master's pace: %d connections spaced 150 ms apart, %d stops"
          % (n, rounds))
    print()
    print("%-24s %10s %10s %10s %12s %14s" % (
        "", "greet p50", "greet p90", "greet max", "stop median",
        "idle wakeups"))
    for label, (lat, stops, idle) in results.items():
        print("%-24s %8.2fms %8.2fms %8.2fms %10.1fms %11d/5s" % (
            label, statistics.median(lat), pct(lat, 90), max(lat),
            statistics.median(stops), idle))
    print()


if __name__ == "__main__":
    main()
