"""The pip route (docs/DEPLOYMENT.md, "Installing with pip"): build the wheel with maturin,
install it into a fresh virtualenv together with a FastAPI app, and serve requests with
the `genro-asgi` command the wheel put into the venv (fixtures `wheel` and `venv` in
conftest.py)."""

import json
import pathlib
import shutil
import sys

import httpx

from conftest import Server, clean_env, run_ok as run


def test_wheel_is_tagged_for_the_build_interpreter(wheel):
    tag = "cp%d%d" % sys.version_info[:2]
    assert wheel.name.startswith("genro_asgi-")
    assert "-%s-%s-linux_" % (tag, tag) in wheel.name, wheel.name


def test_pip_install_puts_the_command_on_the_venvs_path(venv):
    found = shutil.which("genro-asgi", path=str(venv / "bin"))
    assert found == str(venv / "bin" / "genro-asgi")
    # Activated, the venv's command comes first (whatever else the system has).
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
