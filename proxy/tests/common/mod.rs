//! Test harness for the HTTP/3 front: a fake supervisor on a Unix control socket, h2c
//! "workers" on Unix sockets (hyper's HTTP/2 server with a small echo app), a
//! self-signed certificate, and an HTTP/3 client on quinn + h3. Everything is real
//! sockets on this machine; nothing stands in for QUIC.
#![allow(dead_code)]

use bytes::{Buf, Bytes};
use genro_shared::protocol::{self, Message, SlotSocket};
use genro_shared::CLIENT_HEADER;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest any step of a test may wait.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "genro-proxy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The fake supervisor's side of the control connection.

pub struct Supervisor {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: bytes::BytesMut,
}

impl Supervisor {
    /// The next message, `None` at end of stream.
    pub async fn next(&mut self) -> Option<Message> {
        within(
            "control message",
            protocol::read_frame(&mut self.read, &mut self.buf),
        )
        .await
        .expect("valid frame")
    }

    /// Skips heartbeats until a message that is not one.
    pub async fn next_non_heartbeat(&mut self) -> Option<Message> {
        loop {
            match self.next().await {
                Some(Message::Heartbeat { .. }) => continue,
                other => return other,
            }
        }
    }

    pub async fn send(&mut self, message: Message) {
        protocol::write_frame(&mut self.write, &message)
            .await
            .expect("control write");
    }

    pub async fn send_slots(&mut self, paths: &[&Path]) {
        let slots = paths
            .iter()
            .enumerate()
            .map(|(slot, path)| SlotSocket {
                slot: slot as u32,
                path: path.display().to_string(),
            })
            .collect();
        self.send(Message::Slots { slots }).await;
    }

    /// Reads until the control connection ends; returns every message.
    pub async fn until_closed(&mut self) -> Vec<Message> {
        let mut all = Vec::new();
        while let Some(message) = self.next().await {
            all.push(message);
        }
        all
    }
}

// ---------------------------------------------------------------------------------------
// The front under test.

pub struct Front {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub supervisor: Supervisor,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<i32>,
}

#[derive(Clone)]
pub struct Options {
    pub env: Vec<(&'static str, String)>,
    /// Start the front with `genro_proxy::run` on a thread of its own (the socket passed
    /// by fd number, its own runtime), as the binary does, instead of `serve`.
    pub via_run: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            env: vec![("GENRO_ASGI_SERVER_GRACEFUL_TIMEOUT", "10".into())],
            via_run: false,
        }
    }
}

impl Front {
    /// Starts the front (without slots yet) and checks its hello.
    pub async fn start(options: Options) -> Front {
        init_logs();
        let dir = TempDir::new();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let certfile = dir.path("cert.pem");
        let keyfile = dir.path("key.pem");
        std::fs::write(&certfile, certified.cert.pem()).unwrap();
        std::fs::write(&keyfile, certified.key_pair.serialize_pem()).unwrap();
        let mut env: Vec<(&str, String)> = vec![
            ("GENRO_ASGI_SSL_ENABLED", "true".into()),
            ("GENRO_ASGI_SSL_CERTFILE", certfile.display().to_string()),
            ("GENRO_ASGI_SSL_KEYFILE", keyfile.display().to_string()),
            ("GENRO_ASGI_HTTP3_ENABLED", "true".into()),
        ];
        for (key, value) in &options.env {
            env.retain(|(k, _)| k != key);
            env.push((key, value.clone()));
        }
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v));
        let config = genro_config::load(None, env, &[]).expect("config").config;

        let control_path = dir.path("control.sock");
        let listener = UnixListener::bind(&control_path).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let task = if options.via_run {
            use std::os::fd::IntoRawFd;
            let args = genro_proxy::FrontArgs {
                config,
                control: control_path.clone(),
                udp_fd: socket.into_raw_fd(),
                generation: 7,
            };
            let (done, exited) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = done.send(genro_proxy::run(args));
            });
            tokio::spawn(async move { exited.await.expect("run returns") })
        } else {
            let control = tokio::net::UnixStream::connect(&control_path)
                .await
                .unwrap();
            tokio::spawn(genro_proxy::serve(genro_proxy::Parts {
                config: Arc::new(config),
                control,
                socket,
                generation: 7,
                stop: stop_rx,
            }))
        };
        let (stream, _) = within("control accept", listener.accept()).await.unwrap();
        let (read, write) = stream.into_split();
        let mut supervisor = Supervisor {
            read,
            write,
            buf: bytes::BytesMut::new(),
        };
        match supervisor.next().await {
            Some(Message::Hello {
                role,
                slot,
                pid,
                generation,
            }) => {
                assert_eq!(role, protocol::Role::Front);
                assert_eq!(slot, 0);
                assert_eq!(pid, std::process::id());
                assert_eq!(generation, 7);
            }
            other => panic!("expected hello, got {other:?}"),
        }
        Front {
            dir,
            addr,
            cert: certified.cert.der().clone(),
            supervisor,
            stop,
            task,
        }
    }

    /// Starts the front, announces `paths` as the slots and waits for ready.
    pub async fn with_slots(paths: &[&Path]) -> Front {
        Self::with_slots_and(paths, Options::default()).await
    }

    pub async fn with_slots_and(paths: &[&Path], options: Options) -> Front {
        let mut front = Front::start(options).await;
        front.supervisor.send_slots(paths).await;
        match front.supervisor.next_non_heartbeat().await {
            Some(Message::Ready) => {}
            other => panic!("expected ready, got {other:?}"),
        }
        front
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.cert).await
    }

    /// Waits for the front to exit; returns its exit code.
    pub async fn exit_code(self) -> i32 {
        within("front exit", self.task).await.expect("front task")
    }
}

// ---------------------------------------------------------------------------------------
// Workers: hyper's HTTP/2 server on a Unix socket.

/// How a test worker behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerMode {
    /// Gracefully close (GOAWAY) each connection after its first response.
    pub goaway_after_first: bool,
}

pub struct Worker {
    pub path: PathBuf,
    /// Requests the app started.
    pub requests: Arc<AtomicUsize>,
    /// Their targets (path and query), in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The test app: `/echo` streams the request body (and trailers) back; `/count?ms=N`
/// reads it after N ms and answers its length; `/slow?ms=N`
/// answers after N ms; anything else answers `hello from NAME`. Every response says how
/// the request arrived in `x-*` headers.
async fn app(
    name: &'static str,
    requests: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    requests.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(
        request
            .uri()
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
    );
    let clients: Vec<String> = request
        .headers()
        .get_all(CLIENT_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect();
    let info = [
        ("x-worker", name.to_owned()),
        ("x-client", clients.join(",")),
        (
            "x-authority",
            request
                .uri()
                .authority()
                .map_or("none".into(), |a| a.to_string()),
        ),
        (
            "x-scheme",
            request.uri().scheme_str().unwrap_or("none").to_owned(),
        ),
        (
            "x-host",
            request
                .headers()
                .get("host")
                .map_or("none".into(), |h| h.to_str().unwrap_or("?").to_owned()),
        ),
        ("x-version", format!("{:?}", request.version())),
        ("x-method", request.method().to_string()),
        (
            "x-target",
            request
                .uri()
                .path_and_query()
                .map_or("/".into(), |p| p.to_string()),
        ),
    ];
    let is_head = request.method() == http::Method::HEAD;
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let mut response = match path.as_str() {
        "/echo" => Response::new(request.into_body().boxed()),
        "/count" => {
            // An app that reads its body late: what arrives meanwhile waits in h2.
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let body = request.into_body().collect().await?.to_bytes();
            Response::new(full(body.len().to_string()))
        }
        "/slow" => {
            let ms: u64 = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow"))
        }
        // HEAD: the length the GET would have, no body (as the real worker does).
        _ if is_head => {
            let mut response = Response::new(full(""));
            let len = format!("hello from {name}").len();
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, len.into());
            response
        }
        _ => Response::new(full(format!("hello from {name}"))),
    };
    for (k, v) in info {
        response
            .headers_mut()
            .insert(k, http::HeaderValue::try_from(v).unwrap());
    }
    Ok(response)
}

impl Worker {
    pub fn spawn(path: PathBuf, name: &'static str, mode: WorkerMode) -> Worker {
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let requests = requests.clone();
            let seen = seen.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let app_state = (requests.clone(), seen.clone());
                    tokio::spawn(serve_connection(stream, name, app_state, mode));
                }
            })
        };
        Worker {
            path,
            requests,
            seen,
            connections,
            task,
        }
    }
}

impl Worker {
    /// A worker whose HTTP/2 server refuses every stream (RST_STREAM REFUSED_STREAM, as
    /// h2 does above its concurrency limit): nothing it is sent is processed. `requests`
    /// counts the refused streams.
    pub fn spawn_refusing(path: PathBuf) -> Worker {
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = {
            let requests = requests.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        let Ok(mut conn) = h2::server::handshake(stream).await else {
                            return;
                        };
                        while let Some(Ok((_request, mut respond))) = conn.accept().await {
                            requests.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                    });
                }
            })
        };
        Worker {
            path,
            requests,
            seen: Default::default(),
            connections,
            task,
        }
    }
}

type AppState = (Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>);

async fn serve_connection(
    stream: tokio::net::UnixStream,
    name: &'static str,
    (requests, seen): AppState,
    mode: WorkerMode,
) {
    let (answered_tx, mut answered) = watch::channel(0usize);
    let service = service_fn(move |request| {
        let requests = requests.clone();
        let seen = seen.clone();
        let answered_tx = answered_tx.clone();
        async move {
            let response = app(name, requests, seen, request).await;
            answered_tx.send_modify(|n| *n += 1);
            response
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    if mode.goaway_after_first {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = answered.wait_for(|n| *n >= 1) => conn.as_mut().graceful_shutdown(),
        }
    }
    if let Err(err) = conn.await {
        tracing::debug!("test worker connection: {err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP/3 client.

pub type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
pub type ClientDriver = h3::client::Connection<h3_quinn::Connection, Bytes>;

pub struct Client {
    pub endpoint: quinn::Endpoint,
    pub quic: quinn::Connection,
    pub send: SendRequest,
    pub authority: String,
    driver: Option<JoinHandle<h3::error::ConnectionError>>,
}

pub fn client_endpoint(cert: &CertificateDer<'static>) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

impl Client {
    pub async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>) -> Client {
        let (mut client, driver) = Client::connect_undriven(addr, cert).await;
        client.drive(driver);
        client
    }

    /// Connects without polling the HTTP/3 connection yet: until it is driven, the client
    /// has not read the server's SETTINGS (so it does not know the server's limits).
    pub async fn connect_undriven(
        addr: SocketAddr,
        cert: &CertificateDer<'static>,
    ) -> (Client, ClientDriver) {
        let endpoint = client_endpoint(cert);
        let quic = within(
            "QUIC handshake",
            endpoint.connect(addr, "localhost").unwrap(),
        )
        .await
        .expect("QUIC connection");
        let (driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .expect("HTTP/3 connection");
        let client = Client {
            endpoint,
            quic,
            send,
            authority: format!("localhost:{}", addr.port()),
            driver: None,
        };
        (client, driver)
    }

    pub fn drive(&mut self, mut driver: ClientDriver) {
        self.driver = Some(tokio::spawn(async move { driver.wait_idle().await }));
    }

    /// The address the front sees for this client.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{}", self.authority, path))
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("<missing>", |v| v.to_str().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// Sends a request with an optional body, reads the whole response.
pub async fn exchange(
    send: &mut SendRequest,
    request: Request<()>,
    body: Option<Bytes>,
) -> Result<Answer, h3::error::StreamError> {
    let mut stream = send.send_request(request).await?;
    if let Some(body) = body {
        stream.send_data(body).await?;
    }
    stream.finish().await?;
    read_answer(&mut stream).await
}

pub async fn read_answer<S: h3::quic::RecvStream>(
    stream: &mut h3::client::RequestStream<S, Bytes>,
) -> Result<Answer, h3::error::StreamError> {
    let response = stream.recv_response().await?;
    let mut body = bytes::BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let trailers = stream.recv_trailers().await?;
    Ok(Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: body.freeze(),
        trailers,
    })
}

pub async fn get(client: &mut Client, path: &str) -> Answer {
    let request = client.request("GET", path).body(()).unwrap();
    within(path, exchange(&mut client.send, request, None))
        .await
        .expect("response")
}
