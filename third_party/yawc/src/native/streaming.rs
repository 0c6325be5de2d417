//! Low-level streaming WebSocket layer for manual fragment control.
//!
//! This module provides the [`Streaming`] type, which gives users direct control over
//! WebSocket frame fragmentation without automatic reassembly or fragmentation.
//!
//! # When to Use Streaming
//!
//! Use `Streaming` when you need:
//! - **Manual fragment control**: Send and receive individual fragments without automatic reassembly
//! - **Memory-efficient streaming**: Process large messages incrementally without buffering
//! - **Custom fragmentation logic**: Implement application-specific fragmentation strategies
//! - **Real-time processing**: Handle fragments as they arrive for low-latency applications
//!
//! # Comparison with WebSocket
//!
//! | Feature | `WebSocket` | `Streaming` |
//! |---------|------------|------------|
//! | Fragment reassembly | Automatic | Manual |
//! | Auto-fragmentation | Optional | Manual |
//! | Compression | Yes | Yes |
//! | Memory usage | Higher | Lower |
//! | Control | Limited | Full |
//!
//! # Example
//!
//! ```rust,no_run
//! use yawc::{WebSocket, Frame, OpCode};
//! use futures::SinkExt;
//!
//! # async fn example() -> yawc::Result<()> {
//! // Convert WebSocket to Streaming for manual fragment control
//! let ws = WebSocket::connect("ws://example.com".parse()?).await?;
//! let mut streaming = ws.into_streaming();
//!
//! // Send a message as multiple fragments manually
//! streaming.send(Frame::text("Hello").with_fin(false)).await?;
//! streaming.send(Frame::continuation(" ").with_fin(false)).await?;
//! streaming.send(Frame::continuation("World!")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Safety
//!
//! When using `Streaming`, you are responsible for:
//! - **Fragment ordering**: Continuation frames must follow a non-FIN data frame
//! - **OpCode rules**: Only the first fragment carries the message opcode
//! - **Control frames**: Cannot be fragmented and can be sent between data fragments
//! - **Compression**: RSV1 bit is managed automatically based on compression state

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use crate::{close::CloseCode, codec, Negotiation, OpCode, Result, Role};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};

/// The buffer size tokio-util starts `Framed` with, used when none is configured.
const DEFAULT_BUFFER_CAPACITY: usize = 8 * 1024;

use crate::{
    codec::Codec,
    compression::{Compressor, Decompressor},
    native::{ContextKind, WakeProxy},
    Frame, ReadHalf, WebSocketError, WriteHalf,
};

/// Low-level streaming WebSocket connection with manual fragment control.
///
/// `Streaming` provides direct access to WebSocket frames without automatic
/// fragmentation or reassembly. This allows for:
/// - Streaming large files directly from/to disk without loading them in memory
/// - Implementing custom fragmentation strategies
/// - Processing data incrementally as fragments arrive
/// - Fine-grained control over frame boundaries
///
/// # Conversion
///
/// You can convert a [`WebSocket`](super::WebSocket) into a [`Streaming`] connection:
///
/// ```rust,no_run
/// # use yawc::WebSocket;
/// # async fn example() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com".parse()?).await?;
/// let streaming = ws.into_streaming();
/// # Ok(())
/// # }
/// ```
///
/// # Fragmentation Protocol
///
/// When manually fragmenting messages:
/// 1. Send first fragment with desired OpCode (Text/Binary) and `FIN=false`
/// 2. Send continuation fragments with OpCode::Continuation and `FIN=false`
/// 3. Send final fragment with OpCode::Continuation and `FIN=true`
///
/// # Example: Streaming File Upload
///
/// ```rust,no_run
/// use yawc::{WebSocket, Frame, OpCode};
/// use futures::SinkExt;
/// use std::io::Read;
///
/// # async fn upload_file() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com/upload".parse()?).await?;
/// let mut streaming = ws.into_streaming();
///
/// let mut file = std::fs::File::open("large_file.bin")?;
/// let mut buffer = vec![0u8; 64 * 1024]; // 64 KiB chunks
/// let mut first = true;
///
/// loop {
///     let bytes_read = file.read(&mut buffer)?;
///     if bytes_read == 0 {
///         break;
///     }
///
///     let chunk = buffer[..bytes_read].to_vec();
///     let frame = if first {
///         first = false;
///         Frame::binary(chunk).with_fin(false)
///     } else {
///         Frame::continuation(chunk).with_fin(false)
///     };
///
///     streaming.send(frame).await?;
/// }
///
/// // Send final empty fragment to close the message
/// streaming.send(Frame::continuation(vec![])).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Compression Behavior
///
/// Unlike [`WebSocket`](super::WebSocket) which compresses complete messages,
/// `Streaming` performs **streaming compression**:
/// - Compression state is maintained across fragments
/// - RSV1 bit is automatically managed (set only on first fragment)
/// - Decompression happens per-fragment with context preservation
///
/// This allows compressed data to be processed incrementally without waiting
/// for the complete message.
pub struct Streaming<S> {
    stream: Framed<S, Codec>,
    // Reading state
    read_half: ReadHalf,
    // Writing state
    write_half: WriteHalf,
    // waker proxy
    wake_proxy: Arc<WakeProxy>,
    // frames we must send (control..)
    obligated_sends: VecDeque<Frame>,
    // past this many obligated sends, reading waits until they are written
    max_pending_control_frames: usize,
    // reading waits until the obligated sends are written and flushed
    control_backlogged: bool,
    // flag to indicate the writer to flush sends
    flush_sends: bool,
    // compressor
    deflate: Option<Compressor>,
    // decompressor
    inflate: Option<Decompressor>,
    max_payload_read: usize,
    // messages sent as one frame below this size are not compressed
    compression_threshold: usize,
    // size the read buffer returns to after a larger frame
    read_buffer_capacity: usize,
    // size the write buffer returns to after it grew past the backpressure boundary
    write_buffer_capacity: usize,
    // the write buffer grew past its usual size and is replaced once flushed
    write_buffer_grown: bool,
}

impl<S> Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(role: Role, stream: S, read_buf: Bytes, negotiated: &Negotiation) -> Self {
        let decoder = codec::Decoder::new(role, negotiated.max_payload_read);
        let encoder = codec::Encoder::new(role);
        let codec = Codec::from((decoder, encoder));

        let mut parts = FramedParts::new(stream, codec);
        parts.read_buf = read_buf.into();

        // `from_parts` marks leftover handshake bytes as readable, which
        // `Framed::with_capacity` cannot, but it also raises both buffers to 8 KiB.
        // Swap in buffers of the configured size afterwards.
        let mut framed = Framed::from_parts(parts);
        if let Some(capacity) = negotiated.read_buffer_capacity {
            set_capacity(framed.read_buffer_mut(), capacity);
        }
        if let Some(capacity) = negotiated.write_buffer_capacity {
            set_capacity(framed.write_buffer_mut(), capacity);
        }
        if let Some(boundary) = negotiated.max_backpressure_write_boundary {
            framed.set_backpressure_boundary(boundary);
        }

        Self {
            stream: framed,
            read_half: ReadHalf::new(),
            write_half: WriteHalf::new(),
            wake_proxy: Arc::new(WakeProxy::default()),
            obligated_sends: VecDeque::new(),
            max_pending_control_frames: negotiated.max_pending_control_frames.max(1),
            control_backlogged: false,
            flush_sends: false,
            deflate: negotiated.compressor(),
            inflate: negotiated.decompressor(),
            max_payload_read: negotiated.max_payload_read,
            compression_threshold: negotiated.compression_threshold,
            read_buffer_capacity: negotiated
                .read_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_capacity: negotiated
                .write_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_grown: false,
        }
    }

    /// Asynchronously retrieves the next frame from the WebSocket stream.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        poll_fn(|cx| self.poll_next_frame(cx)).await
    }

    /// Whether reading waits for queued control frames to be written.
    ///
    /// Set once [`Options::max_pending_control_frames`](crate::Options::max_pending_control_frames)
    /// control frames are queued, and cleared when they have all been written and flushed:
    /// a [`Self::poll_next_frame`] that returns `Pending` while this is true means the peer
    /// sends control frames (pings) faster than it reads the answers.
    pub fn is_control_backlogged(&self) -> bool {
        self.control_backlogged
    }

    /// Splits the `Streaming` connection into its low-level components for advanced usage.
    ///
    /// This method provides access to the underlying framed stream and read/write halves,
    /// allowing for direct manipulation of the WebSocket protocol layer.
    ///
    /// # Safety
    ///
    /// This function is unsafe because it splits ownership of shared state. The caller
    /// must ensure that:
    /// - Only one component performs reads at a time
    /// - Only one component performs writes at a time
    /// - Protocol invariants are maintained (control frames, fragment ordering, etc.)
    ///
    /// # Example
    ///
    /// See [`examples/streaming.rs`](https://github.com/infinitefield/yawc/blob/master/examples/streaming.rs)
    /// for a complete example of using `split_stream()` for low-level frame processing.
    pub unsafe fn split_stream(self) -> (Framed<S, Codec>, ReadHalf, WriteHalf) {
        (self.stream, self.read_half, self.write_half)
    }

    /// Polls for the next frame in the WebSocket stream.
    ///
    /// This method returns individual frames without reassembling fragments. Applications
    /// using this method must handle fragmentation manually by checking the `FIN` flag
    /// and `OpCode` of each frame.
    ///
    /// # Returns
    ///
    /// - `Poll::Ready(Ok(frame))` - A complete frame is available
    /// - `Poll::Ready(Err(e))` - A protocol error occurred
    /// - `Poll::Pending` - No frame is available yet
    ///
    /// # Fragment Handling
    ///
    /// Frames may arrive as:
    /// - Complete messages: `OpCode::{Text,Binary}` with `FIN=true`
    /// - First fragment: `OpCode::{Text,Binary}` with `FIN=false`
    /// - Middle fragments: `OpCode::Continuation` with `FIN=false`
    /// - Final fragment: `OpCode::Continuation` with `FIN=true`
    pub fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame>> {
        self.poll_next_frame_with_limit(cx, self.max_payload_read)
    }

    pub(crate) fn poll_next_frame_with_limit(
        &mut self,
        cx: &mut Context<'_>,
        max_read_buffer: usize,
    ) -> Poll<Result<Frame>> {
        // Every ping read queues a pong. A peer that keeps sending pings and does not
        // read the pongs must not grow that queue without bound: at the limit, write and
        // flush the backlog before reading more, which stops reading while the socket
        // does not take it (the peer is then held back by TCP flow control).
        if self.control_backlogged || self.obligated_sends.len() >= self.max_pending_control_frames
        {
            self.control_backlogged = true;
            ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
            self.control_backlogged = false;
        }
        let res = if self.stream.read_buffer().is_empty() {
            self.wake_proxy.set_waker(ContextKind::Read, cx.waker());
            self.wake_proxy
                .with_context(|cx| self.read_half.poll_frame(&mut self.stream, cx))
        } else {
            self.wake_proxy
                .poll_with_context(ContextKind::Read, cx, |cx| {
                    self.read_half.poll_frame(&mut self.stream, cx)
                })
        };
        let res = res.map(|res| {
            res.and_then(|frame| {
                self.release_read_buffer(frame.payload.len());
                self.on_frame(frame, max_read_buffer)
            })
        });
        match res {
            Poll::Ready(Ok(frame)) => Poll::Ready(Ok(frame)),
            Poll::Ready(Err(WebSocketError::ConnectionClosed)) => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                Poll::Ready(Err(WebSocketError::ConnectionClosed))
            }
            Poll::Ready(Err(err)) => {
                let code = match err {
                    WebSocketError::FrameTooLarge => CloseCode::Size,
                    WebSocketError::InvalidUTF8 => CloseCode::Invalid,
                    WebSocketError::InvalidOpCode(_) => CloseCode::Unsupported,
                    WebSocketError::ReservedBitsNotZero
                    | WebSocketError::ControlFrameFragmented
                    | WebSocketError::PingFrameTooLarge
                    | WebSocketError::InvalidFragment
                    | WebSocketError::InvalidCloseFrame
                    | WebSocketError::InvalidCloseCode
                    | WebSocketError::FragmentTimeout
                    | WebSocketError::InvalidContinuationFrame
                    | WebSocketError::CompressionNotSupported => CloseCode::Protocol,
                    _ => CloseCode::Error,
                };
                self.emit_close(Frame::close(code, err.to_string()));
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                Poll::Pending
            }
        }
    }

    /// Gives back the memory a frame larger than the read buffer made it grow to.
    ///
    /// The frame's payload shares the buffer's allocation, so the buffer keeps all of
    /// it until replaced. Bytes of the next frame already read are kept, unless there
    /// are more than fit, in which case the next frame shrinks it instead.
    fn release_read_buffer(&mut self, frame_len: usize) {
        let capacity = self.read_buffer_capacity;
        let buffer = self.stream.read_buffer_mut();
        if frame_len > capacity && buffer.len() <= capacity {
            set_capacity(buffer, capacity);
        }
    }

    /// Gives back the memory the write buffer grew to, once it has been written out.
    fn release_write_buffer(&mut self) {
        if self.write_buffer_grown && self.stream.write_buffer().is_empty() {
            set_capacity(self.stream.write_buffer_mut(), self.write_buffer_capacity);
            self.write_buffer_grown = false;
        }
    }

    fn on_frame(&mut self, mut frame: Frame, max_read_buffer: usize) -> Result<Frame> {
        #[cfg(test)]
        println!(
            "<<Compression<< OpCode={:?} Fin={} Payload={}",
            frame.opcode,
            frame.fin,
            frame.payload.len()
        );

        // Handle protocol control frames first
        match frame.opcode {
            OpCode::Ping => {
                self.on_ping(&frame);
                return Ok(frame);
            }
            OpCode::Close => {
                self.on_close(&frame)?;
                return Ok(frame);
            }
            OpCode::Pong => return Ok(frame),
            _ => {}
        }

        let max_output_size = if !frame.is_fin() || frame.opcode == OpCode::Continuation {
            self.max_payload_read.min(max_read_buffer)
        } else {
            self.max_payload_read
        };

        if frame.is_compressed {
            let inflate = self
                .inflate
                .as_mut()
                .ok_or(WebSocketError::CompressionNotSupported)?;
            frame.payload = inflate.decompress(&frame.payload, frame.is_fin(), max_output_size)?;
            frame.is_compressed = false;
        }

        if frame.payload.len() >= max_output_size {
            return Err(WebSocketError::FrameTooLarge);
        }

        Ok(frame)
    }

    fn on_ping(&mut self, frame: &Frame) {
        self.obligated_sends
            .push_back(Frame::pong(frame.payload.clone()));
    }

    fn on_close(&mut self, frame: &Frame) -> Result<()> {
        match frame.payload.len() {
            0 => {}
            1 => return Err(WebSocketError::InvalidCloseFrame),
            _ => {
                let code = frame.close_code().expect("close code");
                let _ = frame.close_reason()?;

                if !code.is_allowed() {
                    return Err(WebSocketError::InvalidCloseCode);
                }
            }
        }

        let frame = Frame::close_raw(frame.payload.clone());
        self.emit_close(frame);

        Ok(())
    }

    fn emit_close(&mut self, frame: Frame) {
        self.obligated_sends.push_back(frame);
        self.read_half.is_closed = true;
    }

    fn poll_flush_obligated(
        &mut self,
        kind: ContextKind,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if self.obligated_sends.is_empty() && !self.flush_sends {
            return Poll::Ready(Ok(()));
        }
        self.wake_proxy.poll_with_context(kind, cx, |cx| {
            while !self.obligated_sends.is_empty() {
                ready!(self.write_half.poll_ready(&mut self.stream, cx))?;

                let next = self.obligated_sends.pop_front().expect("obligated send");
                self.write_half.start_send(&mut self.stream, next)?;
                self.flush_sends = true;
            }

            if self.flush_sends {
                ready!(self.write_half.poll_flush(&mut self.stream, cx))?;
                self.flush_sends = false;
            }

            Poll::Ready(Ok(()))
        })
    }
}

impl<S> futures::Stream for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match ready!(this.poll_next_frame(cx)) {
            Ok(ok) => Poll::Ready(Some(ok)),
            Err(_) => Poll::Ready(None),
        }
    }
}

impl<S> futures::Sink<Frame> for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = WebSocketError;

    fn poll_ready(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.obligated_sends.is_empty()
            && !this.flush_sends
            && this.stream.write_buffer().len() < this.stream.backpressure_boundary()
        {
            // Framed can accept another frame without polling the transport.
            return this.write_half.poll_ready(&mut this.stream, cx);
        }
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this.poll_flush_obligated(ContextKind::Write, cx))?;
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_ready(&mut this.stream, cx))
    }

    fn start_send(self: Pin<&mut Self>, mut item: Frame) -> std::result::Result<(), Self::Error> {
        let this = self.get_mut();

        #[cfg(test)]
        println!(
            ">>Compression>> OpCode={:?} Fin={} Payload={}",
            item.opcode,
            item.fin,
            item.payload.len()
        );

        // A whole message in one frame may skip compression. A fragmented message
        // cannot, since RSV1 on its first frame covers every fragment.
        let small_message = item.opcode != OpCode::Continuation
            && item.is_fin()
            && item.payload.len() < this.compression_threshold;
        let should_compress = !item.opcode.is_control() && !small_message;
        if should_compress {
            if let Some(deflate) = this.deflate.as_mut() {
                let output = deflate.compress(&item.payload, item.is_fin())?;
                // Set the RSV1 bit only when we are not streaming
                item.is_compressed = !this.write_half.streaming;
                item.payload = output;
            }
        }

        this.write_half.start_send(&mut this.stream, item)?;

        // Frames up to the backpressure boundary collect in the buffer between
        // flushes, so only growth past both limits is given back.
        let usual = this
            .write_buffer_capacity
            .max(this.stream.backpressure_boundary());
        if this.stream.write_buffer().len() > usual {
            this.write_buffer_grown = true;
        }
        Ok(())
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this
            .wake_proxy
            .with_context(|cx| this.write_half.poll_flush(&mut this.stream, cx)))?;
        this.release_write_buffer();
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_close(&mut this.stream, cx))
    }
}

/// Replaces `buffer` with one of `capacity` bytes, keeping its contents.
///
/// The new buffer is never smaller than the bytes already in it.
fn set_capacity(buffer: &mut BytesMut, capacity: usize) {
    let mut resized = BytesMut::with_capacity(capacity.max(buffer.len()));
    resized.extend_from_slice(buffer);
    *buffer = resized;
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use crate::Options;
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::{Wake, Waker},
    };
    use tokio::io::{duplex, AsyncWriteExt};

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn two_buffered_header_bytes_register_a_waker_when_payload_is_missing() {
        let negotiated = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, mut peer) = duplex(16);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03"),
            &negotiated,
        );
        let count = Arc::new(WakeCount::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);

        assert_eq!(stream.stream.read_buffer().len(), 2);
        assert!(stream.poll_next_frame(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::Relaxed), 0);

        peer.write_all(b"abc").await.unwrap();
        assert!(count.0.load(Ordering::Relaxed) > 0);
        let Poll::Ready(Ok(frame)) = stream.poll_next_frame(&mut cx) else {
            panic!("the completed frame must be ready after its payload arrives");
        };
        assert_eq!(frame.opcode(), OpCode::Binary);
        assert_eq!(frame.payload().as_ref(), b"abc");
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;
    use crate::Options;
    use tokio::io::duplex;

    #[tokio::test]
    async fn reservation_preserves_bytes_received_with_the_upgrade() {
        let options = Options::default().with_read_buffer_capacity(64 * 1024);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(stream.stream.read_buffer().capacity() >= 64 * 1024);
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn small_capacities_are_exact_and_keep_upgrade_bytes() {
        let options = Options::default()
            .with_read_buffer_capacity(512)
            .with_write_buffer_capacity(256);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert_eq!(stream.stream.read_buffer().capacity(), 512);
        assert_eq!(stream.stream.write_buffer().capacity(), 256);
        // The flush threshold stays at tokio-util's default, not the buffer size.
        let default = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let default = Streaming::new(Role::Client, io, Bytes::new(), &default);
        assert_eq!(
            stream.stream.backpressure_boundary(),
            default.stream.backpressure_boundary()
        );
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn capacity_does_not_relax_the_payload_limit() {
        let options = Options::default()
            .with_read_buffer_capacity(64 * 1024)
            .with_max_payload_read(2);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(matches!(
            stream.next_frame().await,
            Err(WebSocketError::FrameTooLarge)
        ));
    }
}

#[cfg(test)]
mod control_backlog_tests {
    use super::*;
    use crate::Options;
    use std::task::Waker;
    use tokio::io::AsyncReadExt;

    /// A masked, empty ping as a client sends it.
    const PING: [u8; 6] = [0x89, 0x80, 1, 2, 3, 4];

    #[tokio::test]
    async fn pings_from_a_peer_that_reads_no_pongs_stop_reading_at_the_limit() {
        let options = Options::default().with_max_pending_control_frames(8);
        let negotiated = Negotiation::new(None, &options, Role::Server).unwrap();
        // The peer never reads: the pipe takes 16 bytes of pongs (8 of them), then no more.
        let (io, mut peer) = tokio::io::duplex(16);
        let pings: Vec<u8> = PING.iter().copied().cycle().take(PING.len() * 1000).collect();
        let mut stream = Streaming::new(Role::Server, io, Bytes::from(pings), &negotiated);
        let mut cx = Context::from_waker(Waker::noop());

        let mut read = 0;
        while let Poll::Ready(frame) = stream.poll_next_frame(&mut cx) {
            assert_eq!(frame.unwrap().opcode(), OpCode::Ping);
            read += 1;
            assert!(stream.obligated_sends.len() <= 8);
        }
        // 8 pongs fit in the pipe, the next 8 wait in the write buffer: reading stopped.
        assert!(read <= 24, "{read} pings read");
        assert!(stream.is_control_backlogged());

        // Once the peer reads its pongs, reading resumes.
        let mut pongs = [0u8; 16];
        peer.read_exact(&mut pongs).await.unwrap();
        assert_eq!(&pongs[..2], &[0x8a, 0x00]);
        assert!(matches!(stream.poll_next_frame(&mut cx), Poll::Ready(Ok(_))));
        assert!(!stream.is_control_backlogged());
    }
}
