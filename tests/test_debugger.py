"""The remote debugger (issue 18): a request whose app raised waits for `genro-asgi debug
attach`, which runs a real pdb post-mortem session on it through a pty, with the real
binary and several workers. Also the listener's guards: the secret, allowed_ips, the
attempt limit, the wait's timeout, a drain, and the configuration rules."""

import json
import re
import signal
import socket
import threading
import time

import httpx
import pexpect

from conftest import BIN, free_port, run_cli

SECRET = "correct-horse-battery"
APP = "debug_app:app"


def debug_server(server, workers=1, wait=30, **debug):
    port = free_port()
    s = server(app=APP, workers=workers, sections={
        "server": {"debug": True},
        "debug": {"enabled": True, "secret": SECRET, "debug_port": port, "wait": wait, **debug}})
    s.debug_port = port
    return s


def attach(s, *args, secret=SECRET, timeout=30):
    env = {"GENRO_ASGI_DEBUG_SECRET": secret}
    return run_cli("debug", "attach", "--config", str(s.config), *args, env=env, timeout=timeout)


class Failing:
    """`GET /boom` on its own thread: the response, once the debugger lets it go."""

    def __init__(self, s):
        self.response = None
        self.thread = threading.Thread(target=self._get, args=(s,), daemon=True)
        self.thread.start()

    def _get(self, s):
        self.response = httpx.get(s.url + "/boom", timeout=120)

    def result(self, timeout=60):
        self.thread.join(timeout)
        assert self.response is not None, "the request was not released"
        return self.response


def waiting(s, count=1):
    """The sessions listed once `count` requests wait (parsed from `--list`)."""
    deadline = time.monotonic() + 30
    while True:
        r = attach(s, "--list", "--wait", "5")
        rows = [line.split() for line in r.stdout.splitlines()[1:] if re.match(r"\s*\d+\s+[0-9a-f]{16}\s", line)]
        if len(rows) >= count or time.monotonic() > deadline:
            return r, rows
        time.sleep(0.2)


def test_a_pdb_session_on_the_failing_request(server):
    s = debug_server(server, workers=2)
    failing = Failing(s)
    child = pexpect.spawn(BIN, ["debug", "attach", "--config", str(s.config), "--wait", "20"],
                          env={"GENRO_ASGI_DEBUG_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
                          encoding="utf-8", timeout=20)
    try:
        child.expect(r"GET /boom\s+ZeroDivisionError: division by zero")
        child.expect(r"-> return sum\(values\) / count")
        child.expect_exact("(Pdb) ")
        for command, answer in [
            ("p count", "0"),
            ("p values", "[3, 4, 5]"),
            ("pp sorted(locals())", "['count', 'label', 'values']"),
            ("p label", "'basket-7'"),
            ("where", 'average(basket, label="basket-7")'),
            ("up", "-> average(basket, label=\"basket-7\")"),
            ("p basket", "[3, 4, 5]"),
            ("down", "-> return sum(values) / count"),
            ("envelope", "path        /boom"),
        ]:
            child.sendline(command)
            child.expect_exact(answer)
            child.expect_exact("(Pdb) ")
        assert failing.thread.is_alive(), "the request waits while the debugger is attached"
        child.sendline("continue")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    r = failing.result()
    assert r.status_code == 500 and "error id: " + r.headers["x-request-id"] in r.text
    rid = r.headers["x-request-id"]
    s.wait_log("debugger: 127.0.0.1:")
    assert re.search(r"debugger: 127\.0\.0\.1:\d+ attaches to request %s \(worker pid \d+\)" % rid, s.log), s.log
    assert "debugger attached to request %s from 127.0.0.1:" % rid in s.log
    assert "request %s raised ZeroDivisionError: waiting up to 30s for a debugger" % rid in s.log
    # The other worker kept serving meanwhile, and this one serves again.
    assert httpx.get(s.url + "/", timeout=10).text == "ok"


def test_two_workers_each_with_a_waiting_request(server):
    s = debug_server(server, workers=2, wait=60)
    failing = []
    pids = set()
    while len(pids) < 2 and len(failing) < 24:
        failing.append(Failing(s))
        _, rows = waiting(s, len(failing))
        pids = {row[3] for row in rows}
    assert len(pids) == 2, "requests wait in both workers"
    _, rows = waiting(s, len(failing))
    assert len(rows) == len(failing)
    # Attach to one in each worker; Ctrl-D (the end of input) releases it.
    for pid in sorted(pids):
        rid = next(row[1] for row in rows if row[3] == pid)
        r = run_cli("debug", "attach", "--config", str(s.config), "--request", rid,
                    env={"GENRO_ASGI_DEBUG_SECRET": SECRET}, timeout=30, input="p values\n")
        assert r.returncode == 0, r.stderr
        assert "[3, 4, 5]" in r.stdout
        s.wait_log("debugger detached from request %s" % rid)
    _, left = waiting(s, 0)
    assert len(left) == len(failing) - 2
    started = time.monotonic()
    s.stop()  # the drain releases the rest at once (graceful_timeout is 10 s)
    assert time.monotonic() - started < 8
    for f in failing:
        assert f.result(timeout=30).status_code == 500


def test_a_request_nobody_attaches_to_gets_its_500_after_wait(server):
    s = debug_server(server, wait=1)
    started = time.monotonic()
    r = httpx.get(s.url + "/boom", timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 500 and 1.0 <= took < 5, took
    s.wait_log("no debugger attached to request %s within 1s" % r.headers["x-request-id"])
    r = attach(s)
    assert r.returncode == 1 and "no request is waiting for a debugger" in r.stdout


def test_a_drain_stops_the_wait(server):
    s = debug_server(server, wait=120)
    failing = Failing(s)
    waiting(s, 1)
    started = time.monotonic()
    assert s.stop(signal.SIGTERM) == 0
    assert failing.result().status_code == 500
    assert time.monotonic() - started < 10
    assert "stops waiting for a debugger: the worker drains" in s.log


def test_a_wrong_secret_is_refused_and_five_lock_the_address_out(server):
    s = debug_server(server)
    failing = Failing(s)
    waiting(s, 1)
    # A request line longer than 4 KiB, or one that is not JSON, is answered and closed.
    for sent, error in [(b"x" * 4096, "too long"), (b"hello\n", "not the expected JSON")]:
        with socket.create_connection(("127.0.0.1", s.debug_port), timeout=10) as raw:
            raw.sendall(sent)
            answer = json.loads(raw.makefile().readline())
            assert error in answer["error"], answer
    # Opened before the lockout, used after it: refused too.
    early = socket.create_connection(("127.0.0.1", s.debug_port), timeout=10)
    for n in range(1, 6):
        if n == 3:
            assert attach(s, "--list").returncode == 0, "a right secret between wrong ones..."
        r = attach(s, "--list", secret="wrong-horse")
        assert r.returncode == 1 and "genro-asgi debug: wrong secret" in r.stderr, r.stderr
        s.wait_log("({} of 5 allowed in 60 s)".format(n))
    r = attach(s, "--list")
    assert r.returncode == 1 and re.search(r"too many wrong secrets from 127\.0\.0\.1: try again in \d+ s", r.stderr), r.stderr
    assert "wrong secret from 127.0.0.1:" in s.log
    early.sendall(json.dumps({"secret": SECRET, "op": "list"}).encode() + b"\n")
    assert "too many wrong secrets" in json.loads(early.makefile().readline())["error"]
    early.close()
    s.stop()
    failing.result()


def test_a_peer_outside_allowed_ips_is_refused_before_the_secret(server):
    s = debug_server(server, allowed_ips="10.0.0.0/8")
    for secret in (SECRET, "wrong-horse"):
        r = attach(s, "--list", secret=secret)
        assert r.returncode == 1 and "your address is not in [debug] allowed_ips" in r.stderr, r.stderr
    s.wait_log("debugger: refused 127.0.0.1:")
    assert "wrong secret" not in s.log, "refused before the secret was read"
    assert "remote debugger on 127.0.0.1:%d" % s.debug_port in s.log, "loopback by default"


def test_the_debugger_needs_debug_mode_and_a_secret(tmp_path):
    base = ["serve", "--app", APP, "--set", "debug.enabled=true"]
    r = run_cli(*base, "--set", "debug.secret=x", timeout=30)
    assert r.returncode != 0
    assert "[debug] enabled = true requires [server] debug = true" in r.stderr, r.stderr
    r = run_cli(*base, "--set", "server.debug=true", timeout=30)
    assert r.returncode != 0
    assert "[debug] enabled = true requires [debug] secret (GENRO_ASGI_DEBUG_SECRET)" in r.stderr, r.stderr
    r = run_cli("debug", "attach", timeout=30)
    assert r.returncode == 1 and "[debug] enabled is false" in r.stderr
