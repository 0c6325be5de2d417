//! `sendfile(2)` for `http.response.pathsend` and static files (`crate::statics`) on
//! plaintext HTTP/1.1: the file's bytes go from the page cache to the socket without
//! passing through the worker's memory.
//!
//! hyper writes a response's body frames to its socket itself, and has no way to carry a
//! file. So the body ([`FileFrames`]) lends the file, one frame of at most [`FRAME`]
//! bytes at a time, to its connection's [`FileSlot`], and hands hyper a frame of the same
//! length that points into [`region`]: an address range no one reads. hyper queues the
//! frame behind the response head as it queues any other (plaintext sockets write
//! vectored, so the frame is never copied), and the connection's socket ([`FileSocket`])
//! recognises the frame's addresses in its writes: the head goes out with `MSG_MORE`, and
//! the frame's bytes are sent from the file at the matching offset with `sendfile(2)`.
//! A partial write maps to a file offset the same way, so hyper's bookkeeping of what is
//! written stays its own.
//!
//! Only sockets that hyper writes directly take part: a TLS stream or an HTTP/2
//! connection would copy the frame's bytes instead, so neither gets a slot (the decision
//! is made from the socket, not from what the request says about its scheme).
//!
//! The file's next frame is read ahead (`readahead(2)`) on tokio's blocking threads while
//! the current one is sent, so `sendfile` normally finds its pages in the cache and does
//! not wait for the disk on the connection's thread.

use bytes::Bytes;
use genro_shared::sync::lock;
use http_body::Frame;
use prometheus::IntCounter;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most file bytes one body frame stands for.
pub const FRAME: usize = 1 << 20;

/// The address range frames point into: mapped once, never written and, in a working
/// server, never read (its pages are never touched, so it costs no memory). Debug builds
/// map it without read access, so a path that read a frame's bytes instead of sending the
/// file would crash the tests rather than send zeros.
fn region() -> &'static [u8] {
    static REGION: OnceLock<usize> = OnceLock::new();
    let start = *REGION.get_or_init(|| {
        let prot = if cfg!(debug_assertions) {
            libc::PROT_NONE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FRAME,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert!(
            at != libc::MAP_FAILED,
            "mmap of the sendfile frame region failed: {}",
            io::Error::last_os_error()
        );
        at as usize
    });
    // SAFETY: the mapping is FRAME bytes long and lives until the process ends. Slices of
    // it are only ever handed around as addresses (see the module docs).
    unsafe { std::slice::from_raw_parts(start as *const u8, FRAME) }
}

/// Where `bytes` starts in [`region`], if it is a (non-empty) frame's.
fn in_region(bytes: &[u8]) -> Option<usize> {
    let at = (bytes.as_ptr() as usize).checked_sub(region().as_ptr() as usize)?;
    (!bytes.is_empty() && at + bytes.len() <= FRAME).then_some(at)
}

/// A file frame lent to the socket: the file bytes from `offset` stand for `len` bytes of
/// [`region`] from its start.
#[derive(Debug)]
struct Lent {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

#[derive(Debug, Default)]
struct SlotInner {
    lent: Option<Lent>,
    /// The body waiting for the frame to be written.
    waker: Option<Waker>,
}

/// One connection's frame in flight between its body and its socket.
#[derive(Debug)]
pub struct FileSlot {
    inner: Mutex<SlotInner>,
    /// `sendfile_bytes_total`, when metrics are on.
    sent: Option<IntCounter>,
}

impl FileSlot {
    /// An empty slot counting into `sent`.
    pub fn new(sent: Option<IntCounter>) -> Self {
        FileSlot {
            inner: Mutex::new(SlotInner::default()),
            sent,
        }
    }

    /// Whether a frame is still being written; if so the body is woken when it is.
    fn busy(&self, waker: &Waker) -> bool {
        let mut inner = lock(&self.inner);
        if inner.lent.is_none() {
            return false;
        }
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            inner.waker = Some(waker.clone());
        }
        true
    }

    fn lend(&self, lent: Lent) {
        let mut inner = lock(&self.inner);
        debug_assert!(inner.lent.is_none(), "one frame at a time");
        inner.lent = Some(lent);
    }

    /// The file and offset of the `len` frame bytes from `at`.
    fn source(&self, at: usize, len: usize) -> io::Result<(Arc<File>, u64)> {
        match &lock(&self.inner).lent {
            Some(lent) if at + len <= lent.len => Ok((lent.file.clone(), lent.offset + at as u64)),
            _ => Err(io::Error::other(
                "a write points into the sendfile region outside the frame lent",
            )),
        }
    }

    /// `n` bytes from `at` were sent: the frame is done when they reach its end.
    fn sent(&self, at: usize, n: usize) {
        if let Some(counter) = &self.sent {
            counter.inc_by(n as u64);
        }
        let mut inner = lock(&self.inner);
        if inner.lent.as_ref().is_some_and(|lent| at + n >= lent.len) {
            inner.lent = None;
            if let Some(waker) = inner.waker.take() {
                drop(inner);
                waker.wake();
            }
        }
    }
}

/// A plaintext TCP socket that sends [`FileSlot`] frames with `sendfile(2)`; without a
/// slot (`[server] sendfile = false`) it is the socket.
#[derive(Debug)]
pub struct FileSocket {
    io: TcpStream,
    slot: Option<Arc<FileSlot>>,
}

impl FileSocket {
    /// Wraps `io`, sending the frames of `slot` from their files.
    pub fn new(io: TcpStream, slot: Option<Arc<FileSlot>>) -> Self {
        FileSocket { io, slot }
    }

    /// Writes `len` bytes of the frame lent to `slot`, from `at`, with `sendfile(2)`.
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        slot: &FileSlot,
        at: usize,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let (file, offset) = slot.source(at, len)?;
        let sent = ready_io(&self.io, cx, || {
            let mut offset = offset as libc::off_t;
            // SAFETY: both descriptors are open for the call (the socket is borrowed, the
            // file is held), and `offset` is a valid pointer to an off_t.
            let n =
                unsafe { libc::sendfile(self.io.as_raw_fd(), file.as_raw_fd(), &mut offset, len) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Poll::Ready(Ok(0)) => {
                let err = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "http.response.pathsend: the file ended before the length it had when opened (it shrank while being sent); closing the connection",
                );
                tracing::warn!("{err}");
                Poll::Ready(Err(err))
            }
            Poll::Ready(Ok(n)) => {
                slot.sent(at, n);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    /// Writes `bufs` (a response head and what precedes a frame) with `MSG_MORE`, so the
    /// frame's first bytes can share their packet.
    fn poll_send_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready_io(&self.io, cx, || {
            // SAFETY: a zeroed msghdr is valid; the iovecs borrow `bufs` for the call
            // (IoSlice is ABI-compatible with iovec).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            // SAFETY: the socket is open; `msg` points at live iovecs.
            let n = unsafe {
                libc::sendmsg(
                    self.io.as_raw_fd(),
                    &msg,
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }
}

/// Runs the non-blocking write `op` on `io` once it is writable, waiting (with `cx`'s
/// waker registered) while it would block.
fn ready_io(
    io: &TcpStream,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(io.poll_write_ready(cx))?;
        match io.try_io(Interest::WRITABLE, &mut op) {
            Err(err)
                if err.kind() == io::ErrorKind::WouldBlock
                    || err.kind() == io::ErrorKind::Interrupted => {}
            other => return Poll::Ready(other),
        }
    }
}

impl AsyncRead for FileSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for FileSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let (Some(slot), Some(at)) = (&self.slot, in_region(buf)) {
            return self.poll_send_file(cx, slot, at, buf.len());
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(slot) = &self.slot else {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        let Some((index, at)) = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| in_region(b).map(|at| (i, at)))
        else {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        let frame = bufs[index].len();
        if index == 0 {
            return self.poll_send_file(cx, slot, at, frame);
        }
        let head = &bufs[..index];
        let wrote = std::task::ready!(self.poll_send_more(cx, head))?;
        if wrote < head.iter().map(|b| b.len()).sum() {
            return Poll::Ready(Ok(wrote));
        }
        // The head is written: whatever the file does now, report at least that (an error
        // comes back on the next write, which starts at the frame).
        match self.poll_send_file(cx, slot, at, frame) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(wrote + n)),
            _ => Poll::Ready(Ok(wrote)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Asks the kernel to read `len` bytes of `file` from `offset` into the page cache (a
/// hint: errors are ignored, the send reads what is missing).
pub fn read_ahead(file: &File, offset: u64, len: usize) {
    // SAFETY: the descriptor is open for the call; readahead only reads it.
    unsafe {
        libc::readahead(file.as_raw_fd(), offset as libc::off64_t, len);
    }
}

/// A `pathsend` body sent with `sendfile(2)`: frames lent to the connection's slot one at
/// a time, the next read ahead while the current one is written.
#[derive(Debug)]
pub struct FileFrames {
    file: Arc<File>,
    offset: u64,
    left: u64,
    slot: Arc<FileSlot>,
    ahead: Option<tokio::task::JoinHandle<()>>,
}

impl FileFrames {
    /// The `len` bytes of `file` from its start (whose first frame was read ahead), sent
    /// through `slot`.
    pub fn new(file: File, len: u64, slot: Arc<FileSlot>) -> Self {
        FileFrames {
            file: Arc::new(file),
            offset: 0,
            left: len,
            slot,
            ahead: None,
        }
    }

    /// The `len` bytes of `file` from `offset` (a static file's range), sent through
    /// `slot`. The first frame is read ahead off the connection's thread, so a cold page
    /// cache does not stall `sendfile` there. Must run inside the tokio runtime.
    pub fn at(file: File, offset: u64, len: u64, slot: Arc<FileSlot>) -> Self {
        let file = Arc::new(file);
        let first = len.min(FRAME as u64) as usize;
        let ahead = (first != 0).then(|| {
            let file = file.clone();
            tokio::task::spawn_blocking(move || read_ahead(&file, offset, first))
        });
        FileFrames {
            file,
            offset,
            left: len,
            slot,
            ahead,
        }
    }

    /// The next frame, once the previous one is written and this one read ahead; `None`
    /// at the end.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if self.slot.busy(cx.waker()) {
            return Poll::Pending;
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if let Some(ahead) = &mut self.ahead {
            // A failed read-ahead is only a missed hint.
            let _ = std::task::ready!(Pin::new(ahead).poll(cx));
            self.ahead = None;
        }
        let len = self.left.min(FRAME as u64) as usize;
        self.slot.lend(Lent {
            file: self.file.clone(),
            offset: self.offset,
            len,
        });
        self.offset += len as u64;
        self.left -= len as u64;
        if self.left != 0 {
            let (file, offset) = (self.file.clone(), self.offset);
            let next = self.left.min(FRAME as u64) as usize;
            self.ahead = Some(tokio::task::spawn_blocking(move || {
                read_ahead(&file, offset, next)
            }));
        }
        Poll::Ready(Some(Frame::data(Bytes::from_static(&region()[..len]))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_recognised_by_their_address() {
        let region = region();
        assert_eq!(in_region(&region[..10]), Some(0));
        assert_eq!(in_region(&region[100..FRAME]), Some(100));
        assert_eq!(
            in_region(&region[5..5]),
            None,
            "empty slices are not frames"
        );
        let other = vec![0u8; 16];
        assert_eq!(in_region(&other), None);
    }

    #[test]
    fn a_slot_maps_frame_addresses_to_file_offsets_and_frees_itself_at_the_end() {
        let file = Arc::new(tempfile_with(b"0123456789"));
        let slot = FileSlot::new(None);
        slot.lend(Lent {
            file,
            offset: 4,
            len: 6,
        });
        let (_, offset) = slot.source(2, 3).expect("inside the frame");
        assert_eq!(offset, 6);
        assert!(slot.source(4, 3).is_err(), "past the frame's end");
        let waker = futures_util::task::noop_waker();
        assert!(slot.busy(&waker));
        slot.sent(0, 5);
        assert!(slot.busy(&waker), "one byte left");
        slot.sent(5, 1);
        assert!(!slot.busy(&waker));
        assert!(slot.source(0, 1).is_err(), "nothing lent");
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("genro-sendfile-{}", std::process::id()));
        let mut file = File::create(&path).expect("create");
        file.write_all(bytes).expect("write");
        let file = File::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        file
    }
}
