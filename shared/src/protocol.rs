//! The control protocol between the supervisor, its children and `genro-asgi ctl`.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one JSON object
//! carrying the protocol version in `"v"` and the message kind in `"type"`. The codec is
//! sans-IO ([`decode`] / [`encode`]); [`read_frame`] and [`write_frame`] are thin async
//! wrappers used by every peer.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version written in every frame; a peer speaking another version is refused.
pub const VERSION: u32 = 1;
/// Largest frame body accepted (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Which kind of process a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A worker serving HTTP.
    Worker,
    /// An administrator (`genro-asgi ctl`).
    Admin,
    /// The HTTP/3 front.
    Front,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First message of a child: who it is.
    Hello {
        /// Peer role.
        role: Role,
        /// Worker slot (0-based).
        slot: u32,
        /// Process id.
        pid: u32,
        /// Generation of the slot this process belongs to.
        generation: u64,
    },
    /// The worker imported the app, finished lifespan startup and accepts connections.
    Ready,
    /// Periodic report of a worker (every second, from its Rust side, so it keeps coming
    /// while the Python loop is blocked: the loop's health is in the fields).
    Heartbeat {
        /// Requests in flight.
        in_flight: u64,
        /// Requests served since start.
        served: u64,
        /// Worst lateness of the Python loop's ticker since the last heartbeat, in ms.
        #[serde(default)]
        loop_lag_ms: f64,
        /// How long ago the Python loop last ran its ticker, in ms: grows while the loop
        /// is blocked.
        #[serde(default)]
        loop_stalled_ms: u64,
        /// Resident memory of the process, in bytes (0: unknown), for `max_rss`.
        #[serde(default)]
        rss: u64,
    },
    /// Worker to supervisor: it started its last request under `max_requests` (this
    /// limit, its jitter included) and is draining: start its successor.
    Retire {
        /// The limit it reached.
        max_requests: u64,
    },
    /// Supervisor to worker: stop accepting, finish in-flight work, exit. Admin to
    /// supervisor: do that for the whole fleet, then exit (like SIGTERM).
    Drain,
    /// Supervisor to worker: a stop began and the HTTP/3 front drains first, the workers
    /// serving it meanwhile. Start the `drain_grace` of WebSockets and event streams now
    /// (the front's WebSockets end only when their worker closes them), keep serving.
    GoingAway,
    /// Admin: the fleet's state.
    Status,
    /// Admin: re-read the configuration and replace every worker, one slot at a time.
    Reload,
    /// Admin: stop now (like a second SIGINT): workers are killed.
    Stop,
    /// Admin: grow or shrink the fleet.
    Scale {
        /// The new number of workers.
        workers: u32,
    },
    /// Supervisor to the HTTP/3 front: the worker slots' private Unix sockets (sent after
    /// its hello and whenever the slots change).
    Slots {
        /// Every active slot.
        slots: Vec<SlotSocket>,
    },
    /// Supervisor to the HTTP/3 front, on reload: the new effective configuration (JSON),
    /// for the TLS and QUIC settings of new connections.
    Configure {
        /// The configuration as JSON, like the [`crate::ENV_CONFIG`] environment value.
        config: String,
    },
    /// Worker to supervisor: a critical event for the `[errors] notify_webhook` (an app
    /// exception, a critical stuck request, a blocked loop), as a JSON object.
    Critical {
        /// The event.
        event: serde_json::Value,
    },
    /// Admin: the requests in flight in every worker.
    Requests,
    /// Admin: the Python stack of every thread of every worker.
    Stacks,
    /// Supervisor to worker: report something; the answer is an [`Message::Answer`] with
    /// the same `id`.
    Query {
        /// Correlates the answer.
        id: u64,
        /// What to report.
        what: QueryKind,
    },
    /// Worker to supervisor: the answer to a [`Message::Query`].
    Answer {
        /// The query's id.
        id: u64,
        /// The report.
        report: WorkerReport,
    },
    /// Answer to a `requests` or `stacks` request: one report per worker.
    WorkersReport {
        /// The workers, in slot order.
        workers: Vec<WorkerReport>,
    },
    /// Answer to a `status` request.
    StatusReport {
        /// The fleet.
        status: FleetStatus,
    },
    /// Success answer to an admin request.
    Done {
        /// What happened.
        message: String,
    },
    /// An error answer; the sender closes the connection after it.
    Error {
        /// What was wrong.
        message: String,
    },
}

impl Message {
    /// The message's `type` tag, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Ready => "ready",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Retire { .. } => "retire",
            Message::Drain => "drain",
            Message::GoingAway => "going_away",
            Message::Status => "status",
            Message::Reload => "reload",
            Message::Stop => "stop",
            Message::Scale { .. } => "scale",
            Message::Slots { .. } => "slots",
            Message::Configure { .. } => "configure",
            Message::Critical { .. } => "critical",
            Message::Requests => "requests",
            Message::Stacks => "stacks",
            Message::Query { .. } => "query",
            Message::Answer { .. } => "answer",
            Message::WorkersReport { .. } => "workers_report",
            Message::StatusReport { .. } => "status_report",
            Message::Done { .. } => "done",
            Message::Error { .. } => "error",
        }
    }
}

/// A worker slot's private Unix socket, where the HTTP/3 front forwards requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSocket {
    /// Slot.
    pub slot: u32,
    /// Path of its Unix socket.
    pub path: String,
}

/// What a [`Message::Query`] asks a worker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// The requests in flight.
    Requests,
    /// The Python stacks of every thread.
    Stacks,
    /// The process's metrics, in the Prometheus text format.
    Metrics,
}

/// One worker's answer to a query, as relayed to `genro-asgi ctl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Slot (filled in by the supervisor).
    #[serde(default)]
    pub slot: u32,
    /// Process id (filled in by the supervisor).
    #[serde(default)]
    pub pid: u32,
    /// Requests in flight, oldest first (possibly cut to a maximum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<InFlightRequest>,
    /// How many requests were in flight in all (`requests` may list fewer).
    #[serde(default)]
    pub total: u64,
    /// Executor tasks pending (queued or running), oldest first (possibly cut to a
    /// maximum; with the requests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executor: Vec<ExecutorTask>,
    /// Python stack traces of every thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<String>,
    /// The report is the HTTP/3 front's (filled in by the supervisor).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub front: bool,
    /// Metrics in the Prometheus text format (answer to a metrics query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Why this worker has no report (did not answer in time, not connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One request in flight in a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlightRequest {
    /// Worker-local request number.
    pub id: u64,
    /// The request's id (its `X-Request-ID`).
    #[serde(default)]
    pub request_id: String,
    /// The client's own `X-Request-ID`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path (without the query string; cut to 256 bytes).
    pub path: String,
    /// Client address.
    pub client: String,
    /// `http1`, `http2`, `http3`, `websocket`.
    pub protocol: String,
    /// Seconds since the request started.
    pub age: f64,
    /// `warning` or `critical` once the watchdog found it stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

/// One task of a worker's executors (`genro_asgi.run_in_executor`), submitted and not
/// finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorTask {
    /// `thread` or `process`.
    pub pool: String,
    /// The function, `module.qualname`.
    pub function: String,
    /// `queued` or `running`.
    pub state: String,
    /// The request that submitted it (or started the task that did), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Seconds since it was submitted.
    pub age: f64,
}

/// The fleet as reported to `genro-asgi ctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// Supervisor pid.
    pub pid: u32,
    /// `starting`, `serving`, `stopping`.
    pub phase: String,
    /// A reload is in progress.
    pub reloading: bool,
    /// Seconds since the supervisor started.
    pub uptime: f64,
    /// Restarts of crashed or hung workers so far.
    pub restarts: u64,
    /// Every worker process, including replacements and retiring ones.
    pub workers: Vec<WorkerStatus>,
    /// Slots that are waiting to respawn a worker (backoff after failures).
    #[serde(default)]
    pub respawning: Vec<RespawnStatus>,
    /// The HTTP/3 front process, when `[http3]` is on and it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<WorkerStatus>,
    /// The latest replacements of workers (and the front), oldest first.
    #[serde(default)]
    pub replaced: Vec<ReplacedStatus>,
}

/// A worker (or the front) replaced, and why: `max_requests 200 reached`, `reload`,
/// `crash: exited with code 1`, `heartbeat timeout (none for 30s)`...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacedStatus {
    /// Its slot; `None`: the HTTP/3 front.
    pub slot: Option<u32>,
    /// The process replaced.
    pub pid: u32,
    /// Why.
    pub reason: String,
    /// Seconds ago.
    pub ago: f64,
}

/// A slot waiting to respawn its worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RespawnStatus {
    /// Slot (0 for the front).
    pub slot: u32,
    /// It is the HTTP/3 front that waits, not a slot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub front: bool,
    /// Seconds until the next attempt.
    pub respawn_in: f64,
    /// Failures in a row (reset once a worker stays up 10 s).
    pub failures: u32,
    /// The slot is crash-looping (several failures in a row).
    pub crash_loop: bool,
}

/// One worker in a [`FleetStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Slot.
    pub slot: u32,
    /// Process id.
    pub pid: u32,
    /// Generation within the slot.
    pub generation: u64,
    /// `starting`, `ready`, `draining`.
    pub state: String,
    /// Seconds since it started.
    pub uptime: f64,
    /// Requests started (as of its last heartbeat).
    pub served: u64,
    /// Requests in flight (as of its last heartbeat).
    pub in_flight: u64,
    /// Worst Python loop lag in the last heartbeat period, in ms.
    #[serde(default)]
    pub loop_lag_ms: f64,
    /// Resident memory (as of its last heartbeat), in bytes; 0: unknown.
    #[serde(default)]
    pub rss: u64,
}

/// Cuts `text` to at most `max` bytes (at a character boundary), marking the cut.
pub fn cut_text(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str("\n... (cut)\n");
}

#[derive(Serialize, Deserialize)]
struct Frame {
    v: u32,
    #[serde(flatten)]
    message: Message,
}

/// Why a frame could not be decoded. Each is answered with [`Message::Error`] and the
/// connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The announced length is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    /// The body is not a JSON object of a known message.
    #[error("malformed frame: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The frame is for another protocol version.
    #[error("unsupported protocol version {0} (this peer speaks {VERSION})")]
    Version(u64),
    /// Reading or writing the socket failed.
    #[error("control socket i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more bytes
/// are needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::Oversized(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    // Check the version before the message, so a newer peer gets a version error rather
    // than a confusing "unknown variant".
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(CodecError::Malformed)?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(CodecError::Version(v)),
        None => {
            return Err(CodecError::Malformed(serde::de::Error::custom(
                "missing protocol version \"v\"",
            )))
        }
    }
    let frame: Frame = serde_json::from_value(value).map_err(CodecError::Malformed)?;
    Ok(Some(frame.message))
}

/// Appends the frame of `message` to `buf`.
pub fn encode(message: &Message, buf: &mut BytesMut) {
    let frame = Frame {
        v: VERSION,
        message: message.clone(),
    };
    // Serializing these plain enums cannot fail: no maps with non-string keys. (Senders
    // keep floats finite: serde_json writes NaN as null, which would not decode.)
    let body = serde_json::to_vec(&frame).expect("control message serializes");
    buf.reserve(4 + body.len());
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
}

/// Reads the next message; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Message>, CodecError> {
    loop {
        if let Some(message) = decode(buf)? {
            return Ok(Some(message));
        }
        if reader.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(CodecError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// Writes one message.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), CodecError> {
    let mut buf = BytesMut::new();
    encode(message, &mut buf);
    if buf.len() - 4 > MAX_FRAME {
        // The peer would refuse it: report the sender's bug here instead.
        return Err(CodecError::Oversized(buf.len() - 4));
    }
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        buf
    }

    #[test]
    fn round_trip() {
        let messages = crate::codec_check::samples();
        let mut buf = BytesMut::new();
        for m in &messages {
            encode(m, &mut buf);
        }
        for m in &messages {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(m));
        }
        assert!(buf.is_empty());
        assert!(decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn oversized_messages_are_not_sent() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let big = Message::Done {
            message: "x".repeat(MAX_FRAME),
        };
        let mut sink = Vec::new();
        let err = rt.block_on(write_frame(&mut sink, &big)).unwrap_err();
        assert!(matches!(err, CodecError::Oversized(n) if n > MAX_FRAME));
        assert!(sink.is_empty(), "nothing written");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        encode(&Message::Ready, &mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(decode(&mut part).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let table: &[(&str, BytesMut, &str)] = &[
            (
                "oversized",
                {
                    let mut b = BytesMut::new();
                    b.put_u32((MAX_FRAME + 1) as u32);
                    b
                },
                "over the",
            ),
            ("not json", framed(b"hello"), "malformed"),
            (
                "no version",
                framed(br#"{"type":"ready"}"#),
                "missing protocol version",
            ),
            (
                "other version",
                framed(br#"{"v":9,"type":"ready"}"#),
                "unsupported protocol version 9",
            ),
            (
                "unknown type",
                framed(br#"{"v":1,"type":"explode"}"#),
                "malformed",
            ),
            ("not an object", framed(b"[1,2]"), "malformed"),
            (
                "bad field",
                framed(
                    br#"{"v":1,"type":"hello","role":"worker","slot":"x","pid":1,"generation":1}"#,
                ),
                "malformed",
            ),
        ];
        for (name, buf, want) in table {
            let mut buf = buf.clone();
            let err = decode(&mut buf).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }
}
