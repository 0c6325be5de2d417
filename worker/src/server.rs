//! The worker's HTTP server: accepts on the slot's socket, terminates TLS, serves
//! HTTP/1.1 and HTTP/2 (prior-knowledge h2c and ALPN `h2`) with hyper, applies the
//! `[limits]`, and drains gracefully when told to stop.

mod conn;
mod interim;
mod proxied;
mod record;
mod service;

use interim::Interim;
pub(crate) use interim::{EarlyHints, Hints};

use crate::admission::ConnInfo;
use crate::handoff::Event;
use crate::io_watch::Watched;
use crate::metrics::ErrorKind;
use crate::sendfile::{FileSlot, FileSocket};
use crate::state::Shared;
use conn::{stopped, ConnCtx, ConnState, Driver};
use genro_config::Config;
use genro_shared::access::AccessFormat;
use genro_shared::tls;
use http::header::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Most concurrent streams on the HTTP/3 front's connection to this worker (its
/// WebSockets each hold one; plain requests are bounded by `max_concurrency`).
const FRONT_MAX_STREAMS: u32 = 65_536;
use tracing::Instrument;

/// Accepted connections whose task has not started yet. A flood of new connections that
/// outpaces the I/O thread would otherwise move the kernel's listen queue into the heap
/// (a task spawned per connection, 10-15 KiB each once started: 5,000 at once, +60 MiB,
/// measured with clients that send a request and leave). Past this bound the accept loop
/// waits for a task to start, and new connections wait in the listen backlog
/// (`[server] backlog`), where the kernel bounds them.
const UNSTARTED: usize = 128;

/// Counts a pause of the accept loop, and says so at most every 10 s.
fn accept_paused(shared: &Shared) {
    static PAUSED_LOG_EVERY: crate::budget::LogEvery =
        crate::budget::LogEvery::new(Duration::from_secs(10));
    shared.limit(crate::metrics::Limit::AcceptPaused);
    if PAUSED_LOG_EVERY.due() {
        tracing::warn!("new connections outpace this worker: {UNSTARTED} accepted connections wait for their task, so accepting paused and new ones wait in the listen backlog (logged at most every {}s)", PAUSED_LOG_EVERY.secs());
    }
}

/// Counts a connection refused for `[server] proxy_protocol`, and says why at debug
/// level at most every 10 s: a flood of them must not fill the log.
fn proxy_refused(shared: &Shared, peer: std::net::SocketAddr, refused: &proxied::Refused) {
    static REFUSED_LOG_EVERY: crate::budget::LogEvery =
        crate::budget::LogEvery::new(Duration::from_secs(10));
    shared.proxy_refused(refused.reason());
    if REFUSED_LOG_EVERY.due() {
        tracing::debug!(%peer, "connection refused: {refused} (counted in proxy_protocol_errors_total; logged at most every {}s)", REFUSED_LOG_EVERY.secs());
    }
}

/// Limits and settings the request path reads on every request.
#[derive(Debug)]
pub struct Limits {
    /// `[limits] max_concurrency` (0: unlimited).
    pub max_concurrency: usize,
    /// `[limits] max_body_size` (0: unlimited).
    pub max_body_size: u64,
    /// `[limits] response_buffer`.
    pub response_buffer: usize,
    /// `[limits] connection_buffer`.
    pub connection_buffer: usize,
    /// `[limits] send_timeout` (zero: none).
    pub send_timeout: Duration,
    /// `Alt-Svc` announcing HTTP/3 on TCP responses, when it is on.
    pub alt_svc: Option<HeaderValue>,
    /// `[websocket]`.
    pub websocket: Arc<crate::websocket::Settings>,
    /// The proxies whose forwarding headers are honoured (`[server] proxy_headers`).
    pub proxies: Option<genro_config::net::Trusted>,
    /// `[server] sendfile`.
    pub sendfile: bool,
    /// `[static]` mounts, answered before the app (`None`: none configured).
    pub(crate) statics: Option<Arc<crate::statics::Statics>>,
}

/// What [`serve`] serves with besides the configuration: TLS and the static mounts, set
/// up (and their errors reported) before the app is loaded.
pub(crate) struct Serving {
    /// The TLS acceptor, when `[ssl]` is on.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The `[static]` mounts, their directories open.
    pub(crate) statics: Option<Arc<crate::statics::Statics>>,
}

/// Whether `fd` is a Unix-domain socket (the `[server] uds` one) rather than TCP.
pub fn is_unix_socket(fd: i32) -> bool {
    // SAFETY: getsockname writes at most `len` bytes into the zeroed storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
            && i32::from(storage.ss_family) == libc::AF_UNIX
    }
}

/// The socket a worker serves clients on: its slot's TCP socket, or the `[server] uds`
/// Unix socket every worker shares (with its path).
#[derive(Debug)]
pub enum Listen {
    /// `[server] host`/`port`.
    Tcp(std::net::TcpListener),
    /// `[server] uds`.
    Unix(std::os::unix::net::UnixListener, Arc<str>),
}

/// Builds the rustls acceptor from `[ssl]` (ALPN `h2`, then `http/1.1`), or `None` when
/// TLS is off.
pub fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, tls::TlsError> {
    let ssl = &config.ssl;
    if !ssl.enabled {
        return Ok(None);
    }
    let server_config = tls::server_config(ssl, ssl.min_version, &[b"h2", b"http/1.1"])?;
    crate::scope::set_server_cert(tls::leaf_pem(ssl));
    Ok(Some(TlsAcceptor::from(Arc::new(server_config))))
}

/// Serves `listener` until `stop` turns true, then drains within `graceful_timeout`,
/// pushing [`Event::Shutdown`] once the drain is over (or timed out). On `Err` (before
/// serving) it pushes nothing.
pub async fn serve(
    listener: Listen,
    front: Option<std::os::unix::net::UnixListener>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    serving: Serving,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Serving { tls, statics } = serving;
    let (listener, uds) = match listener {
        Listen::Tcp(listener) => {
            listener.set_nonblocking(true)?;
            (Some(TcpListener::from_std(listener)?), None)
        }
        Listen::Unix(listener, path) => {
            listener.set_nonblocking(true)?;
            (
                None,
                Some((tokio::net::UnixListener::from_std(listener)?, path)),
            )
        }
    };
    let front = match front {
        Some(front) => {
            front.set_nonblocking(true)?;
            Some(tokio::net::UnixListener::from_std(front)?)
        }
        None => None,
    };
    let local = match &listener {
        Some(listener) => listener.local_addr()?,
        None => genro_shared::UNIX_PEER,
    };
    let alt_svc = config.http3.enabled.then(|| {
        let port = match config.http3.port {
            0 => local.port(),
            port => port,
        };
        let max_age = config.http3.alt_svc_max_age.as_secs();
        HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age}"))
            .expect("digits and quotes are a valid header value")
    });
    let limits = Arc::new(Limits {
        max_concurrency: config.limits.max_concurrency,
        max_body_size: config.limits.max_body_size,
        response_buffer: usize::try_from(config.limits.response_buffer).unwrap_or(usize::MAX),
        connection_buffer: usize::try_from(config.limits.connection_buffer).unwrap_or(usize::MAX),
        send_timeout: config.limits.send_timeout,
        alt_svc,
        websocket: Arc::new(crate::websocket::Settings::new(&config)),
        proxies: match config.server.proxy_headers {
            true => Some(
                genro_config::net::Trusted::parse(&config.server.forwarded_allow_ips)
                    .map_err(|bad| anyhow::anyhow!("[server] forwarded_allow_ips: {bad}"))?,
            ),
            false => None,
        },
        sendfile: config.server.sendfile,
        statics,
    });
    let keep_alive = config.server.keep_alive_timeout;
    let early_hints = config.server.early_hints;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // keep_alive_timeout = 0 turns keep-alive off: one request per connection.
        .keep_alive(!keep_alive.is_zero())
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size((config.limits.max_header_size as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol()
        // What h2 buffers per stream beyond our budgets: one piece (docs/SECURITY.md).
        .max_send_buf_size(crate::body::PIECE)
        .max_header_list_size(config.limits.max_header_size.min(u32::MAX as u64) as u32);
    // The front's connection carries every HTTP/3 client's requests to this worker, and
    // each WebSocket over HTTP/3 holds a stream for its whole life: hyper's default of 200
    // concurrent streams would let 200 sessions stall every other HTTP/3 request here.
    // Requests in flight are bounded by `max_concurrency` (503 beyond).
    let mut front_builder = builder.clone();
    front_builder
        .http2()
        .max_concurrent_streams(FRONT_MAX_STREAMS);
    let handshake_timeout = config.limits.header_read_timeout;
    let access = if config.logging.access_log {
        let format = AccessFormat::parse(&config.logging.access_format)
            .map_err(|e| anyhow::anyhow!("[logging] access_format: {e}"))?;
        Some(Arc::new(format))
    } else {
        None
    };
    // Every connection task holds a clone; the drain waits until all are dropped.
    let (live, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let conn_stop = stop.clone();
    let unstarted = Arc::new(tokio::sync::Semaphore::new(UNSTARTED));
    let proxy_gate = proxied::Gate::new(&config)?.map(Arc::new);
    let spawn_connection =
        |mut stream: tokio::net::TcpStream,
         peer: std::net::SocketAddr,
         not_started: Option<tokio::sync::OwnedSemaphorePermit>| {
            if let Some(gate) = &proxy_gate {
                if !gate.admits(peer) {
                    // Refused before a task exists, so a flood costs no memory.
                    proxy_refused(&shared, peer, &proxied::Refused::Untrusted);
                    return;
                }
            }
            let _ = stream.set_nodelay(true);
            let server = stream.local_addr().unwrap_or(peer);
            let builder = builder.clone();
            let stop = conn_stop.clone();
            let live = live.clone();
            let tls = tls.clone();
            let shared = shared.clone();
            let limits = limits.clone();
            let access = access.clone();
            let gate = proxy_gate.clone();
            // ERROR level: the span exists whenever anything is logged, so a warning
            // inside it names the peer too (and the client, once a PROXY header named it).
            let span = tracing::error_span!("conn", peer = %peer, client = tracing::field::Empty);
            let task = async move {
                drop(not_started);
                let client = match &gate {
                    None => peer,
                    Some(gate) => match gate.client(&mut stream, peer).await {
                        Ok(client) => {
                            tracing::Span::current()
                                .record("client", tracing::field::display(client));
                            client
                        }
                        Err(refused) => {
                            proxy_refused(&shared, peer, &refused);
                            return;
                        }
                    },
                };
                let mut state = ConnState::new(&limits, false);
                let hints = early_hints.then(|| Arc::new(Hints::default()));
                if tls.is_none() && limits.sendfile {
                    let sent = shared.metrics.as_ref().map(|m| m.sendfile_bytes.clone());
                    state.sendfile = Some(Arc::new(FileSlot::new(sent)));
                }
                let ctx = Arc::new(ConnCtx {
                    info: Arc::new(ConnInfo {
                        client,
                        server,
                        https: tls.is_some(),
                        front: false,
                        tls: Default::default(),
                        unix: None,
                        early_hints,
                        hints: hints.clone(),
                    }),
                    state: Arc::new(state),
                    shared: shared.clone(),
                    limits,
                    access,
                    _live: live.clone(),
                });
                let io_watch = ctx.state.io.clone();
                let info = ctx.info.clone();
                let slot = ctx.state.sendfile.clone();
                let driver = Driver {
                    builder,
                    ctx,
                    stop,
                    keep_alive,
                    header_read_timeout: handshake_timeout,
                    fd: Some(std::os::fd::AsRawFd::as_raw_fd(&stream)),
                };
                let _live = live;
                match tls {
                    None => {
                        let stream = Watched::new(FileSocket::new(stream, slot), io_watch);
                        driver
                            .drive(TokioIo::new(Interim::new(stream, hints)))
                            .await
                    }
                    Some(acceptor) => {
                        let stream = Watched::new(stream, io_watch);
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(stream)) => {
                                let facts =
                                    genro_shared::tls_facts::TlsFacts::of(stream.get_ref().1);
                                let _ = info.tls.set(Arc::new(facts));
                                // ALPN decides the protocol over TLS, not preface detection.
                                let negotiated =
                                    crate::alpn::Negotiated::of(stream.get_ref().1.alpn_protocol());
                                let gate = crate::alpn::gate(stream, negotiated);
                                match tokio::time::timeout(handshake_timeout, gate).await {
                                    Ok(Ok(stream)) => {
                                        driver
                                            .drive(TokioIo::new(Interim::new(stream, hints)))
                                            .await
                                    }
                                    Ok(Err(crate::alpn::Refused::Io(err))) => {
                                        tracing::debug!("connection ended: {err}");
                                    }
                                    Ok(Err(refused)) => {
                                        tracing::debug!("{refused}");
                                        shared.error(ErrorKind::Client);
                                    }
                                    Err(_) => {
                                        tracing::debug!("no request within header_read_timeout");
                                        shared.error(ErrorKind::Client);
                                    }
                                }
                            }
                            Ok(Err(err)) => {
                                tracing::debug!("TLS handshake failed: {err}");
                                shared.error(ErrorKind::Client);
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                shared.error(ErrorKind::Client);
                            }
                        }
                    }
                }
            };
            tokio::spawn(task.instrument(span));
        };
    // The front's connections: HTTP/2 from a trusted peer; the client is per request.
    let front_info = Arc::new(ConnInfo {
        client: local,
        server: local,
        https: true,
        front: true,
        tls: Default::default(),
        unix: None,
        early_hints,
        hints: None,
    });
    // A Unix-socket connection: the front's (HTTP/2 from a trusted peer, the client per
    // request, no keep-alive limit) or the uds socket's (HTTP/1.1 or h2c from a local
    // proxy). `peer` names it in the log.
    let spawn_local = |stream: tokio::net::UnixStream,
                       info: Arc<ConnInfo>,
                       keep_alive: Duration,
                       not_started: Option<tokio::sync::OwnedSemaphorePermit>,
                       peer: &'static str| {
        let hints = info.hints.clone();
        let ctx = Arc::new(ConnCtx {
            state: Arc::new(ConnState::new(&limits, info.front)),
            info,
            shared: shared.clone(),
            limits: limits.clone(),
            access: access.clone(),
            _live: live.clone(),
        });
        let stream = Watched::new(stream, ctx.state.io.clone());
        let driver = Driver {
            builder: if ctx.info.front {
                front_builder.clone()
            } else {
                builder.clone()
            },
            ctx,
            stop: conn_stop.clone(),
            keep_alive,
            header_read_timeout: handshake_timeout,
            fd: None,
        };
        let live = live.clone();
        let task = async move {
            drop(not_started);
            let _live = live;
            driver
                .drive(TokioIo::new(Interim::new(stream, hints)))
                .await;
        };
        tokio::spawn(task.instrument(tracing::error_span!("conn", peer = peer)));
    };
    // The front's requests' clients are in their own lines (`request{client}`).
    let spawn_front = |stream| {
        spawn_local(
            stream,
            front_info.clone(),
            Duration::ZERO,
            None,
            "http3-front",
        )
    };
    let spawn_unix = |stream, path: Arc<str>, not_started| {
        let info = Arc::new(ConnInfo {
            client: genro_shared::UNIX_PEER,
            server: genro_shared::UNIX_PEER,
            https: false,
            front: false,
            tls: Default::default(),
            unix: Some(path),
            early_hints,
            hints: early_hints.then(|| Arc::new(Hints::default())),
        });
        spawn_local(stream, info, keep_alive, not_started, "unix")
    };
    loop {
        // A permit first: at most UNSTARTED accepted connections wait for their task.
        let permit = || async {
            match unstarted.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    accept_paused(&shared);
                    unstarted.clone().acquire_owned().await.ok()
                }
            }
        };
        // Either the TCP or the uds socket is served, never both: one permit waits.
        let accept = async {
            match &listener {
                Some(listener) => {
                    let permit = permit().await;
                    listener.accept().await.map(|accepted| (accepted, permit))
                }
                None => std::future::pending().await,
            }
        };
        let accept_uds = async {
            match &uds {
                Some((uds, path)) => {
                    let permit = permit().await;
                    uds.accept()
                        .await
                        .map(|(stream, _)| (stream, path.clone(), permit))
                }
                None => std::future::pending().await,
            }
        };
        let accept_front = async {
            match &front {
                Some(front) => front.accept().await.map(|(stream, _)| stream),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = accept => match accepted {
                Ok(((stream, client), permit)) => spawn_connection(stream, client, permit),
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    shared.error(ErrorKind::Internal);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = accept_uds => match accepted {
                Ok((stream, path, permit)) => spawn_unix(stream, path, permit),
                Err(err) => {
                    tracing::warn!("accept on the uds socket failed: {err}");
                    shared.error(ErrorKind::Internal);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            accepted = accept_front => match accepted {
                Ok(stream) => spawn_front(stream),
                Err(err) => {
                    tracing::warn!("accept on the front socket failed: {err}");
                    shared.error(ErrorKind::Internal);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut stop) => break,
        }
    }
    drop(front);
    shared.draining.store(true, Ordering::Relaxed);
    crate::scope::start_drain_grace(&shared);
    // Serve what the kernel already queued for us (on a full stop, closing the listener
    // would reset those connections), then close it. A worker retiring at `max_requests`
    // leaves them to its successor: the supervisor keeps the socket open.
    let listener = listener.map(TcpListener::into_std).transpose()?;
    let uds = uds
        .map(|(uds, path)| uds.into_std().map(|uds| (uds, path)))
        .transpose()?;
    while let (false, Some((uds, path))) = (shared.retiring.load(Ordering::Relaxed), &uds) {
        match uds.accept() {
            Ok((stream, _)) => match stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(stream))
            {
                Ok(stream) => spawn_unix(stream, path.clone(), None),
                Err(err) => tracing::warn!("queued connection: {err}"),
            },
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => {
                tracing::warn!("accept failed while draining: {err}");
                break;
            }
        }
    }
    while let (false, Some(listener)) = (shared.retiring.load(Ordering::Relaxed), &listener) {
        match listener.accept() {
            Ok((stream, client)) => {
                match stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream))
                {
                    Ok(stream) => spawn_connection(stream, client, None),
                    Err(err) => tracing::warn!("queued connection: {err}"),
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => {
                tracing::warn!("accept failed while draining: {err}");
                break;
            }
        }
    }
    drop(listener);
    drop(uds);
    drop(live);
    let grace = config.server.graceful_timeout;
    tracing::info!(
        "draining: no longer accepting; waiting up to {:.1}s for in-flight requests",
        grace.as_secs_f64()
    );
    let drained = tokio::time::timeout(grace, all_closed.recv()).await.is_ok();
    if !drained {
        let (left, total) = shared.registry.snapshot(LOG_CANCELLED);
        tracing::warn!(
            in_flight = total,
            "graceful_timeout reached with requests still in flight; cancelling them"
        );
        for r in &left {
            tracing::warn!(
                "cancelling request {} {} {} from {} ({}, running {:.1}s)",
                r.request_id,
                r.method,
                r.path,
                r.client,
                r.protocol,
                r.age
            );
        }
    }
    // Stop the event loop (exactly once): the Python side then cancels what still runs,
    // whose answers (503, or aborts) travel back over the connections still open...
    shared.handoff.push(Event::Shutdown);
    if !drained {
        // ...so give those connections a moment to write them before the process exits.
        let _ = tokio::time::timeout(CANCEL_FLUSH, all_closed.recv()).await;
    }
    Ok(())
}

/// Most cancelled requests listed one by one in the log.
const LOG_CANCELLED: usize = 50;

/// How long cancelled requests' answers get to reach their clients after the drain.
const CANCEL_FLUSH: Duration = Duration::from_secs(3);
