//! The awaitables `receive()` and `send()` return: [`Ready`] when nothing must wait (no loop
//! future, no loop iteration), [`Waiting`] around a loop future otherwise, and the helpers
//! that make and settle those futures on the Python thread.

use genro_shared::sync::lock;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The loop's objects the awaitables need, set once per worker.
struct Loop {
    create_future: Py<PyAny>,
    /// The completed awaitable every `send()` that need not wait returns.
    sent: Py<Ready>,
}

static LOOP: PyOnceLock<Loop> = PyOnceLock::new();

/// Installs the event loop the futures belong to; call once before the loop runs.
pub(crate) fn install(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let state = Loop {
        create_future: event_loop.getattr("create_future")?.unbind(),
        sent: Py::new(
            py,
            Ready {
                value: None,
                give_back: None,
                taken: AtomicBool::new(false),
            },
        )?,
    };
    LOOP.set(py, state)
        .map_err(|_| PyRuntimeError::new_err("bridge installed twice"))
}

fn loop_state(py: Python<'_>) -> PyResult<&Loop> {
    LOOP.get(py)
        .ok_or_else(|| PyRuntimeError::new_err("bridge not installed"))
}

/// A new future of the event loop, for a `receive()`/`send()` that must wait.
pub(crate) fn new_future(py: Python<'_>) -> PyResult<Py<PyAny>> {
    loop_state(py)?.create_future.call0(py)
}

/// The completed awaitable a `send()` that need not wait returns.
pub(crate) fn sent(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(loop_state(py)?.sent.clone_ref(py).into_any())
}

/// A completed awaitable that returns `value`. With a [`GiveBack`], a `value` the app
/// never takes (the awaitable dropped or closed unawaited) is given back.
pub(crate) fn ready(
    py: Python<'_>,
    value: Bound<'_, PyAny>,
    give_back: Option<GiveBack>,
) -> PyResult<Py<PyAny>> {
    Ok(Py::new(
        py,
        Ready {
            value: Some(value.unbind()),
            give_back,
            taken: AtomicBool::new(false),
        },
    )?
    .into_any())
}

/// What a completed `receive()` runs if the app never takes its message:
/// `run(py, message, owner)`, once (a body chunk goes back to the stash).
#[derive(Debug)]
pub(crate) struct GiveBack {
    owner: Py<PyAny>,
    run: GiveUpFn,
}

impl GiveBack {
    /// Runs `run(py, &message, &owner)` if the message is never taken.
    pub(crate) fn new(owner: Py<PyAny>, run: GiveUpFn) -> Self {
        GiveBack { owner, run }
    }
}

/// Whether a loop future is done (resolved, or cancelled by the app); an error counts as
/// done, so a broken future is never handed a message.
pub(crate) fn is_done(future: &Bound<'_, PyAny>) -> bool {
    future
        .call_method0(intern!(future.py(), "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true)
}

/// Forgets the waiters (in `state`, reached through `waiters`) that are done: cancelled
/// by the app before their give-up hook ran. Their `done()` is asked outside the lock (the
/// list is copied under it with `clone_ref`, no Python call), and the ones forgotten under
/// it again are still held here, so forgetting them runs no finalizer.
pub(crate) fn prune<S>(
    py: Python<'_>,
    state: &std::sync::Mutex<S>,
    waiters: fn(&mut S) -> &mut std::collections::VecDeque<Py<PyAny>>,
) {
    let snapshot: Vec<Py<PyAny>> = waiters(&mut lock(state))
        .iter()
        .map(|w| w.clone_ref(py))
        .collect();
    let done: Vec<Py<PyAny>> = snapshot
        .into_iter()
        .filter(|w| is_done(w.bind(py)))
        .collect();
    if !done.is_empty() {
        waiters(&mut lock(state)).retain(|w| !done.iter().any(|d| d.is(w)));
    }
}

/// On the Python thread: ends a waiting `send()`: `Ok` returns `None` to the app, `Err`
/// raises `OSError(why)`. A future the app cancelled is left alone.
pub(crate) fn settle(
    py: Python<'_>,
    waiter: Py<PyAny>,
    outcome: Result<(), &'static str>,
) -> PyResult<()> {
    settle_with(py, waiter, outcome.map_err(PyOSError::new_err))
}

/// On the Python thread: ends a waiting `send()` with `None` or the exception `outcome`
/// holds. A future the app cancelled is left alone.
pub(crate) fn settle_with(
    py: Python<'_>,
    waiter: Py<PyAny>,
    outcome: Result<(), PyErr>,
) -> PyResult<()> {
    let waiter = waiter.bind(py);
    if waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match outcome {
        Ok(()) => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
        Err(error) => waiter.call_method1(intern!(py, "set_exception"), (error.value(py),))?,
    };
    Ok(())
}

/// An awaitable that is already complete: `await` returns `value` without suspending, so
/// a `send()` or `receive()` that need not wait costs no future and no loop iteration.
#[pyclass(frozen)]
pub(crate) struct Ready {
    value: Option<Py<PyAny>>,
    give_back: Option<GiveBack>,
    /// The awaiting code got the value.
    taken: AtomicBool,
}

impl Drop for Ready {
    fn drop(&mut self) {
        let (Some(give_back), Some(value)) = (&self.give_back, &self.value) else {
            return;
        };
        if self.taken.load(Ordering::Relaxed) {
            return;
        }
        // Dropped by Python's deallocator: the thread is attached already.
        Python::attach(|py| {
            if let Err(err) = (give_back.run)(py, value, &give_back.owner) {
                tracing::debug!("giving back an unawaited receive(): {err}");
            }
        });
    }
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
            Some(value) => {
                self.taken.store(true, Ordering::Relaxed);
                Err(PyStopIteration::new_err((value.clone_ref(py),)))
            }
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
fn raise(kind: &Bound<'_, PyAny>, value: Option<&Bound<'_, PyAny>>) -> PyErr {
    let exception = match value {
        Some(value) if !value.is_none() => value.clone(),
        _ => kind.clone(),
    };
    PyErr::from_value(exception)
}

/// What runs when the app gives up a pending call before it completed (cancelled, closed,
/// or dropped unawaited): `run(py, future, owner)`, once.
#[derive(Debug)]
pub(crate) struct GiveUp {
    future: Py<PyAny>,
    owner: Py<PyAny>,
    run: GiveUpFn,
    /// The result was taken, or `run` ran.
    settled: AtomicBool,
}

/// The function a [`GiveUp`] runs: `(py, future, owner)`.
pub(crate) type GiveUpFn = fn(Python<'_>, &Py<PyAny>, &Py<PyAny>) -> PyResult<()>;

impl GiveUp {
    /// Runs `run(py, &future, &owner)` if the app gives up `future`.
    pub(crate) fn new(future: Py<PyAny>, owner: Py<PyAny>, run: GiveUpFn) -> Self {
        GiveUp {
            future,
            owner,
            run,
            settled: AtomicBool::new(false),
        }
    }
}

/// A pending `receive()`/`send()`: the loop future, wrapped so that it is also a
/// `collections.abc.Coroutine` (see [`Ready`]); awaiting it awaits the future. With a
/// [`GiveUp`], the app's cancelling (or dropping) the await runs it at once.
#[pyclass(frozen)]
pub(crate) struct Waiting {
    iter: Py<PyAny>,
    give_up: Option<GiveUp>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

impl Waiting {
    /// Notes that the awaiting code got the result (the iterator stopped).
    fn settle_on_stop<T>(&self, py: Python<'_>, result: PyResult<T>) -> PyResult<T> {
        if let (Some(give_up), Err(err)) = (&self.give_up, &result) {
            if err.is_instance_of::<PyStopIteration>(py) {
                give_up.settled.store(true, Ordering::Relaxed);
            }
        }
        result
    }

    /// The awaiting code gives up (cancelled, closed, dropped).
    fn give_up(&self, py: Python<'_>) -> PyResult<()> {
        match &self.give_up {
            Some(give_up) if !give_up.settled.swap(true, Ordering::Relaxed) => {
                (give_up.run)(py, &give_up.future, &give_up.owner)
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A call never awaited (or dropped half-way): give it up, so the next message is
        // not set on a future nobody reads.
        if let Some(give_up) = &self.give_up {
            if !give_up.settled.load(Ordering::Relaxed) {
                // Dropped by Python's deallocator: the thread is attached already.
                Python::attach(|py| {
                    if let Err(err) = self.give_up(py) {
                        tracing::debug!("releasing a dropped receive(): {err}");
                    }
                });
            }
        }
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
        self.give_up(py)?;
        let exception = raise(kind, value);
        Ok(self
            .iter
            .bind(py)
            .call_method1(intern!(py, "throw"), (exception.value(py),))?
            .unbind())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.give_up(py)?;
        self.iter.bind(py).call_method0(intern!(py, "close"))?;
        Ok(())
    }
}

/// Wraps a loop future for the app (see [`Waiting`]).
pub(crate) fn waiting(
    py: Python<'_>,
    future: &Py<PyAny>,
    give_up: Option<GiveUp>,
) -> PyResult<Py<PyAny>> {
    let iter = future
        .bind(py)
        .call_method0(intern!(py, "__await__"))?
        .unbind();
    Ok(Py::new(py, Waiting { iter, give_up })?.into_any())
}
