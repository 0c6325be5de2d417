//! The pump of an accepted WebSocket: one tokio task that owns the socket, reads client
//! frames into the session's [`Queue`] while its bounds allow (issue 16), writes the app's
//! messages, pings idle clients and closes on drain.
//!
//! Control frames are answered by yawc, patched (third_party/patches) so that a client
//! that sends pings and does not read the pongs stops being read once
//! [`CONTROL_BACKLOG`] pongs wait: TCP flow control then holds it back.

use crate::metrics::{ErrorKind, Limit, Protocol};
use crate::state::Shared;
use crate::ws_queue::{Blocked, Inbound, Producer, Queue, ABNORMAL};
use bytes::Bytes;
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use yawc::close::CloseCode;
use yawc::{Frame, OpCode, WebSocketError};

/// Most pongs (and close echoes) waiting to be written before the pump stops reading from
/// the client. Small: each is at most 127 bytes, and a client that reads its pongs never
/// has more than a burst of them pending.
pub(crate) const CONTROL_BACKLOG: usize = 16;

/// `[websocket]`, as the request path uses it.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) options: yawc::Options,
    pub(crate) max_message_size: usize,
    /// `[websocket] max_queue` and `max_queue_bytes`.
    pub(crate) bounds: crate::ws_queue::Bounds,
    /// `[websocket] worker_queue_bytes`, shared by every session of the worker.
    pub(crate) budget: Arc<crate::ws_queue::WorkerBudget>,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) drain_grace: Duration,
    /// `[limits] send_timeout` (zero: none).
    pub(crate) send_timeout: Duration,
}

impl Settings {
    /// From the effective configuration.
    pub(crate) fn new(full: &genro_config::Config) -> Self {
        let config = &full.websocket;
        // Inclusive in the config, exclusive in yawc; one message in one frame or fragments.
        let max = usize::try_from(config.max_message_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        // Messages are reassembled and validated here ([`Assembler`]); yawc's frame layer
        // bounds each frame (also after decompression).
        let mut options = yawc::Options::default()
            .with_no_delay()
            .with_max_payload_read(max)
            .with_max_pending_control_frames(CONTROL_BACKLOG);
        if config.per_message_deflate {
            options = options.with_low_latency_compression();
        }
        Settings {
            max_message_size: max - 1,
            options,
            bounds: crate::ws_queue::Bounds {
                messages: config.max_queue.max(1),
                bytes: usize::try_from(config.max_queue_bytes).unwrap_or(usize::MAX),
            },
            budget: Arc::new(crate::ws_queue::WorkerBudget::new(
                usize::try_from(config.worker_queue_bytes).unwrap_or(usize::MAX),
            )),
            send_timeout: full.limits.send_timeout,
            ping_interval: config.ping_interval,
            ping_timeout: config.ping_timeout,
            // The default may exceed a short graceful_timeout; the drain must fit in it.
            drain_grace: config.drain_grace.min(full.server.graceful_timeout),
        }
    }
}

/// Keeps what must live as long as the connection: the worker's drain waits for it, and
/// the connection counts as busy for the idle timer.
pub(crate) type Hold = Box<dyn Send + Sync>;

/// An app message for the client.
pub(crate) enum Outbound {
    /// A data frame.
    Frame(Frame),
    /// `websocket.close` with its code and reason.
    Close(u16, String),
}

/// A message this big (after decompression) took a while to read: the pump yields to the
/// other tasks of its thread before reading the next one, so several connections sending
/// large deflated messages do not hold the I/O thread for a burst of them in a row.
const LARGE_MESSAGE: usize = 256 * 1024;

/// How long a closing side waits for the peer's close frame (or for a close frame to be
/// written) before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pump's ends of the session.
pub struct Link {
    /// Worker-wide state.
    pub shared: Arc<Shared>,
    /// The registry entry, marked busy while the app does not take client messages.
    pub id: Option<u64>,
    /// Client messages for the app; dropping it closes the queue.
    pub inbound: Producer,
    /// App messages for the client.
    pub outbound: mpsc::Receiver<Outbound>,
}

/// Counts an open WebSocket in the metrics while it lives.
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: Arc<Shared>) -> Self {
        if let Some(metrics) = &shared.metrics {
            metrics.connection_opened(Protocol::Websocket);
        }
        Open(shared)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(metrics) = &self.0.metrics {
            metrics.connection_closed(Protocol::Websocket);
        }
    }
}

/// The close code a protocol error ends the connection with (the one yawc sends).
fn error_code(err: &WebSocketError) -> u16 {
    match err {
        WebSocketError::FrameTooLarge => 1009,
        WebSocketError::InvalidUTF8 => 1007,
        WebSocketError::InvalidOpCode(_) => 1003,
        WebSocketError::ReservedBitsNotZero
        | WebSocketError::ControlFrameFragmented
        | WebSocketError::PingFrameTooLarge
        | WebSocketError::InvalidFragment
        | WebSocketError::InvalidCloseFrame
        | WebSocketError::InvalidCloseCode
        | WebSocketError::FragmentTimeout
        | WebSocketError::InvalidContinuationFrame
        | WebSocketError::CompressionNotSupported => 1002,
        WebSocketError::ConnectionClosed => ABNORMAL,
        _ => 1011,
    }
}

type Socket = yawc::streaming::Streaming<yawc::HttpStream>;

/// Runs one accepted WebSocket until it closes.
pub async fn pump(
    upgrade: yawc::UpgradeFut,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
    hold: Hold,
    link: Link,
) {
    let _hold = hold;
    let queue = link.inbound.0.clone();
    let mut ws = match upgrade.await {
        Ok(ws) => ws.into_streaming(),
        Err(err) => {
            tracing::debug!("WebSocket upgrade failed: {err}");
            queue.set_ending(ABNORMAL, "");
            return;
        }
    };
    let _open = Open::new(link.shared.clone());
    if let Some(id) = link.id {
        // Accepted: from now on only a stalled app counts as stuck.
        link.shared.registry.set_busy(id, false);
    }
    let mut pump = Pump {
        settings: &settings,
        shared: &link.shared,
        queue: &queue,
        id: link.id,
        hit: Hits::default(),
    };
    let (code, reason) = pump.serve(&mut ws, &mut stop, link.outbound).await;
    queue.set_ending(code, &reason);
    // Dropping the producer (with the socket) lets receive() report the disconnect.
    drop(link.inbound);
}

/// The bounds this connection ran into, each counted and logged once.
#[derive(Debug, Default)]
struct Hits {
    queue: bool,
    worker_queue: bool,
    control: bool,
    send_timeout: bool,
}

/// One connection's pump.
struct Pump<'a> {
    settings: &'a Settings,
    shared: &'a Arc<Shared>,
    queue: &'a Arc<Queue>,
    id: Option<u64>,
    hit: Hits,
}

impl Pump<'_> {
    /// Moves frames both ways until the connection ends; returns its close code and reason.
    async fn serve(
        &mut self,
        ws: &mut Socket,
        stop: &mut watch::Receiver<bool>,
        mut outbound: mpsc::Receiver<Outbound>,
    ) -> (u16, String) {
        let settings = self.settings;
        let metrics = self.shared.metrics.as_ref();
        let mut last_seen = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut drain_at: Option<Instant> = None;
        let mut assembler = Assembler::new(settings.max_message_size);
        // The app is not taking client messages (a bound is reached): the watchdog may
        // report it.
        let mut busy = false;
        let far = Duration::from_secs(86400 * 365);
        loop {
            let blocked = self.queue.blocked();
            match (blocked, busy) {
                (Some(why), false) => {
                    busy = true;
                    self.handle_blocked(why);
                    if let Some(id) = self.id {
                        self.shared.registry.set_busy(id, true);
                    }
                }
                (None, true) => {
                    busy = false;
                    // Frames (pongs too) were not read meanwhile: liveness starts anew.
                    last_seen = Instant::now();
                    ping_sent = None;
                    if let Some(id) = self.id {
                        self.shared.registry.set_busy(id, false);
                    }
                }
                _ => {}
            }
            let reading = blocked.is_none();
            let ping_at = if settings.ping_interval.is_zero() {
                Instant::now() + far
            } else {
                match ping_sent {
                    Some(sent) => sent + settings.ping_timeout,
                    None => last_seen + settings.ping_interval,
                }
            };
            let shared = self.shared;
            let control_hit = &mut self.hit.control;
            tokio::select! {
                out = outbound.recv() => match out {
                    Some(Outbound::Frame(frame)) => {
                        if !self.write(ws, frame).await {
                            return (ABNORMAL, String::new());
                        }
                        if let Some(m) = metrics {
                            m.websocket_message(false);
                        }
                    }
                    Some(Outbound::Close(code, reason)) => {
                        close(ws, code, &reason).await;
                        return (code, reason);
                    }
                    // The app ended without a close (finished() sends one; a cancelled or
                    // failed task may not have room): close normally.
                    None => {
                        close(ws, 1000, "").await;
                        return (1000, String::new());
                    }
                },
                _ = self.queue.room(), if !reading => {},
                frame = next_frame(ws, shared, control_hit), if reading => {
                    last_seen = Instant::now();
                    match frame {
                        Ok(frame) => match frame.opcode() {
                            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                                let (opcode, fin, payload) = frame.into_parts();
                                match assembler.push(opcode, fin, payload) {
                                    Ok(None) => {}
                                    Ok(Some(value)) => {
                                        if let Some(m) = metrics {
                                            m.websocket_message(true);
                                        }
                                        let large = value.size() >= LARGE_MESSAGE;
                                        self.queue.push(value);
                                        if large {
                                            // Inflating it took this thread a while: let the
                                            // other connections run before the next one.
                                            tokio::task::yield_now().await;
                                        }
                                    }
                                    Err((code, reason)) => {
                                        tracing::debug!("WebSocket failed: {reason}");
                                        self.shared.error(ErrorKind::Client);
                                        close(ws, code, reason).await;
                                        return (code, reason.to_owned());
                                    }
                                }
                            }
                            OpCode::Pong => ping_sent = None,
                            OpCode::Close => {
                                let code = frame.close_code().map_or(1005, u16::from);
                                let reason = frame.close_reason().ok().flatten().unwrap_or("").to_owned();
                                // The echo is queued; the next read flushes it.
                                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.next_frame()).await;
                                return (code, reason);
                            }
                            OpCode::Ping => {}
                        },
                        Err(err) => {
                            let code = error_code(&err);
                            tracing::debug!("WebSocket ended: {err}");
                            if code != ABNORMAL {
                                self.shared.error(ErrorKind::Client);
                                // yawc queued the close frame; a read flushes it.
                                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.next_frame()).await;
                            }
                            return (code, String::new());
                        }
                    }
                },
                _ = tokio::time::sleep_until(ping_at.into()), if !settings.ping_interval.is_zero() && reading => {
                    if ping_sent.is_some() {
                        tracing::debug!("WebSocket ping timeout");
                        close(ws, 1011, "keepalive ping timeout").await;
                        return (ABNORMAL, String::new());
                    }
                    ping_sent = Some(Instant::now());
                    if !self.write(ws, Frame::ping(Bytes::new())).await {
                        return (ABNORMAL, String::new());
                    }
                },
                _ = async { let _ = stop.wait_for(|s| *s).await; }, if drain_at.is_none() => {
                    drain_at = Some(Instant::now() + settings.drain_grace);
                },
                _ = tokio::time::sleep_until(drain_at.unwrap_or_else(|| Instant::now() + far).into()), if drain_at.is_some() => {
                    close(ws, 1001, "server shutting down").await;
                    return (1001, String::new());
                },
            }
        }
    }

    /// Reading from the client stops on `why`: counted and logged once per connection.
    fn handle_blocked(&mut self, why: Blocked) {
        let bounds = self.settings.bounds;
        match why {
            Blocked::Count | Blocked::Bytes => {
                if std::mem::replace(&mut self.hit.queue, true) {
                    return;
                }
                self.shared.limit(Limit::WebsocketQueue);
                tracing::info!(
                    "WebSocket: the app is slower than its client; reading paused at {} ([websocket] {})",
                    if why == Blocked::Count { format!("{} messages", bounds.messages) } else { format!("{} bytes", bounds.bytes) },
                    if why == Blocked::Count { "max_queue" } else { "max_queue_bytes" },
                );
            }
            Blocked::Worker => {
                if std::mem::replace(&mut self.hit.worker_queue, true) {
                    return;
                }
                self.shared.limit(Limit::WebsocketWorkerQueue);
                tracing::warn!(
                    "WebSocket: {} bytes of client messages wait for the apps of this worker ([websocket] worker_queue_bytes); reading paused",
                    self.settings.budget.used(),
                );
            }
        }
    }

    /// Writes a frame; false when the connection failed, or when the client took no bytes
    /// for `[limits] send_timeout` (then it is dropped).
    async fn write(&mut self, ws: &mut Socket, frame: Frame) -> bool {
        let timeout = self.settings.send_timeout;
        if timeout.is_zero() {
            return ws.send(frame).await.is_ok();
        }
        match tokio::time::timeout(timeout, ws.send(frame)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                if !std::mem::replace(&mut self.hit.send_timeout, true) {
                    self.shared.limit(Limit::SendTimeout);
                    tracing::info!(
                        "WebSocket client took no bytes for {:?} ([limits] send_timeout): disconnected",
                        timeout
                    );
                }
                false
            }
        }
    }
}

/// The next client frame. A read that waits for [`CONTROL_BACKLOG`] pongs to be written
/// (the client sends pings and does not read) counts the bound, once.
async fn next_frame(
    ws: &mut Socket,
    shared: &Shared,
    hit: &mut bool,
) -> Result<Frame, WebSocketError> {
    std::future::poll_fn(|cx| {
        let polled = ws.poll_next_frame(cx);
        if polled.is_pending() && !*hit && ws.is_control_backlogged() {
            *hit = true;
            shared.limit(Limit::WebsocketControl);
            tracing::info!(
                "WebSocket client sends pings and does not read the pongs: reading paused until they are written ({CONTROL_BACKLOG} pending)"
            );
        }
        polled
    })
    .await
}

/// Reassembles fragmented messages, bounds their size and validates text as it arrives
/// (an invalid UTF-8 sequence fails the connection at the fragment that holds it).
struct Assembler {
    max: usize,
    /// The message being reassembled: `Text` or `Binary`.
    kind: Option<OpCode>,
    buffer: bytes::BytesMut,
    /// Bytes of `buffer` known to be complete UTF-8 (text).
    valid: usize,
}

/// Why a message fails the connection: the close code and reason to send.
type Violation = (u16, &'static str);

impl Assembler {
    fn new(max: usize) -> Self {
        Assembler {
            max,
            kind: None,
            buffer: bytes::BytesMut::new(),
            valid: 0,
        }
    }

    /// Takes a data frame; returns a complete message when `fin`.
    fn push(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: Bytes,
    ) -> Result<Option<Inbound>, Violation> {
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.kind.is_some() {
                    return Err((1002, "new message inside a fragmented one"));
                }
                if fin {
                    // The common case: one frame, no copy.
                    if payload.len() > self.max {
                        return Err((1009, "message too big"));
                    }
                    if opcode == OpCode::Binary {
                        return Ok(Some(Inbound::Binary(payload)));
                    }
                    if std::str::from_utf8(&payload).is_err() {
                        return Err((1007, "invalid UTF-8 in a text message"));
                    }
                    return Ok(Some(Inbound::Text(payload)));
                }
                self.kind = Some(opcode);
                self.buffer.clear();
                self.valid = 0;
            }
            OpCode::Continuation if self.kind.is_none() => {
                return Err((1002, "continuation frame outside a fragmented message"));
            }
            _ => {}
        }
        if self.buffer.len() + payload.len() > self.max {
            return Err((1009, "message too big"));
        }
        self.buffer.extend_from_slice(&payload);
        if self.kind == Some(OpCode::Text) {
            match std::str::from_utf8(&self.buffer[self.valid..]) {
                Ok(_) => self.valid = self.buffer.len(),
                // A sequence cut at the fragment's end may complete in the next one.
                Err(e) if e.error_len().is_none() && !fin => self.valid += e.valid_up_to(),
                Err(_) => return Err((1007, "invalid UTF-8 in a text message")),
            }
        }
        if !fin {
            return Ok(None);
        }
        let data = self.buffer.split().freeze();
        Ok(Some(match self.kind.take() {
            Some(OpCode::Text) => Inbound::Text(data),
            _ => Inbound::Binary(data),
        }))
    }
}

/// Sends a close frame and waits (a bounded time) for the client's, then lets the socket
/// go (the server closes the TCP connection first, RFC 6455 7.1.1).
async fn close(ws: &mut Socket, code: u16, reason: &str) {
    let frame = Frame::close(CloseCode::from(code), reason.as_bytes());
    let wait = async {
        if ws.send(frame).await.is_err() {
            return;
        }
        // Data frames still arriving are dropped; the client's close frame ends the wait
        // (and is not echoed: this side already sent one).
        loop {
            match ws.next_frame().await {
                Ok(frame) if frame.opcode() == OpCode::Close => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_and_text_fails_fast() {
        let mut a = Assembler::new(10);
        let text = |s: &'static [u8]| Bytes::from_static(s);
        assert!(
            matches!(a.push(OpCode::Text, true, text(b"hi")), Ok(Some(Inbound::Text(t))) if t == "hi")
        );
        assert!(matches!(
            a.push(OpCode::Text, false, text(b"\xce")),
            Ok(None)
        ));
        assert!(
            matches!(a.push(OpCode::Continuation, true, text(b"\xba")), Ok(Some(Inbound::Text(t))) if t == "\u{3ba}".as_bytes())
        );
        // An invalid byte fails at once, before the message ends.
        assert_eq!(
            a.push(OpCode::Text, false, text(b"ok\xff")).err(),
            Some((1007, "invalid UTF-8 in a text message"))
        );
        let mut a = Assembler::new(10);
        assert_eq!(
            a.push(OpCode::Continuation, true, text(b"x"))
                .err()
                .map(|e| e.0),
            Some(1002)
        );
        assert!(matches!(
            a.push(OpCode::Binary, false, text(b"123456")),
            Ok(None)
        ));
        assert_eq!(
            a.push(OpCode::Text, true, text(b"x")).err().map(|e| e.0),
            Some(1002)
        );
        let mut a = Assembler::new(10);
        assert!(matches!(
            a.push(OpCode::Binary, false, text(b"123456")),
            Ok(None)
        ));
        assert_eq!(
            a.push(OpCode::Continuation, true, text(b"12345"))
                .err()
                .map(|e| e.0),
            Some(1009)
        );
        assert_eq!(
            Assembler::new(3)
                .push(OpCode::Binary, true, text(b"1234"))
                .err()
                .map(|e| e.0),
            Some(1009)
        );
    }
}
