//! Watches a connection's socket writes, so the connection's driver knows when the client
//! stopped taking bytes (`[limits] send_timeout`) and when the last response bytes left
//! (the keep-alive idle clock starts there, not when hyper took the last piece).

use crate::budget::now_ms;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the driver reads about a connection's writes.
#[derive(Debug)]
pub struct IoWatch {
    /// `now_ms() + 1` when a write first found the socket full since the last write that
    /// went through; 0 while writes go through.
    blocked_since: AtomicU64,
    /// When bytes were last written ([`now_ms`] time).
    last_write_ms: AtomicU64,
}

impl Default for IoWatch {
    fn default() -> Self {
        IoWatch {
            blocked_since: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(now_ms()),
        }
    }
}

impl IoWatch {
    /// Since when the socket has taken no bytes while the server had some to write
    /// ([`now_ms`] time), if it is so now.
    pub fn blocked_since(&self) -> Option<u64> {
        match self.blocked_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(since - 1),
        }
    }

    /// When bytes were last written ([`now_ms`] time).
    pub fn last_write_ms(&self) -> u64 {
        self.last_write_ms.load(Ordering::Relaxed)
    }

    fn wrote(&self) {
        self.last_write_ms.store(now_ms(), Ordering::Relaxed);
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }

    fn blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            self.blocked_since.store(now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn track<T>(
        &self,
        polled: Poll<std::io::Result<T>>,
        wrote: impl Fn(&T) -> bool,
    ) -> Poll<std::io::Result<T>> {
        match &polled {
            Poll::Pending => self.blocked(),
            Poll::Ready(Ok(value)) if wrote(value) => self.wrote(),
            Poll::Ready(_) => {}
        }
        polled
    }
}

/// A socket whose writes are reported to an [`IoWatch`].
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    watch: Arc<IoWatch>,
}

impl<T> Watched<T> {
    /// Wraps `io`.
    pub fn new(io: T, watch: Arc<IoWatch>) -> Self {
        Watched { io, watch }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch.track(polled, |n| *n != 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch.track(polled, |n| *n != 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch.track(polled, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
