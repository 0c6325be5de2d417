//! The patched hyper (`third_party/hyper`) both ways over real HTTP/2 on an in-memory
//! pipe: a server sends interim responses with the request's `InformationalSender`, and
//! the client's `on_informational` callback sees them, in order, before the final
//! response. The front relies on the client half, the workers on the server half.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::ext::InformationalSender;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn hint(link: &str) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::EARLY_HINTS;
    response
        .headers_mut()
        .insert(http::header::LINK, link.parse().unwrap());
    response
}

/// What the service kept: how many `send`s of a burst were accepted, and a sender to try
/// after the response; and what the client's callback signals.
#[derive(Default)]
struct Seen {
    burst_accepted: usize,
    late_sender: Option<InformationalSender>,
    /// Notified by the client's callback when a hint arrives.
    arrived: Arc<tokio::sync::Notify>,
}

async fn service(
    request: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Seen>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let sender = request
        .extensions()
        .get::<InformationalSender>()
        .cloned()
        .expect("every HTTP/2 request carries a sender");
    match request.uri().path() {
        "/two" => {
            sender.send(hint("</a.css>")).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.send(hint("</b.js>")).unwrap();
            // A final status is not an interim response.
            assert!(sender.send(Response::new(())).is_err());
            seen.lock().unwrap().late_sender = Some(sender);
        }
        "/burst" => {
            // 16 per stream, however fast they are written: h2 buffers HEADERS frames
            // without flow control, so the bound is on the stream's lifetime.
            let mut accepted = 0;
            for round in 0..3 {
                accepted += (0..20)
                    .filter(|n| sender.send(hint(&format!("</{round}-{n}>"))).is_ok())
                    .count();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.lock().unwrap().burst_accepted = accepted;
        }
        "/woken" => {
            // Sent from another task while the service waits: only the sender's wake
            // gets it written, and the service goes on once the client has it.
            let arrived = seen.lock().unwrap().arrived.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                sender.send(hint("</woken>")).unwrap();
            });
            tokio::time::timeout(Duration::from_secs(5), arrived.notified())
                .await
                .expect("the hint reached the client while the service waited");
        }
        _ => {}
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"final"))))
}

#[tokio::test]
async fn interim_responses_cross_http2_in_order_and_bounded() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server_seen = seen.clone();
    tokio::spawn(async move {
        let service =
            hyper::service::service_fn(move |request| service(request, server_seen.clone()));
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(client_io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    let mut get = |path: &str, got: Arc<Mutex<Vec<(u16, String)>>>| {
        // Each request's own: a permit left by an earlier one would wake the next early.
        let arrived = Arc::new(tokio::sync::Notify::new());
        seen.lock().unwrap().arrived = arrived.clone();
        let mut request = Request::builder()
            .uri(format!("http://x{path}"))
            .body(Empty::new())
            .unwrap();
        hyper::ext::on_informational(&mut request, move |interim| {
            let link = interim.headers()[http::header::LINK].to_str().unwrap();
            got.lock()
                .unwrap()
                .push((interim.status().as_u16(), link.to_owned()));
            arrived.notify_one();
        });
        send.send_request(request)
    };

    let got = Arc::new(Mutex::new(Vec::new()));
    let response = get("/two", got.clone()).await.unwrap();
    // Both arrived before the final response was returned.
    assert_eq!(
        *got.lock().unwrap(),
        [(103, "</a.css>".to_owned()), (103, "</b.js>".to_owned())]
    );
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"final");
    // After the final response the sender refuses.
    let late = seen.lock().unwrap().late_sender.take().unwrap();
    assert!(late.send(hint("</late>")).is_err());

    let got = Arc::new(Mutex::new(Vec::new()));
    let response = get("/burst", got.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(seen.lock().unwrap().burst_accepted, 16);
    let links: Vec<String> = got.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
    let expected: Vec<String> = (0..16).map(|n| format!("</0-{n}>")).collect();
    assert_eq!(links, expected, "the accepted ones arrive, in order");

    let got = Arc::new(Mutex::new(Vec::new()));
    let response = get("/woken", got.clone()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*got.lock().unwrap(), [(103, "</woken>".to_owned())]);

    // Without a callback the client skips interim responses, as before.
    let request = Request::builder()
        .uri("http://x/two")
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
