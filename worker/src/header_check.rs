//! The worker's own header handling checked on arbitrary bytes, by panicking: request
//! targets and `Host` ([`crate::target`]), forwarding headers ([`crate::forwarded`]) and
//! the access-log line ([`genro_shared::access`]). One checker for the `cargo fuzz` target
//! in `worker/fuzz/` and the stable test `worker/tests/header_fuzz.rs`, fed by the request
//! corpus `tests/corpus/*.http`, so CI (no nightly toolchain) checks the same properties.

use crate::forwarded::{origin, Origin};
use crate::target::{check, is_valid_host};
use genro_config::net::Trusted;
use genro_shared::access::{AccessFormat, AccessRecord};
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Most header fields parsed from one input (hyper's default is 100).
const MAX_HEADERS: usize = 128;

/// Parses `data` as an HTTP/1.x request head the way hyper does (httparse, then
/// `http::Uri`, `HeaderName`, `HeaderValue`), and panics if one of these breaks:
///
/// 1. nothing panics, whatever the bytes;
/// 2. [`check`] accepting an HTTP/1.1 request leaves exactly one `Host` field, which
///    [`is_valid_host`] accepts; in absolute form it is the target's authority;
/// 3. [`check`] is idempotent: a request it accepted is accepted again, unchanged;
/// 4. every host [`is_valid_host`] accepts is a valid header value without whitespace,
///    `@`, `/`, `?` or `#`;
/// 5. [`origin`] is deterministic, ignores requests without forwarding headers, and never
///    names a client when every hop is unparsable;
/// 6. the text access-log formats write one line of printable ASCII whatever the request
///    holds, and `json` writes one line of valid JSON whose `path` and `method` are the
///    request's.
///
/// Inputs that are not a complete, parsable request head still go through (4) on their
/// first line and (6) with the raw first line as path.
pub fn exercise(data: &[u8]) {
    let first_line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    check_host_syntax(first_line);
    let lossy = String::from_utf8_lossy(first_line);
    check_access_log(&Method::GET, &lossy, "", &HeaderMap::new());
    let Some(mut request) = parse(data) else {
        return;
    };
    for host in request.headers().get_all(HOST) {
        check_host_syntax(host.as_bytes());
    }
    check_forwarded(request.headers());
    let before = request.headers().clone();
    match check(&mut request) {
        Ok(()) => {
            if request.version() == Version::HTTP_11 {
                let hosts: Vec<_> = request.headers().get_all(HOST).iter().collect();
                assert_eq!(hosts.len(), 1, "accepted HTTP/1.1 without exactly one Host");
                assert!(
                    is_valid_host(hosts[0].as_bytes()),
                    "accepted an invalid Host"
                );
                if let (Some(_), Some(authority)) =
                    (request.uri().scheme(), request.uri().authority())
                {
                    assert_eq!(hosts[0].as_bytes(), authority.as_str().as_bytes());
                }
            }
            let after = request.headers().clone();
            assert_eq!(check(&mut request), Ok(()), "check is not idempotent");
            assert_eq!(
                request.headers(),
                &after,
                "second check changed the headers"
            );
        }
        Err(bad) => {
            assert_eq!(request.headers(), &before, "a refused request was changed");
            assert!(!bad.text().is_empty() && bad.text().ends_with('\n'));
        }
    }
    let uri = request.uri().clone();
    check_access_log(
        request.method(),
        uri.path(),
        uri.query().unwrap_or(""),
        request.headers(),
    );
}

/// A request head as hyper would build it, or `None` if hyper would refuse it.
fn parse(data: &[u8]) -> Option<Request<()>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(_) = head.parse(data).ok()? else {
        return None;
    };
    let method = Method::from_bytes(head.method?.as_bytes()).ok()?;
    let uri: Uri = head.path?.parse().ok()?;
    let version = match head.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?;
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request)
}

fn check_host_syntax(value: &[u8]) {
    if is_valid_host(value) {
        assert!(HeaderValue::from_bytes(value).is_ok());
        assert!(
            !value
                .iter()
                .any(|b| b.is_ascii_whitespace() || b"@/?#".contains(b)),
            "accepted host {}",
            value.escape_ascii()
        );
    }
}

fn check_forwarded(headers: &HeaderMap) {
    let lists: [&[&str]; 3] = [
        &["*"],
        &["127.0.0.1", "10.0.0.0/8"],
        &["::1", "192.0.2.0/24"],
    ];
    let has_forwarding = ["forwarded", "x-forwarded-for", "x-forwarded-proto"]
        .iter()
        .any(|name| headers.contains_key(*name));
    for list in lists {
        let trusted = Trusted::parse(list).expect("valid trusted list");
        let first = origin(headers, &trusted);
        assert_eq!(
            first,
            origin(headers, &trusted),
            "origin is not deterministic"
        );
        if !has_forwarding {
            assert_eq!(
                first,
                Origin::default(),
                "origin without forwarding headers"
            );
        }
        if let Some(client) = first.client {
            // The client was written in a forwarding header.
            let named = headers.iter().any(|(_, v)| {
                v.as_bytes()
                    .split(|b| b",;=\" \t[]".contains(b))
                    .filter_map(|piece| std::str::from_utf8(piece).ok())
                    .any(|piece| {
                        piece.parse::<std::net::IpAddr>().ok() == Some(client.ip())
                            || piece.parse::<SocketAddr>().ok() == Some(client)
                    })
            });
            assert!(named, "client {client} is in no forwarding header");
        }
    }
}

fn check_access_log(method: &Method, path: &str, query: &str, headers: &HeaderMap) {
    let specs = [
        "common",
        "combined",
        "json",
        "{method} {target} {header:host} {header:x-forwarded-for} {query} {{}}",
    ];
    for spec in specs {
        let format = AccessFormat::parse(spec).expect("valid access format");
        let values: Vec<Option<HeaderValue>> = format
            .headers()
            .iter()
            .map(|name| headers.get(name).cloned())
            .collect();
        let client: SocketAddr = "[2001:db8::1]:4711".parse().expect("valid address");
        let line = format.format(&AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            client,
            method,
            path,
            query,
            protocol: "http1",
            version: Version::HTTP_11,
            status: 400,
            bytes: 12,
            duration: Duration::from_micros(1500),
            request_id: "0123456789abcdef",
            headers: &values,
        });
        if spec == "json" {
            assert!(!line.contains('\n'), "json line with a newline");
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {e}: {line}"));
            assert_eq!(value["path"], path);
            assert_eq!(value["method"], method.as_str());
        } else {
            assert!(
                line.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{spec}: unescaped byte in {line:?}"
            );
        }
    }
}
