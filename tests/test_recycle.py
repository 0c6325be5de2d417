"""Worker replacement with a reason: `max_requests` counted exactly by the worker itself,
`max_lifetime`, `max_rss`, crashes, hangs and reloads, each logged, counted in
`worker_restarts_total{reason}` and listed by `ctl status`."""

import collections
import os
import signal
import threading
import time

import httpx

from conftest import ctl, ready_pids, status, wait_for
from test_observability import metrics_server, samples, scrape, total


def replaced(s):
    """`ctl status`'s replacements: [(slot, pid, reason)]."""
    return [(r["slot"], r["pid"], r["reason"]) for r in status(s)["replaced"]]


def replaced_by(s, old):
    """A ready worker other than `old` serves (one `ctl status`, so no race between two)."""
    pids = ready_pids(s)
    return pids and old not in pids


def restarts(s, reason):
    return total(samples(scrape(s)), "genro_asgi_worker_restarts_total", reason=reason)


def test_max_requests_is_exact_under_concurrent_load(server):
    """8 keep-alive clients, 2 workers at 50 requests each: no worker served more than
    50 + 8 requests (its limit, plus at most the requests in flight when it reached it),
    and no request failed. Sampled at the once-a-second heartbeat, a worker overshot by
    everything it served in that second."""
    limit, clients, per_client = 50, 8, 60
    s = metrics_server(server, workers=2, sections={"server": {"max_requests": limit}})
    first = set(s.worker_pids())
    served = collections.Counter()
    failures = []
    lock = threading.Lock()

    def client():
        with httpx.Client(base_url=s.url, timeout=15) as c:
            for _ in range(per_client):
                try:
                    r = c.get("/pid")
                except httpx.TransportError as err:  # a failed request is the test's failure
                    with lock:
                        failures.append(repr(err))
                    continue
                assert r.status_code == 200, r.text
                with lock:
                    served[int(r.text)] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert sum(served.values()) == clients * per_client
    retired = [pid for pid in served if pid not in ready_pids(s)]
    assert len(retired) >= 4, served
    for pid in served:
        # No worker went past its limit by more than the requests in flight.
        assert served[pid] <= limit + clients, (pid, served)
    # Workers stopped themselves at their limit (a successor started ahead from the
    # rate could let one leave a little earlier on a slow machine).
    assert sum(1 for pid in retired if served[pid] >= limit) >= 2, served
    s.wait_log("replaced: max_requests %d reached" % limit)
    assert "reload complete" not in s.log
    reasons = [r for (_slot, pid, r) in replaced(s) if pid in first]
    assert reasons and all(r == "max_requests %d reached" % limit for r in reasons), replaced(s)
    assert restarts(s, "max_requests") >= len(retired)
    assert restarts(s, "exit") == restarts(s, "signal") == 0


def test_max_requests_with_jitter_spreads_the_limits(server):
    """With a jitter, each worker's limit is its own, 20..40, and is what it reports."""
    s = server(workers=2, sections={"server": {"max_requests": 20, "max_requests_jitter": 20}})
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for _ in range(200):
            assert c.get("/").status_code == 200
    wait_for(lambda: len(replaced(s)) >= 2, 15, "two recycles")
    for _slot, _pid, reason in replaced(s):
        words = reason.split()
        assert words[0] == "max_requests" and words[2] == "reached", reason
        assert 20 <= int(words[1]) <= 40, reason


def test_max_lifetime_replaces_the_worker_without_failing_a_request(server):
    s = metrics_server(server, workers=1, sections={"server": {"max_lifetime": 3}})
    (first,) = s.worker_pids()
    seen = set()
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=s.url, timeout=10) as c:
        while time.monotonic() < deadline and len(seen) < 2:
            r = c.get("/pid")
            assert r.status_code == 200
            seen.add(int(r.text))
            time.sleep(0.05)
    assert first in seen and len(seen) == 2, seen
    s.wait_log("worker %d (slot 0) replaced: max_lifetime 3s reached" % first)
    assert (0, first, "max_lifetime 3s reached") in replaced(s)
    assert restarts(s, "max_lifetime") >= 1
    assert "recycle complete (max_lifetime 3s reached)" in s.log


def test_max_rss_replaces_a_worker_that_grew(server):
    s = metrics_server(server, workers=1, sections={"server": {"max_rss": "150MiB"}})
    (first,) = s.worker_pids()
    wait_for(lambda: status(s)["workers"][0]["rss"] > 0, 10, "an rss report")
    before = status(s)["workers"][0]["rss"]
    assert before < 150 << 20, before
    # ctl status shows it too.
    assert "MiB" in ctl(s, "status").stdout
    assert httpx.get(s.url + "/grow?mib=200", timeout=10).text == "grown"
    wait_for(lambda: first not in s.worker_pids(), 20, "the grown worker replaced")
    (slot, pid, reason), = [r for r in replaced(s) if r[1] == first]
    assert (slot, pid) == (0, first)
    assert reason.startswith("rss ") and reason.endswith("over max_rss 150 MiB for 3 heartbeats"), reason
    assert int(reason.split()[1]) >= 200, reason
    assert restarts(s, "max_rss") == 1
    assert httpx.get(s.url, timeout=10).status_code == 200


def test_crashes_hangs_and_reloads_say_why(server):
    s = metrics_server(server, workers=1, sections={"server": {"worker_timeout": 2}})
    (first,) = s.worker_pids()
    try:
        httpx.get(s.url + "/exit?code=3", timeout=10)
    except httpx.TransportError:
        pass
    wait_for(lambda: replaced_by(s, first), 15, "respawn after exit")
    (second,) = ready_pids(s)
    os.kill(second, signal.SIGKILL)
    wait_for(lambda: replaced_by(s, second), 15, "respawn after kill")
    (third,) = ready_pids(s)
    os.kill(third, signal.SIGSTOP)
    wait_for(lambda: replaced_by(s, third), 20, "respawn after hang")
    (fourth,) = ready_pids(s)
    assert ctl(s, "reload").returncode == 0
    reasons = {pid: reason for _slot, pid, reason in replaced(s)}
    assert reasons[first] == "crash: exited with code 3", reasons
    assert reasons[second] == "crash: killed by a signal", reasons
    assert reasons[third] == "heartbeat timeout (none for 2s)", reasons
    assert reasons[fourth] == "reload", reasons
    text = ctl(s, "status").stdout
    assert "replaced (latest last):" in text and "crash: exited with code 3" in text, text
    for label in ("exit", "signal", "hung", "reload"):
        assert restarts(s, label) == 1, label


def test_a_blocked_loop_is_its_own_reason(server):
    s = server(workers=1, sections={"server": {"worker_timeout": 2}})
    (first,) = s.worker_pids()
    try:
        httpx.get(s.url + "/block?s=30", timeout=0.5)
    except httpx.TransportError:
        pass
    wait_for(lambda: replaced_by(s, first), 20, "respawn after a blocked loop")
    (reason,) = [r for _slot, pid, r in replaced(s) if pid == first]
    assert reason.startswith("event loop blocked for ") and reason.endswith("(worker_timeout 2s)"), reason


def test_max_requests_successor_is_started_ahead_under_steady_load(server):
    """One worker at a steady ~100 req/s toward a limit of 450: the supervisor sees the
    rate at the heartbeats and starts the successor before the limit, so it is ready when
    the old worker stops (no wait for a start-up), and no request fails or stalls."""
    s = server(workers=1, sections={"server": {"max_requests": 450}})
    (first,) = s.worker_pids()
    worst = 0.0
    with httpx.Client(base_url=s.url, timeout=15) as c:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and first in s.worker_pids():
            t0 = time.monotonic()
            assert c.get("/").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.01)
    s.wait_log("worker %d (slot 0): max_requests 450 reached; starting its successor" % first)
    s.wait_log("worker %d (slot 0) replaced: max_requests 450 reached" % first)
    assert s.log.index("starting its successor") < s.log.index("replaced: max_requests")
    assert worst < 1.0, worst
