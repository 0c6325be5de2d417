//! The front's time bounds on one QUIC connection's client (issue 16): `[limits]
//! send_timeout` on response writes and `[limits] body_timeout` on request bodies
//! (`body.rs`), counted in `limits_hit_total{kind}` and logged once per connection.
//!
//! A stream whose client takes no response bytes for `send_timeout` (its QUIC flow-control
//! window stays at 0) is reset with H3_REQUEST_CANCELLED; dropping its upstream response
//! resets the HTTP/2 stream to the worker (CANCEL), so the app sees the disconnect. When
//! that happens on a connection where no stream moved a byte either way for
//! `send_timeout`, the connection itself is closed (H3_EXCESSIVE_LOAD): a client whose
//! only streams are stalled does not keep the connection forever.

use crate::control::{Limit, Stats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1) as a QUIC application error code.
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// When a connection last moved a byte in either direction: a response chunk taken by
/// QUIC, or a request-body chunk read from it.
#[derive(Debug)]
pub(crate) struct Activity {
    origin: Instant,
    /// Milliseconds since `origin`.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Notes a byte moved now.
    pub(crate) fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        self.last
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long nothing moved, as of `now`.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        let last = self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

/// One QUIC connection's client, as its requests' bounds see it.
#[derive(Debug)]
pub(crate) struct Client {
    /// The QUIC peer.
    pub(crate) peer: SocketAddr,
    /// The connection's TLS facts, as the worker reads them from
    /// [`genro_shared::tls_facts::TLS_HEADER`].
    pub(crate) tls: Option<http::HeaderValue>,
    /// `[limits] send_timeout` (`None`: no limit).
    pub(crate) send_timeout: Option<Duration>,
    /// `[limits] body_timeout` (`None`: no limit).
    pub(crate) body_timeout: Option<Duration>,
    /// `[server] early_hints`: the workers' `103 Early Hints` are relayed.
    pub(crate) early_hints: bool,
    /// Bytes moved on the connection.
    pub(crate) activity: Arc<Activity>,
    quic: quinn::Connection,
    stats: Arc<Stats>,
    logged_send: AtomicBool,
    logged_body: AtomicBool,
}

/// A zero duration means "no limit" in `[limits]`.
fn limit(value: Duration) -> Option<Duration> {
    (!value.is_zero()).then_some(value)
}

impl Client {
    /// The client of `quic`, with the timeouts of `settings`.
    pub(crate) fn new(
        quic: quinn::Connection,
        peer: SocketAddr,
        settings: &crate::server::Settings,
        stats: Arc<Stats>,
    ) -> Client {
        let peer_certs = quic
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|certs| *certs)
            .unwrap_or_default();
        let facts = genro_shared::tls_facts::TlsFacts::quic(&peer_certs);
        Client {
            peer,
            tls: http::HeaderValue::try_from(facts.to_header()).ok(),
            send_timeout: limit(settings.send_timeout),
            body_timeout: limit(settings.body_timeout),
            early_hints: settings.early_hints,
            activity: Arc::new(Activity::default()),
            quic,
            stats,
            logged_send: AtomicBool::new(false),
            logged_body: AtomicBool::new(false),
        }
    }

    /// Counts a bound this client ran into, and logs it the first time on this
    /// connection.
    pub(crate) fn hit(&self, kind: Limit) {
        self.stats.limit(kind);
        let peer = self.peer;
        match kind {
            Limit::SendTimeout => {
                if !self.logged_send.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        %peer,
                        "HTTP/3 client took no response bytes for send_timeout ({:?}): stream reset (logged once per connection)",
                        self.send_timeout.unwrap_or_default()
                    );
                }
            }
            Limit::BodyTimeout => {
                if !self.logged_body.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        %peer,
                        "HTTP/3 upload sent no bytes for body_timeout ({:?}): 408 or stream reset (logged once per connection)",
                        self.body_timeout.unwrap_or_default()
                    );
                }
            }
        }
    }

    /// After a send timeout: closes the connection if no stream on it moved a byte for
    /// `send_timeout` (every stream it has is stalled).
    pub(crate) fn close_if_stalled(&self) {
        let Some(timeout) = self.send_timeout else {
            return;
        };
        if self.activity.idle_for(Instant::now()) >= timeout {
            tracing::info!(
                peer = %self.peer,
                "HTTP/3 connection closed: no stream moved a byte for send_timeout ({timeout:?})"
            );
            self.quic
                .close(H3_EXCESSIVE_LOAD.into(), b"send_timeout: no progress");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_measures_the_time_since_the_last_byte() {
        let activity = Activity::default();
        let at = |ms| activity.origin + Duration::from_millis(ms);
        assert_eq!(activity.idle_for(at(5000)), Duration::from_secs(5));
        activity.touch_at(at(5000));
        assert_eq!(activity.idle_for(at(6500)), Duration::from_millis(1500));
        // A byte noted late by another stream does not move the clock back.
        activity.touch_at(at(4000));
        assert_eq!(activity.idle_for(at(6500)), Duration::from_millis(1500));
        // An instant before the last byte is no idleness at all.
        assert_eq!(activity.idle_for(at(1000)), Duration::ZERO);
    }

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(limit(Duration::ZERO), None);
        assert_eq!(limit(Duration::from_secs(3)), Some(Duration::from_secs(3)));
    }
}
