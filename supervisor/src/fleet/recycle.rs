//! Replacing a worker for what it became rather than what it did wrong: its requests
//! (`max_requests`, counted by the worker itself), its age (`max_lifetime`) and its memory
//! (`max_rss`). Part of the [`Fleet`] state machine.
//!
//! - A worker at `max_requests` stops taking requests the moment it starts its last one
//!   and tells the supervisor ([`Fleet::handle_retire`]): it drains at once, so the bound
//!   is exact to within the requests in flight (a heartbeat's sample overshot by a
//!   second's worth of requests). Its successor should be ready by then: when the worker's
//!   rate says it will reach its limit within 1.5 times its slot's last start-up time
//!   plus a second (the next heartbeat), the successor is started ahead, like a reload of
//!   its slot. If the worker gets to its limit
//!   first, it stops anyway and the successor takes over when ready (new connections wait
//!   in the slot's listen queue meanwhile); without one, one is started at once.
//! - Age and memory are seen at heartbeats; such a worker is replaced like a reload of its
//!   slot (the new worker first, then the old one drains), one slot at a time.
//! - A replacement that fails to start leaves the old worker serving, and the slot is not
//!   recycled again for [`RECYCLE_BACKOFF`].
//!
//! Each replacement carries its [`Why`]: logged, counted and shown by `ctl status` when it
//! happens (the old worker leaves), not when its successor is started.

use super::reload::Reload;
use super::{Cause, Command, Fleet, Phase, Role, Worker, WorkerState};
use genro_shared::recycle::jitter;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Heartbeats in a row above `max_rss` before a worker is replaced: one request's burst
/// of memory is not a leak.
pub const RSS_BEATS: u32 = 3;

/// After a recycle's new worker failed to start, how long the slot keeps its worker before
/// the next attempt.
pub const RECYCLE_BACKOFF: Duration = Duration::from_secs(60);

/// Start-up time assumed for a slot whose worker's was not measured.
const STARTUP_GUESS: Duration = Duration::from_secs(2);

/// Why a worker was recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It started its last request under `max_requests` (plus its jitter).
    MaxRequests {
        /// Its limit.
        limit: u64,
    },
    /// It ran for `max_lifetime` (plus its jitter).
    Lifetime {
        /// Its limit.
        limit: Duration,
    },
    /// Its resident memory stayed above `max_rss`.
    Rss {
        /// Its RSS at the last heartbeat, in bytes.
        rss: u64,
        /// `max_rss`, in bytes.
        max: u64,
    },
}

impl Why {
    /// The `reason` label of `worker_restarts_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Why::MaxRequests { .. } => "max_requests",
            Why::Lifetime { .. } => "max_lifetime",
            Why::Rss { .. } => "max_rss",
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        match self {
            Why::MaxRequests { limit } => write!(f, "max_requests {limit} reached"),
            Why::Lifetime { limit } => {
                write!(f, "max_lifetime {:.0}s reached", limit.as_secs_f64())
            }
            Why::Rss { rss, max } => write!(
                f,
                "rss {:.0} MiB over max_rss {:.0} MiB for {RSS_BEATS} heartbeats",
                *rss as f64 / MIB,
                *max as f64 / MIB
            ),
        }
    }
}

impl Fleet {
    /// The worker `pid` started its last request under `max_requests` (`limit`) and is
    /// draining itself: it retires. A successor already starting (started ahead, or a
    /// reload's) takes over when ready; otherwise one is started now.
    pub fn handle_retire(&mut self, pid: u32, limit: u64) -> Vec<Command> {
        if !matches!(self.phase, Phase::Starting | Phase::Serving) {
            return Vec::new();
        }
        let Some((slot, Role::Current)) = self.find(pid) else {
            return Vec::new();
        };
        let s = &mut self.slots[slot];
        let draining = s
            .worker
            .as_ref()
            .is_some_and(|w| w.killed || w.state == WorkerState::Draining);
        if s.removed || draining {
            // Already on its way out (a scale-down, a hang): nothing to replace.
            return Vec::new();
        }
        let mut old = s.worker.take().expect("found as the current worker");
        old.state = WorkerState::Draining;
        s.retiring.push(old);
        // No `Drain`: it drains itself, and the front's list drops it with the slot's
        // worker (a delayed `Drain` could signal its pid after it exited).
        let mut commands = vec![Command::Recycle {
            slot,
            pid,
            why: Why::MaxRequests { limit },
        }];
        if s.incoming.is_none() && s.incoming_generation.is_none() {
            commands.push(self.spawn(slot));
        }
        commands
    }

    /// At a heartbeat: whether the current worker of `slot` is due for replacement by age
    /// or memory, or soon by its requests.
    pub(super) fn recycle_due(&self, slot: usize, worker: &Worker, now: Instant) -> Option<Why> {
        let settings = &self.settings;
        if !settings.max_lifetime.is_zero() {
            let extra = jitter(worker.pid, settings.max_lifetime_jitter.as_secs());
            let limit = settings.max_lifetime + Duration::from_secs(extra);
            if now.duration_since(worker.started) >= limit {
                return Some(Why::Lifetime { limit });
            }
        }
        if settings.max_rss != 0 && worker.rss_over >= RSS_BEATS {
            return Some(Why::Rss {
                rss: worker.rss,
                max: settings.max_rss,
            });
        }
        if settings.max_requests != 0 {
            let limit = settings.max_requests + jitter(worker.pid, settings.max_requests_jitter);
            let startup = self.slots[slot].startup.unwrap_or(STARTUP_GUESS);
            // Its start-up with a margin, plus the second until the next heartbeat asks.
            let ahead = worker.rate * (startup.as_secs_f64() * 1.5 + 1.0);
            if worker.served as f64 + ahead >= limit as f64 {
                return Some(Why::MaxRequests { limit });
            }
        }
        None
    }

    /// Starts replacing `slot`'s worker for `why` (its successor first), if nothing else
    /// is being replaced and the slot's last recycle did not just fail.
    pub(super) fn start_recycle(&mut self, slot: usize, why: Why, now: Instant) -> Vec<Command> {
        let s = &self.slots[slot];
        let free = self.phase == Phase::Serving
            && self.reload.is_none()
            && s.incoming_generation.is_none()
            && !s.removed
            && s.recycle_after.is_none_or(|t| now >= t);
        if !free {
            // Asked again at the next heartbeat.
            return Vec::new();
        }
        self.reload = Some(Reload::Replacing {
            queue: VecDeque::new(),
            cause: Cause::Recycle(why),
            scale_to: None,
        });
        vec![self.spawn_incoming(slot)]
    }
}
