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

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

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

/// The URL scheme, which picks the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// Where events go, taken apart once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    /// Name or address to connect to and to verify, without IPv6 brackets.
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority without credentials.
    authority: String,
    /// The request target (RFC 9112 origin-form).
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, WebhookError> {
        let uri: Uri = url.parse().map_err(|source| WebhookError::NotAUrl {
            url: url.to_owned(),
            source,
        })?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => {
                return Err(WebhookError::Scheme {
                    url: url.to_owned(),
                })
            }
        };
        let no_host = || WebhookError::NoHost {
            url: url.to_owned(),
        };
        let authority = uri.authority().ok_or_else(no_host)?;
        if authority.as_str().contains('@') {
            // Sending without them would only turn into 401s; a token belongs in the path.
            return Err(WebhookError::Credentials {
                url: url.to_owned(),
            });
        }
        let bracketed = authority.host();
        let host = bracketed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(bracketed);
        if host.is_empty() {
            return Err(no_host());
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let path = match uri.path() {
            "" => "/",
            path => path,
        };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        Ok(Target {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// The name the server's certificate must carry.
    fn server_name(&self) -> Result<ServerName<'static>, WebhookError> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::from(ip)),
            Err(_) => {
                ServerName::try_from(self.host.clone()).map_err(|source| WebhookError::ServerName {
                    host: self.host.clone(),
                    source,
                })
            }
        }
    }
}

/// The system trust store, or why there is none.
fn system_roots() -> Result<RootCertStore, WebhookError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        let why = loaded
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(WebhookError::NoRoots { why });
    }
    Ok(roots)
}

/// A TLS client offering only HTTP/1.1, on the ring provider like the rest of the server.
fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// TCP connect (or name resolution) failed.
    #[error("connect to {0} failed: {1}")]
    Connect(String, #[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The host is not a valid TLS server name.
    #[error(transparent)]
    ServerName(WebhookError),
    /// HTTP/1.1 failed on an open connection.
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built from the parsed URL.
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    /// The connection closed before a response head.
    #[error("connection closed before a response")]
    Closed,
    /// The whole attempt took longer than its bound.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The receiver answered, but not with a 2xx.
    #[error("answered {0}")]
    Status(StatusCode),
}

/// How to send one body: target, transport and timing.
#[derive(Debug)]
struct Delivery {
    target: Target,
    tls: Option<Arc<ClientConfig>>,
    user_agent: String,
    timing: Timing,
}

impl Delivery {
    /// Sends one body with retries; logs and drops it when every attempt failed.
    async fn deliver(&self, body: Bytes) {
        let attempts = 1 + self.timing.retry_delays.len();
        let mut delays = self.timing.retry_delays.iter();
        loop {
            let bound = self.timing.attempt_timeout;
            let error = match tokio::time::timeout(bound, self.attempt(body.clone())).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_) => AttemptError::Timeout(bound),
            };
            match delays.next() {
                Some(delay) => {
                    tracing::debug!(error = %error, retry_in = ?delay, "critical-event webhook attempt failed");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    // Only the authority: webhook paths often carry a secret token.
                    tracing::warn!(
                        error = %error,
                        host = %self.target.authority,
                        "critical-event webhook failed after {attempts} attempts; event dropped"
                    );
                    return;
                }
            }
        }
    }

    /// One connection, one request, a 2xx or an error.
    async fn attempt(&self, body: Bytes) -> Result<(), AttemptError> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| AttemptError::Connect(format!("{}:{}", target.host, target.port), e))?;
        // Small requests, one at a time: do not let Nagle hold the body back.
        let _ = tcp.set_nodelay(true);
        let status = match &self.tls {
            None => self.exchange(tcp, body).await?,
            Some(config) => {
                let name = target.server_name().map_err(AttemptError::ServerName)?;
                let tls = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(AttemptError::Tls)?;
                self.exchange(tls, body).await?
            }
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(status))
        }
    }

    /// POSTs the body on an open connection and returns the response status.
    async fn exchange<IO>(&self, io: IO, body: Bytes) -> Result<StatusCode, AttemptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.target.path_and_query.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, self.user_agent.as_str())
            .body(Full::new(body));
        // The parts were validated by `Target::parse`; a failure here would be a bug, and
        // is reported like any other failed attempt rather than panicking the sender.
        let request = request?;
        // The connection is driven here, not spawned, so a timeout drops it with the attempt.
        tokio::pin!(connection);
        tokio::select! {
            response = sender.send_request(request) => Ok(response?.status()),
            closed = &mut connection => match closed {
                Err(error) => Err(AttemptError::Http(error)),
                Ok(()) => Err(AttemptError::Closed),
            },
        }
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
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use std::sync::atomic::AtomicU16;

    use http::HeaderMap;
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::TlsAcceptor;

    /// Test timing: the production shape, scaled down so the suite stays fast.
    const FAST: Timing = Timing {
        burst: 10,
        refill: Duration::from_millis(400),
        attempt_timeout: Duration::from_millis(300),
        retry_delays: [Duration::from_millis(50), Duration::from_millis(150)],
    };

    /// One request as the receiver saw it.
    #[derive(Debug)]
    struct Received {
        request_target: String,
        headers: HeaderMap,
        body: Value,
        at: Instant,
        /// ALPN the TLS receiver agreed on.
        alpn: Option<Vec<u8>>,
    }

    /// A local webhook receiver answering `status` to every request.
    struct Receiver {
        port: u16,
        status: Arc<AtomicU16>,
        received: UnboundedReceiver<Received>,
    }

    impl Receiver {
        async fn start(tls: Option<TlsAcceptor>) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let status = Arc::new(AtomicU16::new(204));
            let (tx, received) = mpsc::unbounded_channel();
            let answer = Arc::clone(&status);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (tx, answer, tls) = (tx.clone(), Arc::clone(&answer), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            None => serve(tcp, None, tx, answer).await,
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(tcp).await else {
                                    return;
                                };
                                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                                serve(stream, alpn, tx, answer).await;
                            }
                        }
                    });
                }
            });
            Receiver {
                port,
                status,
                received,
            }
        }

        async fn next(&mut self) -> Received {
            tokio::time::timeout(Duration::from_secs(5), self.received.recv())
                .await
                .expect("a request within 5 s")
                .expect("receiver running")
        }

        /// Asserts nothing more arrives within `window`.
        async fn assert_quiet(&mut self, window: Duration) {
            if let Ok(Some(extra)) = tokio::time::timeout(window, self.received.recv()).await {
                panic!("unexpected request: {:?}", extra.body);
            }
        }
    }

    async fn serve<IO>(
        io: IO,
        alpn: Option<Vec<u8>>,
        tx: mpsc::UnboundedSender<Received>,
        status: Arc<AtomicU16>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |request: Request<Incoming>| {
            let (tx, status, alpn) = (tx.clone(), Arc::clone(&status), alpn.clone());
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect().await?.to_bytes();
                let _ = tx.send(Received {
                    request_target: parts.uri.to_string(),
                    headers: parts.headers,
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    at: Instant::now(),
                    alpn,
                });
                let mut response = http::Response::new(Full::new(Bytes::new()));
                *response.status_mut() =
                    StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap();
                Ok::<_, hyper::Error>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    fn start_http(port: u16, timing: Timing) -> Webhook {
        let target = Target::parse(&format!("http://127.0.0.1:{port}/hook?k=v")).unwrap();
        spawn(target, None, timing).unwrap()
    }

    #[tokio::test]
    async fn event_arrives_with_added_fields() {
        let mut receiver = Receiver::start(None).await;
        let webhook = start_http(receiver.port, FAST);
        webhook.notify(serde_json::json!({"kind": "app_exception", "detail": "boom"}));
        let got = receiver.next().await;
        assert_eq!(got.request_target, "/hook?k=v");
        assert_eq!(
            got.headers[HOST],
            format!("127.0.0.1:{}", receiver.port).as_str()
        );
        assert_eq!(got.headers[CONTENT_TYPE], "application/json");
        let agent = format!("genro-asgi/{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(got.headers[USER_AGENT], agent.as_str());
        let body = got.body.as_object().unwrap();
        assert_eq!(body["kind"], "app_exception");
        assert_eq!(body["detail"], "boom");
        assert_eq!(body["service"], "genro-asgi");
        assert_eq!(body["host"], hostname().as_str());
        assert!(!body["host"].as_str().unwrap().is_empty());
        let time = body["time"].as_str().unwrap();
        assert_eq!(time.len(), "2024-02-29T12:34:56.789Z".len(), "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert!(!body.contains_key("suppressed"));

        // Not an object: wrapped.
        webhook.notify(Value::from("plain"));
        assert_eq!(receiver.next().await.body["event"], "plain");
    }

    #[tokio::test]
    async fn failing_receiver_gets_three_attempts_then_nothing() {
        let mut receiver = Receiver::start(None).await;
        receiver.status.store(500, Ordering::Relaxed);
        let webhook = start_http(receiver.port, FAST);
        webhook.notify(serde_json::json!({"kind": "crash_loop"}));
        let first = receiver.next().await;
        let second = receiver.next().await;
        let third = receiver.next().await;
        for attempt in [&first, &second, &third] {
            assert_eq!(attempt.body["kind"], "crash_loop");
        }
        assert!(second.at - first.at >= FAST.retry_delays[0]);
        assert!(third.at - second.at >= FAST.retry_delays[1]);
        receiver.assert_quiet(Duration::from_millis(500)).await;
    }

    #[tokio::test]
    async fn rate_limit_passes_the_burst_and_reports_the_rest() {
        let mut receiver = Receiver::start(None).await;
        let webhook = start_http(receiver.port, FAST);
        let raised = Instant::now();
        for n in 0..25 {
            webhook.notify(serde_json::json!({"n": n}));
        }
        assert!(
            raised.elapsed() < FAST.refill,
            "the burst must fit in one refill period"
        );
        for n in 0..10 {
            let got = receiver.next().await;
            assert_eq!(got.body["n"], n);
            assert!(got.body.get("suppressed").is_none());
        }
        // The bucket is empty until one refill period after the burst.
        let refilled = raised + FAST.refill + Duration::from_millis(50);
        receiver
            .assert_quiet(refilled.saturating_duration_since(Instant::now()))
            .await;
        webhook.notify(serde_json::json!({"n": "after"}));
        let got = receiver.next().await;
        assert_eq!(got.body["n"], "after");
        assert_eq!(got.body["suppressed"], 15);
        // Reported once, then the count starts again.
        tokio::time::sleep(FAST.refill).await;
        webhook.notify(serde_json::json!({"n": "later"}));
        assert!(receiver.next().await.body.get("suppressed").is_none());
    }

    #[tokio::test]
    async fn notify_returns_at_once_and_a_silent_receiver_times_out() {
        // Accepts, reads, never answers; reports when each connection was opened and closed.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let opened = Instant::now();
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut tcp, &mut sink).await;
                    let _ = tx.send((opened, Instant::now()));
                });
            }
        });
        let webhook = start_http(port, FAST);
        let before = Instant::now();
        for n in 0..100 {
            webhook.notify(serde_json::json!({"n": n}));
        }
        assert!(
            before.elapsed() < Duration::from_millis(100),
            "{:?}",
            before.elapsed()
        );
        for _ in 0..3 {
            let (opened, closed) = tokio::time::timeout(Duration::from_secs(5), connections.recv())
                .await
                .expect("an attempt within 5 s")
                .expect("listener running");
            let held = closed - opened;
            assert!(
                held >= FAST.attempt_timeout - Duration::from_millis(20),
                "{held:?}"
            );
            assert!(held < FAST.attempt_timeout * 3, "{held:?}");
        }
        // In production the bound is 5 s per attempt.
        assert_eq!(PRODUCTION.attempt_timeout, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn https_with_a_private_ca() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhook test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut receiver = Receiver::start(Some(TlsAcceptor::from(Arc::new(server)))).await;

        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let url = format!("https://localhost:{}/tls", receiver.port);
        let webhook = start_with_roots(&url, roots, FAST).unwrap();
        webhook.notify(serde_json::json!({"kind": "stuck_request"}));
        let got = receiver.next().await;
        assert_eq!(got.request_target, "/tls");
        assert_eq!(got.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(
            got.headers[HOST],
            format!("localhost:{}", receiver.port).as_str()
        );
        assert_eq!(got.body["kind"], "stuck_request");

        // The same receiver is refused without the CA: three failed handshakes, no request.
        let untrusted = start_with_roots(&url, RootCertStore::empty(), FAST).unwrap();
        untrusted.notify(serde_json::json!({"kind": "untrusted"}));
        receiver.assert_quiet(Duration::from_millis(600)).await;
    }

    /// `start` with a given trust store instead of the system's.
    fn start_with_roots(
        url: &str,
        roots: RootCertStore,
        timing: Timing,
    ) -> Result<Webhook, WebhookError> {
        let target = Target::parse(url)?;
        let tls = match target.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(tls_config(roots)?),
        };
        spawn(target, tls, timing)
    }

    #[test]
    fn target_parse() {
        let ok = [
            (
                "http://example.com",
                Scheme::Http,
                "example.com",
                80,
                "example.com",
                "/",
            ),
            (
                "HTTPS://example.com/a?b=1",
                Scheme::Https,
                "example.com",
                443,
                "example.com",
                "/a?b=1",
            ),
            (
                "https://h.test:8443/x/",
                Scheme::Https,
                "h.test",
                8443,
                "h.test:8443",
                "/x/",
            ),
            (
                "http://[::1]:9000/p",
                Scheme::Http,
                "::1",
                9000,
                "[::1]:9000",
                "/p",
            ),
            (
                "http://10.0.0.1?q",
                Scheme::Http,
                "10.0.0.1",
                80,
                "10.0.0.1",
                "/?q",
            ),
        ];
        for (url, scheme, host, port, authority, path) in ok {
            let target = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                target,
                Target {
                    scheme,
                    host: host.to_owned(),
                    port,
                    authority: authority.to_owned(),
                    path_and_query: path.to_owned(),
                },
                "{url}"
            );
        }
        let bad = [
            ("ftp://example.com/", "http:// or https://"),
            ("example.com", "http:// or https://"),
            ("/just/a/path", "http:// or https://"),
            ("http://user:pw@example.com/", "credentials"),
            ("http://exa mple.com/", "not a URL"),
        ];
        for (url, why) in bad {
            let error = Target::parse(url).expect_err(url);
            let error = error.to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
    }

    #[test]
    fn token_bucket_on_a_virtual_clock() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut bucket = TokenBucket::new(10, 6 * second, t0);
        assert_eq!((0..25).filter(|_| bucket.try_take(t0)).count(), 10);
        assert!(!bucket.try_take(t0 + 5 * second));
        assert!(bucket.try_take(t0 + 6 * second));
        assert!(!bucket.try_take(t0 + 11 * second));
        // Partial periods are not lost: 12 s from t0 is the second token.
        assert!(bucket.try_take(t0 + 12 * second));
        // An hour later the bucket holds a burst again, not more.
        let later = t0 + 3600 * second;
        assert_eq!((0..25).filter(|_| bucket.try_take(later)).count(), 10);
        // A clock that steps back (two raisers racing) earns nothing.
        assert!(!bucket.try_take(t0));
    }

    #[test]
    fn suppressed_counts_queue_overflow_too() {
        let overflow = Arc::new(AtomicU64::new(0));
        let mut sender = Sender {
            delivery: Delivery {
                target: Target::parse("http://127.0.0.1/").unwrap(),
                tls: None,
                user_agent: String::new(),
                timing: FAST,
            },
            bucket: TokenBucket::new(1, Duration::from_secs(60), Instant::now()),
            host: "h".to_owned(),
            overflow: Arc::clone(&overflow),
            suppressed: 0,
        };
        let raise = |n: u32| Raised {
            event: serde_json::json!({"n": n}),
            at: Instant::now(),
            wall: UNIX_EPOCH,
        };
        let body = |bytes: Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();
        overflow.store(4, Ordering::Relaxed);
        let first = body(sender.handle_raised(raise(1)).unwrap());
        assert_eq!(first["suppressed"], 4);
        assert_eq!(first["time"], "1970-01-01T00:00:00.000Z");
        assert!(sender.handle_raised(raise(2)).is_none());
        assert_eq!(sender.suppressed, 1);
    }
}
