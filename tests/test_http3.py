"""HTTP/3 front, worker side: with [http3] on, each slot's worker also serves the slot's
private Unix socket (`<run_dir>/slot-N.sock`, mode 0600), where the front forwards QUIC
requests as HTTP/2 and names the client with a header only that socket trusts; TCP
responses announce HTTP/3 with Alt-Svc. (The QUIC front itself is wired in a later step.)"""

import os
import signal
import ssl

import httpx

from conftest import status, wait_for
from test_tls import certs, ssl_section  # noqa: F401 - fixture

FRONT_HEADER = "x-genro-asgi-client"


def http3_server(server, certs, workers=1, **http3):  # noqa: F811
    sections = ssl_section(certs)
    sections["http3"] = {"enabled": True, **http3}
    return server(workers=workers, sections=sections)


def uds_client(path):
    # HTTP/2 with prior knowledge over the Unix socket, as the front speaks it.
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path), http1=False, http2=True),
                        base_url="http://front", timeout=10)


def test_slot_socket_serves_front_requests_as_http3(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    run = s.tmp_path / "run"
    assert oct(os.stat(run).st_mode & 0o777) == "0o700", "a run dir the server creates is private"
    for slot in (0, 1):
        path = run / ("slot-%d.sock" % slot)
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with uds_client(path) as c:
            r = c.get("/scope?x=1", headers={FRONT_HEADER: "203.0.113.9:4444"})
            assert r.http_version == "HTTP/2"
            scope = r.json()
            assert scope["http_version"] == "3"
            assert scope["scheme"] == "https"
            assert scope["client"] == ["203.0.113.9", 4444]
            assert not [h for h in scope["headers"] if h[0] == FRONT_HEADER]
            assert "alt-svc" not in r.headers, "the front adds nothing to HTTP/3 answers"
            assert c.post("/echo", content=b"x" * 100_000).content == b"x" * 100_000


def test_tcp_responses_announce_http3(server, certs):  # noqa: F811
    s = http3_server(server, certs, alt_svc_max_age=3600)
    with httpx.Client(verify=ssl.create_default_context(cafile=certs["ca"]), timeout=10) as c:
        r = c.get("https://127.0.0.1:%d/" % s.port)
    assert r.headers["alt-svc"] == 'h3=":%d"; ma=3600' % s.port
    s2 = http3_server(server, certs, port=4433)
    with httpx.Client(verify=ssl.create_default_context(cafile=certs["ca"]), timeout=10) as c:
        r = c.get("https://127.0.0.1:%d/" % s2.port)
    assert r.headers["alt-svc"] == 'h3=":4433"; ma=86400'


def test_slot_sockets_follow_scaling_and_stop(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    run = s.tmp_path / "run"
    s.proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: len([w for w in status(s)["workers"] if w["state"] == "ready"]) == 2, 30, "scale up")
    with uds_client(run / "slot-1.sock") as c:
        assert c.get("/scope").json()["http_version"] == "3"
    assert s.stop() == 0
    assert not list(run.glob("slot-*.sock")), "slot sockets are removed at exit"
