//! The rustls server configuration from `[ssl]`, shared by the worker (TCP, ALPN `h2` and
//! `http/1.1`) and the HTTP/3 front (QUIC, ALPN `h3`): the PEM certificate chain, the
//! private key (PKCS#8, PKCS#1, SEC1, or encrypted PKCS#8 with `[ssl] keyfile_password`),
//! client certificates when `[ssl] ca_certs` is set, and the protocol versions.

use genro_config::{Ssl, TlsVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS configuration could not be built. All are configuration errors; each
/// message names the `[ssl]` key and the file, and ends with the cause.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `[ssl]` is off or lacks a file.
    #[error("[ssl] enabled = true needs certfile and keyfile")]
    Missing,
    /// The certificate file is unreadable or not PEM.
    #[error("[ssl] certfile {}: not a readable PEM certificate chain: {source}", path.display())]
    Certfile {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("[ssl] certfile {}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// The key file is unreadable, not a key, or cannot be decrypted.
    #[error("[ssl] keyfile {}: {reason}", path.display())]
    Keyfile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA bundle is unreadable or invalid.
    #[error("[ssl] ca_certs {}: {reason}", path.display())]
    CaCerts {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. key and certificate do not match).
    #[error("[ssl] certfile/keyfile do not form a valid certificate and key: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The rustls server configuration for `[ssl]`, offering `min_version` and up and the
/// `alpn` protocols in order of preference. The caller passes `min_version`: the worker
/// takes `[ssl] min_version`, QUIC always needs TLS 1.3 (RFC 9001 §4.2).
pub fn server_config(
    ssl: &Ssl,
    min_version: TlsVersion,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let (true, Some(certfile), Some(keyfile)) = (ssl.enabled, &ssl.certfile, &ssl.keyfile) else {
        return Err(TlsError::Missing);
    };
    let certs = load_certs(certfile)?;
    let key = load_key(keyfile, ssl.keyfile_password.as_deref())?;
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Rustls)?;
    let builder = match &ssl.ca_certs {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca)?),
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    tls.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(tls)
}

/// The server's own certificate (the first of `[ssl] certfile`) as PEM, for the ASGI
/// `tls` extension's `server_cert`; `None` when TLS is off or the file unreadable.
pub fn leaf_pem(ssl: &Ssl) -> Option<String> {
    let certs = load_certs(ssl.certfile.as_deref()?).ok()?;
    certs.first().map(|cert| crate::tls_facts::pem(cert))
}

fn load_certs(certfile: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Certfile {
            path: certfile.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(certfile.to_path_buf()));
    }
    Ok(certs)
}

/// Reads the PEM private key; an `ENCRYPTED PRIVATE KEY` (PKCS#8, PBES2) needs
/// `[ssl] keyfile_password`.
fn load_key(keyfile: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bad = |reason: &str| TlsError::Keyfile {
        path: keyfile.to_path_buf(),
        reason: reason.to_owned(),
    };
    let text = std::fs::read_to_string(keyfile).map_err(|e| bad(&format!("cannot read: {e}")))?;
    if !text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        if text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(bad("legacy OpenSSL-encrypted PEM is not supported; convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`"));
        }
        return PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| bad(&format!("not a PEM private key: {e}")));
    }
    let Some(password) = password else {
        return Err(bad("is encrypted: set [ssl] keyfile_password"));
    };
    let (_, document) =
        pkcs8::der::Document::from_pem(&text).map_err(|e| bad(&format!("malformed PEM: {e}")))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
        .map_err(|e| bad(&format!("malformed encrypted key: {e}")))?;
    // The cause is not shown: it cannot tell a wrong password from an unsupported cipher.
    let secret = info
        .decrypt(password)
        .map_err(|_| bad("cannot decrypt: wrong keyfile_password or unsupported cipher"))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        secret.as_bytes().to_vec(),
    )))
}

/// Requires a client certificate signed by one of the CAs in `ca`.
fn client_verifier(
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |reason: String| TlsError::CaCerts {
        path: ca.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir()
                .join(format!("genro-shared-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn encrypted_pem(key_der: &[u8], password: &str) -> String {
        use pkcs8::der::pem::LineEnding;
        use pkcs8::pkcs5::pbes2;
        // Fixed salt and IV: deterministic, and no RNG needed in a test.
        let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &[7u8; 16], &[9u8; 16])
            .expect("valid PBES2 parameters");
        let info = pkcs8::PrivateKeyInfo::try_from(key_der).expect("rcgen writes PKCS#8");
        info.encrypt_with_params(params, password)
            .expect("encrypts")
            .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .expect("pem")
            .to_string()
    }

    fn ssl(certfile: &Path, keyfile: &Path, password: Option<&str>) -> Ssl {
        Ssl {
            enabled: true,
            certfile: Some(certfile.to_path_buf()),
            keyfile: Some(keyfile.to_path_buf()),
            keyfile_password: password.map(str::to_owned),
            ca_certs: None,
            min_version: TlsVersion::Tls12,
        }
    }

    #[test]
    fn keys_plain_and_encrypted() {
        let dir = Dir::new("keys");
        let key = rcgen::KeyPair::generate().unwrap();
        let plain = dir.write("plain.pem", &key.serialize_pem());
        let locked = dir.write("locked.pem", &encrypted_pem(&key.serialize_der(), "s3cret"));
        let legacy = dir.write(
            "legacy.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\n-----END RSA PRIVATE KEY-----\n",
        );
        let junk = dir.write("junk.pem", "not a key\n");
        assert!(load_key(&plain, None).is_ok());
        assert!(load_key(&locked, Some("s3cret")).is_ok());
        let table: &[(&Path, Option<&str>, &str)] = &[
            (&locked, None, "is encrypted: set [ssl] keyfile_password"),
            (
                &locked,
                Some("wrong"),
                "cannot decrypt: wrong keyfile_password",
            ),
            (&legacy, None, "legacy OpenSSL-encrypted"),
            (&junk, None, "not a PEM private key"),
            (Path::new("/nonexistent/key.pem"), None, "cannot read"),
        ];
        for (path, password, want) in table {
            let err = load_key(path, *password).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
            assert!(err.starts_with("[ssl] keyfile "), "{err}");
            assert!(err.contains(&*path.to_string_lossy()), "{err}");
        }
    }

    #[test]
    fn certificate_errors_name_the_file() {
        let dir = Dir::new("certs");
        let empty = dir.write("empty.pem", "");
        let err = load_certs(&empty).expect_err("no certificate").to_string();
        assert!(err.contains("no certificate found"), "{err}");
        let err = load_certs(Path::new("/nonexistent/cert.pem"))
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("[ssl] certfile /nonexistent/cert.pem: not a readable PEM"),
            "{err}"
        );
    }

    #[test]
    fn server_config_from_plain_and_encrypted_keys() {
        let dir = Dir::new("config");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let certfile = dir.write("cert.pem", &certified.cert.pem());
        let plain = dir.write("plain.pem", &certified.key_pair.serialize_pem());
        let locked = dir.write(
            "locked.pem",
            &encrypted_pem(&certified.key_pair.serialize_der(), "s3cret"),
        );
        let tls = server_config(
            &ssl(&certfile, &plain, None),
            TlsVersion::Tls12,
            &[b"h2", b"http/1.1"],
        )
        .unwrap();
        assert_eq!(tls.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let tls = server_config(
            &ssl(&certfile, &locked, Some("s3cret")),
            TlsVersion::Tls13,
            &[b"h3"],
        )
        .unwrap();
        assert_eq!(tls.alpn_protocols, [b"h3".to_vec()]);

        // A key that is not the certificate's.
        let other = rcgen::KeyPair::generate().unwrap();
        let other = dir.write("other.pem", &other.serialize_pem());
        let err = server_config(&ssl(&certfile, &other, None), TlsVersion::Tls12, &[])
            .expect_err("mismatched key")
            .to_string();
        assert!(
            err.contains("do not form a valid certificate and key"),
            "{err}"
        );

        let mut with_ca = ssl(&certfile, &plain, None);
        with_ca.ca_certs = Some(certfile.clone());
        assert!(server_config(&with_ca, TlsVersion::Tls12, &[]).is_ok());
        with_ca.ca_certs = Some(dir.0.join("missing-ca.pem"));
        let err = server_config(&with_ca, TlsVersion::Tls12, &[])
            .expect_err("missing CA bundle")
            .to_string();
        assert!(err.starts_with("[ssl] ca_certs "), "{err}");

        let mut off = ssl(&certfile, &plain, None);
        off.keyfile = None;
        let err = server_config(&off, TlsVersion::Tls12, &[]).expect_err("no keyfile");
        assert!(matches!(err, TlsError::Missing), "{err}");
    }
}
