//! The worker slots as upstreams: one pooled HTTP/2 connection per slot's Unix socket, and
//! the least-in-flight picker.
//!
//! Why one connection per slot: HTTP/2 multiplexes every request of the front on it, the
//! worker serves each stream concurrently, and a Unix socket has no head-of-line loss to
//! spread over several connections. A slot's socket belongs to the slot, not to a process:
//! when its worker drains (GOAWAY) or dies, the next connect to the same path reaches the
//! slot's next worker (or waits in the socket's accept queue until it is up). So a closed
//! connection is simply replaced on the next request; only a failed *connect* (the socket
//! is gone) marks the slot down for [`DOWN_FOR`], and the picker avoids it meanwhile.
//!
//! The picker counts requests in flight per slot itself (from the first byte sent until the
//! response body is relayed), so it needs nothing from the workers' heartbeats.

use crate::body::RequestBody;
use genro_shared::protocol::SlotSocket;
use genro_shared::sync::lock;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How long a slot whose socket refused a connection is avoided.
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(1);
/// Limit on connecting and on the HTTP/2 handshake. A Unix connect is immediate unless
/// the accept queue is full.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream receive window towards a worker until the configuration sets one
/// (`[limits] response_buffer`, see [`Pool::set_response_buffer`]).
const DEFAULT_STREAM_WINDOW: u32 = 256 << 10;
/// Connection receive window: large, so that a few slow HTTP/3 clients cannot use up the
/// slot connection's window and stall every other response on it (the per-stream window
/// is the bound that matters for memory).
const CONNECTION_WINDOW: u32 = 1 << 30;
/// The largest HTTP/2 window (RFC 9113 §6.9.1).
const MAX_WINDOW: u64 = (1 << 31) - 1;

/// Why a connection to a slot could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The Unix socket refused or does not exist.
    #[error("connecting to {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake on {path}: {source}")]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to {0}: timed out")]
    Timeout(PathBuf),
}

struct Conn {
    id: u64,
    send: SendRequest<RequestBody>,
}

/// One worker slot.
pub(crate) struct Upstream {
    /// Slot number.
    pub(crate) slot: u32,
    path: PathBuf,
    in_flight: AtomicUsize,
    down_until: Mutex<Option<Instant>>,
    /// The pooled connection; the async lock makes concurrent requests wait for one
    /// connect instead of each opening its own.
    conn: tokio::sync::Mutex<Option<Conn>>,
    next_conn_id: AtomicU64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("slot", &self.slot)
            .field("path", &self.path)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

/// A request counted in flight on an upstream until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    fn new(slot: u32, path: PathBuf) -> Self {
        Upstream {
            slot,
            path,
            in_flight: AtomicUsize::new(0),
            down_until: Mutex::new(None),
            conn: tokio::sync::Mutex::new(None),
            next_conn_id: AtomicU64::new(0),
        }
    }

    /// Counts a request in flight here.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn is_down(&self, now: Instant) -> bool {
        let down = lock(&self.down_until);
        down.is_some_and(|until| now < until)
    }

    fn set_down(&self, until: Option<Instant>) {
        *lock(&self.down_until) = until;
    }

    /// The pooled connection, opening it when there is none or it closed (with
    /// `buffer` as its per-stream budget). Returns its id (for [`Upstream::invalidate`])
    /// and a sender.
    pub(crate) async fn sender(
        &self,
        buffer: u32,
    ) -> Result<(u64, SendRequest<RequestBody>), ConnectError> {
        let mut conn = self.conn.lock().await;
        if let Some(open) = conn.as_ref().filter(|c| !c.send.is_closed()) {
            return Ok((open.id, open.send.clone()));
        }
        *conn = None;
        let send = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&self.path, buffer)).await {
            Ok(Ok(send)) => send,
            Ok(Err(err)) => {
                self.set_down(Some(Instant::now() + DOWN_FOR));
                return Err(err);
            }
            Err(_) => {
                self.set_down(Some(Instant::now() + DOWN_FOR));
                return Err(ConnectError::Timeout(self.path.clone()));
            }
        };
        self.set_down(None);
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(slot = self.slot, "connected to {}", self.path.display());
        *conn = Some(Conn {
            id,
            send: send.clone(),
        });
        Ok((id, send))
    }

    /// Forgets connection `id` (draining or broken) so the next request opens a new one.
    pub(crate) async fn invalidate(&self, id: u64) {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_some_and(|c| c.id == id) {
            *conn = None;
        }
    }
}

/// Opens an HTTP/2 connection to a slot. `buffer` bytes per stream, both ways: the
/// receive window is how much of one response the front takes from the worker ahead of
/// its HTTP/3 client (the worker's `send()` waits beyond it), and the send buffer how
/// much of one request body hyper queues for the worker.
async fn connect(path: &Path, buffer: u32) -> Result<SendRequest<RequestBody>, ConnectError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ConnectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(buffer)
        .max_send_buf_size(buffer as usize)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake {
            path: path.to_path_buf(),
            source,
        })?;
    let shown = path.display().to_string();
    tokio::spawn(async move {
        // Ends after a GOAWAY once its streams are done, or when the worker goes away;
        // `SendRequest::is_closed` then tells the pool to reconnect.
        if let Err(err) = connection.await {
            tracing::debug!("connection to {shown} ended: {err}");
        }
    });
    Ok(send)
}

/// The slots the supervisor announced.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    slots: RwLock<Arc<Vec<Arc<Upstream>>>>,
    /// Where the picker starts looking, so ties rotate over the slots.
    cursor: AtomicUsize,
    /// `[limits] response_buffer` for new connections; 0 until set.
    response_buffer: AtomicU32,
}

/// What the picker knows about one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its socket refused a connection a moment ago.
    pub(crate) down: bool,
    /// This request already failed there.
    pub(crate) tried: bool,
    /// Requests in flight.
    pub(crate) in_flight: usize,
}

/// The index of the best candidate: up before down, untried before tried, then fewest
/// in flight; ties go to the first one at or after `start` (round robin). A down or tried
/// slot is still chosen when nothing better exists: the socket may be back, and a retry
/// on the same slot goes over a new connection.
pub(crate) fn choose(candidates: &[Candidate], start: usize) -> Option<usize> {
    let n = candidates.len();
    (0..n).map(|i| (start + i) % n).min_by_key(|&i| {
        let c = candidates[i];
        (c.down, c.tried, c.in_flight)
    })
}

impl Pool {
    /// Sets the per-stream byte budget of the connections opened from now on
    /// (`[limits] response_buffer`, capped at the largest HTTP/2 window); open
    /// connections keep theirs.
    pub(crate) fn set_response_buffer(&self, bytes: u64) {
        let bytes = u32::try_from(bytes.min(MAX_WINDOW)).unwrap_or(u32::MAX);
        self.response_buffer.store(bytes, Ordering::Relaxed);
    }

    /// The per-stream byte budget for a new connection.
    pub(crate) fn response_buffer(&self) -> u32 {
        match self.response_buffer.load(Ordering::Relaxed) {
            0 => DEFAULT_STREAM_WINDOW,
            set => set,
        }
    }

    /// Replaces the slot list, keeping the connections of slots whose socket is unchanged.
    pub(crate) fn update(&self, slots: Vec<SlotSocket>) {
        let mut current = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<Arc<Upstream>> = slots
            .into_iter()
            .map(|s| {
                let path = PathBuf::from(s.path);
                current
                    .iter()
                    .find(|u| u.slot == s.slot && u.path == path)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(s.slot, path)))
            })
            .collect();
        let shown: Vec<String> = next.iter().map(|u| u.slot.to_string()).collect();
        tracing::info!("worker slots: [{}]", shown.join(", "));
        *current = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The slot for the next attempt of a request that already failed on `tried`.
    pub(crate) fn pick(&self, tried: &[u32]) -> Option<Arc<Upstream>> {
        let slots = self.snapshot();
        let now = Instant::now();
        let candidates: Vec<Candidate> = slots
            .iter()
            .map(|u| Candidate {
                down: u.is_down(now),
                tried: tried.contains(&u.slot),
                in_flight: u.in_flight.load(Ordering::Relaxed),
            })
            .collect();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        choose(&candidates, start % candidates.len().max(1)).map(|i| slots[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(down: bool, tried: bool, in_flight: usize) -> Candidate {
        Candidate {
            down,
            tried,
            in_flight,
        }
    }

    #[test]
    fn choose_prefers_up_untried_and_idle() {
        let table: &[(&str, Vec<Candidate>, usize, Option<usize>)] = &[
            ("none", vec![], 0, None),
            (
                "fewest in flight",
                vec![c(false, false, 3), c(false, false, 1), c(false, false, 2)],
                0,
                Some(1),
            ),
            (
                "ties rotate from start",
                vec![c(false, false, 0), c(false, false, 0), c(false, false, 0)],
                2,
                Some(2),
            ),
            (
                "ties wrap around",
                vec![c(false, false, 0), c(false, false, 5), c(false, false, 0)],
                1,
                Some(2),
            ),
            (
                "down is skipped",
                vec![c(true, false, 0), c(false, false, 9)],
                0,
                Some(1),
            ),
            (
                "tried is skipped",
                vec![c(false, true, 0), c(false, false, 9)],
                0,
                Some(1),
            ),
            (
                "up but tried beats down",
                vec![c(true, false, 0), c(false, true, 4)],
                0,
                Some(1),
            ),
            (
                "all down: least in flight",
                vec![c(true, false, 2), c(true, false, 1)],
                0,
                Some(1),
            ),
            (
                "only a tried one: retried",
                vec![c(false, true, 0)],
                0,
                Some(0),
            ),
        ];
        for (name, candidates, start, want) in table {
            assert_eq!(choose(candidates, *start), *want, "{name}");
        }
    }

    #[test]
    fn update_keeps_unchanged_slots() {
        let pool = Pool::default();
        let slot = |slot: u32, path: &str| SlotSocket {
            slot,
            path: path.into(),
        };
        pool.update(vec![slot(0, "/a"), slot(1, "/b")]);
        let before = pool.snapshot();
        pool.update(vec![slot(0, "/a"), slot(1, "/c"), slot(2, "/d")]);
        let after = pool.snapshot();
        assert!(Arc::ptr_eq(&before[0], &after[0]), "slot 0 kept");
        assert!(
            !Arc::ptr_eq(&before[1], &after[1]),
            "slot 1 has a new socket"
        );
        assert_eq!(pool.snapshot().len(), 3);
        pool.update(vec![]);
        assert!(pool.pick(&[]).is_none());
    }

    #[tokio::test]
    async fn a_dead_socket_marks_the_slot_down() {
        let pool = Pool::default();
        pool.update(vec![SlotSocket {
            slot: 0,
            path: "/nonexistent/genro-proxy-test.sock".into(),
        }]);
        let upstream = pool.pick(&[]).expect("one slot");
        assert!(!upstream.is_down(Instant::now()));
        let err = upstream
            .sender(pool.response_buffer())
            .await
            .expect_err("connect fails");
        assert!(matches!(err, ConnectError::Io { .. }), "{err}");
        assert!(upstream.is_down(Instant::now()));
        assert!(!upstream.is_down(Instant::now() + DOWN_FOR));
    }
}
