//! WebSocket: the ASGI `websocket` scope over HTTP/1.1 Upgrade (RFC 6455) and HTTP/2
//! extended CONNECT (RFC 8441), on plain TCP and TLS.
//!
//! The frame protocol (masking, fragmentation, UTF-8 validation of text, ping -> pong, close
//! codes, permessage-deflate) is `yawc`'s; this module joins it to the app:
//!
//! 1. The hyper service sees an upgrade request, validates the handshake
//!    ([`Handshake::new`]) and queues the session's [`start`] on the hand-off; the Python
//!    thread starts `glue.run_http(app, scope, handle)` with a [`WsHandle`].
//! 2. The app's first `receive()` is `websocket.connect`. `websocket.accept` sends the
//!    101 (HTTP/1.1) or 200 (HTTP/2) response and spawns the [`pump`]; `websocket.close` or a
//!    `websocket.http.response.*` denial before that answers with an HTTP response instead
//!    (403 for a bare close).
//! 3. The [pump](crate::ws_pump) owns the socket: client messages go into a
//!    [queue](crate::ws_queue) bounded by count and bytes that `receive()` drains (a full
//!    queue stops reading: TCP backpressure), app messages come through a small queue whose
//!    `send()` waits when the client is slow. It pings idle clients, answers the drain with
//!    close 1001, and records how the connection ended for the app's `websocket.disconnect`.

use crate::admission::{Admission, Opening};
use crate::awaitable::{new_future, ready, sent, settle, waiting};
use crate::convert::{
    bytes_from_py, headers_from_py, message_dict, optional_bytes, response_start, type_name,
    MessageError,
};
use crate::registry::Envelope;
use crate::state::{Failing, Shared};
pub(crate) use crate::ws_handshake::{is_websocket, Handshake};
use crate::ws_pump::Outbound;
pub(crate) use crate::ws_pump::{Hold, Settings};
use crate::ws_queue::{Producer, Queue, ABNORMAL};
use bytes::Bytes;
use genro_shared::sync::lock;
use http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, Response, StatusCode};
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use yawc::close::CloseCode;
use yawc::Frame;

use crate::body::ResponseBody;

/// Messages from the app to the pump; a few suffice, since each may be large and `send()`
/// waits when they are all taken.
const OUT_QUEUE: usize = 4;

/// Everything the Python thread needs to start a WebSocket session.
#[derive(Debug)]
pub(crate) struct WsStart {
    /// The handshake's head, connection, admission, and where its answer goes.
    pub(crate) opening: Opening,
    /// The rest, for the pump.
    pub(crate) session: Session,
}

/// What the pump is started with when the app accepts.
pub(crate) struct Session {
    /// The handshake.
    pub(crate) handshake: Handshake,
    /// `[websocket]`.
    pub(crate) settings: Arc<Settings>,
    /// Turns true when its `drain_grace` starts ([`crate::state::Shared::going_away`]).
    pub(crate) stop: watch::Receiver<bool>,
    /// Held until the connection ends.
    pub(crate) hold: Hold,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session")
    }
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
pub(crate) struct WsHandle {
    /// The session's facts (its id is also its error id).
    envelope: Arc<Envelope>,
    shared: Arc<Shared>,
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

/// Queues the start of a WebSocket session for the Python thread.
pub(crate) fn start(shared: &Arc<Shared>, start: WsStart) {
    let queued = crate::admission::QueuedStart::new(shared);
    shared.handoff.run(move |py| {
        let shared = queued.shared().clone();
        drop(queued);
        let scope = crate::scope::new_scope(py, &shared, &start.opening, true);
        let handle = Bound::new(py, WsHandle::new(shared, start))?;
        crate::scope::launch(py, scope, handle);
        Ok(())
    });
}

impl WsHandle {
    /// A handle for a session starting on the Python thread.
    fn new(shared: Arc<Shared>, start: WsStart) -> Self {
        let settings = &start.session.settings;
        let queue = Queue::new(
            shared.handoff.clone(),
            settings.bounds,
            settings.budget.clone(),
        );
        WsHandle {
            envelope: start.opening.admission.envelope().clone(),
            shared,
            inner: Mutex::new(WsInner {
                phase: Phase::Connect,
                respond: Some(start.opening.respond),
                session: Some(start.session),
                outbound: None,
                inbound_tx: Some(Producer(queue.clone())),
                denial: None,
                admission: Some(start.opening.admission),
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

/// What an app message came to, decided under the handle's lock and turned into `send()`'s
/// answer after it.
enum Next {
    /// Done: `send()` completes at once.
    Sent,
    /// A frame for the pump.
    Forward(mpsc::Sender<Outbound>, Outbound),
    /// The app's close for the pump; completes even if the pump is gone.
    Close(mpsc::Sender<Outbound>, Outbound),
    /// A message not allowed in this phase (the text says why).
    Fail(String),
}

#[pymethods]
impl WsHandle {
    /// The request's id (`genro_asgi.run_in_executor` tags its tasks with it).
    #[getter]
    fn request_id(&self) -> &str {
        self.envelope.id.as_str()
    }

    /// ASGI `receive()`.
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let connecting = {
            let mut inner = lock(&this.inner);
            let connecting = inner.phase == Phase::Connect;
            if connecting {
                inner.phase = Phase::Handshake;
            }
            connecting
        };
        if connecting {
            let m = PyDict::new(py);
            m.set_item(intern!(py, "type"), intern!(py, "websocket.connect"))?;
            return ready(py, m.into_any(), None);
        }
        crate::ws_queue::receive(slf)
    }

    /// ASGI `send(message)`.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let outbound = match parse_outbound(message) {
            Ok(outbound) => outbound,
            Err(why) => return Err(self.protocol_failure(&why.to_string())),
        };
        let mut inner = lock(&self.inner);
        if inner.failed {
            return Err(PyRuntimeError::new_err(
                "the WebSocket already failed (see the server log)",
            ));
        }
        let next = match (inner.phase, outbound) {
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
                self.accept(&mut inner, session, subprotocol, headers);
                Next::Sent
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
                Next::Sent
            }
            (Phase::Connect | Phase::Handshake, AppMessage::DenyStart { status, headers }) => {
                inner.denial = Some((status, headers, Vec::new()));
                inner.phase = Phase::Denying;
                Next::Sent
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
                Next::Sent
            }
            (Phase::Open, AppMessage::Send(frame)) => {
                let Some(tx) = inner.outbound.clone() else {
                    return Err(PyOSError::new_err("WebSocket closed"));
                };
                Next::Forward(tx, Outbound::Frame(frame))
            }
            (Phase::Open, AppMessage::Close { code, reason }) => {
                inner.phase = Phase::Closed;
                match inner.outbound.take() {
                    Some(tx) => Next::Close(tx, Outbound::Close(code, reason)),
                    None => Next::Sent,
                }
            }
            (Phase::Closed, AppMessage::Send(_) | AppMessage::Close { .. }) => {
                // ASGI 2.4: send() on a closed connection raises OSError.
                return Err(PyOSError::new_err("WebSocket closed"));
            }
            (phase, message) => Next::Fail(format!(
                "{} is not allowed {}",
                message.name(),
                match phase {
                    Phase::Connect | Phase::Handshake => "before websocket.accept",
                    Phase::Denying =>
                        "during a denial response (only websocket.http.response.body)",
                    Phase::Open => "after websocket.accept",
                    Phase::Closed => "after the WebSocket closed",
                }
            )),
        };
        // Python objects are made only once the lock is released (see `http::Handle::send`).
        drop(inner);
        match next {
            Next::Sent => sent(py),
            Next::Forward(tx, message) => self.forward(py, tx, message),
            Next::Close(tx, message) => self.forward(py, tx, message).or_else(|_| sent(py)),
            Next::Fail(why) => Err(self.protocol_failure(&why)),
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
            tracing::warn!(parent: self.span(), "WebSocket cancelled: still running when graceful_timeout ran out");
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
        let id = self.envelope.id;
        if inner.phase == Phase::Closed && self.queue.has_ended() {
            // The client went away and the app raised because of it (send() on a closed
            // socket): a client matter.
            let last = traceback.trim_end().lines().last().unwrap_or("");
            tracing::debug!(parent: self.span(), "WebSocket closed by the client; the app ended with {last}");
            return;
        }
        self.shared.app_exception(self.failing(), traceback);
        let body = format!("Internal Server Error (error id: {id})\n");
        self.end_with(&mut inner, StatusCode::INTERNAL_SERVER_ERROR, body, 1011);
    }
}

impl crate::ws_queue::QueueOwner for WsHandle {
    fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }
}

impl crate::scope::AppHandle for WsHandle {
    fn app_failed(&self, traceback: &str) {
        self.failed(traceback);
    }
}

impl WsHandle {
    /// `websocket.accept`: answers the handshake with 101 and starts the session's pump.
    fn accept(
        &self,
        inner: &mut WsInner,
        session: Session,
        subprotocol: Option<HeaderValue>,
        headers: HeaderMap,
    ) {
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
        if !answer(inner, response) {
            // The client left during the handshake.
            inner.phase = Phase::Closed;
            inner.outbound = None;
            self.queue.set_ending(ABNORMAL, "");
            inner.inbound_tx = None;
            return;
        }
        if let Some(inbound) = inner.inbound_tx.take() {
            let link = crate::ws_pump::Link {
                shared: self.shared.clone(),
                id: inner.admission.as_ref().map(|a| a.envelope().key),
                inbound,
                outbound: out_rx,
            };
            let pump =
                crate::ws_pump::pump(upgrade, session.settings, session.stop, session.hold, link);
            self.shared
                .runtime
                .spawn(pump.instrument(self.span().clone()));
        }
    }

    /// This session, as its errors are logged.
    fn failing(&self) -> Failing<'_> {
        Failing {
            envelope: &self.envelope,
            websocket: true,
        }
    }

    /// The span of this session's log lines.
    fn span(&self) -> &tracing::Span {
        self.envelope.span()
    }

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
            let body = self.shared.protocol_error(self.failing(), why);
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
            Ok(()) => sent(py),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                lock(&self.inner).phase = Phase::Closed;
                Err(PyOSError::new_err("WebSocket closed"))
            }
            Err(mpsc::error::TrySendError::Full(out)) => {
                let waiter = new_future(py)?;
                let waiter_for_task = waiter.clone_ref(py);
                let shared = self.shared.clone();
                self.shared.runtime.spawn(async move {
                    let outcome = match tx.send(out).await {
                        Ok(()) => Ok(()),
                        Err(_) => Err("WebSocket closed"),
                    };
                    shared
                        .handoff
                        .run(move |py| settle(py, waiter_for_task, outcome));
                });
                waiting(py, &waiter, None)
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

fn parse_outbound(message: &Bound<'_, PyAny>) -> Result<AppMessage, MessageError> {
    let (dict, kind) = message_dict(message)?;
    let field = |name: &str| dict.get_item(name).ok().flatten().filter(|v| !v.is_none());
    let invalid = |field: &'static str, expected: &'static str| MessageError::Invalid {
        kind: kind.clone(),
        field,
        expected,
    };
    match kind.as_str() {
        "websocket.accept" => {
            let subprotocol = match field("subprotocol") {
                None => None,
                Some(v) => {
                    let text: String = v.extract().map_err(|_| invalid("subprotocol", "a str"))?;
                    Some(
                        HeaderValue::from_str(&text)
                            .map_err(|_| MessageError::Subprotocol(text.clone()))?,
                    )
                }
            };
            let headers = headers_from_py(field("headers"), &kind)?;
            if headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
                return Err(MessageError::SubprotocolHeader);
            }
            Ok(AppMessage::Accept {
                subprotocol,
                headers,
            })
        }
        "websocket.send" => match (field("bytes"), field("text")) {
            (Some(b), None) => {
                let data = bytes_from_py(&b).ok_or_else(|| MessageError::WrongType {
                    kind: kind.clone(),
                    field: "bytes",
                    expected: "bytes",
                    got: type_name(&b),
                })?;
                Ok(AppMessage::Send(Frame::binary(data)))
            }
            (None, Some(t)) => {
                let text = t.cast::<PyString>().map_err(|_| MessageError::WrongType {
                    kind: kind.clone(),
                    field: "text",
                    expected: "a str",
                    got: type_name(&t),
                })?;
                let text = text.to_str().map_err(MessageError::Text)?;
                Ok(AppMessage::Send(Frame::text(Bytes::copy_from_slice(
                    text.as_bytes(),
                ))))
            }
            (Some(_), Some(_)) => Err(MessageError::BytesAndText),
            (None, None) => Err(MessageError::NoPayload),
        },
        "websocket.close" => {
            let code: u16 = match field("code") {
                None => 1000,
                Some(v) => v
                    .extract()
                    .map_err(|_| invalid("code", "an int (1000-4999)"))?,
            };
            if !CloseCode::from(code).is_allowed() {
                return Err(MessageError::CloseCode(code));
            }
            let mut reason: String = match field("reason") {
                None => String::new(),
                Some(v) => v.extract().map_err(|_| invalid("reason", "a str"))?,
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
            let (status, headers) = response_start(field("status"), field("headers"), &kind)?;
            Ok(AppMessage::DenyStart { status, headers })
        }
        "websocket.http.response.body" => {
            let body = optional_bytes(field("body"), &kind, "body")?;
            let more = match field("more_body") {
                None => false,
                Some(v) => v.is_truthy().map_err(|_| invalid("more_body", "a bool"))?,
            };
            Ok(AppMessage::DenyBody { body, more })
        }
        _ => Err(MessageError::UnknownType {
            kind,
            scope: "a WebSocket",
        }),
    }
}
