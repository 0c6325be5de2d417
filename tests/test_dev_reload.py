"""`--reload` (issue 18): the supervisor watches the app's files with inotify and replaces
the workers when one changes. Edits are made under load: every request must succeed,
before, during and after; a save that breaks the import keeps the old workers serving,
with its traceback logged once, and the next good save recovers."""

import os
import threading
import time

import httpx
import pytest

from conftest import run_cli, wait_for

APP = '''
MESSAGE = b"%s"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": MESSAGE})
'''


def write_app(folder, message, name="reloadapp.py"):
    path = folder / name
    path.write_text(APP % message.decode())
    return path


def reload_server(server, tmp_path, args=("--reload", "--reload-delay", "0.1"), workers=1,
                  sections=None, message=b"one"):
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    write_app(app_dir, message)
    sections = dict(sections or {})
    sections.setdefault("application", {})["app_dir"] = str(app_dir)
    s = server(app="reloadapp:app", workers=workers, args=list(args), sections=sections)
    s.app_dir = app_dir
    return s


class Load:
    """A client thread that sends requests one after another and records every answer."""

    def __init__(self, url):
        self.url = url
        self.bodies = []
        self.failures = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.get("/")
                    if r.status_code != 200:
                        self.failures.append(r.status_code)
                    else:
                        self.bodies.append(r.content)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)

    def last(self):
        return self.bodies[-1] if self.bodies else None


def serves(s, body):
    return httpx.get(s.url + "/", timeout=10).content == body


def test_an_edit_under_load_is_served_with_no_failed_request(server, tmp_path):
    s = reload_server(server, tmp_path, workers=2)
    s.wait_log("reload: watching")
    with Load(s.url) as load:
        wait_for(lambda: load.last() == b"one", what="the first answers")
        write_app(s.app_dir, b"two")
        s.wait_log("reloadapp.py changed")
        wait_for(lambda: load.last() == b"two", timeout=30, what="the new code served")
        s.wait_log("reload complete")
        time.sleep(0.5)
        n = len(load.bodies)
        wait_for(lambda: len(load.bodies) > n + 20, what="more answers after the reload")
    assert load.failures == []
    assert set(load.bodies) == {b"one", b"two"}
    assert set(load.bodies[n:]) == {b"two"}, "only the new workers serve once it is complete"


def test_a_broken_save_keeps_serving_and_the_next_good_save_recovers(server, tmp_path):
    s = reload_server(server, tmp_path)
    s.wait_log("reload: watching")
    with Load(s.url) as load:
        wait_for(lambda: load.last() == b"one", what="the first answers")
        path = s.app_dir / "reloadapp.py"
        path.write_text("def broken(:\n")
        s.wait_log("reload aborted", timeout=30)
        s.wait_log("SyntaxError")
        # No restart loop: nothing more happens until the next save.
        time.sleep(2)
        assert s.log.count("SyntaxError: ") == 1, s.log
        assert s.log.count("reload aborted") == 1
        n = len(load.bodies)
        wait_for(lambda: len(load.bodies) > n + 20, what="answers while the file is broken")
        assert load.last() == b"one"
        write_app(s.app_dir, b"fixed")
        wait_for(lambda: load.last() == b"fixed", timeout=30, what="the fixed code served")
    assert load.failures == []
    assert s.proc.poll() is None


def test_ignored_and_unmatched_files_do_not_reload(server, tmp_path):
    s = reload_server(server, tmp_path)
    s.wait_log("reload: watching")
    for folder in ("__pycache__", ".venv/lib", ".git"):
        (s.app_dir / folder).mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)
    (s.app_dir / "__pycache__" / "x.py").write_text("x = 1\n")
    (s.app_dir / ".venv" / "lib" / "site.py").write_text("x = 1\n")
    (s.app_dir / ".git" / "HEAD.py").write_text("x = 1\n")
    (s.app_dir / "notes.txt").write_text("not python\n")
    (s.app_dir / "reloadapp.pyc").write_bytes(b"\0")
    time.sleep(1.5)
    assert "changed" not in s.log, s.log
    # A package created after the start is watched too.
    pkg = s.app_dir / "pkg" / "sub"
    pkg.mkdir(parents=True)
    time.sleep(0.5)
    (pkg / "mod.py").write_text("x = 1\n")
    s.wait_log("mod.py changed")


def test_include_exclude_and_dirs_from_the_config_file_and_env(server, tmp_path):
    (tmp_path / "templates").mkdir()
    s = reload_server(server, tmp_path, args=(), sections={
        "reload": {"enabled": True, "dirs": str(tmp_path / "templates"),
                   "include": "*.html", "delay": 0.1},
    })
    s.wait_log("reload: watching %s" % (tmp_path / "templates"))
    write_app(s.app_dir, b"changed but not watched")
    time.sleep(1)
    assert "changed;" not in s.log
    (tmp_path / "templates" / "index.html").write_text("<p>hi</p>")
    s.wait_log("index.html changed")
    wait_for(lambda: serves(s, b"changed but not watched"), timeout=30,
             what="the reload picks up the app as it is now")
    s.stop()

    # Settings without `enabled` watch nothing.
    s = reload_server(server, tmp_path, args=(), sections={"reload": {"delay": 0.1}})
    assert "reload: watching" not in s.log


def test_env_enables_reload(server, tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    write_app(app_dir, b"one")
    s = server(app="reloadapp:app", env={"GENRO_ASGI_RELOAD_ENABLED": "1",
                                          "GENRO_ASGI_RELOAD_DELAY": "0.1"},
               sections={"application": {"app_dir": str(app_dir)}})
    s.wait_log("reload: watching")
    write_app(app_dir, b"two")
    wait_for(lambda: serves(s, b"two"), timeout=30, what="the new code served")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_watcher_is_idle_when_nothing_changes(server, tmp_path):
    s = reload_server(server, tmp_path)
    # Many directories to watch, none changing.
    for i in range(200):
        (s.app_dir / ("pkg%d" % i)).mkdir()
    s.stop()
    s = reload_server(server, tmp_path)
    line = s.wait_log("reload: watching")
    assert "201 directories, inotify" in line, line
    time.sleep(1)
    before = cpu_seconds(s.proc.pid)
    time.sleep(5)
    used = cpu_seconds(s.proc.pid) - before
    # The supervisor's own heartbeat handling is all that runs: well under 1% of a core.
    assert used < 0.05, "supervisor used %.2f s of CPU in 5 s idle" % used


def test_bad_reload_settings_are_config_errors(tmp_path):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    write_app(app_dir, b"one")
    common = ["serve", "--app", "reloadapp:app", "--set", "application.app_dir=%s" % app_dir,
              "--set", "server.port=0"]
    r = run_cli(*common, "--reload", "--reload-include", "[", timeout=30)
    assert r.returncode != 0
    assert '[reload] include = "[": not a glob pattern' in r.stderr, r.stderr
    r = run_cli(*common, "--reload", "--reload-dir", str(tmp_path / "missing"), timeout=30)
    assert r.returncode != 0
    assert "[reload] dirs: %s is not a directory" % (tmp_path / "missing") in r.stderr, r.stderr
    r = run_cli(*common, "--reload", "--reload-delay", "soon", timeout=30)
    assert r.returncode != 0
    assert '--reload-delay: [reload] delay = "soon": expected a number of seconds' in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--reload"])
def test_check_shows_the_reload_settings_and_their_source(tmp_path, flag):
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    write_app(app_dir, b"one")
    r = run_cli("check", "--app", "reloadapp:app", "--set",
                "application.app_dir=%s" % app_dir, flag, "--reload-include", "*.html",
                timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--reload" in r.stdout and "*.html" in r.stdout, r.stdout


def test_without_inotify_it_polls_and_says_so(server, tmp_path):
    """Every inotify instance of this user is taken (`fs.inotify.max_user_instances`):
    the watcher falls back to polling once a second, says so, and still reloads."""
    import ctypes
    import resource

    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        limit = int(f.read())
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limit > 1024 or soft < limit + 64:
        pytest.skip("max_user_instances %d cannot be exhausted from one process here" % limit)
    libc = ctypes.CDLL(None, use_errno=True)
    taken = []
    try:
        while True:
            fd = libc.inotify_init1(os.O_CLOEXEC)
            if fd < 0:
                assert ctypes.get_errno() == 24, os.strerror(ctypes.get_errno())
                break
            taken.append(fd)
            assert len(taken) <= limit
        s = reload_server(server, tmp_path)
        line = s.wait_log("reload: watching")
    finally:
        for fd in taken:
            os.close(fd)
    assert "polling" in line, line
    s.wait_log("inotify cannot be used")
    write_app(s.app_dir, b"polled")
    wait_for(lambda: serves(s, b"polled"), timeout=30, what="the change found by polling")
    # A second save within the same second is seen too (the stamp has nanoseconds).
    write_app(s.app_dir, b"polled again")
    wait_for(lambda: serves(s, b"polled again"), timeout=30, what="the second change")


def test_a_package_moved_in_reloads_and_reads_of_other_files_do_not_hold_it(server, tmp_path):
    """A directory moved into the tree (a checkout, `mv pkg .`) brings its files: they
    count as changes though no event named them. Opening and reading other files in the
    watched tree all the while (an app serving templates) neither delays nor triggers
    reloads."""
    s = reload_server(server, tmp_path)
    s.wait_log("reload: watching")
    template = s.app_dir / "page.html"
    template.write_text("<p>static</p>")
    stop = threading.Event()

    def read_forever():
        while not stop.is_set():
            template.read_text()

    reader = threading.Thread(target=read_forever, daemon=True)
    reader.start()
    try:
        time.sleep(1)
        assert "changed" not in s.log, "reads are not changes"
        outside = tmp_path / "elsewhere" / "newpkg"
        outside.mkdir(parents=True)
        (outside / "__init__.py").write_text("")
        (outside / "models.py").write_text("x = 1\n")
        os.rename(outside, s.app_dir / "newpkg")
        line = s.wait_log("changed; replacing the workers", timeout=10)
        assert "newpkg" in line, line
        s.wait_log("reload complete")
    finally:
        stop.set()
        reader.join(5)
