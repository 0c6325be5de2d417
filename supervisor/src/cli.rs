//! Command line: `serve`, `check`, `ctl`, and the hidden `worker` and `front` subcommands
//! the supervisor uses to re-execute itself for its children.

use clap::{Args, Parser, Subcommand};
use genro_config::{ConfigError, Loaded, Override};
use genro_shared::exit;
use std::path::PathBuf;

/// A supervised, multi-process ASGI server for Python apps.
#[derive(Debug, Parser)]
#[command(name = "genro-asgi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the ASGI app with a supervised fleet of workers.
    Serve(ConfigArgs),
    /// Validate the configuration, import the app in a child process, and print the
    /// effective configuration with the source of every value.
    Check(ConfigArgs),
    /// Talk to a running server: status, reload, drain, stop, scale N.
    Ctl(CtlCli),
    /// Internal: one worker process (started by `serve`).
    #[command(hide = true)]
    Worker(WorkerCli),
    /// Internal: the HTTP/3 front process (started by `serve` when `[http3]` is on).
    #[command(hide = true)]
    Front(FrontCli),
}

#[derive(Debug, Args)]
struct FrontCli {
    #[arg(long)]
    generation: u64,
}

#[derive(Debug, Args)]
struct CtlCli {
    /// The server's configuration file (locates its control socket).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The control socket itself (`<run_dir>/control.sock`).
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Slots, pids, generations, states, uptimes, requests served and in flight.
    Status,
    /// Re-read the configuration and replace every worker, one slot at a time.
    Reload,
    /// Drain every worker (finish in-flight requests), then exit (like SIGTERM).
    Drain,
    /// Stop now: workers are killed.
    Stop,
    /// Change the number of workers.
    Scale {
        /// The new number of workers.
        workers: u32,
    },
    /// The requests in flight in every worker: id, method, path, client, age.
    Requests,
    /// The Python stack of every thread of every worker (works while a loop is blocked).
    Stacks,
}

/// Where the configuration comes from; flags override env vars, which override the file.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Configuration file (.ini, .cfg or .toml).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ASGI app as module:attribute ([application] app).
    #[arg(long, value_name = "MODULE:ATTR")]
    pub app: Option<String>,
    /// Address to bind ([server] host).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind ([server] port).
    #[arg(long)]
    pub port: Option<String>,
    /// Number of worker processes ([server] workers).
    #[arg(long)]
    pub workers: Option<String>,
    /// Any key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
struct WorkerCli {
    #[arg(long)]
    slot: u32,
    #[arg(long)]
    generation: u64,
    /// Import the app, print what `check` shows, and exit.
    #[arg(long)]
    check: bool,
}

impl ConfigArgs {
    /// Loads the configuration from file, environment and these flags.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut overrides = Vec::new();
        let flags = [
            ("application.app", &self.app, "--app"),
            ("server.host", &self.host, "--host"),
            ("server.port", &self.port, "--port"),
            ("server.workers", &self.workers, "--workers"),
        ];
        for (key, value, origin) in flags {
            if let Some(value) = value {
                overrides.push(Override::new(key, value, origin));
            }
        }
        for set in &self.set {
            overrides.push(genro_config::parse_set_flag(set)?);
        }
        genro_config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

/// Runs the command line; returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match args.load() {
            Ok(loaded) => crate::serve::run(loaded, Box::new(move || args.load())),
            Err(err) => config_error(&err),
        },
        Command::Ctl(ctl) => run_ctl(ctl),
        Command::Check(args) => match args.load() {
            Ok(loaded) => crate::check::run(&loaded),
            Err(err) => config_error(&err),
        },
        Command::Worker(worker) => run_worker(worker),
        Command::Front(front) => run_front(front),
    }
}

fn config_error(err: &ConfigError) -> i32 {
    eprintln!("genro-asgi: configuration error: {err}");
    err.exit_code()
}

fn run_ctl(ctl: CtlCli) -> i32 {
    use genro_shared::protocol::Message;
    let socket = match ctl.socket {
        Some(socket) => socket,
        None => {
            let args = ConfigArgs {
                config: ctl.config,
                app: None,
                host: None,
                port: None,
                workers: None,
                set: Vec::new(),
            };
            match args.load() {
                Ok(loaded) => crate::serve::run_dir(&loaded.config).join("control.sock"),
                Err(err) => return config_error(&err),
            }
        }
    };
    let request = match ctl.command {
        CtlCommand::Status => Message::Status,
        CtlCommand::Reload => Message::Reload,
        CtlCommand::Drain => Message::Drain,
        CtlCommand::Stop => Message::Stop,
        CtlCommand::Scale { workers } => Message::Scale { workers },
        CtlCommand::Requests => Message::Requests,
        CtlCommand::Stacks => Message::Stacks,
    };
    crate::ctl::run(&socket, request, ctl.json)
}

/// The configuration the supervisor passed to a child in the environment.
fn child_config(who: &str) -> Result<genro_config::Config, i32> {
    std::env::var(genro_shared::ENV_CONFIG)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            serde_json::from_str::<genro_config::Config>(&json).map_err(|e| e.to_string())
        })
        .map_err(|err| {
            eprintln!("genro-asgi {who}: no usable configuration from the supervisor ({err}); this subcommand is internal");
            exit::CONFIG
        })
}

/// The supervisor's control socket, passed to a child in the environment.
fn child_control(who: &str) -> Result<PathBuf, i32> {
    std::env::var_os(genro_shared::ENV_CONTROL)
        .map(PathBuf::from)
        .ok_or_else(|| {
            eprintln!(
                "genro-asgi {who}: {} is not set; this subcommand is internal",
                genro_shared::ENV_CONTROL
            );
            exit::CONFIG
        })
}

fn run_front(cli: FrontCli) -> i32 {
    let config = match child_config("front") {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::logs::init(&config, crate::logs::Process::Front);
    let control = match child_control("front") {
        Ok(control) => control,
        Err(code) => return code,
    };
    genro_proxy::run(genro_proxy::FrontArgs {
        config,
        control,
        udp_fd: genro_shared::LISTEN_FD,
        generation: cli.generation,
    })
}

fn run_worker(cli: WorkerCli) -> i32 {
    let config = match child_config("worker") {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::logs::init(&config, crate::logs::Process::Worker(cli.slot));
    if cli.check {
        return genro_worker::check(&config);
    }
    let control = match child_control("worker") {
        Ok(control) => control,
        Err(code) => return code,
    };
    genro_worker::run(genro_worker::WorkerArgs {
        slot: cli.slot,
        generation: cli.generation,
        config,
        control,
        listen_fd: genro_shared::LISTEN_FD,
    })
}
