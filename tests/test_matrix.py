"""The wheels on every CPython this machine has: pyenv's 3.10-3.13 and Debian's python3.

For each interpreter: a fresh venv, `pip install` of the command's wheel, the worker wheel
for that version and FastAPI (the package index gives FastAPI only: the genro wheels are
installed by file), then a two-worker server on a FastAPI app with lifespan state, asked
over HTTP/1.1, HTTP/2 (h2c) and a WebSocket, reloaded once with SIGHUP, and stopped. An
interpreter the machine lacks is skipped with a note in the summary, never passed."""

import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
from websockets.sync.client import connect

from conftest import Server, clean_env, run_ok, wait_for, wheels_for


def pyenv_root():
    try:
        return subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))


def pyenv_python(minor):
    # Not a free-threaded build (3.13.0t): its wheel is another one (cp313t).
    found = sorted((p for p in pathlib.Path(pyenv_root()).glob("versions/3.%d.*/bin/python3.%d" % (minor, minor))
                    if not p.parent.parent.name.endswith("t")),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)])
    return found[-1] if found else None


INTERPRETERS = {
    "pyenv-3.10": lambda: pyenv_python(10),
    "pyenv-3.11": lambda: pyenv_python(11),
    "pyenv-3.12": lambda: pyenv_python(12),
    "pyenv-3.13": lambda: pyenv_python(13),
    "debian-python3": lambda: next((p for p in [pathlib.Path("/usr/bin/python3")] if p.exists()), None),
}

APP = textwrap.dedent('''\
    import contextlib
    import os
    import sys

    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect


    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"started_by": "lifespan in %d" % os.getpid()}


    app = FastAPI(lifespan=lifespan)


    @app.get("/")
    async def where(request: Request):
        return {"version": sys.version.split()[0], "prefix": sys.prefix, "pid": os.getpid(),
                "state": request.state.started_by, "http_version": request.scope["http_version"]}


    @app.websocket("/ws")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_text("%s from %s" % (text, sys.version.split()[0]))
        except WebSocketDisconnect:
            pass
''')


@pytest.mark.parametrize("name", sorted(INTERPRETERS))
def test_wheels_serve_fastapi_on(name, wheelhouse, tmp_path):
    python = INTERPRETERS[name]()
    if python is None:
        pytest.skip("NOTE: %s is not installed on this machine; that version was not tested" % name)
    if subprocess.run([str(python), "-m", "ensurepip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("NOTE: %s has no ensurepip (Debian: apt-get install python3-venv); not tested" % name)
    version = run_ok(python, "-c", "import sys; print(sys.version.split()[0])").stdout.strip()
    venv = tmp_path / "venv"
    run_ok(python, "-m", "venv", venv)
    command, worker = wheels_for(wheelhouse, python)
    run_ok(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           command, worker, "fastapi", env=clean_env(), timeout=600)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "matrix_app.py").write_text(APP)

    s = Server(tmp_path, app="matrix_app:app", workers=2,
               sections={"application": {"app_dir": str(app_dir)}}, binary=venv / "bin" / "genro-asgi")
    s.env = clean_env()
    s.start(timeout=120)
    try:
        assert "workers run in cpython %s at %s" % (version, venv / "bin" / "python3") in s.log, s.log
        with httpx.Client(base_url=s.url, timeout=10) as h1:
            body = h1.get("/").json()
        assert body["version"] == version and pathlib.Path(body["prefix"]) == venv, body
        assert body["state"].startswith("lifespan in ") and body["http_version"] == "1.1", body
        with httpx.Client(base_url=s.url, http1=False, http2=True, timeout=10) as h2:
            r = h2.get("/")
        assert r.http_version == "HTTP/2" and r.json()["http_version"] == "2", r.text
        with connect("ws://127.0.0.1:%d/ws" % s.port, open_timeout=10) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping from %s" % version

        before = set(s.worker_pids())
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: set(s.worker_pids()).isdisjoint(before) and len(s.worker_pids()) == 2,
                 60, "the reload to replace both workers")
        s.wait_log("reload complete", 60)
        with httpx.Client(base_url=s.url, timeout=10) as h1:
            after = h1.get("/").json()
        assert after["pid"] not in before and after["state"].startswith("lifespan in "), after
    finally:
        code = s.stop()
    assert code == 0, s.log
    assert "Traceback" not in s.log, s.log
