"""WebSocket over HTTP/3 (RFC 9220): the front accepts an extended CONNECT with `:protocol
websocket` and carries it to a worker, and the app sees an ordinary websocket scope with
`http_version` "3". Checked with aioquic + wsproto (tests/h3ws.py): echo, the scope and
subprotocol, refusal and the denial response, close codes both ways, a message over
`max_message_size`, keep-alive pings, the drain's 1001, metrics, and many sessions on one
QUIC connection."""

import asyncio
import json
import signal
import subprocess
import time

import h3client
import h3ws
from test_load import LOADGEN
from test_observability import metrics_server, samples, scrape, total
from test_tls import certs, ssl_section  # noqa: F401 - fixture
from wsproto.events import CloseConnection


def h3_ws_server(make, certs, **sections):  # noqa: F811
    return make(app="ws:app", sections={**ssl_section(certs), "http3": {"enabled": True}, **sections})


def test_echo_scope_and_subprotocol_over_http3(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs)

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            ws = await open_ws("/scope?x=1", [("sec-websocket-protocol", "chat, other")])
            assert ws.status == 200 and ws.header("sec-websocket-protocol") == "chat"
            assert ws.header("x-extra") == "yes"
            scope = json.loads(await ws.recv())
            echo = await open_ws("/echo")
            assert echo.status == 200
            echo.send("over h3")
            text = await echo.recv()
            echo.send(b"\x00\x01" * 40000)  # 80 KB: several frames and QUIC packets
            blob = await echo.recv()
            closed = await echo.close(1000, "done")
            return scope, text, blob, closed
    scope, text, blob, closed = h3ws.run(go())
    assert scope["http_version"] == "3" and scope["scheme"] == "wss", scope
    assert scope["path"] == "/scope" and scope["query_string"] == "x=1"
    assert scope["subprotocols"] == ["chat", "other"]
    assert scope["client"][0] in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    assert text == "over h3" and blob == b"\x00\x01" * 40000
    assert closed == (1000, "done")


def test_refusal_and_denial_response_are_relayed(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs)

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            refused = await open_ws("/refuse")
            denied = await open_ws("/deny")
            await asyncio.wait_for(denied.events.get(), 10)  # the body's end
            return refused.status, denied.status, denied.header("www-authenticate"), bytes(denied.body)
    refused, denied, auth, body = h3ws.run(go())
    assert refused == 403
    assert (denied, auth, body) == (401, "Bearer", b"no token\n")


def test_other_extended_connects_are_501(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs)

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            other = await open_ws("/echo", protocol="webtransport")
            await asyncio.wait_for(other.events.get(), 10)
            ws = await open_ws("/echo")  # the connection still serves WebSockets
            ws.send("fine")
            return other.status, bytes(other.body), await ws.recv()
    status, body, text = h3ws.run(go())
    assert status == 501 and b"only for WebSocket" in body
    assert text == "fine"


def test_close_codes_both_ways(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs)

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            ws = await open_ws("/close")
            hello = await ws.recv()
            closed = await ws.recv()
            assert isinstance(closed, CloseConnection)
            ws.send_raw(ws.ws.send(closed.response()))
            ws.finish()
            mine = await open_ws("/disconnect")
            echoed = await mine.close(4321, "client says bye")
            return hello, (closed.code, closed.reason), echoed, mine.ended
    hello, closed, echoed, ended = h3ws.run(go())
    assert hello == "hello" and closed == (4001, "bye")
    assert echoed[0] == 4321, echoed  # the server's answer to our close
    assert ended, "the server finished its side of the stream"
    line = s.wait_log("DISCONNECT")
    assert json.loads(line.split("DISCONNECT", 1)[1])["code"] == 4321


def test_message_limit_and_protocol_errors_close_as_over_http2(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs, websocket={"max_message_size": 1024, "per_message_deflate": False})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            big = await open_ws("/echo")
            big.send(b"x" * 2000)
            too_big = await big.recv()
            bad = await open_ws("/echo")
            bad.send_raw(bytes([0x81, 0x02]) + b"hi")  # unmasked: clients must mask
            unmasked = await bad.recv()
            return too_big, unmasked
    too_big, unmasked = h3ws.run(go())
    assert isinstance(too_big, CloseConnection) and too_big.code == 1009, too_big
    assert isinstance(unmasked, CloseConnection) and unmasked.code == 1002, unmasked


def test_keepalive_pings_reach_the_client(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs, websocket={"ping_interval": 0.3, "ping_timeout": 5})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            ws = await open_ws("/echo")
            event = await asyncio.wait_for(ws.events.get(), 5)
            await asyncio.sleep(1)  # wsproto answers each ping; the session stays up
            ws.send("still here")
            return type(event).__name__, await ws.recv()
    kind, text = h3ws.run(go())
    assert kind == "Ping" and text == "still here"


def test_drain_closes_http3_websockets_with_1001(server, certs):  # noqa: F811
    s = h3_ws_server(server, certs, websocket={"drain_grace": 1})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            ws = await open_ws("/disconnect")
            await asyncio.sleep(0.2)
            s.proc.send_signal(signal.SIGHUP)  # reload: the old worker drains
            started = time.monotonic()
            closed = await ws.recv(timeout=15)
            waited = time.monotonic() - started
            again = await open_ws("/echo")  # the new worker serves WebSockets
            again.send("after reload")
            return closed, waited, await again.recv()
    closed, waited, after = h3ws.run(go())
    assert isinstance(closed, CloseConnection) and closed.code == 1001, closed
    assert 0.8 <= waited < 10, waited
    assert after == "after reload"


def test_a_stop_closes_http3_websockets_with_1001_after_the_grace_not_the_timeout(server, certs):  # noqa: F811
    """SIGTERM drains the front first, with the workers serving it; the workers start
    their WebSockets' drain_grace at once (they alone can close them), so the session
    gets 1001 after the grace and the server is gone long before graceful_timeout."""
    s = h3_ws_server(server, certs, websocket={"drain_grace": 1}, server={"graceful_timeout": 20})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            ws = await open_ws("/disconnect")
            await asyncio.sleep(0.2)
            s.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            closed = await ws.recv(timeout=15)
            return closed, time.monotonic() - started, started
    closed, waited, started = h3ws.run(go())
    assert isinstance(closed, CloseConnection) and closed.code == 1001, closed
    assert 0.8 <= waited < 8, waited
    assert s.wait_exit(15) == 0
    assert time.monotonic() - started < 12, "well inside graceful_timeout (20 s)"
    line = s.wait_log("DISCONNECT")
    assert json.loads(line.split("DISCONNECT", 1)[1])["code"] == 1001


def test_many_sessions_on_one_connection_and_metrics(server, certs):  # noqa: F811
    s = metrics_server(server, workers=2, app="ws:app",
                       sections={**ssl_section(certs), "http3": {"enabled": True}})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            sockets = await asyncio.gather(*(open_ws("/echo") for _ in range(20)))
            for i, ws in enumerate(sockets):
                ws.send("m%d" % i)
            got = await asyncio.gather(*(ws.recv() for ws in sockets))
            active = total(samples(scrape(s)), "genro_asgi_connections_active", protocol="websocket")
            await asyncio.gather(*(ws.close() for ws in sockets))
            return got, active
    got, active = h3ws.run(go())
    assert got == ["m%d" % i for i in range(20)]
    assert active == 20
    values = samples(scrape(s))
    assert total(values, "genro_asgi_websocket_messages_total", direction="received") >= 20
    assert total(values, "genro_asgi_connections_total", protocol="websocket") == 20


def test_hundreds_of_sessions_leave_room_for_requests(server, certs):  # noqa: F811
    """Every session holds a stream on the front's one HTTP/2 connection to the worker:
    250 of them (hyper's default limit is 200) and a request still goes through."""
    s = h3_ws_server(server, certs, http3={"enabled": True, "max_concurrent_streams": 300})

    async def go():
        async with h3ws.session(s.port, certs["ca"]) as open_ws:
            sockets = await asyncio.gather(*(open_ws("/echo") for _ in range(250)))
            assert {ws.status for ws in sockets} == {200}
            plain = await asyncio.to_thread(h3client.get, s.port, "/", cafile=certs["ca"], timeout=10)
            sockets[-1].send("last")
            return plain, await sockets[-1].recv()
    plain, last = h3ws.run(go(), timeout=90)
    assert plain.status == 200 and bytes(plain.body) == b"plain http\n"
    assert last == "last"


def test_rust_client_load_over_http3_websockets(server, certs):  # noqa: F811
    """genro-loadgen's ws3 mode (quinn + h3, frames by hand): 8 QUIC connections echo
    4 KiB messages through the front for 3 s, none fails, every echo is whole."""
    s = h3_ws_server(server, certs, websocket={"per_message_deflate": False})
    r = subprocess.run([LOADGEN, "--protocol", "ws3", "--url", "wss://127.0.0.1:%d/echo" % s.port,
                        "--ca", certs["ca"], "--connections", "8", "--body-size", "4096",
                        "--duration", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["protocol"] == "ws3" and report["failed_connections"] == 0, report
    assert report["messages"] > 100, report
