//! What the supervisor hands a child process (a worker or the HTTP/3 front) in its
//! environment: the effective configuration and the control socket's path.

use crate::exit;
use std::path::PathBuf;

/// The configuration the supervisor passed in [`crate::ENV_CONFIG`]; on failure, a message
/// on stderr and the exit code to return (`who` names the process in the message).
pub fn config(who: &str) -> Result<genro_config::Config, i32> {
    std::env::var(crate::ENV_CONFIG)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            serde_json::from_str::<genro_config::Config>(&json).map_err(|e| e.to_string())
        })
        .map_err(|err| {
            eprintln!("genro-asgi {who}: no usable configuration from the supervisor ({err}); this process is started by `genro-asgi serve`");
            exit::CONFIG
        })
}

/// The supervisor's control socket, passed in [`crate::ENV_CONTROL`].
pub fn control(who: &str) -> Result<PathBuf, i32> {
    std::env::var_os(crate::ENV_CONTROL)
        .map(PathBuf::from)
        .ok_or_else(|| {
            eprintln!(
                "genro-asgi {who}: {} is not set; this process is started by `genro-asgi serve`",
                crate::ENV_CONTROL
            );
            exit::CONFIG
        })
}
