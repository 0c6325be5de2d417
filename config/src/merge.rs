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
mod tests;
