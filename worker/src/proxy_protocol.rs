//! PROXY protocol headers (HAProxy's `proxy-protocol.txt`: v1 text, v2 binary), which an
//! L4 load balancer writes before the client's first byte: a sans-IO parser (bytes in,
//! [`Parsed::Incomplete`] / [`Parsed::Done`] / [`Error`] out) and, for tests and fuzzing,
//! its encoder. Reading it off a socket is `server/proxied.rs`; the fuzz invariants are in
//! [`crate::proxy_protocol_check`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, CRLF included (spec 2.1: "107 bytes").
pub const V1_MAX: usize = 107;

/// The v1 header's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The v2 header's first 12 bytes (spec 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version/command, family/transport and the 2-byte length.
const V2_FIXED: usize = 16;

/// The most v2 address and TLV bytes accepted. The spec allows 65535; HAProxy's own
/// TLVs (ALPN, authority, SSL facts, unique id) and AWS NLB's (VPC endpoint id) take a few
/// hundred, so 4 KiB leaves room and keeps what one connection may make us buffer small.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// The longest header of either version.
pub const MAX_LEN: usize = V2_FIXED + V2_MAX_PAYLOAD;

/// v2 address block sizes by family (spec 2.2): IPv4, IPv6, Unix (two 108-byte paths).
const INET_LEN: usize = 12;
const INET6_LEN: usize = 36;
const UNIX_LEN: usize = 216;

/// A header version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The versions a listener accepts (`[server] proxy_protocol`, when not `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// v1 only.
    V1,
    /// v2 only.
    V2,
    /// Either.
    Both,
}

impl Accept {
    /// Whether a header of `version` is accepted.
    pub fn allows(self, version: Version) -> bool {
        matches!(
            (self, version),
            (Accept::Both, _) | (Accept::V1, Version::V1) | (Accept::V2, Version::V2)
        )
    }
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// v2 `LOCAL`: the balancer's own connection (a health check); the socket's peer is
    /// the client.
    Local,
    /// v1 `UNKNOWN`, or v2 `PROXY` with the `UNSPEC` family: the balancer does not know;
    /// the socket's peer stays the client.
    Unknown,
    /// v2 `PROXY` over `AF_UNIX`: paths, no address; the socket's peer stays the client.
    Unix,
    /// TCP over IPv4 or IPv6 (both addresses of one family).
    Inet {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's).
        destination: SocketAddr,
    },
}

/// A parsed header. TLVs (v2) are validated and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its version.
    pub version: Version,
    /// What it says.
    pub addresses: Addresses,
}

impl Header {
    /// The original client, when the header names one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self.addresses {
            Addresses::Inet { source, .. } => Some(source),
            Addresses::Local | Addresses::Unknown | Addresses::Unix => None,
        }
    }
}

/// How far [`parse`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are a valid beginning of an accepted header, all of them header
    /// bytes (so a reader may consume them); more are needed.
    Incomplete,
    /// A whole header: the first `consumed` bytes; what follows is the client's.
    Done {
        /// The header.
        header: Header,
        /// Its length.
        consumed: usize,
    },
}

/// Why bytes are not an accepted header. Every one closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Neither the v1 prefix nor the v2 signature: plain HTTP, TLS or garbage.
    #[error("the connection does not begin with a PROXY protocol header")]
    Signature,
    /// A header of a version the listener does not accept.
    #[error("a PROXY protocol {0} header, which [server] proxy_protocol does not accept")]
    Version(Version),
    /// v1 without CRLF within [`V1_MAX`] bytes, or v2 announcing more than
    /// [`V2_MAX_PAYLOAD`] bytes.
    #[error("a PROXY protocol {0} header longer than allowed")]
    Oversized(Version),
    /// A header that breaks the spec.
    #[error("a malformed PROXY protocol {version} header: {what}")]
    Malformed {
        /// Its version.
        version: Version,
        /// What is wrong.
        what: &'static str,
    },
}

/// Parses the header at the start of `buf`. Never reads past the header: what follows it
/// (`buf[consumed..]`) is the client's.
pub fn parse(buf: &[u8], accept: Accept) -> Result<Parsed, Error> {
    // The version is known only once its whole signature is there: "P" may begin "POST".
    let version = if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        Version::V1
    } else if starts_like(buf, &V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        Version::V2
    } else {
        return Err(Error::Signature);
    };
    if !accept.allows(version) {
        return Err(Error::Version(version));
    }
    match version {
        Version::V1 => parse_v1(buf),
        Version::V2 => parse_v2(buf),
    }
}

/// Whether `buf` and `prefix` agree on their common length.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

fn malformed_v1(what: &'static str) -> Error {
    Error::Malformed {
        version: Version::V1,
        what,
    }
}

fn malformed_v2(what: &'static str) -> Error {
    Error::Malformed {
        version: Version::V2,
        what,
    }
}

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or `PROXY UNKNOWN[ ...]\r\n`, with
/// single spaces.
fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return match buf.len() >= V1_MAX {
            true => Err(Error::Oversized(Version::V1)),
            false => Ok(Parsed::Incomplete),
        };
    };
    let Some(line) = buf[V1_PREFIX.len()..lf].strip_suffix(b"\r") else {
        return Err(malformed_v1("the line does not end with CRLF"));
    };
    // Spec 2.1: after UNKNOWN, the receiver ignores everything up to the CRLF.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(done(Version::V1, Addresses::Unknown, lf + 1));
    }
    let mut fields = line.split(|&b| b == b' ');
    let mut next = || fields.next().ok_or(malformed_v1("too few fields"));
    let family = next()?;
    let (source, destination) = (next()?, next()?);
    let (source_port, destination_port) = (port(next()?)?, port(next()?)?);
    if fields.next().is_some() {
        return Err(malformed_v1("too many fields"));
    }
    let (source, destination) = match family {
        b"TCP4" => (
            IpAddr::V4(text::<Ipv4Addr>(source)?),
            IpAddr::V4(text::<Ipv4Addr>(destination)?),
        ),
        b"TCP6" => (
            IpAddr::V6(text::<Ipv6Addr>(source)?),
            IpAddr::V6(text::<Ipv6Addr>(destination)?),
        ),
        _ => return Err(malformed_v1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let addresses = Addresses::Inet {
        source: SocketAddr::new(source, source_port),
        destination: SocketAddr::new(destination, destination_port),
    };
    Ok(done(Version::V1, addresses, lf + 1))
}

/// An address in its family's text form (std's parsers: no leading zeros in IPv4 octets).
fn text<T: std::str::FromStr>(field: &[u8]) -> Result<T, Error> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(malformed_v1("an address is not valid for its protocol"))
}

/// A port: decimal digits, 0..=65535, no leading zero (as senders write it).
fn port(field: &[u8]) -> Result<u16, Error> {
    let bad = malformed_v1("a port is not a decimal number in 0..65535");
    let digits = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits || (field.len() > 1 && field[0] == b'0') {
        return Err(bad);
    }
    field
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
        .try_into()
        .map_err(|_| bad)
}

/// Signature, `\x2C` (version 2, command C), family/transport, length, then the address
/// block and TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.len() < V2_FIXED {
        // Check what already arrived, so garbage is refused without waiting for more.
        if let Some(&version_command) = buf.get(12) {
            check_version_command(version_command)?;
        }
        return Ok(Parsed::Incomplete);
    }
    let local = check_version_command(buf[12])?;
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(Error::Oversized(Version::V2));
    }
    // Spec 2.2: only these families and transports exist; others must be rejected (a LOCAL
    // header's are ignored, with its whole block).
    let address_len = match family {
        _ if local => 0,
        0x00 => 0,
        0x11 | 0x12 => INET_LEN,
        0x21 | 0x22 => INET6_LEN,
        0x31 | 0x32 => UNIX_LEN,
        _ => return Err(malformed_v2("unknown address family or transport")),
    };
    if len < address_len {
        return Err(malformed_v2(
            "the length is too short for the address family",
        ));
    }
    let total = V2_FIXED + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[V2_FIXED..total];
    let addresses = if local {
        Addresses::Local
    } else {
        check_tlvs(&block[address_len..])?;
        match family {
            0x11 | 0x12 => {
                let ip = |at: usize| {
                    IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap_or_default())
                };
                inet(ip(0), ip(4), &block[8..12])
            }
            0x21 | 0x22 => {
                let ip = |at: usize| {
                    IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap_or_default())
                };
                inet(ip(0), ip(16), &block[32..36])
            }
            0x31 | 0x32 => Addresses::Unix,
            _ => Addresses::Unknown,
        }
    };
    Ok(done(Version::V2, addresses, total))
}

/// The version must be 2; the command LOCAL (`true`) or PROXY.
fn check_version_command(byte: u8) -> Result<bool, Error> {
    match byte {
        0x20 => Ok(true),
        0x21 => Ok(false),
        _ if byte >> 4 != 2 => Err(malformed_v2("the version is not 2")),
        _ => Err(malformed_v2("the command is neither LOCAL nor PROXY")),
    }
}

fn inet(source: IpAddr, destination: IpAddr, ports: &[u8]) -> Addresses {
    Addresses::Inet {
        source: SocketAddr::new(source, u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(destination, u16::from_be_bytes([ports[2], ports[3]])),
    }
}

/// TLVs (type, 2-byte length, value) must tile the rest of the block exactly; their
/// content is not used.
fn check_tlvs(mut rest: &[u8]) -> Result<(), Error> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(malformed_v2("a TLV is cut short"));
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rest = rest
            .get(3 + len..)
            .ok_or(malformed_v2("a TLV runs past the header"))?;
    }
    Ok(())
}

fn done(version: Version, addresses: Addresses, consumed: usize) -> Parsed {
    Parsed::Done {
        header: Header { version, addresses },
        consumed,
    }
}

/// Encodes `header` as a sender would, with `tlvs` (v2 only) after the addresses; `None`
/// when the version cannot carry it (v1 has no LOCAL or Unix; an `Inet` with mixed
/// families; TLVs beyond [`V2_MAX_PAYLOAD`]). For tests and the fuzz checks.
pub fn encode(header: &Header, tlvs: &[(u8, &[u8])]) -> Option<Vec<u8>> {
    match header.version {
        Version::V1 => encode_v1(header.addresses, tlvs),
        Version::V2 => encode_v2(header.addresses, tlvs),
    }
}

fn encode_v1(addresses: Addresses, tlvs: &[(u8, &[u8])]) -> Option<Vec<u8>> {
    if !tlvs.is_empty() {
        return None;
    }
    let line = match addresses {
        Addresses::Unknown => "PROXY UNKNOWN\r\n".to_owned(),
        Addresses::Inet {
            source,
            destination,
        } => {
            let family = match (source.ip(), destination.ip()) {
                (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
                (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
                _ => return None,
            };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
        }
        Addresses::Local | Addresses::Unix => return None,
    };
    Some(line.into_bytes())
}

fn encode_v2(addresses: Addresses, tlvs: &[(u8, &[u8])]) -> Option<Vec<u8>> {
    let (command, family, mut block) = match addresses {
        Addresses::Local => (0x20, 0x00, Vec::new()),
        Addresses::Unknown => (0x21, 0x00, Vec::new()),
        Addresses::Unix => (0x21, 0x31, vec![0; UNIX_LEN]),
        Addresses::Inet {
            source,
            destination,
        } => {
            let mut block = Vec::new();
            let family = match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend(s.octets());
                    block.extend(d.octets());
                    0x11
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    block.extend(s.octets());
                    block.extend(d.octets());
                    0x21
                }
                _ => return None,
            };
            block.extend(source.port().to_be_bytes());
            block.extend(destination.port().to_be_bytes());
            (0x21, family, block)
        }
    };
    for (kind, value) in tlvs {
        block.push(*kind);
        block.extend(u16::try_from(value.len()).ok()?.to_be_bytes());
        block.extend(*value);
    }
    if block.len() > V2_MAX_PAYLOAD {
        return None;
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.extend([command, family]);
    out.extend(u16::try_from(block.len()).ok()?.to_be_bytes());
    out.extend(block);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn inet(version: Version, source: &str, destination: &str) -> Header {
        Header {
            version,
            addresses: Addresses::Inet {
                source: sock(source),
                destination: sock(destination),
            },
        }
    }

    fn done_with(buf: &[u8], accept: Accept) -> (Header, usize) {
        match parse(buf, accept) {
            Ok(Parsed::Done { header, consumed }) => (header, consumed),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn err(buf: &[u8], accept: Accept) -> Error {
        match parse(buf, accept) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    /// Every strict prefix of a valid header is `Incomplete`.
    fn assert_every_prefix_incomplete(whole: &[u8], accept: Accept) {
        for cut in 0..whole.len() {
            assert_eq!(
                parse(&whole[..cut], accept),
                Ok(Parsed::Incomplete),
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(whole)
            );
        }
    }

    const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";

    #[test]
    fn v1_tcp4_and_the_bytes_after_it() {
        let mut buf = V1_TCP4.to_vec();
        buf.extend(b"GET / HTTP/1.1\r\n\r\n");
        let (header, consumed) = done_with(&buf, Accept::V1);
        assert_eq!(
            header,
            inet(Version::V1, "192.0.2.7:56324", "198.51.100.1:443")
        );
        assert_eq!(consumed, V1_TCP4.len());
        assert_eq!(header.source(), Some(sock("192.0.2.7:56324")));
        assert_every_prefix_incomplete(V1_TCP4, Accept::V1);
        assert_every_prefix_incomplete(V1_TCP4, Accept::Both);
    }

    #[test]
    fn v1_tcp6() {
        let (header, consumed) = done_with(V1_TCP6, Accept::Both);
        assert_eq!(
            header,
            inet(Version::V1, "[2001:db8::7]:65535", "[2001:db8::1]:0")
        );
        assert_eq!(consumed, V1_TCP6.len());
        assert_every_prefix_incomplete(V1_TCP6, Accept::V1);
    }

    #[test]
    fn v1_unknown_keeps_the_socket_address() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ] {
            let (header, consumed) = done_with(line, Accept::V1);
            assert_eq!(header.addresses, Addresses::Unknown);
            assert_eq!(header.source(), None);
            assert_eq!(consumed, line.len());
            assert_every_prefix_incomplete(line, Accept::V1);
        }
    }

    #[test]
    fn v1_longest_header_fits_and_one_more_byte_is_oversized() {
        let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), 104);
        assert_eq!(done_with(longest, Accept::V1).1, 104);
        let mut unknown = b"PROXY UNKNOWN ".to_vec();
        unknown.resize(V1_MAX - 2, b'x');
        unknown.extend(b"\r\n");
        assert_eq!(done_with(&unknown, Accept::V1).1, V1_MAX);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(err(&long, Accept::V1), Error::Oversized(Version::V1));
        long.extend(b"\r\n");
        assert_eq!(err(&long, Accept::V1), Error::Oversized(Version::V1));
        // 106 bytes and no LF yet: one more byte could still end it.
        assert_eq!(
            parse(&long[..V1_MAX - 1], Accept::V1),
            Ok(Parsed::Incomplete)
        );
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 9\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443 \r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXY tcp4 192.0.2.7 198.51.100.1 56324 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 080 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 \r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2x\r\n",
            b"PROXY TCP6 [2001:db8::7] 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 \xff.0.2.7 198.51.100.1 1 2\r\n",
        ] {
            assert!(
                matches!(
                    err(bad, Accept::Both),
                    Error::Malformed {
                        version: Version::V1,
                        ..
                    }
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn not_a_header_is_refused_at_the_first_wrong_byte() {
        assert_eq!(err(b"G", Accept::Both), Error::Signature);
        assert_eq!(err(b"GET / HTTP/1.1\r\n", Accept::Both), Error::Signature);
        assert_eq!(parse(b"P", Accept::Both), Ok(Parsed::Incomplete));
        assert_eq!(err(b"PO", Accept::Both), Error::Signature);
        assert_eq!(err(b"POST / HTTP/1.1\r\n", Accept::V1), Error::Signature);
        assert_eq!(err(b"PRI * HTTP/2.0\r\n", Accept::Both), Error::Signature);
        assert_eq!(err(b"\x16\x03\x01\x02\x00", Accept::Both), Error::Signature);
        assert_eq!(err(b"proxy TCP4", Accept::Both), Error::Signature);
        assert_eq!(err(b"PROXY\tTCP4", Accept::Both), Error::Signature);
        assert_eq!(err(b"\r\n\r\n\0\r\nQUIX\n", Accept::Both), Error::Signature);
        assert_eq!(err(b"\r\n\r\n\r\n", Accept::Both), Error::Signature);
        assert_eq!(parse(b"", Accept::V2), Ok(Parsed::Incomplete));
    }

    #[test]
    fn a_version_not_accepted_is_refused_once_its_signature_is_complete() {
        assert_eq!(parse(b"PROXY", Accept::V2), Ok(Parsed::Incomplete));
        assert_eq!(err(b"PROXY ", Accept::V2), Error::Version(Version::V1));
        assert_eq!(err(V1_TCP4, Accept::V2), Error::Version(Version::V1));
        let v2 = encode(&inet(Version::V2, "192.0.2.7:1", "192.0.2.8:2"), &[]).unwrap();
        assert_eq!(parse(&v2[..11], Accept::V1), Ok(Parsed::Incomplete));
        assert_eq!(err(&v2[..12], Accept::V1), Error::Version(Version::V2));
        assert_eq!(err(&v2, Accept::V1), Error::Version(Version::V2));
    }

    #[test]
    fn v2_tcp4_and_tcp6_with_tlvs() {
        let tlvs: &[(u8, &[u8])] = &[(0x01, b"h2"), (0x04, b""), (0xEA, b"vpce-0123456789")];
        for (source, destination) in [
            ("203.0.113.9:40000", "10.0.0.1:8443"),
            ("[2001:db8::9]:1", "[::1]:65535"),
        ] {
            let header = inet(Version::V2, source, destination);
            for tlvs in [&[][..], tlvs] {
                let whole = encode(&header, tlvs).unwrap();
                let mut buf = whole.clone();
                buf.extend(b"\x16\x03\x01 rest is TLS");
                assert_eq!(done_with(&buf, Accept::V2), (header, whole.len()));
                assert_eq!(done_with(&buf, Accept::Both), (header, whole.len()));
                assert_every_prefix_incomplete(&whole, Accept::V2);
            }
        }
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_socket_address() {
        for addresses in [Addresses::Local, Addresses::Unknown, Addresses::Unix] {
            let header = Header {
                version: Version::V2,
                addresses,
            };
            let whole = encode(&header, &[(0x05, b"id")]).unwrap();
            let (parsed, consumed) = done_with(&whole, Accept::V2);
            assert_eq!((parsed, consumed), (header, whole.len()));
            assert_eq!(parsed.source(), None);
            assert_every_prefix_incomplete(&whole, Accept::Both);
        }
        // LOCAL ignores its block whatever the family says (HAProxy health checks).
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x11, 0, 3, 1, 2, 3]);
        assert_eq!(done_with(&local, Accept::V2).0.addresses, Addresses::Local);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0xFF, 0, 0]);
        assert_eq!(done_with(&local, Accept::V2).0.addresses, Addresses::Local);
        // DGRAM transports are valid spec values; the addresses are what count.
        let mut dgram = encode(&inet(Version::V2, "192.0.2.7:1", "192.0.2.8:2"), &[]).unwrap();
        dgram[13] = 0x12;
        assert_eq!(
            done_with(&dgram, Accept::V2).0.source(),
            Some(sock("192.0.2.7:1"))
        );
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([command, family]);
        out.extend((block.len() as u16).to_be_bytes());
        out.extend(block);
        out
    }

    #[test]
    fn v2_malformed() {
        let inet4 = [192, 0, 2, 7, 192, 0, 2, 8, 0, 1, 0, 2];
        let cases: &[(Vec<u8>, &str)] = &[
            (v2(0x11, 0x11, &inet4), "the version is not 2"),
            (v2(0x31, 0x11, &inet4), "the version is not 2"),
            (
                v2(0x22, 0x11, &inet4),
                "the command is neither LOCAL nor PROXY",
            ),
            (
                v2(0x2F, 0x11, &inet4),
                "the command is neither LOCAL nor PROXY",
            ),
            (
                v2(0x21, 0x13, &inet4),
                "unknown address family or transport",
            ),
            (
                v2(0x21, 0x41, &inet4),
                "unknown address family or transport",
            ),
            (
                v2(0x21, 0x10, &inet4),
                "unknown address family or transport",
            ),
            (
                v2(0x21, 0x11, &inet4[..11]),
                "the length is too short for the address family",
            ),
            (
                v2(0x21, 0x21, &[0; 35]),
                "the length is too short for the address family",
            ),
            (
                v2(0x21, 0x31, &[0; 215]),
                "the length is too short for the address family",
            ),
            (
                v2(0x21, 0x11, &[&inet4[..], &[1, 0]].concat()),
                "a TLV is cut short",
            ),
            (
                v2(0x21, 0x11, &[&inet4[..], &[1, 0, 3, 9, 9]].concat()),
                "a TLV runs past the header",
            ),
            (v2(0x21, 0x00, &[1, 0, 9]), "a TLV runs past the header"),
        ];
        for (buf, what) in cases {
            assert_eq!(
                err(buf, Accept::V2),
                Error::Malformed {
                    version: Version::V2,
                    what
                },
                "{buf:?}"
            );
        }
        // A bad version byte is refused as soon as it arrives, not after the length.
        assert!(matches!(
            err(&v2(0x11, 0, &[])[..13], Accept::V2),
            Error::Malformed { .. }
        ));
    }

    #[test]
    fn v2_oversized_is_refused_from_its_length_alone() {
        let mut head = V2_SIGNATURE.to_vec();
        head.extend([0x21, 0x11]);
        head.extend(((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert_eq!(err(&head, Accept::V2), Error::Oversized(Version::V2));
        let mut head = V2_SIGNATURE.to_vec();
        head.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(err(&head, Accept::V2), Error::Oversized(Version::V2));
        // The largest accepted.
        let big = vec![0x33; V2_MAX_PAYLOAD - INET_LEN - 3];
        let header = inet(Version::V2, "192.0.2.7:1", "192.0.2.8:2");
        let whole = encode(&header, &[(0xEE, &big)]).unwrap();
        assert_eq!(whole.len(), MAX_LEN);
        assert_eq!(done_with(&whole, Accept::V2), (header, MAX_LEN));
        assert_eq!(encode(&header, &[(0xEE, &big), (0, b"")]), None);
    }

    #[test]
    fn encode_refuses_what_v1_cannot_say() {
        for addresses in [Addresses::Local, Addresses::Unix] {
            let header = Header {
                version: Version::V1,
                addresses,
            };
            assert_eq!(encode(&header, &[]), None);
        }
        assert_eq!(
            encode(&inet(Version::V1, "192.0.2.7:1", "[::1]:2"), &[]),
            None
        );
        assert_eq!(
            encode(&inet(Version::V2, "192.0.2.7:1", "[::1]:2"), &[]),
            None
        );
        assert_eq!(
            encode(
                &inet(Version::V1, "192.0.2.7:1", "192.0.2.8:2"),
                &[(1, b"")]
            ),
            None
        );
    }
}
