"""The supervised fleet: several workers on one port, respawn into the same slot, fatal
start-up errors, graceful SIGTERM with requests in flight, IPv6."""

import os
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from conftest import recv_all, run_cli


def pids_seen(server, n=60):
    seen = set()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(n):
            # New connection each time, so SO_REUSEPORT spreads them over the slots.
            seen.add(int(c.get("/pid", headers={"connection": "close"}).text))
    return seen


def test_workers_share_the_port(server):
    s = server(workers=3)
    workers = set(s.worker_pids())
    assert len(workers) == 3
    seen = pids_seen(s, 90)
    assert seen <= workers
    assert len(seen) >= 2, "connections should reach more than one worker"


def test_killed_worker_is_respawned_into_its_slot(server):
    s = server(workers=2)
    before = s.worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = s.worker_pids()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.05)
    now = s.worker_pids()
    assert len(now) == 2 and victim not in now
    s.wait_log("generation=2")
    # Every slot serves again: many fresh connections all succeed.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            seen = pids_seen(s, 40)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    assert seen <= set(now)
    assert s.stop() == 0


def test_queued_connections_survive_a_worker_crash(server):
    """Connections accepted by the kernel into a slot's queue while its worker is dead are
    served by the successor on the same socket."""
    s = server(workers=1)
    (victim,) = s.worker_pids()
    socks = queue_behind_stopped_worker(s.port, victim)
    os.kill(victim, signal.SIGKILL)
    for sock in socks:
        with sock:
            data = recv_all(sock)
            assert data.startswith(b"HTTP/1.1 200"), data
            assert data.endswith(b"Hello, world!")


def queue_behind_stopped_worker(port, victim, n=5):
    """SIGSTOPs the worker, then opens n connections with a request each: the kernel queues
    them on the slot's socket. Returns the sockets."""
    os.kill(victim, signal.SIGSTOP)  # the worker stops accepting; the kernel still queues
    # SIGSTOP is asynchronous: wait until every thread of the worker is stopped, so no
    # connection below is accepted before the test wants it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir("/proc/%d/task" % victim):
            with open("/proc/%d/task/%s/stat" % (victim, tid)) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        if all(st in ("T", "t") for st in states):
            break
        time.sleep(0.01)
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        socks.append(sock)
    return socks


def test_stop_serves_connections_already_queued(server):
    """Connections the kernel queued before SIGTERM are served by the draining worker (which
    sweeps its accept queue before closing the listener), not reset; new ones are refused."""
    s = server(workers=1)
    (victim,) = s.worker_pids()
    socks = queue_behind_stopped_worker(s.port, victim)
    s.proc.send_signal(signal.SIGTERM)
    s.wait_log("SIGTERM: draining")
    time.sleep(0.3)  # the drain message waits in the stopped worker's control socket
    os.kill(victim, signal.SIGCONT)
    for sock in socks:
        with sock:
            data = recv_all(sock)
            assert data.startswith(b"HTTP/1.1 200"), data
            assert data.endswith(b"Hello, world!")
    assert s.wait_exit(20) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=5)


def test_app_that_cannot_import_stops_with_code_3(server):
    s = server(app="broken_import:app", workers=2, start=False)
    s.start(wait=False)
    code = s.wait_exit(timeout=30)
    assert code == 3
    assert "this_module_does_not_exist" in s.log
    assert s.log.count("worker started") == 2, "no respawn loop:\n" + s.log


def test_missing_attribute_is_a_clear_load_error(server):
    s = server(app="basic:nope", start=False)
    s.start(wait=False)
    assert s.wait_exit(timeout=30) == 3
    assert "has no attribute 'nope'" in s.log


def test_failed_lifespan_startup_stops_with_code_4(server):
    s = server(app="failing_startup:app", start=False)
    s.start(wait=False)
    assert s.wait_exit(timeout=30) == 4
    assert "database unreachable" in s.log


def test_sigterm_finishes_in_flight_requests_and_runs_lifespan_shutdown(server, tmp_path):
    log = tmp_path / "lifespan.log"
    s = server(workers=2, env={"LIFESPAN_LOG": str(log)})
    results = []

    def slow():
        results.append(httpx.get(s.url + "/sleep?s=2", timeout=10).text)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let the requests reach the app before the signal
    started = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    for t in threads:
        t.join()
    assert results == ["slept"] * 4
    assert time.monotonic() - started < 10
    lines = log.read_text().split()
    assert lines.count("startup") == 2 and lines.count("shutdown") == 2
    # After the drain nobody listens any more.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_sigint_drains_too(server):
    s = server()
    assert httpx.get(s.url, timeout=5).status_code == 200
    assert s.stop(signal.SIGINT) == 0


def test_graceful_timeout_bounds_the_drain(server):
    s = server(sections={"server": {"graceful_timeout": 1}})
    outcome = []

    def hang():
        outcome.append(httpx.get(s.url + "/sleep?s=30", timeout=40).status_code)

    t = threading.Thread(target=hang, daemon=True)
    t.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8
    t.join(5)
    assert outcome == [503], "a request cut by the drain timeout is answered 503"
    assert "graceful_timeout reached" in s.log
    assert re.search(r"cancelling request [0-9a-f]{16} GET /sleep from 127\.0\.0\.1:\d+ \(http1, running", s.log), s.log
    assert "request cancelled" in s.log


def test_ipv6_host(server):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback in this sandbox")
    s = server(host="::1")
    r = httpx.get("http://[::1]:%d/scope" % s.port, timeout=5)
    assert r.json()["server"][0] == "::1"


def test_port_in_use_is_a_clear_error(server, tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    with blocker:
        s = server(start=False, sections={"server": {"port": port}})
        s.start(wait=False)
        assert s.wait_exit(timeout=30) != 0
    assert "cannot listen on 127.0.0.1:%d" % port in s.log
