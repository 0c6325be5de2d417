//! The control codec's invariants ([`crate::protocol`]) checked on arbitrary bytes, by
//! panicking. One checker for the `cargo fuzz` target in `shared/fuzz/` and the stable test
//! `tests/codec_fuzz.rs`, so CI, which has no nightly toolchain, checks the same properties.

use bytes::BytesMut;

use crate::protocol::{
    decode, encode, CodecError, ExecutorTask, FleetStatus, InFlightRequest, Message, QueryKind,
    ReplacedStatus, RespawnStatus, Role, SlotSocket, WorkerReport, WorkerStatus, MAX_FRAME,
};

/// Feeds `data` to [`decode`] as a peer could deliver it (all at once, and in chunks cut at
/// points derived from the data), decoding until `Ok(None)` or an error after each
/// delivery, and panics if the codec breaks one of its invariants:
///
/// 1. `decode` does not panic;
/// 2. `Ok(None)` leaves the buffer untouched, and comes only while the frame is incomplete;
/// 3. a header announcing more than [`MAX_FRAME`] bytes is refused as
///    [`CodecError::Oversized`] as soon as it arrives, so an oversized body is never
///    buffered;
/// 4. other errors come only once the whole frame is there;
/// 5. a decoded message takes exactly its frame off the buffer, and re-encodes to a frame
///    that decodes to an equal message;
/// 6. the chunked delivery yields the same messages and error as the whole one.
///
/// Each run stops at the first error, as a peer closes the connection then.
pub fn exercise(data: &[u8]) {
    let whole = decode_stream(data, &[data.len()]);
    for outcome in &whole {
        if let Outcome::Message(message) = outcome {
            assert_round_trip(message);
        }
    }
    let chunked = decode_stream(data, &cut_points(data));
    assert_eq!(whole, chunked, "chunked decoding differs from whole");
}

/// One result of [`decode`], comparable between two runs.
#[derive(Debug, PartialEq)]
enum Outcome {
    Message(Message),
    Error(String),
}

/// Delivers `data` up to each of `cuts` (ascending, the last one `data.len()`), decoding
/// after each delivery until `Ok(None)`; stops at the first error.
fn decode_stream(data: &[u8], cuts: &[usize]) -> Vec<Outcome> {
    let mut buf = BytesMut::new();
    let mut outcomes = Vec::new();
    let mut fed = 0;
    for &cut in cuts {
        buf.extend_from_slice(&data[fed..cut]);
        fed = cut;
        loop {
            // `buf` holds the unconsumed tail of what was fed: `decode_checked` asserts it.
            let pending = &data[fed - buf.len()..fed];
            match decode_checked(&mut buf, pending) {
                Ok(Some(message)) => outcomes.push(Outcome::Message(message)),
                Ok(None) => break,
                Err(error) => {
                    outcomes.push(Outcome::Error(error.to_string()));
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

/// Calls [`decode`] on `buf`, which holds `pending`, and checks the result against the
/// length that the frame's header announces.
fn decode_checked(buf: &mut BytesMut, pending: &[u8]) -> Result<Option<Message>, CodecError> {
    let result = decode(buf);
    let Some(header) = pending.first_chunk::<4>() else {
        assert!(
            matches!(result, Ok(None)) && buf[..] == *pending,
            "{} bytes, less than a header, gave {result:?}",
            pending.len()
        );
        return result;
    };
    let len = u32::from_be_bytes(*header) as usize;
    let complete = len <= MAX_FRAME && pending.len() - 4 >= len;
    match &result {
        Ok(None) => {
            assert!(len <= MAX_FRAME, "waits for the body of a {len}-byte frame");
            assert!(!complete, "Ok(None) on a complete {len}-byte frame");
            assert!(buf[..] == *pending, "Ok(None) changed the buffer");
        }
        Ok(Some(message)) => {
            assert!(
                complete && buf[..] == pending[4 + len..],
                "decoding {} did not take exactly its {len}-byte frame",
                message.kind()
            );
        }
        Err(CodecError::Oversized(announced)) => assert!(
            *announced == len && len > MAX_FRAME,
            "Oversized({announced}) on a {len}-byte frame"
        ),
        Err(error) => assert!(complete, "{error} before the {len}-byte frame arrived"),
    }
    result
}

/// Panics unless `message` re-encodes to exactly one frame that decodes to an equal message.
fn assert_round_trip(message: &Message) {
    let mut frame = BytesMut::new();
    encode(message, &mut frame);
    match decode(&mut frame) {
        Ok(Some(again)) if again == *message && frame.is_empty() => {}
        again => panic!("{message:?} re-encodes to a frame that decodes to {again:?}"),
    }
}

/// Where the chunked delivery cuts `data`: each byte in turn gives the length of the next
/// chunk (1 to 64 bytes), so the fuzzer steers where frames are split.
fn cut_points(data: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = data
        .iter()
        .scan(0, |at, &byte| {
            *at += 1 + usize::from(byte % 64);
            Some(*at)
        })
        .take_while(|&at| at < data.len())
        .collect();
    cuts.push(data.len());
    cuts
}

/// Every message kind, with fields set to values that survive a round trip.
pub fn samples() -> Vec<Message> {
    let report = WorkerReport {
        slot: 1,
        pid: 2,
        front: true,
        requests: vec![InFlightRequest {
            id: 1,
            request_id: "0123456789abcdef".into(),
            external_id: Some("ext-1".into()),
            method: "GET".into(),
            path: "/x?é".into(),
            client: "127.0.0.1:5".into(),
            protocol: "http/1.1".into(),
            age: 0.5,
            stuck: Some("warning".into()),
        }],
        total: 3,
        executor: vec![ExecutorTask {
            pool: "process".into(),
            function: "app.render".into(),
            state: "queued".into(),
            request_id: Some("0123456789abcdef".into()),
            age: 1.25,
        }],
        stacks: Some("Thread 0x1\n  \"quoted\"".into()),
        metrics: Some("# TYPE genro_asgi_up gauge\ngenro_asgi_up 1\n".into()),
        error: None,
    };
    vec![
        Message::Critical {
            event: serde_json::json!({"event": "app_exception", "path": "/x", "n": 1.5}),
        },
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
            rss: 64 << 20,
        },
        Message::Retire { max_requests: 200 },
        Message::Drain,
        Message::GoingAway,
        Message::Status,
        Message::Reload,
        Message::Stop,
        Message::Scale { workers: 3 },
        Message::Configure {
            config: "{\"server\": {}}".into(),
        },
        Message::Slots {
            slots: vec![SlotSocket {
                slot: 0,
                path: "/run/genro-asgi/slot-0.sock".into(),
            }],
        },
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
                    rss: 40 << 20,
                }],
                respawning: vec![RespawnStatus {
                    slot: 1,
                    front: false,
                    respawn_in: 0.5,
                    failures: 4,
                    crash_loop: true,
                }],
                front: Some(WorkerStatus {
                    slot: 0,
                    pid: 3,
                    generation: 2,
                    state: "ready".into(),
                    uptime: 0.5,
                    served: 7,
                    in_flight: 0,
                    loop_lag_ms: 0.0,
                    rss: 0,
                }),
                replaced: vec![ReplacedStatus {
                    slot: Some(0),
                    pid: 9,
                    reason: "max_requests 200 reached".into(),
                    ago: 3.5,
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
