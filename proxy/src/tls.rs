//! QUIC server configuration from `[ssl]` and `[http3]`: rustls with the configured
//! certificate, TLS 1.3 only (QUIC requires it, RFC 9001 §4.2), ALPN `h3`, no 0-RTT
//! (early data can be replayed, and the app cannot tell), client certificates when
//! `[ssl] ca_certs` is set (as on TCP).
//!
//! The PEM loading mirrors the worker's (`worker/src/server.rs`), including PKCS#8
//! encrypted keys with `[ssl] keyfile_password`; the two are candidates to move to
//! `genro-shared` together.

use genro_config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Receive window of one request stream: how much of a request body the front buffers
/// while its worker is slower than the client.
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
/// Receive window of one QUIC connection, over all its streams: bounds the memory one
/// client can make the front hold.
const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;

/// Why the QUIC server configuration could not be built. All are configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `[ssl]` is off or lacks a file.
    #[error("HTTP/3 needs [ssl] enabled = true with certfile and keyfile")]
    Missing,
    /// The certificate file is unreadable or not PEM.
    #[error("[ssl] certfile {path}: not a readable PEM certificate chain: {source}")]
    Certfile {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("[ssl] certfile {0}: no certificate found")]
    NoCertificate(PathBuf),
    /// The key file is unreadable, not a key, or cannot be decrypted.
    #[error("[ssl] keyfile {path}: {reason}")]
    Keyfile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA bundle is unreadable or invalid.
    #[error("[ssl] ca_certs {path}: {reason}")]
    CaCerts {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. key and certificate do not match).
    #[error("[ssl] certfile/keyfile do not form a valid certificate and key: {0}")]
    Rustls(#[source] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// An `[http3]` value quinn cannot express.
    #[error("[http3] idle_timeout: {0}")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
}

/// The QUIC server configuration (TLS, ALPN `h3`, transport limits).
pub fn server_config(config: &Config) -> Result<quinn::ServerConfig, TlsError> {
    let ssl = &config.ssl;
    let (true, Some(certfile), Some(keyfile)) = (ssl.enabled, &ssl.certfile, &ssl.keyfile) else {
        return Err(TlsError::Missing);
    };
    let certs = load_certs(certfile)?;
    let key = load_key(keyfile, ssl.keyfile_password.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Rustls)?;
    let builder = match &ssl.ca_certs {
        Some(ca) => {
            let bad = |reason: String| TlsError::CaCerts {
                path: ca.clone(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(TlsError::Quic)?;

    let h3 = &config.http3;
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(h3.idle_timeout).map_err(TlsError::IdleTimeout)?;
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(h3.max_concurrent_streams))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
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
    let secret = info
        .decrypt(password)
        .map_err(|_| bad("cannot decrypt: wrong keyfile_password or unsupported cipher"))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        secret.as_bytes().to_vec(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("genro-proxy-tls-{name}-{}", std::process::id()));
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
        assert!(load_key(&plain, None).is_ok());
        assert!(load_key(&locked, Some("s3cret")).is_ok());
        let table: &[(&Path, Option<&str>, &str)] = &[
            (&locked, None, "set [ssl] keyfile_password"),
            (&locked, Some("wrong"), "cannot decrypt"),
            (&legacy, None, "legacy OpenSSL-encrypted"),
            (Path::new("/nonexistent/key.pem"), None, "cannot read"),
        ];
        for (path, password, want) in table {
            let err = load_key(path, *password).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
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
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
