//! `103 Early Hints` (RFC 8297): where an ASGI app's `http.response.early_hint` goes.
//!
//! On HTTP/2 (the HTTP/3 front's requests too) hyper's stream sends it, as a HEADERS
//! frame ahead of the response's: the patched hyper in `third_party/hyper` hands each
//! request an `InformationalSender`.
//!
//! On HTTP/1.1 hyper has no server API for interim responses, so the hint is queued here
//! and written to the connection ahead of anything hyper writes next.
//!
//! The order is safe because of when hyper touches the socket. It reads a request's head
//! only once the previous response is fully encoded, and it calls the socket's `poll_flush`
//! only when its own buffer is empty. So a hint queued while hyper has written nothing
//! since its last flush comes before any byte of this request's response: it is written at
//! the next flush (the connection task is woken for it), or in front of hyper's next
//! write. A hint queued while hyper may still hold the previous response's bytes (a
//! pipelined request behind a slow reader) is dropped. Hints are advisory (RFC 8297 §2).
//!
//! This leans on hyper 1.x internals: its HTTP/1.1 `pipeline_flush` must stay off (with it
//! on, hyper skips the socket's flush while requests are buffered), and an upgrade of
//! hyper is checked by `tests/test_early_hints.py`, which matches each 103 to its own
//! response over keep-alive and pipelined requests.

use futures_util::task::AtomicWaker;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes of hints waiting on one HTTP/1.1 connection (an app's hint beyond it is
/// dropped).
const MAX_PENDING: usize = 64 * 1024;

/// Most bytes of links in one HTTP/2 hint: well inside the 16 KiB header list that
/// peers accept by default (the front's hyper client among them, which would otherwise
/// reset the stream and fail the response), with room for 64 fields' overhead.
const MAX_H2_HINT: usize = 8 * 1024;

/// Where one request's early hints go.
#[derive(Debug, Clone)]
pub(crate) enum EarlyHints {
    /// The HTTP/1.1 connection's queue.
    Http1(Arc<Hints>),
    /// hyper's HTTP/2 stream.
    Http2(hyper::ext::InformationalSender),
}

impl EarlyHints {
    /// Sends one `103 Early Hints` with these `Link` values; false when it was dropped
    /// (the response already started; on HTTP/1.1 too much is waiting, or hyper may
    /// still be writing the previous response; on HTTP/2 the links exceed 8 KiB, or the
    /// stream already sent 16).
    pub(crate) fn send(&self, links: &[http::HeaderValue]) -> bool {
        match self {
            EarlyHints::Http1(hints) => hints.early_hints(links),
            EarlyHints::Http2(stream) => {
                if links.iter().map(|link| link.len()).sum::<usize>() > MAX_H2_HINT {
                    return false;
                }
                let mut hint = http::Response::new(());
                *hint.status_mut() = http::StatusCode::EARLY_HINTS;
                let headers = hint.headers_mut();
                for link in links {
                    headers.append(http::header::LINK, link.clone());
                }
                stream.send(hint).is_ok()
            }
        }
    }
}

/// A connection's queue of interim responses, shared by its socket and its requests.
#[derive(Debug, Default)]
pub(crate) struct Hints {
    /// Hyper wrote since the socket was last flushed with its buffer empty.
    dirty: AtomicBool,
    /// `pending` holds bytes.
    queued: AtomicBool,
    /// Bytes to write before hyper's next ones.
    pending: Mutex<Vec<u8>>,
    /// The connection's task, woken to write a hint.
    waker: AtomicWaker,
}

impl Hints {
    /// Queues one `103 Early Hints` with these `Link` values; false when it was dropped
    /// (hyper may still be writing the previous response, or too much is waiting).
    pub(crate) fn early_hints(&self, links: &[http::HeaderValue]) -> bool {
        let mut head = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
        for link in links {
            head.extend_from_slice(b"link: ");
            head.extend_from_slice(link.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let mut pending = genro_shared::sync::lock(&self.pending);
        // SeqCst with `dirty` in `poll_write`: one of the two sees the other.
        self.queued.store(true, Ordering::SeqCst);
        if self.dirty.load(Ordering::SeqCst) || pending.len() + head.len() > MAX_PENDING {
            if pending.is_empty() {
                self.queued.store(false, Ordering::SeqCst);
            }
            return false;
        }
        pending.extend_from_slice(&head);
        drop(pending);
        self.waker.wake();
        true
    }
}

/// A socket whose writes are preceded by the queued [`Hints`] (`None`: `[server]
/// early_hints` is off, and it only passes through).
#[derive(Debug)]
pub(crate) struct Interim<T> {
    io: T,
    hints: Option<Arc<Hints>>,
}

impl<T> Interim<T> {
    pub(crate) fn new(io: T, hints: Option<Arc<Hints>>) -> Self {
        Interim { io, hints }
    }
}

impl<T: AsyncWrite + Unpin> Interim<T> {
    /// Hyper is about to write: what is queued goes first. `Ready(Ok)` once nothing is
    /// left.
    fn poll_hints(&mut self, cx: &mut Context<'_>, flushing: bool) -> Poll<std::io::Result<()>> {
        let Some(hints) = &self.hints else {
            return Poll::Ready(Ok(()));
        };
        if flushing {
            // Hyper flushes the socket with its own buffer empty.
            hints.waker.register(cx.waker());
            hints.dirty.store(false, Ordering::SeqCst);
        } else {
            hints.dirty.store(true, Ordering::SeqCst);
        }
        if !hints.queued.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        let hints = hints.clone();
        let mut pending = genro_shared::sync::lock(&hints.pending);
        while !pending.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    pending.drain(..n);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        hints.queued.store(false, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Interim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Interim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_hints(cx, false))?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_hints(cx, false))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_hints(cx, true))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
