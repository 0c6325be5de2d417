//! Starting the embedded CPython for the user's environment.
//!
//! The interpreter is initialised with a `PyConfig` whose `executable` is the python of the
//! active virtualenv (`VIRTUAL_ENV`), or of a virtualenv first on PATH, or else the
//! interpreter this binary was built against — never a `python3` of another installation,
//! whose stdlib does not match the libpython we link (DESIGN.md, "Pitfalls"; measured:
//! Debian's /usr/bin/python3.11 with a pyenv 3.11.7 libpython fails on `_socket`). CPython's own signal handlers stay off: the
//! worker's signals belong to tokio.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// The Python version this build embeds (`major.minor`).
pub const EMBEDDED_VERSION: &str = env!("GENRO_PYTHON_VERSION");
/// The interpreter this build was compiled against.
pub const BUILD_EXECUTABLE: &str = env!("GENRO_PYTHON_EXECUTABLE");

/// Why the interpreter could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The virtualenv is for another Python version.
    #[error("the virtualenv {venv} is a Python {found} environment, but this genro-asgi embeds Python {EMBEDDED_VERSION}; recreate the venv with python{EMBEDDED_VERSION} or rebuild genro-asgi against that Python")]
    VersionMismatch {
        /// The venv folder.
        venv: String,
        /// Its version.
        found: String,
    },
    /// The virtualenv was made from another Python installation: its stdlib would not
    /// match the libpython this binary links (e.g. `No module named '_socket'`).
    #[error("the virtualenv {venv} was created from {home}, but this genro-asgi embeds the Python at {BUILD_EXECUTABLE}; recreate the venv with that interpreter or rebuild genro-asgi with the venv's python3 first on PATH")]
    ForeignVenv {
        /// The venv folder.
        venv: String,
        /// Its base installation (`home` in pyvenv.cfg).
        home: String,
    },
    /// CPython refused the configuration.
    #[error("CPython failed to initialise: {0}")]
    Status(String),
}

/// The python executable whose environment the app runs in, first found of:
/// - the virtualenv this binary is installed in (`<venv>/bin/genro-asgi`, as `pip install`
///   puts it): the command serves the venv it came with, as a console script would;
/// - the active virtualenv (`VIRTUAL_ENV`);
/// - a virtualenv whose `bin` provides the first `python3` on PATH (a venv put on PATH
///   without activating it, as in systemd units and containers);
/// - the interpreter this binary was built against.
///
/// A foreign `python3` (another installation, a pyenv shim) is never used: its stdlib
/// would not match our libpython.
pub fn executable() -> Result<PathBuf, InitError> {
    if let Some(python) = std::env::current_exe()
        .ok()
        .and_then(|exe| own_venv(&exe).transpose())
    {
        return python;
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let venv = PathBuf::from(venv);
        check_venv(&venv)?;
        return Ok(venv.join("bin").join("python3"));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    Ok(venv_on_path(&path).unwrap_or_else(|| PathBuf::from(BUILD_EXECUTABLE)))
}

/// The venv's python when `exe` sits in a virtualenv's `bin` folder; an error when that
/// venv was made from another Python (pip installs a wheel into any venv of the same
/// version tag, so this is where such a mismatch shows).
fn own_venv(exe: &Path) -> Result<Option<PathBuf>, InitError> {
    match exe.parent().and_then(venv_python) {
        Some((venv, python)) => {
            check_venv(venv)?;
            Ok(Some(python))
        }
        None => Ok(None),
    }
}

/// The virtualenv and its python when `bin` is a venv's `bin` folder (a `python3` in it,
/// a `pyvenv.cfg` beside it).
fn venv_python(bin: &Path) -> Option<(&Path, PathBuf)> {
    let python = bin.join("python3");
    let venv = bin.parent()?;
    (python.is_file() && venv.join("pyvenv.cfg").is_file()).then_some((venv, python))
}

fn check_venv(venv: &Path) -> Result<(), InitError> {
    if let Some(found) = venv_setting(venv, &["version", "version_info"]) {
        if !same_minor(&found, EMBEDDED_VERSION) {
            return Err(InitError::VersionMismatch {
                venv: venv.display().to_string(),
                found,
            });
        }
    }
    if let Some(home) = venv_setting(venv, &["home"]) {
        if !is_build_installation(Path::new(&home)) {
            return Err(InitError::ForeignVenv {
                venv: venv.display().to_string(),
                home,
            });
        }
    }
    Ok(())
}

/// Whether `bin_dir` is the `bin` folder of the interpreter we were built against.
fn is_build_installation(bin_dir: &Path) -> bool {
    let build_bin = Path::new(BUILD_EXECUTABLE).parent();
    match (
        std::fs::canonicalize(bin_dir),
        build_bin.map(std::fs::canonicalize),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    }
}

/// The first `python3` on `path` when it belongs to a virtualenv of our installation.
fn venv_on_path(path: &std::ffi::OsStr) -> Option<PathBuf> {
    let bin = std::env::split_paths(path).find(|dir| dir.join("python3").is_file())?;
    let (venv, python) = venv_python(&bin)?;
    check_venv(venv).ok()?;
    Some(python)
}

fn venv_setting(venv: &Path, keys: &[&str]) -> Option<String> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        keys.contains(&key.trim()).then(|| value.trim().to_owned())
    })
}

fn same_minor(a: &str, b: &str) -> bool {
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    minor(a) == minor(b)
}

/// Initialises CPython on the calling thread, which then holds the GIL.
pub fn initialize() -> Result<PathBuf, InitError> {
    use pyo3::ffi;
    let exe = executable()?;
    let exe_c = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| InitError::Status("interpreter path contains a NUL byte".into()))?;
    // SAFETY: the PyConfig is initialised by PyConfig_InitPythonConfig before any field is
    // used, the strings passed are valid NUL-terminated C strings that outlive the calls,
    // and the config is cleared after Py_InitializeFromConfig copied what it needs.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let check = |status: ffi::PyStatus| -> Result<(), InitError> {
            if ffi::PyStatus_Exception(status) != 0 {
                let msg = if status.err_msg.is_null() {
                    "unknown error".to_owned()
                } else {
                    CStr::from_ptr(status.err_msg)
                        .to_string_lossy()
                        .into_owned()
                };
                return Err(InitError::Status(msg));
            }
            Ok(())
        };
        let exe_ptr: *mut *mut libc::wchar_t = &mut config.executable;
        let name_ptr: *mut *mut libc::wchar_t = &mut config.program_name;
        let mut result = check(ffi::PyConfig_SetBytesString(
            &mut config,
            exe_ptr,
            exe_c.as_ptr(),
        ));
        if result.is_ok() {
            result = check(ffi::PyConfig_SetBytesString(
                &mut config,
                name_ptr,
                exe_c.as_ptr(),
            ));
        }
        if result.is_ok() {
            result = check(ffi::Py_InitializeFromConfig(&config));
        }
        ffi::PyConfig_Clear(&mut config);
        result?;
    }
    Ok(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions_compare() {
        assert!(same_minor("3.11.7", "3.11"));
        assert!(same_minor("3.11", "3.11"));
        assert!(!same_minor("3.12.1", "3.11"));
    }

    /// A folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("genro-venv-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A venv with `home` and `version_info` in its pyvenv.cfg and a `bin/python3`.
    fn venv(home: &str, version: &str) -> TempDir {
        let dir = TempDir::new();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("python3"), "").unwrap();
        std::fs::write(
            dir.path().join("pyvenv.cfg"),
            format!("home = {home}\nversion_info = {version}\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn binary_in_a_venv_serves_that_venv() {
        let dir = venv(home_of_build(), &format!("{EMBEDDED_VERSION}.0"));
        let exe = dir.path().join("bin").join("genro-asgi");
        let found = own_venv(&exe).unwrap();
        assert_eq!(found, Some(dir.path().join("bin").join("python3")));
    }

    #[test]
    fn binary_outside_a_venv_looks_elsewhere() {
        let dir = TempDir::new();
        let exe = dir.path().join("release").join("genro-asgi");
        assert!(own_venv(&exe).unwrap().is_none());
    }

    #[test]
    fn binary_in_a_foreign_venv_is_an_error() {
        let dir = venv("/opt/other-python/bin", &format!("{EMBEDDED_VERSION}.0"));
        let exe = dir.path().join("bin").join("genro-asgi");
        let err = own_venv(&exe).unwrap_err();
        assert!(matches!(err, InitError::ForeignVenv { .. }), "{err}");
        let dir = venv(home_of_build(), "2.7.18");
        let err = own_venv(&dir.path().join("bin").join("genro-asgi")).unwrap_err();
        assert!(matches!(err, InitError::VersionMismatch { .. }), "{err}");
    }

    fn home_of_build() -> &'static str {
        Path::new(BUILD_EXECUTABLE)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
    }
}
