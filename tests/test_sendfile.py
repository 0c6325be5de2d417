"""`http.response.pathsend` sent with sendfile(2) on plaintext HTTP/1.1 (issue 17).

Every test compares the bytes received with the file's. `sendfile_bytes_total` says which
responses went through sendfile: all of a plaintext HTTP/1.1 file, none over HTTP/2, TLS
or with `[server] sendfile = false`. The suite runs a debug build, whose frames point at
memory that cannot be read, so a path that copied a frame instead of sending the file
would crash the worker rather than pass."""

import hashlib
import os
import socket
import ssl
import threading
import time

import httpx
import pytest

from test_observability import metrics_server, samples, scrape, total
from test_tls import certs, client_context, ssl_section  # noqa: F401 - fixture

FRAME = 1 << 20


def sent_by_sendfile(s):
    return total(samples(scrape(s)), "genro_asgi_sendfile_bytes_total")


def make_file(tmp_path, size, name="file.bin"):
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def read_response(sock, buffered=b""):
    """One HTTP/1.1 response with a Content-Length: (head, body, rest of what was read)."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the head: %r" % data[:200]
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(data) < length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed after %d of %d body bytes" % (len(data), length)
        data += chunk
    return head, data[:length], data[length:]


@pytest.mark.parametrize("size", [0, 1, 1000, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 12345])
def test_plaintext_http11_sends_the_file_with_sendfile(server, tmp_path, size):
    s = metrics_server(server, workers=1)
    path = make_file(tmp_path, size)
    r = httpx.get(s.url + "/pathsend", params={"file": str(path)}, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-length"] == str(size)
    assert r.content == path.read_bytes()
    assert sent_by_sendfile(s) == size


def test_http2_tls_and_sendfile_off_read_the_file_instead(server, tmp_path, certs):
    payload_path = make_file(tmp_path, 2 * FRAME + 7)
    payload = payload_path.read_bytes()
    s = metrics_server(server, workers=1)
    with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=30) as h2c:
        r = h2c.get("/pathsend", params={"file": str(payload_path)})
        assert r.http_version == "HTTP/2" and r.content == payload
    assert sent_by_sendfile(s) == 0, "HTTP/2 copies its frames: no sendfile"
    s.stop()

    s = metrics_server(server, workers=1, sections=ssl_section(certs))
    url = "https://127.0.0.1:%d" % s.port
    with httpx.Client(base_url=url, verify=client_context(certs), timeout=30) as https:
        r = https.get("/pathsend", params={"file": str(payload_path)})
        assert r.http_version == "HTTP/1.1" and r.content == payload
    assert sent_by_sendfile(s) == 0, "TLS encrypts in user space: no sendfile"
    s.stop()

    s = metrics_server(server, workers=1, sections={"server": {"sendfile": False}})
    r = httpx.get(s.url + "/pathsend", params={"file": str(payload_path)}, timeout=30)
    assert r.content == payload
    assert sent_by_sendfile(s) == 0


def test_keep_alive_and_pipelined_requests_share_the_socket_correctly(server, tmp_path):
    """Files and ordinary responses alternate on one connection, pipelined: each response
    is whole and in order (a frame is lent to the socket only once the previous one is
    written), and HEAD sends no body."""
    s = metrics_server(server, workers=1)
    big = make_file(tmp_path, 2 * FRAME + 99, "big.bin")
    small = make_file(tmp_path, 5000, "small.bin")
    requests = [
        b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(big).encode(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(small).encode(),
        b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(small).encode(),
        b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        % str(big).encode(),
    ]
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        rest = b""
        head, body, rest = read_response(sock, rest)
        assert body == big.read_bytes(), head
        head, body, rest = read_response(sock, rest)
        assert body == b"Hello, world!", head
        # HEAD: the head only (no file is opened).
        data = rest
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        head, body, rest = read_response(sock, rest)
        assert body == small.read_bytes(), head
        head, body, rest = read_response(sock, rest)
        assert body == big.read_bytes(), head
        assert rest == b"" and sock.recv(10) == b"", "closed after the last response"
    assert sent_by_sendfile(s) == 2 * (2 * FRAME + 99) + 5000


def test_a_slow_reader_gets_every_byte(server, tmp_path):
    """A client with a small receive buffer that reads slowly: sendfile writes parts of a
    frame and waits for the socket many times; the bytes still arrive whole, in order."""
    s = metrics_server(server, workers=1)
    path = make_file(tmp_path, 3 * FRAME + 1)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", s.port))
    with sock:
        sock.sendall(b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(path).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, body = data.partition(b"\r\n\r\n")
        reads = 0
        while len(body) < 3 * FRAME + 1:
            chunk = sock.recv(32768)
            assert chunk
            body += chunk
            reads += 1
            if reads % 8 == 0:
                time.sleep(0.01)
        assert hashlib.sha256(body).hexdigest() == want
        # The connection is still good for the next request.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, body, _ = read_response(sock)
        assert body == b"Hello, world!"
    assert sent_by_sendfile(s) == 3 * FRAME + 1


def start_slow_download(port, path, read_first=10000):
    """A GET of `path` by a client with a small receive buffer that has read the head and
    `read_first` body bytes: (socket, body so far)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(path).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(8192)
    _, _, body = data.partition(b"\r\n\r\n")
    while len(body) < read_first:
        body += sock.recv(8192)
    return sock, body


def read_to_close(sock, body):
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return body
        body += chunk


def test_a_file_that_shrinks_while_sent_closes_the_connection(server, tmp_path):
    """The file is truncated under a response in flight: the client gets a short body and
    a closed connection (never a hang waiting for bytes that no longer exist), the part of
    the file that still exists is intact, and the worker goes on serving."""
    s = metrics_server(server, workers=1)
    size = 40 * FRAME
    path = make_file(tmp_path, size)
    kept = path.read_bytes()[: FRAME // 2]
    sock, body = start_slow_download(s.port, path)
    with sock:
        os.truncate(path, FRAME // 2)
        body = read_to_close(sock, body)
    assert len(body) < size, "the response cannot be complete"
    n = min(len(body), len(kept))
    assert body[:n] == kept[:n]
    s.wait_log("shrank while being sent")
    assert httpx.get(s.url + "/", timeout=10).status_code == 200


def test_a_file_replaced_by_rename_while_sent_is_sent_as_it_was(server, tmp_path):
    """Deploys replace files by rename: the response in flight keeps the file it opened
    and sends every byte of it."""
    s = metrics_server(server, workers=1)
    size = 20 * FRAME
    path = make_file(tmp_path, size)
    original = path.read_bytes()
    sock, body = start_slow_download(s.port, path)
    with sock:
        new = make_file(tmp_path, 1000, "new.bin")
        os.rename(new, path)
        while len(body) < size:
            chunk = sock.recv(1 << 20)
            assert chunk
            body += chunk
    assert hashlib.sha256(body).digest() == hashlib.sha256(original).digest()


def test_many_clients_at_once(server, tmp_path):
    """Concurrent connections each with their own slot: every body is its own file's."""
    s = metrics_server(server, workers=1)
    files = [make_file(tmp_path, FRAME + 1000 * i, "f%d.bin" % i) for i in range(8)]
    errors = []

    def fetch(path):
        try:
            with httpx.Client(base_url=s.url, timeout=60) as client:
                for _ in range(3):
                    r = client.get("/pathsend", params={"file": str(path)})
                    assert r.content == path.read_bytes()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=fetch, args=(p,)) for p in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sent_by_sendfile(s) == 3 * sum(p.stat().st_size for p in files)


def test_send_timeout_cuts_a_client_that_reads_no_file_bytes(server, tmp_path):
    """sendfile waiting for a socket that never drains is the socket's stall: the
    connection is closed after `send_timeout` and counted, as for any other body."""
    s = metrics_server(server, workers=1, sections={"limits": {"send_timeout": 1}})
    path = make_file(tmp_path, 64 * FRAME)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", s.port))
    try:
        sock.sendall(b"GET /pathsend?file=%s HTTP/1.1\r\nHost: x\r\n\r\n" % str(path).encode())
        s.wait_log("send_timeout: closing the connection", timeout=15)
        sock.settimeout(10)
        got = 0
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                got += len(data)
        except ConnectionResetError:
            pass
        assert got < 64 * FRAME
    finally:
        sock.close()
    values = samples(scrape(s))
    assert total(values, "genro_asgi_limits_hit_total", kind="send_timeout") >= 1
    assert 0 < sent_by_sendfile(s) < 64 * FRAME
    assert httpx.get(s.url + "/", timeout=10).status_code == 200


def test_a_content_length_set_by_the_app_is_what_is_sent(server, tmp_path):
    """Starlette's FileResponse sets Content-Length from its own stat(): a file that grew
    since is sent up to that length, and the connection goes on serving files (the frame
    lent to it never runs past what hyper will write). A declared length longer than the
    file ends the response short and closes the connection."""
    s = metrics_server(server, workers=1)
    path = make_file(tmp_path, 3 * FRAME + 5)
    want = path.read_bytes()
    declared = FRAME + 3
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        for _ in range(3):
            sock.sendall(b"GET /pathsend?file=%s&length=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                         % (str(path).encode(), declared))
            head, body, rest = read_response(sock)
            assert body == want[:declared], head
            assert rest == b""
    assert sent_by_sendfile(s) == 3 * declared
    with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
        sock.sendall(b"GET /pathsend?file=%s&length=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                     % (str(path).encode(), len(want) + 100))
        data = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    assert data.split(b"\r\n\r\n", 1)[1] == want, "every byte of the file, then the close"
    assert httpx.get(s.url + "/", timeout=10).status_code == 200
