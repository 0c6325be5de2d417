#!/usr/bin/env python3
"""WebSocket echo benchmark: genro-asgi beside granian, uvicorn and hypercorn.

Every server runs ../shared/bench/bench_app.py (its `/ws` route echoes each message) with
one worker, started exactly as ../shared/bench/compare.py starts it; servers take turns,
round after round. The load is `genro-loadgen --protocol ws` (Rust, one thread): C
connections each send a binary message of S bytes and wait for its echo, over and over,
without compression (no extension offered), so what is measured is the server's framing
and its ASGI hand-off. The figure is echoed messages per second (round trips), and the
ratio genro-asgi/x.

`genro-h3` (in --servers) is genro-asgi with `[ssl]` and `[http3]`, loaded with
`genro-loadgen --protocol ws3`: the same echo as WebSockets over HTTP/3 (RFC 9220), each
connection its own QUIC connection, through the HTTP/3 front. No peer serves those.

Usage:
  bench_websocket.py --genro target/release/genro-asgi --loadgen target/release/genro-loadgen
                     [--servers genro,granian,uvicorn,hypercorn] [--connections 16,256]
                     [--sizes 64,16384] [--rounds 3] [--seconds 6] [--json out.json]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench"))
sys.path.insert(0, BENCH)

import compare  # noqa: E402 - the shared benchmark's server definitions


def load(loadgen, port, connections, size, seconds, h3=False):
    target = ["--protocol", "ws3", "--insecure", "--url", "wss://127.0.0.1:%d/ws" % port] if h3 else \
        ["--protocol", "ws", "--url", "ws://127.0.0.1:%d/ws" % port]
    out = subprocess.run([loadgen, *target, "--connections", str(connections), "--body-size", str(size),
                          "--duration", str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return json.loads(out.stdout)


def genro_h3(args, port, workdir):
    """genro-asgi serving the benchmark app over TLS and HTTP/3 (a trustme certificate)."""
    import trustme
    certfile, keyfile = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    if not os.path.exists(certfile):
        cert = trustme.CA().issue_cert("127.0.0.1")
        with open(certfile, "wb") as f:
            f.write(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(keyfile)
    ini = os.path.join(workdir, "server-h3.ini")
    with open(ini, "w") as f:
        f.write("[server]\nhost = 127.0.0.1\nport = %d\nworkers = 1\n\n"
                "[application]\napp = bench_app:app\napp_dir = %s\n\n"
                "[ssl]\nenabled = true\ncertfile = %s\nkeyfile = %s\n\n[http3]\nenabled = true\n\n"
                "[logging]\nlevel = WARNING\naccess_log = false\n\n[metrics]\nenabled = false\n"
                % (port, BENCH, certfile, keyfile))
    return compare.Server("genro-h3", [args.genro, "serve", "--config", ini])


def ready_h3(args, port, proc, timeout=30):
    """Ready once one WebSocket over HTTP/3 echoes (the TCP port speaks TLS here)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if load(args.loadgen, port, 1, 16, 0.2, h3=True)["messages"]:
                return True
        except (RuntimeError, subprocess.TimeoutExpired):
            time.sleep(0.3)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genro", required=True, help="path to the genro-asgi binary (release build)")
    ap.add_argument("--loadgen", required=True, help="path to genro-loadgen (release build)")
    ap.add_argument("--servers", default="genro,granian,uvicorn,hypercorn")
    ap.add_argument("--connections", default="16,256")
    ap.add_argument("--sizes", default="64,16384")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    args.genro, args.loadgen = os.path.abspath(args.genro), os.path.abspath(args.loadgen)

    workdir = tempfile.mkdtemp(prefix="genro-wsbench-")
    wanted = [s for s in args.servers.split(",") if s]
    cases = [(int(c), int(s)) for c in args.connections.split(",") for s in args.sizes.split(",")]
    results = {}  # (connections, size, server) -> [report]
    for connections, size in cases:
        for rnd in range(args.rounds):
            order = wanted[rnd % len(wanted):] + wanted[:rnd % len(wanted)]
            for name in order:
                port = compare.free_port()
                specs = compare.server_specs(args, port, workdir)
                h3 = name == "genro-h3"
                if h3:
                    specs[name] = genro_h3(args, port, workdir)
                if name not in specs:
                    if rnd == 0:
                        print("# %s: not available, skipped" % name, file=sys.stderr)
                    continue
                spec = specs[name]
                log = open(os.path.join(workdir, "%s.log" % name), "w")
                proc = subprocess.Popen(spec.argv, cwd=spec.cwd, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                try:
                    if not (ready_h3(args, port, proc) if h3 else compare.wait_ready(port, proc)):
                        print("# %s failed to start; see %s" % (name, log.name), file=sys.stderr)
                        continue
                    load(args.loadgen, port, connections, size, 2, h3)  # warm-up
                    report = load(args.loadgen, port, connections, size, args.seconds, h3)
                    report["rss_kib"] = compare.tree_rss_kib(proc.pid)
                    results.setdefault((connections, size, name), []).append(report)
                    if report["failed_connections"]:
                        print("# %s: %d connections failed: %s" % (name, report["failed_connections"],
                                                                   report["errors"]), file=sys.stderr)
                except RuntimeError as err:
                    print("# %s: load failed: %s" % (name, err), file=sys.stderr)
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    log.close()

    base = wanted[0]
    rows = []
    print("| connections | message | server | median msg/s | p99 ms | failed conns | rss MiB | ratio %s/x |" % base)
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for connections, size in cases:
        ref = results.get((connections, size, base))
        ref_rate = statistics.median(r["rate"] for r in ref) if ref else None
        for name in wanted:
            runs = results.get((connections, size, name))
            if not runs:
                continue
            rate = statistics.median(r["rate"] for r in runs)
            middle = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
            failed = sum(r["failed_connections"] for r in runs)
            rss = max(r["rss_kib"] for r in runs) / 1024.0
            ratio = ref_rate / rate if ref_rate and rate else None
            rows.append({"connections": connections, "size": size, "server": name, "rate": rate,
                         "p99_ms": middle["latency_ms"]["p99"], "failed_connections": failed,
                         "rss_mib": rss, "ratio": ratio, "runs": [r["rate"] for r in runs]})
            print("| %d | %d B | %s | %.0f | %.2f | %d | %.1f | %s |" % (
                connections, size, name, rate, middle["latency_ms"]["p99"], failed, rss,
                "%.2f" % ratio if ratio else "-"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
