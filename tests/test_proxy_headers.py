"""[server] proxy_headers / forwarded_allow_ips: X-Forwarded-For/-Proto and Forwarded
(RFC 7239) set the app's client and scheme only when the peer is a trusted proxy."""

import asyncio
import json

import httpx
from websockets.asyncio.client import connect

FORWARDED = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https"}


def scope_of(s, headers):
    r = httpx.get(s.url + "/scope", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_trusted_loopback_proxy_by_default(server):
    s = server(sections={"logging": {"access_log": True}})
    scope = scope_of(s, FORWARDED)
    # The nearest hop not trusted is the client; the proto is the client's scheme.
    assert scope["client"] == ["203.0.113.9", 0]
    assert scope["scheme"] == "https"
    line = s.wait_log("GET /scope")
    assert line.split("genro_asgi.access ", 1)[1].startswith("203.0.113.9 ")
    # RFC 7239, with an IPv6 client and a port; it wins over X-Forwarded-For.
    scope = scope_of(s, {"Forwarded": 'for="[2001:db8::17]:4711";proto=https', **FORWARDED})
    assert scope["client"] == ["2001:db8::17", 4711]
    assert scope["scheme"] == "https"
    # No headers: the peer itself.
    scope = scope_of(s, {})
    assert scope["client"][0] == "127.0.0.1" and scope["scheme"] == "http"


def test_untrusted_peers_cannot_set_them(server):
    s = server(sections={"server": {"forwarded_allow_ips": "10.0.0.0/8, fd00::/8"}})
    scope = scope_of(s, {"Forwarded": "for=198.51.100.1;proto=https", **FORWARDED})
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_proxy_headers_off(server):
    s = server(sections={"server": {"proxy_headers": False}})
    scope = scope_of(s, FORWARDED)
    assert scope["client"][0] == "127.0.0.1" and scope["scheme"] == "http"


def test_everyone_trusted_and_websocket_scheme(server):
    s = server(app="ws:app", sections={"server": {"forwarded_allow_ips": "*"}})

    async def go():
        async with connect(s.url.replace("http", "ws", 1) + "/scope",
                           additional_headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9",
                                               "X-Forwarded-Proto": "https, http"}) as ws:
            return json.loads(await ws.recv())
    scope = asyncio.run(asyncio.wait_for(go(), 30))
    # With `*` the leftmost address is the client, and its hop's proto gives wss.
    assert scope["client"] == ["198.51.100.1", 0]
    assert scope["scheme"] == "wss"


def test_invalid_allow_list_is_a_config_error(server, tmp_path):
    s = server(start=False, sections={"server": {"forwarded_allow_ips": "10.0.0.1/8"}})
    s.start(wait=False)
    assert s.wait_exit(30) == 2
    log = s.log
    assert "forwarded_allow_ips" in log and "10.0.0.1/8" in log and "CIDR" in log
