//! The client messages of one WebSocket waiting for the app's `receive()`: bounded by count
//! (`[websocket] max_queue`) and by bytes after decompression, per connection
//! (`max_queue_bytes`) and per worker (`worker_queue_bytes`), and the `receive()` futures
//! they resolve (issue 16).
//!
//! 1. The pump checks [`Queue::blocked`] before it reads a frame; while a bound is reached it
//!    stops reading from the client (TCP backpressure) and waits in [`Queue::room`].
//! 2. A complete message goes in with [`Queue::push`], which wakes one waiting `receive()`
//!    through the hand-off; [`serve`] hands out messages on the Python thread.
//! 3. `receive()` takes a queued message at once, or leaves one loop future in the queue. A
//!    future the app cancelled (`asyncio.wait_for`, anyio cancel scopes) holds no task and
//!    no message: it leaves the queue when the app gives it up, and the message stays
//!    queued for the next `receive()`. A message the app never takes (its awaitable dropped
//!    unawaited, or its task cancelled after the message was set) goes back to the front.
//! 5. No Python call runs while the queue's lock is held: the lock pairs a waiter with a
//!    message, and the message is made and set after it is released.
//! 4. When the pump ends (or the handshake never completes) the [`Producer`] closes the
//!    queue: waiters get `websocket.disconnect` once the queued messages are taken.

use crate::awaitable::{is_done, new_future, prune, ready, waiting, GiveBack, GiveUp};
use crate::handoff::Handoff;
use genro_shared::sync::lock;
use pyo3::intern;
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A client message for the app.
#[derive(Debug)]
pub enum Inbound {
    /// `websocket.receive` with `text`.
    Text(bytes::Bytes),
    /// `websocket.receive` with `bytes`.
    Binary(bytes::Bytes),
}

impl Inbound {
    /// The bytes it holds, as the budgets count them.
    pub fn size(&self) -> usize {
        match self {
            Inbound::Text(data) | Inbound::Binary(data) => data.len(),
        }
    }
}

/// `[websocket] worker_queue_bytes`: the bytes queued over every WebSocket of the worker.
#[derive(Debug)]
pub struct WorkerBudget {
    used: AtomicUsize,
    max: usize,
    /// Woken when `used` falls below `max`.
    room: Notify,
}

impl WorkerBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        WorkerBudget {
            used: AtomicUsize::new(0),
            max: max.max(1),
            room: Notify::new(),
        }
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn is_full(&self) -> bool {
        self.used() >= self.max
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        if before >= self.max && before - bytes < self.max {
            self.room.notify_waiters();
        }
    }
}

/// Which bound stopped reading from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// `[websocket] max_queue` messages are waiting.
    Count,
    /// `[websocket] max_queue_bytes` are waiting.
    Bytes,
    /// `[websocket] worker_queue_bytes` are waiting in the whole worker (and this connection
    /// has at least one message waiting: one with none may always read, so a `receive()`
    /// that waits is never starved by other connections).
    Worker,
}

/// The bounds of one connection's queue.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `[websocket] max_queue`.
    pub messages: usize,
    /// `[websocket] max_queue_bytes`.
    pub bytes: usize,
}

/// One connection's queue; shared by the pump (tokio) and the handle (Python thread).
#[derive(Debug)]
pub struct Queue {
    state: Mutex<State>,
    bounds: Bounds,
    budget: Arc<WorkerBudget>,
    /// Where wake-ups of waiting `receive()` calls go.
    handoff: Arc<Handoff>,
    /// Woken when the app takes a message or goes away.
    room: Notify,
    /// How the connection ended, for `websocket.disconnect`.
    ending: Mutex<Option<(u16, String)>>,
}

#[derive(Debug, Default)]
struct State {
    messages: VecDeque<Inbound>,
    /// Bytes of `messages`.
    bytes: usize,
    /// `receive()` futures not yet resolved (a cancelled one until it is noticed).
    waiters: VecDeque<Py<PyAny>>,
    /// No more messages will come.
    closed: bool,
    /// The app's handle is gone: messages are dropped as they come.
    app_gone: bool,
}

/// Close code for a connection that ended without a close frame.
pub const ABNORMAL: u16 = 1006;

impl Queue {
    /// An empty queue for a new session.
    pub(crate) fn new(
        handoff: Arc<Handoff>,
        bounds: Bounds,
        budget: Arc<WorkerBudget>,
    ) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(State::default()),
            bounds,
            budget,
            handoff,
            room: Notify::new(),
            ending: Mutex::new(None),
        })
    }

    /// Records how the connection ended; the first record wins.
    pub fn set_ending(&self, code: u16, reason: &str) {
        lock(&self.ending).get_or_insert_with(|| (code, reason.to_owned()));
    }

    /// Whether the connection's end was recorded.
    pub fn has_ended(&self) -> bool {
        lock(&self.ending).is_some()
    }

    /// The close code and reason of `websocket.disconnect`.
    pub fn ending(&self) -> (u16, String) {
        lock(&self.ending)
            .clone()
            .unwrap_or((ABNORMAL, String::new()))
    }

    /// Which bound, if any, stops the pump from reading the next frame.
    pub fn blocked(&self) -> Option<Blocked> {
        let state = lock(&self.state);
        if state.app_gone {
            None
        } else if state.messages.len() >= self.bounds.messages {
            Some(Blocked::Count)
        } else if state.bytes >= self.bounds.bytes {
            Some(Blocked::Bytes)
        } else if !state.messages.is_empty() && self.budget.is_full() {
            Some(Blocked::Worker)
        } else {
            None
        }
    }

    /// Waits until no bound stops reading.
    pub async fn room(&self) {
        loop {
            let own = self.room.notified();
            let worker = self.budget.room.notified();
            tokio::pin!(own, worker);
            // Registered before the check, so a release in between is not missed.
            own.as_mut().enable();
            worker.as_mut().enable();
            if self.blocked().is_none() {
                return;
            }
            tokio::select! {
                _ = own => {}
                _ = worker => {}
            }
        }
    }

    /// Queues a client message and wakes a waiting `receive()`.
    pub fn push(self: &Arc<Self>, value: Inbound) {
        let waiter = {
            let mut state = lock(&self.state);
            if state.app_gone {
                return;
            }
            let len = value.size();
            state.messages.push_back(value);
            state.bytes += len;
            self.budget.add(len);
            state.waiters.pop_front()
        };
        if let Some(waiter) = waiter {
            self.wake(waiter);
        }
    }

    /// No more messages will come: waiters get `websocket.disconnect` after the queued
    /// messages.
    fn close(self: &Arc<Self>) {
        let waiter = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waiters.pop_front()
        };
        if let Some(waiter) = waiter {
            self.wake(waiter);
        }
    }

    /// The app's handle is gone: drop what is queued and let the pump read on.
    pub fn app_gone(&self) {
        let mut state = lock(&self.state);
        state.app_gone = true;
        state.messages.clear();
        let waiters = std::mem::take(&mut state.waiters);
        self.budget.release(std::mem::take(&mut state.bytes));
        drop(state);
        // Dropped outside the lock: the last reference to a future may run Python code.
        drop(waiters);
        self.room.notify_one();
    }

    /// Queues [`serve`] on the Python thread for `waiter` (and any others).
    fn wake(self: &Arc<Self>, waiter: Py<PyAny>) {
        let queue = self.clone();
        self.handoff.run(move |py| serve(py, waiter, &queue));
    }

    /// Takes the oldest message, releasing its bytes; the pump may read again.
    fn take(&self, state: &mut State) -> Option<Inbound> {
        let value = state.messages.pop_front()?;
        state.bytes -= value.size();
        self.budget.release(value.size());
        self.room.notify_one();
        Some(value)
    }

    /// What `receive()` answers without waiting, if anything: the oldest message, or the
    /// disconnect once the queue is closed and empty.
    fn now(&self, state: &mut State) -> Option<Now> {
        match self.take(state) {
            Some(value) => Some(Now::Message(value)),
            None => state.closed.then_some(Now::Closed),
        }
    }

    /// Puts a message the app did not take back at the front, counted again.
    fn unshift(&self, state: &mut State, value: Inbound) {
        if state.app_gone {
            return;
        }
        state.bytes += value.size();
        self.budget.add(value.size());
        state.messages.push_front(value);
    }

    /// [`unshift`](Self::unshift), then wakes a waiting `receive()` for it.
    fn give_back(self: &Arc<Self>, value: Inbound) {
        let waiter = {
            let mut state = lock(&self.state);
            self.unshift(&mut state, value);
            state.waiters.pop_front()
        };
        if let Some(waiter) = waiter {
            self.wake(waiter);
        }
    }

    /// The ASGI message for `now` (made outside the lock).
    fn message<'py>(&self, py: Python<'py>, now: Now) -> PyResult<Bound<'py, PyAny>> {
        match now {
            Now::Message(value) => receive_message(py, value),
            Now::Closed => {
                let (code, reason) = self.ending();
                disconnect_message(py, code, &reason)
            }
        }
    }
}

/// What a `receive()` gets without waiting.
enum Now {
    Message(Inbound),
    Closed,
}

/// The app's handle of a WebSocket session, as its `receive()` needs it.
pub(crate) trait QueueOwner:
    pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync
{
    /// The session's queue.
    fn queue(&self) -> &Arc<Queue>;
}

/// `receive()` after the handshake: a queued message or the disconnect at once, else a
/// loop future that [`Queue::push`] or [`Queue::close`] resolves.
pub(crate) fn receive<H: QueueOwner>(handle: &Bound<'_, H>) -> PyResult<Py<PyAny>> {
    let py = handle.py();
    let queue = handle.get().queue();
    let now = queue.now(&mut lock(&queue.state));
    if let Some(now) = now {
        return answer(handle, now);
    }
    prune(py, &queue.state, |state| &mut state.waiters);
    let waiter = new_future(py)?;
    let mut state = lock(&queue.state);
    // A message may have come while the future was made.
    if let Some(now) = queue.now(&mut state) {
        drop(state);
        return answer(handle, now);
    }
    state.waiters.push_back(waiter.clone_ref(py));
    drop(state);
    let give_up = GiveUp::new(
        waiter.clone_ref(py),
        handle.clone().into_any().unbind(),
        release::<H>,
    );
    waiting(py, &waiter, Some(give_up))
}

/// A `receive()` answered at once; a message the app never takes goes back to the queue.
fn answer<H: QueueOwner>(handle: &Bound<'_, H>, now: Now) -> PyResult<Py<PyAny>> {
    let py = handle.py();
    let give_back = matches!(now, Now::Message(_))
        .then(|| GiveBack::new(handle.clone().into_any().unbind(), restore::<H>));
    ready(py, handle.get().queue().message(py, now)?, give_back)
}

/// The app gave up a waiting `receive()`: it leaves the queue, and a message already set
/// on it goes back to the front.
fn release<H: QueueOwner>(py: Python<'_>, future: &Py<PyAny>, owner: &Py<PyAny>) -> PyResult<()> {
    let handle = owner.bind(py).cast::<H>()?;
    lock(&handle.get().queue().state)
        .waiters
        .retain(|w| !w.is(future));
    let future = future.bind(py);
    if future.call_method0(intern!(py, "cancelled"))?.is_truthy()?
        || !future.call_method0(intern!(py, "done"))?.is_truthy()?
    {
        return Ok(());
    }
    let message = future.call_method0(intern!(py, "result"))?.unbind();
    restore::<H>(py, &message, owner)
}

/// Puts a `websocket.receive` message the app did not take back at the front of the queue.
fn restore<H: QueueOwner>(py: Python<'_>, message: &Py<PyAny>, owner: &Py<PyAny>) -> PyResult<()> {
    use pyo3::types::{PyBytes, PyString};
    let handle = owner.bind(py).cast::<H>()?;
    let message = message.bind(py);
    if message.get_item(intern!(py, "type"))?.extract::<String>()? != "websocket.receive" {
        return Ok(());
    }
    let text = message
        .get_item(intern!(py, "text"))
        .ok()
        .filter(|t| !t.is_none());
    let value = match text {
        Some(text) => Inbound::Text(bytes::Bytes::copy_from_slice(
            text.cast::<PyString>()?.to_str()?.as_bytes(),
        )),
        None => {
            let data = message.get_item(intern!(py, "bytes"))?;
            Inbound::Binary(bytes::Bytes::copy_from_slice(
                data.cast::<PyBytes>()?.as_bytes(),
            ))
        }
    };
    handle.get().queue().give_back(value);
    Ok(())
}

impl Drop for Queue {
    fn drop(&mut self) {
        let bytes = match self.state.get_mut() {
            Ok(state) => state.bytes,
            Err(poisoned) => poisoned.into_inner().bytes,
        };
        self.budget.release(bytes);
    }
}

/// The pump's hold on the queue: dropping it (the connection ended, or never opened)
/// closes the queue.
#[derive(Debug)]
pub struct Producer(pub Arc<Queue>);

impl Drop for Producer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// On the Python thread: hands queued messages (or the disconnect, once the queue is
/// closed and empty) to the waiting `receive()` futures, `first` and any others, in order.
/// The lock only pairs a waiter with a message; a waiter that turns out cancelled puts its
/// message back, so nothing is lost.
fn serve(py: Python<'_>, first: Py<PyAny>, queue: &Arc<Queue>) -> PyResult<()> {
    lock(&queue.state).waiters.push_front(first);
    loop {
        let (waiter, now) = {
            let mut state = lock(&queue.state);
            let Some(waiter) = state.waiters.pop_front() else {
                return Ok(());
            };
            let Some(now) = queue.now(&mut state) else {
                state.waiters.push_front(waiter);
                return Ok(());
            };
            (waiter, now)
        };
        let waiter = waiter.bind(py);
        if is_done(waiter) {
            if let Now::Message(value) = now {
                queue.unshift(&mut lock(&queue.state), value);
            }
            continue;
        }
        waiter.call_method1(intern!(py, "set_result"), (queue.message(py, now)?,))?;
    }
}

/// The `websocket.receive` message for a client message.
fn receive_message(py: Python<'_>, value: Inbound) -> PyResult<Bound<'_, PyAny>> {
    use pyo3::types::{PyBytes, PyDict, PyString};
    let m = PyDict::new(py);
    m.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
    match value {
        Inbound::Text(text) => {
            // The Assembler validated the UTF-8; a failure here would be a bug there.
            let text = std::str::from_utf8(&text).map_err(|e| {
                pyo3::exceptions::PyRuntimeError::new_err(format!(
                    "invalid UTF-8 in a text message: {e}"
                ))
            })?;
            m.set_item(intern!(py, "text"), PyString::new(py, text))?;
        }
        Inbound::Binary(data) => m.set_item(intern!(py, "bytes"), PyBytes::new(py, &data))?,
    }
    Ok(m.into_any())
}

/// The `websocket.disconnect` message with how the connection ended.
pub fn disconnect_message<'py>(
    py: Python<'py>,
    code: u16,
    reason: &str,
) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::types::PyDict;
    let m = PyDict::new(py);
    m.set_item(intern!(py, "type"), intern!(py, "websocket.disconnect"))?;
    m.set_item(intern!(py, "code"), code)?;
    m.set_item(intern!(py, "reason"), reason)?;
    Ok(m.into_any())
}
