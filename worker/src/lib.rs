//! The genro-asgi worker: a CPython extension module (`genro_asgi_worker._native`) that the
//! supervisor starts in the user's own python as `python -m genro_asgi_worker`. It imports
//! the ASGI app, runs its lifespan, and serves HTTP/1.1 and HTTP/2 on the slot's inherited
//! socket.
//!
//! Start-up, in order (`module::main`, then [`run`]):
//! 1. connect to the supervisor's control socket and say hello;
//! 2. import the app (failure: exit 3);
//! 3. create the event loop and run lifespan startup (failure: exit 4);
//! 4. start serving on the tokio threads and report ready;
//! 5. run the asyncio loop on this (main) thread until the drain finished;
//! 6. cancel what is left, run lifespan shutdown, exit 0.
#![warn(missing_docs, missing_debug_implementations)]

// Layers, each using only those above it:
// - leaves: alpn, budget, metrics, body, registry, health, forwarded, target, header_check,
//   proxy_protocol, proxy_protocol_check, io_watch, response, convert, trim, title;
// - the hand-off to the Python thread (handoff) and the awaitables (awaitable);
// - the worker's state (state), then what every exchange starts from (admission, scope);
// - the protocols: HTTP (receive: the request side, http: the exchange), WebSocket
//   (ws_queue, ws_pump, ws_handshake, websocket), and static files beside them (statics:
//   no Python, but HTTP's bodies and budgets);
// - server, watchdog, and this module on top.
mod admission;
mod alpn;
mod awaitable;
mod body;
mod budget;
mod convert;
mod executors;
mod forwarded;
mod handoff;
pub mod header_check;
mod health;
mod http;
mod io_watch;
mod metrics;
mod module;
mod on_loop;
pub mod proxy_protocol;
pub mod proxy_protocol_check;
mod receive;
mod registry;
mod response;
mod scope;
mod sendfile;
mod server;
mod state;
mod statics;
mod target;
mod title;
mod trim;
mod watchdog;
mod websocket;
mod ws_handshake;
mod ws_pump;
mod ws_queue;

use genro_config::{Config, Lifespan, LogLevel, LoopKind};
use genro_shared::exit;
use genro_shared::protocol::{self, Message, Role};
use handoff::{Drainer, Event, Handoff};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use scope::PyParts;
use state::Shared;
use std::ffi::CString;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::UnixStream;
use tokio::sync::watch;

/// What the supervisor tells a worker.
#[derive(Debug)]
pub struct WorkerArgs {
    /// Slot number.
    pub slot: u32,
    /// Generation of the slot.
    pub generation: u64,
    /// The effective configuration.
    pub config: Config,
    /// The supervisor's control socket.
    pub control: PathBuf,
    /// The listening socket's fd.
    pub listen_fd: i32,
}

const GLUE: &str = include_str!("glue.py");

/// Sends a log line from Python into the worker's tracing sink.
#[pyfunction]
fn log(level: &str, message: &str) {
    match level {
        "ERROR" | "CRITICAL" => tracing::error!(target: "genro_asgi::app", "{message}"),
        "WARNING" => tracing::warn!(target: "genro_asgi::app", "{message}"),
        "DEBUG" => tracing::debug!(target: "genro_asgi::app", "{message}"),
        _ => tracing::info!(target: "genro_asgi::app", "{message}"),
    }
}

/// Writes one record of the app's Python `logging` into the worker's tracing sink, with the
/// record's own logger name, level name, module and thread (see supervisor/src/logs.rs).
#[pyfunction]
fn log_record(
    name: &str,
    levelno: u64,
    levelname: &str,
    message: &str,
    module: &str,
    thread: &str,
) {
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                target: "genro_asgi::py",
                logger = name,
                levelname = levelname,
                levelno = levelno,
                module = module,
                thread = thread,
                "{message}"
            )
        };
    }
    match levelno {
        40.. => emit!(error),
        30..=39 => emit!(warn),
        20..=29 => emit!(info),
        10..=19 => emit!(debug),
        _ => emit!(trace),
    }
}

/// Runs the worker on the calling (main) thread of the python that imported the module;
/// returns the process exit code.
pub fn run(py: Python<'_>, args: WorkerArgs) -> i32 {
    match run_inner(py, args) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("worker failed: {err:#}");
            exit::INTERNAL
        }
    }
}

fn run_inner(py: Python<'_>, args: WorkerArgs) -> anyhow::Result<i32> {
    use anyhow::Context;
    let config = Arc::new(args.config);
    // Every line this worker logs, on any of its threads, carries its slot.
    let worker = tracing::error_span!("worker", slot = args.slot);
    let _in_worker = worker.clone().entered();
    let runtimes = Runtimes::build(config.server.threads, &worker)?;
    let control = runtimes
        .control()
        .block_on(UnixStream::connect(&args.control))
        .with_context(|| {
            format!(
                "connecting to the control socket {}",
                args.control.display()
            )
        })?;
    let (control_read, mut control_write) = control.into_split();
    let hello = Message::Hello {
        role: Role::Worker,
        slot: args.slot,
        pid: std::process::id(),
        generation: args.generation,
    };
    runtimes
        .control()
        .block_on(protocol::write_frame(&mut control_write, &hello))?;

    // SAFETY: the supervisor passed the slot's listening socket on this fd, and nothing
    // else in this process owns it.
    // What the socket is decides, not the configuration: the two could only disagree by a
    // mistake, and a Unix listener on a TCP socket would drop every client.
    let listener = if server::is_unix_socket(args.listen_fd) {
        let path = match &config.server.uds {
            Some(path) => path.display().to_string(),
            None => "unix socket".to_owned(),
        };
        // SAFETY: as above; with `[server] uds` the socket is the shared Unix one.
        server::Listen::Unix(
            unsafe { std::os::unix::net::UnixListener::from_raw_fd(args.listen_fd) },
            path.into(),
        )
    } else {
        if config.server.uds.is_some() {
            tracing::warn!(
                "[server] uds is set but this worker was given a TCP socket; serving TCP"
            );
        }
        server::Listen::Tcp(unsafe { std::net::TcpListener::from_raw_fd(args.listen_fd) })
    };
    let front = config.http3.enabled.then(|| {
        // SAFETY: with HTTP/3 on, the supervisor passes the slot's private Unix socket on
        // this fd, and nothing else in this process owns it.
        unsafe { std::os::unix::net::UnixListener::from_raw_fd(genro_shared::FRONT_FD) }
    });
    let tls = match server::tls_acceptor(&config) {
        Ok(tls) => tls,
        Err(err) => {
            tracing::error!("{err:#}");
            return Ok(exit::CONFIG);
        }
    };
    let statics = match statics::Statics::open(&config) {
        Ok(statics) => statics.map(Arc::new),
        Err(err) => {
            tracing::error!("{err:#}");
            return Ok(exit::CONFIG);
        }
    };

    let notify = config.errors.notify_critical && config.errors.notify_webhook.is_some();
    let (notices, notices_rx) = if notify {
        let (tx, rx) = tokio::sync::mpsc::channel(NOTICES);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let shared = Arc::new(Shared {
        notices,
        handoff: Arc::new(Handoff::new().context("eventfd")?),
        runtime: runtimes.io.handle().clone(),
        root_path: config.server.root_path.clone(),
        body_timeout: config.limits.body_timeout,
        event_streams: state::EventStreams::default(),
        show_traceback: config.errors.show_traceback,
        started: AtomicU64::new(0),
        retire_at: genro_shared::recycle::max_requests(&config.server, std::process::id())
            .unwrap_or(0),
        retire: tokio::sync::Notify::new(),
        retiring: std::sync::atomic::AtomicBool::new(false),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        http_in_flight: std::sync::atomic::AtomicUsize::new(0),
        starts_queued: std::sync::atomic::AtomicUsize::new(0),
        worker_buffer: Arc::new(budget::Budget::new(
            usize::try_from(config.limits.worker_buffer).unwrap_or(usize::MAX),
        )),
        draining: std::sync::atomic::AtomicBool::new(false),
        going_away: tokio::sync::watch::Sender::new(false),
        drain_grace: config
            .websocket
            .drain_grace
            .min(config.server.graceful_timeout),
        registry: registry::Registry::default(),
        executors: Arc::new(executors::Tasks::new(config.executors.processes as usize)),
        health: Arc::new(health::LoopHealth::default()),
        metrics: config
            .metrics
            .enabled
            .then(|| Arc::new(metrics::Metrics::new(&args.slot.to_string()))),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut abandoned = 0usize;
    let code = (|| -> anyhow::Result<i32> {
        let glue = load_glue(py).context("loading the worker glue")?;
        let python_level = match config.logging.level {
            LogLevel::Trace => 1,
            LogLevel::Debug => 10,
            LogLevel::Info => 20,
            LogLevel::Warning => 30,
            LogLevel::Error => 40,
            LogLevel::Critical => 50,
        };
        glue.call_method1(
            "setup",
            (
                wrap_pyfunction!(log, py)?,
                wrap_pyfunction!(log_record, py)?,
                python_level,
            ),
        )?;
        glue.call_method1(
            "set_request_timeout",
            (config.limits.request_timeout.as_secs_f64(),),
        )?;
        let executor_pools = py.import("genro_asgi")?.getattr("executors")?;
        executor_pools.call_method1(
            "configure",
            (
                config.executors.threads,
                config.executors.processes,
                executors::Hooks::new(shared.executors.clone(), shared.metrics.clone()),
            ),
        )?;
        let spec = &config.application.app;
        let app_dir = config.application.app_dir.display().to_string();
        let app = match glue.call_method1("load_app", (spec, app_dir, config.application.factory)) {
            Ok(app) => app,
            Err(err) => {
                let tb = scope::format_error(py, &err);
                tracing::error!("cannot load the app {spec:?}:\n{tb}");
                return Ok(exit::APP_LOAD);
            }
        };
        let loop_kind = match config.server.event_loop {
            LoopKind::Auto => "auto",
            LoopKind::Asyncio => "asyncio",
            LoopKind::Uvloop => "uvloop",
        };
        let (event_loop, loop_name): (Bound<'_, PyAny>, String) =
            match glue.call_method1("new_loop", (loop_kind,)) {
                Ok(pair) => pair.extract()?,
                Err(err) => {
                    tracing::error!("{}", scope::format_error(py, &err));
                    return Ok(exit::APP_LOAD);
                }
            };
        py.import("asyncio")?
            .call_method1("set_event_loop", (&event_loop,))?;
        let lifespan_state = PyDict::new(py);
        let mode = match config.application.lifespan {
            Lifespan::Auto => "auto",
            Lifespan::On => "on",
            Lifespan::Off => "off",
        };
        let lifespan = glue
            .getattr("Lifespan")?
            .call1((&app, mode, &lifespan_state))?;
        if let Err(err) =
            event_loop.call_method1("run_until_complete", (lifespan.call_method0("startup")?,))
        {
            tracing::error!("lifespan startup failed: {}", err.value(py));
            return Ok(exit::STARTUP_FAILED);
        }
        scope::install(
            py,
            PyParts {
                app: app.unbind(),
                run_http: glue.getattr("run_http")?.unbind(),
                event_loop: event_loop.clone().unbind(),
                lifespan_state: lifespan_state.unbind(),
            },
        )?;
        let debugger = start_debugger(py, &config, &args.control, &glue)?;
        let drainer = Py::new(
            py,
            Drainer::new(shared.handoff.clone(), event_loop.getattr("stop")?.unbind()),
        )?;
        event_loop.call_method1("add_reader", (shared.handoff.fd(), drainer.clone_ref(py)))?;
        if let Some(epoll) = runtimes.epoll {
            let turn = on_loop::Turn::new(runtimes.io.clone(), drainer, &event_loop)?;
            event_loop.call_method1("add_reader", (epoll, turn))?;
        }
        glue.call_method1(
            "start_ticker",
            (
                health::Ticker::new(shared.health.clone(), shared.metrics.clone()),
                health::TICK_PERIOD,
            ),
        )?;
        let stacks = match health::Stacks::install(py) {
            Ok(stacks) => Some(Arc::new(stacks)),
            Err(err) => {
                tracing::warn!("stack dumps unavailable: {err:#}");
                None
            }
        };

        // Serve; when the drain is over, `serve` stops the loop through the bridge.
        let serving = {
            let shared_for_serve = shared.clone();
            let config = config.clone();
            let stop_rx = stop_rx.clone();
            runtimes.io.spawn(async move {
                if let Err(err) = server::serve(
                    listener,
                    front,
                    config,
                    shared_for_serve.clone(),
                    server::Serving { tls, statics },
                    stop_rx,
                )
                .await
                {
                    tracing::error!("server failed: {err:#}");
                    shared_for_serve.handoff.push(Event::Shutdown);
                }
            })
        };
        if config.watchdog.enabled {
            runtimes.control().spawn(watchdog::run(
                shared.clone(),
                stacks.clone(),
                config.watchdog.clone(),
            ));
        }
        runtimes.control().spawn(control_loop(
            control_read,
            control_write,
            shared.clone(),
            stacks,
            stop_tx.clone(),
            notices_rx,
        ));
        runtimes
            .control()
            .spawn(genro_shared::signals::stop_loop(stop_tx));
        let quiet = shared.clone();
        runtimes.control().spawn(trim::run(move || {
            quiet
                .http_in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        }));
        tracing::info!(
            slot = args.slot,
            pid = std::process::id(),
            "worker ready ({loop_name} loop)"
        );

        event_loop.call_method0("run_forever")?;

        abandoned = event_loop
            .call_method1(
                "run_until_complete",
                (executor_pools
                    .call_method1("drain", (config.executors.shutdown_timeout.as_secs_f64(),))?,),
            )?
            .extract()?;

        let leftover: usize = event_loop
            .call_method1(
                "run_until_complete",
                (glue.call_method1("cancel_remaining", (1.0, &lifespan))?,),
            )?
            .extract()?;
        if leftover > 0 {
            tracing::warn!("cancelled {leftover} task(s) still running after the drain");
        }
        let timeout = config.server.graceful_timeout.as_secs_f64().max(1.0);
        event_loop.call_method1(
            "run_until_complete",
            (lifespan.call_method1("shutdown", (timeout,))?,),
        )?;
        if let Some(debugger) = debugger {
            debugger.call_method0("close")?;
        }
        let _ = py.import("sys").and_then(|sys| {
            sys.getattr("stdout")?.call_method0("flush")?;
            sys.getattr("stderr")?.call_method0("flush")
        });
        // Let the server finish writing what the cancelled requests answered.
        if let Some(epoll) = runtimes.epoll {
            event_loop.call_method1("remove_reader", (epoll,))?;
        }
        py.detach(|| runtimes.io.block_on(serving)).ok();
        Ok(exit::OK)
    })();
    // Tokio threads may wait for the GIL (a last wake-up, a dropped Python object): let
    // them finish without it.
    py.detach(|| runtimes.shutdown());
    if let (Ok(code), true) = (&code, abandoned > 0) {
        // Python's own exit would wait for those threads, for ever if they never end.
        tracing::warn!(
            "exiting without waiting for {abandoned} executor thread(s) still running (logged above)"
        );
        std::process::exit(*code);
    }
    code
}

/// A runtime's thread-start hook: the thread stays in `span` for its whole life (the guard
/// is never dropped), so its events carry the span's fields.
pub(crate) fn stay_in(span: &tracing::Span) -> impl Fn() + Send + Sync + 'static {
    let span = span.clone();
    move || std::mem::forget(span.clone().entered())
}

/// The worker's tokio runtimes. Layout (a), `threads` >= 1: one multi-thread runtime runs
/// everything. Layout (b), `threads = 0`: the connections run on a current-thread runtime
/// that the event loop drives ([`on_loop`]), and the control plane on a one-thread runtime
/// of its own, so a blocked loop still answers heartbeats and the watchdog still sees it.
struct Runtimes {
    /// Where the connections run.
    io: Arc<tokio::runtime::Runtime>,
    /// Layout (b): the control plane's.
    control: Option<tokio::runtime::Runtime>,
    /// Layout (b): the epoll descriptor of `io`, which the loop watches.
    epoll: Option<std::os::fd::RawFd>,
}

impl Runtimes {
    /// Builds the runtimes of `threads` (0: layout (b)); their threads run in `worker`.
    fn build(threads: usize, worker: &tracing::Span) -> anyhow::Result<Self> {
        use anyhow::Context;
        if threads == 0 {
            let on_loop =
                on_loop::LoopRuntime::build(worker).context("the loop's tokio runtime")?;
            let control = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .on_thread_start(stay_in(worker))
                .thread_name("genro-control")
                .enable_all()
                .build()
                .context("tokio runtime")?;
            return Ok(Runtimes {
                io: on_loop.runtime,
                control: Some(control),
                epoll: Some(on_loop.epoll),
            });
        }
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .on_thread_start(stay_in(worker))
            .thread_name("genro-io")
            .enable_all()
            .build()
            .context("tokio runtime")?;
        Ok(Runtimes {
            io: Arc::new(io),
            control: None,
            epoll: None,
        })
    }

    /// The runtime of the control connection, signals, watchdog and trimmer.
    fn control(&self) -> &tokio::runtime::Runtime {
        self.control.as_ref().unwrap_or(&self.io)
    }

    /// Lets tasks that wait for the GIL (a last wake-up, a dropped Python object) finish
    /// without it, for a second at most.
    fn shutdown(self) {
        let grace = std::time::Duration::from_secs(1);
        if let Some(control) = self.control {
            control.shutdown_timeout(grace);
        }
        // The loop may still hold a turn (a scheduled tick): then the runtime is dropped
        // with the last of them, as the process exits.
        if let Ok(io) = Arc::try_unwrap(self.io) {
            io.shutdown_timeout(grace);
        }
    }
}

/// `[debug] enabled` and `remote_pdb`: the worker's half of the remote debugger
/// (`genro_asgi_worker.debugger`), on `<run_dir>/debug-<pid>.sock`, handed to the glue so
/// failing requests wait for it. A debugger that cannot start (a run_dir too long for a
/// socket path, say) is logged, and the worker serves without it.
fn start_debugger<'py>(
    py: Python<'py>,
    config: &Config,
    control: &std::path::Path,
    glue: &Bound<'py, PyModule>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if !(config.debug.enabled && config.debug.remote_pdb) {
        return Ok(None);
    }
    let run_dir = control.parent().unwrap_or(std::path::Path::new("."));
    let path = run_dir.join(format!("debug-{}.sock", std::process::id()));
    let started = py.import("genro_asgi_worker.debugger").and_then(|m| {
        m.call_method1(
            "start",
            (
                &path,
                config.debug.wait.as_secs_f64(),
                wrap_pyfunction!(log, py)?,
            ),
        )
    });
    match started {
        Ok(debugger) => {
            glue.setattr("_debugger", &debugger)?;
            Ok(Some(debugger))
        }
        Err(err) => {
            tracing::error!(
                "remote debugger unavailable in this worker ({}): {}",
                path.display(),
                err.value(py)
            );
            Ok(None)
        }
    }
}

fn load_glue<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyModule>> {
    // The glue is a constant with no NUL bytes.
    let code = CString::new(GLUE).expect("glue.py has no NUL byte");
    PyModule::from_code(py, &code, c"genro_asgi_glue.py", c"genro_asgi_glue")
}

/// Most requests listed in one answer to `ctl requests` (the frame limit is 1 MiB).
const MAX_LISTED: usize = 2000;
/// Most executor tasks listed (each at most ~600 bytes of JSON: the function name is cut
/// to 256), so requests and tasks fit one control frame together.
const MAX_TASKS_LISTED: usize = 300;
/// Critical events waiting for the control connection; more are dropped.
const NOTICES: usize = 32;
/// Most bytes of stack traces in one answer.
const MAX_STACKS: usize = 512 * 1024;

/// Reports ready and heartbeats to the supervisor, answers its queries, and turns a
/// `drain` (or the supervisor's disappearance) into a stop.
async fn control_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    shared: Arc<Shared>,
    stacks: Option<Arc<health::Stacks>>,
    stop: watch::Sender<bool>,
    notices: Option<tokio::sync::mpsc::Receiver<Message>>,
) {
    use std::sync::atomic::Ordering;
    if protocol::write_frame(&mut write, &Message::Ready)
        .await
        .is_err()
    {
        stop.send_replace(true);
        return;
    }
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let beats = shared.clone();
    let mut notices = notices;
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let notice = async {
                match notices.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                Some(message) = notice => message,
                _ = tick.tick() => Message::Heartbeat {
                    in_flight: beats.in_flight.load(Ordering::Relaxed) as u64,
                    served: beats.started.load(Ordering::Relaxed),
                    loop_lag_ms: beats.health.take_lag_ms(),
                    loop_stalled_ms: beats.health.stalled_ms(),
                    rss: health::rss_bytes(),
                },
                Some(message) = out_rx.recv() => message,
            };
            if protocol::write_frame(&mut write, &message).await.is_err() {
                return;
            }
        }
    });
    let retire = (shared.retire_at != 0).then(|| {
        let (shared, out, stop) = (shared.clone(), out_tx.clone(), stop.clone());
        tokio::spawn(async move {
            shared.retire.notified().await;
            let limit = shared.retire_at;
            tracing::info!(
                "max_requests {limit} reached: taking no more requests, finishing those in flight; a new worker takes this slot"
            );
            shared.retiring.store(true, Ordering::Relaxed);
            // Told first: a worker with nothing in flight may be gone right after the stop,
            // and its exit must not look like a crash.
            let _ = out
                .send(Message::Retire {
                    max_requests: limit,
                })
                .await;
            stop.send_replace(true);
        })
    });
    let mut buf = bytes::BytesMut::new();
    loop {
        match protocol::read_frame(&mut read, &mut buf).await {
            Ok(Some(Message::Drain)) => {
                tracing::info!("drain requested by the supervisor");
                break;
            }
            Ok(Some(Message::GoingAway)) => {
                tracing::info!(
                    "stopping: the HTTP/3 front drains first; WebSockets and event streams \
                     end after drain_grace ({:.1}s)",
                    shared.drain_grace.as_secs_f64()
                );
                crate::scope::start_drain_grace(&shared);
            }
            Ok(Some(Message::Query { id, what })) => {
                let shared = shared.clone();
                let stacks = stacks.clone();
                let out = out_tx.clone();
                // Stack dumps block for a moment: off the async threads.
                tokio::task::spawn_blocking(move || {
                    let report = answer(&shared, stacks.as_deref(), what);
                    let _ = out.blocking_send(Message::Answer { id, report });
                });
            }
            Ok(Some(other)) => tracing::debug!("ignoring control message {}", other.kind()),
            Ok(None) | Err(_) => {
                tracing::warn!("lost the control connection to the supervisor; draining");
                break;
            }
        }
    }
    writer.abort();
    if let Some(retire) = retire {
        retire.abort();
    }
    stop.send_replace(true);
}

/// This worker's answer to a supervisor query.
fn answer(
    shared: &Shared,
    stacks: Option<&health::Stacks>,
    what: protocol::QueryKind,
) -> protocol::WorkerReport {
    let mut report = protocol::WorkerReport::default();
    match what {
        protocol::QueryKind::Requests => {
            (report.requests, report.total) = shared.registry.snapshot(MAX_LISTED);
            report.executor = shared.executors.snapshot(MAX_TASKS_LISTED).0;
        }
        protocol::QueryKind::Stacks => match stacks.map(health::Stacks::dump) {
            Some(Ok(mut text)) => {
                protocol::cut_text(&mut text, MAX_STACKS);
                report.stacks = Some(text);
            }
            Some(Err(err)) => report.error = Some(format!("stack dump failed: {err}")),
            None => report.error = Some("stack dumps are not available in this worker".into()),
        },
        protocol::QueryKind::Metrics => match &shared.metrics {
            Some(metrics) => {
                report.metrics = Some(metrics.encode(
                    shared.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    shared.executors.depth(),
                ))
            }
            None => report.error = Some("metrics are off in this worker".into()),
        },
    }
    report
}

/// `genro-asgi check`, worker side: import the app and print what the workers will use.
/// Returns the exit code.
pub fn check(py: Python<'_>, config: &Config) -> i32 {
    let sys = match py.import("sys") {
        Ok(sys) => sys,
        Err(err) => {
            eprintln!("python: {err}");
            return exit::APP_LOAD;
        }
    };
    let attr = |name: &str| sys.getattr(name).map(|v| v.to_string()).unwrap_or_default();
    println!("python: {}", attr("version").replace('\n', " "));
    println!("python executable: {}", attr("executable"));
    println!("python prefix: {}", attr("prefix"));
    println!("python sys.path: {}", attr("path"));
    let glue = match load_glue(py) {
        Ok(glue) => glue,
        Err(err) => {
            eprintln!("glue: {err}");
            return exit::INTERNAL;
        }
    };
    let spec = &config.application.app;
    let app_dir = config.application.app_dir.display().to_string();
    match glue.call_method1("load_app", (spec, app_dir, config.application.factory)) {
        Ok(app) => {
            println!(
                "app: {spec} -> {}",
                app.repr().map(|r| r.to_string()).unwrap_or_default()
            );
            exit::OK
        }
        Err(err) => {
            eprintln!(
                "cannot load the app {spec:?}:\n{}",
                scope::format_error(py, &err)
            );
            exit::APP_LOAD
        }
    }
}
