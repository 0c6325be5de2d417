//! Installs the tracing subscriber for the supervisor and its workers (the libraries only
//! emit events). `[logging] file` appends to a file instead of stderr.

use genro_config::{Config, LogLevel};
use tracing_subscriber::filter::LevelFilter;

/// Installs the subscriber; `slot` tags worker lines.
pub fn init(config: &Config, slot: Option<u32>) {
    let level = match config.logging.level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Critical => LevelFilter::ERROR,
    };
    let json = config.logging.format.trim().eq_ignore_ascii_case("json");
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match &config.logging.file
    {
        Some(path) => {
            let path = path.clone();
            Box::new(move || -> Box<dyn std::io::Write> {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                {
                    Ok(file) => Box::new(file),
                    Err(_) => Box::new(std::io::stderr()),
                }
            })
        }
        None => Box::new(|| -> Box<dyn std::io::Write> { Box::new(std::io::stderr()) }),
    };
    let process = match slot {
        Some(slot) => format!("worker-{slot}[{}]", std::process::id()),
        None => format!("supervisor[{}]", std::process::id()),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_target(false)
            .fmt_fields(Prefixed(process))
            .try_init()
    };
    let _ = result;
}

/// Puts the process name in front of every text log line.
struct Prefixed(String);

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for Prefixed {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        write!(writer, "{}: ", self.0)?;
        tracing_subscriber::fmt::format::DefaultFields::new().format_fields(writer, fields)
    }
}
