"""`[server] workers = auto`: the real binary counts the CPUs its cgroup quota and affinity
allow, read from a fake tree (GENRO_ASGI_INTERNAL_CPU_ROOT) so the tests do not depend on the
machine's own limits; `check` and the start log say what it chose, the fleet really has that
many workers, and a reload counts again."""

import os
import signal

import pytest

from conftest import APPS, run_cli, status, wait_for

CPU_ROOT = "GENRO_ASGI_INTERNAL_CPU_ROOT"
MOUNTINFO = "25 30 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
AFFINITY = len(os.sched_getaffinity(0))


def fake_root(tmp_path, service_max, slice_max="max 100000"):
    """A cgroup v2 tree: the process in genro.slice/web.service, with these cpu.max files."""
    root = tmp_path / "cpu-root"
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text("0::/genro.slice/web.service\n")
    (root / "proc" / "self" / "mountinfo").write_text(MOUNTINFO)
    service = root / "sys" / "fs" / "cgroup" / "genro.slice" / "web.service"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text(service_max + "\n")
    (service.parent / "cpu.max").write_text(slice_max + "\n")
    return root, service


def worker_line(out):
    return next(line for line in out.splitlines() if line.startswith("[server] workers = auto: ") and "(" in line
                and "cpu.max" in line)


def test_check_says_what_auto_chose_and_why(tmp_path):
    root, service = fake_root(tmp_path, "400000 100000", slice_max="150000 100000")
    path = tmp_path / "server.ini"
    path.write_text("[server]\nworkers = auto\n[application]\napp = basic:app\napp_dir = %s\n" % APPS)
    r = run_cli("check", "--config", str(path), env={CPU_ROOT: str(root)})
    assert r.returncode == 0, r.stderr
    # The parent's 1.5 CPUs beat the service's 4, and round up to 2 (at most the affinity).
    want = min(2, AFFINITY)
    line = worker_line(r.stdout)
    assert line.startswith("[server] workers = auto: %d (" % want), line
    assert "cgroup v2 cpu.max 150000/100000 (1.50 CPUs, rounded up) at %s;" % service.parent in line, line
    assert "affinity %d CPU" % AFFINITY in line, line
    # The table line shows the choice and its source.
    assert any(l.startswith("[server] workers = auto: %d " % want) and "server.ini:2" in l for l in r.stdout.splitlines())


def test_check_quota_below_the_host(tmp_path):
    # Half a CPU: one worker whatever the host has (the fake tree, not the host, decides).
    root, service = fake_root(tmp_path, "50000 100000")
    r = run_cli("check", "--app", "basic:app", "--set", "application.app_dir=%s" % APPS,
                env={CPU_ROOT: str(root), "GENRO_ASGI_SERVER_WORKERS": "auto"})
    assert r.returncode == 0, r.stderr
    line = worker_line(r.stdout)
    assert line.startswith("[server] workers = auto: 1 (cgroup v2 cpu.max 50000/100000 (0.50 CPUs, rounded up) at %s;"
                           % service), line


def test_odd_cgroup_files_fall_back_to_affinity(tmp_path):
    root, service = fake_root(tmp_path, "garbage")
    r = run_cli("check", "--app", "basic:app", "--set", "application.app_dir=%s" % APPS, "--workers", "auto",
                env={CPU_ROOT: str(root)})
    assert r.returncode == 0, r.stderr
    line = worker_line(r.stdout)
    assert line.startswith("[server] workers = auto: %d (" % AFFINITY), line
    assert 'cpu.max at %s: unexpected content "garbage", ignored' % service in line, line


def test_bad_workers_value_is_a_config_error(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[server]\nworkers = automatic\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert ('server.ini:2: [server] workers = "automatic": expected an integer between 1 and 512, or auto'
            in r.stderr), r.stderr


def ready_count(s):
    workers = status(s)["workers"]
    return len(workers) if all(w["state"] == "ready" for w in workers) else -1


def test_serve_starts_the_auto_count_and_reload_counts_again(server, tmp_path):
    if AFFINITY < 2:
        pytest.skip("needs 2 CPUs in the affinity mask")
    root, service = fake_root(tmp_path, "200000 100000")
    s = server(workers="auto", env={CPU_ROOT: str(root)})
    line = s.wait_log("starting ")
    assert "starting 2 worker(s) (auto: cgroup v2 cpu.max 200000/100000 at %s;" % service in line, line
    wait_for(lambda: ready_count(s) == 2, what="2 ready workers")
    assert len(s.worker_pids()) == 2
    # The quota shrinks to one CPU; a reload counts again and the fleet follows.
    (service / "cpu.max").write_text("100000 100000\n")
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("[server] workers = auto: 1 (cgroup v2 cpu.max 100000/100000 at %s;" % service)
    wait_for(lambda: ready_count(s) == 1, timeout=60, what="1 ready worker after the reload")
    assert s.stop() == 0
