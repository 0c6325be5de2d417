"""The app runs in the user's virtualenv (VIRTUAL_ENV), not in the interpreter the binary
was built against."""

import os
import pathlib
import subprocess
import sys

import httpx
import pytest

from conftest import run_cli

APP = '''
import sys

import venvonly_pkg


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%s|%s|%s" % (venvonly_pkg.MARKER, sys.prefix, venvonly_pkg.__file__)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''


@pytest.fixture
def venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = list((venv / "lib").glob("python3.*/site-packages"))
    assert len(site) == 1, site
    pkg = site[0] / "venvonly_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('MARKER = "from-venv"\n')
    (tmp_path / "venvapp.py").write_text(APP)
    env = {"VIRTUAL_ENV": str(venv), "PATH": "%s/bin:%s" % (venv, os.environ["PATH"])}
    return venv, pkg, env


def test_app_runs_in_the_virtualenv(server, tmp_path, venv):
    venv_dir, pkg, env = venv
    # Sanity: the package is only importable inside the venv.
    assert subprocess.run([sys.executable, "-c", "import venvonly_pkg"], capture_output=True,
                          cwd="/", timeout=30).returncode != 0
    s = server(env=env, workers=1,
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    r = httpx.get(s.url + "/", timeout=10)
    assert r.status_code == 200, (r.text, s.log)
    marker, prefix, location = r.text.split("|")
    assert marker == "from-venv"
    assert pathlib.Path(prefix).resolve() == venv_dir.resolve()
    assert pathlib.Path(location).resolve() == (pkg / "__init__.py").resolve()


def test_check_reports_the_virtualenv(tmp_path, venv):
    venv_dir, _, env = venv
    config = tmp_path / "check.ini"
    config.write_text("[server]\nhost = 127.0.0.1\n[application]\napp_dir = %s\n" % tmp_path)
    result = run_cli("check", "--config", str(config), "--app", "venvapp:app", env=env, cwd=str(tmp_path),
                     timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    prefix_lines = [l for l in result.stdout.splitlines() if l.startswith("python prefix:")]
    assert len(prefix_lines) == 1, result.stdout
    prefix = prefix_lines[0].split(":", 1)[1].strip()
    assert pathlib.Path(prefix).resolve() == venv_dir.resolve(), result.stdout
    assert "venvapp:app" in result.stdout


def test_venv_first_on_path_without_virtual_env(server, tmp_path, venv):
    """A venv put on PATH without activating it (systemd units, containers) is used."""
    venv_dir, _, env = venv
    env = dict(env, VIRTUAL_ENV="")
    s = server(env=env, workers=1,
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    marker, prefix, _ = httpx.get(s.url + "/", timeout=10).text.split("|")
    assert marker == "from-venv"
    assert pathlib.Path(prefix).resolve() == venv_dir.resolve()


def test_venv_of_another_installation_is_refused_clearly(server, tmp_path):
    """A venv made from another Python installation would mix its stdlib with our
    libpython (Debian's 3.11 fails on `_socket`): refused with a message, exit 3."""
    other = pathlib.Path("/usr/bin/python3.11")
    if not other.exists() or other.resolve() == pathlib.Path(sys.executable).resolve():
        pytest.skip("no second Python 3.11 installation on this machine")
    venv = tmp_path / "foreign"
    if subprocess.run([str(other), "-m", "venv", "--without-pip", str(venv)], capture_output=True,
                      timeout=60).returncode != 0:
        pytest.skip("the second installation cannot create venvs (python3.11-venv missing)")
    s = server(start=False, env={"VIRTUAL_ENV": str(venv)})
    s.start(wait=False)
    assert s.wait_exit(30) == 3
    assert "was created from /usr/bin" in s.log and "recreate the venv" in s.log
