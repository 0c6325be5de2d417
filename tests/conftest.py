"""Harness for the end-to-end tests: start the real `genro-asgi` binary on a free port with
a config written to a temp dir, wait for its "serving" log line, and stop it with a signal.

The binary is target/debug/genro-asgi unless GENRO_ASGI_BIN names another one."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
BIN = os.environ.get("GENRO_ASGI_BIN", str(ROOT / "target" / "debug" / "genro-asgi"))


def link_worker(site_packages):
    """Makes the worker extension this suite built (scripts/test.sh: `maturin develop`)
    importable in another environment, as installing its wheel would."""
    import genro_asgi_worker
    folder = pathlib.Path(genro_asgi_worker.__file__).resolve().parent.parent
    (pathlib.Path(site_packages) / "genro_asgi_worker_dev.pth").write_text(str(folder) + "\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `genro-asgi serve` process."""

    def __init__(self, tmp_path, app="basic:app", workers=1, sections=None, env=None, ext="ini",
                 host="127.0.0.1", args=(), binary=BIN, cwd=None):
        self.tmp_path = pathlib.Path(tmp_path)
        self.port = free_port()
        self.host = host
        self.lines = []
        self.cond = threading.Condition()
        self.proc = None
        self.reader = None
        self.eof = False
        sections = {k: dict(v) for k, v in (sections or {}).items()}
        sections.setdefault("server", {})
        sections["server"].setdefault("host", host)
        sections["server"].setdefault("port", self.port)
        sections["server"].setdefault("workers", workers)
        sections["server"].setdefault("graceful_timeout", 10)
        sections["server"].setdefault("run_dir", str(self.tmp_path / "run"))
        sections.setdefault("application", {})
        sections["application"].setdefault("app", app)
        sections["application"].setdefault("app_dir", str(APPS))
        self.config = self.tmp_path / ("server." + ext)
        self.config.write_text(render(sections, ext))
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.args = list(args)
        self.binary = str(binary)
        self.cwd = str(cwd or self.tmp_path)

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        scheme = "https" if "https" in self.args else "http"
        return "%s://%s:%d" % (scheme, host, self.port)

    def start(self, wait=True, timeout=60):
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if wait:
            self.wait_log("serving ", timeout)
        return self

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace"))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    @property
    def log(self):
        with self.cond:
            return "".join(self.lines)

    def wait_log(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        exited_at = None
        with self.cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                # The output is complete once the process has exited and the reader has
                # seen EOF (or, if an orphan holds the pipe, a few seconds later).
                if self.proc.poll() is not None:
                    if exited_at is None:
                        exited_at = time.monotonic()
                    if self.eof or time.monotonic() - exited_at > 5:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.2))
        raise AssertionError("%r not seen in the log (exit %r):\n%s" % (needle, self.proc.poll(), "".join(self.lines)))

    def _drain(self):
        # The process has exited: its output is complete once the reader reaches EOF
        # (bounded, since a worker orphaned with the pipe open would hold it).
        if self.reader is not None:
            self.reader.join(10)

    def wait_exit(self, timeout=60):
        code = self.proc.wait(timeout=timeout)
        self._drain()
        return code

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._drain()
        return code

    def worker_pids(self):
        """Pids of the worker processes (children of the supervisor)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid:
                pids.append(int(entry))
        return sorted(pids)


def rss_mib(pid):
    """Resident set size of process `pid`, in MiB (from /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


class Prober:
    """A health client: one `GET path` every `period` seconds on its own keep-alive
    connection, recording each latency, while an attack runs. `p99()` in seconds; a failed
    request counts as infinitely slow."""

    def __init__(self, url, path="/", period=0.1):
        import httpx
        self.url = url + path
        self.period = period
        self.latencies = []
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=5)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self):
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                ok = self._client.get(self.url).status_code == 200
            except Exception:
                ok = False
            self.latencies.append(time.monotonic() - start if ok else float("inf"))
            self._stop.wait(self.period)

    def p99(self):
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(len(values) * 0.99))]


def recv_all(sock):
    """Reads from a socket until the peer closes it."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def render(sections, ext):
    out = []
    for name, keys in sections.items():
        out.append("[%s]" % name)
        for key, value in keys.items():
            if ext == "toml":
                if isinstance(value, bool):
                    value = "true" if value else "false"
                elif isinstance(value, str):
                    value = '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out.append("%s = %s" % (key, value))
        out.append("")
    return "\n".join(out)


@pytest.fixture
def server(tmp_path):
    """Factory: server(app=..., workers=..., sections={...}) -> started Server."""
    started = []

    def make(start=True, **kwargs):
        s = Server(tmp_path, **kwargs)
        started.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait()
        for pid in s.worker_pids() if s.proc else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def run_cli(*args, env=None, cwd=None, timeout=60, input=None):
    """Runs the binary with arguments (and `input` on its stdin); returns CompletedProcess
    (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def ctl(s, *args):
    return run_cli("ctl", "--socket", str(s.tmp_path / "run" / "control.sock"), *args, timeout=60)


def status(s):
    r = ctl(s, "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["status"]


def wait_for(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def ready_pids(s):
    return sorted(w["pid"] for w in status(s)["workers"] if w["state"] == "ready")


# The pip route: scripts/build-wheels.sh builds the wheels once per session (manylinux_2_28
# with zig, dev profile, in target/wheel; minutes from scratch, seconds when cached): the
# `genro-asgi` command's wheel and a worker wheel for every CPython it finds.
BASE_PYTHON = sys._base_executable
# Not target/wheels, where `scripts/build-wheels.sh --profile release` puts a user's own.
WHEELHOUSE = ROOT / "target" / "test-wheels"
VERSION = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)


def run_ok(*args, env=None, cwd=None, timeout=900):
    """Runs a command; asserts it succeeded."""
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


@pytest.fixture(scope="session")
def wheelhouse():
    """The folder of built wheels (scripts/build-wheels.sh)."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    run_ok("bash", ROOT / "scripts" / "build-wheels.sh", "--out", WHEELHOUSE, cwd=ROOT, env=env, timeout=3600)
    return WHEELHOUSE


def python_tag(python):
    """`cp312` for the interpreter at `python`."""
    r = run_ok(python, "-c", "import sys; print('cp%d%d%s' % (sys.version_info[:2] + (sys.abiflags,)))")
    return r.stdout.strip()


def wheels_for(wheelhouse, python):
    """The command's wheel and the worker wheel for `python`."""
    (command,) = wheelhouse.glob("genro_asgi-%s-py3-none-*.whl" % VERSION)
    tag = python_tag(python)
    workers = list(wheelhouse.glob("genro_asgi_worker-%s-%s-%s-*.whl" % (VERSION, tag, tag)))
    assert len(workers) == 1, (tag, sorted(p.name for p in wheelhouse.iterdir()))
    return command, workers[0]


@pytest.fixture(scope="session")
def wheel(wheelhouse):
    """The `genro-asgi` command's wheel."""
    return wheels_for(wheelhouse, BASE_PYTHON)[0]


@pytest.fixture(scope="session")
def venv(wheelhouse, tmp_path_factory):
    """A fresh venv with the wheels, FastAPI and an app package installed."""
    root = tmp_path_factory.mktemp("venv") / "env"
    run_ok(BASE_PYTHON, "-m", "venv", root)
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
    # By file: PyPI has an unrelated project called genro-asgi.
    run_ok(*pip, *wheels_for(wheelhouse, BASE_PYTHON), project, env=clean_env())
    return root
