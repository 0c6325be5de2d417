//! The hand-off from the tokio threads to the Python thread: a queue of work plus the
//! eventfd the asyncio loop watches. It knows no protocol: HTTP and WebSocket queue their
//! own [`Job`]s (start an exchange, resolve a waiting future, deliver a message).
//!
//! 1. [`Handoff::push`] queues an [`Event`]; the push that finds the queue empty writes the
//!    eventfd (one wake-up carries every event queued meanwhile).
//! 2. On the Python thread, the loop calls [`Drainer`], which takes the whole batch and runs
//!    each job in order; a job's error is logged and the batch goes on.

use genro_shared::sync::lock;
use pyo3::prelude::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Work for the Python thread, queued by the tokio side.
pub(crate) struct Job(Box<dyn FnOnce(Python<'_>) -> PyResult<()> + Send>);

impl Job {
    /// Wraps `f`, run once on the Python thread.
    pub(crate) fn new(f: impl FnOnce(Python<'_>) -> PyResult<()> + Send + 'static) -> Self {
        Job(Box::new(f))
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// Something the Python thread must do.
#[derive(Debug)]
pub(crate) enum Event {
    /// Run a protocol's work (start an exchange, resolve a future the app awaits, ...).
    Run(Job),
    /// Stop the event loop: the worker has drained.
    Shutdown,
}

/// The queue from the tokio threads to the Python thread, plus its wake-up eventfd.
#[derive(Debug)]
pub(crate) struct Handoff {
    queue: Mutex<Vec<Event>>,
    eventfd: OwnedFd,
}

impl Handoff {
    /// A hand-off with a fresh non-blocking eventfd.
    pub(crate) fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Handoff {
            queue: Mutex::new(Vec::with_capacity(64)),
            // SAFETY: fd is a freshly created descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd the event loop registers as a reader.
    pub(crate) fn fd(&self) -> i32 {
        self.eventfd.as_raw_fd()
    }

    /// Queues an event, waking the loop if the queue was empty.
    pub(crate) fn push(&self, event: Event) {
        let was_empty = {
            let mut queue = lock(&self.queue);
            let was_empty = queue.is_empty();
            queue.push(event);
            was_empty
        };
        // Layout (b): a push made during a turn is run when the turn ends.
        if was_empty && !crate::on_loop::in_turn() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd. EAGAIN (counter
            // saturated) is harmless: the loop is already due to wake.
            unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Queues `job` (see [`push`](Self::push)).
    pub(crate) fn run(&self, job: impl FnOnce(Python<'_>) -> PyResult<()> + Send + 'static) {
        self.push(Event::Run(Job::new(job)));
    }

    /// Takes every queued event; with `clear`, clears the eventfd first. The order matters:
    /// a push after the read either lands in this batch or writes the eventfd again. A
    /// take without clearing (after a turn, layout (b)) may leave the eventfd set by
    /// another thread's push: the loop then runs the reader for an empty batch.
    fn take(&self, clear: bool) -> Vec<Event> {
        if clear {
            let mut counter: u64 = 0;
            // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd.
            unsafe { libc::read(self.fd(), (&mut counter as *mut u64).cast(), 8) };
        }
        std::mem::take(&mut *lock(&self.queue))
    }
}

/// The eventfd reader callback: runs every queued event on the Python thread.
#[pyclass(frozen)]
pub(crate) struct Drainer {
    handoff: Arc<Handoff>,
    /// The loop's `stop`, for [`Event::Shutdown`].
    stop_loop: Py<PyAny>,
}

impl Drainer {
    /// A drainer of `handoff` for the loop whose `stop` method is `stop_loop`.
    pub(crate) fn new(handoff: Arc<Handoff>, stop_loop: Py<PyAny>) -> Self {
        Drainer { handoff, stop_loop }
    }
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drainer")
    }
}

impl Drainer {
    /// Runs every queued event (see [`Handoff::take`] for `clear`).
    pub(crate) fn run(&self, py: Python<'_>, clear: bool) {
        for event in self.handoff.take(clear) {
            let result = match event {
                Event::Run(job) => (job.0)(py),
                Event::Shutdown => self.stop_loop.call0(py).map(drop),
            };
            if let Err(err) = result {
                tracing::error!("bridge: {err}");
            }
        }
    }
}

#[pymethods]
impl Drainer {
    fn __call__(&self, py: Python<'_>) {
        self.run(py, true);
    }
}
