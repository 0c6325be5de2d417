#!/usr/bin/env python3
"""HTTP/3 throughput of genro-asgi beside hypercorn's (`--quic-bind`), the one Python ASGI
server that speaks HTTP/3, on ../shared/bench/bench_app.py.

The client is genro-loadgen over HTTP/3 (quinn + h3, one thread): the same client for
both servers, so the ratio is the figure to quote. The servers take turns, round after
round. Both run one app process: hypercorn one worker (its HTTP/3 does not work with more,
hypercorn#114), genro-asgi one worker plus its HTTP/3 front (Rust, no Python). With
`--genro-workers 2` genro-asgi is also measured with two workers behind the one front.

Needs: a release build (`cargo build --release -p genro-asgi -p genro-loadgen`),
`pip install "hypercorn[h3]" uvloop trustme`.

Usage:
  scripts/bench_h3.py [--rounds 3] [--seconds 8] [--connections 8] [--streams 8]
                      [--workloads hello,json,echo,stream] [--genro-workers 1,2]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "..", "shared", "bench")

WORKLOADS = {
    # name: (method, path, request body bytes)
    "hello": ("GET", "/", 0),
    "json": ("GET", "/json", 0),
    "echo": ("POST", "/echo", 10240),
    "stream": ("GET", "/stream", 0),
}


def free_port():
    import socket
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))
        return port


def certificates(workdir):
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    with open(certfile, "wb") as f:
        f.write(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(keyfile)
    return certfile, keyfile


def loadgen(args, port, method, path, body, seconds=None, requests=None):
    argv = [args.loadgen, "--protocol", "h3", "--insecure", "--url", "https://127.0.0.1:%d%s" % (port, path),
            "--connections", str(args.connections), "--streams", str(args.streams), "--method", method,
            "--body-size", str(body), "--timeout", "10"]
    argv += ["--duration", str(seconds)] if seconds else ["--requests", str(requests)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=(seconds or 10) + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def wait_ready(args, port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if loadgen(args, port, "GET", "/", 0, requests=1)["ok"] == 1:
                return True
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.3)
    return False


def specs(args, workdir, certfile, keyfile):
    out = {}
    for workers in args.genro_workers:
        name = "genro" if workers == 1 else "genro-%dw" % workers

        def genro(port, workers=workers):
            ini = os.path.join(workdir, "server-%d.ini" % workers)
            with open(ini, "w") as f:
                f.write("[server]\nhost = 127.0.0.1\nport = %d\nworkers = %d\n\n"
                        "[application]\napp = bench_app:app\napp_dir = %s\n\n"
                        "[ssl]\nenabled = true\ncertfile = %s\nkeyfile = %s\n\n"
                        "[http3]\nenabled = true\n\n"
                        "[logging]\nlevel = WARNING\naccess_log = false\n"
                        % (port, workers, BENCH, certfile, keyfile))
            return [args.genro, "serve", "--config", ini]
        out[name] = genro
    if shutil.which("hypercorn"):
        out["hypercorn"] = lambda port: [
            "hypercorn", "-w", "1", "-k", "uvloop", "--certfile", certfile, "--keyfile", keyfile,
            "-b", "127.0.0.1:%d" % port, "--quic-bind", "127.0.0.1:%d" % port, "bench_app:app"]
    else:
        print("note: hypercorn not installed; measuring genro-asgi alone", file=sys.stderr)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genro", default=os.path.join(ROOT, "target", "release", "genro-asgi"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "genro-loadgen"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--workloads", default="hello,json,echo,stream")
    ap.add_argument("--genro-workers", default="1", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    args.genro, args.loadgen = os.path.abspath(args.genro), os.path.abspath(args.loadgen)
    workloads = args.workloads.split(",")
    workdir = tempfile.mkdtemp(prefix="genro-bench-h3-")
    certfile, keyfile = certificates(workdir)
    servers = specs(args, workdir, certfile, keyfile)
    results = {name: {w: [] for w in workloads} for name in servers}
    errors = {name: {w: 0 for w in workloads} for name in servers}
    for rnd in range(args.rounds):
        for name, argv_of in servers.items():
            port = free_port()
            proc = subprocess.Popen(argv_of(port), cwd=BENCH, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                if not wait_ready(args, port, proc):
                    print("%s did not start" % name, file=sys.stderr)
                    continue
                for w in workloads:
                    method, path, body = WORKLOADS[w]
                    report = loadgen(args, port, method, path, body, seconds=args.seconds)
                    results[name][w].append(report["rps"])
                    errors[name][w] += report["failed"] + report["connect_errors"]
                    print("round %d %-10s %-7s %9.0f req/s  failed %d" % (
                        rnd + 1, name, w, report["rps"], report["failed"]), file=sys.stderr)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    names = list(servers)
    print("| workload | " + " | ".join("%s req/s" % n for n in names) + " | " +
          " | ".join("%s / %s" % (names[0], n) for n in names[1:]) + " | errors |")
    print("|" + " --- |" * (1 + len(names) + len(names) - 1 + 1))
    for w in workloads:
        med = {n: statistics.median(results[n][w]) if results[n][w] else 0.0 for n in names}
        ratios = ["%.2fx" % (med[names[0]] / med[n]) if med[n] else "-" for n in names[1:]]
        errs = ", ".join("%s %d" % (n, errors[n][w]) for n in names)
        print("| %s | %s | %s | %s |" % (w, " | ".join("%.0f" % med[n] for n in names), " | ".join(ratios), errs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "errors": errors, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
