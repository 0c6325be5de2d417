//! Records which interpreter the worker embeds, so it can initialise CPython for that
//! interpreter's environment (and check a virtualenv's version) at run time.
fn main() {
    let config = pyo3_build_config::get();
    let executable = config.executable.clone().unwrap_or_default();
    println!("cargo:rustc-env=GENRO_PYTHON_EXECUTABLE={executable}");
    println!(
        "cargo:rustc-env=GENRO_PYTHON_VERSION={}.{}",
        config.version.major, config.version.minor
    );
}
