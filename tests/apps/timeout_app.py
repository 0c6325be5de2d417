"""App for the request_timeout tests (issue 19): `/sleep?s=N&marker=PATH` awaits, and its
`finally` writes how it ended; `/stream?s=N` sends the head and a first chunk, then waits;
`/block?s=N` blocks the event loop (no await); `/` answers at once; a WebSocket echoes."""

import asyncio
import time
import urllib.parse

from plain_lifespan import echo_websocket, plain_lifespan


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    if scope["type"] == "websocket":
        return await echo_websocket(receive, send)
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    seconds = float(query.get("s", "0"))
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
    if scope["path"] == "/sleep":
        ended = "returned"
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ended = "cancelled"
            raise
        finally:
            with open(query["marker"], "w") as f:
                f.write("finally ran: " + ended)
    elif scope["path"] == "/stream":
        await send(dict(start))
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        await asyncio.sleep(seconds)
        await send({"type": "http.response.body", "body": b"last"})
        return
    elif scope["path"] == "/block":
        time.sleep(seconds)
    await send(start)
    await send({"type": "http.response.body", "body": b"ok"})
