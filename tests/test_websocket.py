"""WebSocket: the ASGI websocket scope over HTTP/1.1 Upgrade and HTTP/2 extended CONNECT
(RFC 8441), plain and TLS, against the real binary with real clients (the `websockets`
package, the `h2` package for RFC 8441, and raw sockets for what a polite client never
sends). The protocol conformance run is scripts/autobahn.sh (docs/CONFORMANCE.md)."""

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import ctl, wait_for
from test_observability import metrics_server, samples, scrape, total
from test_tls import certs, client_context, ssl_section  # noqa: F401 - fixture


def ws_url(s, path):
    return s.url.replace("http", "ws", 1) + path


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# --- a raw client: frames as the test writes them ---------------------------------------

def frame(opcode, payload=b"", fin=True, mask=True, rsv1=False):
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class Raw:
    """A WebSocket client on a plain socket: handshake, then frames by hand."""

    def __init__(self, port, path="/", headers=b"", version=b"13", key=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" % path.encode()
        if key:
            lines += b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
        lines += b"Sec-WebSocket-Version: " + version + b"\r\n" + headers + b"\r\n"
        self.sock.sendall(lines)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read(self):
        """(opcode, payload) of the next frame from the server (never masked)."""
        self._need(2)
        opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        assert not self.buf[1] & 0x80, "server frames are not masked"
        at = 2
        if n == 126:
            self._need(4)
            n, at = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return opcode, payload

    def read_close(self):
        """Skips data/ping frames until the close frame; returns its code and reason."""
        while True:
            opcode, payload = self.read()
            if opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if payload else None
                return code, payload[2:].decode()

    def close(self):
        self.sock.close()


# --- HTTP/1.1 ---------------------------------------------------------------------------

def test_echo_text_and_bytes_with_permessage_deflate(server):
    s = server(app="ws:app")

    async def go():
        async with connect(ws_url(s, "/echo"), max_size=None) as ws:
            assert ws.response.status_code == 101
            # Negotiated by default, like uvicorn.
            assert ws.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"
            big = os.urandom(3 << 20)
            await ws.send(big)
            assert await ws.recv() == big
            # A fragmented message, reassembled before the app sees it.
            await ws.send(["frag", "mented ", "text"])
            assert await ws.recv() == "fragmented text"
        async with connect(ws_url(s, "/echo"), compression=None) as ws:
            assert "sec-websocket-extensions" not in ws.response.headers
            await ws.send("plain")
            assert await ws.recv() == "plain"
    run(go())


def test_deflate_can_be_turned_off(server):
    s = server(app="ws:app", sections={"websocket": {"per_message_deflate": False}})

    async def go():
        async with connect(ws_url(s, "/echo")) as ws:
            assert "sec-websocket-extensions" not in ws.response.headers
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
    run(go())


def test_scope_subprotocol_extra_headers_and_envelope(server):
    s = server(app="ws:app", sections={"server": {"root_path": "/api"}})

    async def go():
        async with connect(ws_url(s, "/scope?a=1&b=%20"), subprotocols=["chat.v2", "chat.v1"],
                           additional_headers={"X-Request-ID": "client-id-7"}) as ws:
            scope = json.loads(await ws.recv())
            assert ws.subprotocol == "chat.v2"
            assert ws.response.headers["x-extra"] == "yes"
            assert ws.response.headers.get_all("set-cookie") == ["a=1", "b=2"]
            request_id = ws.response.headers["x-request-id"]
            return scope, request_id
    scope, request_id = run(go())
    assert scope["type"] == "websocket"
    assert scope["scheme"] == "ws"
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["root_path"] == "/api"
    assert scope["subprotocols"] == ["chat.v2", "chat.v1"]
    assert scope["headers"]["upgrade"].lower() == "websocket"
    assert scope["client"][0] == "127.0.0.1"
    assert "websocket.http.response" in scope["extensions"]
    assert scope["envelope"]["id"] == request_id and len(request_id) == 16
    assert scope["envelope"]["external_id"] == "client-id-7"


def test_close_before_accept_is_403_and_denial_response_is_the_apps(server):
    s = server(app="ws:app")
    raw = Raw(s.port, "/refuse")
    assert raw.status == 403
    assert raw.headers["x-request-id"]
    raw.close()

    raw = Raw(s.port, "/deny")
    assert raw.status == 401
    assert raw.headers["www-authenticate"] == "Bearer"
    raw._need(int(raw.headers["content-length"]))
    assert raw.buf == b"no token\n"
    raw.close()

    # Plain HTTP to the same app still works.
    assert httpx.get(s.url + "/anything").text == "plain http\n"


def test_close_codes_both_ways(server):
    s = server(app="ws:app")

    async def app_closes():
        async with connect(ws_url(s, "/close")) as ws:
            assert await ws.recv() == "hello"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason
    assert run(app_closes()) == (4001, "bye")
    line = s.wait_log("CLOSE_WITH")
    report = json.loads(line.split("CLOSE_WITH", 1)[1])
    # After its own close the app receives websocket.disconnect with that code, and a
    # further send raises OSError (ASGI 2.4).
    assert report == {"after": {"type": "websocket.disconnect", "code": 4001, "reason": "bye"},
                      "raised": "OSError"}

    async def client_closes():
        async with connect(ws_url(s, "/disconnect")) as ws:
            await ws.close(code=4000, reason="client bye")
    run(client_closes())
    line = s.wait_log("DISCONNECT")
    assert json.loads(line.split("DISCONNECT", 1)[1]) == {
        "type": "websocket.disconnect", "code": 4000, "reason": "client bye"}

    async def app_returns():
        async with connect(ws_url(s, "/returns")) as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
            return ws.close_code
    assert run(app_returns()) == 1000


def test_a_cancelled_receive_loses_no_message(server):
    s = server(app="ws:app")

    async def go():
        async with connect(ws_url(s, "/cancel")) as ws:
            assert await ws.recv() == "go"
            await ws.send("A")
            await ws.send("B")
            return [await ws.recv(), await ws.recv()]
    assert run(go()) == ["got A", "then B"]


def test_a_dropped_receive_loses_no_message(server):
    """A receive() that completed at once and was dropped unawaited gives its message back."""
    s = server(app="ws:app")

    async def go():
        async with connect(ws_url(s, "/dropped")) as ws:
            assert await ws.recv() == "go"
            await ws.send("A")
            return await asyncio.wait_for(ws.recv(), 10)
    assert run(go()) == "got A"


def test_a_receive_cancelled_after_its_message_was_set_loses_nothing(server):
    s = server(app="ws:app")

    async def go():
        async with connect(ws_url(s, "/set-then-cancelled")) as ws:
            assert await ws.recv() == "go"
            await ws.send("A")
            await ws.send("B")
            return await asyncio.wait_for(ws.recv(), 10)
    assert run(go()) == "cancelled; next A"


def test_app_errors(server):
    s = server(app="ws:app")
    raw = Raw(s.port, "/raises-early")
    assert raw.status == 500
    raw.close()
    s.wait_log("boom before accept")

    async def close_code(path):
        async with connect(ws_url(s, path)) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await ws.recv()
            return ws.close_code
    assert run(close_code("/raises")) == 1011
    line = s.wait_log("boom in a websocket")
    assert "error id" in s.log
    assert run(close_code("/bad")) == 1011
    s.wait_log("ASGI protocol error (WebSocket): websocket.send: give exactly one")
    assert line


def test_protocol_violations_get_the_right_close_code(server):
    s = server(app="ws:app", sections={"websocket": {"max_message_size": "1KiB"}})
    cases = [
        # (frames, expected close code)
        ([frame(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")], 1007),
        # Invalid UTF-8 in the first fragment: failed at once, before the message ends.
        ([frame(1, b"ok\xff", fin=False)], 1007),
        ([frame(2, b"x" * 1025)], 1009),
        ([frame(2, b"x" * 600, fin=False), frame(0, b"x" * 600)], 1009),
        ([frame(0, b"stray continuation")], 1002),
        ([frame(2, b"x", mask=False)], 1002),  # clients must mask
        ([frame(9, b"x" * 126)], 1002),  # control frame over 125 bytes
        ([frame(1, b"a", fin=False), frame(1, b"b")], 1002),  # new message mid-fragment
        ([frame(3)], None),  # reserved opcode: failed (1002 or 1003)
    ]
    for frames, code in cases:
        raw = Raw(s.port, "/echo")
        assert raw.status == 101
        for f in frames:
            raw.send(f)
        got, _ = raw.read_close()
        if code is None:
            assert got in (1002, 1003)
        else:
            assert got == code, (frames[0][:4], got)
        raw.close()
    # Exactly max_message_size is fine.
    raw = Raw(s.port, "/echo")
    raw.send(frame(2, b"y" * 1024))
    assert raw.read() == (2, b"y" * 1024)
    # Ping -> pong with the same payload; close -> close echoed.
    raw.send(frame(9, b"are you there"))
    assert raw.read() == (10, b"are you there")
    raw.send(frame(8, struct.pack("!H", 1000) + b"done"))
    assert raw.read_close() == (1000, "done")
    raw.close()


def test_invalid_handshakes(server):
    s = server(app="ws:app")
    raw = Raw(s.port, "/echo", key=False)
    assert raw.status == 400
    raw.close()
    raw = Raw(s.port, "/echo", headers=b"Sec-WebSocket-Key: short\r\n", key=False)
    assert raw.status == 400
    raw.close()
    raw = Raw(s.port, "/echo", version=b"8")
    assert raw.status == 426
    assert raw.headers["sec-websocket-version"] == "13"
    raw.close()


def test_keepalive_pings_close_a_silent_client(server):
    s = server(app="ws:app", sections={"websocket": {"ping_interval": 0.5, "ping_timeout": 0.5}})
    raw = Raw(s.port, "/disconnect")
    started = time.monotonic()
    opcode, _ = raw.read()
    assert opcode == 9, "the server pings an idle client"
    # Not answering: closed with 1011 after ping_timeout.
    assert raw.read_close()[0] == 1011
    assert time.monotonic() - started < 5
    raw.close()
    line = s.wait_log("DISCONNECT")
    assert json.loads(line.split("DISCONNECT", 1)[1])["code"] == 1006

    async def polite():
        # websockets answers pings: the connection stays up across several intervals.
        async with connect(ws_url(s, "/echo"), ping_interval=None) as ws:
            await asyncio.sleep(2.5)
            await ws.send("still here")
            return await ws.recv()
    assert run(polite()) == "still here"


def test_slow_app_stops_reading_from_the_client_and_loses_nothing(server):
    """Backpressure on the client: while the app does not receive, the worker holds at most
    max_queue messages and stops reading the socket; every message arrives afterwards."""
    s = server(app="ws:app", sections={"websocket": {"max_queue": 4, "per_message_deflate": False}})
    raw = Raw(s.port, "/slow")
    raw.sock.setblocking(False)
    message = frame(2, b"m" * 65536)
    sent_bytes, count = 0, 0
    pending = b""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not pending:
            pending = message
        try:
            n = raw.sock.send(pending)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent_bytes += n
        pending = pending[n:]
        if not pending:
            count += 1
    # Without backpressure the worker would read everything the client can write in 2 s
    # over loopback (gigabytes); with it, the queue plus the kernel's socket buffers.
    assert sent_bytes < 64 << 20, sent_bytes
    raw.sock.setblocking(True)
    if pending:
        raw.send(pending)
        count += 1
    raw.send(frame(1, b"done"))
    count += 1
    opcode, payload = raw.read()
    assert (opcode, payload) == (1, b"got %d" % count)
    raw.send(frame(8, struct.pack("!H", 1000)))
    raw.read_close()
    raw.close()
    assert "SLOW_READER %d" % count in s.wait_log("SLOW_READER")


def test_slow_client_makes_the_app_wait(server):
    """Backpressure on the app: a client that does not read makes send() wait instead of
    the worker buffering without bound."""
    s = server(app="ws:app", sections={"websocket": {"per_message_deflate": False}})
    raw = Raw(s.port, "/flood")
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    time.sleep(2)
    raw.close()
    line = s.wait_log("FLOOD")
    sent = int(line.split("FLOOD", 1)[1])
    # 1 MiB messages: the out queue, one in the writer and the kernel buffers; an unbounded
    # worker would have taken thousands in 2 s.
    assert sent < 48, sent


# --- HTTP/2 extended CONNECT (RFC 8441) ---------------------------------------------------

class H2:
    """An HTTP/2 client connection (python-h2) that buffers each stream's data, so a frame
    arriving in the same read as the response head is not lost."""

    def __init__(self, sock):
        self.sock = sock
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.connect_protocol = None
        self.status = {}
        self.data = {}
        while self.connect_protocol is None:
            self.pump()

    def pump(self):
        data = self.sock.recv(65536)
        assert data, "the server closed the connection"
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                setting = event.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                self.connect_protocol = bool(setting and setting.new_value)
            elif isinstance(event, h2.events.ResponseReceived):
                self.status[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.sock.sendall(self.conn.data_to_send())

    def websocket(self, path, authority, scheme="http", headers=()):
        """Opens a WebSocket stream (RFC 8441); returns (stream id, status)."""
        assert self.connect_protocol, "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1"
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(":method", "CONNECT"), (":protocol", "websocket"),
                                        (":scheme", scheme), (":path", path), (":authority", authority),
                                        ("sec-websocket-version", "13"), *headers])
        self.sock.sendall(self.conn.data_to_send())
        while stream not in self.status:
            self.pump()
        return stream, self.status[stream]

    def send(self, stream, data):
        self.conn.send_data(stream, data)
        self.sock.sendall(self.conn.data_to_send())

    def frame(self, stream):
        """The next complete WebSocket frame from the server on `stream`, as bytes."""
        while True:
            got = self.data.get(stream, b"")
            n, at = (got[1] & 0x7F, 2) if len(got) >= 2 else (None, 0)
            if n == 126:
                n, at = (struct.unpack("!H", got[2:4])[0], 4) if len(got) >= 4 else (None, 0)
            assert n != 127, "the tests' frames are under 64 KiB"
            if n is not None and len(got) >= at + n:
                self.data[stream] = got[at + n:]
                return got[:at + n]
            self.pump()


def h2_websocket(sock, path, authority, scheme="http"):
    """Opens a WebSocket over HTTP/2 on `sock`; returns (client, stream id, status)."""
    client = H2(sock)
    stream, status = client.websocket(path, authority, scheme, [("sec-websocket-protocol", "chat")])
    return client, stream, status


def check_h2_echo(sock, s, scheme):
    client, stream, status = h2_websocket(sock, "/scope", "127.0.0.1:%d" % s.port, scheme)
    assert status == 200
    got = client.frame(stream)
    scope = json.loads(got[4:] if got[1] & 0x7F == 126 else got[2:])
    assert scope["http_version"] == "2"
    assert scope["scheme"] == ("wss" if scheme == "https" else "ws")
    assert scope["subprotocols"] == ["chat"]
    assert scope["headers"]["host"] == "127.0.0.1:%d" % s.port
    # A second WebSocket on the same connection.
    echo, status = client.websocket("/echo", "127.0.0.1", scheme)
    assert status == 200
    client.send(echo, frame(1, b"over h2"))
    assert client.frame(echo) == frame(1, b"over h2", mask=False)


def test_http2_extended_connect(server):
    s = server(app="ws:app")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        check_h2_echo(sock, s, "http")


def test_tls_http1_and_http2(server, certs):
    s = server(app="ws:app", sections=ssl_section(certs))

    async def go():
        ctx = client_context(certs)
        async with connect("wss://127.0.0.1:%d/echo" % s.port, ssl=ctx) as ws:
            await ws.send("secure")
            return await ws.recv()
    assert run(go()) == "secure"
    ctx = client_context(certs, alpn=["h2"])
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw_sock:
        with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "h2"
            check_h2_echo(sock, s, "https")


# --- drain, metrics, watchdog ---------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_drain_closes_with_1001_after_the_grace(server, sig):
    s = server(app="ws:app", sections={"websocket": {"drain_grace": 1}})

    async def go():
        async with connect(ws_url(s, "/disconnect")) as ws:
            await asyncio.sleep(0.2)
            s.proc.send_signal(sig)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return ws.close_code, time.monotonic() - started
    code, waited = run(go())
    assert code == 1001
    assert 0.8 <= waited < 8, waited
    line = s.wait_log("DISCONNECT")
    assert json.loads(line.split("DISCONNECT", 1)[1])["code"] == 1001
    if sig == signal.SIGHUP:
        # The new worker serves WebSockets.
        async def again():
            async with connect(ws_url(s, "/echo")) as ws:
                await ws.send("after reload")
                return await ws.recv()
        assert run(again()) == "after reload"


def test_drain_closes_http2_websockets_too(server):
    s = server(app="ws:app", sections={"websocket": {"drain_grace": 1}})
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        _, stream, status = h2_websocket(sock, "/disconnect", "127.0.0.1:%d" % s.port)
        assert status == 200
        s.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        # Frames parsed by hand: python-h2 treats the PING after hyper's first GOAWAY as a
        # protocol error (see docs/ARCHITECTURE.md, interoperability notes).
        raw, got = b"", b""
        while len(got) < 4:
            data = sock.recv(65536)
            assert data, "connection closed before the close frame"
            raw += data
            while len(raw) >= 9:
                length = int.from_bytes(raw[:3], "big")
                if len(raw) < 9 + length:
                    break
                kind, stream_id = raw[3], int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
                if kind == 0 and stream_id == stream:  # DATA (no padding from hyper)
                    got += raw[9:9 + length]
                raw = raw[9 + length:]
        assert got[0] == 0x88, got  # FIN + close
        assert struct.unpack("!H", got[2:4])[0] == 1001
        assert 0.8 <= time.monotonic() - started < 8
    assert s.wait_exit(30) == 0


def test_metrics_count_websockets(server):
    s = metrics_server(server, workers=1, app="ws:app")

    async def go():
        async with connect(ws_url(s, "/echo")) as ws:
            for i in range(7):
                await ws.send("m%d" % i)
                await ws.recv()
            values = samples(scrape(s))
            assert total(values, "genro_asgi_connections_active", protocol="websocket") == 1
            await ws.send(["frag", "ments"])  # one message, two frames
            await ws.recv()
    run(go())
    values = wait_for(lambda: (lambda v: v if total(v, "genro_asgi_connections_active", protocol="websocket") == 0 else None)(samples(scrape(s))))
    assert total(values, "genro_asgi_websocket_messages_total", direction="received") == 8
    assert total(values, "genro_asgi_websocket_messages_total", direction="sent") == 8
    assert total(values, "genro_asgi_connections_total", protocol="websocket") == 1
    assert total(values, "genro_asgi_requests_total", protocol="websocket", status="1xx") == 1


def test_watchdog_reports_an_app_that_stops_receiving_not_an_idle_socket(server):
    s = server(app="ws:app", sections={
        "websocket": {"max_queue": 1, "per_message_deflate": False},
        "watchdog": {"interval": 0.2, "timeout": 1, "critical": 60}})
    idle = Raw(s.port, "/disconnect")  # open, quiet, app waiting in receive(): fine
    raw = Raw(s.port, "/slow")  # the app sleeps 3 s before receiving
    for _ in range(4):
        raw.send(frame(2, b"z" * 10))
    line = s.wait_log("is stuck: the app has not accepted it or stopped taking its messages")
    assert "/slow" in line
    assert "/disconnect" not in s.log
    # ctl requests lists both open WebSockets, only the stalled one as stuck.
    r = ctl(s, "requests", "--json")
    assert r.returncode == 0, r.stderr
    listed = {req["path"]: req for w in json.loads(r.stdout)["workers"] for req in w.get("requests", [])}
    assert listed["/slow"]["protocol"] == listed["/disconnect"]["protocol"] == "websocket"
    assert listed["/slow"].get("stuck") == "warning" and "stuck" not in listed["/disconnect"]
    raw.send(frame(1, b"done"))
    assert raw.read()[0] == 1
    idle.close()
    raw.close()
