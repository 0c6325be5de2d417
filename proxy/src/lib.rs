//! The genro-asgi HTTP/3 front: terminates QUIC (quinn + h3 + rustls) on the UDP socket
//! the supervisor bound, and forwards every request over HTTP/2 to a worker slot's
//! private Unix socket. One front serves the whole fleet: QUIC cannot be spread over
//! processes with SO_REUSEPORT without breaking connection migration (DESIGN.md).
//!
//! Lifecycle ([`run`], then [`serve`]):
//! 1. connect to the supervisor's control socket and say hello (role `front`);
//! 2. build the TLS and QUIC configuration (bad `[ssl]` files: exit 2) and the endpoint on
//!    the inherited UDP socket;
//! 3. when the first slot list arrives, report ready; heartbeat every second;
//! 4. serve: a task per QUIC connection, a task per request (`forward.rs`), each request
//!    sent to the slot with the fewest requests in flight (`upstream.rs`);
//! 5. on a reload, the supervisor sends the new configuration: new connections get its
//!    certificate and QUIC/HTTP/3 limits, open ones keep theirs (`reconfigure`);
//! 6. on a drain (the supervisor's `drain`, the control connection lost, SIGTERM/SIGINT):
//!    refuse new connections, GOAWAY every connection, let requests finish within
//!    `[server] graceful_timeout` (`server.rs`), exit 0.
#![warn(missing_docs, missing_debug_implementations)]

mod body;
mod control;
mod forward;
mod server;
mod stall;
mod tls;
mod tunnel;
mod upstream;

pub use tls::{server_config, TlsError};

use genro_config::Config;
use genro_shared::exit;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// What the supervisor hands the front.
#[derive(Debug)]
pub struct FrontArgs {
    /// The effective configuration.
    pub config: Config,
    /// The supervisor's control socket.
    pub control: PathBuf,
    /// The already-bound UDP socket's fd ([`genro_shared::LISTEN_FD`]).
    pub udp_fd: i32,
    /// Generation of the front.
    pub generation: u64,
}

/// Runs the front on its own runtime; returns the process exit code
/// ([`genro_shared::exit`]).
pub fn run(args: FrontArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("genro-h3")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("HTTP/3 front: tokio runtime: {err}");
            return exit::INTERNAL;
        }
    };
    // SAFETY: the supervisor passed the bound UDP socket on this fd, and nothing else in
    // this process owns it.
    let socket = unsafe { std::net::UdpSocket::from_raw_fd(args.udp_fd) };
    runtime.block_on(async move {
        let control = match tokio::net::UnixStream::connect(&args.control).await {
            Ok(control) => control,
            Err(err) => {
                tracing::error!(
                    "connecting to the control socket {}: {err}",
                    args.control.display()
                );
                return exit::INTERNAL;
            }
        };
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(genro_shared::signals::stop_loop(stop_tx));
        serve(Parts {
            config: Arc::new(args.config),
            control,
            socket,
            generation: args.generation,
            stop,
        })
        .await
    })
}

/// Everything [`run`] makes before serving; tests make them themselves.
#[derive(Debug)]
pub struct Parts {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// A connection to the supervisor's control socket, before hello.
    pub control: tokio::net::UnixStream,
    /// The bound UDP socket.
    pub socket: std::net::UdpSocket,
    /// Generation of the front, for the hello.
    pub generation: u64,
    /// Turns true to start the drain (what SIGTERM does in [`run`]).
    pub stop: watch::Receiver<bool>,
}

/// Says hello, serves HTTP/3 until drained, returns the exit code. Must run inside a
/// tokio runtime with I/O and time enabled.
pub async fn serve(parts: Parts) -> i32 {
    let Parts {
        config,
        control,
        socket,
        generation,
        mut stop,
    } = parts;
    let (read, mut write) = control.into_split();
    if let Err(err) = control::hello(&mut write, generation).await {
        tracing::error!("control socket: {err}");
        return exit::INTERNAL;
    }
    let server_config = match tls::server_config(&config) {
        Ok(server_config) => server_config,
        Err(err) => {
            tracing::error!("{err}");
            return exit::CONFIG;
        }
    };
    let endpoint = match endpoint(socket, server_config) {
        Ok(endpoint) => endpoint,
        Err(err) => {
            tracing::error!("QUIC endpoint: {err}");
            return exit::INTERNAL;
        }
    };
    if let Ok(addr) = endpoint.local_addr() {
        tracing::info!("HTTP/3 front on udp {addr}");
    }
    let (settings_tx, settings) = watch::channel(server::Settings::of(&config));
    let (configure, configured) = watch::channel(config.clone());
    let shared = Arc::new(forward::Shared {
        pool: Arc::new(upstream::Pool::default()),
        stats: Arc::new(control::Stats::default()),
    });
    shared
        .pool
        .set_response_buffer(config.limits.response_buffer);
    let reconfigure_task = tokio::spawn(reconfigure(
        endpoint.clone(),
        configured,
        settings_tx,
        shared.pool.clone(),
    ));
    let (drain_tx, drain) = watch::channel(false);
    let control_task = tokio::spawn(control::run(
        read,
        write,
        shared.pool.clone(),
        shared.stats.clone(),
        drain_tx.clone(),
        configure,
    ));
    let stop_task = tokio::spawn(async move {
        if stop.wait_for(|stop| *stop).await.is_ok() {
            tracing::info!("stop signal: draining");
            drain_tx.send_replace(true);
        }
    });
    server::serve(endpoint, shared, settings, drain).await;
    reconfigure_task.abort();
    stop_task.abort();
    control_task.abort();
    exit::OK
}

/// Applies each configuration the supervisor sends on reload to new connections: TLS and
/// QUIC through the endpoint, HTTP/3 limits, timeouts and the grace through `settings`,
/// the per-stream budget to new worker connections. A configuration whose certificate
/// does not load is refused and the current one kept.
async fn reconfigure(
    endpoint: quinn::Endpoint,
    mut configured: watch::Receiver<Arc<Config>>,
    settings: watch::Sender<server::Settings>,
    pool: Arc<upstream::Pool>,
) {
    while configured.changed().await.is_ok() {
        let config = configured.borrow_and_update().clone();
        match tls::server_config(&config) {
            Ok(server_config) => {
                endpoint.set_server_config(Some(server_config));
                settings.send_replace(server::Settings::of(&config));
                pool.set_response_buffer(config.limits.response_buffer);
                tracing::info!("reload: new connections get the new TLS and HTTP/3 settings");
            }
            Err(err) => {
                tracing::error!("reload: {err}; new connections keep the current certificate")
            }
        }
    }
}

fn endpoint(
    socket: std::net::UdpSocket,
    server_config: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    socket.set_nonblocking(true)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}
