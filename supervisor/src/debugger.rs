//! The remote debugger's front door (`[debug] enabled`): a TCP listener, on loopback
//! unless `[debug] host` says otherwise, for `genro-asgi debug attach` ([`crate::attach`]).
//!
//! Each connection sends one JSON line, `{"secret": ..., "op": "list" | "attach",
//! "request_id": ...}`, checked in this order: the peer must be in `allowed_ips` (others
//! are answered and closed before they may send anything), must not be locked out
//! ([`MAX_FAILURES`] wrong secrets within [`LOCKOUT`] lock its address for [`LOCKOUT`]),
//! and must send the secret (compared in constant time). Then:
//! - `list`: the requests waiting for a debugger in every worker, asked over each worker's
//!   own Unix socket (`<run_dir>/debug-<pid>.sock`, served by
//!   `genro_asgi_worker.debugger`);
//! - `attach`: the connection is relayed, byte for byte, to the worker whose request it
//!   names, where it becomes a pdb post-mortem session.
//!
//! Every attach, refusal and wrong secret is logged with the peer.

use crate::endpoints::Probe;
use genro_config::net::Trusted;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;

/// Connections served at once (more wait in the listen queue).
const MAX_CONNECTIONS: usize = 8;
/// Longest request line.
const MAX_LINE: u64 = 4096;
/// Time a peer gets to send its request line.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a worker gets to answer a list.
const WORKER_TIMEOUT: Duration = Duration::from_secs(3);
/// Wrong secrets from one address before it is locked out.
pub const MAX_FAILURES: u32 = 5;
/// The window the failures are counted in, and how long a lockout lasts.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Addresses remembered at most (the oldest are forgotten first).
const MAX_REMEMBERED: usize = 1024;

/// What the listener checks and where it finds the workers.
#[derive(Debug)]
pub struct Debugger {
    trusted: Trusted,
    secret: String,
    run_dir: PathBuf,
    probes: mpsc::Sender<Probe>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    secret: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    request_id: String,
}

impl Debugger {
    /// The debugger of `config` (with `[debug] enabled`, which requires a secret).
    pub fn new(
        config: &genro_config::Config,
        run_dir: PathBuf,
        probes: mpsc::Sender<Probe>,
    ) -> anyhow::Result<Self> {
        let trusted = Trusted::parse(&config.debug.allowed_ips)
            .map_err(|bad| anyhow::anyhow!("[debug] allowed_ips: {bad}"))?;
        Ok(Debugger {
            trusted,
            secret: config.debug.secret.clone().unwrap_or_default(),
            run_dir,
            probes,
            failures: Mutex::default(),
        })
    }

    /// How long `ip` is still locked out, if it is.
    fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let failures = genro_shared::sync::lock(&self.failures);
        left(failures.get(&ip)?, now)
    }

    /// Checks a secret from `ip`, with its lockout, in one step (so connections opened
    /// before a lockout are refused by it too). A right secret does not clear the count:
    /// failures expire with their window, so they cannot be interleaved with successes.
    fn check(&self, ip: IpAddr, secret: &str, now: Instant) -> Result<(), Refused> {
        let mut failures = genro_shared::sync::lock(&self.failures);
        if let Some(left) = failures.get(&ip).and_then(|f| left(f, now)) {
            return Err(Refused::Locked(left));
        }
        if crate::inspector::same_secret(secret.as_bytes(), self.secret.as_bytes()) {
            return Ok(());
        }
        if failures.len() >= MAX_REMEMBERED && !failures.contains_key(&ip) {
            forget_some(&mut failures, now);
        }
        let entry = failures.entry(ip).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.first) >= LOCKOUT {
            *entry = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= MAX_FAILURES {
            entry.locked_until = Some(now + LOCKOUT);
        }
        Err(Refused::Wrong(entry.count))
    }
}

/// Why a secret was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Wrong: the failures counted in the window.
    Wrong(u32),
    /// The address is locked out for this long.
    Locked(Duration),
}

/// The lockout left on `f`, if any.
fn left(f: &Failures, now: Instant) -> Option<Duration> {
    f.locked_until
        .filter(|until| *until > now)
        .map(|until| until - now)
}

/// Makes room in a full map: drops what expired (window over, no lockout running), then
/// if need be the oldest entry that is not locked out.
fn forget_some(failures: &mut HashMap<IpAddr, Failures>, now: Instant) {
    failures
        .retain(|_, f| now.saturating_duration_since(f.first) < LOCKOUT || left(f, now).is_some());
    if failures.len() >= MAX_REMEMBERED {
        if let Some(oldest) = failures
            .iter()
            .filter(|(_, f)| left(f, now).is_none())
            .min_by_key(|(_, f)| f.first)
            .map(|(ip, _)| *ip)
        {
            failures.remove(&oldest);
        }
    }
}

/// Serves the listener until the process exits.
pub async fn serve(listener: TcpListener, debugger: Arc<Debugger>) {
    crate::sockets::serve_bounded(listener, MAX_CONNECTIONS, "debugger", |stream, peer| {
        let debugger = debugger.clone();
        async move {
            if let Err(why) = session(stream, peer, &debugger).await {
                tracing::debug!("debugger: connection from {peer}: {why}");
            }
        }
    })
    .await;
}

async fn session(stream: TcpStream, peer: SocketAddr, debugger: &Debugger) -> std::io::Result<()> {
    let ip = peer.ip().to_canonical();
    let (read, mut write) = stream.into_split();
    if !debugger.trusted.contains(ip) {
        tracing::warn!("debugger: refused {peer}: not in [debug] allowed_ips");
        return answer(
            &mut write,
            json!({"error": "your address is not in [debug] allowed_ips"}),
        )
        .await;
    }
    if let Some(left) = debugger.locked(ip, Instant::now()) {
        tracing::warn!("debugger: refused {peer}: locked out after {MAX_FAILURES} wrong secrets");
        return answer(&mut write, locked_out(ip, left)).await;
    }
    let mut read = BufReader::new(read);
    let mut line = String::new();
    let got = tokio::time::timeout(
        LINE_TIMEOUT,
        (&mut read).take(MAX_LINE).read_line(&mut line),
    )
    .await;
    let request = match got {
        Err(_) => return answer(&mut write, json!({"error": "no request line in time"})).await,
        Ok(Err(err)) => return Err(err),
        Ok(Ok(_)) if !line.ends_with('\n') => {
            return answer(
                &mut write,
                json!({"error": "the request line is too long or incomplete"}),
            )
            .await
        }
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => request,
            Err(err) => {
                let error = format!("the request line is not the expected JSON: {err}");
                return answer(&mut write, json!({ "error": error })).await;
            }
        },
    };
    match debugger.check(ip, &request.secret, Instant::now()) {
        Ok(()) => {}
        Err(Refused::Locked(left)) => {
            tracing::warn!(
                "debugger: refused {peer}: locked out after {MAX_FAILURES} wrong secrets"
            );
            return answer(&mut write, locked_out(ip, left)).await;
        }
        Err(Refused::Wrong(count)) => {
            tracing::warn!(
                "debugger: wrong secret from {peer} ({count} of {MAX_FAILURES} allowed in {} s)",
                LOCKOUT.as_secs()
            );
            return answer(&mut write, json!({"error": "wrong secret"})).await;
        }
    }
    match request.op.as_str() {
        "list" => {
            let sessions = waiting(debugger).await;
            answer(&mut write, json!({ "sessions": sessions })).await
        }
        "attach" => {
            let sessions = waiting(debugger).await;
            let Some(pid) = sessions
                .iter()
                .find(|s| s["request_id"] == request.request_id.as_str())
                .and_then(|s| s["pid"].as_u64())
            else {
                let error = format!("no request {} waits for a debugger", request.request_id);
                return answer(&mut write, json!({ "error": error })).await;
            };
            let path = socket_path(&debugger.run_dir, pid);
            let mut worker = match UnixStream::connect(&path).await {
                Ok(worker) => worker,
                Err(err) => {
                    let error = format!("cannot reach worker pid {pid}: {err}");
                    return answer(&mut write, json!({ "error": error })).await;
                }
            };
            let hello =
                json!({"op": "attach", "request_id": request.request_id, "peer": peer.to_string()});
            worker.write_all(format!("{hello}\n").as_bytes()).await?;
            tracing::warn!(
                "debugger: {peer} attaches to request {} (worker pid {pid})",
                request.request_id
            );
            let relayed = relay(read, write, worker).await;
            tracing::info!(
                "debugger: {peer} left request {} (worker pid {pid})",
                request.request_id
            );
            relayed.map(|_| ())
        }
        other => {
            let error = format!("unknown op {other:?} (list, attach)");
            answer(&mut write, json!({ "error": error })).await
        }
    }
}

fn locked_out(ip: IpAddr, left: Duration) -> Value {
    let error = format!(
        "too many wrong secrets from {ip}: try again in {} s",
        left.as_secs() + 1
    );
    json!({ "error": error })
}

/// A worker's debugger socket.
pub(crate) fn socket_path(run_dir: &std::path::Path, pid: impl std::fmt::Display) -> PathBuf {
    run_dir.join(format!("debug-{pid}.sock"))
}

async fn answer(write: &mut (impl AsyncWrite + Unpin), value: Value) -> std::io::Result<()> {
    write.write_all(format!("{value}\n").as_bytes()).await?;
    write.shutdown().await
}

/// The requests waiting in every worker, each with its worker's slot and pid.
async fn waiting(debugger: &Debugger) -> Vec<Value> {
    let Some(fleet) = crate::endpoints::ask(&debugger.probes, Probe::Status).await else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for w in &fleet.workers {
        let path = socket_path(&debugger.run_dir, w.pid);
        // A worker that does not answer (starting, gone, blocked) lists nothing.
        if let Ok(Ok(sessions)) = tokio::time::timeout(WORKER_TIMEOUT, list_worker(&path)).await {
            for mut s in sessions {
                s["slot"] = json!(w.slot);
                all.push(s);
            }
        }
    }
    all
}

async fn list_worker(path: &std::path::Path) -> std::io::Result<Vec<Value>> {
    let mut worker = UnixStream::connect(path).await?;
    worker.write_all(b"{\"op\": \"list\"}\n").await?;
    let mut line = String::new();
    BufReader::new(worker)
        .take(1024 * 1024)
        .read_line(&mut line)
        .await?;
    let answer: Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    Ok(answer["sessions"].as_array().cloned().unwrap_or_default())
}

/// Relays the client and the worker's session until the worker ends it (then the client's
/// side is dropped, whether or not the client closed: it holds no slot after the session).
async fn relay(
    mut client_read: impl AsyncRead + Unpin + Send + 'static,
    mut client_write: impl AsyncWrite + Unpin,
    worker: UnixStream,
) -> std::io::Result<()> {
    let (mut worker_read, mut worker_write) = worker.into_split();
    let to_worker = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut worker_write).await;
        let _ = worker_write.shutdown().await;
    });
    let shown = tokio::io::copy(&mut worker_read, &mut client_write).await;
    to_worker.abort();
    let _ = client_write.shutdown().await;
    shown.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debugger() -> Debugger {
        let (probes, _) = mpsc::channel(1);
        Debugger {
            trusted: Trusted::parse(&["127.0.0.1"]).unwrap(),
            secret: "s".into(),
            run_dir: PathBuf::from("/nonexistent"),
            probes,
            failures: Mutex::default(),
        }
    }

    const IP: &str = "127.0.0.1";

    #[test]
    fn five_wrong_secrets_lock_an_address_out_for_a_minute() {
        let d = debugger();
        let ip: IpAddr = IP.parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let now = Instant::now();
        for n in 1..=MAX_FAILURES {
            assert_eq!(d.check(ip, "x", now), Err(Refused::Wrong(n)));
        }
        assert_eq!(d.locked(ip, now), Some(LOCKOUT));
        assert_eq!(
            d.check(ip, "s", now),
            Err(Refused::Locked(LOCKOUT)),
            "the right secret too"
        );
        assert_eq!(d.check(other, "s", now), Ok(()), "per address");
        assert_eq!(d.check(ip, "s", now + LOCKOUT), Ok(()), "for a minute");
        assert_eq!(d.check(ip, "x", now + LOCKOUT), Err(Refused::Wrong(1)));
    }

    #[test]
    fn a_right_secret_between_wrong_ones_does_not_reset_the_count() {
        let d = debugger();
        let ip: IpAddr = IP.parse().unwrap();
        let now = Instant::now();
        for n in 1..MAX_FAILURES {
            assert_eq!(d.check(ip, "x", now), Err(Refused::Wrong(n)));
            assert_eq!(d.check(ip, "s", now), Ok(()));
        }
        assert_eq!(d.check(ip, "x", now), Err(Refused::Wrong(MAX_FAILURES)));
        assert!(d.locked(ip, now).is_some());
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_lock() {
        let d = debugger();
        let ip: IpAddr = IP.parse().unwrap();
        let now = Instant::now();
        for n in 0..10u32 {
            let _ = d.check(ip, "x", now + Duration::from_secs(20) * n);
        }
        assert_eq!(d.locked(ip, now + Duration::from_secs(180)), None);
    }

    #[test]
    fn a_full_map_never_forgets_a_running_lockout() {
        let now = Instant::now();
        let mut map = HashMap::new();
        let locked: IpAddr = "10.0.0.1".parse().unwrap();
        // Failed first 50 s ago, locked since: the window is over, the lockout is not.
        map.insert(
            locked,
            Failures {
                count: MAX_FAILURES,
                first: now - Duration::from_secs(50),
                locked_until: Some(now + Duration::from_secs(50)),
            },
        );
        for n in 0..MAX_REMEMBERED as u32 {
            map.insert(
                IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n)),
                Failures {
                    count: 1,
                    first: now - Duration::from_secs(70),
                    locked_until: None,
                },
            );
        }
        forget_some(&mut map, now + Duration::from_secs(11));
        assert!(map.contains_key(&locked));
        assert_eq!(map.len(), 1, "the expired ones go");
    }
}
