"""Static files (`[static]`, issue 20): files under a mount are answered by the worker
without entering Python, over HTTP/1.1 (sendfile on plaintext), HTTP/2 and HTTP/3 (through
the front), with validators, conditional requests, ranges and precompressed siblings.
Every answer is checked byte for byte against the file on disk; traversal attempts are sent
as raw request lines, since clients normalise `..` before sending."""

import gzip
import hashlib
import os
import re
import socket
import subprocess
import threading
import time
from email.utils import parsedate_to_datetime

import brotli
import httpx
import pytest

import h3client
from conftest import run_cli
from test_observability import metrics_server, samples, scrape, total
from test_tls import certs, client_context, ssl_section  # noqa: F401 - fixture

SECRET = b"the secret outside the mount\n"
HELLO = b"hello, static world\n"
BIG = 20 << 20


@pytest.fixture
def tree(tmp_path):
    """public/ (the mounts' directory) and secret.txt beside it."""
    pub = tmp_path / "public"
    (pub / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (pub / "hello.txt").write_bytes(HELLO)
    (pub / "sub" / "inner.txt").write_bytes(b"inner\n")
    (pub / ".env").write_bytes(b"PASSWORD=hidden\n")
    (pub / "caf\u00e9 au lait.txt").write_bytes(b"accents and spaces\n")
    (pub / "range.bin").write_bytes(bytes(range(256)) * 40)  # 10,240 bytes
    script = b"".join(b"console.log('line %d of a script that compresses well');\n" % i for i in range(400))
    (pub / "app.js").write_bytes(script)
    (pub / "app.js.gz").write_bytes(gzip.compress(script))
    (pub / "app.js.br").write_bytes(brotli.compress(script))
    (pub / "only.css").write_bytes(b"body { color: red }\n")
    (pub / "only.css.gz").write_bytes(gzip.compress(b"body { color: red }\n"))
    (pub / "data.json").write_bytes(b'{"a": 1}\n')
    os.symlink("sub/inner.txt", pub / "in")
    os.symlink("../secret.txt", pub / "out")
    os.symlink(str(tmp_path / "secret.txt"), pub / "abs")
    os.mkfifo(pub / "fifo")
    return pub


def static_sections(pub, **extra):
    section = {
        # /static: exclusive, cached an hour. /scope: falls through to the app's /scope route
        # (which echoes the path it got). /imm: immutable. /linked: links may lead out.
        "mounts": "/static=%s, /scope=%s, /imm/=%s, /linked=%s" % (pub, pub, pub, pub),
        "exclusive": "/static",
        "max_age": "/static=3600, /imm=31536000",
        "immutable": "/imm",
        "follow_symlinks": "/linked",
    }
    section.update(extra)
    return {"static": section}


def static_server(server, pub, sections=None, metrics=False, **kwargs):
    sections = {**static_sections(pub), **(sections or {})}
    if metrics:
        return metrics_server(server, workers=1, sections=sections, **kwargs)
    return server(workers=1, sections=sections, **kwargs)


def raw(port, target, method="GET", headers=()):
    """One request sent as written (no client normalises it): (status, {field: value}, body)."""
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1", "Connection: close", *headers, "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1"))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parsed = {}
    for field in fields:
        name, _, value = field.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


def test_get_and_head_carry_validators_and_types(server, tree):
    s = static_server(server, tree)
    mtime = int(os.stat(tree / "hello.txt").st_mtime)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.get("/static/hello.txt")
        assert r.status_code == 200 and r.content == HELLO
        h = r.headers
        assert h["content-type"] == "text/plain; charset=utf-8"
        assert h["content-length"] == str(len(HELLO))
        assert re.fullmatch(r'"[0-9a-f]+\.[0-9a-f]+-[0-9a-f]+"', h["etag"]), h["etag"]
        assert int(parsedate_to_datetime(h["last-modified"]).timestamp()) == mtime
        assert h["accept-ranges"] == "bytes"
        assert h["cache-control"] == "public, max-age=3600"
        assert re.fullmatch(r"[0-9a-f]{16}", h["x-request-id"])
        assert "vary" not in h and "content-encoding" not in h
        head = c.head("/static/hello.txt")
        assert head.status_code == 200 and head.content == b""
        for name in ("content-length", "etag", "last-modified", "content-type", "cache-control"):
            assert head.headers[name] == h[name], name
        assert c.get("/imm/hello.txt").headers["cache-control"] == "public, max-age=31536000, immutable"
        assert "cache-control" not in c.get("/scope/hello.txt").headers
        assert c.get("/static/data.json").headers["content-type"] == "application/json"
        assert c.get("/static/app.js", headers={"accept-encoding": "identity"}).headers["content-type"] == \
            "text/javascript; charset=utf-8"
        r = c.get("/static/caf%C3%A9%20au%20lait.txt")
        assert r.status_code == 200 and r.content == b"accents and spaces\n"
        r = c.get("/static/sub/inner.txt?v=3")
        assert r.content == b"inner\n"
        # The ETag changes with the file.
        etag = c.get("/static/hello.txt").headers["etag"]
        (tree / "hello.txt").write_bytes(HELLO + b"more")
        r = c.get("/static/hello.txt")
        assert r.content == HELLO + b"more" and r.headers["etag"] != etag


def test_curl_over_http11_and_h2c(server, tree):
    s = static_server(server, tree)
    for flags in (["--http1.1"], ["--http2-prior-knowledge"]):
        out = subprocess.run(["curl", "-sS", "-D", "-", *flags, s.url + "/static/hello.txt"],
                             capture_output=True, timeout=30, check=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        assert body == HELLO, flags
        assert head.startswith(b"HTTP/1.1 200" if flags == ["--http1.1"] else b"HTTP/2 200"), head
        # Decompressed by curl itself (it has zlib and brotli).
        for encoding in ("gzip", "br"):
            r = subprocess.run(["curl", "-sS", "-D", "-", *flags, "--compressed", "-H", "accept-encoding: " + encoding,
                                s.url + "/static/app.js"], capture_output=True, timeout=30, check=True).stdout
            head, _, body = r.partition(b"\r\n\r\n")
            assert ("content-encoding: " + encoding).encode() in head.lower(), head
            assert body == (tree / "app.js").read_bytes(), (flags, encoding)


def test_http2_serves_the_same_answers(server, tree):
    s = static_server(server, tree)
    with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=10) as c:
        r = c.get("/static/hello.txt")
        assert r.http_version == "HTTP/2" and r.content == HELLO
        r = c.get("/static/range.bin", headers={"range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == (tree / "range.bin").read_bytes()[10:20]
        r = c.get("/static/app.js", headers={"accept-encoding": "br"})
        assert r.headers["content-encoding"] == "br" and r.content == (tree / "app.js").read_bytes()
        assert c.head("/static/hello.txt").headers["content-length"] == str(len(HELLO))
        assert c.get("/static/missing").status_code == 404
        r = c.get("/scope/missing")
        assert r.json()["path"] == "/scope/missing" and r.json()["http_version"] == "2"


def test_conditional_requests(server, tree):
    s = static_server(server, tree)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        first = c.get("/static/hello.txt")
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        earlier = "Thu, 01 Jan 1970 00:00:01 GMT"
        later = "Fri, 01 Jan 2100 00:00:00 GMT"
        cases = [
            ({"if-none-match": etag}, 304),
            ({"if-none-match": "W/" + etag}, 304),
            ({"if-none-match": '"other", ' + etag}, 304),
            ({"if-none-match": "*"}, 304),
            ({"if-none-match": '"other"'}, 200),
            ({"if-modified-since": modified}, 304),
            ({"if-modified-since": later}, 304),
            ({"if-modified-since": earlier}, 200),
            ({"if-none-match": '"other"', "if-modified-since": later}, 200),
            ({"if-match": etag}, 200),
            ({"if-match": "*"}, 200),
            ({"if-match": '"other"'}, 412),
            ({"if-match": "W/" + etag}, 412),
            ({"if-unmodified-since": earlier}, 412),
            ({"if-unmodified-since": modified}, 200),
            ({"if-match": '"other"', "if-none-match": etag}, 412),
        ]
        for headers, status in cases:
            for method in ("GET", "HEAD"):
                r = c.request(method, "/static/hello.txt", headers=headers)
                assert r.status_code == status, (method, headers, r.status_code)
                if status == 304:
                    assert r.content == b"" and "content-length" not in r.headers
                    assert r.headers["etag"] == etag and r.headers["cache-control"] == "public, max-age=3600"
                if status == 200:
                    assert r.content == (HELLO if method == "GET" else b"")
    # HTTP/2 too.
    with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=10) as c:
        assert c.get("/static/hello.txt", headers={"if-none-match": etag}).status_code == 304
        assert c.get("/static/hello.txt", headers={"if-match": '"x"'}).status_code == 412


def multipart_body(data, ranges, boundary, content_type, size):
    out = b""
    for start, end in ranges:
        out += b"\r\n--%s\r\ncontent-type: %s\r\ncontent-range: bytes %d-%d/%d\r\n\r\n" % (
            boundary.encode(), content_type.encode(), start, end, size)
        out += data[start:end + 1]
    return out + b"\r\n--%s--\r\n" % boundary.encode()


def test_ranges_single_multiple_and_bounded(server, tree):
    s = static_server(server, tree)
    data = (tree / "range.bin").read_bytes()
    size = len(data)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        etag = c.get("/static/range.bin").headers["etag"]
        for spec, start, end in [("0-9", 0, 9), ("-10", size - 10, size - 1), ("10230-", 10230, size - 1),
                                 ("100-99999", 100, size - 1), ("5-5", 5, 5)]:
            r = c.get("/static/range.bin", headers={"range": "bytes=" + spec})
            assert r.status_code == 206, spec
            assert r.headers["content-range"] == "bytes %d-%d/%d" % (start, end, size), spec
            assert r.content == data[start:end + 1], spec
            assert r.headers["content-length"] == str(end - start + 1)
        # Several ranges: multipart/byteranges, checked byte for byte.
        wanted = [(0, 9), (100, 109), (size - 5, size - 1)]
        r = c.get("/static/range.bin", headers={"range": "bytes=0-9, 100-109, -5"})
        assert r.status_code == 206
        ctype = r.headers["content-type"]
        m = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ctype)
        assert m, ctype
        want = multipart_body(data, wanted, m.group(1), "application/octet-stream", size)
        assert r.content == want
        assert r.headers["content-length"] == str(len(want))
        # Over HTTP/2 as well.
        with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=10) as h2:
            r2 = h2.get("/static/range.bin", headers={"range": "bytes=0-9, 100-109, -5"})
            boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", r2.headers["content-type"]).group(1)
            assert r2.content == multipart_body(data, wanted, boundary, "application/octet-stream", size)
        # Unsatisfiable.
        for spec in ("bytes=20000-", "bytes=-0", "bytes=20000-30000, 40000-"):
            r = c.get("/static/range.bin", headers={"range": spec})
            assert r.status_code == 416, spec
            assert r.headers["content-range"] == "bytes */%d" % size
        # Ignored, whole file: another unit, bad syntax, too many or overlapping ranges.
        seventeen = "bytes=" + ",".join("%d-%d" % (i * 10, i * 10 + 1) for i in range(17))
        sixteen = "bytes=" + ",".join("%d-%d" % (i * 10, i * 10 + 1) for i in range(16))
        for spec in ("items=0-1", "bytes=5-1", "bytes=x-y", seventeen, "bytes=0-99,50-150", "bytes=0-,0-"):
            r = c.get("/static/range.bin", headers={"range": spec})
            assert r.status_code == 200 and r.content == data, spec
        r = c.get("/static/range.bin", headers={"range": sixteen})
        assert r.status_code == 206 and r.content.count(b"content-range: bytes") == 16
        # HEAD ignores Range.
        r = c.head("/static/range.bin", headers={"range": "bytes=0-9"})
        assert r.status_code == 200 and r.headers["content-length"] == str(size)
        # If-Range: the current ETag or date lets the range apply; anything else, the whole file.
        modified = c.get("/static/range.bin").headers["last-modified"]
        for if_range, status in ((etag, 206), ('"stale"', 200), ("W/" + etag, 200), (modified, 206),
                                 ("Thu, 01 Jan 1970 00:00:01 GMT", 200)):
            r = c.get("/static/range.bin", headers={"range": "bytes=0-9", "if-range": if_range})
            assert r.status_code == status, if_range
            assert r.content == (data[:10] if status == 206 else data)
        # A huge Range header costs no more than its first ranges.
        huge = "bytes=" + ",".join(["0-0"] * 5000)
        r = c.get("/static/range.bin", headers={"range": huge})
        assert r.status_code == 200 and r.content == data


def test_precompressed_siblings_by_accept_encoding(server, tree):
    s = static_server(server, tree)
    script = (tree / "app.js").read_bytes()
    with httpx.Client(base_url=s.url, timeout=10) as c:
        def get(accept, path="/static/app.js", **headers):
            # httpx decodes what it is given; the raw bytes are checked through .stream.
            req = {"accept-encoding": accept} if accept is not None else {}
            req.update(headers)
            with c.stream("GET", path, headers=req) as r:
                raw_body = b"".join(r.iter_raw())
                return r, raw_body
        cases = [
            ("identity", None), ("gzip", "gzip"), ("br", "br"), ("gzip, deflate, br", "br"),
            ("br;q=0.5, gzip", "gzip"), ("br;q=0, gzip;q=0", None), ("*", "br"), ("x-gzip", "gzip"),
            ("zstd", None), ("", None),
        ]
        etags = {}
        for accept, coding in cases:
            r, body = get(accept)
            assert r.status_code == 200, accept
            assert r.headers.get("content-encoding") == coding, accept
            assert r.headers["vary"] == "Accept-Encoding", accept
            assert r.headers["content-type"] == "text/javascript; charset=utf-8"
            stored = {None: "app.js", "gzip": "app.js.gz", "br": "app.js.br"}[coding]
            assert body == (tree / stored).read_bytes(), accept
            assert r.headers["content-length"] == str(len(body))
            etags.setdefault(coding, r.headers["etag"])
            assert r.headers["etag"] == etags[coding]
        assert len(set(etags.values())) == 3, etags
        # Without Accept-Encoding: the file itself, still varying.
        status, fields, body = raw(s.port, "/static/app.js")
        assert status == 200 and "content-encoding" not in fields and body == script
        assert fields["vary"] == "Accept-Encoding"
        # httpx decodes both codings to the file.
        for coding in ("gzip", "br"):
            r = c.get("/static/app.js", headers={"accept-encoding": coding})
            assert r.headers["content-encoding"] == coding and r.content == script
        # Conditional requests compare with the representation sent.
        assert c.get("/static/app.js", headers={"accept-encoding": "gzip", "if-none-match": etags["gzip"]}).status_code == 304
        assert c.get("/static/app.js", headers={"accept-encoding": "br", "if-none-match": etags["gzip"]}).status_code == 200
        # identity;q=0 and no sibling to offer: the file anyway (RFC 9110 12.1).
        r = c.get("/static/hello.txt", headers={"accept-encoding": "identity;q=0"})
        assert r.status_code == 200 and r.content == HELLO and "vary" not in r.headers
        # Only a .gz sibling.
        r, body = get("br, gzip", "/static/only.css")
        assert r.headers["content-encoding"] == "gzip" and body == (tree / "only.css.gz").read_bytes()
        # A Range on a coded body is not taken: a decoding client cannot use ranges of
        # the coded bytes, so the whole sibling comes (200), and the identity file still
        # takes ranges.
        r, body = get("gzip", range="bytes=0-1")
        assert r.status_code == 200 and body == (tree / "app.js.gz").read_bytes()
        assert r.headers["content-encoding"] == "gzip" and "content-range" not in r.headers
        r, body = get("identity", range="bytes=0-1")
        assert r.status_code == 206 and body == script[:2]
        # A precompressed file asked for by name is served as it is.
        r, body = get("gzip", "/static/app.js.gz")
        assert "content-encoding" not in r.headers and r.headers["content-type"] == "application/gzip"
    s.stop()
    s = static_server(server, tree, sections={"static": {**static_sections(tree)["static"], "precompressed": False}})
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.get("/static/app.js", headers={"accept-encoding": "gzip, br"})
        assert "content-encoding" not in r.headers and "vary" not in r.headers and r.content == script


def test_misses_fall_through_unless_exclusive(server, tree):
    s = static_server(server, tree)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for path in ("/static/missing.txt", "/static/sub", "/static/sub/", "/static", "/static/", "/static/fifo",
                     "/static/.env"):
            r = c.get(path)
            assert r.status_code == 404 and r.content == b"Not Found\n", path
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
        for path in ("/scope/missing.txt", "/scope/sub", "/scope/sub/", "/scope/.env", "/scope/fifo"):
            r = c.get(path)
            assert r.status_code == 200 and r.json()["path"] == path, path
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            r = c.request(method, "/static/hello.txt", content=b"x")
            assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", method
            r = c.request(method, "/scope/hello.txt", content=b"x")
            assert r.status_code == 200 and r.json()["method"] == method, method
        # Outside every mount: the app.
        assert c.get("/staticky/hello.txt").content == b"Hello, world!"


def test_exclusive_keeps_encoded_and_doubled_prefixes_from_the_app(server, tree):
    """The app is handed the path decoded; a path under an exclusive mount only that way
    (an encoded `/`, doubled slashes a framework may merge) is still not the app's."""
    s = static_server(server, tree)
    for target in ("/static%2Fhello.txt", "/static%2fsub%2finner.txt", "//static/hello.txt",
                   "/%2Fstatic/hello.txt"):
        status, _, body = raw(s.port, target)
        assert (status, body) == (404, b"Not Found\n"), target
    status, _, body = raw(s.port, "/scope%2Fhello.txt")  # not exclusive: the app's
    assert status == 200 and b'"path": "/scope/hello.txt"' in body


def test_errors_are_not_cached_and_coded_bodies_not_ranged(server, tree):
    """412 and 416 do not carry the mount's Cache-Control (a shared cache would keep a
    client's provoked error under the file's URL); a Range on a precompressed body gets
    the whole coded body."""
    s = static_server(server, tree)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert "cache-control" in c.get("/static/hello.txt").headers
        r = c.get("/static/hello.txt", headers={"if-match": '"nope"'})
        assert r.status_code == 412 and "cache-control" not in r.headers
        r = c.get("/static/hello.txt", headers={"range": "bytes=99999-"})
        assert r.status_code == 416 and "cache-control" not in r.headers
        r = c.get("/static/app.js", headers={"accept-encoding": "gzip", "range": "bytes=0-9,20-29"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert r.content == (tree / "app.js").read_bytes()  # httpx decoded the whole body


def test_a_long_download_is_not_a_stuck_request(server, tree):
    """No app runs a static answer: the watchdog does not report a slow download."""
    (tree / "slow.bin").write_bytes(os.urandom(8 << 20))
    s = static_server(server, tree, sections={"watchdog": {"interval": 0.2, "timeout": 0.5, "critical": 1}})
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /static/slow.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got, started = 0, time.monotonic()
        while time.monotonic() - started < 2.5:  # slowly, past `critical`
            got += len(sock.recv(4096))
            time.sleep(0.01)
    assert 0 < got < (8 << 20)
    assert "still running" not in s.log, s.log[-2000:]


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/sub/../../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2e/secret.txt",
    "/static/.%2e/secret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2Fsecret.txt",
    "/static/sub%2f..%2f..%2fsecret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/..%5csecret.txt",
    "/static/..\\secret.txt",
    "/static/%00",
    "/static/hello.txt%00",
    "/static/hello.txt%00.png",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/out",
    "/static/abs",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/static/%252e%252e/secret.txt",
    "/static/.env",
    "/static/%2eenv",
    "/static/x%zz",
    "/static/./hello.txt",
    "/%73tatic/../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_is_refused(server, tree, target):
    s = static_server(server, tree)
    status, fields, body = raw(s.port, target)
    assert status in (400, 404), (target, status, body)
    assert SECRET not in body and b"PASSWORD" not in body
    # The same on a mount that falls through: the app answers (it echoes the path), never the file.
    status, fields, body = raw(s.port, target.replace("/static", "/scope", 1).replace("/%73tatic", "/scope"))
    assert SECRET not in body and b"PASSWORD" not in body
    # The worker is still serving.
    assert raw(s.port, "/static/hello.txt")[2] == HELLO


def test_symlinks_inside_or_where_allowed(server, tree):
    s = static_server(server, tree)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/static/in").content == b"inner\n"
        assert c.get("/static/out").status_code == 404
        assert c.get("/static/abs").status_code == 404
        assert c.get("/linked/out").content == SECRET
        assert c.get("/linked/abs").content == SECRET
        # A directory link inside the mount is followed.
    (tree / "subdir").symlink_to("sub")
    assert httpx.get(s.url + "/static/subdir/inner.txt", timeout=10).content == b"inner\n"


def sendfile_bytes(s):
    return total(samples(scrape(s)), "genro_asgi_sendfile_bytes_total")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_20_mib_over_http11_sendfile_and_http2(server, tree):
    data = os.urandom(BIG)
    (tree / "big.bin").write_bytes(data)
    s = static_server(server, tree, metrics=True)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.get("/static/big.bin")
        assert r.status_code == 200 and sha(r.content) == sha(data)
    assert sendfile_bytes(s) == BIG, "plaintext HTTP/1.1: every byte by sendfile"
    with httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.get("/static/big.bin", headers={"range": "bytes=1000000-15000000"})
        assert r.status_code == 206 and sha(r.content) == sha(data[1000000:15000001])
    assert sendfile_bytes(s) == BIG + 14000001, "a range from its offset"
    with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=60) as c:
        r = c.get("/static/big.bin")
        assert r.http_version == "HTTP/2" and sha(r.content) == sha(data)
        r = c.get("/static/big.bin", headers={"range": "bytes=0-99,19000000-19999999"})
        assert r.status_code == 206 and data[19000000:20000000] in r.content
    assert sendfile_bytes(s) == BIG + 14000001, "HTTP/2 reads the file in pieces"
    # A slow HTTP/2 reader: the worker holds its budgets, not the file.
    pid = s.worker_pids()[0]
    with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=60) as c:
        with c.stream("GET", "/static/big.bin") as r:
            got = b""
            for chunk in r.iter_raw(65536):
                got += chunk
                if len(got) < (4 << 20):
                    time.sleep(0.002)
            assert sha(got) == sha(data)
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    assert rss < 150, "peak RSS %.0f MiB: a file must not be held in memory" % rss


def test_http3_through_the_front(server, tree, certs):  # noqa: F811
    data = os.urandom(3 << 20)
    (tree / "big.bin").write_bytes(data)
    sections = {**ssl_section(certs), "http3": {"enabled": True}}
    s = static_server(server, tree, sections=sections)
    requests = [
        ("GET", "/static/hello.txt"),
        # No HEAD: aioquic checks a response's content-length against its data without
        # knowing the request was HEAD ("content-length does not match data size"), for
        # the app's HEAD responses as well.
        ("GET", "/static/range.bin", [("range", "bytes=0-9,20-29")]),
        ("GET", "/static/app.js", [("accept-encoding", "br")]),
        ("GET", "/static/big.bin"),
        ("GET", "/static/missing"),
        ("GET", "/scope/missing"),
    ]
    (hello, ranges, br, big, missing, app), _ = h3client.fetch(s.port, requests, cafile=certs["ca"])
    assert hello.status == 200 and bytes(hello.body) == HELLO
    assert hello.header("etag") and hello.header("cache-control") == "public, max-age=3600"
    assert ranges.status == 206
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", ranges.header("content-type")).group(1)
    rdata = (tree / "range.bin").read_bytes()
    assert bytes(ranges.body) == multipart_body(rdata, [(0, 9), (20, 29)], boundary, "application/octet-stream", len(rdata))
    assert br.header("content-encoding") == "br" and brotli.decompress(bytes(br.body)) == (tree / "app.js").read_bytes()
    assert big.status == 200 and sha(bytes(big.body)) == sha(data)
    assert missing.status == 404
    assert app.status == 200 and b'"http_version": "3"' in bytes(app.body)
    (etag,), _ = h3client.fetch(s.port, [("GET", "/static/hello.txt", [("if-none-match", hello.header("etag"))])],
                                cafile=certs["ca"])
    assert etag.status == 304 and bytes(etag.body) == b""


def test_a_static_hit_never_waits_for_python(server, tree):
    """The app spins on the loop, holding the GIL, for 3 s: static files are still served at
    once (layout (a): the I/O thread answers them without the app or the GIL)."""
    s = static_server(server, tree)
    spinning = threading.Thread(target=lambda: httpx.get(s.url + "/spin?s=3", timeout=30))
    spinning.start()
    time.sleep(0.5)
    try:
        with httpx.Client(base_url=s.url, timeout=10) as c:
            for _ in range(20):
                started = time.monotonic()
                r = c.get("/static/hello.txt")
                assert r.content == HELLO
                assert time.monotonic() - started < 0.5
            # The app's own requests wait for the loop.
            with pytest.raises(httpx.ReadTimeout):
                c.get("/scope/missing", timeout=0.5)
    finally:
        spinning.join()


def test_counted_and_logged_like_app_responses(server, tree):
    s = static_server(server, tree, metrics=True, sections={"logging": {"access_log": True}})
    with httpx.Client(base_url=s.url, timeout=10) as c:
        for _ in range(7):
            assert c.get("/static/hello.txt").status_code == 200
        assert c.get("/static/missing").status_code == 404
        assert c.get("/static/hello.txt", headers={"if-none-match": "*"}).status_code == 304
        assert c.get("/scope/missing").status_code == 200
    values = samples(scrape(s))
    assert total(values, "genro_asgi_static_responses_total", status="2xx") == 7
    assert total(values, "genro_asgi_static_responses_total", status="3xx") == 1
    assert total(values, "genro_asgi_static_responses_total", status="4xx") == 1
    assert total(values, "genro_asgi_requests_total", protocol="http1", status="2xx") >= 8
    assert total(values, "genro_asgi_response_body_bytes_total") >= 7 * len(HELLO)
    s.wait_log('"GET /static/missing HTTP/1.1" 404')
    line = s.wait_log('"GET /static/hello.txt HTTP/1.1" 200 %d' % len(HELLO))
    assert "genro_asgi.access" in line or "access" in line


@pytest.mark.parametrize("static, want", [
    ({"mounts": "static=%(pub)s"}, 'server.ini:%(line)s: [static] mounts = "static=%(pub)s": expected PREFIX=DIRECTORY'),
    ({"mounts": "/s=%(pub)s, /s/=%(pub)s"}, "expected each prefix mounted once (/s is mounted twice)"),
    ({"mounts": "/s=%(pub)s/nope"}, "[static] mounts = \"/s=%(pub)s/nope\": expected an existing directory"),
    ({"mounts": "/s=%(pub)s/hello.txt"}, "is not a directory"),
    ({"mounts": "/s=%(pub)s", "exclusive": "/t"}, "[static] exclusive = \"/t\": expected the prefix of a [static] mounts entry"),
    ({"mounts": "/s=%(pub)s", "max_age": "/s=soon"}, "[static] max_age = \"/s=soon\": expected PREFIX=SECONDS"),
    ({"mounts": "/s=%(pub)s", "immutable": "/s"}, "[static] immutable = \"/s\": expected a mount with a max_age too"),
])
def test_config_errors_name_the_key_and_source(tmp_path, tree, static, want):
    path = tmp_path / "server.ini"
    body = "[application]\napp = basic:app\n[static]\n" + "".join(
        "%s = %s\n" % (key, value % {"pub": tree}) for key, value in static.items())
    path.write_text(body)
    r = run_cli("check", "--config", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert want % {"pub": tree, "line": 4} in r.stderr, r.stderr
    # The environment is named as the source too.
    r = run_cli("check", "--app", "basic:app", env={"GENRO_ASGI_STATIC_MOUNTS": "nope"})
    assert r.returncode == 2 and "environment variable GENRO_ASGI_STATIC_MOUNTS: [static] mounts" in r.stderr, r.stderr


def test_relative_directories_are_under_app_dir(server, tree, tmp_path):
    s = server(workers=1, sections={"application": {"app_dir": str(tmp_path)},
                                    "static": {"mounts": "/p=public"}}, app="basic:app",
               env={"PYTHONPATH": str(os.path.dirname(__file__) + "/apps")})
    assert httpx.get(s.url + "/p/hello.txt", timeout=10).content == HELLO


def test_on_the_loop_thread_too(server, tree):
    """Layout (b), `[server] threads = 0`: the connections run on the event loop's thread,
    and static files are answered there (still without the app)."""
    data = os.urandom(3 << 20)
    (tree / "big.bin").write_bytes(data)
    s = static_server(server, tree, sections={"server": {"threads": 0}})
    with httpx.Client(base_url=s.url, timeout=30) as h1, \
            httpx.Client(base_url=s.url, http1=False, http2=True, timeout=30) as h2:
        for c in (h1, h2):
            assert c.get("/static/hello.txt").content == HELLO
            assert sha(c.get("/static/big.bin").content) == sha(data)
            r = c.get("/static/big.bin", headers={"range": "bytes=0-9, -10"})
            assert r.status_code == 206 and data[:10] in r.content and data[-10:] in r.content
            assert c.get("/scope/missing").json()["path"] == "/scope/missing"


def test_tls_reads_the_file_instead_of_sendfile(server, tree, certs):  # noqa: F811
    """TLS encrypts in user space: a large file goes through the budgeted pipe, not
    sendfile, over HTTP/1.1 and HTTP/2 (ALPN)."""
    data = os.urandom(2 << 20)
    (tree / "big.bin").write_bytes(data)
    s = static_server(server, tree, sections=ssl_section(certs), metrics=True)
    url = "https://127.0.0.1:%d" % s.port
    for http2 in (False, True):
        with httpx.Client(base_url=url, verify=client_context(certs), http2=http2, timeout=30) as c:
            r = c.get("/static/big.bin")
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert sha(r.content) == sha(data)
            r = c.get("/static/big.bin", headers={"range": "bytes=100000-1999999"})
            assert r.status_code == 206 and sha(r.content) == sha(data[100000:2000000])
    assert sendfile_bytes(s) == 0
