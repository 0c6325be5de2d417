//! Command line: `serve`, `check`, `ctl`, `debug attach`, and the hidden `front` subcommand the supervisor
//! re-executes itself with for the HTTP/3 front (workers run in Python: `interpreter.rs`).

use clap::{Args, Parser, Subcommand};
use genro_config::{ConfigError, Loaded, Override};
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
    /// The remote debugger (`[debug] enabled`): attach pdb to a request whose app raised.
    Debug(DebugCli),
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

#[derive(Debug, Args)]
struct DebugCli {
    #[command(subcommand)]
    command: DebugCommand,
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// List the requests of the whole fleet waiting for a debugger (id, worker, age,
    /// request, exception) and attach to one: a pdb post-mortem session on its exception.
    /// `continue`, `quit` or Ctrl-D release the request (it gets its 500).
    Attach {
        /// The server's configuration file ([debug] host, debug_port and secret; the
        /// GENRO_ASGI_DEBUG_* variables apply).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The request id to attach to (default: the only one waiting, else a choice).
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// Only list the waiting requests.
        #[arg(long)]
        list: bool,
        /// Wait up to this many seconds for a request to wait for a debugger.
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
        wait: f64,
    },
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
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Configuration file (.ini, .cfg or .toml).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ASGI app as module:attribute ([application] app).
    #[arg(long, value_name = "MODULE:ATTR")]
    pub app: Option<String>,
    /// The Python interpreter the workers run in ([application] python): a path or a
    /// command name on PATH.
    #[arg(long, value_name = "PYTHON")]
    pub python: Option<String>,
    /// Address to bind ([server] host).
    #[arg(long)]
    pub host: Option<String>,
    /// Port to bind ([server] port).
    #[arg(long)]
    pub port: Option<String>,
    /// Number of worker processes, or `auto`: the CPUs this process may use, from its
    /// cgroup quota and affinity ([server] workers).
    #[arg(long)]
    pub workers: Option<String>,
    /// Development: replace the workers when the app's files change ([reload] enabled).
    #[arg(long)]
    pub reload: bool,
    /// A directory to watch instead of app_dir ([reload] dirs; repeatable).
    #[arg(long = "reload-dir", value_name = "DIR")]
    pub reload_dir: Vec<PathBuf>,
    /// A glob of the file names that reload ([reload] include; repeatable).
    #[arg(long = "reload-include", value_name = "GLOB")]
    pub reload_include: Vec<String>,
    /// A glob of the names to ignore ([reload] exclude; repeatable).
    #[arg(long = "reload-exclude", value_name = "GLOB")]
    pub reload_exclude: Vec<String>,
    /// Quiet time before a reload, in seconds ([reload] delay).
    #[arg(long = "reload-delay", value_name = "SECONDS")]
    pub reload_delay: Option<String>,
    /// Any key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// Loads the configuration from file, environment and these flags.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut overrides = Vec::new();
        let flags = [
            ("application.app", &self.app, "--app"),
            ("application.python", &self.python, "--python"),
            ("server.host", &self.host, "--host"),
            ("server.port", &self.port, "--port"),
            ("server.workers", &self.workers, "--workers"),
            ("reload.delay", &self.reload_delay, "--reload-delay"),
        ];
        for (key, value, origin) in flags {
            if let Some(value) = value {
                overrides.push(Override::new(key, value, origin));
            }
        }
        if self.reload {
            overrides.push(Override::new("reload.enabled", "true", "--reload"));
        }
        // Directories on the command line are the current directory's, as any path flag.
        let cwd = std::env::current_dir().unwrap_or_default();
        let dirs: Vec<String> = (self.reload_dir.iter())
            .map(|dir| cwd.join(dir).display().to_string())
            .collect();
        let lists = [
            ("reload.dirs", dirs, "--reload-dir"),
            (
                "reload.include",
                self.reload_include.clone(),
                "--reload-include",
            ),
            (
                "reload.exclude",
                self.reload_exclude.clone(),
                "--reload-exclude",
            ),
        ];
        for (key, values, origin) in lists {
            if !values.is_empty() {
                overrides.push(Override::new(key, values.join(","), origin));
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
        Command::Debug(DebugCli {
            command:
                DebugCommand::Attach {
                    config,
                    request,
                    list,
                    wait,
                },
        }) => {
            let args = ConfigArgs {
                config,
                ..ConfigArgs::default()
            };
            match args.load() {
                Ok(loaded) => crate::attach::run(
                    &loaded.config,
                    &crate::attach::Attach {
                        request,
                        list,
                        wait: std::time::Duration::try_from_secs_f64(wait).unwrap_or_default(),
                    },
                ),
                Err(err) => config_error(&err),
            }
        }
        Command::Check(args) => match args.load() {
            Ok(loaded) => crate::check::run(&loaded),
            Err(err) => config_error(&err),
        },
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
                ..ConfigArgs::default()
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

fn run_front(cli: FrontCli) -> i32 {
    let config = match genro_shared::child::config("front") {
        Ok(config) => config,
        Err(code) => return code,
    };
    genro_shared::logs::init(&config, genro_shared::logs::Process::Front);
    let control = match genro_shared::child::control("front") {
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
