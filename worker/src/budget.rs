//! Byte budgets: how many response bytes the app may have handed to the server that the
//! client has not taken yet, per response (`[limits] response_buffer`), per connection
//! (`connection_buffer`) and per worker (`worker_buffer`).
//!
//! A piece of a response is admitted when each of its budgets has room for it (or is
//! empty: a piece larger than a whole budget still goes through alone), and given back
//! when hyper takes it from the response body. Waiting for room is what makes the app's
//! `send()` wait: backpressure by size, not by chunk count.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::metrics::Limit;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process: a cheap, comparable timestamp for
/// atomics (progress marks, stall detection).
pub fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A worker-wide log line said at most once per period: a bound hit under a flood must
/// not flood the log.
#[derive(Debug)]
pub struct LogEvery {
    period_ms: u64,
    last: AtomicU64,
}

impl LogEvery {
    /// At most once per `period`.
    pub const fn new(period: Duration) -> Self {
        LogEvery {
            period_ms: period.as_millis() as u64,
            last: AtomicU64::new(0),
        }
    }

    /// Whether the line is due now; the caller that gets `true` says it.
    pub fn due(&self) -> bool {
        // Offset by one period, so that the first call is due.
        let now = now_ms() + self.period_ms;
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.period_ms
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The period in whole seconds, for the log line.
    pub fn secs(&self) -> u64 {
        self.period_ms / 1000
    }
}

/// The instant of a [`now_ms`] timestamp.
pub fn instant_of(ms: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_millis(ms)
}

/// One budget, shared by the pieces that draw from it.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Tasks waiting in [`Budget::room`]; `give` notifies only when there are some.
    waiting: AtomicUsize,
    freed: Notify,
    /// When a piece was last taken out (or the budget last became non-empty): the
    /// reference for "the client took nothing for `send_timeout`".
    progress_ms: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            progress_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Bytes drawn and not given back.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Whether `n` more bytes fit (an empty budget takes any piece).
    pub fn fits(&self, n: usize) -> bool {
        let used = self.used();
        used == 0 || used + n <= self.limit
    }

    /// Whether at most half the budget is in use (the low-water mark a waiting send
    /// resumes at).
    pub fn below_half(&self) -> bool {
        self.used() <= self.limit / 2
    }

    /// Draws `n` bytes (call after [`Budget::fits`]; concurrent admitters may go past the
    /// limit by a piece each).
    pub fn take(&self, n: usize) {
        if self.used.fetch_add(n, Ordering::AcqRel) == 0 {
            // The clock of "no progress" starts when data starts waiting.
            self.progress_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Gives `n` bytes back, waking the tasks waiting for room.
    pub fn give(&self, n: usize, progress: bool) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if progress {
            self.progress_ms.store(now_ms(), Ordering::Relaxed);
        }
        if self.waiting.load(Ordering::Acquire) != 0 {
            self.freed.notify_waiters();
        }
    }

    /// When bytes were last taken out, or started waiting ([`now_ms`] time).
    pub fn progress_ms(&self) -> u64 {
        self.progress_ms.load(Ordering::Relaxed)
    }

    /// Bytes are waiting and none was taken for `timeout`.
    pub fn stalled(&self, timeout: Duration) -> bool {
        !timeout.is_zero()
            && self.used() != 0
            && now_ms().saturating_sub(self.progress_ms()) >= timeout.as_millis() as u64
    }

    /// Resolves once `n` bytes fit, or `give` was called (callers re-check).
    pub async fn freed(&self, n: usize) {
        self.wait(|b| b.fits(n)).await
    }

    /// Resolves once at most half the budget is in use, or `give` was called (callers
    /// re-check).
    pub async fn drained(&self) {
        self.wait(Budget::below_half).await
    }

    /// Resolves at the next `give` (callers re-check what they wait for).
    pub async fn changed(&self) {
        self.wait(|_| false).await
    }

    /// Resolves at once if `ready`, else at the next `give`. Registered before `ready` is
    /// looked at, so a `give` in between is not missed.
    async fn wait(&self, ready: impl Fn(&Budget) -> bool) {
        let notified = self.freed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if ready(self) {
            return;
        }
        notified.await;
    }
}

/// A connection's share: its budget, and the streams on it that stalled (their send
/// timed out), which the connection's driver looks at when kicked.
#[derive(Debug)]
pub struct ConnBuffers {
    /// `[limits] connection_buffer`.
    pub budget: Budget,
    /// Streams aborted because their client took nothing for `send_timeout`, whose body
    /// hyper still holds (an HTTP/2 stream with a closed window is never polled again).
    pub stalled: AtomicUsize,
    /// Wakes the connection's driver when a stream stalled.
    pub kick: Notify,
    /// The limits already logged on this connection (one bit per [`Limit`]).
    logged: AtomicU32,
    /// Carries many clients' streams (the HTTP/3 front's connection): every hit is theirs.
    many_clients: bool,
}

impl ConnBuffers {
    /// A client connection's share of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ConnBuffers {
            budget: Budget::new(limit),
            stalled: AtomicUsize::new(0),
            kick: Notify::new(),
            logged: AtomicU32::new(0),
            many_clients: false,
        }
    }

    /// The HTTP/3 front's connection: it carries the streams of every HTTP/3 client, so it
    /// has no budget of its own and each limit hit on it is a different client's.
    pub fn front() -> Self {
        ConnBuffers {
            many_clients: true,
            ..ConnBuffers::new(usize::MAX)
        }
    }

    /// Whether this hit of `limit` is the first on the connection: bounds are logged once
    /// per connection (at INFO or WARNING), never per stream or per frame.
    pub fn first_hit(&self, limit: Limit) -> bool {
        let bit = 1u32 << (limit as u32);
        self.many_clients || self.logged.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }
}

/// Where one response's pieces are counted.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// The connection's.
    pub conn: std::sync::Arc<ConnBuffers>,
    /// The worker's.
    pub worker: std::sync::Arc<Budget>,
    /// `[limits] response_buffer`.
    pub response: usize,
    /// `[limits] send_timeout` (zero: none).
    pub send_timeout: Duration,
}

/// Counts a task in [`Budget::waiting`] while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_budget_takes_any_piece_and_a_full_one_none() {
        let b = Budget::new(100);
        assert!(b.fits(1000));
        b.take(1000);
        assert!(!b.fits(1));
        b.give(1000, true);
        assert!(b.fits(60));
        b.take(60);
        assert!(b.fits(40));
        assert!(!b.fits(41));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_bytes_are_given_back() {
        let b = std::sync::Arc::new(Budget::new(10));
        b.take(10);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                while !b.fits(5) {
                    b.freed(5).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.give(10, true);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn each_limit_is_logged_once_per_client_connection() {
        let conn = ConnBuffers::new(10);
        assert!(conn.first_hit(Limit::SendTimeout));
        assert!(!conn.first_hit(Limit::SendTimeout));
        assert!(conn.first_hit(Limit::BodyTimeout));
        assert!(conn.first_hit(Limit::WebsocketControl));
        assert!(!conn.first_hit(Limit::BodyTimeout));
        let front = ConnBuffers::front();
        assert!(front.first_hit(Limit::SendTimeout));
        assert!(front.first_hit(Limit::SendTimeout));
    }

    #[test]
    fn stalled_needs_waiting_bytes_and_time() {
        let b = Budget::new(10);
        assert!(!b.stalled(Duration::from_millis(1)));
        b.take(5);
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.stalled(Duration::from_millis(1)));
        assert!(!b.stalled(Duration::ZERO));
        assert!(!b.stalled(Duration::from_secs(60)));
    }
}
