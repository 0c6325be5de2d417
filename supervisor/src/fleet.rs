//! The fleet as a state machine on explicit time: inputs (start, spawned, ready, heartbeat,
//! exited, tick, reload, scale, stop) in, commands out. No processes, no clocks, so the
//! respawn, replacement, timeout and drain rules are tested on virtual time.
//!
//! Lifecycle:
//! 1. `start` spawns every slot; when every worker reported ready, `Serving` is emitted once.
//! 2. A worker that exits is respawned into its slot: at once after a first failure, then
//!    after a backoff that doubles on each further failure in a row (0.1 s .. 30 s); the
//!    count resets once a worker stayed up 10 s. Three failures in a row is a crash loop. A worker
//!    whose heartbeats stop for `worker_timeout` is killed (and so respawned).
//! 3. A worker that exits with a fatal code (app cannot load, lifespan startup failed)
//!    before it was ever ready stops the whole fleet with that code: no respawn loop.
//! 4. Reload replaces slots one at a time: a new worker starts on the slot's socket beside
//!    the old one; when it is ready the old one drains. A new worker that fails before
//!    ready aborts the reload and the old workers keep serving. A worker past
//!    `max_lifetime` or `max_rss` is replaced the same way; one at its `max_requests`
//!    drains at once while its successor starts (`fleet/recycle.rs`). The reload's own
//!    state (its peer, the worker count it brings) and rules are in `fleet/reload.rs`.
//! 5. Scaling adds slots (bind, spawn) or drains the last ones (close once empty).
//! 6. `stop` drains every worker; past the deadline the rest are killed; when the last one
//!    exited, `Exit` carries the process exit code.

mod front;
mod recycle;
mod reload;
mod respawn;

pub use front::Front;
use genro_shared::exit;
pub use recycle::Why;
use reload::Reload;
pub use reload::{Cause, ReplyId};
use respawn::Respawn;
use std::time::{Duration, Instant};

/// The shortest span a worker's request rate is measured over.
const RATE_WINDOW: Duration = Duration::from_millis(900);

/// Failures in a row from which a slot counts as crash-looping.
pub const CRASH_LOOP: u32 = 3;

/// What the executor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind the listening socket of a new slot.
    Bind(usize),
    /// Start a worker process for `slot`.
    Spawn {
        /// Slot index.
        slot: usize,
        /// The new worker's generation.
        generation: u64,
    },
    /// Ask a worker to drain and exit.
    Drain(u32),
    /// Tell a worker a stop began while the front drains first: its WebSockets and
    /// event streams start their `drain_grace` now.
    GoingAway(u32),
    /// Kill a worker: the drain deadline passed.
    Kill(u32),
    /// A worker hangs: log its stacks if it can still tell them, then kill it.
    Hung {
        /// The worker.
        pid: u32,
        /// What was seen.
        why: Hang,
    },
    /// Start the HTTP/3 front process.
    SpawnFront {
        /// The new front's generation.
        generation: u64,
    },
    /// A slot's worker (or the front) failed; the next one starts after `delay`.
    Backoff {
        /// The slot, or the front.
        unit: Unit,
        /// Until the respawn.
        delay: Duration,
        /// Failures in a row (see [`CRASH_LOOP`]).
        failures: u32,
    },
    /// Close the socket of a removed slot.
    Close(usize),
    /// Every slot is ready for the first time.
    Serving,
    /// A worker is being replaced for what it became (its requests, age or memory): log
    /// it, count it. Its successor's spawn and its drain follow.
    Recycle {
        /// Its slot.
        slot: usize,
        /// The worker replaced.
        pid: u32,
        /// Why.
        why: Why,
    },
    /// A reload (or recycle) replaced every slot it meant to.
    Reloaded {
        /// What it was: answer its peer, count it.
        cause: Cause,
    },
    /// A replacement worker died before it was ready: the reload stopped there (and a
    /// scale it carried is dropped).
    ReloadFailed {
        /// The slot whose new worker failed.
        slot: usize,
        /// Its exit code, if it exited normally.
        code: Option<i32>,
        /// What it was: answer its peer, undo its configuration.
        cause: Cause,
    },
    /// A finished reload carried another worker count: the fleet scales to it now; the
    /// scale's own commands follow.
    Scaling {
        /// The new number of workers.
        workers: usize,
    },
    /// The fleet is gone: exit with this code.
    Exit(i32),
}

/// What respawns: a worker slot or the HTTP/3 front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A worker slot.
    Slot(usize),
    /// The HTTP/3 front.
    Front,
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unit::Slot(slot) => write!(f, "slot {slot}"),
            Unit::Front => f.write_str("the HTTP/3 front"),
        }
    }
}

/// How a hanging worker was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hang {
    /// No heartbeat for `worker_timeout`: the whole process is stuck (or stopped).
    Silent,
    /// Heartbeats come, but the Python loop has not run for this long.
    LoopBlocked(Duration),
}

/// One heartbeat's content.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Beat {
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests started since the worker started.
    pub served: u64,
    /// Worst loop lag since the previous beat, in ms.
    pub loop_lag_ms: f64,
    /// Time since the loop last ran its ticker.
    pub loop_stalled: Duration,
    /// Resident memory, in bytes (0: unknown).
    pub rss: u64,
}

/// Why a request to the fleet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Still starting.
    #[error("the fleet is still starting")]
    Starting,
    /// Stopping.
    #[error("the fleet is stopping")]
    Stopping,
    /// A reload is running.
    #[error("a reload is already in progress")]
    Reloading,
}

/// A worker's state as shown by `ctl status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Draining before exit.
    Draining,
}

/// One worker process.
#[derive(Debug, Clone)]
pub struct Worker {
    /// Process id.
    pub pid: u32,
    /// Generation within its slot.
    pub generation: u64,
    /// State.
    pub state: WorkerState,
    /// When it started.
    pub started: Instant,
    /// When it became ready (or started, before that).
    since: Instant,
    /// Last heartbeat (or the ready report).
    last_heartbeat: Instant,
    /// Requests started, as of the last heartbeat.
    pub served: u64,
    /// Requests in flight, as of the last heartbeat.
    pub in_flight: u64,
    /// Worst loop lag in the last heartbeat period, in ms.
    pub loop_lag_ms: f64,
    /// Resident memory as of the last heartbeat, in bytes.
    pub rss: u64,
    /// Heartbeats in a row with `rss` above `max_rss`.
    rss_over: u32,
    /// Requests per second over the last second or more of heartbeats.
    rate: f64,
    /// Where that rate was last measured from: (when, requests started then).
    sample: Option<(Instant, u64)>,
    /// Killed as hung; its exit is awaited.
    killed: bool,
}

/// One slot: a listening socket and the worker(s) serving it.
#[derive(Debug)]
pub struct Slot {
    generation: u64,
    /// The worker serving the slot.
    pub worker: Option<Worker>,
    /// A replacement starting beside it (reload / recycle).
    pub incoming: Option<Worker>,
    incoming_generation: Option<u64>,
    /// Old workers draining.
    pub retiring: Vec<Worker>,
    respawn: Respawn,
    /// Removed by scale-down: not respawned, closed once empty.
    removed: bool,
    /// How long its last worker took from spawn to ready.
    startup: Option<Duration>,
    /// A recycle of this slot failed: none is tried again before then.
    recycle_after: Option<Instant>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            generation: 0,
            worker: None,
            incoming: None,
            incoming_generation: None,
            retiring: Vec::new(),
            respawn: Respawn::default(),
            removed: false,
            startup: None,
            recycle_after: None,
        }
    }

    /// Not removed by a scale-down.
    pub fn is_active(&self) -> bool {
        !self.removed
    }

    fn is_empty(&self) -> bool {
        self.worker.is_none() && self.incoming.is_none() && self.retiring.is_empty()
    }

    fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.worker
            .iter()
            .chain(self.incoming.iter())
            .chain(self.retiring.iter())
    }
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

/// Timing and recycling settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Drain grace period.
    pub grace: Duration,
    /// After the requests, the time executor work gets (`[executors] shutdown_timeout`).
    pub executor_grace: Duration,
    /// Heartbeat silence after which a ready worker is killed.
    pub worker_timeout: Duration,
    /// `[server] max_requests` (0: never), for starting a successor ahead of a worker's
    /// own stop at its limit.
    pub max_requests: u64,
    /// `[server] max_requests_jitter`.
    pub max_requests_jitter: u64,
    /// Recycle a worker after this long (zero: never).
    pub max_lifetime: Duration,
    /// Up to this much extra lifetime per worker.
    pub max_lifetime_jitter: Duration,
    /// Recycle a worker whose RSS stays above this many bytes (0: never).
    pub max_rss: u64,
}

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    slots: Vec<Slot>,
    phase: Phase,
    settings: Settings,
    /// The running reload, if any.
    reload: Option<Reload>,
    /// The HTTP/3 front, when `[http3]` is on.
    front: Option<Front>,
    /// Stopping: the workers keep serving until the front drained (its requests travel
    /// to them).
    held: bool,
}

impl Fleet {
    /// A fleet of `workers` slots.
    pub fn new(workers: usize, settings: Settings) -> Self {
        Fleet {
            slots: (0..workers).map(|_| Slot::new()).collect(),
            phase: Phase::Starting,
            settings,
            reload: None,
            front: None,
            held: false,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Every slot, for status reports (removed slots included until closed).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Whether a reload is running.
    pub fn is_reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// Number of active (not removed) slots.
    pub fn size(&self) -> usize {
        self.slots.iter().filter(|s| !s.removed).count()
    }

    /// Total restarts so far.
    pub fn restarts(&self) -> u64 {
        let front = self.front.as_ref().map_or(0, |f| f.respawn.restarts);
        self.slots.iter().map(|s| s.respawn.restarts).sum::<u64>() + front
    }

    /// The timing and recycling settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// New settings (after a config reload).
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// Spawns every slot, and the front.
    pub fn handle_start(&mut self) -> Vec<Command> {
        let mut commands: Vec<Command> =
            (0..self.slots.len()).map(|slot| self.spawn(slot)).collect();
        commands.extend(self.spawn_front());
        commands
    }

    fn spawn(&mut self, slot: usize) -> Command {
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.respawn.at = None;
        Command::Spawn {
            slot,
            generation: s.generation,
        }
    }

    fn spawn_incoming(&mut self, slot: usize) -> Command {
        let command = self.spawn(slot);
        self.slots[slot].incoming_generation = Some(self.slots[slot].generation);
        command
    }

    /// The executor started the process for `slot` / `generation`.
    pub fn handle_spawned(
        &mut self,
        slot: usize,
        generation: u64,
        pid: u32,
        now: Instant,
    ) -> Vec<Command> {
        let Some(s) = self.slots.get_mut(slot) else {
            return Vec::new();
        };
        let worker = Worker::new(pid, generation, now);
        if s.incoming_generation == Some(generation) {
            s.incoming = Some(worker);
        } else {
            s.worker = Some(worker);
        }
        if let Phase::Stopping { .. } = self.phase {
            return vec![Command::Drain(pid)];
        }
        Vec::new()
    }

    /// The executor could not start a process for `slot` / `generation`.
    pub fn handle_spawn_failed(
        &mut self,
        slot: usize,
        generation: u64,
        now: Instant,
    ) -> Vec<Command> {
        if self.slots[slot].incoming_generation == Some(generation) {
            self.slots[slot].incoming_generation = None;
            let mut commands = vec![self.abort_reload(slot, None, now)];
            commands.extend(self.respawn_if_empty(slot, now));
            return commands;
        }
        vec![self.schedule_respawn(slot, now)]
    }

    /// A worker reported ready.
    pub fn handle_ready(&mut self, pid: u32, now: Instant) -> Vec<Command> {
        if let Some(front) = self.front_mut(pid) {
            front.mark_ready(now);
            return self.check_serving().into_iter().collect();
        }
        let Some((slot, role)) = self.find(pid) else {
            return Vec::new();
        };
        let recycling = match self.replacing() {
            Some(Cause::Recycle(why)) => Some(why),
            _ => None,
        };
        let s = &mut self.slots[slot];
        let worker = match role {
            Role::Current => s.worker.as_mut(),
            Role::Incoming => s.incoming.as_mut(),
            Role::Retiring => None,
        };
        let Some(worker) = worker else {
            return Vec::new();
        };
        worker.mark_ready(now);
        s.startup = Some(now.saturating_duration_since(worker.started));
        let mut commands = Vec::new();
        if role == Role::Incoming {
            // The replacement serves: the old worker drains.
            s.incoming_generation = None;
            s.recycle_after = None;
            let new = s.incoming.take().expect("incoming found above");
            if let Some(mut old) = s.worker.replace(new) {
                if let Some(why) = recycling {
                    commands.push(Command::Recycle {
                        slot,
                        pid: old.pid,
                        why,
                    });
                }
                old.state = WorkerState::Draining;
                commands.push(Command::Drain(old.pid));
                s.retiring.push(old);
            }
            commands.extend(self.next_replacement());
        }
        commands.extend(self.check_serving());
        commands
    }

    /// `Serving` once every slot's worker and the front are ready for the first time.
    fn check_serving(&mut self) -> Option<Command> {
        let ready = |w: Option<&Worker>| w.is_some_and(|w| w.state == WorkerState::Ready);
        let front_ready = self
            .front
            .as_ref()
            .is_none_or(|f| ready(f.process.as_ref()));
        if self.phase == Phase::Starting
            && front_ready
            && self
                .slots
                .iter()
                .filter(|s| !s.removed)
                .all(|s| ready(s.worker.as_ref()))
        {
            self.phase = Phase::Serving;
            return Some(Command::Serving);
        }
        None
    }

    /// A worker's periodic report.
    pub fn handle_heartbeat(&mut self, pid: u32, beat: Beat, now: Instant) -> Vec<Command> {
        if let Some(front) = self.front_mut(pid) {
            // The front runs no Python: no loop to watch, no requests limit.
            front.last_heartbeat = now;
            front.in_flight = beat.in_flight;
            front.served = beat.served;
            return Vec::new();
        }
        let Some((slot, role)) = self.find(pid) else {
            return Vec::new();
        };
        let settings = self.settings;
        let s = &mut self.slots[slot];
        let Some(worker) = s.workers_mut().find(|w| w.pid == pid) else {
            return Vec::new();
        };
        if worker.state == WorkerState::Ready {
            // Over at least a second: a heartbeat right after the ready report would make
            // one request look like hundreds per second.
            match worker.sample {
                Some((at, served)) if now.saturating_duration_since(at) >= RATE_WINDOW => {
                    let interval = now.saturating_duration_since(at).as_secs_f64();
                    worker.rate = beat.served.saturating_sub(served) as f64 / interval;
                    worker.sample = Some((now, beat.served));
                }
                Some(_) => {}
                None => worker.sample = Some((now, beat.served)),
            }
        }
        worker.last_heartbeat = now;
        worker.in_flight = beat.in_flight;
        worker.served = beat.served;
        worker.loop_lag_ms = beat.loop_lag_ms;
        worker.rss = beat.rss;
        if settings.max_rss != 0 && beat.rss > settings.max_rss {
            worker.rss_over += 1;
        } else {
            worker.rss_over = 0;
        }
        if worker.state == WorkerState::Ready
            && !worker.killed
            && beat.loop_stalled >= settings.worker_timeout
        {
            worker.killed = true;
            return vec![Command::Hung {
                pid,
                why: Hang::LoopBlocked(beat.loop_stalled),
            }];
        }
        if role != Role::Current || worker.state != WorkerState::Ready {
            return Vec::new();
        }
        let worker = worker.clone();
        match self.recycle_due(slot, &worker, now) {
            Some(why) => self.start_recycle(slot, why, now),
            None => Vec::new(),
        }
    }

    /// A worker process exited with `code` (`None`: killed by a signal).
    pub fn handle_exited(&mut self, pid: u32, code: Option<i32>, now: Instant) -> Vec<Command> {
        if self.is_front(pid) {
            return self.front_exited(code, now);
        }
        let Some((slot, role)) = self.find(pid) else {
            return Vec::new();
        };
        let s = &mut self.slots[slot];
        let worker = match role {
            Role::Current => s.worker.take(),
            Role::Incoming => {
                s.incoming_generation = None;
                s.incoming.take()
            }
            Role::Retiring => {
                let at = s
                    .retiring
                    .iter()
                    .position(|w| w.pid == pid)
                    .expect("found above");
                Some(s.retiring.remove(at))
            }
        }
        .expect("find located the worker");
        let mut commands = Vec::new();
        if s.removed && s.is_empty() {
            commands.push(Command::Close(slot));
        }
        match self.phase {
            Phase::Stopping { .. } | Phase::Done => {
                commands.extend(self.exit_if_empty());
                return commands;
            }
            Phase::Starting | Phase::Serving => {}
        }
        match role {
            Role::Retiring => return commands,
            Role::Incoming => {
                commands.push(self.abort_reload(slot, code, now));
                commands.extend(self.respawn_if_empty(slot, now));
                return commands;
            }
            Role::Current if self.slots[slot].removed => return commands,
            Role::Current => {}
        }
        let never_ready = worker.state == WorkerState::Starting;
        if let Some(code) = code.filter(|c| exit::is_fatal(*c)) {
            if never_ready && self.phase == Phase::Starting {
                commands.extend(self.handle_stop(now, code));
                return commands;
            }
        }
        self.slots[slot].respawn.forgive(&worker, now);
        commands.push(self.schedule_respawn(slot, now));
        commands
    }

    /// A slot whose reload replacement failed after its worker retired (`max_requests`)
    /// has no worker left: it respawns like after a crash.
    fn respawn_if_empty(&mut self, slot: usize, now: Instant) -> Option<Command> {
        let s = &self.slots[slot];
        (s.worker.is_none() && !s.removed && s.respawn.at.is_none())
            .then(|| self.schedule_respawn(slot, now))
    }

    fn schedule_respawn(&mut self, slot: usize, now: Instant) -> Command {
        let s = &mut self.slots[slot];
        let delay = s.respawn.schedule(now);
        Command::Backoff {
            unit: Unit::Slot(slot),
            delay,
            failures: s.respawn.failures,
        }
    }

    /// What waits to respawn: (unit, time left, failures in a row).
    pub fn respawning(&self, now: Instant) -> Vec<(Unit, Duration, u32)> {
        let slots = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (Unit::Slot(i), &s.respawn));
        let front = self.front.iter().map(|f| (Unit::Front, &f.respawn));
        slots
            .chain(front)
            .filter_map(|(unit, r)| Some((unit, r.at?.saturating_duration_since(now), r.failures)))
            .collect()
    }

    /// When the executor should call [`Fleet::handle_tick`] next.
    pub fn poll_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Done => None,
            _ => {
                let front = self.front.as_ref();
                let respawns = self
                    .slots
                    .iter()
                    .map(|s| &s.respawn)
                    .chain(front.map(|f| &f.respawn))
                    .filter_map(|r| r.at);
                let timeouts = self
                    .slots
                    .iter()
                    .filter_map(|s| s.worker.as_ref())
                    .chain(front.and_then(|f| f.process.as_ref()))
                    .filter(|w| w.state == WorkerState::Ready && !w.killed)
                    .map(|w| w.last_heartbeat + self.settings.worker_timeout);
                respawns.chain(timeouts).min()
            }
        }
    }

    /// Respawns slots whose backoff elapsed, kills silent workers, and kills stragglers
    /// past the drain deadline.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<Command> {
        match self.phase {
            Phase::Stopping { deadline, code } if now >= deadline => {
                // Kill again each second until the exits arrive.
                self.phase = Phase::Stopping {
                    deadline: now + Duration::from_secs(1),
                    code,
                };
                let front = self.front.iter().filter_map(|f| f.process.as_ref());
                if self.held {
                    // Only the front is late; its exit releases the workers.
                    return front.map(|w| Command::Kill(w.pid)).collect();
                }
                self.slots
                    .iter()
                    .flat_map(|s| s.workers())
                    .chain(front)
                    .map(|w| Command::Kill(w.pid))
                    .collect()
            }
            Phase::Starting | Phase::Serving => {
                let timeout = self.settings.worker_timeout;
                let mut commands = Vec::new();
                let front = self.front.as_mut().and_then(|f| f.process.as_mut());
                let current = self.slots.iter_mut().filter_map(|s| s.worker.as_mut());
                for w in current.chain(front) {
                    if w.state == WorkerState::Ready
                        && !w.killed
                        && w.last_heartbeat + timeout <= now
                    {
                        // One kill per silent worker: what follows is its exit.
                        w.killed = true;
                        commands.push(Command::Hung {
                            pid: w.pid,
                            why: Hang::Silent,
                        });
                    }
                }
                let due: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| self.slots[i].respawn.due(now))
                    .collect();
                commands.extend(due.into_iter().map(|slot| self.spawn(slot)));
                if self.front.as_ref().is_some_and(|f| f.respawn.due(now)) {
                    commands.extend(self.spawn_front());
                }
                commands
            }
            _ => Vec::new(),
        }
    }

    /// Grows or shrinks the fleet to `workers` slots.
    pub fn handle_scale(&mut self, workers: usize) -> Result<Vec<Command>, Refused> {
        match self.phase {
            Phase::Stopping { .. } | Phase::Done => return Err(Refused::Stopping),
            Phase::Starting => return Err(Refused::Starting),
            Phase::Serving => {}
        }
        if self.reload.is_some() {
            return Err(Refused::Reloading);
        }
        let mut commands = Vec::new();
        let active: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].removed)
            .collect();
        if workers > active.len() {
            for _ in active.len()..workers {
                // Reuse a removed slot whose socket is gone? Simpler: always append.
                self.slots.push(Slot::new());
                let slot = self.slots.len() - 1;
                commands.push(Command::Bind(slot));
                commands.push(self.spawn(slot));
            }
        } else {
            for &slot in active.iter().skip(workers) {
                let s = &mut self.slots[slot];
                s.removed = true;
                s.respawn.at = None;
                if let Some(w) = s.worker.as_mut() {
                    w.state = WorkerState::Draining;
                    commands.push(Command::Drain(w.pid));
                }
                if s.is_empty() {
                    commands.push(Command::Close(slot));
                }
            }
        }
        Ok(commands)
    }

    /// Drain everything and exit with `code` once empty. A second stop kills at once.
    ///
    /// With a front, it drains first: the workers keep serving the requests it forwards
    /// until it exited (or was killed at its deadline), then drain in turn.
    pub fn handle_stop(&mut self, now: Instant, code: i32) -> Vec<Command> {
        if let Phase::Stopping { code: first, .. } = self.phase {
            self.held = false;
            self.phase = Phase::Stopping {
                deadline: now,
                code: first,
            };
            return self.handle_tick(now);
        }
        if self.phase == Phase::Done {
            return Vec::new();
        }
        self.reload = None;
        for s in &mut self.slots {
            s.respawn.at = None;
        }
        let front = self.front.as_mut().and_then(|f| {
            f.respawn.at = None;
            f.process.as_mut()
        });
        if let Some(front) = front {
            front.state = WorkerState::Draining;
            let pid = front.pid;
            // The front's own drain ends within the grace; one more second to exit.
            self.phase = Phase::Stopping {
                deadline: now + self.settings.grace + Duration::from_secs(1),
                code,
            };
            self.held = true;
            // The front's WebSockets end only when their workers close them (1001 after
            // drain_grace): without this the front would wait out its grace on them.
            let going_away = self
                .slots
                .iter()
                .filter_map(|s| s.worker.as_ref())
                .map(|w| Command::GoingAway(w.pid));
            return std::iter::once(Command::Drain(pid))
                .chain(going_away)
                .collect();
        }
        self.phase = Phase::Stopping {
            deadline: now,
            code,
        };
        self.release_workers(now)
    }

    /// Stopping: drain the workers (held while the front drained), exit if none is left.
    fn release_workers(&mut self, now: Instant) -> Vec<Command> {
        let Phase::Stopping { code, .. } = self.phase else {
            return Vec::new();
        };
        self.held = false;
        // Workers get the grace to finish requests, then their executors' time, plus time
        // for lifespan shutdown.
        self.phase = Phase::Stopping {
            deadline: now
                + self.settings.grace
                + self.settings.executor_grace
                + Duration::from_secs(5),
            code,
        };
        let mut commands = Vec::new();
        for s in &mut self.slots {
            for w in s.workers_mut() {
                if w.state != WorkerState::Draining {
                    w.state = WorkerState::Draining;
                    commands.push(Command::Drain(w.pid));
                }
            }
        }
        commands.extend(self.exit_if_empty());
        commands
    }

    fn exit_if_empty(&mut self) -> Vec<Command> {
        if let Phase::Stopping { code, .. } = self.phase {
            let front_gone = self.front.as_ref().is_none_or(|f| f.process.is_none());
            if front_gone && self.slots.iter().all(Slot::is_empty) {
                self.phase = Phase::Done;
                return vec![Command::Exit(code)];
            }
        }
        Vec::new()
    }

    /// The slot a worker process belongs to (serving, starting or retiring).
    pub fn slot_of(&self, pid: u32) -> Option<usize> {
        self.find(pid).map(|(slot, _)| slot)
    }

    fn find(&self, pid: u32) -> Option<(usize, Role)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            if s.worker.as_ref().is_some_and(|w| w.pid == pid) {
                Some((i, Role::Current))
            } else if s.incoming.as_ref().is_some_and(|w| w.pid == pid) {
                Some((i, Role::Incoming))
            } else if s.retiring.iter().any(|w| w.pid == pid) {
                Some((i, Role::Retiring))
            } else {
                None
            }
        })
    }
}

impl Worker {
    fn new(pid: u32, generation: u64, now: Instant) -> Self {
        Worker {
            pid,
            generation,
            state: WorkerState::Starting,
            started: now,
            since: now,
            last_heartbeat: now,
            served: 0,
            in_flight: 0,
            loop_lag_ms: 0.0,
            rss: 0,
            rss_over: 0,
            rate: 0.0,
            sample: None,
            killed: false,
        }
    }

    fn mark_ready(&mut self, now: Instant) {
        if self.state == WorkerState::Starting {
            self.state = WorkerState::Ready;
            self.since = now;
            self.last_heartbeat = now;
        }
    }
}

impl Slot {
    fn workers_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.worker
            .iter_mut()
            .chain(self.incoming.iter_mut())
            .chain(self.retiring.iter_mut())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Incoming,
    Retiring,
}

#[cfg(test)]
mod tests;
