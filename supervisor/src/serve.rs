//! `genro-asgi serve`: runs the fleet.
//!
//! 1. Validate what the config cannot check alone (an app is set), create the run dir,
//!    bind the slot sockets and the control socket — all before any child starts.
//! 2. Spawn one worker per slot by re-executing this binary (`worker` subcommand), the
//!    slot's socket on fd 3, the effective config as JSON in the environment.
//! 3. Feed the [`Fleet`] state machine with control events, child exits, signals and its
//!    own deadlines, and carry out the commands it returns, until it says `Exit`.

use crate::control::{self, Incoming};
use crate::fleet::{Command, Fleet};
use anyhow::Context;
use genro_config::Loaded;
use genro_shared::exit;
use genro_shared::protocol::Message;
use socket2::Socket;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::mpsc;

/// Runs the server; returns the exit code.
pub fn run(loaded: Loaded) -> i32 {
    let config = &loaded.config;
    crate::logs::init(config, None);
    if config.application.app.is_empty() {
        eprintln!("genro-asgi: configuration error: no app to serve: set [application] app = module:attr in the config file, GENRO_ASGI_APPLICATION_APP, or --app");
        return exit::CONFIG;
    }
    // Certificates and keys are checked here, in Rust, before any socket or worker: a bad
    // file is a configuration error, not a worker crash loop.
    if let Err(err) = genro_worker::server::tls_acceptor(config) {
        eprintln!("genro-asgi: configuration error: {err:#}");
        return exit::CONFIG;
    }
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
    let run_dir = run_dir(config.server.run_dir.as_deref());
    let code = match runtime.block_on(supervise(&loaded, &run_dir)) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            exit::INTERNAL
        }
    };
    if config.server.run_dir.is_none() {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        let _ = std::fs::remove_file(run_dir.join("control.sock"));
    }
    code
}

fn run_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    let pid = std::process::id();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(base) => PathBuf::from(base).join(format!("genro-asgi-{pid}")),
        // SAFETY: geteuid has no preconditions.
        None => {
            std::env::temp_dir().join(format!("genro-asgi-{}-{pid}", unsafe { libc::geteuid() }))
        }
    }
}

struct Spawner {
    exe: PathBuf,
    config_json: String,
    control_path: PathBuf,
    sockets: Vec<Socket>,
    /// ` [name]` for process titles, or empty.
    title: String,
    secret_key: Option<String>,
}

impl Spawner {
    fn spawn(&self, slot: usize, generation: u64) -> std::io::Result<tokio::process::Child> {
        let fd = self.sockets[slot].as_raw_fd();
        let mut command = std::process::Command::new(&self.exe);
        if let Some(secret) = &self.secret_key {
            // The app reads its secret from the environment, whatever source set it.
            command.env("GENRO_ASGI_APPLICATION_SECRET_KEY", secret);
        }
        command
            .arg0(format!("genro-asgi: worker {slot}{}", self.title))
            .args([
                "worker",
                "--slot",
                &slot.to_string(),
                "--generation",
                &generation.to_string(),
            ])
            .env(genro_shared::ENV_CONFIG, &self.config_json)
            .env(genro_shared::ENV_CONTROL, &self.control_path)
            .stdin(std::process::Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls are made: dup2 puts
        // the slot's socket on the agreed fd (clearing close-on-exec), setpgid keeps the
        // terminal's signals for the supervisor alone, and prctl asks the kernel to stop
        // the worker if the supervisor dies.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, genro_shared::LISTEN_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
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
}

enum Event {
    Control(Incoming),
    Exited { pid: u32, code: Option<i32> },
}

async fn supervise(loaded: &Loaded, run_dir: &Path) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let config = &loaded.config;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run_dir {}", run_dir.display()))?;
    let addr = crate::sockets::resolve(&config.server.host, config.server.port)?;
    let sockets = crate::sockets::bind_slots(addr, config.server.workers, config.server.backlog)?;
    let bound = sockets[0]
        .local_addr()?
        .as_socket()
        .context("bound address")?;
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
        config_json: serde_json::to_string(config).context("serializing the configuration")?,
        control_path,
        sockets,
        title: match config.application.name.as_str() {
            "" => String::new(),
            name => format!(" [{name}]"),
        },
        secret_key: config.application.secret_key.clone(),
    };
    let scheme = if config.ssl.enabled { "https" } else { "http" };
    tracing::info!(
        "genro-asgi {} starting {} worker(s) for {} on {scheme}://{bound}",
        env!("CARGO_PKG_VERSION"),
        config.server.workers,
        config.application.app
    );
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut fleet = Fleet::new(config.server.workers, config.server.graceful_timeout);
    let mut writers: HashMap<u32, mpsc::Sender<Message>> = HashMap::new();
    let mut pending = fleet.handle_start();
    loop {
        // Carry out commands; spawning can produce more (a failed spawn schedules a retry).
        while !pending.is_empty() {
            let mut next = Vec::new();
            for command in pending {
                let now = Instant::now();
                match command {
                    Command::Spawn { slot, generation } => match spawner.spawn(slot, generation) {
                        Ok(mut child) => {
                            let pid = child.id().unwrap_or(0);
                            tracing::info!(slot, pid, generation, "worker started");
                            let events_tx = events_tx.clone();
                            tokio::spawn(async move {
                                let code = child.wait().await.ok().and_then(|s| s.code());
                                let _ = events_tx.send(Event::Exited { pid, code }).await;
                            });
                            next.extend(fleet.handle_spawned(slot, pid, now));
                        }
                        Err(err) => {
                            tracing::error!(slot, "cannot start a worker: {err}");
                            next.extend(fleet.handle_spawn_failed(slot, now));
                        }
                    },
                    Command::Drain(pid) => {
                        let sent = match writers.get(&pid) {
                            Some(writer) => writer.try_send(Message::Drain).is_ok(),
                            None => false,
                        };
                        if !sent {
                            // Not connected yet (or gone): the signal does the same.
                            signal_pid(pid, libc::SIGTERM);
                        }
                    }
                    Command::Kill(pid) => {
                        tracing::warn!(pid, "worker did not stop in time; killing it");
                        signal_pid(pid, libc::SIGKILL);
                    }
                    Command::Serving => tracing::info!(
                        "serving {} on {scheme}://{bound} with {} worker(s)",
                        config.application.app,
                        config.server.workers
                    ),
                    Command::Exit(code) => {
                        tracing::info!(code, "supervisor exiting");
                        return Ok(code);
                    }
                }
            }
            pending = next;
        }
        let deadline = fleet.poll_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let now = || Instant::now();
        pending = tokio::select! {
            Some(event) = events.recv() => match event {
                Event::Control(Incoming::Hello { pid, writer }) => {
                    writers.insert(pid, writer);
                    Vec::new()
                }
                Event::Control(Incoming::Message { pid, message: Message::Ready }) => {
                    tracing::debug!(pid, "worker ready");
                    fleet.handle_ready(pid, now())
                }
                Event::Control(Incoming::Message { .. }) => Vec::new(),
                Event::Exited { pid, code } => {
                    writers.remove(&pid);
                    let stopping = matches!(fleet.phase(), crate::fleet::Phase::Stopping { .. });
                    match code {
                        Some(0) if stopping => tracing::info!(pid, "worker exited"),
                        Some(code) if exit::is_fatal(code) => tracing::error!(pid, code, "worker could not start the app"),
                        Some(code) => tracing::warn!(pid, code, "worker exited unexpectedly"),
                        None => tracing::warn!(pid, "worker killed by a signal"),
                    }
                    fleet.handle_exited(pid, code, now())
                }
            },
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: draining");
                fleet.handle_stop(now(), exit::OK)
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: draining (again for a fast stop)");
                fleet.handle_stop(now(), exit::OK)
            }
            _ = sleep => fleet.handle_tick(now()),
        };
    }
}

fn signal_pid(pid: u32, signal: i32) {
    if pid != 0 {
        // SAFETY: kill has no memory-safety preconditions; pid is one of our children.
        unsafe { libc::kill(pid as i32, signal) };
    }
}
