//! Layout (b), `[server] threads = 0`: the connections run on the event loop's own thread.
//! A current-thread tokio runtime is driven from the asyncio loop, so a request never
//! crosses threads.
//!
//! 1. The runtime's epoll descriptor (its I/O driver) is found when the runtime is built,
//!    among the `anon_inode:[eventpoll]` descriptors that building it added, as the one that
//!    turns readable when a socket registered with the runtime does (tokio does not expose
//!    it). The loop watches it with `add_reader`: it turns readable when a socket
//!    is ready or when a task is woken from outside the runtime (the app's `send()`, a
//!    blocking-pool thread, the control thread).
//! 2. The reader callback, [`Turn`], runs the runtime with `block_on` until it is idle:
//!    the `on_thread_park` hook fires when no task is ready, checks the epoll descriptor
//!    without waiting, and wakes the `block_on` future, which ends the turn once nothing
//!    is pending (tokio polls its driver once more without blocking when the hook wakes
//!    it: <https://github.com/tokio-rs/tokio/issues/8212>). A turn ends after
//!    [`MAX_ROUNDS`] rounds or [`MAX_TURN`] anyway (a task that always has work, such as a
//!    client flooding a WebSocket with pings, never lets the hook fire), so a flood
//!    cannot starve the app; it then asks the loop for another turn at once.
//! 3. Then the hand-off's jobs queued during the turn run at once, without waiting for the
//!    loop to notice the eventfd.
//! 4. A readiness that arrives between the hook's check and the driver's last poll is
//!    consumed without its task running; a timer turns the runtime every [`TICK`] so such a
//!    task (and tokio's timers: keep-alive, body and send timeouts) waits at most that long.
//!
//! The control connection, the signal handler, the watchdog and the memory trimmer run on
//! a separate one-thread runtime, so a blocked loop still answers heartbeats and is
//! reported, as in layout (a).

use crate::handoff::Drainer;
use pyo3::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::runtime::Runtime;

/// Most park rounds in one turn before the loop gets the thread back.
const MAX_ROUNDS: u32 = 4;
/// Longest turn (tokio's timer resolution is 1 ms: a turn ends within about 2 ms).
const MAX_TURN: Duration = Duration::from_millis(1);
/// The longest a ready task or an expired tokio timer waits for a turn.
pub(crate) const TICK: Duration = Duration::from_millis(5);

thread_local! {
    /// The `block_on` future of the turn in progress, woken by the park hook.
    static TURN: RefCell<Option<Waker>> = const { RefCell::new(None) };
    /// The park hook found nothing pending.
    static IDLE: Cell<bool> = const { Cell::new(false) };
    /// A turn is running on this thread: its hand-off jobs run right after it.
    static IN_TURN: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is running a turn, whose hand-off jobs run when it ends (so a push
/// need not wake the loop).
pub(crate) fn in_turn() -> bool {
    IN_TURN.get()
}

/// A current-thread runtime and its epoll descriptor.
#[derive(Debug)]
pub(crate) struct LoopRuntime {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) epoll: RawFd,
}

/// Why the loop's runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("building the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("listing /proc/self/fd: {0}")]
    Proc(#[source] std::io::Error),
    #[error("finding the runtime's epoll descriptor: {0}")]
    Probe(#[source] std::io::Error),
}

impl LoopRuntime {
    /// Builds the runtime and finds its epoll descriptor; its blocking threads run in
    /// `worker` (the loop's thread is in it already).
    pub(crate) fn build(worker: &tracing::Span) -> Result<Self, BuildError> {
        let epoll = Arc::new(AtomicI32::new(-1));
        let hook_epoll = epoll.clone();
        let before = epoll_fds().map_err(BuildError::Proc)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || on_park(hook_epoll.load(Ordering::Relaxed)))
            .on_thread_start(crate::stay_in(worker))
            .build()
            .map_err(BuildError::Runtime)?;
        let after = epoll_fds().map_err(BuildError::Proc)?;
        let added: Vec<RawFd> = after.difference(&before).copied().collect();
        let fd = driver_epoll(&runtime, &added).map_err(BuildError::Probe)?;
        epoll.store(fd, Ordering::Relaxed);
        Ok(LoopRuntime {
            runtime: Arc::new(runtime),
            epoll: fd,
        })
    }
}

/// The descriptors of this process that are epoll instances.
fn epoll_fds() -> std::io::Result<HashSet<RawFd>> {
    let mut found = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // the directory's own descriptor, closed by now
        };
        if target.as_os_str() == "anon_inode:[eventpoll]" {
            if let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                found.insert(fd);
            }
        }
    }
    Ok(found)
}

/// Which of `candidates` (the epoll descriptors building `runtime` added) is the I/O
/// driver's: the one that turns readable when a socket registered with the runtime does.
fn driver_epoll(runtime: &Runtime, candidates: &[RawFd]) -> std::io::Result<RawFd> {
    use std::io::Write;
    let (read, mut write) = std::os::unix::net::UnixStream::pair()?;
    read.set_nonblocking(true)?;
    let _guard = runtime.enter();
    let probe = tokio::net::UnixStream::from_std(read)?;
    write.write_all(b"x")?;
    let found: Vec<RawFd> = candidates
        .iter()
        .copied()
        .filter(|&fd| readable(fd))
        .collect();
    drop(probe);
    // tokio keeps a duplicate of its epoll descriptor (mio's registry): descriptors of one
    // instance watch the same descriptors.
    let watched = |fd: RawFd| -> std::io::Result<Vec<String>> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let mut lines: Vec<String> = info
            .lines()
            .filter(|l| l.starts_with("tfd:"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        Ok(lines)
    };
    let one_instance = match found.split_first() {
        Some((&first, rest)) => {
            let first = watched(first)?;
            rest.iter().try_fold(true, |same, &fd| {
                Ok::<_, std::io::Error>(same && watched(fd)? == first)
            })?
        }
        None => false,
    };
    match found[..] {
        [fd, ..] if one_instance => Ok(fd),
        _ => Err(std::io::Error::other(format!(
            "{} of {} new epoll descriptors saw the probe",
            found.len(),
            candidates.len()
        ))),
    }
}

/// Whether `fd` is readable now (no wait).
fn readable(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & libc::POLLIN != 0
}

/// The park hook: no task is ready. Outside a turn (the final `block_on` at shutdown)
/// it does nothing, so the runtime parks as usual.
fn on_park(epoll: RawFd) {
    if let Some(waker) = TURN.with_borrow_mut(Option::take) {
        IDLE.set(!readable(epoll));
        waker.wake();
    }
}

/// The `block_on` future of one turn: ready once the park hook found nothing pending
/// (`Ready(true)`), or after [`MAX_ROUNDS`] rounds or [`MAX_TURN`] (then `Ready(false)`).
struct UntilIdle {
    rounds: u32,
    /// Created at the first poll, inside the runtime.
    limit: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl UntilIdle {
    fn new() -> Self {
        UntilIdle {
            rounds: 0,
            limit: None,
        }
    }
}

impl Future for UntilIdle {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if self.rounds > 0 && IDLE.get() {
            return Poll::Ready(true);
        }
        let last_round = self.rounds == MAX_ROUNDS;
        let limit = self
            .limit
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(MAX_TURN)));
        if last_round || limit.as_mut().poll(cx).is_ready() {
            TURN.with_borrow_mut(|turn| *turn = None);
            return Poll::Ready(false);
        }
        self.rounds += 1;
        IDLE.set(false);
        TURN.with_borrow_mut(|turn| *turn = Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// The loop's reader callback for the runtime's epoll descriptor (see the module docs).
#[pyclass(frozen)]
pub(crate) struct Turn {
    runtime: Arc<Runtime>,
    drainer: Py<Drainer>,
    /// The loop's `call_soon` and `call_later`.
    call_soon: Py<PyAny>,
    call_later: Py<PyAny>,
    /// A tick is scheduled.
    ticking: AtomicBool,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Turn")
    }
}

impl Turn {
    /// A turn of `runtime` for the loop `event_loop`, draining `drainer` after each.
    pub(crate) fn new(
        runtime: Arc<Runtime>,
        drainer: Py<Drainer>,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Turn {
            runtime,
            drainer,
            call_soon: event_loop.getattr("call_soon")?.unbind(),
            call_later: event_loop.getattr("call_later")?.unbind(),
            ticking: AtomicBool::new(false),
        })
    }
}

#[pymethods]
impl Turn {
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        IN_TURN.set(true);
        let idle = this.runtime.block_on(UntilIdle::new());
        IN_TURN.set(false);
        this.drainer.get().run(py, false);
        if !idle {
            this.call_soon.call1(py, (slf,))?;
        }
        if !this.ticking.swap(true, Ordering::Relaxed) {
            this.call_later
                .call1(py, (TICK.as_secs_f64(), slf.getattr("tick")?))?;
        }
        Ok(())
    }

    /// The timer's turn (see the module docs, 4).
    fn tick(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().ticking.store(false, Ordering::Relaxed);
        Self::__call__(slf)
    }
}
