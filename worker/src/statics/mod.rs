//! Static files (`[static]`, issue 20): paths under a mount are answered by the worker
//! from a directory, without entering Python. The service asks [`Statics::answer`]
//! before it hands a request to the app; `None` means "not ours, the app's".
//!
//! 1. The path is matched against the mounts, longest prefix first, and its name checked
//!    (`path.rs`); methods other than GET and HEAD go on to the app (405 on an exclusive
//!    mount).
//! 2. The file is opened below the mount's directory (`open.rs`), and with
//!    `precompressed` its `.br` and `.gz` siblings; `Accept-Encoding` picks one
//!    (`negotiate.rs`). A miss goes on to the app (404 on an exclusive mount).
//! 3. The preconditions are evaluated against the chosen representation's validators
//!    (`validators.rs`): 304 or 412.
//! 4. A GET's `Range` (with `If-Range`) picks the parts (`range.rs`): 206, multipart for
//!    several, or 416.
//! 5. The body (`body.rs`): read at once, `sendfile(2)`, or streamed under the budgets.

mod body;
mod mime;
mod negotiate;
mod open;
mod path;
mod range;
mod validators;

pub(crate) use body::Sink;

use crate::body::ResponseBody;
use crate::budget::LogEvery;
use crate::metrics::ErrorKind;
use crate::state::Shared;
use body::Piece;
use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, LAST_MODIFIED, RANGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use negotiate::{Accepted, Coding};
use open::{Miss, Opened, Root};
use range::Ranges;
use std::time::Duration;
use validators::{Validators, Verdict};

/// The configured mounts, their directories open.
#[derive(Debug)]
pub(crate) struct Statics {
    /// Longest prefix first, so nested mounts win over their parents.
    mounts: Vec<Mount>,
    /// The mounts' prefixes as segments, in the same order.
    prefixes: Vec<path::Prefix>,
    /// `[static] precompressed`.
    precompressed: bool,
}

#[derive(Debug)]
struct Mount {
    root: Root,
    exclusive: bool,
    /// From `max_age` and `immutable`.
    cache_control: Option<HeaderValue>,
}

/// Why the mounts cannot be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StaticsError {
    /// An entry of the section is malformed (the supervisor checked it: not expected).
    #[error(transparent)]
    Config(#[from] genro_config::statics::StaticError),
    /// A mount's directory cannot be opened.
    #[error("[static] mounts: cannot open the directory {dir} of {prefix}: {source}")]
    Open {
        /// The mount's prefix.
        prefix: String,
        /// Its directory.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Statics {
    /// Opens the directories of `config`'s mounts; `None` when there are none.
    pub(crate) fn open(config: &genro_config::Config) -> Result<Option<Statics>, StaticsError> {
        let mut mounts = config.statics.mounts(&config.application.app_dir)?;
        if mounts.is_empty() {
            return Ok(None);
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(path::prefix_segments(&m.prefix).len()));
        let mut opened = Vec::with_capacity(mounts.len());
        for mount in &mounts {
            let root = Root::open(&mount.dir, mount.follow_symlinks).map_err(|source| {
                StaticsError::Open {
                    prefix: mount.prefix.clone(),
                    dir: mount.dir.display().to_string(),
                    source,
                }
            })?;
            opened.push(Mount {
                root,
                exclusive: mount.exclusive,
                cache_control: mount
                    .max_age
                    .map(|secs| cache_control(secs, mount.immutable)),
            });
        }
        Ok(Some(Statics {
            prefixes: mounts
                .iter()
                .map(|m| path::prefix_segments(&m.prefix))
                .collect(),
            mounts: opened,
            precompressed: config.statics.precompressed,
        }))
    }

    /// The answer to `request` when it is a static file's (or a miss on an exclusive
    /// mount); `None` when the app answers it. `sink` is asked for only when a body
    /// needs it.
    pub(crate) fn answer<B>(
        &self,
        request: &Request<B>,
        shared: &Shared,
        sink: impl FnOnce() -> Sink,
    ) -> Option<Response<ResponseBody>> {
        let (index, name) = match path::lookup(&self.prefixes, request.uri().path()) {
            path::Lookup::Outside => return None,
            path::Lookup::Refused(index) => (index, None),
            path::Lookup::File(index, name) => (index, Some(name)),
        };
        let mount = &self.mounts[index];
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return mount.exclusive.then(|| {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
                (response.headers_mut()).insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                response
            });
        }
        let miss = || {
            mount
                .exclusive
                .then(|| plain(StatusCode::NOT_FOUND, "Not Found\n"))
        };
        let Some(name) = name else {
            return miss();
        };
        let file = match mount.root.open_file(&name) {
            Ok(file) => file,
            Err(Miss::Absent) => return miss(),
            Err(Miss::Failed(err)) => return Some(failed(shared, &err)),
        };
        let content_type = mime::content_type(&name);
        let siblings =
            self.precompressed && !is_encoded(&name) && mime::compressible(&content_type);
        let (coding, file, vary) = if siblings {
            match self.negotiate(mount, &name, request.headers(), file) {
                Ok(chosen) => chosen,
                Err(err) => return Some(failed(shared, &err)),
            }
        } else {
            (Coding::Identity, file, false)
        };
        let request = Asked {
            headers: request.headers(),
            head: method == Method::HEAD,
        };
        Some(
            respond(&request, mount, content_type, coding, file, vary, sink)
                .unwrap_or_else(|err| failed(shared, &err)),
        )
    }

    /// The representation to send of `file`: itself, or a sibling `Accept-Encoding`
    /// prefers; and whether a sibling exists (then the response varies by that header).
    fn negotiate(
        &self,
        mount: &Mount,
        name: &[u8],
        headers: &HeaderMap,
        file: Opened,
    ) -> std::io::Result<(Coding, Opened, bool)> {
        let accepted = Accepted::of(headers);
        let mut siblings = [(Coding::Br, None), (Coding::Gzip, None)];
        let mut vary = false;
        for (coding, found) in &mut siblings {
            let mut sibling = name.to_vec();
            sibling.extend_from_slice(coding.suffix());
            match mount.root.open_file(&sibling) {
                Ok(opened) => {
                    vary = true;
                    // A sibling the client does not take is only looked at (for Vary).
                    if accepted.takes(*coding) {
                        *found = Some(opened);
                    }
                }
                Err(Miss::Absent) => {}
                Err(Miss::Failed(err)) => return Err(err),
            }
        }
        let [(_, br), (_, gzip)] = siblings;
        Ok(match accepted.choose(br.is_some(), gzip.is_some()) {
            Coding::Br => (Coding::Br, br.unwrap_or(file), vary),
            Coding::Gzip => (Coding::Gzip, gzip.unwrap_or(file), vary),
            Coding::Identity => (Coding::Identity, file, vary),
        })
    }
}

/// What of the request the response depends on.
struct Asked<'a> {
    headers: &'a HeaderMap,
    head: bool,
}

/// The response for the chosen representation `file` of a file of `content_type`.
fn respond(
    request: &Asked<'_>,
    mount: &Mount,
    content_type: HeaderValue,
    coding: Coding,
    file: Opened,
    vary: bool,
    sink: impl FnOnce() -> Sink,
) -> std::io::Result<Response<ResponseBody>> {
    let len = file.len;
    let validators = Validators::new(len, file.mtime, coding.name());
    // The fields a 304 repeats (RFC 9110 15.4.5), and every other answer carries.
    let mut headers = HeaderMap::new();
    headers.insert(ETAG, validators.etag.clone());
    headers.insert(LAST_MODIFIED, validators.last_modified());
    if let Some(cache_control) = &mount.cache_control {
        headers.insert(CACHE_CONTROL, cache_control.clone());
    }
    if vary {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    match validators.evaluate(request.headers) {
        Verdict::Proceed => {}
        Verdict::NotModified => {
            return Ok(with(
                StatusCode::NOT_MODIFIED,
                headers,
                ResponseBody::full(Bytes::new()),
            ));
        }
        Verdict::Failed => {
            // Not the mount's Cache-Control: a shared cache must not keep an error a
            // client provoked under the file's URL (RFC 9111 3).
            headers.remove(CACHE_CONTROL);
            let mut response = plain(StatusCode::PRECONDITION_FAILED, "Precondition Failed\n");
            response.headers_mut().extend(headers);
            return Ok(response);
        }
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(coding) = coding.name() {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    // Range applies to GET only (RFC 9110 14.2); several Range fields are not one range.
    // Not to a precompressed body either: a decoding client cannot use byte ranges of the
    // encoded bytes (and would try to decode a multipart envelope), so it gets it whole.
    let mut ranges = request.headers.get_all(RANGE).iter();
    let ranges = match (ranges.next(), ranges.next()) {
        (Some(value), None)
            if !request.head
                && coding.name().is_none()
                && validators.range_applies(request.headers) =>
        {
            range::parse(value.as_bytes(), len)
        }
        _ => Ranges::Whole,
    };
    match ranges {
        Ranges::Whole => {
            headers.insert(CONTENT_TYPE, content_type);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            let body = if request.head {
                ResponseBody::full(Bytes::new())
            } else {
                sink().single(file.file, 0..len)?
            };
            Ok(with(StatusCode::OK, headers, body))
        }
        Ranges::Unsatisfiable => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "Range Not Satisfiable\n");
            let fields = response.headers_mut();
            for name in [ETAG, LAST_MODIFIED, VARY] {
                if let Some(value) = headers.remove(&name) {
                    fields.insert(name, value);
                }
            }
            fields.insert(CONTENT_RANGE, header(format!("bytes */{len}")));
            Ok(response)
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let part = parts[0].clone();
            headers.insert(CONTENT_TYPE, content_type);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
            headers.insert(
                CONTENT_RANGE,
                header(format!("bytes {}-{}/{len}", part.start, part.end - 1)),
            );
            let body = sink().single(file.file, part)?;
            Ok(with(StatusCode::PARTIAL_CONTENT, headers, body))
        }
        Ranges::Parts(parts) => {
            let sink = sink();
            // Not guessable: a file's own bytes cannot end its part early.
            let boundary = format!("genro-{:016x}{:016x}", rand_u64(), rand_u64());
            let mut pieces = Vec::with_capacity(2 * parts.len() + 1);
            let mut total = 0;
            for part in parts {
                // RFC 9110 14.6: each part has its Content-Type and Content-Range.
                let head = format!(
                    "\r\n--{boundary}\r\ncontent-type: {}\r\ncontent-range: bytes {}-{}/{len}\r\n\r\n",
                    content_type.to_str().unwrap_or("application/octet-stream"),
                    part.start,
                    part.end - 1
                );
                total += head.len() as u64 + (part.end - part.start);
                pieces.push(Piece::Bytes(Bytes::from(head)));
                pieces.push(Piece::File(part));
            }
            let tail = format!("\r\n--{boundary}--\r\n");
            total += tail.len() as u64;
            pieces.push(Piece::Bytes(Bytes::from(tail)));
            headers.insert(
                CONTENT_TYPE,
                header(format!("multipart/byteranges; boundary={boundary}")),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from(total));
            let body = sink.streamed(file.file, pieces);
            Ok(with(StatusCode::PARTIAL_CONTENT, headers, body))
        }
    }
}

/// 64 random bits from the kernel (the multipart boundary).
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 8 {
        // Cannot fail for 8 bytes once the pool is initialised; a clock is enough then.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(bytes)
}

/// Whether `name` is itself a precompressed file (served as it is, no siblings).
fn is_encoded(name: &[u8]) -> bool {
    name.ends_with(b".br") || name.ends_with(b".gz")
}

/// `Cache-Control` for a mount's `max_age` and `immutable`.
fn cache_control(secs: u64, immutable: bool) -> HeaderValue {
    header(match (secs, immutable) {
        (0, _) => "no-cache".to_string(),
        (secs, false) => format!("public, max-age={secs}"),
        (secs, true) => format!("public, max-age={secs}, immutable"),
    })
}

/// A header value from text made here (digits, ASCII words).
fn header(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("visible ASCII")
}

fn with(status: StatusCode, headers: HeaderMap, body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    with(
        status,
        headers,
        ResponseBody::full(Bytes::from_static(text.as_bytes())),
    )
}

/// A file that could not be opened or read for a reason other than its absence: 500,
/// counted as an internal error, logged at most every 10 s.
fn failed(shared: &Shared, err: &std::io::Error) -> Response<ResponseBody> {
    static FAILED_LOG_EVERY: LogEvery = LogEvery::new(Duration::from_secs(10));
    shared.error(ErrorKind::Internal);
    if FAILED_LOG_EVERY.due() {
        tracing::warn!(
            "static file: {err}; answered 500 (logged at most every {}s)",
            FAILED_LOG_EVERY.secs()
        );
    }
    plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_values() {
        assert_eq!(cache_control(0, false), "no-cache");
        assert_eq!(cache_control(0, true), "no-cache");
        assert_eq!(cache_control(60, false), "public, max-age=60");
        assert_eq!(
            cache_control(31536000, true),
            "public, max-age=31536000, immutable"
        );
    }
}
