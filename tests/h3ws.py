"""A WebSocket client over HTTP/3 (RFC 9220) for the end-to-end tests: aioquic opens the
extended CONNECT (`:protocol websocket`) and carries the stream, wsproto (an independent
WebSocket implementation) makes and parses the frames. Neither was written here."""

import asyncio

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.h3.connection import FrameUnexpected
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage


class WebSocket:
    """One WebSocket on a QUIC connection: `status` and `headers` of the CONNECT's answer,
    then messages."""

    def __init__(self, client, stream_id):
        self.client = client
        self.stream_id = stream_id
        self.ws = Connection(ConnectionType.CLIENT)
        self.head = asyncio.get_running_loop().create_future()
        self.events = asyncio.Queue()
        self.body = bytearray()  # a refused CONNECT's response body
        self.reset = None  # the error code, when the server reset the stream
        self.ended = False  # the server finished its side

    @property
    def status(self):
        return int(dict(self.head.result())[b":status"])

    def header(self, name):
        return dict(self.head.result()).get(name.encode(), b"").decode()

    def _data(self, data, ended):
        if self.status != 200:
            self.body.extend(data)
        else:
            if data:
                self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Ping):
                    self._send(self.ws.send(event.response()))
                self.events.put_nowait(event)
        if ended:
            self.ended = True
            self.events.put_nowait(None)

    def _send(self, data, end=False):
        self.client.h3.send_data(self.stream_id, data, end_stream=end)
        self.client.transmit()

    def send(self, message):
        """A str goes as a text message, bytes as a binary one."""
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self._send(self.ws.send(event))

    def finish(self):
        """Ends our side of the stream, unless the server already stopped reading it
        (then aioquic has forgotten the stream: nothing is left to end)."""
        try:
            self._send(b"", end=True)
        except FrameUnexpected:
            pass

    def send_raw(self, data):
        """Bytes on the stream as they are (frames made by hand)."""
        self._send(data)

    async def recv(self, timeout=10):
        """The next whole message (str or bytes); a CloseConnection or None (the stream
        ended) otherwise."""
        parts = []
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            elif isinstance(event, Ping):
                continue
            else:
                return event

    async def close(self, code=1000, reason=""):
        """Sends a close frame; returns the server's close (code, reason) once the server
        also ended its side of the stream (or None if it ended without one), and finishes
        ours."""
        self._send(self.ws.send(CloseConnection(code=code, reason=reason)))
        answer = None
        while True:
            event = await self.recv()
            if isinstance(event, CloseConnection):
                answer = event.code, event.reason
                self.finish()
            elif event is None:
                return answer


class _Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.sockets = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self.sockets:
            ws = self.sockets[event.stream_id]
            ws.reset = event.error_code
            if not ws.head.done():
                ws.head.set_result([(b":status", b"0")])
            ws.events.put_nowait(None)
            return
        for ev in self.h3.handle_event(event):
            ws = self.sockets.get(getattr(ev, "stream_id", None))
            if ws is None:
                continue
            if isinstance(ev, HeadersReceived) and not ws.head.done():
                ws.head.set_result(ev.headers)
                if ev.stream_ended:
                    ws._data(b"", True)
            elif isinstance(ev, DataReceived):
                ws._data(ev.data, ev.stream_ended)

    async def websocket(self, authority, path, headers=(), protocol="websocket"):
        sid = self._quic.get_next_available_stream_id()
        ws = WebSocket(self, sid)
        self.sockets[sid] = ws
        fields = [(b":method", b"CONNECT"), (b":protocol", protocol.encode()), (b":scheme", b"https"),
                  (b":authority", authority.encode()), (b":path", path.encode()),
                  (b"sec-websocket-version", b"13")]
        fields += [(k.encode(), v.encode()) for k, v in headers]
        self.h3.send_headers(sid, fields, end_stream=False)
        self.transmit()
        await asyncio.wait_for(ws.head, 10)
        return ws


def session(port, cafile, host="127.0.0.1"):
    """`async with session(port, ca) as open_ws:` then `ws = await open_ws(path, headers)`;
    every WebSocket opened shares one QUIC connection."""
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    cfg.load_verify_locations(cafile)

    class Session:
        async def __aenter__(self):
            self.cm = connect(host, port, configuration=cfg, create_protocol=_Client)
            client = await self.cm.__aenter__()
            authority = "%s:%d" % (host, port)
            return lambda path, headers=(), protocol="websocket": client.websocket(
                authority, path, headers, protocol)

        async def __aexit__(self, *exc):
            return await self.cm.__aexit__(*exc)

    return Session()


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))

