"""`[limits] request_timeout` (issue 19): a request whose app runs too long is answered
504 with its request id (or aborted once its response started), and the app's task is
cancelled so its `finally` blocks run; over HTTP/1.1, HTTP/2 and HTTP/3, with the real
binary. WebSockets are not subject to it; an app that blocks the loop cannot be cancelled,
and the watchdog reports it."""

import re
import time

import httpx
import pytest
from websockets.sync.client import connect

import h3client
from conftest import free_port, wait_for
from test_tls import certs, ssl_section  # noqa: F401 - fixture

APP = "timeout_app:app"


def timed_server(server, timeout=1, sections=None, **kwargs):
    port = free_port()
    sections = dict(sections or {})
    sections["limits"] = {"request_timeout": timeout}
    sections["metrics"] = {"enabled": True, "export_port": port}
    sections["logging"] = {"access_log": True}
    s = server(app=APP, sections=sections, **kwargs)
    s.metrics = "http://127.0.0.1:%d/metrics" % port
    return s


def timeouts_counted(s):
    text = httpx.get(s.metrics, timeout=10).text
    return int(re.search(r'genro_asgi_limits_hit_total\{kind="request_timeout",worker="0"\} (\d+)', text).group(1))


def check_504(r, marker, took):
    assert r.status_code == 504, (r.status_code, r.text)
    assert r.text == "Gateway Timeout (request id: %s)\n" % r.headers["x-request-id"]
    assert 0.9 <= took < 4, took
    wait_for(marker.exists, what="the app's finally block")
    assert marker.read_text() == "finally ran: cancelled"


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_a_request_past_the_timeout_gets_504_and_its_app_is_cancelled(server, tmp_path, http2):
    s = timed_server(server)
    client = httpx.Client(http1=not http2, http2=http2, timeout=30)
    marker = tmp_path / "marker"
    started = time.monotonic()
    r = client.get(s.url + "/sleep?s=30&marker=%s" % marker)
    check_504(r, marker, time.monotonic() - started)
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    line = s.wait_log("request_timeout: answered 504 after 1.")
    assert r.headers["x-request-id"] in line and "/sleep" in line, line
    access = s.wait_log('"GET /sleep?s=30&marker=')
    assert '" 504 ' in access, access
    # Under the timeout nothing changes, and the worker serves on.
    quick = tmp_path / "quick"
    r = client.get(s.url + "/sleep?s=0.2&marker=%s" % quick)
    assert r.status_code == 200 and quick.read_text() == "finally ran: returned"
    assert timeouts_counted(s) == 1


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2c"])
def test_a_started_response_past_the_timeout_is_aborted(server, http2):
    s = timed_server(server)
    with httpx.Client(http1=not http2, http2=http2, timeout=30) as client:
        with client.stream("GET", s.url + "/stream?s=30") as r:
            assert r.status_code == 200
            started = time.monotonic()
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                for _ in r.iter_bytes():
                    pass
            assert time.monotonic() - started < 4
    s.wait_log("request_timeout: response aborted after 1.")
    assert timeouts_counted(s) == 1


def test_over_http3(server, certs, tmp_path):  # noqa: F811
    sections = ssl_section(certs)
    sections["http3"] = {"enabled": True}
    s = timed_server(server, sections=sections)
    marker = tmp_path / "marker"
    started = time.monotonic()
    (r, streamed), _ = h3client.fetch(s.port, [("GET", "/sleep?s=30&marker=%s" % marker), ("GET", "/stream?s=30")],
                                      cafile=certs["ca"])
    took = time.monotonic() - started
    assert r.status == 504 and bytes(r.body).decode() == "Gateway Timeout (request id: %s)\n" % r.header("x-request-id")
    assert took < 4
    wait_for(marker.exists, what="the app's finally block")
    assert marker.read_text() == "finally ran: cancelled"
    assert streamed.reset is not None or bytes(streamed.body) == b"first;", "the started response is cut"
    assert bytes(streamed.body) != b"first;last"


def test_websockets_are_not_subject_to_it(server):
    s = timed_server(server)
    with connect("ws://127.0.0.1:%d/ws" % s.port) as ws:
        for _ in range(5):
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            time.sleep(0.5)
    assert "request_timeout" not in s.log


def test_a_loop_blocking_app_is_not_cancelled_but_the_watchdog_reports_it(server):
    s = timed_server(server, sections={"watchdog": {"interval": 0.2, "timeout": 1, "critical": 300}})
    r = httpx.get(s.url + "/block?s=2.5", timeout=30)
    # The loop could not run the timer while the app held it; when it could, the app had
    # already answered.
    assert r.status_code == 200
    s.wait_log("event loop has been blocked")
