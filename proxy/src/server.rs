//! The QUIC side: accepts connections on the endpoint, runs HTTP/3 on each (one task per
//! request, see `forward.rs`), and drains.
//!
//! Drain, in order:
//! 1. stop accepting: new QUIC connections are refused (CONNECTION_REFUSED, so clients
//!    fall back to TCP at once instead of timing out);
//! 2. every connection sends GOAWAY naming the stream after the last one it accepted
//!    (h3's `shutdown(1)`); a request that still arrives is reset with
//!    H3_REQUEST_REJECTED, which RFC 9114 §5.2 lets the client retry elsewhere;
//! 3. requests in flight finish; then each connection waits up to [`LINGER`] for its
//!    client to close it (closing first could cut off response bytes not yet
//!    acknowledged: a QUIC close discards them) and closes with H3_NO_ERROR;
//! 4. at `[server] graceful_timeout` whatever is left is closed.

use crate::forward::{self, Shared};
use crate::stall::Client;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a drained connection waits for its client to close it.
const LINGER: Duration = Duration::from_secs(1);
/// How long the endpoint may take to send its last CONNECTION_CLOSE frames.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// H3_NO_ERROR as a QUIC application error code.
const H3_NO_ERROR: u32 = 0x100;

/// HTTP/3 settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// `[http3] max_field_section_size`.
    pub(crate) max_field_section_size: u64,
    /// `[server] graceful_timeout`.
    pub(crate) graceful_timeout: Duration,
    /// `[limits] header_read_timeout`: time a client has to send a request's header
    /// section once it opened the stream.
    pub(crate) header_read_timeout: Duration,
    /// `[limits] send_timeout` (zero: none): see `stall.rs`.
    pub(crate) send_timeout: Duration,
    /// `[limits] body_timeout` (zero: none): see `body.rs`.
    pub(crate) body_timeout: Duration,
    /// `[server] early_hints`: relay the workers' `103 Early Hints`.
    pub(crate) early_hints: bool,
}

impl Settings {
    /// The settings `config` asks for.
    pub(crate) fn of(config: &genro_config::Config) -> Self {
        Settings {
            max_field_section_size: config.http3.max_field_section_size,
            graceful_timeout: config.server.graceful_timeout,
            header_read_timeout: config.limits.header_read_timeout,
            send_timeout: config.limits.send_timeout,
            body_timeout: config.limits.body_timeout,
            early_hints: config.server.early_hints,
        }
    }
}

/// Serves until `drain` turns true, then drains (see the module docs) and returns. Each
/// connection takes the `settings` current when it arrives.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    settings: watch::Receiver<Settings>,
    mut drain: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let settings = *settings.borrow();
                    connections.spawn(connection(incoming, shared.clone(), settings, drain.clone()));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = drained(&mut drain) => break,
        }
    }
    tracing::info!(
        "HTTP/3 front draining: {} connection(s) open",
        connections.len()
    );
    let deadline = Instant::now() + settings.borrow().graceful_timeout;
    let mut timeout = pin!(tokio::time::sleep_until(deadline));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => break,
            },
            joined = connections.join_next() => if joined.is_none() {
                break;
            },
            _ = &mut timeout => {
                tracing::warn!(
                    "graceful_timeout: closing {} HTTP/3 connection(s) with requests in flight",
                    connections.len()
                );
                break;
            }
        }
    }
    connections.abort_all();
    endpoint.close(H3_NO_ERROR.into(), b"shutting down");
    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
    tracing::info!("HTTP/3 front drained");
}

/// Runs one QUIC connection: HTTP/3 handshake, then a task per request.
async fn connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    settings: Settings,
    mut drain: watch::Receiver<bool>,
) {
    let peer: SocketAddr = incoming.remote_address();
    let quic = match incoming.await {
        Ok(quic) => quic,
        Err(err) => {
            tracing::debug!(%peer, "QUIC handshake failed: {err}");
            shared.stats.error(true);
            return;
        }
    };
    let client = Arc::new(Client::new(
        quic.clone(),
        peer,
        &settings,
        shared.stats.clone(),
    ));
    let mut h3 = match h3::server::builder()
        .max_field_section_size(settings.max_field_section_size)
        // WebSocket over HTTP/3 (RFC 9220, `tunnel.rs`).
        .enable_extended_connect(true)
        .build::<_, bytes::Bytes>(h3_quinn::Connection::new(quic))
        .await
    {
        Ok(h3) => h3,
        Err(err) => {
            tracing::debug!(%peer, "HTTP/3 connection setup failed: {err}");
            return;
        }
    };
    tracing::debug!(%peer, "HTTP/3 connection");
    let _counted = shared.stats.connection();
    let mut requests = JoinSet::new();
    let mut draining = false;
    // Armed while draining with nothing in flight.
    let mut linger = pin!(tokio::time::sleep(Duration::MAX));
    let mut lingering = false;
    loop {
        if draining && requests.is_empty() && !lingering {
            linger.as_mut().reset(Instant::now() + LINGER);
            lingering = true;
        }
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) if draining => {
                    requests.spawn(forward::reject(resolver));
                    lingering = false;
                }
                Ok(Some(resolver)) => {
                    let head_timeout = settings.header_read_timeout;
                    requests.spawn(forward::handle(resolver, shared.clone(), client.clone(), head_timeout));
                }
                // The client's GOAWAY, and every request answered.
                Ok(None) => break,
                // Closed by the client, idle timeout, or a protocol error.
                Err(err) => {
                    tracing::debug!(%peer, "HTTP/3 connection ended: {err}");
                    return;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            _ = drained(&mut drain), if !draining => {
                draining = true;
                if let Err(err) = h3.shutdown(1).await {
                    tracing::debug!(%peer, "GOAWAY not sent: {err}");
                }
            }
            _ = &mut linger, if lingering => break,
        }
    }
    // Every request is done here (the linger, or h3 saw the client's GOAWAY through);
    // on the early returns above the connection is gone and dropping `requests` aborts
    // what is left (their upstream streams are reset). Dropping `h3` closes the
    // connection with H3_NO_ERROR.
    drop(h3);
}

/// Completes once the drain started (never, if nobody can start it any more).
async fn drained(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}
