use super::delivery::*;
use super::*;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::time::UNIX_EPOCH;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::RootCertStore;

use std::sync::atomic::AtomicU16;

use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Test timing: the production shape, scaled down so the suite stays fast.
const FAST: Timing = Timing {
    burst: 10,
    refill: Duration::from_millis(400),
    attempt_timeout: Duration::from_millis(300),
    retry_delays: [Duration::from_millis(50), Duration::from_millis(150)],
};

/// One request as the receiver saw it.
#[derive(Debug)]
struct Received {
    request_target: String,
    headers: HeaderMap,
    body: Value,
    at: Instant,
    /// ALPN the TLS receiver agreed on.
    alpn: Option<Vec<u8>>,
}

/// A local webhook receiver answering `status` to every request.
struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    received: UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(204));
        let (tx, received) = mpsc::unbounded_channel();
        let answer = Arc::clone(&status);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, answer, tls) = (tx.clone(), Arc::clone(&answer), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, None, tx, answer).await,
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                            serve(stream, alpn, tx, answer).await;
                        }
                    }
                });
            }
        });
        Receiver {
            port,
            status,
            received,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.received.recv())
            .await
            .expect("a request within 5 s")
            .expect("receiver running")
    }

    /// Asserts nothing more arrives within `window`.
    async fn assert_quiet(&mut self, window: Duration) {
        if let Ok(Some(extra)) = tokio::time::timeout(window, self.received.recv()).await {
            panic!("unexpected request: {:?}", extra.body);
        }
    }
}

async fn serve<IO>(
    io: IO,
    alpn: Option<Vec<u8>>,
    tx: mpsc::UnboundedSender<Received>,
    status: Arc<AtomicU16>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (tx, status, alpn) = (tx.clone(), Arc::clone(&status), alpn.clone());
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let _ = tx.send(Received {
                request_target: parts.uri.to_string(),
                headers: parts.headers,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: Instant::now(),
                alpn,
            });
            let mut response = http::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::from_u16(status.load(Ordering::Relaxed)).unwrap();
            Ok::<_, hyper::Error>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn start_http(port: u16, timing: Timing) -> Webhook {
    let target = Target::parse(&format!("http://127.0.0.1:{port}/hook?k=v")).unwrap();
    spawn(target, None, timing).unwrap()
}

#[tokio::test]
async fn event_arrives_with_added_fields() {
    let mut receiver = Receiver::start(None).await;
    let webhook = start_http(receiver.port, FAST);
    webhook.notify(serde_json::json!({"kind": "app_exception", "detail": "boom"}));
    let got = receiver.next().await;
    assert_eq!(got.request_target, "/hook?k=v");
    assert_eq!(
        got.headers[HOST],
        format!("127.0.0.1:{}", receiver.port).as_str()
    );
    assert_eq!(got.headers[CONTENT_TYPE], "application/json");
    let agent = format!("genro-asgi/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(got.headers[USER_AGENT], agent.as_str());
    let body = got.body.as_object().unwrap();
    assert_eq!(body["kind"], "app_exception");
    assert_eq!(body["detail"], "boom");
    assert_eq!(body["service"], "genro-asgi");
    assert_eq!(body["host"], hostname().as_str());
    assert!(!body["host"].as_str().unwrap().is_empty());
    let time = body["time"].as_str().unwrap();
    assert_eq!(time.len(), "2024-02-29T12:34:56.789Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    assert!(!body.contains_key("suppressed"));

    // Not an object: wrapped.
    webhook.notify(Value::from("plain"));
    assert_eq!(receiver.next().await.body["event"], "plain");
}

#[tokio::test]
async fn failing_receiver_gets_three_attempts_then_nothing() {
    let mut receiver = Receiver::start(None).await;
    receiver.status.store(500, Ordering::Relaxed);
    let webhook = start_http(receiver.port, FAST);
    webhook.notify(serde_json::json!({"kind": "crash_loop"}));
    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    for attempt in [&first, &second, &third] {
        assert_eq!(attempt.body["kind"], "crash_loop");
    }
    assert!(second.at - first.at >= FAST.retry_delays[0]);
    assert!(third.at - second.at >= FAST.retry_delays[1]);
    receiver.assert_quiet(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn rate_limit_passes_the_burst_and_reports_the_rest() {
    let mut receiver = Receiver::start(None).await;
    let webhook = start_http(receiver.port, FAST);
    let raised = Instant::now();
    for n in 0..25 {
        webhook.notify(serde_json::json!({"n": n}));
    }
    assert!(
        raised.elapsed() < FAST.refill,
        "the burst must fit in one refill period"
    );
    for n in 0..10 {
        let got = receiver.next().await;
        assert_eq!(got.body["n"], n);
        assert!(got.body.get("suppressed").is_none());
    }
    // The bucket is empty until one refill period after the burst.
    let refilled = raised + FAST.refill + Duration::from_millis(50);
    receiver
        .assert_quiet(refilled.saturating_duration_since(Instant::now()))
        .await;
    webhook.notify(serde_json::json!({"n": "after"}));
    let got = receiver.next().await;
    assert_eq!(got.body["n"], "after");
    assert_eq!(got.body["suppressed"], 15);
    // Reported once, then the count starts again.
    tokio::time::sleep(FAST.refill).await;
    webhook.notify(serde_json::json!({"n": "later"}));
    assert!(receiver.next().await.body.get("suppressed").is_none());
}

#[tokio::test]
async fn notify_returns_at_once_and_a_silent_receiver_times_out() {
    // Accepts, reads, never answers; reports when each connection was opened and closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut tcp, &mut sink).await;
                let _ = tx.send((opened, Instant::now()));
            });
        }
    });
    let webhook = start_http(port, FAST);
    let before = Instant::now();
    for n in 0..100 {
        webhook.notify(serde_json::json!({"n": n}));
    }
    assert!(
        before.elapsed() < Duration::from_millis(100),
        "{:?}",
        before.elapsed()
    );
    for _ in 0..3 {
        let (opened, closed) = tokio::time::timeout(Duration::from_secs(5), connections.recv())
            .await
            .expect("an attempt within 5 s")
            .expect("listener running");
        let held = closed - opened;
        assert!(
            held >= FAST.attempt_timeout - Duration::from_millis(20),
            "{held:?}"
        );
        assert!(held < FAST.attempt_timeout * 3, "{held:?}");
    }
    // In production the bound is 5 s per attempt.
    assert_eq!(PRODUCTION.attempt_timeout, Duration::from_secs(5));
}

#[tokio::test]
async fn https_with_a_private_ca() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut receiver = Receiver::start(Some(TlsAcceptor::from(Arc::new(server)))).await;

    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let url = format!("https://localhost:{}/tls", receiver.port);
    let webhook = start_with_roots(&url, roots, FAST).unwrap();
    webhook.notify(serde_json::json!({"kind": "stuck_request"}));
    let got = receiver.next().await;
    assert_eq!(got.request_target, "/tls");
    assert_eq!(got.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(
        got.headers[HOST],
        format!("localhost:{}", receiver.port).as_str()
    );
    assert_eq!(got.body["kind"], "stuck_request");

    // The same receiver is refused without the CA: three failed handshakes, no request.
    let untrusted = start_with_roots(&url, RootCertStore::empty(), FAST).unwrap();
    untrusted.notify(serde_json::json!({"kind": "untrusted"}));
    receiver.assert_quiet(Duration::from_millis(600)).await;
}

/// `start` with a given trust store instead of the system's.
fn start_with_roots(
    url: &str,
    roots: RootCertStore,
    timing: Timing,
) -> Result<Webhook, WebhookError> {
    let target = Target::parse(url)?;
    let tls = match target.scheme {
        Scheme::Http => None,
        Scheme::Https => Some(tls_config(roots)?),
    };
    spawn(target, tls, timing)
}

#[test]
fn target_parse() {
    let ok = [
        (
            "http://example.com",
            Scheme::Http,
            "example.com",
            80,
            "example.com",
            "/",
        ),
        (
            "HTTPS://example.com/a?b=1",
            Scheme::Https,
            "example.com",
            443,
            "example.com",
            "/a?b=1",
        ),
        (
            "https://h.test:8443/x/",
            Scheme::Https,
            "h.test",
            8443,
            "h.test:8443",
            "/x/",
        ),
        (
            "http://[::1]:9000/p",
            Scheme::Http,
            "::1",
            9000,
            "[::1]:9000",
            "/p",
        ),
        (
            "http://10.0.0.1?q",
            Scheme::Http,
            "10.0.0.1",
            80,
            "10.0.0.1",
            "/?q",
        ),
    ];
    for (url, scheme, host, port, authority, path) in ok {
        let target = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            target,
            Target {
                scheme,
                host: host.to_owned(),
                port,
                authority: authority.to_owned(),
                path_and_query: path.to_owned(),
            },
            "{url}"
        );
    }
    let bad = [
        ("ftp://example.com/", "http:// or https://"),
        ("example.com", "http:// or https://"),
        ("/just/a/path", "http:// or https://"),
        ("http://user:pw@example.com/", "credentials"),
        ("http://exa mple.com/", "not a URL"),
    ];
    for (url, why) in bad {
        let error = Target::parse(url).expect_err(url);
        let error = error.to_string();
        assert!(error.contains(why), "{url}: {error}");
    }
}

#[test]
fn token_bucket_on_a_virtual_clock() {
    let t0 = Instant::now();
    let second = Duration::from_secs(1);
    let mut bucket = TokenBucket::new(10, 6 * second, t0);
    assert_eq!((0..25).filter(|_| bucket.try_take(t0)).count(), 10);
    assert!(!bucket.try_take(t0 + 5 * second));
    assert!(bucket.try_take(t0 + 6 * second));
    assert!(!bucket.try_take(t0 + 11 * second));
    // Partial periods are not lost: 12 s from t0 is the second token.
    assert!(bucket.try_take(t0 + 12 * second));
    // An hour later the bucket holds a burst again, not more.
    let later = t0 + 3600 * second;
    assert_eq!((0..25).filter(|_| bucket.try_take(later)).count(), 10);
    // A clock that steps back (two raisers racing) earns nothing.
    assert!(!bucket.try_take(t0));
}

#[test]
fn suppressed_counts_queue_overflow_too() {
    let overflow = Arc::new(AtomicU64::new(0));
    let mut sender = Sender {
        delivery: Delivery {
            target: Target::parse("http://127.0.0.1/").unwrap(),
            tls: None,
            user_agent: String::new(),
            timing: FAST,
        },
        bucket: TokenBucket::new(1, Duration::from_secs(60), Instant::now()),
        host: "h".to_owned(),
        overflow: Arc::clone(&overflow),
        suppressed: 0,
    };
    let raise = |n: u32| Raised {
        event: serde_json::json!({"n": n}),
        at: Instant::now(),
        wall: UNIX_EPOCH,
    };
    let body = |bytes: Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();
    overflow.store(4, Ordering::Relaxed);
    let first = body(sender.handle_raised(raise(1)).unwrap());
    assert_eq!(first["suppressed"], 4);
    assert_eq!(first["time"], "1970-01-01T00:00:00.000Z");
    assert!(sender.handle_raised(raise(2)).is_none());
    assert_eq!(sender.suppressed, 1);
}
