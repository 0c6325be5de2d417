//! What a TLS connection was, for the ASGI `tls` scope extension: the protocol version,
//! the cipher suite and the client's certificate chain (with its subject as an RFC 4514
//! string). Read once per connection by the worker (TCP) or the HTTP/3 front (QUIC); the
//! front hands them to the worker in [`TLS_HEADER`], which the worker honours only on the
//! front's private socket.

use rustls_pki_types::CertificateDer;

/// The header in which the HTTP/3 front tells a worker its connection's TLS facts
/// ([`TlsFacts::to_header`]). Removed from every request, honoured only from the front.
pub const TLS_HEADER: &str = "x-genro-asgi-tls";

/// Most client certificates carried (a chain longer than this is cut; rustls verified it).
const MAX_CHAIN: usize = 8;

/// One TLS connection's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// The protocol version's code point (`0x0303` TLS 1.2, `0x0304` TLS 1.3).
    pub version: Option<u16>,
    /// The IANA code of the negotiated cipher suite (`None`: not known, as over QUIC).
    pub cipher_suite: Option<u16>,
    /// The client's certificates, DER, its own first (empty: none was asked for or sent).
    pub client_chain: Vec<Vec<u8>>,
    /// The chain as PEM and the subject name, made once per connection ([`TlsFacts::client`]).
    client: std::sync::OnceLock<(Vec<String>, Option<String>)>,
}

impl TlsFacts {
    /// The client's chain as PEM and its certificate's RFC 4514 subject, computed on first
    /// use and kept: every request on the connection shows the same.
    pub fn client(&self) -> &(Vec<String>, Option<String>) {
        self.client.get_or_init(|| {
            let chain = self.client_chain.iter().map(|der| pem(der)).collect();
            let name = self.client_chain.first().and_then(|der| subject_name(der));
            (chain, name)
        })
    }

    /// The facts of a handshaken rustls connection.
    pub fn of(conn: &rustls::CommonState) -> Self {
        TlsFacts {
            version: conn.protocol_version().map(u16::from),
            cipher_suite: conn.negotiated_cipher_suite().map(|s| u16::from(s.suite())),
            client_chain: chain(conn.peer_certificates().unwrap_or_default()),
            client: Default::default(),
        }
    }

    /// The facts of a QUIC connection (always TLS 1.3): its peer's certificates.
    pub fn quic(peer: &[CertificateDer<'_>]) -> Self {
        TlsFacts {
            version: Some(0x0304),
            cipher_suite: None,
            client_chain: chain(peer),
            client: Default::default(),
        }
    }

    /// As [`TLS_HEADER`]'s value: `<version hex> <cipher hex or -> [<cert base64> ...]`
    /// (base64, not hex: the chain counts against the worker's `max_header_size`).
    pub fn to_header(&self) -> String {
        use base64::Engine;
        let code = |c: Option<u16>| c.map_or_else(|| "-".to_owned(), |c| format!("{c:04x}"));
        let mut out = format!("{} {}", code(self.version), code(self.cipher_suite));
        for cert in &self.client_chain {
            out.push(' ');
            base64::engine::general_purpose::STANDARD.encode_string(cert, &mut out);
        }
        out
    }

    /// Parses [`TlsFacts::to_header`]'s form; `None` when malformed.
    pub fn from_header(value: &str) -> Option<Self> {
        let mut words = value.split(' ');
        let code = |w: &str| match w {
            "-" => Some(None),
            w => u16::from_str_radix(w, 16).ok().map(Some),
        };
        let version = code(words.next()?)?;
        let cipher_suite = code(words.next()?)?;
        let client_chain = words
            .take(MAX_CHAIN)
            .map(|cert| {
                use base64::Engine;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(cert)
                    .ok()?;
                (!der.is_empty()).then_some(der)
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TlsFacts {
            version,
            cipher_suite,
            client_chain,
            client: Default::default(),
        })
    }
}

fn chain(certs: &[CertificateDer<'_>]) -> Vec<Vec<u8>> {
    certs.iter().take(MAX_CHAIN).map(|c| c.to_vec()).collect()
}

/// A DER certificate as PEM text.
pub fn pem(der: &[u8]) -> String {
    use pkcs8::der::pem::{encode_string, LineEnding};
    encode_string("CERTIFICATE", LineEnding::LF, der).unwrap_or_default()
}

/// The subject of a DER certificate as an RFC 4514 string (`CN=client,O=Example`); `None`
/// when the certificate cannot be read that far.
pub fn subject_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity, subject, ... } ... }
    let (_, certificate, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (0x30, subject, _) = tlv(tbs)? else {
        return None;
    };
    rfc4514(subject)
}

/// One DER element: (tag, content, what follows). Single-byte tags only (X.509 needs no
/// more), definite lengths only (DER).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A `Name` (the content of its SEQUENCE) as RFC 4514: the RDNs last first, joined by
/// `,`; a multi-valued RDN's parts joined by `+`.
fn rfc4514(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, rest) = tlv(name)? else {
            return None;
        };
        name = rest;
        let mut parts = Vec::new();
        while !set.is_empty() {
            let (0x30, pair, rest) = tlv(set)? else {
                return None;
            };
            set = rest;
            let (0x06, oid, value) = tlv(pair)? else {
                return None;
            };
            let (tag, text, _) = tlv(value)?;
            let key = short_name(oid).map_or_else(|| dotted(oid), str::to_owned);
            let string = match tag {
                // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1-ish).
                0x0c | 0x13 | 0x16 | 0x14 => escape(&String::from_utf8_lossy(text)),
                // BMPString: UTF-16BE.
                0x1e => {
                    let units: Vec<u16> = text
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                        .collect();
                    escape(&String::from_utf16_lossy(&units))
                }
                // Anything else: `#` and the value's DER in hex (RFC 4514 §2.4).
                _ => {
                    let der = &value[..value.len() - tlv(value)?.2.len()];
                    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
                    format!("#{hex}")
                }
            };
            parts.push(format!("{key}={string}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// RFC 4514's short names (§3), by OID content bytes.
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x09] => "STREET",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

/// An OID's dotted form (`1.2.840.113549.1.9.1`).
fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for &byte in oid {
        value = value << 7 | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_names_follow_rfc4514() {
        let der = cert(&[
            (rcgen::DnType::CountryName, "IT"),
            (rcgen::DnType::OrganizationName, "Genro, S.p.A."),
            (rcgen::DnType::CommonName, " client+1 "),
        ]);
        assert_eq!(
            subject_name(&der).as_deref(),
            Some("CN=\\ client\\+1\\ ,O=Genro\\, S.p.A.,C=IT")
        );
        let der = cert(&[(
            rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "a@b.test",
        )]);
        let name = subject_name(&der).unwrap();
        assert!(name.starts_with("1.2.840.113549.1.9.1="), "{name}");
    }

    #[test]
    fn truncated_certificates_give_none_never_a_panic() {
        let der = cert(&[(rcgen::DnType::CommonName, "x")]);
        for cut in 0..der.len() {
            let _ = subject_name(&der[..cut]);
        }
        assert_eq!(subject_name(b""), None);
        assert_eq!(subject_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn the_header_form_round_trips_and_refuses_garbage() {
        let facts = TlsFacts {
            version: Some(0x0304),
            cipher_suite: None,
            client_chain: vec![vec![0x30, 0x01, 0xff], vec![0x00]],
            ..TlsFacts::default()
        };
        assert_eq!(facts.to_header(), "0304 - MAH/ AA==");
        assert_eq!(TlsFacts::from_header(&facts.to_header()), Some(facts));
        assert_eq!(
            TlsFacts::from_header("0303 c02f").unwrap().cipher_suite,
            Some(0xc02f)
        );
        for bad in ["", "0304", "zz -", "0304 - 3", "0304 - x!z1", "0304 -  "] {
            assert_eq!(TlsFacts::from_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pem_wraps_der() {
        let text = pem(&[1, 2, 3]);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----"));
    }
}
