//! The response body handed to hyper: a whole body, or a bounded channel fed by the app's
//! `send()` (the bound is the backpressure: a slow client makes `send()` wait). Dropping the
//! body — response written, or connection gone — tells the exchange the client is done.

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Chunks in flight between the app and the socket per streamed response.
pub const CHANNEL_DEPTH: usize = 8;

/// One item of a streamed body.
#[derive(Debug)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// Trailer fields (ends the body).
    Trailers(HeaderMap),
    /// The app failed mid-stream: abort (HTTP/1.1 closes the connection, HTTP/2 resets).
    Abort,
}

/// Error surfaced to hyper to abort a response stream.
#[derive(Debug, thiserror::Error)]
#[error("response aborted by the application")]
pub struct Aborted;

/// Called once when the body is dropped, with the number of body bytes handed to hyper.
pub type OnDrop = Box<dyn FnOnce(u64) + Send + Sync>;

/// A response body.
pub struct ResponseBody {
    kind: Kind,
    sent: u64,
    on_drop: Option<OnDrop>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Chunk>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseBody")
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            sent: 0,
            on_drop: None,
        }
    }

    /// A streamed body and the sender that feeds it.
    pub fn channel() -> (Self, mpsc::Sender<Chunk>) {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        (
            ResponseBody {
                kind: Kind::Stream(rx),
                sent: 0,
                on_drop: None,
            },
            tx,
        )
    }

    /// Runs `f` when hyper drops the body.
    pub fn on_drop(mut self, f: OnDrop) -> Self {
        self.on_drop = Some(f);
        self
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f(self.sent);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = &mut *self;
        let polled = this.poll_kind(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

impl ResponseBody {
    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match &mut self.kind {
            Kind::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Stream(rx) => loop {
                return match rx.poll_recv(cx) {
                    Poll::Pending => Poll::Pending,
                    // The app finished (sender dropped after the last chunk).
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Ready(Some(Chunk::Data(b))) if b.is_empty() => continue,
                    Poll::Ready(Some(Chunk::Data(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                    Poll::Ready(Some(Chunk::Trailers(t))) => {
                        Poll::Ready(Some(Ok(Frame::trailers(t))))
                    }
                    Poll::Ready(Some(Chunk::Abort)) => Poll::Ready(Some(Err(Aborted))),
                };
            },
        }
    }
}
