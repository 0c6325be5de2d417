//! The request body sent upstream: an [`http_body::Body`] reading the HTTP/3 request
//! stream (data, then trailers) as hyper's HTTP/2 client asks for it, so QUIC and HTTP/2
//! flow control meet and nothing is buffered beyond their windows.
//!
//! `[limits] body_timeout` (issue 16): while hyper asks for more body (the worker's window
//! is open) and the client sends nothing for that long, the body ends with
//! [`BodyError::Timeout`] and the stream is stopped; hyper then resets the worker's stream
//! (the app sees `http.disconnect`) and `forward.rs` answers 408, or resets the client's
//! stream if the response already started.
//!
//! A request the worker refused (REFUSED_STREAM, or above its GOAWAY) may already have
//! had some body sent with it: HTTP/2 sends DATA right after HEADERS. So the first
//! [`REPLAY_LIMIT`] bytes handed to an attempt are kept, and [`BodyHandle::reclaim`]
//! gives a retry a fresh [`RequestBody`] that replays them before reading on, as long as
//! no more than that (and no trailers) went out. The previous body becomes inert (hyper
//! may hold it a moment longer). [`BodyHandle::commit`] stops keeping copies once a
//! response arrived and no retry can follow.
//!
//! Small chunks are joined into DATA frames of at least [`MIN_DATA_FRAME`] bytes (the
//! last one excepted). h2 (0.4.20, in the worker's hyper) counts every DATA frame under
//! 256 bytes that its app has not read yet against a budget per *connection*, and
//! closes the whole connection (GOAWAY ENHANCE_YOUR_CALM) once it is spent. The front
//! multiplexes every client on one connection per slot, so forwarding a client's tiny
//! QUIC chunks as they come would let that one client fail everyone's requests on the
//! slot. Measured: 512 KiB sent in 64-byte HTTP/3 DATA frames to a worker whose app
//! reads late did exactly that (a bystander's request on the slot failed too) before
//! this joining. The cost: a chunk under 256 bytes waits for more of the body or its
//! end, so a client that sends a few bytes and then waits for the response before
//! sending more stalls. No timer flushes it, because every flushed small frame counts
//! against the budget all clients share. (hyper does not expose h2's `data_frame_budget`
//! on its server builder; if it does one day, the workers could raise it on the front's
//! socket and this joining could go.)

use crate::stall::Activity;
use bytes::{Buf, Bytes, BytesMut};
use genro_shared::sync::lock;
use h3::error::StreamError;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

/// The receiving half of an HTTP/3 request stream.
pub(crate) type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Body bytes kept to replay on a retry; a request that sent more is not retried.
pub(crate) const REPLAY_LIMIT: usize = 64 << 10;
/// Most request-body bytes read and dropped after a complete response.
const DISCARD_LIMIT: usize = 64 << 10;
/// Longest wait for the rest of a request body after a complete response.
const DISCARD_WAIT: Duration = Duration::from_secs(1);
/// Smallest DATA frame sent upstream before the end of the body: h2's threshold for
/// "small" frames (`DEFAULT_DATA_FRAME_OVERHEAD_THRESHOLD`).
pub(crate) const MIN_DATA_FRAME: usize = 256;

/// What a body reads: the HTTP/3 request stream. A trait so that the replay logic is
/// tested without QUIC.
pub(crate) trait Inbound: Send + 'static {
    /// The next data chunk, `None` at the end of the data.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>>;
    /// The trailers, after the data.
    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>>;
}

impl Inbound for RecvStream {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.poll_recv_data(cx)
            .map_ok(|data| data.map(|mut d| d.copy_to_bytes(d.remaining())))
    }

    fn poll_trailers(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
        self.poll_recv_trailers(cx)
    }
}

/// How a body watches its client: `[limits] body_timeout`, and where to note bytes read
/// as progress on the connection (`stall.rs`).
#[derive(Debug, Default)]
pub(crate) struct Stall {
    /// Longest wait for the next body bytes while the worker asks for them (`None`: no
    /// limit).
    pub(crate) timeout: Option<Duration>,
    /// Touched on every chunk read.
    pub(crate) activity: Option<Arc<Activity>>,
}

/// Why the request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The HTTP/3 client reset its stream, or the connection failed.
    #[error("reading the HTTP/3 request body: {0}")]
    Client(#[source] StreamError),
    /// The client sent no body bytes for `[limits] body_timeout` while the worker asked
    /// for them; the request stream was stopped.
    #[error("the HTTP/3 request body sent no bytes for body_timeout")]
    Timeout,
    /// A retry took the body over; this attempt must not read it.
    #[error("the request body moved to another attempt")]
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

struct Source<S> {
    /// `None` once stopped.
    stream: Option<S>,
    phase: Phase,
    /// A frame read ahead by [`RequestBody::new`], or the end (trailers, error) that
    /// came after [`Source::held`] data, not yet handed out.
    pending: Option<Result<Frame<Bytes>, BodyError>>,
    /// Small chunks waiting to make a [`MIN_DATA_FRAME`].
    held: BytesMut,
    /// The data handed out so far (while [`Source::recording`]), for a replay.
    sent: Vec<Bytes>,
    sent_len: usize,
    /// Copies are kept: a retry may still come.
    recording: bool,
    /// A retry can replay everything handed out so far.
    replayable: bool,
    /// Which [`RequestBody`] may read.
    epoch: u64,
    stall: Stall,
    /// Armed when a read found nothing, disarmed by the next chunk.
    stall_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body stalled for `body_timeout`.
    timed_out: bool,
}

impl<S: Inbound> Source<S> {
    fn poll_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(frame) = self.pending.take() {
            return Poll::Ready(Some(frame));
        }
        self.poll_read(cx)
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(None);
            };
            match self.phase {
                Phase::Data => match stream.poll_data(cx) {
                    Poll::Pending if self.poll_stalled(cx) => {
                        self.timed_out = true;
                        self.replayable = false;
                        self.held.clear();
                        self.stop();
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(data))) if data.is_empty() => {}
                    Poll::Ready(Ok(Some(data))) => {
                        self.stall_timer = None;
                        if let Some(activity) = &self.stall.activity {
                            activity.touch();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Ok(None)) => self.phase = Phase::Trailers,
                    Poll::Ready(Err(err)) => {
                        self.phase = Phase::Done;
                        return Poll::Ready(Some(Err(BodyError::Client(err))));
                    }
                },
                Phase::Trailers => {
                    let trailers = ready!(stream.poll_trailers(cx));
                    self.phase = Phase::Done;
                    return Poll::Ready(match trailers {
                        Ok(trailers) => trailers.map(|t| Ok(Frame::trailers(t))),
                        Err(err) => Some(Err(BodyError::Client(err))),
                    });
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    /// The next frame to send: data joined up to [`MIN_DATA_FRAME`] (shorter only at the
    /// end of the data), then the trailers or the end.
    fn poll_joined(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let next = ready!(self.poll_stream(cx));
            let end = match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.held.is_empty() && data.len() >= MIN_DATA_FRAME => {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(data) => {
                        self.held.extend_from_slice(&data);
                        if self.held.len() >= MIN_DATA_FRAME {
                            return Poll::Ready(Some(Ok(Frame::data(self.held.split().freeze()))));
                        }
                        continue;
                    }
                    Err(trailers) => Some(Ok(trailers)),
                },
                other => other,
            };
            if self.held.is_empty() {
                return Poll::Ready(end);
            }
            // The held data goes first; what ended it comes next (`None` needs no
            // keeping: the phase is `Done`).
            self.pending = end;
            return Poll::Ready(Some(Ok(Frame::data(self.held.split().freeze()))));
        }
    }

    /// Whether the body has now waited `body_timeout` for bytes (arming the timer on the
    /// first wait). Only polled while someone reads the body: hyper reads it only while
    /// the worker's HTTP/2 window has room, so a worker whose app does not read yet
    /// does not make the client's silence a stall.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.stall.timeout else {
            return false;
        };
        self.stall_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }

    /// Stops reading by dropping the stream: quinn then sends STOP_SENDING with code 0,
    /// which HTTP/3 peers treat as H3_NO_ERROR (unknown codes, RFC 9114 §9). Not h3's
    /// `stop_sending(H3_NO_ERROR)`: h3-quinn 0.0.10 panics there while a read is in
    /// flight, and h3 does not tell (it may return buffered data meanwhile).
    fn stop(&mut self) {
        self.phase = Phase::Done;
        self.stream = None;
    }

    /// Notes a frame handed to an attempt, keeping a copy while a replay stays possible.
    fn record(&mut self, frame: &Frame<Bytes>) {
        if !self.recording {
            return;
        }
        match frame.data_ref() {
            Some(data) if self.sent_len + data.len() <= REPLAY_LIMIT => {
                self.sent_len += data.len();
                self.sent.push(data.clone());
            }
            _ => {
                // Only reached once every copy was replayed: nothing is lost.
                self.recording = false;
                self.replayable = false;
                self.clear();
            }
        }
    }

    fn clear(&mut self) {
        self.sent = Vec::new();
        self.sent_len = 0;
    }
}

/// The body of one upstream attempt.
pub(crate) struct RequestBody<S = RecvStream> {
    source: Arc<Mutex<Source<S>>>,
    epoch: u64,
    /// How many of the recorded chunks this body has handed out.
    replayed: usize,
}

/// Keeps the body's source for a retry.
pub(crate) struct BodyHandle<S = RecvStream> {
    source: Arc<Mutex<Source<S>>>,
}

impl<S: Inbound> RequestBody<S> {
    /// Wraps the request stream. Whatever already arrived is looked at once, so a request
    /// whose stream is already finished (a GET: HEADERS with FIN) goes upstream as HEADERS
    /// with END_STREAM instead of HEADERS plus an empty DATA frame.
    pub(crate) fn new(stream: S, stall: Stall) -> (RequestBody<S>, BodyHandle<S>) {
        Self::of(Some(stream), stall)
    }

    /// A body with nothing in it: an extended CONNECT's (its stream carries a tunnel).
    pub(crate) fn empty() -> RequestBody<S> {
        Self::of(None, Stall::default()).0
    }

    fn of(stream: Option<S>, stall: Stall) -> (RequestBody<S>, BodyHandle<S>) {
        let mut source = Source {
            phase: if stream.is_some() {
                Phase::Data
            } else {
                Phase::Done
            },
            stream,
            held: BytesMut::new(),
            pending: None,
            sent: Vec::new(),
            sent_len: 0,
            recording: true,
            replayable: true,
            epoch: 0,
            stall,
            stall_timer: None,
            timed_out: false,
        };
        // A no-op waker is fine: whoever polls next registers the real one.
        if let Poll::Ready(next) = source.poll_stream(&mut Context::from_waker(Waker::noop())) {
            source.pending = next;
        }
        let source = Arc::new(Mutex::new(source));
        (
            RequestBody {
                source: source.clone(),
                epoch: 0,
                replayed: 0,
            },
            BodyHandle { source },
        )
    }
}

impl<S: Inbound> BodyHandle<S> {
    /// A body for another attempt, or `None` if the last one sent more than can be
    /// replayed.
    pub(crate) fn reclaim(&self) -> Option<RequestBody<S>> {
        let mut source = lock(&self.source);
        if !source.replayable {
            return None;
        }
        source.epoch += 1;
        Some(RequestBody {
            source: self.source.clone(),
            epoch: source.epoch,
            replayed: 0,
        })
    }

    /// The client sent no body bytes for `body_timeout` (the stream is stopped).
    pub(crate) fn is_timed_out(&self) -> bool {
        lock(&self.source).timed_out
    }

    /// No retry will follow: stop keeping copies. The current body still replays the
    /// ones it has not sent yet (its response may start before its body is through).
    pub(crate) fn commit(&self) {
        let mut source = lock(&self.source);
        source.recording = false;
        source.replayable = false;
    }

    /// Once the response is complete: reads and drops what is left of the request body
    /// (at most [`DISCARD_LIMIT`] bytes, for at most [`DISCARD_WAIT`]), so that a client
    /// still sending a short body ends its stream normally, then asks it to stop sending
    /// the rest (RFC 9114 §4.1). Stopping at once would make clients that
    /// treat STOP_SENDING as a failure of the whole exchange drop a complete response.
    pub(crate) async fn discard_rest(&self) {
        {
            // Whatever attempt still holds a body stops reading it.
            let mut source = lock(&self.source);
            source.epoch += 1;
            source.recording = false;
            source.replayable = false;
            source.clear();
            source.held.clear();
        }
        let mut left = DISCARD_LIMIT;
        let read_rest = std::future::poll_fn(|cx| {
            let mut source = lock(&self.source);
            loop {
                match ready!(source.poll_stream(cx)) {
                    Some(Ok(frame)) => {
                        let len = frame.data_ref().map_or(0, Bytes::len);
                        if len >= left {
                            return Poll::Ready(());
                        }
                        left -= len;
                    }
                    Some(Err(_)) | None => return Poll::Ready(()),
                }
            }
        });
        let _ = tokio::time::timeout(DISCARD_WAIT, read_rest).await;
        let mut source = lock(&self.source);
        if source.phase != Phase::Done {
            source.stop();
        }
    }
}

impl<S: Inbound> Body for RequestBody<S> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut source = lock(&this.source);
        if source.epoch != this.epoch {
            return Poll::Ready(Some(Err(BodyError::Superseded)));
        }
        if let Some(data) = source.sent.get(this.replayed) {
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        if !source.recording && !source.sent.is_empty() {
            // Everything kept was replayed and no retry can follow.
            source.clear();
        }
        let next = ready!(source.poll_joined(cx));
        if let Some(Ok(frame)) = &next {
            source.record(frame);
        }
        this.replayed = source.sent.len();
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        let source = lock(&self.source);
        source.epoch == self.epoch
            && self.replayed >= source.sent.len()
            && source.phase == Phase::Done
            && source.pending.is_none()
            && source.held.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

impl<S> std::fmt::Debug for RequestBody<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("epoch", &self.epoch)
            .field("replayed", &self.replayed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// What the fake stream yields, in order; `Wait` is one `Pending`.
    enum Step {
        Data(&'static str),
        Wait,
        /// `Pending` for good: a client that stopped sending.
        Hang,
        Trailers(&'static str),
    }

    struct Fake {
        steps: VecDeque<Step>,
        stopped: Arc<AtomicBool>,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.stopped.store(true, Ordering::SeqCst);
        }
    }

    impl Inbound for Fake {
        fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
            match self.steps.front() {
                Some(Step::Data(_)) => match self.steps.pop_front() {
                    Some(Step::Data(d)) => Poll::Ready(Ok(Some(Bytes::from_static(d.as_bytes())))),
                    _ => unreachable!("front was data"),
                },
                Some(Step::Wait) => {
                    self.steps.pop_front();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Step::Hang) => Poll::Pending,
                Some(Step::Trailers(_)) | None => Poll::Ready(Ok(None)),
            }
        }

        fn poll_trailers(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<Result<Option<HeaderMap>, StreamError>> {
            Poll::Ready(Ok(match self.steps.pop_front() {
                Some(Step::Trailers(value)) => {
                    let mut t = HeaderMap::new();
                    t.insert("x-t", value.parse().unwrap());
                    Some(t)
                }
                _ => None,
            }))
        }
    }

    fn fake(steps: Vec<Step>) -> (Fake, Arc<AtomicBool>) {
        let stopped = Arc::new(AtomicBool::new(false));
        (
            Fake {
                steps: steps.into(),
                stopped: stopped.clone(),
            },
            stopped,
        )
    }

    /// `n` times `c`, leaked for `Step::Data`.
    fn run(c: char, n: usize) -> &'static str {
        c.to_string().repeat(n).leak()
    }

    /// A chunk big enough to travel alone (`MIN_DATA_FRAME`).
    fn chunk(c: char) -> &'static str {
        run(c, MIN_DATA_FRAME)
    }

    /// Shows data as `text` when short, else as runs like `a256+b3`.
    fn show(data: &[u8]) -> String {
        if data.len() <= 8 {
            return String::from_utf8(data.to_vec()).unwrap();
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = data[i..].iter().take_while(|&&b| b == data[i]).count();
            out.push(format!("{}{n}", data[i] as char));
            i += n;
        }
        out.join("+")
    }

    /// Reads `n` frames (data via `show`, trailers as `T:value`).
    async fn take(body: &mut RequestBody<Fake>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => out.push(show(&d)),
                    Err(f) => {
                        let t = f.into_trailers().unwrap();
                        out.push(format!("T:{}", t["x-t"].to_str().unwrap()));
                    }
                },
                Some(Err(err)) => out.push(format!("E:{err}")),
                None => out.push("END".into()),
            }
        }
        out
    }

    const SUPERSEDED: &str = "E:the request body moved to another attempt";

    #[tokio::test]
    async fn a_finished_stream_is_known_before_the_first_poll() {
        let (stream, _) = fake(vec![]);
        let (body, _) = RequestBody::new(stream, Stall::default());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let (stream, _) = fake(vec![Step::Data("a")]);
        let (body, _) = RequestBody::new(stream, Stall::default());
        assert!(!body.is_end_stream());
    }

    #[tokio::test]
    async fn small_chunks_are_joined_except_at_the_end() {
        let (stream, _) = fake(vec![
            Step::Data("ab"),
            Step::Wait,
            Step::Data(run('c', 300)),
            Step::Data("d"),
            Step::Wait,
            Step::Data(run('e', 255)),
            Step::Data("f"),
        ]);
        let (mut body, _) = RequestBody::new(stream, Stall::default());
        assert_eq!(
            take(&mut body, 4).await,
            ["a1+b1+c300", "d1+e255", "f", "END"]
        );

        // Before trailers and before an error the held data goes first.
        let (stream, _) = fake(vec![Step::Data("x"), Step::Trailers("t")]);
        let (mut body, _) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut body, 3).await, ["x", "T:t", "END"]);

        // The last small frame is known to be the last (sent with END_STREAM).
        let (stream, _) = fake(vec![Step::Data("x"), Step::Wait]);
        let (mut body, _) = RequestBody::new(stream, Stall::default());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_attempt_sent() {
        let (stream, _) = fake(vec![
            Step::Data(chunk('a')),
            Step::Data(chunk('b')),
            Step::Wait,
            Step::Data(chunk('c')),
        ]);
        let (mut first, handle) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut first, 2).await, ["a256", "b256"]);
        let mut second = handle.reclaim().expect("replayable");
        assert_eq!(take(&mut first, 1).await, [SUPERSEDED]);
        assert_eq!(take(&mut second, 4).await, ["a256", "b256", "c256", "END"]);
        // And again, all of it.
        let mut third = handle.reclaim().expect("still replayable");
        assert_eq!(take(&mut third, 4).await, ["a256", "b256", "c256", "END"]);
        assert!(third.is_end_stream());
    }

    #[tokio::test]
    async fn commit_mid_replay_loses_nothing() {
        // Regression: the response head can arrive (commit) while the retry is still
        // replaying; dropping the copies then skipped body bytes.
        let (stream, _) = fake(vec![
            Step::Data(chunk('a')),
            Step::Data(chunk('b')),
            Step::Data(chunk('c')),
            Step::Data(chunk('d')),
        ]);
        let (mut first, handle) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut first, 3).await, ["a256", "b256", "c256"]);
        let mut second = handle.reclaim().unwrap();
        assert_eq!(take(&mut second, 1).await, ["a256"]);
        handle.commit();
        assert_eq!(take(&mut second, 4).await, ["b256", "c256", "d256", "END"]);
        assert!(handle.reclaim().is_none(), "no retry after commit");
    }

    #[tokio::test]
    async fn trailers_or_too_much_data_end_the_replay() {
        let (stream, _) = fake(vec![Step::Data(chunk('a')), Step::Trailers("t")]);
        let (mut first, handle) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut first, 3).await, ["a256", "T:t", "END"]);
        assert!(handle.reclaim().is_none());

        let big = run('x', REPLAY_LIMIT);
        let (stream, _) = fake(vec![
            Step::Data(chunk('a')),
            Step::Data(big),
            Step::Data(chunk('b')),
        ]);
        let (mut first, handle) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut first, 1).await, ["a256"]);
        let mut second = handle.reclaim().expect("one chunk can be replayed");
        let big_shown = format!("x{REPLAY_LIMIT}");
        assert_eq!(
            take(&mut second, 4).await,
            ["a256", big_shown.as_str(), "b256", "END"]
        );
        assert!(handle.reclaim().is_none(), "over the limit");
    }

    #[tokio::test]
    async fn discard_rest_reads_a_short_remainder_then_stops_a_long_one() {
        // The rest arrives: read to the end, the stream is not stopped early.
        let (stream, stopped) = fake(vec![Step::Data(chunk('a')), Step::Wait, Step::Data("b")]);
        let (mut body, handle) = RequestBody::new(stream, Stall::default());
        assert_eq!(take(&mut body, 1).await, ["a256"]);
        handle.discard_rest().await;
        assert!(!stopped.load(Ordering::SeqCst));
        assert_eq!(take(&mut body, 1).await, [SUPERSEDED]);

        // More than the limit: the stream is dropped (STOP_SENDING).
        let (stream, stopped) = fake(vec![
            Step::Data(run('y', DISCARD_LIMIT + 1)),
            Step::Data("more"),
        ]);
        let (_body, handle) = RequestBody::new(stream, Stall::default());
        handle.discard_rest().await;
        assert!(stopped.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_and_stops_the_stream() {
        let timeout = Duration::from_millis(200);
        let activity = Arc::new(Activity::default());
        let (stream, stopped) = fake(vec![
            Step::Data(chunk('a')),
            Step::Wait,
            Step::Data(chunk('b')),
            Step::Hang,
        ]);
        let stall = Stall {
            timeout: Some(timeout),
            activity: Some(activity.clone()),
        };
        let (mut body, handle) = RequestBody::new(stream, stall);
        let started = tokio::time::Instant::now();
        assert_eq!(take(&mut body, 2).await, ["a256", "b256"]);
        assert!(activity.idle_for(tokio::time::Instant::now()) < timeout);
        assert!(!handle.is_timed_out());
        let end = take(&mut body, 1).await;
        assert_eq!(
            end,
            ["E:the HTTP/3 request body sent no bytes for body_timeout"]
        );
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(handle.is_timed_out());
        assert!(stopped.load(Ordering::SeqCst), "the stream is stopped");
        assert!(
            handle.reclaim().is_none(),
            "a timed-out body is not retried"
        );

        // Without a limit it waits for good.
        let (stream, _) = fake(vec![Step::Hang]);
        let (mut body, handle) = RequestBody::new(stream, Stall::default());
        let waited = tokio::time::timeout(timeout * 2, body.frame()).await;
        assert!(waited.is_err() && !handle.is_timed_out());
    }
}
