"""A raw ASGI app for the WebSocket tests and the Autobahn run: one behaviour per path."""

import asyncio
import gc
import json
import time

from plain_lifespan import plain_lifespan


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"plain http\n"})
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    connect = await receive()
    assert connect["type"] == "websocket.connect", connect
    handler = ROUTES.get(path, echo)
    await handler(scope, receive, send)


async def echo(scope, receive, send):
    """Echoes every message, text as text and bytes as bytes (the Autobahn app)."""
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def scope_route(scope, receive, send):
    """Accepts with the first offered subprotocol and an extra header, then sends the
    scope as JSON."""
    subprotocols = scope["subprotocols"]
    await send({"type": "websocket.accept", "subprotocol": subprotocols[0] if subprotocols else None,
                "headers": [(b"x-extra", b"yes"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]})
    shown = {k: v for k, v in scope.items() if k in (
        "type", "http_version", "scheme", "path", "query_string", "subprotocols", "root_path")}
    shown["query_string"] = shown["query_string"].decode()
    shown["headers"] = {k.decode(): v.decode() for k, v in scope["headers"]}
    shown["envelope"] = scope["extensions"]["genro.envelope"]
    shown["extensions"] = sorted(scope["extensions"])
    shown["client"] = list(scope["client"])
    await send({"type": "websocket.send", "text": json.dumps(shown)})
    await receive()


async def refuse(scope, receive, send):
    """Closes before accepting: the client gets 403."""
    await send({"type": "websocket.close"})


async def deny(scope, receive, send):
    """The denial response extension: a custom HTTP response in two body parts."""
    await send({"type": "websocket.http.response.start", "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
    await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"token\n"})


async def close_with(scope, receive, send):
    """Accepts, sends one message, closes with 4001 "bye", then reports what receive() and
    send() do afterwards."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "hello"})
    await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
    after = await receive()
    try:
        await send({"type": "websocket.send", "text": "too late"})
        raised = None
    except OSError as exc:
        raised = type(exc).__name__
    print("CLOSE_WITH", json.dumps({"after": after, "raised": raised}), flush=True)


async def disconnect_report(scope, receive, send):
    """Accepts and prints the websocket.disconnect message it eventually receives."""
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            print("DISCONNECT", json.dumps(message), flush=True)
            return


async def slow_reader(scope, receive, send):
    """Accepts, then does not receive for 3 seconds; then counts what arrives."""
    await send({"type": "websocket.accept"})
    await asyncio.sleep(3)
    count = 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            print("SLOW_READER", count, flush=True)
            return
        count += 1
        if message.get("text") == "done":
            await send({"type": "websocket.send", "text": "got %d" % count})


async def flood(scope, receive, send):
    """Sends 1 MiB messages as fast as send() lets it; prints how many when the client is
    gone."""
    await send({"type": "websocket.accept"})
    chunk = b"x" * (1 << 20)
    sent = 0
    try:
        while True:
            await send({"type": "websocket.send", "bytes": chunk})
            sent += 1
    except OSError:
        print("FLOOD", sent, flush=True)


async def raises(scope, receive, send):
    """Accepts, then raises: the client gets close 1011."""
    await send({"type": "websocket.accept"})
    raise RuntimeError("boom in a websocket")


async def raises_early(scope, receive, send):
    """Raises before accepting: the client gets 500."""
    raise RuntimeError("boom before accept")


async def returns(scope, receive, send):
    """Accepts, sends one message and returns: the client gets close 1000."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "bye"})


async def bad_message(scope, receive, send):
    """Accepts, then sends an invalid message (both bytes and text)."""
    await send({"type": "websocket.accept"})
    try:
        await send({"type": "websocket.send", "text": "a", "bytes": b"b"})
    except RuntimeError as exc:
        print("BAD_MESSAGE", exc, flush=True)
        raise


async def cancelled_receive(scope, receive, send):
    """Cancels a receive() whose message is already on its way (as asyncio.wait_for does on
    a timeout); the next receive() must still get that message."""
    await send({"type": "websocket.accept"})
    task = asyncio.ensure_future(receive())
    await asyncio.sleep(0.05)  # the task now waits for a message
    await send({"type": "websocket.send", "text": "go"})
    time.sleep(0.5)  # blocks the loop: the client's reply is read and handed over meanwhile
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    first = await receive()
    await send({"type": "websocket.send", "text": "got %s" % first.get("text")})
    second = await receive()
    await send({"type": "websocket.send", "text": "then %s" % second.get("text")})


async def dropped_receive(scope, receive, send):
    """Calls receive() while a message is queued and drops the awaitable unawaited: the
    message must go back for the next receive()."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "go"})
    time.sleep(0.5)  # blocks the loop: the client's "A" is queued meanwhile
    pending = receive()
    del pending
    gc.collect()
    first = await receive()
    await send({"type": "websocket.send", "text": "got %s" % first.get("text")})


async def set_then_cancelled(scope, receive, send):
    """Cancels a receive() after its message was set on it but before the task ran (a
    timeout and a message meeting in one loop turn); the next receive() must get it."""
    await send({"type": "websocket.accept"})
    task = asyncio.ensure_future(receive())
    await asyncio.sleep(0.05)  # the task now waits for a message
    await send({"type": "websocket.send", "text": "go"})
    time.sleep(0.5)  # blocks the loop: "A" is read and its hand-off queued meanwhile
    # Once "A" is set on the future the task waits on, the task's wake-up is queued behind
    # this step: cancelling now is the timeout that meets a message in one loop turn.
    while task._fut_waiter is not None and not task._fut_waiter.done():
        await asyncio.sleep(0)
    task.cancel()
    try:
        outcome = "read %s" % (await task).get("text")
    except asyncio.CancelledError:
        outcome = "cancelled"
    following = await receive()
    await send({"type": "websocket.send", "text": "%s; next %s" % (outcome, following.get("text"))})


ROUTES = {
    "/cancel": cancelled_receive,
    "/dropped": dropped_receive,
    "/set-then-cancelled": set_then_cancelled,
    "/scope": scope_route,
    "/refuse": refuse,
    "/deny": deny,
    "/close": close_with,
    "/disconnect": disconnect_report,
    "/slow": slow_reader,
    "/flood": flood,
    "/raises": raises,
    "/raises-early": raises_early,
    "/returns": returns,
    "/bad": bad_message,
}
