//! One connection's life: hyper serving it, the idle and keep-alive timers, the drain
//! linger, and the `send_timeout` checks on its socket and budget.

use super::service::handle;
use super::Limits;
use crate::admission::ConnInfo;
use crate::budget::{instant_of, now_ms, ConnBuffers};
use crate::io_watch::IoWatch;
use crate::metrics::{ErrorKind, Protocol};
use crate::state::Shared;
use genro_shared::access::AccessFormat;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Per-connection state read by the keep-alive idle timer.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) in_flight: AtomicUsize,
    /// Requests seen on this connection (any outcome).
    pub(super) requests: AtomicU64,
    /// When the last response finished, in milliseconds since `epoch`.
    last_active_ms: AtomicU64,
    epoch: Instant,
    /// The protocol of the first request, once counted in the metrics.
    pub(super) protocol: std::sync::OnceLock<Protocol>,
    /// The connection's response-byte budget and stalled streams.
    pub(super) buffers: Arc<ConnBuffers>,
    /// The socket's writes.
    pub(super) io: Arc<IoWatch>,
    /// The HTTP/3 front's connection (see [`ConnState::new`]).
    pub(super) front: bool,
    /// Where `pathsend` files are lent to the socket: plaintext TCP connections only,
    /// when `[server] sendfile` is on ([`crate::sendfile`]).
    pub(super) sendfile: Option<Arc<crate::sendfile::FileSlot>>,
}

impl ConnState {
    /// A client connection's state, or the HTTP/3 front's (`front`): the front's one
    /// connection carries the streams of every HTTP/3 client, so it gets no connection
    /// budget of its own and no connection-wide stall check (the front bounds each of its
    /// clients and resets their stalled streams itself, docs/HTTP3.md).
    pub(super) fn new(limits: &Limits, front: bool) -> Self {
        ConnState {
            front,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            protocol: std::sync::OnceLock::new(),
            buffers: Arc::new(if front {
                ConnBuffers::front()
            } else {
                ConnBuffers::new(limits.connection_buffer)
            }),
            io: Arc::new(IoWatch::default()),
            sendfile: None,
        }
    }

    /// When the stall check should look next (`send_timeout` from now at the latest).
    fn stall_check(&self, send_timeout: Duration) -> Instant {
        let mut at = Instant::now() + send_timeout;
        if let Some(since) = self.io.blocked_since() {
            at = at.min(instant_of(since) + send_timeout);
        }
        if self.buffers.budget.used() != 0 {
            at = at.min(instant_of(self.buffers.budget.progress_ms()) + send_timeout);
        }
        at
    }

    /// Why the connection must be closed for `send_timeout`, if it must: the socket took
    /// no bytes for that long while we had some to write, response bytes waited that long
    /// with none taken, or every request on it is a stalled stream.
    fn stalled(&self, send_timeout: Duration) -> Option<&'static str> {
        if send_timeout.is_zero() {
            return None;
        }
        let timeout = send_timeout.as_millis() as u64;
        let now = now_ms();
        if self
            .io
            .blocked_since()
            .is_some_and(|since| now.saturating_sub(since) >= timeout)
        {
            return Some("the socket took no bytes");
        }
        if self.front {
            return None;
        }
        if self.buffers.budget.stalled(send_timeout) {
            return Some("no response bytes were taken (flow-control window closed)");
        }
        let stalled = self.buffers.stalled.load(Ordering::Acquire);
        if stalled != 0 && stalled >= self.in_flight.load(Ordering::Relaxed) {
            return Some("every response on it stalled");
        }
        None
    }

    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    /// When the idle timer should look again: a connection that never sent a request has
    /// `header_read_timeout` from its start (slowloris, silent sockets, half an HTTP/2
    /// preface); afterwards, `keep_alive` from the end of its last response.
    fn next_check(&self, keep_alive: Duration, header_read_timeout: Duration) -> Option<Instant> {
        if self.requests.load(Ordering::Relaxed) == 0 {
            // A fresh connection is idle too: whichever limit comes first.
            let first = self.epoch + header_read_timeout;
            return Some(if keep_alive.is_zero() {
                first
            } else {
                first.min(self.epoch + keep_alive)
            });
        }
        if keep_alive.is_zero() {
            return None;
        }
        let idle_for = keep_alive + keep_alive.mul_f64(0.25).min(KEEP_ALIVE_GRACE);
        Some(match self.idle_since() {
            Some(since) => since + idle_for,
            None => Instant::now() + idle_for,
        })
    }

    /// When the connection became idle (its last response done and its last bytes
    /// written), or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) != 0 {
            return None;
        }
        let done = self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        Some(done.max(instant_of(self.io.last_write_ms())))
    }
}

/// Everything a connection's requests share.
pub(super) struct ConnCtx {
    pub(super) info: Arc<ConnInfo>,
    pub(super) state: Arc<ConnState>,
    pub(super) shared: Arc<Shared>,
    pub(super) limits: Arc<Limits>,
    /// The access-log format, when `[logging] access_log` is on.
    pub(super) access: Option<Arc<AccessFormat>>,
    /// Held while the connection (or a WebSocket it upgraded to) lives: the drain waits
    /// for every clone to go.
    pub(super) _live: tokio::sync::mpsc::Sender<()>,
}

/// Counts a WebSocket as a request in flight on its connection (for the idle timer).
pub(super) struct ConnBusy(pub(super) Arc<ConnState>);

impl ConnBusy {
    pub(super) fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        ConnBusy(state)
    }
}

impl Drop for ConnBusy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Extra idle time (25% of `keep_alive_timeout`, at most this) before an idle HTTP/1.1
/// connection is closed: a client pool whose idle expiry equals the server's timeout
/// (httpx: 5 s, as ours) starts its clock a little after our last write, so without it the
/// client would sometimes reuse a connection just as we close it, and its request would
/// meet the close ("server disconnected without sending a response").
const KEEP_ALIVE_GRACE: Duration = Duration::from_secs(1);

/// How long a draining worker keeps an idle HTTP/1.1 keep-alive connection open, so a
/// request the client already sent is answered (with `Connection: close`) instead of
/// meeting a closed socket.
const DRAIN_LINGER: Duration = Duration::from_millis(500);

/// What serving one connection needs besides its socket.
pub(super) struct Driver {
    pub(super) builder: auto::Builder<TokioExecutor>,
    pub(super) ctx: Arc<ConnCtx>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) keep_alive: Duration,
    pub(super) header_read_timeout: Duration,
    /// The socket, for `FIONREAD` before an idle close (none for the front's).
    pub(super) fd: Option<std::os::fd::RawFd>,
}

impl Driver {
    /// Serves one connection until it ends, closing it gracefully when the worker drains or
    /// when it stayed idle (no request in flight) for `keep_alive`.
    pub(super) async fn drive<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let Driver {
            builder,
            ctx,
            mut stop,
            keep_alive,
            header_read_timeout,
            fd,
        } = self;
        let state = ctx.state.clone();
        let limits = ctx.limits.clone();
        let _counted = (!ctx.info.front && ctx.shared.metrics.is_some()).then(|| Counted {
            shared: ctx.shared.clone(),
            state: state.clone(),
        });
        let shared = ctx.shared.clone();
        let service = service_fn(move |request| handle(request, ctx.clone()));
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let mut closing = false;
        let mut draining_until: Option<Instant> = None;
        let send_timeout = limits.send_timeout;
        loop {
            let linger_end = draining_until.unwrap_or_else(Instant::now);
            let check_at = state.next_check(keep_alive, header_read_timeout);
            let stall_at = (!send_timeout.is_zero()).then(|| state.stall_check(send_timeout));
            let kicked = state.buffers.kick.notified();
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!("connection ended: {err}");
                        if err
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(|e| e.is_parse() || e.is_parse_too_large() || e.is_timeout())
                        {
                            shared.error(ErrorKind::Client);
                        }
                    }
                    return;
                }
                _ = stopped(&mut stop), if draining_until.is_none() && !closing => {
                    draining_until = Some(Instant::now() + DRAIN_LINGER.min(keep_alive));
                }
                _ = tokio::time::sleep_until(linger_end.into()), if draining_until.is_some() && !closing => {
                    // HTTP/1.1: closes once the response in flight (if any) is written.
                    // HTTP/2: GOAWAY; the streams in flight finish.
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = tokio::time::sleep_until(check_at.unwrap_or_else(Instant::now).into()), if check_at.is_some() && !closing && draining_until.is_none() => {
                    if state.next_check(keep_alive, header_read_timeout).is_some_and(|at| at <= Instant::now()) {
                        if state.requests.load(Ordering::Relaxed) == 0 {
                            tracing::debug!("no request within header_read_timeout; closing");
                            shared.error(ErrorKind::Client);
                            return;
                        }
                        if pending_input(fd) {
                            // A request already arrived: serve it rather than close under it.
                            state.touch();
                            continue;
                        }
                        tracing::trace!("keep-alive timeout: closing idle connection");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                _ = kicked => {
                    if let Some(why) = state.stalled(send_timeout) {
                        tracing::info!("send_timeout: closing the connection: {why} for {:.0}s", send_timeout.as_secs_f64());
                        return;
                    }
                }
                _ = tokio::time::sleep_until(stall_at.unwrap_or_else(Instant::now).into()), if stall_at.is_some() => {
                    if let Some(why) = state.stalled(send_timeout) {
                        shared.limit(crate::metrics::Limit::SendTimeout);
                        tracing::info!("send_timeout: closing the connection: {why} for {:.0}s", send_timeout.as_secs_f64());
                        return;
                    }
                }
            }
        }
    }
}

/// Whether the client has sent bytes the server has not read yet (`FIONREAD`).
fn pending_input(fd: Option<std::os::fd::RawFd>) -> bool {
    let Some(fd) = fd else {
        return false;
    };
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int into `pending`; fd is the connection's open socket.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) };
    rc == 0 && pending > 0
}

/// Counts a connection in the metrics when it closes.
struct Counted {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(metrics) = &self.shared.metrics else {
            return;
        };
        match self.state.protocol.get() {
            Some(protocol) => metrics.connection_closed(*protocol),
            None => metrics.connection_unknown(),
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
