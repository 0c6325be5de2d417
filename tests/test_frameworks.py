"""Real frameworks (FastAPI, Starlette, Django) served by genro-asgi with 2 workers."""

import asyncio
import json

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

TIMEOUT = httpx.Timeout(10.0)


def test_fastapi_routes_body_and_lifespan(server):
    s = server(app="fastapi_app:app", workers=2)
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.get("/items/42", params={"q": "abc"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"item_id": 42, "q": "abc"}

        r = client.get("/items/not-a-number")
        assert r.status_code == 422, r.text

        r = client.post("/echo", json={"name": "widget", "price": 2.5, "tags": ["a", "b"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"name": "widget", "price": 2.5, "tags": ["a", "b"], "total": 5.0}

        r = client.post("/echo", json={"price": "not a float"})
        assert r.status_code == 422, r.text
        assert any(e["loc"][-1] == "name" for e in r.json()["detail"])

        # Every worker ran the lifespan startup (new connections spread over both workers).
        pids = set()
        for _ in range(10):
            with httpx.Client(base_url=s.url, timeout=TIMEOUT) as fresh:
                r = fresh.get("/state")
            assert r.status_code == 200, r.text
            assert r.json()["started"] == "lifespan-ran"
            pids.add(r.json()["pid"])
        assert pids <= set(s.worker_pids())


def test_fastapi_websocket_chat(server):
    s = server(app="fastapi_app:app", workers=1)
    base = s.url.replace("http", "ws", 1)

    async def go():
        async with connect(base + "/ws/ann", subprotocols=["chat"]) as ann, \
                connect(base + "/ws/bob", subprotocols=["chat"]) as bob:
            assert ann.subprotocol == "chat"
            await ann.send(json.dumps({"text": "hi bob"}))
            assert json.loads(await ann.recv()) == {"from": "ann", "text": "hi bob"}
            assert json.loads(await bob.recv()) == {"from": "ann", "text": "hi bob"}
            await bob.close(code=4002)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(base + "/ws/intruder"):
                pass
        return refused.value.response.status_code
    # Starlette's close before accept is the 403 of the ASGI spec.
    assert asyncio.run(asyncio.wait_for(go(), 30)) == 403
    assert "FASTAPI_WS_GONE bob 4002" in s.wait_log("FASTAPI_WS_GONE bob")


def test_starlette_url_and_streaming(server):
    s = server(app="starlette_app:app", workers=2)
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.get("/whoami?x=1")
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["url"] == "http://127.0.0.1:%d/whoami?x=1" % s.port
        assert data["host"] == "127.0.0.1"
        assert data["port"] == s.port
        assert data["scheme"] == "http"
        assert data["http_version"] == "1.1"

        # request.url follows the Host header.
        r = client.get("/hello/bob", headers={"host": "example.test:8123"})
        assert r.status_code == 200, r.text
        assert r.json()["url"] == "http://example.test:8123/hello/bob"
        assert r.json()["path_param"] == "bob"

        with client.stream("GET", "/stream", params={"n": 20}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain")
            assert "content-length" not in r.headers
            assert r.headers.get("transfer-encoding") == "chunked"
            text = "".join(r.iter_text())
        assert text == "".join("chunk-%d\n" % i for i in range(20))


def test_starlette_over_h2c_prior_knowledge(server):
    s = server(app="starlette_app:app", workers=2)
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        r = client.get("%s/whoami?y=2" % s.url)
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/2"
        data = r.json()
        assert data["http_version"] == "2"
        assert data["host"] == "127.0.0.1"
        assert data["port"] == s.port
        assert data["url"] == "http://127.0.0.1:%d/whoami?y=2" % s.port

        r = client.get("%s/stream?n=7" % s.url)
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        assert r.text == "".join("chunk-%d\n" % i for i in range(7))


def test_django(server):
    s = server(app="django_app:application", workers=2)
    with httpx.Client(base_url=s.url, timeout=TIMEOUT) as client:
        r = client.get("/hello/world", params={"q": "z"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "hello": "world", "method": "GET", "host": "127.0.0.1:%d" % s.port, "secure": False, "q": "z",
        }

        r = client.post("/echo", content=b"d" * 3000)
        assert r.status_code == 200, r.text
        assert r.json() == {"len": 3000, "body": "d" * 3000}

        r = client.get("/missing")
        assert r.status_code == 404
