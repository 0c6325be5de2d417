//! The `genro-asgi` supervisor: command line, configuration loading, sockets, the worker
//! fleet and its control socket. The binary's `main` only dispatches to [`cli::run`].
#![warn(missing_docs, missing_debug_implementations)]

pub mod attach;
pub mod check;
pub mod cli;
pub mod control;
pub mod ctl;
pub mod debugger;
pub mod endpoints;
mod executor;
pub mod fleet;
pub mod inspector;
pub mod interpreter;
pub mod notify;
mod query;
pub mod serve;
pub mod sockets;
mod spawner;
pub mod watch;
pub mod webhook;
