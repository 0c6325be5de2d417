//! Starting the app for an exchange, whatever its protocol: the per-worker Python objects,
//! the ASGI scope (interned keys, one shared `asgi` dict), `glue.run_http(app, scope,
//! handle)` as a loop task, and the scope's `genro.draining` event, set on a drain.

use crate::admission::{Opening, REQUEST_ID};
use crate::state::Shared;
use http::Version;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::PyClass;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Python objects created once per worker.
struct App {
    app: Py<PyAny>,
    run_http: Py<PyAny>,
    create_task: Py<PyAny>,
    asgi: Py<PyDict>,
    lifespan_state: Py<PyDict>,
    empty: Py<PyDict>,
}

static APP: PyOnceLock<App> = PyOnceLock::new();

/// Objects the worker needs from the Python side, given once at start-up.
#[derive(Debug)]
pub(crate) struct PyParts {
    /// The ASGI app.
    pub(crate) app: Py<PyAny>,
    /// `glue.run_http`.
    pub(crate) run_http: Py<PyAny>,
    /// The asyncio loop.
    pub(crate) event_loop: Py<PyAny>,
    /// The lifespan state dict, copied into every scope.
    pub(crate) lifespan_state: Py<PyDict>,
}

/// Installs the per-worker Python objects; call once before the loop runs.
pub(crate) fn install(py: Python<'_>, parts: PyParts) -> PyResult<()> {
    let event_loop = parts.event_loop.bind(py);
    crate::awaitable::install(py, event_loop)?;
    let asgi = PyDict::new(py);
    asgi.set_item("version", "3.0")?;
    asgi.set_item("spec_version", "2.4")?;
    let state = App {
        app: parts.app,
        run_http: parts.run_http,
        create_task: event_loop.getattr("create_task")?.unbind(),
        asgi: asgi.unbind(),
        lifespan_state: parts.lifespan_state,
        empty: PyDict::new(py).unbind(),
    };
    APP.set(py, state)
        .map_err(|_| PyRuntimeError::new_err("bridge installed twice"))
}

fn app_state(py: Python<'_>) -> PyResult<&App> {
    APP.get(py)
        .ok_or_else(|| PyRuntimeError::new_err("bridge not installed"))
}

/// Counts the exchange as started and builds its scope: `websocket` or `http`.
pub(crate) fn new_scope<'py>(
    py: Python<'py>,
    shared: &Shared,
    start: &Opening,
    websocket: bool,
) -> PyResult<Bound<'py, PyDict>> {
    if shared.started.fetch_add(1, Ordering::Relaxed) + 1 == shared.retire_at {
        shared.retire.notify_one();
    }
    build_scope(py, app_state(py)?, shared, start, websocket)
}

/// The app's side of an exchange, as the start of its task needs it.
pub(crate) trait AppHandle: PyClass<Frozen = True> + Sync {
    /// The app failed with `traceback` for this exchange: log it under the request's error
    /// id and answer 500 (or close the WebSocket with 1011).
    fn app_failed(&self, traceback: &str);
}

/// Starts the app on `handle` with `scope`. A scope that could not be built or a task the
/// loop would not create (a task factory that raised, say) is this request's failure,
/// answered 500 with an error id; the request is not dropped (it used to become a 503
/// "Server shutting down").
pub(crate) fn launch<H: AppHandle>(
    py: Python<'_>,
    scope: PyResult<Bound<'_, PyDict>>,
    handle: Bound<'_, H>,
) {
    let started = scope.and_then(|scope| run_app(py, scope, handle.clone().into_any()));
    if let Err(err) = started {
        handle.get().app_failed(&format_error(py, &err));
    }
}

/// A Python exception with its traceback, as `traceback.format_exception` writes it.
pub(crate) fn format_error(py: Python<'_>, err: &PyErr) -> String {
    py.import(intern!(py, "traceback"))
        .and_then(|m| m.call_method1(intern!(py, "format_exception"), (err.value(py),)))
        .and_then(|lines| intern!(py, "").call_method1(intern!(py, "join"), (lines,)))
        .and_then(|text| text.extract::<String>())
        .unwrap_or_else(|_| err.to_string())
}

/// Starts `glue.run_http(app, scope, handle)` as a task of the loop.
fn run_app(py: Python<'_>, scope: Bound<'_, PyDict>, handle: Bound<'_, PyAny>) -> PyResult<()> {
    let state = app_state(py)?;
    let coro = state
        .run_http
        .call1(py, (state.app.clone_ref(py), scope, handle))?;
    state.create_task.call1(py, (coro,))?;
    Ok(())
}

fn build_scope<'py>(
    py: Python<'py>,
    state: &App,
    shared: &Shared,
    start: &Opening,
    websocket: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let parts = &start.parts;
    let scope = PyDict::new(py);
    let kind = if websocket {
        intern!(py, "websocket")
    } else {
        intern!(py, "http")
    };
    scope.set_item(intern!(py, "type"), kind)?;
    scope.set_item(intern!(py, "asgi"), state.asgi.bind(py))?;
    let version = match parts.version {
        _ if start.conn.front => intern!(py, "3"),
        Version::HTTP_10 => intern!(py, "1.0"),
        Version::HTTP_2 => intern!(py, "2"),
        _ => intern!(py, "1.1"),
    };
    scope.set_item(intern!(py, "http_version"), version)?;
    let scheme = match (websocket, start.conn.https) {
        (false, false) => intern!(py, "http"),
        (false, true) => intern!(py, "https"),
        (true, false) => intern!(py, "ws"),
        (true, true) => intern!(py, "wss"),
    };
    if websocket {
        let subprotocols = PyList::empty(py);
        for value in parts.headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
            for name in value.to_str().unwrap_or("").split(',') {
                let name = name.trim();
                if !name.is_empty() {
                    subprotocols.append(name)?;
                }
            }
        }
        scope.set_item(intern!(py, "subprotocols"), subprotocols)?;
    } else {
        scope.set_item(intern!(py, "method"), parts.method.as_str())?;
    }
    scope.set_item(intern!(py, "scheme"), scheme)?;
    let raw_path = parts.uri.path();
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    scope.set_item(intern!(py, "path"), path.as_ref())?;
    scope.set_item(
        intern!(py, "raw_path"),
        PyBytes::new(py, raw_path.as_bytes()),
    )?;
    let query = parts.uri.query().unwrap_or("");
    scope.set_item(
        intern!(py, "query_string"),
        PyBytes::new(py, query.as_bytes()),
    )?;
    scope.set_item(intern!(py, "root_path"), shared.root_path.as_str())?;
    let headers = PyList::empty(py);
    // HTTP/2 carries the host in :authority, which hyper keeps in the URI; frameworks build
    // URLs from the `host` header, so give them one (as h2 -> h1 proxies do).
    if !parts.headers.contains_key(http::header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            headers.append((
                PyBytes::new(py, b"host"),
                PyBytes::new(py, authority.as_str().as_bytes()),
            ))?;
        }
    }
    // RFC 9113 8.2.3: HTTP/2 may split `cookie` into several fields; apps expect one.
    let is_h2 = parts.version == Version::HTTP_2;
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        if is_h2 && name == http::header::COOKIE {
            cookies.push(value.as_bytes());
            continue;
        }
        headers.append((
            PyBytes::new(py, name.as_str().as_bytes()),
            PyBytes::new(py, value.as_bytes()),
        ))?;
    }
    if !cookies.is_empty() {
        headers.append((
            PyBytes::new(py, b"cookie"),
            PyBytes::new(py, &cookies.join(&b"; "[..])),
        ))?;
    }
    scope.set_item(intern!(py, "headers"), headers)?;
    let client = &start.conn.client;
    if *client == genro_shared::UNIX_PEER {
        scope.set_item(intern!(py, "client"), py.None())?;
    } else {
        let client_ip = LAST_CLIENT.with(|memo| memo.text(py, client.ip()));
        scope.set_item(intern!(py, "client"), (client_ip, client.port()))?;
    }
    match &start.conn.unix {
        Some(path) => scope.set_item(intern!(py, "server"), (&**path, py.None()))?,
        None => {
            let server = &start.conn.server;
            let server_ip = LAST_SERVER.with(|memo| memo.text(py, server.ip()));
            scope.set_item(intern!(py, "server"), (server_ip, server.port()))?;
        }
    }
    scope.set_item(intern!(py, "state"), state.lifespan_state.bind(py).copy()?)?;
    let extensions = PyDict::new(py);
    if websocket {
        extensions.set_item(intern!(py, "websocket.http.response"), state.empty.bind(py))?;
    } else {
        extensions.set_item(intern!(py, "http.response.trailers"), state.empty.bind(py))?;
        extensions.set_item(intern!(py, "http.response.pathsend"), state.empty.bind(py))?;
        // With early_hints off this is one test; on, an Arc clone.
        if start.conn.early_hints(parts).is_some() {
            extensions.set_item(
                intern!(py, "http.response.early_hint"),
                state.empty.bind(py),
            )?;
        }
    }
    if let Some(facts) = start.conn.tls.get() {
        extensions.set_item(intern!(py, "tls"), tls_extension(py, facts)?)?;
    }
    extensions.set_item(intern!(py, "genro.draining"), draining_extension(py)?)?;
    extensions.set_item(intern!(py, "genro.executors"), executors_extension(py)?)?;
    let facts = start.admission.envelope();
    let envelope = PyDict::new(py);
    envelope.set_item(intern!(py, "id"), facts.id.as_str())?;
    envelope.set_item(intern!(py, "start"), facts.wall())?;
    let external = parts
        .headers
        .get(REQUEST_ID)
        .and_then(|_| shared.registry.external_id(facts.key));
    envelope.set_item(intern!(py, "external_id"), external)?;
    extensions.set_item(intern!(py, "genro.envelope"), envelope)?;
    scope.set_item(intern!(py, "extensions"), extensions)?;
    Ok(scope)
}

/// The server's certificate as PEM (`[ssl] certfile`'s first), for the `tls` extension.
static SERVER_CERT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sets the `tls` extension's `server_cert` (once, when the TLS acceptor is built).
pub(crate) fn set_server_cert(pem: Option<String>) {
    let _ = SERVER_CERT.set(pem);
}

/// The ASGI `tls` extension (asgiref's TLS spec): `server_cert`, `client_cert_chain`
/// (PEM, the client's first), `client_cert_name` (RFC 4514), `client_cert_error` (always
/// `None`: an unverified certificate fails the handshake), `tls_version` and
/// `cipher_suite` (`None` over HTTP/3: QUIC does not tell it).
fn tls_extension<'py>(
    py: Python<'py>,
    facts: &genro_shared::tls_facts::TlsFacts,
) -> PyResult<Bound<'py, PyDict>> {
    let extension = PyDict::new(py);
    extension.set_item(
        intern!(py, "server_cert"),
        SERVER_CERT.get().and_then(Option::as_deref),
    )?;
    let (chain, name) = facts.client();
    extension.set_item(intern!(py, "client_cert_chain"), chain)?;
    extension.set_item(intern!(py, "client_cert_name"), name)?;
    extension.set_item(intern!(py, "client_cert_error"), py.None())?;
    extension.set_item(intern!(py, "tls_version"), facts.version)?;
    extension.set_item(intern!(py, "cipher_suite"), facts.cipher_suite)?;
    Ok(extension)
}

/// The last address turned into the scope's text, and that text: a worker's server address
/// hardly ever changes, and its clients often share one (a proxy, a load balancer), so the
/// formatting and the string are paid once, not per request.
#[derive(Default)]
struct IpText(std::cell::RefCell<Option<(std::net::IpAddr, Py<PyString>)>>);

impl IpText {
    fn text<'py>(&self, py: Python<'py>, ip: std::net::IpAddr) -> Bound<'py, PyString> {
        let mut last = self.0.borrow_mut();
        match &*last {
            Some((seen, text)) if *seen == ip => text.bind(py).clone(),
            _ => {
                let text = PyString::new(py, &ip.to_string());
                *last = Some((ip, text.clone().unbind()));
                text
            }
        }
    }
}

thread_local! {
    /// Scopes are built on the loop's thread only.
    static LAST_CLIENT: IpText = IpText::default();
    static LAST_SERVER: IpText = IpText::default();
}

/// The worker's `asyncio.Event` set when it drains, created on first use (on the loop's
/// thread; one worker per process).
static DRAINING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn draining_event(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    DRAINING
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("asyncio")?.getattr("Event")?.call0()?.unbind())
        })
        .map(|event| event.bind(py))
}

/// The scope's `genro.draining` extension: `{"event": asyncio.Event}`, set when the worker
/// starts draining, so a long poll can end itself (extension values are dicts, ASGI).
/// One dict shared by every scope, like the other extensions' values (built once: it was a
/// dict and an insertion per request).
fn draining_extension(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static EXTENSION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    EXTENSION
        .get_or_try_init(py, || {
            let extension = PyDict::new(py);
            extension.set_item(intern!(py, "event"), draining_event(py)?)?;
            Ok::<_, PyErr>(extension.into_any().unbind())
        })
        .map(|extension| extension.bind(py))
}

/// The scope's `genro.executors` extension: `{"run_in_executor": ..., "threads": N,
/// "processes": M}`, the worker's pools (the `genro_asgi` package's), one dict for every
/// scope.
fn executors_extension(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static EXTENSION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    EXTENSION
        .get_or_try_init(py, || {
            let pools = py.import("genro_asgi")?.getattr("executors")?;
            let extension = PyDict::new(py);
            for name in ["run_in_executor", "threads", "processes"] {
                extension.set_item(name, pools.getattr(name)?)?;
            }
            Ok::<_, PyErr>(extension.into_any().unbind())
        })
        .map(|extension| extension.bind(py))
}

/// The worker drains, or a stop began (see [`Shared::going_away`]), whichever comes first:
/// sets `genro.draining` now, and WebSockets (closed with 1001) and event streams still
/// open after `[websocket] drain_grace` end. Other responses keep the whole
/// `graceful_timeout`.
pub(crate) fn start_drain_grace(shared: &Arc<Shared>) {
    if !shared.going_away.send_replace(true) {
        on_drain(shared, shared.drain_grace);
    }
}

fn on_drain(shared: &Arc<Shared>, grace: Duration) {
    shared.handoff.run(|py| {
        draining_event(py)?.call_method0(intern!(py, "set"))?;
        Ok(())
    });
    let shared = shared.clone();
    shared.runtime.clone().spawn(async move {
        tokio::time::sleep(grace).await;
        let ended = shared.event_streams.end_all();
        if ended > 0 {
            tracing::info!(
                "drain_grace ({:.1}s) over: ending {ended} event stream(s) \
                 (http.disconnect, OSError on send)",
                grace.as_secs_f64()
            );
        }
    });
}
