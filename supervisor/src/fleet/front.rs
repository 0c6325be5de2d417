//! The HTTP/3 front in the fleet: one process beside the slots, spawned, respawned with its
//! own backoff, and drained first on a stop (the workers are held until it is gone).

use super::respawn::Respawn;
use super::{Command, Fleet, Phase, Unit, Worker, WorkerState};
use genro_shared::exit;
use std::time::Instant;

/// The HTTP/3 front: one process, respawned like a slot's worker.
#[derive(Debug, Default)]
pub struct Front {
    pub(super) generation: u64,
    /// The running front process.
    pub process: Option<Worker>,
    pub(super) respawn: Respawn,
}

impl Fleet {
    /// The fleet also runs the HTTP/3 front.
    pub fn with_front(mut self) -> Self {
        self.front = Some(Front::default());
        self
    }

    /// The HTTP/3 front, if any.
    pub fn front(&self) -> Option<&Front> {
        self.front.as_ref()
    }

    /// Whether `pid` is the HTTP/3 front.
    pub fn is_front(&self, pid: u32) -> bool {
        self.front_pid() == Some(pid)
    }

    /// The running front's pid.
    pub fn front_pid(&self) -> Option<u32> {
        self.front.as_ref()?.process.as_ref().map(|w| w.pid)
    }

    pub(super) fn front_mut(&mut self, pid: u32) -> Option<&mut Worker> {
        self.front
            .as_mut()?
            .process
            .as_mut()
            .filter(|w| w.pid == pid)
    }

    pub(super) fn spawn_front(&mut self) -> Option<Command> {
        let front = self.front.as_mut()?;
        front.generation += 1;
        front.respawn.at = None;
        Some(Command::SpawnFront {
            generation: front.generation,
        })
    }

    /// The executor started the front process.
    pub fn handle_spawned_front(
        &mut self,
        generation: u64,
        pid: u32,
        now: Instant,
    ) -> Vec<Command> {
        let Some(front) = self.front.as_mut() else {
            return Vec::new();
        };
        front.process = Some(Worker::new(pid, generation, now));
        if let Phase::Stopping { .. } = self.phase {
            return vec![Command::Drain(pid)];
        }
        Vec::new()
    }

    /// The executor could not start the front process.
    pub fn handle_front_spawn_failed(&mut self, now: Instant) -> Vec<Command> {
        self.schedule_front_respawn(now).into_iter().collect()
    }

    pub(super) fn schedule_front_respawn(&mut self, now: Instant) -> Option<Command> {
        let front = self.front.as_mut()?;
        let delay = front.respawn.schedule(now);
        Some(Command::Backoff {
            unit: Unit::Front,
            delay,
            failures: front.respawn.failures,
        })
    }

    /// The front exited: while stopping, the held workers drain now; before it was ever
    /// ready with a fatal code, the fleet stops; otherwise it respawns.
    pub(super) fn front_exited(&mut self, code: Option<i32>, now: Instant) -> Vec<Command> {
        let Some(front) = self.front.as_mut() else {
            return Vec::new();
        };
        let Some(gone) = front.process.take() else {
            return Vec::new();
        };
        match self.phase {
            Phase::Stopping { .. } | Phase::Done if self.held => return self.release_workers(now),
            Phase::Stopping { .. } | Phase::Done => return self.exit_if_empty(),
            Phase::Starting | Phase::Serving => {}
        }
        if let Some(code) = code.filter(|c| exit::is_fatal(*c)) {
            if gone.state == WorkerState::Starting && self.phase == Phase::Starting {
                return self.handle_stop(now, code);
            }
        }
        front.respawn.forgive(&gone, now);
        self.schedule_front_respawn(now).into_iter().collect()
    }
}
