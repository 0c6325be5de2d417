//! `Accept-Encoding` (RFC 9110 12.5.3): which of a file's precompressed siblings, if
//! any, a client takes. Weights are q-values in thousandths; `x-gzip` is `gzip`; `*`
//! stands for every coding not named. Without the header only the file itself is sent
//! (the RFC would allow any coding, but a client that says nothing may not decode one);
//! `identity` is acceptable unless `identity;q=0`, or `*;q=0` with no `identity` entry,
//! excludes it, and when the header does not weigh it (by name or `*`) it comes after
//! every coding the client named. When the client accepts nothing the server has, the file is sent as it
//! is (RFC 9110 12.1 lets a server disregard the header rather than answer 406).

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

/// A representation of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// The `.br` sibling.
    Br,
    /// The `.gz` sibling.
    Gzip,
    /// The file itself.
    Identity,
}

impl Coding {
    /// The sibling's suffix, `Content-Encoding` value and `ETag` tag (`None` for the file).
    pub(crate) fn name(self) -> Option<&'static str> {
        match self {
            Coding::Br => Some("br"),
            Coding::Gzip => Some("gzip"),
            Coding::Identity => None,
        }
    }

    /// The sibling's file name suffix.
    pub(crate) fn suffix(self) -> &'static [u8] {
        match self {
            Coding::Br => b".br",
            Coding::Gzip => b".gz",
            Coding::Identity => b"",
        }
    }
}

/// The weight of each coding the server may offer, in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted {
    br: u16,
    gzip: u16,
    identity: u16,
}

impl Accepted {
    /// What the request's `Accept-Encoding` fields (all of them, as one list) accept.
    pub(crate) fn of(headers: &HeaderMap) -> Accepted {
        let mut fields = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        if fields.peek().is_none() {
            return Accepted {
                br: 0,
                gzip: 0,
                identity: 1000,
            };
        }
        let (mut br, mut gzip, mut identity, mut star) = (None, None, None, None);
        for element in fields.flat_map(|v| v.as_bytes().split(|b| *b == b',')) {
            let Ok(element) = std::str::from_utf8(element) else {
                continue;
            };
            let mut params = element.split(';');
            let coding = params.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for param in params {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = weight(value.trim());
                    }
                }
            }
            // An element with an invalid weight is ignored.
            let Some(q) = q else { continue };
            let slot = match coding.to_ascii_lowercase().as_str() {
                "br" => &mut br,
                "gzip" | "x-gzip" => &mut gzip,
                "identity" => &mut identity,
                "*" => &mut star,
                _ => continue,
            };
            // Named twice: the higher weight (lenient; the RFC does not say).
            *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
        }
        Accepted {
            br: br.or(star).unwrap_or(0),
            gzip: gzip.or(star).unwrap_or(0),
            // Not named: acceptable, but after every coding the client did name (a client
            // that lists `gzip;q=0.8` wants it rather than the file as it is).
            identity: identity.or(star).unwrap_or(1),
        }
    }

    /// The representation to send among those that exist: the highest weight above 0,
    /// `br` before `gzip` before the file at equal weight; the file when none is accepted.
    pub(crate) fn choose(self, br: bool, gzip: bool) -> Coding {
        let candidates = [
            (Coding::Br, br, self.br),
            (Coding::Gzip, gzip, self.gzip),
            (Coding::Identity, true, self.identity),
        ];
        let mut best = (Coding::Identity, 0);
        for (coding, exists, q) in candidates {
            if exists && q > best.1 {
                best = (coding, q);
            }
        }
        best.0
    }

    /// Whether a sibling of `coding` could be chosen at all (else it is not looked for).
    pub(crate) fn takes(self, coding: Coding) -> bool {
        match coding {
            Coding::Br => self.br > 0,
            Coding::Gzip => self.gzip > 0,
            Coding::Identity => self.identity > 0,
        }
    }
}

/// A q-value (RFC 9110 12.4.2: `0[.ddd]` or `1[.000]`) in thousandths.
fn weight(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = (fraction.bytes().zip([100, 10, 1]))
        .map(|(digit, scale)| u16::from(digit - b'0') * scale)
        .sum::<u16>();
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(values: &[&str]) -> Accepted {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, value.parse().expect("header value"));
        }
        Accepted::of(&headers)
    }

    #[test]
    fn weights() {
        let cases = [
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.25", Some(250)),
            ("0.001", Some(1)),
            ("0.", Some(0)),
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("0.0001", None),
            ("2", None),
            ("-1", None),
            ("0.5x", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(weight(text), want, "{text:?}");
        }
    }

    #[test]
    fn choices() {
        use Coding::*;
        // (Accept-Encoding fields, br exists, gzip exists, chosen)
        let cases: &[(&[&str], bool, bool, Coding)] = &[
            (&[], true, true, Identity),
            (&[""], true, true, Identity),
            (&["gzip, deflate, br"], true, true, Br),
            (&["gzip, deflate, br"], false, true, Gzip),
            (&["gzip, deflate, br"], false, false, Identity),
            (&["br;q=0.5, gzip"], true, true, Gzip),
            (&["br;q=1.0, gzip;q=1.0"], true, true, Br),
            (&["BR"], true, true, Br),
            (&["x-gzip"], true, true, Gzip),
            (&["gzip;q=0"], true, true, Identity),
            (&["*"], true, true, Br),
            (&["*;q=0.5, br;q=0"], true, true, Gzip),
            (&["identity;q=0"], false, false, Identity),
            (&["identity;q=0, gzip;q=0.1"], true, true, Gzip),
            (&["*;q=0"], true, true, Identity),
            (&["identity;q=1, br;q=0.9"], true, true, Identity),
            (&["gzip;q=bad, br"], true, true, Br),
            (&["gzip;q=bad"], true, true, Identity),
            (&["gzip", "br"], true, true, Br),
            (&["gzip;level=9;q=0.8, br;q=0.7"], true, true, Gzip),
            (&["compress, zstd"], true, true, Identity),
        ];
        for (fields, br, gzip, want) in cases {
            assert_eq!(
                accepted(fields).choose(*br, *gzip),
                *want,
                "{fields:?} {br} {gzip}"
            );
        }
        assert!(!accepted(&[]).takes(Br));
        assert!(accepted(&["*"]).takes(Gzip));
    }

    /// Random headers: never a panic, never a sibling that does not exist or that the
    /// client refused by name.
    #[test]
    fn random_headers_choose_what_exists() {
        const PIECES: &[&str] = &[
            "br", "gzip", "x-gzip", "identity", "*", "deflate", ",", ",", ";", "q=", "q=0", "q=1",
            "q=0.5", "q=1.5", " ", "=", ";q=0", "BR",
        ];
        let mut seed: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100_000 {
            let mut value = String::new();
            for _ in 0..(next() % 10) {
                value.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let Ok(header) = http::HeaderValue::from_str(&value) else {
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, header);
            let accepted = Accepted::of(&headers);
            let (br, gzip) = (next() % 2 == 0, next() % 2 == 0);
            match accepted.choose(br, gzip) {
                Coding::Br => assert!(br && accepted.takes(Coding::Br), "{value}"),
                Coding::Gzip => assert!(gzip && accepted.takes(Coding::Gzip), "{value}"),
                Coding::Identity => {}
            }
        }
    }
}
