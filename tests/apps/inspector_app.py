"""App for the request inspector tests: `/slow...` waits `s` seconds (any path under it),
in the worker's thread pool with `pool=thread`), `/` answers at once, and a WebSocket stays open echoing until the client leaves."""

import asyncio
import time
import urllib.parse

import genro_asgi

from plain_lifespan import echo_websocket, plain_lifespan


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    if scope["type"] == "websocket":
        return await echo_websocket(receive, send)
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    if scope["path"].startswith("/slow"):
        if query.get("pool") == "thread":
            await genro_asgi.run_in_executor(time.sleep, float(query.get("s", "30")))
        else:
            await asyncio.sleep(float(query.get("s", "30")))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
