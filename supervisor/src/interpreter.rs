//! Which Python the workers run in. The supervisor never loads Python: it picks an
//! interpreter by looking at files and the environment, then asks that interpreter, in a
//! short-lived child (`python -m genro_asgi_worker --probe`), whether it can run a worker
//! of this very version. Workers are started as `<python> -m genro_asgi_worker`.
//!
//! The order, first found wins:
//! 1. `[application] python` (file, `GENRO_ASGI_APPLICATION_PYTHON`, `--python`);
//! 2. the virtualenv this command is installed in (`<venv>/bin/genro-asgi`, as pip puts it);
//! 3. the active virtualenv (`VIRTUAL_ENV`);
//! 4. a virtualenv whose `bin` holds the first `python3` on PATH (systemd units and
//!    containers often put a venv on PATH instead of activating it);
//! 5. the `python3` beside this command (pip installed it into a plain installation, such
//!    as `/usr/local` in the official Python images);
//! 6. `python3` on PATH.

use genro_config::{Loaded, Source};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python module that runs a worker (`python -m WORKER_MODULE`).
pub const WORKER_MODULE: &str = "genro_asgi_worker";
/// The distribution that provides it, pinned to this command's version.
pub const WORKER_DISTRIBUTION: &str = "genro-asgi-worker";
/// The oldest CPython the worker supports.
pub const MIN_PYTHON: (u32, u32) = (3, 10);
/// Longest wait for the probe (a cold start on a slow disk imports a few modules).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a candidate was chosen (shown by `check`, in the log and in errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `[application] python`, from this source.
    Configured(String),
    /// The virtualenv this command is installed in.
    OwnVenv(PathBuf),
    /// `VIRTUAL_ENV`.
    ActiveVenv(PathBuf),
    /// A virtualenv whose `bin` comes first on PATH with a `python3`.
    VenvOnPath(PathBuf),
    /// The installation this command is installed in (not a virtualenv).
    BesideCommand(PathBuf),
    /// `python3` on PATH.
    OnPath,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Configured(source) => write!(f, "[application] python, from {source}"),
            Choice::OwnVenv(venv) => write!(
                f,
                "the virtualenv genro-asgi is installed in ({})",
                venv.display()
            ),
            Choice::ActiveVenv(venv) => write!(f, "VIRTUAL_ENV={}", venv.display()),
            Choice::VenvOnPath(venv) => {
                write!(f, "the virtualenv first on PATH ({})", venv.display())
            }
            Choice::BesideCommand(bin) => {
                write!(f, "the python3 beside genro-asgi in {}", bin.display())
            }
            Choice::OnPath => f.write_str("python3 on PATH"),
        }
    }
}

/// An interpreter to start workers with, and why it was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The program to run (a path, or a bare name looked up on PATH).
    pub program: PathBuf,
    /// Why.
    pub choice: Choice,
}

/// What the chosen interpreter reported about itself.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Probe {
    /// `sys.version`, first word (`3.12.1`).
    pub version: String,
    /// `sys.version_info[:2]`.
    pub version_info: (u32, u32),
    /// `sys.implementation.name`.
    pub implementation: String,
    /// `sys.executable`.
    pub executable: String,
    /// `sys.prefix`.
    pub prefix: String,
    /// `sys.path` as a worker sees it before adding `app_dir`.
    pub path: Vec<String>,
    /// The worker module's version.
    pub worker_version: String,
    /// Whether this is a free-threaded build (`Py_GIL_DISABLED`).
    #[serde(default)]
    pub free_threaded: bool,
}

/// The interpreter the workers will use.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// What was run.
    pub candidate: Candidate,
    /// What it said.
    pub probe: Probe,
    /// What workers are started with (see [`Interpreter::program`]).
    program: PathBuf,
}

impl Interpreter {
    /// `candidate` as `probe` described it.
    fn new(candidate: Candidate, probe: Probe) -> Self {
        let executable = Path::new(&probe.executable);
        let program = if executable.is_absolute() && is_executable(executable) {
            executable.to_owned()
        } else {
            candidate.program.clone()
        };
        Interpreter {
            candidate,
            probe,
            program,
        }
    }

    /// The program to start workers with: the interpreter the probe ran in
    /// (`sys.executable`), so a launcher that picks a version at each start (a pyenv shim)
    /// cannot start workers in an interpreter that was never probed. A venv's python
    /// reports its own path, so the venv is kept.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// One line for the log and `check`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} at {} ({}; sys.prefix {})",
            self.probe.implementation,
            self.probe.version,
            self.probe.executable,
            self.candidate.choice,
            self.probe.prefix
        )
    }
}

/// Why no usable interpreter was found. Each message names what was tried.
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    /// Nothing to try.
    #[error("no Python interpreter for the workers: tried {tried}; set [application] python (or GENRO_ASGI_APPLICATION_PYTHON, or --python) to a python that has {WORKER_DISTRIBUTION} installed")]
    NotFound {
        /// The places looked at, in order.
        tried: String,
    },
    /// The configured program is not there.
    #[error("[application] python = {program} (from {origin}): {why}")]
    Missing {
        /// As configured.
        program: String,
        /// Where it was configured.
        origin: String,
        /// "no such file" or "not found on PATH".
        why: &'static str,
    },
    /// `VIRTUAL_ENV` names a folder without a python (a deleted or broken venv).
    #[error("VIRTUAL_ENV={venv} has no bin/python3: recreate the virtualenv, deactivate it, or set [application] python")]
    BrokenVenv {
        /// The folder.
        venv: String,
    },
    /// The chosen interpreter cannot run workers.
    #[error("{program} ({choice}) {why}{}", why.advice(program))]
    Unusable {
        /// The program.
        program: String,
        /// Why it was chosen.
        choice: Choice,
        /// What the probe found.
        #[source]
        why: Unusable,
    },
}

/// What the probe found wrong with an interpreter.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// It could not be started.
    #[error("cannot be started: {0}")]
    Start(#[source] std::io::Error),
    /// It did not answer in time.
    #[error("did not answer the worker probe within {}s", PROBE_TIMEOUT.as_secs())]
    Timeout,
    /// It is older than the worker supports (its version).
    #[error("is Python {0}; genro-asgi workers need CPython {major}.{minor} or newer", major = MIN_PYTHON.0, minor = MIN_PYTHON.1)]
    TooOld(String),
    /// It cannot import the worker module (the last line Python printed).
    #[error("cannot run a worker: {0}")]
    NoWorker(String),
    /// The worker module is of another version (the control protocol must match).
    #[error("has {WORKER_DISTRIBUTION} {0}, but this genro-asgi is {ours}", ours = env!("CARGO_PKG_VERSION"))]
    WrongVersion(String),
    /// It answered, but not with what a worker of this version prints.
    #[error("answered the worker probe with something unreadable ({error}): {excerpt:?}")]
    BadAnswer {
        /// What did not parse.
        #[source]
        error: serde_json::Error,
        /// The start of the answer.
        excerpt: String,
    },
}

impl Unusable {
    /// How to fix it, for the cases pip fixes.
    fn advice(&self, program: &str) -> String {
        let install = format!(
            "`{program} -m pip install {WORKER_DISTRIBUTION}=={}`",
            env!("CARGO_PKG_VERSION")
        );
        match self {
            Unusable::NoWorker(_) => format!("; install it there with {install} (or the wheel for its Python version), or point [application] python at an interpreter that has it"),
            Unusable::WrongVersion(_) => format!("; install the same version: {install}"),
            _ => String::new(),
        }
    }
}

/// What the search looks at: this command's path and the environment.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// This command (`std::env::current_exe`).
    pub exe: Option<PathBuf>,
    /// `VIRTUAL_ENV`.
    pub virtual_env: Option<OsString>,
    /// `PATH`.
    pub path: Option<OsString>,
}

impl Surroundings {
    /// This process's.
    pub fn current() -> Self {
        Surroundings {
            exe: std::env::current_exe().ok(),
            virtual_env: std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()),
            path: std::env::var_os("PATH"),
        }
    }
}

/// Picks the interpreter for `loaded` (the order in the module comment) and probes it.
pub fn resolve(loaded: &Loaded) -> Result<Interpreter, InterpreterError> {
    let candidate = choose(loaded, &Surroundings::current())?;
    let probe = probe(&candidate)?;
    Ok(Interpreter::new(candidate, probe))
}

/// The first candidate, without running anything.
pub fn choose(loaded: &Loaded, around: &Surroundings) -> Result<Candidate, InterpreterError> {
    if let Some(program) = &loaded.config.application.python {
        let source = loaded
            .sources
            .get("application.python")
            .map_or_else(|| Source::Default.to_string(), Source::to_string);
        return configured(program, source, around.path.as_deref());
    }
    let mut tried = Vec::new();
    match around.exe.as_deref().and_then(Path::parent) {
        Some(bin) => {
            if let Some((venv, python)) = venv_python(bin) {
                return Ok(Candidate {
                    program: python,
                    choice: Choice::OwnVenv(venv.to_owned()),
                });
            }
            tried.push(format!(
                "the folder of genro-asgi ({}: not a virtualenv)",
                bin.display()
            ));
        }
        None => tried.push("the folder of genro-asgi (unknown)".into()),
    }
    match &around.virtual_env {
        Some(venv) => {
            let venv = PathBuf::from(venv);
            match python_in(&venv.join("bin")) {
                Some(python) => {
                    return Ok(Candidate {
                        program: python,
                        choice: Choice::ActiveVenv(venv),
                    })
                }
                None => {
                    return Err(InterpreterError::BrokenVenv {
                        venv: venv.display().to_string(),
                    })
                }
            }
        }
        None => tried.push("VIRTUAL_ENV (not set)".into()),
    }
    // The first `python3` on PATH (a folder with only `python`, often Python 2, does not
    // count).
    let first = around.path.as_deref().and_then(|path| {
        std::env::split_paths(path).find(|dir| is_executable(&dir.join("python3")))
    });
    if let Some(bin) = &first {
        if let Some((venv, python)) = venv_python(bin) {
            return Ok(Candidate {
                program: python,
                choice: Choice::VenvOnPath(venv.to_owned()),
            });
        }
    }
    tried.push("a virtualenv first on PATH (none)".into());
    if let Some(bin) = around.exe.as_deref().and_then(Path::parent) {
        if let Some(python) = python_in(bin) {
            return Ok(Candidate {
                program: python,
                choice: Choice::BesideCommand(bin.to_owned()),
            });
        }
        tried.push(format!(
            "a python3 beside genro-asgi in {} (none)",
            bin.display()
        ));
    }
    match first {
        Some(bin) => Ok(Candidate {
            program: bin.join("python3"),
            choice: Choice::OnPath,
        }),
        None => {
            tried.push("python3 on PATH (none)".into());
            Err(InterpreterError::NotFound {
                tried: tried.join(", "),
            })
        }
    }
}

/// `[application] python`: a path must exist; a bare name must be on PATH.
fn configured(
    program: &Path,
    source: String,
    path: Option<&std::ffi::OsStr>,
) -> Result<Candidate, InterpreterError> {
    let choice = Choice::Configured(source.clone());
    let missing = |why| InterpreterError::Missing {
        program: program.display().to_string(),
        origin: source.clone(),
        why,
    };
    if program.components().count() == 1 && program.is_relative() {
        let found = path
            .into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
            .ok_or_else(|| missing("not found on PATH"))?;
        return Ok(Candidate {
            program: found,
            choice,
        });
    }
    if !program.exists() {
        return Err(missing("no such file"));
    }
    if !is_executable(program) {
        return Err(missing("not an executable file"));
    }
    Ok(Candidate {
        program: program.to_owned(),
        choice,
    })
}

/// The virtualenv and its python when `bin` is a venv's `bin` folder (a python in it, a
/// `pyvenv.cfg` beside it).
fn venv_python(bin: &Path) -> Option<(&Path, PathBuf)> {
    let venv = bin.parent()?;
    if !venv.join("pyvenv.cfg").is_file() {
        return None;
    }
    Some((venv, python_in(bin)?))
}

/// `python3` (else `python`) in `dir`.
fn python_in(dir: &Path) -> Option<PathBuf> {
    ["python3", "python"]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `<python> -m genro_asgi_worker --probe` and reads its answer.
pub fn probe(candidate: &Candidate) -> Result<Probe, InterpreterError> {
    examine(&candidate.program).map_err(|why| InterpreterError::Unusable {
        program: candidate.program.display().to_string(),
        choice: candidate.choice.clone(),
        why,
    })
}

fn examine(python: &Path) -> Result<Probe, Unusable> {
    let out = run_bounded(Command::new(python).args(["-m", WORKER_MODULE, "--probe"])).map_err(
        |error| match error {
            RunError::Io(error) => Unusable::Start(error),
            RunError::Timeout => Unusable::Timeout,
        },
    )?;
    if !out.status.success() {
        // No answer: an old Python, or no worker module. Ask for the version to tell which.
        if let Some(found) = python_version(python) {
            if parse_version(&found).is_some_and(|v| v < MIN_PYTHON) {
                return Err(Unusable::TooOld(found));
            }
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no answer")
            .trim()
            .to_owned();
        return Err(Unusable::NoWorker(detail));
    }
    // The answer is the last line that looks like JSON (a sitecustomize may print before).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let probe = serde_json::from_str::<Probe>(line).map_err(|error| {
        let mut excerpt = if line.is_empty() { stdout.trim() } else { line }.to_owned();
        genro_shared::protocol::cut_text(&mut excerpt, 200);
        Unusable::BadAnswer { error, excerpt }
    })?;
    if probe.version_info < MIN_PYTHON {
        return Err(Unusable::TooOld(probe.version));
    }
    if probe.worker_version != env!("CARGO_PKG_VERSION") {
        return Err(Unusable::WrongVersion(probe.worker_version));
    }
    Ok(probe)
}

/// `major.minor` of `python`, asked in a way every Python answers.
fn python_version(python: &Path) -> Option<String> {
    let out = run_bounded(
        Command::new(python).args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]),
    )
    .ok()?;
    out.status.success().then_some(())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

enum RunError {
    Io(std::io::Error),
    Timeout,
}

/// Runs a command with no stdin, collecting its output, killed after [`PROBE_TIMEOUT`].
fn run_bounded(command: &mut Command) -> Result<std::process::Output, RunError> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Io)?;
    // Read both pipes on threads so a chatty child cannot fill one and stall.
    let pump = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                // Keep at most 1 MiB (the answer is one line; the rest is a traceback),
                // and drain the rest so a chatty child never blocks on a full pipe.
                let _ = pipe.by_ref().take(1 << 20).read_to_end(&mut buf);
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            }
            buf
        })
    };
    let stdout = pump(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = pump(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(RunError::Io)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("genro-interp-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn touch_exe(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A venv folder with `bin/python3` and `pyvenv.cfg`.
    fn venv(root: &Path, name: &str) -> PathBuf {
        let venv = root.join(name);
        touch_exe(&venv.join("bin").join("python3"));
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        venv
    }

    fn loaded(python: Option<&str>) -> Loaded {
        let env: Vec<(String, String)> = python
            .map(|p| ("GENRO_ASGI_APPLICATION_PYTHON".to_owned(), p.to_owned()))
            .into_iter()
            .collect();
        genro_config::load(None, env, &[]).unwrap()
    }

    fn path_of(dirs: &[&Path]) -> Option<OsString> {
        Some(std::env::join_paths(dirs).unwrap())
    }

    #[test]
    fn own_venv_comes_first() {
        let tmp = TempDir::new();
        let own = venv(&tmp.0, "own");
        let active = venv(&tmp.0, "active");
        let around = Surroundings {
            exe: Some(own.join("bin").join("genro-asgi")),
            virtual_env: Some(active.clone().into()),
            path: path_of(&[&active.join("bin")]),
        };
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(found.program, own.join("bin").join("python3"));
        assert_eq!(found.choice, Choice::OwnVenv(own));
    }

    #[test]
    fn then_the_active_venv_then_a_venv_on_path() {
        let tmp = TempDir::new();
        let active = venv(&tmp.0, "active");
        let on_path = venv(&tmp.0, "onpath");
        let cargo_bin = tmp.0.join("target").join("debug");
        std::fs::create_dir_all(&cargo_bin).unwrap();
        let mut around = Surroundings {
            exe: Some(cargo_bin.join("genro-asgi")),
            virtual_env: Some(active.clone().into()),
            path: path_of(&[&on_path.join("bin")]),
        };
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(found.choice, Choice::ActiveVenv(active));
        around.virtual_env = None;
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(found.choice, Choice::VenvOnPath(on_path));
    }

    #[test]
    fn a_plain_installation_beside_the_command_before_path() {
        let tmp = TempDir::new();
        let usr_local = tmp.0.join("usr-local").join("bin");
        touch_exe(&usr_local.join("python3"));
        let system = tmp.0.join("usr").join("bin");
        touch_exe(&system.join("python3"));
        let around = Surroundings {
            exe: Some(usr_local.join("genro-asgi")),
            virtual_env: None,
            path: path_of(&[&system]),
        };
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(found.choice, Choice::BesideCommand(usr_local.clone()));
        assert_eq!(found.program, usr_local.join("python3"));
        let around = Surroundings {
            exe: Some(tmp.0.join("elsewhere").join("genro-asgi")),
            ..around
        };
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(found.choice, Choice::OnPath);
        assert_eq!(found.program, system.join("python3"));
    }

    #[test]
    fn nothing_found_names_every_place_tried() {
        let tmp = TempDir::new();
        let around = Surroundings {
            exe: Some(tmp.0.join("genro-asgi")),
            virtual_env: None,
            path: path_of(&[&tmp.0.join("empty")]),
        };
        let err = choose(&loaded(None), &around).unwrap_err().to_string();
        for needle in [
            "not a virtualenv",
            "VIRTUAL_ENV (not set)",
            "first on PATH",
            "python3 on PATH (none)",
            "[application] python",
        ] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn configured_python_wins_and_is_checked() {
        let tmp = TempDir::new();
        let own = venv(&tmp.0, "own");
        let custom = tmp.0.join("opt").join("py").join("bin").join("python3.12");
        touch_exe(&custom);
        let around = Surroundings {
            exe: Some(own.join("bin").join("genro-asgi")),
            virtual_env: None,
            path: path_of(&[custom.parent().unwrap()]),
        };
        let found = choose(&loaded(Some(custom.to_str().unwrap())), &around).unwrap();
        assert_eq!(found.program, custom);
        assert_eq!(
            found.choice,
            Choice::Configured("environment variable GENRO_ASGI_APPLICATION_PYTHON".into())
        );
        // A bare name is looked up on PATH.
        let found = choose(&loaded(Some("python3.12")), &around).unwrap();
        assert_eq!(found.program, custom);
        let err = choose(&loaded(Some("python3.99")), &around).unwrap_err();
        assert!(err.to_string().contains("not found on PATH"), "{err}");
        assert!(
            err.to_string().contains("GENRO_ASGI_APPLICATION_PYTHON"),
            "{err}"
        );
        let err = choose(&loaded(Some("/nowhere/python3")), &around).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn a_broken_active_venv_is_an_error_and_python_2_folders_do_not_count() {
        let tmp = TempDir::new();
        let gone = tmp.0.join("deleted-venv");
        let around = Surroundings {
            exe: Some(tmp.0.join("genro-asgi")),
            virtual_env: Some(gone.clone().into()),
            path: None,
        };
        let err = choose(&loaded(None), &around).unwrap_err();
        assert!(matches!(err, InterpreterError::BrokenVenv { .. }), "{err}");
        assert!(err.to_string().contains(gone.to_str().unwrap()), "{err}");
        // A folder with only `python` (Python 2, say) earlier on PATH is passed over.
        let old = tmp.0.join("old").join("bin");
        touch_exe(&old.join("python"));
        let new = tmp.0.join("new").join("bin");
        touch_exe(&new.join("python3"));
        let around = Surroundings {
            exe: Some(tmp.0.join("genro-asgi")),
            virtual_env: None,
            path: path_of(&[&old, &new]),
        };
        let found = choose(&loaded(None), &around).unwrap();
        assert_eq!(
            (found.program, found.choice),
            (new.join("python3"), Choice::OnPath)
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("3.9.18"), Some((3, 9)));
        assert_eq!(parse_version("3.13.0"), Some((3, 13)));
        assert_eq!(parse_version("junk"), None);
        assert!((3, 9) < MIN_PYTHON && (3, 10) >= MIN_PYTHON);
    }
}
