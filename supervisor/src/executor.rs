//! The executor: one loop that waits for the next input (a control message, a child's
//! exit, a signal, an admin or metrics request, a deadline of the fleet), hands it to one
//! `handle_*` method, and carries out the [`Command`]s the [`Fleet`] returns. What to do
//! is the fleet's decision; this module does the I/O (spawn, signal, send, log, notify).

use crate::control::Incoming;
use crate::endpoints::{Observed, Probe};
use crate::fleet::{Beat, Cause, Command, Fleet, Phase, ReplyId};
use crate::interpreter::Interpreter;
use crate::notify::Notifier;
use crate::query::Pending;
use crate::serve::Reloader;
use crate::spawner::{signal_pid, Spawner};
use crate::webhook::Webhook;
use genro_config::Loaded;
use genro_shared::exit;
use genro_shared::protocol::{Message, SlotSocket};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Between taking a worker out of the HTTP/3 front's list (replaced by a reload, or its
/// slot removed) and draining it: requests the front had already routed there are sent by
/// then, so the worker's GOAWAY and close do not race them.
const FRONT_LET_GO: Duration = Duration::from_millis(300);

/// An input for the loop, sent by the tasks around it.
pub(crate) enum Event {
    Control(Incoming),
    Exited {
        pid: u32,
        code: Option<i32>,
    },
    QueryTimeout(u64),
    /// A request on the metrics listener.
    Probe(Probe),
    /// A removed slot's worker may drain now: the front has let go of the slot.
    Drain(u32),
    /// Watched files changed (`--reload`).
    FilesChanged(crate::watch::Changes),
    /// A reload's interpreter was chosen and probed (or could not be).
    Resolved {
        loaded: Box<Loaded>,
        python: Box<Result<Interpreter, crate::interpreter::InterpreterError>>,
        reply: Option<oneshot::Sender<Message>>,
    },
}

/// The executor's state besides the fleet.
pub(crate) struct Supervisor {
    pub(crate) fleet: Fleet,
    pub(crate) spawner: Spawner,
    pub(crate) notifier: Notifier,
    pub(crate) reloader: Reloader,
    pub(crate) writers: HashMap<u32, mpsc::Sender<Message>>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) started: Instant,
    /// Peers (`ctl reload`) waiting for a reload's outcome, under the token the fleet
    /// holds for it.
    pub(crate) reload_replies: HashMap<ReplyId, oneshot::Sender<Message>>,
    pub(crate) app: String,
    pub(crate) url: String,
    pub(crate) queries: HashMap<u64, Pending>,
    pub(crate) next_query: u64,
    /// The slot list the connected front has (`None`: not sent since its hello).
    pub(crate) front_slots: Option<Vec<SlotSocket>>,
    /// The supervisor's own metrics.
    pub(crate) observed: Observed,
    /// Processes killed because they hung, with what was seen (their replacement's reason).
    pub(crate) hung_pids: HashMap<u32, String>,
    /// The latest replacements, newest last, for `ctl status`.
    pub(crate) replaced: std::collections::VecDeque<Replaced>,
    /// `[errors] notify_critical`: the webhook sender.
    pub(crate) webhook: Option<Webhook>,
    /// `[metrics]` as started (fixed until a restart).
    pub(crate) metrics: genro_config::Metrics,
    /// Files changed while a reload ran (`--reload`): another follows it.
    pub(crate) reload_after: bool,
    /// `[debug]` as started (its listener is bound then), and the run directory where
    /// the workers' debugger sockets are.
    pub(crate) debug: (genro_config::Debug, std::path::PathBuf),
    /// `[server] uds` and `uds_mode` as started (the socket is bound then).
    pub(crate) uds: (Option<std::path::PathBuf>, u32),
}

/// A worker (or the front) replaced, as `ctl status` lists it.
pub(crate) struct Replaced {
    pub(crate) at: Instant,
    /// `None`: the HTTP/3 front.
    pub(crate) slot: Option<usize>,
    pub(crate) pid: u32,
    pub(crate) reason: String,
}

/// Replacements kept for `ctl status`.
const REPLACED_KEPT: usize = 16;

/// Runs the loop until the fleet exits; returns the exit code.
pub(crate) async fn run(
    mut sup: Supervisor,
    mut events: mpsc::Receiver<Event>,
) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigttin = signal(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut sigttou = signal(SignalKind::from_raw(libc::SIGTTOU))?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut watchdog = sup.notifier.watchdog_interval().map(tokio::time::interval);
    let mut pending = sup.fleet.handle_start();
    loop {
        if let Some(code) = sup.execute(pending) {
            return Ok(code);
        }
        sup.sync_front();
        let deadline = sup.fleet.poll_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let keepalive = async {
            match watchdog.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        pending = tokio::select! {
            Some(event) = events.recv() => sup.handle_event(event),
            _ = sigterm.recv() => sup.handle_sigterm(),
            _ = sigint.recv() => sup.handle_sigint(),
            _ = sighup.recv() => sup.handle_sighup(),
            _ = sigttin.recv() => sup.handle_sigttin(),
            _ = sigttou.recv() => sup.handle_sigttou(),
            _ = sigusr1.recv() => sup.handle_sigusr1(),
            _ = keepalive => sup.handle_keepalive(),
            _ = sleep => sup.fleet.handle_tick(Instant::now()),
        };
    }
}

impl Supervisor {
    /// One input from the tasks around the loop.
    fn handle_event(&mut self, event: Event) -> Vec<Command> {
        match event {
            Event::Control(Incoming::Hello { pid, writer }) => self.handle_hello(pid, writer),
            Event::Control(Incoming::Message { pid, message }) => self.handle_message(pid, message),
            Event::Control(Incoming::Admin { request, reply }) => self.admin(request, reply),
            Event::Exited { pid, code } => self.handle_exited(pid, code),
            Event::QueryTimeout(id) => {
                self.query_expired(id);
                Vec::new()
            }
            Event::Drain(pid) => {
                self.drain(pid);
                Vec::new()
            }
            Event::Probe(probe) => {
                self.probe(probe);
                Vec::new()
            }
            Event::Resolved {
                loaded,
                python,
                reply,
            } => self.handle_resolved(*loaded, *python, reply),
            Event::FilesChanged(changes) => self.handle_files_changed(&changes),
        }
    }

    /// `--reload`: watched files changed; replace the workers (after the reload running,
    /// if one is).
    fn handle_files_changed(&mut self, changes: &crate::watch::Changes) -> Vec<Command> {
        let what = changes.describe();
        match self.fleet.phase() {
            Phase::Serving if self.fleet.is_reloading() => {
                tracing::info!("reload: {what}; a reload is running, another follows it");
                self.reload_after = true;
                Vec::new()
            }
            Phase::Serving => {
                tracing::info!("reload: {what}; replacing the workers");
                self.reload(None)
            }
            Phase::Starting => {
                tracing::info!("reload: {what}; the workers are starting, a reload follows");
                self.reload_after = true;
                Vec::new()
            }
            Phase::Stopping { .. } | Phase::Done => Vec::new(),
        }
    }

    /// A reload asked for while another ran, once nothing runs (`--reload`).
    pub(crate) fn reload_again(&mut self) -> Vec<Command> {
        if self.reload_after && self.fleet.phase() == Phase::Serving && !self.fleet.is_reloading() {
            self.reload_after = false;
            tracing::info!("reload: files changed during the last reload; replacing the workers");
            return self.reload(None);
        }
        Vec::new()
    }

    /// A child connected to the control socket.
    fn handle_hello(&mut self, pid: u32, writer: mpsc::Sender<Message>) -> Vec<Command> {
        if self.fleet.is_front(pid) {
            self.front_slots = None;
        }
        self.writers.insert(pid, writer);
        Vec::new()
    }

    /// A message from a worker or the front.
    fn handle_message(&mut self, pid: u32, message: Message) -> Vec<Command> {
        let now = Instant::now();
        match message {
            Message::Ready => {
                tracing::debug!(pid, "worker ready");
                self.fleet.handle_ready(pid, now)
            }
            Message::Heartbeat {
                in_flight,
                served,
                loop_lag_ms,
                loop_stalled_ms,
                rss,
            } => {
                let beat = Beat {
                    in_flight,
                    served,
                    loop_lag_ms,
                    loop_stalled: Duration::from_millis(loop_stalled_ms),
                    rss,
                };
                self.fleet.handle_heartbeat(pid, beat, now)
            }
            Message::Retire { max_requests } => self.fleet.handle_retire(pid, max_requests),
            Message::Answer { id, report } => {
                self.answered(pid, id, report);
                Vec::new()
            }
            Message::Critical { mut event } => {
                if let (Some(webhook), Some(fields)) = (&self.webhook, event.as_object_mut()) {
                    if let Some(slot) = self.fleet.slot_of(pid) {
                        fields.insert("worker".into(), slot.into());
                    }
                    fields.insert("pid".into(), pid.into());
                    webhook.notify(event);
                }
                Vec::new()
            }
            message => {
                tracing::warn!(
                    pid,
                    "unexpected control message {} from a worker",
                    message.kind()
                );
                Vec::new()
            }
        }
    }

    /// A child exited (`code`: `None` when a signal killed it).
    fn handle_exited(&mut self, pid: u32, code: Option<i32>) -> Vec<Command> {
        self.writers.remove(&pid);
        if self.debug.0.enabled {
            // A worker killed before it could remove its debugger socket.
            let _ = std::fs::remove_file(crate::debugger::socket_path(&self.debug.1, pid));
        }
        let (label, reason) = match (self.hung_pids.remove(&pid), code) {
            (Some(seen), _) => ("hung", seen),
            (None, None) => ("signal", "crash: killed by a signal".to_owned()),
            (None, Some(code)) => ("exit", format!("crash: exited with code {code}")),
        };
        let slot = self.fleet.slot_of(pid);
        self.spawner.front_sockets.remove(&pid);
        let stopping = matches!(self.fleet.phase(), Phase::Stopping { .. });
        let (what, fatal) = if self.fleet.is_front(pid) {
            ("HTTP/3 front", "HTTP/3 front could not start")
        } else {
            ("worker", "worker could not start the app")
        };
        match code {
            Some(0) => tracing::info!(pid, "{what} exited"),
            Some(code) if exit::is_fatal(code) => tracing::error!(pid, code, "{fatal}"),
            Some(code) => tracing::warn!(pid, code, "{what} exited unexpectedly"),
            None if stopping => tracing::warn!(pid, "{what} killed"),
            None => tracing::warn!(pid, "{what} killed by a signal"),
        }
        let commands = self.fleet.handle_exited(pid, code, Instant::now());
        // A serving worker (or the front) that exited and will be respawned.
        if commands
            .iter()
            .any(|c| matches!(c, Command::Backoff { .. }))
        {
            self.replaced(slot, pid, label, reason);
        }
        commands
    }

    /// A worker (`slot`; `None`: the front) is being replaced: logged with `reason`,
    /// counted under `label` in `worker_restarts_total`, listed by `ctl status`.
    fn replaced(&mut self, slot: Option<usize>, pid: u32, label: &str, reason: String) {
        match slot {
            Some(slot) => {
                tracing::info!(slot, pid, "worker {pid} (slot {slot}) replaced: {reason}")
            }
            None => tracing::info!(pid, "HTTP/3 front {pid} replaced: {reason}"),
        }
        self.observed.restart(label);
        if self.replaced.len() == REPLACED_KEPT {
            self.replaced.pop_front();
        }
        self.replaced.push_back(Replaced {
            at: Instant::now(),
            slot,
            pid,
            reason,
        });
    }

    fn handle_sigterm(&mut self) -> Vec<Command> {
        tracing::info!("SIGTERM: draining");
        self.stop(false)
    }

    fn handle_sigint(&mut self) -> Vec<Command> {
        tracing::info!("SIGINT: draining (again for a fast stop)");
        self.stop(false)
    }

    fn handle_sighup(&mut self) -> Vec<Command> {
        tracing::info!("SIGHUP: reloading the configuration");
        self.reload(None)
    }

    /// One worker more.
    fn handle_sigttin(&mut self) -> Vec<Command> {
        let workers = self.fleet.size() + 1;
        self.scale(workers)
    }

    /// One worker less (at least one stays).
    fn handle_sigttou(&mut self) -> Vec<Command> {
        let workers = self.fleet.size().saturating_sub(1).max(1);
        self.scale(workers)
    }

    /// Reopen the log file (logrotate), here and in every child.
    fn handle_sigusr1(&mut self) -> Vec<Command> {
        match genro_shared::logfile::reopen() {
            Ok(true) => tracing::info!("SIGUSR1: log file reopened"),
            Ok(false) => tracing::info!("SIGUSR1: logging to stderr, nothing to reopen"),
            Err(err) => tracing::error!("SIGUSR1: cannot reopen the log file: {err}"),
        }
        for pid in self.writers.keys() {
            signal_pid(*pid, libc::SIGUSR1);
        }
        Vec::new()
    }

    /// systemd's watchdog is due.
    fn handle_keepalive(&mut self) -> Vec<Command> {
        self.notifier.send("WATCHDOG=1");
        Vec::new()
    }

    /// Carries out commands (and the ones they lead to); returns the exit code on `Exit`.
    fn execute(&mut self, mut pending: Vec<Command>) -> Option<i32> {
        while !pending.is_empty() {
            let mut next = Vec::new();
            for command in pending {
                let now = Instant::now();
                match command {
                    Command::Bind(slot) => {
                        if let Err(err) = self.spawner.bind(slot) {
                            tracing::error!(slot, "cannot bind a socket for a new slot: {err:#}");
                        }
                    }
                    Command::Spawn { slot, generation } => {
                        let serving = self
                            .fleet
                            .slots()
                            .get(slot)
                            .and_then(|s| s.worker.as_ref())
                            .map(|w| w.pid);
                        match (serving, self.fleet.replacing()) {
                            (Some(old), Some(Cause::Reload { .. })) => {
                                self.replaced(Some(slot), old, "reload", "reload".into());
                            }
                            // Counted by its `Recycle` when the old worker leaves.
                            (Some(old), Some(Cause::Recycle(why))) => tracing::info!(
                                slot,
                                "worker {old} (slot {slot}): {why}; starting its successor"
                            ),
                            _ => {}
                        }
                        match self.spawner.spawn(slot, generation) {
                            Ok(child) => {
                                let pid = self.watch(child);
                                tracing::info!(slot, pid, generation, "worker started");
                                next.extend(self.fleet.handle_spawned(slot, generation, pid, now));
                            }
                            Err(err) => {
                                tracing::error!(slot, "cannot start a worker: {err}");
                                self.observed.restart("spawn_failed");
                                next.extend(self.fleet.handle_spawn_failed(slot, generation, now));
                            }
                        }
                    }
                    Command::SpawnFront { generation } => {
                        match self.spawner.spawn_front(generation) {
                            Ok(child) => {
                                let pid = self.watch(child);
                                tracing::info!(pid, generation, "HTTP/3 front started");
                                self.front_slots = None;
                                next.extend(self.fleet.handle_spawned_front(generation, pid, now));
                            }
                            Err(err) => {
                                tracing::error!("cannot start the HTTP/3 front: {err}");
                                self.observed.restart("spawn_failed");
                                next.extend(self.fleet.handle_front_spawn_failed(now));
                            }
                        }
                    }
                    Command::Drain(pid) if self.front_forwards() => {
                        // Out of the front's list first, then drained.
                        self.sync_front();
                        let events = self.events.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(FRONT_LET_GO).await;
                            let _ = events.send(Event::Drain(pid)).await;
                        });
                    }
                    Command::Drain(pid) => self.drain(pid),
                    Command::GoingAway(pid) => {
                        // Not connected (yet, or any more): it drains later like the rest.
                        if let Some(writer) = self.writers.get(&pid) {
                            let _ = writer.try_send(Message::GoingAway);
                        }
                    }
                    Command::Kill(pid) => {
                        tracing::warn!(pid, "process did not stop in time; killing it");
                        signal_pid(pid, libc::SIGKILL);
                    }
                    Command::Hung { pid, why } => self.hung(pid, why),
                    Command::Recycle { slot, pid, why } => {
                        self.replaced(Some(slot), pid, why.label(), why.to_string());
                    }
                    Command::Backoff {
                        unit,
                        delay,
                        failures,
                    } => {
                        let delay = delay.as_secs_f64();
                        if failures >= crate::fleet::CRASH_LOOP {
                            tracing::error!(failures, "{unit} is crash-looping: {failures} failures in a row; next start in {delay:.1}s");
                            if let Some(webhook) = &self.webhook {
                                webhook.notify(serde_json::json!({
                                    "event": "crash_loop",
                                    "unit": unit.to_string(),
                                    "failures": failures,
                                    "next_start_seconds": delay,
                                }));
                            }
                            self.notifier.send(&format!(
                                "STATUS={unit} is crash-looping ({failures} failures in a row)"
                            ));
                        } else {
                            tracing::warn!(failures, "respawning {unit} in {delay:.1}s");
                        }
                    }
                    Command::Close(slot) => {
                        if let Some(socket) = self.spawner.sockets.get_mut(slot) {
                            *socket = None;
                        }
                        tracing::info!(slot, "slot removed");
                    }
                    Command::Serving => {
                        let workers = self.fleet.size();
                        tracing::info!(
                            "serving {} on {} with {workers} worker(s)",
                            self.app,
                            self.url
                        );
                        self.notifier.send(&format!(
                            "READY=1\nSTATUS=serving {} with {workers} worker(s)",
                            self.url
                        ));
                        next.extend(self.reload_again());
                    }
                    Command::Reloaded {
                        cause: Cause::Recycle(why),
                    } => {
                        tracing::info!("recycle complete ({why}): the new worker serves");
                        next.extend(self.reload_again());
                    }
                    Command::Reloaded { cause } => {
                        self.observed.reload(true);
                        self.spawner.commit();
                        self.observed
                            .set_python_version(&self.spawner.launch.python.probe.version_info);
                        tracing::info!("reload complete: every slot runs a new worker");
                        self.notifier.send(&format!(
                            "READY=1\nSTATUS=serving {} with {} worker(s)",
                            self.url,
                            self.fleet.size()
                        ));
                        self.answer_reload(
                            cause,
                            Message::Done {
                                message: "reload complete".into(),
                            },
                        );
                        next.extend(self.reload_again());
                    }
                    Command::Scaling { workers } => {
                        tracing::info!("scaling to {workers} worker(s)");
                    }
                    Command::ReloadFailed { slot, code, cause } => {
                        let why = match code {
                            Some(code) => format!("exited with code {code}"),
                            None => "could not start".into(),
                        };
                        let what = match cause {
                            Cause::Reload { .. } => {
                                self.observed.reload(false);
                                "reload"
                            }
                            Cause::Recycle(_) => "recycle",
                        };
                        self.spawner.rollback();
                        let message = format!("{what} aborted: the new worker for slot {slot} {why} before it was ready; the running workers keep serving");
                        tracing::error!("{message}");
                        self.notifier.send(
                            "READY=1\nSTATUS=reload failed; serving with the previous workers",
                        );
                        self.answer_reload(cause, Message::Error { message });
                        next.extend(self.reload_again());
                    }
                    Command::Exit(code) => {
                        tracing::info!(code, "supervisor exiting");
                        return Some(code);
                    }
                }
            }
            pending = next;
        }
        None
    }

    /// Answers the peer waiting for a reload, if any.
    fn answer_reload(&mut self, cause: Cause, answer: Message) {
        let Cause::Reload { reply: Some(token) } = cause else {
            return;
        };
        if let Some(reply) = self.reload_replies.remove(&token) {
            let _ = reply.send(answer);
        }
    }

    /// Waits for a started child's exit in the background; returns its pid.
    fn watch(&self, mut child: tokio::process::Child) -> u32 {
        let pid = child.id().unwrap_or(0);
        let events = self.events.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = events.send(Event::Exited { pid, code }).await;
        });
        pid
    }

    /// Asks a process to drain and exit.
    fn drain(&self, pid: u32) {
        let sent = self
            .writers
            .get(&pid)
            .is_some_and(|w| w.try_send(Message::Drain).is_ok());
        if !sent {
            // Not connected yet (or gone): the signal does the same.
            signal_pid(pid, libc::SIGTERM);
        }
    }

    /// Whether the front forwards requests to the workers (while serving; a stop drains
    /// the front before the workers).
    fn front_forwards(&self) -> bool {
        self.fleet.front_pid().is_some() && self.fleet.phase() == Phase::Serving
    }

    /// Sends the front the slot list when it changed (or it has none yet).
    fn sync_front(&mut self) {
        let Some(pid) = self.fleet.front_pid() else {
            return;
        };
        let Some(writer) = self.writers.get(&pid) else {
            return;
        };
        let slots = self.spawner.front_slots(&self.fleet);
        if self.front_slots.as_ref() == Some(&slots) {
            return;
        }
        if writer
            .try_send(Message::Slots {
                slots: slots.clone(),
            })
            .is_ok()
        {
            tracing::debug!(
                pid,
                slots = slots.len(),
                "slot list sent to the HTTP/3 front"
            );
            self.front_slots = Some(slots);
        }
    }
}
