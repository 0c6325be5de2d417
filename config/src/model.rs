//! The typed configuration handed to the supervisor and (as JSON) to workers.
//!
//! Field names equal the schema key names (`server.loop` is the field
//! `event_loop`, serialized as `loop`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[limits]`
    pub limits: Limits,
    /// `[ssl]`
    pub ssl: Ssl,
    /// `[http3]`
    pub http3: Http3,
    /// `[websocket]`
    pub websocket: Websocket,
    /// `[static]` (a keyword in Rust, hence the field's name).
    #[serde(rename = "static")]
    pub statics: Static,
    /// `[logging]`
    pub logging: Logging,
    /// `[metrics]` (planned)
    pub metrics: Metrics,
    /// `[watchdog]` (planned)
    pub watchdog: Watchdog,
    /// `[errors]`
    pub errors: Errors,
    /// `[reload]`
    pub reload: Reload,
    /// `[inspector]`
    pub inspector: Inspector,
    /// `[executors]`
    pub executors: Executors,
    /// `[debug]`
    pub debug: Debug,
    /// `[application]`
    pub application: Application,
}

/// `[server]`: socket, workers, timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// Interface address to bind.
    pub host: String,
    /// TCP port (0 = any free port).
    pub port: u16,
    /// Number of worker processes.
    pub workers: usize,
    /// Debug mode.
    pub debug: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// Time to finish in-flight requests on shutdown.
    #[serde(with = "secs")]
    pub graceful_timeout: Duration,
    /// Idle keep-alive timeout.
    #[serde(with = "secs")]
    pub keep_alive_timeout: Duration,
    /// Runtime directory; `None` = chosen by the supervisor.
    pub run_dir: Option<PathBuf>,
    /// `[server] early_hints`: send the app's 103 Early Hints (HTTP/1.1, HTTP/2, HTTP/3).
    pub early_hints: bool,
    /// `[server] uds`: serve on this Unix socket instead of host/port.
    pub uds: Option<PathBuf>,
    /// The `uds` socket's file mode (`u32::MAX`: not an octal mode, refused by the check).
    pub uds_mode: u32,
    /// Python event loop (key `loop`).
    #[serde(rename = "loop")]
    pub event_loop: LoopKind,
    /// Tokio threads per worker; 0: the connections run on the event loop's thread.
    pub threads: usize,
    /// `pathsend` with `sendfile(2)` on plaintext HTTP/1.1.
    pub sendfile: bool,
    /// ASGI `root_path`.
    pub root_path: String,
    /// Heartbeat timeout.
    #[serde(with = "secs")]
    pub worker_timeout: Duration,
    /// Requests before a worker restart, 0 = never.
    pub max_requests: u64,
    /// Random extra requests before restart.
    pub max_requests_jitter: u64,
    /// Replace a worker after this long (zero: never).
    #[serde(with = "secs")]
    pub max_lifetime: Duration,
    /// Up to this much extra lifetime per worker.
    #[serde(with = "secs")]
    pub max_lifetime_jitter: Duration,
    /// Replace a worker whose RSS stays above this many bytes (0: never).
    pub max_rss: u64,
    /// Honour forwarding headers from trusted proxies.
    pub proxy_headers: bool,
    /// Trusted proxies: addresses, CIDR networks, or `*`.
    pub forwarded_allow_ips: Vec<String>,
    /// PROXY protocol headers expected from the peers in `forwarded_allow_ips`.
    pub proxy_protocol: ProxyProtocol,
}

/// `[limits]`: request size, time and concurrency limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Maximum request line + headers size in bytes.
    pub max_header_size: u64,
    /// Maximum body size in bytes; 0 = unlimited.
    pub max_body_size: u64,
    /// Time allowed to receive the headers.
    #[serde(with = "secs")]
    pub header_read_timeout: Duration,
    /// Maximum concurrent HTTP requests per worker; 0 = unlimited.
    pub max_concurrency: usize,
    /// Time a request's app may run before 504 and cancellation (zero: none).
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Time an upload may send no bytes while the app waits (zero: none).
    #[serde(with = "secs")]
    pub body_timeout: Duration,
    /// Time a client may take no response bytes (zero: none).
    #[serde(with = "secs")]
    pub send_timeout: Duration,
    /// Response bytes buffered per response.
    pub response_buffer: u64,
    /// Response bytes buffered per connection.
    pub connection_buffer: u64,
    /// Response bytes buffered per worker.
    pub worker_buffer: u64,
}

/// `[http3]`: HTTP/3 front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Http3 {
    /// Serve HTTP/3.
    pub enabled: bool,
    /// UDP port (0: the server port).
    pub port: u16,
    /// `Alt-Svc` max age.
    pub alt_svc_max_age: Duration,
    /// Largest request header section.
    pub max_field_section_size: u64,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Concurrent requests per connection.
    pub max_concurrent_streams: u32,
}

/// `[ssl]`: HTTPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ssl {
    /// Serve HTTPS.
    pub enabled: bool,
    /// Certificate chain (PEM).
    pub certfile: Option<PathBuf>,
    /// Private key (PEM).
    pub keyfile: Option<PathBuf>,
    /// Password of an encrypted key (secret).
    pub keyfile_password: Option<String>,
    /// CA bundle for client certificates.
    pub ca_certs: Option<PathBuf>,
    /// Minimum TLS version.
    pub min_version: TlsVersion,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logging {
    /// Minimum level.
    pub level: LogLevel,
    /// Python logging format string, or `json`.
    pub format: String,
    /// Log file; `None` = stderr.
    pub file: Option<PathBuf>,
    /// One line per request.
    pub access_log: bool,
    /// `common`, `combined`, `json`, or a template of `{atom}`s.
    pub access_format: String,
}

/// `[metrics]` (planned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Expose metrics.
    pub enabled: bool,
    /// URL path, starts with `/`.
    pub endpoint: String,
    /// Listener port.
    pub export_port: u16,
    /// Listener address.
    pub host: String,
}

/// `[websocket]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Websocket {
    /// Largest message a client may send (bytes).
    pub max_message_size: u64,
    /// Client messages buffered for the app.
    pub max_queue: usize,
    /// Client message bytes buffered for the app, per connection.
    pub max_queue_bytes: u64,
    /// Client message bytes buffered for the app, per worker.
    pub worker_queue_bytes: u64,
    /// Keepalive ping period (zero: none).
    #[serde(with = "secs")]
    pub ping_interval: Duration,
    /// Time a client has to answer a ping.
    #[serde(with = "secs")]
    pub ping_timeout: Duration,
    /// Offer permessage-deflate.
    pub per_message_deflate: bool,
    /// Time open WebSockets keep running in a drain before close 1001.
    #[serde(with = "secs")]
    pub drain_grace: Duration,
}

/// `[static]`: files the workers serve without entering Python. The lists keep the
/// schema's text form, normalised when the configuration is merged (prefixes without a
/// trailing `/`, directories absolute); [`Static::mounts`] turns them into
/// [`crate::statics::Mount`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Static {
    /// `PREFIX=DIRECTORY` entries.
    pub mounts: Vec<String>,
    /// Prefixes whose misses do not fall through to the app.
    pub exclusive: Vec<String>,
    /// `PREFIX=SECONDS` entries.
    pub max_age: Vec<String>,
    /// Prefixes whose `Cache-Control` says `immutable`.
    pub immutable: Vec<String>,
    /// Prefixes where symbolic links may lead out of the directory.
    pub follow_symlinks: Vec<String>,
    /// Serve `.br` / `.gz` siblings.
    pub precompressed: bool,
}

/// `[watchdog]` (planned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watchdog {
    /// Enabled.
    pub enabled: bool,
    /// Check period.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Warning threshold.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Critical threshold (>= `timeout`).
    #[serde(with = "secs")]
    pub critical: Duration,
}

/// `[inspector]`: the request inspector page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inspector {
    /// Serve `/inspector` on the metrics listener.
    pub enabled: bool,
    /// Bearer token its data requires; `None` = none.
    pub token: Option<String>,
}

/// `[reload]`: the development file watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// Watch and reload.
    pub enabled: bool,
    /// Watched directories (relative ones under `app_dir`); empty = `app_dir`.
    pub dirs: Vec<String>,
    /// Glob patterns of the file names that reload.
    pub include: Vec<String>,
    /// Glob patterns of the names ignored (files and directories).
    pub exclude: Vec<String>,
    /// Quiet time before a reload.
    #[serde(with = "secs")]
    pub delay: Duration,
}

/// `[errors]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Tracebacks in 500 responses (requires `server.debug`).
    pub show_traceback: bool,
    /// Notify on critical errors (planned).
    pub notify_critical: bool,
    /// Notification webhook (planned).
    pub notify_webhook: Option<String>,
}

/// `[executors]`: the app's thread and process pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executors {
    /// Threads of the thread pool (0: off).
    pub threads: u32,
    /// Processes of the process pool (0: off).
    pub processes: u32,
    /// Time pending work gets on drain.
    #[serde(with = "secs")]
    pub shutdown_timeout: Duration,
}

/// `[debug]`: the remote debugger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debug {
    /// The supervisor runs the debugger's listener.
    pub enabled: bool,
    /// Failing requests wait for a debugger.
    pub remote_pdb: bool,
    /// The listener's interface address.
    pub host: String,
    /// The listener's port.
    pub debug_port: u16,
    /// Peers allowed to connect (addresses and networks).
    pub allowed_ips: Vec<String>,
    /// The secret an attach must send.
    pub secret: Option<String>,
    /// How long a failing request waits for a debugger.
    #[serde(with = "secs")]
    pub wait: Duration,
}

/// `[application]`: the Python app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    /// `module:attribute`; empty = not configured (e.g. given on the command line).
    pub app: String,
    /// Absolute directory put first on `sys.path`.
    pub app_dir: PathBuf,
    /// The workers' interpreter: a path or a bare command name; `None` = automatic.
    pub python: Option<PathBuf>,
    /// Call `app()` to get the application.
    pub factory: bool,
    /// Lifespan protocol mode.
    pub lifespan: Lifespan,
    /// Application name.
    pub name: String,
    /// Application secret (secret).
    pub secret_key: Option<String>,
}

/// `server.loop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopKind {
    /// uvloop when installed, else asyncio.
    Auto,
    /// The standard asyncio loop.
    Asyncio,
    /// uvloop.
    Uvloop,
}

/// `server.proxy_protocol`: which PROXY protocol header versions a trusted peer's
/// connection must begin with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header is expected: the bytes are HTTP (or TLS) from the first one.
    Off,
    /// The v1 text header only.
    V1,
    /// The v2 binary header only.
    V2,
    /// Either version.
    Auto,
}

/// `application.lifespan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifespan {
    /// Run it if the app supports it.
    Auto,
    /// Required.
    On,
    /// Never.
    Off,
}

/// `ssl.min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `logging.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// TRACE.
    Trace,
    /// DEBUG.
    Debug,
    /// INFO.
    Info,
    /// WARNING.
    Warning,
    /// ERROR.
    Error,
    /// CRITICAL.
    Critical,
}

impl LoopKind {
    pub(crate) fn from_word(word: &str) -> Self {
        match word {
            "asyncio" => Self::Asyncio,
            "uvloop" => Self::Uvloop,
            _ => Self::Auto,
        }
    }
}

impl ProxyProtocol {
    pub(crate) fn from_word(word: &str) -> Self {
        match word {
            "v1" => Self::V1,
            "v2" => Self::V2,
            "auto" => Self::Auto,
            _ => Self::Off,
        }
    }
}

impl Lifespan {
    pub(crate) fn from_word(word: &str) -> Self {
        match word {
            "on" => Self::On,
            "off" => Self::Off,
            _ => Self::Auto,
        }
    }
}

impl TlsVersion {
    pub(crate) fn from_word(word: &str) -> Self {
        match word {
            "1.3" => Self::Tls13,
            _ => Self::Tls12,
        }
    }
}

impl LogLevel {
    pub(crate) fn from_word(word: &str) -> Self {
        match word {
            "TRACE" => Self::Trace,
            "DEBUG" => Self::Debug,
            "WARNING" => Self::Warning,
            "ERROR" => Self::Error,
            "CRITICAL" => Self::Critical,
            _ => Self::Info,
        }
    }

    /// The Python spelling, e.g. `WARNING`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
            Self::Critical => "CRITICAL",
        }
    }
}

/// Serde helper: a [`Duration`] as a floating-point number of seconds.
pub mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serializes as `f64` seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Deserializes from a non-negative finite number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_serialize_as_schema_words() {
        let cases = [
            (serde_json::to_string(&LoopKind::Uvloop).ok(), "\"uvloop\""),
            (serde_json::to_string(&Lifespan::Off).ok(), "\"off\""),
            (serde_json::to_string(&TlsVersion::Tls13).ok(), "\"1.3\""),
            (
                serde_json::to_string(&LogLevel::Warning).ok(),
                "\"WARNING\"",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_deref(), Some(want));
        }
    }

    #[test]
    fn durations_as_seconds() {
        #[derive(Serialize, Deserialize, PartialEq, std::fmt::Debug)]
        struct T {
            #[serde(with = "secs")]
            d: Duration,
        }
        let cases = [
            (Duration::from_millis(2500), "{\"d\":2.5}"),
            (Duration::from_secs(30), "{\"d\":30.0}"),
        ];
        for (d, json) in cases {
            assert_eq!(serde_json::to_string(&T { d }).ok().as_deref(), Some(json));
            assert_eq!(serde_json::from_str::<T>(json).ok(), Some(T { d }));
        }
        assert!(serde_json::from_str::<T>("{\"d\":-1}").is_err());
    }
}
