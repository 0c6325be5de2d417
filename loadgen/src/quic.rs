//! HTTP/3 over QUIC (quinn + h3 + h3-quinn): a connection task's UDP endpoint, its
//! connections, and the `--streams` request loops on each. One attempt:
//!
//! 1. opens a stream and writes the request head (`send_request`); h3 refuses once the
//!    server's GOAWAY has arrived;
//! 2. sends the body in 64 KiB `send_data` calls (each waits for QUIC flow control) and
//!    finishes the stream, while reading the response head, body and trailers;
//! 3. ends with the complete response, or with the error `classify.rs` judges; a body not
//!    wholly sent by then is reset with H3_REQUEST_CANCELLED, because quinn finishes a
//!    dropped send stream and the server would take the truncated body for the whole.

use crate::classify::{H3Facts, H3Stage};
use crate::drive::{Answer, Attempt, ConnectError, Run, Slot};
use bytes::{Buf, Bytes};
use genro_shared::sync::lock;
use h3::error::{Code, StreamError};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Method, Request};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The bytes of one `send_data` call.
const BODY_CHUNK: usize = 64 * 1024;
/// How long a closing connection or endpoint may take to send its CONNECTION_CLOSE. Not
/// the whole draining period (3 PTO, RFC 9000 §10.2): its job is only to get the close out
/// before the run ends, and a handshake that timed out would drain for seconds.
const CLOSE_WAIT: Duration = Duration::from_millis(250);

pub(crate) type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type Driver = h3::client::Connection<h3_quinn::Connection, Bytes>;
pub(crate) type SendHalf = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
pub(crate) type RecvHalf = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// A connection task's UDP endpoint: bound on the first connect to the target's address
/// family (0.0.0.0:0 or [::]:0), and kept for the task's later connections.
#[derive(Debug, Default)]
pub(crate) struct Endpoint {
    bound: Option<quinn::Endpoint>,
}

/// An HTTP/3 connection; its driver runs in its own task.
pub(crate) struct Connection {
    quic: quinn::Connection,
    send: SendRequest,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// A handle to open request streams on this connection.
    pub(crate) fn sender(&self) -> SendRequest {
        self.send.clone()
    }
}

impl Endpoint {
    /// Resolves the target, connects over QUIC and sets up HTTP/3, within `--timeout`.
    pub(crate) async fn connect(&mut self, run: &Run) -> Result<Connection, ConnectError> {
        let setup = async {
            let target = &run.plan.target;
            let addr = tokio::net::lookup_host(&target.authority)
                .await
                .map_err(|source| ConnectError::Resolve {
                    authority: target.authority.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| ConnectError::NoAddress(target.authority.clone()))?;
            let endpoint = self.bound_for(addr, run)?;
            let quic = endpoint
                .connect(addr, &target.server_name)
                .map_err(ConnectError::Quic)?
                .await
                .map_err(ConnectError::QuicHandshake)?;
            let (driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|err| ConnectError::H3Setup(err.to_string()))?;
            Ok(Connection {
                quic,
                send,
                driver: tokio::spawn(drive_connection(driver)),
            })
        };
        tokio::time::timeout(run.plan.timeout, setup)
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    fn bound_for(&mut self, addr: SocketAddr, run: &Run) -> Result<&quinn::Endpoint, ConnectError> {
        let family_matches = |endpoint: &quinn::Endpoint| {
            endpoint
                .local_addr()
                .is_ok_and(|local| local.is_ipv4() == addr.is_ipv4())
        };
        let endpoint = match self.bound.take() {
            Some(endpoint) if family_matches(&endpoint) => endpoint,
            _ => {
                let Some(tls) = &run.tls else {
                    return Err(ConnectError::NoQuicConfig);
                };
                let any: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let mut endpoint = quinn::Endpoint::client(any)
                    .map_err(|source| ConnectError::UdpBind { addr: any, source })?;
                endpoint.set_default_client_config(tls.clone());
                endpoint
            }
        };
        Ok(self.bound.insert(endpoint))
    }

    /// Lets the last CONNECTION_CLOSE go out before the task ends.
    pub(crate) async fn wait_idle(&mut self) {
        if let Some(endpoint) = self.bound.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        }
    }
}

/// Keeps the HTTP/3 connection going (control stream: SETTINGS, GOAWAY) until it closes;
/// how it closed shows in the requests.
async fn drive_connection(mut driver: Driver) {
    let _ = driver.wait_idle().await;
}

/// `--streams` request loops share the connection until it is done.
pub(crate) async fn drive(run: &Arc<Run>, slot: &Arc<Mutex<Slot>>, connection: Connection) {
    let Connection { quic, send, driver } = connection;
    // Set when an attempt must be re-sent (after the server's GOAWAY, or a rejected
    // stream): the loops stop starting requests, the ones in flight finish, and the
    // request goes out on a new connection.
    let leaving = Arc::new(AtomicBool::new(false));
    let mut streams = JoinSet::new();
    for _ in 0..run.plan.streams {
        let (run, slot, send, quic, leaving) = (
            run.clone(),
            slot.clone(),
            send.clone(),
            quic.clone(),
            leaving.clone(),
        );
        streams.spawn(async move { stream_loop(&run, &slot, send, &quic, &leaving).await });
    }
    drop(send);
    while streams.join_next().await.is_some() {}
    // The last SendRequest is gone, so h3 closes the connection with H3_NO_ERROR.
    let _ = tokio::time::timeout(CLOSE_WAIT, driver).await;
}

async fn stream_loop(
    run: &Run,
    slot: &Mutex<Slot>,
    mut send: SendRequest,
    quic: &quinn::Connection,
    leaving: &AtomicBool,
) {
    loop {
        // A closed connection cannot take the request: leave it with the request untaken,
        // as `ready()` does for HTTP/2.
        if leaving.load(Ordering::Relaxed) || quic.close_reason().is_some() {
            return;
        }
        let Some(mut job) = lock(slot).next_job(run) else {
            return;
        };
        job.sent_ms.get_or_insert_with(|| run.ms());
        let outcome = attempt(run, &mut send, &job.id).await;
        if !run.settle(slot, leaving, job, outcome) {
            return;
        }
    }
}

/// One attempt (see the module steps), within `--timeout`.
async fn attempt(run: &Run, send: &mut SendRequest, id: &str) -> Attempt {
    let deadline = Instant::now() + run.plan.timeout;
    let stream = match tokio::time::timeout_at(deadline, send.send_request(request(run, id))).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return judge(&err, H3Stage::Opening, "request head"),
        Err(_) => return Attempt::Failed("timeout".to_string()),
    };
    let (mut sender, mut receiver) = stream.split();
    let mut body_sent = false;
    let exchange = exchange(&run.plan.body, &mut sender, &mut receiver, &mut body_sent);
    let outcome = tokio::time::timeout_at(deadline, exchange)
        .await
        .unwrap_or_else(|_| Attempt::Failed("timeout".to_string()));
    if !body_sent {
        sender.stop_stream(Code::H3_REQUEST_CANCELLED);
    }
    outcome
}

/// The request head: the method, `https://host:port/path`, the id, and a length when there
/// is a body or the method defines one (as hyper does for HTTP/2).
fn request(run: &Run, id: &str) -> Request<()> {
    let mut request = run.request(id).map(|_| ());
    if !run.plan.body.is_empty() || run.plan.method == Method::POST {
        request
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(run.plan.body.len()));
    }
    request
}

/// Sends the body and reads the response at the same time: a server may answer before it
/// has read the whole body. `body_sent` is set once the sending side is done.
async fn exchange(
    body: &Bytes,
    sender: &mut SendHalf,
    receiver: &mut RecvHalf,
    body_sent: &mut bool,
) -> Attempt {
    let head = AtomicBool::new(false);
    let sending = send_body(sender, body);
    let receiving = receive(receiver, &head);
    tokio::pin!(sending, receiving);
    loop {
        tokio::select! {
            sent = &mut sending, if !*body_sent => {
                *body_sent = true;
                if let Err(err) = sent {
                    if !head.load(Ordering::Relaxed) && H3Facts::of(&err).retry_cause(H3Stage::Exchange).is_some() {
                        return judge(&err, H3Stage::Exchange, "request body");
                    }
                    // Otherwise the response decides: a server may stop the body with
                    // H3_NO_ERROR once it has answered (RFC 9114 §4.1), and a broken stream
                    // or connection fails the response as well.
                }
            }
            received = &mut receiving => {
                return match received {
                    Ok(answer) => Attempt::Done { answer, close: false },
                    Err(err) if head.load(Ordering::Relaxed) => Attempt::Failed(format!("response body: {err}")),
                    Err(err) => judge(&err, H3Stage::Exchange, "response"),
                };
            }
        }
    }
}

/// The request body in `BODY_CHUNK` pieces of the shared buffer, then the end of the stream.
async fn send_body(sender: &mut SendHalf, body: &Bytes) -> Result<(), StreamError> {
    for start in (0..body.len()).step_by(BODY_CHUNK) {
        let end = body.len().min(start + BODY_CHUNK);
        sender.send_data(body.slice(start..end)).await?;
    }
    sender.finish().await
}

/// Reads the response head, its body to the end (counting the bytes) and any trailers;
/// `head` is set once the head has arrived.
async fn receive(receiver: &mut RecvHalf, head: &AtomicBool) -> Result<Answer, StreamError> {
    let response = receiver.recv_response().await?;
    head.store(true, Ordering::Relaxed);
    let mut bytes = 0;
    while let Some(chunk) = receiver.recv_data().await? {
        bytes += chunk.remaining() as u64;
    }
    receiver.recv_trailers().await?;
    Ok(Answer {
        status: response.status().as_u16(),
        bytes,
    })
}

/// An error before the response head: re-sent when the server promised it was not
/// processed, failed otherwise.
fn judge(err: &StreamError, stage: H3Stage, during: &str) -> Attempt {
    let error = format!("{during}: {err}");
    match H3Facts::of(err).retry_cause(stage) {
        Some(cause) => Attempt::Retry(cause, error),
        None => Attempt::Failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;

    fn run_with(argv: &[&str]) -> Run {
        let mut full = vec![
            "genro-loadgen",
            "--url",
            "https://127.0.0.1:9/p?q",
            "--protocol",
            "h3",
            "--insecure",
            "--requests",
            "1",
        ];
        full.extend_from_slice(argv);
        Run::new(Args::try_parse_from(full).unwrap().plan().unwrap(), None).unwrap()
    }

    #[test]
    fn requests_carry_the_id_the_https_uri_and_a_length_when_there_is_a_body() {
        let get = request(&run_with(&[]), "0-7");
        assert_eq!(get.method(), Method::GET);
        assert_eq!(get.uri(), "https://127.0.0.1:9/p?q");
        assert_eq!(get.headers()["x-load-id"], "0-7");
        assert!(get.headers().get(CONTENT_LENGTH).is_none());
        let post = request(&run_with(&["--method", "POST"]), "1-1");
        assert_eq!(post.headers()[CONTENT_LENGTH], "0");
        let post = request(
            &run_with(&["--method", "POST", "--body-size", "70000"]),
            "1-1",
        );
        assert_eq!(post.headers()[CONTENT_LENGTH], "70000");
    }
}
