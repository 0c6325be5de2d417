//! Replacing a worker for what it became rather than what it did wrong: its requests
//! (`max_requests`, counted by the worker itself), its age (`max_lifetime`) and its memory
//! (`max_rss`). Part of the [`Fleet`] state machine.
//!
//! - A worker at `max_requests` stops taking requests the moment it starts its last one
//!   and tells the supervisor ([`Fleet::handle_retire`]): it drains at once and a new
//!   worker is started into its slot, so the bound is exact to within the requests in
//!   flight (a heartbeat's sample overshot by a second's worth of requests).
//! - Age and memory are seen at heartbeats; such a worker is replaced like a reload of its
//!   slot (the new worker first, then the old one drains), one slot at a time.
//!
//! Each replacement carries its [`Why`]: logged, counted and shown by `ctl status`.

use super::reload::Reload;
use super::{Cause, Command, Fleet, Phase, Role, Worker, WorkerState};
use genro_shared::recycle::jitter;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Heartbeats in a row above `max_rss` before a worker is replaced: one request's burst
/// of memory is not a leak.
pub const RSS_BEATS: u32 = 3;

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
    /// draining itself: it retires, and a new worker starts into its slot at once (unless
    /// a reload's replacement is already starting there).
    pub fn handle_retire(&mut self, pid: u32, limit: u64) -> Vec<Command> {
        if !matches!(self.phase, Phase::Starting | Phase::Serving) {
            return Vec::new();
        }
        let Some((slot, Role::Current)) = self.find(pid) else {
            return Vec::new();
        };
        let s = &mut self.slots[slot];
        if s.worker.as_ref().is_some_and(|w| w.killed) {
            return Vec::new();
        }
        let mut old = s.worker.take().expect("found as the current worker");
        old.state = WorkerState::Draining;
        s.retiring.push(old);
        let mut commands = vec![
            Command::Recycle {
                slot,
                pid,
                why: Why::MaxRequests { limit },
            },
            Command::Drain(pid),
        ];
        if !s.removed && s.incoming.is_none() && s.incoming_generation.is_none() {
            commands.push(self.spawn(slot));
        }
        commands
    }

    /// At a heartbeat: whether the current worker of `slot` is due for replacement by age
    /// or memory (`rss_over`: its heartbeats in a row above `max_rss`).
    pub(super) fn recycle_due(&self, worker: &Worker, now: Instant) -> Option<Why> {
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
        None
    }

    /// Starts replacing `slot`'s worker for `why`, if nothing else is being replaced.
    pub(super) fn start_recycle(&mut self, slot: usize, pid: u32, why: Why) -> Vec<Command> {
        let s = &self.slots[slot];
        let free = self.phase == Phase::Serving
            && self.reload.is_none()
            && s.incoming_generation.is_none()
            && !s.removed;
        if !free {
            // Asked again at the next heartbeat.
            return Vec::new();
        }
        self.reload = Some(Reload::Replacing {
            queue: VecDeque::new(),
            cause: Cause::Recycle(why),
            scale_to: None,
        });
        vec![
            Command::Recycle { slot, pid, why },
            self.spawn_incoming(slot),
        ]
    }
}
