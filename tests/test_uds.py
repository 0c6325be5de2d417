"""`[server] uds`: the workers serve HTTP/1.1 and h2c on one Unix socket, directly and
behind a real nginx (`proxy_pass http://unix:`), with the socket's mode, a stale socket
file replaced, a reload on the same socket and the file removed at exit."""

import os
import shutil
import socket
import stat
import subprocess
import time

import httpx
import pytest

from conftest import ctl, free_port, run_cli, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def uds_server(server, tmp_path, **server_keys):
    path = str(tmp_path / "app.sock")
    s = server(workers=2, sections={"server": {"uds": path, **server_keys}})
    s.uds = path
    return s


def uds_client(path, http2=False):
    transport = httpx.HTTPTransport(uds=path, http1=not http2, http2=http2)
    return httpx.Client(transport=transport, base_url="http://app", timeout=10)


def test_serves_http1_and_h2c_on_the_socket(server, tmp_path):
    s = uds_server(server, tmp_path)
    assert stat.S_ISSOCK(os.stat(s.uds).st_mode)
    assert stat.S_IMODE(os.stat(s.uds).st_mode) == 0o660
    for http2, version in ((False, "1.1"), (True, "2")):
        with uds_client(s.uds, http2) as c:
            scope = c.get("/scope").json()
        assert scope["http_version"] == version
        assert scope["client"] is None
        assert scope["server"] == [s.uds, None]
    # Every worker accepts on the one socket: both answer over a few connections.
    pids = set()
    for _ in range(40):
        with uds_client(s.uds) as c:
            pids.add(c.get("/pid").text)
    assert len(pids) == 2, pids
    # Nothing listens on TCP.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2)
    s.wait_log("unix:")  # the access log's client


def test_mode_reload_and_removal_at_exit(server, tmp_path):
    s = uds_server(server, tmp_path, uds_mode="0600")
    assert stat.S_IMODE(os.stat(s.uds).st_mode) == 0o600
    assert ctl(s, "reload").returncode == 0
    with uds_client(s.uds) as c:
        assert c.get("/").text == "Hello, world!"
    s.proc.terminate()
    assert s.wait_exit(30) == 0
    assert not os.path.exists(s.uds)


def test_a_stale_socket_is_replaced_and_other_files_are_refused(server, tmp_path):
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a killed server leaves
    s = uds_server(server, tmp_path)
    with uds_client(path) as c:
        assert c.get("/").status_code == 200
    # A live socket is not taken over.
    other = tmp_path / "other"
    other.mkdir()
    config = s.config.read_text().replace("port = %d" % s.port, "port = %d" % free_port())
    config = config.replace(str(tmp_path / "run"), str(other / "run"))
    (other / "server.ini").write_text(config)
    r = run_cli("serve", "--config", str(other / "server.ini"), timeout=30)
    assert r.returncode != 0 and "a server is already listening on it" in r.stderr, r.stderr
    # A regular file is never removed.
    plain = tmp_path / "plain.sock"
    plain.write_text("keep me")
    (other / "server.ini").write_text(config.replace(path, str(plain)))
    r = run_cli("serve", "--config", str(other / "server.ini"), timeout=30)
    assert r.returncode != 0 and "exists and is not a socket" in r.stderr, r.stderr
    assert plain.read_text() == "keep me"


@pytest.mark.parametrize("keys, expected", [
    ({"uds_mode": "999"}, "[server] uds_mode is not a file mode"),
    ({"uds_mode": "01777"}, "[server] uds_mode is not a file mode"),
])
def test_config_errors(tmp_path, keys, expected):
    conf = tmp_path / "server.ini"
    lines = ["[server]", "uds = %s" % (tmp_path / "a.sock")] + ["%s = %s" % kv for kv in keys.items()]
    conf.write_text("\n".join(lines + ["[application]", "app = basic:app", ""]))
    r = run_cli("check", "--config", str(conf))
    assert r.returncode != 0 and expected in r.stderr, r.stderr


def test_uds_with_tls_is_a_config_error(tmp_path):
    conf = tmp_path / "server.ini"
    conf.write_text("[server]\nuds = %s\n[ssl]\nenabled = true\ncertfile = c.pem\nkeyfile = k.pem\n"
                    "[application]\napp = basic:app\n" % (tmp_path / "a.sock"))
    r = run_cli("check", "--config", str(conf))
    assert r.returncode != 0 and "cannot be combined with [ssl] or [http3]" in r.stderr, r.stderr


@pytest.mark.skipif(NGINX is None, reason="nginx (Debian package) is installed by scripts/test.sh")
def test_behind_nginx_the_client_comes_from_its_headers(server, tmp_path):
    s = uds_server(server, tmp_path)
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    # As root, nginx's workers would run as nobody, who cannot reach pytest's private
    # tmp directory: keep them as the test's user.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(user + """
worker_processes 1;
pid %(p)s/nginx.pid;
error_log %(p)s/error.log info;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %(p)s/body;
    proxy_temp_path %(p)s/proxy;
    fastcgi_temp_path %(p)s/fastcgi;
    uwsgi_temp_path %(p)s/uwsgi;
    scgi_temp_path %(p)s/scgi;
    upstream app { server unix:%(sock)s; keepalive 8; }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }
    }
}
""" % {"p": prefix, "sock": s.uds, "port": port})
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, 10, "nginx listening")
        # From another loopback address than nginx's own, so the client is provably ours.
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=10) as c:
            for _ in range(20):
                r = c.get("http://127.0.0.1:%d/scope" % port)
                assert r.status_code == 200, r.text
                scope = r.json()
                assert scope["client"][0] == "127.0.0.2", scope["client"]
                assert scope["scheme"] == "https"
                assert scope["server"] == [s.uds, None]
            # An app's 103 Early Hints would stall nginx 1.22 (it takes the 103 for the
            # final head and waits for the upstream connection to close): with
            # `early_hints` off, the default, they are dropped and nginx answers at once.
            t0 = time.monotonic()
            r = c.get("http://127.0.0.1:%d/early-hints?s=0.1&force=1" % port)
            assert r.status_code == 200 and r.text == "hinted", (r.status_code, r.text)
            assert time.monotonic() - t0 < 2
            # A streamed body both ways through nginx and the socket.
            body = os.urandom(1 << 20)
            assert c.post("http://127.0.0.1:%d/echo" % port, content=body).content == body
        time.sleep(0.2)
    finally:
        nginx.terminate()
        nginx.wait(10)
