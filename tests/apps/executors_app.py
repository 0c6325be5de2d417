"""App for the executor tests (issue 18): work sent to the worker's thread and process pools
with `genro_asgi.run_in_executor`, awaited by the request or left running in the
background, and the failures the pools can report."""

import asyncio
import os
import signal
import threading
import time
import urllib.parse

import genro_asgi

from plain_lifespan import plain_lifespan


_background = set()


def _forget(task):
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a drain kills the work, which is expected here


def cpu_spin(seconds):
    """CPU-bound: no sleep, no I/O. Returns the pid that ran it."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return os.getpid()


def sleep_then_write(path, seconds):
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")
    return threading.current_thread().name


def thread_name():
    return threading.current_thread().name


def die():
    os.kill(os.getpid(), signal.SIGKILL)


async def _chain(seconds, marker):
    await genro_asgi.run_in_executor(time.sleep, seconds)
    try:
        outcome = "accepted in " + await genro_asgi.run_in_executor(thread_name)
    except RuntimeError as exc:
        outcome = "%s: %s" % (type(exc).__name__, exc)
    with open(marker, "w") as f:
        f.write(outcome)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
    seconds = float(query.get("s", "0"))
    pool = query.get("pool", "thread")
    path = scope["path"]
    status = 200
    try:
        if path == "/spin":
            body = "%d %d" % (os.getpid(), await genro_asgi.run_in_executor(cpu_spin, seconds, pool="process"))
        elif path == "/spin-inline":
            body = str(cpu_spin(seconds))  # the mistake the pools exist for: blocks the loop
        elif path == "/thread":
            body = await genro_asgi.run_in_executor(thread_name)
        elif path == "/ext":
            run = scope["extensions"]["genro.executors"]["run_in_executor"]
            body = await run(thread_name, pool=pool)
        elif path == "/lambda":
            body = str(await genro_asgi.run_in_executor(lambda: 1, pool="process"))
        elif path == "/die":
            body = str(await genro_asgi.run_in_executor(die, pool="process"))
        elif path == "/chain":
            # Background work that asks for more after the first part: during a drain,
            # the second request is refused, and the marker says how.
            task = asyncio.ensure_future(_chain(seconds, query["marker"]))
            _background.add(task)
            task.add_done_callback(_forget)
            body = "started"
        elif path == "/background":
            # Fire and forget: the response does not wait, the drain must.
            if pool == "process":
                work = genro_asgi.run_in_executor(cpu_spin, seconds, pool="process")
            else:
                work = genro_asgi.run_in_executor(sleep_then_write, query["marker"], seconds)
            task = asyncio.ensure_future(work)
            _background.add(task)
            task.add_done_callback(_forget)
            body = "started"
        else:
            body = "ok"
    except Exception as exc:
        status = 500
        body = "%s: %s" % (type(exc).__name__, exc)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body.encode()})
