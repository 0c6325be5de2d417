"""103 Early Hints (RFC 8297) from the app's `http.response.early_hint` (hypercorn's
extension), with `[server] early_hints` on: sent on HTTP/1.1 (plaintext, TLS) ahead of
the final response, checked with a raw socket, with a strict parser (h11) over keep-alive
and pipelined requests, and with curl. Off (the default), nothing is sent or advertised
(tests/test_uds.py shows why, with nginx)."""

import shutil
import socket
import ssl
import subprocess
import time

import h11
import httpx
import pytest

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


def test_no_103_for_http10_or_http2_and_no_extension_there(server):
    s = server(sections=ON)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(request("/early-hints?s=0&force=1", "1.0"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.0 200") and b" 103 " not in data, data
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r = c.get(s.url + "/early-hints?s=0&force=1")
        assert r.status_code == 200 and r.text == "hinted"
        assert "http.response.early_hint" not in c.get(s.url + "/scope").json()["extensions"]
    assert "http.response.early_hint" in httpx.get(s.url + "/scope", timeout=10).json()["extensions"]


def test_bad_links_are_the_apps_error(server):
    s = server(sections=ON)
    r = httpx.get(s.url + "/early-hints?bad=1", timeout=10)
    assert r.status_code == 500
    s.wait_log("http.response.early_hint")


def test_103_over_tls(server, certs):  # noqa: F811
    s = server(sections={**ssl_section(certs), **ON})
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
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


def test_off_by_default_nothing_is_sent_or_advertised(server):
    s = server()
    assert "http.response.early_hint" not in httpx.get(s.url + "/scope", timeout=10).json()["extensions"]
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        got = events(sock, request("/early-hints?s=0&force=1"))
    assert [e.status_code for _t, e in got if hasattr(e, "status_code")] == [200]
