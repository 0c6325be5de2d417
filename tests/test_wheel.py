"""The pip route (docs/DEPLOYMENT.md, "Installing with pip"): build the wheel with maturin,
install it into a fresh virtualenv together with a FastAPI app, and serve requests with
the `genro-asgi` command the wheel put into the venv.

The wheel is built once per session (a dev-profile build in target/wheel, about two
minutes on two cores from scratch, seconds when cached). The venv is made from the
interpreter this Python was made from (`sys._base_executable`), as the wheel embeds it."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest

from conftest import ROOT, Server

BASE_PYTHON = sys._base_executable


def run(*args, env=None, cwd=None, timeout=900):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=timeout)
    assert r.returncode == 0, "%s failed (%d):\n%s\n%s" % (args, r.returncode, r.stdout, r.stderr)
    return r


def clean_env(**extra):
    """An environment with no virtualenv active and no Python on PATH but the system's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYENV", "PYTHON", "VIRTUAL_ENV", "GENRO_ASGI_"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheelhouse")
    maturin = shutil.which("maturin") or pytest.fail("maturin is not installed (tests/requirements.txt)")
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / "wheel"))
    env.pop("VIRTUAL_ENV", None)
    run(maturin, "build", "--locked", "-i", BASE_PYTHON, "--out", out, cwd=ROOT, env=env, timeout=1800)
    (built,) = out.glob("genro_asgi-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel, FastAPI and an app package installed."""
    root = tmp_path_factory.mktemp("venv") / "env"
    run(BASE_PYTHON, "-m", "venv", root)
    pip = [root / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    project = root.parent / "hello-app"
    (project / "hello_app").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "hello-app"
        version = "1.0"
        dependencies = ["fastapi"]
    """))
    (project / "hello_app" / "__init__.py").write_text(textwrap.dedent("""\
        import os
        import sys

        import fastapi
        import pydantic

        app = fastapi.FastAPI()


        class Item(pydantic.BaseModel):
            name: str
            qty: int


        @app.get("/")
        async def where():
            return {"prefix": sys.prefix, "fastapi": fastapi.__file__,
                    "executable": sys.executable, "pid": os.getpid()}


        @app.post("/items")
        async def create(item: Item):
            return {"name": item.name, "total": item.qty * 2}
    """))
    run(*pip, wheel, project, env=clean_env())
    return root


def test_wheel_is_tagged_for_the_build_interpreter(wheel):
    tag = "cp%d%d" % sys.version_info[:2]
    assert wheel.name.startswith("genro_asgi-")
    assert "-%s-%s-linux_" % (tag, tag) in wheel.name, wheel.name


def test_pip_install_puts_the_command_on_the_venvs_path(venv):
    found = shutil.which("genro-asgi", path=str(venv / "bin"))
    assert found == str(venv / "bin" / "genro-asgi")
    # Not on PATH outside the venv (the system has no genro-asgi of its own).
    assert shutil.which("genro-asgi", path=clean_env()["PATH"]) is None
    activated = clean_env(VIRTUAL_ENV=str(venv), PATH="%s:%s" % (venv / "bin", clean_env()["PATH"]))
    r = run("bash", "-c", "command -v genro-asgi && genro-asgi --version", env=activated)
    assert r.stdout.splitlines()[0] == found
    assert "genro-asgi" in r.stdout.splitlines()[1]


def test_check_uses_the_venv_it_is_installed_in(venv, tmp_path):
    # Run by absolute path with no venv active and none on PATH: the command still serves
    # the venv it was installed into, as a console script's shebang would.
    r = run(venv / "bin" / "genro-asgi", "check", "--app", "hello_app:app",
            "--set", "application.app_dir=%s" % tmp_path, env=clean_env(), cwd=tmp_path)
    assert "python executable: %s" % (venv / "bin" / "python3") in r.stdout, r.stdout
    assert "python prefix: %s" % venv in r.stdout, r.stdout
    assert "ok: configuration valid and app importable" in r.stdout


def test_serves_a_fastapi_app_installed_in_the_venv(venv, tmp_path):
    # The app comes from the venv's site-packages: app_dir is an empty folder.
    empty = tmp_path / "empty"
    empty.mkdir()
    s = Server(tmp_path, app="hello_app:app", workers=2,
               sections={"application": {"app_dir": str(empty)}},
               binary=venv / "bin" / "genro-asgi")
    s.env = clean_env()
    s.start()
    try:
        pids = set()
        with httpx.Client(base_url=s.url, timeout=10) as client:
            for _ in range(20):
                r = client.get("/", headers={"connection": "close"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert pathlib.Path(body["prefix"]) == venv, body
                assert pathlib.Path(body["fastapi"]).is_relative_to(venv), body
                pids.add(body["pid"])
            r = client.post("/items", json={"name": "bolt", "qty": 21})
            assert r.status_code == 200 and r.json() == {"name": "bolt", "total": 42}
            r = client.post("/items", content=json.dumps({"name": "bolt"}),
                            headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
        assert pids <= set(s.worker_pids()), (pids, s.worker_pids())
    finally:
        assert s.stop() == 0, s.log
