//! HTTP/1.x request targets and `Host` (RFC 9112 3.2, 3.3; RFC 9110 7.2): which
//! combinations of method, target form and `Host` fields a request may carry, and what the
//! app is told the host is.
//!
//! hyper parses the request line and the header fields; it does not check them against
//! each other. [`check`] does, before the request is admitted: a request it refuses gets
//! a 400 (405 for `CONNECT`) and never reaches the app. HTTP/2 requests carry
//! `:authority` and are left alone.

use http::header::HOST;
use http::{HeaderValue, Method, Request, StatusCode, Version};

/// Why a request's target or `Host` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTarget {
    /// HTTP/1.1 without a `Host` field (RFC 9112 3.2).
    MissingHost,
    /// More than one `Host` field line, in any HTTP/1.x version (RFC 9112 3.2).
    SeveralHosts,
    /// A `Host` (or an absolute-form authority) that is not `uri-host [ ":" port ]`:
    /// whitespace, userinfo, a bad port, a byte no host may hold (RFC 9110 7.2).
    InvalidHost,
    /// The asterisk form `*` with a method other than `OPTIONS` (RFC 9112 3.2.4).
    Asterisk,
    /// The authority form (`host:port`) with a method other than `CONNECT`
    /// (RFC 9112 3.2.3).
    AuthorityForm,
    /// `CONNECT` with a target that is not in authority form (RFC 9112 3.2.3).
    ConnectTarget,
    /// An absolute-form target whose scheme is not `http` or `https`.
    Scheme,
    /// A well-formed HTTP/1.1 `CONNECT`: this server does not open tunnels, and an ASGI
    /// app has no way to serve one.
    Connect,
}

impl BadTarget {
    /// The response body: one short line.
    pub fn text(self) -> &'static str {
        match self {
            BadTarget::MissingHost => "Missing Host header\n",
            BadTarget::SeveralHosts => "More than one Host header\n",
            BadTarget::InvalidHost => "Invalid Host header\n",
            BadTarget::Asterisk => "Request target * is only allowed for OPTIONS\n",
            BadTarget::AuthorityForm => {
                "Authority-form request target is only allowed for CONNECT\n"
            }
            BadTarget::ConnectTarget => "CONNECT needs an authority-form request target\n",
            BadTarget::Scheme => "Unsupported scheme in request target\n",
            BadTarget::Connect => "CONNECT is not supported\n",
        }
    }

    /// The status the request is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            BadTarget::Connect => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for BadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().trim_end())
    }
}

impl std::error::Error for BadTarget {}

/// Checks an HTTP/1.x request's target and `Host` fields. In absolute form
/// (`GET http://example.com/x HTTP/1.1`) the target's authority replaces any `Host` field
/// (RFC 9112 3.2.2: the server "MUST ignore the received Host header field"), so the app
/// sees that authority as its `host` header; the path and query are the target's.
pub fn check<B>(request: &mut Request<B>) -> Result<(), BadTarget> {
    let version = request.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return Ok(());
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadTarget::SeveralHosts);
    }
    let uri = request.uri();
    let connect = request.method() == Method::CONNECT;
    match (uri.scheme(), uri.authority()) {
        // Absolute form.
        (Some(scheme), Some(authority)) => {
            if connect {
                return Err(BadTarget::ConnectTarget);
            }
            let scheme = scheme.as_str();
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(BadTarget::Scheme);
            }
            // The request's own Host, if sent, must still be well-formed.
            if host.is_some_and(|h| !is_valid_host(h.as_bytes())) {
                return Err(BadTarget::InvalidHost);
            }
            let authority = authority.as_str();
            if authority.is_empty() || !is_valid_host(authority.as_bytes()) {
                return Err(BadTarget::InvalidHost);
            }
            let value = HeaderValue::from_str(authority).map_err(|_| BadTarget::InvalidHost)?;
            request.headers_mut().insert(HOST, value);
            return Ok(());
        }
        // Authority form.
        (None, Some(_)) => {
            if !connect {
                return Err(BadTarget::AuthorityForm);
            }
        }
        // Origin or asterisk form (or a scheme without authority, which http::Uri does
        // not produce).
        _ => {
            if connect {
                return Err(BadTarget::ConnectTarget);
            }
            if uri.path() == "*" && request.method() != Method::OPTIONS {
                return Err(BadTarget::Asterisk);
            }
        }
    }
    match host {
        None if version == Version::HTTP_11 => return Err(BadTarget::MissingHost),
        None => {}
        Some(host) if !is_valid_host(host.as_bytes()) => return Err(BadTarget::InvalidHost),
        Some(_) => {}
    }
    if connect {
        return Err(BadTarget::Connect);
    }
    Ok(())
}

/// Whether a request body read failed because the client framed the body wrongly (hyper's
/// chunked decoder: a bad chunk size or extension, a missing CRLF, a size that overflows,
/// bad trailers), rather than because the connection went away mid-body.
pub fn is_malformed_body(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = e.source();
    }
    false
}

/// Whether `value` is `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): an IP
/// literal in brackets, or a reg-name (which covers IPv4 addresses and may be empty),
/// then an optional port of at most 65535. No whitespace, no userinfo (`@`).
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if !is_ip_literal(literal) {
            return false;
        }
        match &value[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&value[..0], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(at) => (&value[..at], Some(&value[at + 1..])),
            None => (value, None),
        }
    };
    is_reg_name(host) && port.is_none_or(is_port)
}

/// The bytes a reg-name takes as they are (unreserved / sub-delims, RFC 3986): a table,
/// since every request's Host goes through here.
const REG_NAME: [bool; 256] = byte_table(b"-._~!$&'()*+,;=");

const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// `*( unreserved / pct-encoded / sub-delims )`.
fn is_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if REG_NAME[usize::from(b)] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// `*DIGIT`, as a number of at most 65535 (RFC 3986 allows an empty port).
fn is_port(port: &[u8]) -> bool {
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
}

/// The inside of `[...]`: an IPv6 address, or `IPvFuture` (`v` HEXDIG+ `.` chars+).
fn is_ip_literal(literal: &[u8]) -> bool {
    if let [b'v' | b'V', rest @ ..] = literal {
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b));
    }
    std::str::from_utf8(literal)
        .ok()
        .is_some_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, version: Version, hosts: &[&[u8]]) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for host in hosts {
            builder = builder.header(HOST, HeaderValue::from_bytes(host).unwrap());
        }
        builder.body(()).unwrap()
    }

    fn verdict(
        method: &str,
        target: &str,
        version: Version,
        hosts: &[&[u8]],
    ) -> Result<(), BadTarget> {
        check(&mut request(method, target, version, hosts))
    }

    #[test]
    fn hosts() {
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"127.0.0.1",
            b"127.0.0.1:65535",
            b"[::1]",
            b"[::1]:80",
            b"[v1.fe80::a+en1]",
            b"xn--bcher-kva.example",
            b"a%2Db",
            b"",
            b"a:",
            b"under_score.local",
        ] {
            assert!(is_valid_host(good), "{}", good.escape_ascii());
        }
        for bad in [
            &b"a b"[..],
            b" a",
            b"a\t",
            b"user@a",
            b"a:80:80",
            b"a:65536",
            b"a:123456",
            b"a:8o",
            b"a:-1",
            b"[::1",
            b"[::1]x",
            b"[zz]",
            b"::1",
            b"a%zz",
            b"a%2",
            b"a/b",
            b"a?b",
            b"a#b",
            b"\xc3\xa9.example",
            b"a\"b",
        ] {
            assert!(!is_valid_host(bad), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn host_fields() {
        use Version as V;
        assert_eq!(verdict("GET", "/", V::HTTP_11, &[b"a"]), Ok(()));
        assert_eq!(
            verdict("GET", "/", V::HTTP_11, &[]),
            Err(BadTarget::MissingHost)
        );
        assert_eq!(verdict("GET", "/", V::HTTP_10, &[]), Ok(()));
        assert_eq!(
            verdict("GET", "/", V::HTTP_11, &[b"a", b"a"]),
            Err(BadTarget::SeveralHosts)
        );
        assert_eq!(
            verdict("GET", "/", V::HTTP_10, &[b"a", b"b"]),
            Err(BadTarget::SeveralHosts)
        );
        assert_eq!(
            verdict("GET", "/", V::HTTP_10, &[b"u@a"]),
            Err(BadTarget::InvalidHost)
        );
        // HTTP/2 carries :authority; nothing is checked here.
        assert_eq!(verdict("GET", "/", V::HTTP_2, &[]), Ok(()));
    }

    #[test]
    fn target_forms() {
        use Version as V;
        assert_eq!(verdict("OPTIONS", "*", V::HTTP_11, &[b"a"]), Ok(()));
        assert_eq!(
            verdict("GET", "*", V::HTTP_11, &[b"a"]),
            Err(BadTarget::Asterisk)
        );
        assert_eq!(
            verdict("GET", "a:80", V::HTTP_11, &[b"a"]),
            Err(BadTarget::AuthorityForm)
        );
        assert_eq!(
            verdict("CONNECT", "a:443", V::HTTP_11, &[b"a:443"]),
            Err(BadTarget::Connect)
        );
        assert_eq!(
            verdict("CONNECT", "/", V::HTTP_11, &[b"a"]),
            Err(BadTarget::ConnectTarget)
        );
        assert_eq!(
            verdict("GET", "ftp://a/x", V::HTTP_11, &[]),
            Err(BadTarget::Scheme)
        );
        assert_eq!(BadTarget::Connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(BadTarget::Asterisk.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn absolute_form_authority_is_the_host() {
        let mut r = request(
            "GET",
            "http://example.com:8080/x?q=1",
            Version::HTTP_11,
            &[b"other"],
        );
        assert_eq!(check(&mut r), Ok(()));
        let hosts: Vec<_> = r.headers().get_all(HOST).iter().collect();
        assert_eq!(hosts, [&HeaderValue::from_static("example.com:8080")]);
        assert_eq!((r.uri().path(), r.uri().query()), ("/x", Some("q=1")));
        // No Host at all is fine in absolute form: the target names it.
        let mut r = request("GET", "https://example.com/", Version::HTTP_11, &[]);
        assert_eq!(check(&mut r), Ok(()));
        assert_eq!(r.headers()[HOST], "example.com");
        assert_eq!(
            verdict("GET", "http://u@example.com/", Version::HTTP_11, &[]),
            Err(BadTarget::InvalidHost)
        );
        assert_eq!(
            verdict("GET", "http://example.com/", Version::HTTP_11, &[b"a b"]),
            Err(BadTarget::InvalidHost)
        );
    }
}
