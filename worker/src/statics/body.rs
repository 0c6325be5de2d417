//! The bodies of static responses. A part of at most [`WHOLE_MAX`] bytes is read at once
//! and handed over whole. A larger one is sent with `sendfile(2)` on plaintext HTTP/1.x
//! (the connection's [`FileSlot`], as `pathsend` does), and elsewhere (TLS, HTTP/2, the
//! HTTP/3 front's connection) read in pieces into a [`Pipe`]: each piece is read on
//! tokio's blocking threads only once the response's, the connection's and the worker's
//! budgets have room for it, so a slow client holds at most its budgets, never the file.
//! `multipart/byteranges` bodies go through the pipe as well, their part heads between
//! the file's pieces.

use crate::body::{Chunk, Pipe, ResponseBody, SendError, PIECE};
use crate::budget::Budgets;
use crate::registry::Envelope;
use crate::sendfile::{FileFrames, FileSlot};
use crate::state::Shared;
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The largest part read at once on the connection's thread and sent whole.
pub(crate) const WHOLE_MAX: u64 = PIECE as u64;

/// Where a response's bytes go: what bounds them, and the socket's `sendfile` slot when
/// the response may use it (plaintext HTTP/1.x).
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) budgets: Budgets,
    pub(crate) sendfile: Option<Arc<FileSlot>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) envelope: Arc<Envelope>,
}

/// One stretch of a streamed body.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Bytes made here (a multipart part's head, the closing delimiter).
    Bytes(Bytes),
    /// Bytes of the file.
    File(Range<u64>),
}

impl Sink {
    /// The body of one part of `file` (the whole file, or one range). Fails if a part read
    /// at once comes out short (the file shrank since it was measured).
    pub(crate) fn single(self, file: File, part: Range<u64>) -> io::Result<ResponseBody> {
        let len = part.end - part.start;
        if len <= WHOLE_MAX {
            let mut bytes = vec![0; len as usize];
            file.read_exact_at(&mut bytes, part.start)?;
            return Ok(ResponseBody::counted(Bytes::from(bytes), &self.budgets));
        }
        if let Some(slot) = self.sendfile {
            return Ok(ResponseBody::file(FileFrames::at(
                file, part.start, len, slot,
            )));
        }
        Ok(self.streamed(file, vec![Piece::File(part)]))
    }

    /// A body of `pieces`, read and queued in order by a task of its own.
    pub(crate) fn streamed(self, file: File, pieces: Vec<Piece>) -> ResponseBody {
        let pipe = Pipe::new(self.budgets);
        let body = ResponseBody::pipe(pipe.clone());
        let pump = Pump {
            file: Arc::new(file),
            pipe,
            shared: self.shared,
            envelope: self.envelope,
        };
        tokio::spawn(pump.run(pieces));
        body
    }
}

/// Feeds a streamed static body.
struct Pump {
    file: Arc<File>,
    pipe: Arc<Pipe>,
    shared: Arc<Shared>,
    envelope: Arc<Envelope>,
}

impl Pump {
    async fn run(self, pieces: Vec<Piece>) {
        match self.pieces(pieces).await {
            Ok(()) => self.pipe.end(),
            Err(Stop::Closed) => {}
            Err(Stop::Stalled) => crate::http::stalled(&self.shared, &self.pipe, &self.envelope),
            Err(Stop::Read(err)) => {
                tracing::warn!(parent: self.envelope.span(), "static file: read failed mid-response, aborting it: {err}");
                self.pipe.abort();
            }
        }
    }

    async fn pieces(&self, pieces: Vec<Piece>) -> Result<(), Stop> {
        let on_wait = |kind| crate::http::waited(&self.shared, &self.pipe, kind, &self.envelope);
        for piece in pieces {
            let range = match piece {
                Piece::Bytes(bytes) => {
                    self.pipe.push(Chunk::Data(bytes), on_wait).await?;
                    continue;
                }
                Piece::File(range) => range,
            };
            let mut at = range.start;
            while at < range.end {
                let n = (range.end - at).min(PIECE as u64) as usize;
                // Room first: the bytes are read only when they can be queued.
                self.pipe.ready(n, on_wait).await?;
                let file = self.file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut bytes = vec![0; n];
                    file.read_exact_at(&mut bytes, at).map(|()| bytes)
                })
                .await
                .map_err(io::Error::other)
                .and_then(|read| read)
                .map_err(Stop::Read)?;
                self.pipe
                    .push(Chunk::Data(Bytes::from(read)), on_wait)
                    .await?;
                at += n as u64;
            }
        }
        Ok(())
    }
}

/// Why a pump stopped early.
#[derive(Debug)]
enum Stop {
    /// The client is gone.
    Closed,
    /// The client took nothing for `send_timeout`.
    Stalled,
    /// The file could not be read (it shrank, an I/O error).
    Read(io::Error),
}

impl From<SendError> for Stop {
    fn from(err: SendError) -> Self {
        match err {
            SendError::Closed => Stop::Closed,
            SendError::Stalled => Stop::Stalled,
        }
    }
}
