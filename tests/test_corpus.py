"""The HTTP/1.1 request corpus (tests/corpus/, in the spirit of gunicorn's
tests/requests/{valid,invalid}): each `<name>.http` is a request exactly as sent on the
wire, and `<name>.json` what must happen:

- `status`: the status of the (first final) response;
- `keep_alive`: whether the connection stays usable afterwards (checked with a follow-up
  request on it), or is closed with nothing more written (so a request smuggled in the
  body never gets an answer);
- `app`: what the app saw (`method`, `path`, `query`, `host` fields, `body`), or `null`
  when the request must not reach the app;
- `reply` (optional): the exact body of an answer the server writes itself, which then
  also carries an `x-request-id`;
- `responses` (optional, default 1): how many responses come before the follow-up
  (pipelined requests);
- `why`: the rule, with its RFC section.

Every case runs against one real server over a raw socket (tests/apps/corpus_app.py);
afterwards the worker must still be the same process and its log free of ERROR lines."""

import json
import pathlib
import socket

import pytest

from conftest import Server, wait_for
from test_observability import metrics_server, samples, scrape, total

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.http"))
FOLLOW_UP = b"GET /followup?n=1 HTTP/1.1\r\nHost: followup.example\r\n\r\n"
TIMEOUT = 5


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("corpus"), app="corpus_app:app", workers=1,
               sections={"server": {"keep_alive_timeout": 10}})
    s.start()
    s.first_pids = s.worker_pids()
    yield s
    s.stop()


class Reader:
    """Reads HTTP/1.1 responses off a socket, keeping what comes after them."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
            raise EOFError("connection closed; had %r" % self.buf[:200])
        self.buf += chunk

    def _until(self, marker):
        while marker not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(marker, 1)
        return head

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, method=b"GET"):
        """(status, headers dict of lists, body) of the next final response."""
        while True:
            head = self._until(b"\r\n\r\n").decode("latin-1")
            lines = head.split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, value = line.split(":", 1)
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            if 100 <= status < 200:
                continue
            break
        if method == b"HEAD" or status in (204, 304):
            return status, headers, b""
        if "transfer-encoding" in headers:
            body = b""
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    return status, headers, body
                body += self._take(size)
                self._take(2)
        if "content-length" in headers:
            return status, headers, self._take(int(headers["content-length"][0]))
        while not self.eof:
            try:
                self._fill()
            except EOFError:
                pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self):
        """Whether the peer closes with nothing more written."""
        if self.buf:
            return False
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True


@pytest.mark.parametrize("name", CASES)
def test_corpus(corpus_server, name):
    raw = (CORPUS / (name + ".http")).read_bytes()
    expect = json.loads((CORPUS / (name + ".json")).read_text())
    with socket.create_connection(("127.0.0.1", corpus_server.port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        method = raw.split(b" ", 1)[0]
        status, headers, body = reader.response(method)
        for _ in range(expect.get("responses", 1) - 1):
            reader.response()
        assert status == expect["status"], (name, status, body[:300])
        if "reply" in expect:
            assert body.decode("latin-1") == expect["reply"], (name, body)
            assert "x-request-id" in headers, (name, headers)
        if expect["app"] is None:
            assert b"corpus_app" not in body, (name, body[:300])
        else:
            seen = json.loads(body)
            for key, value in expect["app"].items():
                assert seen[key] == value, (name, key, seen)
        if expect["keep_alive"]:
            sock.sendall(FOLLOW_UP)
            status, _, body = reader.response()
            assert status == 200, (name, "follow-up", status, body[:300])
            seen = json.loads(body)
            assert (seen["path"], seen["host"]) == ("/followup", ["followup.example"]), (name, seen)
        else:
            assert reader.closed(), (name, "connection left open or more written", reader.buf[:300])


def test_corpus_size():
    assert len(CASES) >= 60, len(CASES)
    for name in CASES:
        assert (CORPUS / (name + ".json")).is_file(), name


def test_no_error_logged_and_same_worker(corpus_server):
    """Runs after the cases: bad requests are client errors (no ERROR line, which a client
    could use to flood the log) and never bring the worker down."""
    assert corpus_server.worker_pids() == corpus_server.first_pids
    errors = [line for line in corpus_server.log.splitlines() if " ERROR " in line]
    assert not errors, errors


@pytest.mark.parametrize("app", ["fastapi_app:app", "basic:app", "corpus_app:app"])
def test_malformed_chunked_body_is_a_client_error(server, app):
    """A malformed chunked body is answered 400 before the app can answer, whatever the
    app does with the `http.disconnect` it then receives (FastAPI raises ClientDisconnect,
    basic.py fails an assert, corpus_app returns): never a 500, never an ERROR line per
    request (a client could flood the log), and the error counts as a client error."""
    s = metrics_server(server, workers=1, app=app)
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n",
                 b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n" + body)
            reader = Reader(sock)
            status, headers, text = reader.response()
            assert (status, text) == (400, b"Malformed request body\n"), (app, status, text)
            assert "x-request-id" in headers
            assert reader.closed()
    # A refused target or Host is a client error too.
    with socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert Reader(sock).response()[0] == 400
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_errors_total", kind="client") == 4,
             what="4 client errors")
    values = samples(scrape(s))
    assert total(values, "genro_asgi_errors_total", kind="app") == 0
    errors = [line for line in s.log.splitlines() if " ERROR " in line]
    assert not errors, errors


def test_bad_request_flood_is_quiet_and_flat(server):
    """A client flooding the worker with refused requests (missing Host, several Hosts,
    `*` targets, malformed chunked bodies) gets its 400s without the worker writing a log
    line per request (the log cannot be flooded at the default level) or holding memory."""
    from conftest import rss_mib
    s = metrics_server(server, workers=1, app="corpus_app:app")
    (pid,) = s.worker_pids()
    bad = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]

    def flood(n):
        for i in range(n):
            with socket.create_connection(("127.0.0.1", s.port), timeout=TIMEOUT) as sock:
                sock.sendall(bad[i % len(bad)])
                assert Reader(sock).response()[0] == 400

    flood(400)  # warm-up
    lines, rss = len(s.log.splitlines()), rss_mib(pid)
    n = 4000
    flood(n)
    wait_for(lambda: total(samples(scrape(s)), "genro_asgi_errors_total", kind="client") == n + 400,
             what="every refusal counted")
    growth = rss_mib(pid) - rss
    new_lines = s.log.splitlines()[lines:]
    print("flood: %d refused requests, %d new log lines, worker RSS %+.1f MiB" % (n, len(new_lines), growth))
    assert not new_lines, new_lines[:5]
    assert growth < 10, growth
