//! TOML configuration files: one table per section, native value types.

use crate::error::{suggest, ConfigError};
use crate::layers::{RawEntry, RawLayer, Source};
use crate::schema::{self, SCHEMA, SECTIONS};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn origin(file: &Path, text: &str, offset: Option<usize>) -> String {
    match offset {
        Some(offset) => format!("{}:{}", file.display(), line_of(text, offset)),
        None => file.display().to_string(),
    }
}

fn syntax(file: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    ConfigError::Syntax {
        origin: origin(file, text, err.span().map(|s| s.start)),
        message: format!("invalid TOML: {}", err.message().trim()),
    }
}

/// A scalar (or array of scalars) as the text the INI dialect would have.
fn as_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|v| if v.is_array() { None } else { as_text(v) })
                .collect();
            parts.map(|p| p.join(","))
        }
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

type Sections = BTreeMap<Spanned<String>, toml::Value>;
type Keys = BTreeMap<String, BTreeMap<Spanned<String>, Spanned<toml::Value>>>;

/// Parses TOML text; `file` is used for error messages and sources.
pub fn parse_toml(text: &str, file: &Path) -> Result<RawLayer, ConfigError> {
    let sections: Sections = toml::from_str(text).map_err(|e| syntax(file, text, &e))?;
    for (name, value) in &sections {
        let at = origin(file, text, Some(name.span().start));
        if !value.is_table() {
            return Err(ConfigError::Syntax {
                origin: at,
                message: format!(
                    "key {} is outside any section (put it under a [section] table)",
                    name.get_ref()
                ),
            });
        }
        if !schema::is_section(name.get_ref()) {
            let suggestion = suggest(name.get_ref(), SECTIONS.iter().map(|(s, _)| *s));
            return Err(ConfigError::UnknownSection {
                origin: at,
                section: name.get_ref().clone(),
                suggestion,
            });
        }
    }
    let doc: Keys = toml::from_str(text).map_err(|e| syntax(file, text, &e))?;
    let mut layer = RawLayer {
        file: Some(file.to_path_buf()),
        ..RawLayer::default()
    };
    for (section, keys) in doc {
        for (key, value) in keys {
            let line = line_of(text, key.span().start);
            let at = format!("{}:{line}", file.display());
            let key = key.into_inner();
            let Some(def) = schema::find(&section, &key) else {
                let name = format!("{section}.{key}");
                let candidates = SCHEMA
                    .iter()
                    .filter(|d| d.section == section)
                    .map(|d| d.full_name());
                let suggestion = suggest(&name, candidates);
                return Err(ConfigError::UnknownKey {
                    origin: at,
                    key: name,
                    suggestion,
                });
            };
            let value = value.into_inner();
            let Some(text_value) = as_text(&value) else {
                return Err(ConfigError::InvalidValue {
                    origin: at,
                    section,
                    key,
                    shown: if def.secret {
                        "<secret>".into()
                    } else {
                        format!("a {}", value.type_str())
                    },
                    expected: crate::value::expected(&def.kind),
                });
            };
            layer.entries.push(RawEntry {
                section: section.clone(),
                key,
                value: text_value,
                source: Source::File {
                    path: file.to_path_buf(),
                    line: Some(line),
                },
            });
        }
    }
    layer.entries.sort_by_key(|e| match e.source {
        Source::File { line, .. } => line,
        _ => None,
    });
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(String, String, Option<usize>)>, String> {
        let layer = parse_toml(text, Path::new("server.toml")).map_err(|e| e.to_string())?;
        Ok(layer
            .entries
            .into_iter()
            .map(|e| {
                let line = match e.source {
                    Source::File { line, .. } => line,
                    _ => None,
                };
                (format!("{}.{}", e.section, e.key), e.value, line)
            })
            .collect())
    }

    #[test]
    fn native_types_become_text() {
        let text = "[server]\nport = 9000\ndebug = true\n\n[watchdog]\ninterval = 2.5\n[debug]\nallowed_ips = [\"10.0.0.1\", \"10.0.0.2\"]\n";
        let want = vec![
            ("server.port".to_string(), "9000".to_string(), Some(2)),
            ("server.debug".into(), "true".into(), Some(3)),
            ("watchdog.interval".into(), "2.5".into(), Some(6)),
            (
                "debug.allowed_ips".into(),
                "10.0.0.1,10.0.0.2".into(),
                Some(8),
            ),
        ];
        assert_eq!(parse(text), Ok(want));
    }

    #[test]
    fn errors() {
        let cases = [
            ("[server]\nport = = 1", "server.toml:2: invalid TOML: "),
            ("port = 1", "server.toml:1: key port is outside any section"),
            (
                "[server]\nport = 1\n[sevrer]\nx = 1",
                "server.toml:3: unknown section [sevrer] (did you mean [server]?)",
            ),
            (
                "[server]\n\nwokers = 2",
                "server.toml:3: unknown key server.wokers (did you mean server.workers?)",
            ),
            (
                "[server]\nport = {a = 1}",
                "server.toml:2: [server] port = a table: expected an integer",
            ),
            (
                "[ssl]\nkeyfile_password = {a = 1}",
                "server.toml:2: [ssl] keyfile_password = <secret>: expected",
            ),
            (
                "[server]\nport = 1\nport = 2",
                "server.toml:3: invalid TOML",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).expect_err(text);
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
    }
}
