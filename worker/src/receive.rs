//! The request side of an HTTP exchange: the body the app reads with `receive()`, and the
//! `http.disconnect` it gets when the client leaves, the upload stalls (`[limits]
//! body_timeout`) or a drain ends an event stream (`text/event-stream`).
//!
//! 1. `receive()` answers at once (a completed awaitable) when a message is there: a chunk
//!    kept in the stash, the empty body, or the disconnect.
//! 2. Otherwise it registers one loop future as a waiter of the exchange and, if no read is
//!    under way, spawns one body read. Nothing is spawned to wait for the disconnect: the
//!    code that marks the exchange disconnected resolves the waiters itself.
//! 3. A finished read puts its message in the stash. If a waiter is registered, the read
//!    (or the disconnect) queues one delivery to the Python thread, which hands the stash
//!    to the live waiters in order and starts the next read if one is still waiting.
//! 4. A waiter the app cancels (`asyncio.wait_for`, anyio cancel scopes, Starlette's
//!    `is_disconnected()`) is unregistered at once by its [`Receiving`] wrapper, and a
//!    message already set on it goes back to the front of the stash (issue 16: each
//!    cancelled `receive()` used to keep a tokio task and a loop future until the client
//!    left, and a chunk read for it was lost).

use crate::bridge::{lock, new_future, ready, Event, Handle, PyCall, Shared};
use crate::metrics::{ErrorKind, Limit};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The request half of an exchange, shared by the app's handle, the transport and the
/// body read.
#[derive(Debug)]
pub struct Exchange {
    state: Mutex<State>,
    /// The client is gone, the response is fully handed to the transport, or a drain ended
    /// this event stream.
    disconnected: AtomicBool,
    /// Body bytes read so far (for the metrics).
    read: AtomicU64,
    /// The body read failed: the client aborted the upload, sent too large a body, or
    /// stalled past `body_timeout`.
    aborted: AtomicBool,
    /// This exchange's client error is counted (once, whoever notices first).
    client_error: AtomicBool,
    /// A drain ended this event stream: its end is not the client's fault.
    drained: AtomicBool,
    /// Set when the app starts: where deliveries are queued.
    shared: OnceLock<Arc<Shared>>,
}

#[derive(Debug)]
struct State {
    body: Body,
    /// Messages read but not yet handed to the app, oldest first.
    stash: VecDeque<Message>,
    /// The loop futures of the app's pending `receive()` calls, oldest first.
    waiters: VecDeque<Py<PyAny>>,
    /// A delivery to the Python thread is queued.
    queued: bool,
}

#[derive(Debug)]
enum Body {
    /// Not being read: not started, or between two reads.
    Idle(BodyReader),
    /// A read task owns the reader.
    Reading,
    /// Every `http.request` message is out (or the body ended in error).
    Done,
}

#[derive(Debug)]
struct BodyReader {
    incoming: Incoming,
    read: u64,
    limit: u64,
}

/// A message for the app.
#[derive(Debug)]
enum Message {
    /// `http.request`.
    Body(Bytes, bool),
    /// `http.disconnect`.
    Disconnect,
}

/// The outcome of one body read.
#[derive(Debug)]
enum Read {
    Data(Bytes, bool),
    TooLarge,
    /// The body's framing was malformed (a bad chunk).
    Malformed,
    TimedOut,
    Gone,
}

impl Exchange {
    /// A new exchange reading `incoming`, with a body limit (0: none).
    pub fn new(incoming: Incoming, limit: u64) -> Self {
        Exchange {
            state: Mutex::new(State {
                body: Body::Idle(BodyReader {
                    incoming,
                    read: 0,
                    limit,
                }),
                stash: VecDeque::new(),
                waiters: VecDeque::new(),
                queued: false,
            }),
            disconnected: AtomicBool::new(false),
            read: AtomicU64::new(0),
            aborted: AtomicBool::new(false),
            client_error: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            shared: OnceLock::new(),
        }
    }

    /// Attaches the worker's state when the app starts (before any `receive()`).
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(shared.clone());
    }

    /// Counts this exchange's client error in the metrics, once (a stream a drain ended
    /// is not one).
    pub(crate) fn client_error(&self, shared: &Shared) {
        if self.drained.load(Ordering::Relaxed) {
            return;
        }
        if !self.client_error.swap(true, Ordering::Relaxed) {
            shared.error(ErrorKind::Client);
        }
    }

    /// The client is at fault for how this exchange ends: it aborted its upload or sent
    /// too large a body, or it went away before the response was complete.
    pub(crate) fn client_at_fault(&self, response_done: bool) -> bool {
        self.aborted.load(Ordering::Relaxed) || (self.is_disconnected() && !response_done)
    }

    /// Request body bytes read so far.
    pub fn body_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Whether the app sees this exchange as disconnected.
    pub(crate) fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    /// The client is gone, or the response is fully handed to the transport: pending
    /// `receive()` calls get `http.disconnect` (once the body is out).
    pub fn mark_disconnected(self: &Arc<Self>) {
        if self.disconnected.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake_waiters(None);
    }

    /// Notes the response's head: an event stream is registered to end on a drain.
    pub(crate) fn note_response(self: &Arc<Self>, shared: &Shared, headers: &HeaderMap) {
        if is_event_stream(headers) {
            shared.event_streams.add(self);
        }
    }

    /// A drain ends this event stream: the app's `receive()` gets `http.disconnect` and
    /// its `send()` raises `OSError`, as if the client had left.
    fn end_stream(self: &Arc<Self>) {
        self.drained.store(true, Ordering::Relaxed);
        self.mark_disconnected();
    }

    /// A drain ended this event stream.
    pub(crate) fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    fn has_waiters(&self) -> bool {
        !lock(&self.state).waiters.is_empty()
    }

    /// Queues a delivery to the Python thread if a waiter is registered and none is queued.
    fn wake_waiters(self: &Arc<Self>, handle: Option<Py<Handle>>) {
        {
            let mut state = lock(&self.state);
            if state.waiters.is_empty() || state.queued {
                return;
            }
            state.queued = true;
        }
        let Some(shared) = self.shared.get() else {
            return;
        };
        let exchange = self.clone();
        shared.bridge.push(Event::Call(PyCall::new(move |py| {
            deliver(py, &exchange, handle.as_ref())
        })));
    }
}

/// Whether a response head announces an event stream (`text/event-stream`, any parameters).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b';')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/event-stream"))
    })
}

impl State {
    /// The next message for the app, if one is there without waiting.
    fn next_message(&mut self, exchange: &Exchange) -> Option<Message> {
        if let Some(message) = self.stash.pop_front() {
            return Some(message);
        }
        match &self.body {
            Body::Idle(reader) if hyper::body::Body::is_end_stream(&reader.incoming) => {
                self.body = Body::Done;
                Some(Message::Body(Bytes::new(), false))
            }
            Body::Idle(_) | Body::Reading => None,
            Body::Done => (exchange.aborted.load(Ordering::Relaxed) || exchange.is_disconnected())
                .then_some(Message::Disconnect),
        }
    }

    /// Forgets the waiters the app cancelled.
    fn prune(&mut self, py: Python<'_>) {
        self.waiters.retain(|w| !is_done(w.bind(py)));
    }
}

fn is_done(future: &Bound<'_, PyAny>) -> bool {
    future
        .call_method0(intern!(future.py(), "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true)
}

impl Message {
    fn into_py(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self {
            Message::Body(data, more) => request_message(py, &data, more),
            Message::Disconnect => disconnect_message(py),
        }
    }
}

fn request_message<'py>(py: Python<'py>, data: &[u8], more: bool) -> PyResult<Bound<'py, PyAny>> {
    let m = PyDict::new(py);
    m.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
    m.set_item(intern!(py, "body"), PyBytes::new(py, data))?;
    m.set_item(intern!(py, "more_body"), more)?;
    Ok(m.into_any())
}

fn disconnect_message(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let m = PyDict::new(py);
    m.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
    Ok(m.into_any())
}

/// ASGI `receive()` for `handle`.
pub(crate) fn receive(handle: &Bound<'_, Handle>) -> PyResult<Py<PyAny>> {
    let py = handle.py();
    let exchange = &handle.get().exchange;
    let mut state = lock(&exchange.state);
    state.prune(py);
    // Behind earlier waiters, a new call waits its turn.
    if state.waiters.is_empty() {
        if let Some(message) = state.next_message(exchange) {
            drop(state);
            return ready(py, message.into_py(py)?);
        }
    }
    let future = new_future(py)?;
    state.waiters.push_back(future.clone_ref(py));
    start_read(&mut state, handle.clone().unbind());
    drop(state);
    let iter = future
        .bind(py)
        .call_method0(intern!(py, "__await__"))?
        .unbind();
    Ok(Py::new(
        py,
        Receiving {
            iter,
            future,
            handle: handle.clone().unbind(),
            settled: AtomicBool::new(false),
        },
    )?
    .into_any())
}

/// Starts one body read if the body is idle. Reading is demand-driven: hyper sends
/// `100 Continue` only when the app first waits for the body.
fn start_read(state: &mut State, handle: Py<Handle>) {
    if !matches!(&state.body, Body::Idle(r) if !hyper::body::Body::is_end_stream(&r.incoming)) {
        return;
    }
    let Body::Idle(reader) = std::mem::replace(&mut state.body, Body::Reading) else {
        return;
    };
    let this = handle.get();
    let (exchange, shared) = (this.exchange.clone(), this.shared.clone());
    shared
        .runtime
        .clone()
        .spawn(read(exchange, reader, handle, shared));
}

/// One body read: stashes its message, answers 413/408 when the body is refused, and wakes
/// the waiters.
async fn read(
    exchange: Arc<Exchange>,
    mut reader: BodyReader,
    handle: Py<Handle>,
    shared: Arc<Shared>,
) {
    let outcome = reader.next(&exchange, shared.body_timeout).await;
    {
        let mut state = lock(&exchange.state);
        match &outcome {
            Read::Data(data, more) => {
                state.stash.push_back(Message::Body(data.clone(), *more));
                state.body = if *more {
                    Body::Idle(reader)
                } else {
                    Body::Done
                };
            }
            Read::TooLarge | Read::Malformed | Read::TimedOut | Read::Gone => {
                exchange.aborted.store(true, Ordering::Relaxed);
                // Dropping the body tells hyper it is not wanted (HTTP/1.1 closes after
                // the response, HTTP/2 resets the stream).
                state.body = Body::Done;
            }
        }
    }
    let this = handle.get();
    match outcome {
        Read::TooLarge => {
            exchange.client_error(&shared);
            this.reject(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large\n");
        }
        Read::Malformed => {
            exchange.client_error(&shared);
            tracing::debug!(method = %this.method, path = %this.path, "malformed request body");
            this.reject(StatusCode::BAD_REQUEST, "Malformed request body\n");
        }
        Read::TimedOut => {
            shared.limit(Limit::BodyTimeout);
            exchange.client_error(&shared);
            if this.budgets.conn.first_hit(Limit::BodyTimeout) {
                tracing::info!(
                    method = %this.method,
                    path = %this.path,
                    client = %this.client,
                    "body_timeout: no request body bytes for {:.1}s while the app waited; \
                     ending the request (408 if the response has not started; logged once \
                     per connection)",
                    shared.body_timeout.as_secs_f64()
                );
            }
            this.reject(StatusCode::REQUEST_TIMEOUT, "Request body timeout\n");
        }
        Read::Data(..) | Read::Gone => {}
    }
    exchange.wake_waiters(Some(handle));
}

impl BodyReader {
    /// Reads the next data frame. `timeout` (zero: none) bounds the silence while the app
    /// waits; a silence while no `receive()` waits is not the client's fault.
    async fn next(&mut self, exchange: &Exchange, timeout: Duration) -> Read {
        loop {
            let frame = if timeout.is_zero() {
                self.incoming.frame().await
            } else {
                // `Frame` only polls the body: dropping it on timeout loses nothing.
                match tokio::time::timeout(timeout, self.incoming.frame()).await {
                    Ok(frame) => frame,
                    Err(_) if exchange.has_waiters() => return Read::TimedOut,
                    Err(_) => continue,
                }
            };
            match frame {
                None => return Read::Data(Bytes::new(), false),
                Some(Err(err)) if crate::target::is_malformed_body(&err) => return Read::Malformed,
                Some(Err(_)) => return Read::Gone,
                Some(Ok(frame)) => {
                    // Request trailers have no ASGI message; skip them.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.read += data.len() as u64;
                    exchange.read.store(self.read, Ordering::Relaxed);
                    if self.limit != 0 && self.read > self.limit {
                        return Read::TooLarge;
                    }
                    let more = !hyper::body::Body::is_end_stream(&self.incoming);
                    return Read::Data(data, more);
                }
            }
        }
    }
}

/// On the Python thread: hands the stash (or the disconnect) to the live waiters, oldest
/// first, and starts the next read if one still waits.
fn deliver(py: Python<'_>, exchange: &Arc<Exchange>, handle: Option<&Py<Handle>>) -> PyResult<()> {
    let mut state = lock(&exchange.state);
    state.queued = false;
    while let Some(waiter) = state.waiters.front() {
        let waiter = waiter.bind(py).clone();
        if is_done(&waiter) {
            state.waiters.pop_front();
            continue;
        }
        let Some(message) = state.next_message(exchange) else {
            break;
        };
        state.waiters.pop_front();
        waiter.call_method1(intern!(py, "set_result"), (message.into_py(py)?,))?;
    }
    if !state.waiters.is_empty() {
        if let Some(handle) = handle {
            start_read(&mut state, handle.clone_ref(py));
        }
    }
    Ok(())
}

/// A pending `receive()`: awaiting it awaits the loop future. It is also a
/// `collections.abc.Coroutine` (see [`crate::bridge::Ready`]). When the app cancels the
/// await, the future is unregistered at once and a message already set on it is kept for
/// the next `receive()`.
#[pyclass(frozen)]
pub struct Receiving {
    iter: Py<PyAny>,
    future: Py<PyAny>,
    handle: Py<Handle>,
    /// The result was taken, or the waiter was released.
    settled: AtomicBool,
}

impl std::fmt::Debug for Receiving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receiving")
    }
}

impl Receiving {
    /// Notes that the awaiting code got the result (the iterator stopped).
    fn settle_on_stop<T>(&self, py: Python<'_>, result: PyResult<T>) -> PyResult<T> {
        if let Err(err) = &result {
            if err.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) {
                self.settled.store(true, Ordering::Relaxed);
            }
        }
        result
    }

    /// The awaiting code gives up (cancelled, closed, dropped): see [`release`].
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        if self.settled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        release(py, &self.future, &self.handle)
    }
}

/// Unregisters a waiter the app gave up, and puts a body chunk already set on it back at
/// the front of the stash.
///
/// This can run inside code that holds the exchange's lock on this thread: a garbage
/// collection during a Python call there may close the coroutine awaiting the waiter. So
/// it only tries the lock, and otherwise runs again from the loop's queue.
fn release(py: Python<'_>, future: &Py<PyAny>, handle: &Py<Handle>) -> PyResult<()> {
    let this = handle.get();
    let exchange = &this.exchange;
    let mut state = match exchange.state.try_lock() {
        Ok(state) => state,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            let (future, handle) = (future.clone_ref(py), handle.clone_ref(py));
            this.shared.bridge.push(Event::Call(PyCall::new(move |py| {
                release(py, &future, &handle)
            })));
            return Ok(());
        }
    };
    state.waiters.retain(|w| !w.is(future));
    let future = future.bind(py);
    let cancelled = future.call_method0(intern!(py, "cancelled"))?.is_truthy()?;
    if cancelled || !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    let message = future.call_method0(intern!(py, "result"))?;
    // `http.disconnect` is given to every later call anyway.
    if message.get_item(intern!(py, "type"))?.extract::<String>()? != "http.request" {
        return Ok(());
    }
    let body = message.get_item(intern!(py, "body"))?;
    let data = Bytes::copy_from_slice(body.cast::<PyBytes>()?.as_bytes());
    let more = message.get_item(intern!(py, "more_body"))?.is_truthy()?;
    state.stash.push_front(Message::Body(data, more));
    drop(state);
    // Another caller may be waiting for it.
    deliver(py, exchange, Some(handle))
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // A call never awaited (or dropped half-way): unregister its future so the next
        // message is not set on a future nobody reads.
        if !self.settled.load(Ordering::Relaxed) {
            // Dropped by Python's deallocator: the thread is attached already.
            Python::attach(|py| {
                if let Err(err) = self.release(py) {
                    tracing::debug!("releasing a dropped receive(): {err}");
                }
            });
        }
    }
}

#[pymethods]
impl Receiving {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let result = self.iter.bind(py).call_method0(intern!(py, "__next__"));
        self.settle_on_stop(py, result.map(Bound::unbind))
    }

    fn send(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let result = self
            .iter
            .bind(py)
            .call_method1(intern!(py, "send"), (value,));
        self.settle_on_stop(py, result.map(Bound::unbind))
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
        self.release(py)?;
        let exception = crate::bridge::raise(kind, value);
        Ok(self
            .iter
            .bind(py)
            .call_method1(intern!(py, "throw"), (exception.value(py),))?
            .unbind())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.release(py)?;
        self.iter.bind(py).call_method0(intern!(py, "close"))?;
        Ok(())
    }
}

/// The worker's open event streams, ended `[websocket] drain_grace` after a drain starts.
#[derive(Debug, Default)]
pub struct EventStreams {
    streams: Mutex<Vec<Weak<Exchange>>>,
    /// The drain's grace is over: a stream that opens now ends at once.
    ended: AtomicBool,
}

impl EventStreams {
    fn add(&self, exchange: &Arc<Exchange>) {
        if self.ended.load(Ordering::Acquire) {
            exchange.end_stream();
            return;
        }
        let mut streams = lock(&self.streams);
        if streams.len() == streams.capacity() {
            // Amortised: forget the streams that finished before growing.
            streams.retain(|s| s.strong_count() > 0);
        }
        streams.push(Arc::downgrade(exchange));
    }

    /// Ends every open stream; returns how many.
    fn end_all(&self) -> usize {
        self.ended.store(true, Ordering::Release);
        let streams = std::mem::take(&mut *lock(&self.streams));
        let mut ended = 0;
        for stream in streams.iter().filter_map(Weak::upgrade) {
            if !stream.is_disconnected() {
                stream.end_stream();
                ended += 1;
            }
        }
        ended
    }
}

/// The worker's `asyncio.Event` set when it drains, created on first use (on the loop's
/// thread; one worker per process).
static DRAINING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn draining_event(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    DRAINING
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("Event")?.call0()?.unbind())
        })
        .map(|event| event.bind(py))
}

/// The scope's `genro.draining` extension: `{"event": asyncio.Event}`, set when the worker
/// starts draining, so a long poll can end itself (extension values are dicts, ASGI).
pub(crate) fn draining_extension(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let extension = PyDict::new(py);
    extension.set_item(intern!(py, "event"), draining_event(py)?)?;
    Ok(extension)
}

/// The worker starts draining: sets `genro.draining` now, and ends the event streams still
/// open after `grace` (`[websocket] drain_grace`, bounded by `graceful_timeout`). Other
/// responses keep the whole `graceful_timeout`.
pub fn on_drain(shared: &Arc<Shared>, grace: Duration) {
    shared.bridge.push(Event::Call(PyCall::new(|py| {
        draining_event(py)?.call_method0(intern!(py, "set"))?;
        Ok(())
    })));
    let shared = shared.clone();
    shared.runtime.clone().spawn(async move {
        tokio::time::sleep(grace).await;
        let ended = shared.event_streams.end_all();
        if ended > 0 {
            tracing::info!(
                "drain_grace ({:.1}s) over: ending {ended} event stream(s) \
                 (http.disconnect, OSError on send)",
                grace.as_secs_f64()
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_recognised_by_their_media_type() {
        for (value, expected) in [
            ("text/event-stream", true),
            ("text/event-stream; charset=utf-8", true),
            ("Text/Event-Stream;charset=utf-8", true),
            (" text/event-stream ", true),
            ("text/plain", false),
            ("application/octet-stream", false),
            ("text/event-streams", false),
            ("application/json; profile=text/event-stream", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, http::HeaderValue::from_str(value).unwrap());
            assert_eq!(is_event_stream(&headers), expected, "{value:?}");
        }
        assert!(!is_event_stream(&HeaderMap::new()));
    }
}
