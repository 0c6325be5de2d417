//! The front's side of the control connection to the supervisor: hello, the slot lists
//! (fed to the pool), ready once the first list arrived, a heartbeat every second, new
//! configurations on reload, and a drain when the supervisor asks for one or goes away.

use crate::upstream::Pool;
use genro_config::Config;
use genro_shared::protocol::{self, CodecError, Message, QueryKind, Role, WorkerReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The counters reported in heartbeats, and the front's metrics (`worker="h3"`): its
/// QUIC connections and its own errors; the requests it forwards are counted by the
/// workers, as `protocol="http3"`.
#[derive(Debug)]
pub(crate) struct Stats {
    in_flight: AtomicU64,
    served: AtomicU64,
    registry: prometheus::Registry,
    connections_total: prometheus::IntCounter,
    connections_active: prometheus::IntGauge,
    errors: prometheus::IntCounterVec,
    limits: prometheus::IntCounterVec,
}

/// A bound an HTTP/3 client ran into in the front, counted in `limits_hit_total{kind}`
/// with the same labels as the workers' (docs/SECURITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `[limits] send_timeout`: a stream's client took no response bytes for that long.
    SendTimeout,
    /// `[limits] body_timeout`: an upload sent no bytes for that long.
    BodyTimeout,
}

impl Limit {
    const ALL: [Limit; 2] = [Limit::SendTimeout, Limit::BodyTimeout];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::SendTimeout => "send_timeout",
            Limit::BodyTimeout => "body_timeout",
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        use genro_shared::metrics::{counter_vec, gauge_vec};
        let registry = genro_shared::metrics::registry("h3");
        let total = counter_vec(
            &registry,
            "connections_total",
            "Connections accepted, by protocol.",
            &["protocol"],
        );
        let active = gauge_vec(
            &registry,
            "connections_active",
            "Connections open, by protocol.",
            &["protocol"],
        );
        let errors = counter_vec(
            &registry,
            "errors_total",
            "Errors, by kind: client, app, internal.",
            &["kind"],
        );
        for kind in ["client", "internal"] {
            errors.with_label_values(&[kind]);
        }
        let limits = counter_vec(
            &registry,
            "limits_hit_total",
            "Times a client ran into a bound, by kind (docs/SECURITY.md).",
            &["kind"],
        );
        for kind in Limit::ALL {
            limits.with_label_values(&[kind.label()]);
        }
        Stats {
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            connections_total: total.with_label_values(&["http3"]),
            connections_active: active.with_label_values(&["http3"]),
            errors,
            limits,
            registry,
        }
    }
}

/// An open QUIC connection, counted in the metrics until dropped.
#[derive(Debug)]
pub(crate) struct Connection(Arc<Stats>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections_active.dec();
    }
}

/// One request counted in [`Stats`] until dropped.
#[derive(Debug)]
pub(crate) struct Counted(Arc<Stats>);

impl Stats {
    /// Counts a request: started now, in flight until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> Counted {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Counted(self.clone())
    }

    /// Counts a QUIC connection (HTTP/3 set up).
    pub(crate) fn connection(self: &Arc<Self>) -> Connection {
        self.connections_total.inc();
        self.connections_active.inc();
        Connection(self.clone())
    }

    /// Counts an error: `client` (bad request, failed handshake) or `internal` (no
    /// worker, worker connection failed).
    pub(crate) fn error(&self, client: bool) {
        let kind = if client { "client" } else { "internal" };
        self.errors.with_label_values(&[kind]).inc();
    }

    /// Counts a bound hit (the caller logs it once per connection).
    pub(crate) fn limit(&self, kind: Limit) {
        self.limits.with_label_values(&[kind.label()]).inc();
    }

    fn heartbeat(&self) -> Message {
        Message::Heartbeat {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            loop_lag_ms: 0.0,
            loop_stalled_ms: 0,
            rss: 0,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Says who we are (the front has no slot: 0).
pub(crate) async fn hello(write: &mut OwnedWriteHalf, generation: u64) -> Result<(), CodecError> {
    let hello = Message::Hello {
        role: Role::Front,
        slot: 0,
        pid: std::process::id(),
        generation,
    };
    protocol::write_frame(write, &hello).await
}

/// Runs the control connection until it ends; sets `drain` on a `drain` message or when
/// the connection is lost. Heartbeats continue while draining, so the supervisor sees the
/// requests still in flight.
pub(crate) async fn run(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    pool: Arc<Pool>,
    stats: Arc<Stats>,
    drain: watch::Sender<bool>,
    configure: watch::Sender<Arc<Config>>,
) {
    let mut buf = bytes::BytesMut::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false;
    loop {
        // `read_frame` is cancel-safe here: partial frames stay in `buf`.
        let reply = tokio::select! {
            message = protocol::read_frame(&mut read, &mut buf) => match message {
                Ok(Some(Message::Slots { slots })) => {
                    pool.update(slots);
                    if ready {
                        None
                    } else {
                        ready = true;
                        tracing::info!("HTTP/3 front ready");
                        Some(Message::Ready)
                    }
                }
                Ok(Some(Message::Configure { config })) => {
                    match serde_json::from_str::<Config>(&config) {
                        Ok(config) => {
                            configure.send_replace(Arc::new(config));
                        }
                        Err(err) => tracing::error!("reload: unreadable configuration from the supervisor ({err}); keeping the current one"),
                    }
                    None
                }
                Ok(Some(Message::Drain)) => {
                    tracing::info!("drain requested by the supervisor");
                    drain.send_replace(true);
                    None
                }
                Ok(Some(Message::Query { id, what: QueryKind::Metrics })) => Some(Message::Answer {
                    id,
                    report: WorkerReport {
                        metrics: Some(genro_shared::metrics::encode(&stats.registry)),
                        ..WorkerReport::default()
                    },
                }),
                Ok(Some(Message::Query { id, .. })) => Some(Message::Answer {
                    id,
                    report: WorkerReport {
                        error: Some("not available in the HTTP/3 front".into()),
                        ..WorkerReport::default()
                    },
                }),
                Ok(Some(other)) => {
                    tracing::debug!("ignoring control message {}", other.kind());
                    None
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("lost the control connection to the supervisor; draining");
                    drain.send_replace(true);
                    return;
                }
            },
            _ = tick.tick() => Some(stats.heartbeat()),
        };
        if let Some(reply) = reply {
            if protocol::write_frame(&mut write, &reply).await.is_err() {
                tracing::warn!("lost the control connection to the supervisor; draining");
                drain.send_replace(true);
                return;
            }
        }
    }
}
