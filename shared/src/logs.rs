//! Installs the tracing subscriber for the supervisor and its workers (the libraries only
//! emit events). `[logging] format` is a Python `logging` format string (the attributes
//! below are supported) or `json`; `[logging] file` appends to a file instead of stderr.

use genro_config::{Config, LogLevel};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

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
        if let Err(err) = crate::logfile::open(path) {
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
    let format = config.logging.format.trim();
    let result = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(crate::logfile::line)
        .with_ansi(false)
        .fmt_fields(NoFields)
        .event_format(PyFormat {
            pieces: (!format.eq_ignore_ascii_case("json")).then(|| parse(format)),
            process,
            critical_only: config.logging.level == LogLevel::Critical,
        })
        .finish()
        .with(KeepSpanFields)
        .try_init();
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

/// Formats every event as a Python `logging` record would be: with the configured format
/// string, or as one JSON object.
struct PyFormat {
    /// `None`: JSON.
    pieces: Option<Vec<Piece>>,
    process: String,
    /// `[logging] level = CRITICAL`: tracing stops at ERROR, so the rest of the way is here.
    critical_only: bool,
}

fn python_level(level: &Level) -> (&'static str, u64) {
    match *level {
        Level::ERROR => ("ERROR", 40),
        Level::WARN => ("WARNING", 30),
        Level::INFO => ("INFO", 20),
        Level::DEBUG => ("DEBUG", 10),
        Level::TRACE => ("TRACE", 5),
    }
}

/// An event as a Python log record: our own events get the process's logger name and
/// Rust's level and module; the app's `logging` records (and CRITICAL events) carry
/// theirs in fields (`logger`, `levelname`, `levelno`, `module`, `thread`).
struct Record {
    levelname: String,
    levelno: u64,
    name: String,
    module: String,
    thread_name: String,
    message: String,
    /// The event's other fields.
    extra: Vec<(&'static str, serde_json::Value)>,
}

impl Record {
    fn of(event: &Event<'_>, process: &str) -> Record {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let (rust_name, rust_no) = python_level(meta.level());
        let levelname = f.levelname.unwrap_or_else(|| rust_name.to_owned());
        let levelno = f
            .levelno
            .unwrap_or(if levelname == "CRITICAL" { 50 } else { rust_no });
        let name = f.logger.unwrap_or_else(|| match meta.target() {
            ACCESS_TARGET => "genro_asgi.access".to_owned(),
            "genro_asgi::app" => format!("genro_asgi.app.{process}"),
            _ => format!("genro_asgi.{process}"),
        });
        let module = f.module.unwrap_or_else(|| {
            let path = meta.module_path().unwrap_or("");
            path.rsplit("::").next().unwrap_or("").to_owned()
        });
        let thread_name = f
            .thread
            .unwrap_or_else(|| std::thread::current().name().unwrap_or("main").to_owned());
        Record {
            levelname,
            levelno,
            name,
            module,
            thread_name,
            message: f.message,
            extra: f.extra,
        }
    }

    /// Adds the fields of a span the event is in, except those the event sets itself.
    fn add_context(&mut self, fields: &[(&'static str, serde_json::Value)]) {
        for (key, value) in fields {
            if !self.extra.iter().any(|(own, _)| own == key) {
                self.extra.push((key, value.clone()));
            }
        }
    }

    /// Python's `thread` attribute: events are formatted on the thread that emits them
    /// (app records too: the handler calls into Rust synchronously), and on Linux Python's
    /// thread ident is that thread's pthread_t.
    fn thread_id() -> u64 {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() as u64 }
    }

    fn write_text(&self, pieces: &[Piece], writer: &mut Writer<'_>) -> std::fmt::Result {
        for piece in pieces {
            match piece {
                Piece::Text(text) => writer.write_str(text)?,
                Piece::Asctime => write!(
                    writer,
                    "{}",
                    crate::clock::Asctime(std::time::SystemTime::now())
                )?,
                Piece::Levelname => writer.write_str(&self.levelname)?,
                Piece::Levelno => write!(writer, "{}", self.levelno)?,
                Piece::Name => writer.write_str(&self.name)?,
                Piece::Message => {
                    writer.write_str(&self.message)?;
                    for (key, value) in &self.extra {
                        match value {
                            serde_json::Value::String(text) => write!(writer, " {key}={text}")?,
                            other => write!(writer, " {key}={other}")?,
                        }
                    }
                }
                Piece::Process => write!(writer, "{}", std::process::id())?,
                Piece::ThreadId => write!(writer, "{}", Self::thread_id())?,
                Piece::Thread => writer.write_str(&self.thread_name)?,
                Piece::Module => writer.write_str(&self.module)?,
            }
        }
        writeln!(writer)
    }

    fn write_json(self, writer: &mut Writer<'_>) -> std::fmt::Result {
        use serde_json::Value;
        let mut object = serde_json::Map::new();
        let time = crate::clock::Rfc3339(std::time::SystemTime::now());
        object.insert("time".into(), Value::String(time.to_string()));
        object.insert("levelname".into(), Value::String(self.levelname));
        object.insert("levelno".into(), self.levelno.into());
        object.insert("name".into(), Value::String(self.name));
        object.insert("process".into(), std::process::id().into());
        object.insert("thread".into(), Self::thread_id().into());
        object.insert("threadName".into(), Value::String(self.thread_name));
        object.insert("module".into(), Value::String(self.module));
        object.insert("message".into(), Value::String(self.message));
        for (key, value) in self.extra {
            object.entry(key).or_insert(value);
        }
        writeln!(writer, "{}", Value::Object(object))
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
        let mut record = Record::of(event, &self.process);
        if self.critical_only && record.levelno < 50 {
            return Ok(());
        }
        // An access-log line is its configured format and nothing else, and the app's own
        // `logging` records keep their fields: the spans' context is the server's.
        if !matches!(event.metadata().target(), ACCESS_TARGET | APP_RECORDS) {
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    if let Some(fields) = span.extensions().get::<SpanFields>() {
                        record.add_context(&fields.0);
                    }
                }
            }
        }
        match &self.pieces {
            Some(pieces) => record.write_text(pieces, &mut writer),
            None => record.write_json(&mut writer),
        }
    }
}

/// The target of access-log lines.
const ACCESS_TARGET: &str = "genro_asgi::access";

/// The target of the app's Python `logging` records (the worker's `log_record`).
const APP_RECORDS: &str = "genro_asgi::py";

/// A span's fields (`worker{slot}`, `conn{peer}`, `request{request_id}`), kept for the events
/// inside it: a text line shows them after the message as `key=value`, a JSON line as keys.
struct SpanFields(Vec<(&'static str, serde_json::Value)>);

/// Keeps every span's fields as [`SpanFields`] in the span's extensions.
struct KeepSpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for KeepSpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.extra));
        }
    }
}

/// The fmt layer's own copy of span fields, switched off: [`KeepSpanFields`] keeps them,
/// typed, and [`PyFormat`] writes them.
struct NoFields;

impl<'writer> FormatFields<'writer> for NoFields {
    fn format_fields<R: RecordFields>(&self, _: Writer<'writer>, _: R) -> std::fmt::Result {
        Ok(())
    }
}

/// An event's fields: the message, the Python record attributes that override ours, and
/// the others.
#[derive(Default)]
struct Fields {
    message: String,
    levelname: Option<String>,
    levelno: Option<u64>,
    logger: Option<String>,
    module: Option<String>,
    thread: Option<String>,
    extra: Vec<(&'static str, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        use serde_json::Value;
        let text = |value: Value| match value {
            Value::String(text) => text,
            other => other.to_string(),
        };
        match field.name() {
            "message" => self.message.push_str(&text(value)),
            "levelname" => self.levelname = Some(text(value)),
            "logger" => self.logger = Some(text(value)),
            "module" => self.module = Some(text(value)),
            "thread" => self.thread = Some(text(value)),
            "levelno" => self.levelno = value.as_u64(),
            name => self.extra.push((name, value)),
        }
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
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
