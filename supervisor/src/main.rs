//! `genro-asgi`: parse the command line, run, map the outcome to an exit code.
fn main() {
    std::process::exit(genro_supervisor::cli::run());
}
