//! The ASGI bridge: hands requests from the tokio threads to the Python event loop and the
//! app's `send`/`receive` calls back, in batches.
//!
//! 1. A hyper service pushes an [`Event::Request`] onto the [`Bridge`] queue; the push that
//!    finds the queue empty writes the eventfd the asyncio loop watches (one wake-up carries
//!    every event queued meanwhile).
//! 2. On the Python thread, [`Drainer`] takes the whole batch: it builds each scope and starts
//!    `glue.run_http(app, scope, handle)` as a task, and resolves waiters of earlier calls.
//! 3. `handle.receive()` / `handle.send()` answer with an already-completed awaitable when
//!    nothing must wait (no body to read, channel not full); otherwise with a loop future
//!    that a tokio task resolves through step 1's queue.

use crate::body::{Chunk, Pipe, Refused, ResponseBody, SendError};
use crate::budget::Budgets;
use crate::metrics::{ErrorKind, Limit};
use crate::response::{Action, Head, Outbound, State};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode, Version};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The queue from the tokio threads to the Python thread, plus its wake-up eventfd.
#[derive(Debug)]
pub struct Bridge {
    queue: Mutex<Vec<Event>>,
    eventfd: OwnedFd,
}

/// Something the Python thread must do.
#[derive(Debug)]
pub enum Event {
    /// Start an HTTP exchange (unless its client left while it waited: then the slot is
    /// empty and the request's memory was already released).
    Request(Arc<Pending>),
    /// Start a WebSocket session.
    WebSocket(Box<crate::websocket::WsStart>),
    /// Resolve a future handed to the app by `receive()` or `send()`.
    Wake {
        /// The asyncio future.
        waiter: Py<PyAny>,
        /// What it resolves to.
        value: Wake,
    },
    /// Run a protocol's own work on the Python thread (e.g. resolve `receive()` waiters).
    Call(PyCall),
    /// Stop the event loop: the worker has drained.
    Shutdown,
}

/// Work for the Python thread, queued by the tokio side.
pub struct PyCall(Box<dyn FnOnce(Python<'_>) -> PyResult<()> + Send>);

impl PyCall {
    /// Wraps `f`, run once on the Python thread.
    pub fn new(f: impl FnOnce(Python<'_>) -> PyResult<()> + Send + 'static) -> Self {
        PyCall(Box::new(f))
    }
}

impl std::fmt::Debug for PyCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PyCall")
    }
}

/// The value a waiting future resolves to.
#[derive(Debug)]
pub enum Wake {
    /// `send()` may return.
    Sent,
    /// A WebSocket queue has a message (or its end) for its waiting `receive()` futures;
    /// one the app cancelled is skipped and the message stays queued.
    WsReady(std::sync::Arc<crate::ws_queue::Queue>),
    /// A waiting `websocket.send` found the connection closed: raise OSError.
    WsClosed,
    /// A waiting `http.response.body` send could not finish: raise OSError with this.
    SendFailed(&'static str),
}

impl Bridge {
    /// A bridge with a fresh non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bridge {
            queue: Mutex::new(Vec::with_capacity(64)),
            // SAFETY: fd is a freshly created descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd the event loop registers as a reader.
    pub fn fd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Queues an event, waking the loop if the queue was empty.
    pub fn push(&self, event: Event) {
        let was_empty = {
            let mut queue = lock(&self.queue);
            let was_empty = queue.is_empty();
            queue.push(event);
            was_empty
        };
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. EAGAIN (counter
            // saturated) is harmless: the loop is already due to wake.
            unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Clears the eventfd, then takes every queued event. The order matters: a push after
    /// the read either lands in this batch or writes the eventfd again.
    fn take(&self) -> Vec<Event> {
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.fd(), (&mut counter as *mut u64).cast(), 8) };
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// Worker-wide state shared by the tokio side and the Python side.
#[derive(Debug)]
pub struct Shared {
    /// The hand-off queue.
    pub bridge: Bridge,
    /// Runtime used to spawn waits (body reads, full channels).
    pub runtime: tokio::runtime::Handle,
    /// `[server] root_path`.
    pub root_path: String,
    /// `[limits] max_body_size` (0: unlimited).
    pub max_body_size: u64,
    /// `[limits] body_timeout` (zero: none).
    pub body_timeout: std::time::Duration,
    /// Open `text/event-stream` responses, ended on a drain.
    pub event_streams: crate::receive::EventStreams,
    /// `[errors] show_traceback`.
    pub show_traceback: bool,
    /// Requests started.
    pub started: AtomicU64,
    /// Requests in flight (admitted, response not finished).
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// HTTP requests in flight (WebSockets not counted): what `max_concurrency` bounds.
    pub http_in_flight: std::sync::atomic::AtomicUsize,
    /// `[limits] worker_buffer`: response bytes queued for clients, worker-wide.
    pub worker_buffer: Arc<crate::budget::Budget>,
    /// The worker is draining: HTTP/1.1 responses carry `Connection: close`.
    pub draining: std::sync::atomic::AtomicBool,
    /// Requests in flight, for `ctl requests`.
    pub registry: crate::registry::Registry,
    /// The Python loop's lag and liveness.
    pub health: crate::health::LoopHealth,
    /// `[metrics] enabled`.
    pub metrics: Option<crate::metrics::Metrics>,
    /// Where critical events go (to the supervisor, then the webhook), when
    /// `[errors] notify_critical` is on.
    pub notices: Option<mpsc::Sender<genro_shared::protocol::Message>>,
}

/// Most bytes of a traceback sent to the webhook (its end: the exception is last).
pub(crate) const MAX_NOTIFIED_TRACEBACK: usize = 16 * 1024;

/// The last `max` bytes of `text` (cut at a character boundary).
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut at = text.len().saturating_sub(max);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

impl Shared {
    /// Passes a critical event on to the supervisor's webhook sender, if notifications are
    /// on; never waits (dropped when the queue is full).
    pub fn notify(&self, event: serde_json::Value) {
        if let Some(notices) = &self.notices {
            let _ = notices.try_send(genro_shared::protocol::Message::Critical { event });
        }
    }

    /// Counts a bound a client ran into (when metrics are on).
    pub fn limit(&self, kind: crate::metrics::Limit) {
        if let Some(metrics) = &self.metrics {
            metrics.limit(kind);
        }
    }

    /// Counts an error in the metrics (when they are on).
    pub fn error(&self, kind: crate::metrics::ErrorKind) {
        if let Some(metrics) = &self.metrics {
            metrics.error(kind);
        }
    }
}

pub use crate::receive::Exchange;

/// One admitted request, counted in [`Shared::in_flight`] and listed in
/// [`Shared::registry`] until both the transport (the response body or the service future)
/// and the app's task let go of it: a client that disconnects does not free its slot while
/// the app still runs for it.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    id: u64,
    /// The request's id as text, formatted once.
    request_id: crate::registry::RequestId,
    /// Wall-clock start (seconds since the epoch), for the app's envelope.
    wall: f64,
    /// Counted in [`Shared::http_in_flight`].
    http: bool,
}

/// The request header whose value a client may send as its own request id; the response
/// carries ours under the same name.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Admission {
    /// Counts a request in.
    pub fn new<B>(
        shared: Arc<Shared>,
        request: &http::Request<B>,
        client: SocketAddr,
        protocol: crate::metrics::Protocol,
    ) -> Arc<Self> {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let http = protocol != crate::metrics::Protocol::Websocket;
        if http {
            shared.http_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let id = shared.registry.insert(
            request.method(),
            request.uri(),
            client,
            protocol,
            request.headers().get(REQUEST_ID),
        );
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let request_id = shared.registry.request_id(id);
        Arc::new(Admission {
            shared,
            id,
            request_id,
            wall,
            http,
        })
    }

    /// The request's id.
    pub fn request_id(&self) -> crate::registry::RequestId {
        self.request_id
    }

    /// The request's key in the registry.
    pub fn registry_id(&self) -> u64 {
        self.id
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.http {
            self.shared.http_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// How the connection reached us.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub client: SocketAddr,
    /// Local address.
    pub server: SocketAddr,
    /// TLS or not.
    pub https: bool,
    /// Forwarded by the HTTP/3 front over the slot's private Unix socket: the request is
    /// HTTP/3 for the app, and `client` comes from [`genro_shared::CLIENT_HEADER`].
    pub front: bool,
}

/// Everything the Python thread needs to start an exchange.
#[derive(Debug)]
pub struct RequestStart {
    /// Method, URI, version, headers.
    pub parts: http::request::Parts,
    /// Connection facts.
    pub conn: Arc<ConnInfo>,
    /// The request side.
    pub exchange: Arc<Exchange>,
    /// Where the response goes.
    pub respond: oneshot::Sender<Response<ResponseBody>>,
    /// The request's admission, held until the app's task ends.
    pub admission: Arc<Admission>,
    /// Where the response's bytes are counted.
    pub budgets: Budgets,
}

/// A request waiting in the hand-off queue for the Python thread. Its client may leave
/// before the loop gets to it (a blocked loop under a flood): [`Pending::take`] by the
/// service's guard then releases the request's memory and its concurrency slot at once,
/// and the loop finds the slot empty.
#[derive(Debug)]
pub struct Pending(Mutex<Option<Box<RequestStart>>>);

impl Pending {
    /// A pending request.
    pub fn new(start: RequestStart) -> Arc<Self> {
        Arc::new(Pending(Mutex::new(Some(Box::new(start)))))
    }

    /// Takes the request out (once).
    pub fn take(&self) -> Option<Box<RequestStart>> {
        lock(&self.0).take()
    }
}

/// Python objects created once per worker.
struct PyState {
    app: Py<PyAny>,
    run_http: Py<PyAny>,
    create_task: Py<PyAny>,
    create_future: Py<PyAny>,
    stop_loop: Py<PyAny>,
    asgi: Py<PyDict>,
    lifespan_state: Py<PyDict>,
    empty: Py<PyDict>,
    sent: Py<Ready>,
}

static PY: PyOnceLock<PyState> = PyOnceLock::new();

/// Objects the bridge needs from the Python side, given once at start-up.
#[derive(Debug)]
pub struct PyParts {
    /// The ASGI app.
    pub app: Py<PyAny>,
    /// `glue.run_http`.
    pub run_http: Py<PyAny>,
    /// The asyncio loop.
    pub event_loop: Py<PyAny>,
    /// The lifespan state dict, copied into every scope.
    pub lifespan_state: Py<PyDict>,
}

/// Installs the per-worker Python objects; call once before the loop runs.
pub fn install(py: Python<'_>, parts: PyParts) -> PyResult<()> {
    let event_loop = parts.event_loop.bind(py);
    let asgi = PyDict::new(py);
    asgi.set_item("version", "3.0")?;
    asgi.set_item("spec_version", "2.4")?;
    let state = PyState {
        app: parts.app,
        run_http: parts.run_http,
        create_task: event_loop.getattr("create_task")?.unbind(),
        create_future: event_loop.getattr("create_future")?.unbind(),
        stop_loop: event_loop.getattr("stop")?.unbind(),
        asgi: asgi.unbind(),
        lifespan_state: parts.lifespan_state,
        empty: PyDict::new(py).unbind(),
        sent: Py::new(py, Ready { value: None })?,
    };
    PY.set(py, state)
        .map_err(|_| PyRuntimeError::new_err("bridge installed twice"))
}

fn py_state(py: Python<'_>) -> PyResult<&PyState> {
    PY.get(py)
        .ok_or_else(|| PyRuntimeError::new_err("bridge not installed"))
}

/// The eventfd reader callback: runs every queued event on the Python thread.
#[pyclass(frozen)]
pub struct Drainer {
    shared: Arc<Shared>,
}

impl Drainer {
    /// A drainer for this worker.
    pub fn new(shared: Arc<Shared>) -> Self {
        Drainer { shared }
    }
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drainer")
    }
}

#[pymethods]
impl Drainer {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let state = py_state(py)?;
        for event in self.shared.bridge.take() {
            let result = match event {
                Event::Request(pending) => match pending.take() {
                    Some(start) => start_request(py, state, &self.shared, *start),
                    None => Ok(()),
                },
                Event::WebSocket(start) => start_websocket(py, state, &self.shared, *start),
                Event::Wake { waiter, value } => wake(py, waiter, value),
                Event::Call(call) => (call.0)(py),
                Event::Shutdown => state.stop_loop.call0(py).map(drop),
            };
            if let Err(err) = result {
                tracing::error!("bridge: {err}");
            }
        }
        Ok(())
    }
}

fn wake(py: Python<'_>, waiter: Py<PyAny>, value: Wake) -> PyResult<()> {
    let value = match value {
        Wake::Sent => py.None(),
        Wake::WsReady(queue) => return crate::ws_queue::serve(py, waiter, &queue),
        Wake::WsClosed | Wake::SendFailed(_) => {
            let why = match value {
                Wake::SendFailed(why) => why,
                _ => "WebSocket closed",
            };
            let waiter = waiter.bind(py);
            if !waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
                let error = PyOSError::new_err(why);
                waiter.call_method1(intern!(py, "set_exception"), (error.value(py),))?;
            }
            return Ok(());
        }
    };
    let waiter = waiter.bind(py);
    if !waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
        waiter.call_method1(intern!(py, "set_result"), (value,))?;
    }
    Ok(())
}

fn start_request(
    py: Python<'_>,
    state: &PyState,
    shared: &Arc<Shared>,
    start: RequestStart,
) -> PyResult<()> {
    shared.started.fetch_add(1, Ordering::Relaxed);
    let scope = build_scope(
        py,
        state,
        shared,
        Scoped::of(&start.parts, &start.conn, &start.admission, false),
    )?;
    let is_h2 = start.parts.version == Version::HTTP_2;
    start.exchange.attach(shared);
    let handle = Handle {
        id: start.admission.request_id(),
        shared: shared.clone(),
        exchange: start.exchange,
        method: start.parts.method.clone(),
        path: start.parts.uri.path().to_owned(),
        client: start.conn.client,
        budgets: start.budgets,
        inner: Mutex::new(Inner {
            state: State::Init,
            respond: Some(start.respond),
            stream: None,
            trailers: HeaderMap::new(),
            admission: Some(start.admission),
            gone: false,
            is_head: start.parts.method == http::Method::HEAD,
            is_h2,
            failed: false,
        }),
    };
    run_app(py, state, scope, Bound::new(py, handle)?.into_any())
}

/// Starts `glue.run_http(app, scope, handle)` as a task of the loop.
fn run_app(
    py: Python<'_>,
    state: &PyState,
    scope: Bound<'_, PyDict>,
    handle: Bound<'_, PyAny>,
) -> PyResult<()> {
    let coro = state
        .run_http
        .call1(py, (state.app.clone_ref(py), scope, handle))?;
    state.create_task.call1(py, (coro,))?;
    Ok(())
}

fn start_websocket(
    py: Python<'_>,
    state: &PyState,
    shared: &Arc<Shared>,
    start: crate::websocket::WsStart,
) -> PyResult<()> {
    shared.started.fetch_add(1, Ordering::Relaxed);
    let scope = build_scope(
        py,
        state,
        shared,
        Scoped::of(&start.parts, &start.conn, &start.admission, true),
    )?;
    let handle = Bound::new(py, crate::websocket::WsHandle::new(shared.clone(), start))?;
    run_app(py, state, scope, handle.into_any())
}

/// What a scope is built from.
struct Scoped<'a> {
    parts: &'a http::request::Parts,
    conn: &'a ConnInfo,
    admission: &'a Admission,
    /// A `websocket` scope (else `http`).
    websocket: bool,
}

impl<'a> Scoped<'a> {
    fn of(
        parts: &'a http::request::Parts,
        conn: &'a ConnInfo,
        admission: &'a Admission,
        websocket: bool,
    ) -> Self {
        Scoped {
            parts,
            conn,
            admission,
            websocket,
        }
    }
}

fn build_scope<'py>(
    py: Python<'py>,
    state: &PyState,
    shared: &Shared,
    start: Scoped<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let parts = start.parts;
    let scope = PyDict::new(py);
    let kind = if start.websocket {
        intern!(py, "websocket")
    } else {
        intern!(py, "http")
    };
    scope.set_item(intern!(py, "type"), kind)?;
    scope.set_item(intern!(py, "asgi"), state.asgi.bind(py))?;
    let version = match parts.version {
        _ if start.conn.front => intern!(py, "3"),
        Version::HTTP_10 => intern!(py, "1.0"),
        Version::HTTP_2 => intern!(py, "2"),
        _ => intern!(py, "1.1"),
    };
    scope.set_item(intern!(py, "http_version"), version)?;
    let scheme = match (start.websocket, start.conn.https) {
        (false, false) => intern!(py, "http"),
        (false, true) => intern!(py, "https"),
        (true, false) => intern!(py, "ws"),
        (true, true) => intern!(py, "wss"),
    };
    if start.websocket {
        let subprotocols = PyList::empty(py);
        for value in parts.headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
            for name in value.to_str().unwrap_or("").split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    subprotocols.append(name)?;
                }
            }
        }
        scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
    } else {
        scope.set_item(intern!(py, "method"), parts.method.as_str())?;
    }
    scope.set_item(intern!(py, "scheme"), scheme)?;
    let raw_path = parts.uri.path();
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    scope.set_item(intern!(py, "path"), path.as_ref())?;
    scope.set_item(
        intern!(py, "raw_path"),
        PyBytes::new(py, raw_path.as_bytes()),
    )?;
    let query = parts.uri.query().unwrap_or("");
    scope.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, query.as_bytes()),
    )?;
    scope.set_item(intern!(py, "root_path"), shared.root_path.as_str())?;
    let headers = PyList::empty(py);
    // HTTP/2 carries the host in :authority, which hyper keeps in the URI; frameworks build
    // URLs from the `host` header, so give them one (as h2 -> h1 proxies do).
    if !parts.headers.contains_key(http::header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            headers.append((
                PyBytes::new(py, b"host"),
                PyBytes::new(py, authority.as_str().as_bytes()),
            ))?;
        }
    }
    // RFC 9113 8.2.3: HTTP/2 may split `cookie` into several fields; apps expect one.
    let is_h2 = parts.version == Version::HTTP_2;
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        if is_h2 && name == http::header::COOKIE {
            cookies.push(value.as_bytes());
            continue;
        }
        headers.append((
            PyBytes::new(py, name.as_str().as_bytes()),
            PyBytes::new(py, value.as_bytes()),
        ))?;
    }
    if !cookies.is_empty() {
        headers.append((
            PyBytes::new(py, b"cookie"),
            PyBytes::new(py, &cookies.join(&b"; "[..])),
        ))?;
    }
    scope.set_item(intern!(py, "headers"), headers)?;
    let client = &start.conn.client;
    scope.set_item(
        intern!(py, "client"),
        (client.ip().to_string(), client.port()),
    )?;
    let server = &start.conn.server;
    scope.set_item(
        intern!(py, "server"),
        (server.ip().to_string(), server.port()),
    )?;
    scope.set_item(intern!(py, "state"), state.lifespan_state.bind(py).copy()?)?;
    let extensions = PyDict::new(py);
    if start.websocket {
        extensions.set_item(intern!(py, "websocket.http.response"), state.empty.bind(py))?;
    } else {
        extensions.set_item(intern!(py, "http.response.trailers"), state.empty.bind(py))?;
        extensions.set_item(intern!(py, "http.response.pathsend"), state.empty.bind(py))?;
    }
    extensions.set_item(
        intern!(py, "genro.draining"),
        crate::receive::draining_extension(py)?,
    )?;
    let admission = start.admission;
    let envelope = PyDict::new(py);
    envelope.set_item(intern!(py, "id"), admission.request_id().as_str())?;
    envelope.set_item(intern!(py, "start"), admission.wall)?;
    let external = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|_| shared.registry.external_id(admission.id));
    envelope.set_item(intern!(py, "external_id"), external)?;
    extensions.set_item(intern!(py, "genro.envelope"), envelope)?;
    scope.set_item(intern!(py, "extensions"), extensions)?;
    Ok(scope)
}

/// An awaitable that is already complete: `await` returns `value` without suspending, so
/// a `send()` or `receive()` that need not wait costs no future and no loop iteration.
#[pyclass(frozen)]
pub struct Ready {
    value: Option<Py<PyAny>>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ready")
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.value {
            None => Ok(None),
            Some(value) => Err(PyStopIteration::new_err((value.clone_ref(py),))),
        }
    }

    // send/throw/close make this a `collections.abc.Coroutine`, so code that schedules
    // `receive()` with `asyncio.create_task` (Django Channels does) accepts it.
    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.__next__(py)
    }

    #[pyo3(signature = (kind, value=None, _traceback=None))]
    fn throw(
        &self,
        kind: &Bound<'_, PyAny>,
        value: Option<&Bound<'_, PyAny>>,
        _traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        Err(raise(kind, value))
    }

    fn close(&self) {}
}

/// Builds the exception a `throw(kind, value)` call asks for.
pub(crate) fn raise(kind: &Bound<'_, PyAny>, value: Option<&Bound<'_, PyAny>>) -> PyErr {
    let exception = match value {
        Some(value) if !value.is_none() => value.clone(),
        _ => kind.clone(),
    };
    PyErr::from_value(exception)
}

/// A pending `receive()`/`send()`: the loop future, wrapped so that it is also a
/// `collections.abc.Coroutine` (see [`Ready`]); awaiting it awaits the future.
#[pyclass(frozen)]
pub struct Waiting {
    iter: Py<PyAny>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

#[pymethods]
impl Waiting {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .iter
            .bind(py)
            .call_method0(intern!(py, "__next__"))?
            .unbind())
    }

    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Ok(self
            .iter
            .bind(py)
            .call_method1(intern!(py, "send"), (value,))?
            .unbind())
    }

    #[pyo3(signature = (kind, value=None, traceback=None))]
    fn throw(
        &self,
        py: Python<'_>,
        kind: &Bound<'_, PyAny>,
        value: Option<&Bound<'_, PyAny>>,
        traceback: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let _ = traceback;
        let exception = raise(kind, value);
        Ok(self
            .iter
            .bind(py)
            .call_method1(intern!(py, "throw"), (exception.value(py),))?
            .unbind())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.iter.bind(py).call_method0(intern!(py, "close"))?;
        Ok(())
    }
}

/// Wraps a loop future for the app (see [`Waiting`]).
pub(crate) fn waiting(py: Python<'_>, future: &Py<PyAny>) -> PyResult<Py<PyAny>> {
    let iter = future
        .bind(py)
        .call_method0(intern!(py, "__await__"))?
        .unbind();
    Ok(Py::new(py, Waiting { iter })?.into_any())
}

/// The per-exchange object behind the app's `receive` and `send`.
#[pyclass(frozen)]
pub struct Handle {
    /// The request's id, also its error id.
    id: crate::registry::RequestId,
    pub(crate) shared: Arc<Shared>,
    pub(crate) exchange: Arc<Exchange>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) client: SocketAddr,
    pub(crate) budgets: Budgets,
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
    /// ASGI `receive()` (see [`crate::receive`]).
    fn receive(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        crate::receive::receive(slf)
    }

    /// ASGI `send(message)`.
    fn send(&self, py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let state = py_state(py)?;
        let outbound = match outbound_from_py(message) {
            Ok(outbound) => outbound,
            Err(why) => return Err(self.protocol_failure(&why)),
        };
        let mut inner = lock(&self.inner);
        if inner.gone || (self.exchange.is_disconnected() && !inner.state.is_done()) {
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
                return Err(self.protocol_failure(err.0));
            }
        };
        match action {
            Action::Hold => {}
            Action::Complete(head, body) => {
                // HEAD: announce the length the GET would have had, send no body.
                let len = body.len();
                let body = if inner.is_head { Bytes::new() } else { body };
                let body = ResponseBody::counted(body, &self.budgets);
                self.respond(&mut inner, head, body, Some(len));
            }
            Action::Open(head, _) | Action::File(head, _) if inner.is_head => {
                // HEAD: the head only; later chunks find no stream and are dropped.
                self.respond(&mut inner, head, ResponseBody::full(Bytes::new()), None);
            }
            Action::Open(head, first) => {
                self.exchange.note_response(&self.shared, &head.headers);
                let pipe = Pipe::new(self.budgets.clone());
                inner.stream = Some(pipe.clone());
                self.respond(&mut inner, head, ResponseBody::pipe(pipe), None);
                if inner.state.is_done() {
                    inner.stream = None;
                }
                return self.stream(py, &mut inner, Chunk::Data(first), false);
            }
            Action::File(head, path) => {
                let file = match std::fs::File::open(&path)
                    .and_then(|f| f.metadata().map(|m| (f, m.len())))
                {
                    Ok(file) => file,
                    Err(err) => {
                        drop(inner);
                        return Err(self.protocol_failure(&format!(
                            "http.response.pathsend: cannot open {}: {err}",
                            path.display()
                        )));
                    }
                };
                let pipe = Pipe::new(self.budgets.clone());
                self.respond(
                    &mut inner,
                    head,
                    ResponseBody::pipe(pipe.clone()),
                    Some(file.1 as usize),
                );
                self.shared.runtime.spawn(pump_file(
                    file.0,
                    pipe,
                    self.shared.clone(),
                    Who(self.id, self.client),
                ));
            }
            Action::Chunk(bytes) => return self.stream(py, &mut inner, Chunk::Data(bytes), false),
            Action::Last(bytes) => return self.stream(py, &mut inner, Chunk::Data(bytes), true),
            Action::Trailers(headers, end) => {
                inner.trailers.extend(headers);
                if end {
                    let trailers = std::mem::take(&mut inner.trailers);
                    return self.stream(py, &mut inner, Chunk::Trailers(trailers), true);
                }
            }
        }
        Ok(state.sent.clone_ref(py).into_any())
    }

    /// Called by `glue.run_http` when the app returned normally.
    fn finished(&self) {
        let mut inner = lock(&self.inner);
        inner.admission = None;
        if inner.state.is_done() || inner.failed {
            return;
        }
        if inner.gone || self.exchange.client_at_fault(false) {
            tracing::debug!(method = %self.method, path = %self.path, "client disconnected before the response completed");
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
        tracing::warn!(method = %self.method, path = %self.path, "request cancelled: still running when graceful_timeout ran out");
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
            tracing::debug!(method = %self.method, path = %self.path, "client disconnected; the app ended with {last}");
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
        self.shared.error(ErrorKind::App);
        let id = self.id;
        tracing::error!(
            error_id = %id,
            method = %self.method,
            path = %self.path,
            client = %self.client,
            "exception in ASGI app (error id {id})\n{}",
            traceback.trim_end()
        );
        self.shared.notify(serde_json::json!({
            "event": "app_exception",
            "request_id": id.as_str(),
            "method": self.method.as_str(),
            "path": self.path,
            "client": self.client.to_string(),
            "pid": std::process::id(),
            "traceback": tail(traceback.trim_end(), MAX_NOTIFIED_TRACEBACK),
        }));
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
    /// An invalid message or an incomplete response: log it, answer 500 (or abort), and
    /// return the RuntimeError to raise in the app.
    fn protocol_failure(&self, why: &str) -> PyErr {
        let mut inner = lock(&self.inner);
        if !inner.failed {
            inner.failed = true;
            self.shared.error(ErrorKind::App);
            let id = self.id;
            tracing::error!(error_id = %id, method = %self.method, path = %self.path, "ASGI protocol error: {why} (error id {id})");
            let body = format!("Internal Server Error (error id: {id})\n");
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
    pub(crate) fn reject(&self, status: StatusCode, body: &str) {
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

    fn stream(
        &self,
        py: Python<'_>,
        inner: &mut Inner,
        chunk: Chunk,
        last: bool,
    ) -> PyResult<Py<PyAny>> {
        let state = py_state(py)?;
        let Some(pipe) = (if last {
            inner.stream.take()
        } else {
            inner.stream.clone()
        }) else {
            return Ok(state.sent.clone_ref(py).into_any());
        };
        match pipe.try_push(chunk) {
            Ok(()) => {
                if last {
                    pipe.end();
                }
                Ok(state.sent.clone_ref(py).into_any())
            }
            Err(Refused::Closed) => {
                // The client went away: the response cannot complete.
                inner.gone = true;
                inner.state.abort();
                inner.stream = None;
                Err(PyOSError::new_err("client disconnected"))
            }
            Err(Refused::Full(chunk)) => {
                let waiter = state.create_future.call0(py)?;
                let waiter_for_task = waiter.clone_ref(py);
                let shared = self.shared.clone();
                let exchange = self.exchange.clone();
                let who = Who(self.id, self.client);
                self.shared.runtime.spawn(async move {
                    let value = match pipe
                        .push(chunk, |kind| waited(&shared, &pipe, kind, who))
                        .await
                    {
                        Ok(()) => {
                            if last {
                                pipe.end();
                            }
                            Wake::Sent
                        }
                        Err(SendError::Closed) => Wake::SendFailed("client disconnected"),
                        Err(SendError::Stalled) => {
                            stalled(&shared, &pipe, who);
                            exchange.mark_disconnected();
                            Wake::SendFailed(
                                "client disconnected: it took no data for send_timeout",
                            )
                        }
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

/// The request a response belongs to, for its log lines.
#[derive(Clone, Copy)]
struct Who(crate::registry::RequestId, SocketAddr);

/// A response's client took nothing for `send_timeout`: count it, log it (once per
/// connection), abort the response (its connection's driver closes the connection, or the
/// stream is reset).
fn stalled(shared: &Shared, pipe: &Pipe, Who(id, client): Who) {
    shared.limit(Limit::SendTimeout);
    if pipe.first_hit(Limit::SendTimeout) {
        tracing::info!(request_id = %id, %client, "send_timeout: the client took no response bytes; disconnecting it (logged once per connection)");
    } else {
        tracing::debug!(request_id = %id, %client, "send_timeout: the client took no response bytes");
    }
    pipe.stall();
}

/// A response's `send()` first waited for budget `kind`: counted, and logged once per
/// connection: INFO for the response's and the connection's budget (the client reads
/// slower than the app sends), WARNING for the worker's (every client's responses wait).
fn waited(shared: &Shared, pipe: &Pipe, kind: Limit, Who(id, client): Who) {
    shared.limit(kind);
    if !pipe.first_hit(kind) {
        return;
    }
    match kind {
        Limit::WorkerBuffer => tracing::warn!(
            request_id = %id, %client,
            "worker_buffer full: responses wait for their clients to read (logged once per connection)"
        ),
        _ => tracing::info!(
            request_id = %id, %client,
            "{}: the client reads slower than the app sends; send() waits (logged once per connection)",
            kind.label()
        ),
    }
}

/// Streams a `pathsend` file through `pipe`.
async fn pump_file(file: std::fs::File, pipe: Arc<Pipe>, shared: Arc<Shared>, who: Who) {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::from_std(file);
    loop {
        let mut buf = bytes::BytesMut::with_capacity(crate::body::PIECE);
        match file.read_buf(&mut buf).await {
            Ok(0) => return pipe.end(),
            Ok(_) => {
                let piece = Chunk::Data(buf.freeze());
                match pipe
                    .push(piece, |kind| waited(&shared, &pipe, kind, who))
                    .await
                {
                    Ok(()) => {}
                    Err(SendError::Closed) => return,
                    Err(SendError::Stalled) => return stalled(&shared, &pipe, who),
                }
            }
            Err(err) => {
                tracing::error!("http.response.pathsend: read failed: {err}");
                return pipe.abort();
            }
        }
    }
}

/// Converts the dict the app passed to `send()` into a typed message. Strict: the error
/// names the field and what was expected.
fn outbound_from_py(message: &Bound<'_, PyAny>) -> Result<Outbound, String> {
    let py = message.py();
    let dict = message
        .cast::<PyDict>()
        .map_err(|_| format!("send() takes a dict, got {}", type_name(message)))?;
    let kind: String = match dict.get_item(intern!(py, "type")).ok().flatten() {
        Some(kind) => kind
            .extract()
            .map_err(|_| "message \"type\" must be a str".to_owned())?,
        None => return Err("message has no \"type\"".into()),
    };
    let field = |name: &str| dict.get_item(name).ok().flatten();
    let flag = |name: &str| -> Result<bool, String> {
        match field(name) {
            None => Ok(false),
            Some(v) => v
                .is_truthy()
                .map_err(|_| format!("{kind}: \"{name}\" must be a bool")),
        }
    };
    match kind.as_str() {
        "http.response.start" => {
            let status: u16 = field("status")
                .ok_or_else(|| "http.response.start has no \"status\"".to_owned())?
                .extract()
                .map_err(|_| "http.response.start: \"status\" must be an int".to_owned())?;
            // 1xx are interim responses and 101 switches protocols: neither can be the
            // response to an ASGI HTTP request.
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .ok_or_else(|| {
                    format!("http.response.start: invalid status {status} (expected 200-599)")
                })?;
            let headers = headers_from_py(field("headers"), &kind)?;
            Ok(Outbound::Start {
                head: Head { status, headers },
                trailers: flag("trailers")?,
            })
        }
        "http.response.body" => {
            let body = match field("body") {
                None => Bytes::new(),
                Some(b) => bytes_from_py(&b).ok_or_else(|| {
                    format!(
                        "http.response.body: \"body\" must be bytes, got {}",
                        type_name(&b)
                    )
                })?,
            };
            Ok(Outbound::Body {
                body,
                more: flag("more_body")?,
            })
        }
        "http.response.trailers" => Ok(Outbound::Trailers {
            headers: headers_from_py(field("headers"), &kind)?,
            more: flag("more_trailers")?,
        }),
        "http.response.pathsend" => {
            let path: String = field("path")
                .ok_or_else(|| "http.response.pathsend has no \"path\"".to_owned())?
                .extract()
                .map_err(|_| "http.response.pathsend: \"path\" must be a str".to_owned())?;
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "http.response.pathsend: path {} is not absolute",
                    path.display()
                ));
            }
            Ok(Outbound::PathSend { path })
        }
        other => Err(format!(
            "unknown message type {other:?} for an HTTP exchange"
        )),
    }
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn bytes_from_py(obj: &Bound<'_, PyAny>) -> Option<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        if b.as_bytes().len() <= crate::body::PIECE {
            return Some(Bytes::copy_from_slice(b.as_bytes()));
        }
        // Large and immutable: keep the app's object instead of copying it, so a chunk
        // the app sends on many streams is in memory once, and what waits for a slow
        // client is the app's own bytes. Dropped without the GIL, its reference is
        // released the next time the worker enters Python.
        return Some(Bytes::from_owner(pyo3::pybacked::PyBackedBytes::from(
            b.clone(),
        )));
    }
    if let Ok(b) = obj.cast::<pyo3::types::PyByteArray>() {
        return Some(Bytes::from(b.to_vec()));
    }
    None
}

pub(crate) fn headers_from_py(
    value: Option<Bound<'_, PyAny>>,
    kind: &str,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    let Some(value) = value else {
        return Ok(headers);
    };
    let iter = value
        .try_iter()
        .map_err(|_| format!("{kind}: \"headers\" must be an iterable of [name, value] pairs"))?;
    for item in iter {
        let item = item.map_err(|e| format!("{kind}: headers: {e}"))?;
        let pair = |i: usize| -> Result<Bytes, String> {
            let part = item
                .get_item(i)
                .map_err(|_| format!("{kind}: each header must be a [name, value] pair"))?;
            bytes_from_py(&part).ok_or_else(|| {
                format!(
                    "{kind}: header names and values must be bytes, got {}",
                    type_name(&part)
                )
            })
        };
        let (name, value) = (pair(0)?, pair(1)?);
        let name = HeaderName::from_bytes(&name).map_err(|_| {
            format!(
                "{kind}: invalid header name {:?}",
                String::from_utf8_lossy(&name)
            )
        })?;
        let value = HeaderValue::from_maybe_shared(value.clone()).map_err(|_| {
            format!(
                "{kind}: invalid value for header {name}: {:?}",
                String::from_utf8_lossy(&value)
            )
        })?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A new future of the event loop, for a `receive()`/`send()` that must wait.
pub(crate) fn new_future(py: Python<'_>) -> PyResult<Py<PyAny>> {
    py_state(py)?.create_future.call0(py)
}

/// The completed awaitable a `send()` that need not wait returns.
pub(crate) fn sent(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(py_state(py)?.sent.clone_ref(py).into_any())
}

pub(crate) fn ready(py: Python<'_>, value: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    Ok(Py::new(
        py,
        Ready {
            value: Some(value.unbind()),
        },
    )?
    .into_any())
}
