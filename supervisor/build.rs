//! Embed an rpath to the libpython the worker was built against, so the binary loads
//! that interpreter (and its site-packages) rather than whatever libpython3.x the system
//! library path offers first (see DESIGN.md, "Pitfalls": pyenv vs Debian libpython).
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = &config.lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
