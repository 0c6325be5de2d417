//! The access-log line for `[logging] access_format`: a format parsed once at start-up
//! (`common`, `combined`, `json`, or a template of `{atom}`s) and applied to each finished
//! request's [`AccessRecord`].
//!
//! Text formats (everything but `json`) escape the values a client controls the way nginx
//! does (`escape=default`): `"`, `\`, and every byte outside printable ASCII (`0x00`–`0x1F`,
//! `0x7F`–`0xFF`) become `\xHH` (uppercase hex), so a client cannot end the line or fake a
//! field. An empty or absent text value is written as `-`, so fields never vanish.

use crate::clock::{Civil, Rfc3339};
use std::borrow::Cow;
use std::fmt::{self, Display, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, Version};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// The template atoms, as error messages list them.
const ATOMS: &str = "method, path, query, target, status, bytes, duration_ms, client, \
                     client_ip, protocol, request_id, time, header:NAME";

/// A parsed `[logging] access_format`: parse it once at start-up, then [`format`] one line
/// per request.
///
/// [`format`]: AccessFormat::format
#[derive(Debug)]
pub struct AccessFormat {
    layout: Layout,
    headers: Vec<HeaderName>,
}

#[derive(Debug)]
enum Layout {
    /// One JSON object; referer and user agent are headers 0 and 1.
    Json,
    /// A line with the escaping of text formats.
    Text(Text),
}

#[derive(Debug)]
enum Text {
    /// Apache Common Log Format.
    Common,
    /// Common plus the quoted referer and user agent (headers 0 and 1).
    Combined,
    /// A user template.
    Template(Vec<Piece>),
}

#[derive(Debug)]
enum Piece {
    Literal(String),
    Method,
    Path,
    Query,
    Target,
    Status,
    Bytes,
    DurationMs,
    Client,
    ClientIp,
    Protocol,
    RequestId,
    Time,
    /// Index into [`AccessFormat::headers`].
    Header(usize),
}

/// What the access log knows about one finished request.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// When the request started.
    pub time: SystemTime,
    /// The client's address.
    pub client: SocketAddr,
    /// The request method.
    pub method: &'a Method,
    /// The request path, as received.
    pub path: &'a str,
    /// The query string without `?`; may be empty.
    pub query: &'a str,
    /// `"http1"`, `"http2"`, `"http3"` or `"websocket"`.
    pub protocol: &'a str,
    /// The HTTP version, for the request line of `common`/`combined`.
    pub version: Version,
    /// The response status.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time from the start of the request to the end of the response.
    pub duration: Duration,
    /// The request id.
    pub request_id: &'a str,
    /// The request headers [`AccessFormat::headers`] names, in that order (`None`: absent).
    pub headers: &'a [Option<HeaderValue>],
}

impl AccessRecord<'_> {
    fn header(&self, index: usize) -> Option<&HeaderValue> {
        self.headers.get(index).and_then(Option::as_ref)
    }
}

impl AccessFormat {
    /// Parses `common`, `combined` or `json` (any case, surrounding spaces ignored), or else
    /// a template such as `{client_ip} "{method} {target}" {status} {header:x-trace}`.
    ///
    /// Template atoms: `{method}`, `{path}`, `{query}`, `{target}` (path, and `?query` if
    /// any), `{status}`, `{bytes}`, `{duration_ms}` (3 decimals), `{client}` (`ip:port`),
    /// `{client_ip}`, `{protocol}`, `{request_id}`, `{time}` (RFC 3339 UTC with
    /// milliseconds) and `{header:NAME}` (a request header, name case-insensitive); `{{`
    /// and `}}` are literal braces. The error names the problem (an unknown atom, an empty
    /// or invalid header name, an unbalanced brace, a template without any atom) and lists
    /// the atoms.
    pub fn parse(spec: &str) -> Result<AccessFormat, FormatError> {
        let keyword = spec.trim();
        let named = |layout| AccessFormat {
            layout,
            headers: vec![http::header::REFERER, http::header::USER_AGENT],
        };
        if keyword.eq_ignore_ascii_case("common") {
            return Ok(AccessFormat {
                layout: Layout::Text(Text::Common),
                headers: Vec::new(),
            });
        }
        if keyword.eq_ignore_ascii_case("combined") {
            return Ok(named(Layout::Text(Text::Combined)));
        }
        if keyword.eq_ignore_ascii_case("json") {
            return Ok(named(Layout::Json));
        }
        let mut headers = Vec::new();
        let pieces = parse_template(spec, &mut headers)?;
        if !pieces.iter().any(|p| !matches!(p, Piece::Literal(_))) {
            // Most likely a misspelt keyword; logging it verbatim on every line helps no one.
            return Err(FormatError::NoAtom(spec.to_owned()));
        }
        Ok(AccessFormat {
            layout: Layout::Text(Text::Template(pieces)),
            headers,
        })
    }

    /// Request headers the format needs, in the order [`AccessRecord::headers`] must give
    /// them (combined/json: referer then user-agent; templates: each `{header:NAME}` once).
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// The log line (without a newline) for one request.
    pub fn format(&self, record: &AccessRecord<'_>) -> String {
        match &self.layout {
            Layout::Json => json_line(record),
            Layout::Text(text) => {
                let mut out = String::with_capacity(192);
                // fmt::Write for String never fails.
                let _ = write_line(&mut out, text, record);
                out
            }
        }
    }
}

fn write_line(out: &mut String, text: &Text, r: &AccessRecord<'_>) -> fmt::Result {
    match text {
        Text::Common => write_common(out, r),
        Text::Combined => {
            write_common(out, r)?;
            out.push_str(" \"");
            write_text(out, r.header(0).map_or(&[][..], HeaderValue::as_bytes))?;
            out.push_str("\" \"");
            write_text(out, r.header(1).map_or(&[][..], HeaderValue::as_bytes))?;
            out.push('"');
            Ok(())
        }
        Text::Template(pieces) => {
            for piece in pieces {
                write_piece(out, piece, r)?;
            }
            Ok(())
        }
    }
}

/// Why an `access_format` does not parse. Each message ends with the atoms a template may
/// use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `{name}` is not an atom.
    #[error("unknown atom {{{0}}}{hint}", hint = Hint)]
    UnknownAtom(String),
    /// `{}`.
    #[error("empty atom {{}}{hint}", hint = Hint)]
    EmptyAtom,
    /// `{header:}`.
    #[error("empty header name in {{header:}}{hint}", hint = Hint)]
    EmptyHeader,
    /// `{header:NAME}` whose NAME is not a header name (the whole atom is kept).
    #[error("invalid header name in {{{0}}}{hint}", hint = Hint)]
    InvalidHeader(String),
    /// A `}` that closes nothing, at this byte.
    #[error("unmatched }} at byte {0}{hint}", hint = Hint)]
    UnmatchedClose(usize),
    /// A `{` never closed, at this byte.
    #[error("unclosed {{ at byte {0}{hint}", hint = Hint)]
    Unclosed(usize),
    /// Neither a keyword nor a template with an atom (most likely a misspelt keyword).
    #[error("{0:?} is not common, combined or json, and as a template it has no atom; expected one of {atoms}", atoms = ATOMS)]
    NoAtom(String),
}

/// The end of a template error's message: `; expected one of` the atoms, and how to
/// write a literal brace.
#[derive(Debug, Clone, Copy)]
struct Hint;

impl Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "; expected one of {ATOMS} ({{{{ and }}}} are literal braces)"
        )
    }
}

fn parse_template(spec: &str, headers: &mut Vec<HeaderName>) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = spec;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let tail = &rest[i..];
        let at = spec.len() - tail.len();
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(FormatError::UnmatchedClose(at));
        } else {
            let body = &tail[1..];
            let end = match body.find(['{', '}']) {
                Some(end) if body.as_bytes()[end] == b'}' => end,
                _ => return Err(FormatError::Unclosed(at)),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(parse_atom(&body[..end], headers)?);
            rest = &body[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

fn parse_atom(name: &str, headers: &mut Vec<HeaderName>) -> Result<Piece, FormatError> {
    Ok(match name {
        "method" => Piece::Method,
        "path" => Piece::Path,
        "query" => Piece::Query,
        "target" => Piece::Target,
        "status" => Piece::Status,
        "bytes" => Piece::Bytes,
        "duration_ms" => Piece::DurationMs,
        "client" => Piece::Client,
        "client_ip" => Piece::ClientIp,
        "protocol" => Piece::Protocol,
        "request_id" => Piece::RequestId,
        "time" => Piece::Time,
        "" => return Err(FormatError::EmptyAtom),
        _ => {
            let Some(header) = name.strip_prefix("header:") else {
                return Err(FormatError::UnknownAtom(name.to_owned()));
            };
            if header.is_empty() {
                return Err(FormatError::EmptyHeader);
            }
            // from_bytes lowercases, which makes the name case-insensitive.
            let header = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| FormatError::InvalidHeader(name.to_owned()))?;
            let index = match headers.iter().position(|h| *h == header) {
                Some(index) => index,
                None => {
                    headers.push(header);
                    headers.len() - 1
                }
            };
            Piece::Header(index)
        }
    })
}

fn write_piece(out: &mut String, piece: &Piece, r: &AccessRecord<'_>) -> fmt::Result {
    match piece {
        Piece::Literal(text) => out.push_str(text),
        Piece::Method => write_text(out, r.method.as_str().as_bytes())?,
        Piece::Path => write_text(out, r.path.as_bytes())?,
        Piece::Query => write_text(out, r.query.as_bytes())?,
        Piece::Target => write_target(out, r)?,
        Piece::Status => write!(out, "{}", r.status)?,
        Piece::Bytes => write!(out, "{}", r.bytes)?,
        Piece::DurationMs => write_millis(out, r.duration)?,
        Piece::Client => out.push_str(&crate::peer_text(r.client)),
        Piece::ClientIp => write_client_ip(out, r.client)?,
        Piece::Protocol => write_text(out, r.protocol.as_bytes())?,
        Piece::RequestId => write_text(out, r.request_id.as_bytes())?,
        Piece::Time => write!(out, "{}", Rfc3339(r.time))?,
        Piece::Header(index) => {
            write_text(out, r.header(*index).map_or(&[][..], HeaderValue::as_bytes))?
        }
    }
    Ok(())
}

/// The client's IP address, or `unix:` on the `[server] uds` socket (as nginx logs it).
fn write_client_ip(out: &mut String, client: SocketAddr) -> fmt::Result {
    if client == crate::UNIX_PEER {
        out.push_str("unix:");
        Ok(())
    } else {
        write!(out, "{}", client.ip())
    }
}

/// `%h - - [%d/%b/%Y:%H:%M:%S +0000] "%r" %>s %b`, with `-` for a zero `%b` as CLF does.
fn write_common(out: &mut String, r: &AccessRecord<'_>) -> fmt::Result {
    write_client_ip(out, r.client)?;
    write!(out, " - - [{}] \"", Clf(r.time))?;
    write_text(out, r.method.as_str().as_bytes())?;
    out.push(' ');
    write_target(out, r)?;
    write!(out, " {}\" {} ", version_name(r.version), r.status)?;
    if r.bytes == 0 {
        out.push('-');
    } else {
        write!(out, "{}", r.bytes)?;
    }
    Ok(())
}

fn write_target(out: &mut String, r: &AccessRecord<'_>) -> fmt::Result {
    write_text(out, r.path.as_bytes())?;
    if !r.query.is_empty() {
        out.push('?');
        write_text(out, r.query.as_bytes())?;
    }
    Ok(())
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

/// A client-controlled value in a text format: `-` when empty, else with `"`, `\` and
/// bytes outside printable ASCII as `\xHH` (nginx's `escape=default`).
fn write_text(out: &mut String, bytes: &[u8]) -> fmt::Result {
    if bytes.is_empty() {
        out.push('-');
        return Ok(());
    }
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| needs_escape(b)) {
        push_ascii(out, &rest[..i]);
        write!(out, "\\x{:02X}", rest[i])?;
        rest = &rest[i + 1..];
    }
    push_ascii(out, rest);
    Ok(())
}

fn needs_escape(b: u8) -> bool {
    !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\'
}

/// Appends bytes [`needs_escape`] has let through, which are all printable ASCII.
fn push_ascii(out: &mut String, bytes: &[u8]) {
    out.extend(bytes.iter().map(|&b| char::from(b)));
}

/// Milliseconds with 3 decimals, rounded to the microsecond.
fn write_millis(out: &mut String, duration: Duration) -> fmt::Result {
    let micros = micros(duration);
    write!(out, "{}.{:03}", micros / 1000, micros % 1000)
}

fn micros(duration: Duration) -> u128 {
    (duration.as_nanos() + 500) / 1000
}

fn json_line(r: &AccessRecord<'_>) -> String {
    let mut buf = Vec::with_capacity(256);
    // Writing to a Vec cannot fail, and every field serializes.
    let _ = serde_json::to_writer(&mut buf, &JsonLine(r));
    // serde_json writes UTF-8 only, so the buffer becomes the String as is.
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

struct JsonLine<'r, 'a>(&'r AccessRecord<'a>);

impl Serialize for JsonLine<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut line = serializer.serialize_struct("AccessLine", 12)?;
        line.serialize_field("time", &AsString(Rfc3339(r.time)))?;
        line.serialize_field("client", &crate::peer_text(r.client))?;
        line.serialize_field("method", r.method.as_str())?;
        line.serialize_field("path", r.path)?;
        line.serialize_field("query", r.query)?;
        line.serialize_field("protocol", r.protocol)?;
        line.serialize_field("status", &r.status)?;
        line.serialize_field("bytes", &r.bytes)?;
        // Whole microseconds over 1000: the shortest float text has at most 3 decimals.
        line.serialize_field("duration_ms", &(micros(r.duration) as f64 / 1000.0))?;
        line.serialize_field("request_id", r.request_id)?;
        line.serialize_field("user_agent", &JsonHeader(r.header(1)))?;
        line.serialize_field("referer", &JsonHeader(r.header(0)))?;
        line.end()
    }
}

/// A `Display` value serialized as a JSON string without an intermediate `String`.
struct AsString<T>(T);

impl<T: Display> Serialize for AsString<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A header as a JSON string (`null` when absent); bytes that are not UTF-8 become U+FFFD.
struct JsonHeader<'v>(Option<&'v HeaderValue>);

impl Serialize for JsonHeader<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => serializer.serialize_none(),
            Some(value) => {
                let text: Cow<'_, str> = String::from_utf8_lossy(value.as_bytes());
                serializer.serialize_str(&text)
            }
        }
    }
}

/// `10/Oct/2000:13:55:36 +0000`, CLF's `%d/%b/%Y:%H:%M:%S %z` in UTC.
struct Clf(SystemTime);

impl Display for Clf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let c = Civil::of(self.0);
        write!(
            f,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            c.day,
            MONTHS[c.month as usize - 1],
            c.year,
            c.hour,
            c.minute,
            c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};
    use std::time::UNIX_EPOCH;

    /// 2000-10-10T13:55:36.123Z, Apache's documentation example moved to UTC.
    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(971_186_136_123)
    }

    fn headers() -> Vec<Option<HeaderValue>> {
        vec![
            Some(HeaderValue::from_static("https://example.com/")),
            Some(HeaderValue::from_static("curl/8.5.0")),
        ]
    }

    fn record<'a>(headers: &'a [Option<HeaderValue>]) -> AccessRecord<'a> {
        AccessRecord {
            time: start(),
            client: "192.0.2.7:51234".parse().unwrap(),
            method: &Method::GET,
            path: "/items/3",
            query: "a=1&b=2",
            protocol: "http1",
            version: Version::HTTP_11,
            status: 200,
            bytes: 2326,
            duration: Duration::from_nanos(12_345_600),
            request_id: "req-1",
            headers,
        }
    }

    fn format(spec: &str, record: &AccessRecord<'_>) -> String {
        AccessFormat::parse(spec).unwrap().format(record)
    }

    const COMMON: &str =
        r#"192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] "GET /items/3?a=1&b=2 HTTP/1.1" 200 2326"#;

    #[test]
    fn common() {
        let headers = headers();
        assert_eq!(format("common", &record(&headers)), COMMON);
        assert!(AccessFormat::parse("common").unwrap().headers().is_empty());
    }

    #[test]
    fn common_zero_bytes_ipv6_http2_no_query() {
        let mut r = record(&[]);
        r.bytes = 0;
        r.client = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 8443);
        r.version = Version::HTTP_2;
        r.query = "";
        r.method = &Method::HEAD;
        assert_eq!(
            format(" COMMON ", &r),
            r#"::1 - - [10/Oct/2000:13:55:36 +0000] "HEAD /items/3 HTTP/2.0" 200 -"#
        );
        r.version = Version::HTTP_3;
        r.bytes = 7;
        assert!(format("common", &r).ends_with(r#" HTTP/3.0" 200 7"#));
        r.version = Version::HTTP_10;
        assert!(format("common", &r).ends_with(r#" HTTP/1.0" 200 7"#));
    }

    #[test]
    fn combined() {
        let headers = headers();
        let parsed = AccessFormat::parse("Combined").unwrap();
        assert_eq!(
            parsed.headers(),
            [http::header::REFERER, http::header::USER_AGENT]
        );
        assert_eq!(
            parsed.format(&record(&headers)),
            format!(r#"{COMMON} "https://example.com/" "curl/8.5.0""#)
        );
    }

    #[test]
    fn combined_missing_headers() {
        let none = [None, None];
        assert_eq!(
            format("combined", &record(&none)),
            format!(r#"{COMMON} "-" "-""#)
        );
        // A short slice reads as absent headers rather than panicking.
        assert_eq!(
            format("combined", &record(&[])),
            format!(r#"{COMMON} "-" "-""#)
        );
    }

    #[test]
    fn json() {
        let headers = headers();
        let parsed = AccessFormat::parse("JSON").unwrap();
        assert_eq!(
            parsed.headers(),
            [http::header::REFERER, http::header::USER_AGENT]
        );
        assert_eq!(
            parsed.format(&record(&headers)),
            concat!(
                r#"{"time":"2000-10-10T13:55:36.123Z","client":"192.0.2.7:51234","#,
                r#""method":"GET","path":"/items/3","query":"a=1&b=2","protocol":"http1","#,
                r#""status":200,"bytes":2326,"duration_ms":12.346,"request_id":"req-1","#,
                r#""user_agent":"curl/8.5.0","referer":"https://example.com/"}"#
            )
        );
    }

    #[test]
    fn json_missing_headers_are_null() {
        let mut r = record(&[]);
        r.query = "";
        r.bytes = 0;
        r.duration = Duration::from_millis(2);
        let line = format("json", &r);
        assert!(line.contains(r#""query":"","#), "{line}");
        assert!(line.contains(r#""bytes":0,"duration_ms":2.0,"#), "{line}");
        assert!(
            line.ends_with(r#""user_agent":null,"referer":null}"#),
            "{line}"
        );
    }

    #[test]
    fn json_escapes_header() {
        let headers = [
            None,
            Some(HeaderValue::from_bytes(b"a\"b\\c\td\xff").unwrap()),
        ];
        let mut r = record(&headers);
        r.request_id = "x\u{1}\ny";
        let line = format("json", &r);
        assert!(line.contains(r#""request_id":"x\u0001\ny""#), "{line}");
        let user_agent = concat!(r#""user_agent":"a\"b\\c\td"#, "\u{fffd}", r#"""#);
        assert!(line.contains(user_agent), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["user_agent"], "a\"b\\c\td\u{fffd}");
        assert_eq!(parsed["request_id"], "x\u{1}\ny");
    }

    #[test]
    fn template_every_atom() {
        let spec = "{method}|{path}|{query}|{target}|{status}|{bytes}|{duration_ms}|{client}|\
                    {client_ip}|{protocol}|{request_id}|{time}|{header:X-Trace}|{header:user-agent}|\
                    {header:x-trace}|{header:x-missing}";
        let parsed = AccessFormat::parse(spec).unwrap();
        assert_eq!(parsed.headers(), ["x-trace", "user-agent", "x-missing"]);
        let headers = [
            Some(HeaderValue::from_static("t-9")),
            Some(HeaderValue::from_static("curl/8.5.0")),
            None,
        ];
        assert_eq!(
            parsed.format(&record(&headers)),
            "GET|/items/3|a=1&b=2|/items/3?a=1&b=2|200|2326|12.346|192.0.2.7:51234|192.0.2.7|\
             http1|req-1|2000-10-10T13:55:36.123Z|t-9|curl/8.5.0|t-9|-"
        );
    }

    #[test]
    fn template_empty_values_and_literal_braces() {
        let mut r = record(&[]);
        r.query = "";
        r.request_id = "";
        r.duration = Duration::from_micros(1_234_567);
        r.bytes = 0;
        assert_eq!(
            format("{{{query}}} }}{{ {request_id} {bytes} {duration_ms}", &r),
            "{-} }{ - 0 1234.567"
        );
    }

    #[test]
    fn text_escaping() {
        // HeaderValue::from_bytes refuses 0x01 (and every control byte but tab), so the
        // header carries tab and a non-ASCII byte, and the request id the rest.
        assert!(HeaderValue::from_bytes(b"a\x01b").is_err());
        let headers = [
            Some(HeaderValue::from_bytes(b"Moz\"illa\\\t\xff\" \"fake").unwrap()),
            None,
        ];
        let mut r = record(&headers);
        r.request_id = "id\u{1}\r\n\"x\\é";
        assert_eq!(
            format("{header:referer} {request_id}", &r),
            r#"Moz\x22illa\x5C\x09\xFF\x22 \x22fake id\x01\x0D\x0A\x22x\x5C\xC3\xA9"#
        );
        assert_eq!(
            format("combined", &r),
            format!(r#"{COMMON} "Moz\x22illa\x5C\x09\xFF\x22 \x22fake" "-""#)
        );
    }

    #[test]
    fn request_line_escaping() {
        let mut r = record(&[]);
        r.path = "/a\"b";
        r.query = "q=\n";
        assert!(
            format("common", &r).contains(r#""GET /a\x22b?q=\x0A HTTP/1.1""#),
            "{}",
            format("common", &r)
        );
    }

    fn error(spec: &str) -> String {
        AccessFormat::parse(spec).unwrap_err().to_string()
    }

    const EXPECTED: &str = "; expected one of method, path, query, target, status, bytes, \
                            duration_ms, client, client_ip, protocol, request_id, time, \
                            header:NAME ({{ and }} are literal braces)";

    #[test]
    fn errors() {
        let cases = [
            ("{method} {foo}", "unknown atom {foo}"),
            ("{Method}", "unknown atom {Method}"),
            ("{}", "empty atom {}"),
            ("{header:}", "empty header name in {header:}"),
            ("{header:a b}", "invalid header name in {header:a b}"),
            ("{method", "unclosed { at byte 0"),
            ("{status} {me{thod}", "unclosed { at byte 9"),
            ("{status} }", "unmatched } at byte 9"),
            ("{status}}", "unmatched } at byte 8"),
        ];
        for (spec, what) in cases {
            assert_eq!(error(spec), format!("{what}{EXPECTED}"), "spec {spec:?}");
        }
    }

    #[test]
    fn template_without_atom_is_an_error() {
        assert_eq!(
            error("comon"),
            "\"comon\" is not common, combined or json, and as a template it has no atom; \
             expected one of method, path, query, target, status, bytes, duration_ms, client, \
             client_ip, protocol, request_id, time, header:NAME"
        );
        assert!(error("").contains("has no atom"));
        assert!(error("{{}}").contains("has no atom"));
    }

    #[test]
    fn calendar() {
        let at = |secs: u64, millis: u64| {
            Rfc3339(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_735_689_599, 999), "2024-12-31T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(
            Clf(UNIX_EPOCH + Duration::from_secs(1_709_164_800)).to_string(),
            "29/Feb/2024:00:00:00 +0000"
        );
        // Before the epoch: clamped.
        assert_eq!(
            Rfc3339(UNIX_EPOCH - Duration::from_secs(5)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
