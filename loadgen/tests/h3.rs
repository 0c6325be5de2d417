//! `--protocol h3` against a small in-test HTTP/3 server (quinn + h3, rcgen certificate):
//! every request answered, and, when the server sends GOAWAY after a few requests on each
//! connection, every request still answered exactly once over new connections, the ones
//! caught by the GOAWAY re-sent and none failed.

use bytes::{Buf, Bytes};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// The response body.
const BODY: &[u8] = b"hello";

/// What the server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Requests answered, by `x-load-id`.
    ids: HashMap<String, u32>,
    /// Request body bytes received by the answered requests.
    body_bytes: u64,
    /// QUIC connections set up.
    connections: u64,
    /// Requests whose body did not match their content-length.
    length_mismatches: u64,
}

struct Server {
    addr: SocketAddr,
    ca: PathBuf,
    seen: Arc<Mutex<Seen>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca);
    }
}

/// When each connection of the server sends its GOAWAY.
#[derive(Debug, Clone, Copy)]
struct GoAway {
    /// Once it has accepted this many requests.
    after: usize,
    /// How many more streams it lets in (h3's `shutdown(max_requests)`); h3 rejects the
    /// streams above with H3_REQUEST_REJECTED.
    grace: usize,
}

/// Starts the server on 127.0.0.1.
fn start(goaway: Option<GoAway>, name: &str) -> Server {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let ca = std::env::temp_dir().join(format!(
        "genro-loadgen-h3-{name}-{}.pem",
        std::process::id()
    ));
    std::fs::write(&ca, certified.cert.pem()).expect("writing the CA file");
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("certificate and key");
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC TLS");
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).expect("UDP bind");
    let addr = endpoint.local_addr().expect("local address");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(connection(incoming, goaway, shared.clone()));
        }
    });
    Server { addr, ca, seen }
}

async fn connection(incoming: quinn::Incoming, goaway: Option<GoAway>, seen: Arc<Mutex<Seen>>) {
    let Ok(quic) = incoming.await else { return };
    let Ok(mut h3) = h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(quic))
        .await
    else {
        return;
    };
    seen.lock().unwrap().connections += 1;
    let mut accepted = 0;
    let mut requests = JoinSet::new();
    loop {
        tokio::select! {
            next = h3.accept() => match next {
                Ok(Some(resolver)) => {
                    requests.spawn(answer(resolver, seen.clone()));
                    accepted += 1;
                    if let Some(goaway) = goaway.filter(|g| g.after == accepted) {
                        let _ = h3.shutdown(goaway.grace).await;
                    }
                }
                // After our GOAWAY: nothing in flight right now; the client closes the
                // connection once its own requests are done.
                Ok(None) => {}
                Err(_) => break,
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
}

async fn answer(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    seen: Arc<Mutex<Seen>>,
) {
    let Ok((request, mut stream)) = resolver.resolve_request().await else {
        return;
    };
    let mut body = 0u64;
    while let Ok(Some(chunk)) = stream.recv_data().await {
        body += chunk.remaining() as u64;
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let declared = header("content-length").and_then(|v| v.parse::<u64>().ok());
    {
        let mut seen = seen.lock().unwrap();
        *seen
            .ids
            .entry(header("x-load-id").unwrap_or_default())
            .or_default() += 1;
        seen.body_bytes += body;
        if declared.unwrap_or(0) != body {
            seen.length_mismatches += 1;
        }
    }
    let response = http::Response::builder().status(200).body(()).unwrap();
    if stream.send_response(response).await.is_ok()
        && stream.send_data(Bytes::from_static(BODY)).await.is_ok()
    {
        let _ = stream.finish().await;
    }
}

/// Runs the loadgen binary against the server and returns its report.
async fn loadgen(server: &Server, trust: &[&str], extra: &[&str]) -> Value {
    let url = format!("https://{}/load", server.addr);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_genro-loadgen"));
    command
        .args(["--protocol", "h3", "--url", &url, "--timeout", "20"])
        .args(trust)
        .args(extra)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the loadgen finished within 120 s")
        .expect("running the loadgen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "report: {err}: {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    println!("{report}");
    report
}

#[tokio::test]
async fn every_h3_request_is_answered_with_its_body_sent_and_read() {
    let server = start(None, "ok");
    let ca = server.ca.to_str().unwrap().to_string();
    // 150,000 bytes: three send_data chunks per request.
    let report = loadgen(
        &server,
        &["--ca", &ca],
        &[
            "--connections",
            "2",
            "--streams",
            "4",
            "--requests",
            "60",
            "--method",
            "POST",
            "--body-size",
            "150000",
        ],
    )
    .await;
    assert_eq!(report["ok"], 60, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["retried"], 0, "{report}");
    assert_eq!(report["unsent"], 0, "{report}");
    assert_eq!(report["connect_errors"], 0, "{report}");
    assert_eq!(report["reconnects"], 0, "{report}");
    assert_eq!(
        report["statuses"],
        serde_json::json!({"200": 60}),
        "{report}"
    );
    assert_eq!(report["response_bytes"], 60 * BODY.len(), "{report}");
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.ids.len(), 60, "{seen:?}");
    assert!(seen.ids.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(seen.body_bytes, 60 * 150_000);
    assert_eq!(seen.length_mismatches, 0);
    assert_eq!(seen.connections, 2);
}

/// Runs 80 POSTs over 2 connections x 4 streams against a server that sends GOAWAY after
/// 5 requests per connection, checks that none failed and each ran once, and returns the
/// retry causes.
async fn goaway_run(goaway: GoAway, name: &str) -> Value {
    let server = start(Some(goaway), name);
    let report = loadgen(
        &server,
        &["--insecure"],
        &[
            "--connections",
            "2",
            "--streams",
            "4",
            "--requests",
            "80",
            "--method",
            "POST",
            "--body-size",
            "1000",
        ],
    )
    .await;
    assert_eq!(report["ok"], 80, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["unsent"], 0, "{report}");
    assert_eq!(report["connect_errors"], 0, "{report}");
    // 80 requests at 5 (plus the grace) per connection.
    let connections = 80 / (goaway.after + goaway.grace);
    assert!(
        report["reconnects"].as_u64().unwrap() as usize >= connections - 2,
        "{report}"
    );
    // Requests caught by a GOAWAY are re-sent: never opened (goaway) or rejected by the
    // server above the GOAWAY's id (request_rejected), never for another cause.
    let causes = report["retry_causes"].clone();
    assert!(report["retried"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["retried"].as_u64(),
        Some(causes["goaway"].as_u64().unwrap() + causes["request_rejected"].as_u64().unwrap()),
        "{report}"
    );
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.ids.len(), 80, "{seen:?}");
    assert!(
        seen.ids.values().all(|&n| n == 1),
        "processed twice: {seen:?}"
    );
    assert_eq!(seen.body_bytes, 80 * 1000);
    assert_eq!(seen.length_mismatches, 0);
    causes
}

#[tokio::test]
async fn streams_rejected_after_a_goaway_are_resent_on_a_new_connection() {
    let causes = goaway_run(GoAway { after: 5, grace: 0 }, "reject").await;
    assert!(
        causes["request_rejected"].as_u64().unwrap() >= 1,
        "{causes}"
    );
}

#[tokio::test]
async fn requests_not_opened_after_a_goaway_are_resent_on_a_new_connection() {
    // The grace lets in the streams already in flight, so the requests caught are the ones
    // h3 refuses to open once the GOAWAY is in.
    let causes = goaway_run(GoAway { after: 5, grace: 3 }, "grace").await;
    assert!(causes["goaway"].as_u64().unwrap() >= 1, "{causes}");
}
