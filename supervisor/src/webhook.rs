//! The `[errors] notify_critical` webhook: critical events (an app exception, a critical
//! stuck request, a worker crash loop) are POSTed as JSON to `notify_webhook` by a
//! background task, rate-limited, so that reporting a failure never adds one.
//!
//! 1. [`Webhook::start`] parses the URL, loads the system trust store for https and spawns
//!    the sender task on the current tokio runtime.
//! 2. [`Webhook::notify`] stamps the event with the wall-clock and monotonic time and
//!    `try_send`s it on a bounded queue (64); a full queue drops it and counts it.
//! 3. The sender takes events one at a time and runs them through a token bucket (burst 10,
//!    one token per 6 s) keyed on the time the event was raised, not dequeued, so a slow
//!    delivery does not widen the limit. Dropped events are counted; the first drop of an
//!    episode logs one warning.
//! 4. An event that passes gets `time`, `host`, `service` and, after drops, `suppressed`,
//!    and is POSTed over HTTP/1.1: at most 3 attempts (waiting 1 s, then 3 s), each bounded
//!    by a 5 s total timeout; a 2xx ends it, the last failure is logged and the event dropped.
//! 5. When every [`Webhook`] handle is dropped the queue closes and the task ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, ClientConfig};

mod delivery;

use delivery::{system_roots, tls_config, Delivery, Scheme, Target};

/// Events waiting for the sender; past this, `notify` drops and counts them.
const QUEUE_CAPACITY: usize = 64;

/// The `service` field of every event.
const SERVICE: &str = "genro-asgi";

/// Limits and delays of the sender, one value in production and shrunk ones in tests.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Events that may be sent back to back.
    burst: u32,
    /// Time to earn back one token.
    refill: Duration,
    /// Bound on one attempt: connect, TLS, request and response head.
    attempt_timeout: Duration,
    /// Waits before the second and third attempts.
    retry_delays: [Duration; 2],
}

/// 10 events a minute with a burst of 10; 1 + 2 retries.
const PRODUCTION: Timing = Timing {
    burst: 10,
    refill: Duration::from_secs(6),
    attempt_timeout: Duration::from_secs(5),
    retry_delays: [Duration::from_secs(1), Duration::from_secs(3)],
};

/// Handle to the sender task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhook {
    queue: mpsc::Sender<Raised>,
    /// Events dropped because the queue was full, not yet reported in a sent event.
    overflow: Arc<AtomicU64>,
}

/// One event as `notify` received it.
#[derive(Debug)]
struct Raised {
    event: Value,
    /// For the token bucket.
    at: Instant,
    /// For the `time` field.
    wall: SystemTime,
}

/// Why the `[errors] notify_webhook` sender cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The value does not parse as a URI.
    #[error("notify_webhook {url:?}: not a URL: {source}")]
    NotAUrl {
        /// The configured value.
        url: String,
        /// What the URI parser said.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Neither `http://` nor `https://`.
    #[error("notify_webhook {url:?}: expected an http:// or https:// URL")]
    Scheme {
        /// The configured value.
        url: String,
    },
    /// The URL names no host.
    #[error("notify_webhook {url:?}: no host")]
    NoHost {
        /// The configured value.
        url: String,
    },
    /// `user:password@` in the URL (sending without them would only turn into 401s).
    #[error("notify_webhook {url:?}: credentials in the URL are not supported")]
    Credentials {
        /// The configured value.
        url: String,
    },
    /// The host cannot be checked against a certificate.
    #[error("notify_webhook host {host:?}: {source}")]
    ServerName {
        /// The URL's host.
        host: String,
        /// Why it is not a DNS name.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// https, but the system trust store is empty (`why`: the first loading error, if any,
    /// as `": <error>"`).
    #[error(
        "notify_webhook: no trusted root certificates found for https (set SSL_CERT_FILE){why}"
    )]
    NoRoots {
        /// `": <first error>"`, or empty.
        why: String,
    },
    /// The TLS client could not be set up.
    #[error("notify_webhook TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// Started outside a tokio runtime.
    #[error("the webhook sender needs a tokio runtime")]
    NoRuntime,
}

impl Webhook {
    /// Parses the URL and spawns the sender on the current tokio runtime. Err names the problem.
    ///
    /// An https URL is checked against the system trust store (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` override it), read here once.
    pub fn start(url: &str) -> Result<Webhook, WebhookError> {
        let target = Target::parse(url)?;
        let tls = match target.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(tls_config(system_roots()?)?),
        };
        spawn(target, tls, PRODUCTION)
    }

    /// Queues one event (a JSON object; the sender adds "time" (RFC 3339 UTC), "host"
    /// (hostname from libc gethostname or /proc/sys/kernel/hostname), "service":
    /// "genro-asgi", and "suppressed": N when the rate limit dropped N events since the last
    /// one sent). Never blocks or allocates much: a bounded queue (64); when full, the event
    /// is dropped and counted as suppressed.
    ///
    /// A value that is not an object is sent as `{"event": value}`; the added fields
    /// replace any of the same name.
    pub fn notify(&self, event: serde_json::Value) {
        let raised = Raised {
            event,
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        match self.queue.try_send(raised) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
            }
            // The sender only stops when every handle is gone, so this is a runtime shutdown.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Starts the sender for an already parsed target.
fn spawn(
    target: Target,
    tls: Option<Arc<ClientConfig>>,
    timing: Timing,
) -> Result<Webhook, WebhookError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
    let (queue, events) = mpsc::channel(QUEUE_CAPACITY);
    let overflow = Arc::new(AtomicU64::new(0));
    let sender = Sender {
        delivery: Delivery {
            target,
            tls,
            user_agent: format!("genro-asgi/{}", env!("CARGO_PKG_VERSION")),
            timing,
        },
        bucket: TokenBucket::new(timing.burst, timing.refill, Instant::now()),
        host: hostname(),
        overflow: Arc::clone(&overflow),
        suppressed: 0,
    };
    runtime.spawn(sender.run(events));
    Ok(Webhook { queue, overflow })
}

/// The background task's state.
#[derive(Debug)]
struct Sender {
    delivery: Delivery,
    bucket: TokenBucket,
    host: String,
    overflow: Arc<AtomicU64>,
    /// Events dropped since the last one sent.
    suppressed: u64,
}

impl Sender {
    async fn run(mut self, mut events: mpsc::Receiver<Raised>) {
        while let Some(raised) = events.recv().await {
            if let Some(body) = self.handle_raised(raised) {
                self.delivery.deliver(body).await;
            }
        }
    }

    /// Applies the rate limit; returns the body to send, if the event passes.
    fn handle_raised(&mut self, raised: Raised) -> Option<Bytes> {
        let before = self.suppressed;
        self.suppressed += self.overflow.swap(0, Ordering::Relaxed);
        let passes = self.bucket.try_take(raised.at);
        if !passes {
            self.suppressed += 1;
        }
        if before == 0 && self.suppressed > 0 {
            tracing::warn!(
                "critical-event webhook: rate limit reached, dropping notifications; \
                 the next one sent carries the count in \"suppressed\""
            );
        }
        if !passes {
            return None;
        }
        let event = enrich(raised.event, raised.wall, &self.host, self.suppressed);
        self.suppressed = 0;
        // Serializing a `Value` cannot fail: its map keys are strings.
        serde_json::to_vec(&event).ok().map(Bytes::from)
    }
}

/// Adds the sender's fields to an event.
fn enrich(event: Value, wall: SystemTime, host: &str, suppressed: u64) -> Value {
    let mut object = match event {
        Value::Object(object) => object,
        other => {
            let mut object = Map::new();
            object.insert("event".to_owned(), other);
            object
        }
    };
    object.insert(
        "time".to_owned(),
        Value::String(genro_shared::clock::Rfc3339(wall).to_string()),
    );
    object.insert("host".to_owned(), Value::String(host.to_owned()));
    object.insert("service".to_owned(), Value::String(SERVICE.to_owned()));
    if suppressed > 0 {
        object.insert("suppressed".to_owned(), Value::from(suppressed));
    }
    Value::Object(object)
}

/// A token bucket fed by the caller's clock: `capacity` tokens, one back per `refill`.
#[derive(Debug)]
struct TokenBucket {
    capacity: u32,
    tokens: u32,
    refill: Duration,
    /// When the last token was earned (or the bucket was last seen full).
    last: Instant,
}

impl TokenBucket {
    fn new(capacity: u32, refill: Duration, now: Instant) -> Self {
        TokenBucket {
            capacity,
            tokens: capacity,
            refill,
            last: now,
        }
    }

    /// Takes a token if there is one at `now`. An earlier `now` than seen before (events
    /// raised on two threads race for the queue) earns nothing.
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let periods = elapsed.as_nanos() / self.refill.as_nanos().max(1);
        if periods > 0 {
            let earned = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
            // A full bucket earns nothing more, so time spent full is not banked.
            if self.tokens == self.capacity {
                self.last = now;
            } else {
                // `earned` < capacity here, so this neither overflows nor passes `now`.
                self.last += self.refill * earned;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// This machine's name for the `host` field.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        // POSIX leaves a truncated name unterminated, so only a NUL inside `buf` counts.
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            let name = String::from_utf8_lossy(&buf[..end]);
            if !name.is_empty() {
                return name.into_owned();
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests;
