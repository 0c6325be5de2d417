//! QUIC server configuration from `[ssl]`, `[http3]` and `[limits]`: the `[ssl]`
//! certificate, key and client CAs loaded by `genro_shared::tls`, TLS 1.3 only (QUIC
//! requires it, RFC 9001 §4.2), ALPN `h3`, no 0-RTT (early data can be replayed, and the
//! app cannot tell), the `[http3]` transport limits, and the byte budgets of one
//! connection (issue 16):
//! - `[limits] response_buffer` is the receive window of one request stream: how much of
//!   a request body the front holds while its worker is slower than the client;
//! - `[limits] connection_buffer` (at least one stream's budget) is the receive window of
//!   the connection, over all its streams (request bodies, and whatever a client sends on
//!   streams HTTP/3 does not read), and quinn's `send_window`: the response bytes it
//!   keeps for the connection, sent or not, until the client acknowledges them (quinn's
//!   default, 10 MB, would let each slow client pin that much). A connection's download
//!   rate is then at most `connection_buffer` per round trip: 1 MiB at 50 ms is 20 MB/s;
//! - QUIC datagrams are off: HTTP/3 here does not use them, and quinn would otherwise
//!   advertise them and keep up to 1.25 MB of them per connection that nobody reads.

use genro_config::{Config, TlsVersion};
use std::sync::Arc;

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
    let stream_budget = config.limits.response_buffer;
    let connection_budget = config.limits.connection_buffer.max(stream_budget);
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(h3.idle_timeout).map_err(TlsError::IdleTimeout)?;
    transport
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(h3.max_concurrent_streams))
        .stream_receive_window(varint(stream_budget))
        .receive_window(varint(connection_budget))
        .send_window(connection_budget)
        .datagram_receive_buffer_size(None);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// `bytes` as a QUIC variable-length integer (the schema keeps the budgets far below
/// its 2^62 limit).
fn varint(bytes: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(bytes).unwrap_or(quinn::VarInt::MAX)
}
