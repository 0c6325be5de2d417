//! The control codec's fuzz invariants ([`exercise`]) on the stable toolchain, for CI: over
//! the seed corpus of the `cargo fuzz` target (`fuzz/corpus/codec/seed-*`), and over a
//! fixed pseudo-random set of mutations of valid frames.

use std::panic::catch_unwind;
use std::path::Path;

use bytes::BytesMut;
use genro_shared::codec_check::{exercise, samples};
use genro_shared::protocol::{encode, MAX_FRAME};

#[test]
fn seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/codec");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 5,
        "only {} seeds in {}",
        seeds.len(),
        dir.display()
    );
    for seed in seeds {
        let data = std::fs::read(&seed).expect("readable seed");
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("seed {} fails", seed.display());
        }
    }
}

#[test]
fn mutated_frames() {
    let bodies: Vec<Vec<u8>> = samples()
        .iter()
        .map(|message| {
            let mut frame = BytesMut::new();
            encode(message, &mut frame);
            frame[4..].to_vec()
        })
        .collect();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for case in 0..40_000 {
        let data = mutated_stream(&mut rng, &bodies);
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("case {case} fails: b\"{}\"", data.escape_ascii());
        }
    }
}

/// One to three frames of the sample messages, each body possibly mutated and its header
/// possibly wrong, the whole possibly cut short.
fn mutated_stream(rng: &mut XorShift, bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let mut body = rng.pick(bodies);
        for _ in 0..rng.below(4) {
            mutate(rng, &mut body);
        }
        let len = match rng.below(16) {
            0 => rng.pick(&[0, MAX_FRAME, MAX_FRAME + 1, u32::MAX as usize]) as u32,
            1 => body.len().saturating_sub(rng.below(4)) as u32,
            2 => (body.len() + rng.below(4)) as u32,
            _ => body.len() as u32,
        };
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(&body);
    }
    if rng.below(4) == 0 {
        data.truncate(rng.below(data.len() + 1));
    }
    data
}

/// Changes `body` in one of the ways that keep it close to JSON, so most mutants still get
/// past the parser to the message types and the round trip.
fn mutate(rng: &mut XorShift, body: &mut Vec<u8>) {
    const BYTES: &[u8] = b"0019-.e+E\"\\{}[],: ntfu\x00\x7f\xc3\xff";
    const TOKENS: &[&str] = &[
        "0",
        "-0",
        "-1",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "1e308",
        "1e309",
        "5e-324",
        "1.7976931348623157e308",
        "0.1",
        "2.2250738585072014e-308",
        "123456789.12345678",
        "null",
        "true",
        "\"\"",
        "\"\\ud800\"",
        "\"\\u00e9\"",
        "[]",
        "{}",
        "\"type\":\"ready\",",
        "\"v\":1,",
        "\"v\":2,",
    ];
    let at = rng.below(body.len() + 1);
    match rng.below(5) {
        0 if at < body.len() => body[at] ^= 1 << rng.below(8),
        1 if at < body.len() => body[at] = rng.pick(BYTES),
        2 if at < body.len() => {
            body.remove(at);
        }
        3 => {
            body.splice(at..at, rng.pick(TOKENS).bytes());
        }
        _ => {
            // Replace the number or word at `at` with a token.
            let end = (at..body.len())
                .find(|&i| !body[i].is_ascii_alphanumeric() && !b"-+.".contains(&body[i]))
                .unwrap_or(body.len());
            body.splice(at..end, rng.pick(TOKENS).bytes());
        }
    }
}

/// Marsaglia's xorshift64: a fixed, dependency-free stream of cases.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}
