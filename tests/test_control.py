"""The control plane's diagnostics against the real binary: `ctl requests` and `ctl stacks`
(also while the app blocks its event loop), hang detection by loop stall with the stacks in
the log, crash-loop visibility, and SIGUSR1 log reopening."""

import json
import os
import signal
import threading
import time

import httpx

from conftest import ctl, ready_pids, status, wait_for


def background_get(url, timeout=30):
    """Starts a GET in a thread; returns the thread and a dict that receives the response."""
    out = {}

    def run():
        try:
            out["response"] = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_ctl_requests_lists_in_flight_requests(server):
    # Layout (a): a worker whose loop is blocked still reads the requests sent to it (in
    # layout (b) they wait unread in its listen queue, so they are not in flight yet).
    s = server(workers=2, sections={"server": {"threads": 1}})
    assert ctl(s, "requests").stdout.strip() == "no requests in flight"
    threads = [background_get(s.url + "/sleep?s=3") for _ in range(3)]
    threads.append(background_get(s.url + "/block?s=3"))

    def listed():
        r = ctl(s, "requests", "--json")
        assert r.returncode == 0, r.stderr
        reports = json.loads(r.stdout)["workers"]
        requests = [req for w in reports for req in w.get("requests", [])]
        return requests if len(requests) == 4 else None

    requests = wait_for(listed, 10, "four requests listed")
    assert sorted(r["path"] for r in requests) == ["/block", "/sleep", "/sleep", "/sleep"]
    assert {r["method"] for r in requests} == {"GET"}
    assert all(r["protocol"] == "http1" and r["client"].startswith("127.0.0.1:") for r in requests)
    assert all(0 <= r["age"] < 5 for r in requests)
    # The worker whose loop is blocked in time.sleep() still answers: the registry is Rust's.
    table = ctl(s, "requests")
    assert table.returncode == 0
    assert "/block" in table.stdout and "/sleep" in table.stdout and "age" in table.stdout
    for t, out in threads:
        t.join(10)
        assert out["response"].status_code == 200
    wait_for(lambda: "no requests in flight" in ctl(s, "requests").stdout, 10, "registry empty")


def test_ctl_stacks_shows_a_blocked_loop(server):
    s = server(workers=1)
    for path, frame in (("/spin?s=4", "block_the_loop_spinning"), ("/block?s=4", "block_the_loop_in_sleep")):
        t, out = background_get(s.url + path)
        time.sleep(1)
        started = time.monotonic()
        r = ctl(s, "stacks")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 3, "the dump does not wait for the loop"
        assert "[event loop]" in r.stdout
        assert frame in r.stdout and "basic.py" in r.stdout, r.stdout
        t.join(10)
        assert out["response"].status_code == 200
    r = ctl(s, "stacks", "--json")
    (report,) = json.loads(r.stdout)["workers"]
    assert report["pid"] == s.worker_pids()[0] and "Thread 0x" in report["stacks"]


def test_blocked_loop_is_killed_with_its_stacks_logged(server):
    s = server(workers=1, sections={"server": {"worker_timeout": 2}})
    (victim,) = s.worker_pids()
    t, out = background_get(s.url + "/block?s=60", timeout=30)
    s.wait_log("event loop blocked for", timeout=15)
    s.wait_log("stacks of the hung worker", timeout=5)
    assert "block_the_loop_in_sleep" in s.log
    wait_for(lambda: ready_pids(s) and victim not in ready_pids(s), 15, "respawn")
    assert httpx.get(s.url, timeout=5).status_code == 200
    t.join(10)
    assert "response" not in out or out["response"].status_code >= 500


def test_loop_lag_is_reported(server):
    s = server(workers=1)
    httpx.get(s.url + "/spin?s=1.5", timeout=10)
    lags = []
    for _ in range(30):
        lags.append(status(s)["workers"][0]["loop_lag_ms"])
        if max(lags) >= 500:
            break
        time.sleep(0.1)
    assert max(lags) >= 500, lags


def test_crash_loop_is_visible_in_status_and_log(server, tmp_path):
    marker = tmp_path / "break-startup"
    s = server(app="flaky_startup:app", workers=1, env={"FLAKY_MARKER": str(marker)})
    (first,) = s.worker_pids()
    marker.write_text("x")
    os.kill(first, signal.SIGKILL)

    def crash_looping():
        st = status(s)
        return [r for r in st["respawning"] if r["crash_loop"]]

    (slot,) = wait_for(crash_looping, 20, "crash loop in status")
    assert slot["slot"] == 0 and slot["failures"] >= 3 and slot["respawn_in"] >= 0
    assert "slot 0 is crash-looping" in s.log
    table = ctl(s, "status").stdout
    assert "(crash loop)" in table
    marker.unlink()
    wait_for(lambda: ready_pids(s), 30, "a worker again once startup works")
    assert httpx.get(s.url, timeout=5).status_code == 200


def test_sigusr1_reopens_log_files(server, tmp_path):
    log = tmp_path / "genro.log"
    s = server(workers=2, sections={"logging": {"file": str(log), "access_log": True}},
               start=False)
    s.start(wait=False)
    wait_for(lambda: log.exists() and "serving " in log.read_text(), 30, "serving in the log file")
    assert httpx.get(s.url + "/?before", timeout=5).status_code == 200
    wait_for(lambda: "/?before" in log.read_text(), 10, "access line")
    rotated = tmp_path / "genro.log.1"
    log.rename(rotated)
    s.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log.exists() and "log file reopened" in log.read_text(), 10, "reopen")
    # Every worker reopened too: keep-alive-free requests reach both workers.
    for i in range(20):
        assert httpx.get(s.url + "/?after%d" % i, timeout=5).status_code == 200
    wait_for(lambda: log.read_text().count("/?after") == 20, 10, "access lines in the new file")
    assert "/?after" not in rotated.read_text()
    assert s.stop() == 0
