//! What is recorded when a response is done (written whole, or abandoned): its metrics
//! and access-log line, and the in-flight counts released with it.

use super::conn::{ConnCtx, ConnState};
use crate::admission::Admission;
use crate::receive::Exchange;
use crate::registry::Envelope;
use crate::state::Shared;
use genro_shared::access::{AccessFormat, AccessRecord};
use http::header::HeaderValue;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What is recorded when a response is done (written whole, or abandoned): its metrics
/// and its access-log line.
pub(super) struct Done {
    shared: Arc<Shared>,
    /// The request's facts.
    envelope: Arc<Envelope>,
    /// What the access-log line needs besides them (`None`: no access log).
    access: Option<Box<AccessData>>,
}

/// What an access-log line shows of the request besides its envelope.
struct AccessData {
    format: Arc<AccessFormat>,
    version: http::Version,
    /// The request headers the format names, in [`AccessFormat::headers`] order.
    headers: Vec<Option<HeaderValue>>,
}

impl Done {
    pub(super) fn new(
        ctx: &ConnCtx,
        request: &Request<Incoming>,
        envelope: &Arc<Envelope>,
    ) -> Option<Self> {
        if ctx.access.is_none() && ctx.shared.metrics.is_none() {
            return None;
        }
        let access = ctx.access.as_ref().map(|format| {
            Box::new(AccessData {
                // The front forwards HTTP/3 over HTTP/2: log what the client spoke.
                version: if ctx.info.front {
                    http::Version::HTTP_3
                } else {
                    request.version()
                },
                headers: format
                    .headers()
                    .iter()
                    .map(|name| request.headers().get(name).cloned())
                    .collect(),
                format: format.clone(),
            })
        });
        Some(Done {
            shared: ctx.shared.clone(),
            envelope: envelope.clone(),
            access,
        })
    }

    pub(super) fn record(&self, status: StatusCode, bytes: u64, request_bytes: u64) {
        let e = &self.envelope;
        let elapsed = e.started.elapsed();
        if let Some(metrics) = &self.shared.metrics {
            metrics.request_done(e.protocol, &e.method, status, elapsed, request_bytes, bytes);
        }
        if let Some(a) = &self.access {
            let line = a.format.format(&AccessRecord {
                time: e.admitted,
                client: e.client,
                method: &e.method,
                path: e.path(),
                query: e.uri.query().unwrap_or(""),
                protocol: e.protocol.label(),
                version: a.version,
                status: status.as_u16(),
                bytes,
                duration: elapsed,
                request_id: e.id.as_str(),
                headers: &a.headers,
            });
            tracing::info!(target: "genro_asgi::access", "{line}");
        }
    }
}

/// Decrements the in-flight counts and tells the exchange the client is done when dropped:
/// with the response body (written or abandoned), or with the service future (client gone
/// before the app answered).
///
/// It also holds what is recorded when the response is done ([`InFlight::finish`]); one
/// dropped before that (the client left while the app had not answered: hyper drops the
/// service future) records [`CLIENT_CLOSED`].
pub(super) struct InFlight {
    _admission: Arc<Admission>,
    conn: Arc<ConnState>,
    exchange: Arc<Exchange>,
    done: Option<Done>,
}

impl InFlight {
    /// Counts a request in flight on its connection until the response is done.
    pub(super) fn new(
        admission: Arc<Admission>,
        conn: Arc<ConnState>,
        exchange: Arc<Exchange>,
        done: Option<Done>,
    ) -> Self {
        conn.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            _admission: admission,
            conn,
            exchange,
            done,
        }
    }

    /// The response is done: record it with its status and body bytes.
    pub(super) fn finish(mut self, status: StatusCode, bytes: u64) {
        if let Some(done) = self.done.take() {
            done.record(status, bytes, self.exchange.body_bytes());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let status = StatusCode::from_u16(CLIENT_CLOSED).expect("499 is a valid status");
            done.record(status, 0, self.exchange.body_bytes());
        }
        self.conn.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.conn.touch();
        self.exchange.mark_disconnected();
    }
}

/// Status recorded (metrics, access log) for a request whose client left before the
/// response head: nginx's 499 "client closed request".
const CLIENT_CLOSED: u16 = 499;
