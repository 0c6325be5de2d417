//! Validation of one text value against its [`Kind`]; pure functions.

use crate::schema::Kind;
use std::path::PathBuf;

/// A validated value, before it is placed in the typed [`crate::Config`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    Int(i64),
    /// `auto` for a [`Kind::CpuCount`]; [`crate::merge`] replaces it with a count.
    Auto,
    Seconds(f64),
    /// `Str`, `Enum` (canonical spelling), `Url`, `AppRef`, `UrlPath`.
    Text(String),
    List(Vec<String>),
    Size(u64),
    Path(Option<PathBuf>),
}

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;

/// Parses a boolean: `true/false`, `yes/no`, `on/off`, `1/0`, case-insensitive.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Parses a byte size: `65536`, `64k`, `64KiB`, `100m`, `1g` (1024-based, case-insensitive).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor = match suffix.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `65536` -> `64 KiB`; used in messages and docs.
pub(crate) fn human_size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

fn is_identifier_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
                && chars.all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// What a value of `kind` must look like, completing "expected ...".
pub(crate) fn expected(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "a boolean (true/false, yes/no, on/off, 1/0)".into(),
        Kind::Int { min, max } => format!("an integer between {min} and {max}"),
        Kind::CpuCount { min, max } => format!(
            "an integer between {min} and {max}, or auto (the CPUs this process may use)"
        ),
        Kind::Seconds { min, max } => format!("a number of seconds between {min} and {max}"),
        Kind::Str | Kind::Path | Kind::Program => "a string".into(),
        Kind::Enum(words) => format!("one of {}", words.join(", ")),
        Kind::Url => "an http:// or https:// URL".into(),
        Kind::List => "a comma-separated list".into(),
        Kind::IpList => {
            "a comma-separated list of IP addresses and CIDR networks (e.g. 127.0.0.1, 10.0.0.0/8, fd00::/8), or *".into()
        }
        Kind::Size { min, max } => {
            let base = "a size in bytes (e.g. 65536, 64k, 100m, 1g)";
            match (*min, *max >= i64::MAX as u64) {
                (0, true) => base.into(),
                (min, true) => format!("{base} of at least {}", human_size(min)),
                (min, false) => format!(
                    "{base} between {} and {}",
                    human_size(min),
                    human_size(*max)
                ),
            }
        }
        Kind::AppRef => "module:attribute, e.g. myproject.main:app".into(),
        Kind::UrlPath => "a URL path starting with '/'".into(),
    }
}

/// Why a value does not parse: what a value of its kind must look like (it completes
/// "expected ..." in [`crate::ConfigError::InvalidValue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected(pub(crate) String);

/// Validates `text` as a `kind`.
pub(crate) fn parse_value(kind: &Kind, text: &str) -> Result<Value, Expected> {
    let t = text.trim();
    let fail = || Expected(expected(kind));
    match kind {
        Kind::Bool => parse_bool(t).map(Value::Bool).ok_or_else(fail),
        Kind::Int { min, max } => match t.parse::<i64>() {
            Ok(n) if (*min..=*max).contains(&n) => Ok(Value::Int(n)),
            _ => Err(fail()),
        },
        Kind::CpuCount { .. } if t.eq_ignore_ascii_case("auto") => Ok(Value::Auto),
        Kind::CpuCount { min, max } => match t.parse::<i64>() {
            Ok(n) if (*min..=*max).contains(&n) => Ok(Value::Int(n)),
            _ => Err(fail()),
        },
        Kind::Seconds { min, max } => match t.parse::<f64>() {
            Ok(s) if s.is_finite() && *min <= s && s <= *max => Ok(Value::Seconds(s)),
            _ => Err(fail()),
        },
        Kind::Str => Ok(Value::Text(text.to_string())),
        Kind::Enum(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(t))
            .map(|w| Value::Text((*w).to_string()))
            .ok_or_else(fail),
        Kind::Path | Kind::Program if t.is_empty() => Ok(Value::Path(None)),
        Kind::Path | Kind::Program => Ok(Value::Path(Some(PathBuf::from(t)))),
        Kind::Url => {
            let lower = t.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            match rest {
                _ if t.is_empty() => Ok(Value::Text(String::new())),
                Some(rest) if !rest.is_empty() && !t.contains(char::is_whitespace) => {
                    Ok(Value::Text(t.into()))
                }
                _ => Err(fail()),
            }
        }
        Kind::List => Ok(Value::List(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )),
        Kind::IpList => {
            let entries: Vec<String> = t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            match crate::net::Trusted::parse(&entries) {
                Ok(_) => Ok(Value::List(entries)),
                Err(bad) => Err(Expected(format!("{} (not {:?})", expected(kind), bad.0))),
            }
        }
        Kind::Size { min, max } => match parse_size(t) {
            Some(n) if (*min..=*max).contains(&n) => Ok(Value::Size(n)),
            _ => Err(fail()),
        },
        Kind::AppRef => {
            if t.is_empty() {
                return Ok(Value::Text(String::new()));
            }
            match t.split_once(':') {
                Some((module, attr)) if is_identifier_path(module) && is_identifier_path(attr) => {
                    Ok(Value::Text(t.into()))
                }
                _ => Err(fail()),
            }
        }
        Kind::UrlPath if t.starts_with('/') && !t.contains(char::is_whitespace) => {
            Ok(Value::Text(t.into()))
        }
        Kind::UrlPath => Err(fail()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        let cases = [
            ("true", Some(true)),
            ("TRUE", Some(true)),
            ("yes", Some(true)),
            ("Yes", Some(true)),
            ("on", Some(true)),
            ("ON", Some(true)),
            ("1", Some(true)),
            ("false", Some(false)),
            ("False", Some(false)),
            ("no", Some(false)),
            ("NO", Some(false)),
            ("off", Some(false)),
            ("Off", Some(false)),
            ("0", Some(false)),
            ("", None),
            ("2", None),
            ("y", None),
            ("truee", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bool(text), want, "{text:?}");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("65536", Some(65536)),
            ("64k", Some(65536)),
            ("64K", Some(65536)),
            ("64KiB", Some(65536)),
            ("64 kb", Some(65536)),
            ("100m", Some(100 << 20)),
            ("100MiB", Some(100 << 20)),
            ("1g", Some(1 << 30)),
            ("1G", Some(1 << 30)),
            ("0", Some(0)),
            ("", None),
            ("k", None),
            ("1.5m", None),
            ("10x", None),
            ("-1", None),
            ("99999999999999999999g", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), want, "{text:?}");
        }
    }

    #[test]
    fn values() {
        let port = Kind::Int { min: 0, max: 65535 };
        let secs = Kind::Seconds {
            min: 0.0,
            max: 10.0,
        };
        let header = Kind::Size {
            min: 8192,
            max: 1 << 24,
        };
        let level = Kind::Enum(&["DEBUG", "INFO"]);
        let workers = Kind::CpuCount { min: 1, max: 512 };
        let cases: &[(&Kind, &str, Option<Value>)] = &[
            (&port, "8000", Some(Value::Int(8000))),
            (&port, " 80 ", Some(Value::Int(80))),
            (&port, "80a", None),
            (&port, "65536", None),
            (&port, "-1", None),
            (&workers, "4", Some(Value::Int(4))),
            (&workers, " auto ", Some(Value::Auto)),
            (&workers, "AUTO", Some(Value::Auto)),
            (&workers, "0", None),
            (&workers, "513", None),
            (&workers, "auto2", None),
            (&workers, "", None),
            (&port, "auto", None),
            (&secs, "2.5", Some(Value::Seconds(2.5))),
            (&secs, "10", Some(Value::Seconds(10.0))),
            (&secs, "11", None),
            (&secs, "NaN", None),
            (&secs, "5s", None),
            (&header, "64k", Some(Value::Size(65536))),
            (&header, "1k", None),
            (&level, "info", Some(Value::Text("INFO".into()))),
            (&level, "verbose", None),
            (
                &Kind::Url,
                "https://...",
                Some(Value::Text("https://...".into())),
            ),
            (&Kind::Url, "", Some(Value::Text(String::new()))),
            (&Kind::Url, "ftp://x", None),
            (&Kind::Url, "http://", None),
            (
                &Kind::List,
                "a, b,,c",
                Some(Value::List(vec!["a".into(), "b".into(), "c".into()])),
            ),
            (
                &Kind::AppRef,
                "pkg.main:app",
                Some(Value::Text("pkg.main:app".into())),
            ),
            (&Kind::AppRef, "", Some(Value::Text(String::new()))),
            (&Kind::AppRef, "main", None),
            (&Kind::AppRef, "main:", None),
            (&Kind::AppRef, ":app", None),
            (&Kind::AppRef, "a:b:c", None),
            (&Kind::AppRef, "my-app:app", None),
            (
                &Kind::UrlPath,
                "/metrics",
                Some(Value::Text("/metrics".into())),
            ),
            (&Kind::UrlPath, "metrics", None),
            (&Kind::Path, "", Some(Value::Path(None))),
        ];
        for (kind, text, want) in cases {
            assert_eq!(parse_value(kind, text).ok(), *want, "{kind:?} {text:?}");
        }
    }

    #[test]
    fn expectations() {
        let cases = [
            (
                Kind::Int { min: 0, max: 65535 },
                "an integer between 0 and 65535",
            ),
            (
                Kind::Size {
                    min: 8192,
                    max: 16 << 20,
                },
                "a size in bytes (e.g. 65536, 64k, 100m, 1g) between 8 KiB and 16 MiB",
            ),
            (Kind::Enum(&["auto", "on", "off"]), "one of auto, on, off"),
            (
                Kind::CpuCount { min: 1, max: 512 },
                "an integer between 1 and 512, or auto (the CPUs this process may use)",
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(expected(&kind), want);
        }
    }
}
