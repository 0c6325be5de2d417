//! WebSocket: the ASGI `websocket` scope over HTTP/1.1 Upgrade (RFC 6455) and HTTP/2
//! extended CONNECT (RFC 8441), on plain TCP and TLS.
//!
//! The frame protocol (masking, fragmentation, UTF-8 validation of text, ping -> pong, close
//! codes, permessage-deflate) is `yawc`'s; this module joins it to the app:
//!
//! 1. The hyper service sees an upgrade request, validates the handshake
//!    ([`Handshake::new`]) and pushes an [`Event::WebSocket`](crate::bridge::Event) to the
//!    Python thread, which starts `glue.run_http(app, scope, handle)` with a [`WsHandle`].
//! 2. The app's first `receive()` is `websocket.connect`. `websocket.accept` sends the
//!    101 (HTTP/1.1) or 200 (HTTP/2) response and spawns the [`pump`]; `websocket.close` or a
//!    `websocket.http.response.*` denial before that answers with an HTTP response instead
//!    (403 for a bare close).
//! 3. The [pump](crate::ws_pump) owns the socket: client messages go into a
//!    [queue](crate::ws_queue) bounded by count and bytes that `receive()` drains (a full
//!    queue stops reading: TCP backpressure), app messages come through a small queue whose
//!    `send()` waits when the client is slow. It pings idle clients, answers the drain with
//!    close 1001, and records how the connection ended for the app's `websocket.disconnect`.

use crate::bridge::{lock, ready, waiting, Admission, ConnInfo, Event, Shared, Wake};
use crate::metrics::ErrorKind;
use crate::registry::RequestId;
use crate::ws_queue::{Bounds, Producer, Queue, WorkerBudget, ABNORMAL};
use bytes::Bytes;
use http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, Response, StatusCode};
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use yawc::close::CloseCode;
use yawc::{Frame, WebSocketError};

use crate::body::ResponseBody;

/// `[websocket]`, as the request path uses it.
#[derive(Debug)]
pub struct Settings {
    options: yawc::Options,
    pub(crate) max_message_size: usize,
    /// `[websocket] max_queue` and `max_queue_bytes`.
    pub(crate) bounds: Bounds,
    /// `[websocket] worker_queue_bytes`, shared by every session of the worker.
    pub(crate) budget: Arc<WorkerBudget>,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) drain_grace: Duration,
    /// `[limits] send_timeout` (zero: none).
    pub(crate) send_timeout: Duration,
}

/// Messages from the app to the pump; a few suffice, since each may be large and `send()`
/// waits when they are all taken.
const OUT_QUEUE: usize = 4;

impl Settings {
    /// From the effective configuration.
    pub fn new(full: &genro_config::Config) -> Self {
        let config = &full.websocket;
        // Inclusive in the config, exclusive in yawc; one message in one frame or fragments.
        let max = usize::try_from(config.max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        // Messages are reassembled and validated here ([`Assembler`]); yawc's frame layer
        // bounds each frame (also after decompression).
        let mut options = yawc::Options::default()
            .with_no_delay()
            .with_max_payload_read(max)
            .with_max_pending_control_frames(crate::ws_pump::CONTROL_BACKLOG);
        if config.per_message_deflate {
            options = options.with_low_latency_compression();
        }
        Settings {
            max_message_size: max - 1,
            options,
            bounds: Bounds {
                messages: config.max_queue.max(1),
                bytes: usize::try_from(config.max_queue_bytes).unwrap_or(usize::MAX),
            },
            budget: Arc::new(WorkerBudget::new(
                usize::try_from(config.worker_queue_bytes).unwrap_or(usize::MAX),
            )),
            send_timeout: full.limits.send_timeout,
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            // The default may exceed a short graceful_timeout; the drain must fit in it.
            drain_grace: config.drain_grace.min(full.server.graceful_timeout),
        }
    }
}

/// Whether `request` opens a WebSocket: an HTTP/1.1 `GET` with `Upgrade: websocket` and
/// `Connection: upgrade`, or an HTTP/2 `CONNECT` with `:protocol = websocket`.
pub fn is_websocket<B>(request: &http::Request<B>) -> bool {
    fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    }
    match request.version() {
        http::Version::HTTP_11 => {
            request.method() == http::Method::GET
                && has_token(request.headers(), http::header::UPGRADE, "websocket")
                && has_token(request.headers(), http::header::CONNECTION, "upgrade")
        }
        http::Version::HTTP_2 => {
            request.method() == http::Method::CONNECT
                && request
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        }
        _ => false,
    }
}

/// A validated handshake: the response head to send on accept, and the upgrade to await.
pub struct Handshake {
    head: http::response::Parts,
    upgrade: yawc::UpgradeFut,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake")
    }
}

impl Handshake {
    /// Checks the handshake headers (key, version) and negotiates the extensions; `Err` is
    /// the status and text to answer the client with.
    pub fn new<B>(
        request: &mut http::Request<B>,
        settings: &Settings,
    ) -> Result<Self, (StatusCode, &'static str)> {
        if request.version() == http::Version::HTTP_11
            && !request
                .headers()
                .get(http::header::SEC_WEBSOCKET_KEY)
                .is_none_or(|key| valid_key(key.as_bytes()))
        {
            return Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake: Sec-WebSocket-Key is not 16 bytes in base64\n",
            ));
        }
        // yawc reads one offer; pick it here (RFC 7692 5: the first acceptable one).
        let offer = deflate_offer(request.headers());
        let headers = request.headers_mut();
        headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
        if let Some(offer) = offer {
            headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        match yawc::WebSocket::upgrade_with_options(&mut *request, settings.options.clone()) {
            Ok((response, upgrade)) => Ok(Handshake {
                head: response.into_parts().0,
                upgrade,
            }),
            Err(WebSocketError::InvalidSecWebsocketVersion) => Err((
                StatusCode::UPGRADE_REQUIRED,
                "Unsupported WebSocket version (expected Sec-WebSocket-Version: 13)\n",
            )),
            Err(WebSocketError::MissingSecWebSocketKey) => Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake: no Sec-WebSocket-Key\n",
            )),
            Err(_) => Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake (Sec-WebSocket-Extensions)\n",
            )),
        }
    }
}

/// RFC 6455 4.2.1: the key is 16 bytes in base64, i.e. 22 alphabet characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The first permessage-deflate offer of `Sec-WebSocket-Extensions` (all its fields, each
/// a comma-separated list of offers) that this server can accept, normalized; `None` when
/// there is none. An offer is declined (RFC 7692 7.1) when a parameter is unknown, repeated
/// or has an invalid value, or when it asks for `server_max_window_bits=8`, which zlib
/// cannot produce (it would silently use 9).
fn deflate_offer(headers: &HeaderMap) -> Option<HeaderValue> {
    for value in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for offer in value.split(',') {
            if let Some(accepted) = accept_offer(offer) {
                return HeaderValue::from_str(&accepted).ok();
            }
        }
    }
    None
}

fn accept_offer(offer: &str) -> Option<String> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut out = String::from("permessage-deflate");
    let mut seen: Vec<&str> = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |value: Option<&str>| {
            value.and_then(|v| {
                v.parse::<u8>()
                    .ok()
                    .filter(|b| (8..=15).contains(b) && !v.starts_with('0'))
            })
        };
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {
                out.push_str("; ");
                out.push_str(name);
            }
            ("server_max_window_bits", value) => match bits(value) {
                Some(8) | None => return None,
                Some(b) => out.push_str(&format!("; server_max_window_bits={b}")),
            },
            ("client_max_window_bits", None) => out.push_str("; client_max_window_bits"),
            ("client_max_window_bits", value) => match bits(value) {
                None => return None,
                Some(b) => out.push_str(&format!("; client_max_window_bits={b}")),
            },
            _ => return None,
        }
    }
    Some(out)
}

/// Keeps what must live as long as the connection: the worker's drain waits for it, and
/// the connection counts as busy for the idle timer.
pub type Hold = Box<dyn Send + Sync>;

/// Everything the Python thread needs to start a WebSocket session.
#[derive(Debug)]
pub struct WsStart {
    /// Method, URI, version, headers of the handshake request.
    pub parts: http::request::Parts,
    /// Connection facts.
    pub conn: Arc<ConnInfo>,
    /// The session's admission (registry entry, in-flight count).
    pub admission: Arc<Admission>,
    /// Where the handshake response (or the denial) goes.
    pub respond: oneshot::Sender<Response<ResponseBody>>,
    /// The rest, for the pump.
    pub session: Session,
}

/// What the pump is started with when the app accepts.
pub struct Session {
    /// The handshake.
    pub handshake: Handshake,
    /// `[websocket]`.
    pub settings: Arc<Settings>,
    /// Turns true when the worker drains.
    pub stop: watch::Receiver<bool>,
    /// Held until the connection ends.
    pub hold: Hold,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
}

/// An app message for the client.
pub(crate) enum Outbound {
    Frame(Frame),
    Close(u16, String),
}

/// Where a session is in the ASGI protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `websocket.connect` not yet received by the app.
    Connect,
    /// Waiting for accept, close or a denial response.
    Handshake,
    /// A denial response is being sent (`websocket.http.response.start` seen).
    Denying,
    /// Accepted: messages flow.
    Open,
    /// Closed by the app, denied, or ended by the client.
    Closed,
}

struct WsInner {
    phase: Phase,
    respond: Option<oneshot::Sender<Response<ResponseBody>>>,
    session: Option<Session>,
    /// The app's side of the pump's queues, set on accept.
    outbound: Option<mpsc::Sender<Outbound>>,
    /// The pump's hold on the inbound queue, until accept hands it over; dropping it
    /// closes the queue (`receive()` reports the disconnect).
    inbound_tx: Option<Producer>,
    /// The denial response being assembled.
    denial: Option<(StatusCode, HeaderMap, Vec<u8>)>,
    admission: Option<Arc<Admission>>,
    /// An error was logged for this session.
    failed: bool,
}

/// The per-connection object behind the app's `receive` and `send`.
#[pyclass(frozen)]
pub struct WsHandle {
    id: RequestId,
    shared: Arc<Shared>,
    path: String,
    client: SocketAddr,
    inner: Mutex<WsInner>,
    /// Client messages for `receive()`, and how the connection ended.
    queue: Arc<Queue>,
}

impl Drop for WsHandle {
    fn drop(&mut self) {
        // Nothing will take the queued messages any more.
        self.queue.app_gone();
    }
}

impl std::fmt::Debug for WsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsHandle")
    }
}

impl WsHandle {
    /// A handle for a session starting on the Python thread.
    pub fn new(shared: Arc<Shared>, start: WsStart) -> Self {
        let settings = &start.session.settings;
        let queue = Queue::new(shared.clone(), settings.bounds, settings.budget.clone());
        WsHandle {
            id: start.admission.request_id(),
            shared,
            path: start.parts.uri.path().to_owned(),
            client: start.conn.client,
            inner: Mutex::new(WsInner {
                phase: Phase::Connect,
                respond: Some(start.respond),
                session: Some(start.session),
                outbound: None,
                inbound_tx: Some(Producer(queue.clone())),
                denial: None,
                admission: Some(start.admission),
                failed: false,
            }),
            queue,
        }
    }
}

/// Sends `response` as the answer to the handshake; false when the client is gone.
fn answer(inner: &mut WsInner, response: Response<ResponseBody>) -> bool {
    match inner.respond.take() {
        Some(respond) => respond.send(response).is_ok(),
        None => false,
    }
}

fn plain_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let len = body.len();
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[pymethods]
impl WsHandle {
    /// ASGI `receive()`.
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = lock(&this.inner);
            if inner.phase == Phase::Connect {
                inner.phase = Phase::Handshake;
                let m = PyDict::new(py);
                m.set_item(intern!(py, "type"), intern!(py, "websocket.connect"))?;
                return ready(py, m.into_any());
            }
        }
        this.queue.receive(py)
    }

    /// ASGI `send(message)`.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let outbound = match parse_outbound(message) {
            Ok(outbound) => outbound,
            Err(why) => return Err(self.protocol_failure(&why)),
        };
        let mut inner = lock(&self.inner);
        if inner.failed {
            return Err(PyRuntimeError::new_err(
                "the WebSocket already failed (see the server log)",
            ));
        }
        match (inner.phase, outbound) {
            (
                Phase::Connect | Phase::Handshake,
                AppMessage::Accept {
                    subprotocol,
                    headers,
                },
            ) => {
                let Some(session) = inner.session.take() else {
                    return Err(PyRuntimeError::new_err("websocket.accept sent twice"));
                };
                let Handshake { head, upgrade } = session.handshake;
                let mut response = Response::from_parts(head, ResponseBody::full(Bytes::new()));
                let response_headers = response.headers_mut();
                if let Some(subprotocol) = subprotocol {
                    response_headers.insert(SEC_WEBSOCKET_PROTOCOL, subprotocol);
                }
                // The app's headers, except those the handshake itself sets.
                let own: Vec<http::HeaderName> = response_headers.keys().cloned().collect();
                for (name, value) in headers.iter() {
                    if !own.contains(name) {
                        response_headers.append(name.clone(), value.clone());
                    }
                }
                let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
                inner.outbound = Some(out_tx);
                inner.phase = Phase::Open;
                if !answer(&mut inner, response) {
                    // The client left during the handshake.
                    inner.phase = Phase::Closed;
                    inner.outbound = None;
                    self.queue.set_ending(ABNORMAL, "");
                    inner.inbound_tx = None;
                    return crate::bridge::sent(py);
                }
                if let Some(inbound) = inner.inbound_tx.take() {
                    let link = crate::ws_pump::Link {
                        shared: self.shared.clone(),
                        id: inner.admission.as_ref().map(|a| a.registry_id()),
                        client: self.client,
                        inbound,
                        outbound: out_rx,
                    };
                    self.shared.runtime.spawn(crate::ws_pump::pump(
                        upgrade,
                        session.settings,
                        session.stop,
                        session.hold,
                        link,
                    ));
                }
                crate::bridge::sent(py)
            }
            (Phase::Connect | Phase::Handshake, AppMessage::Close { .. }) => {
                // ASGI: a close before accept refuses the handshake with 403.
                self.deny(
                    &mut inner,
                    plain_response(
                        StatusCode::FORBIDDEN,
                        "WebSocket connection refused\n".into(),
                    ),
                );
                crate::bridge::sent(py)
            }
            (Phase::Connect | Phase::Handshake, AppMessage::DenyStart { status, headers }) => {
                inner.denial = Some((status, headers, Vec::new()));
                inner.phase = Phase::Denying;
                crate::bridge::sent(py)
            }
            (Phase::Denying, AppMessage::DenyBody { body, more }) => {
                if let Some((_, _, buffer)) = inner.denial.as_mut() {
                    buffer.extend_from_slice(&body);
                }
                if !more {
                    let (status, headers, body) = inner.denial.take().expect("set in DenyStart");
                    let len = body.len();
                    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    response
                        .headers_mut()
                        .entry(http::header::CONTENT_LENGTH)
                        .or_insert_with(|| HeaderValue::from(len));
                    self.deny(&mut inner, response);
                }
                crate::bridge::sent(py)
            }
            (Phase::Open, AppMessage::Send(frame)) => {
                let Some(tx) = inner.outbound.clone() else {
                    return Err(PyOSError::new_err("WebSocket closed"));
                };
                drop(inner);
                self.forward(py, tx, Outbound::Frame(frame))
            }
            (Phase::Open, AppMessage::Close { code, reason }) => {
                inner.phase = Phase::Closed;
                let Some(tx) = inner.outbound.take() else {
                    return crate::bridge::sent(py);
                };
                drop(inner);
                self.forward(py, tx, Outbound::Close(code, reason))
                    .or_else(|_| crate::bridge::sent(py))
            }
            (Phase::Closed, AppMessage::Send(_) | AppMessage::Close { .. }) => {
                // ASGI 2.4: send() on a closed connection raises OSError.
                Err(PyOSError::new_err("WebSocket closed"))
            }
            (phase, message) => {
                drop(inner);
                Err(self.protocol_failure(&format!(
                    "{} is not allowed {}",
                    message.name(),
                    match phase {
                        Phase::Connect | Phase::Handshake => "before websocket.accept",
                        Phase::Denying =>
                            "during a denial response (only websocket.http.response.body)",
                        Phase::Open => "after websocket.accept",
                        Phase::Closed => "after the WebSocket closed",
                    }
                )))
            }
        }
    }

    /// Called by `glue.run_http` when the app returned normally.
    fn finished(&self) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        match inner.phase {
            Phase::Connect | Phase::Handshake | Phase::Denying => {
                drop(inner);
                let _ = self.protocol_failure(
                    "the app returned without accepting or closing the WebSocket",
                );
            }
            Phase::Open => {
                // Returning is closing: a normal close, like uvicorn's.
                inner.phase = Phase::Closed;
                if let Some(tx) = inner.outbound.take() {
                    self.send_close(tx, 1000);
                }
            }
            Phase::Closed => {}
        }
    }

    /// Called by `glue.run_http` when the task was cancelled (the drain's graceful_timeout
    /// ran out).
    fn cancelled(&self) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.phase != Phase::Closed {
            tracing::warn!(path = %self.path, "WebSocket cancelled: still running when graceful_timeout ran out");
        }
        self.end_with(
            &mut inner,
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down\n".into(),
            1001,
        );
    }

    /// Called by `glue.run_http` with the formatted traceback when the app raised.
    fn failed(&self, traceback: &str) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.failed {
            return;
        }
        inner.failed = true;
        let id = self.id;
        if inner.phase == Phase::Closed && self.queue.has_ended() {
            // The client went away and the app raised because of it (send() on a closed
            // socket): a client matter.
            let last = traceback.trim_end().lines().last().unwrap_or("");
            tracing::debug!(path = %self.path, "WebSocket closed by the client; the app ended with {last}");
            return;
        }
        self.shared.error(ErrorKind::App);
        tracing::error!(
            error_id = %id,
            path = %self.path,
            client = %self.client,
            "exception in ASGI app (WebSocket, error id {id})\n{}",
            traceback.trim_end()
        );
        self.shared.notify(serde_json::json!({
            "event": "app_exception",
            "request_id": id.as_str(),
            "method": "GET",
            "path": self.path,
            "client": self.client.to_string(),
            "pid": std::process::id(),
            "traceback": crate::bridge::tail(traceback.trim_end(), crate::bridge::MAX_NOTIFIED_TRACEBACK),
        }));
        let body = format!("Internal Server Error (error id: {id})\n");
        self.end_with(&mut inner, StatusCode::INTERNAL_SERVER_ERROR, body, 1011);
    }
}

impl WsHandle {
    /// Refuses the handshake with `response`.
    fn deny(&self, inner: &mut WsInner, response: Response<ResponseBody>) {
        inner.phase = Phase::Closed;
        inner.session = None;
        answer(inner, response);
        self.queue.set_ending(ABNORMAL, "");
        inner.inbound_tx = None;
    }

    /// Ends the session on an error: `status` before accept, close `code` after.
    fn end_with(&self, inner: &mut WsInner, status: StatusCode, body: String, code: u16) {
        match inner.phase {
            Phase::Connect | Phase::Handshake | Phase::Denying => {
                self.deny(inner, plain_response(status, body));
            }
            Phase::Open => {
                inner.phase = Phase::Closed;
                if let Some(tx) = inner.outbound.take() {
                    self.send_close(tx, code);
                }
            }
            Phase::Closed => {}
        }
    }

    /// Queues a close frame, waiting for room (off the Python thread) if the queue is full.
    fn send_close(&self, tx: mpsc::Sender<Outbound>, code: u16) {
        if let Err(mpsc::error::TrySendError::Full(close)) =
            tx.try_send(Outbound::Close(code, String::new()))
        {
            self.shared.runtime.spawn(async move {
                let _ = tx.send(close).await;
            });
        }
    }

    /// An invalid message or sequence: log it, end the session (500 or close 1011), and
    /// return the RuntimeError to raise in the app.
    fn protocol_failure(&self, why: &str) -> PyErr {
        let mut inner = lock(&self.inner);
        if !inner.failed {
            inner.failed = true;
            self.shared.error(ErrorKind::App);
            let id = self.id;
            tracing::error!(error_id = %id, path = %self.path, "ASGI protocol error (WebSocket): {why} (error id {id})");
            let body = format!("Internal Server Error (error id: {id})\n");
            self.end_with(&mut inner, StatusCode::INTERNAL_SERVER_ERROR, body, 1011);
        }
        PyRuntimeError::new_err(why.to_owned())
    }

    /// Hands a message to the pump: at once when the queue has room, else through a future
    /// that completes when it does (the client is slow: backpressure on the app).
    fn forward(
        &self,
        py: Python<'_>,
        tx: mpsc::Sender<Outbound>,
        out: Outbound,
    ) -> PyResult<Py<PyAny>> {
        match tx.try_send(out) {
            Ok(()) => crate::bridge::sent(py),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                lock(&self.inner).phase = Phase::Closed;
                Err(PyOSError::new_err("WebSocket closed"))
            }
            Err(mpsc::error::TrySendError::Full(out)) => {
                let waiter = crate::bridge::new_future(py)?;
                let waiter_for_task = waiter.clone_ref(py);
                let shared = self.shared.clone();
                self.shared.runtime.spawn(async move {
                    let value = match tx.send(out).await {
                        Ok(()) => Wake::Sent,
                        Err(_) => Wake::WsClosed,
                    };
                    shared.bridge.push(Event::Wake {
                        waiter: waiter_for_task,
                        value,
                    });
                });
                waiting(py, &waiter)
            }
        }
    }
}

/// A message the app sent, checked.
enum AppMessage {
    Accept {
        subprotocol: Option<HeaderValue>,
        headers: HeaderMap,
    },
    Send(Frame),
    Close {
        code: u16,
        reason: String,
    },
    DenyStart {
        status: StatusCode,
        headers: HeaderMap,
    },
    DenyBody {
        body: Bytes,
        more: bool,
    },
}

impl AppMessage {
    fn name(&self) -> &'static str {
        match self {
            AppMessage::Accept { .. } => "websocket.accept",
            AppMessage::Send(_) => "websocket.send",
            AppMessage::Close { .. } => "websocket.close",
            AppMessage::DenyStart { .. } => "websocket.http.response.start",
            AppMessage::DenyBody { .. } => "websocket.http.response.body",
        }
    }
}

/// Most bytes of a close reason: a close frame's payload is at most 125 bytes, 2 of them
/// the code.
const MAX_REASON: usize = 123;

fn parse_outbound(message: &Bound<'_, PyAny>) -> Result<AppMessage, String> {
    let py = message.py();
    let dict = message.cast::<PyDict>().map_err(|_| {
        format!(
            "send() takes a dict, got {}",
            crate::bridge::type_name(message)
        )
    })?;
    let kind: String = match dict.get_item(intern!(py, "type")).ok().flatten() {
        Some(kind) => kind
            .extract()
            .map_err(|_| "message \"type\" must be a str".to_owned())?,
        None => return Err("message has no \"type\"".into()),
    };
    let field = |name: &str| dict.get_item(name).ok().flatten().filter(|v| !v.is_none());
    match kind.as_str() {
        "websocket.accept" => {
            let subprotocol =
                match field("subprotocol") {
                    None => None,
                    Some(v) => {
                        let text: String = v.extract().map_err(|_| {
                            "websocket.accept: \"subprotocol\" must be a str".to_owned()
                        })?;
                        Some(HeaderValue::from_str(&text).map_err(|_| {
                            format!("websocket.accept: invalid subprotocol {text:?}")
                        })?)
                    }
                };
            let headers = crate::bridge::headers_from_py(field("headers"), &kind)?;
            if headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
                return Err("websocket.accept: give the subprotocol in \"subprotocol\", not as a sec-websocket-protocol header".into());
            }
            Ok(AppMessage::Accept {
                subprotocol,
                headers,
            })
        }
        "websocket.send" => {
            let bytes = field("bytes");
            let text = field("text");
            match (bytes, text) {
                (Some(b), None) => {
                    let data = crate::bridge::bytes_from_py(&b).ok_or_else(|| {
                        format!(
                            "websocket.send: \"bytes\" must be bytes, got {}",
                            crate::bridge::type_name(&b)
                        )
                    })?;
                    Ok(AppMessage::Send(Frame::binary(data)))
                }
                (None, Some(t)) => {
                    let text = t.cast::<PyString>().map_err(|_| {
                        format!(
                            "websocket.send: \"text\" must be a str, got {}",
                            crate::bridge::type_name(&t)
                        )
                    })?;
                    let text = text
                        .to_str()
                        .map_err(|e| format!("websocket.send: \"text\": {e}"))?;
                    Ok(AppMessage::Send(Frame::text(Bytes::copy_from_slice(
                        text.as_bytes(),
                    ))))
                }
                (Some(_), Some(_)) => Err(
                    "websocket.send: give exactly one of \"bytes\" and \"text\", not both".into(),
                ),
                (None, None) => Err("websocket.send: needs \"bytes\" or \"text\"".into()),
            }
        }
        "websocket.close" => {
            let code: u16 = match field("code") {
                None => 1000,
                Some(v) => v.extract().map_err(|_| {
                    "websocket.close: \"code\" must be an int (1000-4999)".to_owned()
                })?,
            };
            if !CloseCode::from(code).is_allowed() {
                return Err(format!(
                    "websocket.close: code {code} may not be sent (RFC 6455 7.4: 1000-1003, 1007-1014, 3000-4999)"
                ));
            }
            let mut reason: String = match field("reason") {
                None => String::new(),
                Some(v) => v
                    .extract()
                    .map_err(|_| "websocket.close: \"reason\" must be a str".to_owned())?,
            };
            if reason.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            Ok(AppMessage::Close { code, reason })
        }
        "websocket.http.response.start" => {
            let status: u16 = field("status")
                .ok_or_else(|| "websocket.http.response.start has no \"status\"".to_owned())?
                .extract()
                .map_err(|_| {
                    "websocket.http.response.start: \"status\" must be an int".to_owned()
                })?;
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| {
                    format!(
                        "websocket.http.response.start: invalid status {status} (expected 200-599)"
                    )
                })?;
            let headers = crate::bridge::headers_from_py(field("headers"), &kind)?;
            Ok(AppMessage::DenyStart { status, headers })
        }
        "websocket.http.response.body" => {
            let body = match field("body") {
                None => Bytes::new(),
                Some(b) => crate::bridge::bytes_from_py(&b).ok_or_else(|| {
                    format!(
                        "websocket.http.response.body: \"body\" must be bytes, got {}",
                        crate::bridge::type_name(&b)
                    )
                })?,
            };
            let more = match field("more_body") {
                None => false,
                Some(v) => v.is_truthy().map_err(|_| {
                    "websocket.http.response.body: \"more_body\" must be a bool".to_owned()
                })?,
            };
            Ok(AppMessage::DenyBody { body, more })
        }
        other => Err(format!("unknown message type {other:?} for a WebSocket")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        deflate_offer(&headers).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_first_acceptable_deflate_offer_is_chosen() {
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        // Several offers in one field (Autobahn 13.7), and across fields.
        assert_eq!(
            offer(&["permessage-deflate; server_no_context_takeover; server_max_window_bits=9, permessage-deflate; server_no_context_takeover, permessage-deflate"]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        );
        assert_eq!(
            offer(&[
                "foo, permessage-deflate; server_max_window_bits=8",
                "permessage-deflate; client_max_window_bits=\"10\""
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=10")
        );
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ=x"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!valid_key(b"Z2Vucm8tbG9hZGdlbi0AAAA=="));
    }

    #[test]
    fn invalid_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown_param",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }
}
