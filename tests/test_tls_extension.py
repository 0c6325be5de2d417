"""The ASGI `tls` scope extension (asgiref's TLS spec) over HTTP/1.1, HTTP/2 and HTTP/3:
TLS version, cipher suite, the server certificate, and the client's certificate chain and
subject name under mutual TLS. Absent on plaintext connections."""

import json
import ssl

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import h3client
from test_tls import certs, ssl_section  # noqa: F401 - fixture

TLS13_SUITES = {0x1301, 0x1302, 0x1303}


def pem_of(path):
    """The first certificate of a PEM file, as the extension writes it."""
    cert = x509.load_pem_x509_certificate(open(path, "rb").read())
    return cert.public_bytes(Encoding.PEM).decode()


@pytest.fixture
def mtls(tmp_path):
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_cert = server_ca.issue_cert("127.0.0.1", "localhost")
    files = {name: tmp_path / name for name in ("s.pem", "s.key", "client-ca.pem", "c.pem", "c.key", "ca.pem")}
    server_cert.cert_chain_pems[0].write_to_path(str(files["s.pem"]))
    server_cert.private_key_pem.write_to_path(str(files["s.key"]))
    client_ca.cert_pem.write_to_path(str(files["client-ca.pem"]))
    server_ca.cert_pem.write_to_path(str(files["ca.pem"]))
    client = client_ca.issue_cert("client@example.test", common_name="Client, \"Ltd\" #1")
    client.cert_chain_pems[0].write_to_path(str(files["c.pem"]))
    client.private_key_pem.write_to_path(str(files["c.key"]))
    return {"server_ca": server_ca, "client": client, **{k: str(v) for k, v in files.items()}}


def tls_of(response):
    assert response.status_code == 200, response.text
    return response.json()["extensions"].get("tls")


def test_tls_extension_with_a_client_certificate_on_h1_h2_h3(server, mtls):
    s = server(sections={"ssl": {"enabled": True, "certfile": mtls["s.pem"], "keyfile": mtls["s.key"],
                                 "ca_certs": mtls["client-ca.pem"]},
                         "http3": {"enabled": True}})
    ctx = ssl.create_default_context(cafile=mtls["ca.pem"])
    mtls["client"].configure_cert(ctx)
    client_pem = mtls["client"].cert_chain_pems[0].bytes().decode()
    name = x509.load_pem_x509_certificate(client_pem.encode()).subject.rfc4514_string()
    assert "\\," in name and "\\\"" in name, name  # the escaping is exercised
    url = "https://127.0.0.1:%d/scope" % s.port
    seen = {}
    for http2 in (False, True):
        with httpx.Client(verify=ctx, http2=http2, timeout=10) as c:
            r = c.get(url)
            assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            seen[r.http_version] = tls_of(r)
    # An HTTP/3 client's own x-genro-asgi-tls is replaced by the front's.
    forged = [("x-genro-asgi-tls", "0303 c02f")]
    (response,), _ = h3client.fetch(s.port, [("GET", "/scope", forged)], cafile=mtls["ca.pem"],
                                    client_cert=(mtls["c.pem"], mtls["c.key"]))
    assert response.status == 200
    seen["HTTP/3"] = json.loads(bytes(response.body))["extensions"]["tls"]
    for version, tls in seen.items():
        assert tls["server_cert"] == pem_of(mtls["s.pem"]), version
        assert tls["client_cert_chain"] == [client_pem], version
        assert tls["client_cert_name"] == name, version
        assert tls["client_cert_error"] is None, version
        assert tls["tls_version"] == 0x0304, version
    assert seen["HTTP/1.1"]["cipher_suite"] in TLS13_SUITES
    assert seen["HTTP/2"]["cipher_suite"] in TLS13_SUITES
    assert seen["HTTP/3"]["cipher_suite"] is None  # QUIC does not tell it


def test_tls_extension_without_client_certificates_and_on_tls12(server, certs):  # noqa: F811
    s = server(sections=ssl_section(certs))
    url = "https://127.0.0.1:%d/scope" % s.port
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=ctx, timeout=10) as c:
        # Over TCP the header is never honoured, TLS or not.
        tls = tls_of(c.get(url, headers={"x-genro-asgi-tls": "0304 1301"}))
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] in {0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca8, 0xcca9}, hex(tls["cipher_suite"])
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None
    assert tls["server_cert"] == pem_of(certs["certfile"])


def test_no_tls_extension_on_plaintext_and_the_header_is_not_trusted(server):
    s = server()
    r = httpx.get(s.url + "/scope", headers={"x-genro-asgi-tls": "0304 1301"}, timeout=10)
    scope = r.json()
    assert "tls" not in scope["extensions"]
    assert "x-genro-asgi-tls" not in dict(scope["headers"])
