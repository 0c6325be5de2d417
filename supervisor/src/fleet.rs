//! The fleet as a state machine on explicit time: inputs (start, spawned, ready, exited,
//! tick, stop) in, commands (spawn, drain, kill, serving, exit) out. No processes, no clocks,
//! so the respawn, backoff, fatal-start and drain rules are tested on virtual time.
//!
//! Lifecycle:
//! 1. `start` spawns every slot; when every worker reported ready, `Serving` is emitted once.
//! 2. A worker that exits is respawned into its slot after a backoff that doubles on each
//!    consecutive failure (0.1 s .. 30 s) and resets once a worker stayed up 10 s.
//! 3. A worker that exits with a fatal code (app cannot load, lifespan startup failed)
//!    before it was ever ready stops the whole fleet with that code: no respawn loop.
//! 4. `stop` drains every worker; past the deadline the rest are killed; when the last one
//!    exited, `Exit` carries the process exit code.

use genro_shared::exit;
use std::time::{Duration, Instant};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start a worker process for `slot`.
    Spawn {
        /// Slot index.
        slot: usize,
        /// The slot's new generation.
        generation: u64,
    },
    /// Ask a worker to drain and exit.
    Drain(u32),
    /// Kill a worker that did not exit in time.
    Kill(u32),
    /// Every slot is ready for the first time.
    Serving,
    /// The fleet is gone: exit with this code.
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Starting,
    Ready,
    Draining,
}

#[derive(Debug)]
struct Worker {
    pid: u32,
    state: WorkerState,
    since: Instant,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    worker: Option<Worker>,
    respawn_at: Option<Instant>,
    backoff: Duration,
    restarts: u64,
}

/// Where the fleet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every worker's first ready.
    Starting,
    /// Serving.
    Serving,
    /// Draining; `code` is the exit code once empty.
    Stopping {
        /// Kill what is left after this.
        deadline: Instant,
        /// Exit code.
        code: i32,
    },
    /// Exit was emitted.
    Done,
}

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    slots: Vec<Slot>,
    phase: Phase,
    grace: Duration,
}

impl Fleet {
    /// A fleet of `workers` slots with the drain grace period.
    pub fn new(workers: usize, grace: Duration) -> Self {
        let slots = (0..workers)
            .map(|_| Slot {
                generation: 0,
                worker: None,
                respawn_at: None,
                backoff: BACKOFF_START,
                restarts: 0,
            })
            .collect();
        Fleet {
            slots,
            phase: Phase::Starting,
            grace,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Total restarts so far.
    pub fn restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.restarts).sum()
    }

    /// Spawns every slot.
    pub fn handle_start(&mut self) -> Vec<Command> {
        (0..self.slots.len()).map(|slot| self.spawn(slot)).collect()
    }

    fn spawn(&mut self, slot: usize) -> Command {
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.respawn_at = None;
        Command::Spawn {
            slot,
            generation: s.generation,
        }
    }

    /// The executor started the process for `slot`.
    pub fn handle_spawned(&mut self, slot: usize, pid: u32, now: Instant) -> Vec<Command> {
        if let Some(s) = self.slots.get_mut(slot) {
            s.worker = Some(Worker {
                pid,
                state: WorkerState::Starting,
                since: now,
            });
        }
        if let Phase::Stopping { .. } = self.phase {
            return vec![Command::Drain(pid)];
        }
        Vec::new()
    }

    /// The executor could not start a process for `slot`.
    pub fn handle_spawn_failed(&mut self, slot: usize, now: Instant) -> Vec<Command> {
        self.schedule_respawn(slot, now);
        Vec::new()
    }

    /// A worker reported ready.
    pub fn handle_ready(&mut self, pid: u32, now: Instant) -> Vec<Command> {
        let Some(worker) = self.worker_mut(pid) else {
            return Vec::new();
        };
        if worker.state == WorkerState::Starting {
            worker.state = WorkerState::Ready;
            worker.since = now;
        }
        if self.phase == Phase::Starting
            && self.slots.iter().all(|s| {
                s.worker
                    .as_ref()
                    .is_some_and(|w| w.state == WorkerState::Ready)
            })
        {
            self.phase = Phase::Serving;
            return vec![Command::Serving];
        }
        Vec::new()
    }

    /// A worker process exited with `code` (`None`: killed by a signal).
    pub fn handle_exited(&mut self, pid: u32, code: Option<i32>, now: Instant) -> Vec<Command> {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))
        else {
            return Vec::new();
        };
        let worker = self.slots[slot]
            .worker
            .take()
            .expect("position found a worker");
        match self.phase {
            Phase::Stopping { .. } | Phase::Done => return self.exit_if_empty(),
            Phase::Starting | Phase::Serving => {}
        }
        let never_ready = worker.state == WorkerState::Starting;
        if let Some(code) = code.filter(|c| exit::is_fatal(*c)) {
            if never_ready {
                return self.handle_stop(now, code);
            }
        }
        let s = &mut self.slots[slot];
        if worker.state == WorkerState::Ready && now.duration_since(worker.since) >= STABLE_AFTER {
            s.backoff = BACKOFF_START;
        }
        self.schedule_respawn(slot, now);
        Vec::new()
    }

    fn schedule_respawn(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        s.restarts += 1;
        s.respawn_at = Some(now + s.backoff);
        s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
    }

    /// When the executor should call [`Fleet::handle_tick`] next.
    pub fn poll_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Done => None,
            _ => self.slots.iter().filter_map(|s| s.respawn_at).min(),
        }
    }

    /// Respawn slots whose backoff elapsed; kill stragglers past the drain deadline.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<Command> {
        match self.phase {
            Phase::Stopping { deadline, .. } if now >= deadline => self
                .slots
                .iter()
                .filter_map(|s| s.worker.as_ref().map(|w| Command::Kill(w.pid)))
                .collect(),
            Phase::Starting | Phase::Serving => (0..self.slots.len())
                .filter(|&i| self.slots[i].respawn_at.is_some_and(|t| t <= now))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|slot| self.spawn(slot))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Drain everything and exit with `code` once empty. A second stop kills at once.
    pub fn handle_stop(&mut self, now: Instant, code: i32) -> Vec<Command> {
        if let Phase::Stopping { code: first, .. } = self.phase {
            self.phase = Phase::Stopping {
                deadline: now,
                code: first,
            };
            return self.handle_tick(now);
        }
        if self.phase == Phase::Done {
            return Vec::new();
        }
        // Workers get the grace to finish requests, plus time for lifespan shutdown.
        self.phase = Phase::Stopping {
            deadline: now + self.grace + Duration::from_secs(5),
            code,
        };
        let mut commands = Vec::new();
        for s in &mut self.slots {
            s.respawn_at = None;
            if let Some(w) = &mut s.worker {
                w.state = WorkerState::Draining;
                commands.push(Command::Drain(w.pid));
            }
        }
        commands.extend(self.exit_if_empty());
        commands
    }

    fn exit_if_empty(&mut self) -> Vec<Command> {
        if let Phase::Stopping { code, .. } = self.phase {
            if self.slots.iter().all(|s| s.worker.is_none()) {
                self.phase = Phase::Done;
                return vec![Command::Exit(code)];
            }
        }
        Vec::new()
    }

    fn worker_mut(&mut self, pid: u32) -> Option<&mut Worker> {
        self.slots
            .iter_mut()
            .filter_map(|s| s.worker.as_mut())
            .find(|w| w.pid == pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(n: usize) -> (Fleet, Instant) {
        let now = Instant::now();
        let mut fleet = Fleet::new(n, Duration::from_secs(10));
        let spawns = fleet.handle_start();
        assert_eq!(spawns.len(), n);
        for slot in 0..n {
            fleet.handle_spawned(slot, 100 + slot as u32, now);
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

    #[test]
    fn crashed_worker_respawns_into_its_slot_with_backoff() {
        let (mut fleet, now) = started(2);
        fleet.handle_ready(100, now);
        fleet.handle_ready(101, now);
        assert!(fleet.handle_exited(101, None, now).is_empty());
        assert_eq!(fleet.poll_deadline(), Some(now + BACKOFF_START));
        assert!(fleet.handle_tick(now).is_empty(), "not before the backoff");
        let t1 = now + BACKOFF_START;
        assert_eq!(
            fleet.handle_tick(t1),
            vec![Command::Spawn {
                slot: 1,
                generation: 2
            }]
        );
        // It crashes again right away: the backoff doubles.
        fleet.handle_spawned(1, 102, t1);
        fleet.handle_exited(102, Some(1), t1);
        assert_eq!(fleet.poll_deadline(), Some(t1 + BACKOFF_START * 2));
        assert_eq!(fleet.restarts(), 2);
    }

    #[test]
    fn backoff_resets_after_a_stable_run() {
        let (mut fleet, now) = started(1);
        fleet.handle_ready(100, now);
        fleet.handle_exited(100, None, now);
        let t1 = now + BACKOFF_START;
        fleet.handle_tick(t1);
        fleet.handle_spawned(0, 101, t1);
        fleet.handle_ready(101, t1);
        let t2 = t1 + STABLE_AFTER;
        fleet.handle_exited(101, None, t2);
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
        let (mut fleet, now) = started(1);
        fleet.handle_ready(100, now);
        assert!(fleet
            .handle_exited(100, Some(exit::APP_LOAD), now)
            .is_empty());
        assert_eq!(fleet.phase(), Phase::Serving);
    }

    #[test]
    fn stop_drains_then_kills_after_deadline() {
        let (mut fleet, now) = started(2);
        fleet.handle_ready(100, now);
        fleet.handle_ready(101, now);
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
        let (mut fleet, now) = started(1);
        fleet.handle_ready(100, now);
        fleet.handle_stop(now, 0);
        assert_eq!(fleet.handle_stop(now, 0), vec![Command::Kill(100)]);
    }

    #[test]
    fn stop_with_no_workers_exits() {
        let (mut fleet, now) = started(1);
        fleet.handle_exited(100, None, now);
        assert_eq!(fleet.handle_stop(now, 0), vec![Command::Exit(0)]);
    }
}
