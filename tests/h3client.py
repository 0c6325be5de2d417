"""A small HTTP/3 client on aioquic (a QUIC stack nobody on this team wrote), for the
end-to-end tests: several requests at once on one QUIC connection, with bodies, returning
status, headers and body of each, and the client's own UDP address."""

import asyncio
import ssl
import time

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


class Response:
    def __init__(self):
        self.headers = []
        self.body = bytearray()
        self.reset = None  # error code when the server reset the stream
        self.interim = []  # (seconds since the request, headers) of each 1xx response
        self.sent = time.monotonic()
        self.final_at = None  # seconds since the request to the final response's head

    @property
    def status(self):
        return int(dict(self.headers)[b":status"])

    def header(self, name):
        return dict(self.headers).get(name.encode(), b"").decode()


class _Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self.waiting:
            fut, response = self.waiting.pop(event.stream_id)
            response.reset = event.error_code
            fut.set_result(response)
            return
        for ev in self.h3.handle_event(event):
            entry = self.waiting.get(getattr(ev, "stream_id", None))
            if entry is None:
                continue
            fut, response = entry
            if isinstance(ev, HeadersReceived):
                at = time.monotonic() - response.sent
                if not response.headers and dict(ev.headers).get(b":status", b"").startswith(b"1"):
                    response.interim.append((at, ev.headers))
                else:
                    response.final_at = response.final_at or at
                    response.headers.extend(ev.headers)
            elif isinstance(ev, DataReceived):
                response.body.extend(ev.data)
            if getattr(ev, "stream_ended", False):
                del self.waiting[ev.stream_id]
                fut.set_result(response)

    async def request(self, authority, method, path, headers=(), body=b""):
        sid = self._quic.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"https"),
                  (b":authority", authority.encode()), (b":path", path.encode())]
        fields += [(k.encode(), v.encode()) for k, v in headers]
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, Response())
        self.h3.send_headers(sid, fields, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        return await fut


    async def stall(self):
        """Opens a request stream, sends the start of a HEADERS frame and nothing more;
        returns the stream's Response once the server resets it."""
        sid = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.waiting[sid] = (fut, Response())
        self._quic.send_stream_data(sid, b"\x01\x40\x80", end_stream=False)  # HEADERS, 128 bytes coming
        self.transmit()
        return await fut


async def _run(host, port, requests, cafile, timeout, client_cert=None):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host,
                            max_data=64 << 20, max_stream_data=16 << 20)
    if client_cert:
        cfg.load_cert_chain(*client_cert)
    if cafile:
        cfg.load_verify_locations(cafile)
    else:
        cfg.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=cfg, create_protocol=_Client) as client:
        # aioquic binds a dual-stack "::" socket: only the port says who we are.
        local_port = client._transport.get_extra_info("sockname")[1]
        authority = "%s:%d" % (host, port)
        calls = [client.stall() if r == ("STALL",) else client.request(authority, *r) for r in requests]
        responses = await asyncio.wait_for(asyncio.gather(*calls), timeout)
    return responses, local_port


def fetch(port, requests, host="127.0.0.1", cafile=None, timeout=30, client_cert=None):
    """Sends every (method, path[, headers[, body]]) at once on one connection; returns
    ([Response], the client's UDP port). ("STALL",) opens a stream that never completes
    its header section. `client_cert` is (certfile, keyfile) for mutual TLS."""
    return asyncio.run(_run(host, port, [tuple(r) for r in requests], cafile, timeout, client_cert))


def get(port, path="/", **kwargs):
    (response,), _ = fetch(port, [("GET", path)], **kwargs)
    return response
