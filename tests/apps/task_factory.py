"""An app whose lifespan installs an asyncio task factory that refuses the request for
/no-task (as a faulty instrumentation library might): the server cannot start that
request's task, and must answer 500 with an error id (tests/test_http.py)."""

import asyncio


def refusing_factory(default):
    def factory(loop, coro, **kwargs):
        frame = getattr(coro, "cr_frame", None)
        scope = frame.f_locals.get("scope") if frame is not None else None
        if isinstance(scope, dict) and scope.get("path") == "/no-task":
            coro.close()
            raise RuntimeError("the task factory refused /no-task")
        if default is not None:
            return default(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    return factory


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                loop.set_task_factory(refusing_factory(loop.get_task_factory()))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
