"""HTTPS: HTTP/1.1 and HTTP/2 (ALPN) over TLS, TLS 1.2 / 1.3 negotiation, min_version,
and the [ssl] configuration error."""

import json
import socket
import ssl

import httpx
import pytest
import trustme

from conftest import recv_all, run_cli

TIMEOUT = httpx.Timeout(10.0)


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile = tmp_path / "server.pem"
    keyfile = tmp_path / "server.key"
    cafile = tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        with open(certfile, "ab") as f:
            f.write(pem.bytes())
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return {"certfile": str(certfile), "keyfile": str(keyfile), "ca": str(cafile)}


def ssl_section(certs, **extra):
    section = {"enabled": True, "certfile": certs["certfile"], "keyfile": certs["keyfile"]}
    section.update(extra)
    return {"ssl": section}


def client_context(certs, minimum=None, maximum=None, alpn=None):
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def handshake(port, ctx):
    """Connects and handshakes; returns (tls version, negotiated ALPN, response to GET /)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as ssock:
            version, alpn = ssock.version(), ssock.selected_alpn_protocol()
            ssock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = recv_all(ssock)
            return version, alpn, data


def test_https_http11(server, certs):
    s = server(workers=1, sections=ssl_section(certs))
    url = "https://127.0.0.1:%d" % s.port
    with httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client:
        r = client.get(url + "/scope?a=1")
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/1.1"
        scope = r.json()
        assert scope["scheme"] == "https"
        assert scope["http_version"] == "1.1"
        assert scope["server"] == ["127.0.0.1", s.port]
        assert scope["query_string"] == "a=1"

        r = client.post(url + "/echo", content=b"z" * 100_000)
        assert r.status_code == 200
        assert r.content == b"z" * 100_000


def test_https_http2_alpn(server, certs):
    s = server(workers=1, sections=ssl_section(certs))
    url = "https://127.0.0.1:%d" % s.port
    with httpx.Client(http2=True, verify=client_context(certs), timeout=TIMEOUT) as client:
        r = client.get(url + "/scope")
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/2"
        scope = r.json()
        assert scope["http_version"] == "2"
        assert scope["scheme"] == "https"

        r = client.get(url + "/stream", params={"n": 50, "size": 4096})
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        assert len(r.content) == 50 * 4096

    # ALPN offers h2 first and falls back to http/1.1.
    _, alpn, _ = handshake(s.port, client_context(certs, alpn=["h2", "http/1.1"]))
    assert alpn == "h2"
    _, alpn, data = handshake(s.port, client_context(certs, alpn=["http/1.1"]))
    assert alpn == "http/1.1"
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"Hello, world!")


@pytest.mark.parametrize("version,expected", [
    (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
])
def test_tls_versions_negotiate(server, certs, version, expected):
    s = server(workers=1, sections=ssl_section(certs))
    ctx = client_context(certs, minimum=version, maximum=version)
    got, _, data = handshake(s.port, ctx)
    assert got == expected
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(b"Hello, world!")


def test_min_version_13_refuses_tls12_client(server, certs):
    s = server(workers=1, sections=ssl_section(certs, min_version="1.3"))
    ctx12 = client_context(certs, minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(s.port, ctx12)
    # A TLS 1.3 client is still served.
    got, _, data = handshake(s.port, client_context(certs))
    assert got == "TLSv1.3"
    assert data.startswith(b"HTTP/1.1 200")


def test_ssl_enabled_without_certfile_is_a_config_error(tmp_path, certs):
    config = tmp_path / "bad.ini"
    config.write_text(
        "[server]\nhost = 127.0.0.1\nport = 0\n"
        "[application]\napp = basic:app\napp_dir = %s\n"
        "[ssl]\nenabled = true\nkeyfile = %s\n" % (tmp_path, certs["keyfile"])
    )
    result = run_cli("serve", "--config", str(config), timeout=30)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    output = result.stdout + result.stderr
    assert "certfile" in output, output
    assert "ssl" in output


def encrypt_key(keyfile, password, out):
    from cryptography.hazmat.primitives import serialization

    with open(keyfile, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    out.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    ))
    return str(out)


def test_encrypted_key_with_keyfile_password(server, certs, tmp_path):
    keyfile = encrypt_key(certs["keyfile"], b"open sesame", tmp_path / "enc.key")
    s = server(sections=ssl_section(certs, keyfile=keyfile, keyfile_password="open sesame"))
    r = httpx.get("https://127.0.0.1:%d/" % s.port, verify=client_context(certs), timeout=TIMEOUT)
    assert r.text == "Hello, world!"
    assert "open sesame" not in s.log


@pytest.mark.parametrize("password,why", [(None, "set [ssl] keyfile_password"), ("wrong", "wrong keyfile_password")])
def test_encrypted_key_errors_are_config_errors(certs, tmp_path, password, why):
    keyfile = encrypt_key(certs["keyfile"], b"open sesame", tmp_path / "enc.key")
    lines = ["[ssl]", "enabled = true", "certfile = %s" % certs["certfile"], "keyfile = %s" % keyfile]
    if password:
        lines.append("keyfile_password = %s" % password)
    lines += ["[application]", "app = basic:app"]
    path = tmp_path / "server.ini"
    path.write_text("\n".join(lines) + "\n")
    r = run_cli("serve", "--config", str(path), timeout=30)
    assert r.returncode == 2, r.stderr
    assert why in r.stderr
    assert "wrong" not in r.stderr.replace("wrong keyfile_password", "")


def test_mutual_tls_with_ca_certs(server, tmp_path):
    """[ssl] ca_certs: clients must present a certificate signed by that CA."""
    server_ca = trustme.CA()
    client_ca = trustme.CA()
    cert = server_ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "s.pem", tmp_path / "s.key"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    s = server(sections={"ssl": {"enabled": True, "certfile": str(certfile), "keyfile": str(keyfile),
                                 "ca_certs": str(client_ca_file)}})
    url = "https://127.0.0.1:%d/" % s.port
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=ctx, timeout=TIMEOUT)
    client_ca.issue_cert("client@example.test").configure_cert(ctx)
    assert httpx.get(url, verify=ctx, timeout=TIMEOUT).text == "Hello, world!"
