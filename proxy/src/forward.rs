//! One HTTP/3 request: read its head, map it to an HTTP/2 request for a worker slot, send
//! it (retrying when that is safe), and relay the response head, body and trailers back.
//!
//! Retry rules. An attempt is repeated, on another slot when there is one (else on the
//! same slot over a new connection), at most [`MAX_ATTEMPTS`] times in all, only when the
//! worker certainly did not process it:
//! - the slot's socket refused the connection or the HTTP/2 handshake failed;
//! - hyper never handed the request to the connection (`ready()` failed, or
//!   `is_canceled`: the connection closed first, e.g. after the worker's GOAWAY);
//! - the worker refused the stream (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7);
//! - the worker's graceful GOAWAY failed the request, *and* the method is idempotent
//!   (RFC 9110 §9.2.2). hyper reports two different things with the same
//!   GOAWAY(NO_ERROR) error: a stream above the GOAWAY's last-stream-id (not processed,
//!   RFC 9113 §6.8), and a request whose stream it had just opened when the connection
//!   task took in the GOAWAY (its HEADERS may already be out, and the worker then runs
//!   the app). Measured: 3,000 sequential POSTs to a worker that sends GOAWAY after every
//!   response, on a loaded machine, with every GOAWAY error retried: 5 ran twice. So
//!   only requests that may run twice are retried after a GOAWAY; others answer 502 in
//!   that narrow window (6 of those 3,000);
//! - and at most the first [`REPLAY_LIMIT`](crate::body::REPLAY_LIMIT) bytes of the
//!   body (and no trailers) went with it: bodies are streamed, not buffered, and only
//!   that much is kept for a replay (`body.rs`).
//!
//! Anything else after the request was handed over (the worker died, reset the stream)
//! answers 502: the app may have run. There is no upstream timeout: a slow app is the
//! app's business, and the workers bound their own work.
//!
//! Early Hints (`[server] early_hints`): each `103` the worker sends before its response
//! is relayed to the client as an HTTP/3 interim response while the front awaits the
//! final one; at most [`MAX_HINTS`] wait, later ones are dropped (they are advisory, RFC
//! 8297). A hint from an attempt that is then retried stays sent.
//!
//! Mapping: the method, `https://<authority><path?query>` (HTTP/3 always carries an
//! authority), and the headers minus connection-specific ones (RFC 9113 §8.2.2) and
//! `Host` (HTTP/2 carries it in `:authority`). The front replaces any client copy of
//! [`genro_shared::CLIENT_HEADER`] with the QUIC peer's `ip:port`.

use crate::body::{BodyHandle, RequestBody, Stall};
use crate::control::{Limit, Stats};
use crate::stall::Client;
use crate::upstream::{ConnectError, InFlight, Pool, Upstream};
use bytes::Bytes;
use genro_shared::h2_facts::H2Facts;
use genro_shared::tls_facts::TLS_HEADER;
use genro_shared::CLIENT_HEADER;
use h3::error::{Code, StreamError};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The sending half of an HTTP/3 request stream.
pub(crate) type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// A whole HTTP/3 request stream, before it is split.
pub(crate) type BidiRequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
/// An accepted HTTP/3 request whose head is not read yet.
pub(crate) type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// Attempts per request, the first included.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Most `103 Early Hints` of one request waiting to be relayed: as many as a worker
/// sends on one stream, so none is dropped here unless the client is slow to take them.
const MAX_HINTS: usize = 16;

/// The sending end of a request's early hints (their header sections).
type HintSender = tokio::sync::mpsc::Sender<HeaderMap>;

/// What every request needs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The worker slots.
    pub(crate) pool: Arc<Pool>,
    /// Heartbeat counters.
    pub(crate) stats: Arc<Stats>,
}

/// Serves one request to the end (or until the client goes away). A client that opened
/// the stream but has not sent its HEADERS frame within `head_timeout` gets the stream
/// reset with H3_REQUEST_INCOMPLETE.
pub(crate) async fn handle(
    resolver: Resolver,
    shared: Arc<Shared>,
    client: Arc<Client>,
    head_timeout: std::time::Duration,
) {
    let peer = client.peer;
    let Some(resolved) = resolve(resolver, head_timeout).await else {
        tracing::debug!(%peer, "request head not received within header_read_timeout");
        return;
    };
    let (request, stream) = match resolved {
        Ok(resolved) => resolved,
        Err(StreamError::HeaderTooBig {
            actual_size,
            max_size,
            ..
        }) => {
            // h3 has already answered 431 on the stream (RFC 9114 §4.2.2).
            tracing::debug!(%peer, "431: header section of {actual_size} bytes, limit {max_size}");
            return;
        }
        Err(err) => {
            tracing::debug!(%peer, "request head not received: {err}");
            return;
        }
    };
    let _counted = shared.stats.enter();
    if crate::tunnel::is_websocket(&request) {
        crate::tunnel::websocket(request, stream, &shared, &client).await;
        return;
    }
    let (mut send, recv) = stream.split();
    let (body, handle) = RequestBody::new(
        recv,
        Stall {
            timeout: client.body_timeout,
            activity: Some(client.activity.clone()),
        },
    );
    let label = Label::of(&request);
    let (hint_tx, hint_rx) = match client.early_hints {
        true => {
            let (tx, rx) = tokio::sync::mpsc::channel(MAX_HINTS);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let forwarded = forward(
        request,
        Bodies::Stream {
            first: Some(body),
            handle: &handle,
        },
        &shared.pool,
        peer,
        client.tls.as_ref(),
        hint_tx,
    );
    let forwarded = match hint_rx {
        Some(hints) => with_hints(forwarded, hints, &mut send, &client).await,
        None => Ok(forwarded.await),
    };
    let relayed = match forwarded {
        Ok(Ok((response, _in_flight))) => relay(response, &mut send, &client).await,
        Err(err) => Err(err),
        Ok(Err(failure)) => {
            answer_failure(failure, &mut send, &shared, &client, &label).await;
            Ok(())
        }
    };
    if let Err(err) = relayed {
        relay_failed(err, &mut send, &client, handle.is_timed_out(), &label);
    }
    // RFC 9114 §4.1: a complete response may precede the end of the request.
    handle.discard_rest().await;
}

/// A request's method and path, for log lines.
pub(crate) struct Label {
    method: Method,
    target: String,
}

impl Label {
    pub(crate) fn of(request: &Request<()>) -> Label {
        Label {
            method: request.method().clone(),
            target: request.uri().path().to_owned(),
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)
    }
}

/// Answers a request that got no upstream response, counted and logged.
pub(crate) async fn answer_failure(
    failure: Failure,
    send: &mut SendStream,
    shared: &Shared,
    client: &Client,
    label: &Label,
) {
    let peer = client.peer;
    let status = failure.status();
    if let Failure::BodyTimeout = failure {
        client.hit(Limit::BodyTimeout);
        shared.stats.error(true);
    } else {
        shared.stats.error(!status.is_server_error());
        if status.is_server_error() {
            tracing::warn!(%peer, "{label}: {status}: {failure}");
        } else {
            tracing::debug!(%peer, "{label}: {status}: {failure}");
        }
    }
    if let Err(err) = answer(send, status, failure.text()).await {
        tracing::debug!(%peer, "{status} not sent: {err}");
    }
}

/// Ends a response that could not be relayed to the end. `body_timed_out`: the client's
/// upload stalled for `body_timeout`.
pub(crate) fn relay_failed(
    err: RelayError,
    send: &mut SendStream,
    client: &Client,
    body_timed_out: bool,
    label: &Label,
) {
    let peer = client.peer;
    match err {
        RelayError::SendTimeout => {
            // Dropping the upstream response (done: its owner returned) resets the
            // worker's stream with CANCEL: the app sees the disconnect.
            send.stop_stream(Code::H3_REQUEST_CANCELLED);
            client.hit(Limit::SendTimeout);
            client.close_if_stalled();
        }
        RelayError::Upstream(_) if body_timed_out => {
            // The upload stalled after the response started: the client's request is
            // incomplete (RFC 9114 §8.1), the worker's stream reset.
            send.stop_stream(Code::H3_REQUEST_INCOMPLETE);
            client.hit(Limit::BodyTimeout);
        }
        err @ (RelayError::Upstream(_) | RelayError::Tunnel) => {
            send.stop_stream(Code::H3_INTERNAL_ERROR);
            tracing::debug!(%peer, "{label}: response not relayed: {err}");
        }
        err => tracing::debug!(%peer, "{label}: response not relayed: {err}"),
    }
}

/// Reads a request's header section within `timeout`. h3's `resolve_request` has no
/// limit, and dropping it mid-way would *finish* the stream (quinn's drop), which reads as
/// an empty, complete response; so the first frame is read here and a late stream reset.
/// (`frame_stream` is public but hidden in h3 0.0.8, marked to become private: revisit
/// on upgrade.)
/// `None`: timed out (the stream is reset).
async fn resolve(
    mut resolver: Resolver,
    timeout: std::time::Duration,
) -> Option<Result<(Request<()>, BidiRequestStream), StreamError>> {
    let first = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
    match tokio::time::timeout(timeout, first).await {
        Ok(frame) => Some(match resolver.accept_with_frame(frame) {
            Ok(resolved) => resolved.resolve().await,
            Err(err) => Err(err),
        }),
        Err(_) => {
            use h3::quic::SendStream as _;
            resolver
                .frame_stream
                .reset(Code::H3_REQUEST_INCOMPLETE.value());
            None
        }
    }
}

/// Refuses a request that arrived after this connection's GOAWAY (see `server.rs`):
/// H3_REQUEST_REJECTED tells the client it was not processed and may be retried. The
/// receiving side is stopped by dropping it (see `body.rs` on h3-quinn's `stop_sending`).
pub(crate) async fn reject(resolver: Resolver) {
    if let Ok((_, mut stream)) = resolver.resolve_request().await {
        stream.stop_stream(Code::H3_REQUEST_REJECTED);
    }
}

/// Why a request got no upstream response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The request cannot be expressed upstream.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// CONNECT is forwarded only as a WebSocket (RFC 9220).
    #[error("CONNECT is supported over HTTP/3 only for WebSocket")]
    Connect,
    /// The supervisor announced no worker slot.
    #[error("no worker slot known")]
    NoWorker,
    /// The request body stalled for `[limits] body_timeout` before the response started.
    #[error("the request body sent no bytes for body_timeout")]
    BodyTimeout,
    /// Every attempt failed.
    #[error("{attempts} attempt(s) failed, last: {last}")]
    Upstream {
        /// How many attempts were made.
        attempts: usize,
        /// The last attempt's error.
        last: AttemptError,
    },
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::Connect => StatusCode::NOT_IMPLEMENTED,
            Failure::NoWorker => StatusCode::SERVICE_UNAVAILABLE,
            Failure::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Failure::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Failure::BadRequest(_) => "Bad Request\n",
            Failure::Connect => "CONNECT is supported over HTTP/3 only for WebSocket (RFC 9220)\n",
            Failure::NoWorker => "Service Unavailable: no worker is available\n",
            Failure::BodyTimeout => "Request Timeout: the request body stalled\n",
            Failure::Upstream { .. } => "Bad Gateway: the worker connection failed\n",
        }
    }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// No connection to the slot.
    #[error("slot {slot}: {source}")]
    Connect {
        slot: u32,
        #[source]
        source: ConnectError,
    },
    /// The connection failed while sending the request or waiting for the head.
    #[error("slot {slot}: {}", genro_shared::describe_error(source))]
    Send {
        slot: u32,
        #[source]
        source: hyper::Error,
        verdict: Verdict,
    },
}

impl AttemptError {
    fn may_retry(&self) -> bool {
        match self {
            AttemptError::Connect { .. } => true,
            AttemptError::Send { verdict, .. } => verdict.retry,
        }
    }
}

/// What an attempt's error allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The request may be sent again (see the module docs).
    retry: bool,
    /// The connection is closing or closed: the next request opens a new one.
    reconnect: bool,
}

fn verdict(canceled: bool, h2: Option<H2Facts>, idempotent: bool) -> Verdict {
    let (retry, reconnect) = match h2 {
        // hyper never handed it to the connection, which is closing or closed.
        _ if canceled => (true, true),
        Some(f) if f.refused() => (true, false),
        // Only a graceful GOAWAY is considered: after an error GOAWAY the connection may
        // fail the remaining streams with the same error although they were processed.
        Some(f) if f.go_away => (f.graceful_go_away() && idempotent, true),
        _ => (false, false),
    };
    Verdict { retry, reconnect }
}

fn classify(err: &hyper::Error, method: &Method) -> Verdict {
    verdict(
        err.is_canceled(),
        H2Facts::find(err),
        method.is_idempotent(),
    )
}

/// The upstream request head, reused by every attempt.
#[derive(Debug, Clone)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// An extended CONNECT's `:protocol` (RFC 8441 upstream, RFC 9220 from the client).
    protocol: Option<hyper::ext::Protocol>,
}

impl Head {
    fn of(
        request: &Request<()>,
        peer: SocketAddr,
        tls: Option<&HeaderValue>,
    ) -> Result<Head, Failure> {
        let protocol = match request.method() == Method::CONNECT {
            true if crate::tunnel::is_websocket(request) => {
                Some(hyper::ext::Protocol::from_static("websocket"))
            }
            true => return Err(Failure::Connect),
            false => None,
        };
        let uri = request.uri();
        let authority = uri
            .authority()
            .ok_or(Failure::BadRequest("no :authority"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let uri = Uri::builder()
            .scheme("https")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| Failure::BadRequest("bad :path"))?;
        Ok(Head {
            method: request.method().clone(),
            uri,
            headers: upstream_headers(request.headers(), peer, tls),
            protocol,
        })
    }

    /// The request of one attempt; the `103`s of its response go to `hints`.
    fn request(&self, body: RequestBody, hints: Option<&HintSender>) -> Request<RequestBody> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = self.headers.clone();
        if let Some(protocol) = &self.protocol {
            request.extensions_mut().insert(protocol.clone());
        }
        if let Some(hints) = hints.cloned() {
            // Called by hyper's connection task for each interim response (the patched
            // hyper, `third_party/hyper`): it must not wait, so a full queue drops.
            hyper::ext::on_informational(&mut request, move |interim| {
                if interim.status() == StatusCode::EARLY_HINTS {
                    let _ = hints.try_send(without_hop_by_hop(interim.headers()));
                }
            });
        }
        request
    }
}

/// Connection-specific header fields, forbidden in HTTP/2 and HTTP/3 (RFC 9113 §8.2.2,
/// RFC 9114 §4.2); a well-behaved HTTP/3 peer sends none.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Drops the connection-specific fields and any field the `Connection` header names.
pub(crate) fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !named.iter().any(|n| n == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn upstream_headers(headers: &HeaderMap, peer: SocketAddr, tls: Option<&HeaderValue>) -> HeaderMap {
    let mut out = without_hop_by_hop(headers);
    out.remove(header::HOST);
    out.remove(CLIENT_HEADER);
    out.remove(TLS_HEADER);
    if let Some(tls) = tls {
        out.insert(HeaderName::from_static(TLS_HEADER), tls.clone());
    }
    let client =
        HeaderValue::try_from(peer.to_string()).expect("a socket address is a valid header value");
    out.insert(HeaderName::from_static(CLIENT_HEADER), client);
    out
}

/// Where each attempt's request body comes from.
pub(crate) enum Bodies<'a> {
    /// The client's stream: the first attempt takes it, a retry replays what it sent.
    Stream {
        first: Option<RequestBody>,
        handle: &'a BodyHandle,
    },
    /// None: an extended CONNECT (the stream carries a tunnel once it is answered).
    Empty,
}

impl Bodies<'_> {
    fn next(&mut self) -> Option<RequestBody> {
        match self {
            Bodies::Stream { first, handle } => first.take().or_else(|| handle.reclaim()),
            Bodies::Empty => Some(RequestBody::empty()),
        }
    }

    fn commit(&self) {
        if let Bodies::Stream { handle, .. } = self {
            handle.commit();
        }
    }

    fn is_timed_out(&self) -> bool {
        matches!(self, Bodies::Stream { handle, .. } if handle.is_timed_out())
    }
}

pub(crate) async fn forward(
    request: Request<()>,
    mut bodies: Bodies<'_>,
    pool: &Pool,
    peer: SocketAddr,
    tls: Option<&HeaderValue>,
    hints: Option<HintSender>,
) -> Result<(Response<Incoming>, InFlight), Failure> {
    let head = Head::of(&request, peer, tls)?;
    let mut tried: Vec<u32> = Vec::with_capacity(MAX_ATTEMPTS);
    let mut last = None;
    while tried.len() < MAX_ATTEMPTS {
        let Some(upstream) = pool.pick(&tried) else {
            break;
        };
        let Some(attempt_body) = bodies.next() else {
            break;
        };
        tried.push(upstream.slot);
        let in_flight = upstream.enter();
        match attempt(
            &upstream,
            pool.response_buffer(),
            head.request(attempt_body, hints.as_ref()),
        )
        .await
        {
            Ok(response) => {
                bodies.commit();
                return Ok((response, in_flight));
            }
            Err(_) if bodies.is_timed_out() => return Err(Failure::BodyTimeout),
            Err(err) => {
                let retry = err.may_retry();
                tracing::debug!(
                    %peer,
                    "attempt {} failed ({}): {err}",
                    tried.len(),
                    if retry { "not processed" } else { "final" }
                );
                last = Some(err);
                if !retry {
                    break;
                }
            }
        }
    }
    match last {
        Some(last) => Err(Failure::Upstream {
            attempts: tried.len(),
            last,
        }),
        None => Err(Failure::NoWorker),
    }
}

async fn attempt(
    upstream: &Upstream,
    buffer: u32,
    request: Request<RequestBody>,
) -> Result<Response<Incoming>, AttemptError> {
    let slot = upstream.slot;
    let (id, mut send) = upstream
        .sender(buffer)
        .await
        .map_err(|source| AttemptError::Connect { slot, source })?;
    if let Err(source) = send.ready().await {
        upstream.invalidate(id).await;
        return Err(AttemptError::Send {
            slot,
            source,
            verdict: Verdict {
                retry: true,
                reconnect: true,
            },
        });
    }
    let method = request.method().clone();
    match send.send_request(request).await {
        Ok(response) => Ok(response),
        Err(source) => {
            let verdict = classify(&source, &method);
            if verdict.reconnect {
                upstream.invalidate(id).await;
            }
            Err(AttemptError::Send {
                slot,
                source,
                verdict,
            })
        }
    }
}

/// Awaits `upstream` (the request's attempts), relaying each early hint to the client
/// meanwhile. hyper hands a hint over before the response it precedes, so the ones
/// still queued when `upstream` is done go out before it returns. A hint the client's
/// settings do not admit (its field section is too large) is dropped; a failed or
/// timed-out write fails the request.
async fn with_hints<T>(
    upstream: impl std::future::Future<Output = T>,
    mut hints: tokio::sync::mpsc::Receiver<HeaderMap>,
    send: &mut SendStream,
    client: &Client,
) -> Result<T, RelayError> {
    tokio::pin!(upstream);
    loop {
        tokio::select! {
            biased;
            Some(headers) = hints.recv() => relay_hint(headers, send, client).await?,
            done = &mut upstream => {
                while let Ok(headers) = hints.try_recv() {
                    relay_hint(headers, send, client).await?;
                }
                return Ok(done);
            }
        }
    }
}

/// Writes one `103 Early Hints` with these fields to the client.
async fn relay_hint(
    headers: HeaderMap,
    send: &mut SendStream,
    client: &Client,
) -> Result<(), RelayError> {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::EARLY_HINTS;
    *head.headers_mut() = headers;
    match write(client, send.send_response(head)).await {
        Err(RelayError::Client(StreamError::HeaderTooBig { .. })) => {
            tracing::debug!(peer = %client.peer, "103 Early Hints dropped: too large for the client");
            Ok(())
        }
        written => written,
    }
}

/// Why a response was not relayed to the end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The HTTP/3 client went away or reset the stream.
    #[error("client: {0}")]
    Client(#[source] StreamError),
    /// The client took no response bytes for `[limits] send_timeout`.
    #[error("the client took no response bytes for send_timeout")]
    SendTimeout,
    /// The worker reset the stream or the connection broke mid-body; the caller resets
    /// the client's stream (the response cannot be completed).
    #[error("worker: {}", genro_shared::describe_error(.0))]
    Upstream(#[source] hyper::Error),
    /// The worker's side of a WebSocket tunnel failed (`tunnel.rs`).
    #[error("the worker's side of the tunnel failed")]
    Tunnel,
}

/// Relays the response. Every write to the QUIC stream must complete within
/// `send_timeout`: a write waits while the client's flow-control window is closed, and
/// the upstream HTTP/2 window (`[limits] response_buffer`) then fills and holds the
/// worker's `send()`. Bytes in the front per response: that window, one DATA frame
/// (at most 16 KiB, the HTTP/2 default frame size) and what quinn holds for the client
/// (bounded by the client's window and `send_window`).
pub(crate) async fn relay(
    response: Response<Incoming>,
    send: &mut SendStream,
    client: &Client,
) -> Result<(), RelayError> {
    let (parts, mut body) = response.into_parts();
    let mut head = Response::new(());
    *head.status_mut() = parts.status;
    *head.headers_mut() = without_hop_by_hop(&parts.headers);
    write(client, send.send_response(head)).await?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(RelayError::Upstream)?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => write(client, send.send_data(data)).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    write(client, send.send_trailers(trailers)).await?;
                }
            }
        }
    }
    write(client, send.finish()).await
}

/// One write to the client's stream, within `send_timeout`; a completed write is
/// progress on the connection.
pub(crate) async fn write(
    client: &Client,
    write: impl std::future::Future<Output = Result<(), StreamError>>,
) -> Result<(), RelayError> {
    let done = match client.send_timeout {
        Some(timeout) => tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| RelayError::SendTimeout)?,
        None => write.await,
    };
    done.map_err(RelayError::Client)?;
    client.activity.touch();
    Ok(())
}

async fn answer(
    send: &mut SendStream,
    status: StatusCode,
    text: &'static str,
) -> Result<(), StreamError> {
    let mut head = Response::new(());
    *head.status_mut() = status;
    let headers = head.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    send.send_response(head).await?;
    send.send_data(Bytes::from_static(text.as_bytes())).await?;
    send.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        use h2::Reason;
        let facts = |reason, go_away, reset, remote| {
            Some(H2Facts {
                reason: Some(reason),
                go_away,
                reset,
                remote,
            })
        };
        let v = |retry, reconnect| Verdict { retry, reconnect };
        let graceful = facts(Reason::NO_ERROR, true, false, true);
        #[rustfmt::skip]
        let table: &[(&str, bool, Option<H2Facts>, bool, Verdict)] = &[
            ("canceled: never sent", true, None, false, v(true, true)),
            ("refused stream", false, facts(Reason::REFUSED_STREAM, false, true, true), false, v(true, false)),
            ("graceful goaway, GET", false, graceful, true, v(true, true)),
            ("graceful goaway, POST", false, graceful, false, v(false, true)),
            ("error goaway", false, facts(Reason::INTERNAL_ERROR, true, false, true), true, v(false, true)),
            ("local goaway", false, facts(Reason::NO_ERROR, true, false, false), true, v(false, true)),
            ("local refused", false, facts(Reason::REFUSED_STREAM, false, true, false), true, v(false, false)),
            ("reset by the app", false, facts(Reason::INTERNAL_ERROR, false, true, true), true, v(false, false)),
            ("cancel", false, facts(Reason::CANCEL, false, true, true), true, v(false, false)),
            ("io error", false, None, true, v(false, false)),
        ];
        for (name, canceled, h2, idempotent, want) in table {
            assert_eq!(verdict(*canceled, *h2, *idempotent), *want, "{name}");
        }
    }

    #[test]
    fn upstream_headers_are_cleaned() {
        let peer: SocketAddr = "[2001:db8::1]:4433".parse().unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "example.com"),
            ("connection", "x-private, keep-alive"),
            ("x-private", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            (CLIENT_HEADER, "6.6.6.6:666"),
            (CLIENT_HEADER, "7.7.7.7:777"),
            ("accept", "a"),
            ("accept", "b"),
            ("cookie", "c=1"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = upstream_headers(&headers, peer, None);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "cookie", CLIENT_HEADER]);
        let accept: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(accept, ["a", "b"]);
        let client: Vec<_> = out.get_all(CLIENT_HEADER).iter().collect();
        assert_eq!(client, ["[2001:db8::1]:4433"]);
    }

    #[test]
    fn head_maps_to_https_with_the_authority() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let request = |method: Method, uri: &str| {
            let mut r = Request::new(());
            *r.method_mut() = method;
            *r.uri_mut() = uri.parse().unwrap();
            r
        };
        let head = Head::of(
            &request(Method::GET, "https://example.com:8443/a/b?x=1"),
            peer,
            None,
        )
        .expect("maps");
        assert_eq!(head.uri, "https://example.com:8443/a/b?x=1");
        let head = Head::of(
            &request(Method::OPTIONS, "https://example.com/"),
            peer,
            None,
        )
        .unwrap();
        assert_eq!(head.uri.path(), "/");
        assert!(matches!(
            Head::of(&request(Method::CONNECT, "example.com:443"), peer, None),
            Err(Failure::Connect)
        ));
        assert!(matches!(
            Head::of(&request(Method::GET, "/no-authority"), peer, None),
            Err(Failure::BadRequest(_))
        ));
    }
}
