//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading the configuration.
///
/// `Display` is one line naming the key, where the value came from and what
/// was expected. Secret values are never included.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The current directory (needed to resolve relative paths) is unavailable.
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(#[source] std::io::Error),
    /// The file extension is not `.ini`, `.cfg` or `.toml`.
    #[error("{}: unsupported config file extension {ext:?} (expected .ini, .cfg or .toml)", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Its extension (empty when it has none).
        ext: String,
    },
    /// A line or document that cannot be parsed.
    #[error("{origin}: {message}")]
    Syntax {
        /// Where, e.g. `server.ini:4`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A section name that is not in the schema.
    #[error("{origin}: unknown section [{section}]{}", hint(.suggestion, "[", "]"))]
    UnknownSection {
        /// Where, e.g. `server.ini:9`.
        origin: String,
        /// The unknown name.
        section: String,
        /// The closest known section, if any is close.
        suggestion: Option<String>,
    },
    /// A key that is not in the schema.
    #[error("{origin}: unknown key {key}{}", hint(.suggestion, "", ""))]
    UnknownKey {
        /// Where, e.g. `environment variable GENRO_ASGI_SERVER_WORKRS`.
        origin: String,
        /// The unknown `section.key`.
        key: String,
        /// The closest known `section.key`, if any is close.
        suggestion: Option<String>,
    },
    /// The same section header appears twice in a file.
    #[error("{}:{second_line}: duplicate section [{section}] (first opened at line {first_line})", file.display())]
    DuplicateSection {
        /// The file.
        file: PathBuf,
        /// The section.
        section: String,
        /// Line of the first header.
        first_line: usize,
        /// Line of the repeated header.
        second_line: usize,
    },
    /// The same key is set twice in one section of a file.
    #[error("{}:{second_line}: duplicate key [{section}] {key} (first set at line {first_line})", file.display())]
    DuplicateKey {
        /// The file.
        file: PathBuf,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// Line of the first assignment.
        first_line: usize,
        /// Line of the repeated assignment.
        second_line: usize,
    },
    /// A value that does not fit its key's type or range.
    #[error("{origin}: [{section}] {key} = {shown}: expected {expected}")]
    InvalidValue {
        /// Where the value came from.
        origin: String,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// The offending value, quoted, or `<secret>`.
        shown: String,
        /// What would have been accepted.
        expected: String,
    },
    /// Values that are valid one by one but not together.
    #[error("{0}")]
    Conflict(String),
    /// A `--set` argument that is not `section.key=value`.
    #[error("--set {arg}: expected section.key=value")]
    BadSetFlag {
        /// The argument as given (without its value, which may be secret).
        arg: String,
    },
}

impl ConfigError {
    /// Process exit code for configuration errors (usage error).
    pub fn exit_code(&self) -> i32 {
        2
    }
}

fn hint(suggestion: &Option<String>, open: &str, close: &str) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {open}{s}{close}?)"),
        None => String::new(),
    }
}

/// The closest candidate to `word`, if it is close enough to be a useful hint.
pub(crate) fn suggest<I, S>(word: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut best: Option<(f64, String)> = None;
    for c in candidates {
        let c: String = c.into();
        let score = strsim::jaro_winkler(word, &c);
        let better = match &best {
            Some((b, _)) => score > *b,
            None => true,
        };
        if score >= 0.8 && better {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["server.workers", "server.port", "server.host"];
        let cases = [
            ("server.workrs", Some("server.workers")),
            ("server.prot", Some("server.port")),
            ("zzz.qqq", None),
        ];
        for (word, want) in cases {
            assert_eq!(suggest(word, keys).as_deref(), want, "{word}");
        }
    }

    #[test]
    fn messages() {
        let cases = [
            (
                ConfigError::UnknownSection {
                    origin: "server.ini:9".into(),
                    section: "sevrer".into(),
                    suggestion: Some("server".into()),
                },
                "server.ini:9: unknown section [sevrer] (did you mean [server]?)",
            ),
            (
                ConfigError::UnknownKey {
                    origin: "environment variable GENRO_ASGI_SERVER_WORKRS".into(),
                    key: "server.workrs".into(),
                    suggestion: Some("server.workers".into()),
                },
                "environment variable GENRO_ASGI_SERVER_WORKRS: unknown key server.workrs (did you mean server.workers?)",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
            assert_eq!(err.exit_code(), 2);
        }
    }
}
