//! The supervisor's HTTP listener (`[metrics] host`:`export_port`): Prometheus metrics at
//! `[metrics] endpoint`, `/healthz` and `/readyz`, and the request inspector
//! ([`crate::inspector`]) when it is on.
//!
//! Every request is answered by the supervisor's main loop (through [`Probe`]s), so a
//! liveness probe also proves that the loop turns. A metrics scrape asks every serving
//! worker and the HTTP/3 front for their series over the control plane, at scrape time;
//! one that does not answer within the query timeout is shown as `genro_asgi_worker_up 0`
//! and the scrape still succeeds with everything else.

use bytes::Bytes;
use genro_shared::metrics::{self, CONTENT_TYPE};
use genro_shared::protocol::WorkerReport;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A question for the supervisor's main loop.
#[derive(Debug)]
pub enum Probe {
    /// `/healthz`: answered at once by a live loop.
    Alive(oneshot::Sender<()>),
    /// `/readyz`: `Ok` when at least one worker is ready and the fleet does not drain, else
    /// why not.
    Ready(oneshot::Sender<Result<String, NotReady>>),
    /// The metrics of every serving worker and the front (answered when all did, or at
    /// the query timeout with an error for the silent ones).
    Metrics(oneshot::Sender<Vec<WorkerReport>>),
    /// The inspector's data: the fleet and every worker process's requests.
    Inspect(oneshot::Sender<crate::inspector::Inspection>),
    /// The fleet (the remote debugger finds the workers in it).
    Status(oneshot::Sender<genro_shared::protocol::FleetStatus>),
}

/// Why `/readyz` answers 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The fleet stops.
    #[error("draining: shutting down")]
    Draining,
    /// No worker is ready yet at start.
    #[error("starting: 0 of {size} worker(s) ready")]
    Starting {
        /// Workers the fleet starts.
        size: usize,
    },
    /// Serving, but no worker is ready (all crashed, respawning).
    #[error("no worker ready (of {size})")]
    NoWorker {
        /// Workers the fleet has.
        size: usize,
    },
}

/// The supervisor's own series: restarts, reloads, build info.
#[derive(Debug, Clone)]
pub struct Observed {
    registry: Registry,
    restarts: IntCounterVec,
    reloads: IntCounterVec,
    workers: IntGauge,
    build_info: IntGaugeVec,
}

impl Observed {
    /// Registers the series; `python` is the workers' version (major, minor).
    pub fn new(python: &(u32, u32)) -> Self {
        let registry =
            Registry::new_custom(Some(metrics::PREFIX.to_owned()), None).expect("valid prefix");
        let restarts = metrics::counter_vec(
            &registry,
            "worker_restarts_total",
            "Worker (and HTTP/3 front) processes replaced, by reason: exit, signal (crashes), hung (heartbeat timeout or blocked loop), spawn_failed, max_requests, max_lifetime, max_rss, reload.",
            &["reason"],
        );
        let reloads = metrics::counter_vec(
            &registry,
            "reloads_total",
            "Reloads, by result: ok or failed.",
            &["result"],
        );
        let workers = IntGauge::new("workers", "Worker slots configured.").expect("valid");
        registry
            .register(Box::new(workers.clone()))
            .expect("registered once");
        let build_info = metrics::gauge_vec(
            &registry,
            "build_info",
            "Always 1; the labels tell the genro-asgi version and the workers' Python version.",
            &["version", "python_version"],
        );
        // The labels an operator alerts on exist from the start, at 0.
        for reason in ["exit", "signal", "hung"] {
            restarts.with_label_values(&[reason]);
        }
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let observed = Observed {
            registry,
            restarts,
            reloads,
            workers,
            build_info,
        };
        observed.set_python_version(python);
        observed
    }

    /// The workers' Python version in `build_info` (a reload may change it).
    pub fn set_python_version(&self, (major, minor): &(u32, u32)) {
        self.build_info.reset();
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &format!("{major}.{minor}")])
            .set(1);
    }

    /// A worker (or the front) was replaced for `reason`.
    pub fn restart(&self, reason: &str) {
        self.restarts.with_label_values(&[reason]).inc();
    }

    /// A reload ended.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The configured number of worker slots.
    pub fn set_workers(&self, workers: usize) {
        self.workers.set(workers as i64);
    }

    /// The whole exposition: the supervisor's series, `worker_up` for every asked process,
    /// and the series of those that answered.
    pub fn render(&self, reports: &[WorkerReport]) -> String {
        let up = Registry::new_custom(Some(metrics::PREFIX.to_owned()), None).expect("prefix");
        let gauge = metrics::gauge_vec(
            &up,
            "worker_up",
            "1 if the worker (or the HTTP/3 front, worker=\"h3\") answered this scrape in time, else 0.",
            &["worker"],
        );
        let mut texts = vec![metrics::encode(&self.registry)];
        let mut notes = String::new();
        for report in reports {
            let label = if report.front {
                "h3".to_owned()
            } else {
                report.slot.to_string()
            };
            let answered = report.metrics.is_some();
            gauge.with_label_values(&[&label]).set(i64::from(answered));
            match &report.metrics {
                Some(text) => texts.push(text.clone()),
                None => notes.push_str(&format!(
                    "# worker {label} (pid {}): {}\n",
                    report.pid,
                    report.error.as_deref().unwrap_or("no metrics")
                )),
            }
        }
        texts.insert(1, metrics::encode(&up));
        let mut out = metrics::merge(texts.iter().map(String::as_str));
        out.push_str(&notes);
        out
    }
}

/// Connections the listener serves at once (Prometheus and two probes need three).
const MAX_CONNECTIONS: usize = 16;

/// Longest a request waits for the main loop before it is answered 503.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the listener until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: String,
    observed: Observed,
    probes: mpsc::Sender<Probe>,
    inspector: Option<crate::inspector::Inspector>,
) {
    let ctx = Arc::new(Listener {
        endpoint,
        observed,
        probes,
        inspector,
    });
    crate::sockets::serve_bounded(
        listener,
        MAX_CONNECTIONS,
        "metrics listener",
        |stream, _| {
            let ctx = ctx.clone();
            async move {
                let service = hyper::service::service_fn(move |request| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(request, &ctx).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        },
    )
    .await;
}

/// What the listener's requests are answered from.
struct Listener {
    endpoint: String,
    observed: Observed,
    probes: mpsc::Sender<Probe>,
    inspector: Option<crate::inspector::Inspector>,
}

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

pub(crate) async fn ask<T>(
    probes: &mpsc::Sender<Probe>,
    probe: impl FnOnce(oneshot::Sender<T>) -> Probe,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    // A full queue means the main loop is behind: answer 503 rather than wait.
    probes.try_send(probe(tx)).ok()?;
    tokio::time::timeout(LOOP_TIMEOUT, rx).await.ok()?.ok()
}

async fn answer(request: Request<Incoming>, ctx: &Listener) -> Response<Full<Bytes>> {
    let Listener {
        endpoint,
        observed,
        probes,
        inspector,
    } = ctx;
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    let unavailable = || {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the supervisor did not answer in time\n".into(),
        )
    };
    let path = request.uri().path();
    if let Some(inspector) = inspector
        .as_ref()
        .filter(|_| crate::inspector::is_inspector_path(path))
    {
        return inspector.answer(path, request.headers(), probes).await;
    }
    match path {
        path if path == endpoint => match ask(probes, Probe::Metrics).await {
            Some(reports) => text(StatusCode::OK, CONTENT_TYPE, observed.render(&reports)),
            None => unavailable(),
        },
        "/healthz" => match ask(probes, Probe::Alive).await {
            Some(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
            None => unavailable(),
        },
        "/readyz" => match ask(probes, Probe::Ready).await {
            Some(Ok(why)) => text(StatusCode::OK, PLAIN, format!("{why}\n")),
            Some(Err(why)) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
            None => unavailable(),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("not found; try {endpoint}, /healthz or /readyz\n"),
        ),
    }
}
