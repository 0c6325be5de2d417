//! The service hyper calls per request: who the client is, the target and `Host` check,
//! admission (503 beyond `max_concurrency`), static files (`[static]` mounts, answered
//! here without the app), 413 on a declared body too large, then the hand-off to the app
//! and the response it sends back.

use super::conn::{ConnBusy, ConnCtx};
use super::record::{Done, InFlight};
use crate::admission::{Admission, ConnInfo, Opening, QueuedStart, REQUEST_ID};
use crate::body::ResponseBody;
use crate::budget::{Budgets, LogEvery};
use crate::http::{Pending, RequestStart};
use crate::metrics::{ErrorKind, Protocol};
use crate::receive::Exchange;
use crate::state::Shared;
use bytes::Bytes;
use genro_shared::tls_facts::{TlsFacts, TLS_HEADER};
use genro_shared::CLIENT_HEADER;
use http::header::{HeaderValue, ALT_SVC, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn plain(status: StatusCode, text: &'static str, close: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The response the app's side sends back, with our request id unless the app named the
/// request itself; 503 if the exchange was dropped without an answer (worker stopping).
async fn app_answer(
    ctx: &ConnCtx,
    response: tokio::sync::oneshot::Receiver<Response<ResponseBody>>,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let mut response = match response.await {
        Ok(response) => response,
        Err(_) => {
            ctx.shared.error(ErrorKind::Internal);
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server shutting down\n",
                true,
            )
        }
    };
    response
        .headers_mut()
        .entry(REQUEST_ID)
        .or_insert(request_id);
    response
}

/// Validates a WebSocket handshake and hands the session to the app; answers with what
/// the app decides (101/200 on accept, 403 on close, its own denial response).
async fn open_websocket(
    mut request: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    info: Arc<ConnInfo>,
    admission: Arc<Admission>,
    done: Option<Done>,
    request_id: HeaderValue,
) -> Response<ResponseBody> {
    let handshake = match crate::websocket::Handshake::new(&mut request, &ctx.limits.websocket) {
        Ok(handshake) => handshake,
        Err((status, text)) => {
            drop(admission);
            ctx.shared.error(ErrorKind::Client);
            let mut response = plain(status, text, false);
            let headers = response.headers_mut();
            if status == StatusCode::UPGRADE_REQUIRED {
                headers.insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            headers.insert(REQUEST_ID, request_id);
            return finish(response, done);
        }
    };
    let (parts, _) = request.into_parts();
    let hold: crate::websocket::Hold = Box::new((ctx.clone(), ConnBusy::new(ctx.state.clone())));
    let (respond, response) = tokio::sync::oneshot::channel();
    crate::websocket::start(
        &ctx.shared,
        crate::websocket::WsStart {
            opening: Opening {
                parts,
                conn: info,
                admission,
                respond,
            },
            session: crate::websocket::Session {
                handshake,
                settings: ctx.limits.websocket.clone(),
                stop: ctx.shared.going_away.subscribe(),
                hold,
            },
        },
    );
    finish(app_answer(ctx, response, request_id).await, done)
}

/// Attaches the metrics and access-log line (if on) to a response the server wrote itself.
pub(super) fn finish(
    response: Response<ResponseBody>,
    done: Option<Done>,
) -> Response<ResponseBody> {
    let Some(done) = done else {
        return response;
    };
    let status = response.status();
    response.map(|body| body.on_drop(Box::new(move |bytes| done.record(status, bytes, 0))))
}

/// Answers an HTTP/1.x request whose target or `Host` [`crate::target::check`] refused:
/// a client error, counted and logged at debug, with a request id like the other answers
/// the server writes itself; the connection closes (the body, if any, is not read).
fn refuse_target(
    ctx: &ConnCtx,
    request: &Request<Incoming>,
    client: std::net::SocketAddr,
    protocol: Protocol,
    bad: crate::target::BadTarget,
) -> Response<ResponseBody> {
    let admission = Admission::new(ctx.shared.clone(), request, client, protocol);
    let done = Done::new(ctx, request, admission.envelope());
    let request_id = admission.envelope().id.header();
    tracing::debug!(parent: admission.envelope().span(), "bad request target or Host: {bad}");
    drop(admission);
    ctx.shared.error(ErrorKind::Client);
    let mut response = plain(bad.status(), bad.text(), true);
    response.headers_mut().insert(REQUEST_ID, request_id);
    finish(response, done)
}

pub(super) async fn handle(
    request: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut request = request;
    let limits = &ctx.limits;
    let mut protocol = Protocol::of(request.version(), ctx.info.front);
    if ctx.state.requests.fetch_add(1, Ordering::Relaxed) == 0 && !ctx.info.front {
        if let Some(metrics) = &ctx.shared.metrics {
            let _ = ctx.state.protocol.set(protocol);
            metrics.connection_opened(protocol);
        }
    }
    // From the front too: its WebSockets over HTTP/3 arrive as extended CONNECTs.
    let websocket = crate::websocket::is_websocket(&request);
    if websocket {
        protocol = Protocol::Websocket;
    }
    // Only the front may say who the client is, and only on its private socket.
    let forwarded = request.headers_mut().remove(&FRONT_CLIENT);
    let front_tls = request.headers_mut().remove(&FRONT_TLS);
    let info = match forwarded {
        Some(value) if ctx.info.front => {
            let client = value.to_str().ok().and_then(|v| v.parse().ok());
            let info = ConnInfo {
                client: client.unwrap_or(ctx.info.client),
                ..(*ctx.info).clone()
            };
            let facts = front_tls
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(TlsFacts::from_header);
            if let Some(facts) = facts {
                let _ = info.tls.set(Arc::new(facts));
            }
            Arc::new(info)
        }
        _ => ctx.info.clone(),
    };
    // Behind a trusted proxy, the client and scheme are the original request's.
    let info = match &limits.proxies {
        // A peer on the uds socket passed its file mode: it is the proxy.
        Some(trusted) if info.unix.is_some() || trusted.contains(info.client.ip()) => {
            let origin = crate::forwarded::origin(request.headers(), trusted);
            if origin == crate::forwarded::Origin::default() {
                info
            } else {
                Arc::new(ConnInfo {
                    client: origin.client.unwrap_or(info.client),
                    https: origin.https.unwrap_or(info.https),
                    ..(*info).clone()
                })
            }
        }
        _ => info,
    };
    if let Err(bad) = crate::target::check(&mut request) {
        return Ok(refuse_target(&ctx, &request, info.client, protocol, bad));
    }
    let admission = Admission::new(ctx.shared.clone(), &request, info.client, protocol);
    let done = Done::new(&ctx, &request, admission.envelope());
    let request_id = admission.envelope().id.header();
    // HTTP requests in flight, and starts (WebSockets too) queued for a loop that may be
    // blocked, are each bounded by max_concurrency.
    let busy = limits.max_concurrency != 0
        && ((!websocket
            && ctx.shared.http_in_flight.load(Ordering::Relaxed) > limits.max_concurrency)
            || QueuedStart::full(&ctx.shared, limits.max_concurrency));
    if busy {
        drop(admission);
        ctx.shared.error(ErrorKind::Internal);
        ctx.shared.limit(crate::metrics::Limit::Concurrency);
        busy_warning(&ctx.shared, limits.max_concurrency);
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server busy, retry later\n",
            false,
        );
        let headers = response.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(REQUEST_ID, request_id);
        return Ok(finish(response, done));
    }
    if websocket {
        return Ok(open_websocket(request, &ctx, info, admission, done, request_id).await);
    }
    let version = request.version();
    if let Some(statics) = &limits.statics {
        // Built only when a file's body needs it.
        let sink = || crate::statics::Sink {
            budgets: budgets(&ctx),
            sendfile: sendfile_slot(&ctx, version),
            shared: ctx.shared.clone(),
            envelope: admission.envelope().clone(),
        };
        if let Some(response) = statics.answer(&request, &ctx.shared, sink) {
            return Ok(static_answer(
                &ctx, response, admission, done, request_id, version,
            ));
        }
    }
    if limits.max_body_size != 0 {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body_size) {
            drop(admission);
            ctx.shared.error(ErrorKind::Client);
            // Close: we do not read the body we refuse.
            let mut response = plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large\n",
                true,
            );
            response.headers_mut().insert(REQUEST_ID, request_id);
            return Ok(finish(response, done));
        }
    }
    let (parts, body) = request.into_parts();
    let exchange = Arc::new(Exchange::new(body, limits.max_body_size));
    let guard = InFlight::new(admission.clone(), ctx.state.clone(), exchange.clone(), done);
    let (respond, response) = tokio::sync::oneshot::channel();
    let pending = Pending::new(RequestStart {
        opening: Opening {
            parts,
            conn: info,
            admission,
            respond,
        },
        exchange,
        budgets: budgets(&ctx),
        sendfile: sendfile_slot(&ctx, version),
    });
    crate::http::start(&ctx.shared, pending.clone());
    // If the client leaves before the loop starts the request, this future is dropped:
    // release the request now, not when the loop wakes.
    let unstarted = Unstarted(pending);
    let mut response = app_answer(&ctx, response, request_id).await;
    drop(unstarted);
    decorate(&ctx, &mut response, version);
    let status = response.status();
    Ok(response.map(|body| body.on_drop(Box::new(move |bytes| guard.finish(status, bytes)))))
}

/// Where a response's bytes are counted.
fn budgets(ctx: &ConnCtx) -> Budgets {
    Budgets {
        conn: ctx.state.buffers.clone(),
        worker: ctx.shared.worker_buffer.clone(),
        response: ctx.limits.response_buffer,
        send_timeout: ctx.limits.send_timeout,
    }
}

/// The connection's `sendfile` slot, if a response to a request of `version` may use it:
/// hyper writes an HTTP/1.x body to the socket as it is; HTTP/2 frames copy it.
fn sendfile_slot(ctx: &ConnCtx, version: http::Version) -> Option<Arc<crate::sendfile::FileSlot>> {
    (ctx.state.sendfile.clone()).filter(|_| version != http::Version::HTTP_2)
}

/// What a response gets besides its own fields: `Alt-Svc` on TCP when HTTP/3 is on, and
/// `Connection: close` on HTTP/1.x while the worker drains.
fn decorate(ctx: &ConnCtx, response: &mut Response<ResponseBody>, version: http::Version) {
    if let Some(alt_svc) = ctx.limits.alt_svc.as_ref().filter(|_| !ctx.info.front) {
        response
            .headers_mut()
            .entry(ALT_SVC)
            .or_insert_with(|| alt_svc.clone());
    }
    if ctx.shared.draining.load(Ordering::Relaxed) && version != http::Version::HTTP_2 {
        // Tell keep-alive clients to take their next request elsewhere (RFC 9112 9.6).
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A static file's response, or an exclusive mount's refusal: the same fields as the
/// app's, counted and logged like them (and in `static_responses_total`) when its body is
/// done; its admission (registry entry, concurrency slot) and its place on the
/// connection are held until then.
fn static_answer(
    ctx: &ConnCtx,
    mut response: Response<ResponseBody>,
    admission: Arc<Admission>,
    done: Option<Done>,
    request_id: HeaderValue,
    version: http::Version,
) -> Response<ResponseBody> {
    response.headers_mut().insert(REQUEST_ID, request_id);
    decorate(ctx, &mut response, version);
    // No app runs it: a long download is not a stuck request for the watchdog.
    ctx.shared
        .registry
        .set_busy(admission.envelope().key, false);
    let busy = ConnBusy::new(ctx.state.clone());
    let metrics = ctx.shared.metrics.clone();
    let status = response.status();
    response.map(|body| {
        body.on_drop(Box::new(move |bytes| {
            if let Some(metrics) = &metrics {
                metrics.static_done(status);
            }
            if let Some(done) = done {
                done.record(status, bytes, 0);
            }
            drop((admission, busy));
        }))
    })
}

/// Takes a request out of the hand-off queue when dropped (see [`Pending`]).
struct Unstarted(pub(super) Arc<Pending>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        drop(self.0.take());
    }
}

/// Logs that `max_concurrency` refused requests, at most once per [`BUSY_LOG_EVERY`].
fn busy_warning(shared: &Shared, max: usize) {
    static BUSY_LOG_EVERY: LogEvery = LogEvery::new(Duration::from_secs(10));
    if BUSY_LOG_EVERY.due() {
        let in_flight = shared.http_in_flight.load(Ordering::Relaxed);
        let queued = shared.starts_queued.load(Ordering::Relaxed);
        tracing::warn!("max_concurrency ({max}) reached: {in_flight} HTTP requests in flight, {queued} starts queued for the event loop; answering 503 (logged at most every {}s)", BUSY_LOG_EVERY.secs());
    }
}

/// [`CLIENT_HEADER`] as a header name, parsed once (it is looked up on every request).
static FRONT_CLIENT: http::HeaderName = http::HeaderName::from_static(CLIENT_HEADER);
/// [`TLS_HEADER`]: the front's QUIC connection's TLS facts.
static FRONT_TLS: http::HeaderName = http::HeaderName::from_static(TLS_HEADER);
