//! The worker's HTTP server: accepts on the slot's socket, terminates TLS, serves
//! HTTP/1.1 and HTTP/2 (prior-knowledge h2c and ALPN `h2`) with hyper, applies the
//! `[limits]`, and drains gracefully when told to stop.

use crate::admission::{Admission, ConnInfo, REQUEST_ID};
use crate::body::ResponseBody;
use crate::budget::{instant_of, now_ms, Budgets, ConnBuffers};
use crate::handoff::Event;
use crate::http::{Pending, RequestStart};
use crate::io_watch::{IoWatch, Watched};
use crate::metrics::{ErrorKind, Protocol};
use crate::receive::Exchange;
use crate::state::Shared;
use bytes::Bytes;
use genro_config::Config;
use genro_shared::access::{AccessFormat, AccessRecord};
use genro_shared::{tls, CLIENT_HEADER};
use http::header::{HeaderValue, ALT_SVC, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Limits and settings the request path reads on every request.
#[derive(Debug)]
pub struct Limits {
    /// `[limits] max_concurrency` (0: unlimited).
    pub max_concurrency: usize,
    /// `[limits] max_body_size` (0: unlimited).
    pub max_body_size: u64,
    /// `[limits] response_buffer`.
    pub response_buffer: usize,
    /// `[limits] connection_buffer`.
    pub connection_buffer: usize,
    /// `[limits] send_timeout` (zero: none).
    pub send_timeout: Duration,
    /// `Alt-Svc` announcing HTTP/3 on TCP responses, when it is on.
    pub alt_svc: Option<HeaderValue>,
    /// `[websocket]`.
    pub websocket: Arc<crate::websocket::Settings>,
    /// The proxies whose forwarding headers are honoured (`[server] proxy_headers`).
    pub proxies: Option<genro_config::net::Trusted>,
}

/// Builds the rustls acceptor from `[ssl]` (ALPN `h2`, then `http/1.1`), or `None` when
/// TLS is off.
pub fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, tls::TlsError> {
    let ssl = &config.ssl;
    if !ssl.enabled {
        return Ok(None);
    }
    let server_config = tls::server_config(ssl, ssl.min_version, &[b"h2", b"http/1.1"])?;
    Ok(Some(TlsAcceptor::from(Arc::new(server_config))))
}

fn plain(status: StatusCode, text: &'static str, close: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Per-connection state read by the keep-alive idle timer.
#[derive(Debug)]
struct ConnState {
    in_flight: AtomicUsize,
    /// Requests seen on this connection (any outcome).
    requests: AtomicU64,
    /// When the last response finished, in milliseconds since `epoch`.
    last_active_ms: AtomicU64,
    epoch: Instant,
    /// The protocol of the first request, once counted in the metrics.
    protocol: std::sync::OnceLock<Protocol>,
    /// The connection's response-byte budget and stalled streams.
    buffers: Arc<ConnBuffers>,
    /// The socket's writes.
    io: Arc<IoWatch>,
    /// The HTTP/3 front's connection (see [`ConnState::new`]).
    front: bool,
}

impl ConnState {
    /// A client connection's state, or the HTTP/3 front's (`front`): the front's one
    /// connection carries the streams of every HTTP/3 client, so it gets no connection
    /// budget of its own and no connection-wide stall check (the front bounds each of its
    /// clients and resets their stalled streams itself, docs/HTTP3.md).
    fn new(limits: &Limits, front: bool) -> Self {
        ConnState {
            front,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            protocol: std::sync::OnceLock::new(),
            buffers: Arc::new(if front {
                ConnBuffers::front()
            } else {
                ConnBuffers::new(limits.connection_buffer)
            }),
            io: Arc::new(IoWatch::default()),
        }
    }

    /// When the stall check should look next (`send_timeout` from now at the latest).
    fn stall_check(&self, send_timeout: Duration) -> Instant {
        let mut at = Instant::now() + send_timeout;
        if let Some(since) = self.io.blocked_since() {
            at = at.min(instant_of(since) + send_timeout);
        }
        if self.buffers.budget.used() != 0 {
            at = at.min(instant_of(self.buffers.budget.progress_ms()) + send_timeout);
        }
        at
    }

    /// Why the connection must be closed for `send_timeout`, if it must: the socket took
    /// no bytes for that long while we had some to write, response bytes waited that long
    /// with none taken, or every request on it is a stalled stream.
    fn stalled(&self, send_timeout: Duration) -> Option<&'static str> {
        if send_timeout.is_zero() {
            return None;
        }
        let timeout = send_timeout.as_millis() as u64;
        let now = now_ms();
        if self
            .io
            .blocked_since()
            .is_some_and(|since| now.saturating_sub(since) >= timeout)
        {
            return Some("the socket took no bytes");
        }
        if self.front {
            return None;
        }
        if self.buffers.budget.stalled(send_timeout) {
            return Some("no response bytes were taken (flow-control window closed)");
        }
        let stalled = self.buffers.stalled.load(Ordering::Acquire);
        if stalled != 0 && stalled >= self.in_flight.load(Ordering::Relaxed) {
            return Some("every response on it stalled");
        }
        None
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// When the idle timer should look again: a connection that never sent a request has
    /// `header_read_timeout` from its start (slowloris, silent sockets, half an HTTP/2
    /// preface); afterwards, `keep_alive` from the end of its last response.
    fn next_check(&self, keep_alive: Duration, header_read_timeout: Duration) -> Option<Instant> {
        if self.requests.load(Ordering::Relaxed) == 0 {
            // A fresh connection is idle too: whichever limit comes first.
            let first = self.epoch + header_read_timeout;
            return Some(if keep_alive.is_zero() {
                first
            } else {
                first.min(self.epoch + keep_alive)
            });
        }
        if keep_alive.is_zero() {
            return None;
        }
        let idle_for = keep_alive + keep_alive.mul_f64(0.25).min(KEEP_ALIVE_GRACE);
        Some(match self.idle_since() {
            Some(since) => since + idle_for,
            None => Instant::now() + idle_for,
        })
    }

    /// When the connection became idle (its last response done and its last bytes
    /// written), or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let done = self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        Some(done.max(instant_of(self.io.last_write_ms())))
    }
}

/// What is recorded when a response is done (written whole, or abandoned): its metrics
/// and its access-log line.
struct Done {
    shared: Arc<Shared>,
    method: http::Method,
    protocol: Protocol,
    started: Instant,
    /// What the access-log line needs (`None`: no access log).
    access: Option<Box<AccessData>>,
}

/// The request facts an access-log line shows besides the response's.
struct AccessData {
    format: Arc<AccessFormat>,
    client: std::net::SocketAddr,
    uri: http::Uri,
    version: http::Version,
    time: std::time::SystemTime,
    request_id: crate::registry::RequestId,
    /// The request headers the format names, in [`AccessFormat::headers`] order.
    headers: Vec<Option<HeaderValue>>,
}

impl Done {
    fn new(
        ctx: &ConnCtx,
        request: &Request<Incoming>,
        client: std::net::SocketAddr,
        protocol: Protocol,
        request_id: crate::registry::RequestId,
    ) -> Option<Self> {
        if ctx.access.is_none() && ctx.shared.metrics.is_none() {
            return None;
        }
        let access = ctx.access.as_ref().map(|format| {
            Box::new(AccessData {
                client,
                uri: request.uri().clone(),
                // The front forwards HTTP/3 over HTTP/2: log what the client spoke.
                version: if ctx.info.front {
                    http::Version::HTTP_3
                } else {
                    request.version()
                },
                time: std::time::SystemTime::now(),
                request_id,
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
            method: request.method().clone(),
            protocol,
            started: Instant::now(),
            access,
        })
    }

    fn record(&self, status: StatusCode, bytes: u64, request_bytes: u64) {
        let elapsed = self.started.elapsed();
        if let Some(metrics) = &self.shared.metrics {
            metrics.request_done(
                self.protocol,
                &self.method,
                status,
                elapsed,
                request_bytes,
                bytes,
            );
        }
        if let Some(a) = &self.access {
            let line = a.format.format(&AccessRecord {
                time: a.time,
                client: a.client,
                method: &self.method,
                path: a.uri.path(),
                query: a.uri.query().unwrap_or(""),
                protocol: self.protocol.label(),
                version: a.version,
                status: status.as_u16(),
                bytes,
                duration: elapsed,
                request_id: a.request_id.as_str(),
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
struct InFlight {
    _admission: Arc<Admission>,
    conn: Arc<ConnState>,
    exchange: Arc<Exchange>,
    done: Option<Done>,
}

impl InFlight {
    /// The response is done: record it with its status and body bytes.
    fn finish(mut self, status: StatusCode, bytes: u64) {
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

/// Everything a connection's requests share.
struct ConnCtx {
    info: Arc<ConnInfo>,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    /// The access-log format, when `[logging] access_log` is on.
    access: Option<Arc<AccessFormat>>,
    /// Turns true when the worker drains.
    stop: watch::Receiver<bool>,
    /// Held while the connection (or a WebSocket it upgraded to) lives: the drain waits
    /// for every clone to go.
    _live: tokio::sync::mpsc::Sender<()>,
}

/// Counts a WebSocket as a request in flight on its connection (for the idle timer).
struct ConnBusy(Arc<ConnState>);

impl ConnBusy {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        ConnBusy(state)
    }
}

impl Drop for ConnBusy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The response the app's side sends back, with our request id unless the app named the
/// request itself; 503 if the exchange was dropped without an answer (worker stopping).
async fn app_answer(
    ctx: &ConnCtx,
    response: tokio::sync::oneshot::Receiver<Response<ResponseBody>>,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let mut response = match response.await {
        Ok(response) => response,
        Err(_) => {
            ctx.shared.error(ErrorKind::Internal);
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server shutting down\n",
                true,
            )
        }
    };
    response
        .headers_mut()
        .entry(REQUEST_ID)
        .or_insert(request_id);
    response
}

/// Validates a WebSocket handshake and hands the session to the app; answers with what
/// the app decides (101/200 on accept, 403 on close, its own denial response).
async fn open_websocket(
    mut request: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    info: Arc<ConnInfo>,
    admission: Arc<Admission>,
    done: Option<Done>,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let handshake = match crate::websocket::Handshake::new(&mut request, &ctx.limits.websocket) {
        Ok(handshake) => handshake,
        Err((status, text)) => {
            drop(admission);
            ctx.shared.error(ErrorKind::Client);
            let mut response = plain(status, text, false);
            let headers = response.headers_mut();
            if status == StatusCode::UPGRADE_REQUIRED {
                headers.insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            headers.insert(REQUEST_ID, request_id);
            return finish(response, done);
        }
    };
    let (parts, _) = request.into_parts();
    let hold: crate::websocket::Hold = Box::new((ctx.clone(), ConnBusy::new(ctx.state.clone())));
    let (respond, response) = tokio::sync::oneshot::channel();
    crate::websocket::start(
        &ctx.shared,
        crate::websocket::WsStart {
            parts,
            conn: info,
            admission,
            respond,
            session: crate::websocket::Session {
                handshake,
                settings: ctx.limits.websocket.clone(),
                stop: ctx.stop.clone(),
                hold,
            },
        },
    );
    finish(app_answer(ctx, response, request_id).await, done)
}

/// Attaches the metrics and access-log line (if on) to a response the server wrote itself.
fn finish(response: Response<ResponseBody>, done: Option<Done>) -> Response<ResponseBody> {
    let Some(done) = done else {
        return response;
    };
    let status = response.status();
    response.map(|body| body.on_drop(Box::new(move |bytes| done.record(status, bytes, 0))))
}

/// Answers an HTTP/1.x request whose target or `Host` [`crate::target::check`] refused:
/// a client error, counted and logged at debug, with a request id like the other answers
/// the server writes itself; the connection closes (the body, if any, is not read).
fn refuse_target(
    ctx: &ConnCtx,
    request: &Request<Incoming>,
    client: std::net::SocketAddr,
    protocol: Protocol,
    bad: crate::target::BadTarget,
) -> Response<ResponseBody> {
    let admission = Admission::new(ctx.shared.clone(), request, client, protocol);
    let done = Done::new(ctx, request, client, protocol, admission.request_id());
    let request_id = admission.request_id().header();
    drop(admission);
    ctx.shared.error(ErrorKind::Client);
    tracing::debug!(%client, method = %request.method(), "bad request target or Host: {bad}");
    let mut response = plain(bad.status(), bad.text(), true);
    response.headers_mut().insert(REQUEST_ID, request_id);
    finish(response, done)
}

async fn handle(
    request: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut request = request;
    let limits = &ctx.limits;
    let mut protocol = Protocol::of(request.version(), ctx.info.front);
    if ctx.state.requests.fetch_add(1, Ordering::Relaxed) == 0 && !ctx.info.front {
        if let Some(metrics) = &ctx.shared.metrics {
            let _ = ctx.state.protocol.set(protocol);
            metrics.connection_opened(protocol);
        }
    }
    let websocket = !ctx.info.front && crate::websocket::is_websocket(&request);
    if websocket {
        protocol = Protocol::Websocket;
    }
    // Only the front may say who the client is, and only on its private socket.
    let forwarded = request.headers_mut().remove(&FRONT_CLIENT);
    let info = match forwarded {
        Some(value) if ctx.info.front => {
            let client = value.to_str().ok().and_then(|v| v.parse().ok());
            Arc::new(ConnInfo {
                client: client.unwrap_or(ctx.info.client),
                ..(*ctx.info).clone()
            })
        }
        _ => ctx.info.clone(),
    };
    // Behind a trusted proxy, the client and scheme are the original request's.
    let info = match &limits.proxies {
        Some(trusted) if trusted.contains(info.client.ip()) => {
            let origin = crate::forwarded::origin(request.headers(), trusted);
            if origin == crate::forwarded::Origin::default() {
                info
            } else {
                Arc::new(ConnInfo {
                    client: origin.client.unwrap_or(info.client),
                    https: origin.https.unwrap_or(info.https),
                    ..(*info).clone()
                })
            }
        }
        _ => info,
    };
    if let Err(bad) = crate::target::check(&mut request) {
        return Ok(refuse_target(&ctx, &request, info.client, protocol, bad));
    }
    let admission = Admission::new(ctx.shared.clone(), &request, info.client, protocol);
    let done = Done::new(
        &ctx,
        &request,
        info.client,
        protocol,
        admission.request_id(),
    );
    let request_id = admission.request_id().header();
    if !websocket
        && limits.max_concurrency != 0
        && ctx.shared.http_in_flight.load(Ordering::Relaxed) > limits.max_concurrency
    {
        drop(admission);
        ctx.shared.error(ErrorKind::Internal);
        ctx.shared.limit(crate::metrics::Limit::Concurrency);
        busy_warning(&ctx.shared, limits.max_concurrency);
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server busy, retry later\n",
            false,
        );
        let headers = response.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(REQUEST_ID, request_id);
        return Ok(finish(response, done));
    }
    if websocket {
        return Ok(open_websocket(request, &ctx, info, admission, done, request_id).await);
    }
    if limits.max_body_size != 0 {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body_size) {
            drop(admission);
            ctx.shared.error(ErrorKind::Client);
            // Close: we do not read the body we refuse.
            let mut response = plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large\n",
                true,
            );
            response.headers_mut().insert(REQUEST_ID, request_id);
            return Ok(finish(response, done));
        }
    }
    ctx.state.in_flight.fetch_add(1, Ordering::Relaxed);
    let version = request.version();
    let (parts, body) = request.into_parts();
    let exchange = Arc::new(Exchange::new(body, limits.max_body_size));
    let guard = InFlight {
        _admission: admission.clone(),
        conn: ctx.state.clone(),
        exchange: exchange.clone(),
        done,
    };
    let (respond, response) = tokio::sync::oneshot::channel();
    let budgets = Budgets {
        conn: ctx.state.buffers.clone(),
        worker: ctx.shared.worker_buffer.clone(),
        response: limits.response_buffer,
        send_timeout: limits.send_timeout,
    };
    let pending = Pending::new(RequestStart {
        parts,
        conn: info,
        exchange,
        respond,
        admission,
        budgets,
    });
    crate::http::start(&ctx.shared, pending.clone());
    // If the client leaves before the loop starts the request, this future is dropped:
    // release the request now, not when the loop wakes.
    let unstarted = Unstarted(pending);
    let mut response = app_answer(&ctx, response, request_id).await;
    drop(unstarted);
    if let Some(alt_svc) = limits.alt_svc.as_ref().filter(|_| !ctx.info.front) {
        response
            .headers_mut()
            .entry(ALT_SVC)
            .or_insert_with(|| alt_svc.clone());
    }
    if ctx.shared.draining.load(Ordering::Relaxed) && version != http::Version::HTTP_2 {
        // Tell keep-alive clients to take their next request elsewhere (RFC 9112 9.6).
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status();
    Ok(response.map(|body| body.on_drop(Box::new(move |bytes| guard.finish(status, bytes)))))
}

/// Takes a request out of the hand-off queue when dropped (see [`Pending`]).
struct Unstarted(Arc<Pending>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

/// Logs that `max_concurrency` refused requests, at most once per [`BUSY_LOG_EVERY`].
fn busy_warning(shared: &Shared, max: usize) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms() + BUSY_LOG_EVERY.as_millis() as u64;
    let last = LAST.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= BUSY_LOG_EVERY.as_millis() as u64
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let in_flight = shared.http_in_flight.load(Ordering::Relaxed);
        tracing::warn!("max_concurrency ({max}) reached with {in_flight} requests in flight: answering 503 (logged at most every {}s)", BUSY_LOG_EVERY.as_secs());
    }
}

/// How often a worker at `max_concurrency` says so.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

/// Extra idle time (25% of `keep_alive_timeout`, at most this) before an idle HTTP/1.1
/// connection is closed: a client pool whose idle expiry equals the server's timeout
/// (httpx: 5 s, as ours) starts its clock a little after our last write, so without it the
/// client would sometimes reuse a connection just as we close it, and its request would
/// meet the close ("server disconnected without sending a response").
const KEEP_ALIVE_GRACE: Duration = Duration::from_secs(1);

/// [`CLIENT_HEADER`] as a header name, parsed once (it is looked up on every request).
static FRONT_CLIENT: http::HeaderName = http::HeaderName::from_static(CLIENT_HEADER);

/// Status recorded (metrics, access log) for a request whose client left before the
/// response head: nginx's 499 "client closed request".
const CLIENT_CLOSED: u16 = 499;

/// How long a draining worker keeps an idle HTTP/1.1 keep-alive connection open, so a
/// request the client already sent is answered (with `Connection: close`) instead of
/// meeting a closed socket.
const DRAIN_LINGER: Duration = Duration::from_millis(500);

/// What serving one connection needs besides its socket.
struct Driver {
    builder: auto::Builder<TokioExecutor>,
    ctx: Arc<ConnCtx>,
    stop: watch::Receiver<bool>,
    keep_alive: Duration,
    header_read_timeout: Duration,
    /// The socket, for `FIONREAD` before an idle close (none for the front's).
    fd: Option<std::os::fd::RawFd>,
}

impl Driver {
    /// Serves one connection until it ends, closing it gracefully when the worker drains or
    /// when it stayed idle (no request in flight) for `keep_alive`.
    async fn drive<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Driver {
            builder,
            ctx,
            mut stop,
            keep_alive,
            header_read_timeout,
            fd,
        } = self;
        let client = ctx.info.client;
        let state = ctx.state.clone();
        let limits = ctx.limits.clone();
        let _counted = (!ctx.info.front && ctx.shared.metrics.is_some()).then(|| Counted {
            shared: ctx.shared.clone(),
            state: state.clone(),
        });
        let shared = ctx.shared.clone();
        let service = service_fn(move |request| handle(request, ctx.clone()));
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let mut closing = false;
        let mut draining_until: Option<Instant> = None;
        let send_timeout = limits.send_timeout;
        loop {
            let linger_end = draining_until.unwrap_or_else(Instant::now);
            let check_at = state.next_check(keep_alive, header_read_timeout);
            let stall_at = (!send_timeout.is_zero()).then(|| state.stall_check(send_timeout));
            let kicked = state.buffers.kick.notified();
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%client, "connection ended: {err}");
                        if err
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(|e| e.is_parse() || e.is_parse_too_large() || e.is_timeout())
                        {
                            shared.error(ErrorKind::Client);
                        }
                    }
                    return;
                }
                _ = stopped(&mut stop), if draining_until.is_none() && !closing => {
                    draining_until = Some(Instant::now() + DRAIN_LINGER.min(keep_alive));
                }
                _ = tokio::time::sleep_until(linger_end.into()), if draining_until.is_some() && !closing => {
                    // HTTP/1.1: closes once the response in flight (if any) is written.
                    // HTTP/2: GOAWAY; the streams in flight finish.
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(check_at.unwrap_or_else(Instant::now).into()), if check_at.is_some() && !closing && draining_until.is_none() => {
                    if state.next_check(keep_alive, header_read_timeout).is_some_and(|at| at <= Instant::now()) {
                        if state.requests.load(Ordering::Relaxed) == 0 {
                            tracing::debug!(%client, "no request within header_read_timeout; closing");
                            shared.error(ErrorKind::Client);
                            return;
                        }
                        if pending_input(fd) {
                            // A request already arrived: serve it rather than close under it.
                            state.touch();
                            continue;
                        }
                        tracing::trace!(%client, "keep-alive timeout: closing idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                _ = kicked => {
                    if let Some(why) = state.stalled(send_timeout) {
                        tracing::info!(%client, "send_timeout: closing the connection: {why} for {:.0}s", send_timeout.as_secs_f64());
                        return;
                    }
                }
                _ = tokio::time::sleep_until(stall_at.unwrap_or_else(Instant::now).into()), if stall_at.is_some() => {
                    if let Some(why) = state.stalled(send_timeout) {
                        shared.limit(crate::metrics::Limit::SendTimeout);
                        tracing::info!(%client, "send_timeout: closing the connection: {why} for {:.0}s", send_timeout.as_secs_f64());
                        return;
                    }
                }
            }
        }
    }
}

/// Whether the client has sent bytes the server has not read yet (`FIONREAD`).
fn pending_input(fd: Option<std::os::fd::RawFd>) -> bool {
    let Some(fd) = fd else {
        return false;
    };
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `pending`; fd is the connection's open socket.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) };
    rc == 0 && pending > 0
}

/// Counts a connection in the metrics when it closes.
struct Counted {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        match self.state.protocol.get() {
            Some(protocol) => metrics.connection_closed(*protocol),
            None => metrics.connection_unknown(),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves `listener` until `stop` turns true, then drains within `graceful_timeout`,
/// pushing [`Event::Shutdown`] once the drain is over (or timed out). On `Err` (before
/// serving) it pushes nothing.
pub async fn serve(
    listener: std::net::TcpListener,
    front: Option<std::os::unix::net::UnixListener>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let front = match front {
        Some(front) => {
            front.set_nonblocking(true)?;
            Some(tokio::net::UnixListener::from_std(front)?)
        }
        None => None,
    };
    let local = listener.local_addr()?;
    let alt_svc = config.http3.enabled.then(|| {
        let port = match config.http3.port {
            0 => local.port(),
            port => port,
        };
        let max_age = config.http3.alt_svc_max_age.as_secs();
        HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age}"))
            .expect("digits and quotes are a valid header value")
    });
    let limits = Arc::new(Limits {
        max_concurrency: config.limits.max_concurrency,
        max_body_size: config.limits.max_body_size,
        response_buffer: usize::try_from(config.limits.response_buffer).unwrap_or(usize::MAX),
        connection_buffer: usize::try_from(config.limits.connection_buffer).unwrap_or(usize::MAX),
        send_timeout: config.limits.send_timeout,
        alt_svc,
        websocket: Arc::new(crate::websocket::Settings::new(&config)),
        proxies: match config.server.proxy_headers {
            true => Some(
                genro_config::net::Trusted::parse(&config.server.forwarded_allow_ips)
                    .map_err(|bad| anyhow::anyhow!("[server] forwarded_allow_ips: {bad}"))?,
            ),
            false => None,
        },
    });
    let keep_alive = config.server.keep_alive_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // keep_alive_timeout = 0 turns keep-alive off: one request per connection.
        .keep_alive(!keep_alive.is_zero())
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size((config.limits.max_header_size as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol()
        // What h2 buffers per stream beyond our budgets: one piece (docs/SECURITY.md).
        .max_send_buf_size(crate::body::PIECE)
        .max_header_list_size(config.limits.max_header_size.min(u32::MAX as u64) as u32);
    let handshake_timeout = config.limits.header_read_timeout;
    let access = if config.logging.access_log {
        let format = AccessFormat::parse(&config.logging.access_format)
            .map_err(|e| anyhow::anyhow!("[logging] access_format: {e}"))?;
        Some(Arc::new(format))
    } else {
        None
    };
    // Every connection task holds a clone; the drain waits until all are dropped.
    let (live, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let conn_stop = stop.clone();
    let spawn_connection = |stream: tokio::net::TcpStream, client: std::net::SocketAddr| {
        let _ = stream.set_nodelay(true);
        let server = stream.local_addr().unwrap_or(client);
        let ctx = Arc::new(ConnCtx {
            info: Arc::new(ConnInfo {
                client,
                server,
                https: tls.is_some(),
                front: false,
            }),
            state: Arc::new(ConnState::new(&limits, false)),
            shared: shared.clone(),
            limits: limits.clone(),
            access: access.clone(),
            stop: conn_stop.clone(),
            _live: live.clone(),
        });
        let builder = builder.clone();
        let stop = conn_stop.clone();
        let live = live.clone();
        let tls = tls.clone();
        let shared = shared.clone();
        let io_watch = ctx.state.io.clone();
        let driver = Driver {
            builder,
            ctx,
            stop,
            keep_alive,
            header_read_timeout: handshake_timeout,
            fd: Some(std::os::fd::AsRawFd::as_raw_fd(&stream)),
        };
        let stream = Watched::new(stream, io_watch);
        tokio::spawn(async move {
            let _live = live;
            match tls {
                None => driver.drive(TokioIo::new(stream)).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // ALPN decides the protocol over TLS, not preface detection.
                            let negotiated =
                                crate::alpn::Negotiated::of(stream.get_ref().1.alpn_protocol());
                            let gate = crate::alpn::gate(stream, negotiated);
                            match tokio::time::timeout(handshake_timeout, gate).await {
                                Ok(Ok(stream)) => driver.drive(TokioIo::new(stream)).await,
                                Ok(Err(crate::alpn::Refused::Io(err))) => {
                                    tracing::debug!(%client, "connection ended: {err}");
                                }
                                Ok(Err(refused)) => {
                                    tracing::debug!(%client, "{refused}");
                                    shared.error(ErrorKind::Client);
                                }
                                Err(_) => {
                                    tracing::debug!(%client, "no request within header_read_timeout");
                                    shared.error(ErrorKind::Client);
                                }
                            }
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%client, "TLS handshake failed: {err}");
                            shared.error(ErrorKind::Client);
                        }
                        Err(_) => {
                            tracing::debug!(%client, "TLS handshake timed out");
                            shared.error(ErrorKind::Client);
                        }
                    }
                }
            }
        });
    };
    // The front's connections: HTTP/2 from a trusted peer; the client is per request.
    let front_info = Arc::new(ConnInfo {
        client: local,
        server: local,
        https: true,
        front: true,
    });
    let spawn_front = |stream: tokio::net::UnixStream| {
        let ctx = Arc::new(ConnCtx {
            info: front_info.clone(),
            state: Arc::new(ConnState::new(&limits, true)),
            shared: shared.clone(),
            limits: limits.clone(),
            access: access.clone(),
            stop: conn_stop.clone(),
            _live: live.clone(),
        });
        let stream = Watched::new(stream, ctx.state.io.clone());
        let driver = Driver {
            builder: builder.clone(),
            ctx,
            stop: conn_stop.clone(),
            keep_alive: Duration::ZERO,
            header_read_timeout: handshake_timeout,
            fd: None,
        };
        let live = live.clone();
        tokio::spawn(async move {
            let _live = live;
            driver.drive(TokioIo::new(stream)).await;
        });
    };
    loop {
        let accept_front = async {
            match &front {
                Some(front) => front.accept().await.map(|(stream, _)| stream),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => spawn_connection(stream, client),
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    shared.error(ErrorKind::Internal);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = accept_front => match accepted {
                Ok(stream) => spawn_front(stream),
                Err(err) => {
                    tracing::warn!("accept on the front socket failed: {err}");
                    shared.error(ErrorKind::Internal);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    drop(front);
    shared.draining.store(true, Ordering::Relaxed);
    crate::scope::on_drain(
        &shared,
        config
            .websocket
            .drain_grace
            .min(config.server.graceful_timeout),
    );
    // Serve what the kernel already queued for us (on a full stop, closing the listener
    // would reset those connections), then close it.
    let listener = listener.into_std()?;
    loop {
        match listener.accept() {
            Ok((stream, client)) => {
                match stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream))
                {
                    Ok(stream) => spawn_connection(stream, client),
                    Err(err) => tracing::warn!("queued connection: {err}"),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => {
                tracing::warn!("accept failed while draining: {err}");
                break;
            }
        }
    }
    drop(listener);
    drop(live);
    let grace = config.server.graceful_timeout;
    tracing::info!(
        "draining: no longer accepting; waiting up to {:.1}s for in-flight requests",
        grace.as_secs_f64()
    );
    let drained = tokio::time::timeout(grace, all_closed.recv()).await.is_ok();
    if !drained {
        let (left, total) = shared.registry.snapshot(LOG_CANCELLED);
        tracing::warn!(
            in_flight = total,
            "graceful_timeout reached with requests still in flight; cancelling them"
        );
        for r in &left {
            tracing::warn!(
                "cancelling request {} {} {} from {} ({}, running {:.1}s)",
                r.request_id,
                r.method,
                r.path,
                r.client,
                r.protocol,
                r.age
            );
        }
    }
    // Stop the event loop (exactly once): the Python side then cancels what still runs,
    // whose answers (503, or aborts) travel back over the connections still open...
    shared.handoff.push(Event::Shutdown);
    if !drained {
        // ...so give those connections a moment to write them before the process exits.
        let _ = tokio::time::timeout(CANCEL_FLUSH, all_closed.recv()).await;
    }
    Ok(())
}

/// Most cancelled requests listed one by one in the log.
const LOG_CANCELLED: usize = 50;

/// How long cancelled requests' answers get to reach their clients after the drain.
const CANCEL_FLUSH: Duration = Duration::from_secs(3);
