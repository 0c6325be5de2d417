//! `genro-asgi serve`: runs the fleet. This module owns the start (checks, sockets, the
//! supervisor's parts) and the requests that change the fleet: admin (`ctl`), status,
//! reload, scale, stop. The loop is [`crate::executor`], children are started by
//! [`crate::spawner`], questions to workers go through [`crate::query`].
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
use crate::executor::{Event, Supervisor};
use crate::fleet::{Command, Fleet, Phase, Settings, Unit, Worker, WorkerState};
use crate::interpreter::Interpreter;
use crate::notify::Notifier;
use crate::query::Reply;
use crate::spawner::{Launch, Spawner};
use crate::webhook::Webhook;
use anyhow::Context;
use genro_config::{Config, ConfigError, Loaded};
use genro_shared::exit;
use genro_shared::protocol::{
    FleetStatus, Message, QueryKind, ReplacedStatus, RespawnStatus, WorkerStatus,
};
use socket2::Socket;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

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

/// What the schema cannot check and the server cannot serve with (see [`preflight`]).
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// `[application] app` is empty.
    #[error("no app to serve: set [application] app = module:attr in the config file, GENRO_ASGI_APPLICATION_APP, or --app")]
    NoApp,
    /// The TLS certificate, key or settings do not load.
    #[error(transparent)]
    Tls(#[from] genro_shared::tls::TlsError),
    /// `[inspector] enabled` without the metrics listener that serves it.
    #[error("[inspector] enabled needs [metrics] enabled = true: the inspector is served on the metrics listener")]
    InspectorWithoutMetrics,
    /// `[inspector] token` cannot travel in a header as it is.
    #[error("[inspector] token: use printable ASCII without spaces (it is sent in an Authorization header)")]
    InspectorToken,
    /// `[metrics] endpoint` takes the inspector's paths.
    #[error("[metrics] endpoint = {0:?} collides with the inspector's /inspector pages; choose another endpoint")]
    InspectorPath(String),
    /// `[reload]` names a directory or pattern that cannot be used.
    #[error(transparent)]
    Reload(#[from] crate::watch::WatchError),
    /// `[logging] access_format` does not parse.
    #[error("[logging] access_format = {format:?}: {why}")]
    AccessFormat {
        /// The configured format.
        format: String,
        /// What the parser said.
        why: genro_shared::access::FormatError,
    },
}

/// Checks what the schema cannot: an app to serve, and TLS files that load (in Rust, before
/// any worker: a bad file is a configuration error, not a worker crash loop).
pub(crate) fn preflight(config: &Config) -> Result<(), PreflightError> {
    if config.application.app.is_empty() {
        return Err(PreflightError::NoApp);
    }
    if config.ssl.enabled {
        genro_shared::tls::server_config(&config.ssl, config.ssl.min_version, &[b"h2"])
            .map_err(PreflightError::Tls)?;
    }
    if config.reload.enabled {
        crate::watch::Filter::new(config)?;
    }
    if config.inspector.enabled {
        let token = config.inspector.token.as_deref().unwrap_or("");
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PreflightError::InspectorToken);
        }
        if !config.metrics.enabled {
            return Err(PreflightError::InspectorWithoutMetrics);
        }
        if crate::inspector::is_inspector_path(&config.metrics.endpoint) {
            return Err(PreflightError::InspectorPath(
                config.metrics.endpoint.clone(),
            ));
        }
    }
    genro_shared::access::AccessFormat::parse(&config.logging.access_format).map_err(|why| {
        PreflightError::AccessFormat {
            format: config.logging.access_format.clone(),
            why,
        }
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

pub(crate) fn settings(config: &Config) -> Settings {
    Settings {
        grace: config.server.graceful_timeout,
        executor_grace: config.executors.shutdown_timeout,
        worker_timeout: config.server.worker_timeout,
        max_requests: config.server.max_requests,
        max_requests_jitter: config.server.max_requests_jitter,
        max_lifetime: config.server.max_lifetime,
        max_lifetime_jitter: config.server.max_lifetime_jitter,
        max_rss: config.server.max_rss,
    }
}

impl Supervisor {
    /// Re-reads the configuration and starts replacing the workers.
    /// A reload, first half: re-read the configuration, then choose and probe the
    /// interpreter on a blocking thread (it starts a python: 60-80 ms, at most the probe's
    /// timeout) so the loop keeps serving heartbeats and `ctl` meanwhile; the second half
    /// is [`Supervisor::handle_resolved`].
    pub(crate) fn reload(&mut self, reply: Option<oneshot::Sender<Message>>) -> Vec<Command> {
        if let Err(refused) = self.fleet.handle_reload_requested() {
            return self.refuse_reload(reply, format!("reload refused: {refused}"));
        }
        let loaded = match (self.reloader)() {
            Ok(loaded) => loaded,
            Err(err) => {
                return self.abandon_reload(reply, config_aborted(&err));
            }
        };
        if let Err(message) = preflight(&loaded.config) {
            return self.abandon_reload(reply, config_aborted(&message));
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

    /// The requested reload will not happen: say why, and run the one that files changed
    /// since asked for (`--reload`: the change may be the fix).
    fn abandon_reload(
        &mut self,
        reply: Option<oneshot::Sender<Message>>,
        message: String,
    ) -> Vec<Command> {
        self.fleet.handle_reload_abandoned();
        let mut commands = self.refuse_reload(reply, message);
        commands.extend(self.reload_again());
        commands
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
    pub(crate) fn handle_resolved(
        &mut self,
        loaded: Loaded,
        python: Result<Interpreter, crate::interpreter::InterpreterError>,
        reply: Option<oneshot::Sender<Message>>,
    ) -> Vec<Command> {
        let python = match python {
            Ok(python) => python,
            Err(err) => {
                return self.abandon_reload(reply, config_aborted(&err));
            }
        };
        let workers_note = loaded.workers_note();
        let mut config = loaded.config;
        self.keep_http3(&mut config);
        self.keep_uds(&mut config);
        self.keep_metrics(&mut config);
        self.keep_debug(&mut config);
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
                return self.abandon_reload(reply, format!("reload aborted: {err:#}"));
            }
        };
        // The fleet holds the peer's token; the peer waits here until the fleet's outcome.
        let token = reply.as_ref().map(|_| self.next_query_id());
        let commands = match self.fleet.handle_reload(token, config.server.workers) {
            Ok(commands) => commands,
            Err(refused) => return self.refuse_reload(reply, format!("reload refused: {refused}")),
        };
        if let (Some(token), Some(reply)) = (token, reply) {
            self.reload_replies.insert(token, reply);
        }
        if self.spawner.stage(launch) {
            let python = &self.spawner.launch.python;
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
        if let Some(note) = workers_note {
            tracing::info!("{note}");
        }
        tracing::info!(
            "reloading: replacing {} worker(s) one slot at a time",
            self.fleet.size()
        );
        self.notifier.reloading();
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

    /// The `[server] uds` socket is bound at start: a reload keeps it (and its absence).
    fn keep_uds(&self, config: &mut Config) {
        if config.server.uds != self.uds.0 || config.server.uds_mode != self.uds.1 {
            tracing::warn!("[server] uds/uds_mode changed: a restart is needed for that; keeping the running socket");
            config.server.uds = self.uds.0.clone();
            config.server.uds_mode = self.uds.1;
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

    /// The debugger's listener is bound at start: a reload keeps `[debug]` as it runs (a
    /// worker must not hold failing requests for a debugger nobody can reach).
    fn keep_debug(&self, config: &mut Config) {
        if config.debug != self.debug.0 {
            tracing::warn!(
                "[debug] changed: a restart is needed for that; keeping the running debugger setup"
            );
            config.debug = self.debug.0.clone();
        }
    }

    pub(crate) fn scale(&mut self, workers: usize) -> Vec<Command> {
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

    pub(crate) fn stop(&mut self, fast: bool) -> Vec<Command> {
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

    pub(crate) fn status(&self) -> FleetStatus {
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
            rss: w.rss,
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
            replaced: self
                .replaced
                .iter()
                .map(|r| ReplacedStatus {
                    slot: r.slot.map(|s| s as u32),
                    pid: r.pid,
                    reason: r.reason.clone(),
                    ago: now.duration_since(r.at).as_secs_f64(),
                })
                .collect(),
        }
    }

    pub(crate) fn admin(
        &mut self,
        request: Message,
        reply: oneshot::Sender<Message>,
    ) -> Vec<Command> {
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
    // `[server] uds`: one Unix socket all slots share (systemd's socket comes first).
    let (activated, _uds_file) = match (activated, &config.server.uds) {
        (None, Some(path)) => {
            let (socket, file) =
                crate::sockets::bind_unix(path, config.server.uds_mode, config.server.backlog)?;
            (Some(socket), Some(file))
        }
        (activated, _) => (activated, None),
    };
    let sockets = match &activated {
        Some(socket) => {
            if config.server.uds.is_none() {
                tracing::info!("using the listening socket passed by systemd (LISTEN_FDS); [server] host/port are not bound");
            }
            (0..config.server.workers)
                .map(|_| socket.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?
        }
        None => crate::sockets::bind_slots(addr, config.server.workers, config.server.backlog)?,
    };
    let local = sockets[0].local_addr()?;
    // A Unix socket has no IP address: its slots' address is unused (they share the socket).
    let bound = local.as_socket().unwrap_or(addr);
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
    let debug_listener = if config.debug.enabled {
        let addr = crate::sockets::resolve(&config.debug.host, config.debug.debug_port)?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("[debug] host/debug_port: cannot listen on {addr} for the remote debugger")
        })?;
        if addr.ip().is_loopback() {
            tracing::warn!("remote debugger on {addr}: development only (genro-asgi debug attach)");
        } else {
            tracing::warn!(
                "remote debugger on {addr}, beyond loopback: whoever passes allowed_ips and the secret runs code in the app"
            );
        }
        Some(listener)
    } else {
        None
    };
    let control_path = run_dir.join("control.sock");
    let listener = control::bind(&control_path)
        .with_context(|| format!("control socket {}", control_path.display()))?;
    let (events_tx, events) = mpsc::channel::<Event>(256);
    let (control_tx, mut control_rx) = mpsc::channel::<Incoming>(256);
    if config.reload.enabled {
        crate::watch::start(config, events_tx.clone())?;
    }
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
        previous: None,
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
    let mut url = match local.as_pathname() {
        Some(path) => format!("unix:{}", path.display()),
        None => format!("{scheme}://{bound}"),
    };
    if let Some(udp) = spawner.udp.as_ref().and_then(|u| u.local_addr().ok()) {
        url.push_str(&format!(" (HTTP/3 on udp {udp})"));
    }
    let auto = (loaded.workers_auto.as_ref())
        .map_or_else(String::new, |budget| format!(" (auto: {})", budget.reason));
    tracing::info!(
        "genro-asgi {} starting {} worker(s){auto} for {} on {url}",
        env!("CARGO_PKG_VERSION"),
        config.server.workers,
        config.application.app
    );
    tracing::info!("workers run in {}", python.describe());
    let mut fleet = Fleet::new(config.server.workers, settings(config));
    if config.http3.enabled {
        fleet = fleet.with_front();
    }
    let sup = Supervisor {
        fleet,
        spawner,
        notifier: Notifier::from_env(),
        reloader,
        writers: HashMap::new(),
        events: events_tx,
        started: Instant::now(),
        reload_replies: HashMap::new(),
        app: config.application.app.clone(),
        url,
        queries: HashMap::new(),
        next_query: 0,
        front_slots: None,
        observed: Observed::new(&python.probe.version_info),
        hung_pids: Default::default(),
        replaced: Default::default(),
        webhook: start_webhook(config)?,
        metrics: config.metrics.clone(),
        reload_after: false,
        debug: (config.debug.clone(), run_dir.to_owned()),
        uds: (config.server.uds.clone(), config.server.uds_mode),
    };
    if let Some(listener) = metrics_listener {
        tokio::spawn(crate::endpoints::serve(
            listener,
            config.metrics.endpoint.clone(),
            sup.observed.clone(),
            probes(&sup.events),
            crate::inspector::Inspector::new(config),
        ));
    }
    if let Some(listener) = debug_listener {
        let debugger =
            crate::debugger::Debugger::new(config, run_dir.to_owned(), probes(&sup.events))?;
        tokio::spawn(crate::debugger::serve(
            listener,
            std::sync::Arc::new(debugger),
        ));
    }
    crate::executor::run(sup, events).await
}

/// A channel of questions for the supervisor's loop (from a listener's tasks).
fn probes(events: &mpsc::Sender<Event>) -> mpsc::Sender<Probe> {
    let (probes_tx, mut probes_rx) = mpsc::channel::<Probe>(64);
    let events = events.clone();
    tokio::spawn(async move {
        while let Some(probe) = probes_rx.recv().await {
            if events.send(Event::Probe(probe)).await.is_err() {
                return;
            }
        }
    });
    probes_tx
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
