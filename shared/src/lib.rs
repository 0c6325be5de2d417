//! Code shared by the genro-asgi processes: the control-plane protocol (a sans-IO codec
//! plus thin async helpers), the process exit codes, and the names of the internal
//! environment variables the supervisor uses to hand work to its children.
#![warn(missing_docs, missing_debug_implementations)]

pub mod codec_check;
pub mod exit;
pub mod logfile;
pub mod protocol;

/// Environment variable carrying the effective configuration (JSON) to a child.
pub const ENV_CONFIG: &str = "GENRO_ASGI_INTERNAL_CONFIG";
/// Environment variable carrying the path of the supervisor's control socket.
pub const ENV_CONTROL: &str = "GENRO_ASGI_INTERNAL_CONTROL";
/// File descriptor number on which a worker finds its slot's listening socket.
pub const LISTEN_FD: i32 = 3;
