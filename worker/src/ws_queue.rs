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
//!    no message: it is dropped by the next `receive()` or the next message, and the
//!    message stays queued for the next `receive()`.
//! 4. When the pump ends (or the handshake never completes) the [`Producer`] closes the
//!    queue: waiters get `websocket.disconnect` once the queued messages are taken.

use crate::awaitable::{new_future, ready, waiting};
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
    waiters: Vec<Py<PyAny>>,
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
            (!state.waiters.is_empty()).then(|| state.waiters.remove(0))
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
            (!state.waiters.is_empty()).then(|| state.waiters.remove(0))
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
        state.waiters.clear();
        self.budget.release(std::mem::take(&mut state.bytes));
        drop(state);
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
        Some(value)
    }

    /// `receive()` after the handshake: a queued message or the disconnect at once, else a
    /// loop future that [`push`](Self::push) or [`close`](Self::close) resolves.
    pub fn receive(self: &Arc<Self>, py: Python<'_>) -> PyResult<Py<PyAny>> {
        {
            let mut state = lock(&self.state);
            if let Some(result) = self.now(py, &mut state) {
                return result;
            }
            // Futures the app cancelled are dropped here, so at most one per `receive()`
            // in flight stays behind.
            state.waiters.retain(|waiter| !is_done(py, waiter));
        }
        let waiter = new_future(py)?;
        let mut state = lock(&self.state);
        // A message may have come while the future was made.
        if let Some(result) = self.now(py, &mut state) {
            return result;
        }
        state.waiters.push(waiter.clone_ref(py));
        drop(state);
        waiting(py, &waiter, None)
    }

    /// What `receive()` returns without waiting, if anything.
    fn now(&self, py: Python<'_>, state: &mut State) -> Option<PyResult<Py<PyAny>>> {
        if let Some(value) = self.take(state) {
            self.room.notify_one();
            return Some(receive_message(py, value).and_then(|m| ready(py, m, None)));
        }
        if state.closed {
            let (code, reason) = self.ending();
            return Some(disconnect_message(py, code, &reason).and_then(|m| ready(py, m, None)));
        }
        None
    }
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

fn is_done(py: Python<'_>, waiter: &Py<PyAny>) -> bool {
    waiter
        .bind(py)
        .call_method0(intern!(py, "done"))
        .and_then(|done| done.is_truthy())
        .unwrap_or(true)
}

/// On the Python thread: resolves the waiting `receive()` futures of `queue` (`first`
/// and any others) with queued messages in order, or with the disconnect once the queue is
/// closed and empty. A cancelled future is skipped and loses nothing: the message stays
/// queued for the next `receive()`.
fn serve(py: Python<'_>, first: Py<PyAny>, queue: &Arc<Queue>) -> PyResult<()> {
    let mut resolved: Vec<(Py<PyAny>, Option<Inbound>)> = Vec::new();
    let mut took = false;
    {
        let mut state = lock(&queue.state);
        let mut waiters = std::mem::take(&mut state.waiters);
        waiters.insert(0, first);
        for waiter in waiters {
            if is_done(py, &waiter) {
                continue;
            }
            if let Some(value) = queue.take(&mut state) {
                took = true;
                resolved.push((waiter, Some(value)));
            } else if state.closed {
                resolved.push((waiter, None));
            } else {
                state.waiters.push(waiter);
            }
        }
    }
    if took {
        queue.room.notify_one();
    }
    let mut first_error = None;
    for (waiter, value) in resolved {
        let message = match value {
            Some(value) => receive_message(py, value),
            None => {
                let (code, reason) = queue.ending();
                disconnect_message(py, code, &reason)
            }
        };
        let result = message.and_then(|message| {
            waiter
                .bind(py)
                .call_method1(intern!(py, "set_result"), (message,))
                .map(drop)
        });
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
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
