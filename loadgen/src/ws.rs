//! `--protocol ws`: WebSocket echo load over HTTP/1.1 (`ws3`: over HTTP/3, RFC 9220, one
//! QUIC connection per connection). Each connection completes the RFC 6455 handshake (or
//! the extended CONNECT; no extensions offered), then sends a masked binary message of
//! `--body-size` bytes and reads the echo, until the stop condition. The report counts
//! round trips (messages echoed) and their latency.

use crate::args::{Plan, Protocol};
use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection's outcome.
#[derive(Debug, Default)]
struct Outcome {
    /// Round-trip times in microseconds.
    latencies: Vec<u32>,
    /// The error that ended it early, if any.
    error: Option<String>,
}

/// Runs the plan; returns the JSON report.
pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    let plan = Arc::new(plan);
    let started = Instant::now();
    let deadline = plan.stop.duration.map(|d| started + d);
    let remaining = Arc::new(AtomicU64::new(plan.stop.requests.unwrap_or(u64::MAX)));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..plan.connections {
        let (plan, remaining) = (plan.clone(), remaining.clone());
        tasks.spawn(async move {
            let mut outcome = Outcome::default();
            if let Err(err) = connection(&plan, index, deadline, &remaining, &mut outcome).await {
                outcome.error = Some(format!("{err:#}"));
            }
            outcome
        });
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.context("a connection task panicked")?;
        latencies.extend(outcome.latencies);
        errors.extend(outcome.error);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let at = ((latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(latencies[at]) / 1000.0
    };
    errors.truncate(5);
    Ok(json!({
        "protocol": if plan.protocol == Protocol::Ws3 { "ws3" } else { "ws" },
        "connections": plan.connections,
        "message_size": plan.body.len(),
        "messages": latencies.len(),
        "seconds": seconds,
        "rate": latencies.len() as f64 / seconds,
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99)},
        "failed_connections": errors.len(),
        "errors": errors,
    }))
}

async fn connection(
    plan: &Plan,
    index: usize,
    deadline: Option<Instant>,
    remaining: &AtomicU64,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::new();
    let mut link = match plan.protocol {
        Protocol::Ws3 => Link::H3(Box::new(open_h3(plan).await?)),
        _ => Link::Tcp(open_tcp(plan, &mut buf).await?),
    };
    let mask = (index as u32).wrapping_mul(0x9E37_79B9).to_be_bytes();
    let frame = masked_frame(&plan.body, mask);
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            break;
        }
        let sent = Instant::now();
        link.send(&frame).await?;
        let (head, len) = frame_header(&mut link, &mut buf).await?;
        if len != plan.body.len() {
            bail!("echo of {} bytes, sent {}", len, plan.body.len());
        }
        link.fill(&mut buf, head + len).await?;
        buf.advance(head + len);
        let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        outcome.latencies.push(micros);
    }
    // A normal close; the server's reply is not awaited.
    let close = masked_frame_op(0x8, &1000u16.to_be_bytes(), mask);
    let _ = tokio::time::timeout(Duration::from_secs(1), link.send(&close)).await;
    Ok(())
}

/// Where the frames go once the handshake is done.
enum Link {
    /// The TCP connection after the HTTP/1.1 Upgrade.
    Tcp(TcpStream),
    /// An HTTP/3 stream after an extended CONNECT (its QUIC connection kept open).
    H3(Box<H3Link>),
}

struct H3Link {
    send: crate::quic::SendHalf,
    recv: crate::quic::RecvHalf,
    _connection: crate::quic::Connection,
    _endpoint: crate::quic::Endpoint,
}

impl Link {
    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Link::Tcp(stream) => stream.write_all(bytes).await?,
            Link::H3(h3) => h3.send.send_data(Bytes::copy_from_slice(bytes)).await?,
        }
        Ok(())
    }

    /// Reads until `buf` holds at least `n` bytes.
    async fn fill(&mut self, buf: &mut BytesMut, n: usize) -> anyhow::Result<()> {
        while buf.len() < n {
            match self {
                Link::Tcp(stream) => {
                    if stream.read_buf(buf).await? == 0 {
                        bail!("the server closed the connection");
                    }
                }
                Link::H3(h3) => match h3.recv.recv_data().await? {
                    Some(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    None => bail!("the server ended the stream"),
                },
            }
        }
        Ok(())
    }
}

/// Connects and completes the RFC 6455 handshake (no extensions offered); bytes after
/// the response head stay in `buf`.
async fn open_tcp(plan: &Plan, buf: &mut BytesMut) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(&plan.target.authority)
        .await
        .with_context(|| format!("connecting to {}", plan.target.authority))?;
    stream.set_nodelay(true)?;
    // Any nonce will do for load; this is RFC 6455's example (16 bytes, base64).
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let handshake = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        plan.target.origin_form,
        plan.target.host.to_str().unwrap_or("localhost"),
    );
    stream.write_all(handshake.as_bytes()).await?;
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("handshake response too long");
        }
        if stream
            .read_buf(buf)
            .await
            .context("reading the handshake response")?
            == 0
        {
            bail!("the server closed the connection during the handshake");
        }
    };
    let head = buf.split_to(end);
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head);
        bail!("handshake refused: {}", line.lines().next().unwrap_or(""));
    }
    Ok(stream)
}

/// Connects over QUIC and opens a WebSocket with an extended CONNECT (RFC 9220).
async fn open_h3(plan: &Plan) -> anyhow::Result<H3Link> {
    let run = crate::drive::Run::new(plan.clone(), None)?;
    let mut endpoint = crate::quic::Endpoint::default();
    let connection = endpoint
        .connect(&run)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::CONNECT;
    *request.uri_mut() = plan.target.absolute.clone();
    request
        .extensions_mut()
        .insert(h3::ext::Protocol::WEBSOCKET);
    request.headers_mut().insert(
        "sec-websocket-version",
        http::HeaderValue::from_static("13"),
    );
    let mut stream = connection.sender().send_request(request).await?;
    let response = stream.recv_response().await?;
    if response.status() != http::StatusCode::OK {
        bail!("extended CONNECT refused: {}", response.status());
    }
    let (send, recv) = stream.split();
    Ok(H3Link {
        send,
        recv,
        _connection: connection,
        _endpoint: endpoint,
    })
}

fn masked_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked_frame_op(0x2, payload, mask)
}

fn masked_frame_op(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads a server frame header (unmasked binary, FIN) into `buf`; returns its size and
/// the payload length. A ping or any other frame is an error here (the echo app sends
/// only echoes).
async fn frame_header(link: &mut Link, buf: &mut BytesMut) -> anyhow::Result<(usize, usize)> {
    link.fill(buf, 2).await?;
    let (first, second) = (buf[0], buf[1]);
    if first != 0x82 {
        bail!("unexpected frame 0x{first:02x} (expected a final binary frame)");
    }
    if second & 0x80 != 0 {
        bail!("the server masked its frame");
    }
    Ok(match second & 0x7F {
        126 => {
            link.fill(buf, 4).await?;
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            link.fill(buf, 10).await?;
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            (10, usize::try_from(len)?)
        }
        n => (2, usize::from(n)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_the_right_length_encoding() {
        let mask = [1, 2, 3, 4];
        let small = masked_frame(b"abc", mask);
        assert_eq!(&small[..2], &[0x82, 0x83]);
        assert_eq!(&small[2..6], &mask);
        assert_eq!(small[6], b'a' ^ 1);
        let medium = masked_frame(&[0u8; 300], mask);
        assert_eq!(&medium[..4], &[0x82, 0xFE, 1, 44]);
        let large = masked_frame(&vec![0u8; 70_000], mask);
        assert_eq!(large[1], 0xFF);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
    }
}
