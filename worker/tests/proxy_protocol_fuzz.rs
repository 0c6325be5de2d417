//! The PROXY protocol parser's fuzz invariants ([`exercise`], [`round_trip`]) on the
//! stable toolchain, for CI: random bytes, mutations of valid headers of every kind (the
//! seeds of the `cargo fuzz` target in `worker/fuzz/`), and random headers encoded and
//! parsed back. `PROXY_FUZZ_CASES=N` runs a longer campaign by hand.

use std::panic::catch_unwind;

use genro_worker::proxy_protocol_check::{exercise, round_trip};

fn cases() -> usize {
    std::env::var("PROXY_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30_000)
}

/// Valid headers of every kind, each followed by a request's first bytes.
fn seeds() -> Vec<Vec<u8>> {
    let mut v2_tlvs = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x19".to_vec();
    v2_tlvs.extend([203, 0, 113, 9, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    v2_tlvs.extend(b"\x01\x00\x02h2\xea\x00\x05vpce1");
    let mut v2_tcp6 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2_tcp6.extend([0x20, 1, 0x0d, 0xb8].iter().chain(&[0; 12]));
    v2_tcp6.extend([0; 15].iter().chain(&[1, 0x12, 0x34, 0x00, 0x50]));
    let mut v2_unix = b"\r\n\r\n\0\r\nQUIT\n\x21\x31\x00\xd8".to_vec();
    v2_unix.extend([0u8; 216]);
    let seeds = [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        v2_tlvs,
        v2_tcp6,
        v2_unix,
        b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(),
        b"\r\n\r\n\0\r\nQUIT\n\x21\x00\x00\x03\x04\x00\x00".to_vec(),
    ];
    seeds
        .into_iter()
        .map(|mut s| {
            s.extend(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            s
        })
        .collect()
}

#[test]
fn seeds_parse_and_hold_the_invariants() {
    for seed in seeds() {
        exercise(&seed);
    }
}

#[test]
fn random_bytes() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for case in 0..cases() {
        let len = rng.below(64);
        // Random bytes rarely begin with a signature: give half of them one.
        let mut data: Vec<u8> = match rng.below(3) {
            0 => b"PROXY ".to_vec(),
            1 => b"\r\n\r\n\0\r\nQUIT\n".to_vec(),
            _ => Vec::new(),
        };
        data.extend((0..len).map(|_| rng.next() as u8));
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("case {case} fails: b\"{}\"", data.escape_ascii());
        }
    }
}

#[test]
fn mutated_headers() {
    let seeds = seeds();
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    for case in 0..cases() {
        let mut data = rng.pick(&seeds);
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut data);
        }
        if catch_unwind(|| exercise(&data)).is_err() {
            panic!("case {case} fails: b\"{}\"", data.escape_ascii());
        }
    }
}

#[test]
fn random_headers_round_trip() {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for case in 0..cases() {
        let len = rng.below(600);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if catch_unwind(|| round_trip(&data)).is_err() {
            panic!("case {case} fails: b\"{}\"", data.escape_ascii());
        }
    }
}

/// Changes `data` near the header's grammar: its delimiters, digits, family bytes and
/// lengths.
fn mutate(rng: &mut XorShift, data: &mut Vec<u8>) {
    const BYTES: &[u8] = b"\r\n :.0159f\x00\x01\x11\x12\x20\x21\x22\x31\x7f\x80\xff";
    const TOKENS: &[&str] = &[
        "\r\n",
        "PROXY ",
        "TCP4",
        "TCP6",
        "UNKNOWN",
        " 65535",
        " 65536",
        " 0",
        " 00",
        "::",
        "255.255.255.255",
        "\r\n\r\n\0\r\nQUIT\n",
    ];
    let at = rng.below(data.len() + 1);
    match rng.below(6) {
        0 if at < data.len() => data[at] ^= 1 << rng.below(8),
        1 if at < data.len() => data[at] = rng.pick(BYTES),
        2 if at < data.len() => {
            data.remove(at);
        }
        3 => data.truncate(at),
        4 if data.len() > 15 => {
            // A v2 length field, rewritten.
            let len = rng.next() as u16 % 0x1100;
            data[14..16].copy_from_slice(&len.to_be_bytes());
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
