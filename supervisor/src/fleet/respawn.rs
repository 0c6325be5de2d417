//! When a failed process (a slot's worker or the front) comes back: at once after a first
//! failure, then after a backoff that doubles on each further failure in a row.

use super::{Worker, WorkerState};
use std::time::{Duration, Instant};

pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);

const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(super) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// When a failed process (a slot's worker or the front) comes back.
#[derive(Debug)]
pub(super) struct Respawn {
    /// When the next process starts, if one is due.
    pub(super) at: Option<Instant>,
    pub(super) backoff: Duration,
    /// Respawns after a crash so far.
    pub(super) restarts: u64,
    /// Failures in a row (reset once a process stayed up [`STABLE_AFTER`]).
    pub(super) failures: u32,
}

impl Default for Respawn {
    fn default() -> Self {
        Respawn {
            at: None,
            backoff: BACKOFF_START,
            restarts: 0,
            failures: 0,
        }
    }
}

impl Respawn {
    /// A process failed at `now`: the first failure in a row respawns at once (its queue
    /// is waiting), the backoff starts with the second. Returns the delay.
    pub(super) fn schedule(&mut self, now: Instant) -> Duration {
        self.restarts += 1;
        self.failures += 1;
        let delay = if self.failures == 1 {
            Duration::ZERO
        } else {
            let delay = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            delay
        };
        self.at = Some(now + delay);
        delay
    }

    /// A process exited: if it had served steadily, the failure count starts over.
    pub(super) fn forgive(&mut self, gone: &Worker, now: Instant) {
        if gone.state == WorkerState::Ready && now.duration_since(gone.since) >= STABLE_AFTER {
            self.backoff = BACKOFF_START;
            self.failures = 0;
        }
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.at.is_some_and(|t| t <= now)
    }
}
