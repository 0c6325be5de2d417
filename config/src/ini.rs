//! INI parser for the dialect people write for Python's `configparser`.
//!
//! `[section]` headers; `key = value` or `key: value`; full-line comments with
//! `#` or `;`; inline comments introduced by whitespace followed by `#` or `;`.
//! Keys and section names are case-insensitive. Values are kept raw (only
//! surrounding whitespace is removed; no quotes, no interpolation).

use crate::error::{suggest, ConfigError};
use crate::layers::{RawEntry, RawLayer, Source};
use crate::schema::{self, SCHEMA, SECTIONS};
use std::collections::BTreeMap;
use std::path::Path;

/// Cuts an inline comment: the first `#` or `;` preceded by whitespace.
fn strip_inline_comment(text: &str) -> &str {
    let mut prev_space = false;
    for (i, c) in text.char_indices() {
        if prev_space && (c == '#' || c == ';') {
            return &text[..i];
        }
        prev_space = c.is_whitespace();
    }
    text
}

/// Parses INI text; `file` is used for error messages and sources.
pub fn parse_ini(text: &str, file: &Path) -> Result<RawLayer, ConfigError> {
    let mut layer = RawLayer {
        file: Some(file.to_path_buf()),
        ..RawLayer::default()
    };
    let mut section: Option<String> = None;
    let mut sections_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut keys_seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let origin = || format!("{}:{number}", file.display());
        let syntax = |message: String| ConfigError::Syntax {
            origin: origin(),
            message,
        };
        if line.starts_with('[') {
            let header = strip_inline_comment(line).trim();
            let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
                return Err(syntax(
                    "malformed section header (expected [section])".into(),
                ));
            };
            let name = name.trim().to_ascii_lowercase();
            if !schema::is_section(&name) {
                let suggestion = suggest(&name, SECTIONS.iter().map(|(s, _)| *s));
                return Err(ConfigError::UnknownSection {
                    origin: origin(),
                    section: name,
                    suggestion,
                });
            }
            if let Some(first) = sections_seen.insert(name.clone(), number) {
                return Err(ConfigError::DuplicateSection {
                    file: file.to_path_buf(),
                    section: name,
                    first_line: first,
                    second_line: number,
                });
            }
            section = Some(name);
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            return Err(syntax(
                "expected `key = value`, a [section] header or a comment".into(),
            ));
        };
        let key = line[..at].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(syntax("missing key name before the '=' or ':'".into()));
        }
        let value = strip_inline_comment(&line[at + 1..]).trim();
        let Some(section) = &section else {
            return Err(syntax(format!(
                "key {key} is outside any section (add a [section] header above it)"
            )));
        };
        if schema::find(section, &key).is_none() {
            let candidates = SCHEMA
                .iter()
                .filter(|d| d.section == section)
                .map(|d| d.full_name());
            let name = format!("{section}.{key}");
            let suggestion = suggest(&name, candidates);
            return Err(ConfigError::UnknownKey {
                origin: origin(),
                key: name,
                suggestion,
            });
        }
        if let Some(first) = keys_seen.insert((section.clone(), key.clone()), number) {
            return Err(ConfigError::DuplicateKey {
                file: file.to_path_buf(),
                section: section.clone(),
                key,
                first_line: first,
                second_line: number,
            });
        }
        layer.entries.push(RawEntry {
            section: section.clone(),
            key,
            value: value.to_string(),
            source: Source::File {
                path: file.to_path_buf(),
                line: Some(number),
            },
        });
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Result<Vec<(String, String, usize)>, String> {
        let layer = parse_ini(text, Path::new("server.ini")).map_err(|e| e.to_string())?;
        Ok(layer
            .entries
            .into_iter()
            .map(|e| {
                let line = match e.source {
                    Source::File { line: Some(l), .. } => l,
                    _ => 0,
                };
                (format!("{}.{}", e.section, e.key), e.value, line)
            })
            .collect())
    }

    #[test]
    fn inline_comments_and_delimiters() {
        let cases = [
            (
                "[watchdog]\ninterval = 30           # check every 30s",
                "watchdog.interval",
                "30",
            ),
            (
                "[watchdog]\ninterval = 30 ; semicolon",
                "watchdog.interval",
                "30",
            ),
            ("[watchdog]\ninterval: 30", "watchdog.interval", "30"),
            (
                "[watchdog]\nInterval=30#not a comment",
                "watchdog.interval",
                "30#not a comment",
            ),
            (
                "[logging]\nformat = %(asctime)s - %(name)s",
                "logging.format",
                "%(asctime)s - %(name)s",
            ),
            (
                "[errors]\nnotify_webhook = https://example.com/x?a=1",
                "errors.notify_webhook",
                "https://example.com/x?a=1",
            ),
            (
                "[errors]\nnotify_webhook: https://...",
                "errors.notify_webhook",
                "https://...",
            ),
            ("[Server]  # main\r\nport = 1\r\n", "server.port", "1"),
            (
                "# top\n; other\n\n[server]\n  # indented\nhost =",
                "server.host",
                "",
            ),
        ];
        for (text, key, value) in cases {
            let got = values(text).expect(text);
            let last = got.last().map(|(k, v, _)| (k.as_str(), v.as_str()));
            assert_eq!(last, Some((key, value)), "{text:?}");
        }
    }

    #[test]
    fn line_numbers() {
        let got = values("[server]\n\nport = 1\n# c\nhost = x\n").expect("parses");
        let lines: Vec<usize> = got.iter().map(|(_, _, l)| *l).collect();
        assert_eq!(lines, [3, 5]);
    }

    #[test]
    fn errors() {
        let cases = [
            (
                "port = 1",
                "server.ini:1: key port is outside any section (add a [section] header above it)",
            ),
            (
                "[server]\nport 1",
                "server.ini:2: expected `key = value`, a [section] header or a comment",
            ),
            (
                "[server]\n= 1",
                "server.ini:2: missing key name before the '=' or ':'",
            ),
            (
                "[server\nport = 1",
                "server.ini:1: malformed section header (expected [section])",
            ),
            (
                "[server]\nport = 1\n\n[sevrer]",
                "server.ini:4: unknown section [sevrer] (did you mean [server]?)",
            ),
            (
                "[server]\nwokers = 2",
                "server.ini:2: unknown key server.wokers (did you mean server.workers?)",
            ),
            (
                "[server]\nport = 1\nPORT = 2",
                "server.ini:3: duplicate key [server] port (first set at line 2)",
            ),
            (
                "[server]\n[limits]\n[server]",
                "server.ini:3: duplicate section [server] (first opened at line 1)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(values(text), Err(want.to_string()), "{text:?}");
        }
    }
}
