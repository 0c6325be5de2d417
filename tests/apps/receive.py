"""Apps for the receive side (tests/test_receive.py): cancelled receive() calls, body
timeouts, event streams and downloads across a drain."""

import asyncio
import gc
import hashlib
import logging

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

log = logging.getLogger("receive-app")


async def sse(request: Request):
    """The common SSE pattern: the generator polls `request.is_disconnected()` (a receive()
    cancelled at once when nothing is there) every 10 ms and yields an event every 0.5 s."""

    async def events():
        n = 0
        while True:
            for _ in range(50):
                if await request.is_disconnected():
                    log.warning("sse generator saw the disconnect")
                    return
                await asyncio.sleep(0.01)
            n += 1
            yield {"data": str(n)}

    return EventSourceResponse(events(), ping=1)


async def start(send, status=200, content_type=b"text/plain"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type)]})


async def wait_for_upload(scope, receive, send):
    """Reads the body with `asyncio.wait_for(receive(), 0.001)` retries; answers its length
    and sha256, which must match what the client sent."""
    digest = hashlib.sha256()
    size = 0
    timeouts = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), 0.001)
        except asyncio.TimeoutError:
            timeouts += 1
            continue
        assert message["type"] == "http.request", message
        digest.update(message["body"])
        size += len(message["body"])
        if not message.get("more_body"):
            break
    log.warning("upload read with %d timed-out receive() calls", timeouts)
    await start(send)
    body = ("%d %s %d" % (size, digest.hexdigest(), timeouts)).encode()
    await send({"type": "http.response.body", "body": body})


async def dropped_receive(scope, receive, send):
    """Calls receive() and drops the awaitable without awaiting it, then reads the body:
    the dropped call must not swallow a chunk."""
    pending = receive()
    del pending
    gc.collect()
    await asyncio.sleep(0.05)  # the body read started by the dropped call completes
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        digest.update(message["body"])
        size += len(message["body"])
        if not message.get("more_body"):
            break
    await start(send)
    await send({"type": "http.response.body", "body": ("%d %s" % (size, digest.hexdigest())).encode()})


async def upload(scope, receive, send, respond_first=False):
    """Reads the body; logs what receive() gave when it was not all of it."""
    if respond_first:
        await start(send)
        await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            log.warning("app saw http.disconnect after %d body bytes", size)
            return
        size += len(message["body"])
        if not message.get("more_body"):
            break
    if not respond_first:
        await start(send)
    await send({"type": "http.response.body", "body": b"%d" % size})


async def download(scope, receive, send):
    """A slow streamed download: 40 chunks of 64 KiB, 0.1 s apart."""
    await start(send, content_type=b"application/octet-stream")
    for i in range(40):
        await send({"type": "http.response.body", "body": bytes([i % 251]) * 65536, "more_body": True})
        await asyncio.sleep(0.1)
    await send({"type": "http.response.body", "body": b""})


async def long_poll(scope, receive, send):
    """Waits on the worker's drain event; answers when it is set."""
    draining = scope["extensions"]["genro.draining"]["event"]
    await start(send)
    await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
    await draining.wait()
    await send({"type": "http.response.body", "body": b"drained\n"})


async def pieces(scope, receive, send):
    """Waits `?wait=` seconds (the body arrives meanwhile), then reads it; answers its
    length, sha256, the number of http.request messages and the largest one."""
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    await asyncio.sleep(float(query.get("wait", "0")))
    digest = hashlib.sha256()
    size = count = largest = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        digest.update(message["body"])
        size += len(message["body"])
        count += 1
        largest = max(largest, len(message["body"]))
        if not message.get("more_body"):
            break
    await start(send)
    body = ("%d %s %d %d" % (size, digest.hexdigest(), count, largest)).encode()
    await send({"type": "http.response.body", "body": body})


starlette_app = Starlette(routes=[Route("/sse", sse)])


async def app(scope, receive, send):
    if scope["type"] == "http":
        path = scope["path"]
        if path == "/wait-for-upload":
            return await wait_for_upload(scope, receive, send)
        if path == "/dropped-receive":
            return await dropped_receive(scope, receive, send)
        if path == "/upload":
            return await upload(scope, receive, send)
        if path == "/upload-streaming":
            return await upload(scope, receive, send, respond_first=True)
        if path == "/pieces":
            return await pieces(scope, receive, send)
        if path == "/download":
            return await download(scope, receive, send)
        if path == "/long-poll":
            return await long_poll(scope, receive, send)
    return await starlette_app(scope, receive, send)
