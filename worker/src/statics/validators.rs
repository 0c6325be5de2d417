//! Validators and conditional requests (RFC 9110 8.8, 13): a file's strong `ETag` (from
//! its modification time and size, and the coding of the representation sent, so a
//! `.br` sibling never shares a tag with the file), its `Last-Modified`, and what the
//! request's preconditions make of them, evaluated in the RFC's order (13.2.2).

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A representation's validators.
#[derive(Debug, Clone)]
pub(crate) struct Validators {
    /// The strong entity tag, quotes included.
    pub(crate) etag: HeaderValue,
    /// The modification time in whole seconds (HTTP dates have no finer grain).
    modified: SystemTime,
}

/// What the preconditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer the request.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

impl Validators {
    /// The validators of a file of `len` bytes modified at `mtime` (seconds, nanoseconds),
    /// sent with `coding` (`None`: as it is).
    pub(crate) fn new(len: u64, mtime: (i64, i64), coding: Option<&str>) -> Self {
        let (secs, nanos) = (
            u64::try_from(mtime.0).unwrap_or(0),
            mtime.1.clamp(0, 999_999_999),
        );
        let tag = match coding {
            Some(coding) => format!("\"{secs:x}.{nanos:x}-{len:x}-{coding}\""),
            None => format!("\"{secs:x}.{nanos:x}-{len:x}\""),
        };
        Validators {
            etag: HeaderValue::from_str(&tag).expect("hex digits, dots and a coding name"),
            modified: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    /// `Last-Modified`.
    pub(crate) fn last_modified(&self) -> HeaderValue {
        HeaderValue::from_str(&httpdate::fmt_http_date(self.modified))
            .expect("an HTTP date is a valid header value")
    }

    /// The preconditions of a GET or HEAD (RFC 9110 13.2.2, steps 1-4).
    pub(crate) fn evaluate(&self, headers: &HeaderMap) -> Verdict {
        let etag = self.etag.as_bytes();
        if let Some(list) = joined(headers, IF_MATCH) {
            if !matches(&list, |tag, weak| !weak && tag == etag) {
                return Verdict::Failed;
            }
        } else if let Some(date) = date(headers, IF_UNMODIFIED_SINCE) {
            if self.modified > date {
                return Verdict::Failed;
            }
        }
        if let Some(list) = joined(headers, IF_NONE_MATCH) {
            // Weak comparison (13.1.2): the tags' opaque parts are compared.
            if matches(&list, |tag, _| tag == etag) {
                return Verdict::NotModified;
            }
        } else if let Some(date) = date(headers, IF_MODIFIED_SINCE) {
            if self.modified <= date {
                return Verdict::NotModified;
            }
        }
        Verdict::Proceed
    }

    /// Whether `If-Range` (absent, or naming this representation) lets a `Range` apply
    /// (RFC 9110 13.1.5): an entity tag compared strongly, or a date equal to
    /// `Last-Modified`. Anything else sends the whole file.
    pub(crate) fn range_applies(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(IF_RANGE).iter();
        let Some(value) = values.next() else {
            return true;
        };
        if values.next().is_some() {
            return false;
        }
        let value = value.as_bytes().trim_ascii();
        if value.starts_with(b"\"") || value.starts_with(b"W/") {
            return value == self.etag.as_bytes();
        }
        std::str::from_utf8(value)
            .ok()
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .is_some_and(|date| date == self.modified)
    }
}

/// Every field line of `name`, joined as one list; `None` when there is none.
fn joined(headers: &HeaderMap, name: http::header::HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut list = first.as_bytes().to_vec();
    for value in values {
        list.push(b',');
        list.extend_from_slice(value.as_bytes());
    }
    Some(list)
}

/// Whether `*` or an entity tag of `list` is accepted by `accept(tag with quotes, weak)`.
/// A malformed list matches nothing past the error.
fn matches(list: &[u8], accept: impl Fn(&[u8], bool) -> bool) -> bool {
    if list.trim_ascii() == b"*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_ascii_start();
        while let [b',', tail @ ..] = rest {
            rest = tail.trim_ascii_start();
        }
        if rest.is_empty() {
            return false;
        }
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        if rest.first() != Some(&b'"') {
            return false;
        }
        let Some(close) = rest[1..].iter().position(|b| *b == b'"') else {
            return false;
        };
        let (tag, tail) = rest.split_at(close + 2);
        if accept(tag, weak) {
            return true;
        }
        rest = tail;
    }
}

/// The date in the only field line of `name`, if it is a valid HTTP date (RFC 9110
/// 13.1.3/13.1.4: an invalid or repeated one is ignored).
fn date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<SystemTime> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTIME: (i64, i64) = (1_700_000_000, 123_456_789);
    const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn tags_differ_by_coding_size_and_time() {
        let plain = Validators::new(1024, MTIME, None);
        assert_eq!(plain.etag, "\"6553f100.75bcd15-400\"");
        assert_eq!(plain.last_modified(), LAST_MODIFIED);
        let br = Validators::new(1024, MTIME, Some("br"));
        assert_eq!(br.etag, "\"6553f100.75bcd15-400-br\"");
        assert_ne!(Validators::new(1025, MTIME, None).etag, plain.etag);
        assert_ne!(Validators::new(1024, (MTIME.0, 1), None).etag, plain.etag);
    }

    #[test]
    fn preconditions_in_the_rfc_order() {
        use Verdict::*;
        let v = Validators::new(1024, MTIME, None);
        let tag = "\"6553f100.75bcd15-400\"";
        let weak = "W/\"6553f100.75bcd15-400\"";
        let earlier = "Tue, 14 Nov 2023 22:13:19 GMT";
        let later = "Tue, 14 Nov 2023 22:13:21 GMT";
        let cases: &[(&[(&'static str, &str)], Verdict)] = &[
            (&[], Proceed),
            (&[("if-none-match", tag)], NotModified),
            (&[("if-none-match", weak)], NotModified),
            (
                &[("if-none-match", "\"other\", W/\"6553f100.75bcd15-400\"")],
                NotModified,
            ),
            (
                &[("if-none-match", "\"other\""), ("if-none-match", tag)],
                NotModified,
            ),
            (&[("if-none-match", "*")], NotModified),
            (&[("if-none-match", "\"other\"")], Proceed),
            (&[("if-none-match", "garbage, ")], Proceed),
            (&[("if-none-match", "\"unterminated")], Proceed),
            (&[("if-modified-since", LAST_MODIFIED)], NotModified),
            (&[("if-modified-since", later)], NotModified),
            (&[("if-modified-since", earlier)], Proceed),
            (&[("if-modified-since", "yesterday")], Proceed),
            // If-None-Match wins over If-Modified-Since (13.1.3).
            (
                &[("if-none-match", "\"other\""), ("if-modified-since", later)],
                Proceed,
            ),
            (&[("if-match", tag)], Proceed),
            (&[("if-match", "*")], Proceed),
            (&[("if-match", weak)], Failed),
            (&[("if-match", "\"other\"")], Failed),
            (&[("if-match", "\"a\", \"6553f100.75bcd15-400\"")], Proceed),
            (&[("if-unmodified-since", earlier)], Failed),
            (&[("if-unmodified-since", LAST_MODIFIED)], Proceed),
            (&[("if-unmodified-since", "not a date")], Proceed),
            // If-Match wins over If-Unmodified-Since (13.1.4).
            (
                &[("if-match", tag), ("if-unmodified-since", earlier)],
                Proceed,
            ),
            // A failed If-Match is 412 even when If-None-Match would say 304.
            (&[("if-match", "\"other\""), ("if-none-match", tag)], Failed),
            (&[("if-match", tag), ("if-none-match", tag)], NotModified),
        ];
        for (fields, want) in cases {
            assert_eq!(v.evaluate(&headers(fields)), *want, "{fields:?}");
        }
    }

    #[test]
    fn if_range() {
        let v = Validators::new(1024, MTIME, None);
        let cases: &[(&[(&'static str, &str)], bool)] = &[
            (&[], true),
            (&[("if-range", "\"6553f100.75bcd15-400\"")], true),
            (&[("if-range", "W/\"6553f100.75bcd15-400\"")], false),
            (&[("if-range", "\"other\"")], false),
            (&[("if-range", LAST_MODIFIED)], true),
            (&[("if-range", "Tue, 14 Nov 2023 22:13:21 GMT")], false),
            (&[("if-range", "nonsense")], false),
            (
                &[("if-range", LAST_MODIFIED), ("if-range", LAST_MODIFIED)],
                false,
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(v.range_applies(&headers(fields)), *want, "{fields:?}");
        }
    }
}
