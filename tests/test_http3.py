"""HTTP/3: with [http3] on, the supervisor binds the UDP port and runs one QUIC front
process (quinn + h3) that forwards each request over HTTP/2 to a worker slot's private Unix
socket (`<run_dir>/slot-N-GENERATION.sock`, mode 0600, one per worker process), naming the client with a header only that
socket trusts; TCP responses announce HTTP/3 with Alt-Svc. Clients here: aioquic
(tests/h3client.py), headless Chromium forced onto QUIC, and genro-loadgen's h3 mode."""

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time

import httpx
import pytest
import trustme

import h3client
from conftest import ctl, ready_pids, run_cli, status, wait_for
from test_load import (LOADGEN, assert_processed_once, ledger_server, loadgen, loadgen_report, read_ledger,
                       read_outcomes, reloads_under_load)
from test_tls import certs, ssl_section  # noqa: F401 - fixture

FRONT_HEADER = "x-genro-asgi-client"


def http3_server(server, certs, workers=1, **http3):  # noqa: F811
    sections = ssl_section(certs)
    sections["http3"] = {"enabled": True, **http3}
    return server(workers=workers, sections=sections)


def front_socket(run, slot):
    """The private socket of the slot's worker: `<run_dir>/slot-N-GENERATION.sock`."""
    (path,) = run.glob("slot-%d-*.sock" % slot)
    return path


def uds_client(path):
    # HTTP/2 with prior knowledge over the Unix socket, as the front speaks it.
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path), http1=False, http2=True),
                        base_url="http://front", timeout=10)


def test_slot_socket_serves_front_requests_as_http3(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    run = s.tmp_path / "run"
    assert oct(os.stat(run).st_mode & 0o777) == "0o700", "a run dir the server creates is private"
    for slot in (0, 1):
        path = front_socket(run, slot)
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


def test_worker_sockets_follow_scaling_reload_and_stop(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    run = s.tmp_path / "run"
    s.proc.send_signal(signal.SIGTTIN)
    wait_for(lambda: len([w for w in status(s)["workers"] if w["state"] == "ready"]) == 2, 30, "scale up")
    with uds_client(front_socket(run, 1)) as c:
        assert c.get("/scope").json()["http_version"] == "3"
    before = {front_socket(run, 0), front_socket(run, 1)}
    # The reload replaces both workers, then applies the file's workers = 1.
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("reload complete")
    wait_for(lambda: len(list(run.glob("slot-*.sock"))) == 1, 20, "the old and removed workers' sockets gone")
    assert front_socket(run, 0) not in before, "the new worker has its own socket"
    assert s.stop() == 0
    assert not list(run.glob("slot-*.sock")), "slot sockets are removed at exit"


def front_status(s):
    return status(s).get("front")


def test_aioquic_client_gets_http3_with_its_true_address(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    (r,), port = h3client.fetch(s.port, [("GET", "/scope?q=1")], cafile=certs["ca"])
    assert r.status == 200
    scope = json.loads(r.body)
    assert scope["http_version"] == "3"
    assert scope["scheme"] == "https"
    assert scope["client"] == ["127.0.0.1", port], "the app sees the QUIC peer's address and port"
    assert scope["server"] == ["127.0.0.1", s.port]
    assert scope["query_string"] == "q=1"
    assert ["host", "127.0.0.1:%d" % s.port] in scope["headers"]
    assert not [h for h in scope["headers"] if h[0] == FRONT_HEADER]
    assert r.header("alt-svc") == ""
    front = front_status(s)
    assert front["state"] == "ready" and front["pid"] not in ready_pids(s)


def test_a_client_cannot_forge_its_address_over_http3(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    (r,), port = h3client.fetch(
        s.port, [("GET", "/scope", [(FRONT_HEADER, "203.0.113.9:4444")])], cafile=certs["ca"])
    scope = json.loads(r.body)
    assert scope["client"] == ["127.0.0.1", port]
    assert not [h for h in scope["headers"] if h[0] == FRONT_HEADER]


def test_many_concurrent_streams_spread_over_the_workers(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    responses, _ = h3client.fetch(s.port, [("GET", "/pid")] * 100 + [("GET", "/sleep?s=0.5")] * 20)
    assert [r.status for r in responses] == [200] * 120
    pids = {int(r.body) for r in responses[:100]}
    assert pids <= set(ready_pids(s))
    assert len(pids) == 2, "the front picks the worker with the fewest requests in flight"


def test_bodies_of_10_mib_travel_both_ways(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    data = os.urandom(10 << 20)
    (echo, count, stream), _ = h3client.fetch(s.port, [
        ("POST", "/echo", [], data),
        ("POST", "/count", [], data),
        ("GET", "/stream?n=160&size=65536"),
    ], timeout=60)
    assert echo.status == 200 and bytes(echo.body) == data
    counted = json.loads(count.body)
    assert counted["bytes"] == len(data)
    assert counted["messages"] > 1 and counted["largest"] < len(data), "the body streams in pieces"
    assert len(stream.body) == 160 * 65536


def test_an_oversized_header_section_gets_431(server, certs):  # noqa: F811
    s = http3_server(server, certs, max_field_section_size="16k")
    big, small = h3client.fetch(s.port, [("GET", "/", [("x-big", "a" * 20000)]), ("GET", "/")])[0]
    assert big.status == 431
    assert small.status == 200, "the connection survives"


def test_a_stream_whose_headers_never_complete_is_reset(server, certs):  # noqa: F811
    s = server(workers=1, sections={**ssl_section(certs), "http3": {"enabled": True},
                                    "limits": {"header_read_timeout": 1}})
    began = time.monotonic()
    (stalled, ok), _ = h3client.fetch(s.port, [("STALL",), ("GET", "/")], timeout=10)
    took = time.monotonic() - began
    assert ok.status == 200
    assert stalled.reset is not None, ("the server reset the stalled stream", stalled.headers, stalled.body)
    assert 0.9 < took < 5, took


def test_a_dead_front_is_respawned(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    first = front_status(s)
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: (front_status(s) or {}).get("pid") not in (None, first["pid"])
             and front_status(s)["state"] == "ready", 20, "a new front")
    assert status(s)["restarts"] == 1
    assert h3client.get(s.port, "/").body == b"Hello, world!"
    assert "h3 " in ctl(s, "status").stdout


def test_sigterm_drains_the_front_first_and_lets_http3_requests_finish(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    got = {}
    client = threading.Thread(target=lambda: got.update(r=h3client.get(s.port, "/sleep?s=2")))
    client.start()
    wait_for(lambda: sum(w["in_flight"] for w in status(s)["workers"]) == 1, 10, "the request in flight")
    s.proc.send_signal(signal.SIGTERM)
    assert s.wait_exit(20) == 0
    client.join(10)
    assert got["r"].status == 200 and got["r"].body == b"slept"
    log = s.log
    workers_drain = re.search(r"worker-\d drain requested by the supervisor", log)
    assert log.index("HTTP/3 front drained") < workers_drain.start(), log


def test_reload_gives_new_http3_connections_the_new_certificate(server, certs, tmp_path):  # noqa: F811
    s = http3_server(server, certs)
    assert h3client.get(s.port, "/", cafile=certs["ca"]).status == 200
    new_ca = trustme.CA()
    cert = new_ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(certs["keyfile"])
    with open(certs["certfile"], "wb") as f:
        f.write(b"".join(p.bytes() for p in cert.cert_chain_pems))
    new_cafile = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_cafile))
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("reload complete")
    s.wait_log("new connections get the new TLS and HTTP/3 settings")
    assert h3client.get(s.port, "/", cafile=str(new_cafile)).status == 200
    with pytest.raises(Exception):
        h3client.get(s.port, "/", cafile=certs["ca"], timeout=5)


def test_http3_without_a_certificate_is_a_config_error(tmp_path):
    r = run_cli("check", "--app", "basic:app", "--set", "http3.enabled=true", cwd=str(tmp_path))
    assert r.returncode == 2, r
    assert "http3" in r.stderr and "ssl" in r.stderr, r.stderr


def spki_pin(certfile):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    import base64
    with open(certfile, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_chromium_loads_a_page_over_quic(server, certs):  # noqa: F811
    s = http3_server(server, certs)
    origin = "127.0.0.1:%d" % s.port
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + profile, "--origin-to-force-quic-on=" + origin,
            "--ignore-certificate-errors-spki-list=" + spki_pin(certs["certfile"]),
            "--dump-dom", "https://%s/scope/page" % origin,
        ], capture_output=True, text=True, timeout=90)
    assert '"http_version": "3"' in r.stdout, (r.stdout[-2000:], r.stderr[-3000:])
    assert '"path": "/scope/page"' in r.stdout


def h3_load(s, certs, *args, timeout=120):
    """genro-loadgen over HTTP/3 (a Rust client: quinn + h3) until done; its report."""
    argv = [LOADGEN, "--protocol", "h3", "--ca", certs["ca"], *map(str, args)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_rust_h3_client_gets_posts_10_mib_and_runs_many_streams(server, certs):  # noqa: F811
    s = http3_server(server, certs, workers=2)
    url = "https://127.0.0.1:%d" % s.port
    many = h3_load(s, certs, "--url", url + "/", "--connections", 4, "--streams", 50, "--requests", 4000)
    assert many["ok"] == 4000 and many["failed"] == 0 and many["retried"] == 0, many
    assert many["statuses"] == {"200": 4000}, many
    size = 10 << 20
    posts = h3_load(s, certs, "--url", url + "/echo", "--method", "POST", "--body-size", size,
                    "--connections", 2, "--streams", 2, "--requests", 6)
    assert posts["ok"] == 6 and posts["failed"] == 0, posts
    assert posts["response_bytes"] == 6 * size, "every 10 MiB body came back whole"
    wait_for(lambda: front_status(s)["served"] >= 4006, 5, "the front's heartbeat counting them")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_three_reloads_under_h3_load_fail_no_request(server, certs, tmp_path, method):  # noqa: F811
    """HTTP/3 (4 QUIC connections x 8 streams, 20 s) across three worker reloads: the front
    is moved to each slot's new worker before the old one drains, so no request races the
    old worker's GOAWAY; the HTTP/3 client sees no failure and nothing re-sent (POST
    included, which could not be re-sent safely), and the ledger shows every request the
    app accepted completed once."""
    sections = {**ssl_section(certs), "http3": {"enabled": True}}
    s, ledger = ledger_server(server, tmp_path, 0, workers=2, sections=sections)
    report, outcomes = reloads_under_load(
        tmp_path, s, "h3", reloads=3, seconds=20, connections=4, streams=8,
        url="https://127.0.0.1:%d/" % s.port,
        extra=("--ca", certs["ca"], "--method", method, "--body-size", "1000" if method == "POST" else "0"))
    print(report)
    assert s.log.count("reload complete") == 3
    assert report["failed"] == 0 and report["connect_errors"] == 0 and report["unsent"] == 0, report
    assert report["retried"] == 0, "the front hides the reloads from HTTP/3 clients"
    assert set(report["statuses"]) == {"200"}, report
    assert report["ok"] > 1000, report
    assert_processed_once(ledger, outcomes, report)


def test_sigterm_under_h3_load_completes_every_accepted_request(server, certs, tmp_path):  # noqa: F811
    """SIGTERM after 3 s of HTTP/3 load (8 connections x 4 streams, 0.2 s requests): the
    front sends GOAWAY and rejects later streams (H3_REQUEST_REJECTED: not processed), its
    requests finish on workers that still serve, then the workers drain; exit 0, and every
    request the app accepted completed with 200."""
    sections = {**ssl_section(certs), "http3": {"enabled": True}}
    s, ledger = ledger_server(server, tmp_path, 0.2, workers=2, sections=sections)
    log = tmp_path / "loadgen.log"
    with loadgen("https://127.0.0.1:%d/" % s.port, "h3", 8, connections=8, streams=4, log=log,
                 extra=("--ca", certs["ca"])) as load:
        time.sleep(3)
        signalled = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.wait_exit(30)
        took = time.monotonic() - signalled
        report = loadgen_report(load)
    outcomes = read_outcomes(log)
    started, _ = read_ledger(ledger)
    print("exit %s after %.2fs; accepted %d; %s" % (code, took, len(started), report))
    assert code == 0, s.log
    assert report["ok"] >= 100 and report["failed"] == 0, report
    assert_processed_once(ledger, outcomes, report)
    lost = sorted(i for i, (outcome, _, _, _) in outcomes.items() if outcome in ("failed", "unsent") and i in started)
    assert not lost, lost


def test_scaling_under_h3_load_fails_no_request(server, certs, tmp_path):  # noqa: F811
    """The front follows the slot list: a slot added by `ctl scale 3` gets requests, and a
    slot removed by `ctl scale 1` leaves the list before its worker drains; HTTP/3 load
    across both sees no failure."""
    s = http3_server(server, certs, workers=2)
    with loadgen("https://127.0.0.1:%d/pid" % s.port, "h3", 9, connections=4, streams=4,
                 extra=("--ca", certs["ca"])) as load:
        time.sleep(1.5)
        assert ctl(s, "scale", "3").returncode == 0
        wait_for(lambda: len(ready_pids(s)) == 3, 20, "three workers")
        new_slot = [w["pid"] for w in status(s)["workers"] if w["slot"] == 2][0]
        time.sleep(2)
        wait_for(lambda: any(w["slot"] == 2 and w["served"] > 0 for w in status(s)["workers"]), 10,
                 "requests on the new slot")
        assert ctl(s, "scale", "1").returncode == 0
        wait_for(lambda: len(status(s)["workers"]) == 1, 20, "one worker left")
        report = loadgen_report(load)
    print(report)
    print(s.log)
    assert new_slot not in ready_pids(s)
    assert report["failed"] == 0 and report["connect_errors"] == 0 and report["unsent"] == 0, report
    assert report["ok"] > 500 and set(report["statuses"]) == {"200"}, report
