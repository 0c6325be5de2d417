//! The worker's header-handling fuzz invariants ([`exercise`]) on the stable toolchain,
//! for CI: over the HTTP/1.1 request corpus (`tests/corpus/*.http`, the seeds of the
//! `cargo fuzz` target in `worker/fuzz/`), and over a fixed pseudo-random set of mutations
//! of those requests.

use std::panic::catch_unwind;
use std::path::Path;

use genro_worker::header_check::exercise;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "http"))
        .map(|path| {
            let data = std::fs::read(&path).expect("readable seed");
            (path.display().to_string(), data)
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 60,
        "only {} seeds in {}",
        seeds.len(),
        dir.display()
    );
    seeds
}

#[test]
fn request_corpus() {
    for (name, data) in seeds() {
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("seed {name} fails");
        }
    }
}

#[test]
fn mutated_requests() {
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|(_, data)| data).collect();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    // HEADER_FUZZ_CASES=N runs a longer campaign by hand; CI runs the default.
    let cases = std::env::var("HEADER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000);
    for case in 0..cases {
        let mut data = rng.pick(&seeds);
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut data);
        }
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("case {case} fails: b\"{}\"", data.escape_ascii());
        }
    }
}

/// Changes `data` in ways that keep it close to a request head: single bytes from the
/// HTTP grammar's delimiters, and tokens that reach the Host, target and forwarding rules.
fn mutate(rng: &mut XorShift, data: &mut Vec<u8>) {
    const BYTES: &[u8] = b"\r\n:; \t,=\"@[]%/*?#\x00\x01\x7f\x80\xff0f";
    const TOKENS: &[&str] = &[
        "\r\n",
        "Host: ",
        "Host: a.example\r\n",
        "host:",
        "http://",
        "https://u@",
        "ftp://",
        "*",
        "CONNECT ",
        "OPTIONS ",
        " HTTP/1.0",
        " HTTP/1.1",
        ":65535",
        ":65536",
        ":99999999999",
        "[::1]",
        "[v1.x]",
        "[2001:db8::1",
        "%zz",
        "%41",
        "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n",
        "X-Forwarded-For: [2001:db8::7]:80\r\n",
        "X-Forwarded-Proto: https\r\n",
        "Forwarded: for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.3\r\n",
        "Forwarded: for=unknown;by=_hidden\r\n",
        "for=",
        "proto=",
        "Referer: ",
        "User-Agent: \"\\\x1b[31m\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\n",
    ];
    let at = rng.below(data.len() + 1);
    match rng.below(6) {
        0 if at < data.len() => data[at] ^= 1 << rng.below(8),
        1 if at < data.len() => data[at] = rng.pick(BYTES),
        2 if at < data.len() => {
            data.remove(at);
        }
        3 => {
            // A whole line, duplicated (several Host fields, several forwarding lists).
            let start = data[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let end = data[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| at + i + 1);
            let line = data[start..end].to_vec();
            data.splice(end..end, line);
        }
        _ => {
            data.splice(at..at, rng.pick(TOKENS).bytes());
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
