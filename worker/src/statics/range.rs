//! `Range: bytes=...` (RFC 9110 14.1.2, 14.2): which parts of a file of a given length a
//! request asks for. A header this server does not take (another unit, bad syntax, too
//! many or overlapping ranges) is ignored, as the RFC allows, and the whole file is sent.
//!
//! Bounds, so a client cannot make the worker do unbounded work: at most [`MAX_RANGES`]
//! ranges, and the parts together no longer than the file (overlapping or repeated
//! ranges, the RFC's "indications of ... a deliberate denial-of-service attack", get the
//! whole file instead). Parsing stops at the first range past the bound, so a long header
//! costs no more than its first ranges.

use std::ops::Range;

/// The most ranges a request may ask for; more get the whole file (200).
pub(crate) const MAX_RANGES: usize = 16;

/// What a `Range` header comes to for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Send the whole file (200): no header, or one this server ignores.
    Whole,
    /// No range overlaps the file: 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
    /// The parts to send (206), in the order asked, each non-empty and within the file.
    Parts(Vec<Range<u64>>),
}

/// The parts of a `len`-byte file that `value` asks for. An empty file is always sent
/// whole (every range of it would be unsatisfiable, and a 416 for an empty file helps
/// no one).
pub(crate) fn parse(value: &[u8], len: u64) -> Ranges {
    let Ok(value) = std::str::from_utf8(value) else {
        return Ranges::Whole;
    };
    let Some((unit, specs)) = value.trim().split_once('=') else {
        return Ranges::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || len == 0 {
        return Ranges::Whole;
    }
    let mut parts = Vec::new();
    let mut asked = 0;
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        asked += 1;
        if asked > MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        let part = match (number(first), number(last)) {
            // first-last: invalid if last < first.
            (Some(first), Some(last)) if first <= last => {
                (first < len).then(|| first..last.saturating_add(1).min(len))
            }
            // first-
            (Some(first), None) if last.is_empty() => (first < len).then_some(first..len),
            // -suffix: the last `suffix` bytes (all of a shorter file); 0 is unsatisfiable.
            (None, Some(suffix)) if first.is_empty() => {
                (suffix > 0).then(|| len.saturating_sub(suffix)..len)
            }
            _ => return Ranges::Whole,
        };
        parts.extend(part);
    }
    if asked == 0 {
        return Ranges::Whole;
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    // Disjoint parts of the file add up to at most its length.
    if overlapping(&parts) {
        return Ranges::Whole;
    }
    Ranges::Parts(parts)
}

/// A run of ASCII digits (nothing else, not even spaces inside), if it fits a u64.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether two of `parts` share a byte (at most [`MAX_RANGES`] of them: quadratic is fine).
fn overlapping(parts: &[Range<u64>]) -> bool {
    parts.iter().enumerate().any(|(i, a)| {
        parts[i + 1..]
            .iter()
            .any(|b| a.start < b.end && b.start < a.end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(list: &[(u64, u64)]) -> Ranges {
        Ranges::Parts(list.iter().map(|(a, b)| *a..*b).collect())
    }

    #[test]
    fn range_headers() {
        let len = 10_000;
        let cases: &[(&str, Ranges)] = &[
            ("bytes=0-499", parts(&[(0, 500)])),
            ("bytes=500-999", parts(&[(500, 1000)])),
            ("bytes=-500", parts(&[(9500, 10_000)])),
            ("bytes=9500-", parts(&[(9500, 10_000)])),
            ("bytes=0-0,-1", parts(&[(0, 1), (9999, 10_000)])),
            ("bytes=500-600, 601-999", parts(&[(500, 601), (601, 1000)])),
            ("bytes=9000-99999", parts(&[(9000, 10_000)])),
            ("bytes=-99999", parts(&[(0, 10_000)])),
            ("Bytes = 1-2", parts(&[(1, 3)])),
            ("bytes=1-2,,", parts(&[(1, 3)])),
            ("bytes=200-100,1-2", Ranges::Whole),
            ("bytes=10000-", Ranges::Unsatisfiable),
            ("bytes=10000-20000, 20000-", Ranges::Unsatisfiable),
            ("bytes=-0", Ranges::Unsatisfiable),
            ("bytes=10000-, 5-6", parts(&[(5, 7)])),
            ("bytes=", Ranges::Whole),
            ("bytes=-", Ranges::Whole),
            ("bytes=a-b", Ranges::Whole),
            ("bytes=1 -2", parts(&[(1, 3)])),
            ("bytes=1- 2", parts(&[(1, 3)])),
            ("bytes=+1-2", Ranges::Whole),
            ("bytes=1-2-3", Ranges::Whole),
            ("bytes=99999999999999999999-", Ranges::Whole),
            ("items=0-1", Ranges::Whole),
            ("0-1", Ranges::Whole),
            ("", Ranges::Whole),
            // Overlaps and repeats: the whole file instead.
            ("bytes=0-499,400-999", Ranges::Whole),
            ("bytes=0-,0-", Ranges::Whole),
            ("bytes=-1,-1", Ranges::Whole),
        ];
        for (value, want) in cases {
            assert_eq!(&parse(value.as_bytes(), len), want, "{value}");
        }
        assert_eq!(parse(b"bytes=0-1", 0), Ranges::Whole, "empty file");
        assert_eq!(parse(b"bytes=0-5", 3), parts(&[(0, 3)]));
    }

    #[test]
    fn at_most_sixteen_ranges() {
        let specs = |n: u64| {
            (0..n)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
        };
        let sixteen = format!("bytes={}", specs(16).join(","));
        assert!(matches!(parse(sixteen.as_bytes(), 1000), Ranges::Parts(p) if p.len() == 16));
        let seventeen = format!("bytes={}", specs(17).join(","));
        assert_eq!(parse(seventeen.as_bytes(), 1000), Ranges::Whole);
        // A header of a million ranges stops at the 17th.
        let huge = format!("bytes={}", vec!["0-0"; 1_000_000].join(","));
        let started = std::time::Instant::now();
        assert_eq!(parse(huge.as_bytes(), 1000), Ranges::Whole);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Random headers: whatever is parsed, the parts are non-empty, inside the file,
    /// disjoint, at most [`MAX_RANGES`], and no longer together than the file.
    #[test]
    fn random_headers_keep_the_bounds() {
        const PIECES: &[&str] = &[
            "bytes=",
            "bytes=",
            "0",
            "1",
            "9",
            "99",
            "-",
            "-",
            ",",
            ",",
            " ",
            "=",
            "x",
            "18446744073709551615",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut seen = [0usize; 3];
        for _ in 0..200_000 {
            let mut value = String::new();
            for _ in 0..(next() % 12) {
                value.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let len = next() % 200;
            match parse(value.as_bytes(), len) {
                Ranges::Whole => seen[0] += 1,
                Ranges::Unsatisfiable => seen[1] += 1,
                Ranges::Parts(parts) => {
                    seen[2] += 1;
                    assert!(!parts.is_empty() && parts.len() <= MAX_RANGES, "{value}");
                    let mut total = 0;
                    for part in &parts {
                        assert!(part.start < part.end && part.end <= len, "{value} {len}");
                        total += part.end - part.start;
                    }
                    assert!(total <= len && !overlapping(&parts), "{value}");
                }
            }
        }
        assert!(
            seen.iter().all(|n| *n > 100),
            "every outcome reached: {seen:?}"
        );
    }
}
