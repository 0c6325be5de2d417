//! Installs the tracing subscriber for the supervisor and its workers (the libraries only
//! emit events). `[logging] format` is a Python `logging` format string (the attributes
//! below are supported) or `json`; `[logging] file` appends to a file instead of stderr.

use genro_config::{Config, LogLevel};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Which process logs: its lines are tagged with it (`%(processName)s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// The supervisor.
    Supervisor,
    /// A worker, by slot.
    Worker(u32),
    /// The HTTP/3 front.
    Front,
}

/// Installs the subscriber for `process`.
pub fn init(config: &Config, process: Process) {
    let level = match config.logging.level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Error | LogLevel::Critical => LevelFilter::ERROR,
    };
    if let Some(path) = &config.logging.file {
        if let Err(err) = genro_shared::logfile::open(path) {
            eprintln!(
                "genro-asgi: cannot open [logging] file {}: {err}; logging to stderr",
                path.display()
            );
        }
    }
    let process = match process {
        Process::Supervisor => "supervisor".to_owned(),
        Process::Worker(slot) => format!("worker-{slot}"),
        Process::Front => "http3-front".to_owned(),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(genro_shared::logfile::line)
        .with_ansi(false);
    let format = config.logging.format.trim();
    let result = if format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .event_format(PyFormat {
                pieces: parse(format),
                process,
            })
            .try_init()
    };
    // A subscriber is already installed only in tests that call init twice.
    let _ = result;
}

/// One element of a parsed Python logging format string.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Asctime,
    Levelname,
    Levelno,
    Name,
    Message,
    Process,
    /// `%(thread)d`: the thread's id, as Python's `threading.get_ident()`.
    ThreadId,
    /// `%(threadName)s`.
    Thread,
    Module,
}

/// Parses `%(attr)s`-style format strings; unknown attributes stay as literal text.
fn parse(format: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        text.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("%%") {
            text.push('%');
            rest = after;
            continue;
        }
        let parsed = rest.strip_prefix("%(").and_then(|r| {
            let close = r.find(')')?;
            let name = &r[..close];
            // Skip flags/width up to the conversion letter (s, d, r, f, ...).
            let spec_end = r[close + 1..].find(|c: char| c.is_ascii_alphabetic())?;
            let piece = match name {
                "asctime" => Piece::Asctime,
                "levelname" => Piece::Levelname,
                "levelno" => Piece::Levelno,
                "name" => Piece::Name,
                "message" => Piece::Message,
                "process" => Piece::Process,
                "thread" => Piece::ThreadId,
                "threadName" => Piece::Thread,
                "module" => Piece::Module,
                _ => return None,
            };
            Some((piece, &r[close + 1 + spec_end + 1..]))
        });
        match parsed {
            Some((piece, after)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
                rest = after;
            }
            None => {
                text.push('%');
                rest = &rest[1..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// Formats events like Python's `logging.Formatter` with the configured format string.
struct PyFormat {
    pieces: Vec<Piece>,
    process: String,
}

fn python_level(level: &Level) -> (&'static str, u8) {
    match *level {
        Level::ERROR => ("ERROR", 40),
        Level::WARN => ("WARNING", 30),
        Level::INFO => ("INFO", 20),
        Level::DEBUG => ("DEBUG", 10),
        Level::TRACE => ("TRACE", 5),
    }
}

impl<S, N> FormatEvent<S, N> for PyFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let _ = ctx;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (levelname, levelno) = python_level(meta.level());
        let levelname = fields.levelname.as_deref().unwrap_or(levelname);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => writer.write_str(text)?,
                Piece::Asctime => write!(
                    writer,
                    "{}",
                    genro_shared::clock::Asctime(std::time::SystemTime::now())
                )?,
                Piece::Levelname => writer.write_str(levelname)?,
                Piece::Levelno => match (fields.levelno, levelname) {
                    (Some(n), _) => write!(writer, "{n}")?,
                    (None, "CRITICAL") => writer.write_str("50")?,
                    (None, _) => write!(writer, "{levelno}")?,
                },
                Piece::Name => match (&fields.logger, meta.target()) {
                    (Some(logger), _) => writer.write_str(logger)?,
                    (None, "genro_asgi::access") => write!(writer, "genro_asgi.access")?,
                    (None, "genro_asgi::app") => write!(writer, "genro_asgi.app.{}", self.process)?,
                    (None, _) => write!(writer, "genro_asgi.{}", self.process)?,
                },
                Piece::Message => {
                    writer.write_str(&fields.message)?;
                    writer.write_str(&fields.rest)?;
                }
                Piece::Process => write!(writer, "{}", std::process::id())?,
                // Events are formatted on the thread that emits them (app records too: the
                // handler calls into Rust synchronously), and on Linux Python's thread ident
                // is that thread's pthread_t.
                // SAFETY: pthread_self has no preconditions.
                Piece::ThreadId => write!(writer, "{}", unsafe { libc::pthread_self() } as u64)?,
                Piece::Thread => match &fields.thread {
                    Some(thread) => writer.write_str(thread)?,
                    None => write!(
                        writer,
                        "{}",
                        std::thread::current().name().unwrap_or("main")
                    )?,
                },
                Piece::Module => match &fields.module {
                    Some(module) => writer.write_str(module)?,
                    None => {
                        let module = meta
                            .module_path()
                            .unwrap_or("")
                            .rsplit("::")
                            .next()
                            .unwrap_or("");
                        writer.write_str(module)?
                    }
                },
            }
        }
        writeln!(writer)
    }
}

/// An event's fields: the message, the Python record attributes that override ours
/// (`levelname`, `levelno`, `logger`, `module`, `thread`: set for the app's `logging`
/// records, and `levelname = "CRITICAL"` for critical events), and the rest as ` k=v`.
#[derive(Default)]
struct Fields {
    message: String,
    levelname: Option<String>,
    levelno: Option<u64>,
    logger: Option<String>,
    module: Option<String>,
    thread: Option<String>,
    rest: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let slot = match field.name() {
            "levelname" => &mut self.levelname,
            "logger" => &mut self.logger,
            "module" => &mut self.module,
            "thread" => &mut self.thread,
            "message" => {
                self.message.push_str(value);
                return;
            }
            name => {
                use std::fmt::Write;
                let _ = write!(self.rest, " {name}={value}");
                return;
            }
        };
        *slot = Some(value.to_owned());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "levelno" {
            self.levelno = Some(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "levelname" | "logger" | "module" | "thread" => {
                self.record_str(field, format!("{value:?}").trim_matches('"'))
            }
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_python_format_strings() {
        let table: &[(&str, Vec<Piece>)] = &[
            (
                "%(asctime)s - %(name)s - %(levelname)s - %(message)s",
                vec![
                    Piece::Asctime,
                    Piece::Text(" - ".into()),
                    Piece::Name,
                    Piece::Text(" - ".into()),
                    Piece::Levelname,
                    Piece::Text(" - ".into()),
                    Piece::Message,
                ],
            ),
            (
                "[%(process)d] %(levelname)-8s %(module)s",
                vec![
                    Piece::Text("[".into()),
                    Piece::Process,
                    Piece::Text("] ".into()),
                    Piece::Levelname,
                    Piece::Text(" ".into()),
                    Piece::Module,
                ],
            ),
            (
                "100%% %(unknown)s %(message)s",
                vec![Piece::Text("100% %(unknown)s ".into()), Piece::Message],
            ),
            ("plain", vec![Piece::Text("plain".into())]),
        ];
        for (format, want) in table {
            assert_eq!(&parse(format), want, "{format}");
        }
    }
}
