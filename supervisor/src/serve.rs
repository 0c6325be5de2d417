//! `genro-asgi serve`: runs the fleet.
//!
//! 1. Validate what the config cannot check alone (an app is set, TLS files load), choose
//!    and probe the workers' interpreter (`crate::interpreter`), create the run dir, bind
//!    the slot sockets and the control socket — before any child starts.
//! 2. Spawn one worker per slot as `<python> -m genro_asgi_worker`, the slot's socket on
//!    fd 3, the effective config as JSON in the environment (the HTTP/3 front re-executes
//!    this binary, `front` subcommand).
//! 3. Feed the [`Fleet`] state machine with control events, child exits, signals, admin
//!    requests and its own deadlines, and carry out the commands it returns, until `Exit`.
//!
//! Signals: TERM/INT drain (a second one kills), HUP reloads, TTIN/TTOU add/remove a
//! worker. Each lifecycle transition is also told to systemd (see [`crate::notify`]).

use crate::control::{self, Incoming};
use crate::endpoints::{Observed, Probe};
use crate::fleet::{Beat, Command, Fleet, Hang, Phase, Settings, Unit, Worker, WorkerState};
use crate::interpreter::Interpreter;
use crate::notify::Notifier;
use crate::webhook::Webhook;
use anyhow::Context;
use genro_config::{Config, ConfigError, Loaded};
use genro_shared::exit;
use genro_shared::protocol::{
    FleetStatus, Message, QueryKind, RespawnStatus, SlotSocket, WorkerReport, WorkerStatus,
    MAX_FRAME,
};
use socket2::Socket;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long `ctl requests` / `ctl stacks` wait for the workers' answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a hung worker gets to tell its stacks before it is killed.
const HUNG_STACKS_TIMEOUT: Duration = Duration::from_secs(1);
/// Between taking a worker out of the HTTP/3 front's list (replaced by a reload, or its
/// slot removed) and draining it: requests the front had already routed there are sent by
/// then, so the worker's GOAWAY and close do not race them.
const FRONT_LET_GO: Duration = Duration::from_millis(300);

/// Re-reads the configuration (same file, environment and flags) for a reload.
pub type Reloader = Box<dyn Fn() -> Result<Loaded, ConfigError>>;

/// Runs the server; returns the exit code.
pub fn run(loaded: Loaded, reloader: Reloader) -> i32 {
    let config = &loaded.config;
    genro_shared::logs::init(config, genro_shared::logs::Process::Supervisor);
    if let Some(note) = loaded.ignored_env_note() {
        tracing::info!("{note}");
    }
    if let Err(message) = preflight(config) {
        eprintln!("genro-asgi: configuration error: {message}");
        return exit::CONFIG;
    }
    let python = match crate::interpreter::resolve(&loaded) {
        Ok(python) => python,
        Err(err) => {
            eprintln!("genro-asgi: configuration error: {err}");
            return exit::CONFIG;
        }
    };
    let activated = match crate::sockets::activated() {
        Ok(activated) => activated,
        Err(err) => {
            eprintln!("genro-asgi: {err:#}");
            return exit::INTERNAL;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("genro-asgi: cannot start the runtime: {err}");
            return exit::INTERNAL;
        }
    };
    let run_dir = run_dir(config);
    let code = match runtime.block_on(supervise(&loaded, python, &run_dir, reloader, activated)) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            exit::INTERNAL
        }
    };
    let _ = std::fs::remove_file(run_dir.join("control.sock"));
    if config.server.run_dir.is_none() {
        let _ = std::fs::remove_dir(&run_dir);
    }
    code
}

/// The answer to a reload whose new configuration cannot be used.
fn config_aborted(err: &dyn std::fmt::Display) -> String {
    format!("reload aborted: configuration error: {err}; the running workers keep serving")
}

/// Checks what the schema cannot: an app to serve, and TLS files that load (in Rust, before
/// any worker: a bad file is a configuration error, not a worker crash loop).
pub(crate) fn preflight(config: &Config) -> Result<(), String> {
    if config.application.app.is_empty() {
        return Err("no app to serve: set [application] app = module:attr in the config file, GENRO_ASGI_APPLICATION_APP, or --app".into());
    }
    if config.ssl.enabled {
        genro_shared::tls::server_config(&config.ssl, config.ssl.min_version, &[b"h2"])
            .map_err(|e| format!("{e:#}"))?;
    }
    genro_shared::access::AccessFormat::parse(&config.logging.access_format).map_err(|e| {
        format!(
            "[logging] access_format = {:?}: {e}",
            config.logging.access_format
        )
    })?;
    Ok(())
}

/// The run directory: `[server] run_dir`, else one per port so `genro-asgi ctl --config`
/// finds the control socket of the server started with the same file.
pub fn run_dir(config: &Config) -> PathBuf {
    if let Some(dir) = &config.server.run_dir {
        return dir.clone();
    }
    let port = config.server.port;
    let name = if port == 0 {
        format!("pid{}", std::process::id())
    } else {
        port.to_string()
    };
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(base) => PathBuf::from(base).join(format!("genro-asgi-{name}")),
        // SAFETY: geteuid has no preconditions.
        None => {
            std::env::temp_dir().join(format!("genro-asgi-{}-{name}", unsafe { libc::geteuid() }))
        }
    }
}

fn settings(config: &Config) -> Settings {
    Settings {
        grace: config.server.graceful_timeout,
        worker_timeout: config.server.worker_timeout,
        max_requests: config.server.max_requests,
        max_requests_jitter: config.server.max_requests_jitter,
    }
}

/// A worker's private Unix socket for the HTTP/3 front (mode 0600). The supervisor
/// hands the listener to the worker and keeps only the path, removed when this is
/// dropped (the worker exited): one socket per worker process, so the front moves to a
/// slot's new worker by its path, and a dead worker's socket refuses at once.
struct FrontSocket {
    path: PathBuf,
}

impl FrontSocket {
    fn bind(path: PathBuf) -> std::io::Result<(Self, std::os::unix::net::UnixListener)> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let socket = FrontSocket { path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
        Ok((socket, listener))
    }
}

impl Drop for FrontSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts worker processes; owns the slot sockets.
struct Spawner {
    exe: PathBuf,
    /// How children are started (set from the configuration, replaced by a reload).
    launch: Launch,
    addr: SocketAddr,
    backlog: u32,
    control_path: PathBuf,
    sockets: Vec<Option<Socket>>,
    /// The socket passed by systemd (LISTEN_FDS), shared by all slots.
    activated: Option<Socket>,
    /// Each worker's private Unix socket for the HTTP/3 front, by pid (`[http3]` on).
    front_sockets: HashMap<u32, FrontSocket>,
    /// Where the front sockets live (`[http3]` on), else `None`.
    front_dir: Option<PathBuf>,
    /// The HTTP/3 front's UDP socket (`[http3]` on), kept for its respawns.
    udp: Option<std::net::UdpSocket>,
    /// Its port, kept after a stop let go of the socket.
    udp_port: Option<u16>,
}

/// How children are started. A reload keeps the previous one until it succeeded, to undo
/// it if it fails: a worker of the old generation respawned later starts as it did before.
#[derive(Clone)]
struct Launch {
    /// The interpreter workers run in (`<python> -m genro_asgi_worker`).
    python: Interpreter,
    /// The effective configuration, as the children read it.
    config_json: String,
    /// ` [name]` for process titles, or empty.
    title: String,
    secret_key: Option<String>,
}

impl Launch {
    fn new(config: &Config, python: Interpreter) -> anyhow::Result<Self> {
        Ok(Launch {
            python,
            config_json: serde_json::to_string(config).context("serializing the configuration")?,
            title: match config.application.name.as_str() {
                "" => String::new(),
                name => format!(" [{name}]"),
            },
            secret_key: config.application.secret_key.clone(),
        })
    }
}

impl Spawner {
    /// Starts children with `launch` from now on; returns the previous way.
    fn configure(&mut self, launch: Launch) -> Launch {
        std::mem::replace(&mut self.launch, launch)
    }

    fn bind(&mut self, slot: usize) -> anyhow::Result<()> {
        let socket = match &self.activated {
            // Socket activation: every slot shares the socket systemd passed.
            Some(shared) => shared.try_clone()?,
            None => crate::sockets::bind_slots(self.addr, 1, self.backlog)?
                .pop()
                .context("bound no socket")?,
        };
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        self.sockets[slot] = Some(socket);
        Ok(())
    }

    /// Starts a worker for `slot`, with its front socket when HTTP/3 is on.
    fn spawn(&mut self, slot: usize, generation: u64) -> std::io::Result<tokio::process::Child> {
        let fd = match self.sockets.get(slot) {
            Some(Some(socket)) => socket.as_raw_fd(),
            _ => {
                return Err(std::io::Error::other(format!(
                    "slot {slot} has no listening socket"
                )))
            }
        };
        let mut fds = vec![(fd, genro_shared::LISTEN_FD)];
        let front = match &self.front_dir {
            Some(dir) => {
                let path = dir.join(format!("slot-{slot}-{generation}.sock"));
                let (socket, listener) = FrontSocket::bind(path)?;
                fds.push((listener.as_raw_fd(), genro_shared::FRONT_FD));
                // The listener goes to the worker; ours closes when this scope ends.
                Some((socket, listener))
            }
            None => None,
        };
        // The worker's title is set by the worker itself (`--title`): a custom argv[0] would
        // make CPython lose the virtualenv's sys.prefix.
        let title = format!("genro-asgi: worker {slot}{}", self.launch.title);
        let args = [
            "-m",
            crate::interpreter::WORKER_MODULE,
            "--slot",
            &slot.to_string(),
            "--generation",
            &generation.to_string(),
            "--title",
            &title,
        ];
        let python = self.launch.python.program().to_owned();
        let child = self.launch(&python, None, &args, fds)?;
        if let (Some((socket, _listener)), Some(pid)) = (front, child.id()) {
            self.front_sockets.insert(pid, socket);
        }
        Ok(child)
    }

    /// Starts the HTTP/3 front with the UDP socket on [`genro_shared::LISTEN_FD`].
    fn spawn_front(&self, generation: u64) -> std::io::Result<tokio::process::Child> {
        let Some(udp) = &self.udp else {
            return Err(std::io::Error::other("no UDP socket for the HTTP/3 front"));
        };
        let fds = vec![(udp.as_raw_fd(), genro_shared::LISTEN_FD)];
        let args = ["front", "--generation", &generation.to_string()];
        let title = format!("genro-asgi: http3 front{}", self.launch.title);
        self.launch(&self.exe, Some(title), &args, fds)
    }

    /// Starts `program` as a child (with `arg0` as its process title when given): `fds`
    /// are (ours, theirs) descriptors to pass.
    fn launch(
        &self,
        program: &Path,
        arg0: Option<String>,
        args: &[&str],
        fds: Vec<(i32, i32)>,
    ) -> std::io::Result<tokio::process::Child> {
        let mut command = std::process::Command::new(program);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        if let Some(secret) = &self.launch.secret_key {
            // The app reads its secret from the environment, whatever source set it.
            command.env("GENRO_ASGI_APPLICATION_SECRET_KEY", secret);
        }
        command
            .args(args)
            .env(genro_shared::ENV_CONFIG, &self.launch.config_json)
            .env(genro_shared::ENV_CONTROL, &self.control_path)
            .stdin(std::process::Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls are made: dup2 puts
        // each socket on the agreed fd (clearing close-on-exec), setpgid keeps the
        // terminal's signals for the supervisor alone, and prctl asks the kernel to stop
        // the child if the supervisor dies.
        unsafe {
            command.pre_exec(move || {
                for &(ours, theirs) in &fds {
                    if libc::dup2(ours, theirs) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        tokio::process::Command::from(command)
            .kill_on_drop(false)
            .spawn()
    }

    /// Where the front forwards: the socket of every active slot's ready worker (not a
    /// starting one, nor one about to drain).
    fn front_slots(&self, fleet: &Fleet) -> Vec<SlotSocket> {
        fleet
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_active())
            .filter_map(|(slot, s)| {
                let worker = s
                    .worker
                    .as_ref()
                    .filter(|w| w.state == WorkerState::Ready)?;
                Some(SlotSocket {
                    slot: slot as u32,
                    path: self
                        .front_sockets
                        .get(&worker.pid)?
                        .path
                        .to_string_lossy()
                        .into_owned(),
                })
            })
            .collect()
    }
}

enum Event {
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
    /// A reload's interpreter was chosen and probed (or could not be).
    Resolved {
        loaded: Box<Loaded>,
        python: Box<Result<Interpreter, crate::interpreter::InterpreterError>>,
        reply: Option<oneshot::Sender<Message>>,
    },
}

/// Where the answers to a query go.
enum Reply {
    /// `ctl requests` / `ctl stacks`.
    Admin(oneshot::Sender<Message>),
    /// A metrics scrape.
    Scrape(oneshot::Sender<Vec<WorkerReport>>),
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
        }
    }
}

/// A query sent to workers, waiting for their answers.
enum Pending {
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

/// The executor's state besides the fleet.
struct Supervisor {
    fleet: Fleet,
    spawner: Spawner,
    notifier: Notifier,
    reloader: Reloader,
    writers: HashMap<u32, mpsc::Sender<Message>>,
    events: mpsc::Sender<Event>,
    started: Instant,
    /// A `ctl reload` waiting for the outcome.
    reload_reply: Option<oneshot::Sender<Message>>,
    /// How workers were started before the reload in progress (restored if it fails).
    before_reload: Option<Launch>,
    /// Worker count from a reloaded config, applied once the reload finished.
    pending_scale: Option<usize>,
    app: String,
    url: String,
    queries: HashMap<u64, Pending>,
    next_query: u64,
    /// The slot list the connected front has (`None`: not sent since its hello).
    front_slots: Option<Vec<SlotSocket>>,
    /// The supervisor's own metrics.
    observed: Observed,
    /// Processes killed because they hung (their restart's reason).
    hung_pids: std::collections::HashSet<u32>,
    /// A reload (not a `max_requests` recycle) is replacing the workers.
    reloading: bool,
    /// `[errors] notify_critical`: the webhook sender.
    webhook: Option<Webhook>,
    /// `[metrics]` as started (fixed until a restart).
    metrics: genro_config::Metrics,
}

impl Supervisor {
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
                        if self
                            .fleet
                            .slots()
                            .get(slot)
                            .is_some_and(|s| s.worker.is_some())
                        {
                            // A replacement beside the serving worker.
                            self.observed.restart(if self.reloading {
                                "reload"
                            } else {
                                "max_requests"
                            });
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
                    Command::Kill(pid) => {
                        tracing::warn!(pid, "process did not stop in time; killing it");
                        signal_pid(pid, libc::SIGKILL);
                    }
                    Command::Hung { pid, why } => self.hung(pid, why),
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
                    }
                    Command::Reloaded => {
                        if std::mem::take(&mut self.reloading) {
                            self.observed.reload(true);
                        }
                        self.before_reload = None;
                        self.observed
                            .set_python_version(&self.spawner.launch.python.probe.version_info);
                        tracing::info!("reload complete: every slot runs a new worker");
                        self.notifier.send(&format!(
                            "READY=1\nSTATUS=serving {} with {} worker(s)",
                            self.url,
                            self.fleet.size()
                        ));
                        self.answer_reload(Message::Done {
                            message: "reload complete".into(),
                        });
                        if let Some(workers) = self.pending_scale.take() {
                            next.extend(self.scale(workers));
                        }
                    }
                    Command::ReloadFailed { slot, code } => {
                        let why = match code {
                            Some(code) => format!("exited with code {code}"),
                            None => "could not start".into(),
                        };
                        if std::mem::take(&mut self.reloading) {
                            self.observed.reload(false);
                        }
                        if let Some(before) = self.before_reload.take() {
                            self.spawner.configure(before);
                        }
                        let message = format!("reload aborted: the new worker for slot {slot} {why} before it was ready; the running workers keep serving");
                        tracing::error!("{message}");
                        self.pending_scale = None;
                        self.notifier.send(
                            "READY=1\nSTATUS=reload failed; serving with the previous workers",
                        );
                        self.answer_reload(Message::Error { message });
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

    /// A worker hangs: ask for its stacks (answered from its Rust side unless the whole
    /// process is stuck), log them, kill it.
    fn hung(&mut self, pid: u32, why: Hang) {
        self.hung_pids.insert(pid);
        let timeout = self.fleet.settings().worker_timeout.as_secs_f64();
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

    fn next_query_id(&mut self) -> u64 {
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
    fn query_workers(&mut self, what: QueryKind, reply: Reply) {
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
    fn probe(&mut self, probe: Probe) {
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
                    Phase::Stopping { .. } | Phase::Done => Err("draining: shutting down".into()),
                    Phase::Starting if ready == 0 => {
                        Err(format!("starting: 0 of {size} worker(s) ready"))
                    }
                    Phase::Serving if ready == 0 => Err(format!("no worker ready (of {size})")),
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
    fn answered(&mut self, pid: u32, id: u64, mut report: WorkerReport) {
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
    fn query_expired(&mut self, id: u64) {
        match self.queries.remove(&id) {
            Some(Pending::Hung { pid }) => {
                tracing::error!(pid, "the hung worker did not answer for its stacks");
                signal_pid(pid, libc::SIGKILL);
            }
            Some(Pending::Admin { reply, reports, .. }) => reply.send(reports),
            None => {}
        }
    }

    fn answer_reload(&mut self, answer: Message) {
        if let Some(reply) = self.reload_reply.take() {
            let _ = reply.send(answer);
        }
    }

    /// Re-reads the configuration and starts replacing the workers.
    /// A reload, first half: re-read the configuration, then choose and probe the
    /// interpreter on a blocking thread (it starts a python: 60-80 ms, at most the probe's
    /// timeout) so the loop keeps serving heartbeats and `ctl` meanwhile; the second half
    /// is [`Supervisor::handle_resolved`].
    fn reload(&mut self, reply: Option<oneshot::Sender<Message>>) -> Vec<Command> {
        if let Err(refused) = self.fleet.handle_reload_requested() {
            return self.refuse_reload(reply, format!("reload refused: {refused}"));
        }
        let loaded = match (self.reloader)() {
            Ok(loaded) => loaded,
            Err(err) => {
                self.fleet.handle_reload_abandoned();
                return self.refuse_reload(reply, config_aborted(&err));
            }
        };
        if let Err(message) = preflight(&loaded.config) {
            self.fleet.handle_reload_abandoned();
            return self.refuse_reload(reply, config_aborted(&message));
        }
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let python = crate::interpreter::resolve(&loaded);
            let _ = events.blocking_send(Event::Resolved {
                loaded: Box::new(loaded),
                python: Box::new(python),
                reply,
            });
        });
        Vec::new()
    }

    fn refuse_reload(
        &self,
        reply: Option<oneshot::Sender<Message>>,
        message: String,
    ) -> Vec<Command> {
        tracing::error!("{message}");
        self.observed.reload(false);
        if let Some(reply) = reply {
            let _ = reply.send(Message::Error { message });
        }
        Vec::new()
    }

    /// A reload, second half: the interpreter for the new workers is known (or the reload
    /// is refused and the running fleet keeps serving).
    fn handle_resolved(
        &mut self,
        loaded: Loaded,
        python: Result<Interpreter, crate::interpreter::InterpreterError>,
        reply: Option<oneshot::Sender<Message>>,
    ) -> Vec<Command> {
        let python = match python {
            Ok(python) => python,
            Err(err) => {
                self.fleet.handle_reload_abandoned();
                return self.refuse_reload(reply, config_aborted(&err));
            }
        };
        let mut config = loaded.config;
        self.keep_http3(&mut config);
        self.keep_metrics(&mut config);
        let config = &config;
        let addr = crate::sockets::resolve(&config.server.host, config.server.port).ok();
        if addr.is_some_and(|a| a != self.spawner.addr && config.server.port != 0) {
            tracing::warn!(
                "[server] host/port changed: a restart is needed to listen elsewhere; still on {}",
                self.url
            );
        }
        let launch = match Launch::new(config, python) {
            Ok(launch) => launch,
            Err(err) => {
                self.fleet.handle_reload_abandoned();
                return self.refuse_reload(reply, format!("reload aborted: {err:#}"));
            }
        };
        let commands = match self.fleet.handle_reload() {
            Ok(commands) => commands,
            Err(refused) => return self.refuse_reload(reply, format!("reload refused: {refused}")),
        };
        let before = self.spawner.configure(launch);
        let python = &self.spawner.launch.python;
        if python.program() != before.python.program() {
            tracing::info!("workers now run in {}", python.describe());
        }
        if let Some(pid) = self.fleet.front_pid() {
            let configure = Message::Configure {
                config: self.spawner.launch.config_json.clone(),
            };
            let sent = self
                .writers
                .get(&pid)
                .is_some_and(|w| w.try_send(configure).is_ok());
            if !sent {
                tracing::warn!(
                    pid,
                    "the HTTP/3 front is not connected: it keeps its settings"
                );
            }
        }
        self.fleet.set_settings(settings(config));
        match start_webhook(config) {
            Ok(webhook) => self.webhook = webhook,
            Err(err) => tracing::error!("{err:#}; critical events are not sent"),
        }
        self.app = config.application.app.clone();
        self.pending_scale = Some(config.server.workers).filter(|n| *n != self.fleet.size());
        tracing::info!(
            "reloading: replacing {} worker(s) one slot at a time",
            self.fleet.size()
        );
        self.notifier.reloading();
        self.reload_reply = reply;
        self.reloading = true;
        self.before_reload = Some(before);
        commands
    }

    /// Whether HTTP/3 runs and on which UDP port is fixed at start (the sockets are bound
    /// then): a reload that changes them keeps the running values and says so.
    fn keep_http3(&self, config: &mut Config) {
        let running = self.spawner.udp_port;
        let wanted = config.http3.enabled.then_some(match config.http3.port {
            0 => self.spawner.addr.port(),
            port => port,
        });
        if wanted != running {
            tracing::warn!("[http3] enabled/port changed: a restart is needed for that; keeping the running HTTP/3 setup");
        }
        config.http3.enabled = running.is_some();
        if let Some(port) = running {
            config.http3.port = port;
        }
    }

    /// The metrics listener is bound at start: a reload keeps `[metrics]` as it runs (the
    /// workers must keep counting for it), and says so if the file asks otherwise.
    fn keep_metrics(&self, config: &mut Config) {
        if config.metrics != self.metrics {
            tracing::warn!("[metrics] changed: a restart is needed for that; keeping the running metrics setup");
            config.metrics = self.metrics.clone();
        }
    }

    fn scale(&mut self, workers: usize) -> Vec<Command> {
        match self.fleet.handle_scale(workers) {
            Ok(commands) => {
                tracing::info!("scaling to {workers} worker(s)");
                commands
            }
            Err(refused) => {
                tracing::warn!("scale to {workers} refused: {refused}");
                Vec::new()
            }
        }
    }

    fn stop(&mut self, fast: bool) -> Vec<Command> {
        self.notifier.send("STOPPING=1\nSTATUS=draining");
        // Nothing respawns from here on: let go of the listening sockets, so that once the
        // workers stop accepting, new connections are refused (which a client or load
        // balancer may retry) instead of queued where nobody will accept them.
        // The front's UDP socket too: it drains first and, once it exited, QUIC clients
        // get "port unreachable" at once. The workers' front sockets stay until each
        // worker exits: the workers serve the front until it is gone.
        self.spawner.sockets.iter_mut().for_each(|s| *s = None);
        self.spawner.udp = None;
        self.spawner.activated = None;
        let mut commands = self.fleet.handle_stop(Instant::now(), exit::OK);
        if fast {
            commands.extend(self.fleet.handle_stop(Instant::now(), exit::OK));
        }
        commands
    }

    fn status(&self) -> FleetStatus {
        let now = Instant::now();
        let phase = match self.fleet.phase() {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Stopping { .. } | Phase::Done => "stopping",
        };
        let report = |slot: usize, w: &Worker| WorkerStatus {
            slot: slot as u32,
            pid: w.pid,
            generation: w.generation,
            state: match w.state {
                WorkerState::Starting => "starting",
                WorkerState::Ready => "ready",
                WorkerState::Draining => "draining",
            }
            .into(),
            uptime: now.duration_since(w.started).as_secs_f64(),
            served: w.served,
            in_flight: w.in_flight,
            loop_lag_ms: w.loop_lag_ms,
        };
        let mut workers = Vec::new();
        for (slot, s) in self.fleet.slots().iter().enumerate() {
            for w in s
                .worker
                .iter()
                .chain(s.incoming.iter())
                .chain(s.retiring.iter())
            {
                workers.push(report(slot, w));
            }
        }
        FleetStatus {
            pid: std::process::id(),
            phase: phase.into(),
            reloading: self.fleet.is_reloading(),
            uptime: now.duration_since(self.started).as_secs_f64(),
            restarts: self.fleet.restarts(),
            workers,
            respawning: self
                .fleet
                .respawning(now)
                .into_iter()
                .map(|(unit, left, failures)| RespawnStatus {
                    slot: match unit {
                        Unit::Slot(slot) => slot as u32,
                        Unit::Front => 0,
                    },
                    front: unit == Unit::Front,
                    respawn_in: left.as_secs_f64(),
                    failures,
                    crash_loop: failures >= crate::fleet::CRASH_LOOP,
                })
                .collect(),
            front: self
                .fleet
                .front()
                .and_then(|f| f.process.as_ref())
                .map(|w| report(0, w)),
        }
    }

    fn admin(&mut self, request: Message, reply: oneshot::Sender<Message>) -> Vec<Command> {
        match request {
            Message::Requests => {
                self.query_workers(QueryKind::Requests, Reply::Admin(reply));
                Vec::new()
            }
            Message::Stacks => {
                self.query_workers(QueryKind::Stacks, Reply::Admin(reply));
                Vec::new()
            }
            Message::Status => {
                let _ = reply.send(Message::StatusReport {
                    status: self.status(),
                });
                Vec::new()
            }
            Message::Reload => self.reload(Some(reply)),
            Message::Drain | Message::Stop => {
                let fast = matches!(request, Message::Stop);
                let _ = reply.send(Message::Done {
                    message: if fast {
                        "stopping now".into()
                    } else {
                        "draining, then exiting".into()
                    },
                });
                tracing::info!("{} requested by ctl", if fast { "stop" } else { "drain" });
                self.stop(fast)
            }
            Message::Scale { workers } if workers >= 1 => {
                match self.fleet.handle_scale(workers as usize) {
                    Ok(commands) => {
                        tracing::info!("scaling to {workers} worker(s) (ctl)");
                        let _ = reply.send(Message::Done {
                            message: format!("scaling to {workers} worker(s)"),
                        });
                        commands
                    }
                    Err(refused) => {
                        let _ = reply.send(Message::Error {
                            message: format!("scale refused: {refused}"),
                        });
                        Vec::new()
                    }
                }
            }
            Message::Scale { .. } => {
                let _ = reply.send(Message::Error {
                    message: "scale needs at least 1 worker".into(),
                });
                Vec::new()
            }
            other => {
                let _ = reply.send(Message::Error {
                    message: format!("unexpected request {}", other.kind()),
                });
                Vec::new()
            }
        }
    }
}

async fn supervise(
    loaded: &Loaded,
    python: Interpreter,
    run_dir: &Path,
    reloader: Reloader,
    activated: Option<Socket>,
) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = &loaded.config;
    {
        use std::os::unix::fs::DirBuilderExt;
        // Directories created here are private (0700); an existing one is left as it is.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .with_context(|| format!("creating run_dir {}", run_dir.display()))?;
    }
    let addr = crate::sockets::resolve(&config.server.host, config.server.port)?;
    let sockets = match &activated {
        Some(socket) => {
            tracing::info!("using the listening socket passed by systemd (LISTEN_FDS); [server] host/port are not bound");
            (0..config.server.workers)
                .map(|_| socket.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?
        }
        None => crate::sockets::bind_slots(addr, config.server.workers, config.server.backlog)?,
    };
    let bound = sockets[0]
        .local_addr()?
        .as_socket()
        .context("bound address")?;
    let udp = if config.http3.enabled {
        let port = match config.http3.port {
            0 => bound.port(),
            port => port,
        };
        Some(crate::sockets::bind_udp(SocketAddr::new(bound.ip(), port))?)
    } else {
        None
    };
    let metrics_listener = if config.metrics.enabled {
        let addr = crate::sockets::resolve(&config.metrics.host, config.metrics.export_port)?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("[metrics] host/export_port: cannot listen on {addr} for the metrics endpoint")
        })?;
        tracing::info!(
            "metrics on http://{addr}{} (and /healthz, /readyz)",
            config.metrics.endpoint
        );
        Some(listener)
    } else {
        None
    };
    let control_path = run_dir.join("control.sock");
    let listener = control::bind(&control_path)
        .with_context(|| format!("control socket {}", control_path.display()))?;
    let (events_tx, mut events) = mpsc::channel::<Event>(256);
    let (control_tx, mut control_rx) = mpsc::channel::<Incoming>(256);
    tokio::spawn(control::serve(listener, control_tx));
    {
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(incoming) = control_rx.recv().await {
                if events_tx.send(Event::Control(incoming)).await.is_err() {
                    return;
                }
            }
        });
    }
    let spawner = Spawner {
        exe: std::env::current_exe().context("locating the genro-asgi binary")?,
        addr: bound,
        backlog: config.server.backlog,
        launch: Launch::new(config, python.clone())?,
        control_path,
        sockets: sockets.into_iter().map(Some).collect(),
        activated,
        front_sockets: HashMap::new(),
        front_dir: config.http3.enabled.then(|| run_dir.to_owned()),
        udp_port: udp
            .as_ref()
            .and_then(|u| u.local_addr().ok())
            .map(|a| a.port()),
        udp,
    };
    let scheme = if config.ssl.enabled { "https" } else { "http" };
    let mut url = format!("{scheme}://{bound}");
    if let Some(udp) = spawner.udp.as_ref().and_then(|u| u.local_addr().ok()) {
        url.push_str(&format!(" (HTTP/3 on udp {udp})"));
    }
    tracing::info!(
        "genro-asgi {} starting {} worker(s) for {} on {url}",
        env!("CARGO_PKG_VERSION"),
        config.server.workers,
        config.application.app
    );
    tracing::info!("workers run in {}", python.describe());
    let mut fleet = Fleet::new(config.server.workers, settings(config));
    if config.http3.enabled {
        fleet = fleet.with_front();
    }
    let mut sup = Supervisor {
        fleet,
        spawner,
        notifier: Notifier::from_env(),
        reloader,
        writers: HashMap::new(),
        events: events_tx,
        started: Instant::now(),
        reload_reply: None,
        before_reload: None,
        pending_scale: None,
        app: config.application.app.clone(),
        url,
        queries: HashMap::new(),
        next_query: 0,
        front_slots: None,
        observed: Observed::new(&python.probe.version_info),
        hung_pids: Default::default(),
        reloading: false,
        webhook: start_webhook(config)?,
        metrics: config.metrics.clone(),
    };
    if let Some(listener) = metrics_listener {
        let (probes_tx, mut probes_rx) = mpsc::channel::<Probe>(64);
        tokio::spawn(crate::endpoints::serve(
            listener,
            config.metrics.endpoint.clone(),
            sup.observed.clone(),
            probes_tx,
        ));
        let events_tx = sup.events.clone();
        tokio::spawn(async move {
            while let Some(probe) = probes_rx.recv().await {
                if events_tx.send(Event::Probe(probe)).await.is_err() {
                    return;
                }
            }
        });
    }
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
        let now = Instant::now;
        pending = tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Control(Incoming::Hello { pid, writer }) => {
                    if sup.fleet.is_front(pid) {
                        sup.front_slots = None;
                    }
                    sup.writers.insert(pid, writer);
                    Vec::new()
                }
                Event::Control(Incoming::Message { pid, message: Message::Ready }) => {
                    tracing::debug!(pid, "worker ready");
                    sup.fleet.handle_ready(pid, now())
                }
                Event::Control(Incoming::Message { pid, message: Message::Heartbeat { in_flight, served, loop_lag_ms, loop_stalled_ms } }) => {
                    let beat = Beat {
                        in_flight,
                        served,
                        loop_lag_ms,
                        loop_stalled: Duration::from_millis(loop_stalled_ms),
                    };
                    sup.fleet.handle_heartbeat(pid, beat, now())
                }
                Event::Control(Incoming::Message { pid, message: Message::Answer { id, report } }) => {
                    sup.answered(pid, id, report);
                    Vec::new()
                }
                Event::Control(Incoming::Message { pid, message: Message::Critical { mut event } }) => {
                    if let (Some(webhook), Some(fields)) = (&sup.webhook, event.as_object_mut()) {
                        if let Some(slot) = sup.fleet.slot_of(pid) {
                            fields.insert("worker".into(), slot.into());
                        }
                        fields.insert("pid".into(), pid.into());
                        webhook.notify(event);
                    }
                    Vec::new()
                }
                Event::Control(Incoming::Message { pid, message }) => {
                    tracing::warn!(pid, "unexpected control message {} from a worker", message.kind());
                    Vec::new()
                }
                Event::Control(Incoming::Admin { request, reply }) => sup.admin(request, reply),
                Event::Exited { pid, code } => {
                    sup.writers.remove(&pid);
                    let reason = if sup.hung_pids.remove(&pid) {
                        "hung"
                    } else if code.is_none() {
                        "signal"
                    } else {
                        "exit"
                    };
                    sup.spawner.front_sockets.remove(&pid);
                    let stopping = matches!(sup.fleet.phase(), Phase::Stopping { .. });
                    let (what, fatal) = if sup.fleet.is_front(pid) {
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
                    let commands = sup.fleet.handle_exited(pid, code, now());
                    // A serving worker (or the front) that exited and will be respawned.
                    if commands.iter().any(|c| matches!(c, Command::Backoff { .. })) {
                        sup.observed.restart(reason);
                    }
                    commands
                }
                Event::QueryTimeout(id) => {
                    sup.query_expired(id);
                    Vec::new()
                }
                Event::Drain(pid) => {
                    sup.drain(pid);
                    Vec::new()
                }
                Event::Probe(probe) => {
                    sup.probe(probe);
                    Vec::new()
                }
                Event::Resolved { loaded, python, reply } => sup.handle_resolved(*loaded, *python, reply),
            },
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: draining");
                sup.stop(false)
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: draining (again for a fast stop)");
                sup.stop(false)
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                sup.reload(None)
            }
            _ = sigttin.recv() => {
                let workers = sup.fleet.size() + 1;
                sup.scale(workers)
            }
            _ = sigttou.recv() => {
                let workers = sup.fleet.size().saturating_sub(1).max(1);
                sup.scale(workers)
            }
            _ = sigusr1.recv() => {
                match genro_shared::logfile::reopen() {
                    Ok(true) => tracing::info!("SIGUSR1: log file reopened"),
                    Ok(false) => tracing::info!("SIGUSR1: logging to stderr, nothing to reopen"),
                    Err(err) => tracing::error!("SIGUSR1: cannot reopen the log file: {err}"),
                }
                for pid in sup.writers.keys() {
                    signal_pid(*pid, libc::SIGUSR1);
                }
                Vec::new()
            }
            _ = keepalive => {
                sup.notifier.send("WATCHDOG=1");
                Vec::new()
            }
            _ = sleep => sup.fleet.handle_tick(now()),
        };
    }
}

/// The `[errors] notify_webhook` sender, when `notify_critical` is on.
fn start_webhook(config: &Config) -> anyhow::Result<Option<Webhook>> {
    match (&config.errors.notify_webhook, config.errors.notify_critical) {
        (Some(url), true) => Webhook::start(url)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("[errors] notify_webhook: {e}")),
        _ => Ok(None),
    }
}

/// Cuts the reports so that the answer fits in one control frame: each worker gets an
/// equal share of the room.
fn fit_reports(mut reports: Vec<WorkerReport>) -> Vec<WorkerReport> {
    let n = reports.len().max(1);
    // A listed request takes at most ~300 bytes of JSON (the path is cut to 256).
    let max_requests = (MAX_FRAME * 3 / 4 / 300 / n).max(1);
    let max_stacks = MAX_FRAME * 3 / 4 / n;
    for r in &mut reports {
        r.requests.truncate(max_requests);
        if let Some(stacks) = r.stacks.as_mut() {
            genro_shared::protocol::cut_text(stacks, max_stacks);
        }
    }
    reports
}

fn signal_pid(pid: u32, signal: i32) {
    if pid != 0 {
        // SAFETY: kill has no memory-safety preconditions; pid is one of our children.
        unsafe { libc::kill(pid as i32, signal) };
    }
}
