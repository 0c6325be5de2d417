//! The health of the worker's Python side, observed from Rust.
//!
//! - Loop lag: a ticker task on the asyncio loop (`glue.tick`) sleeps a fixed period and
//!   reports how late it woke up; the heartbeat carries the worst lag and how long ago the
//!   ticker last ran, so the supervisor sees a blocked loop although the heartbeats (sent
//!   from a tokio thread) keep coming.
//! - Stacks: `faulthandler` is registered on a private real-time signal, writing into a
//!   memfd. Raising that signal on a tokio thread runs faulthandler's C handler right
//!   there; it walks every Python thread without taking the GIL, so the dump works also
//!   while the loop thread holds the GIL in a busy loop or a C call.

use pyo3::prelude::*;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Seconds between two ticks of the loop ticker.
pub const TICK_PERIOD: f64 = 0.5;

/// Loop lag and liveness, written by the ticker, read by the heartbeat.
#[derive(Debug)]
pub struct LoopHealth {
    epoch: Instant,
    /// Last tick, in ms since `epoch`.
    last_tick_ms: AtomicU64,
    /// Worst lag since the last heartbeat, in µs.
    worst_lag_us: AtomicU64,
}

impl Default for LoopHealth {
    fn default() -> Self {
        LoopHealth {
            epoch: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            worst_lag_us: AtomicU64::new(0),
        }
    }
}

impl LoopHealth {
    /// The ticker woke up `lag` seconds late.
    pub fn tick(&self, lag: f64) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_tick_ms.store(ms, Ordering::Relaxed);
        let us = if lag.is_finite() && lag > 0.0 {
            (lag * 1e6) as u64
        } else {
            0
        };
        self.worst_lag_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The worst lag since the previous call, in ms.
    pub fn take_lag_ms(&self) -> f64 {
        self.worst_lag_us.swap(0, Ordering::Relaxed) as f64 / 1000.0
    }

    /// Milliseconds since the last tick (beyond the tick period itself).
    pub fn stalled_ms(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64;
        let since = now.saturating_sub(self.last_tick_ms.load(Ordering::Relaxed));
        since.saturating_sub((TICK_PERIOD * 1000.0) as u64)
    }
}

/// Reports ticks into a [`LoopHealth`] (and the loop-lag metric); called by `glue.tick` on
/// the loop.
#[pyclass(frozen)]
pub struct Ticker {
    health: Arc<LoopHealth>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Ticker {
    /// A ticker reporting into `health` and, when metrics are on, `metrics`.
    pub fn new(health: Arc<LoopHealth>, metrics: Option<Arc<crate::metrics::Metrics>>) -> Self {
        Ticker { health, metrics }
    }
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticker")
    }
}

#[pymethods]
impl Ticker {
    fn __call__(&self, lag: f64) {
        self.health.tick(lag);
        if let Some(metrics) = &self.metrics {
            let lag = if lag.is_finite() {
                lag.clamp(0.0, 1e6)
            } else {
                0.0
            };
            metrics.loop_lag(std::time::Duration::from_secs_f64(lag));
        }
    }
}

/// Dumps the Python stacks of every thread through faulthandler.
#[derive(Debug)]
pub struct Stacks {
    file: Mutex<std::fs::File>,
    signal: i32,
    /// pthread id of the thread running the event loop, to mark it in the dump.
    loop_thread: u64,
}

impl Stacks {
    /// Registers faulthandler on a private signal; call with the GIL, on the loop thread.
    pub fn install(py: Python<'_>) -> anyhow::Result<Self> {
        // SAFETY: memfd_create with a valid C string; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"genro-asgi-stacks".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // glibc keeps the first real-time signals for itself; SIGRTMIN() is past them.
        let signal = libc::SIGRTMIN() + 2;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("file", fd)?;
        kwargs.set_item("all_threads", true)?;
        kwargs.set_item("chain", false)?;
        py.import("faulthandler")?
            .call_method("register", (signal,), Some(&kwargs))?;
        Ok(Stacks {
            file: Mutex::new(std::fs::File::from(owned)),
            signal,
            // SAFETY: pthread_self has no preconditions.
            loop_thread: unsafe { libc::pthread_self() } as u64,
        })
    }

    /// The stacks of every Python thread, as faulthandler prints them. Blocks briefly:
    /// call off the async threads.
    pub fn dump(&self) -> std::io::Result<String> {
        let mut file = genro_shared::sync::lock(&self.file);
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        // SAFETY: raise runs the faulthandler handler on this thread before returning;
        // the handler only writes to the memfd.
        if unsafe { libc::raise(self.signal) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        file.seek(SeekFrom::Start(0))?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let marker = format!("0x{:016x} (most recent call first)", self.loop_thread);
        let marked = format!(
            "0x{:016x} [event loop] (most recent call first)",
            self.loop_thread
        );
        Ok(text.replace(&marker, &marked))
    }

    /// The stack of the thread running the event loop only.
    pub fn loop_stack(&self) -> std::io::Result<String> {
        Ok(loop_section(&self.dump()?))
    }
}

/// The event loop's section of a [`Stacks::dump`]: from its marked header to the blank
/// line (or the next thread) after it.
fn loop_section(dump: &str) -> String {
    let mut lines = dump.lines().skip_while(|l| !l.contains("[event loop]"));
    let Some(header) = lines.next() else {
        return dump.to_owned();
    };
    let mut out = format!("{header}\n");
    for line in lines.take_while(|l| l.starts_with(' ')) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_worst_since_last_taken() {
        let h = LoopHealth::default();
        h.tick(0.002);
        h.tick(0.010);
        h.tick(f64::NAN);
        assert_eq!(h.take_lag_ms(), 10.0);
        assert_eq!(h.take_lag_ms(), 0.0);
        assert_eq!(h.stalled_ms(), 0);
    }

    #[test]
    fn the_loop_section_is_cut_out_of_a_dump() {
        let dump = "Thread 0x0000000000000002 (most recent call first):\n  File \"a.py\", line 1 in other\n\nCurrent thread 0x0000000000000001 [event loop] (most recent call first):\n  File \"app.py\", line 9 in handler\n  File \"glue.py\", line 3 in run_http\n\nThread 0x3 (most recent call first):\n  File \"b.py\", line 2 in x\n";
        assert_eq!(
            loop_section(dump),
            "Current thread 0x0000000000000001 [event loop] (most recent call first):\n  File \"app.py\", line 9 in handler\n  File \"glue.py\", line 3 in run_http\n"
        );
    }
}

/// This process's resident memory in bytes, from `/proc/self/statm` (0 when unreadable):
/// what `max_rss` is compared with.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod rss_tests {
    #[test]
    fn rss_is_read_and_grows_with_touched_memory() {
        let before = super::rss_bytes();
        assert!(
            before > 1 << 20,
            "a process has more than 1 MiB resident: {before}"
        );
        let block = vec![1u8; 64 << 20];
        let after = super::rss_bytes();
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        drop(std::hint::black_box(block));
    }
}
