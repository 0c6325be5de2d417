//! The HTTP exchange, from the Python thread's side: its start (scope, handle, app task)
//! and the app's `send()`, which drives the response state machine ([`crate::response`])
//! and hands bytes to the transport ([`crate::body`]).
//!
//! 1. A hyper service admits the request and queues its start ([`start`]) on the hand-off;
//!    the loop builds the scope and starts `glue.run_http(app, scope, handle)` as a task,
//!    unless the client left while it waited (then the [`Pending`] slot is empty).
//! 2. `handle.receive()` reads the request body ([`crate::receive`]).
//! 3. `handle.send()` answers with an already-completed awaitable when nothing must wait
//!    (channel not full); otherwise with a loop future that a tokio task settles through
//!    the hand-off once the bytes are queued or the client is gone.
//! 4. `glue.run_http` reports how the app ended (`finished`, `failed`, `cancelled`): an
//!    incomplete response becomes a 500 with an error id, or an aborted stream.

use crate::admission::{Admission, Opening, QueuedStart};
use crate::awaitable::{new_future, sent, settle, settle_with, waiting};
use crate::body::{Chunk, Pipe, Refused, ResponseBody, SendError};
use crate::budget::Budgets;
use crate::convert::outbound_from_py;
use crate::metrics::{ErrorKind, Limit};
use crate::receive::{Exchange, Responder};
use crate::registry::Envelope;
use crate::response::{Action, Head, State};
use crate::sendfile::{FileFrames, FileSlot};
use crate::state::{Failing, Shared};
use bytes::Bytes;
use genro_shared::sync::lock;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode, Version};
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Everything the Python thread needs to start an exchange.
#[derive(Debug)]
pub(crate) struct RequestStart {
    /// Head, connection, admission, where the response goes.
    pub(crate) opening: Opening,
    /// The request side.
    pub(crate) exchange: Arc<Exchange>,
    /// Where the response's bytes are counted.
    pub(crate) budgets: Budgets,
    /// The connection's sendfile slot, for a `pathsend` answer: plaintext HTTP/1.x only.
    pub(crate) sendfile: Option<Arc<FileSlot>>,
}

/// A request waiting in the hand-off queue for the Python thread. Its client may leave
/// before the loop gets to it (a blocked loop under a flood): [`Pending::take`] by the
/// service's guard then releases the request's memory and its concurrency slot at once,
/// and the loop finds the slot empty.
#[derive(Debug)]
pub(crate) struct Pending(Mutex<Option<RequestStart>>);

impl Pending {
    /// A pending request.
    pub(crate) fn new(start: RequestStart) -> Arc<Self> {
        Arc::new(Pending(Mutex::new(Some(start))))
    }

    /// Takes the request out (once).
    pub(crate) fn take(&self) -> Option<RequestStart> {
        lock(&self.0).take()
    }
}

/// Queues the start of `pending` for the Python thread.
pub(crate) fn start(shared: &Arc<Shared>, pending: Arc<Pending>) {
    let queued = QueuedStart::new(shared);
    shared.handoff.run(move |py| match pending.take() {
        Some(start) => start_request(py, queued.shared(), start),
        None => Ok(()),
    });
}

fn start_request(py: Python<'_>, shared: &Arc<Shared>, start: RequestStart) -> PyResult<()> {
    let scope = crate::scope::new_scope(py, shared, &start.opening, false);
    let RequestStart {
        opening:
            Opening {
                parts,
                conn,
                admission,
                respond,
            },
        exchange,
        budgets,
        sendfile,
    } = start;
    let is_h2 = parts.version == Version::HTTP_2;
    exchange.attach(shared);
    let handle = Handle {
        envelope: admission.envelope().clone(),
        shared: shared.clone(),
        exchange,
        budgets,
        sendfile,
        hints: conn.early_hints(&parts),
        inner: Mutex::new(Inner {
            state: State::Init,
            respond: Some(respond),
            stream: None,
            trailers: HeaderMap::new(),
            admission: Some(admission),
            gone: false,
            is_head: parts.method == http::Method::HEAD,
            is_h2,
            failed: false,
        }),
    };
    crate::scope::launch(py, scope, Bound::new(py, handle)?);
    Ok(())
}

/// The per-exchange object behind the app's `receive` and `send`.
#[pyclass(frozen)]
pub(crate) struct Handle {
    /// The request's facts (its id is also its error id).
    envelope: Arc<Envelope>,
    shared: Arc<Shared>,
    exchange: Arc<Exchange>,
    budgets: Budgets,
    sendfile: Option<Arc<FileSlot>>,
    /// Where `103 Early Hints` go.
    hints: Option<crate::server::EarlyHints>,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    respond: Option<oneshot::Sender<Response<ResponseBody>>>,
    stream: Option<Arc<Pipe>>,
    trailers: HeaderMap,
    admission: Option<Arc<Admission>>,
    /// The client went away before the response completed.
    gone: bool,
    is_head: bool,
    is_h2: bool,
    /// An error was already logged and answered for this exchange.
    failed: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The handle is gone with its response still open (no end was sent): abort it
        // rather than leave the transport waiting for bytes that never come.
        if let Some(pipe) = self.stream.take() {
            pipe.abort();
        }
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handle")
    }
}

#[pymethods]
impl Handle {
    /// The request's id (`genro_asgi.run_in_executor` tags its tasks with it).
    #[getter]
    fn request_id(&self) -> &str {
        self.envelope.id.as_str()
    }

    /// ASGI `receive()` (see [`crate::receive`]).
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        crate::receive::receive(slf)
    }

    /// ASGI `send(message)`.
    fn send(slf: &Bound<'_, Self>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let outbound = match outbound_from_py(message) {
            Ok(outbound) => outbound,
            Err(why) => return Err(this.protocol_failure(&why.to_string())),
        };
        let mut inner = lock(&this.inner);
        if let crate::response::Outbound::EarlyHint { links } = &outbound {
            // Advisory (RFC 8297): dropped where it cannot go (the head already went, an
            // HTTP/1.0 client, the previous response still being written), never an error.
            let open = inner.respond.is_some() && !inner.gone && !inner.failed;
            let queued = open && this.hints.as_ref().is_some_and(|h| h.send(links));
            drop(inner);
            if !queued {
                tracing::debug!(parent: this.span(), "103 Early Hints dropped");
            }
            return sent(py);
        }
        if inner.gone || (this.exchange.is_disconnected() && !inner.state.is_done()) {
            // ASGI 2.4: send() on a closed connection raises OSError, so a streaming loop
            // ends instead of spinning on completed sends.
            inner.gone = true;
            return Err(PyOSError::new_err("client disconnected"));
        }
        if inner.failed {
            return Err(PyRuntimeError::new_err(
                "the response already failed (see the server log)",
            ));
        }
        let action = match inner.state.handle(outbound) {
            Ok(action) => action,
            Err(err) => {
                drop(inner);
                return Err(this.protocol_failure(err.0));
            }
        };
        let pushed = match action {
            Action::Hold => Pushed::Sent,
            Action::Complete(head, body) => {
                // HEAD: announce the length the GET would have had, send no body.
                let len = body.len();
                let body = if inner.is_head { Bytes::new() } else { body };
                let body = ResponseBody::counted(body, &this.budgets);
                this.respond(&mut inner, head, body, Some(len));
                Pushed::Sent
            }
            Action::Open(head, _) | Action::File(head, _) if inner.is_head => {
                // HEAD: the head only; later chunks find no stream and are dropped.
                this.respond(&mut inner, head, ResponseBody::full(Bytes::new()), None);
                Pushed::Sent
            }
            Action::Open(head, first) => {
                this.exchange.note_response(&this.shared, &head.headers);
                let pipe = Pipe::new(this.budgets.clone());
                inner.stream = Some(pipe.clone());
                this.respond(&mut inner, head, ResponseBody::pipe(pipe), None);
                if inner.state.is_done() {
                    inner.stream = None;
                }
                this.stream(&mut inner, Chunk::Data(first), false)
            }
            Action::File(head, path) => {
                drop(inner);
                return send_file(slf, head, path);
            }
            Action::Chunk(bytes) => this.stream(&mut inner, Chunk::Data(bytes), false),
            Action::Last(bytes) => this.stream(&mut inner, Chunk::Data(bytes), true),
            Action::Trailers(headers, end) => {
                inner.trailers.extend(headers);
                if end {
                    let trailers = std::mem::take(&mut inner.trailers);
                    this.stream(&mut inner, Chunk::Trailers(trailers), true)
                } else {
                    Pushed::Sent
                }
            }
        };
        // Python objects are made only once the lock is released: a Python allocation can
        // run the garbage collector, whose finalizers may reach this handle again.
        drop(inner);
        match pushed {
            Pushed::Sent => sent(py),
            Pushed::Gone => Err(PyOSError::new_err("client disconnected")),
            Pushed::Full(pipe, chunk, last) => this.wait_for_room(py, pipe, chunk, last),
        }
    }

    /// Called by `glue.run_http` when the app returned normally.
    fn finished(&self) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.state.is_done() || inner.failed {
            return;
        }
        if inner.gone || self.exchange.client_at_fault(false) {
            tracing::debug!(parent: self.span(), "client disconnected before the response completed");
            self.exchange.client_error(&self.shared);
            // End the body now (a drain ended this event stream): the transport must not
            // wait for the handle to be garbage-collected.
            if let Some(pipe) = inner.stream.take() {
                pipe.end();
            }
            return;
        }
        drop(inner);
        let _ = self.protocol_failure("the app returned without completing the response");
    }

    /// `[limits] request_timeout` ran out (glue's timer on the loop): 504 with the request
    /// id if nothing was sent, else the response is aborted; counted and logged once.
    /// Returns whether the app's task should be cancelled (false once it is done).
    fn expire(&self) -> bool {
        let mut inner = lock(&self.inner);
        if inner.failed || inner.state.is_done() || inner.admission.is_none() {
            return false;
        }
        inner.failed = true;
        let id = &self.envelope.id;
        let age = self.envelope.started.elapsed().as_secs_f64();
        self.shared.limit(Limit::RequestTimeout);
        if inner.respond.is_some() {
            tracing::warn!(parent: self.span(), "request_timeout: answered 504 after {age:.1}s; cancelling the app's task");
        } else {
            tracing::warn!(parent: self.span(), "request_timeout: response aborted after {age:.1}s; cancelling the app's task");
        }
        let body = format!("Gateway Timeout (request id: {id})\n");
        self.fail_locked(&mut inner, StatusCode::GATEWAY_TIMEOUT, &body);
        true
    }

    /// Called by `glue.run_http` when the request task was cancelled (the drain's
    /// graceful_timeout ran out): 503 if nothing was sent, else abort.
    fn cancelled(&self) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.failed || inner.state.is_done() {
            return;
        }
        inner.failed = true;
        self.shared.error(ErrorKind::Internal);
        tracing::warn!(parent: self.span(), "request cancelled: still running when graceful_timeout ran out");
        self.fail_locked(
            &mut inner,
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down\n",
        );
    }

    /// Called by `glue.run_http` with the formatted traceback when the app raised.
    fn failed(&self, traceback: &str) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.failed {
            return;
        }
        if inner.gone || self.exchange.client_at_fault(inner.state.is_done()) {
            // The client went away or aborted its upload, and the app raised because of it
            // (our `OSError: client disconnected`, or a framework's own exception such as
            // Starlette's ClientDisconnect): a client error, not an app one.
            let last = traceback.trim_end().lines().last().unwrap_or("");
            tracing::debug!(parent: self.span(), "client disconnected; the app ended with {last}");
            self.exchange.client_error(&self.shared);
            if self.exchange.is_drained() {
                // A drain ended this event stream: end its body cleanly, as a server that
                // finishes the stream would.
                inner.failed = true;
                if let Some(pipe) = inner.stream.take() {
                    pipe.end();
                }
                return;
            }
            if inner.respond.is_some() || inner.stream.is_some() {
                // Nothing more reaches the client; end the exchange quietly.
                inner.failed = true;
                self.fail_locked(&mut inner, StatusCode::BAD_REQUEST, "");
            }
            return;
        }
        inner.failed = true;
        let id = self.envelope.id;
        self.shared.app_exception(self.failing(), traceback);
        let detail = if self.shared.show_traceback {
            format!("\n\n{traceback}")
        } else {
            String::new()
        };
        let body = format!("Internal Server Error (error id: {id}){detail}\n");
        self.fail_locked(&mut inner, StatusCode::INTERNAL_SERVER_ERROR, &body);
    }
}

impl Handle {
    /// This exchange, as its errors are logged.
    fn failing(&self) -> Failing<'_> {
        Failing {
            envelope: &self.envelope,
            websocket: false,
        }
    }

    /// The span of this exchange's log lines.
    fn span(&self) -> &tracing::Span {
        self.envelope.span()
    }

    /// An invalid message or an incomplete response: log it, answer 500 (or abort), and
    /// return the RuntimeError to raise in the app.
    fn protocol_failure(&self, why: &str) -> PyErr {
        let mut inner = lock(&self.inner);
        if !inner.failed {
            inner.failed = true;
            let body = self.shared.protocol_error(self.failing(), why);
            self.fail_locked(&mut inner, StatusCode::INTERNAL_SERVER_ERROR, &body);
        }
        PyRuntimeError::new_err(why.to_owned())
    }

    /// Answers `status` if nothing was sent yet, else aborts the stream.
    fn fail_locked(&self, inner: &mut Inner, status: StatusCode, body: &str) {
        if inner.respond.is_some() {
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            let head = Head { status, headers };
            let body = Bytes::copy_from_slice(body.as_bytes());
            let len = body.len();
            self.respond(inner, head, ResponseBody::full(body), Some(len));
        } else if let Some(pipe) = inner.stream.take() {
            pipe.abort();
        }
        inner.state.abort();
    }

    /// Refuses the request body: answers with a plain error status if the response has not
    /// started, else aborts it (413, 408).
    fn reject_body(&self, status: StatusCode, body: &str) {
        let mut inner = lock(&self.inner);
        if !inner.failed && !inner.state.is_done() {
            inner.failed = true;
            self.fail_locked(&mut inner, status, body);
        }
    }

    fn respond(&self, inner: &mut Inner, head: Head, body: ResponseBody, len: Option<usize>) {
        let Some(respond) = inner.respond.take() else {
            return;
        };
        let mut headers = head.headers;
        if inner.is_h2 {
            // RFC 9113 8.2.2: connection-specific fields make an HTTP/2 message malformed.
            for name in [
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "upgrade",
            ] {
                headers.remove(name);
            }
        }
        // RFC 9110 8.6: no Content-Length on 1xx, 204 and 304.
        let bodiless = head.status.is_informational()
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED;
        if let Some(len) = len.filter(|_| !bodiless) {
            if !headers.contains_key(CONTENT_LENGTH) {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = headers;
        if respond.send(response).is_err() {
            // The service future is gone: the client left before the response.
            inner.gone = true;
            inner.state.abort();
        }
    }

    /// Pushes a chunk of the streamed response, if it is still open; `last` ends it.
    fn stream(&self, inner: &mut Inner, chunk: Chunk, last: bool) -> Pushed {
        let Some(pipe) = (if last {
            inner.stream.take()
        } else {
            inner.stream.clone()
        }) else {
            return Pushed::Sent;
        };
        match pipe.try_push(chunk) {
            Ok(()) => {
                if last {
                    pipe.end();
                }
                Pushed::Sent
            }
            Err(Refused::Closed) => {
                // The client went away: the response cannot complete.
                inner.gone = true;
                inner.state.abort();
                inner.stream = None;
                Pushed::Gone
            }
            Err(Refused::Full(chunk)) => Pushed::Full(pipe, chunk, last),
        }
    }

    /// The response's buffer is full: `send()` returns an awaitable that completes when
    /// the chunk found room (or the client left, or took nothing for `send_timeout`).
    fn wait_for_room(
        &self,
        py: Python<'_>,
        pipe: Arc<Pipe>,
        chunk: Chunk,
        last: bool,
    ) -> PyResult<Py<PyAny>> {
        let waiter = new_future(py)?;
        let waiter_for_task = waiter.clone_ref(py);
        let shared = self.shared.clone();
        let exchange = self.exchange.clone();
        let envelope = self.envelope.clone();
        self.shared.runtime.spawn(async move {
            let outcome = match pipe
                .push(chunk, |kind| waited(&shared, &pipe, kind, &envelope))
                .await
            {
                Ok(()) => {
                    if last {
                        pipe.end();
                    }
                    Ok(())
                }
                Err(SendError::Closed) => Err("client disconnected"),
                Err(SendError::Stalled) => {
                    stalled(&shared, &pipe, &envelope);
                    exchange.mark_disconnected();
                    Err("client disconnected: it took no data for send_timeout")
                }
            };
            shared
                .handoff
                .run(move |py| settle(py, waiter_for_task, outcome));
        });
        waiting(py, &waiter, None)
    }
}

/// What pushing a response chunk came to, decided under the handle's lock and turned into
/// `send()`'s answer after it.
enum Pushed {
    /// Accepted (or nothing to push): `send()` completes at once.
    Sent,
    /// The client went away: `send()` raises `OSError`.
    Gone,
    /// The buffer is full: `send()` waits for room.
    Full(Arc<Pipe>, Chunk, bool),
}

/// A response's client took nothing for `send_timeout`: count it, log it (once per
/// connection), abort the response (its connection's driver closes the connection, or the
/// stream is reset).
pub(crate) fn stalled(shared: &Shared, pipe: &Pipe, envelope: &Envelope) {
    shared.limit(Limit::SendTimeout);
    if pipe.first_hit(Limit::SendTimeout) {
        tracing::info!(parent: envelope.span(), "send_timeout: the client took no response bytes; disconnecting it (logged once per connection)");
    } else {
        tracing::debug!(parent: envelope.span(), "send_timeout: the client took no response bytes");
    }
    pipe.stall();
}

/// A response's `send()` first waited for budget `kind`: counted, and logged once per
/// connection: INFO for the response's and the connection's budget (the client reads
/// slower than the app sends), WARNING for the worker's (every client's responses wait).
pub(crate) fn waited(shared: &Shared, pipe: &Pipe, kind: Limit, envelope: &Envelope) {
    shared.limit(kind);
    if !pipe.first_hit(kind) {
        return;
    }
    match kind {
        Limit::WorkerBuffer => tracing::warn!(
            parent: envelope.span(),
            "worker_buffer full: responses wait for their clients to read (logged once per connection)"
        ),
        _ => tracing::info!(
            parent: envelope.span(),
            "{}: the client reads slower than the app sends; send() waits (logged once per connection)",
            kind.label()
        ),
    }
}

/// `http.response.pathsend`: the file is opened and measured on tokio's blocking threads,
/// never on the loop's (a file on a slow disk or a FIFO must not stall every request).
/// On a plaintext HTTP/1.1 connection the socket sends it with `sendfile(2)`
/// ([`crate::sendfile`]); otherwise it is read in pieces into the response's pipe.
/// The `send()` completes once the response has started, or raises `RuntimeError` with a
/// 500 answered if the path cannot be opened or is not a regular file.
fn send_file(slf: &Bound<'_, Handle>, head: Head, path: PathBuf) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    let waiter = new_future(py)?;
    let waiter_for_task = waiter.clone_ref(py);
    let handle = slf.clone().unbind();
    let this = slf.get();
    let shared = this.shared.clone();
    let slot = this.sendfile.clone();
    this.shared.runtime.spawn(async move {
        let ahead = slot.is_some();
        let shown = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_regular(&path, ahead))
            .await
            .unwrap_or_else(|err| Err(std::io::Error::other(err)));
        let this = handle.get();
        let outcome = match opened {
            Ok((file, len)) => {
                let mut inner = lock(&this.inner);
                let length = Some(usize::try_from(len).unwrap_or(usize::MAX));
                if let Some(slot) = slot {
                    // hyper sends what the head's Content-Length says: a frame must never
                    // go past it (the rest would never be written, and the connection's
                    // slot would stay taken). A longer declared length ends the response
                    // short, which hyper answers by closing the connection.
                    let declared = head
                        .headers
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let send = declared.map_or(len, |declared| declared.min(len));
                    let body = ResponseBody::file(FileFrames::new(file, send, slot));
                    this.respond(&mut inner, head, body, length);
                } else {
                    let pipe = Pipe::new(this.budgets.clone());
                    this.respond(&mut inner, head, ResponseBody::pipe(pipe.clone()), length);
                    let file = tokio::fs::File::from_std(file);
                    let envelope = this.envelope.clone();
                    tokio::spawn(pump_file(file, pipe, shared.clone(), envelope));
                }
                Ok(())
            }
            Err(err) => Err(this.protocol_failure(&format!(
                "http.response.pathsend: cannot send {}: {err}",
                shown.display()
            ))),
        };
        shared.handoff.run(move |py| {
            drop(handle);
            settle_with(py, waiter_for_task, outcome)
        });
    });
    waiting(py, &waiter, None)
}

/// Opens `path` for pathsend: a regular file and its length, its first frame read ahead
/// when it is to be sent with `sendfile(2)` (`ahead`). Blocking.
fn open_regular(path: &std::path::Path, ahead: bool) -> std::io::Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if ahead {
        let first = meta.len().min(crate::sendfile::FRAME as u64) as usize;
        crate::sendfile::read_ahead(&file, 0, first);
    }
    Ok((file, meta.len()))
}

async fn pump_file(
    mut file: tokio::fs::File,
    pipe: Arc<Pipe>,
    shared: Arc<Shared>,
    envelope: Arc<Envelope>,
) {
    use tokio::io::AsyncReadExt;
    loop {
        let mut buf = bytes::BytesMut::with_capacity(crate::body::PIECE);
        match file.read_buf(&mut buf).await {
            Ok(0) => return pipe.end(),
            Ok(_) => {
                let piece = Chunk::Data(buf.freeze());
                match pipe
                    .push(piece, |kind| waited(&shared, &pipe, kind, &envelope))
                    .await
                {
                    Ok(()) => {}
                    Err(SendError::Closed) => return,
                    Err(SendError::Stalled) => return stalled(&shared, &pipe, &envelope),
                }
            }
            Err(err) => {
                tracing::error!("http.response.pathsend: read failed: {err}");
                return pipe.abort();
            }
        }
    }
}

impl crate::scope::AppHandle for Handle {
    fn app_failed(&self, traceback: &str) {
        self.failed(traceback);
    }
}

impl Responder for Handle {
    fn exchange(&self) -> &Arc<Exchange> {
        &self.exchange
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn reject(&self, status: StatusCode, body: &str) {
        self.reject_body(status, body);
    }

    fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    fn first_hit(&self, limit: Limit) -> bool {
        self.budgets.conn.first_hit(limit)
    }
}
