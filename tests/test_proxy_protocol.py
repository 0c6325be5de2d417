"""[server] proxy_protocol: PROXY protocol v1/v2 headers from a trusted L4 balancer set the
connection's client (scope, access log, `ctl requests`, forwarding-header trust); anything
else from a trusted peer, and every connection from another peer, is closed unanswered and
counted in genro_asgi_proxy_protocol_errors_total{reason}."""

import json
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import ctl, free_port, recv_all, wait_for
from test_tls import certs, client_context, ssl_section  # noqa: F401 (fixture)

SCOPE_REQUEST = b"GET /scope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, dst="10.0.0.1", sport=4242, dport=443):
    family = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (family, src, dst, sport, dport)).encode()


def v2(src=None, dst="10.0.0.1", sport=4242, dport=443, command=0x21, tlvs=b""):
    """A v2 header; no `src`: the UNSPEC family (LOCAL when command is 0x20)."""
    if src is None:
        family, block = 0x00, b""
    else:
        af, family = (socket.AF_INET6, 0x21) if ":" in src else (socket.AF_INET, 0x11)
        block = (socket.inet_pton(af, src) + socket.inet_pton(af, dst)
                 + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
    block += tlvs
    return V2_SIGNATURE + bytes([command, family]) + len(block).to_bytes(2, "big") + block


def pp_server(server, mode, allow="127.0.0.1", sections=None, **kwargs):
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    sections.setdefault("server", {}).update(proxy_protocol=mode, forwarded_allow_ips=allow)
    sections.setdefault("logging", {}).setdefault("access_log", True)
    port = free_port()
    sections["metrics"] = {"enabled": True, "export_port": port}
    s = server(sections=sections, **kwargs)
    s.metrics_url = "http://127.0.0.1:%d" % port
    return s


def refused(s, reason):
    """genro_asgi_proxy_protocol_errors_total{reason}, summed over the workers."""
    import httpx
    text = httpx.get(s.metrics_url + "/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if line.startswith("genro_asgi_proxy_protocol_errors_total{") and 'reason="%s"' % reason in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def exchange(port, data, source="127.0.0.1", shut=False, timeout=10):
    """Connects from `source`, sends `data` and reads until the server closes: the answer,
    or b"" when the connection was closed (or reset) without one."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
            return recv_all(sock)
        except ConnectionResetError:
            return b""


def scope_via(port, header, source="127.0.0.1", extra=b""):
    answer = exchange(port, header + SCOPE_REQUEST.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n", 1), source)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    return json.loads(body)


def access_client(s, path):
    line = s.wait_log("GET " + path)
    return line.split("genro_asgi.access ", 1)[1].split(" ", 1)[0]


# -- hand-made headers ------------------------------------------------------------------

def test_v1_and_v2_headers_set_the_client_everywhere(server):
    s = pp_server(server, "auto")
    scope = scope_via(s.port, v1("198.51.100.7", sport=4242))
    assert scope["client"] == ["198.51.100.7", 4242]
    # scope["server"] stays the local socket, not the balancer's address in the header.
    assert scope["server"] == ["127.0.0.1", s.port]
    scope = scope_via(s.port, v1("2001:db8::7", dst="2001:db8::1", sport=1))
    assert scope["client"] == ["2001:db8::7", 1]
    tlvs = b"\x01\x00\x02h2" + b"\xea\x00\x05vpce1"
    scope = scope_via(s.port, v2("203.0.113.9", sport=40000, tlvs=tlvs))
    assert scope["client"] == ["203.0.113.9", 40000]
    scope = scope_via(s.port, v2("2001:db8::9", dst="::1", sport=8))
    assert scope["client"] == ["2001:db8::9", 8]
    # Headers that name no client keep the socket's peer: v1 UNKNOWN, v2 LOCAL and UNSPEC.
    for header in (b"PROXY UNKNOWN\r\n", v2(command=0x20), v2(command=0x21),
                   v2("192.0.2.1", command=0x20)):
        assert scope_via(s.port, header)["client"][0] == "127.0.0.1", header
    # The access log names the header's client.
    exchange(s.port, v1("198.51.100.9") + SCOPE_REQUEST.replace(b"/scope", b"/scope/logged"))
    assert access_client(s, "/scope/logged") == "198.51.100.9"
    # ...and so does `ctl requests`.
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    sock.sendall(v2("203.0.113.77", sport=5555) + b"GET /sleep?s=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

    def listed():
        r = ctl(s, "requests", "--json")
        reports = json.loads(r.stdout)["workers"]
        requests = [req for w in reports for req in w.get("requests", [])]
        return requests or None
    requests = wait_for(listed, 10, "the sleeping request listed")
    assert requests[0]["client"] == "203.0.113.77:5555", requests
    assert recv_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()
    for reason in ("missing", "malformed", "version", "oversized", "truncated", "timeout", "untrusted"):
        assert refused(s, reason) == 0, reason


def test_forwarding_headers_are_judged_against_the_header_client(server):
    # The balancer (127.0.0.1) is trusted for the PROXY header; X-Forwarded-For is trusted
    # only from the client the header names, as if it had connected directly.
    s = pp_server(server, "v1", allow="127.0.0.1, 192.0.2.0/24")
    xff = b"X-Forwarded-For: 203.0.113.50\r\n"
    scope = scope_via(s.port, v1("198.51.100.7"), extra=xff)
    assert scope["client"] == ["198.51.100.7", 4242], "an untrusted client cannot spoof XFF"
    scope = scope_via(s.port, v1("192.0.2.10"), extra=xff)
    assert scope["client"] == ["203.0.113.50", 0], "a trusted L7 proxy behind the balancer"


def test_bad_headers_close_unanswered_and_are_counted(server):
    s = pp_server(server, "v2", sections={"limits": {"header_read_timeout": 1},
                                          "logging": {"level": "DEBUG"}})
    ok = v2("203.0.113.9") + SCOPE_REQUEST
    cases = [
        ("missing", SCOPE_REQUEST, False),
        ("missing", b"\x16\x03\x01\x00\xa0\x01\x00\x00\x9c\x03\x03" + b"\x00" * 40, False),
        ("version", v1("198.51.100.7") + SCOPE_REQUEST, False),
        ("malformed", V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12 + SCOPE_REQUEST, False),
        ("malformed", V2_SIGNATURE + b"\x21\x51\x00\x0c" + b"\x00" * 12 + SCOPE_REQUEST, False),
        ("malformed", v2("203.0.113.9", tlvs=b"\x01\x00\x09ab") + SCOPE_REQUEST, False),
        ("oversized", V2_SIGNATURE + b"\x21\x11\x10\x01" + b"\x00" * 4097 + SCOPE_REQUEST, False),
        ("oversized", V2_SIGNATURE + b"\x21\x11\xff\xff", False),
        ("truncated", ok[:10], True),
        ("truncated", ok[:20], True),
    ]
    for reason, data, shut in cases:
        before = refused(s, reason)
        assert exchange(s.port, data, shut=shut) == b"", (reason, data[:40])
        wait_for(lambda: refused(s, reason) == before + 1, 10, "%s counted" % reason)
        # The worker keeps serving.
        assert scope_via(s.port, v2("203.0.113.9"))["client"][0] == "203.0.113.9"
    # A slow header: closed at header_read_timeout, unanswered.
    start = time.monotonic()
    assert exchange(s.port, ok[:14]) == b""
    assert 0.8 < time.monotonic() - start < 5
    wait_for(lambda: refused(s, "timeout") == 1, 10, "timeout counted")
    # A flood of refusals leaves at most a line per 10 s in the log, at debug level.
    for _ in range(30):
        exchange(s.port, b"garbage\r\n")
    assert len(re.findall("connection refused", s.log)) <= 2, s.log[-3000:]
    assert scope_via(s.port, v2("203.0.113.9"))["client"][0] == "203.0.113.9"


def test_v1_only_refuses_v2_and_oversized_v1(server):
    s = pp_server(server, "v1")
    assert exchange(s.port, v2("203.0.113.9") + SCOPE_REQUEST) == b""
    wait_for(lambda: refused(s, "version") == 1, 10, "version counted")
    assert exchange(s.port, b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n" + SCOPE_REQUEST) == b""
    wait_for(lambda: refused(s, "oversized") == 1, 10, "oversized counted")
    assert exchange(s.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n" + SCOPE_REQUEST) == b""
    assert exchange(s.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + SCOPE_REQUEST) == b""
    wait_for(lambda: refused(s, "malformed") == 2, 10, "malformed counted")
    assert scope_via(s.port, v1("198.51.100.7"))["client"][0] == "198.51.100.7"


def test_peers_outside_the_allow_list_are_refused(server):
    s = pp_server(server, "auto", allow="127.0.0.1")
    for data in (v1("198.51.100.7") + SCOPE_REQUEST, SCOPE_REQUEST):
        assert exchange(s.port, data, source="127.0.0.3") == b""
    wait_for(lambda: refused(s, "untrusted") == 2, 10, "untrusted counted")
    assert scope_via(s.port, v1("198.51.100.7"))["client"][0] == "198.51.100.7"


def test_off_by_default_and_a_header_is_then_not_http(server):
    s = pp_server(server, "off")
    answer = exchange(s.port, v1("198.51.100.7") + SCOPE_REQUEST)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    scope = scope_via(s.port, b"")
    assert scope["client"][0] == "127.0.0.1"


def test_tls_after_the_header(server, certs):  # noqa: F811
    s = pp_server(server, "auto", sections=ssl_section(certs))
    for header in (v2("203.0.113.9", sport=7), v1("198.51.100.7", sport=8)):
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
            raw.sendall(header)
            ctx = client_context(certs, alpn=["http/1.1"])
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(SCOPE_REQUEST)
                answer = recv_all(tls)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        scope = json.loads(body)
        assert scope["scheme"] == "https"
        assert scope["client"] in (["203.0.113.9", 7], ["198.51.100.7", 8])
    # The ClientHello without a header is refused, unanswered.
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        ctx = client_context(certs)
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    wait_for(lambda: refused(s, "missing") == 1, 10, "missing counted")


def h2_scope(sock):
    """GET /scope over HTTP/2 on a connected socket: the scope."""
    import h2.connection
    import h2.events
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/scope"), (":scheme", "https"),
                          (":authority", "127.0.0.1")], end_stream=True)
    sock.sendall(conn.data_to_send())
    body, status, ended = b"", None, False
    while not ended:
        data = sock.recv(65536)
        assert data, "closed before the response"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        sock.sendall(conn.data_to_send())
    assert status == b"200", body
    return json.loads(body)


def test_http2_after_the_header(server, certs):  # noqa: F811
    # h2c prior knowledge: the preface detection starts at the first byte after the header.
    s = pp_server(server, "auto")
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(v2("203.0.113.9", sport=9))
        scope = h2_scope(sock)
    assert scope["client"] == ["203.0.113.9", 9] and scope["http_version"] == "2"
    # Over TLS, ALPN h2.
    s = pp_server(server, "auto", sections=ssl_section(certs))
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        raw.sendall(v1("2001:db8::5", dst="2001:db8::1", sport=10))
        with client_context(certs, alpn=["h2"]).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            scope = h2_scope(tls)
    assert scope["client"] == ["2001:db8::5", 10] and scope["http_version"] == "2"


# -- a real HAProxy in front --------------------------------------------------------------

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")


@pytest.fixture
def haproxy(tmp_path):
    """Factory: haproxy({name: (backend port, "send-proxy" | "send-proxy-v2")}) ->
    {name: front port}; a foreground HAProxy in TCP mode (L4, so no X-Forwarded-For)."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (scripts/test.sh installs the Debian package)")
    started = []

    def make(routes):
        fronts = {name: free_port() for name in routes}
        lines = ["global", "  maxconn 100", "defaults", "  mode tcp", "  timeout connect 5s",
                 "  timeout client 30s", "  timeout server 30s"]
        for name, (port, send) in routes.items():
            lines += ["frontend fe_%s" % name, "  bind 127.0.0.1:%d" % fronts[name],
                      "  default_backend be_%s" % name,
                      "backend be_%s" % name, "  server w 127.0.0.1:%d %s" % (port, send)]
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        started.append(proc)

        def listening():
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with socket.create_connection(("127.0.0.1", list(fronts.values())[-1]), timeout=1):
                    return True
            except OSError:
                return False
        wait_for(listening, 20, "haproxy listening")
        return fronts

    yield make
    for proc in started:
        proc.terminate()
        proc.wait(10)


def through(front, path=b"/scope"):
    """GET `path` through HAProxy from 127.0.0.2: (scope, client port)."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", front))
        port = sock.getsockname()[1]
        sock.sendall(SCOPE_REQUEST.replace(b"/scope", path, 1))
        answer = recv_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    return json.loads(body), port


@pytest.mark.parametrize("mode,send", [("v2", "send-proxy-v2"), ("v1", "send-proxy")])
def test_behind_haproxy(server, haproxy, mode, send):
    s = pp_server(server, mode)
    fronts = haproxy({"lb": (s.port, send)})
    scope, port = through(fronts["lb"], b"/scope/" + send.encode())
    # The client HAProxy saw (127.0.0.2), not HAProxy's own connection (127.0.0.1).
    assert scope["client"] == ["127.0.0.2", port]
    assert access_client(s, "/scope/" + send) == "127.0.0.2"
    assert refused(s, "missing") == 0 and refused(s, "version") == 0


def test_auto_behind_haproxy_with_both_versions(server, haproxy):
    s = pp_server(server, "auto")
    fronts = haproxy({"one": (s.port, "send-proxy"), "two": (s.port, "send-proxy-v2")})
    for name in ("one", "two"):
        scope, port = through(fronts[name])
        assert scope["client"] == ["127.0.0.2", port], name
    # A direct connection from the trusted balancer's address without a header is refused.
    assert exchange(s.port, SCOPE_REQUEST) == b""
    wait_for(lambda: refused(s, "missing") == 1, 10, "missing counted")
