//! The Rust side of the app's executors (`genro_asgi.run_in_executor`, the Python package
//! beside this module): the pools themselves are the standard library's, and they report
//! each task here as it is submitted, starts and ends ([`Hooks`]). So `ctl requests`, the
//! inspector and the metrics read the executors' work without the GIL, like the requests.
//!
//! A thread-pool task is `running` from the moment its thread takes it. The process pool
//! cannot say when a process takes a task; it runs them in order, one per process, so its
//! oldest `processes` tasks are shown as running and the rest as queued.

use crate::metrics::Metrics;
use genro_shared::protocol::ExecutorTask;
use pyo3::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Longest function name kept (bytes, cut at a character boundary).
const MAX_FUNCTION: usize = 256;

/// The two pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// `pool="thread"`.
    Thread,
    /// `pool="process"`.
    Process,
}

impl Pool {
    /// Both, in label order.
    pub const ALL: [Pool; 2] = [Pool::Thread, Pool::Process];

    /// The name (metric label, `pool=` argument).
    pub fn label(self) -> &'static str {
        match self {
            Pool::Thread => "thread",
            Pool::Process => "process",
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Returned a result.
    Completed,
    /// Raised (a process-pool death included).
    Failed,
    /// Cancelled before it ran (by its caller, or by the drain).
    Cancelled,
}

impl Outcome {
    /// All, in label order.
    pub const ALL: [Outcome; 3] = [Outcome::Completed, Outcome::Failed, Outcome::Cancelled];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug)]
struct Task {
    pool: Pool,
    function: String,
    request_id: Option<String>,
    submitted: Instant,
    running: bool,
}

/// The tasks submitted and not finished, by submission number (so in order).
#[derive(Debug)]
pub struct Tasks {
    entries: Mutex<BTreeMap<u64, Task>>,
    next: std::sync::atomic::AtomicU64,
    processes: usize,
}

/// Queued and running tasks of one pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Submitted, not yet taken.
    pub queued: u64,
    /// Being run.
    pub running: u64,
}

impl Tasks {
    /// The registry of a worker whose process pool has `processes` processes.
    pub fn new(processes: usize) -> Self {
        Tasks {
            entries: Mutex::default(),
            next: std::sync::atomic::AtomicU64::new(1),
            processes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Task>> {
        genro_shared::sync::lock(&self.entries)
    }

    fn submitted(&self, pool: Pool, function: String, request_id: Option<String>) -> u64 {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = Task {
            pool,
            function,
            request_id,
            submitted: Instant::now(),
            running: false,
        };
        self.lock().insert(key, task);
        key
    }

    fn started(&self, key: u64) {
        if let Some(task) = self.lock().get_mut(&key) {
            task.running = true;
        }
    }

    fn finished(&self, key: u64) -> Option<Pool> {
        self.lock().remove(&key).map(|task| task.pool)
    }

    /// Whether each task runs (see the module's note on the process pool), in order.
    fn states<'a>(&self, tasks: impl Iterator<Item = &'a Task>) -> Vec<(&'a Task, bool)> {
        let mut processes = 0;
        tasks
            .map(|task| {
                let running = match task.pool {
                    Pool::Thread => task.running,
                    Pool::Process => {
                        processes += 1;
                        processes <= self.processes
                    }
                };
                (task, running)
            })
            .collect()
    }

    /// Up to `max` tasks, oldest first, and how many there are in all.
    pub fn snapshot(&self, max: usize) -> (Vec<ExecutorTask>, u64) {
        let now = Instant::now();
        let entries = self.lock();
        let list = self
            .states(entries.values())
            .into_iter()
            .take(max)
            .map(|(task, running)| ExecutorTask {
                pool: task.pool.label().to_owned(),
                function: task.function.clone(),
                state: if running { "running" } else { "queued" }.to_owned(),
                request_id: task.request_id.clone(),
                age: now.duration_since(task.submitted).as_secs_f64(),
            })
            .collect();
        (list, entries.len() as u64)
    }

    /// Queued and running tasks, by pool (in [`Pool::ALL`] order).
    pub fn depth(&self) -> [Depth; 2] {
        let entries = self.lock();
        let mut depth = [Depth::default(); 2];
        for (task, running) in self.states(entries.values()) {
            let d = &mut depth[task.pool as usize];
            if running {
                d.running += 1;
            } else {
                d.queued += 1;
            }
        }
        depth
    }
}

/// What the Python executors call (`genro_asgi._executors`): one object per worker.
#[pyclass(frozen, module = "genro_asgi_worker._native")]
#[derive(Debug)]
pub struct Hooks {
    tasks: Arc<Tasks>,
    metrics: Option<Arc<Metrics>>,
}

impl Hooks {
    /// Reports into `tasks` and counts into `metrics`.
    pub fn new(tasks: Arc<Tasks>, metrics: Option<Arc<Metrics>>) -> Self {
        Hooks { tasks, metrics }
    }
}

#[pymethods]
impl Hooks {
    /// A task was submitted to `pool`: returns its key.
    #[pyo3(signature = (pool, function, request_id=None))]
    fn submitted(&self, pool: &str, function: String, request_id: Option<String>) -> u64 {
        let pool = if pool == "process" {
            Pool::Process
        } else {
            Pool::Thread
        };
        let function = if function.len() > MAX_FUNCTION {
            crate::registry::cut(&function, MAX_FUNCTION)
        } else {
            function
        };
        let request_id = request_id.map(|id| crate::registry::cut(&id, MAX_FUNCTION));
        self.tasks.submitted(pool, function, request_id)
    }

    /// A thread took the task.
    fn started(&self, key: u64) {
        self.tasks.started(key);
    }

    /// The task ended: `completed`, `failed` or `cancelled`.
    fn finished(&self, key: u64, outcome: &str) {
        let Some(pool) = self.tasks.finished(key) else {
            return;
        };
        let outcome = match outcome {
            "completed" => Outcome::Completed,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed,
        };
        if let Some(metrics) = &self.metrics {
            metrics.executor_done(pool, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_process_tasks_run_and_threads_run_once_taken() {
        let tasks = Tasks::new(2);
        let p: Vec<u64> = (0..3)
            .map(|i| tasks.submitted(Pool::Process, format!("m.p{i}"), None))
            .collect();
        let t = tasks.submitted(Pool::Thread, "m.t".into(), Some("ab".into()));
        let t2 = tasks.submitted(Pool::Thread, "m.t2".into(), None);
        tasks.started(t2);
        let depth = tasks.depth();
        assert_eq!(
            depth[Pool::Thread as usize],
            Depth {
                queued: 1,
                running: 1
            }
        );
        assert_eq!(
            depth[Pool::Process as usize],
            Depth {
                queued: 1,
                running: 2
            }
        );
        let (list, total) = tasks.snapshot(10);
        assert_eq!(total, 5);
        let states: Vec<(&str, &str)> = list
            .iter()
            .map(|task| (task.function.as_str(), task.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [
                ("m.p0", "running"),
                ("m.p1", "running"),
                ("m.p2", "queued"),
                ("m.t", "queued"),
                ("m.t2", "running")
            ]
        );
        assert_eq!(list[3].request_id.as_deref(), Some("ab"));
        // The first process task ends: the third moves up.
        assert_eq!(tasks.finished(p[0]), Some(Pool::Process));
        assert_eq!(tasks.depth()[Pool::Process as usize].running, 2);
        assert_eq!(tasks.finished(p[0]), None, "counted once");
        tasks.finished(t);
        let (list, total) = tasks.snapshot(1);
        assert_eq!((list.len(), total), (1, 3));
    }
}
