"""Kernel settings from docs/DEPLOYMENT.md, measured in a network namespace of its own
(`unshare -n`, so the host's sysctls stay untouched): with `net.ipv4.tcp_migrate_req=1`
the connections queued on a removed slot's socket move to the remaining slot instead of
being reset.

The scenario: two workers, a slow request (8 s) held on each; SIGTTOU removes slot 1, whose
worker stops accepting and drains until its slow request ends; meanwhile a burst of new
connections arrives, about half of them hashed onto slot 1's socket, where they wait in
the accept queue. When the drain ends the socket closes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

SCENARIO = r'''
import fcntl, json, signal, socket, struct, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[2])
from conftest import Server, status, wait_for

# Bring up the namespace's loopback interface.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
    f.write(sys.argv[1])

server = Server(sys.argv[3], workers=2, sections={"server": {"graceful_timeout": 20}})
server.start()
try:
    def request(path):
        c = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        c.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return c

    def answer(c):
        data = b""
        try:
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            return "error: %s" % e.__class__.__name__
        finally:
            c.close()
        return "ok" if data.startswith(b"HTTP/1.1 200") else "closed"

    # A slow request on each worker (connections hash at random; 24 make both near-certain).
    slow = [request(b"/sleep?s=8") for _ in range(24)]
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGTTOU)
    wait_for(lambda: any(w["state"] == "draining" for w in status(server)["workers"]), 10, "draining")
    burst = [request(b"/pid") for _ in range(200)]
    results = [answer(c) for c in burst]
    slow_results = [answer(c) for c in slow]
    print(json.dumps({"burst": {r: results.count(r) for r in set(results)},
                      "slow": {r: slow_results.count(r) for r in set(slow_results)}}))
finally:
    server.stop()
'''


def run_scenario(migrate, tmp_path):
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    here = os.path.dirname(os.path.abspath(__file__))
    (tmp_path / str(migrate)).mkdir()
    r = subprocess.run(["unshare", "-n", sys.executable, str(script), str(migrate), here,
                        str(tmp_path / str(migrate))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def netns():
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a network namespace")
    if not os.path.exists("/proc/sys/net/ipv4/tcp_migrate_req"):
        pytest.skip("kernel without net.ipv4.tcp_migrate_req (Linux < 5.14)")
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a network namespace and set its sysctls here: %s" % probe.stderr.strip())


def test_tcp_migrate_req_keeps_connections_queued_on_a_removed_slot(netns, tmp_path):
    without = run_scenario(0, tmp_path)
    with_migrate = run_scenario(1, tmp_path)
    print("tcp_migrate_req=0:", without, "tcp_migrate_req=1:", with_migrate)
    # The slow requests finish either way (the drain waits for them).
    assert without["slow"] == {"ok": 24} and with_migrate["slow"] == {"ok": 24}
    # Without migration the queued connections of the removed slot are reset...
    assert without["burst"].get("ok", 0) < 200, without
    # ...with it, every one is served by the remaining worker.
    assert with_migrate["burst"] == {"ok": 200}, with_migrate
