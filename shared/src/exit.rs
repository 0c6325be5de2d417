//! Process exit codes, shared so the supervisor can tell an app that cannot load (stop the
//! fleet) from a crash (respawn), as gunicorn does with `APP_LOAD_ERROR`.

/// Clean exit.
pub const OK: i32 = 0;
/// Internal error (a bug, or the OS refused something).
pub const INTERNAL: i32 = 1;
/// Invalid configuration or command line.
pub const CONFIG: i32 = 2;
/// The ASGI app could not be imported or built.
pub const APP_LOAD: i32 = 3;
/// The app's lifespan startup failed.
pub const STARTUP_FAILED: i32 = 4;

/// True for the exit codes that mean "respawning will not help".
pub fn is_fatal(code: i32) -> bool {
    matches!(code, CONFIG | APP_LOAD | STARTUP_FAILED)
}
