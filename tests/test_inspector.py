"""The request inspector (issue 18): `/inspector` on the metrics listener, its data behind
a bearer token, and the page itself checked in headless Chromium: the fleet's workers, a
slow request (whose path is hostile markup, shown as text) and an open WebSocket."""

import html.parser
import shutil
import subprocess
import tempfile
import socket

import httpx
import pytest
from websockets.sync.client import connect

from conftest import ROOT, free_port, run_cli, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "s3cret-inspector-token"
# Markup a client can put in a request target (`<` and `>` are refused with 400): quotes,
# and an entity that innerHTML would turn into a `<img>` tag's text.
HOSTILE = "/slow/\"onmouseover='document.title=1'&lt;img&gt;"


def inspector_server(server, token=TOKEN, workers=2):
    port = free_port()
    inspector = {"enabled": True}
    if token:
        inspector["token"] = token
    s = server(app="inspector_app:app", workers=workers, sections={
        "metrics": {"enabled": True, "export_port": port}, "inspector": inspector,
        # The slow request is flagged by the watchdog after a second.
        "watchdog": {"interval": 0.2, "timeout": 1, "critical": 300}})
    s.admin = "http://127.0.0.1:%d" % port
    return s


def data(s, token=TOKEN):
    headers = {"Authorization": "Bearer " + token} if token else {}
    return httpx.get(s.admin + "/inspector/data", headers=headers, timeout=10)


class Busy:
    """A slow request to a hostile path and an open WebSocket, held while inside."""

    def __init__(self, s):
        self.s = s

    def __enter__(self):
        # Raw, so the target reaches the server as it is written.
        self.slow = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        self.slow.sendall(b"GET %s?s=30&pool=thread HTTP/1.1\r\nHost: x\r\n\r\n" % HOSTILE.encode())
        self.opened = connect("ws://127.0.0.1:%d/chat?room=1" % self.s.port)
        self.ws = self.opened.__enter__()
        self.ws.send("hi")
        assert self.ws.recv(timeout=10) == "hi"
        return self

    def __exit__(self, *exc):
        self.opened.__exit__(None, None, None)
        self.slow.close()


def listed(s):
    body = data(s).json()
    requests = [r for w in body["workers"] for r in w.get("requests", [])]
    return body, requests


def test_the_data_needs_the_token_and_lists_requests_websockets_and_workers(server):
    s = inspector_server(server)
    assert data(s, token=None).status_code == 401
    wrong = data(s, token="s3cret-inspector-tokem")
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    with Busy(s):
        def both():
            _, requests = listed(s)
            protocols = {r["protocol"] for r in requests}
            return {"http1", "websocket"} <= protocols
        wait_for(both, what="the slow request and the WebSocket listed")
        body, requests = listed(s)
        tasks = [t for w in body["workers"] for t in w.get("executor", [])]
    assert body["fleet"]["phase"] == "serving"
    assert sorted(w["slot"] for w in body["fleet"]["workers"]) == [0, 1]
    slow = [r for r in requests if r["protocol"] == "http1"][0]
    assert slow["path"] == HOSTILE and slow["method"] == "GET" and slow["age"] > 0
    ws = [r for r in requests if r["protocol"] == "websocket"][0]
    assert ws["path"] == "/chat"
    (task,) = tasks
    assert (task["pool"], task["function"], task["state"]) == ("thread", "time.sleep", "running"), task
    assert task["request_id"] == slow["request_id"], "the work names the request that asked for it"
    page = httpx.get(s.admin + "/inspector", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert TOKEN not in page.text, "the page holds no secret and no data"
    for asset in ("/inspector/app.js", "/inspector/app.css"):
        assert httpx.get(s.admin + asset, timeout=10).status_code == 200
    assert httpx.post(s.admin + "/inspector/data", timeout=10).status_code == 405


def test_without_a_token_the_data_is_open_and_when_off_there_is_no_page(server):
    s = inspector_server(server, token=None, workers=1)
    assert data(s, token=None).status_code == 200
    s.stop()
    port = free_port()
    s = server(app="inspector_app:app", sections={"metrics": {"enabled": True, "export_port": port}})
    assert httpx.get("http://127.0.0.1:%d/inspector" % port, timeout=10).status_code == 404


def test_bad_inspector_settings_are_config_errors():
    r = run_cli("serve", "--app", "inspector_app:app", "--set", "inspector.enabled=true", timeout=30)
    assert r.returncode != 0
    assert "[inspector] enabled needs [metrics] enabled = true" in r.stderr, r.stderr
    r = run_cli("serve", "--app", "inspector_app:app", "--set", "inspector.enabled=true",
                "--set", "metrics.enabled=true", "--set", "metrics.endpoint=/inspector/data",
                timeout=30)
    assert r.returncode != 0
    assert "collides with the inspector" in r.stderr, r.stderr


class Dom(html.parser.HTMLParser):
    """Table rows (their cells' text) by table id, every element's tag, the title."""

    def __init__(self):
        super().__init__()
        self.tables = {}
        self.tags = []
        self.texts = {}
        self._table = None
        self._row = None
        self._cell = None
        self._id = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        self._id = attrs.get("id")

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, text):
        if self._cell is not None:
            self._cell += text
        if self._id:
            self.texts[self._id] = self.texts.get(self._id, "") + text


def chromium(*args):
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + profile, "--virtual-time-budget=4000", *args,
        ], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_chromium_renders_the_live_page(server):
    s = inspector_server(server)
    url = s.admin + "/inspector#token=" + TOKEN
    with Busy(s):
        wait_for(lambda: any(r.get("stuck") for r in listed(s)[1]), what="the watchdog's flag")
        r = chromium("--dump-dom", url)
        artefacts = ROOT / "target" / "test-artefacts"
        artefacts.mkdir(parents=True, exist_ok=True)
        shot = artefacts / "inspector.png"
        chromium("--window-size=1400,800", "--screenshot=%s" % shot, url)
    dom = Dom()
    dom.feed(r.stdout)
    assert 'data-loaded="true"' in r.stdout, (r.stdout[-3000:], r.stderr[-2000:])
    assert "serving" in dom.texts.get("fleet", ""), dom.texts
    workers = dom.tables["workers"][:]
    assert sorted(row[0] for row in workers) == ["0", "1"], workers
    (request,) = dom.tables["requests"]
    assert request[6] == HOSTILE, request
    assert request[4] == "http1" and request[5] == "GET", request
    assert request[3] == "warning", "the watchdog's level"
    assert dom.tags.count("img") == 0, "the hostile path stayed text"
    assert r.stdout.split("<title>")[1].startswith("genro-asgi inspector</title>")
    (socket,) = dom.tables["websockets"]
    assert socket[3] == "/chat", socket
    (task,) = dom.tables["executor"]
    assert task[1:3] == ["thread", "running"] and task[4] == "time.sleep", task
    assert task[5] == request[0], "the request that asked for the work"
    assert TOKEN not in r.stdout, "the token left the address bar"
    assert shot.stat().st_size > 10_000, "a screenshot of the page"
