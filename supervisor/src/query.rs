//! The query fan-out: a question to several processes over the control socket (`ctl
//! requests` / `ctl stacks`, a metrics scrape, the stacks of a hung worker), the answers
//! gathered by query id, and the reply sent when every asked process answered or at the
//! timeout with what came.

use crate::endpoints::{NotReady, Probe};
use crate::executor::{Event, Supervisor};
use crate::fleet::{Hang, Phase, Worker, WorkerState};
use crate::spawner::signal_pid;
use genro_shared::protocol::{Message, QueryKind, WorkerReport, MAX_FRAME};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long `ctl requests` / `ctl stacks` wait for the workers' answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a hung worker gets to tell its stacks before it is killed.
const HUNG_STACKS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the answers to a query go.
pub(crate) enum Reply {
    /// `ctl requests` / `ctl stacks`.
    Admin(oneshot::Sender<Message>),
    /// A metrics scrape.
    Scrape(oneshot::Sender<Vec<WorkerReport>>),
    /// The inspector's data, with the fleet as it was when asked.
    Inspect {
        fleet: Box<genro_shared::protocol::FleetStatus>,
        reply: oneshot::Sender<crate::inspector::Inspection>,
    },
}

impl Reply {
    fn send(self, reports: Vec<WorkerReport>) {
        match self {
            Reply::Admin(reply) => {
                let _ = reply.send(Message::WorkersReport {
                    workers: fit_reports(reports),
                });
            }
            Reply::Scrape(reply) => {
                let _ = reply.send(reports);
            }
            Reply::Inspect { fleet, reply } => {
                let _ = reply.send(crate::inspector::Inspection {
                    fleet: *fleet,
                    workers: reports,
                });
            }
        }
    }
}

/// A query sent to workers, waiting for their answers.
pub(crate) enum Pending {
    /// `ctl requests` / `ctl stacks` / a scrape: answered when every asked worker
    /// answered, or at the timeout with what came.
    Admin {
        reply: Reply,
        reports: Vec<WorkerReport>,
        /// Asked workers that have not answered: pid -> index in `reports`.
        waiting: HashMap<u32, usize>,
    },
    /// The stacks of a hung worker, logged before it is killed.
    Hung { pid: u32 },
}

impl Supervisor {
    /// A worker hangs: ask for its stacks (answered from its Rust side unless the whole
    /// process is stuck), log them, kill it.
    pub(crate) fn hung(&mut self, pid: u32, why: Hang) {
        let timeout = self.fleet.settings().worker_timeout.as_secs_f64();
        let seen = match why {
            Hang::Silent => format!("heartbeat timeout (none for {timeout:.0}s)"),
            Hang::LoopBlocked(blocked) => format!(
                "event loop blocked for {:.1}s (worker_timeout {timeout:.0}s)",
                blocked.as_secs_f64()
            ),
        };
        self.hung_pids.insert(pid, seen);
        if self.fleet.is_front(pid) {
            tracing::error!(
                pid,
                "the HTTP/3 front sent no heartbeat for worker_timeout ({timeout:.0}s); killing it"
            );
            signal_pid(pid, libc::SIGKILL);
            return;
        }
        match why {
            Hang::Silent => tracing::error!(
                pid,
                "worker sent no heartbeat for worker_timeout ({timeout:.0}s); killing it"
            ),
            Hang::LoopBlocked(blocked) => tracing::error!(
                pid,
                "worker's Python event loop blocked for {:.1}s (worker_timeout {timeout:.0}s); killing it",
                blocked.as_secs_f64()
            ),
        }
        let id = self.next_query_id();
        if self.ask(pid, id, QueryKind::Stacks) {
            self.queries.insert(id, Pending::Hung { pid });
            self.expire(id, HUNG_STACKS_TIMEOUT);
        } else {
            signal_pid(pid, libc::SIGKILL);
        }
    }

    pub(crate) fn next_query_id(&mut self) -> u64 {
        self.next_query += 1;
        self.next_query
    }

    /// Sends a query to a worker; false when it is not connected (or its queue is full).
    fn ask(&self, pid: u32, id: u64, what: QueryKind) -> bool {
        self.writers
            .get(&pid)
            .is_some_and(|w| w.try_send(Message::Query { id, what }).is_ok())
    }

    /// Delivers `QueryTimeout(id)` after `after`.
    fn expire(&self, id: u64, after: Duration) {
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = events.send(Event::QueryTimeout(id)).await;
        });
    }

    /// `ctl requests` / `ctl stacks`: ask every worker process; a scrape: ask each slot's
    /// serving worker and the front. Answers when all did.
    pub(crate) fn query_workers(&mut self, what: QueryKind, reply: Reply) {
        let id = self.next_query_id();
        let mut reports = Vec::new();
        let mut waiting = HashMap::new();
        let scrape = matches!(reply, Reply::Scrape(_));
        let mut asks: Vec<(u32, u32, bool)> = Vec::new();
        for (slot, s) in self.fleet.slots().iter().enumerate() {
            let serving = s.worker.iter().filter(|w| w.state == WorkerState::Ready);
            let all = s.worker.iter().chain(s.incoming.iter()).chain(&s.retiring);
            let processes: Vec<&Worker> = if scrape {
                serving.collect()
            } else {
                all.collect()
            };
            asks.extend(processes.iter().map(|w| (slot as u32, w.pid, false)));
        }
        if scrape {
            if let Some(pid) = self.fleet.front_pid() {
                asks.push((0, pid, true));
            }
        }
        for (slot, pid, front) in asks {
            let asked = self.ask(pid, id, what);
            if asked {
                waiting.insert(pid, reports.len());
            }
            reports.push(WorkerReport {
                slot,
                pid,
                front,
                error: Some(if asked {
                    format!("no answer within {}s", QUERY_TIMEOUT.as_secs())
                } else {
                    "not connected to the control socket".into()
                }),
                ..WorkerReport::default()
            });
        }
        if self.settle(id, reply, reports, waiting) {
            self.expire(id, QUERY_TIMEOUT);
        }
    }

    /// A request on the metrics listener.
    pub(crate) fn probe(&mut self, probe: Probe) {
        match probe {
            Probe::Alive(reply) => {
                let _ = reply.send(());
            }
            Probe::Ready(reply) => {
                let ready = self
                    .fleet
                    .slots()
                    .iter()
                    .filter(|s| {
                        s.worker
                            .as_ref()
                            .is_some_and(|w| w.state == WorkerState::Ready)
                    })
                    .count();
                let size = self.fleet.size();
                // One ready worker is enough to take traffic, also while other slots
                // still start (or crash-loop).
                let answer = match self.fleet.phase() {
                    Phase::Stopping { .. } | Phase::Done => Err(NotReady::Draining),
                    Phase::Starting if ready == 0 => Err(NotReady::Starting { size }),
                    Phase::Serving if ready == 0 => Err(NotReady::NoWorker { size }),
                    Phase::Starting | Phase::Serving => {
                        Ok(format!("ready: {ready} of {size} worker(s) serving"))
                    }
                };
                let _ = reply.send(answer);
            }
            Probe::Metrics(reply) => {
                self.observed.set_workers(self.fleet.size());
                self.query_workers(QueryKind::Metrics, Reply::Scrape(reply));
            }
            Probe::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Probe::Inspect(reply) => {
                let fleet = Box::new(self.status());
                self.query_workers(QueryKind::Requests, Reply::Inspect { fleet, reply });
            }
        }
    }

    /// Answers an admin query that waits for nobody, or keeps it; true if kept.
    fn settle(
        &mut self,
        id: u64,
        reply: Reply,
        reports: Vec<WorkerReport>,
        waiting: HashMap<u32, usize>,
    ) -> bool {
        if waiting.is_empty() {
            reply.send(reports);
            return false;
        }
        let pending = Pending::Admin {
            reply,
            reports,
            waiting,
        };
        self.queries.insert(id, pending);
        true
    }

    /// A worker answered query `id`.
    pub(crate) fn answered(&mut self, pid: u32, id: u64, mut report: WorkerReport) {
        match self.queries.remove(&id) {
            Some(Pending::Hung { pid: hung }) if hung == pid => {
                match &report.stacks {
                    Some(stacks) => tracing::error!(pid, "stacks of the hung worker:\n{stacks}"),
                    None => tracing::error!(
                        pid,
                        "no stacks from the hung worker: {}",
                        report.error.as_deref().unwrap_or("empty answer")
                    ),
                }
                signal_pid(pid, libc::SIGKILL);
            }
            Some(Pending::Admin {
                reply,
                mut reports,
                mut waiting,
            }) => {
                if let Some(at) = waiting.remove(&pid) {
                    report.slot = reports[at].slot;
                    report.front = reports[at].front;
                    report.pid = pid;
                    reports[at] = report;
                }
                self.settle(id, reply, reports, waiting);
            }
            Some(other) => {
                self.queries.insert(id, other);
            }
            None => tracing::debug!(pid, id, "late answer to a finished query"),
        }
    }

    /// Query `id` ran out of time: answer with what came / kill the hung worker anyway.
    pub(crate) fn query_expired(&mut self, id: u64) {
        match self.queries.remove(&id) {
            Some(Pending::Hung { pid }) => {
                tracing::error!(pid, "the hung worker did not answer for its stacks");
                signal_pid(pid, libc::SIGKILL);
            }
            Some(Pending::Admin { reply, reports, .. }) => reply.send(reports),
            None => {}
        }
    }
}

/// Cuts the reports so that the answer fits in one control frame: each worker gets an
/// equal share of the room.
fn fit_reports(mut reports: Vec<WorkerReport>) -> Vec<WorkerReport> {
    let n = reports.len().max(1);
    // A listed request takes at most ~300 bytes of JSON (the path is cut to 256).
    let max_requests = (MAX_FRAME * 3 / 4 / 300 / n).max(1);
    let max_stacks = MAX_FRAME * 3 / 4 / n;
    // An executor task, at most ~600 (the function name is cut to 256): a fifth of the
    // frame.
    let max_tasks = (MAX_FRAME / 5 / 600 / n).max(1);
    for r in &mut reports {
        r.requests.truncate(max_requests);
        r.executor.truncate(max_tasks);
        if let Some(stacks) = r.stacks.as_mut() {
            genro_shared::protocol::cut_text(stacks, max_stacks);
        }
    }
    reports
}
