//! The PROXY protocol parser's invariants ([`crate::proxy_protocol`]) checked on arbitrary
//! bytes, by panicking. One checker for the `cargo fuzz` target in `worker/fuzz/` and the
//! stable test `worker/tests/proxy_protocol_fuzz.rs`, so CI (no nightly) checks the same.

use crate::proxy_protocol::{
    encode, parse, Accept, Addresses, Error, Header, Parsed, Version, MAX_LEN, V1_MAX,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ACCEPTS: [Accept; 3] = [Accept::V1, Accept::V2, Accept::Both];

/// Parses `data` under every [`Accept`] and panics if one of these breaks:
///
/// 1. [`parse`] does not panic;
/// 2. `Done` consumes at least one byte and at most `data.len()` and [`MAX_LEN`]; a v1
///    header at most [`V1_MAX`], ending in CRLF;
/// 3. the outcome depends only on the header's bytes: appending bytes after a `Done`
///    header gives the same header, and every strict prefix of it is `Incomplete`
///    (so a reader that consumes `Incomplete` bytes never eats the client's);
/// 4. `Incomplete` comes only below [`MAX_LEN`] bytes;
/// 5. an accepted version in `Both` is accepted alone, and the other alone refuses it
///    with [`Error::Version`]; a header that names a source re-encodes to a header that
///    parses to the same thing.
pub fn exercise(data: &[u8]) {
    for accept in ACCEPTS {
        match parse(data, accept) {
            Ok(Parsed::Done { header, consumed }) => {
                check_done(data, accept, header, consumed);
            }
            Ok(Parsed::Incomplete) => {
                assert!(data.len() < MAX_LEN, "Incomplete at {} bytes", data.len())
            }
            Err(_) => {}
        }
    }
}

fn check_done(data: &[u8], accept: Accept, header: Header, consumed: usize) {
    assert!(consumed >= 1 && consumed <= data.len() && consumed <= MAX_LEN);
    assert!(accept.allows(header.version));
    let whole = &data[..consumed];
    if header.version == Version::V1 {
        assert!(consumed <= V1_MAX && whole.ends_with(b"\r\n"), "{whole:?}");
    }
    let mut longer = whole.to_vec();
    longer.extend(b"\r\n\r\nGET");
    assert_eq!(
        parse(&longer, accept),
        Ok(Parsed::Done { header, consumed })
    );
    for cut in 0..consumed {
        assert_eq!(
            parse(&whole[..cut], accept),
            Ok(Parsed::Incomplete),
            "cut at {cut}"
        );
    }
    let (alone, other) = match header.version {
        Version::V1 => (Accept::V1, Accept::V2),
        Version::V2 => (Accept::V2, Accept::V1),
    };
    assert_eq!(parse(whole, alone), Ok(Parsed::Done { header, consumed }));
    assert_eq!(parse(whole, other), Err(Error::Version(header.version)));
    if header.source().is_some() {
        let again = encode(&header, &[]).expect("a parsed Inet header encodes");
        assert_eq!(
            parse(&again, accept),
            Ok(Parsed::Done {
                header,
                consumed: again.len()
            })
        );
    }
}

/// Builds a header and TLVs from `data` (any bytes), encodes it, and panics unless it
/// parses back to the same header, consuming exactly its encoding, with trailing bytes
/// left alone, under every [`Accept`] that allows its version (and [`Error::Version`]
/// under the other).
pub fn round_trip(data: &[u8]) {
    let mut bytes = Bytes(data);
    let version = match bytes.byte() & 1 {
        0 => Version::V1,
        _ => Version::V2,
    };
    let addresses = match bytes.byte() % 8 {
        0 => Addresses::Local,
        1 => Addresses::Unknown,
        2 => Addresses::Unix,
        3..=5 => {
            let (s, d) = (bytes.array::<4>(), bytes.array::<4>());
            Addresses::Inet {
                source: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(s)), bytes.port()),
                destination: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(d)), bytes.port()),
            }
        }
        _ => {
            let (s, d) = (bytes.array::<16>(), bytes.array::<16>());
            Addresses::Inet {
                source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), bytes.port()),
                destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), bytes.port()),
            }
        }
    };
    let header = Header { version, addresses };
    let mut values = Vec::new();
    if version == Version::V2 {
        for _ in 0..bytes.byte() % 5 {
            let kind = bytes.byte();
            let len = usize::from(bytes.byte()) * usize::from(bytes.byte() % 8 + 1);
            values.push((kind, bytes.take(len)));
        }
    }
    let tlvs: Vec<(u8, &[u8])> = values.iter().map(|(k, v)| (*k, *v)).collect();
    let Some(encoded) = encode(&header, &tlvs) else {
        // v1 cannot say LOCAL or Unix; nothing else is refused.
        assert!(matches!(
            (version, addresses),
            (Version::V1, Addresses::Local | Addresses::Unix)
        ));
        return;
    };
    let mut stream = encoded.clone();
    stream.extend(bytes.0);
    for accept in ACCEPTS {
        let got = parse(&stream, accept);
        if accept.allows(version) {
            assert_eq!(
                got,
                Ok(Parsed::Done {
                    header,
                    consumed: encoded.len()
                }),
                "{encoded:?}"
            );
        } else {
            assert_eq!(got, Err(Error::Version(version)));
        }
    }
    exercise(&stream);
}

/// A cursor that yields zeros once `data` runs out.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    fn port(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
}
