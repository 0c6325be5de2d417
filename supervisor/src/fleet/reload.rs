//! Reloads and recycles: replacing slots one at a time with a new generation, the peer
//! waiting for the outcome (as a token), and the worker count a reloaded configuration
//! asks for, applied once every slot was replaced. Part of the [`Fleet`] state machine.
//!
//! 1. A reload is requested ([`Fleet::handle_reload_requested`]): while its configuration
//!    and interpreter are prepared, other reloads and scaling are refused.
//! 2. It starts ([`Fleet::handle_reload`]) or is abandoned; slots are replaced in order, a
//!    new worker beside the old one, the old one drained once the new one is ready.
//! 3. The last replacement ends it: [`Command::Reloaded`], then the new worker count, if
//!    any ([`Command::Scaling`]). A replacement that fails first ends it with
//!    [`Command::ReloadFailed`] and drops that count. A stop ends it with no outcome.

use super::{Command, Fleet, Phase, Refused};
use std::collections::VecDeque;

/// A peer waiting for a reload's outcome (`ctl reload`), as the fleet knows it: the
/// executor keeps the connection under this token and answers when the fleet says so.
pub type ReplyId = u64;

/// Why workers are being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A worker reached `max_lifetime` or `max_rss`: its slot alone.
    Recycle(super::Why),
    /// A configuration reload: every slot, one at a time.
    Reload {
        /// Who waits for the outcome, if anyone (a SIGHUP has nobody to answer).
        reply: Option<ReplyId>,
    },
}

/// How far a reload got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reload {
    /// Requested: the new configuration's interpreter is being chosen and probed, off the
    /// executor's thread; no worker has been touched yet.
    Preparing,
    /// Slots still to replace, one at a time.
    Replacing {
        /// Slots not replaced yet.
        queue: VecDeque<usize>,
        /// Reload or recycle.
        cause: Cause,
        /// The worker count the reloaded configuration asks for, applied once every slot
        /// was replaced (a scale changes slots the reload is walking through).
        scale_to: Option<usize>,
    },
}

impl Fleet {
    /// A reload was asked for: refused unless serving with no reload running; otherwise
    /// the fleet waits, [`Fleet::is_reloading`], until [`Fleet::handle_reload`] (the
    /// preparation succeeded) or [`Fleet::handle_reload_abandoned`].
    pub fn handle_reload_requested(&mut self) -> Result<(), Refused> {
        match self.phase {
            Phase::Starting => return Err(Refused::Starting),
            Phase::Stopping { .. } | Phase::Done => return Err(Refused::Stopping),
            Phase::Serving => {}
        }
        if self.reload.is_some() {
            return Err(Refused::Reloading);
        }
        self.reload = Some(Reload::Preparing);
        Ok(())
    }

    /// The requested reload will not happen (its configuration could not be used).
    pub fn handle_reload_abandoned(&mut self) {
        if self.reload == Some(Reload::Preparing) {
            self.reload = None;
        }
    }

    /// Replaces every slot, one at a time, with a worker of a new generation (after
    /// [`Fleet::handle_reload_requested`], or directly). `reply` is answered by the
    /// outcome ([`Command::Reloaded`] / [`Command::ReloadFailed`]); `workers` is the
    /// reloaded configuration's worker count, scaled to once the reload completed.
    pub fn handle_reload(
        &mut self,
        reply: Option<ReplyId>,
        workers: usize,
    ) -> Result<Vec<Command>, Refused> {
        match self.phase {
            Phase::Starting => return Err(Refused::Starting),
            Phase::Stopping { .. } | Phase::Done => return Err(Refused::Stopping),
            Phase::Serving => {}
        }
        if matches!(self.reload, Some(Reload::Replacing { .. })) {
            return Err(Refused::Reloading);
        }
        self.reload = Some(Reload::Replacing {
            queue: (0..self.slots.len())
                .filter(|&i| !self.slots[i].removed)
                .collect(),
            cause: Cause::Reload { reply },
            scale_to: Some(workers).filter(|&n| n != self.size()),
        });
        Ok(self.next_replacement())
    }

    /// Why workers are being replaced, if they are (not while a reload is prepared).
    pub fn replacing(&self) -> Option<Cause> {
        match &self.reload {
            Some(Reload::Replacing { cause, .. }) => Some(*cause),
            Some(Reload::Preparing) | None => None,
        }
    }

    pub(super) fn next_replacement(&mut self) -> Vec<Command> {
        let (mut queue, cause, scale_to) = match self.reload.take() {
            Some(Reload::Replacing {
                queue,
                cause,
                scale_to,
            }) => (queue, cause, scale_to),
            other => {
                self.reload = other;
                return Vec::new();
            }
        };
        if let Some(slot) = queue.pop_front() {
            self.reload = Some(Reload::Replacing {
                queue,
                cause,
                scale_to,
            });
            return vec![self.spawn_incoming(slot)];
        }
        let mut commands = vec![Command::Reloaded { cause }];
        if let Some(workers) = scale_to {
            // Serving with no reload running: a scale is not refused here.
            if let Ok(scaled) = self.handle_scale(workers) {
                commands.push(Command::Scaling { workers });
                commands.extend(scaled);
            }
        }
        commands
    }

    /// A replacement failed before it was ready: the reload (or recycle) ends here, and
    /// the scale it carried with it.
    pub(super) fn abort_reload(
        &mut self,
        slot: usize,
        code: Option<i32>,
        now: std::time::Instant,
    ) -> Command {
        let cause = match self.reload.take() {
            Some(Reload::Replacing { cause, .. }) => cause,
            Some(Reload::Preparing) | None => Cause::Reload { reply: None },
        };
        if matches!(cause, Cause::Recycle(_)) {
            // The old worker keeps serving; its limit is not retried at every heartbeat.
            self.slots[slot].recycle_after = Some(now + super::recycle::RECYCLE_BACKOFF);
        }
        Command::ReloadFailed { slot, code, cause }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::tests::{replaced, rss, serving, settings, started, started_with, RELOAD};
    use crate::fleet::Settings;
    use genro_shared::exit;
    use std::time::Instant;

    #[test]
    fn a_requested_reload_holds_other_reloads_and_scaling_until_prepared_or_abandoned() {
        let (mut fleet, _now) = serving(2);
        assert_eq!(fleet.handle_reload_requested(), Ok(()));
        assert!(fleet.is_reloading());
        assert_eq!(fleet.handle_reload_requested(), Err(Refused::Reloading));
        assert_eq!(fleet.handle_scale(3), Err(Refused::Reloading));
        // Abandoned: nothing was touched, and a new request is taken.
        fleet.handle_reload_abandoned();
        assert!(!fleet.is_reloading());
        assert_eq!(fleet.handle_reload_requested(), Ok(()));
        // Prepared: the replacement starts with slot 0.
        assert_eq!(
            fleet.handle_reload(None, 2).unwrap(),
            vec![Command::Spawn {
                slot: 0,
                generation: 2
            }]
        );
        // Abandoning is only for a reload that has not started replacing.
        fleet.handle_reload_abandoned();
        assert!(fleet.is_reloading());
        let (mut starting, _) = started(1);
        assert_eq!(starting.handle_reload_requested(), Err(Refused::Starting));
    }

    #[test]
    fn reload_replaces_slots_one_at_a_time() {
        let (mut fleet, now) = serving(2);
        assert_eq!(
            fleet.handle_reload(None, 2).unwrap(),
            vec![Command::Spawn {
                slot: 0,
                generation: 2
            }]
        );
        assert_eq!(fleet.handle_reload(None, 2), Err(Refused::Reloading));
        fleet.handle_spawned(0, 2, 200, now);
        // Both serve slot 0 until the new one is ready; then the old one drains.
        assert_eq!(
            fleet.handle_ready(200, now),
            vec![
                Command::Drain(100),
                Command::Spawn {
                    slot: 1,
                    generation: 2
                }
            ]
        );
        assert!(
            fleet.handle_exited(100, Some(0), now).is_empty(),
            "a retired worker is not respawned"
        );
        assert_eq!(
            replaced(&mut fleet, 1, 2, 201, now),
            vec![Command::Drain(101), Command::Reloaded { cause: RELOAD }]
        );
        assert!(!fleet.is_reloading());
        assert_eq!(fleet.slots()[0].worker.as_ref().unwrap().pid, 200);
    }

    #[test]
    fn failed_replacement_aborts_the_reload_and_keeps_the_old_worker() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(None, 2).unwrap();
        fleet.handle_spawned(0, 2, 200, now);
        assert_eq!(
            fleet.handle_exited(200, Some(exit::APP_LOAD), now),
            vec![Command::ReloadFailed {
                slot: 0,
                code: Some(exit::APP_LOAD),
                cause: RELOAD
            }]
        );
        assert!(!fleet.is_reloading());
        assert_eq!(fleet.phase(), Phase::Serving);
        assert_eq!(fleet.slots()[0].worker.as_ref().unwrap().pid, 100);
        assert!(
            fleet.poll_deadline().is_none_or(|t| t > now),
            "no respawn of the old worker"
        );
    }

    /// Replaces both slots of `serving(2)` (pids 100, 101 -> 200, 201); returns what the
    /// last ready worker led to.
    fn replace_both(fleet: &mut Fleet, now: Instant) -> Vec<Command> {
        replaced(fleet, 0, 2, 200, now);
        replaced(fleet, 1, 2, 201, now)
    }

    #[test]
    fn a_reload_answers_its_peer_when_it_completes() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(Some(7), 2).unwrap();
        assert_eq!(
            replace_both(&mut fleet, now),
            vec![
                Command::Drain(101),
                Command::Reloaded {
                    cause: Cause::Reload { reply: Some(7) }
                }
            ],
            "same worker count: no scaling"
        );
    }

    #[test]
    fn a_second_reload_while_one_runs_is_refused_and_the_first_keeps_its_peer() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(Some(1), 2).unwrap();
        assert_eq!(fleet.handle_reload_requested(), Err(Refused::Reloading));
        assert_eq!(fleet.handle_reload(Some(2), 3), Err(Refused::Reloading));
        assert_eq!(
            replace_both(&mut fleet, now).last(),
            Some(&Command::Reloaded {
                cause: Cause::Reload { reply: Some(1) }
            }),
            "the refused reload's worker count is not applied either"
        );
        assert_eq!(fleet.size(), 2);
    }

    #[test]
    fn a_scale_asked_by_the_reloaded_config_is_applied_after_the_reload() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(None, 3).unwrap();
        assert_eq!(fleet.handle_scale(4), Err(Refused::Reloading));
        assert_eq!(fleet.size(), 2, "not while the reload walks the slots");
        assert_eq!(
            replace_both(&mut fleet, now),
            vec![
                Command::Drain(101),
                Command::Reloaded { cause: RELOAD },
                Command::Scaling { workers: 3 },
                Command::Bind(2),
                Command::Spawn {
                    slot: 2,
                    generation: 1
                }
            ]
        );
        assert_eq!(fleet.size(), 3);
        assert!(!fleet.is_reloading());
    }

    #[test]
    fn a_smaller_worker_count_drains_the_last_slots_after_the_reload() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(None, 1).unwrap();
        assert_eq!(
            replace_both(&mut fleet, now),
            vec![
                Command::Drain(101),
                Command::Reloaded { cause: RELOAD },
                Command::Scaling { workers: 1 },
                Command::Drain(201)
            ]
        );
        assert_eq!(fleet.size(), 1);
    }

    #[test]
    fn a_failed_reload_answers_its_peer_and_drops_its_scale() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(Some(3), 4).unwrap();
        fleet.handle_spawned(0, 2, 200, now);
        assert_eq!(
            fleet.handle_exited(200, Some(1), now),
            vec![Command::ReloadFailed {
                slot: 0,
                code: Some(1),
                cause: Cause::Reload { reply: Some(3) }
            }]
        );
        assert_eq!(fleet.size(), 2);
        // The next reload, to the same count, does not scale to the dropped one.
        fleet.handle_reload(None, 2).unwrap();
        replaced(&mut fleet, 0, 3, 300, now);
        assert_eq!(
            replaced(&mut fleet, 1, 2, 301, now),
            vec![Command::Drain(101), Command::Reloaded { cause: RELOAD }]
        );
    }

    #[test]
    fn a_replacement_that_cannot_start_fails_the_reload_with_its_peer() {
        let (mut fleet, now) = serving(2);
        fleet.handle_reload(Some(5), 3).unwrap();
        assert_eq!(
            fleet.handle_spawn_failed(0, 2, now),
            vec![Command::ReloadFailed {
                slot: 0,
                code: None,
                cause: Cause::Reload { reply: Some(5) }
            }]
        );
        assert!(!fleet.is_reloading());
        assert_eq!(fleet.size(), 2);
    }

    #[test]
    fn replacing_tells_a_reload_from_a_recycle() {
        let (mut fleet, now) = started_with(
            1,
            Settings {
                max_rss: 10,
                ..settings()
            },
        );
        fleet.handle_ready(100, now);
        assert_eq!(fleet.replacing(), None);
        fleet.handle_reload_requested().unwrap();
        assert_eq!(fleet.replacing(), None, "preparing replaces nothing yet");
        fleet.handle_reload(Some(4), 1).unwrap();
        assert_eq!(fleet.replacing(), Some(Cause::Reload { reply: Some(4) }));
        replaced(&mut fleet, 0, 2, 101, now);
        assert_eq!(fleet.replacing(), None);
        for _ in 0..crate::fleet::recycle::RSS_BEATS {
            fleet.handle_heartbeat(101, rss(11), now);
        }
        let why = crate::fleet::Why::Rss { rss: 11, max: 10 };
        assert_eq!(fleet.replacing(), Some(Cause::Recycle(why)));
        fleet.handle_spawned(0, 3, 102, now);
        assert_eq!(
            fleet.handle_exited(102, None, now),
            vec![Command::ReloadFailed {
                slot: 0,
                code: None,
                cause: Cause::Recycle(why)
            }],
            "a recycle has no peer to answer"
        );
    }

    #[test]
    fn a_stop_during_a_reload_ends_it_without_an_outcome() {
        let (mut fleet, now) = serving(1);
        fleet.handle_reload(Some(6), 2).unwrap();
        fleet.handle_spawned(0, 2, 200, now);
        assert_eq!(
            fleet.handle_stop(now, 0),
            vec![Command::Drain(100), Command::Drain(200)]
        );
        assert!(!fleet.is_reloading());
        assert!(fleet.handle_exited(200, None, now).is_empty());
        assert_eq!(
            fleet.handle_exited(100, Some(0), now),
            vec![Command::Exit(0)]
        );
    }
}
