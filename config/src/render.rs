//! Human-readable output generated from the schema: the effective
//! configuration (`check`) and `docs/CONFIG.md`.

use crate::layers::Source;
use crate::merge::Loaded;
use crate::schema::{Kind, SCHEMA, SECTIONS};
use crate::value::human_size;

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.as_f64().map(|f| f.to_string()).unwrap_or_default(),
        },
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Array(items) => {
            items.iter().map(json_text).collect::<Vec<_>>().join(", ")
        }
        serde_json::Value::Object(_) => value.to_string(),
    }
}

fn source_text(source: Option<&Source>) -> String {
    match source {
        None | Some(Source::Default) => "default".into(),
        Some(Source::Env(name)) => format!("env {name}"),
        Some(other) => other.to_string(),
    }
}

impl Loaded {
    /// The effective configuration, one line per key grouped by section, with
    /// the source of each value: `[server] port = 8000    (default)`.
    /// Secrets are shown as `********` when set.
    pub fn render(&self) -> String {
        let json = serde_json::to_value(&self.config).unwrap_or_default();
        let mut rows: Vec<(String, String)> = Vec::new();
        for def in SCHEMA {
            let raw = json_text(&json[def.section][def.key]);
            let value = match (def.secret, raw.is_empty(), def.kind) {
                (true, false, _) => "********".to_string(),
                (_, _, Kind::CpuCount { .. }) if self.workers_auto.is_some() => {
                    format!("auto: {raw}")
                }
                _ => raw,
            };
            let note = format!("({})", source_text(self.sources.get(&def.full_name())));
            rows.push((format!("[{}] {} = {value}", def.section, def.key), note));
        }
        let width = rows
            .iter()
            .map(|(left, _)| left.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = match &self.file {
            Some(file) => format!("# effective configuration (file: {})\n", file.display()),
            None => "# effective configuration (no config file)\n".to_string(),
        };
        let mut section = "";
        for (def, (left, note)) in SCHEMA.iter().zip(rows) {
            if def.section != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                section = def.section;
            }
            out.push_str(&format!("{left:<width$}    {note}\n"));
        }
        out
    }
}

fn type_text(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "bool".into(),
        Kind::Int { min, max } => format!("integer {min}..{max}"),
        Kind::CpuCount { min, max } => format!("integer {min}..{max} \\| `auto`"),
        Kind::Seconds { min, max } => format!("seconds {min}..{max}"),
        Kind::Str => "string".into(),
        Kind::Enum(words) => words
            .iter()
            .map(|w| format!("`{w}`"))
            .collect::<Vec<_>>()
            .join(" \\| "),
        Kind::Path => "path".into(),
        Kind::Program => "path or command name".into(),
        Kind::Url => "URL".into(),
        Kind::List => "list".into(),
        Kind::IpList => "IP/CIDR list".into(),
        Kind::Size { min: 0, max } if *max >= i64::MAX as u64 => "size".into(),
        Kind::Size { min, max } if *max >= i64::MAX as u64 => {
            format!("size >= {}", human_size(*min))
        }
        Kind::Size { min, max } => format!("size {}..{}", human_size(*min), human_size(*max)),
        Kind::AppRef => "`module:attr`".into(),
        Kind::UrlPath => "URL path".into(),
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

const INTRO: &str = r#"# genro-asgi configuration

<!-- Generated from config/src/schema.rs by the test `config_md_is_up_to_date`.
     Do not edit by hand: run
     GENRO_ASGI_INTERNAL_REGENERATE_DOCS=1 cargo test -p genro-config config_md_is_up_to_date -->

## Sources and precedence

Every key can be set in four places; the first one that sets it wins:

1. **Command-line flags**: dedicated flags such as `--port 9000`, or
   `--set section.key=value` for any key (e.g. `--set server.workers=4`).
2. **Environment variables**: `GENRO_ASGI_<SECTION>_<KEY>`, upper case; the section
   is one word and the key is the rest, e.g. `GENRO_ASGI_SERVER_PORT=9000` or
   `GENRO_ASGI_ERRORS_SHOW_TRACEBACK=true`. A `GENRO_ASGI_` variable that names no
   key is an error (with a did-you-mean hint), except the variables the Kubernetes
   kubelet sets for a Service named `genro-asgi*` (`GENRO_ASGI_SERVICE_HOST=<IP>`,
   `GENRO_ASGI_PORT=tcp://<IP>:<port>`, ...: recognised by name and value, skipped
   and logged at start). `GENRO_ASGI_INTERNAL_*` variables
   are reserved for the server's own use and ignored here.
3. **The configuration file**: `.ini` or `.cfg` (INI), or `.toml` (TOML).
   Any other extension is an error.
4. **Defaults**, listed below.

Unknown sections and keys are errors everywhere, and every value is validated
even when a higher source overrides it. `check` prints the effective
configuration and where each value came from. Errors name the key, where the
value came from (`server.ini:12`, `environment variable GENRO_ASGI_SERVER_PORT`,
`--port`) and what was expected; configuration errors exit with status 2.
Secret values are never printed.

## File formats

**INI** (the dialect of Python's `configparser`): `[section]` headers,
`key = value` or `key: value`, full-line comments starting with `#` or `;`, and
inline comments introduced by whitespace followed by `#` or `;`
(`interval = 30   # seconds`). Section names and keys are case-insensitive.
Values are taken literally, with surrounding whitespace removed: no quotes,
no `%(...)s` interpolation (so `format = %(asctime)s - %(message)s` is kept as is).
A key outside a section, an unparsable line, or a key set twice is an error.

**TOML**: one table per section, with native types (`port = 8000`,
`debug = true`, `interval = 2.5`); lists may be arrays or comma-separated strings.

## Value types

- **bool**: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0` (case-insensitive).
- **seconds**: a plain number of seconds, integer or decimal (`30`, `0.5`).
- **size**: bytes, as a plain integer or with a `k`, `m` or `g` suffix meaning
  KiB, MiB, GiB (case-insensitive; `64k`, `64KiB`, `100m`, `1g`).
- **path**: empty means unset. Relative paths in the file are relative to the
  file's folder; relative paths from the environment or the command line are
  relative to the current directory.
- **list**: comma-separated (`127.0.0.1, 10.0.0.1`).
- **URL**: must start with `http://` or `https://`; empty means unset.
- Enumerations list their accepted words; matching is case-insensitive.

## Rules between keys

- `ssl.enabled = true` requires `ssl.certfile` and `ssl.keyfile`.
- `errors.show_traceback = true` requires `server.debug = true`.
- `debug.enabled = true` requires `server.debug = true` and a `debug.secret`.
- `watchdog.critical` must be >= `watchdog.timeout`.
- `websocket.drain_grace`, when set, must be <= `server.graceful_timeout` (the default is
  capped at it).
"#;

/// The content of `docs/CONFIG.md`, generated from the schema.
pub fn markdown() -> String {
    let mut out = String::from(INTRO);
    for (section, about) in SECTIONS {
        out.push_str(&format!("\n## [{section}]\n\n{about}\n\n"));
        out.push_str("| key | type | default | environment variable | description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for def in SCHEMA.iter().filter(|d| d.section == *section) {
            let default = if def.default.is_empty() {
                "*(unset)*".to_string()
            } else {
                format!("`{}`", def.default)
            };
            let mut doc = cell(def.doc);
            if def.secret {
                doc.push_str(" *Secret: never printed.*");
            }
            out.push_str(&format!(
                "| `{}` | {} | {} | `{}` | {} |\n",
                def.key,
                type_text(&def.kind),
                cell(&default),
                def.env_var(),
                doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_md_is_up_to_date() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIG.md");
        let want = markdown();
        if std::env::var("GENRO_ASGI_INTERNAL_REGENERATE_DOCS").as_deref() == Ok("1") {
            std::fs::write(&path, &want).expect("write docs/CONFIG.md");
            return;
        }
        let got = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            got == want,
            "docs/CONFIG.md is out of date with config/src/schema.rs; regenerate it with\n  \
             GENRO_ASGI_INTERNAL_REGENERATE_DOCS=1 cargo test -p genro-config config_md_is_up_to_date"
        );
    }

    #[test]
    fn markdown_lists_every_key() {
        let md = markdown();
        for def in SCHEMA {
            assert!(
                md.contains(&format!("| `{}` |", def.key)),
                "{}",
                def.full_name()
            );
            assert!(md.contains(&def.env_var()), "{}", def.full_name());
        }
        assert!(!md.contains("lanned"), "every key has an effect");
    }
}
