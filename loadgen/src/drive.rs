//! The connection tasks that generate the load. Each of the `--connections` tasks:
//!
//! 1. connects (TCP_NODELAY) and handshakes HTTP/1.1 or HTTP/2 with prior knowledge, or
//!    connects over QUIC and sets up HTTP/3 (`quic.rs`); a failure counts as a connect
//!    error and is tried again after 10 ms;
//! 2. sends requests back-to-back on the connection, one at a time (HTTP/1.1) or
//!    `--streams` at once (HTTP/2, HTTP/3), taking first the requests waiting to be re-sent,
//!    then new ones while the stop condition allows;
//! 3. leaves the connection when the server closes it (`Connection: close`, GOAWAY, EOF),
//!    after an HTTP/1.1 failure (the connection's state is unknown), or as soon as an
//!    attempt has to be re-sent (so it goes out on a new connection): it stops starting
//!    requests there, lets the ones in flight finish, and goes back to 1;
//! 4. ends once the run is over and nothing waits to be re-sent. Requests still waiting when
//!    no connection can be made any more (after the deadline, or `--timeout` seconds of
//!    failed connects without one), or refused [`MAX_ATTEMPTS`] times, are counted unsent.

use crate::args::{Plan, Protocol};
use crate::classify::{retry_cause, RetryCause};
use crate::quic;
use crate::tally::Tally;
use anyhow::Context;
use bytes::Bytes;
use genro_shared::describe_error;
use genro_shared::sync::lock;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Pause between failed connects.
const CONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Attempts after which a request that is never processed is given up (unsent), so a server
/// that refuses everything cannot keep a run going forever.
const MAX_ATTEMPTS: u32 = 10;

/// The header carrying each request's id (`<connection>-<seq>`, kept across re-sends).
const LOAD_ID: HeaderName = HeaderName::from_static("x-load-id");

type Body = Full<Bytes>;

/// Runs the plan to its end and returns the JSON report.
pub async fn run(plan: Plan, log: Option<File>) -> anyhow::Result<Value> {
    let run = Arc::new(Run::new(plan, log)?);
    let mut tasks = JoinSet::new();
    for index in 0..run.plan.connections {
        tasks.spawn(connection_task(run.clone(), index));
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a connection task panicked")?;
    }
    let seconds = run.started.elapsed().as_secs_f64();
    if let Some(log) = &run.log {
        let mut log = lock(log);
        if let Some(err) = log.error.take() {
            return Err(err).context("writing the --log file");
        }
        log.out.flush().context("writing the --log file")?;
    }
    let report = lock(&run.tally).report(seconds);
    Ok(report)
}

/// State shared by every task of a run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) plan: Plan,
    /// The QUIC client configuration, for HTTP/3.
    pub(crate) tls: Option<quinn::ClientConfig>,
    started: Instant,
    deadline: Option<Instant>,
    /// Requests not started yet, with `--requests`.
    remaining: Option<AtomicU64>,
    tally: Mutex<Tally>,
    log: Option<Mutex<Log>>,
}

#[derive(Debug)]
struct Log {
    out: BufWriter<File>,
    /// The first write error, reported at the end.
    error: Option<std::io::Error>,
}

/// One request, across its attempts.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: String,
    /// Milliseconds since the start when it was first handed to a connection.
    pub(crate) sent_ms: Option<u64>,
    /// Attempts that were not processed so far.
    refused: u32,
}

/// What one connection task owns: its request counter and its requests to re-send.
#[derive(Debug)]
pub(crate) struct Slot {
    index: usize,
    seq: u64,
    pub(crate) retry: VecDeque<Job>,
}

/// A complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Body bytes.
    pub(crate) bytes: u64,
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A complete response; `close` when it said `Connection: close`.
    Done { answer: Answer, close: bool },
    /// Not processed by the server: send it again.
    Retry(RetryCause, String),
    /// Anything else after the request was handed to the connection.
    Failed(String),
}

/// An open connection's request handle.
enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
    H3(quic::Connection),
}

impl Run {
    /// The run's shared state; the clock starts now.
    pub(crate) fn new(plan: Plan, log: Option<File>) -> anyhow::Result<Self> {
        let tls = plan
            .trust
            .as_ref()
            .map(crate::tls::client_config)
            .transpose()?;
        let started = Instant::now();
        Ok(Run {
            tls,
            deadline: plan.stop.duration.map(|d| started + d),
            remaining: plan.stop.requests.map(AtomicU64::new),
            started,
            tally: Mutex::new(Tally::default()),
            log: log.map(|file| {
                Mutex::new(Log {
                    out: BufWriter::new(file),
                    error: None,
                })
            }),
            plan,
        })
    }

    fn is_past_deadline(&self) -> bool {
        self.deadline.is_some_and(|at| Instant::now() >= at)
    }

    /// No new request may start.
    fn is_over(&self) -> bool {
        self.is_past_deadline()
            || self
                .remaining
                .as_ref()
                .is_some_and(|n| n.load(Ordering::Relaxed) == 0)
    }

    /// Claims the right to start one new request.
    fn take_ticket(&self) -> bool {
        if self.is_past_deadline() {
            return false;
        }
        match &self.remaining {
            None => true,
            Some(n) => n
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    pub(crate) fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The request for `id`, in the form the protocol needs.
    pub(crate) fn request(&self, id: &str) -> Request<Body> {
        let target = &self.plan.target;
        let mut request = Request::new(Full::new(self.plan.body.clone()));
        *request.method_mut() = self.plan.method.clone();
        // Ids are `<digits>-<digits>`, always a valid header value.
        if let Ok(value) = HeaderValue::from_str(id) {
            request.headers_mut().insert(LOAD_ID, value);
        }
        match self.plan.protocol {
            Protocol::H1 | Protocol::Ws | Protocol::Ws3 => {
                *request.uri_mut() = target.origin_form.clone();
                request.headers_mut().insert(HOST, target.host.clone());
            }
            // HTTP/2 and HTTP/3 take :scheme and :authority from the absolute URI.
            Protocol::H2 | Protocol::H3 => *request.uri_mut() = target.absolute.clone(),
        }
        request
    }

    /// Records a request's final outcome.
    pub(crate) fn handle_final(&self, job: &Job, outcome: Result<Answer, &str>) {
        let label = match outcome {
            Ok(answer) => {
                lock(&self.tally).handle_ok(answer.status, answer.bytes);
                if job.refused > 0 {
                    "retried-ok"
                } else {
                    "ok"
                }
            }
            Err(error) => {
                lock(&self.tally).handle_failed(error);
                "failed"
            }
        };
        self.write_log(job, label, outcome.ok().map(|answer| answer.status));
    }

    /// Books a stream's attempt: final outcomes are recorded; a request the server did not
    /// process marks the connection as being left and goes back to `slot` to be re-sent
    /// on a new one. Returns `false` when the stream must stop (the connection is left).
    pub(crate) fn settle(
        &self,
        slot: &Mutex<Slot>,
        leaving: &AtomicBool,
        mut job: Job,
        attempt: Attempt,
    ) -> bool {
        match attempt {
            Attempt::Done { answer, .. } => self.handle_final(&job, Ok(answer)),
            Attempt::Retry(cause, error) => {
                leaving.store(true, Ordering::Relaxed);
                if self.handle_refused(&mut job, cause, &error) {
                    lock(slot).retry.push_back(job);
                }
                return false;
            }
            // One stream failed; the connection may be fine (if not, the next request's
            // readiness check says so).
            Attempt::Failed(error) => self.handle_final(&job, Err(&error)),
        }
        true
    }

    /// Records an attempt that was not processed; `false` when the request is given up.
    pub(crate) fn handle_refused(&self, job: &mut Job, cause: RetryCause, error: &str) -> bool {
        lock(&self.tally).handle_retry(cause, error);
        job.refused += 1;
        if job.refused >= MAX_ATTEMPTS {
            self.handle_unsent(job);
            return false;
        }
        true
    }

    fn handle_unsent(&self, job: &Job) {
        lock(&self.tally).handle_unsent(1);
        self.write_log(job, "unsent", None);
    }

    fn write_log(&self, job: &Job, label: &str, status: Option<u16>) {
        let Some(log) = &self.log else { return };
        let done = self.ms();
        let mut log = lock(log);
        if log.error.is_some() {
            return;
        }
        let status = status.map_or_else(|| "-".to_string(), |s| s.to_string());
        let sent = job
            .sent_ms
            .map_or_else(|| "-".to_string(), |ms| ms.to_string());
        if let Err(err) = writeln!(log.out, "{} {label} {status} {sent} {done}", job.id) {
            log.error = Some(err);
        }
    }
}

impl Slot {
    /// The next request to send: one waiting to be re-sent, else a new one if the run
    /// allows.
    pub(crate) fn next_job(&mut self, run: &Run) -> Option<Job> {
        if let Some(job) = self.retry.pop_front() {
            return Some(job);
        }
        if !run.take_ticket() {
            return None;
        }
        self.seq += 1;
        Some(Job {
            id: format!("{}-{}", self.index, self.seq),
            sent_ms: None,
            refused: 0,
        })
    }
}

/// One of the `--connections` tasks (see the module steps).
async fn connection_task(run: Arc<Run>, index: usize) {
    let mut endpoint = quic::Endpoint::default();
    connections(&run, index, &mut endpoint).await;
    endpoint.wait_idle().await;
}

/// Steps 1 to 4, with the QUIC endpoint the HTTP/3 connections of this task share.
async fn connections(run: &Arc<Run>, index: usize, endpoint: &mut quic::Endpoint) {
    let slot = Arc::new(Mutex::new(Slot {
        index,
        seq: 0,
        retry: VecDeque::new(),
    }));
    let mut connected_before = false;
    let mut failing_since: Option<Instant> = None;
    loop {
        if run.is_over() && lock(&slot).retry.is_empty() {
            return;
        }
        let conn = match open(run, endpoint).await {
            Ok(conn) => conn,
            Err(error) => {
                lock(&run.tally).handle_connect_error(&error.to_string());
                let since = *failing_since.get_or_insert_with(Instant::now);
                let hopeless = run.is_over()
                    || (run.deadline.is_none() && since.elapsed() >= run.plan.timeout);
                if hopeless {
                    for job in lock(&slot).retry.drain(..) {
                        run.handle_unsent(&job);
                    }
                    return;
                }
                tokio::time::sleep(CONNECT_PAUSE).await;
                continue;
            }
        };
        failing_since = None;
        if connected_before {
            lock(&run.tally).reconnects += 1;
        }
        connected_before = true;
        match conn {
            Conn::H1(sender) => drive_h1(run, &slot, sender).await,
            Conn::H2(sender) => drive_h2(run, &slot, sender).await,
            Conn::H3(connection) => quic::drive(run, &slot, connection).await,
        }
    }
}

/// Why a connection could not be opened; its message keys the report's error counts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// The target's name did not resolve.
    #[error("resolve {authority}: {source}")]
    Resolve {
        /// `host:port`.
        authority: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The target's name resolved to nothing.
    #[error("resolve {0}: no address")]
    NoAddress(String),
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Tcp(std::io::Error),
    /// No connection (or QUIC and HTTP/3 set-up) within `--timeout`.
    #[error("connect: timeout")]
    Timeout,
    /// Setting `TCP_NODELAY` failed.
    #[error("TCP_NODELAY: {0}")]
    NoDelay(std::io::Error),
    /// The HTTP/1.1 or HTTP/2 handshake failed (hyper's error, described).
    #[error("handshake: {0}")]
    Handshake(String),
    /// quinn refused to start the connection.
    #[error("connect: {0}")]
    Quic(quinn::ConnectError),
    /// The QUIC handshake failed.
    #[error("QUIC handshake: {0}")]
    QuicHandshake(quinn::ConnectionError),
    /// HTTP/3 over the QUIC connection could not be set up.
    #[error("HTTP/3 setup: {0}")]
    H3Setup(String),
    /// No UDP socket for QUIC.
    #[error("UDP bind {addr}: {source}")]
    UdpBind {
        /// The wildcard address of the target's family.
        addr: std::net::SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A QUIC run without its client configuration (a bug).
    #[error("internal: no QUIC client configuration")]
    NoQuicConfig,
}

/// Connects and handshakes; the connection's I/O runs in its own task.
async fn open(run: &Run, endpoint: &mut quic::Endpoint) -> Result<Conn, ConnectError> {
    match run.plan.protocol {
        // WebSocket runs are driven by ws.rs, never here.
        Protocol::H1 | Protocol::Ws | Protocol::Ws3 => {
            let (sender, connection) = http1::handshake(connect_tcp(run).await?)
                .await
                .map_err(|err| ConnectError::Handshake(describe_error(&err)))?;
            tokio::spawn(connection);
            Ok(Conn::H1(sender))
        }
        Protocol::H2 => {
            let io = connect_tcp(run).await?;
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|err| ConnectError::Handshake(describe_error(&err)))?;
            tokio::spawn(connection);
            Ok(Conn::H2(sender))
        }
        Protocol::H3 => endpoint.connect(run).await.map(Conn::H3),
    }
}

async fn connect_tcp(run: &Run) -> Result<TokioIo<TcpStream>, ConnectError> {
    let connect = TcpStream::connect(&run.plan.target.authority);
    let tcp = match tokio::time::timeout(run.plan.timeout, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => return Err(ConnectError::Tcp(err)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    tcp.set_nodelay(true).map_err(ConnectError::NoDelay)?;
    Ok(TokioIo::new(tcp))
}

/// HTTP/1.1: one request at a time until the connection is done.
async fn drive_h1(run: &Run, slot: &Mutex<Slot>, mut sender: http1::SendRequest<Body>) {
    loop {
        let Some(mut job) = lock(slot).next_job(run) else {
            return;
        };
        if sender.ready().await.is_err() {
            // Closed before this request was handed over: it goes out on the next one.
            lock(slot).retry.push_front(job);
            return;
        }
        job.sent_ms.get_or_insert_with(|| run.ms());
        match attempt(run, sender.send_request(run.request(&job.id))).await {
            Attempt::Done { answer, close } => {
                run.handle_final(&job, Ok(answer));
                if close {
                    return;
                }
            }
            Attempt::Retry(cause, error) => {
                if run.handle_refused(&mut job, cause, &error) {
                    lock(slot).retry.push_back(job);
                }
                return;
            }
            Attempt::Failed(error) => {
                run.handle_final(&job, Err(&error));
                return;
            }
        }
    }
}

/// HTTP/2: `--streams` request loops share the connection until it is done.
async fn drive_h2(run: &Arc<Run>, slot: &Arc<Mutex<Slot>>, sender: http2::SendRequest<Body>) {
    // Set when an attempt must be re-sent: the loops stop taking requests, so the
    // connection ends and the request goes out on a new one.
    let leaving = Arc::new(AtomicBool::new(false));
    let mut streams = JoinSet::new();
    for _ in 0..run.plan.streams {
        let (run, slot, sender, leaving) =
            (run.clone(), slot.clone(), sender.clone(), leaving.clone());
        streams.spawn(async move { stream_loop(&run, &slot, sender, &leaving).await });
    }
    while streams.join_next().await.is_some() {}
}

async fn stream_loop(
    run: &Run,
    slot: &Mutex<Slot>,
    mut sender: http2::SendRequest<Body>,
    leaving: &AtomicBool,
) {
    loop {
        if leaving.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut job) = lock(slot).next_job(run) else {
            return;
        };
        if sender.ready().await.is_err() {
            lock(slot).retry.push_front(job);
            return;
        }
        job.sent_ms.get_or_insert_with(|| run.ms());
        let outcome = attempt(run, sender.send_request(run.request(&job.id))).await;
        if !run.settle(slot, leaving, job, outcome) {
            return;
        }
    }
}

/// Awaits the response and reads its body to the end, within `--timeout`.
async fn attempt(
    run: &Run,
    response: impl Future<Output = hyper::Result<Response<Incoming>>>,
) -> Attempt {
    let exchange = async {
        let response = match response.await {
            Ok(response) => response,
            Err(err) => {
                return match retry_cause(&err) {
                    Some(cause) => Attempt::Retry(cause, describe_error(&err)),
                    None => Attempt::Failed(describe_error(&err)),
                }
            }
        };
        let status = response.status().as_u16();
        let close = wants_close(response.headers());
        let mut body = response.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                }
                Err(err) => {
                    return Attempt::Failed(format!("response body: {}", describe_error(&err)));
                }
            }
        }
        Attempt::Done {
            answer: Answer { status, bytes },
            close,
        }
    };
    tokio::time::timeout(run.plan.timeout, exchange)
        .await
        .unwrap_or_else(|_| Attempt::Failed("timeout".to_string()))
}

/// Whether an HTTP/1.1 response closes its connection (RFC 9112 §9.6).
fn wants_close(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;

    fn run_with(argv: &[&str]) -> Run {
        let mut full = vec!["genro-loadgen", "--url", "http://127.0.0.1:9/p"];
        full.extend_from_slice(argv);
        Run::new(Args::try_parse_from(full).unwrap().plan().unwrap(), None).unwrap()
    }

    #[test]
    fn connection_close_token_is_found_in_any_position_and_case() {
        let mut headers = HeaderMap::new();
        assert!(!wants_close(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&headers));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade, Close"));
        assert!(wants_close(&headers));
    }

    #[test]
    fn tickets_stop_new_requests_but_not_retries() {
        let run = run_with(&["--requests", "2"]);
        let mut slot = Slot {
            index: 3,
            seq: 0,
            retry: VecDeque::new(),
        };
        let first = slot.next_job(&run).unwrap();
        assert_eq!(first.id, "3-1");
        assert_eq!(slot.next_job(&run).unwrap().id, "3-2");
        assert!(slot.next_job(&run).is_none());
        assert!(run.is_over());
        slot.retry.push_back(first);
        assert_eq!(slot.next_job(&run).unwrap().id, "3-1");
    }

    #[test]
    fn requests_carry_the_id_and_the_form_each_protocol_needs() {
        let h1 = run_with(&["--requests", "1"]).request("0-7");
        assert_eq!(h1.uri(), "/p");
        assert_eq!(h1.headers()["x-load-id"], "0-7");
        assert_eq!(h1.headers()[HOST], "127.0.0.1:9");
        let h2 = run_with(&["--requests", "1", "--protocol", "h2"]).request("0-7");
        assert_eq!(h2.uri(), "http://127.0.0.1:9/p");
        assert!(h2.headers().get(HOST).is_none());
    }

    #[test]
    fn a_request_refused_too_often_is_given_up() {
        let run = run_with(&["--requests", "1"]);
        let mut job = Job {
            id: "0-1".into(),
            sent_ms: Some(0),
            refused: 0,
        };
        for _ in 1..MAX_ATTEMPTS {
            assert!(run.handle_refused(&mut job, RetryCause::NotSent, "closed"));
        }
        assert!(!run.handle_refused(&mut job, RetryCause::NotSent, "closed"));
        let tally = lock(&run.tally);
        assert_eq!((tally.retried, tally.unsent), (u64::from(MAX_ATTEMPTS), 1));
    }
}
