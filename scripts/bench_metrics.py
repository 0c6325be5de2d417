#!/usr/bin/env python3
"""Cost of [metrics] on the request path: genro-asgi with metrics off and on, in alternating
rounds (so machine noise hits both alike), wrk on the hello workload of
../shared/bench/bench_app.py, one worker. With metrics on, a scraper reads /metrics every
second during the run (Prometheus usually scrapes every 15-60 s).

Two figures per run: requests per second, and the worker process's CPU time per request
(user + system, from /proc): the second is what the metrics add to each request, and it
moves much less with the machine's noise than throughput does.

Usage: scripts/bench_metrics.py --genro target/release/genro-asgi [--rounds 5] [--seconds 8]
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start on %d" % port)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(supervisor):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == supervisor:
                        return int(entry)
            except (OSError, ValueError):
                pass
    raise SystemExit("no worker process found")


def run(genro, metrics, seconds, connections, workdir):
    port, mport = free_port(), free_port()
    ini = os.path.join(workdir, "server.ini")
    with open(ini, "w") as f:
        f.write("[server]\nhost = 127.0.0.1\nport = %d\nworkers = 1\nrun_dir = %s/run\n\n"
                "[application]\napp = bench_app:app\napp_dir = %s\n\n"
                "[logging]\nlevel = WARNING\n\n"
                "[metrics]\nenabled = %s\nexport_port = %d\n"
                % (port, workdir, os.path.abspath(BENCH), "true" if metrics else "false", mport))
    proc = subprocess.Popen([genro, "serve", "--config", ini], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(0.5)
        stop = threading.Event()
        scrapes = []

        def scrape():
            while not stop.wait(1.0):
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as r:
                    scrapes.append(len(r.read()))

        scraper = threading.Thread(target=scrape, daemon=True)
        if metrics:
            scraper.start()
        worker = worker_pid(proc.pid)
        cpu_before = cpu_seconds(worker)
        out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", "%ds" % seconds,
                              "http://127.0.0.1:%d/" % port], capture_output=True, text=True).stdout
        cpu = cpu_seconds(worker) - cpu_before
        stop.set()
        if metrics:
            scraper.join()
            assert scrapes, "no scrape succeeded"
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        return rps, cpu / requests * 1e6, errors.group(0) if errors else "", len(scrapes)
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genro", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    results = {False: [], True: []}
    cpu = {False: [], True: []}
    with tempfile.TemporaryDirectory() as workdir:
        for n in range(args.rounds):
            for metrics in (False, True):
                rps, us, errors, scrapes = run(args.genro, metrics, args.seconds, args.connections, workdir)
                results[metrics].append(rps)
                cpu[metrics].append(us)
                print("round %d metrics %-3s %9.0f req/s %6.2f us CPU/request %s%s" % (
                    n + 1, "on" if metrics else "off", rps, us,
                    "(%d scrapes) " % scrapes if metrics else "", errors), flush=True)
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print("median off %.0f req/s, on %.0f req/s: on/off = %.3f (%+.1f%%)" % (off, on, on / off, (on / off - 1) * 100))
    off, on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print("median worker CPU per request: off %.2f us, on %.2f us (%+.1f%%)" % (off, on, (on / off - 1) * 100))


if __name__ == "__main__":
    main()
