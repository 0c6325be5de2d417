//! genro-asgi configuration: a table-driven schema ([`SCHEMA`]) that is the
//! single source of truth for parsing INI/TOML files, environment variables and
//! command-line overrides, for validation, for the `check` output
//! ([`Loaded::render`]) and for `docs/CONFIG.md` ([`markdown`]).
//!
//! Precedence: command line > environment (`GENRO_ASGI_<SECTION>_<KEY>`) >
//! file > defaults. [`load`] does the I/O (files, and the CPUs `[server] workers = auto`
//! counts with [`cpus::detect`]); [`parse_ini`], [`parse_toml`], [`parse_env`],
//! [`parse_overrides`] and [`merge`] are pure.
#![warn(missing_docs, missing_debug_implementations)]

pub mod cpus;
mod error;
mod ini;
mod layers;
mod merge;
mod model;
pub mod net;
mod render;
pub mod schema;
pub mod statics;
mod tomlfile;
mod value;

pub use cpus::CpuBudget;
pub use error::ConfigError;
pub use ini::parse_ini;
pub use layers::{
    parse_env, parse_overrides, parse_set_flag, Override, RawEntry, RawLayer, Source, ENV_PREFIX,
    INTERNAL_ENV_PREFIX,
};
pub use merge::{load, merge, parse_file, Loaded};
pub use model::{
    secs, Application, Config, Debug, Errors, Lifespan, Limits, LogLevel, Logging, LoopKind,
    Metrics, ProxyProtocol, Server, Ssl, Static, TlsVersion, Watchdog, Websocket,
};
pub use render::markdown;
pub use schema::{KeyDef, Kind, SCHEMA};
pub use tomlfile::parse_toml;
pub use value::{parse_bool, parse_size};
