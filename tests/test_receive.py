"""The receive side (issue 16): a cancelled receive() leaves nothing behind and loses no
message, `[limits] body_timeout`, and event streams that end on a drain while downloads
keep their graceful_timeout. App: tests/apps/receive.py."""

import hashlib
import os
import re
import signal
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx

from conftest import ctl, ready_pids, rss_mib, wait_for

APP = "receive:app"


class SseClient(threading.Thread):
    """One event-stream client on a raw socket: sends the request, then reads until the
    server closes (or `stop` is set). `data` holds what arrived."""

    def __init__(self, port, path="/sse"):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n" % path.encode())
        self.data = b""
        self.closed = None  # monotonic time the server closed the stream
        self.stop = threading.Event()
        self.start()

    def run(self):
        self.sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = time.monotonic()
                return
            self.data += chunk

    def close(self):
        self.stop.set()
        self.join(5)
        self.sock.close()


def test_cancelled_receive_leaves_nothing_behind_sse(server):
    """Issue 16, SSE row: 20 sse-starlette streams whose generator polls
    `request.is_disconnected()` every 10 ms (each poll a receive() cancelled at once) kept
    a task and a loop future alive per poll: 38 MB -> 162 MB in 60 s. Now flat."""
    s = server(app=APP)
    (pid,) = wait_for(lambda: ready_pids(s), what="worker ready")
    clients = [SseClient(s.port) for _ in range(20)]
    try:
        wait_for(lambda: all(b"data: 1" in c.data for c in clients), 30, "every stream's first event")
        time.sleep(10)  # warm-up: allocator pools, the loop's internal structures
        before = rss_mib(pid)
        samples = []
        for _ in range(12):
            time.sleep(5)
            samples.append(rss_mib(pid))
        growth = samples[-1] - before
        print("worker RSS %.1f MiB after warm-up, then %s" % (before, ", ".join("%.1f" % m for m in samples)))
        assert all(c.closed is None for c in clients), "a stream ended early"
        assert all(c.data.count(b"data: ") > 100 for c in clients), [c.data.count(b"data: ") for c in clients]
        assert growth < 5, "worker RSS grew %.1f MiB in 60 s (%.1f -> %s)" % (
            growth, before, ", ".join("%.1f" % m for m in samples))
    finally:
        for c in clients:
            c.close()
    # Every stream's app task sees the disconnect and ends (no waiter was lost).
    wait_for(lambda: "no requests in flight" in ctl(s, "requests").stdout, 20, "every stream to end")


def chunked_upload(port, path, data, pieces=64, pause=0.002):
    """Posts `data` with chunked encoding in `pieces` writes, `pause` apart; returns the
    response bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n" % path.encode())
        step = max(1, len(data) // pieces)
        for at in range(0, len(data), step):
            piece = data[at:at + step]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(pause)
        sock.sendall(b"0\r\n\r\n")
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_wait_for_receive_retries_lose_no_byte(server):
    """`asyncio.wait_for(receive(), 0.001)` retries while the body trickles in: a chunk read
    for a waiter that timed out goes to the next receive(); every byte arrives in order."""
    s = server(app=APP)
    data = os.urandom(3 * 1024 * 1024 + 17)
    answer = chunked_upload(s.port, "/wait-for-upload", data, pieces=300, pause=0.003)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    if b"chunked" in head.lower():
        body = b"".join(re.findall(rb"[0-9a-f]+\r\n(.*?)\r\n", body, re.S))
    size, digest, timeouts = body.split()
    assert int(size) == len(data)
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    # The test is only worth something if receive() calls were actually cancelled.
    assert int(timeouts) > 50, timeouts



def test_wait_for_receive_retries_lose_no_byte_http2(server):
    """The same over HTTP/2: DATA frames trickle in while receive() calls time out."""
    s = server(app=APP)
    data = os.urandom(256 * 1024 + 5)
    sock, conn = h2_connect(s.port)
    with sock:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "POST"), (":path", "/wait-for-upload"), (":scheme", "http"),
                                      (":authority", "x")])
        sock.sendall(conn.data_to_send())
        step = 4096
        for at in range(0, len(data), step):
            while conn.local_flow_control_window(stream_id) < min(step, len(data) - at):
                sock.settimeout(10)
                conn.receive_data(sock.recv(65536))  # the server's WINDOW_UPDATEs
                sock.sendall(conn.data_to_send())
            conn.send_data(stream_id, data[at:at + step], end_stream=at + step >= len(data))
            sock.sendall(conn.data_to_send())
            time.sleep(0.003)
        events = h2_events(sock, conn, stream_id, limit=30)
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    size, digest, timeouts = body.split()
    assert int(size) == len(data)
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    assert int(timeouts) > 10, timeouts


def test_dropped_receive_loses_no_byte(server):
    """A receive() the app creates and drops without awaiting does not take a chunk with it."""
    s = server(app=APP)
    data = os.urandom(64 * 1024 + 3)
    answer = chunked_upload(s.port, "/dropped-receive", data, pieces=16, pause=0.01)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    size, digest = body.split()
    assert int(size) == len(data)
    assert digest.decode() == hashlib.sha256(data).hexdigest()

BODY_PIECE = 256 * 1024  # worker/src/receive.rs


def h2_upload(port, path, data):
    """POSTs `data` over HTTP/2 in 16 KiB DATA frames (within the server's windows) and
    returns the response body."""
    sock, conn = h2_connect(port)
    with sock:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "POST"), (":path", path), (":scheme", "http"),
                                      (":authority", "x")])
        step = 16384
        for at in range(0, len(data), step):
            while conn.local_flow_control_window(stream_id) < min(step, len(data) - at):
                sock.sendall(conn.data_to_send())
                sock.settimeout(10)
                conn.receive_data(sock.recv(65536))  # the server's SETTINGS and WINDOW_UPDATEs
            conn.send_data(stream_id, data[at:at + step], end_stream=at + step >= len(data))
        sock.sendall(conn.data_to_send())
        events = h2_events(sock, conn, stream_id, limit=30)
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))


def test_buffered_body_reaches_the_app_in_large_pieces_http2(server):
    """Issue 17: DATA frames already buffered when the app reads are handed out together, up
    to BODY_PIECE per message, not one 16 KiB frame per message (Starlette pays per message).
    The app waits 0.5 s before reading, so the whole 1 MiB (within hyper's 1 MiB windows) is
    buffered by then."""
    s = server(app=APP)
    data = os.urandom(1024 * 1024)
    size, digest, count, largest = h2_upload(s.port, "/pieces?wait=0.5", data).split()
    assert int(size) == len(data)
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    # Without coalescing: 64 messages of 16 KiB.
    assert int(count) <= 8, count
    assert BODY_PIECE // 2 < int(largest) <= BODY_PIECE + 16384, largest


def test_buffered_body_pieces_keep_every_byte_http1(server):
    """HTTP/1.1, the body sent at once while the app waits: every byte arrives in order, and
    no message passes BODY_PIECE by more than one read."""
    s = server(app=APP)
    data = os.urandom(3 * 1024 * 1024 + 7)
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"POST /pieces?wait=0.5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data))
        sock.sendall(data)
        answer = read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    size, digest, count, largest = body.split()
    assert int(size) == len(data)
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    print("HTTP/1.1: %s messages, largest %s bytes" % (count.decode(), largest.decode()))
    assert int(largest) <= 2 * BODY_PIECE, largest


def read_response(sock):
    """Reads one response with a Content-Length body."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = sock.recv(65536)
        assert chunk, out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, out
        body += chunk
    return head + b"\r\n\r\n" + body


def metrics_server(server, sections=None, **kwargs):
    from conftest import free_port
    port = free_port()
    sections = dict(sections or {})
    sections["metrics"] = {"enabled": True, "export_port": port}
    s = server(app=APP, sections=sections, **kwargs)
    s.metrics_url = "http://127.0.0.1:%d" % port
    return s


def limit_hits(s, kind):
    text = httpx.get(s.metrics_url + "/metrics", timeout=10).text
    found = re.findall(r'^genro_asgi_limits_hit_total\{[^}]*kind="%s"[^}]*\} (\S+)$' % kind, text, re.M)
    return sum(float(v) for v in found)


def half_upload(port, path):
    """Sends the head of a 1000-byte POST and 500 bytes of its body, then nothing; returns
    the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" % path.encode() + b"x" * 500)
    return sock


def read_until_closed(sock, limit=10):
    sock.settimeout(limit)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_body_timeout_http1_answers_408(server):
    """[limits] body_timeout: an upload that stops sending while the app waits for it gets
    408 and the connection closes; the app's receive() gets http.disconnect; counted and
    logged once at INFO."""
    s = metrics_server(server, sections={"limits": {"body_timeout": 1}})
    started = time.monotonic()
    with half_upload(s.port, "/upload") as sock:
        answer = read_until_closed(sock)
    elapsed = time.monotonic() - started
    print("HTTP/1.1 408 after %.2fs" % elapsed)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"connection: close" in answer.lower()
    assert 0.9 < elapsed < 4, elapsed
    s.wait_log("app saw http.disconnect after 500 body bytes")
    line = s.wait_log("body_timeout: no request body bytes")
    assert " INFO " in line or "INFO" in line.split("body_timeout")[0], line
    assert s.log.count("body_timeout: no request body bytes") == 1
    wait_for(lambda: limit_hits(s, "body_timeout") == 1, 10, "limits_hit_total{kind=body_timeout} = 1")
    # A slow upload that keeps sending is not cut.
    answer = chunked_upload(s.port, "/upload", b"y" * 4000, pieces=8, pause=0.5)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"4000"), answer[-200:]


def test_body_timeout_after_the_response_started_closes(server):
    """When the app already started its response, a stalled upload ends it with a close
    (no terminating chunk), not a 408."""
    s = server(app=APP, sections={"limits": {"body_timeout": 1}})
    with half_upload(s.port, "/upload-streaming") as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"started\n" in answer
    assert not answer.endswith(b"0\r\n\r\n"), answer[-100:]
    s.wait_log("app saw http.disconnect after 500 body bytes")


def h2_connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def h2_events(sock, conn, stream_id, limit=10):
    """Events for `stream_id` until it ends or is reset (or the connection closes)."""
    sock.settimeout(limit)
    events = []
    while True:
        data = sock.recv(65536)
        if not data:
            return events
        for event in conn.receive_data(data):
            if getattr(event, "stream_id", None) == stream_id:
                events.append(event)
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    sock.sendall(conn.data_to_send())
                    return events
        sock.sendall(conn.data_to_send())


def test_body_timeout_http2_answers_408(server):
    s = metrics_server(server, sections={"limits": {"body_timeout": 1}})
    sock, conn = h2_connect(s.port)
    with sock:
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"),
                                      (":authority", "x"), ("content-length", "1000")])
        conn.send_data(stream_id, b"x" * 500)
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        events = h2_events(sock, conn, stream_id)
        elapsed = time.monotonic() - started
        print("HTTP/2 408 after %.2fs" % elapsed)
        responses = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        assert responses and dict(responses[0].headers)[b":status"] == b"408", events
        assert 0.9 < elapsed < 4, elapsed
        # The connection still serves other streams.
        other = conn.get_next_available_stream_id()
        conn.send_headers(other, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"),
                                  (":authority", "x"), ("content-length", "3")])
        conn.send_data(other, b"abc", end_stream=True)
        sock.sendall(conn.data_to_send())
        events = h2_events(sock, conn, other)
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert data == b"3", events
    s.wait_log("app saw http.disconnect after 500 body bytes")
    wait_for(lambda: limit_hits(s, "body_timeout") == 1, 10, "limits_hit_total{kind=body_timeout} = 1")


def test_event_streams_end_on_stop_downloads_do_not(server):
    """SIGTERM with open SSE streams: after drain_grace they see the disconnect and the
    worker exits promptly (it used to hold the whole graceful_timeout); a long-poll on
    `genro.draining` answers at once; a slow download started before completes intact."""
    s = server(app=APP, sections={"server": {"graceful_timeout": 20}, "websocket": {"drain_grace": 1}})
    (pid,) = wait_for(lambda: ready_pids(s), what="worker ready")
    clients = [SseClient(s.port) for _ in range(5)]
    poll = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    poll.sendall(b"GET /long-poll HTTP/1.1\r\nHost: x\r\n\r\n")
    download = {}

    def fetch():
        with httpx.Client(timeout=30) as client:
            r = client.get(s.url + "/download")
            download["body"] = r.content
            download["done"] = time.monotonic()

    try:
        wait_for(lambda: all(b"data: 1" in c.data for c in clients), 30, "every stream's first event")
        fetcher = threading.Thread(target=fetch, daemon=True)
        fetcher.start()
        time.sleep(0.3)
        stop_at = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert b"drained\n" in read_until_closed(poll, 5)
        wait_for(lambda: all(c.closed for c in clients), 10, "every event stream to end")
        ended = max(c.closed for c in clients) - stop_at
        print("event streams ended %.2fs after SIGTERM" % ended)
        assert ended < 1 + 1.5, "event streams ended %.1fs after SIGTERM (drain_grace 1s)" % ended
        fetcher.join(15)
        assert download["body"] == b"".join(bytes([i % 251]) * 65536 for i in range(40))
        assert s.wait_exit(20) == 0
        assert download["done"] - stop_at > 2, "the download did not outlast drain_grace"
        assert "ending 5 event stream(s)" in s.log
    finally:
        for c in clients:
            c.close()
        poll.close()


def test_event_streams_end_on_stop_without_download(server):
    """With only event streams open, the worker exits within drain_grace + ~1 s of SIGTERM
    (graceful_timeout is 20 s)."""
    s = server(app=APP, sections={"server": {"graceful_timeout": 20}, "websocket": {"drain_grace": 1}})
    (pid,) = wait_for(lambda: ready_pids(s), what="worker ready")
    clients = [SseClient(s.port) for _ in range(5)]
    try:
        wait_for(lambda: all(b"data: 1" in c.data for c in clients), 30, "every stream's first event")
        stop_at = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), 15, "the worker to exit")
        exited = time.monotonic() - stop_at
        print("worker exited %.2fs after SIGTERM" % exited)
        assert exited < 1 + 1.5, "worker exited %.1fs after SIGTERM (drain_grace 1s)" % exited
        assert s.wait_exit(10) == 0
    finally:
        for c in clients:
            c.close()


def test_event_streams_end_on_reload_downloads_complete(server):
    """A reload with an SSE stream and a slow download open: the stream ends after
    drain_grace (the client may reconnect to the new worker); the download completes
    intact on the old worker."""
    s = server(app=APP, sections={"server": {"graceful_timeout": 20}, "websocket": {"drain_grace": 1}})
    (old,) = wait_for(lambda: ready_pids(s), what="worker ready")
    client = SseClient(s.port)
    download = {}

    def fetch():
        with httpx.Client(timeout=30) as c:
            download["body"] = c.get(s.url + "/download").content

    try:
        wait_for(lambda: b"data: 1" in client.data, 30, "the stream's first event")
        fetcher = threading.Thread(target=fetch, daemon=True)
        fetcher.start()
        time.sleep(0.3)
        reload_at = time.monotonic()
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: client.closed, 15, "the event stream to end")
        # The new worker must start first (imports starlette: a few seconds under load).
        assert client.closed - reload_at < 10
        fetcher.join(20)
        assert download["body"] == b"".join(bytes([i % 251]) * 65536 for i in range(40))
        wait_for(lambda: ready_pids(s) and old not in ready_pids(s), 20, "the reload")
        wait_for(lambda: not os.path.exists("/proc/%d" % old), 20, "the old worker to exit")
        # A new stream is served by the new worker.
        again = SseClient(s.port)
        wait_for(lambda: b"data: 1" in again.data, 30, "a new stream's first event")
        again.close()
    finally:
        client.close()
