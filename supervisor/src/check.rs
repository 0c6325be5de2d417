//! `genro-asgi check`: validate, show the effective configuration with sources, then import
//! the app in the interpreter the workers will use (the supervisor never loads Python).

use genro_config::Loaded;
use genro_shared::exit;

/// Runs the check; returns the exit code.
pub fn run(loaded: &Loaded) -> i32 {
    println!(
        "configuration: {}",
        loaded
            .file
            .as_ref()
            .map_or("(no file)".into(), |f| f.display().to_string())
    );
    println!("{}", loaded.render());
    if let Some(note) = loaded.workers_note() {
        println!("{note}");
    }
    if let Some(note) = loaded.ignored_env_note() {
        println!("{note}");
    }
    if let Err(message) = crate::serve::preflight(&loaded.config) {
        eprintln!("genro-asgi: configuration error: {message}");
        return exit::CONFIG;
    }
    let json = match serde_json::to_string(&loaded.config) {
        Ok(json) => json,
        Err(err) => {
            eprintln!("genro-asgi: {err}");
            return exit::INTERNAL;
        }
    };
    let python = match crate::interpreter::resolve(loaded) {
        Ok(python) => python,
        Err(err) => {
            eprintln!("genro-asgi: configuration error: {err}");
            return exit::CONFIG;
        }
    };
    println!("workers' python: {}", python.candidate.program.display());
    println!("  chosen as: {}", python.candidate.choice);
    // The worker prints the rest (version, sys.prefix, sys.path, the app) from inside.
    let status = std::process::Command::new(python.program())
        .args([
            "-m",
            crate::interpreter::WORKER_MODULE,
            "--slot",
            "0",
            "--generation",
            "0",
            "--check",
        ])
        .env(genro_shared::ENV_CONFIG, json)
        .status();
    match status {
        Ok(status) if status.success() => {
            println!("ok: configuration valid and app importable");
            exit::OK
        }
        Ok(status) => status.code().unwrap_or(exit::INTERNAL),
        Err(err) => {
            eprintln!("genro-asgi: cannot start the check process: {err}");
            exit::INTERNAL
        }
    }
}
