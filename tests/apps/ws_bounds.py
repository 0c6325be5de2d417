"""A raw ASGI app for the WebSocket bound tests (tests/test_ws_bounds.py): one behaviour per
path; plain HTTP answers 200 for the health prober."""

import asyncio
import gc
import json
import urllib.parse

import anyio

from plain_lifespan import plain_lifespan


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    assert scope["type"] == "websocket"
    connect = await receive()
    assert connect["type"] == "websocket.connect", connect
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    await ROUTES[scope["path"]](query, receive, send)


async def drain(query, receive, send):
    """Takes every message (pings never reach the app)."""
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def sleepy(query, receive, send):
    """Sleeps `delay` seconds before each receive(), as a slow app does; prints how many
    messages and bytes it took when the client is gone."""
    await send({"type": "websocket.accept"})
    delay = float(query.get("delay", "1"))
    count = size = 0
    while True:
        await asyncio.sleep(delay)
        message = await receive()
        if message["type"] == "websocket.disconnect":
            print("SLEEPY %d %d" % (count, size), flush=True)
            return
        count += 1
        size += len(message.get("bytes") or message.get("text") or "")
        # Done with it: the app does not hold a message while it sleeps, so the worker's
        # RSS shows what the server holds.
        del message


def live_futures():
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Future))


async def cancelled_waits(query, receive, send):
    """receive() under a short timeout in a loop (`asyncio.wait_for`, or an anyio cancel
    scope with `style=anyio`), as polling code does. Text "stats" is answered with what
    arrived, the waits cancelled so far and the loop futures alive."""
    await send({"type": "websocket.accept"})
    timeout = float(query.get("timeout", "0.001"))
    use_anyio = query.get("style") == "anyio"
    received, cancelled = [], 0
    while True:
        if use_anyio:
            message = None
            with anyio.move_on_after(timeout):
                message = await receive()
            if message is None:
                cancelled += 1
                continue
        else:
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                cancelled += 1
                continue
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "stats":
            gc.collect()
            await send({"type": "websocket.send", "text": json.dumps(
                {"received": received, "cancelled": cancelled, "futures": live_futures()})})
        else:
            received.append(text)


ROUTES = {
    "/drain": drain,
    "/sleepy": sleepy,
    "/waits": cancelled_waits,
}
