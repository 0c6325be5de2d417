//! The extension module's face: `genro_asgi_worker._native`, loaded by the user's python
//! (`python -m genro_asgi_worker`, see python/genro_asgi_worker/__main__.py). `main` reads
//! the arguments the supervisor gave, sets the process title, takes the signals away from
//! Python, installs the log sink and runs the worker (or the `check`).

use crate::{check, run, WorkerArgs};
use clap::Parser;
use genro_shared::exit;
use pyo3::prelude::*;

/// What the supervisor passes on the command line (the rest comes in the environment:
/// the configuration and the control socket, see `genro_shared::child`).
#[derive(Debug, Parser)]
#[command(
    name = "python -m genro_asgi_worker",
    about = "One genro-asgi worker; started by `genro-asgi serve`, not by hand."
)]
struct Cli {
    /// The worker's slot.
    #[arg(long)]
    slot: u32,
    /// The slot's generation.
    #[arg(long)]
    generation: u64,
    /// The process title to show in `ps`.
    #[arg(long)]
    title: Option<String>,
    /// Import the app, print what `genro-asgi check` shows, and exit.
    #[arg(long)]
    check: bool,
}

/// Runs one worker with the given arguments (without the program name); returns the
/// process exit code (`genro_shared::exit`).
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once("genro_asgi_worker".to_owned()).chain(argv))
    {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return exit::CONFIG;
        }
    };
    if let Some(title) = &cli.title {
        // Cosmetic: a worker without its title still serves.
        let _ = crate::title::set(title);
    }
    let config = match genro_shared::child::config("worker") {
        Ok(config) => config,
        Err(code) => return code,
    };
    genro_shared::logs::init(&config, genro_shared::logs::Process::Worker(cli.slot));
    if cli.check {
        return check(py, &config);
    }
    if let Err(err) = release_signals(py) {
        tracing::error!("cannot take the signals from Python: {err}");
        return exit::INTERNAL;
    }
    let control = match genro_shared::child::control("worker") {
        Ok(control) => control,
        Err(code) => return code,
    };
    run(
        py,
        WorkerArgs {
            slot: cli.slot,
            generation: cli.generation,
            config,
            control,
            listen_fd: genro_shared::LISTEN_FD,
        },
    )
}

/// Puts SIGINT back to the default before tokio takes SIGINT and SIGTERM: Python's own
/// SIGINT handler (KeyboardInterrupt) would otherwise be chained behind tokio's and raise
/// inside the app, where a stop signal must start a drain instead.
fn release_signals(py: Python<'_>) -> PyResult<()> {
    let signal = py.import("signal")?;
    let default = signal.getattr("SIG_DFL")?;
    signal.call_method1("signal", (signal.getattr("SIGINT")?, &default))?;
    Ok(())
}

/// `genro_asgi_worker._native`. It needs the GIL: the bridge hands work to the asyncio
/// loop's thread and relies on the GIL to order it, so a free-threaded Python re-enables
/// the GIL when it imports the module (and says so with a RuntimeWarning).
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    Ok(())
}
