"""Observability: the supervisor's metrics listener (Prometheus text merged from every worker
and the HTTP/3 front with a `worker` label, scraped over the control plane), /healthz and
/readyz. Counts are checked exactly against the requests the test sent."""

import os
import signal
import socket
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import h3client
from conftest import ctl, free_port, ready_pids, status, wait_for
from test_tls import certs, ssl_section  # noqa: F401 - fixture


def metrics_server(server, workers=2, sections=None, **kwargs):
    port = free_port()
    sections = dict(sections or {})
    sections["metrics"] = {"enabled": True, "export_port": port, **sections.get("metrics", {})}
    s = server(workers=workers, sections=sections, **kwargs)
    s.metrics_url = "http://127.0.0.1:%d" % port
    return s


def scrape(s, path="/metrics"):
    r = httpx.get(s.metrics_url + path, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text):
    """{(name, frozenset(labels)): value}; parsing also checks the exposition is valid
    (one HELP/TYPE per family, samples grouped under it)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, "duplicate series %r" % (key,)
            out[key] = sample.value
    return out


def total(values, name, **labels):
    """Sum of a metric over every series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


def test_counts_are_exact_by_protocol_method_and_status(server):
    s = metrics_server(server, workers=2)
    hello = b"Hello, world!"
    with httpx.Client(base_url=s.url, timeout=10) as h1:
        for _ in range(37):
            assert h1.get("/").content == hello
        for _ in range(11):
            assert h1.post("/echo", content=b"x" * 1000).content == b"x" * 1000
        for _ in range(5):
            assert h1.get("/status?code=404").status_code == 404
        for _ in range(3):
            assert h1.get("/raise").status_code == 500
    with httpx.Client(base_url=s.url, timeout=10, http1=False, http2=True) as h2:
        for _ in range(23):
            r = h2.get("/")
            assert r.http_version == "HTTP/2" and r.content == hello
        for _ in range(2):
            assert h2.request("PURGE", "/").status_code == 200
    # Each new h1 request may land on either worker; every worker's series are there.
    expected = {
        ("http1", "GET", "2xx"): 37,
        ("http1", "POST", "2xx"): 11,
        ("http1", "GET", "4xx"): 5,
        ("http1", "GET", "5xx"): 3,
        ("http2", "GET", "2xx"): 23,
        ("http2", "OTHER", "2xx"): 2,
    }

    def settled():
        values = samples(scrape(s))
        got = {k: total(values, "genro_asgi_requests_total", protocol=k[0], method=k[1], status=k[2])
               for k in expected}
        return values if got == expected else None

    values = wait_for(settled, timeout=10, what="the scraped counters to match")
    assert total(values, "genro_asgi_requests_total") == sum(expected.values())
    assert total(values, "genro_asgi_request_duration_seconds_count", protocol="http1") == 56
    assert total(values, "genro_asgi_request_duration_seconds_count", protocol="http2") == 25
    assert total(values, "genro_asgi_request_duration_seconds_bucket", protocol="http2", le="+Inf") == 25
    assert total(values, "genro_asgi_request_body_bytes_total", protocol="http1") == 11 * 1000
    assert total(values, "genro_asgi_response_body_bytes_total", protocol="http2") == 25 * len(hello)
    assert total(values, "genro_asgi_errors_total", kind="app") == 3
    assert total(values, "genro_asgi_errors_total", kind="internal") == 0
    # A 500 closes its connection: the h1 client reconnected after the first two /raise.
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_connections_active") == 0, timeout=10,
             what="closed connections")
    assert total(values, "genro_asgi_connections_total", protocol="http1") == 3
    assert total(values, "genro_asgi_connections_total", protocol="http2") == 1
    for worker in ("0", "1"):
        assert values[("genro_asgi_worker_up", frozenset({("worker", worker)}))] == 1
        # The loop ticker samples the lag every 0.5 s.
        wait_for(lambda: total(samples(scrape(s)), "genro_asgi_loop_lag_seconds_count", worker=worker) >= 1,
                 timeout=5, what="a loop lag sample")
    assert values[("genro_asgi_workers", frozenset())] == 2
    (build,) = [ls for (n, ls) in values if n == "genro_asgi_build_info"]
    assert dict(build)["python_version"].startswith("3.")
    # Scraping does not count as requests, and the counts stay put.
    again = samples(scrape(s))
    assert total(again, "genro_asgi_requests_total") == sum(expected.values())


def test_client_errors_are_counted(server):
    s = metrics_server(server, workers=1, sections={"limits": {"max_body_size": 100, "max_header_size": 8192}})
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.post("/echo", content=b"x" * 101).status_code == 413
    with socket.create_connection(("127.0.0.1", s.port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 431")
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_errors_total", kind="client") == 2,
             timeout=10, what="two client errors")
    values = samples(scrape(s))
    assert total(values, "genro_asgi_requests_total", status="4xx") == 1  # 431 never reached a request
    assert total(values, "genro_asgi_errors_total", kind="app") == 0


def test_http3_requests_and_front_connections(server, certs):  # noqa: F811
    sections = {"metrics": {"enabled": True, "export_port": free_port()}}
    sections.update(ssl_section(certs))
    sections["http3"] = {"enabled": True}
    s = server(workers=2, sections=sections)
    s.metrics_url = "http://127.0.0.1:%d" % sections["metrics"]["export_port"]
    responses, _ = h3client.fetch(s.port, [("GET", "/")] * 9 + [("POST", "/echo", [], b"y" * 500)],
                                  cafile=certs["ca"])
    assert [r.status for r in responses] == [200] * 10

    def settled():
        values = samples(scrape(s))
        return values if total(values, "genro_asgi_requests_total", protocol="http3") == 10 else None

    values = wait_for(settled, timeout=10, what="HTTP/3 requests counted")
    assert total(values, "genro_asgi_requests_total", protocol="http3", method="POST") == 1
    assert total(values, "genro_asgi_request_body_bytes_total", protocol="http3") == 500
    assert values[("genro_asgi_worker_up", frozenset({("worker", "h3")}))] == 1
    assert total(values, "genro_asgi_connections_total", protocol="http3", worker="h3") == 1
    # The front's HTTP/2 connections to the workers are not client connections.
    assert total(values, "genro_asgi_connections_total", protocol="http2") == 0


def test_a_silent_worker_is_reported_and_the_scrape_succeeds(server):
    s = metrics_server(server, workers=2, sections={"server": {"worker_timeout": 60}})
    stopped = ready_pids(s)[0]
    slot = [w["slot"] for w in status(s)["workers"] if w["pid"] == stopped][0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        started = time.monotonic()
        text = scrape(s)
        took = time.monotonic() - started
        values = samples(text)
        assert values[("genro_asgi_worker_up", frozenset({("worker", str(slot))}))] == 0
        assert values[("genro_asgi_worker_up", frozenset({("worker", str(1 - slot))}))] == 1
        assert "no answer within" in text
        assert took < 5, took
        # The other worker's series are there.
        assert total(values, "genro_asgi_requests_in_flight", worker=str(1 - slot)) == 0
    finally:
        os.kill(stopped, signal.SIGCONT)


def test_restarts_and_reloads_are_counted(server):
    s = metrics_server(server, workers=2)
    victim = ready_pids(s)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(ready_pids(s)) == 2 and victim not in ready_pids(s), timeout=30, what="respawn")
    r = ctl(s, "reload")
    assert r.returncode == 0, r.stderr
    values = samples(scrape(s))
    assert total(values, "genro_asgi_worker_restarts_total", reason="signal") == 1
    assert total(values, "genro_asgi_worker_restarts_total", reason="reload") == 2
    assert total(values, "genro_asgi_reloads_total", result="ok") == 1
    s.config.write_text(s.config.read_text() + "\n[bogus]\nkey = 1\n")
    assert ctl(s, "reload").returncode != 0
    assert total(samples(scrape(s)), "genro_asgi_reloads_total", result="failed") == 1


def test_probes_and_readyz_turns_503_while_draining(server):
    s = metrics_server(server, workers=1, sections={"server": {"graceful_timeout": 20}})
    assert httpx.get(s.metrics_url + "/healthz").text == "ok\n"
    r = httpx.get(s.metrics_url + "/readyz")
    assert r.status_code == 200 and r.text.startswith("ready: 1 of 1")
    assert httpx.get(s.metrics_url + "/nope").status_code == 404
    r = httpx.post(s.metrics_url + "/metrics")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    # A slow request keeps the drain going; meanwhile the pod must leave the endpoints.
    slow = threading.Thread(target=lambda: httpx.get(s.url + "/sleep?s=4", timeout=30))
    slow.start()
    wait_for(lambda: "/sleep" in ctl(s, "requests").stdout, timeout=10, what="request in flight")
    s.proc.send_signal(signal.SIGTERM)
    r = wait_for(lambda: (lambda r: r if r.status_code == 503 else None)(httpx.get(s.metrics_url + "/readyz")),
                 timeout=5, what="readyz 503")
    assert r.text.startswith("draining")
    assert httpx.get(s.metrics_url + "/healthz").status_code == 200, "alive while draining"
    slow.join()
    assert s.wait_exit(30) == 0


def test_metrics_port_in_use_is_a_clear_error(server, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    s = server(start=False, sections={"metrics": {"enabled": True, "export_port": port}})
    s.start(wait=False)
    assert s.wait_exit(30) != 0
    assert "[metrics] host/export_port: cannot listen on 127.0.0.1:%d" % port in s.log
    taken.close()


@pytest.mark.parametrize("enabled", [False])
def test_metrics_off_means_no_listener(server, enabled):
    port = free_port()
    server(sections={"metrics": {"enabled": enabled, "export_port": port}})
    with pytest.raises(httpx.ConnectError):
        httpx.get("http://127.0.0.1:%d/metrics" % port, timeout=2)


def test_every_request_has_an_envelope_and_an_id(server):
    s = server(workers=1)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r1, r2 = c.get("/scope"), c.get("/scope")
        ext = c.get("/scope", headers={"x-request-id": "lb-7f3a/abc"})
        long = c.get("/scope", headers={"x-request-id": "a" * 129})
        busy = c.post("/echo", content=b"x")
    before = time.time()
    ids = [r.headers["x-request-id"] for r in (r1, r2, ext, long, busy)]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == 5, "unique"
    assert ids[0][:8] == ids[1][:8], "one worker: same prefix, then its sequence"
    envelope = r1.json()["extensions"]["genro.envelope"]
    assert envelope["id"] == ids[0]
    assert before - 30 < envelope["start"] <= before
    assert envelope["external_id"] is None
    assert ext.json()["extensions"]["genro.envelope"]["external_id"] == "lb-7f3a/abc"
    assert ext.headers["x-request-id"] != "lb-7f3a/abc", "ours is returned; theirs is kept"
    assert long.json()["extensions"]["genro.envelope"]["external_id"] is None, "over 128 bytes: ignored"


def test_server_answers_carry_the_request_id_too(server):
    s = server(workers=1, sections={"limits": {"max_body_size": 10}})
    r = httpx.post(s.url + "/echo", content=b"x" * 11, headers={"content-length": "11"})
    assert r.status_code == 413 and len(r.headers["x-request-id"]) == 16
