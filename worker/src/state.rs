//! The worker's state, shared by the tokio side and the Python side of every protocol:
//! settings the request path reads, counters, the registry of requests in flight, the
//! hand-off queue, and the event streams a drain ends.

use crate::handoff::Handoff;
use genro_shared::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;

/// Worker-wide state shared by the tokio side and the Python side.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The hand-off queue to the Python thread.
    pub(crate) handoff: Arc<Handoff>,
    /// Runtime used to spawn waits (body reads, full channels).
    pub(crate) runtime: tokio::runtime::Handle,
    /// `[server] root_path`.
    pub(crate) root_path: String,
    /// `[limits] body_timeout` (zero: none).
    pub(crate) body_timeout: std::time::Duration,
    /// Open `text/event-stream` responses, ended on a drain.
    pub(crate) event_streams: EventStreams,
    /// `[errors] show_traceback`.
    pub(crate) show_traceback: bool,
    /// Requests started.
    pub(crate) started: AtomicU64,
    /// `max_requests` (its jitter included): the start that reaches it wakes `retire`;
    /// 0: never.
    pub(crate) retire_at: u64,
    /// Woken by the request that reaches `retire_at`.
    pub(crate) retire: tokio::sync::Notify,
    /// The worker reached `max_requests`: its drain leaves queued connections to its
    /// successor.
    pub(crate) retiring: AtomicBool,
    /// Requests in flight (admitted, response not finished).
    pub(crate) in_flight: AtomicUsize,
    /// HTTP requests in flight (WebSockets not counted): what `max_concurrency` bounds.
    pub(crate) http_in_flight: AtomicUsize,
    /// Exchange starts (HTTP and WebSocket) in the hand-off queue, including those whose
    /// client left (see [`crate::admission::QueuedStart`]); `max_concurrency` bounds it.
    pub(crate) starts_queued: AtomicUsize,
    /// `[limits] worker_buffer`: response bytes queued for clients, worker-wide.
    pub(crate) worker_buffer: Arc<crate::budget::Budget>,
    /// The worker is draining: HTTP/1.1 responses carry `Connection: close`.
    pub(crate) draining: AtomicBool,
    /// Turns true when WebSockets and event streams start their `drain_grace`: when this
    /// worker drains, or earlier, when a stop begins and the HTTP/3 front drains first
    /// (`Message::GoingAway`: its WebSockets end only when the worker closes them).
    pub(crate) going_away: tokio::sync::watch::Sender<bool>,
    /// `[websocket] drain_grace`, bounded by `graceful_timeout`.
    pub(crate) drain_grace: std::time::Duration,
    /// Requests in flight, for `ctl requests`.
    pub(crate) registry: crate::registry::Registry,
    /// The executors' pending tasks.
    pub(crate) executors: Arc<crate::executors::Tasks>,
    /// The Python loop's lag and liveness.
    pub(crate) health: Arc<crate::health::LoopHealth>,
    /// `[metrics] enabled`.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where critical events go (to the supervisor, then the webhook), when
    /// `[errors] notify_critical` is on.
    pub(crate) notices: Option<mpsc::Sender<genro_shared::protocol::Message>>,
}

/// Most bytes of a traceback sent to the webhook (its end: the exception is last).
const MAX_NOTIFIED_TRACEBACK: usize = 16 * 1024;

/// The exchange an app exception belongs to, as it is logged and notified.
#[derive(Clone, Copy)]
pub(crate) struct Failing<'a> {
    /// The exchange's facts; its id is the error id the client sees.
    pub(crate) envelope: &'a crate::registry::Envelope,
    /// A WebSocket session (named so in the log line).
    pub(crate) websocket: bool,
}

/// The last `max` bytes of `text` (cut at a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut at = text.len().saturating_sub(max);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

impl Shared {
    /// Passes a critical event on to the supervisor's webhook sender, if notifications are
    /// on; never waits (dropped when the queue is full).
    pub(crate) fn notify(&self, event: serde_json::Value) {
        if let Some(notices) = &self.notices {
            let _ = notices.try_send(genro_shared::protocol::Message::Critical { event });
        }
    }

    /// An exception the app raised for an exchange: counted, logged at ERROR with its
    /// traceback under the error id, and passed to the webhook.
    pub(crate) fn app_exception(&self, failing: Failing<'_>, traceback: &str) {
        self.error(crate::metrics::ErrorKind::App);
        let Failing {
            envelope,
            websocket,
        } = failing;
        let id = envelope.id;
        let kind = if websocket { "WebSocket, " } else { "" };
        tracing::error!(
            parent: envelope.span(),
            error_id = %id,
            "exception in ASGI app ({kind}error id {id})\n{}",
            traceback.trim_end()
        );
        self.notify(serde_json::json!({
            "event": "app_exception",
            "request_id": id.as_str(),
            "method": envelope.method.as_str(),
            "path": envelope.path(),
            "client": genro_shared::peer_text(envelope.client),
            "pid": std::process::id(),
            "traceback": tail(traceback.trim_end(), MAX_NOTIFIED_TRACEBACK),
        }));
    }

    /// An ASGI protocol error the app made for an exchange: counted, logged at ERROR under
    /// the error id; returns the 500 body.
    pub(crate) fn protocol_error(&self, failing: Failing<'_>, why: &str) -> String {
        self.error(crate::metrics::ErrorKind::App);
        let Failing { envelope, .. } = failing;
        let id = envelope.id;
        let kind = if failing.websocket {
            " (WebSocket)"
        } else {
            ""
        };
        tracing::error!(parent: envelope.span(), error_id = %id, "ASGI protocol error{kind}: {why} (error id {id})");
        format!("Internal Server Error (error id: {id})\n")
    }

    /// Counts a bound a client ran into (when metrics are on).
    pub(crate) fn limit(&self, kind: crate::metrics::Limit) {
        if let Some(metrics) = &self.metrics {
            metrics.limit(kind);
        }
    }

    /// Counts a connection refused for its PROXY protocol header, in
    /// `proxy_protocol_errors_total` and, as a client error, in `errors_total`.
    pub(crate) fn proxy_refused(&self, reason: crate::metrics::ProxyRefusal) {
        if let Some(metrics) = &self.metrics {
            metrics.proxy_refused(reason);
            metrics.error(crate::metrics::ErrorKind::Client);
        }
    }

    /// Counts an error in the metrics (when they are on).
    pub(crate) fn error(&self, kind: crate::metrics::ErrorKind) {
        if let Some(metrics) = &self.metrics {
            metrics.error(kind);
        }
    }
}

/// A response a drain ends early (an HTTP `text/event-stream`).
pub(crate) trait EventStream: Send + Sync {
    /// Whether it is still open.
    fn is_open(&self) -> bool;
    /// Ends it: the app's `receive()` gets its disconnect, `send()` raises.
    fn end(self: Arc<Self>);
}

/// The worker's open event streams, ended `[websocket] drain_grace` after a drain starts.
#[derive(Debug, Default)]
pub(crate) struct EventStreams {
    streams: Mutex<Vec<Weak<dyn EventStream>>>,
    /// The drain's grace is over: a stream that opens now ends at once.
    ended: AtomicBool,
}

impl std::fmt::Debug for dyn EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl EventStreams {
    /// Registers an open stream (ended at once if the grace is already over).
    pub(crate) fn add<S: EventStream + 'static>(&self, stream: &Arc<S>) {
        if self.ended.load(Ordering::Acquire) {
            stream.clone().end();
            return;
        }
        let mut streams = lock(&self.streams);
        if streams.len() == streams.capacity() {
            // Amortised: forget the streams that finished before growing.
            streams.retain(|s| s.strong_count() > 0);
        }
        let weak: Weak<dyn EventStream> = Arc::downgrade(stream) as Weak<dyn EventStream>;
        streams.push(weak);
    }

    /// Ends every open stream; returns how many.
    pub(crate) fn end_all(&self) -> usize {
        self.ended.store(true, Ordering::Release);
        let streams = std::mem::take(&mut *lock(&self.streams));
        let mut ended = 0;
        for stream in streams.iter().filter_map(Weak::upgrade) {
            if stream.is_open() {
                stream.end();
                ended += 1;
            }
        }
        ended
    }
}
