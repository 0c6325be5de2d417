"""Which Python the workers run in: the user's virtualenv (VIRTUAL_ENV, or a venv first on
PATH), any installation that can import the worker extension (Debian's python as well as
pyenv's), `[application] python` / `--python`, and a clear configuration error naming
what was tried when no interpreter can run a worker."""

import os
import pathlib
import signal
import subprocess
import sys
import threading

import httpx
import pytest

from conftest import ctl, link_worker, run_cli, wait_for

APP = '''
import sys

import venvonly_pkg


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("%s|%s|%s|%s" % (venvonly_pkg.MARKER, sys.prefix, venvonly_pkg.__file__,
                             sys.version.split()[0])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''

DEBIAN_PYTHON = pathlib.Path("/usr/bin/python3")


def make_venv(tmp_path, base=sys.executable, name="venv", worker=True):
    """A venv (no pip) with a package only it has and, unless `worker` is false, the
    worker extension this suite built."""
    venv = tmp_path / name
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    (site,) = (venv / "lib").glob("python3.*/site-packages")
    pkg = site / "venvonly_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('MARKER = "from-%s"\n' % name)
    if worker:
        link_worker(site)
    (tmp_path / "venvapp.py").write_text(APP)
    return venv, pkg


@pytest.fixture
def venv(tmp_path):
    venv, pkg = make_venv(tmp_path)
    env = {"VIRTUAL_ENV": str(venv), "PATH": "%s/bin:%s" % (venv, os.environ["PATH"])}
    return venv, pkg, env


def answer(s):
    r = httpx.get(s.url + "/", timeout=10)
    assert r.status_code == 200, (r.text, s.log)
    return r.text.split("|")


def test_app_runs_in_the_virtualenv(server, tmp_path, venv):
    venv_dir, pkg, env = venv
    # Sanity: the package is only importable inside the venv.
    assert subprocess.run([sys.executable, "-c", "import venvonly_pkg"], capture_output=True,
                          cwd="/", timeout=30).returncode != 0
    s = server(env=env, workers=1,
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    marker, prefix, location, _ = answer(s)
    assert marker == "from-venv"
    assert pathlib.Path(prefix).resolve() == venv_dir.resolve()
    assert pathlib.Path(location).resolve() == (pkg / "__init__.py").resolve()
    assert "workers run in cpython" in s.log and "VIRTUAL_ENV=%s" % venv_dir in s.log, s.log


def test_check_reports_the_virtualenv(tmp_path, venv):
    venv_dir, _, env = venv
    config = tmp_path / "check.ini"
    config.write_text("[server]\nhost = 127.0.0.1\n[application]\napp_dir = %s\n" % tmp_path)
    result = run_cli("check", "--config", str(config), "--app", "venvapp:app", env=env, cwd=str(tmp_path),
                     timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = dict(l.split(": ", 1) for l in result.stdout.splitlines() if l.startswith(("python", "workers'")))
    assert pathlib.Path(lines["python prefix"]).resolve() == venv_dir.resolve(), result.stdout
    assert lines["python"].startswith("%d.%d." % sys.version_info[:2]), result.stdout
    assert lines["workers' python"] == str(venv_dir / "bin" / "python3"), result.stdout
    assert "site-packages" in lines["python sys.path"], result.stdout
    assert "chosen as: VIRTUAL_ENV=%s" % venv_dir in result.stdout
    assert "venvapp:app" in result.stdout


def test_venv_first_on_path_without_virtual_env(server, tmp_path, venv):
    """A venv put on PATH without activating it (systemd units, containers) is used."""
    venv_dir, _, env = venv
    env = dict(env, VIRTUAL_ENV="")
    s = server(env=env, workers=1,
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    marker, prefix, _, _ = answer(s)
    assert marker == "from-venv"
    assert pathlib.Path(prefix).resolve() == venv_dir.resolve()


def test_venv_of_another_installation_serves(server, tmp_path):
    """Regression: the embedding build refused a venv made from another Python installation
    (its stdlib did not match the linked libpython). An extension module loads into any
    python of its ABI: Debian's 3.11 serves with the cp311 extension built from pyenv's."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no Debian python3 on this machine")
    if pathlib.Path(sys._base_executable).resolve() == DEBIAN_PYTHON.resolve():
        pytest.skip("the suite itself runs on Debian's python: not another installation")
    version = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    if version != "%d.%d" % sys.version_info[:2]:
        pytest.skip("Debian's python is %s, the suite's extension is for %d.%d" % ((version,) + sys.version_info[:2]))
    if subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--help"], capture_output=True).returncode != 0:
        pytest.skip("Debian's python cannot create venvs (python3-venv missing)")
    venv, _ = make_venv(tmp_path, base=DEBIAN_PYTHON, name="debian")
    s = server(env={"VIRTUAL_ENV": str(venv)},
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    marker, prefix, _, full_version = answer(s)
    assert marker == "from-debian"
    assert pathlib.Path(prefix).resolve() == venv.resolve()
    debian_version = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version.split()[0])"],
                                    capture_output=True, text=True).stdout.strip()
    assert full_version == debian_version


def test_configured_python_wins_over_virtual_env(server, tmp_path, venv):
    """[application] python (here as --python, and as its env var) beats VIRTUAL_ENV."""
    _, _, env = venv
    other, _ = make_venv(tmp_path, name="other")
    s = server(env=env, args=["--python", str(other / "bin" / "python")],
               sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    assert answer(s)[0] == "from-other"
    assert "[application] python, from --python" in s.log, s.log
    s.stop()
    s2 = server(env=dict(env, GENRO_ASGI_APPLICATION_PYTHON=str(other / "bin" / "python3")),
                sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    assert answer(s2)[0] == "from-other"


def config_error(tmp_path, env, *args):
    config = tmp_path / "bad.ini"
    config.write_text("[server]\nhost = 127.0.0.1\nport = 0\n[application]\napp = venvapp:app\napp_dir = %s\n" % tmp_path)
    r = run_cli("serve", "--config", str(config), *args, env=env, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    c = run_cli("check", "--config", str(config), *args, env=env, cwd=str(tmp_path), timeout=60)
    assert c.returncode == 2, (c.returncode, c.stdout, c.stderr)
    return r.stderr


def test_interpreter_without_the_worker_is_a_config_error(tmp_path):
    bare, _ = make_venv(tmp_path, name="bare", worker=False)
    err = config_error(tmp_path, {"VIRTUAL_ENV": str(bare)})
    assert "configuration error" in err and "VIRTUAL_ENV=%s" % bare in err, err
    assert "cannot run a worker" in err and "No module named genro_asgi_worker" in err, err
    assert "pip install genro-asgi-worker==" in err, err


def test_missing_configured_python_names_key_and_source(tmp_path):
    err = config_error(tmp_path, {"GENRO_ASGI_APPLICATION_PYTHON": "/nowhere/bin/python3"})
    assert "[application] python = /nowhere/bin/python3" in err, err
    assert "environment variable GENRO_ASGI_APPLICATION_PYTHON" in err and "no such file" in err, err
    err = config_error(tmp_path, {}, "--python", "python3.77")
    assert "from --python" in err and "not found on PATH" in err, err


def test_python_older_than_3_10_is_refused_clearly(tmp_path):
    """A python that cannot run the worker module is asked its version: an old one gets
    "needs CPython 3.10 or newer" rather than "install the worker". The old python is a
    real pyenv one where the machine has it, else a stand-in script that answers as
    Python 3.9 would (`-m genro_asgi_worker` fails, the version query says 3.9.18)."""
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() if \
        subprocess.run(["which", "pyenv"], capture_output=True).returncode == 0 else ""
    old = sorted(pathlib.Path(root or "/nonexistent").glob("versions/3.[6-9].*/bin/python3"))
    if old:
        python = old[-1]
    else:
        python = tmp_path / "python3.9"
        python.write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo 3.9.18; exit 0; fi\n'
                          'echo "No module named genro_asgi_worker" >&2; exit 1\n')
        python.chmod(0o755)
    err = config_error(tmp_path, {}, "--python", str(python))
    assert "workers need CPython 3.10 or newer" in err and str(python) in err, err


def test_nothing_from_the_current_directory(server, tmp_path, venv):
    """`python -m` puts the current directory first on sys.path; the worker takes it off,
    so a module in the directory `genro-asgi serve` was started from is not imported (the
    app comes from app_dir, as with the embedding build)."""
    _, _, env = venv
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "venvonly_pkg.py").write_text('MARKER = "from-the-cwd"\n')
    app_dir = tmp_path / "apps"
    app_dir.mkdir()
    (app_dir / "venvapp.py").write_text(APP)
    s = server(env=env, cwd=cwd, sections={"application": {"app": "venvapp:app", "app_dir": str(app_dir)}})
    assert answer(s)[0] == "from-venv"


def test_sigint_to_a_worker_drains_without_keyboard_interrupt(server):
    """Python's SIGINT handler is taken off before tokio installs its own: a SIGINT sent to
    the worker itself drains it (the request in flight completes) and no
    KeyboardInterrupt reaches the app."""
    s = server(app="basic:app")
    (pid,) = s.worker_pids()
    result = {}

    def slow():
        result["r"] = httpx.get(s.url + "/sleep?s=1.5", timeout=30)

    t = threading.Thread(target=slow)
    t.start()
    wait_for(lambda: any(r["path"] == "/sleep" for r in requests_in_flight(s)), what="the request in flight")
    os.kill(pid, signal.SIGINT)
    t.join(30)
    assert result["r"].status_code == 200, s.log
    s.wait_log("draining", 10)
    assert "KeyboardInterrupt" not in s.log, s.log


def requests_in_flight(s):
    import json
    r = ctl(s, "requests", "--json")
    assert r.returncode == 0, r.stderr
    return [req for worker in json.loads(r.stdout).get("workers", []) for req in worker.get("requests", [])]


def test_reload_switches_interpreter_or_keeps_the_fleet(server, tmp_path, venv):
    """A reload chooses and probes the interpreter again: one that cannot run a worker
    aborts the reload (the running workers keep serving, `ctl reload` says why); a good
    one replaces the workers, which then run in it."""
    _, _, env = venv
    s = server(env=env, sections={"application": {"app": "venvapp:app", "app_dir": str(tmp_path)}})
    assert answer(s)[0] == "from-venv"
    before = s.worker_pids()
    text = s.config.read_text()
    s.config.write_text(text.replace("[application]\n", "[application]\npython = /nowhere/bin/python3\n"))
    r = ctl(s, "reload")
    assert r.returncode != 0 and "[application] python = /nowhere/bin/python3" in r.stdout + r.stderr, (r.stdout, r.stderr)
    assert "the running workers keep serving" in r.stdout + r.stderr
    assert s.worker_pids() == before and answer(s)[0] == "from-venv"
    other, _ = make_venv(tmp_path, name="other")
    s.config.write_text(text.replace("[application]\n", "[application]\npython = %s\n" % (other / "bin" / "python3")))
    r = ctl(s, "reload")
    assert r.returncode == 0, (r.stdout, r.stderr, s.log)
    s.wait_log("workers now run in cpython", 30)
    wait_for(lambda: answer(s)[0] == "from-other", 30, "a worker of the new interpreter")
