//! The response body handed to hyper: a whole body, or a [`Pipe`] fed by the app's
//! `send()`. Both are counted in bytes against the response's, the connection's and the
//! worker's [`Budget`]s until hyper takes them, and handed over in pieces of at most
//! [`PIECE`] bytes, so an HTTP/2 stream whose window is closed never holds more than a
//! piece in hyper. A `pathsend` file on plaintext HTTP/1.1 is a third kind, sent by the
//! socket from the page cache ([`crate::sendfile`]). Dropping the body (response written, or connection gone) tells the
//! exchange the client is done.

use crate::budget::{Budget, Budgets};
use crate::metrics::Limit;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The most bytes handed to hyper in one frame; a larger chunk goes in pieces, each
/// admitted against the budgets on its own.
pub const PIECE: usize = 64 * 1024;

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
    /// A whole body, counted against `budgets` (when given) until taken.
    Full(Option<Bytes>, Option<Budgets>),
    Pipe(Arc<Pipe>),
    /// A `pathsend` file sent with `sendfile(2)` (not counted: it never is in memory).
    File(crate::sendfile::FileFrames),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseBody")
    }
}

impl ResponseBody {
    /// A complete body the server wrote itself (small, not counted).
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes), None),
            sent: 0,
            on_drop: None,
        }
    }

    /// A complete body from the app, counted against `budgets` until hyper takes it (it
    /// never waits: the app already let go of it).
    pub fn counted(bytes: Bytes, budgets: &Budgets) -> Self {
        let n = bytes.len();
        let budgets = (n != 0).then(|| {
            budgets.conn.budget.take(n);
            budgets.worker.take(n);
            budgets.clone()
        });
        ResponseBody {
            kind: Kind::Full(Some(bytes), budgets),
            sent: 0,
            on_drop: None,
        }
    }

    /// A streamed body fed through `pipe`.
    pub fn pipe(pipe: Arc<Pipe>) -> Self {
        ResponseBody {
            kind: Kind::Pipe(pipe),
            sent: 0,
            on_drop: None,
        }
    }

    /// A file sent from the page cache by the connection's socket.
    pub fn file(frames: crate::sendfile::FileFrames) -> Self {
        ResponseBody {
            kind: Kind::File(frames),
            sent: 0,
            on_drop: None,
        }
    }

    /// Runs `f` when hyper drops the body.
    pub fn on_drop(mut self, f: OnDrop) -> Self {
        self.on_drop = Some(f);
        self
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Full(bytes, budgets) => {
                if let (Some(bytes), Some(budgets)) = (bytes.take(), budgets.take()) {
                    budgets.conn.budget.give(bytes.len(), false);
                    budgets.worker.give(bytes.len(), false);
                }
            }
            Kind::Pipe(pipe) => pipe.close(),
            Kind::File(_) => {}
        }
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
            Kind::Full(bytes, _) => bytes.as_ref().is_none_or(|b| b.is_empty()),
            Kind::Pipe(_) | Kind::File(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes, _) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Pipe(_) | Kind::File(_) => SizeHint::default(),
        }
    }
}

impl ResponseBody {
    fn poll_kind(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match &mut self.kind {
            Kind::Full(bytes, budgets) => {
                let Some(rest) = bytes.as_mut().filter(|b| !b.is_empty()) else {
                    *bytes = None;
                    return Poll::Ready(None);
                };
                let piece = rest.split_to(rest.len().min(PIECE));
                if let Some(budgets) = budgets {
                    budgets.conn.budget.give(piece.len(), true);
                    budgets.worker.give(piece.len(), true);
                }
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Kind::Pipe(pipe) => pipe.poll_take(cx),
            Kind::File(frames) => frames.poll_frame(cx).map(|frame| frame.map(Ok)),
        }
    }
}

/// Why a piece was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The body is gone: the client left, or the response was aborted.
    Closed,
    /// Not now: no room in a budget (the chunk is given back).
    Full(Chunk),
}

/// Why a waiting send ended without queuing everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The body is gone.
    Closed,
    /// The client took nothing for `send_timeout` while this response waited.
    Stalled,
}

/// The queue between the app's `send()` and hyper, for one streamed response.
#[derive(Debug)]
pub struct Pipe {
    inner: Mutex<PipeInner>,
    /// This response's own budget (`[limits] response_buffer`).
    own: Budget,
    budgets: Budgets,
    /// Serialises waiting sends, so a `send()` the app cancelled is not overtaken.
    order: tokio::sync::Mutex<()>,
    /// A send of this response already waited for a budget (counted once per response).
    waited: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct PipeInner {
    queue: VecDeque<Chunk>,
    /// The app sent its last piece.
    ended: bool,
    /// The body was dropped (or the response aborted): nothing more is taken.
    closed: bool,
    /// This response stalled and is counted in the connection's `stalled`.
    stalled: bool,
    waker: Option<Waker>,
}

impl Pipe {
    /// An empty pipe drawing from `budgets`.
    pub fn new(budgets: Budgets) -> Arc<Self> {
        Arc::new(Pipe {
            inner: Mutex::new(PipeInner::default()),
            own: Budget::new(budgets.response),
            budgets,
            order: tokio::sync::Mutex::new(()),
            waited: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PipeInner> {
        genro_shared::sync::lock(&self.inner)
    }

    /// Whether `n` bytes fit in every budget now.
    fn fits(&self, n: usize) -> bool {
        self.own.fits(n) && self.budgets.conn.budget.fits(n) && self.budgets.worker.fits(n)
    }

    fn queue(&self, inner: &mut PipeInner, chunk: Chunk) {
        if let Chunk::Data(data) = &chunk {
            let n = data.len();
            self.own.take(n);
            self.budgets.conn.budget.take(n);
            self.budgets.worker.take(n);
        }
        inner.queue.push_back(chunk);
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Queues `chunk` if it fits now, without waiting (the fast path of `send()`): data of
    /// at most [`PIECE`] bytes with room in every budget, trailers, or an empty chunk.
    pub fn try_push(&self, chunk: Chunk) -> Result<(), Refused> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Refused::Closed);
        }
        match &chunk {
            Chunk::Data(data) if data.is_empty() => return Ok(()),
            Chunk::Data(data) if data.len() > PIECE || !self.fits(data.len()) => {
                return Err(Refused::Full(chunk))
            }
            _ => {}
        }
        if self.order.try_lock().is_err() {
            // A waiting send is still queuing: keep the order.
            return Err(Refused::Full(chunk));
        }
        self.queue(&mut inner, chunk);
        Ok(())
    }

    /// Queues `chunk`, in pieces, waiting for room in the budgets. Ends with
    /// [`SendError::Stalled`] when this response's own queue is full and the client took
    /// nothing from it for `send_timeout`. `on_wait` is told which budget was full the first
    /// time this response has to wait.
    pub async fn push(&self, chunk: Chunk, on_wait: impl Fn(Limit)) -> Result<(), SendError> {
        let _order = self.order.lock().await;
        let mut data = match chunk {
            Chunk::Data(data) => data,
            other => {
                let mut inner = self.lock();
                if inner.closed {
                    return Err(SendError::Closed);
                }
                self.queue(&mut inner, other);
                return Ok(());
            }
        };
        // Once a send has waited, it goes on only when this response's queue is down to
        // half its budget (a low-water mark, as asyncio's flow control has): the app then
        // sends a few chunks before it waits again, instead of one wake-up of the loop
        // per piece the client takes.
        let mut waited = false;
        while !data.is_empty() {
            let n = data.len().min(PIECE);
            loop {
                {
                    let mut inner = self.lock();
                    if inner.closed {
                        return Err(SendError::Closed);
                    }
                    if self.fits(n) && (!waited || self.own.below_half()) {
                        self.queue(&mut inner, Chunk::Data(data.split_to(n)));
                        break;
                    }
                }
                waited = true;
                self.room(n, &on_wait).await?;
            }
        }
        Ok(())
    }

    /// Waits until a piece of `n` bytes (at most [`PIECE`]) would be queued at once, or
    /// fails like [`Pipe::push`]. A producer that makes its bytes on demand (a static file
    /// read in pieces) asks before making them, so what waits for the client is counted in
    /// the budgets instead of sitting in the producer.
    pub async fn ready(&self, n: usize, on_wait: impl Fn(Limit)) -> Result<(), SendError> {
        let _order = self.order.lock().await;
        let mut waited = false;
        loop {
            {
                let inner = self.lock();
                if inner.closed {
                    return Err(SendError::Closed);
                }
                if self.fits(n) && (!waited || self.own.below_half()) {
                    return Ok(());
                }
            }
            waited = true;
            self.room(n, &on_wait).await?;
        }
    }

    /// Waits until `n` bytes may fit, or the pipe closed; fails when this response stalled.
    async fn room(&self, n: usize, on_wait: &impl Fn(Limit)) -> Result<(), SendError> {
        let timeout = self.budgets.send_timeout;
        // Look again at least this often, so a stall is noticed on time.
        let check = if timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            timeout.min(Duration::from_secs(1))
        };
        let conn = &self.budgets.conn.budget;
        let worker = &self.budgets.worker;
        let (blocking, kind): (&Budget, _) = if !self.own.fits(n) {
            (&self.own, Limit::ResponseBuffer)
        } else if !conn.fits(n) {
            (conn, Limit::ConnectionBuffer)
        } else {
            (worker, Limit::WorkerBuffer)
        };
        if !self.waited.swap(true, std::sync::atomic::Ordering::Relaxed) {
            on_wait(kind);
        }
        // Every budget has room but this response's queue is above its low-water mark
        // (see `push`): only its own changes matter, and `freed` would not wait.
        let low_water = self.fits(n);
        // Any change of our own budget wakes us too: that is how a close is noticed.
        tokio::select! {
            _ = self.own.drained(), if low_water => {}
            _ = self.own.changed(), if !low_water => {}
            _ = blocking.freed(n), if !low_water => {}
            _ = tokio::time::sleep(check) => {}
        }
        if self.own.stalled(timeout) {
            return Err(SendError::Stalled);
        }
        Ok(())
    }

    /// Whether this hit of `limit` is the first on the response's connection (see
    /// [`crate::budget::ConnBuffers::first_hit`]).
    pub fn first_hit(&self, limit: Limit) -> bool {
        self.budgets.conn.first_hit(limit)
    }

    /// The app is done: the body ends after what is queued.
    pub fn end(&self) {
        let mut inner = self.lock();
        inner.ended = true;
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// Drops what is queued and ends the body with an error (HTTP/1.1 closes the
    /// connection, HTTP/2 resets the stream) the next time hyper looks.
    pub fn abort(&self) {
        let mut inner = self.lock();
        self.release(&mut inner);
        inner.queue.push_back(Chunk::Abort);
        inner.ended = true;
        if let Some(waker) = inner.waker.take() {
            waker.wake();
        }
    }

    /// The client took nothing for `send_timeout`: abort, count the stream as stalled on
    /// its connection and wake the connection's driver.
    pub fn stall(&self) {
        self.abort();
        let mut inner = self.lock();
        if !inner.stalled && !inner.closed {
            inner.stalled = true;
            self.budgets.conn.stalled.fetch_add(1, Ordering::AcqRel);
        }
        drop(inner);
        self.budgets.conn.kick.notify_one();
    }

    /// The body is gone: nothing more is taken, and waiting sends fail.
    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        self.release(&mut inner);
        if std::mem::take(&mut inner.stalled) {
            self.budgets.conn.stalled.fetch_sub(1, Ordering::AcqRel);
        }
        drop(inner);
        // Wake a send waiting for room: it finds the pipe closed.
        self.own.give(0, false);
    }

    /// Gives back the bytes of everything queued.
    fn release(&self, inner: &mut PipeInner) {
        for chunk in inner.queue.drain(..) {
            if let Chunk::Data(data) = chunk {
                let n = data.len();
                self.own.give(n, false);
                self.budgets.conn.budget.give(n, false);
                self.budgets.worker.give(n, false);
            }
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let mut inner = self.lock();
        loop {
            return match inner.queue.pop_front() {
                Some(Chunk::Data(data)) => {
                    let n = data.len();
                    self.own.give(n, true);
                    self.budgets.conn.budget.give(n, true);
                    self.budgets.worker.give(n, true);
                    if n == 0 {
                        continue;
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Some(Chunk::Trailers(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Some(Chunk::Abort) => Poll::Ready(Some(Err(Aborted))),
                None if inner.ended => Poll::Ready(None),
                None => {
                    inner.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ConnBuffers;

    fn pipe(response: usize) -> Arc<Pipe> {
        Pipe::new(Budgets {
            conn: Arc::new(ConnBuffers::new(16 * PIECE)),
            worker: Arc::new(Budget::new(64 * PIECE)),
            response,
            send_timeout: Duration::ZERO,
        })
    }

    fn take_one(pipe: &Pipe) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        match pipe.poll_take(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().map_or(0, |d| d.len()),
            other => panic!("expected a data frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_send_that_waited_resumes_at_half_the_budget() {
        let pipe = pipe(4 * PIECE);
        for _ in 0..4 {
            pipe.try_push(Chunk::Data(Bytes::from(vec![1; PIECE])))
                .expect("the first four pieces fit");
        }
        let waiting = {
            let pipe = pipe.clone();
            tokio::spawn(async move {
                pipe.push(Chunk::Data(Bytes::from(vec![2; PIECE])), |_| {})
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the budget is full");
        // One piece taken: the fifth would fit, but the queue is above half its budget.
        assert_eq!(take_one(&pipe), PIECE);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "resumed above the low-water mark");
        // Down to half: the send goes on.
        assert_eq!(take_one(&pipe), PIECE);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("resumed at half the budget")
            .unwrap()
            .expect("queued");
        assert_eq!(pipe.own.used(), 3 * PIECE);
    }
}
