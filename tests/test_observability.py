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
    s.wait_log("[metrics] host/export_port: cannot listen on 127.0.0.1:%d" % port)
    taken.close()


def test_metrics_off_means_no_listener(server):
    port = free_port()
    server(sections={"metrics": {"enabled": False, "export_port": port}})
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


def lines_with(s, needle):
    return [line for line in s.log.splitlines() if needle in line]


def test_app_logging_records_share_the_sink_and_format(server):
    s = server(sections={"logging": {"format": "%(levelname)s|%(name)s|%(module)s|%(process)d|%(message)s"}})
    assert httpx.get(s.url + "/log?tag=T1").text == "logged"
    s.wait_log("caught in the app T1")
    pid = ready_pids(s)[0]
    (info,) = lines_with(s, "info from the app T1")
    assert info.startswith("INFO|myapp.views|basic|%d|info from the app T1 ident=" % pid), info
    assert "WARNING|myapp.views|basic|%d|warning from the app T1" % pid in s.log
    assert "CRITICAL|myapp.views|basic|%d|critical from the app T1" % pid in s.log
    error = s.log.split("ERROR|myapp.views|basic|%d|caught in the app T1\n" % pid)[1]
    assert error.startswith("Traceback (most recent call last):") and "ZeroDivisionError" in error
    assert "debug from the app" not in s.log, "below [logging] level"


def test_level_critical_keeps_only_critical_lines(server):
    s = server(start=False, sections={"logging": {"level": "CRITICAL", "format": "%(levelname)s|%(name)s|%(message)s"}})
    s.start(wait=False)  # the "serving" line is INFO: not written at this level

    def answers():
        try:
            return httpx.get(s.url + "/log?tag=C1").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, 30, "the server to answer")
    httpx.get(s.url + "/raise")
    s.wait_log("critical from the app C1")
    time.sleep(0.5)
    levels = {line.split("|")[0] for line in s.log.splitlines() if "|" in line}
    assert levels == {"CRITICAL"}, s.log


def test_thread_attribute_is_the_python_thread_ident(server):
    s = server(sections={"logging": {"format": "%(thread)d|%(threadName)s|%(message)s"}})
    httpx.get(s.url + "/log?tag=T2")
    (info,) = lines_with(s, "info from the app T2")
    thread, name, message = info.split("|", 2)
    assert message.endswith("ident=" + thread), info
    assert name == "MainThread"


def test_json_logs_are_one_object_per_line_for_server_and_app(server):
    import json
    s = server(sections={"logging": {"format": "json", "level": "debug"}})
    httpx.get(s.url + "/log?tag=J1")
    s.wait_log("debug from the app J1")
    records = [json.loads(line) for line in s.log.splitlines() if line.startswith("{")]
    assert len(records) == len([line for line in s.log.splitlines() if line.strip()]), s.log
    app = [r for r in records if r["name"] == "myapp.views"]
    assert {(r["levelname"], r["levelno"]) for r in app} == {
        ("DEBUG", 10), ("INFO", 20), ("WARNING", 30), ("CRITICAL", 50), ("ERROR", 40)}
    caught = [r for r in app if r["levelname"] == "ERROR"][0]
    assert "ZeroDivisionError" in caught["message"]
    assert all(r["module"] == "basic" and r["threadName"] == "MainThread" for r in app)
    (serving,) = [r for r in records if "serving basic:app" in r["message"]]
    assert serving["name"] == "genro_asgi.supervisor" and serving["process"] == s.proc.pid
    workers = {r["process"] for r in records if r["name"] == "genro_asgi.worker-0"}
    assert workers == set(ready_pids(s)), "worker lines name their process"
    assert all(r["time"].endswith("Z") for r in records)


def test_log_lines_carry_their_worker_connection_and_request(server):
    """Spans: a worker's lines carry `slot`, a connection's `peer`, a request's `request_id`,
    `method`, `path` and `client`; access lines stay exactly their format."""
    import json
    s = server(sections={"logging": {"format": "json", "level": "debug", "access_log": True}})
    r = httpx.get(s.url + "/raise?x=1")
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    s.wait_log("exception in ASGI app")
    # A connection that sends garbage: its line is the connection's, with no request.
    with socket.create_connection(("127.0.0.1", s.port)) as raw:
        raw.sendall(b"NOT HTTP\r\n\r\n")
        raw.settimeout(5)
        peer = "127.0.0.1:%d" % raw.getsockname()[1]
        raw.recv(1024)
    wait_for(lambda: peer in s.log, 10, "the bad connection's line")
    records = [json.loads(line) for line in s.log.splitlines() if line.startswith("{")]
    (error,) = [r for r in records if "exception in ASGI app" in r["message"]]
    assert error["request_id"] == rid == error["error_id"], error
    assert (error["method"], error["path"], error["slot"]) == ("GET", "/raise", 0), error
    assert error["client"].startswith("127.0.0.1:"), error
    (conn,) = [r for r in records if r.get("peer") == peer]
    assert conn["slot"] == 0 and "request_id" not in conn, conn
    serving = [r for r in records if r["name"] == "genro_asgi.worker-0" and "slot" in r]
    assert len(serving) >= 2, "worker lines outside requests carry the slot too"
    (access,) = [r for r in records if r["name"] == "genro_asgi.access"]
    assert set(access) == {"time", "levelname", "levelno", "name", "process", "thread",
                           "threadName", "module", "message"}, access
    assert access["message"].startswith("127.0.0.1 - - [") and rid not in access["message"]


def test_text_log_lines_end_with_their_context(server):
    s = server(sections={"logging": {"format": "%(levelname)s|%(message)s", "access_log": True}})
    r = httpx.get(s.url + "/raise")
    s.wait_log('"GET /raise HTTP/1.1" 500')
    rid = r.headers["x-request-id"]
    head = [line for line in s.log.splitlines() if "exception in ASGI app" in line][0]
    assert head.startswith("ERROR|exception in ASGI app (error id %s)" % rid), head
    # Fields follow the message (here after the traceback): the event's, then the spans'.
    assert ("error_id=%s slot=0 request_id=%s method=GET path=/raise client=127.0.0.1:" % (rid, rid)) in s.log
    (access,) = [line for line in s.log.splitlines() if '"GET /raise HTTP/1.1" 500' in line]
    assert "slot=" not in access and "peer=" not in access, access


def test_watchdog_warns_then_escalates_once_per_level(server):
    s = metrics_server(server, workers=1,
                       sections={"watchdog": {"interval": 0.2, "timeout": 1, "critical": 2}})
    done = []
    t = threading.Thread(target=lambda: done.append(
        httpx.get(s.url + "/sleep?s=3.5", headers={"x-request-id": "ext-42"}, timeout=30)))
    t.start()
    s.wait_log("watchdog timeout 1s", timeout=10)
    values = samples(scrape(s))
    assert total(values, "genro_asgi_requests_stuck", level="warning") == 1
    listed = ctl(s, "requests").stdout
    assert "/sleep" in listed
    s.wait_log("watchdog critical 2s", timeout=10)
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_requests_stuck", level="critical") == 1, timeout=5,
             what="critical gauge")
    t.join()
    rid = done[0].headers["x-request-id"]
    assert rid in listed, "ctl requests shows the request id"
    time.sleep(0.6)
    warn = lines_with(s, "watchdog timeout 1s")
    crit = lines_with(s, "watchdog critical 2s")
    assert len(warn) == 1 and len(crit) == 1, s.log
    for line in warn + crit:
        assert rid in line and "(external id ext-42) GET /sleep" in line
    assert " WARNING " in warn[0] and " CRITICAL " in crit[0]
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_requests_stuck") == 0, timeout=5, what="gauge reset")


def test_watchdog_reports_a_blocked_loop_with_the_loop_stack(server):
    s = server(workers=1, sections={"watchdog": {"interval": 0.2, "timeout": 1, "critical": 30}})
    t = threading.Thread(target=lambda: httpx.get(s.url + "/block?s=3", timeout=30))
    t.start()
    s.wait_log("the Python event loop has been blocked for", timeout=10)
    # The stack of the loop thread follows, from Rust, while the loop is still blocked.
    listed = ctl(s, "requests")
    assert listed.returncode == 0 and "/block" in listed.stdout
    t.join()
    s.wait_log("the Python event loop runs again", timeout=10)
    report = s.log.split("the Python event loop has been blocked for")[1]
    assert "[event loop]" in report and "block_the_loop_in_sleep" in report
    assert len(lines_with(s, "the Python event loop has been blocked for")) == 1


def test_watchdog_off(server):
    s = server(workers=1, sections={"watchdog": {"enabled": False, "interval": 0.2, "timeout": 0.5, "critical": 1}})
    httpx.get(s.url + "/sleep?s=1.5", timeout=30)
    assert "still running after" not in s.log


def access_lines(s, needle):
    s.wait_log(needle)
    return [line.split("|", 1)[1] for line in s.log.splitlines() if line.startswith("genro_asgi.access|")]


def test_access_formats_combined_json_and_template(server):
    import json
    fmt = "%(name)s|%(message)s"
    s = server(sections={"logging": {"access_log": True, "format": fmt, "access_format": "combined"}})
    r = httpx.get(s.url + "/?q=1", headers={"user-agent": 'evil" \\agent', "referer": "http://r/"})
    (line,) = access_lines(s, "http://r/")
    # A client cannot close the quotes or fake fields: " and \ are escaped as in nginx.
    assert line.endswith('"GET /?q=1 HTTP/1.1" 200 13 "http://r/" "evil\\x22 \\x5Cagent"'), line
    s.stop()

    s = server(sections={"logging": {"access_log": True, "format": fmt, "access_format": "json"}})
    r = httpx.post(s.url + "/echo?a=b", content=b"12345", headers={"x-request-id": "outer"})
    (line,) = access_lines(s, '"status"')
    record = json.loads(line)
    assert record["method"] == "POST" and record["path"] == "/echo" and record["query"] == "a=b"
    assert record["status"] == 200 and record["bytes"] == 5 and record["protocol"] == "http1"
    assert record["request_id"] == r.headers["x-request-id"]
    assert record["duration_ms"] >= 0 and record["client"].startswith("127.0.0.1:")
    s.stop()

    template = "{client_ip} {method} {target} {status} {bytes}B {protocol} id={request_id} ua={header:User-Agent} x={header:x-missing} {{lit}}"
    s = server(sections={"logging": {"access_log": True, "format": fmt, "access_format": template}})
    with httpx.Client(http1=False, http2=True, base_url=s.url) as c:
        r = c.get("/status?code=404", headers={"user-agent": "ua/1"})
    (line,) = access_lines(s, " 404 ")
    assert line == "127.0.0.1 GET /status?code=404 404 1B http2 id=%s ua=ua/1 x=- {lit}" % r.headers["x-request-id"]


def test_a_bad_access_format_is_a_config_error(server):
    s = server(start=False, sections={"logging": {"access_log": True, "access_format": "{method} {nope}"}})
    s.start(wait=False)
    assert s.wait_exit(30) != 0
    s.wait_log('[logging] access_format = "{method} {nope}": unknown atom {nope}')


class Receiver:
    """A local webhook endpoint: records the JSON bodies POSTed to it; answers `status`."""

    def __init__(self, status=200):
        import http.server
        import json
        receiver = self
        self.events = []
        self.status = status
        self.cond = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.cond:
                    receiver.events.append((self.path, self.headers.get("content-type"), json.loads(body)))
                    receiver.cond.notify_all()
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook?token=t" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, kind, timeout=20):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for (_, _, e) in self.events if e.get("event") == kind]
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, "no %s event; got %r" % (kind, self.events)
                self.cond.wait(left)

    def close(self):
        self.httpd.shutdown()


def test_critical_events_are_posted_to_the_webhook(server, tmp_path):
    receiver = Receiver()
    try:
        s = server(workers=1, sections={
            "errors": {"notify_critical": True, "notify_webhook": receiver.url},
            "watchdog": {"interval": 0.2, "timeout": 0.5, "critical": 1},
        })
        r = httpx.get(s.url + "/raise")
        assert r.status_code == 500
        (event,) = receiver.wait("app_exception")
        assert event["request_id"] == r.headers["x-request-id"]
        assert event["path"] == "/raise" and event["method"] == "GET" and event["worker"] == 0
        assert "ValueError: boom before start" in event["traceback"]
        assert event["service"] == "genro-asgi" and event["time"] and event["host"]
        path, content_type, _ = receiver.events[0]
        assert path == "/hook?token=t" and content_type == "application/json"
        slow = httpx.get(s.url + "/sleep?s=1.6", timeout=30)
        (stuck,) = receiver.wait("stuck_request")
        assert stuck["request_id"] == slow.headers["x-request-id"] and stuck["path"] == "/sleep"
        assert stuck["age_seconds"] >= 1
    finally:
        receiver.close()


def test_crash_loop_is_posted_and_a_failing_webhook_is_only_logged(server, tmp_path):
    receiver = Receiver(status=500)
    marker = tmp_path / "break-startup"
    try:
        s = server(app="flaky_startup:app", workers=1, env={"FLAKY_MARKER": str(marker)},
                   sections={"errors": {"notify_critical": True, "notify_webhook": receiver.url}})
        (first,) = s.worker_pids()
        marker.write_text("x")
        os.kill(first, signal.SIGKILL)
        (event,) = receiver.wait("crash_loop", timeout=30)
        assert event["unit"] == "slot 0" and event["failures"] >= 3
        # The receiver answers 500: the first crash_loop event is tried 3 times, then
        # given up with a warning; the server is unaffected.
        def attempts():
            return len([e for (_, _, e) in receiver.events if e["event"] == "crash_loop" and e["failures"] == 3])
        wait_for(lambda: attempts() == 3, 15, "three attempts")
        s.wait_log("webhook", timeout=15)
        time.sleep(4.5)
        assert attempts() == 3, "not retried forever"
        marker.unlink()
        wait_for(lambda: ready_pids(s), 30, "a worker again once startup works")
        assert httpx.get(s.url, timeout=5).status_code == 200
    finally:
        receiver.close()


def test_notify_critical_needs_a_webhook(server):
    s = server(start=False, sections={"errors": {"notify_critical": True}})
    s.start(wait=False)
    assert s.wait_exit(30) != 0
    s.wait_log("[errors] notify_critical = true requires [errors] notify_webhook")


def test_an_aborted_upload_is_a_client_error_not_an_app_one(server):
    s = metrics_server(server, workers=1)
    with socket.create_connection(("127.0.0.1", s.port)) as raw:
        raw.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.3)
    # The app (like Starlette's ClientDisconnect) raises on the disconnect it receives.
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_errors_total", kind="client") == 1, 10,
             what="one client error")
    time.sleep(0.5)
    values = samples(scrape(s))
    assert total(values, "genro_asgi_errors_total", kind="app") == 0
    assert total(values, "genro_asgi_errors_total", kind="client") == 1
    assert "exception in ASGI app" not in s.log


def test_a_request_abandoned_before_the_answer_is_counted_as_499(server):
    s = metrics_server(server, workers=1, sections={"logging": {"access_log": True}})
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(s.url + "/sleep?s=1.2", timeout=0.3)
    s.wait_log('"GET /sleep?s=1.2 HTTP/1.1" 499 -')
    values = samples(scrape(s))
    assert total(values, "genro_asgi_requests_total", status="4xx") == 1
    assert total(values, "genro_asgi_request_duration_seconds_count") == 1


def test_http3_access_lines_say_http3(server, certs):  # noqa: F811
    sections = ssl_section(certs)
    sections["http3"] = {"enabled": True}
    sections["logging"] = {"access_log": True}
    s = server(sections=sections)
    (response,), _ = h3client.fetch(s.port, [("GET", "/?h3")], cafile=certs["ca"])
    assert response.status == 200
    s.wait_log('"GET /?h3 HTTP/3.0" 200 13')


def test_a_reload_keeps_the_metrics_setup(server):
    s = metrics_server(server, workers=1)
    s.config.write_text(s.config.read_text().replace("enabled = true", "enabled = false"))
    assert ctl(s, "reload").returncode == 0
    s.wait_log("[metrics] changed: a restart is needed")
    values = samples(scrape(s))
    assert values[("genro_asgi_worker_up", frozenset({("worker", "0")}))] == 1
    assert total(values, "genro_asgi_worker_restarts_total", reason="reload") == 1


def test_check_validates_the_access_format(tmp_path):
    from conftest import APPS, run_cli
    path = tmp_path / "server.ini"
    path.write_text("[application]\napp = basic:app\napp_dir = %s\n[logging]\naccess_format = {method} {bogus}\n" % APPS)
    r = run_cli("check", "--config", str(path))
    assert r.returncode != 0
    assert '[logging] access_format = "{method} {bogus}": unknown atom {bogus}' in r.stderr
