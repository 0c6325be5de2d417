//! Combining the layers (defaults < file < environment < command line) into the
//! typed [`Config`], plus the thin [`load`] wrapper that does the I/O.

use crate::cpus::CpuBudget;
use crate::error::ConfigError;
use crate::layers::{parse_env, parse_overrides, unknown_key, Override, RawLayer, Source};
use crate::model::*;
use crate::schema::{self, Kind, SCHEMA};
use crate::statics::StaticError;
use crate::value::{parse_value, Expected, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The effective configuration and where each value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The typed configuration.
    pub config: Config,
    /// Source of every key, by `section.key`.
    pub sources: BTreeMap<String, Source>,
    /// The configuration file, if one was used.
    pub file: Option<PathBuf>,
    /// `GENRO_ASGI_*` environment variables skipped as Kubernetes service links.
    pub ignored_env: Vec<String>,
    /// When `[server] workers = auto`: the count chosen (also in `config.server.workers`)
    /// and why.
    pub workers_auto: Option<CpuBudget>,
}

impl Loaded {
    /// What `[server] workers = auto` chose and why, for `check` and the start and reload
    /// log lines: `[server] workers = auto: 2 (cgroup v2 cpu.max 200000/100000 at ...)`.
    pub fn workers_note(&self) -> Option<String> {
        (self.workers_auto.as_ref()).map(|budget| format!("[server] workers = auto: {budget}"))
    }

    /// The line `serve` logs and `check` prints when service-link variables were skipped.
    pub fn ignored_env_note(&self) -> Option<String> {
        (!self.ignored_env.is_empty()).then(|| {
            format!(
                "ignoring {}: Kubernetes service links of a Service named genro-asgi*, not settings (enableServiceLinks: false turns them off)",
                self.ignored_env.join(", ")
            )
        })
    }
}

/// Reads the file (if any), the environment and the command-line overrides,
/// then [`merge`]s them. `env` is usually `std::env::vars()`; `[server] workers = auto`
/// reads the cgroup files under `/`, or under the directory in `env`'s
/// [`crate::cpus::ENV_CPU_ROOT`] (tests).
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[Override],
) -> Result<Loaded, ConfigError> {
    let cwd = std::env::current_dir().map_err(ConfigError::CurrentDir)?;
    let env: Vec<(String, String)> = env.into_iter().collect();
    let cpu_root = (env.iter())
        .find(|(name, _)| name == crate::cpus::ENV_CPU_ROOT)
        .map_or_else(|| PathBuf::from("/"), |(_, root)| PathBuf::from(root));
    let file = match path {
        Some(path) => {
            file_format(path)?;
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Some(parse_file(&text, path)?)
        }
        None => None,
    };
    let loaded = merge(
        file,
        parse_env(env)?,
        parse_overrides(overrides)?,
        &cwd,
        || crate::cpus::detect(&cpu_root),
    )?;
    check_static_dirs(&loaded)?;
    Ok(loaded)
}

/// A bad `[static]` entry as a configuration error naming where it came from.
fn static_error(err: StaticError, sources: &BTreeMap<String, Source>) -> ConfigError {
    ConfigError::InvalidValue {
        origin: (sources.get(&format!("static.{}", err.key)))
            .map_or_else(|| "default".into(), Source::to_string),
        section: "static".into(),
        key: err.key.into(),
        shown: format!("{:?}", err.entry),
        expected: err.expected,
    }
}

/// Every `[static]` mount's directory exists (I/O: hence here, not in [`merge`]). The
/// workers open them again when they start.
fn check_static_dirs(loaded: &Loaded) -> Result<(), ConfigError> {
    let statics = &loaded.config.statics;
    let mounts = (statics.mounts(&loaded.config.application.app_dir))
        .map_err(|err| static_error(err, &loaded.sources))?;
    for (entry, mount) in statics.mounts.iter().zip(&mounts) {
        let why = match std::fs::metadata(&mount.dir) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => format!("{} is not a directory", mount.dir.display()),
            Err(err) => format!("{}: {err}", mount.dir.display()),
        };
        return Err(static_error(
            StaticError {
                key: "mounts",
                entry: entry.clone(),
                expected: format!("an existing directory ({why})"),
            },
            &loaded.sources,
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ini,
    Toml,
}

fn file_format(path: &Path) -> Result<Format, ConfigError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "ini" | "cfg" => Ok(Format::Ini),
        "toml" => Ok(Format::Toml),
        _ => Err(ConfigError::UnsupportedFormat {
            path: path.to_path_buf(),
            ext,
        }),
    }
}

/// Parses file text with the parser chosen by the extension (`.ini`/`.cfg` or `.toml`).
pub fn parse_file(text: &str, path: &Path) -> Result<RawLayer, ConfigError> {
    match file_format(path)? {
        Format::Ini => crate::ini::parse_ini(text, path),
        Format::Toml => crate::tomlfile::parse_toml(text, path),
    }
}

/// Removes `.` components without touching the filesystem.
fn tidy(path: PathBuf) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// The folder of a config file, absolute.
fn file_dir(file: &Path, cwd: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    tidy(cwd.join(parent))
}

fn shown(secret: bool, text: &str) -> String {
    if secret {
        "<secret>".into()
    } else {
        format!("{text:?}")
    }
}

/// Combines the layers: defaults < `file` < `env` < `cli`. Pure: relative
/// paths are resolved against the file's folder (file values) or `cwd`, and `auto` counts
/// (`[server] workers`) take the budget `cpus` returns, called only when one is `auto`.
///
/// Every value in every layer is validated, even when overridden.
pub fn merge(
    file: Option<RawLayer>,
    env: RawLayer,
    cli: RawLayer,
    cwd: &Path,
    cpus: impl FnOnce() -> CpuBudget,
) -> Result<Loaded, ConfigError> {
    let file_path = file.as_ref().and_then(|l| l.file.clone());
    let ignored_env = env.ignored.clone();
    let mut winners: BTreeMap<String, (Value, Source)> = BTreeMap::new();
    for def in SCHEMA {
        let value = parse_value(&def.kind, def.default).map_err(|Expected(expected)| {
            ConfigError::InvalidValue {
                origin: "default".into(),
                section: def.section.into(),
                key: def.key.into(),
                shown: shown(def.secret, def.default),
                expected,
            }
        })?;
        winners.insert(def.full_name(), (value, Source::Default));
    }
    for layer in file.into_iter().chain([env, cli]) {
        for entry in layer.entries {
            let name = format!("{}.{}", entry.section, entry.key);
            let Some(def) = schema::find(&entry.section, &entry.key) else {
                return Err(unknown_key(entry.source.to_string(), &name));
            };
            let value = parse_value(&def.kind, &entry.value).map_err(|Expected(expected)| {
                ConfigError::InvalidValue {
                    origin: entry.source.to_string(),
                    section: entry.section.clone(),
                    key: entry.key.clone(),
                    shown: shown(def.secret, &entry.value),
                    expected,
                }
            })?;
            let value = match value {
                // A bare program name (no `/`) is looked up on PATH, not in a folder.
                Value::Path(Some(p))
                    if p.is_relative()
                        && !(def.kind == Kind::Program && p.components().count() == 1) =>
                {
                    let base = match &entry.source {
                        Source::File { path, .. } => file_dir(path, cwd),
                        _ => cwd.to_path_buf(),
                    };
                    Value::Path(Some(tidy(base.join(p))))
                }
                other => other,
            };
            winners.insert(name, (value, entry.source));
        }
    }
    let app_dir_key = "application.app_dir".to_string();
    if let Some((Value::Path(p @ None), _)) = winners.get_mut(&app_dir_key) {
        *p = Some(match &file_path {
            Some(f) => file_dir(f, cwd),
            None => cwd.to_path_buf(),
        });
    }
    let workers_auto = resolve_auto(&mut winners, cpus);
    let sources = winners
        .iter()
        .map(|(k, (_, s))| (k.clone(), s.clone()))
        .collect();
    let values: BTreeMap<String, Value> = winners.into_iter().map(|(k, (v, _))| (k, v)).collect();
    let mut config = build(&Values(values));
    let mounts = (config.statics)
        .mounts(&config.application.app_dir)
        .map_err(|err| static_error(err, &sources))?;
    config.statics = Static::normalised(&mounts, config.statics.precompressed);
    let loaded = Loaded {
        config,
        sources,
        file: file_path,
        ignored_env,
        workers_auto,
    };
    check(&loaded)?;
    Ok(loaded)
}

/// Replaces `auto` in the [`Kind::CpuCount`] keys with the CPU budget, kept in the key's
/// range; returns that budget when one was `auto`.
fn resolve_auto(
    winners: &mut BTreeMap<String, (Value, Source)>,
    cpus: impl FnOnce() -> CpuBudget,
) -> Option<CpuBudget> {
    let auto: Vec<(String, i64, i64)> = (SCHEMA.iter())
        .filter_map(|def| match (def.kind, winners.get(&def.full_name())) {
            (Kind::CpuCount { min, max }, Some((Value::Auto, _))) => {
                Some((def.full_name(), min, max))
            }
            _ => None,
        })
        .collect();
    if auto.is_empty() {
        return None;
    }
    let detected = cpus();
    let mut budget = None;
    for (name, min, max) in auto {
        let range = |n: i64| usize::try_from(n).unwrap_or(0);
        let clamped = detected.clone().clamp(range(min), range(max));
        if let Some((value, _)) = winners.get_mut(&name) {
            *value = Value::Int(i64::try_from(clamped.cpus).unwrap_or(max));
        }
        budget = Some(clamped);
    }
    budget
}

/// Validated values by `section.key`; getters fall back to neutral values for
/// impossible mismatches (the schema tests guarantee kinds and fields agree).
struct Values(BTreeMap<String, Value>);

impl Values {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }
    fn int<T: TryFrom<i64> + Default>(&self, name: &str) -> T {
        match self.get(name) {
            Some(Value::Int(n)) => T::try_from(*n).unwrap_or_default(),
            _ => T::default(),
        }
    }
    fn secs(&self, name: &str) -> Duration {
        match self.get(name) {
            Some(Value::Seconds(s)) => Duration::try_from_secs_f64(*s).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
    fn size(&self, name: &str) -> u64 {
        match self.get(name) {
            Some(Value::Size(n)) => *n,
            _ => 0,
        }
    }
    fn text(&self, name: &str) -> String {
        match self.get(name) {
            Some(Value::Text(s)) => s.clone(),
            _ => String::new(),
        }
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        Some(self.text(name)).filter(|s| !s.is_empty())
    }
    fn path(&self, name: &str) -> Option<PathBuf> {
        match self.get(name) {
            Some(Value::Path(p)) => p.clone(),
            _ => None,
        }
    }
    fn list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(Value::List(l)) => l.clone(),
            _ => Vec::new(),
        }
    }
}

fn build(v: &Values) -> Config {
    Config {
        server: Server {
            host: v.text("server.host"),
            port: v.int("server.port"),
            workers: v.int("server.workers"),
            debug: v.bool("server.debug"),
            backlog: v.int("server.backlog"),
            graceful_timeout: v.secs("server.graceful_timeout"),
            keep_alive_timeout: v.secs("server.keep_alive_timeout"),
            run_dir: v.path("server.run_dir"),
            early_hints: v.bool("server.early_hints"),
            uds: v.path("server.uds"),
            uds_mode: u32::from_str_radix(v.text("server.uds_mode").trim(), 8)
                .ok()
                .filter(|mode| *mode <= 0o777)
                .unwrap_or(u32::MAX),
            event_loop: LoopKind::from_word(&v.text("server.loop")),
            threads: v.int("server.threads"),
            sendfile: v.bool("server.sendfile"),
            root_path: v.text("server.root_path"),
            worker_timeout: v.secs("server.worker_timeout"),
            max_requests: v.int("server.max_requests"),
            max_requests_jitter: v.int("server.max_requests_jitter"),
            max_lifetime: v.secs("server.max_lifetime"),
            max_lifetime_jitter: v.secs("server.max_lifetime_jitter"),
            max_rss: v.size("server.max_rss"),
            proxy_headers: v.bool("server.proxy_headers"),
            forwarded_allow_ips: v.list("server.forwarded_allow_ips"),
            proxy_protocol: ProxyProtocol::from_word(&v.text("server.proxy_protocol")),
        },
        limits: Limits {
            max_header_size: v.size("limits.max_header_size"),
            max_body_size: v.size("limits.max_body_size"),
            header_read_timeout: v.secs("limits.header_read_timeout"),
            max_concurrency: v.int("limits.max_concurrency"),
            request_timeout: v.secs("limits.request_timeout"),
            body_timeout: v.secs("limits.body_timeout"),
            send_timeout: v.secs("limits.send_timeout"),
            response_buffer: v.size("limits.response_buffer"),
            connection_buffer: v.size("limits.connection_buffer"),
            worker_buffer: v.size("limits.worker_buffer"),
        },
        ssl: Ssl {
            enabled: v.bool("ssl.enabled"),
            certfile: v.path("ssl.certfile"),
            keyfile: v.path("ssl.keyfile"),
            keyfile_password: v.opt_text("ssl.keyfile_password"),
            ca_certs: v.path("ssl.ca_certs"),
            min_version: TlsVersion::from_word(&v.text("ssl.min_version")),
        },
        http3: Http3 {
            enabled: v.bool("http3.enabled"),
            port: v.int("http3.port"),
            alt_svc_max_age: v.secs("http3.alt_svc_max_age"),
            max_field_section_size: v.size("http3.max_field_section_size"),
            idle_timeout: v.secs("http3.idle_timeout"),
            max_concurrent_streams: v.int("http3.max_concurrent_streams"),
        },
        websocket: Websocket {
            max_message_size: v.size("websocket.max_message_size"),
            max_queue: v.int("websocket.max_queue"),
            max_queue_bytes: v.size("websocket.max_queue_bytes"),
            worker_queue_bytes: v.size("websocket.worker_queue_bytes"),
            ping_interval: v.secs("websocket.ping_interval"),
            ping_timeout: v.secs("websocket.ping_timeout"),
            per_message_deflate: v.bool("websocket.per_message_deflate"),
            drain_grace: v.secs("websocket.drain_grace"),
        },
        statics: Static {
            mounts: v.list("static.mounts"),
            exclusive: v.list("static.exclusive"),
            max_age: v.list("static.max_age"),
            immutable: v.list("static.immutable"),
            follow_symlinks: v.list("static.follow_symlinks"),
            precompressed: v.bool("static.precompressed"),
        },
        logging: Logging {
            level: LogLevel::from_word(&v.text("logging.level")),
            format: v.text("logging.format"),
            file: v.path("logging.file"),
            access_log: v.bool("logging.access_log"),
            access_format: v.text("logging.access_format"),
        },
        metrics: Metrics {
            enabled: v.bool("metrics.enabled"),
            endpoint: v.text("metrics.endpoint"),
            export_port: v.int("metrics.export_port"),
            host: v.text("metrics.host"),
        },
        watchdog: Watchdog {
            enabled: v.bool("watchdog.enabled"),
            interval: v.secs("watchdog.interval"),
            timeout: v.secs("watchdog.timeout"),
            critical: v.secs("watchdog.critical"),
        },
        inspector: Inspector {
            enabled: v.bool("inspector.enabled"),
            token: v.opt_text("inspector.token"),
        },
        reload: Reload {
            enabled: v.bool("reload.enabled"),
            dirs: v.list("reload.dirs"),
            include: v.list("reload.include"),
            exclude: v.list("reload.exclude"),
            delay: v.secs("reload.delay"),
        },
        errors: Errors {
            show_traceback: v.bool("errors.show_traceback"),
            notify_critical: v.bool("errors.notify_critical"),
            notify_webhook: v.opt_text("errors.notify_webhook"),
        },
        debug: Debug {
            enabled: v.bool("debug.enabled"),
            remote_pdb: v.bool("debug.remote_pdb"),
            debug_port: v.int("debug.debug_port"),
            host: v.text("debug.host"),
            allowed_ips: v.list("debug.allowed_ips"),
            secret: v.opt_text("debug.secret"),
            wait: v.secs("debug.wait"),
        },
        executors: Executors {
            threads: v.int("executors.threads"),
            processes: v.int("executors.processes"),
            shutdown_timeout: v.secs("executors.shutdown_timeout"),
        },
        application: Application {
            app: v.text("application.app"),
            app_dir: v.path("application.app_dir").unwrap_or_default(),
            python: v.path("application.python"),
            factory: v.bool("application.factory"),
            lifespan: Lifespan::from_word(&v.text("application.lifespan")),
            name: v.text("application.name"),
            secret_key: v.opt_text("application.secret_key"),
        },
    }
}

/// Cross-key rules.
fn check(loaded: &Loaded) -> Result<(), ConfigError> {
    let c = &loaded.config;
    let from = |name: &str| match loaded.sources.get(name) {
        Some(source) => source.to_string(),
        None => "default".into(),
    };
    if c.ssl.enabled {
        let missing: Vec<&str> = [
            ("ssl.certfile", c.ssl.certfile.is_none()),
            ("ssl.keyfile", c.ssl.keyfile.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
        if !missing.is_empty() {
            return Err(ConfigError::Conflict(format!(
                "{}: [ssl] enabled = true requires {} to be set",
                from("ssl.enabled"),
                missing.join(" and ")
            )));
        }
    }
    if c.server.uds_mode == u32::MAX {
        return Err(ConfigError::Conflict(format!(
            "{}: [server] uds_mode is not a file mode: expected octal digits up to 0777, like 0660",
            from("server.uds_mode")
        )));
    }
    if c.server.uds.is_some() && (c.ssl.enabled || c.http3.enabled) {
        return Err(ConfigError::Conflict(format!(
            "{}: [server] uds serves plaintext HTTP/1.1 and h2c to a local proxy; it cannot be combined with [ssl] or [http3] (terminate TLS in the proxy)",
            from("server.uds")
        )));
    }
    if c.http3.enabled && !c.ssl.enabled {
        return Err(ConfigError::Conflict(format!(
            "{}: [http3] enabled = true requires [ssl] enabled = true with a certificate (QUIC is always encrypted)",
            from("http3.enabled")
        )));
    }
    if c.server.proxy_protocol != ProxyProtocol::Off && c.server.uds.is_some() {
        return Err(ConfigError::Conflict(format!(
            "{}: [server] proxy_protocol is read on the TCP listener; with [server] uds the local proxy's forwarding headers name the client",
            from("server.proxy_protocol")
        )));
    }
    if c.server.proxy_protocol != ProxyProtocol::Off && c.server.forwarded_allow_ips.is_empty() {
        // Only peers in the list may send the header, and nobody else is served.
        return Err(ConfigError::Conflict(format!(
            "{}: [server] proxy_protocol requires [server] forwarded_allow_ips to name the load balancers that send the header (every other peer is refused)",
            from("server.proxy_protocol")
        )));
    }
    if c.errors.show_traceback && !c.server.debug {
        return Err(ConfigError::Conflict(format!(
            "{}: [errors] show_traceback = true requires [server] debug = true (tracebacks are only shown in debug mode)",
            from("errors.show_traceback")
        )));
    }
    if c.debug.enabled && !c.server.debug {
        return Err(ConfigError::Conflict(format!(
            "{}: [debug] enabled = true requires [server] debug = true (the remote debugger lets whoever attaches run code in the app's frames: a development tool, never for production)",
            from("debug.enabled")
        )));
    }
    if c.debug.enabled && c.debug.secret.is_none() {
        return Err(ConfigError::Conflict(format!(
            "{}: [debug] enabled = true requires [debug] secret (GENRO_ASGI_DEBUG_SECRET): `genro-asgi debug attach` must send it",
            from("debug.enabled")
        )));
    }
    if c.errors.notify_critical && c.errors.notify_webhook.is_none() {
        return Err(ConfigError::Conflict(format!(
            "{}: [errors] notify_critical = true requires [errors] notify_webhook = an http(s) URL to post to",
            from("errors.notify_critical")
        )));
    }
    // The default (5 s) is capped at a shorter graceful_timeout instead (by the worker).
    if c.websocket.drain_grace > c.server.graceful_timeout
        && loaded
            .sources
            .get("websocket.drain_grace")
            .is_some_and(|source| !matches!(source, crate::layers::Source::Default))
    {
        return Err(ConfigError::Conflict(format!(
            "{}: [websocket] drain_grace = {} must be <= [server] graceful_timeout = {} ({})",
            from("websocket.drain_grace"),
            c.websocket.drain_grace.as_secs_f64(),
            c.server.graceful_timeout.as_secs_f64(),
            from("server.graceful_timeout")
        )));
    }
    if c.watchdog.critical < c.watchdog.timeout {
        return Err(ConfigError::Conflict(format!(
            "{}: [watchdog] critical = {} must be >= [watchdog] timeout = {} ({})",
            from("watchdog.critical"),
            c.watchdog.critical.as_secs_f64(),
            c.watchdog.timeout.as_secs_f64(),
            from("watchdog.timeout")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ini::parse_ini;
    use crate::layers::parse_set_flag;
    use crate::tomlfile::parse_toml;

    /// The reference file from the core issue, also loaded by the end-to-end tests.
    const SAMPLE_INI: &str = include_str!("../../tests/data/reference.ini");

    const SAMPLE_TOML: &str = r#"[server]
host = "0.0.0.0"
port = 8000
workers = 4
debug = false
[ssl]
enabled = false
certfile = "/path/to/cert.pem"
keyfile = "/path/to/key.pem"
[logging]
level = "INFO"
format = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
file = "/var/log/app.log"
[metrics]
enabled = true
endpoint = "/metrics"
export_port = 9090
[watchdog]
enabled = true
interval = 30           # check every 30s
timeout = 60.0
critical = 300
[errors]
show_traceback = false
notify_critical = true
notify_webhook = "https://..."
[debug]
enabled = false
remote_pdb = false
debug_port = 8001
allowed_ips = ["127.0.0.1"]
secret = "xxxxx"
[application]
name = "myapp"
secret_key = "xxxxx"
"#;

    const CWD: &str = "/work/here";

    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn ini(text: &str) -> Result<RawLayer, ConfigError> {
        parse_ini(text, Path::new("conf/server.ini"))
    }

    fn env(vars: &[(&str, &str)]) -> RawLayer {
        parse_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).expect("valid env")
    }

    fn run(file: &str, vars: &[(&str, &str)], flags: &[Override]) -> Result<Loaded, String> {
        let file = ini(file).map_err(|e| e.to_string())?;
        let cli = parse_overrides(flags).map_err(|e| e.to_string())?;
        merge(Some(file), env(vars), cli, Path::new(CWD), test_cpus).map_err(|e| e.to_string())
    }

    /// The machine of these tests: 3 CPUs.
    fn test_cpus() -> CpuBudget {
        CpuBudget {
            cpus: 3,
            reason: "cgroup v2 cpu.max 300000/100000 at /sys/fs/cgroup/t; affinity 8 CPUs".into(),
        }
    }

    /// For merges with no `auto`: the machine is not looked at.
    fn unasked() -> CpuBudget {
        panic!("the CPUs were looked up without an auto value")
    }

    #[test]
    fn sample_ini_loads_unchanged() {
        let loaded = run(SAMPLE_INI, &[], &[]).expect("sample loads");
        let c = &loaded.config;
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.server.workers, 4);
        assert!(!c.server.debug);
        assert!(!c.ssl.enabled);
        assert_eq!(
            c.ssl.certfile.as_deref(),
            Some(Path::new("/path/to/cert.pem"))
        );
        assert_eq!(
            c.ssl.keyfile.as_deref(),
            Some(Path::new("/path/to/key.pem"))
        );
        assert_eq!(c.logging.level, LogLevel::Info);
        assert_eq!(
            c.logging.format,
            "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
        );
        assert_eq!(
            c.logging.file.as_deref(),
            Some(Path::new("/var/log/app.log"))
        );
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.endpoint, "/metrics");
        assert_eq!(c.metrics.export_port, 9090);
        assert!(c.watchdog.enabled);
        assert_eq!(c.watchdog.interval, Duration::from_secs(30));
        assert_eq!(c.watchdog.timeout, Duration::from_secs(60));
        assert_eq!(c.watchdog.critical, Duration::from_secs(300));
        assert!(!c.errors.show_traceback);
        assert!(c.errors.notify_critical);
        assert_eq!(c.errors.notify_webhook.as_deref(), Some("https://..."));
        assert!(!c.debug.enabled);
        assert_eq!(c.debug.debug_port, 8001);
        assert_eq!(c.debug.allowed_ips, ["127.0.0.1"]);
        assert_eq!(c.debug.secret.as_deref(), Some("xxxxx"));
        assert_eq!(c.application.name, "myapp");
        assert_eq!(c.application.secret_key.as_deref(), Some("xxxxx"));
        assert_eq!(c.application.app_dir, Path::new("/work/here/conf"));
        assert_eq!(c.limits.max_header_size, 64 * 1024);
        assert_eq!(c.limits.max_body_size, 100 * 1024 * 1024);
        assert_eq!(c.server.event_loop, LoopKind::Auto);
        assert_eq!(c.server.proxy_protocol, ProxyProtocol::Off);
        assert_eq!(loaded.file.as_deref(), Some(Path::new("conf/server.ini")));
        assert_eq!(
            loaded.sources.get("watchdog.interval"),
            Some(&Source::File {
                path: "conf/server.ini".into(),
                line: Some(20)
            })
        );
        assert_eq!(loaded.sources.get("server.backlog"), Some(&Source::Default));
    }

    #[test]
    fn toml_equivalent_gives_same_config() {
        let from_ini = run(SAMPLE_INI, &[], &[]).expect("ini");
        let toml = parse_toml(SAMPLE_TOML, Path::new("conf/server.toml")).expect("toml parses");
        let from_toml = merge(
            Some(toml),
            RawLayer::default(),
            RawLayer::default(),
            Path::new(CWD),
            unasked,
        )
        .expect("toml");
        assert_eq!(from_toml.config, from_ini.config);
        assert_eq!(
            from_toml.sources.get("server.port"),
            Some(&Source::File {
                path: "conf/server.toml".into(),
                line: Some(3)
            })
        );
    }

    #[test]
    fn defaults_without_file() {
        let loaded = merge(
            None,
            RawLayer::default(),
            RawLayer::default(),
            Path::new(CWD),
            unasked,
        )
        .expect("defaults");
        let c = &loaded.config;
        assert_eq!(
            (c.server.host.as_str(), c.server.port, c.server.workers),
            ("127.0.0.1", 8000, 1)
        );
        assert_eq!(c.server.backlog, 1024);
        assert_eq!(c.server.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.server.keep_alive_timeout, Duration::from_secs(5));
        assert_eq!(c.server.run_dir, None);
        assert_eq!(c.server.threads, 1);
        assert_eq!(c.limits.max_concurrency, 1000);
        assert_eq!(c.ssl.min_version, TlsVersion::Tls12);
        assert_eq!(
            c.logging.format,
            "%(asctime)s %(levelname)s %(name)s %(message)s"
        );
        assert_eq!(c.logging.file, None);
        assert_eq!(c.errors.notify_webhook, None);
        assert_eq!(c.application.app_dir, Path::new(CWD));
        assert_eq!(c.application.lifespan, Lifespan::Auto);
        assert_eq!(c.ssl.keyfile_password, None);
        assert_eq!(loaded.file, None);
        assert_eq!(loaded.sources.len(), SCHEMA.len());
        assert!(loaded.sources.values().all(|s| *s == Source::Default));
    }

    #[test]
    fn config_json_round_trips_and_matches_schema_names() {
        let loaded = run(SAMPLE_INI, &[], &[]).expect("sample loads");
        let json = serde_json::to_value(&loaded.config).expect("serializes");
        for def in SCHEMA {
            assert!(
                json[def.section].get(def.key).is_some(),
                "{} missing from JSON",
                def.full_name()
            );
        }
        let fields: usize = json
            .as_object()
            .map(|o| {
                o.values()
                    .filter_map(|s| s.as_object())
                    .map(|s| s.len())
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(fields, SCHEMA.len());
        let back: Config = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, loaded.config);
    }

    #[test]
    fn precedence_file_env_cli() {
        let file = "[server]\nport = 7000\nworkers = 2\nhost = 0.0.0.0\n";
        let vars = [
            ("GENRO_ASGI_SERVER_PORT", "8001"),
            ("GENRO_ASGI_SERVER_WORKERS", "3"),
            ("HOME", "/x"),
        ];
        let flags = [
            Override::new("server.port", "9000", "--port"),
            parse_set_flag("server.threads=4").expect("valid flag"),
        ];
        let loaded = run(file, &vars, &flags).expect("loads");
        let c = &loaded.config;
        assert_eq!(
            (
                c.server.port,
                c.server.workers,
                c.server.host.as_str(),
                c.server.threads
            ),
            (9000, 3, "0.0.0.0", 4)
        );
        let cases = [
            ("server.port", Source::Flag("--port".into())),
            (
                "server.threads",
                Source::Flag("--set server.threads=4".into()),
            ),
            (
                "server.workers",
                Source::Env("GENRO_ASGI_SERVER_WORKERS".into()),
            ),
            (
                "server.host",
                Source::File {
                    path: "conf/server.ini".into(),
                    line: Some(4),
                },
            ),
            ("server.debug", Source::Default),
        ];
        for (key, source) in cases {
            assert_eq!(loaded.sources.get(key), Some(&source), "{key}");
        }
    }

    #[test]
    fn paths_resolve_against_their_source() {
        let file = "[ssl]\ncertfile = certs/cert.pem\nkeyfile = ./key.pem\n[application]\napp_dir = ../src\n[logging]\nfile = /abs/log\n";
        let vars = [("GENRO_ASGI_SSL_CA_CERTS", "ca.pem")];
        let flags = [Override::new("server.run_dir", "run", "--run-dir")];
        let c = run(file, &vars, &flags).expect("loads").config;
        assert_eq!(
            c.ssl.certfile.as_deref(),
            Some(Path::new("/work/here/conf/certs/cert.pem"))
        );
        assert_eq!(
            c.ssl.keyfile.as_deref(),
            Some(Path::new("/work/here/conf/key.pem"))
        );
        assert_eq!(c.application.app_dir, Path::new("/work/here/conf/../src"));
        assert_eq!(c.logging.file.as_deref(), Some(Path::new("/abs/log")));
        assert_eq!(
            c.ssl.ca_certs.as_deref(),
            Some(Path::new("/work/here/ca.pem"))
        );
        assert_eq!(
            c.server.run_dir.as_deref(),
            Some(Path::new("/work/here/run"))
        );
    }

    #[test]
    fn every_boolean_spelling() {
        let cases = [
            ("true", true),
            ("True", true),
            ("yes", true),
            ("YES", true),
            ("on", true),
            ("On", true),
            ("1", true),
            ("false", false),
            ("FALSE", false),
            ("no", false),
            ("No", false),
            ("off", false),
            ("OFF", false),
            ("0", false),
        ];
        for (text, want) in cases {
            let c = run(&format!("[server]\ndebug = {text}\n"), &[], &[])
                .expect(text)
                .config;
            assert_eq!(c.server.debug, want, "{text}");
        }
    }

    #[test]
    fn value_errors_name_origin_key_and_expectation() {
        let cases: &[(&str, Vars, &[Override], &str)] = &[
            ("[server]\nhost = x\nport = 80a\n", &[], &[], "conf/server.ini:3: [server] port = \"80a\": expected an integer between 0 and 65535"),
            ("[server]\nport = 70000\n", &[], &[], "conf/server.ini:2: [server] port = \"70000\": expected an integer between 0 and 65535"),
            ("[server]\nworkers = 0\n", &[], &[], "conf/server.ini:2: [server] workers = \"0\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
            ("[server]\nworkers = automatic\n", &[], &[], "conf/server.ini:2: [server] workers = \"automatic\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
            ("", &[("GENRO_ASGI_SERVER_WORKERS", "auto-ish")], &[], "environment variable GENRO_ASGI_SERVER_WORKERS: [server] workers = \"auto-ish\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
            ("", &[], &[Override { key: "server.workers".into(), value: "-2".into(), origin: "--workers".into() }], "--workers: [server] workers = \"-2\": expected an integer between 1 and 512, or auto (the CPUs this process may use)"),
            ("[server]\nloop = trio\n", &[], &[], "conf/server.ini:2: [server] loop = \"trio\": expected one of auto, asyncio, uvloop"),
            ("[server]\nproxy_protocol = v3\n", &[], &[], "conf/server.ini:2: [server] proxy_protocol = \"v3\": expected one of off, v1, v2, auto"),
            ("[logging]\nlevel = verbose\n", &[], &[], "conf/server.ini:2: [logging] level = \"verbose\": expected one of TRACE, DEBUG, INFO, WARNING, ERROR, CRITICAL"),
            ("[server]\ndebug = maybe\n", &[], &[], "conf/server.ini:2: [server] debug = \"maybe\": expected a boolean (true/false, yes/no, on/off, 1/0)"),
            ("[limits]\nmax_header_size = 1k\n", &[], &[], "conf/server.ini:2: [limits] max_header_size = \"1k\": expected a size in bytes (e.g. 65536, 64k, 100m, 1g) between 8 KiB and 16 MiB"),
            ("[application]\napp = main\n", &[], &[], "conf/server.ini:2: [application] app = \"main\": expected module:attribute, e.g. myproject.main:app"),
            ("[metrics]\nendpoint = metrics\n", &[], &[], "conf/server.ini:2: [metrics] endpoint = \"metrics\": expected a URL path starting with '/'"),
            ("[errors]\nnotify_webhook = example.com\n", &[], &[], "conf/server.ini:2: [errors] notify_webhook = \"example.com\": expected an http:// or https:// URL"),
            ("", &[("GENRO_ASGI_SERVER_PORT", "x")], &[], "environment variable GENRO_ASGI_SERVER_PORT: [server] port = \"x\": expected an integer between 0 and 65535"),
            ("", &[], &[Override { key: "server.port".into(), value: "x".into(), origin: "--port".into() }], "--port: [server] port = \"x\": expected an integer between 0 and 65535"),
            ("", &[], &[Override { key: "server.prot".into(), value: "1".into(), origin: "--set server.prot=1".into() }], "--set server.prot=1: unknown key server.prot (did you mean server.port?)"),
            // an overridden bad file value is still an error
            ("[server]\nport = bad\n", &[("GENRO_ASGI_SERVER_PORT", "1")], &[], "conf/server.ini:2: [server] port = \"bad\": expected an integer between 0 and 65535"),
        ];
        for (file, vars, flags, want) in cases {
            assert_eq!(
                run(file, vars, flags).map(|_| ()),
                Err(want.to_string()),
                "{file:?}"
            );
        }
    }

    #[test]
    fn cross_key_rules() {
        let cases: &[(&str, Vars, Option<&str>)] = &[
            ("[ssl]\nenabled = true\n", &[], Some("conf/server.ini:2: [ssl] enabled = true requires ssl.certfile and ssl.keyfile to be set")),
            ("[ssl]\nenabled = true\ncertfile = c.pem\n", &[], Some("conf/server.ini:2: [ssl] enabled = true requires ssl.keyfile to be set")),
            ("[ssl]\nenabled = true\ncertfile = c.pem\nkeyfile = k.pem\n", &[], None),
            ("", &[("GENRO_ASGI_ERRORS_SHOW_TRACEBACK", "true")], Some("environment variable GENRO_ASGI_ERRORS_SHOW_TRACEBACK: [errors] show_traceback = true requires [server] debug = true (tracebacks are only shown in debug mode)")),
            ("[server]\ndebug = on\n[errors]\nshow_traceback = yes\n", &[], None),
            ("[debug]\nenabled = true\nsecret = s3\n", &[], Some("conf/server.ini:2: [debug] enabled = true requires [server] debug = true (the remote debugger lets whoever attaches run code in the app's frames: a development tool, never for production)")),
            ("[server]\ndebug = true\n[debug]\nenabled = true\n", &[], Some("conf/server.ini:4: [debug] enabled = true requires [debug] secret (GENRO_ASGI_DEBUG_SECRET): `genro-asgi debug attach` must send it")),
            ("[server]\ndebug = true\n[debug]\nenabled = true\n", &[("GENRO_ASGI_DEBUG_SECRET", "s3")], None),
            ("[watchdog]\ncritical = 10\n", &[], Some("conf/server.ini:2: [watchdog] critical = 10 must be >= [watchdog] timeout = 60 (default)")),
            ("[watchdog]\ncritical = 60\n", &[], None),
            ("[websocket]\ndrain_grace = 40\n", &[], Some("conf/server.ini:2: [websocket] drain_grace = 40 must be <= [server] graceful_timeout = 30 (default)")),
            ("[server]\ngraceful_timeout = 60\n[websocket]\ndrain_grace = 40\n", &[], None),
            ("[server]\ngraceful_timeout = 1\n", &[], None),
            ("[errors]\nnotify_critical = true\n", &[], Some("conf/server.ini:2: [errors] notify_critical = true requires [errors] notify_webhook = an http(s) URL to post to")),
            ("[errors]\nnotify_critical = true\nnotify_webhook = http://127.0.0.1:9/x\n", &[], None),
            ("[server]\nproxy_protocol = v2\nforwarded_allow_ips =\n", &[], Some("conf/server.ini:2: [server] proxy_protocol requires [server] forwarded_allow_ips to name the load balancers that send the header (every other peer is refused)")),
            ("[server]\nproxy_protocol = auto\n", &[], None),
            ("[server]\nproxy_protocol = v1\nuds = /tmp/a.sock\n", &[], Some("conf/server.ini:2: [server] proxy_protocol is read on the TCP listener; with [server] uds the local proxy's forwarding headers name the client")),
            ("[http3]\nenabled = yes\n", &[], Some("conf/server.ini:2: [http3] enabled = true requires [ssl] enabled = true with a certificate (QUIC is always encrypted)")),
        ];
        for (file, vars, want) in cases {
            let got = run(file, vars, &[]).map(|_| ());
            assert_eq!(got, want.map_or(Ok(()), |w| Err(w.to_string())), "{file:?}");
        }
    }

    #[test]
    fn secrets_never_leak() {
        let secret = "hunter2-topsecret";
        let bad_toml = format!("[ssl]\nkeyfile_password = [{{a = \"{secret}\"}}]\n");
        let errors = [
            parse_toml(&bad_toml, Path::new("s.toml"))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            parse_set_flag(&format!("debug.secrte={secret}"))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            parse_env([("GENRO_ASGI_DEBUG_SECRTE".to_string(), secret.to_string())])
                .map(|_| ())
                .map_err(|e| e.to_string()),
            run(
                &format!("[debug]\nsecret = {secret}\n[errors]\nshow_traceback = true\n"),
                &[],
                &[],
            )
            .map(|_| ()),
        ];
        for err in errors {
            let text = err.expect_err("must fail");
            assert!(!text.contains(secret), "{text}");
        }
        let flag = parse_set_flag(&format!("application.secret_key={secret}")).expect("valid");
        assert!(!flag.origin.contains(secret));
        let loaded = run(
            &format!("[debug]\nsecret = {secret}\n"),
            &[("GENRO_ASGI_SSL_KEYFILE_PASSWORD", secret)],
            &[flag],
        )
        .expect("loads");
        assert_eq!(
            loaded.config.application.secret_key.as_deref(),
            Some(secret)
        );
        let rendered = loaded.render();
        assert!(!rendered.contains(secret), "{rendered}");
        assert!(rendered.contains("[debug] secret = ********"));
        assert!(rendered.contains("--set application.secret_key=<secret>"));
    }

    #[test]
    fn render_lines() {
        let flags = [Override::new("server.port", "9000", "--port")];
        let loaded = run(
            "[server]\nworkers = 2\n",
            &[("GENRO_ASGI_SERVER_HOST", "::")],
            &flags,
        )
        .expect("loads");
        let text = loaded.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let cases = [
            ("[server] port ", "[server] port = 9000 (--port)"),
            (
                "[server] workers ",
                "[server] workers = 2 (conf/server.ini:2)",
            ),
            (
                "[server] host ",
                "[server] host = :: (env GENRO_ASGI_SERVER_HOST)",
            ),
            ("[server] backlog ", "[server] backlog = 1024 (default)"),
            (
                "[server] graceful_timeout ",
                "[server] graceful_timeout = 30 (default)",
            ),
            (
                "[limits] max_header_size ",
                "[limits] max_header_size = 65536 (default)",
            ),
            (
                "[debug] allowed_ips ",
                "[debug] allowed_ips = 127.0.0.1, ::1 (default)",
            ),
            (
                "[ssl] keyfile_password ",
                "[ssl] keyfile_password = (default)",
            ),
            (
                "[server] max_requests ",
                "[server] max_requests = 0 (default)",
            ),
            ("[metrics] enabled ", "[metrics] enabled = false (default)"),
        ];
        for (prefix, want) in cases {
            assert_eq!(line(prefix).as_deref(), Some(want), "{text}");
        }
        assert_eq!(
            text.lines().filter(|l| l.starts_with('[')).count(),
            SCHEMA.len()
        );
    }

    #[test]
    fn static_mounts_are_resolved_and_bad_entries_named() {
        let loaded = run(
            "[application]\napp_dir = /srv/app\n[static]\nmounts = /static/=assets, /media=/m\nexclusive = /media/\nmax_age = /static=60\n",
            &[("GENRO_ASGI_STATIC_PRECOMPRESSED", "no")],
            &[],
        )
        .expect("loads");
        let s = &loaded.config.statics;
        assert_eq!(s.mounts, ["/static=/srv/app/assets", "/media=/m"]);
        assert_eq!(s.exclusive, ["/media"]);
        assert_eq!(s.max_age, ["/static=60"]);
        assert!(!s.precompressed);
        let rendered = loaded.render();
        assert!(
            rendered.contains("[static] mounts = /static=/srv/app/assets, /media=/m"),
            "{rendered}"
        );
        let cases: &[(&str, Vars, &str)] = &[
            ("[static]\nmounts = static=/x\n", &[], "conf/server.ini:2: [static] mounts = \"static=/x\": expected PREFIX=DIRECTORY"),
            ("[static]\nmounts = /a=/x, /a/=/y\n", &[], "conf/server.ini:2: [static] mounts = \"/a/=/y\": expected each prefix mounted once (/a is mounted twice)"),
            ("[static]\nmounts = /a=/x\n", &[("GENRO_ASGI_STATIC_EXCLUSIVE", "/b")], "environment variable GENRO_ASGI_STATIC_EXCLUSIVE: [static] exclusive = \"/b\": expected the prefix of a [static] mounts entry (/b is not mounted; mounted: /a)"),
            ("[static]\nmounts = /a=/x\nimmutable = /a\n", &[], "conf/server.ini:3: [static] immutable = \"/a\": expected a mount with a max_age too"),
        ];
        for (file, vars, want) in cases {
            let err = run(file, vars, &[]).expect_err(want);
            assert!(err.starts_with(want), "{err}\nwanted: {want}");
        }
    }

    #[test]
    fn load_requires_static_directories() {
        let dir = std::env::temp_dir().join(format!("genro-config-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("assets")).expect("tmp dir");
        std::fs::write(dir.join("file"), "x").expect("write");
        let path = dir.join("server.ini");
        std::fs::write(&path, "[static]\nmounts = /a=assets\n").expect("write");
        let loaded = load(Some(&path), Vec::new(), &[]).expect("loads");
        assert_eq!(
            loaded.config.statics.mounts,
            [format!("/a={}", dir.join("assets").display())]
        );
        for (mounts, why) in [
            ("/a=missing", "No such file or directory"),
            ("/a=file", "is not a directory"),
        ] {
            std::fs::write(&path, format!("[static]\nmounts = {mounts}\n")).expect("write");
            let err = load(Some(&path), Vec::new(), &[])
                .expect_err(mounts)
                .to_string();
            let want = format!(
                "{}:2: [static] mounts = \"/a={}\": expected an existing directory (",
                path.display(),
                dir.join(&mounts[3..]).display()
            );
            assert!(err.starts_with(&want) && err.contains(why), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_formats_by_extension() {
        let cases = [
            ("a.ini", true),
            ("a.cfg", true),
            ("a.toml", true),
            ("A.INI", true),
            ("a.yaml", false),
            ("config", false),
        ];
        for (name, ok) in cases {
            let text = "[server]\nport = 1\n";
            assert_eq!(parse_file(text, Path::new(name)).is_ok(), ok, "{name}");
        }
        let err = parse_file("", Path::new("conf/app.yaml"))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(err, Err("conf/app.yaml: unsupported config file extension \"yaml\" (expected .ini, .cfg or .toml)".into()));
    }

    #[test]
    fn load_reads_files_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("genro-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join("server.ini");
        std::fs::write(&path, "[server]\nport = 9100\n").expect("write");
        let loaded = load(
            Some(&path),
            [("GENRO_ASGI_INTERNAL_CONFIG".to_string(), "{}".to_string())],
            &[],
        )
        .expect("loads");
        assert_eq!(loaded.config.server.port, 9100);
        assert_eq!(loaded.config.application.app_dir, dir);
        let missing = dir.join("missing.ini");
        let err = load(Some(&missing), Vec::new(), &[]).expect_err("missing file");
        assert!(
            err.to_string().starts_with("cannot read config file"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn workers_auto_from_every_source() {
        let flag = [Override::new("server.workers", "Auto", "--workers")];
        let cases: &[(&str, Vars, &[Override], &str)] = &[
            ("[server]\nworkers = auto\n", &[], &[], "conf/server.ini:2"),
            (
                "",
                &[("GENRO_ASGI_SERVER_WORKERS", "auto")],
                &[],
                "env GENRO_ASGI_SERVER_WORKERS",
            ),
            ("[server]\nworkers = 7\n", &[], &flag, "--workers"),
        ];
        for (file, vars, flags, source) in cases {
            let loaded = run(file, vars, flags).expect("loads");
            assert_eq!(loaded.config.server.workers, 3, "{file:?}");
            assert_eq!(loaded.workers_auto, Some(test_cpus()));
            assert_eq!(
                loaded.workers_note().as_deref(),
                Some("[server] workers = auto: 3 (cgroup v2 cpu.max 300000/100000 at /sys/fs/cgroup/t; affinity 8 CPUs)")
            );
            let rendered = loaded.render();
            let line = rendered
                .lines()
                .find(|l| l.starts_with("[server] workers "))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
            assert_eq!(
                line,
                Some(format!("[server] workers = auto: 3 ({source})")),
                "{file:?}"
            );
        }
        let toml = parse_toml("[server]\nworkers = \"auto\"\n", Path::new("s.toml")).expect("toml");
        let loaded = merge(
            Some(toml),
            RawLayer::default(),
            RawLayer::default(),
            Path::new(CWD),
            test_cpus,
        )
        .expect("toml auto");
        assert_eq!(loaded.config.server.workers, 3);
        // A number anywhere above `auto` wins, and the machine is not looked at.
        let file = ini("[server]\nworkers = auto\n").expect("ini");
        let loaded = merge(
            Some(file),
            env(&[("GENRO_ASGI_SERVER_WORKERS", "2")]),
            RawLayer::default(),
            Path::new(CWD),
            unasked,
        )
        .expect("env number over file auto");
        assert_eq!(
            (loaded.config.server.workers, &loaded.workers_auto),
            (2, &None)
        );
        assert_eq!(loaded.workers_note(), None);
    }

    #[test]
    fn workers_auto_stays_in_range() {
        let huge = || CpuBudget {
            cpus: 4096,
            reason: "affinity 4096 CPUs".into(),
        };
        let file = ini("[server]\nworkers = auto\n").expect("ini");
        let loaded = merge(
            Some(file),
            RawLayer::default(),
            RawLayer::default(),
            Path::new(CWD),
            huge,
        )
        .expect("loads");
        assert_eq!(loaded.config.server.workers, 512);
        assert_eq!(
            loaded.workers_note().as_deref(),
            Some(
                "[server] workers = auto: 512 (affinity 4096 CPUs; 4096 capped at the maximum 512)"
            )
        );
    }

    #[test]
    fn load_counts_cpus_under_the_internal_root() {
        let dir =
            std::env::temp_dir().join(format!("genro-config-cpu-root-{}", std::process::id()));
        let cgroup = dir.join("sys/fs/cgroup/svc");
        std::fs::create_dir_all(dir.join("proc/self")).expect("tmp dir");
        std::fs::create_dir_all(&cgroup).expect("tmp dir");
        std::fs::write(dir.join("proc/self/cgroup"), "0::/svc\n").expect("write");
        std::fs::write(cgroup.join("cpu.max"), "100000 100000\n").expect("write");
        let env = [
            ("GENRO_ASGI_SERVER_WORKERS".to_string(), "auto".to_string()),
            (
                crate::cpus::ENV_CPU_ROOT.to_string(),
                dir.display().to_string(),
            ),
        ];
        let loaded = load(None, env, &[]).expect("loads");
        assert_eq!(loaded.config.server.workers, 1);
        let note = loaded.workers_note().unwrap_or_default();
        let want = format!(
            "[server] workers = auto: 1 (cgroup v2 cpu.max 100000/100000 at {}; affinity ",
            cgroup.display()
        );
        assert!(note.starts_with(&want), "{note}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
