//! The worker's metrics: counters, gauges and histograms on atomics, the label children
//! resolved once (at start-up, or lazily the first time a combination is seen) so that a
//! request pays a few atomic adds and no label lookups. The supervisor scrapes them over
//! the control plane ([`Metrics::encode`]); see docs/OBSERVABILITY.md for the list.

use crate::executors::{Depth, Outcome, Pool};
use genro_shared::metrics::{counter_vec, gauge_vec, registry, DURATION_BUCKETS, LAG_BUCKETS};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
};
use std::sync::OnceLock;
use std::time::Duration;

/// How a request or connection reached the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2.
    Http2,
    /// HTTP/3, forwarded by the front.
    Http3,
    /// WebSocket.
    Websocket,
}

impl Protocol {
    const ALL: [Protocol; 4] = [
        Protocol::Http1,
        Protocol::Http2,
        Protocol::Http3,
        Protocol::Websocket,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Http3 => "http3",
            Protocol::Websocket => "websocket",
        }
    }

    /// The protocol of a request: its HTTP version, or HTTP/3 when the front forwarded it.
    pub fn of(version: http::Version, via_front: bool) -> Self {
        if via_front {
            Protocol::Http3
        } else if version == http::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }
}

/// What an error was caused by; sets the metric label (and, where it is logged, the level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was bad or the client went away: 400/413/431 from the server, header
    /// or TLS timeouts and failures, a disconnect before the response was complete.
    Client,
    /// The app raised or broke the ASGI protocol: 500 with an error id, or an aborted
    /// response.
    App,
    /// The server could not serve: 503 because `max_concurrency` is reached or the worker
    /// is stopping, a request cancelled at the end of the drain, failed accepts.
    Internal,
}

impl ErrorKind {
    const ALL: [ErrorKind; 3] = [ErrorKind::Client, ErrorKind::App, ErrorKind::Internal];

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::App => "app",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A bound a client ran into (`[limits]`, `[websocket]`): counted by kind in
/// `limits_hit_total`, and logged once per connection by whoever hits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `[limits] max_concurrency`: a request got 503.
    Concurrency,
    /// `[limits] response_buffer`: a response's `send()` waited for the client.
    ResponseBuffer,
    /// `[limits] connection_buffer`: the same, for a whole connection.
    ConnectionBuffer,
    /// `[limits] worker_buffer`: the same, for the whole worker.
    WorkerBuffer,
    /// `[limits] send_timeout`: a client took no response bytes for that long.
    SendTimeout,
    /// `[limits] body_timeout`: an upload stalled.
    BodyTimeout,
    /// `[limits] request_timeout`: a request's app ran too long (504 or abort).
    RequestTimeout,
    /// `[websocket] max_queue` / `max_queue_bytes`: reading from a client paused.
    WebsocketQueue,
    /// `[websocket] worker_queue_bytes`: the same, for the whole worker.
    WebsocketWorkerQueue,
    /// Too many control frames (pings) waiting for their answers.
    WebsocketControl,
    /// New connections outpaced the I/O thread: accepting paused while the accepted ones
    /// wait for their task (the rest wait in the listen backlog).
    AcceptPaused,
}

impl Limit {
    const ALL: [Limit; 11] = [
        Limit::Concurrency,
        Limit::ResponseBuffer,
        Limit::ConnectionBuffer,
        Limit::WorkerBuffer,
        Limit::SendTimeout,
        Limit::BodyTimeout,
        Limit::RequestTimeout,
        Limit::WebsocketQueue,
        Limit::WebsocketWorkerQueue,
        Limit::WebsocketControl,
        Limit::AcceptPaused,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Concurrency => "max_concurrency",
            Limit::ResponseBuffer => "response_buffer",
            Limit::ConnectionBuffer => "connection_buffer",
            Limit::WorkerBuffer => "worker_buffer",
            Limit::SendTimeout => "send_timeout",
            Limit::BodyTimeout => "body_timeout",
            Limit::RequestTimeout => "request_timeout",
            Limit::WebsocketQueue => "websocket_queue",
            Limit::WebsocketWorkerQueue => "websocket_worker_queue",
            Limit::WebsocketControl => "websocket_control",
            Limit::AcceptPaused => "accept_paused",
        }
    }
}

/// Why a connection was refused for its PROXY protocol header (`[server] proxy_protocol`):
/// counted in `proxy_protocol_errors_total`; the connection is closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The peer is not in `forwarded_allow_ips`, so it may not send a header, and only
    /// connections with one are served.
    Untrusted,
    /// No header: the connection began with something else (plain HTTP, TLS, garbage).
    Missing,
    /// A header of a version the setting does not accept.
    Version,
    /// A header that breaks the spec (bad CRLF, field, address, port, family, TLV).
    Malformed,
    /// A header longer than the bounds (v1: 107 bytes; v2: 4 KiB of addresses and TLVs).
    Oversized,
    /// The peer closed (or reset) the connection before the header was complete.
    Truncated,
    /// The header was not complete within `[limits] header_read_timeout`.
    Timeout,
}

impl ProxyRefusal {
    const ALL: [ProxyRefusal; 7] = [
        ProxyRefusal::Untrusted,
        ProxyRefusal::Missing,
        ProxyRefusal::Version,
        ProxyRefusal::Malformed,
        ProxyRefusal::Oversized,
        ProxyRefusal::Truncated,
        ProxyRefusal::Timeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "untrusted",
            ProxyRefusal::Missing => "missing",
            ProxyRefusal::Version => "version",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::Oversized => "oversized",
            ProxyRefusal::Truncated => "truncated",
            ProxyRefusal::Timeout => "timeout",
        }
    }
}

/// Methods with a label value of their own; any other is counted as `OTHER`.
const METHODS: [http::Method; 9] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::CONNECT,
    http::Method::OPTIONS,
    http::Method::TRACE,
    http::Method::PATCH,
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOCOLS: usize = Protocol::ALL.len();
const METHOD_SLOTS: usize = METHODS.len() + 1;
type RequestCells = [[[OnceLock<IntCounter>; STATUS_CLASSES.len()]; METHOD_SLOTS]; PROTOCOLS];

/// Every series a worker exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_total: [IntCounter; PROTOCOLS],
    connections_active: [IntGauge; PROTOCOLS],
    connections_unknown: IntCounter,
    requests_total: IntCounterVec,
    requests: Box<RequestCells>,
    duration: [Histogram; PROTOCOLS],
    in_flight: IntGauge,
    stuck: [IntGauge; 2],
    request_bytes: [IntCounter; PROTOCOLS],
    response_bytes: [IntCounter; PROTOCOLS],
    /// `sendfile_bytes_total`.
    pub(crate) sendfile_bytes: IntCounter,
    /// `static_responses_total`, by status class.
    static_responses: [IntCounter; STATUS_CLASSES.len()],
    ws_messages: [IntCounter; 2],
    errors: [IntCounter; 3],
    limits: [IntCounter; Limit::ALL.len()],
    proxy_refused: [IntCounter; ProxyRefusal::ALL.len()],
    loop_lag: Histogram,
    /// `executor_tasks_total`, by pool and outcome.
    executor_done: [[IntCounter; Outcome::ALL.len()]; Pool::ALL.len()],
    /// `executor_tasks`, by pool and state (queued, running).
    executor_depth: [[IntGauge; 2]; Pool::ALL.len()],
}

fn each<T, const N: usize, L: Copy>(labels: [L; N], f: impl Fn(L) -> T) -> [T; N] {
    labels.map(f)
}

impl Metrics {
    /// The series of worker `worker` (its slot number).
    pub fn new(worker: &str) -> Self {
        let registry = registry(worker);
        let connections_total = counter_vec(
            &registry,
            "connections_total",
            "Connections accepted, by protocol (`unknown`: closed before a first request).",
            &["protocol"],
        );
        let connections_unknown = connections_total.with_label_values(&["unknown"]);
        let active = gauge_vec(
            &registry,
            "connections_active",
            "Connections open, by protocol.",
            &["protocol"],
        );
        let requests_total = counter_vec(
            &registry,
            "requests_total",
            "Requests answered, by protocol, method and status class.",
            &["protocol", "method", "status"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from the request head to the end of the response, by protocol.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["protocol"],
        )
        .expect("valid metric");
        registry.register(Box::new(duration.clone())).expect("once");
        let in_flight =
            IntGauge::new("requests_in_flight", "Requests being served.").expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("once");
        let stuck = gauge_vec(
            &registry,
            "requests_stuck",
            "Requests older than [watchdog] timeout (warning) or critical (critical), at the last watchdog check.",
            &["level"],
        );
        let request_bytes = counter_vec(
            &registry,
            "request_body_bytes_total",
            "Request body bytes read, by protocol.",
            &["protocol"],
        );
        let response_bytes = counter_vec(
            &registry,
            "response_body_bytes_total",
            "Response body bytes written, by protocol.",
            &["protocol"],
        );
        let sendfile_bytes = IntCounter::new(
            "sendfile_bytes_total",
            "Response body bytes sent from files with sendfile(2) (`pathsend` and [static] files on plaintext HTTP/1.1); also counted in response_body_bytes_total.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(sendfile_bytes.clone()))
            .expect("once");
        let static_responses = counter_vec(
            &registry,
            "static_responses_total",
            "Responses from [static] mounts (files, and an exclusive mount's 404/405), by status class; also counted in requests_total.",
            &["status"],
        );
        let ws_messages = counter_vec(
            &registry,
            "websocket_messages_total",
            "WebSocket messages, by direction (received from / sent to clients).",
            &["direction"],
        );
        let errors = counter_vec(
            &registry,
            "errors_total",
            "Errors, by kind: client, app, internal.",
            &["kind"],
        );
        let limits = counter_vec(
            &registry,
            "limits_hit_total",
            "Times a client ran into a bound, by kind (docs/SECURITY.md).",
            &["kind"],
        );
        let proxy_refused = counter_vec(
            &registry,
            "proxy_protocol_errors_total",
            "Connections closed for their PROXY protocol header ([server] proxy_protocol), by reason (docs/OBSERVABILITY.md).",
            &["reason"],
        );
        let loop_lag = Histogram::with_opts(
            HistogramOpts::new(
                "loop_lag_seconds",
                "How late the Python event loop ran the watchdog's ticker (sampled every 0.5 s).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry.register(Box::new(loop_lag.clone())).expect("once");
        let executor_done = counter_vec(
            &registry,
            "executor_tasks_total",
            "Executor tasks ended, by pool (thread, process) and outcome (completed, failed, cancelled).",
            &["pool", "outcome"],
        );
        let executor_depth = gauge_vec(
            &registry,
            "executor_tasks",
            "Executor tasks pending, by pool and state (queued, running).",
            &["pool", "state"],
        );
        Metrics {
            executor_done: each(Pool::ALL, |p| {
                each(Outcome::ALL, |o| {
                    executor_done.with_label_values(&[p.label(), o.label()])
                })
            }),
            executor_depth: each(Pool::ALL, |p| {
                each(["queued", "running"], |s| {
                    executor_depth.with_label_values(&[p.label(), s])
                })
            }),
            connections_total: each(Protocol::ALL, |p| {
                connections_total.with_label_values(&[p.label()])
            }),
            connections_active: each(Protocol::ALL, |p| active.with_label_values(&[p.label()])),
            duration: each(Protocol::ALL, |p| duration.with_label_values(&[p.label()])),
            request_bytes: each(Protocol::ALL, |p| {
                request_bytes.with_label_values(&[p.label()])
            }),
            response_bytes: each(Protocol::ALL, |p| {
                response_bytes.with_label_values(&[p.label()])
            }),
            sendfile_bytes,
            static_responses: STATUS_CLASSES.map(|c| static_responses.with_label_values(&[c])),
            stuck: each(["warning", "critical"], |l| stuck.with_label_values(&[l])),
            ws_messages: each(["received", "sent"], |d| {
                ws_messages.with_label_values(&[d])
            }),
            errors: each(ErrorKind::ALL, |k| errors.with_label_values(&[k.label()])),
            limits: each(Limit::ALL, |k| limits.with_label_values(&[k.label()])),
            proxy_refused: each(ProxyRefusal::ALL, |r| {
                proxy_refused.with_label_values(&[r.label()])
            }),
            requests: Box::default(),
            connections_unknown,
            requests_total,
            in_flight,
            loop_lag,
            registry,
        }
    }

    /// A connection's first request arrived over `protocol`.
    pub fn connection_opened(&self, protocol: Protocol) {
        self.connections_total[protocol as usize].inc();
        self.connections_active[protocol as usize].inc();
    }

    /// A connection counted by [`Self::connection_opened`] closed.
    pub fn connection_closed(&self, protocol: Protocol) {
        self.connections_active[protocol as usize].dec();
    }

    /// A response from a `[static]` mount finished.
    pub fn static_done(&self, status: http::StatusCode) {
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        self.static_responses[class].inc();
    }

    /// A connection closed before its first request.
    pub fn connection_unknown(&self) {
        self.connections_unknown.inc();
    }

    /// A response finished (written whole, or abandoned by the client).
    pub fn request_done(
        &self,
        protocol: Protocol,
        method: &http::Method,
        status: http::StatusCode,
        elapsed: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let m = METHODS
            .iter()
            .position(|known| known == method)
            .unwrap_or(METHODS.len());
        let class = (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1;
        let p = protocol as usize;
        self.requests[p][m][class]
            .get_or_init(|| {
                let method = METHODS.get(m).map_or("OTHER", |known| known.as_str());
                self.requests_total.with_label_values(&[
                    protocol.label(),
                    method,
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.duration[p].observe(elapsed.as_secs_f64());
        self.request_bytes[p].inc_by(request_bytes);
        self.response_bytes[p].inc_by(response_bytes);
    }

    /// Counts an error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts a bound hit.
    pub fn limit(&self, kind: Limit) {
        self.limits[kind as usize].inc();
    }

    /// Counts a connection refused for its PROXY protocol header.
    pub fn proxy_refused(&self, reason: ProxyRefusal) {
        self.proxy_refused[reason as usize].inc();
    }

    /// A WebSocket message went in (`received`) or out.
    pub fn websocket_message(&self, received: bool) {
        self.ws_messages[usize::from(!received)].inc();
    }

    /// The Python loop ran its ticker `lag` late.
    pub fn loop_lag(&self, lag: Duration) {
        self.loop_lag.observe(lag.as_secs_f64());
    }

    /// The watchdog's last count of stuck requests.
    pub fn set_stuck(&self, warning: u64, critical: u64) {
        self.stuck[0].set(warning as i64);
        self.stuck[1].set(critical as i64);
    }

    /// An executor task ended.
    pub fn executor_done(&self, pool: Pool, outcome: Outcome) {
        self.executor_done[pool as usize][outcome as usize].inc();
    }

    /// The Prometheus text, with `in_flight` requests and the executors' `depth`.
    pub fn encode(&self, in_flight: usize, depth: [Depth; 2]) -> String {
        self.in_flight.set(in_flight as i64);
        for (gauges, d) in self.executor_depth.iter().zip(depth) {
            gauges[0].set(d.queued as i64);
            gauges[1].set(d.running as i64);
        }
        genro_shared::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_its_labels() {
        let m = Metrics::new("3");
        let ms = Duration::from_millis(2);
        m.request_done(
            Protocol::Http2,
            &http::Method::GET,
            http::StatusCode::OK,
            ms,
            0,
            5,
        );
        m.request_done(
            Protocol::Http2,
            &http::Method::GET,
            http::StatusCode::OK,
            ms,
            0,
            5,
        );
        let purge = http::Method::from_bytes(b"PURGE").unwrap();
        m.request_done(
            Protocol::Http1,
            &purge,
            http::StatusCode::NOT_FOUND,
            ms,
            7,
            0,
        );
        m.error(ErrorKind::App);
        m.limit(Limit::SendTimeout);
        m.proxy_refused(ProxyRefusal::Oversized);
        m.executor_done(Pool::Process, Outcome::Failed);
        let depth = [
            Depth {
                queued: 2,
                running: 1,
            },
            Depth::default(),
        ];
        let text = m.encode(4, depth);
        for line in [
            "genro_asgi_requests_total{method=\"GET\",protocol=\"http2\",status=\"2xx\",worker=\"3\"} 2",
            "genro_asgi_requests_total{method=\"OTHER\",protocol=\"http1\",status=\"4xx\",worker=\"3\"} 1",
            "genro_asgi_request_duration_seconds_count{protocol=\"http2\",worker=\"3\"} 2",
            "genro_asgi_request_body_bytes_total{protocol=\"http1\",worker=\"3\"} 7",
            "genro_asgi_response_body_bytes_total{protocol=\"http2\",worker=\"3\"} 10",
            "genro_asgi_errors_total{kind=\"app\",worker=\"3\"} 1",
            "genro_asgi_errors_total{kind=\"client\",worker=\"3\"} 0",
            "genro_asgi_limits_hit_total{kind=\"send_timeout\",worker=\"3\"} 1",
            "genro_asgi_limits_hit_total{kind=\"worker_buffer\",worker=\"3\"} 0",
            "genro_asgi_proxy_protocol_errors_total{reason=\"oversized\",worker=\"3\"} 1",
            "genro_asgi_proxy_protocol_errors_total{reason=\"untrusted\",worker=\"3\"} 0",
            "genro_asgi_requests_in_flight{worker=\"3\"} 4",
            "genro_asgi_executor_tasks_total{outcome=\"failed\",pool=\"process\",worker=\"3\"} 1",
            "genro_asgi_executor_tasks{pool=\"thread\",state=\"queued\",worker=\"3\"} 2",
            "genro_asgi_executor_tasks{pool=\"thread\",state=\"running\",worker=\"3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        // Combinations never seen are not exported.
        assert!(!text.contains("method=\"POST\""));
    }
}
