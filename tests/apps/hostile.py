"""An app for the hostile-client tests: endless streams of one shared 1 MiB chunk (so the
app's own memory is constant and what grows is the server's), full responses, a loop
blocker, and counters of what the app saw."""

import json
import os
import time
from urllib.parse import parse_qs

from plain_lifespan import plain_lifespan

CHUNK = b"x" * (1 << 20)
BIG = b"y" * (8 << 20)
stats = {"streams": 0, "disconnects": 0, "chunks": 0}


async def respond(send, data, status=200, content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": data})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    path = scope["path"]
    if path == "/forever":
        # Streams the shared chunk until the client is gone (send raises OSError).
        stats["streams"] += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        # ?size=N: a fresh N-byte chunk per send (small chunks are copied by the server).
        size = int(scope["query_string"].decode().partition("size=")[2] or 0)
        try:
            while True:
                chunk = b"x" * size if size else CHUNK
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                stats["chunks"] += 1
        except OSError:
            stats["disconnects"] += 1
    elif path == "/big":
        await respond(send, BIG, content_type=b"application/octet-stream")
    elif path == "/block":
        # ?s=N blocks the loop N seconds; with &until=PATH, until PATH exists (N at most).
        query = parse_qs(scope["query_string"].decode())
        deadline = time.monotonic() + float(query.get("s", ["1"])[0])
        until = query.get("until", [None])[0]
        while time.monotonic() < deadline and not (until and os.path.exists(until)):
            time.sleep(0.05 if until else max(0.0, deadline - time.monotonic()))
        await respond(send, b"unblocked")
    elif path == "/stats":
        await respond(send, json.dumps(stats).encode(), content_type=b"application/json")
    else:
        await respond(send, b"ok")
