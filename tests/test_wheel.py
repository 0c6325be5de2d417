"""The pip route (docs/DEPLOYMENT.md, "Installing"): the manylinux wheels built by
scripts/build-wheels.sh (the command's py3-none wheel, one worker wheel per CPython),
installed into a fresh virtualenv together with a FastAPI app, serving requests with the
`genro-asgi` command pip put into the venv (fixtures `wheelhouse` and `venv` in
conftest.py). tests/test_matrix.py runs the same wheels on every CPython found."""

import json
import pathlib
import re
import shutil
import tempfile
import zipfile

import httpx

from conftest import ROOT, VERSION, Server, clean_env, run_ok as run


def auditwheel_show(wheel):
    tools = ROOT / "target" / "wheel-tools" / "bin" / "auditwheel"
    auditwheel = str(tools) if tools.exists() else shutil.which("auditwheel")
    assert auditwheel, "auditwheel is not installed (scripts/build-wheels.sh installs it)"
    return run(auditwheel, "show", wheel).stdout


def test_command_wheel_is_manylinux_and_python_free(wheel):
    # One wheel for every Python: the command links no libpython.
    assert re.fullmatch(r"genro_asgi-%s-py3-none-manylinux_2_28_x86_64\.whl" % VERSION, wheel.name), wheel.name
    shown = auditwheel_show(wheel)
    assert 'consistent with the following platform tag: "manylinux_2_28_x86_64"' in " ".join(shown.split()), shown
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
        (binary,) = [n for n in z.namelist() if n.endswith("/scripts/genro-asgi")]
        exe = pathlib.Path(tempfile.mkdtemp()) / "genro-asgi"
        exe.write_bytes(z.read(binary))
    # The worker wheel at exactly this version: the control protocol must match.
    assert requires == ["Requires-Dist: genro-asgi-worker==%s" % VERSION], requires
    assert "libpython" not in run("readelf", "-d", exe).stdout


def test_worker_wheels_are_manylinux_per_cpython(wheelhouse):
    workers = sorted(wheelhouse.glob("genro_asgi_worker-*.whl"))
    assert workers, sorted(p.name for p in wheelhouse.iterdir())
    for wheel in workers:
        m = re.fullmatch(r"genro_asgi_worker-%s-(cp3\d+)-(cp3\d+)-manylinux_2_28_x86_64\.whl" % VERSION, wheel.name)
        assert m and m.group(1) == m.group(2), wheel.name
        shown = " ".join(auditwheel_show(wheel).split())
        assert 'consistent with the following platform tag: "manylinux_2_28_x86_64"' in shown, shown
        with zipfile.ZipFile(wheel) as z:
            (ext,) = [n for n in z.namelist() if n.startswith("genro_asgi_worker/_native.")]
            so = pathlib.Path(tempfile.mkdtemp()) / "native.so"
            so.write_bytes(z.read(ext))
            assert "genro_asgi_worker/__main__.py" in z.namelist()
            assert "genro_asgi/_executors.py" in z.namelist()
        # An extension module: no libpython of its own, so it loads into any python of its
        # version, with or without a shared libpython.
        assert "libpython" not in run("readelf", "-d", so).stdout, wheel.name


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
    assert "workers' python: %s" % (venv / "bin" / "python3") in r.stdout, r.stdout
    assert "chosen as: the virtualenv genro-asgi is installed in" in r.stdout, r.stdout
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
