"""Raw ASGI app that keeps a ledger of the requests it accepted, for the load tests.

For each request it appends `start <x-load-id>` to the file named by LEDGER_FILE, waits
LEDGER_DELAY seconds (default 0.2), appends `done <x-load-id>`, then answers 200 "ok". Every
worker appends to the same file (append mode, one write per line)."""

import asyncio
import os

from plain_lifespan import plain_lifespan

LEDGER_FILE = os.environ.get("LEDGER_FILE")
DELAY = float(os.environ.get("LEDGER_DELAY", "0.2"))
_ledger = open(LEDGER_FILE, "a", buffering=1) if LEDGER_FILE else None


def note(event, load_id):
    if _ledger is not None:
        _ledger.write("%s %s\n" % (event, load_id))


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    assert scope["type"] == "http", scope["type"]
    load_id = dict(scope["headers"]).get(b"x-load-id", b"-").decode("latin-1")
    note("start", load_id)
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(DELAY)
    note("done", load_id)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
