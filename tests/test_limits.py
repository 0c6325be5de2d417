"""[limits]: max_header_size, max_body_size, header_read_timeout, max_concurrency."""

import socket
import threading
import time

import httpx

TIMEOUT = httpx.Timeout(10.0)


def raw_request(port, data, timeout=10):
    """Sends raw bytes, returns everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def test_max_header_size(server):
    s = server(sections={"limits": {"max_header_size": "8k"}})
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.get("/", headers={"x-small": "a" * 1000})
        assert r.status_code == 200
        assert r.text == "Hello, world!"
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n"
    answer = raw_request(s.port, big)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # The server still serves afterwards.
    r = httpx.get(s.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200


def test_max_header_size_http2(server):
    s = server(sections={"limits": {"max_header_size": "8k"}})
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        r = client.get(s.url + "/", headers={"x-small": "a" * 1000})
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        r = client.get(s.url + "/", headers={"x-big": "a" * 20_000})
        assert r.status_code == 431, r.status_code
        assert r.http_version == "HTTP/2"


def test_max_body_size(server):
    s = server(sections={"limits": {"max_body_size": "1k"}})
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.post("/echo", content=b"s" * 500)
        assert r.status_code == 200
        assert r.content == b"s" * 500

    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.post("/echo", content=b"L" * 5000)
        assert r.status_code == 413, r.text

    def gen():
        for _ in range(10):
            yield b"c" * 500

    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.post("/echo", content=gen())
        assert r.status_code == 413, r.text

    # Content-Length 5000 over a raw socket: 413 without sending the body.
    answer = raw_request(s.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Still healthy.
    r = httpx.post(s.url + "/echo", content=b"ok", timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == b"ok"


def test_max_body_size_chunked_raw(server):
    s = server(sections={"limits": {"max_body_size": "1k"}})
    chunks = b"".join(b"%x\r\n%s\r\n" % (500, b"r" * 500) for _ in range(10)) + b"0\r\n\r\n"
    answer = raw_request(s.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_header_read_timeout(server):
    s = server(sections={"limits": {"header_read_timeout": 1}})
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert elapsed >= 0.5, elapsed
    # No response to a request that never finished (or at most a 408).
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:200]
    # A complete request on a fresh connection is still answered.
    r = httpx.get(s.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200


def test_max_concurrency(server):
    s = server(workers=1, sections={"limits": {"max_concurrency": 2}})
    results = [None] * 4
    barrier = threading.Barrier(4)

    def call(i):
        with httpx.Client(timeout=TIMEOUT) as client:
            barrier.wait(timeout=10)
            try:
                results[i] = client.get(s.url + "/sleep", params={"s": "1.5"})
            except httpx.HTTPError as err:
                results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert all(isinstance(r, httpx.Response) for r in results), results
    statuses = sorted(r.status_code for r in results)
    ok = [r for r in results if r.status_code == 200]
    busy = [r for r in results if r.status_code == 503]
    assert len(ok) >= 2, statuses
    assert len(busy) >= 1, statuses
    assert len(ok) + len(busy) == 4, statuses
    for r in ok:
        assert r.text == "slept"
    for r in busy:
        assert r.headers.get("retry-after") == "1", r.headers
    # Once the slow ones are done, capacity is back.
    r = httpx.get(s.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200
