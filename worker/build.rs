//! Records which interpreter the worker embeds, so it can initialise CPython for that
//! interpreter's environment (and check a virtualenv's version) at run time.
fn main() {
    let config = pyo3_build_config::get();
    let executable = config
        .executable
        .as_deref()
        .map(base_executable)
        .unwrap_or_default();
    println!("cargo:rustc-env=GENRO_PYTHON_EXECUTABLE={executable}");
    println!(
        "cargo:rustc-env=GENRO_PYTHON_VERSION={}.{}",
        config.version.major, config.version.minor
    );
}

/// The installation behind `python`: built from inside a virtualenv (as maturin does when
/// a venv's python is given with `-i`), the venv's python is only a link to it, and venvs
/// made from the installation must be accepted at run time.
fn base_executable(python: &str) -> String {
    std::process::Command::new(python)
        .args(["-c", "import sys; print(sys._base_executable)"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|out| out.trim().to_owned())
        .filter(|base| !base.is_empty())
        .unwrap_or_else(|| python.to_owned())
}
