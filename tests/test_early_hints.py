"""103 Early Hints (RFC 8297) from the app's `http.response.early_hint` (hypercorn's
extension), with `[server] early_hints` on: sent ahead of the final response on HTTP/1.1
(plaintext, TLS; a raw socket, a strict parser (h11) over keep-alive and pipelined
requests, curl), on HTTP/2 (h2c and TLS; the h2 state machine as a raw client, curl) and
on HTTP/3 through the front (aioquic). Off (the default), nothing is sent or advertised
(tests/test_uds.py shows why, with nginx)."""

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time

import h11
import h2.config
import h2.connection
import h2.events
import httpx
import pytest

import h3client

from test_http3 import spki_pin
from test_tls import certs, ssl_section  # noqa: F401 - fixture

ON = {"server": {"early_hints": True}}
LINKS = ["</style.css>; rel=preload; as=style", "</app.js>; rel=preload; as=script"]


def events(sock, raw_request):
    """Sends one raw request; returns h11's events for its answer, with arrival times."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    out, start = [], time.monotonic()
    sock.sendall(raw_request)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            assert data, "connection closed early"
            conn.receive_data(data)
            continue
        out.append((time.monotonic() - start, event))
        if isinstance(event, h11.EndOfMessage):
            return out


@contextlib.contextmanager
def tls_socket(port, certs, alpn):  # noqa: F811
    """A TLS connection to the server that offers only `alpn`."""
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == alpn
            yield sock


def request(path, version="1.1"):
    return ("GET %s HTTP/%s\r\nHost: x\r\n\r\n" % (path, version)).encode()


def test_103_arrives_before_the_app_answers(server):
    s = server(sections=ON)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        got = events(sock, request("/early-hints?s=0.5"))
    (t_hint, hint), (t_final, final) = got[0], got[1]
    assert isinstance(hint, h11.InformationalResponse) and hint.status_code == 103, got
    assert [v.decode() for k, v in hint.headers if k == b"link"] == LINKS
    assert isinstance(final, h11.Response) and final.status_code == 200
    assert t_hint < 0.4 <= t_final, (t_hint, t_final)  # while the app was still sleeping


def test_keep_alive_and_pipelined_requests_stay_well_formed(server):
    """Each request carries its own tag in its hint's link and its final `link`: every
    103 must come right before its own request's 200, on keep-alive and pipelined
    requests alike."""
    s = server(sections=ON)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        conn = h11.Connection(h11.CLIENT)
        seen = []  # (status, tag)
        tag = 0
        # Three requests one after another on one connection, then batches pipelined.
        for n in (1, 1, 1, 3, 5):
            tags = list(range(tag, tag + n))
            tag += n
            sock.sendall(b"".join(request("/early-hints?s=0.02&tag=t%d" % t) for t in tags))
            for _ in tags:
                conn.send(h11.Request(method="GET", target="/early-hints", headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(sock.recv(65536))
                        continue
                    if isinstance(event, (h11.InformationalResponse, h11.Response)):
                        link = dict(event.headers).get(b"link", b"").decode()
                        seen.append((event.status_code, link.split("?")[1].split(">")[0]))
                    if isinstance(event, h11.EndOfMessage):
                        conn.start_next_cycle()
                        break
    finals = [t for status, t in seen if status == 200]
    assert finals == ["t%d" % t for t in range(tag)], seen
    for i, (status, t) in enumerate(seen):
        if status == 103:
            # A hint may be dropped (a pipelined request behind an unflushed response),
            # never misplaced: the next response is its own request's.
            assert seen[i + 1] == (200, t), seen
    assert seen[:2] == [(103, "t0"), (200, "t0")], seen
    assert sum(1 for status, _ in seen if status == 103) >= 3, seen


def test_no_103_for_http10_and_no_extension_there(server):
    s = server(sections=ON)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(request("/early-hints?s=0&force=1", "1.0"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200") and b" 103 " not in data, data
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(request("/scope", "1.0"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"http.response.early_hint" not in data.partition(b"\r\n\r\n")[2], data
    assert "http.response.early_hint" in httpx.get(s.url + "/scope", timeout=10).json()["extensions"]
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        assert "http.response.early_hint" in c.get(s.url + "/scope").json()["extensions"]


class H2Client:
    """GETs over one HTTP/2 connection with the h2 state machine (which checks the frames'
    order and fields)."""

    def __init__(self, sock):
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()

    def get(self, *paths):
        """Sends each GET at once; returns {stream: ([(seconds, status, links)] of each
        response head, body)}."""
        out = {}
        for path in paths:
            sid = self.conn.get_next_available_stream_id()
            out[sid] = ([], bytearray())
            self.conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                                         (":path", path)], end_stream=True)
        start = time.monotonic()
        self.sock.sendall(self.conn.data_to_send())
        ended = set()
        while len(ended) < len(out):
            data = self.sock.recv(65536)
            assert data, "connection closed early"
            for event in self.conn.receive_data(data):
                if isinstance(event, (h2.events.InformationalResponseReceived, h2.events.ResponseReceived)):
                    status = int(dict(event.headers)[":status"])
                    links = [v for k, v in event.headers if k == "link"]
                    out[event.stream_id][0].append((time.monotonic() - start, status, links))
                elif isinstance(event, h2.events.DataReceived):
                    out[event.stream_id][1].extend(event.data)
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(event)
            self.sock.sendall(self.conn.data_to_send())
        return {sid: (heads, bytes(body)) for sid, (heads, body) in out.items()}

    def get_one(self, path):
        (answer,) = self.get(path).values()
        return answer


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2-tls"])
def test_http2_103_arrives_before_the_app_answers(server, certs, tls):  # noqa: F811
    s = server(sections={**ssl_section(certs), **ON} if tls else ON)
    opened = tls_socket(s.port, certs, "h2") if tls else socket.create_connection(("127.0.0.1", s.port), timeout=10)
    with opened as sock:
        client = H2Client(sock)
        heads, body = client.get_one("/early-hints?s=1.5")
        (t_hint, status, links), (t_final, final, _) = heads
        assert status == 103 and links == LINKS, heads
        assert final == 200 and body == b"hinted"
        assert t_final - t_hint >= 1.0, heads  # while the app was still sleeping
        # A later stream on the same connection gets its own.
        heads, _ = client.get_one("/early-hints?s=0.1")
        assert [status for _t, status, _l in heads] == [103, 200], heads


def test_http2_hints_on_concurrent_streams_stay_on_their_own_stream(server):
    """Eight streams at once, each tagged: every 103 arrives on its own stream, before
    that stream's 200, while the other streams' apps still run."""
    s = server(sections=ON)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        got = H2Client(sock).get(*["/early-hints?s=0.%d&tag=t%d" % (2 + n % 3, n) for n in range(8)])
    for n, (heads, body) in enumerate(got.values()):
        link = ["</tagged.css?t%d>; rel=preload" % n]
        assert [(status, links) for _t, status, links in heads] == [(103, link), (200, link)], (n, heads)
        assert body == b"hinted"


def test_http2_hints_are_bounded_per_stream_and_oversized_ones_dropped(server, certs):  # noqa: F811
    """HEADERS frames are not flow controlled, so a stream sends at most 16 hints in its
    life (an app that sends 200 gets the first 16 through, the rest dropped, no error);
    a hint with more than 8 KiB of links is dropped on HTTP/2 and through the HTTP/3
    front, and the response is still whole."""
    s = server(sections={**ssl_section(certs), "http3": {"enabled": True}, **ON})
    with tls_socket(s.port, certs, "h2") as sock:
        client = H2Client(sock)
        heads, body = client.get_one("/early-hints?s=0.2&n=200")
        statuses = [status for _t, status, _links in heads]
        assert statuses == [103] * 16 + [200] and body == b"hinted", statuses
        heads, body = client.get_one("/early-hints?s=0&big=20000")
        assert [status for _t, status, _l in heads] == [200] and body == b"hinted"
        heads, _ = client.get_one("/early-hints?s=0&big=7000")
        assert [status for _t, status, _l in heads] == [103, 200]
    (many, big, fits), _ = h3client.fetch(
        s.port, [("GET", "/early-hints?s=0.2&n=200"), ("GET", "/early-hints?s=0&big=20000"),
                 ("GET", "/early-hints?s=0&big=7000")], cafile=certs["ca"])
    assert len(many.interim) == 16 and many.status == 200 and bytes(many.body) == b"hinted"
    assert big.interim == [] and big.status == 200 and bytes(big.body) == b"hinted"
    assert len(fits.interim) == 1 and fits.status == 200


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_sees_the_103_over_http2(server):
    s = server(sections=ON)
    r = subprocess.run(["curl", "-sv", "--http2-prior-knowledge", "--max-time", "10", s.url + "/early-hints"],
                       capture_output=True, text=True)
    assert "< HTTP/2 103" in r.stderr, r.stderr
    assert "< link: </style.css>; rel=preload; as=style" in r.stderr, r.stderr
    assert "< HTTP/2 200" in r.stderr and r.stdout == "hinted"


def test_http3_103_through_the_front(server, certs):  # noqa: F811
    s = server(sections={**ssl_section(certs), "http3": {"enabled": True}, **ON})
    (hinted, scope, concurrent), _ = h3client.fetch(
        s.port,
        [("GET", "/early-hints?s=1.5"), ("GET", "/scope"), ("GET", "/early-hints?s=0.3&tag=t9")],
        cafile=certs["ca"],
    )
    assert hinted.status == 200 and bytes(hinted.body) == b"hinted", hinted.headers
    # While the app was still sleeping.
    assert hinted.interim and hinted.final_at - hinted.interim[0][0] >= 1.0, (hinted.interim, hinted.final_at)
    (_at, fields), = hinted.interim
    assert dict(fields)[b":status"] == b"103"
    assert [v.decode() for k, v in fields if k == b"link"] == LINKS
    assert "http.response.early_hint" in json.loads(bytes(scope.body))["extensions"]
    assert [dict(h)[b"link"] for _at, h in concurrent.interim] == [b"</tagged.css?t9>; rel=preload"]


def test_bad_links_are_the_apps_error(server):
    s = server(sections=ON)
    r = httpx.get(s.url + "/early-hints?bad=1", timeout=10)
    assert r.status_code == 500
    s.wait_log("http.response.early_hint")


def test_103_over_tls(server, certs):  # noqa: F811
    s = server(sections={**ssl_section(certs), **ON})
    with tls_socket(s.port, certs, "http/1.1") as sock:
        got = events(sock, request("/early-hints?s=0.2"))
    assert [e.status_code for _t, e in got if hasattr(e, "status_code")] == [103, 200]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_sees_the_103(server):
    s = server(sections=ON)
    r = subprocess.run(["curl", "-sv", "--max-time", "10", s.url + "/early-hints"],
                       capture_output=True, text=True)
    assert "< HTTP/1.1 103 Early Hints" in r.stderr, r.stderr
    assert "< link: </style.css>; rel=preload; as=style" in r.stderr, r.stderr
    assert "< HTTP/1.1 200" in r.stderr and r.stdout == "hinted"


def test_off_by_default_nothing_is_sent_or_advertised(server, certs):  # noqa: F811
    s = server(sections={**ssl_section(certs), "http3": {"enabled": True}})
    ctx = ssl.create_default_context(cafile=certs["ca"])
    with httpx.Client(verify=ctx, timeout=10) as c:
        assert "http.response.early_hint" not in c.get("https://127.0.0.1:%d/scope" % s.port).json()["extensions"]
    with tls_socket(s.port, certs, "http/1.1") as sock:
        got = events(sock, request("/early-hints?s=0&force=1"))
    assert [e.status_code for _t, e in got if hasattr(e, "status_code")] == [200]
    with tls_socket(s.port, certs, "h2") as sock:
        client = H2Client(sock)
        heads, _ = client.get_one("/early-hints?s=0&force=1")
        assert [status for _t, status, _l in heads] == [200]
        _, body = client.get_one("/scope")
        assert b"http.response.early_hint" not in body
    (forced, scope), _ = h3client.fetch(s.port, [("GET", "/early-hints?s=0&force=1"), ("GET", "/scope")],
                                        cafile=certs["ca"])
    assert forced.status == 200 and forced.interim == []
    assert "http.response.early_hint" not in json.loads(bytes(scope.body))["extensions"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("protocol", ["h2", "h3"])
def test_chromium_preloads_from_the_103_while_the_page_is_made(server, certs, protocol):  # noqa: F811
    """A browser acting on the hint: the page's app waits (up to 3 s) for its stylesheet
    to be fetched, and says in the page whether it was. Chromium acts on Early Hints only
    over HTTP/2 and HTTP/3."""
    sections = {**ssl_section(certs), **ON}
    if protocol == "h3":
        sections["http3"] = {"enabled": True}
    s = server(sections=sections)
    origin = "127.0.0.1:%d" % s.port
    quic = ["--origin-to-force-quic-on=" + origin] if protocol == "h3" else []
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + profile, *quic,
            "--ignore-certificate-errors-spki-list=" + spki_pin(certs["certfile"]),
            "--dump-dom", "https://%s/hinted-page?tag=%s" % (origin, protocol),
        ], capture_output=True, text=True, timeout=90)
    assert "preloaded-before-response=yes" in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])
