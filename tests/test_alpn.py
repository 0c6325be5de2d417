"""ALPN decides the protocol over TLS (RFC 9113 3.3, RFC 7301): a connection that
negotiated `h2` is HTTP/2 only, one that negotiated `http/1.1` (or offered no ALPN) is
HTTP/1.1 only. Preface detection is for cleartext ports only."""

import socket
import ssl
import struct

import pytest

from conftest import recv_all
from test_tls import certs, ssl_section  # noqa: F401  (fixture)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY = 0x7
PROTOCOL_ERROR = 0x1


def tls_exchange(port, ca, alpn, data):
    """Connects over TLS offering `alpn` (None: no ALPN), sends `data`, reads until the
    server closes; returns (negotiated protocol, bytes received)."""
    ctx = ssl.create_default_context(cafile=ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            try:
                received = recv_all(sock)
            except (ConnectionResetError, ssl.SSLError):
                received = b""
            return sock.selected_alpn_protocol(), received


def frames(data):
    """(type, payload) of each whole HTTP/2 frame in `data`."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind = data[3]
        if len(data) < 9 + length:
            break
        out.append((kind, data[9:9 + length]))
        data = data[9 + length:]
    return out


def test_h2_alpn_bad_preface_is_not_answered_in_http11(server, certs):  # noqa: F811
    """Regression (issue 16, h2spec 3.5 over TLS): an invalid preface on an ALPN-h2
    connection got an `HTTP/1.1 400` reply; it must end as HTTP/2 (GOAWAY
    PROTOCOL_ERROR) or a close."""
    s = server(workers=1, sections=ssl_section(certs))
    alpn, data = tls_exchange(s.port, certs["ca"], ["h2"],
                              b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert alpn == "h2"
    assert b"HTTP/1.1" not in data, data[:200]
    goaways = [payload for kind, payload in frames(data) if kind == GOAWAY]
    for payload in goaways:
        assert struct.unpack(">I", payload[4:8])[0] == PROTOCOL_ERROR, payload
    # Nothing but HTTP/2 frames (or nothing at all) came back.
    assert sum(9 + len(p) for _, p in frames(data)) == len(data), data[:200]


def test_http11_alpn_is_http11_only(server, certs):  # noqa: F811
    s = server(workers=1, sections=ssl_section(certs))
    alpn, data = tls_exchange(s.port, certs["ca"], ["http/1.1"], H2_PREFACE)
    assert alpn == "http/1.1"
    assert data.startswith(b"HTTP/1.1 4"), data[:200]
    alpn, data = tls_exchange(s.port, certs["ca"], ["http/1.1"],
                              b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def test_no_alpn_is_http11_only(server, certs):  # noqa: F811
    """A TLS client that offers no ALPN speaks HTTP/1.1 (RFC 9113 3.3: h2 over TLS is
    chosen with ALPN), so an HTTP/2 preface there is not served as HTTP/2."""
    s = server(workers=1, sections=ssl_section(certs))
    alpn, data = tls_exchange(s.port, certs["ca"], None,
                              b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert alpn is None
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    alpn, data = tls_exchange(s.port, certs["ca"], None, H2_PREFACE)
    assert data.startswith(b"HTTP/1.1 4"), data[:200]
    assert not frames(data) or frames(data)[0][0] != 0x4, data[:200]  # no SETTINGS


def test_h2_alpn_serves_http2(server, certs):  # noqa: F811
    import h2.connection
    import h2.events
    s = server(workers=1, sections=ssl_section(certs))
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            conn = h2.connection.H2Connection()
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                  (":authority", "127.0.0.1")], end_stream=True)
            sock.sendall(conn.data_to_send())
            status = None
            ended = False
            while not ended:
                data = sock.recv(65536)
                assert data, "closed before the response"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = dict(event.headers)[b":status"]
                    if isinstance(event, h2.events.StreamEnded):
                        ended = True
                sock.sendall(conn.data_to_send())
            assert status == b"200"


@pytest.mark.parametrize("preface", [H2_PREFACE])
def test_cleartext_keeps_preface_detection(server, preface):
    """On a cleartext port the HTTP/2 preface still selects HTTP/2 (h2c prior knowledge)."""
    s = server(workers=1)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = sock.recv(65536)
    assert frames(data) and frames(data)[0][0] == 0x4, data[:100]  # SETTINGS
