"""Configuration as users meet it: the INI people write for Python, TOML, env vars and
flags with their precedence, `check`, and errors that name key, source and expectation."""

import os
import re
import httpx

from conftest import APPS, run_cli

REFERENCE_INI = (APPS.parent / "data" / "reference.ini").read_text()


def test_reference_ini_loads_unchanged(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text(REFERENCE_INI)
    r = run_cli("check", "--config", str(path), "--app", "basic:app", "--set", "application.app_dir=%s" % APPS)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "[server] workers = 4" in out and "server.ini:4" in out
    assert "[watchdog] interval = 30" in out
    assert "[logging] format = %(asctime)s - %(name)s - %(levelname)s - %(message)s" in out
    assert "[errors] notify_webhook = https://..." in out
    assert "xxxxx" not in out, "secrets are masked"
    assert "[application] app = basic:app" in out and "(--app)" in out
    assert "python prefix:" in out
    assert "ok: configuration valid and app importable" in out


def test_precedence_flag_over_env_over_file(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[server]\nworkers = 2\nport = 9000\nhost = 127.0.0.1\n[application]\napp = basic:app\napp_dir = %s\n" % APPS)
    env = {"GENRO_ASGI_SERVER_WORKERS": "3", "GENRO_ASGI_SERVER_PORT": "9100"}
    r = run_cli("check", "--config", str(path), "--port", "9200", env=env)
    assert r.returncode == 0, r.stderr
    lines = {line.split("=")[0].strip(): line for line in r.stdout.splitlines() if line.startswith("[server]")}
    assert "9200" in lines["[server] port"] and "(--port)" in lines["[server] port"]
    assert "= 3" in lines["[server] workers"] and "GENRO_ASGI_SERVER_WORKERS" in lines["[server] workers"]
    assert "127.0.0.1" in lines["[server] host"] and "server.ini:4" in lines["[server] host"]
    assert "(default)" in lines["[server] backlog"]


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[server]\nport = 8000\nworkrs = 2\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert "server.ini:3" in r.stderr
    assert "workrs" in r.stderr and "did you mean server.workers" in r.stderr


def test_bad_value_names_source_and_expectation(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[server]\nport = 80a\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert "server.ini:2" in r.stderr and "port" in r.stderr and "65535" in r.stderr


def test_bad_env_var_is_named(tmp_path):
    r = run_cli("check", "--app", "basic:app", env={"GENRO_ASGI_SERVER_WORKERS": "lots"})
    assert r.returncode == 2
    assert "GENRO_ASGI_SERVER_WORKERS" in r.stderr
    r = run_cli("check", "--app", "basic:app", env={"GENRO_ASGI_SEVRER_PORT": "1"})
    assert r.returncode == 2
    assert "GENRO_ASGI_SEVRER_PORT" in r.stderr


def test_secret_not_echoed_in_errors(tmp_path):
    r = run_cli("check", "--app", "basic:app", "--set", "application.secret_kye=hunter2")
    assert r.returncode == 2
    assert "hunter2" not in r.stderr + r.stdout


def test_no_app_is_a_config_error(tmp_path):
    path = tmp_path / "server.ini"
    path.write_text("[server]\nport = 8000\n")
    r = run_cli("serve", "--config", str(path))
    assert r.returncode == 2
    assert "[application] app" in r.stderr


def test_check_reports_unimportable_app(tmp_path):
    r = run_cli("check", "--app", "broken_import:app", "--set", "application.app_dir=%s" % APPS)
    assert r.returncode == 3
    assert "this_module_does_not_exist" in r.stderr


def test_toml_config_serves(server):
    s = server(ext="toml", workers=2)
    assert httpx.get(s.url, timeout=5).text == "Hello, world!"


def test_env_override_applies_to_serve(server):
    s = server(env={"GENRO_ASGI_SERVER_ROOT_PATH": "/mounted"})
    assert httpx.get(s.url + "/scope", timeout=5).json()["root_path"] == "/mounted"


def test_access_log_and_python_log_format(server):
    s = server(sections={"logging": {"access_log": True, "format": "%(levelname)s|%(name)s|%(message)s"}})
    assert httpx.get(s.url + "/scope?x=1", timeout=5).status_code == 200
    s.wait_log('"GET /scope?x=1 HTTP/1.1" 200')
    lines = s.log.splitlines()
    assert any(line.startswith("INFO|genro_asgi.supervisor|serving ") for line in lines), s.log
    access = [line for line in lines if '"GET /scope?x=1 HTTP/1.1" 200' in line][0]
    # The default access_format is the Common Log Format.
    assert re.fullmatch(r'INFO\|genro_asgi\.access\|127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                        r'"GET /scope\?x=1 HTTP/1\.1" 200 \d+', access), access


def test_no_access_log_by_default(server):
    s = server()
    httpx.get(s.url + "/scope?x=1", timeout=5)
    s.stop()
    assert "GET /scope" not in s.log


def test_json_log_format(server):
    import json as _json
    s = server(sections={"logging": {"format": "json"}})
    s.stop()
    records = [_json.loads(line) for line in s.log.splitlines() if line.startswith("{")]
    assert any("serving" in r.get("message", "") for r in records), s.log


def test_app_name_in_process_title_and_secret_in_env(server):
    s = server(sections={"application": {"name": "shop", "secret_key": "s3cr3t"}})
    (pid,) = s.worker_pids()
    # The worker runs as `python -m genro_asgi_worker ... --title ...` (a custom argv[0]
    # would cost CPython the venv) and writes its title over its own arguments.
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        assert f.read().rstrip(b"\0") == b"genro-asgi: worker 0 [shop]"
    with open("/proc/%d/comm" % pid) as f:
        assert f.read().strip() == "genro-worker-0"
    assert "python" in os.path.basename(os.readlink("/proc/%d/exe" % pid))
    r = httpx.get(s.url + "/env?name=GENRO_ASGI_APPLICATION_SECRET_KEY", timeout=5)
    assert r.text == "s3cr3t"
    s.stop()
    assert "s3cr3t" not in s.log
