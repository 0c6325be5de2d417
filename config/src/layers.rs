//! Raw (still textual) configuration layers and where each value came from:
//! environment variables and command-line overrides. Files are in `ini`/`tomlfile`.

use crate::error::{suggest, ConfigError};
use crate::schema::{self, SCHEMA};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "GENRO_ASGI_";
/// Prefix of internal environment variables (supervisor to worker); ignored here.
pub const INTERNAL_ENV_PREFIX: &str = "GENRO_ASGI_INTERNAL_";

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The schema default.
    Default,
    /// The configuration file (with the line when known).
    File {
        /// The file as given.
        path: PathBuf,
        /// 1-based line number.
        line: Option<usize>,
    },
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its text, e.g. `--port` or `--set server.port=9000`).
    Flag(String),
}

/// Describes the source in error messages: `server.ini:3`,
/// `environment variable GENRO_ASGI_SERVER_PORT`, `--port`, `default`.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Source::File { path, line: None } => write!(f, "{}", path.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One textual `section.key = value` assignment from one source.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    /// Section (known to the schema).
    pub section: String,
    /// Key (known to the schema).
    pub key: String,
    /// The value text, unvalidated.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// All assignments from one source, in order (later entries win).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawLayer {
    /// The configuration file this layer was read from, if any.
    pub file: Option<PathBuf>,
    /// The assignments.
    pub entries: Vec<RawEntry>,
    /// Variables skipped (environment layer only): Kubernetes service links, see
    /// [`is_service_link`].
    pub ignored: Vec<String>,
}

/// A command-line setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// `section.key`.
    pub key: String,
    /// The value text.
    pub value: String,
    /// The flag as shown in messages, e.g. `--port`.
    pub origin: String,
}

impl Override {
    /// Convenience constructor.
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        origin: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            origin: origin.into(),
        }
    }
}

fn all_keys() -> impl Iterator<Item = String> {
    SCHEMA.iter().map(|d| d.full_name())
}

pub(crate) fn unknown_key(origin: String, name: &str) -> ConfigError {
    ConfigError::UnknownKey {
        origin,
        key: name.to_string(),
        suggestion: suggest(name, all_keys()),
    }
}

/// Builds the environment layer from `GENRO_ASGI_<SECTION>_<KEY>` variables.
///
/// Other variables are ignored, as are `GENRO_ASGI_INTERNAL_*`. A `GENRO_ASGI_`
/// variable that names no key is an error, unless it is a Kubernetes service link
/// (listed in [`RawLayer::ignored`]).
pub fn parse_env(env: impl IntoIterator<Item = (String, String)>) -> Result<RawLayer, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !name.starts_with(INTERNAL_ENV_PREFIX))
        .collect();
    vars.sort();
    let mut layer = RawLayer::default();
    for (name, value) in vars {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let (section, key) = rest.split_once('_').unwrap_or((rest.as_str(), ""));
        // Checked before the key lookup: a Service named `genro-asgi-server` gets
        // `GENRO_ASGI_SERVER_PORT=tcp://IP:80`, which no port key could take anyway.
        if is_service_link(&name[ENV_PREFIX.len()..], &value) {
            layer.ignored.push(name);
            continue;
        }
        if schema::find(section, key).is_none() {
            let shown = if key.is_empty() {
                section.to_string()
            } else {
                format!("{section}.{key}")
            };
            return Err(unknown_key(format!("environment variable {name}"), &shown));
        }
        layer.entries.push(RawEntry {
            section: section.to_string(),
            key: key.to_string(),
            value,
            source: Source::Env(name),
        });
    }
    Ok(layer)
}

/// Whether `rest` (a variable name after `GENRO_ASGI_`) with `value` is one the kubelet
/// sets for a Service whose name starts with `genro-asgi` (`enableServiceLinks`, on by
/// default): `GENRO_ASGI_SERVICE_HOST=10.0.0.7`, `GENRO_ASGI_PORT=tcp://10.0.0.7:80`,
/// `GENRO_ASGI_METRICS_PORT_9090_TCP_ADDR=...` and so on. Both the name's shape and the
/// value's must match, so a misspelt key (`GENRO_ASGI_METRICS_PORT=9090`) is still an
/// error and a real key with a real value (`GENRO_ASGI_SERVER_PORT=8000`) is a setting;
/// no key takes a value of these shapes.
pub fn is_service_link(rest: &str, value: &str) -> bool {
    let words: Vec<&str> = rest.split('_').collect();
    let is_port = |v: &str| !v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit());
    let is_ip = |v: &str| v.parse::<std::net::IpAddr>().is_ok();
    let is_proto = |v: &str| matches!(v, "TCP" | "UDP" | "SCTP");
    let is_url = |v: &str| {
        v.split_once("://").is_some_and(|(proto, addr)| {
            is_proto(&proto.to_ascii_uppercase())
                && addr
                    .rsplit_once(':')
                    .is_some_and(|(ip, port)| is_ip(ip.trim_matches(['[', ']'])) && is_port(port))
        })
    };
    // `<name>_SERVICE_HOST`, `<name>_SERVICE_PORT`, `<name>_SERVICE_PORT_<port name>`.
    // (Port names may contain dashes, so `<port name>` may be several words.)
    if let [.., "SERVICE", "HOST"] = words.as_slice() {
        return is_ip(value);
    }
    if words.windows(2).any(|w| w == ["SERVICE", "PORT"]) && is_port(value) {
        return true;
    }
    // `<name>_PORT_<n>_<PROTO>_PORT`: the port number alone.
    if let [.., "PORT", n, proto, "PORT"] = words.as_slice() {
        if is_port(n) && is_proto(proto) {
            return is_port(value);
        }
    }
    // `<name>_PORT`, `<name>_PORT_<n>_<PROTO>`, and that with `_PROTO` or `_ADDR`.
    let Some(at) = words.iter().rposition(|w| *w == "PORT") else {
        return false;
    };
    match &words[at + 1..] {
        [] => is_url(value),
        [n, proto] if is_port(n) && is_proto(proto) => is_url(value),
        [n, proto, "PROTO"] if is_port(n) && is_proto(proto) => value.eq_ignore_ascii_case(proto),
        [n, proto, "ADDR"] if is_port(n) && is_proto(proto) => is_ip(value),
        _ => false,
    }
}

/// Parses the argument of `--set`, `section.key=value`.
///
/// The origin is `--set section.key=value`, with the value replaced by
/// `<secret>` for secret keys.
pub fn parse_set_flag(arg: &str) -> Result<Override, ConfigError> {
    let Some((name, value)) = arg.split_once('=') else {
        return Err(ConfigError::BadSetFlag {
            arg: arg.to_string(),
        });
    };
    let name = name.trim().to_ascii_lowercase();
    if !name.contains('.') {
        return Err(ConfigError::BadSetFlag {
            arg: format!("{name}=..."),
        });
    }
    let Some(def) = schema::find_full(&name) else {
        return Err(unknown_key(format!("--set {name}=..."), &name));
    };
    let shown = if def.secret { "<secret>" } else { value };
    Ok(Override {
        origin: format!("--set {name}={shown}"),
        key: name,
        value: value.to_string(),
    })
}

/// Builds the command-line layer; every key must exist.
pub fn parse_overrides(overrides: &[Override]) -> Result<RawLayer, ConfigError> {
    let mut layer = RawLayer::default();
    for o in overrides {
        let name = o.key.trim().to_ascii_lowercase();
        let Some(def) = schema::find_full(&name) else {
            return Err(unknown_key(o.origin.clone(), &name));
        };
        layer.entries.push(RawEntry {
            section: def.section.to_string(),
            key: def.key.to_string(),
            value: o.value.clone(),
            source: Source::Flag(o.origin.clone()),
        });
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_names_map_to_keys() {
        let cases = [
            ("GENRO_ASGI_SERVER_PORT", Some(("server", "port"))),
            (
                "GENRO_ASGI_ERRORS_SHOW_TRACEBACK",
                Some(("errors", "show_traceback")),
            ),
            (
                "GENRO_ASGI_APPLICATION_APP_DIR",
                Some(("application", "app_dir")),
            ),
            ("GENRO_ASGI_INTERNAL_CONFIG", None),
            ("PATH", None),
        ];
        for (name, want) in cases {
            let layer = parse_env(env(&[(name, "1")])).expect(name);
            let got = layer
                .entries
                .first()
                .map(|e| (e.section.as_str(), e.key.as_str()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn unknown_env_vars_are_errors() {
        let cases = [
            (
                "GENRO_ASGI_SERVER_WORKRS",
                "environment variable GENRO_ASGI_SERVER_WORKRS: unknown key server.workrs (did you mean server.workers?)",
            ),
            (
                "GENRO_ASGI_SEVRER_PORT",
                "environment variable GENRO_ASGI_SEVRER_PORT: unknown key sevrer.port (did you mean server.port?)",
            ),
            ("GENRO_ASGI_ZZZ", "environment variable GENRO_ASGI_ZZZ: unknown key zzz"),
        ];
        for (name, want) in cases {
            let err = parse_env(env(&[(name, "topsecret")])).expect_err(name);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn kubernetes_service_links_are_skipped() {
        // What the kubelet sets for Services `genro-asgi` (ports http 80, metrics 9090)
        // and `genro-asgi-metrics`.
        let links = [
            ("GENRO_ASGI_SERVICE_HOST", "10.96.0.12"),
            ("GENRO_ASGI_SERVICE_PORT", "80"),
            ("GENRO_ASGI_SERVICE_PORT_HTTP", "80"),
            ("GENRO_ASGI_PORT", "tcp://10.96.0.12:80"),
            ("GENRO_ASGI_PORT_80_TCP", "tcp://10.96.0.12:80"),
            ("GENRO_ASGI_PORT_80_TCP_PROTO", "tcp"),
            ("GENRO_ASGI_PORT_80_TCP_PORT", "80"),
            ("GENRO_ASGI_PORT_80_TCP_ADDR", "10.96.0.12"),
            ("GENRO_ASGI_PORT_8000_UDP", "udp://[fd00::c]:8000"),
            ("GENRO_ASGI_METRICS_SERVICE_HOST", "10.96.0.13"),
            ("GENRO_ASGI_METRICS_SERVICE_PORT_METRICS", "9090"),
            ("GENRO_ASGI_SERVICE_SERVICE_PORT_HTTP_ALT", "8080"),
            ("GENRO_ASGI_METRICS_PORT", "tcp://10.96.0.13:9090"),
            ("GENRO_ASGI_METRICS_PORT_9090_TCP_PORT", "9090"),
            // Services `genro-asgi-server` and `genro-asgi-http3`: names of real keys.
            ("GENRO_ASGI_SERVER_PORT", "tcp://10.96.0.14:80"),
            ("GENRO_ASGI_HTTP3_PORT", "udp://10.96.0.15:443"),
            ("GENRO_ASGI_SERVER_SERVICE_HOST", "10.96.0.14"),
            ("GENRO_ASGI_SERVER_WORKERS", "2"),
        ];
        let layer = parse_env(env(&links)).expect("service links are not errors");
        assert_eq!(layer.entries.len(), 1);
        assert_eq!(layer.ignored.len(), links.len() - 1);
        // Real keys with their own values stay settings.
        let layer = parse_env(env(&[
            ("GENRO_ASGI_SERVER_PORT", "8000"),
            ("GENRO_ASGI_METRICS_EXPORT_PORT", "9090"),
            ("GENRO_ASGI_SERVER_HOST", "10.0.0.1"),
        ]))
        .unwrap();
        assert_eq!(layer.entries.len(), 3);
        assert!(layer.ignored.is_empty());
        // Right name shape, wrong value shape: still a misspelt key.
        let typos = [
            ("GENRO_ASGI_METRICS_PORT", "9090"),
            ("GENRO_ASGI_SERVICE_HOST", "genro.example"),
            ("GENRO_ASGI_SERVICE_PORT", "http"),
            ("GENRO_ASGI_PORT_80_TCP_PROTO", "udp"),
            ("GENRO_ASGI_PORT_80_TCP_ADDR", "80"),
            ("GENRO_ASGI_SERVER_PORTS", "tcp://10.0.0.1:80"),
        ];
        for (name, value) in typos {
            let err = parse_env(env(&[(name, value)])).expect_err(name);
            assert!(err.to_string().contains("unknown key"), "{name}: {err}");
        }
    }

    #[test]
    fn set_flags() {
        let ok = [
            (
                "server.workers=2",
                "server.workers",
                "2",
                "--set server.workers=2",
            ),
            (
                "Server.Port = 9000",
                "server.port",
                " 9000",
                "--set server.port= 9000",
            ),
            (
                "debug.secret=hunter2",
                "debug.secret",
                "hunter2",
                "--set debug.secret=<secret>",
            ),
            (
                "logging.format=a=b",
                "logging.format",
                "a=b",
                "--set logging.format=a=b",
            ),
        ];
        for (arg, key, value, origin) in ok {
            assert_eq!(
                parse_set_flag(arg).ok(),
                Some(Override::new(key, value, origin)),
                "{arg}"
            );
        }
        let bad = [
            (
                "server.workers",
                "--set server.workers: expected section.key=value",
            ),
            ("port=1", "--set port=...: expected section.key=value"),
            (
                "sevrer.port=1",
                "--set sevrer.port=...: unknown key sevrer.port (did you mean server.port?)",
            ),
            (
                "debug.secrte=hunter2",
                "--set debug.secrte=...: unknown key debug.secrte (did you mean debug.secret?)",
            ),
        ];
        for (arg, want) in bad {
            assert_eq!(
                parse_set_flag(arg).map_err(|e| e.to_string()),
                Err(want.to_string()),
                "{arg}"
            );
        }
    }
}
