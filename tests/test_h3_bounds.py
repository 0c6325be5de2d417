"""HTTP/3 through the front under hostile clients (issue 16): the bytes the front holds for
a client are bounded (`[limits] response_buffer` per stream toward the worker,
`connection_buffer` per QUIC connection), a stream whose client takes no response bytes
for `send_timeout` is reset and its app sees the disconnect, a connection whose streams
are all stalled is closed, and an upload that stalls for `body_timeout` gets 408.
The attacker is aioquic (tests/h3client.py) with flow-control windows it never raises."""

import asyncio
import ssl
import time

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

import httpx

import h3client
from conftest import free_port, ready_pids, rss_mib, status, wait_for
from test_tls import certs, ssl_section  # noqa: F401 - fixture

MIB = 1 << 20
H3_REQUEST_CANCELLED = 0x10C
H3_EXCESSIVE_LOAD = 0x107


class Hog(QuicConnectionProtocol):
    """An HTTP/3 client that opens request streams and never reads the responses: the
    flow-control windows it announced (`max_stream_data`, `max_data`) are never raised
    (aioquic raises them as data arrives, as if the app had read it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self._quic._write_stream_limits = lambda *args, **kwargs: None
        self._quic._write_connection_limits = lambda *args, **kwargs: None
        self.heads = set()
        self.received = 0
        self.resets = {}
        self.terminated = None

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event.error_code
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.heads.add(ev.stream_id)
            elif isinstance(ev, DataReceived):
                self.received += len(ev.data)

    def open(self, authority, path, n):
        for _ in range(n):
            sid = self._quic.get_next_available_stream_id()
            self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                       (b":authority", authority.encode()), (b":path", path.encode())],
                                 end_stream=True)
        self.transmit()


def hog(port, n, path, during, max_stream_data=1024, max_data=256 << 10):
    """Opens `n` streams for `path` on one connection with small windows it never
    raises, runs `during(hog)` in a thread while holding the connection, returns
    (its result, the Hog)."""
    async def run():
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="127.0.0.1",
                                max_data=max_data, max_stream_data=max_stream_data, idle_timeout=120)
        cfg.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", port, configuration=cfg, create_protocol=Hog) as client:
            client.open("127.0.0.1:%d" % port, path, n)
            result = await asyncio.get_running_loop().run_in_executor(None, during, client)
            return result, client
    return asyncio.run(run())


def notes(tmp_path, what):
    path = tmp_path / "notes"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.startswith(what))


def bounds_server(server, certs, tmp_path, limits=None, **http3):  # noqa: F811
    sections = ssl_section(certs)
    sections["http3"] = {"enabled": True, **http3}
    sections["limits"] = dict(limits or {})
    sections["metrics"] = {"enabled": True, "export_port": free_port()}
    s = server(app="h3_bounds:app", workers=1, sections=sections,
               env={"H3_BOUNDS_NOTES": str(tmp_path / "notes")})
    s.metrics_url = "http://127.0.0.1:%d/metrics" % sections["metrics"]["export_port"]
    h3client.get(s.port)  # the front is up and connected to the worker
    return s


def front_limit_hits(s, kind):
    """The front's `limits_hit_total{kind}` from the supervisor's metrics endpoint."""
    text = httpx.get(s.metrics_url, timeout=10).text
    for line in text.splitlines():
        if line.startswith("genro_asgi_limits_hit_total{") and 'worker="h3"' in line \
                and 'kind="%s"' % kind in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no front limits_hit_total{kind=%s} in\n%s" % (kind, text))


def front_pid(s):
    return wait_for(lambda: (status(s).get("front") or {}).get("pid"), 10, "the front's pid")


def test_200_streams_that_never_read_leave_front_and_worker_memory_bounded(server, certs, tmp_path):  # noqa: F811
    """Issue 16's first row over HTTP/3: one connection, 200 streams, windows of 1 KiB
    never raised, the app streaming 1 MiB chunks. Before the byte budgets the front took
    1 MiB per stream from the worker (an HTTP/2 window of 1 MiB): 200 MiB held."""
    n = 200
    s = bounds_server(server, certs, tmp_path, max_concurrent_streams=n)
    front, (worker,) = front_pid(s), ready_pids(s)
    before = {"front": rss_mib(front), "worker": rss_mib(worker)}

    def measure(client):
        wait_for(lambda: notes(tmp_path, "flood:start") == n, 30, "every stream streaming")
        peak = dict(before)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak = {"front": max(peak["front"], rss_mib(front)), "worker": max(peak["worker"], rss_mib(worker))}
            time.sleep(0.2)
        return peak

    peak, client = hog(s.port, n, "/flood", measure)
    growth = {k: peak[k] - before[k] for k in before}
    print("RSS before %s, peak %s, growth %s MiB; client took %d bytes" % (before, peak, growth, client.received))
    assert len(client.heads) == n
    assert client.received < 300 << 10, "the client's windows held"
    assert growth["front"] < 100, growth
    # The worker's side is its own `[limits] response_buffer` (send() waits): without it
    # the worker holds about 12 MiB per stream here (2.4 GB measured).
    assert growth["worker"] < 100, growth


def test_uploads_the_app_does_not_read_leave_the_front_within_lowered_budgets(server, certs, tmp_path):  # noqa: F811
    """8 connections x 50 streams each send a 512 KiB body to a handler that never reads
    it, with budgets set low (`response_buffer` 16 KiB, `connection_buffer` 64 KiB): the
    front holds at most `connection_buffer` of request bodies per connection (its QUIC
    connection window) plus what the worker's HTTP/2 windows take. With the windows the
    front had before the byte budgets (1 MiB per stream, 16 MiB per connection) the same
    attack grew it by 34 MiB; with these budgets by 6 MiB (mostly the 400 streams' state).
    """
    conns, streams, size = 8, 50, 512 << 10
    s = bounds_server(server, certs, tmp_path, limits={"response_buffer": "16KiB", "connection_buffer": "64KiB"})
    front = front_pid(s)
    before = rss_mib(front)
    body = b"u" * size

    async def upload(port):
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="127.0.0.1",
                                max_data=64 << 20, max_stream_data=16 << 20)
        cfg.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", port, configuration=cfg, create_protocol=h3client._Client) as client:
            authority = "127.0.0.1:%d" % port
            for _ in range(streams):
                sid = client._quic.get_next_available_stream_id()
                client.h3.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                             (b":authority", authority.encode()), (b":path", b"/hold")])
                client.h3.send_data(sid, body, end_stream=True)
            client.transmit()
            await asyncio.sleep(6)  # the front's windows fill; nothing is read

    async def attack():
        await asyncio.gather(*(upload(s.port) for _ in range(conns)))

    peak = [before]

    def sample():
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            peak[0] = max(peak[0], rss_mib(front))
            time.sleep(0.2)

    import threading
    sampler = threading.Thread(target=sample)
    sampler.start()
    asyncio.run(attack())
    sampler.join()
    growth = peak[0] - before
    print("front RSS before %.1f MiB, peak %.1f MiB, growth %.1f MiB; %d handlers started"
          % (before, peak[0], growth, notes(tmp_path, "hold:start")))
    # Streams whose HEADERS the client could not send within the connection window are
    # not counted: QUIC flow control held them back.
    assert notes(tmp_path, "hold:start") > conns * streams // 2
    assert growth < 12, growth


def test_a_stream_whose_client_takes_nothing_for_send_timeout_is_reset(server, certs, tmp_path):  # noqa: F811
    """send_timeout = 2 s: every stalled stream is reset (H3_REQUEST_CANCELLED), its
    worker stream cancelled (the app's `send()` raises), the connection, on which nothing
    moves any more, closed (H3_EXCESSIVE_LOAD); counted and logged once per connection."""
    n = 50
    s = bounds_server(server, certs, tmp_path, limits={"send_timeout": 2})

    def wait(client):
        wait_for(lambda: notes(tmp_path, "flood:start") == n, 30, "every stream streaming")
        started = time.monotonic()
        wait_for(lambda: notes(tmp_path, "flood:disconnect") == n, 20, "the app seeing every disconnect")
        took = time.monotonic() - started
        wait_for(lambda: client.terminated is not None or len(client.resets) == n, 10, "the client told")
        return took

    took, client = hog(s.port, n, "/flood", wait)
    print("every disconnect %.2f s after the streams started; connection close %r, %d resets"
          % (took, client.terminated, len(client.resets)))
    assert 1.5 < took < 8, took
    assert client.terminated == H3_EXCESSIVE_LOAD or set(client.resets.values()) == {H3_REQUEST_CANCELLED}, \
        (client.terminated, client.resets)
    wait_for(lambda: "HTTP/3 connection closed: no stream moved a byte" in s.log, 10, "the close logged")
    assert s.log.count("took no response bytes for send_timeout") == 1, "logged once per connection"
    # The worker's own send_timeout runs on the same clock: a stream may be cut by the
    # worker (its stream budget never drained) just before the front's timer, and then the
    # front sees the upstream end instead of counting its own timeout.
    assert 1 <= front_limit_hits(s, "send_timeout") <= n
    assert front_limit_hits(s, "body_timeout") == 0
    # The front still serves.
    assert h3client.get(s.port).status == 200


def test_a_stream_that_reads_slowly_is_not_cut(server, certs, tmp_path):  # noqa: F811
    """send_timeout counts time without progress, not the length of a response: a 4 MiB
    download read in pieces over more than send_timeout completes."""
    s = bounds_server(server, certs, tmp_path, limits={"send_timeout": 1})

    async def slow():
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="127.0.0.1",
                                max_data=64 << 10, max_stream_data=64 << 10)
        cfg.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", s.port, configuration=cfg, create_protocol=h3client._Client) as client:
            # aioquic raises a window as data arrives: let the request's grow one step
            # (a doubling) every 0.5 s.
            write_limits = client._quic._write_stream_limits
            sid = client._quic.get_next_available_stream_id()
            gate = {"open": False}

            def throttled(builder, space, stream):
                if stream.stream_id != sid:
                    write_limits(builder=builder, space=space, stream=stream)
                elif gate["open"]:
                    gate["open"] = False
                    write_limits(builder=builder, space=space, stream=stream)
            client._quic._write_stream_limits = throttled
            request = asyncio.ensure_future(client.request("127.0.0.1:%d" % s.port, "GET", "/flood?n=64&size=65536"))
            began = time.monotonic()
            while not request.done() and time.monotonic() - began < 20:
                await asyncio.sleep(0.5)
                gate["open"] = True
                client.transmit()
            return await asyncio.wait_for(request, 1), time.monotonic() - began

    response, took = asyncio.run(slow())
    assert response.reset is None and response.status == 200
    assert len(response.body) == 64 * 65536
    assert took > 1.5, "the download lasted longer than send_timeout"
    assert "took no response bytes" not in s.log
    assert front_limit_hits(s, "send_timeout") == 0


def test_an_upload_that_stalls_gets_408_within_body_timeout(server, certs, tmp_path):  # noqa: F811
    s = bounds_server(server, certs, tmp_path, limits={"body_timeout": 2})

    async def upload():
        cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="127.0.0.1")
        cfg.verify_mode = ssl.CERT_NONE
        async with connect("127.0.0.1", s.port, configuration=cfg, create_protocol=h3client._Client) as client:
            authority = "127.0.0.1:%d" % s.port
            sid = client._quic.get_next_available_stream_id()
            fut = asyncio.get_running_loop().create_future()
            client.waiting[sid] = (fut, h3client.Response())
            client.h3.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                         (b":authority", authority.encode()), (b":path", b"/upload")])
            client.h3.send_data(sid, b"u" * 4096, end_stream=False)  # and nothing more
            client.transmit()
            began = time.monotonic()
            stalled = await asyncio.wait_for(fut, 20)
            took = time.monotonic() - began
            after = await client.request(authority, "POST", "/upload", body=b"v" * 1000)
            return stalled, took, after

    stalled, took, after = asyncio.run(upload())
    print("408 after %.2f s" % took)
    assert stalled.status == 408 and b"stalled" in stalled.body, (stalled.headers, stalled.body)
    assert 1.8 < took < 6, took
    wait_for(lambda: notes(tmp_path, "upload:disconnect:4096") == 1, 10, "the app seeing http.disconnect")
    assert after.status == 200 and after.body == b"1000", "the connection serves on"
    assert s.log.count("sent no bytes for body_timeout") == 1
    assert front_limit_hits(s, "body_timeout") == 1
