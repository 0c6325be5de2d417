"""ASGI app for tests/test_h3_bounds.py: a response that streams 1 MiB chunks until its
client goes away (or `n` of them), a slow handler that never reads its body, and an upload
reader; each notes how it ended in $H3_BOUNDS_NOTES."""

import asyncio
import os
import urllib.parse

from plain_lifespan import plain_lifespan

NOTES = os.environ.get("H3_BOUNDS_NOTES")


def note(text):
    if NOTES:
        with open(NOTES, "a") as f:
            f.write(text + "\n")


CHUNKS = {}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    if scope["path"] == "/flood":
        # One chunk per size, shared by every stream: the app's own memory stays constant,
        # so what grows is the servers'.
        size = int(query.get("size", str(1 << 20)))
        chunk = CHUNKS.setdefault(size, b"x" * size) if size not in CHUNKS else CHUNKS[size]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        note("flood:start")
        left = int(query.get("n", "-1"))  # chunks to send; -1: until the client leaves
        try:
            while left != 0:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                left -= 1
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            note("flood:disconnect")
    elif scope["path"] == "/hold":
        # Takes its time and never reads the request body.
        note("hold:start")
        await asyncio.sleep(float(query.get("s", "30")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"held"})
    elif scope["path"] == "/upload":
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                note("upload:disconnect:%d" % total)
                return
            total += len(message["body"])
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
