"""Executors (issue 18): `genro_asgi.run_in_executor` on the worker's thread and process
pools, with the real binary. CPU-bound work in the process pool leaves the event loop
free (the watchdog says nothing; the same work inline trips it), failures are clear
exceptions, the pool recovers from a dead process, `ctl requests` and the metrics list
the work, and a drain waits for pending work, then cancels what is left and says so."""

import os
import re
import signal
import threading
import time

import httpx

from conftest import ctl, free_port, wait_for

APP = "executors_app:app"


def pools(server, threads=2, processes=2, shutdown_timeout=30, **sections):
    return server(app=APP, sections={
        "executors": {"threads": threads, "processes": processes, "shutdown_timeout": shutdown_timeout},
        **sections})


def get(s, target, timeout=30):
    return httpx.get(s.url + target, timeout=timeout)


def test_cpu_work_in_the_process_pool_leaves_the_loop_free(server):
    s = pools(server, watchdog={"interval": 0.2, "timeout": 1, "critical": 300})
    assert get(s, "/spin?s=0").status_code == 200  # the pool's processes are started
    result = {}
    spinning = threading.Thread(target=lambda: result.update(r=get(s, "/spin?s=3")))
    spinning.start()
    time.sleep(0.3)
    slowest = 0.0
    while spinning.is_alive():
        started = time.monotonic()
        assert get(s, "/", timeout=5).text == "ok"
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    spinning.join()
    worker_pid, ran_in = map(int, result["r"].text.split())
    assert ran_in != worker_pid, "the work ran in a pool process, not in the worker"
    assert slowest < 0.5, slowest
    assert "event loop has been blocked" not in s.log
    # The test can fail: the same work on the loop is what the watchdog reports.
    assert get(s, "/spin-inline?s=2").status_code == 200
    s.wait_log("event loop has been blocked", timeout=10)


def test_thread_pool_and_the_scope_extension(server):
    s = pools(server)
    assert get(s, "/thread").text.startswith("genro-executor")
    assert get(s, "/ext").text.startswith("genro-executor")
    r = get(s, "/ext?pool=nope")
    assert r.status_code == 500 and "pool must be 'thread' or 'process', not 'nope'" in r.text


def test_an_unpicklable_call_is_a_clear_exception(server):
    s = pools(server)
    r = get(s, "/lambda")
    assert r.status_code == 500
    assert r.text.startswith("NotPicklable: run_in_executor(pool='process') cannot send executors_app.app.<locals>.<lambda> to a process"), r.text
    assert "use a module-level function and picklable arguments" in r.text


def test_a_dead_pool_process_is_an_exception_and_the_pool_recovers(server):
    s = pools(server, processes=1)
    before = int(get(s, "/spin?s=0").text.split()[1])
    r = get(s, "/die")
    assert r.status_code == 500
    assert r.text.startswith("ProcessDied: a process of the process pool died while executors_app.die was running"), r.text
    after = get(s, "/spin?s=0")
    assert after.status_code == 200
    assert int(after.text.split()[1]) != before, "a new process serves the restarted pool"


def gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody reaped
    except FileNotFoundError:
        return True


def test_pool_processes_die_with_a_worker_killed_outright(server):
    s = pools(server, processes=1)
    worker, child = map(int, get(s, "/spin?s=0").text.split())
    assert not gone(child)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: gone(child), timeout=10, what="the pool process to die with its worker")


def test_a_pool_that_is_off_says_which_key_turns_it_on(server):
    s = pools(server, threads=0, processes=0)
    r = get(s, "/spin?s=0")
    assert r.status_code == 500 and "ExecutorOff: the process pool is off: set [executors] processes" in r.text
    r = get(s, "/thread")
    assert r.status_code == 500 and "ExecutorOff: the thread pool is off: set [executors] threads" in r.text


def test_ctl_requests_and_metrics_show_executor_work(server):
    port = free_port()
    s = pools(server, processes=1, metrics={"enabled": True, "export_port": port})
    get(s, "/spin?s=0")
    holders = [threading.Thread(target=get, args=(s, "/spin?s=3")) for _ in range(2)]
    for h in holders:
        h.start()

    def listed():
        out = ctl(s, "requests").stdout
        return out if out.count("executors_app.cpu_spin") == 2 else None

    out = wait_for(listed, timeout=10, what="two executor tasks in ctl requests")
    assert "executor work:" in out
    rows = [line for line in out.splitlines() if "executors_app.cpu_spin" in line]
    # One process: the older task runs, the other waits; each names its request.
    assert [row.split()[3] for row in rows] == ["running", "queued"], out
    assert all(re.search(r"\b[0-9a-f]{16}\b", row) for row in rows), out
    metrics = httpx.get("http://127.0.0.1:%d/metrics" % port, timeout=10).text
    assert re.search(r'genro_asgi_executor_tasks\{pool="process",state="running",worker="0"\} 1', metrics), metrics
    assert re.search(r'genro_asgi_executor_tasks\{pool="process",state="queued",worker="0"\} 1', metrics)
    for h in holders:
        h.join()
    metrics = httpx.get("http://127.0.0.1:%d/metrics" % port, timeout=10).text
    assert re.search(r'genro_asgi_executor_tasks_total\{outcome="completed",pool="process",worker="0"\} 3', metrics), metrics
    assert "executor work" not in ctl(s, "requests").stdout


def test_a_drain_waits_for_pending_work(server, tmp_path):
    s = pools(server)
    marker = tmp_path / "marker"
    r = get(s, "/background?s=2&marker=%s" % marker)
    assert r.text == "started"
    assert s.stop(signal.SIGTERM) == 0
    assert marker.read_text() == "done", "the work finished before the worker exited"
    assert "waiting up to 30.0s for 1 executor task(s) to finish" in s.log


def test_work_asked_for_during_the_drain_is_refused(server, tmp_path):
    s = pools(server)
    marker = tmp_path / "marker"
    assert get(s, "/chain?s=0&marker=%s" % marker).text == "started"
    wait_for(marker.exists, what="the chain without a drain")
    assert marker.read_text().startswith("accepted in genro-executor")
    marker.unlink()
    assert get(s, "/chain?s=1.5&marker=%s" % marker).text == "started"
    started = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert marker.read_text() == "RuntimeError: the worker is shutting down: it takes no new executor work"
    assert time.monotonic() - started < 10, "the drain did not wait for work it refused"


def test_a_drain_cancels_what_outlives_shutdown_timeout(server, tmp_path):
    s = pools(server, threads=1, processes=1, shutdown_timeout=1)
    get(s, "/spin?s=0")
    # One process and one thread: the second thread task is still queued.
    for target in ["/background?pool=process&s=60"] * 2 + ["/background?s=60&marker=%s" % (tmp_path / "never")] * 2:
        assert get(s, target).text == "started"
    started = time.monotonic()
    assert s.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 15
    log = s.log
    assert "stopped executors_app.cpu_spin (process pool" in log and "the pool's processes are killed" in log, log
    assert log.count("the pool's processes are killed") == 2, log
    assert log.count("abandoned executors_app.sleep_then_write (thread pool") == 1, log
    assert log.count("cancelled executors_app.sleep_then_write (thread pool") == 1, log
    assert "still queued after shutdown_timeout" in log
    assert "exiting without waiting for 1 executor thread(s) still running" in log
    assert not (tmp_path / "never").exists()
