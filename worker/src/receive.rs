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
//!    `is_disconnected()`) is unregistered at once by its [`GiveUp`] hook, and a
//!    message already set on it goes back to the front of the stash (issue 16: each
//!    cancelled `receive()` used to keep a tokio task and a loop future until the client
//!    left, and a chunk read for it was lost).

use crate::awaitable::{is_done, new_future, prune, ready, waiting, GiveBack, GiveUp, GiveUpFn};
use crate::metrics::{ErrorKind, Limit};
use crate::state::{EventStream, Shared};
use bytes::{Bytes, BytesMut};
use genro_shared::sync::lock;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use hyper::body::{Body as _, Incoming};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::{PyBytes, PyDict};
use pyo3::PyClass;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The app's handle of an exchange, as its request side needs it: the body read refuses a
/// body through it and names the request in its log lines (implemented by the HTTP handle).
pub(crate) trait Responder: PyClass<Frozen = True> + Sync {
    /// The exchange's request side.
    fn exchange(&self) -> &Arc<Exchange>;
    /// The worker.
    fn shared(&self) -> &Arc<Shared>;
    /// Refuses the request body: a plain error status if the response has not started,
    /// else an aborted response (413, 408, 400).
    fn reject(&self, status: StatusCode, body: &str);
    /// The request's facts (its log lines' span).
    fn envelope(&self) -> &crate::registry::Envelope;
    /// Whether the connection runs into bound `limit` for the first time (logged once).
    fn first_hit(&self, limit: Limit) -> bool;
}

/// The request half of an exchange, shared by the app's handle, the transport and the
/// body read.
#[derive(Debug)]
pub(crate) struct Exchange {
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
    /// An outcome read behind the data of the last message, for the next read.
    held: Option<Read>,
}

/// The most body bytes one `http.request` message gathers from what is already buffered
/// (the frame that crosses it is kept whole): about uvicorn's largest message, so an app
/// that pays per message (Starlette's `request.stream()`) does not pay per 16 KiB frame.
pub(crate) const BODY_PIECE: usize = 256 * 1024;

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
    pub(crate) fn new(incoming: Incoming, limit: u64) -> Self {
        Exchange {
            state: Mutex::new(State {
                body: Body::Idle(BodyReader {
                    incoming,
                    read: 0,
                    limit,
                    held: None,
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
    pub(crate) fn body_bytes(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Whether the app sees this exchange as disconnected.
    pub(crate) fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    /// The client is gone, or the response is fully handed to the transport: pending
    /// `receive()` calls get `http.disconnect` (once the body is out).
    pub(crate) fn mark_disconnected(self: &Arc<Self>) {
        if self.disconnected.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(shared) = self.claim_delivery() {
            let exchange = self.clone();
            shared.handoff.run(move |py| hand_out(py, &exchange));
        }
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

    /// Claims the one delivery to the Python thread if a waiter is registered and none is
    /// queued; the caller queues it on the returned worker's hand-off.
    fn claim_delivery(&self) -> Option<&Arc<Shared>> {
        {
            let mut state = lock(&self.state);
            if state.waiters.is_empty() || state.queued {
                return None;
            }
            state.queued = true;
        }
        self.shared.get()
    }
}

impl EventStream for Exchange {
    fn is_open(&self) -> bool {
        !self.is_disconnected()
    }

    fn end(self: Arc<Self>) {
        self.end_stream();
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
            Body::Idle(reader) if reader.at_end() => {
                self.body = Body::Done;
                Some(Message::Body(Bytes::new(), false))
            }
            Body::Idle(_) | Body::Reading => None,
            Body::Done => (exchange.aborted.load(Ordering::Relaxed) || exchange.is_disconnected())
                .then_some(Message::Disconnect),
        }
    }
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
pub(crate) fn receive<H: Responder>(handle: &Bound<'_, H>) -> PyResult<Py<PyAny>> {
    let py = handle.py();
    let exchange = handle.get().exchange();
    prune(py, &exchange.state, |state| &mut state.waiters);
    let mut state = lock(&exchange.state);
    // Behind earlier waiters, a new call waits its turn.
    if state.waiters.is_empty() {
        if let Some(message) = state.next_message(exchange) {
            drop(state);
            return answer(handle, message);
        }
    }
    // Often the body is already in hyper's buffer: one poll from here answers at once,
    // with no read task and no trip through the hand-off.
    if state.waiters.is_empty() {
        if let Some(outcome) = read_now(&mut state, exchange) {
            let message = state.next_message(exchange);
            drop(state);
            refuse(outcome, exchange, handle.get());
            return answer(handle, message.unwrap_or(Message::Disconnect));
        }
    }
    // The future is made outside the lock; a message that came meanwhile for no waiter
    // (a read the app gave up) is answered at once.
    drop(state);
    let future = new_future(py)?;
    let mut state = lock(&exchange.state);
    if state.waiters.is_empty() {
        if let Some(message) = state.next_message(exchange) {
            drop(state);
            return answer(handle, message);
        }
    }
    state.waiters.push_back(future.clone_ref(py));
    start_read(&mut state, handle.clone().unbind());
    drop(state);
    let give_up = GiveUp::new(
        future.clone_ref(py),
        handle.clone().into_any().unbind(),
        release::<H>,
    );
    waiting(py, &future, Some(give_up))
}

/// Polls an idle body once without waiting and stashes what is ready (the caller refuses
/// a refused body). Nothing ready: the body stays idle.
fn read_now(state: &mut State, exchange: &Exchange) -> Option<Read> {
    let Body::Idle(reader) = &mut state.body else {
        return None;
    };
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(outcome) = reader.poll_piece(exchange, &mut cx) else {
        return None;
    };
    Some(state.settle(exchange, outcome))
}

/// A `receive()` answered at once. A body chunk the app never takes (the awaitable
/// dropped unawaited) goes back to the stash; `http.disconnect` is given to every later
/// call anyway.
fn answer<H: Responder>(handle: &Bound<'_, H>, message: Message) -> PyResult<Py<PyAny>> {
    let py = handle.py();
    let give_back = matches!(message, Message::Body(..))
        .then(|| GiveBack::new(handle.clone().into_any().unbind(), restore::<H>));
    ready(py, message.into_py(py)?, give_back)
}

/// Starts one body read if the body is idle. Reading is demand-driven: hyper sends
/// `100 Continue` only when the app first waits for the body.
fn start_read<H: Responder>(state: &mut State, handle: Py<H>) {
    if !matches!(&state.body, Body::Idle(r) if !r.at_end()) {
        return;
    }
    let Body::Idle(reader) = std::mem::replace(&mut state.body, Body::Reading) else {
        return;
    };
    let this = handle.get();
    let (exchange, shared) = (this.exchange().clone(), this.shared().clone());
    shared
        .runtime
        .clone()
        .spawn(read(exchange, reader, handle, shared));
}

/// One body read: settles its outcome and wakes the waiters.
async fn read<H: Responder>(
    exchange: Arc<Exchange>,
    mut reader: BodyReader,
    handle: Py<H>,
    shared: Arc<Shared>,
) {
    let outcome = reader.next(&exchange, shared.body_timeout).await;
    let outcome = {
        let mut state = lock(&exchange.state);
        state.body = Body::Idle(reader);
        state.settle(&exchange, outcome)
    };
    refuse(outcome, &exchange, handle.get());
    if let Some(shared) = exchange.claim_delivery() {
        let exchange = exchange.clone();
        shared
            .handoff
            .run(move |py| deliver(py, &exchange, &handle));
    }
}

impl State {
    /// Settles one read's outcome: stashes its data and ends the body after the last
    /// chunk, or ends a refused body and marks the exchange aborted. Returns the outcome
    /// without its data, for [`refuse`].
    fn settle(&mut self, exchange: &Exchange, outcome: Read) -> Read {
        if let Read::Data(data, more) = outcome {
            self.stash.push_back(Message::Body(data, more));
            if !more {
                self.body = Body::Done;
            }
            return Read::Data(Bytes::new(), more);
        }
        exchange.aborted.store(true, Ordering::Relaxed);
        // Dropping the body tells hyper it is not wanted (HTTP/1.1 closes after the
        // response, HTTP/2 resets the stream).
        self.body = Body::Done;
        outcome
    }
}

/// Answers a refused body (413, 400, 408) and counts it; called without the exchange's
/// lock.
fn refuse<H: Responder>(outcome: Read, exchange: &Exchange, this: &H) {
    let shared = this.shared();
    match outcome {
        Read::TooLarge => {
            exchange.client_error(shared);
            this.reject(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large\n");
        }
        Read::Malformed => {
            exchange.client_error(shared);
            tracing::debug!(parent: this.envelope().span(), "malformed request body");
            this.reject(StatusCode::BAD_REQUEST, "Malformed request body\n");
        }
        Read::TimedOut => {
            shared.limit(Limit::BodyTimeout);
            exchange.client_error(shared);
            if this.first_hit(Limit::BodyTimeout) {
                tracing::info!(
                    parent: this.envelope().span(),
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
}

impl BodyReader {
    /// Reads the next data frame. `timeout` (zero: none) bounds the silence while the app
    /// waits; a silence while no `receive()` waits is not the client's fault.
    async fn next(&mut self, exchange: &Exchange, timeout: Duration) -> Read {
        loop {
            let frame = std::future::poll_fn(|cx| self.poll_piece(exchange, cx));
            if timeout.is_zero() {
                return frame.await;
            }
            // `poll_next` keeps nothing between polls: dropping it on timeout loses nothing.
            match tokio::time::timeout(timeout, frame).await {
                Ok(read) => return read,
                Err(_) if exchange.has_waiters() => return Read::TimedOut,
                Err(_) => continue,
            }
        }
    }

    /// Whether nothing is left to read: no held outcome and the body at its end.
    fn at_end(&self) -> bool {
        self.held.is_none() && hyper::body::Body::is_end_stream(&self.incoming)
    }

    /// Polls for the next message's data: one frame, then whatever frames are already
    /// buffered behind it, up to [`BODY_PIECE`]. An error or refusal met after some data
    /// is held for the next poll, so the data goes out first.
    fn poll_piece(&mut self, exchange: &Exchange, cx: &mut Context<'_>) -> Poll<Read> {
        if let Some(read) = self.held.take() {
            return Poll::Ready(read);
        }
        let first = match self.poll_next(exchange, cx) {
            Poll::Ready(Read::Data(data, true)) if data.len() < BODY_PIECE => data,
            other => return other,
        };
        let mut piece: Option<BytesMut> = None;
        let mut more = true;
        // Only what is ready now: a `Pending` here leaves a no-op waker behind, and the
        // next read polls again with its own.
        let mut now = Context::from_waker(Waker::noop());
        while more && piece.as_ref().map_or(first.len(), BytesMut::len) < BODY_PIECE {
            match self.poll_next(exchange, &mut now) {
                Poll::Pending => break,
                Poll::Ready(Read::Data(data, next)) => {
                    more = next;
                    piece
                        .get_or_insert_with(|| BytesMut::from(&first[..]))
                        .extend_from_slice(&data);
                }
                Poll::Ready(other) => {
                    self.held = Some(other);
                    break;
                }
            }
        }
        let data = piece.map_or(first, BytesMut::freeze);
        Poll::Ready(Read::Data(data, more))
    }

    /// Polls for the next data frame (request trailers have no ASGI message: skipped).
    fn poll_next(&mut self, exchange: &Exchange, cx: &mut Context<'_>) -> Poll<Read> {
        loop {
            let frame = match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            let read = match frame {
                None => Read::Data(Bytes::new(), false),
                Some(Err(err)) if crate::target::is_malformed_body(&err) => Read::Malformed,
                Some(Err(_)) => Read::Gone,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.read += data.len() as u64;
                    exchange.read.store(self.read, Ordering::Relaxed);
                    if self.limit != 0 && self.read > self.limit {
                        Read::TooLarge
                    } else {
                        let more = !hyper::body::Body::is_end_stream(&self.incoming);
                        Read::Data(data, more)
                    }
                }
            };
            return Poll::Ready(read);
        }
    }
}

/// On the Python thread: hands the stash (or the disconnect) to the live waiters, oldest
/// first, and starts the next read if one still waits.
fn deliver<H: Responder>(py: Python<'_>, exchange: &Arc<Exchange>, handle: &Py<H>) -> PyResult<()> {
    hand_out(py, exchange)?;
    let handle = handle.clone_ref(py);
    let mut state = lock(&exchange.state);
    if !state.waiters.is_empty() {
        start_read(&mut state, handle);
    }
    Ok(())
}

/// Hands the stash (or the disconnect) to the live waiters, oldest first. The lock only
/// pairs a waiter with a message; the Python calls (`done()`, the message, `set_result`)
/// run outside it. A waiter that turns out cancelled puts its body chunk back.
fn hand_out(py: Python<'_>, exchange: &Exchange) -> PyResult<()> {
    lock(&exchange.state).queued = false;
    loop {
        let (waiter, message) = {
            let mut state = lock(&exchange.state);
            let Some(waiter) = state.waiters.pop_front() else {
                return Ok(());
            };
            let Some(message) = state.next_message(exchange) else {
                state.waiters.push_front(waiter);
                return Ok(());
            };
            (waiter, message)
        };
        let waiter = waiter.bind(py);
        if is_done(waiter) {
            // `http.disconnect` needs no putting back: every later call gets it.
            if let Message::Body(..) = message {
                lock(&exchange.state).stash.push_front(message);
            }
            continue;
        }
        waiter.call_method1(intern!(py, "set_result"), (message.into_py(py)?,))?;
    }
}

/// Unregisters a waiter the app gave up, and gives back a body chunk already set on it.
fn release<H: Responder>(py: Python<'_>, future: &Py<PyAny>, owner: &Py<PyAny>) -> PyResult<()> {
    let handle = owner.bind(py).cast::<H>()?;
    let Some(mut state) = try_state(handle.get()) else {
        retry(handle, release::<H>, future, owner);
        return Ok(());
    };
    state.waiters.retain(|w| !w.is(future));
    drop(state);
    let future = future.bind(py);
    let cancelled = future.call_method0(intern!(py, "cancelled"))?.is_truthy()?;
    if cancelled || !future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    let message = future.call_method0(intern!(py, "result"))?.unbind();
    restore::<H>(py, &message, owner)
}

/// Puts a body chunk the app did not take back at the front of the stash, for the next
/// `receive()` (another caller may be waiting for it already). Other messages are left:
/// `http.disconnect` is given to every later call anyway.
fn restore<H: Responder>(py: Python<'_>, message: &Py<PyAny>, owner: &Py<PyAny>) -> PyResult<()> {
    let handle = owner.bind(py).cast::<H>()?;
    let message_ref = message.bind(py);
    if message_ref
        .get_item(intern!(py, "type"))?
        .extract::<String>()?
        != "http.request"
    {
        return Ok(());
    }
    let body = message_ref.get_item(intern!(py, "body"))?;
    let data = Bytes::copy_from_slice(body.cast::<PyBytes>()?.as_bytes());
    let more = message_ref
        .get_item(intern!(py, "more_body"))?
        .is_truthy()?;
    let Some(mut state) = try_state(handle.get()) else {
        retry(handle, restore::<H>, message, owner);
        return Ok(());
    };
    state.stash.push_front(Message::Body(data, more));
    drop(state);
    deliver(py, handle.get().exchange(), &handle.clone().unbind())
}

/// Runs `hook(py, value, owner)` again from the loop's queue (see [`try_state`]).
fn retry<H: Responder>(
    handle: &Bound<'_, H>,
    hook: GiveUpFn,
    value: &Py<PyAny>,
    owner: &Py<PyAny>,
) {
    let py = handle.py();
    let (value, owner) = (value.clone_ref(py), owner.clone_ref(py));
    handle
        .get()
        .shared()
        .handoff
        .run(move |py| hook(py, &value, &owner));
}

/// The exchange's state, if its lock is free. The give-up and give-back hooks can run
/// inside code that holds it on this thread (a garbage collection during a Python call
/// there may drop an awaitable), so they only try the lock and otherwise run again from
/// the loop's queue.
fn try_state<H: Responder>(this: &H) -> Option<std::sync::MutexGuard<'_, State>> {
    match this.exchange().state.try_lock() {
        Ok(state) => Some(state),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
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
