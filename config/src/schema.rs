//! The configuration schema: one table that drives parsing, validation, the
//! `check` output and the generated `docs/CONFIG.md`.

/// How a key's text value is interpreted and validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `true/false`, `yes/no`, `on/off`, `1/0` (case-insensitive).
    Bool,
    /// A whole number within `min..=max`.
    Int {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A whole number within `min..=max`, or `auto`: the CPUs this process may use
    /// ([`crate::cpus`]), kept within the same range.
    CpuCount {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A duration in plain seconds (integer or decimal) within `min..=max`.
    Seconds {
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
    },
    /// Free text.
    Str,
    /// One of the listed words (matched case-insensitively, stored as listed).
    Enum(&'static [&'static str]),
    /// A filesystem path; empty means unset. Relative paths are resolved against
    /// the config file's folder (file values) or the current directory (env, CLI).
    Path,
    /// A program: a path (resolved like [`Kind::Path`]) or a bare command name, which is
    /// looked up on `PATH` when it is used; empty means unset.
    Program,
    /// An `http://` or `https://` URL; empty means unset.
    Url,
    /// A comma-separated list (in TOML also an array).
    List,
    /// A comma-separated list of IP addresses and CIDR networks, or `*` (everyone).
    IpList,
    /// A byte size: a plain integer or a number with a `k`, `m` or `g` suffix
    /// (KiB, MiB, GiB; case-insensitive, optional `b`/`ib`), within `min..=max`.
    Size {
        /// Smallest accepted value in bytes.
        min: u64,
        /// Largest accepted value in bytes.
        max: u64,
    },
    /// A Python import reference `module:attribute`; empty means unset.
    AppRef,
    /// A URL path starting with `/`.
    UrlPath,
}

/// The definition of one configuration key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyDef {
    /// Section name, e.g. `server`.
    pub section: &'static str,
    /// Key name inside the section, e.g. `port`.
    pub key: &'static str,
    /// Type and accepted range.
    pub kind: Kind,
    /// Default value as text; `""` means unset.
    pub default: &'static str,
    /// One-line description used in docs and `check` output.
    pub doc: &'static str,
    /// The value must never be shown (errors print `<secret>`, render `********`).
    pub secret: bool,
}

impl KeyDef {
    /// `section.key`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// The environment variable that sets this key, e.g. `GENRO_ASGI_SERVER_PORT`.
    pub fn env_var(&self) -> String {
        format!(
            "{}{}_{}",
            crate::ENV_PREFIX,
            self.section.to_ascii_uppercase(),
            self.key.to_ascii_uppercase()
        )
    }
}

const fn k(
    section: &'static str,
    key: &'static str,
    kind: Kind,
    default: &'static str,
    doc: &'static str,
) -> KeyDef {
    KeyDef {
        section,
        key,
        kind,
        default,
        doc,
        secret: false,
    }
}

const fn secret(mut def: KeyDef) -> KeyDef {
    def.secret = true;
    def
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const DAY: f64 = 86_400.0;
const HOUR: f64 = 3_600.0;

/// The sections in documentation order, with a one-line description.
pub static SECTIONS: &[(&str, &str)] = &[
    (
        "server",
        "Listening socket, worker processes and HTTP timeouts.",
    ),
    (
        "limits",
        "Request size, time and concurrency limits (protection against abusive clients).",
    ),
    ("ssl", "HTTPS. Certificates are PEM files."),
    (
        "http3",
        "HTTP/3 over QUIC, served by one front process that forwards to the workers (needs [ssl]).",
    ),
    (
        "websocket",
        "WebSocket connections (HTTP/1.1 Upgrade and HTTP/2 extended CONNECT).",
    ),
    (
        "static",
        "Files served by the workers from directories, without entering Python (docs/DEPLOYMENT.md, Static files).",
    ),
    ("logging", "Log level, format and destination."),
    ("metrics", "Prometheus metrics endpoint."),
    (
        "watchdog",
        "Detection of stuck requests and blocked event loops.",
    ),
    (
        "inspector",
        "The request inspector: a live page on the metrics listener.",
    ),
    (
        "reload",
        "Development: replace the workers when the app's files change (`--reload`).",
    ),
    (
        "errors",
        "Error responses and critical-error notifications.",
    ),
    (
        "executors",
        "Thread and process pools for the app's blocking and CPU-bound work (`genro_asgi.run_in_executor`).",
    ),
    (
        "debug",
        "The remote debugger: a failing request waits for `genro-asgi debug attach`. Development only.",
    ),
    ("application", "The Python ASGI application to serve."),
];

/// Every configuration key. The single source of truth.
#[rustfmt::skip]
pub static SCHEMA: &[KeyDef] = &[
    // [server]
    k("server", "host", Kind::Str, "127.0.0.1", "Interface address to bind (`0.0.0.0` = all IPv4 interfaces, `::` = all IPv6)."),
    k("server", "port", Kind::Int { min: 0, max: 65535 }, "8000", "TCP port to listen on (0 = pick a free port)."),
    k("server", "workers", Kind::CpuCount { min: 1, max: 512 }, "1", "Number of worker processes started by the supervisor. `auto` = the CPUs this process may really use, not the host's core count: the cgroup CPU quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`; the strictest of the process's cgroup and its parents), rounded up (1.5 CPUs = 2 workers, 0.5 = 1), and at most the CPUs of its affinity mask (`taskset`, cpuset). Worked out again on every reload; `check` and the start log say what it chose and why (docs/DEPLOYMENT.md: Kubernetes CPU limits, systemd `CPUQuota=`, `docker --cpus`). The default stays 1: each worker is a copy of the app in memory, which a CPU count does not know about."),
    k("server", "debug", Kind::Bool, "false", "Debug mode; required by `errors.show_traceback`. Never enable in production."),
    k("server", "backlog", Kind::Int { min: 1, max: 65535 }, "1024", "Maximum number of pending connections in the listen queue. A worker that falls behind new connections leaves them here: it takes at most 128 ahead of the tasks that serve them."),
    k("server", "graceful_timeout", Kind::Seconds { min: 0.0, max: HOUR }, "30", "On shutdown, time allowed to finish in-flight requests before workers are killed."),
    k("server", "keep_alive_timeout", Kind::Seconds { min: 0.0, max: HOUR }, "5", "Idle keep-alive connections (no request in flight) are closed after this time, counted from the last response byte written, plus a grace of 25% (at most 1 s) so that a client pool with the same idle expiry (httpx: 5 s) always lets go first: HTTP/1.1 by closing (never with request bytes waiting), HTTP/2 with GOAWAY. 0 = no keep-alive (one request per HTTP/1.1 connection)."),
    k("server", "early_hints", Kind::Bool, "false", "Send the app's `http.response.early_hint` messages as `103 Early Hints` on HTTP/1.1, HTTP/2 and HTTP/3 (and advertise the scope extension). Off by default: a proxy that does not know interim responses takes a 103 for the final one (nginx 1.22 then waits for the upstream connection to close). Turn it on when clients reach the workers directly, or through a proxy that passes interim responses on."),
    k("server", "uds", Kind::Path, "", "Serve HTTP/1.1 and h2c on this Unix socket instead of `host`/`port` (for nginx `proxy_pass http://unix:/path.sock`, or a sidecar). Every worker accepts on the one socket; a stale socket file left by a killed server is replaced, any other file is an error. The app's `client` is `None` unless a proxy header names it (the socket's file mode decides who may connect, so its peers' forwarding headers are trusted when `proxy_headers` is on); `server` is `[path, None]`. Not with `[ssl]` or `[http3]`."),
    k("server", "uds_mode", Kind::Str, "0660", "File mode of the `uds` socket, in octal: who may connect (the proxy's user or group needs write permission)."),
    k("server", "run_dir", Kind::Path, "", "Directory for runtime files (control socket). Empty = automatic, one per port so `genro-asgi ctl --config FILE` finds it: `$XDG_RUNTIME_DIR/genro-asgi-<port>` or `/tmp/genro-asgi-<uid>-<port>`."),
    k("server", "loop", Kind::Enum(&["auto", "asyncio", "uvloop"]), "auto", "Python event loop; `auto` uses uvloop when installed, else asyncio."),
    k("server", "threads", Kind::Int { min: 0, max: 64 }, "1", "Tokio (I/O) threads per worker process. 0 runs the connections on the event loop's own thread (layout (b) in docs/ARCHITECTURE.md: a request never crosses threads; one core per worker)."),
    k("server", "sendfile", Kind::Bool, "true", "Send `http.response.pathsend` files on plaintext HTTP/1.1 with `sendfile(2)`, from the page cache to the socket (TLS, HTTP/2 and HTTP/3 read the file in pieces). The next MiB is read ahead on a helper thread; turn it off (like gunicorn's `--no-sendfile`) for files on a network file system, where a page not yet cached is read in the connection's thread. The kernel sends the file's pages as they are when they leave: a file rewritten in place during a response can reach the client with its new bytes (as with nginx's `sendfile on`); replace files by rename."),
    k("server", "root_path", Kind::Str, "", "ASGI `root_path`: the URL prefix when the app is mounted below a path behind a proxy."),
    k("server", "worker_timeout", Kind::Seconds { min: 1.0, max: DAY }, "30", "A ready worker whose heartbeats (one per second) stop, or whose Python event loop does not run, for this long has its Python stacks logged, is killed and is respawned into its slot."),
    k("server", "max_requests", Kind::Int { min: 0, max: 1_000_000_000 }, "0", "Replace a worker after this many requests (0 = never). The worker counts them itself: at its limit it stops taking requests at once (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), finishes those in flight and exits, while the supervisor starts its replacement on the same socket, where new connections wait meanwhile. Logged, counted and shown by `ctl status` as `max_requests N reached`."),
    k("server", "max_lifetime", Kind::Seconds { min: 0.0, max: 365.0 * DAY }, "0", "Replace a worker this long after it started (0 = never), like a reload of its slot: the new worker starts first, then the old one drains. Reason `max_lifetime`."),
    k("server", "max_lifetime_jitter", Kind::Seconds { min: 0.0, max: 365.0 * DAY }, "0", "Random extra 0..N seconds added to `max_lifetime` per worker, so workers do not all restart together."),
    k("server", "max_rss", Kind::Size { min: 0, max: i64::MAX as u64 }, "0", "Replace a worker whose resident memory (RSS, reported with each heartbeat) stays above this for 3 heartbeats in a row (0 = never; `512MiB`), like a reload of its slot. Reason `max_rss`. The processes of `[executors] processes` are not counted."),
    k("server", "proxy_headers", Kind::Bool, "true", "Honour `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239) from peers in `forwarded_allow_ips`: the app's `client` and `scheme` (and the access log's client) become the original client's. Headers from other peers are ignored."),
    k("server", "forwarded_allow_ips", Kind::IpList, "127.0.0.1, ::1", "Proxies trusted to set the forwarding headers (and, with `proxy_protocol`, the load balancers that must send a PROXY header; no other peer is then served): IP addresses and CIDR networks (`10.0.0.0/8`, `fd00::/8`), or `*` for every peer (only when no client can reach the server directly)."),
    k("server", "proxy_protocol", Kind::Enum(&["off", "v1", "v2", "auto"]), "off", "PROXY protocol (HAProxy's v1 text or v2 binary header) on the TCP listener, for an L4 load balancer (HAProxy `send-proxy-v2`, AWS NLB): `v1`, `v2`, or `auto` (either). When on, every connection from a peer in `forwarded_allow_ips` must begin with such a header (within `header_read_timeout`, before TLS), whose source address becomes the client everywhere (app, access log, `ctl requests`, and the peer the forwarding headers are judged against); connections from other peers are refused. The HTTP/3 front is not affected."),
    k("server", "max_requests_jitter", Kind::Int { min: 0, max: 1_000_000_000 }, "0", "Random extra 0..N requests added to `max_requests` per worker, so workers do not all restart together."),
    // [limits]
    k("limits", "max_header_size", Kind::Size { min: 8 * KIB, max: 16 * MIB }, "64KiB", "Maximum size of the request line plus headers; larger requests get 431 (so do HTTP/1.1 requests with more than 100 header fields, hyper's fixed limit)."),
    k("limits", "max_body_size", Kind::Size { min: 0, max: i64::MAX as u64 }, "100MiB", "Maximum request body size; larger bodies get 413. 0 = unlimited."),
    k("limits", "header_read_timeout", Kind::Seconds { min: 0.1, max: HOUR }, "30", "Time a client has to send the complete request headers (slowloris protection)."),
    k("limits", "max_concurrency", Kind::Int { min: 0, max: 10_000_000 }, "1000", "Maximum HTTP requests handled at once per worker (WebSockets are not counted); extra requests get an immediate 503 with `Retry-After`. It also bounds the starts (HTTP and WebSocket) queued for a blocked event loop, those whose client already left included. 0 = unlimited."),
    k("limits", "request_timeout", Kind::Seconds { min: 0.0, max: DAY }, "0", "An HTTP request whose app is still running after this long is answered 504 with its request id (or, once the response started, aborted: HTTP/1.1 close, HTTP/2 and HTTP/3 reset), and its app task is cancelled: `CancelledError` at its next await, so `finally` blocks run. WebSockets are not subject to it. An app that blocks the event loop (no await) cannot be cancelled: the watchdog reports it. 0 = no limit."),
    k("limits", "body_timeout", Kind::Seconds { min: 0.0, max: HOUR }, "60", "An upload that sends no body bytes for this long while the app waits for them gets 408 (or a reset once the response started) and the app sees `http.disconnect`. 0 = no limit."),
    k("limits", "send_timeout", Kind::Seconds { min: 0.0, max: HOUR }, "60", "A client that takes no response bytes for this long (a socket that does not drain, an HTTP/2 or HTTP/3 stream whose window stays at 0) is disconnected, and the app sees the disconnect (like nginx's `send_timeout`). 0 = no limit."),
    k("limits", "response_buffer", Kind::Size { min: 4 * KIB, max: GIB }, "256KiB", "Response bytes the app has sent that the client has not taken yet, per response; beyond it `send()` waits (backpressure by size, not by chunk count)."),
    k("limits", "connection_buffer", Kind::Size { min: 4 * KIB, max: 16 * GIB }, "1MiB", "The same, summed over the responses of one connection (HTTP/2 multiplexes many)."),
    k("limits", "worker_buffer", Kind::Size { min: 64 * KIB, max: 64 * GIB }, "32MiB", "The same, summed over every response of the worker."),
    // [ssl]
    k("ssl", "enabled", Kind::Bool, "false", "Serve HTTPS; requires `certfile` and `keyfile`."),
    k("ssl", "certfile", Kind::Path, "", "PEM certificate chain."),
    k("ssl", "keyfile", Kind::Path, "", "PEM private key."),
    secret(k("ssl", "keyfile_password", Kind::Str, "", "Password of an encrypted `keyfile` (PKCS#8 `ENCRYPTED PRIVATE KEY`, e.g. from `openssl pkcs8 -topk8 -v2 aes-256-cbc`).")),
    k("ssl", "ca_certs", Kind::Path, "", "PEM CA bundle; when set, clients must present a certificate signed by it (mutual TLS)."),
    k("ssl", "min_version", Kind::Enum(&["1.2", "1.3"]), "1.2", "Minimum TLS protocol version."),
    // [http3]
    k("http3", "enabled", Kind::Bool, "false", "Serve HTTP/3 (QUIC, UDP) with the `[ssl]` certificate; TCP responses then announce it with `Alt-Svc`."),
    k("http3", "port", Kind::Int { min: 0, max: 65535 }, "0", "UDP port for HTTP/3; 0 = the same number as `[server] port`."),
    k("http3", "alt_svc_max_age", Kind::Seconds { min: 0.0, max: 365.0 * DAY }, "86400", "`ma=` of the `Alt-Svc` header: how long clients may remember that HTTP/3 is offered."),
    k("http3", "max_field_section_size", Kind::Size { min: KIB, max: 16 * MIB }, "64k", "Largest request header section accepted over HTTP/3 (the h3 default is unlimited)."),
    k("http3", "idle_timeout", Kind::Seconds { min: 1.0, max: HOUR }, "30", "A QUIC connection with no traffic for this long is closed."),
    k("http3", "max_concurrent_streams", Kind::Int { min: 1, max: 10_000 }, "100", "Requests one HTTP/3 connection may have open at once."),
    // [websocket]
    k("websocket", "max_message_size", Kind::Size { min: 1, max: GIB }, "16MiB", "Largest message (after reassembling fragments and decompressing) a client may send; a larger one closes the connection with 1009 (message too big)."),
    k("websocket", "max_queue", Kind::Int { min: 1, max: 10_000 }, "32", "Messages received from a client and not yet taken by the app's `receive()`; when full, the worker stops reading from that client (TCP backpressure) until the app catches up."),
    k("websocket", "max_queue_bytes", Kind::Size { min: 1, max: 16 * GIB }, "1MiB", "Bytes (after decompression) of the messages received from a client and not yet taken by the app; once reached, the worker stops reading from that client until the app catches up (one message may go past it)."),
    k("websocket", "worker_queue_bytes", Kind::Size { min: KIB, max: 64 * GIB }, "64MiB", "The same, summed over every WebSocket of the worker: once reached, every connection with a message waiting stops reading until the apps catch up."),
    k("websocket", "ping_interval", Kind::Seconds { min: 0.0, max: HOUR }, "20", "Send a ping to every client silent for this long (keepalive, and detection of dead peers); 0 = never."),
    k("websocket", "ping_timeout", Kind::Seconds { min: 0.1, max: HOUR }, "20", "A client that does not answer a ping within this time is closed (code 1011, like uvicorn)."),
    k("websocket", "per_message_deflate", Kind::Bool, "true", "Offer permessage-deflate compression (RFC 7692) to clients that ask for it."),
    k("websocket", "drain_grace", Kind::Seconds { min: 0.0, max: HOUR }, "5", "On shutdown or reload, open WebSockets keep running this long, then get close 1001 (going away) and the app sees `websocket.disconnect`; responses still streaming `text/event-stream` (SSE) then see `http.disconnect` from `receive()` and `OSError` from `send()` (other responses keep the whole `[server] graceful_timeout`); when set, must be <= `[server] graceful_timeout` (the default is capped at it)."),
    // [static]
    k("static", "mounts", Kind::List, "", "URL prefixes answered from directories, as `PREFIX=DIRECTORY` (`/static=/srv/app/static, /media=media`; a relative directory is under `application.app_dir`, and each must exist). A GET or HEAD under a prefix is answered by the worker without entering Python: `ETag` and `Last-Modified` with 304 and 412, single and multiple ranges, precompressed siblings, `Cache-Control` per mount, `sendfile(2)` on plaintext HTTP/1.1. The longest matching prefix wins. No directory listings, and names starting with `.` are never served. A missing file, a directory, a refused name or another method goes on to the app unless the mount is `exclusive`."),
    k("static", "exclusive", Kind::List, "", "Mounts (by prefix) the app never sees: a missing file, a directory or a refused name there gets 404, another method than GET and HEAD 405 with `Allow: GET, HEAD`."),
    k("static", "max_age", Kind::List, "", "`PREFIX=SECONDS` per mount: its responses carry `Cache-Control: public, max-age=SECONDS` (0: `no-cache`). A mount without one sends no `Cache-Control`."),
    k("static", "immutable", Kind::List, "", "Mounts (by prefix) whose `Cache-Control` also says `immutable` (fingerprinted file names that never change); each needs a `max_age`."),
    k("static", "follow_symlinks", Kind::List, "", "Mounts (by prefix) where a symbolic link may lead outside the mount's directory. Elsewhere a link is followed only while it stays inside the directory (`openat2` `RESOLVE_BENEATH`); one that leads out is refused like a missing file."),
    k("static", "precompressed", Kind::Bool, "true", "Serve a file's `.br` or `.gz` sibling (`app.js.br`, `app.js.gz`, made at build time) to a client whose `Accept-Encoding` takes it, for the types worth compressing (text, JavaScript, JSON, XML, SVG, WebAssembly, TTF/OTF fonts, icons; siblings of images, media, archives and unknown types are not looked for) (q-values; `br` before `gzip` at equal q), with `Content-Encoding`; responses for a file that has a sibling carry `Vary: Accept-Encoding`."),
    // [logging]
    k("logging", "level", Kind::Enum(&["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]), "INFO", "Minimum log level (case-insensitive)."),
    k("logging", "format", Kind::Str, "%(asctime)s %(levelname)s %(name)s %(message)s", "A Python `logging` format string (`%(asctime)s` (UTC) `%(levelname)s` `%(levelno)s` `%(name)s` `%(message)s` `%(process)d` `%(thread)d` `%(threadName)s` `%(module)s`), or `json` for one JSON object per line."),
    k("logging", "file", Kind::Path, "", "Log file; empty = standard error."),
    k("logging", "access_log", Kind::Bool, "false", "Log one line per request, written from Rust when the response is done, under the logger name `genro_asgi.access`, in `access_format`."),
    k("logging", "access_format", Kind::Str, "common", "Access-log line: `common` (Apache CLF), `combined` (CLF + referer and user agent), `json`, or a template of atoms `{method}` `{path}` `{query}` `{target}` `{status}` `{bytes}` `{duration_ms}` `{client}` `{client_ip}` `{protocol}` `{request_id}` `{time}` `{header:NAME}` (`{{`/`}}` for braces); see docs/OBSERVABILITY.md."),
    // [metrics]
    k("metrics", "enabled", Kind::Bool, "false", "Expose Prometheus metrics."),
    k("metrics", "endpoint", Kind::UrlPath, "/metrics", "URL path of the metrics endpoint."),
    k("metrics", "export_port", Kind::Int { min: 1, max: 65535 }, "9090", "Port of the metrics listener."),
    k("metrics", "host", Kind::Str, "127.0.0.1", "Interface address of the metrics listener (`/metrics`, `/healthz`, `/readyz`); use 0.0.0.0 for Kubernetes probes and scrapes from other hosts."),
    // [inspector]
    k("inspector", "enabled", Kind::Bool, "false", "Serve the request inspector at `/inspector` on the metrics listener (needs `[metrics] enabled`): a live page of the fleet's workers, in-flight requests and open WebSockets."),
    secret(k("inspector", "token", Kind::Str, "", "Bearer token the inspector's data requires (`Authorization: Bearer ...`; open the page as `/inspector#token=...`). Empty = none: then anyone who reaches the metrics listener sees request paths and client addresses.")),
    // [watchdog]
    k("watchdog", "enabled", Kind::Bool, "true", "Watch for stuck requests and blocked event loops."),
    k("watchdog", "interval", Kind::Seconds { min: 0.1, max: HOUR }, "5", "How often the watchdog checks."),
    k("watchdog", "timeout", Kind::Seconds { min: 0.1, max: DAY }, "60", "Log a warning when a request or event loop is stuck this long."),
    k("watchdog", "critical", Kind::Seconds { min: 0.1, max: DAY }, "300", "Report a critical error when stuck this long; must be >= `timeout`."),
    // [reload]
    k("reload", "enabled", Kind::Bool, "false", "Development: watch the app's files (inotify) and replace the workers when one changes, as a reload does: the new workers start first, so a save that breaks the import keeps the running workers serving. `--reload` on the command line."),
    k("reload", "dirs", Kind::List, "", "Directories watched, with their subdirectories (comma-separated; a relative one is under `application.app_dir`). Empty = `app_dir`. `--reload-dir` (repeatable; relative to the current directory)."),
    k("reload", "include", Kind::List, "*.py", "Glob patterns of the file names whose changes reload (`*.py, *.html`); a pattern with a `/` is matched against the path under the watched directory. `--reload-include` (repeatable; replaces the default)."),
    k("reload", "exclude", Kind::List, ".git, __pycache__, .venv", "Glob patterns of files and directories to ignore: a path is ignored when its name, or the name of a directory above it under the watched directory, matches; ignored directories are not watched at all. `--reload-exclude` (repeatable; replaces the default)."),
    k("reload", "delay", Kind::Seconds { min: 0.0, max: 60.0 }, "0.25", "Changes are gathered until none came for this long, then one reload follows (an editor's save is several events). `--reload-delay`."),
    // [executors]
    k("executors", "threads", Kind::Int { min: 0, max: 1024 }, "4", "Threads of the thread pool (`pool=\"thread\"`), started as work arrives. 0 = off: `run_in_executor` raises."),
    k("executors", "processes", Kind::Int { min: 0, max: 256 }, "0", "Processes of the process pool (`pool=\"process\"`, for CPU-bound work), started (spawned, not forked) when first used. 0 = off."),
    k("executors", "shutdown_timeout", Kind::Seconds { min: 0.0, max: HOUR }, "30", "On drain and reload, after the requests: time the pools' pending work gets to finish; then queued work is cancelled, process-pool processes are killed, and what was cancelled is logged."),
    // [errors]
    k("errors", "show_traceback", Kind::Bool, "false", "Include the Python traceback in 500 responses; requires `server.debug = true`."),
    k("errors", "notify_critical", Kind::Bool, "false", "Send a notification on critical errors."),
    k("errors", "notify_webhook", Kind::Url, "", "Webhook (http/https URL) that receives critical-error notifications; empty = none."),
    // [debug]
    k("debug", "enabled", Kind::Bool, "false", "Run the remote debugger (needs `[server] debug = true` and a `secret`): the supervisor listens on `host`:`debug_port` for `genro-asgi debug attach`."),
    k("debug", "remote_pdb", Kind::Bool, "true", "With `enabled`: a request whose app raised waits (up to `wait`) for a debugger, which gets a pdb post-mortem session on the exception; then the request gets its 500 as usual. False: the debugger lists nothing."),
    k("debug", "host", Kind::Str, "127.0.0.1", "Interface address of the debugger's listener: loopback unless you change it (the session can run any code in the app)."),
    k("debug", "debug_port", Kind::Int { min: 1, max: 65535 }, "8001", "Port of the debugger's listener."),
    k("debug", "allowed_ips", Kind::IpList, "127.0.0.1, ::1", "Peers allowed to connect to the debugger: IP addresses and CIDR networks; others are refused before they may send the secret."),
    secret(k("debug", "secret", Kind::Str, "", "Shared secret `genro-asgi debug attach` must send (compared in constant time; 5 wrong attempts from an address lock it out for 60 s). Required with `enabled`.")),
    k("debug", "wait", Kind::Seconds { min: 1.0, max: HOUR }, "60", "How long a failing request waits for a debugger to attach before it gets its 500."),
    // [application]
    k("application", "app", Kind::AppRef, "", "The ASGI application as `module:attribute`, e.g. `myproject.main:app` (usually given on the command line)."),
    k("application", "app_dir", Kind::Path, "", "Directory put first on `sys.path` before importing `app`. Empty = the config file's folder, or the current directory without a file."),
    k("application", "python", Kind::Program, "", "The Python interpreter the workers run in (a path, or a command name looked up on PATH). Empty = automatic: the virtualenv `genro-asgi` is installed in, else the active one (`VIRTUAL_ENV`), else a virtualenv whose `python3` comes first on PATH, else the `python3` beside the command, else `python3` on PATH. It must be able to import `genro_asgi_worker` (CPython 3.10+)."),
    k("application", "factory", Kind::Bool, "false", "Treat `app` as a factory: call `app()` to obtain the application."),
    k("application", "lifespan", Kind::Enum(&["auto", "on", "off"]), "auto", "ASGI lifespan protocol: `auto` = run it if the app supports it, `on` = required, `off` = never."),
    k("application", "name", Kind::Str, "", "Application name, shown in the workers' process titles (`genro-asgi: worker 0 [name]`)."),
    secret(k("application", "secret_key", Kind::Str, "", "Secret key for the application: workers find it in the environment variable `GENRO_ASGI_APPLICATION_SECRET_KEY` whatever source set it; never logged.")),
];

/// Looks up a key definition.
pub fn find(section: &str, key: &str) -> Option<&'static KeyDef> {
    SCHEMA.iter().find(|d| d.section == section && d.key == key)
}

/// Looks up a key definition by its `section.key` name.
pub fn find_full(name: &str) -> Option<&'static KeyDef> {
    let (section, key) = name.split_once('.')?;
    find(section, key)
}

/// Whether `section` is a known section name.
pub fn is_section(section: &str) -> bool {
    SECTIONS.iter().any(|(s, _)| *s == section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_belongs_to_a_documented_section_and_is_unique() {
        for (i, def) in SCHEMA.iter().enumerate() {
            assert!(is_section(def.section), "{}", def.full_name());
            assert!(
                !SCHEMA[..i].iter().any(|d| d.full_name() == def.full_name()),
                "duplicate {}",
                def.full_name()
            );
        }
    }

    #[test]
    fn every_default_is_valid_for_its_kind() {
        for def in SCHEMA {
            assert!(
                crate::value::parse_value(&def.kind, def.default).is_ok(),
                "default of {} is invalid",
                def.full_name()
            );
        }
    }

    #[test]
    fn lookups() {
        let cases = [
            ("server.port", true),
            ("server.nope", false),
            ("port", false),
            ("application.app", true),
        ];
        for (name, found) in cases {
            assert_eq!(find_full(name).is_some(), found, "{name}");
        }
        assert_eq!(
            find("errors", "show_traceback").map(|d| d.env_var()),
            Some("GENRO_ASGI_ERRORS_SHOW_TRACEBACK".into())
        );
    }
}
