"""The app behind tests/test_corpus.py: answers every request with what it saw (method,
path, query, host fields, body) as JSON, so the corpus can check what reached the app.
On `http.disconnect` while reading the body it returns without answering, as many apps
do, so what the client gets is the server's own answer."""

import json


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = {
        "corpus_app": True,
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "host": [v.decode("latin-1") for n, v in scope["headers"] if n == b"host"],
        "body": body.decode("latin-1"),
    }
    data = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
