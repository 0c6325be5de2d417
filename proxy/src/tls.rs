//! QUIC server configuration from `[ssl]` and `[http3]`: the `[ssl]` certificate, key and
//! client CAs loaded by `genro_shared::tls`, TLS 1.3 only (QUIC requires it, RFC 9001
//! §4.2), ALPN `h3`, no 0-RTT (early data can be replayed, and the app cannot tell), and
//! the `[http3]` transport limits.

use genro_config::{Config, TlsVersion};
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
    /// `[ssl]` is off, or a file does not load.
    #[error(transparent)]
    Ssl(#[from] genro_shared::tls::TlsError),
    /// quinn refused the rustls configuration.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// An `[http3]` value quinn cannot express.
    #[error("[http3] idle_timeout: {0}")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
}

/// The QUIC server configuration (TLS, ALPN `h3`, transport limits).
pub fn server_config(config: &Config) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = genro_shared::tls::server_config(&config.ssl, TlsVersion::Tls13, &[b"h3"])?;
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
