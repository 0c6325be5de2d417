//! The control codec's fuzz invariants ([`exercise`]) on the stable toolchain, for CI: over
//! the seed corpus of the `cargo fuzz` target (`fuzz/corpus/codec/seed-*`), and over a
//! fixed pseudo-random set of mutations of valid frames.

use std::panic::catch_unwind;
use std::path::Path;

use bytes::BytesMut;
use genro_shared::codec_check::exercise;
use genro_shared::protocol::{
    encode, FleetStatus, InFlightRequest, Message, QueryKind, RespawnStatus, Role, WorkerReport,
    WorkerStatus, MAX_FRAME,
};

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
    let bodies: Vec<Vec<u8>> = sample_messages()
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

/// Every message kind, with fields set to values that survive a round trip.
fn sample_messages() -> Vec<Message> {
    let report = WorkerReport {
        slot: 1,
        pid: 2,
        requests: vec![InFlightRequest {
            id: 1,
            method: "GET".into(),
            path: "/x?é".into(),
            client: "127.0.0.1:5".into(),
            protocol: "http/1.1".into(),
            age: 0.5,
        }],
        total: 3,
        stacks: Some("Thread 0x1\n  \"quoted\"".into()),
        error: None,
    };
    vec![
        Message::Hello {
            role: Role::Admin,
            slot: 2,
            pid: 42,
            generation: 7,
        },
        Message::Ready,
        Message::Heartbeat {
            in_flight: 3,
            served: 9,
            loop_lag_ms: 1.5,
            loop_stalled_ms: 200,
        },
        Message::Drain,
        Message::Status,
        Message::Reload,
        Message::Stop,
        Message::Scale { workers: 3 },
        Message::Requests,
        Message::Stacks,
        Message::Query {
            id: 4,
            what: QueryKind::Requests,
        },
        Message::Answer {
            id: 4,
            report: report.clone(),
        },
        Message::WorkersReport {
            workers: vec![
                report,
                WorkerReport {
                    error: Some("no answer".into()),
                    ..WorkerReport::default()
                },
            ],
        },
        Message::StatusReport {
            status: FleetStatus {
                pid: 1,
                phase: "serving".into(),
                reloading: false,
                uptime: 1.5,
                restarts: 0,
                workers: vec![WorkerStatus {
                    slot: 0,
                    pid: 2,
                    generation: 1,
                    state: "ready".into(),
                    uptime: 1.0,
                    served: 10,
                    in_flight: 1,
                    loop_lag_ms: 0.25,
                }],
                respawning: vec![RespawnStatus {
                    slot: 1,
                    respawn_in: 0.5,
                    failures: 4,
                    crash_loop: true,
                }],
            },
        },
        Message::Done {
            message: "ok".into(),
        },
        Message::Error {
            message: "x".into(),
        },
    ]
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
