"""Raw ASGI app with one route per behaviour the end-to-end tests check."""

import asyncio
import json
import logging
import os
import threading
import time
import urllib.parse

LIFESPAN_LOG = os.environ.get("LIFESPAN_LOG")
KEPT = []
# /hinted.css?tag=T: when each tag's stylesheet was fetched (time.monotonic()).
HINTED = {}


def note(text):
    if LIFESPAN_LOG:
        with open(LIFESPAN_LOG, "a") as f:
            f.write(text + "\n")


def block_the_loop_in_sleep(seconds):
    time.sleep(seconds)  # releases the GIL, but the event loop is stuck


def block_the_loop_spinning(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # holds the GIL (but for the interpreter's switches)
        pass


async def start(send, status=200, headers=(), trailers=False):
    await send({"type": "http.response.start", "status": status, "headers": list(headers), "trailers": trailers})


async def body(send, data=b"", more=False):
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def read_body(receive):
    parts = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        parts.append(message["body"])
        if not message.get("more_body"):
            return b"".join(parts)


def jsonable(scope):
    out = {}
    for key, value in scope.items():
        if key == "headers":
            out[key] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in value]
        elif isinstance(value, bytes):
            out[key] = value.decode("latin-1")
        elif key == "extensions":
            # Values are dicts (ASGI); genro.draining holds an asyncio.Event: show its repr.
            out[key] = {name: {k: v if isinstance(v, (str, int, float, bool, type(None), dict, list)) else repr(v)
                               for k, v in ext.items()} for name, ext in sorted(value.items())}
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["token"] = "from-lifespan"
            note("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            note("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    path = scope["path"]
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    if path.startswith("/scope"):
        data = json.dumps(jsonable(scope)).encode()
        await start(send, headers=[(b"content-type", b"application/json")])
        await body(send, data)
    elif path == "/echo":
        data = await read_body(receive)
        await start(send, headers=[(b"content-type", b"application/octet-stream")])
        await body(send, data)
    elif path == "/count":
        # Counts the body without keeping it; reports bytes and the largest message.
        total = largest = messages = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            messages += 1
            total += len(message["body"])
            largest = max(largest, len(message["body"]))
            if not message.get("more_body"):
                break
        await start(send)
        await body(send, json.dumps({"bytes": total, "largest": largest, "messages": messages}).encode())
    elif path == "/stream":
        n, size = int(query.get("n", "10")), int(query.get("size", "1024"))
        await start(send, headers=[(b"content-type", b"application/octet-stream")])
        chunk = b"x" * size
        for _ in range(n):
            await body(send, chunk, more=True)
        await body(send)
    elif path == "/sleep":
        await asyncio.sleep(float(query.get("s", "1")))
        await start(send)
        await body(send, b"slept")
    elif path == "/block":
        block_the_loop_in_sleep(float(query.get("s", "1")))
        await start(send)
        await body(send, b"unblocked")
    elif path == "/spin":
        block_the_loop_spinning(float(query.get("s", "1")))
        await start(send)
        await body(send, b"spun")
    elif path == "/raise":
        raise ValueError("boom before start")
    elif path == "/raise-after-start":
        await start(send)
        await body(send, b"partial", more=True)
        raise ValueError("boom mid-stream")
    elif path == "/body-first":
        await body(send, b"oops")
    elif path == "/double-start":
        await start(send)
        await body(send, b"a", more=True)
        await start(send)
    elif path == "/no-response":
        return
    elif path == "/bad-header":
        await start(send, headers=[("content-type", "text/plain")])  # str, not bytes
        await body(send, b"never")
    elif path == "/trailers":
        await start(send, headers=[(b"trailer", b"x-checksum")], trailers=True)
        await body(send, b"data", more=True)
        await body(send, b"")
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")], "more_trailers": False})
    elif path == "/pathsend":
        headers = [(b"content-type", b"application/octet-stream")]
        if "length" in query:
            headers.append((b"content-length", query["length"].encode()))
        await start(send, headers=headers)
        await send({"type": "http.response.pathsend", "path": query["file"]})
    elif path == "/no-read":
        await start(send)
        await body(send, b"did not read")
    elif path == "/wait-disconnect":
        await read_body(receive)
        await start(send)
        await body(send, b"first", more=True)
        message = await receive()
        note("disconnect:" + message["type"])
    elif path == "/env":
        await start(send)
        await body(send, os.environ.get(query["name"], "<unset>").encode())
    elif path == "/wait-disconnect-first":
        # Long-poll style: waits for the client to go away before answering anything.
        await read_body(receive)
        message = await receive()
        note("early:" + message["type"])
    elif path == "/endless":
        # Streams until the client leaves, never calling receive(): send() must raise.
        await start(send)
        try:
            while True:
                await body(send, b"x" * 1024, more=True)
        except OSError:
            note("endless:oserror")
    elif path == "/status":
        await start(send, status=int(query["code"]))
        await body(send, b"" if query["code"] in ("204", "304") else b"x")
    elif path == "/create-task":
        # Django Channels style: receive() scheduled as a task.
        parts = []
        while True:
            message = await asyncio.create_task(receive())
            parts.append(message["body"])
            if not message.get("more_body"):
                break
        await start(send)
        await asyncio.ensure_future(send({"type": "http.response.body", "body": b"".join(parts)}))
    elif path == "/log":
        log = logging.getLogger("myapp.views")
        log.info("info from the app %s ident=%d", query.get("tag", ""), threading.get_ident())
        log.warning("warning from the app %s", query.get("tag", ""))
        log.critical("critical from the app %s", query.get("tag", ""))
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("caught in the app %s", query.get("tag", ""))
        log.debug("debug from the app %s", query.get("tag", ""))
        await start(send)
        await body(send, b"logged")
    elif path == "/pid":
        await start(send)
        await body(send, str(os.getpid()).encode())
    elif path == "/early-hints":
        links = [b"</style.css>; rel=preload; as=style", b"</app.js>; rel=preload; as=script"]
        if query.get("tag"):
            links = [b"</tagged.css?%s>; rel=preload" % query["tag"].encode()]
        if query.get("bad"):
            links = [b"</x>\r\nx-injected: 1"]
        if query.get("big"):
            links = [b"</%s>; rel=preload" % (b"b" * int(query["big"]))]
        if "http.response.early_hint" in scope["extensions"] or query.get("force"):
            for _ in range(int(query.get("n", "1"))):
                await send({"type": "http.response.early_hint", "links": links})
        await asyncio.sleep(float(query.get("s", "0.3")))
        await start(send, headers=[] if query.get("big") else [(b"link", links[0])])
        await body(send, b"hinted")
    elif path == "/hinted-page":
        # A page whose stylesheet a browser learns of only from a 103: the page says
        # whether the stylesheet was fetched while the page itself was still being made.
        tag = query.get("tag", "")
        link = b"</hinted.css?tag=%s>; rel=preload; as=style" % tag.encode()
        await send({"type": "http.response.early_hint", "links": [link]})
        deadline = time.monotonic() + float(query.get("s", "3"))
        while tag not in HINTED and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        verdict = b"yes" if tag in HINTED else b"no"
        await start(send, headers=[(b"content-type", b"text/html")])
        await body(send, b"<html><head><link rel=stylesheet href='/hinted.css?tag=%s'></head>"
                         b"<body><p id=verdict>preloaded-before-response=%s</p></body></html>"
                   % (tag.encode(), verdict))
    elif path == "/hinted.css":
        HINTED.setdefault(query.get("tag", ""), time.monotonic())
        await start(send, headers=[(b"content-type", b"text/css"), (b"cache-control", b"max-age=60")])
        await body(send, b"p { color: green }")
    elif path == "/grow":
        # Memory the worker keeps (max_rss): written to, so it is resident.
        KEPT.append(bytearray(b"x" * (int(query.get("mib", "1")) << 20)))
        await start(send)
        await body(send, b"grown")
    elif path == "/exit":
        os._exit(int(query.get("code", "3")))
    else:
        await start(send, headers=[(b"content-type", b"text/plain")])
        await body(send, b"Hello, world!")
