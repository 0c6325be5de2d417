//! WebSocket over HTTP/3 (RFC 9220). The front advertises SETTINGS_ENABLE_CONNECT_PROTOCOL;
//! an extended CONNECT with `:protocol websocket` goes to a worker as an HTTP/2 extended
//! CONNECT (RFC 8441, which the workers serve as they do for HTTP/2 clients), with the
//! same slot choice and retry rules as any request (`forward.rs`). The worker runs the
//! whole WebSocket: the handshake checks, the app, frames, pings, close codes, message
//! limits, the drain's 1001 and the metrics. The front only carries bytes.
//!
//! A `200` opens the tunnel: the response head goes to the client, then the bytes of
//! each direction are copied as they come, one piece at a time (at most [`PIECE`] bytes
//! held per direction), with the HTTP/2 window holding the worker back and every write
//! to the client bounded by `[limits] send_timeout`. Any other answer (the app refused
//! with `websocket.http.response`, a bad handshake, 502/503) is relayed as a response.
//!
//! It ends when the worker ends its side (after the closing handshake): the client's
//! stream is finished and reading from it stopped. A client that finishes its side first
//! gets the worker's remaining bytes (the worker bounds the closing handshake). A reset
//! on either side resets the other: the app sees an abnormal closure (1006).

use crate::body::RecvStream;
use crate::forward::{self, BidiRequestStream, Bodies, Label, RelayError, SendStream, Shared};
use crate::stall::Client;
use bytes::{Buf, BytesMut};
use h3::error::Code;
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes read from the worker before they are written to the client.
const PIECE: usize = 16 * 1024;

/// Whether `request` opens a WebSocket (RFC 9220: CONNECT with `:protocol websocket`).
pub(crate) fn is_websocket(request: &Request<()>) -> bool {
    request.method() == Method::CONNECT
        && request.extensions().get::<h3::ext::Protocol>() == Some(&h3::ext::Protocol::WEBSOCKET)
}

/// Serves one WebSocket to its end.
pub(crate) async fn websocket(
    request: Request<()>,
    stream: BidiRequestStream,
    shared: &Shared,
    client: &Client,
) {
    let label = Label::of(&request);
    let (mut send, mut recv) = stream.split();
    let forwarded = forward::forward(
        request,
        Bodies::Empty,
        &shared.pool,
        client.peer,
        client.tls.as_ref(),
        None,
    )
    .await;
    // The session counts as the slot's load while it lasts.
    let (response, _in_flight) = match forwarded {
        Ok(forwarded) => forwarded,
        Err(failure) => {
            forward::answer_failure(failure, &mut send, shared, client, &label).await;
            return;
        }
    };
    if response.status() != StatusCode::OK {
        if let Err(err) = forward::relay(response, &mut send, client).await {
            forward::relay_failed(err, &mut send, client, false, &label);
        }
        return;
    }
    let (parts, body) = response.into_parts();
    let mut head = Response::new(());
    *head.headers_mut() = forward::without_hop_by_hop(&parts.headers);
    let upgrade = hyper::upgrade::on(Response::from_parts(parts, body));
    if let Err(err) = forward::write(client, send.send_response(head)).await {
        forward::relay_failed(err, &mut send, client, false, &label);
        return;
    }
    let upgraded = match upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(err) => {
            send.stop_stream(Code::H3_INTERNAL_ERROR);
            tracing::debug!(peer = %client.peer, "{label}: no tunnel to the worker: {err}");
            return;
        }
    };
    let ended = carry(upgraded, &mut send, &mut recv, client).await;
    // Reading stops by dropping the stream (see `body.rs`: h3-quinn's `stop_sending`
    // panics while a read is in flight).
    drop(recv);
    match ended {
        Ended::Worker(Ok(())) => {}
        Ended::Worker(Err(err)) => forward::relay_failed(err, &mut send, client, false, &label),
        Ended::Client(err) => {
            // Dropping the tunnel resets the worker's stream: the app sees the closure.
            tracing::debug!(peer = %client.peer, "{label}: client side ended: {err}");
            send.stop_stream(Code::H3_REQUEST_CANCELLED);
        }
    }
}

/// How a tunnel ended.
enum Ended {
    /// The worker ended its side (cleanly, or the relay to the client failed).
    Worker(Result<(), RelayError>),
    /// The client reset its side, or the worker stopped taking bytes.
    Client(String),
}

/// Copies bytes both ways until the worker's side ends.
async fn carry(
    upgraded: TokioIo<hyper::upgrade::Upgraded>,
    send: &mut SendStream,
    recv: &mut RecvStream,
    client: &Client,
) -> Ended {
    let (mut from_worker, mut to_worker) = tokio::io::split(upgraded);
    let upstream = async {
        loop {
            match recv.recv_data().await {
                Ok(Some(mut data)) => {
                    while data.has_remaining() {
                        let n = to_worker
                            .write(data.chunk())
                            .await
                            .map_err(|err| format!("worker: {err}"))?;
                        data.advance(n);
                    }
                    client.activity.touch();
                }
                Ok(None) => {
                    // END_STREAM to the worker: the client sent its last frame.
                    let _ = to_worker.shutdown().await;
                    return Ok(());
                }
                Err(err) => return Err(err.to_string()),
            }
        }
    };
    let downstream = async {
        let mut buf = BytesMut::with_capacity(PIECE);
        loop {
            buf.reserve(PIECE);
            match from_worker.read_buf(&mut buf).await {
                Ok(0) => return forward::write(client, send.finish()).await,
                Ok(_) => {
                    let piece = buf.split().freeze();
                    forward::write(client, send.send_data(piece)).await?;
                }
                Err(err) => {
                    tracing::debug!(peer = %client.peer, "tunnel: worker side: {err}");
                    return Err(RelayError::Tunnel);
                }
            }
        }
    };
    tokio::pin!(upstream, downstream);
    tokio::select! {
        // The worker's last bytes (its close frame) go out before anything else counts.
        biased;
        ended = &mut downstream => Ended::Worker(ended),
        sent = &mut upstream => match sent {
            // The client is done sending; the worker ends the session.
            Ok(()) => Ended::Worker(downstream.await),
            Err(err) => Ended::Client(err),
        },
    }
}
