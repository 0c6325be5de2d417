//! The fleet's rules on virtual time.

use super::respawn::{BACKOFF_START, STABLE_AFTER};
use super::*;

/// A reload nobody waits for (SIGHUP).
pub(super) const RELOAD: Cause = Cause::Reload { reply: None };

pub(super) fn settings() -> Settings {
    Settings {
        grace: Duration::from_secs(10),
        executor_grace: Duration::from_secs(3),
        worker_timeout: Duration::from_secs(30),
        max_requests: 0,
        max_requests_jitter: 0,
        max_lifetime: Duration::ZERO,
        max_lifetime_jitter: Duration::ZERO,
        max_rss: 0,
    }
}

pub(super) fn started(n: usize) -> (Fleet, Instant) {
    started_with(n, settings())
}

pub(super) fn started_with(n: usize, settings: Settings) -> (Fleet, Instant) {
    let now = Instant::now();
    let mut fleet = Fleet::new(n, settings);
    let spawns = fleet.handle_start();
    assert_eq!(spawns.len(), n);
    for slot in 0..n {
        fleet.handle_spawned(slot, 1, 100 + slot as u32, now);
    }
    (fleet, now)
}

pub(super) fn serving(n: usize) -> (Fleet, Instant) {
    let (mut fleet, now) = started(n);
    for slot in 0..n {
        fleet.handle_ready(100 + slot as u32, now);
    }
    (fleet, now)
}

#[test]
fn serving_once_every_worker_is_ready() {
    let (mut fleet, now) = started(2);
    assert!(fleet.handle_ready(100, now).is_empty());
    assert_eq!(fleet.handle_ready(101, now), vec![Command::Serving]);
    assert_eq!(fleet.phase(), Phase::Serving);
    assert!(
        fleet.handle_ready(101, now).is_empty(),
        "Serving is emitted once"
    );
}

/// The replacement `pid` for `slot` started and is ready; returns what followed.
pub(super) fn replaced(
    fleet: &mut Fleet,
    slot: usize,
    generation: u64,
    pid: u32,
    now: Instant,
) -> Vec<Command> {
    fleet.handle_spawned(slot, generation, pid, now);
    fleet.handle_ready(pid, now)
}

pub(super) fn served(served: u64) -> Beat {
    Beat {
        served,
        ..Beat::default()
    }
}

#[test]
fn crashed_worker_respawns_into_its_slot_with_backoff() {
    let (mut fleet, now) = serving(2);
    assert_eq!(
        fleet.handle_exited(101, None, now),
        vec![Command::Backoff {
            unit: Unit::Slot(1),
            delay: Duration::ZERO,
            failures: 1
        }]
    );
    assert_eq!(
        fleet.poll_deadline(),
        Some(now),
        "the first respawn is at once"
    );
    let t1 = now;
    assert_eq!(
        fleet.handle_tick(t1),
        vec![Command::Spawn {
            slot: 1,
            generation: 2
        }]
    );
    // It crashes again right away: the backoff starts, then doubles.
    fleet.handle_spawned(1, 2, 102, t1);
    fleet.handle_exited(102, Some(1), t1);
    assert_eq!(fleet.poll_deadline(), Some(t1 + BACKOFF_START));
    assert!(fleet.handle_tick(t1).is_empty(), "not before the backoff");
    let t2 = t1 + BACKOFF_START;
    fleet.handle_tick(t2);
    fleet.handle_spawned(1, 3, 103, t2);
    fleet.handle_exited(103, Some(1), t2);
    assert_eq!(fleet.poll_deadline(), Some(t2 + BACKOFF_START * 2));
    assert_eq!(fleet.restarts(), 3);
}

#[test]
fn backoff_resets_after_a_stable_run() {
    let (mut fleet, now) = serving(1);
    // Two quick failures: the backoff grew.
    fleet.handle_exited(100, None, now);
    fleet.handle_tick(now);
    fleet.handle_spawned(0, 2, 101, now);
    fleet.handle_exited(101, None, now);
    let t1 = now + BACKOFF_START;
    fleet.handle_tick(t1);
    fleet.handle_spawned(0, 3, 102, t1);
    fleet.handle_ready(102, t1);
    let t2 = t1 + STABLE_AFTER;
    fleet.handle_heartbeat(102, served(0), t2);
    // After a stable run, the next failure respawns at once again...
    fleet.handle_exited(102, None, t2);
    assert_eq!(fleet.poll_deadline(), Some(t2));
    fleet.handle_tick(t2);
    fleet.handle_spawned(0, 4, 103, t2);
    // ...and the one after starts the backoff from the beginning.
    fleet.handle_exited(103, None, t2);
    assert_eq!(fleet.poll_deadline(), Some(t2 + BACKOFF_START));
}

#[test]
fn app_that_cannot_load_stops_the_fleet() {
    let (mut fleet, now) = started(2);
    let commands = fleet.handle_exited(100, Some(exit::APP_LOAD), now);
    assert_eq!(commands, vec![Command::Drain(101)]);
    assert_eq!(
        fleet.handle_exited(101, Some(0), now),
        vec![Command::Exit(exit::APP_LOAD)]
    );
}

#[test]
fn fatal_code_after_ready_is_a_crash_not_a_stop() {
    let (mut fleet, now) = serving(1);
    assert!(matches!(
        fleet.handle_exited(100, Some(exit::APP_LOAD), now)[..],
        [Command::Backoff {
            unit: Unit::Slot(0),
            ..
        }]
    ));
    assert_eq!(fleet.phase(), Phase::Serving);
}

#[test]
fn stop_drains_then_kills_after_deadline() {
    let (mut fleet, now) = serving(2);
    assert_eq!(
        fleet.handle_stop(now, 0),
        vec![Command::Drain(100), Command::Drain(101)]
    );
    assert!(fleet.handle_exited(100, Some(0), now).is_empty());
    let deadline = fleet.poll_deadline().unwrap();
    assert!(fleet.handle_tick(now).is_empty());
    assert_eq!(fleet.handle_tick(deadline), vec![Command::Kill(101)]);
    assert_eq!(
        fleet.handle_exited(101, None, deadline),
        vec![Command::Exit(0)]
    );
    assert_eq!(fleet.phase(), Phase::Done);
}

#[test]
fn second_stop_kills_at_once() {
    let (mut fleet, now) = serving(1);
    fleet.handle_stop(now, 0);
    assert_eq!(fleet.handle_stop(now, 0), vec![Command::Kill(100)]);
}

#[test]
fn stop_with_no_workers_exits() {
    let (mut fleet, now) = started(1);
    fleet.handle_exited(100, None, now);
    assert_eq!(fleet.handle_stop(now, 0), vec![Command::Exit(0)]);
}

#[test]
fn silent_worker_is_killed_once() {
    let (mut fleet, now) = serving(1);
    let late = now + Duration::from_secs(30);
    assert_eq!(fleet.poll_deadline(), Some(late));
    fleet.handle_heartbeat(100, served(5), now + Duration::from_secs(1));
    assert!(
        fleet.handle_tick(late).is_empty(),
        "a heartbeat moved the deadline"
    );
    let later = now + Duration::from_secs(31);
    assert_eq!(
        fleet.handle_tick(later),
        vec![Command::Hung {
            pid: 100,
            why: Hang::Silent
        }]
    );
    assert!(fleet.handle_tick(later).is_empty());
}

#[test]
fn blocked_loop_is_a_hang_although_heartbeats_come() {
    let (mut fleet, now) = serving(1);
    let beat = |secs| Beat {
        loop_stalled: Duration::from_secs(secs),
        ..Beat::default()
    };
    assert!(fleet.handle_heartbeat(100, beat(29), now).is_empty());
    let hung = vec![Command::Hung {
        pid: 100,
        why: Hang::LoopBlocked(Duration::from_secs(30)),
    }];
    assert_eq!(fleet.handle_heartbeat(100, beat(30), now), hung);
    assert!(
        fleet.handle_heartbeat(100, beat(31), now).is_empty(),
        "one kill per hang"
    );
}

#[test]
fn crash_loop_counts_failures_until_a_stable_run() {
    let (mut fleet, mut now) = serving(1);
    let mut pid = 100;
    for failure in 1..=4u32 {
        let commands = fleet.handle_exited(pid, Some(1), now);
        let Some(Command::Backoff {
            failures, delay, ..
        }) = commands.last().cloned()
        else {
            panic!("no backoff in {commands:?}");
        };
        assert_eq!(failures, failure);
        assert_eq!(fleet.respawning(now), vec![(Unit::Slot(0), delay, failure)]);
        now += delay;
        fleet.handle_tick(now);
        pid += 1;
        fleet.handle_spawned(0, u64::from(failure) + 1, pid, now);
    }
    assert!(fleet.respawning(now).is_empty());
    fleet.handle_ready(pid, now);
    now += STABLE_AFTER;
    let commands = fleet.handle_exited(pid, None, now);
    assert!(matches!(
        commands.last(),
        Some(Command::Backoff { failures: 1, .. })
    ));
}

/// A heartbeat reporting `rss` bytes resident.
pub(super) fn rss(rss: u64) -> Beat {
    Beat {
        rss,
        ..Beat::default()
    }
}

#[test]
fn a_worker_at_max_requests_retires_at_once_and_its_successor_starts() {
    let (mut fleet, now) = serving(2);
    assert_eq!(
        fleet.handle_retire(100, 200),
        vec![
            Command::Recycle {
                slot: 0,
                pid: 100,
                why: Why::MaxRequests { limit: 200 }
            },
            Command::Spawn {
                slot: 0,
                generation: 2
            }
        ]
    );
    assert!(fleet.handle_retire(100, 200).is_empty(), "retired once");
    assert!(
        !fleet.is_reloading(),
        "not a reload: others may recycle too"
    );
    assert_eq!(
        fleet.handle_retire(101, 200),
        vec![
            Command::Recycle {
                slot: 1,
                pid: 101,
                why: Why::MaxRequests { limit: 200 }
            },
            Command::Spawn {
                slot: 1,
                generation: 2
            }
        ]
    );
    fleet.handle_spawned(0, 2, 200, now);
    assert!(
        fleet.handle_exited(100, Some(0), now).is_empty(),
        "the retired worker is not respawned"
    );
    assert!(fleet.handle_ready(200, now).is_empty());
    assert_eq!(fleet.slots()[0].worker.as_ref().unwrap().pid, 200);
    assert_eq!(fleet.restarts(), 0, "a recycle is not a crash");
}

#[test]
fn a_worker_retiring_during_a_reload_leaves_its_slot_to_the_reload() {
    let (mut fleet, now) = serving(1);
    fleet.handle_reload(None, 1).unwrap();
    fleet.handle_spawned(0, 2, 200, now);
    // The reload's replacement is starting: no second one.
    assert_eq!(
        fleet.handle_retire(100, 50),
        vec![Command::Recycle {
            slot: 0,
            pid: 100,
            why: Why::MaxRequests { limit: 50 }
        }]
    );
    // The replacement fails: the reload ends, and the empty slot respawns.
    let commands = fleet.handle_exited(200, Some(1), now);
    assert!(matches!(commands[0], Command::ReloadFailed { slot: 0, .. }));
    assert!(
        matches!(
            commands[1],
            Command::Backoff {
                unit: Unit::Slot(0),
                ..
            }
        ),
        "{commands:?}"
    );
}

/// `n` ready workers under `max_lifetime = limit`.
fn serving_with_lifetime(n: usize, limit: Duration) -> (Fleet, Instant) {
    let (mut fleet, now) = started_with(
        n,
        Settings {
            max_lifetime: limit,
            ..settings()
        },
    );
    for slot in 0..n {
        fleet.handle_ready(100 + slot as u32, now);
    }
    (fleet, now)
}

#[test]
fn max_lifetime_replaces_the_slot_new_worker_first() {
    let limit = Duration::from_secs(60);
    let (mut fleet, now) = serving_with_lifetime(2, limit);
    assert!(fleet
        .handle_heartbeat(100, Beat::default(), now + Duration::from_secs(59))
        .is_empty());
    let later = now + Duration::from_secs(61);
    let why = Why::Lifetime { limit };
    assert_eq!(
        fleet.handle_heartbeat(100, Beat::default(), later),
        vec![Command::Spawn {
            slot: 0,
            generation: 2
        }],
        "the successor first; the replacement counts when the old worker leaves"
    );
    assert!(
        fleet
            .handle_heartbeat(101, Beat::default(), later)
            .is_empty(),
        "one replacement at a time; slot 1 is asked again at its next heartbeat"
    );
    assert_eq!(
        replaced(&mut fleet, 0, 2, 200, later),
        vec![
            Command::Recycle {
                slot: 0,
                pid: 100,
                why
            },
            Command::Drain(100),
            Command::Reloaded {
                cause: Cause::Recycle(why)
            }
        ]
    );
    assert_eq!(
        fleet.handle_heartbeat(101, Beat::default(), later),
        vec![Command::Spawn {
            slot: 1,
            generation: 2
        }]
    );
    assert_eq!(why.to_string(), "max_lifetime 60s reached");
}

#[test]
fn max_rss_needs_three_heartbeats_in_a_row_over_it() {
    let max = 100 << 20;
    let (mut fleet, now) = started_with(
        1,
        Settings {
            max_rss: max,
            ..settings()
        },
    );
    fleet.handle_ready(100, now);
    let over = max + (1 << 20);
    assert!(fleet.handle_heartbeat(100, rss(over), now).is_empty());
    assert!(fleet.handle_heartbeat(100, rss(over), now).is_empty());
    assert!(
        fleet.handle_heartbeat(100, rss(max), now).is_empty(),
        "a dip resets the count"
    );
    assert!(fleet.handle_heartbeat(100, rss(over), now).is_empty());
    assert!(fleet.handle_heartbeat(100, rss(over), now).is_empty());
    let why = Why::Rss { rss: over, max };
    assert_eq!(
        fleet.handle_heartbeat(100, rss(over), now),
        vec![Command::Spawn {
            slot: 0,
            generation: 2
        }]
    );
    assert_eq!(
        why.to_string(),
        "rss 101 MiB over max_rss 100 MiB for 3 heartbeats"
    );
    assert_eq!(fleet.slots()[0].worker.as_ref().unwrap().rss, over);
}

#[test]
fn scale_up_binds_and_spawns_scale_down_drains_and_closes() {
    let (mut fleet, now) = serving(1);
    assert_eq!(
        fleet.handle_scale(3).unwrap(),
        vec![
            Command::Bind(1),
            Command::Spawn {
                slot: 1,
                generation: 1
            },
            Command::Bind(2),
            Command::Spawn {
                slot: 2,
                generation: 1
            },
        ]
    );
    fleet.handle_spawned(1, 1, 101, now);
    fleet.handle_spawned(2, 1, 102, now);
    assert_eq!(fleet.size(), 3);
    assert_eq!(
        fleet.handle_scale(1).unwrap(),
        vec![Command::Drain(101), Command::Drain(102)]
    );
    assert_eq!(fleet.size(), 1);
    assert_eq!(
        fleet.handle_exited(101, Some(0), now),
        vec![Command::Close(1)]
    );
    assert_eq!(fleet.handle_exited(102, None, now), vec![Command::Close(2)]);
    assert!(
        fleet
            .poll_deadline()
            .is_none_or(|t| t > now + Duration::from_secs(1)),
        "removed slots are not respawned"
    );
}

/// A serving fleet of `n` workers (pids 100..) and a front (pid 900).
fn serving_with_front(n: usize) -> (Fleet, Instant) {
    let now = Instant::now();
    let mut fleet = Fleet::new(n, settings()).with_front();
    let commands = fleet.handle_start();
    assert_eq!(
        commands.last(),
        Some(&Command::SpawnFront { generation: 1 })
    );
    for slot in 0..n {
        fleet.handle_spawned(slot, 1, 100 + slot as u32, now);
        fleet.handle_ready(100 + slot as u32, now);
    }
    assert_eq!(fleet.phase(), Phase::Starting, "the front is not ready yet");
    fleet.handle_spawned_front(1, 900, now);
    assert_eq!(fleet.handle_ready(900, now), vec![Command::Serving]);
    (fleet, now)
}

#[test]
fn front_crash_respawns_with_its_own_backoff() {
    let (mut fleet, now) = serving_with_front(1);
    assert!(fleet.is_front(900));
    assert_eq!(
        fleet.handle_exited(900, None, now),
        vec![Command::Backoff {
            unit: Unit::Front,
            delay: Duration::ZERO,
            failures: 1
        }]
    );
    assert_eq!(
        fleet.handle_tick(now),
        vec![Command::SpawnFront { generation: 2 }]
    );
    fleet.handle_spawned_front(2, 901, now);
    fleet.handle_exited(901, Some(1), now);
    assert_eq!(fleet.respawning(now), vec![(Unit::Front, BACKOFF_START, 2)]);
    assert!(fleet.handle_tick(now).is_empty(), "not before the backoff");
    assert_eq!(fleet.restarts(), 2);
    assert_eq!(fleet.phase(), Phase::Serving);
}

#[test]
fn a_silent_front_is_killed() {
    let (mut fleet, now) = serving_with_front(1);
    let later = now + settings().worker_timeout;
    fleet.handle_heartbeat(100, served(1), later);
    assert_eq!(
        fleet.handle_tick(later),
        vec![Command::Hung {
            pid: 900,
            why: Hang::Silent
        }]
    );
}

#[test]
fn a_front_that_cannot_start_stops_the_fleet() {
    let now = Instant::now();
    let mut fleet = Fleet::new(1, settings()).with_front();
    fleet.handle_start();
    fleet.handle_spawned(0, 1, 100, now);
    fleet.handle_spawned_front(1, 900, now);
    assert_eq!(
        fleet.handle_exited(900, Some(exit::CONFIG), now),
        vec![Command::Drain(100)]
    );
    assert_eq!(
        fleet.handle_exited(100, Some(0), now),
        vec![Command::Exit(exit::CONFIG)]
    );
}

#[test]
fn stop_drains_the_front_first_and_the_workers_once_it_is_gone() {
    let (mut fleet, now) = serving_with_front(2);
    // The workers start their WebSockets' drain_grace: the front's end only when the
    // workers close them.
    assert_eq!(
        fleet.handle_stop(now, 0),
        vec![
            Command::Drain(900),
            Command::GoingAway(100),
            Command::GoingAway(101)
        ]
    );
    // The workers keep serving what the front forwards.
    assert!(fleet.handle_heartbeat(100, served(5), now).is_empty());
    let later = now + Duration::from_secs(1);
    assert_eq!(
        fleet.handle_exited(900, Some(0), later),
        vec![Command::Drain(100), Command::Drain(101)]
    );
    assert_eq!(
        fleet.poll_deadline(),
        Some(later + settings().grace + settings().executor_grace + Duration::from_secs(5)),
        "the workers get their whole grace"
    );
    fleet.handle_exited(100, Some(0), later);
    assert_eq!(
        fleet.handle_exited(101, Some(0), later),
        vec![Command::Exit(0)]
    );
}

#[test]
fn a_front_past_its_deadline_is_killed_then_the_workers_drain() {
    let (mut fleet, now) = serving_with_front(1);
    fleet.handle_stop(now, 0);
    let deadline = fleet.poll_deadline().expect("stopping has a deadline");
    assert_eq!(fleet.handle_tick(deadline), vec![Command::Kill(900)]);
    assert_eq!(
        fleet.poll_deadline(),
        Some(deadline + Duration::from_secs(1)),
        "killed again each second, not in a busy loop"
    );
    assert_eq!(
        fleet.handle_exited(900, None, deadline),
        vec![Command::Drain(100)]
    );
}

#[test]
fn a_second_stop_kills_the_front_and_the_workers() {
    let (mut fleet, now) = serving_with_front(1);
    fleet.handle_stop(now, 0);
    assert_eq!(
        fleet.handle_stop(now, 0),
        vec![Command::Kill(100), Command::Kill(900)]
    );
    fleet.handle_exited(900, None, now);
    assert_eq!(fleet.handle_exited(100, None, now), vec![Command::Exit(0)]);
}

#[test]
fn a_failed_recycle_leaves_the_worker_and_waits_before_the_next_attempt() {
    let (mut fleet, now) = serving_with_lifetime(1, Duration::from_secs(60));
    let later = now + Duration::from_secs(61);
    assert_eq!(fleet.handle_heartbeat(100, Beat::default(), later).len(), 1);
    fleet.handle_spawned(0, 2, 200, later);
    let commands = fleet.handle_exited(200, Some(3), later);
    assert!(
        matches!(commands[0], Command::ReloadFailed { .. }),
        "{commands:?}"
    );
    assert_eq!(commands.len(), 1, "the old worker serves on: no respawn");
    for s in 1..60 {
        let at = later + Duration::from_secs(s);
        assert!(
            fleet.handle_heartbeat(100, Beat::default(), at).is_empty(),
            "no new attempt {s}s after the failure"
        );
    }
    let after = later + super::recycle::RECYCLE_BACKOFF;
    assert_eq!(
        fleet.handle_heartbeat(100, Beat::default(), after),
        vec![Command::Spawn {
            slot: 0,
            generation: 3
        }]
    );
}

#[test]
fn max_requests_starts_the_successor_ahead_from_the_rate_and_the_start_up_time() {
    let (mut fleet, t0) = started_with(
        1,
        Settings {
            max_requests: 1000,
            ..settings()
        },
    );
    // The slot's worker took 2 s to start: successors are started 3 s ahead, plus the
    // second until the next heartbeat.
    let ready = t0 + Duration::from_secs(2);
    fleet.handle_ready(100, ready);
    let beat = |served| Beat {
        served,
        ..Beat::default()
    };
    let at = |s: u64| ready + Duration::from_secs(s);
    assert!(
        fleet.handle_heartbeat(100, beat(100), at(1)).is_empty(),
        "the first sample"
    );
    assert!(
        fleet.handle_heartbeat(100, beat(500), at(6)).is_empty(),
        "80 req/s, 500 to go"
    );
    assert_eq!(
        fleet.handle_heartbeat(100, beat(750), at(7)),
        vec![Command::Spawn {
            slot: 0,
            generation: 2
        }],
        "250 req/s: 250 to go is within 4 s"
    );
    // The old worker gets to its limit before its successor is ready: it retires, and
    // the successor (already starting) takes the slot; no second one.
    fleet.handle_spawned(0, 2, 200, at(7));
    assert_eq!(
        fleet.handle_retire(100, 1000),
        vec![Command::Recycle {
            slot: 0,
            pid: 100,
            why: Why::MaxRequests { limit: 1000 }
        }]
    );
    assert_eq!(
        fleet.handle_ready(200, at(8)),
        vec![Command::Reloaded {
            cause: Cause::Recycle(Why::MaxRequests { limit: 1000 })
        }],
        "promoted; the retired worker was counted already"
    );
    assert_eq!(fleet.slots()[0].worker.as_ref().unwrap().pid, 200);
}

#[test]
fn a_retire_from_a_worker_already_leaving_changes_nothing() {
    let (mut fleet, _now) = serving(2);
    fleet.handle_scale(1).unwrap();
    assert!(
        fleet.handle_retire(101, 10).is_empty(),
        "scaled down: draining already"
    );
}
