//! Starting the embedded CPython for the user's environment.
//!
//! The interpreter is initialised with a `PyConfig` whose `executable` is the python of the
//! active virtualenv (`VIRTUAL_ENV`) or, without one, the interpreter this binary was built
//! against — never whatever `python3` comes first on PATH, whose stdlib may not match the
//! libpython we link (DESIGN.md, "Pitfalls"). CPython's own signal handlers stay off: the
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
    #[error("VIRTUAL_ENV={venv} is a Python {found} environment, but this genro-asgi embeds Python {EMBEDDED_VERSION}; recreate the venv with python{EMBEDDED_VERSION} or rebuild genro-asgi against that Python")]
    VersionMismatch {
        /// The venv folder.
        venv: String,
        /// Its version.
        found: String,
    },
    /// CPython refused the configuration.
    #[error("CPython failed to initialise: {0}")]
    Status(String),
}

/// The python executable whose environment the app runs in.
pub fn executable() -> Result<PathBuf, InitError> {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let venv = PathBuf::from(venv);
        if let Some(found) = venv_version(&venv) {
            if !same_minor(&found, EMBEDDED_VERSION) {
                return Err(InitError::VersionMismatch {
                    venv: venv.display().to_string(),
                    found,
                });
            }
        }
        return Ok(venv.join("bin").join("python3"));
    }
    Ok(PathBuf::from(BUILD_EXECUTABLE))
}

fn venv_version(venv: &Path) -> Option<String> {
    let text = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim(), "version" | "version_info").then(|| value.trim().to_owned())
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
}
