//! `[server] proxy_headers`: the original client and scheme behind trusted proxies, from
//! `Forwarded` (RFC 7239) or `X-Forwarded-For` / `X-Forwarded-Proto`.
//!
//! Only a request whose peer is in `forwarded_allow_ips` is looked at. Its forwarding list
//! is read from the right (the hop nearest to this server) and the first address that is
//! not a trusted proxy is the client; if every address is trusted, the leftmost is (with
//! `*`, the leftmost too, as uvicorn does). `Forwarded` wins over the `X-Forwarded-*` pair
//! when both are present. A `for` that is not an IP address (`unknown`, an obfuscated
//! `_name`) leaves the peer as the client.

use genro_config::net::Trusted;
use http::header::{HeaderName, FORWARDED};
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// What the forwarding headers say about the original request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The original client, when named by an IP address.
    pub client: Option<SocketAddr>,
    /// The scheme the client used: `https`/`wss` (true) or `http`/`ws` (false).
    pub https: Option<bool>,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Reads the forwarding headers of a request from a trusted peer.
pub fn origin(headers: &HeaderMap, trusted: &Trusted) -> Origin {
    // Most requests carry none (every request from a trusted peer comes through here).
    if !headers.contains_key(&FORWARDED)
        && !headers.contains_key(&X_FORWARDED_FOR)
        && !headers.contains_key(&X_FORWARDED_PROTO)
    {
        return Origin::default();
    }
    let forwarded = joined(headers, &FORWARDED);
    if !forwarded.is_empty() {
        let elements: Vec<(Option<&str>, Option<&str>)> =
            forwarded.split(',').map(forwarded_element).collect();
        let fors: Vec<Option<&str>> = elements.iter().map(|e| e.0).collect();
        let at = pick(&fors, trusted);
        let (node, proto) = elements[at];
        return Origin {
            client: node.and_then(node_addr),
            https: proto.and_then(scheme),
        };
    }
    let xff = joined(headers, &X_FORWARDED_FOR);
    let xfp = joined(headers, &X_FORWARDED_PROTO);
    let protos: Vec<&str> = xfp
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if xff.is_empty() {
        return Origin {
            client: None,
            https: protos.last().and_then(|p| scheme(p)),
        };
    }
    let hops: Vec<Option<&str>> = xff
        .split(',')
        .map(|h| Some(h.trim()).filter(|h| !h.is_empty()))
        .collect();
    let at = pick(&hops, trusted);
    // One proto per hop when the proxies keep both lists; else the nearest proxy's.
    let proto = if protos.len() == hops.len() {
        protos.get(at)
    } else {
        protos.last()
    };
    Origin {
        client: hops[at].and_then(node_addr),
        https: proto.and_then(|p| scheme(p)),
    }
}

/// All fields of a header joined with commas (an empty string when absent).
fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for value in headers.get_all(name) {
        if let Ok(value) = value.to_str() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(value);
        }
    }
    out
}

/// The index of the client in a list of hops (left: farthest, right: nearest).
fn pick(hops: &[Option<&str>], trusted: &Trusted) -> usize {
    if trusted.all() {
        return 0;
    }
    for (i, hop) in hops.iter().enumerate().rev() {
        match hop.and_then(node_addr) {
            Some(addr) if trusted.contains(addr.ip()) => continue,
            _ => return i,
        }
    }
    0
}

/// `for` and `proto` of one `Forwarded` element (`for=192.0.2.60;proto=https;by=...`).
fn forwarded_element(element: &str) -> (Option<&str>, Option<&str>) {
    let (mut node, mut proto) = (None, None);
    for pair in element.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "for" => node = Some(value),
            "proto" => proto = Some(value),
            _ => {}
        }
    }
    (node, proto)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711` (port 0 when absent).
fn node_addr(node: &str) -> Option<SocketAddr> {
    let node = node.trim();
    // RFC 7239 6: `"[" IPv6address "]"` has no zone id; Rust's parser would take
    // `[::1%5]:80` (found by worker/tests/header_fuzz.rs).
    if node.contains('%') {
        return None;
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr);
    }
    let ip = node.strip_prefix('[')?.strip_suffix(']')?;
    Some(SocketAddr::new(ip.parse().ok()?, 0))
}

fn scheme(proto: &str) -> Option<bool> {
    match proto.trim().to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(true),
        "http" | "ws" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn client(o: &Origin) -> Option<String> {
        o.client.map(|a| a.to_string())
    }

    #[test]
    fn x_forwarded_for_takes_the_nearest_untrusted_hop() {
        let trusted = Trusted::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap();
        let o = origin(&headers(&[("x-forwarded-for", "203.0.113.9")]), &trusted);
        assert_eq!(client(&o).as_deref(), Some("203.0.113.9:0"));
        // A client-supplied spoof on the left is skipped: the proxy appended the real one.
        let o = origin(
            &headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.1.1")]),
            &trusted,
        );
        assert_eq!(client(&o).as_deref(), Some("203.0.113.9:0"));
        // Several fields are one list.
        let o = origin(
            &headers(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.9:4321"),
            ]),
            &trusted,
        );
        assert_eq!(client(&o).as_deref(), Some("203.0.113.9:4321"));
        // Every hop trusted: the leftmost.
        let o = origin(
            &headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]),
            &trusted,
        );
        assert_eq!(client(&o).as_deref(), Some("10.0.0.5:0"));
        // `*`: the leftmost, whatever the rest.
        let all = Trusted::parse(&["*"]).unwrap();
        let o = origin(
            &headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9")]),
            &all,
        );
        assert_eq!(client(&o).as_deref(), Some("198.51.100.1:0"));
        // Garbage is not an address: the peer stays the client.
        let o = origin(&headers(&[("x-forwarded-for", "not-an-ip")]), &trusted);
        assert_eq!(o.client, None);
        let o = origin(&headers(&[("x-forwarded-for", "[2001:db8::7]")]), &trusted);
        assert_eq!(client(&o).as_deref(), Some("[2001:db8::7]:0"));
        // A zone id is not an address a proxy writes.
        let o = origin(
            &headers(&[("x-forwarded-for", "[2001:db8::7%41]:4711")]),
            &trusted,
        );
        assert_eq!(o.client, None);
    }

    #[test]
    fn x_forwarded_proto_follows_the_chosen_hop() {
        let trusted = Trusted::parse(&["10.0.0.0/8"]).unwrap();
        let o = origin(&headers(&[("x-forwarded-proto", "https")]), &trusted);
        assert_eq!(
            o,
            Origin {
                client: None,
                https: Some(true)
            }
        );
        let o = origin(
            &headers(&[
                ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
                ("x-forwarded-proto", "https, http"),
            ]),
            &trusted,
        );
        assert_eq!(o.https, Some(true));
        let o = origin(
            &headers(&[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "WSS"),
            ]),
            &trusted,
        );
        assert_eq!(o.https, Some(true));
        let o = origin(&headers(&[("x-forwarded-proto", "gopher")]), &trusted);
        assert_eq!(o.https, None);
    }

    #[test]
    fn rfc_7239_forwarded_wins() {
        let trusted = Trusted::parse(&["10.0.0.0/8"]).unwrap();
        let o = origin(
            &headers(&[
                ("forwarded", "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3;proto=http"),
                ("x-forwarded-for", "198.51.100.1"),
            ]),
            &trusted,
        );
        assert_eq!(client(&o).as_deref(), Some("[2001:db8:cafe::17]:4711"));
        assert_eq!(o.https, Some(true));
        let o = origin(
            &headers(&[("forwarded", "For=192.0.2.60;Proto=http;By=203.0.113.43")]),
            &trusted,
        );
        assert_eq!(
            (client(&o).as_deref(), o.https),
            (Some("192.0.2.60:0"), Some(false))
        );
        let o = origin(
            &headers(&[("forwarded", "for=unknown;proto=https")]),
            &trusted,
        );
        assert_eq!(
            o,
            Origin {
                client: None,
                https: Some(true)
            }
        );
    }
}
