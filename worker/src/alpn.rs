//! ALPN decides the protocol of a TLS connection (RFC 9113 3.3, RFC 7301), not the bytes
//! the client sends first.
//!
//! hyper-util's auto builder picks HTTP/1.1 or HTTP/2 by peeking for the HTTP/2 preface,
//! and ignores `http1_only`/`http2_only` when serving with upgrades (which WebSockets
//! need). So [`gate`] reads the start of the connection itself, before the server sees
//! it: on an `h2` connection anything but the preface ends the connection with SETTINGS
//! and GOAWAY(PROTOCOL_ERROR) (RFC 9113 3.4); on an `http/1.1` connection, or one with
//! no ALPN, the preface is answered with an HTTP/1.1 400 instead of being served as
//! HTTP/2. What was read is handed back in front of the stream ([`Rewind`]), so the
//! auto builder's own detection then agrees with ALPN. Cleartext ports are not gated.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (the server preface), then GOAWAY(last stream 0,
/// PROTOCOL_ERROR).
const GOAWAY_PROTOCOL_ERROR: &[u8] = &[
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// The answer to an HTTP/2 preface on a connection that negotiated HTTP/1.1.
const HTTP11_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 26\r\nconnection: close\r\n\r\nHTTP/2 was not negotiated\n";

/// The protocol a TLS connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// ALPN `h2`.
    Http2,
    /// ALPN `http/1.1`, or no ALPN at all: a TLS client that wants HTTP/2 must say so.
    Http11,
}

impl Negotiated {
    /// From the ALPN protocol the handshake selected.
    pub fn of(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Negotiated::Http2,
            _ => Negotiated::Http11,
        }
    }
}

/// How [`gate`] ended when it did not hand the connection on.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// An `h2` connection did not start with the preface (answered with GOAWAY).
    #[error("ALPN h2 connection without the HTTP/2 preface")]
    BadPreface,
    /// An HTTP/1.1 connection started with the HTTP/2 preface (answered with 400).
    #[error("HTTP/2 preface on a connection that negotiated HTTP/1.1")]
    UnexpectedPreface,
    /// The client closed, or the socket failed, before its first bytes decided anything.
    #[error("connection ended before its first request: {0}")]
    Io(#[from] io::Error),
}

/// Reads the start of a TLS connection and checks it against what ALPN negotiated;
/// returns the connection with those bytes put back, or why it was refused (the refusal
/// has been written and the stream shut down).
pub async fn gate<I>(mut io: I, negotiated: Negotiated) -> Result<Rewind<I>, Refused>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut start = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; 24];
    // Read until the preface is complete or the bytes stop matching it.
    while start.len() < PREFACE.len() && PREFACE.starts_with(&start) {
        let n = io.read(&mut buf[..PREFACE.len() - start.len()]).await?;
        if n == 0 {
            return Err(Refused::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        start.extend_from_slice(&buf[..n]);
    }
    let is_preface = start == PREFACE;
    match (negotiated, is_preface) {
        (Negotiated::Http2, false) => {
            let _ = io.write_all(GOAWAY_PROTOCOL_ERROR).await;
            let _ = io.shutdown().await;
            Err(Refused::BadPreface)
        }
        (Negotiated::Http11, true) => {
            let _ = io.write_all(HTTP11_REFUSAL).await;
            let _ = io.shutdown().await;
            Err(Refused::UnexpectedPreface)
        }
        _ => Ok(Rewind {
            start,
            at: 0,
            inner: io,
        }),
    }
}

/// A stream whose first bytes, already read by [`gate`], are read again.
#[derive(Debug)]
pub struct Rewind<I> {
    start: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.start.len() {
            let left = &this.start[this.at..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.at += n;
            if this.at == this.start.len() {
                this.start = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    async fn run(negotiated: Negotiated, sent: &[u8]) -> (Result<Vec<u8>, String>, Vec<u8>) {
        let (mut client, server) = duplex(4096);
        client.write_all(sent).await.unwrap();
        client.shutdown().await.unwrap();
        let outcome = match gate(server, negotiated).await {
            Ok(mut stream) => {
                let mut all = Vec::new();
                stream.read_to_end(&mut all).await.unwrap();
                Ok(all)
            }
            Err(e) => Err(e.to_string()),
        };
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        (outcome, reply)
    }

    #[tokio::test]
    async fn h2_needs_the_preface() {
        let mut h2 = PREFACE.to_vec();
        h2.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let (outcome, reply) = run(Negotiated::Http2, &h2).await;
        assert_eq!(outcome.unwrap(), h2, "the bytes read are handed back");
        assert!(reply.is_empty());
        let (outcome, reply) = run(Negotiated::Http2, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(outcome.is_err());
        assert_eq!(reply, GOAWAY_PROTOCOL_ERROR);
        // One wrong byte late in the preface is enough.
        let (outcome, _) = run(Negotiated::Http2, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r!").await;
        assert!(outcome.is_err());
    }

    #[tokio::test]
    async fn http11_refuses_the_preface() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (outcome, reply) = run(Negotiated::Http11, request).await;
        assert_eq!(outcome.unwrap(), request);
        assert!(reply.is_empty());
        // Shorter than the preface, and diverging at once: handed on untouched.
        let (outcome, _) = run(Negotiated::Http11, b"P").await;
        assert!(outcome.is_err(), "EOF inside a possible preface");
        let (outcome, reply) = run(Negotiated::Http11, PREFACE).await;
        assert!(outcome.is_err());
        assert!(reply.starts_with(b"HTTP/1.1 400 "));
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
