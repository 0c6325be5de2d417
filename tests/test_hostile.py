"""Hostile clients against one worker: memory is bounded by bytes, not by chunk counts
(`[limits] response_buffer`, `connection_buffer`, `worker_buffer`), clients that take no
bytes are cut after `send_timeout`, and a blocked loop under a flood of departed clients
keeps its backlog small (docs/SECURITY.md). Each attack also runs a health client whose
p99 must stay low.

The app (tests/apps/hostile.py) streams one shared 1 MiB chunk, so what grows is the
server's memory, not the app's."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx

from conftest import Prober, rss_mib, wait_for
from test_observability import metrics_server, samples, scrape

MIB = 1 << 20


def stats(s):
    return json.loads(httpx.get(s.url + "/stats", timeout=10).text)


def warm_rss(s):
    """The worker's pid and its RSS after a few requests (imports and caches warm)."""
    (pid,) = s.worker_pids()
    with httpx.Client() as client:
        for _ in range(50):
            client.get(s.url + "/")
    return pid, rss_mib(pid)


class H2Starver:
    """One HTTP/2 connection that opens `streams` streams with an initial window of 0 and
    never opens it: the server may send nothing. A thread keeps answering the server's
    SETTINGS and PINGs."""

    def __init__(self, port, path, streams, flowing=0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        config = h2.config.H2Configuration(client_side=True)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.resets = 0
        self.goaway = None
        self.received = {}
        self.ids = []
        for _ in range(streams):
            sid = self.conn.get_next_available_stream_id()
            self.ids.append(sid)
            self.conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                         (":authority", "127.0.0.1")], end_stream=True)
        # The first `flowing` streams get a window (kept open as their data is read).
        self.flowing = set(self.ids[:flowing])
        if self.flowing:
            self.conn.increment_flow_control_window(1 << 30)
            for sid in self.flowing:
                self.conn.increment_flow_control_window(1 << 20, stream_id=sid)
        self.sock.sendall(self.conn.data_to_send())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                with self.lock:
                    for event in self.conn.receive_data(data):
                        if isinstance(event, h2.events.StreamReset):
                            self.resets += 1
                        if isinstance(event, h2.events.DataReceived):
                            sid = event.stream_id
                            self.received[sid] = self.received.get(sid, 0) + len(event.data)
                            if sid in self.flowing:
                                self.conn.acknowledge_received_data(
                                    event.flow_controlled_length, sid)
                        if isinstance(event, h2.events.ConnectionTerminated):
                            self.goaway = event.error_code
                            self.closed.set()
                    self.sock.sendall(self.conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.closed.set()

    def reset(self, sid):
        with self.lock:
            self.conn.reset_stream(sid)
            self.sock.sendall(self.conn.data_to_send())

    def close(self):
        self.sock.close()


def non_reader(port, path):
    """An HTTP/1.1 client that asks for `path` and never reads (small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return sock


def test_http2_streams_with_a_closed_window_are_bounded_in_bytes(server):
    """The issue's first row: 200 streams with a zero window, the app streaming 1 MiB
    chunks. Was 30 MB -> 2.2 GB. The attack is held 16 s, so the health client's p99 is
    taken over about 200 probes (over 8 s, about 100: the p99 was the slowest probe)."""
    s = server(app="hostile:app")
    pid, before = warm_rss(s)
    starver = H2Starver(s.port, "/forever", 200)
    try:
        with Prober(s.url) as prober:
            wait_for(lambda: stats(s)["streams"] >= 100, timeout=20, what="streams started")
            time.sleep(16)
            grown = rss_mib(pid) - before
        print("worker %.0f MiB, grew %.1f MiB; health p99 %.1f ms"
              % (before, grown, prober.p99() * 1000))
        assert grown < 100, "worker grew %.0f MiB" % grown
        assert prober.p99() < 0.05, "health p99 %.3f s" % prober.p99()
    finally:
        starver.close()


def test_http1_clients_that_never_read_are_bounded_in_bytes(server):
    """The issue's second row: 100 HTTP/1.1 clients ask for an endless stream and never
    read. Was 150 MB -> 1.15 GB.

    The health client starts a second after the 100 streams began: their requests arrive
    at the same instant, and a request that lands in that instant waits while the loop
    starts all of them and hands over their first chunks (up to 75 ms in this debug build,
    measured), as it would behind any burst of 100 honest requests. What is measured is
    whether clients holding the worker this way slow the others down. The attack is held
    16 s, like the HTTP/2 row's, so the p99 is taken over about 200 probes: over 8 s it was
    the slowest of about 100, and one probe that met the 2-core machine busy elsewhere
    (172 and 275 ms, against 3-6 ms otherwise) failed the run."""
    s = server(app="hostile:app")
    pid, before = warm_rss(s)
    socks = [non_reader(s.port, "/forever") for _ in range(100)]
    try:
        wait_for(lambda: stats(s)["streams"] >= 100, timeout=20, what="streams started")
        time.sleep(1)
        with Prober(s.url) as prober:
            time.sleep(16)
            grown = rss_mib(pid) - before
        print("worker %.0f MiB, grew %.1f MiB; health p99 %.1f ms"
              % (before, grown, prober.p99() * 1000))
        assert grown < 100, "worker grew %.0f MiB" % grown
        assert prober.p99() < 0.05, "health p99 %.3f s" % prober.p99()
    finally:
        for sock in socks:
            sock.close()


def test_lowered_budgets_bound_lower(server):
    """With small budgets, 100 non-reading clients of a large-chunk stream stay under them
    (plus what hyper and the kernel hold per connection)."""
    s = server(app="hostile:app", sections={"limits": {
        "response_buffer": "64KiB", "connection_buffer": "64KiB", "worker_buffer": "1MiB"}})
    pid, before = warm_rss(s)
    socks = [non_reader(s.port, "/forever") for _ in range(100)]
    try:
        wait_for(lambda: stats(s)["streams"] >= 100, timeout=20, what="streams started")
        time.sleep(5)
        grown = rss_mib(pid) - before
        assert grown < 40, "worker grew %.0f MiB" % grown
        # The worker budget is shared: most streams are waiting for it, not sending.
        assert stats(s)["chunks"] < 100 * 4
    finally:
        for sock in socks:
            sock.close()


def test_send_timeout_cuts_an_http1_client_that_reads_nothing(server):
    s = metrics_server(server, workers=1, app="hostile:app",
                       sections={"limits": {"send_timeout": 2}})
    sock = non_reader(s.port, "/forever")
    try:
        started = time.monotonic()
        wait_for(lambda: stats(s)["disconnects"] == 1, timeout=15, what="the app sees the disconnect")
        assert 1.5 < time.monotonic() - started < 8
        sock.settimeout(10)
        # The server closed its end: reading drains what the kernel held, then ends.
        total = 0
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                total += len(data)
        except ConnectionResetError:
            pass
        assert total < 64 * MIB
        text = scrape(s)
        assert samples(text)[("genro_asgi_limits_hit_total",
                              frozenset({"kind": "send_timeout", "worker": "0"}.items()))] >= 1
    finally:
        sock.close()
    s.wait_log("send_timeout")


def test_send_timeout_closes_an_http2_connection_whose_windows_stay_closed(server):
    s = server(app="hostile:app", sections={"limits": {"send_timeout": 2}})
    starver = H2Starver(s.port, "/forever", 3)
    try:
        wait_for(lambda: stats(s)["streams"] == 3, timeout=15, what="streams started")
        started = time.monotonic()
        assert starver.closed.wait(15), "the connection was not closed"
        assert time.monotonic() - started < 8
        wait_for(lambda: stats(s)["disconnects"] == 3, timeout=10, what="the app sees 3 disconnects")
        # Three streams waited for their budget and three were cut: each bound is logged
        # once for the connection, never per stream.
        assert s.log.count("response_buffer: the client reads slower than the app sends") == 1, s.log
        assert s.log.count("send_timeout: the client took no response bytes") <= 1, s.log
        assert "send_timeout: closing the connection" in s.log or \
            "send_timeout: the client took no response bytes" in s.log, s.log
    finally:
        starver.close()


def test_send_timeout_aborts_one_stalled_http2_stream_while_others_flow(server):
    s = server(app="hostile:app", sections={"limits": {"send_timeout": 2}})
    client = H2Starver(s.port, "/forever", 2, flowing=1)
    flowing, stalled = client.ids
    try:
        wait_for(lambda: stats(s)["streams"] == 2, timeout=15, what="streams started")
        wait_for(lambda: stats(s)["disconnects"] == 1, timeout=15,
                 what="the stalled stream's app sees the disconnect")
        before = client.received.get(flowing, 0)
        time.sleep(1)
        assert client.received.get(flowing, 0) > before, "the flowing stream stopped"
        assert not client.closed.is_set()
        assert client.received.get(stalled, 0) == 0
        # Once only the stalled stream is left, the connection does not live on for it.
        client.reset(flowing)
        assert client.closed.wait(10), "a connection left with only a stalled stream stayed open"
    finally:
        client.close()


def test_send_timeout_cuts_a_full_response_nobody_reads(server):
    """A complete 8 MiB response that the client does not read: the response is done
    for the app, and the connection is closed once the socket took nothing for
    send_timeout (not kept forever by hyper's pending write)."""
    s = server(app="hostile:app", sections={"limits": {"send_timeout": 2}})
    sock = non_reader(s.port, "/big")
    try:
        time.sleep(5)
        total = 0
        sock.settimeout(10)
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                total += len(data)
        except ConnectionResetError:
            pass
        assert total < 8 * MIB, "the whole response arrived: the connection was not cut"
    finally:
        sock.close()


def test_a_slow_reader_that_keeps_reading_is_not_cut(server):
    """send_timeout counts time without progress, not the length of the response: a
    client that takes 8 MiB over about 5 s is not cut by a 2 s send_timeout."""
    s = server(app="hostile:app", sections={"limits": {"send_timeout": 2}})
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    total = 0
    started = time.monotonic()
    with sock:
        while total < 8 * MIB and time.monotonic() < started + 60:
            data = sock.recv(16 * 1024)
            if not data:
                break
            total += len(data)
            time.sleep(0.01)
    assert total > 8 * MIB, "cut after %d bytes" % total
    assert time.monotonic() - started > 2 * 2, "the reader was not slow enough to test this"


def wait_unblocked(blocker):
    """Reads the blocking request's answer (the loop woke up), then closes its socket."""
    blocker.settimeout(30)
    answer = b""
    while b"unblocked" not in answer:
        data = blocker.recv(65536)
        assert data, answer
        answer += data
    blocker.close()


# The departed-clients flood: issue 16's 150,000 requests while the loop is blocked, then
# 20,000 more while it serves (about 2.5 minutes with this debug build).
FLOOD_BLOCKED = 150000
FLOOD_SERVING = 20000


def depart(port, count, sent):
    """Sends `count` requests, each on a new connection that closes without reading."""
    request = b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(count):
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(request)
                break
            except OSError:
                time.sleep(0.01)
        with sent.get_lock():
            sent.value += 1


def flood_of_departed_clients(port, pid, count, processes=4, freeze=False):
    """Runs `count` departing requests from `processes` client processes; returns how many
    were sent and the worker's peak RSS (MiB) and open descriptors while they ran. With
    `freeze`, the worker is stopped for 2 s halfway (SIGSTOP: a pause, CPU steal), so its
    listen queue fills and it resumes behind."""
    sent = multiprocessing.Value("i", 0)
    clients = [multiprocessing.Process(target=depart, args=(port, count // processes, sent))
               for _ in range(processes)]
    for c in clients:
        c.start()
    peak, fds = 0.0, 0
    deadline = time.monotonic() + 400
    try:
        while any(c.is_alive() for c in clients) and time.monotonic() < deadline:
            if freeze and sent.value > count // 2:
                freeze = False
                os.kill(pid, signal.SIGSTOP)
                try:
                    time.sleep(2)
                finally:
                    os.kill(pid, signal.SIGCONT)
            peak = max(peak, rss_mib(pid))
            fds = max(fds, len(os.listdir("/proc/%d/fd" % pid)))
            time.sleep(0.05)
    finally:
        for c in clients:
            if c.is_alive():
                c.kill()
            c.join()
    return sent.value, max(peak, rss_mib(pid)), fds


def test_a_blocked_loop_under_a_flood_of_departed_clients_stays_small(server, tmp_path):
    """The app blocks the loop while 150,000 requests arrive from clients (four processes)
    that send a request and leave. A request whose client left releases its memory at
    once, and the hand-off queue to the loop holds at most `max_concurrency` starts, its
    emptied ones included, so the rest that reach admission get 503 (counted) instead of
    queueing one job each
    (+32 MiB for 150,000 before that bound). Then the loop serves while 20,000 more
    arrive, and the worker is frozen for 2 s midway so that it resumes behind a full listen
    queue: at most 128 accepted connections wait for their task (the rest wait in the
    kernel's listen queue, bounded by `backlog`), a pause counted as `accept_paused`, so
    the worker's descriptors stay few (500 to 5,000 without that bound). RSS stays small,
    and it serves normally afterwards.
    Was +458 MB for 150 k requests.
    Layout (a) (`threads = 1`), whose I/O thread accepts while the loop is blocked; in
    layout (b) nothing is accepted then, and the clients wait in the listen queue."""
    s = metrics_server(server, workers=1, app="hostile:app",
                       sections={"server": {"worker_timeout": 600, "threads": 1}})
    pid, before = warm_rss(s)
    release = tmp_path / "release"
    blocker = socket.create_connection(("127.0.0.1", s.port))
    blocker.sendall(b"GET /block?s=600&until=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(release).encode())
    time.sleep(0.5)
    started = time.monotonic()
    blocked = flood_of_departed_clients(s.port, pid, FLOOD_BLOCKED)
    took = time.monotonic() - started
    release.touch()
    wait_unblocked(blocker)
    serving = flood_of_departed_clients(s.port, pid, FLOOD_SERVING, freeze=True)
    for name, (sent, peak, fds) in [("blocked", blocked), ("serving", serving)]:
        print("flood, loop %s: %d requests, worker %.0f -> %.0f MiB, at most %d descriptors" % (
            name, sent, before, peak, fds))
    hits = samples(scrape(s))
    busy, paused = (hits[("genro_asgi_limits_hit_total", frozenset({"kind": kind, "worker": "0"}.items()))]
                    for kind in ("max_concurrency", "accept_paused"))
    print("the blocked loop's flood took %.0f s; %d requests met max_concurrency; accepting paused %d times" % (
        took, busy, paused))
    assert blocked[0] == FLOOD_BLOCKED and serving[0] == FLOOD_SERVING
    # The queue's bound was met although no request stayed in flight (without it: 0).
    # Most requests never reach admission: hyper sees the client's close first.
    assert busy > 1000
    # The worker resumed behind a full listen queue: it paused accepting (counted).
    assert paused >= 1
    for sent, peak, fds in (blocked, serving):
        assert fds < 600, "%d descriptors open at once" % fds
        assert peak - before < 30, "worker grew %.0f MiB for %d requests" % (peak - before, sent)
    r = httpx.get(s.url + "/", timeout=30)
    assert r.status_code == 200
    assert r.text == "ok"


def test_a_blocked_loop_under_50k_requests_on_open_connections_stays_small(server):
    """Issue 17: the loop blocks in time.sleep() while 50,000 requests arrive on 50 HTTP/2
    connections that stay open (100 streams each). Beyond `max_concurrency` (1000 by
    default) each gets an immediate 503 from the transport, so the hand-off to the loop
    never holds more than the bound: the worker's RSS grows under 50 MiB, the admitted
    requests are answered once the loop wakes, and it serves normally afterwards."""
    from test_load import LOADGEN

    s = server(app="hostile:app")
    pid, before = warm_rss(s)
    blocker = socket.create_connection(("127.0.0.1", s.port))
    blocker.sendall(b"GET /block?s=15 HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    started = time.monotonic()
    proc = subprocess.Popen([LOADGEN, "--url", s.url + "/flood", "--protocol", "h2", "--connections", "50",
                             "--streams", "100", "--requests", "50000", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = before
    try:
        while proc.poll() is None:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.25)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out)
    statuses = report["statuses"]
    print("blocked loop, 50k requests: %s in %.1f s, worker %.0f -> %.0f MiB" % (
        statuses, time.monotonic() - started, before, peak))
    assert report["ok"] == 50000, report
    # The flood really met the bound while the loop slept, and nothing else failed.
    assert statuses.get("503", 0) > 40000, statuses
    assert set(statuses) <= {"200", "503"}, statuses
    assert statuses.get("200", 0) > 0, statuses
    assert peak - before < 50, "worker grew %.0f MiB (%.0f -> %.0f)" % (peak - before, before, peak)
    wait_unblocked(blocker)
    r = httpx.get(s.url + "/", timeout=30)
    assert r.status_code == 200 and r.text == "ok"


def test_idle_close_never_drops_a_request_already_sent(server):
    """Keep-alive races: a pool whose idle expiry equals the server's keep_alive_timeout
    (httpx's 5 s against our 5 s, scaled down to 4 s) reuses connections just as the
    server closes idle ones. The server's idle clock starts when the response's last
    bytes were written, runs a grace of 25% past keep_alive_timeout, and a connection
    with request bytes waiting is not closed, so no request meets a closed connection.
    At 4 s the grace is 1 s; at 2 s (a 0.5 s grace) a client on a loaded machine that put
    its connection back in its pool more than 0.5 s after our last write met the close
    once in 2,400 requests: the grace covers the client's lag, it cannot remove it."""
    import asyncio

    s = server(app="hostile:app", sections={"server": {"keep_alive_timeout": 4}})

    async def rounds():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200,
                              keepalive_expiry=4)
        failures = []
        async with httpx.AsyncClient(limits=limits, timeout=10) as client:
            for _ in range(8):
                results = await asyncio.gather(
                    *[client.get(s.url + "/") for _ in range(200)], return_exceptions=True)
                failures += [r for r in results if isinstance(r, Exception)]
                await asyncio.sleep(3.99)
        return failures

    failures = asyncio.run(rounds())
    assert not failures, failures[:3]


def test_memory_comes_back_after_an_attack(server):
    """300 HTTP/1.1 clients that never read a stream of 16,000-byte chunks (copied into
    the worker: under 16 KiB, up to worker_buffer) make the worker grow; once they leave, the freed memory
    goes back to the system (malloc_trim when glibc's arenas hold 8 MiB free) instead of
    staying at the peak."""
    s = server(app="hostile:app")
    pid, before = warm_rss(s)
    socks = [non_reader(s.port, "/forever?size=16000") for _ in range(300)]
    try:
        wait_for(lambda: stats(s)["streams"] >= 300, timeout=30, what="streams started")
        time.sleep(3)
        peak = rss_mib(pid)
    finally:
        for sock in socks:
            sock.close()
    assert peak - before < 100, "worker grew %.0f MiB" % (peak - before)
    wait_for(lambda: rss_mib(pid) < before + 10, timeout=20,
             what="RSS back near %.0f MiB (peak %.0f)" % (before, peak))
