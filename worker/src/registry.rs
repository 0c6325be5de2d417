//! The worker's registry of requests in flight (their envelopes): an entry from admission
//! until both the transport and the app's task let go of the request (see
//! [`crate::admission::Admission`]). It is read on the Rust side only, so `genro-asgi ctl
//! requests` and the watchdog work even while the Python loop is blocked.
//!
//! Every request gets an id of 16 hex digits: 8 drawn at random when the worker starts,
//! then the worker-local sequence number (so ids from different workers do not collide).
//! It is the `X-Request-ID` of the response, `scope["extensions"]["genro.envelope"]["id"]`,
//! and the error id of a 500.

use crate::metrics::Protocol;
use genro_shared::protocol::InFlightRequest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Longest path kept in an entry (bytes, cut at a character boundary).
const MAX_PATH: usize = 256;

/// Longest incoming `X-Request-ID` kept as the external id; a longer one is ignored.
pub const MAX_EXTERNAL_ID: usize = 128;

/// What one exchange is, stored once from its admission: its registry entry, the
/// transport's metrics and access-log record, the app's handle and its log span all read
/// this one copy.
#[derive(Debug)]
pub struct Envelope {
    /// Worker-local number: the registry's key.
    pub key: u64,
    /// The request's id (16 hex digits).
    pub id: RequestId,
    /// Its method (`GET` for a WebSocket over HTTP/1.1, `CONNECT` over HTTP/2).
    pub method: http::Method,
    /// The request's URI: cloning it shares the parsed bytes (no copy on the hot path).
    pub uri: http::Uri,
    /// The client (behind a trusted proxy or the HTTP/3 front, the original one).
    pub client: SocketAddr,
    /// How it came.
    pub protocol: Protocol,
    /// When it was admitted.
    pub started: Instant,
    /// The same moment on the wall clock (the access line's time, the app's
    /// `genro.envelope` `start`).
    pub admitted: std::time::SystemTime,
    /// The span of its log lines, made on the first one.
    span: OnceLock<tracing::Span>,
}

impl Envelope {
    /// The request's path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// When it was admitted, in seconds since the epoch.
    pub fn wall(&self) -> f64 {
        self.admitted
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// The span of this exchange's log lines, `request{request_id, method, path, client}`,
    /// made the first time one is logged (most exchanges log nothing, and a span costs a
    /// few allocations), under the span current then (`worker{slot}` on the loop's thread,
    /// `conn{peer}` on a connection's task). ERROR level: it exists whenever anything is
    /// logged.
    pub fn span(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            tracing::error_span!(
                "request",
                request_id = %self.id,
                method = %self.method,
                path = self.path(),
                client = %self.client,
            )
        })
    }
}

#[derive(Debug)]
struct Entry {
    envelope: Arc<Envelope>,
    /// Since when the request waits on the app (the watchdog's clock); `None`: it does
    /// not (an accepted WebSocket whose app keeps up with its client).
    busy_since: Option<Instant>,
    /// The client's own `X-Request-ID`.
    external: Option<http::HeaderValue>,
    /// The highest watchdog level already logged for it.
    reported: Level,
}

/// How stuck a request is, by the watchdog's measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Younger than `[watchdog] timeout`.
    Fine,
    /// Older than `[watchdog] timeout`.
    Warning,
    /// Older than `[watchdog] critical`.
    Critical,
}

/// A stuck request the watchdog just found (reported once per level).
#[derive(Debug)]
pub struct Stuck {
    /// Its level now.
    pub level: Level,
    /// What `ctl requests` shows of it.
    pub request: InFlightRequest,
}

/// Requests in flight, by worker-local id.
#[derive(Debug)]
pub struct Registry {
    seed: u32,
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Default for Registry {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Registry {
            seed: h.finish() as u32,
            next: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

/// A request's id as text: 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 16]);

impl RequestId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }

    /// The id as a header value, marked sensitive: HTTP/2's HPACK sends it as a literal
    /// never indexed, because a value unique to each response would only churn
    /// the connection's dynamic table (an insertion and an eviction per response).
    pub fn header(&self) -> http::HeaderValue {
        let mut value =
            http::HeaderValue::from_bytes(&self.0).expect("hex digits are a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Registry {
    /// Records a request; returns its envelope.
    pub fn insert(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        client: SocketAddr,
        protocol: Protocol,
        external: Option<&http::HeaderValue>,
    ) -> Arc<Envelope> {
        let key = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let envelope = Arc::new(Envelope {
            key,
            id: self.request_id(key),
            method: method.clone(),
            uri: uri.clone(),
            client,
            protocol,
            started: now,
            admitted: std::time::SystemTime::now(),
            span: OnceLock::new(),
        });
        let entry = Entry {
            envelope: envelope.clone(),
            busy_since: Some(now),
            external: external
                .filter(|v| v.len() <= MAX_EXTERNAL_ID && v.to_str().is_ok())
                .cloned(),
            reported: Level::Fine,
        };
        self.lock().insert(key, entry);
        envelope
    }

    /// The id of request number `n`.
    pub fn request_id(&self, n: u64) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value = (u64::from(self.seed) << 32) | (n & 0xffff_ffff);
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = HEX[((value >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(out)
    }

    /// The client's own `X-Request-ID` of request `n`, if it sent a usable one.
    pub fn external_id(&self, n: u64) -> Option<String> {
        let entries = self.lock();
        let value = entries.get(&n)?.external.as_ref()?;
        value.to_str().ok().map(str::to_owned)
    }

    fn describe(&self, n: u64, e: &Entry, now: Instant) -> InFlightRequest {
        let envelope = &e.envelope;
        InFlightRequest {
            id: n,
            request_id: envelope.id.to_string(),
            external_id: e
                .external
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            method: envelope.method.to_string(),
            path: cut(envelope.path(), MAX_PATH),
            client: genro_shared::peer_text(envelope.client),
            protocol: envelope.protocol.label().into(),
            age: now.duration_since(envelope.started).as_secs_f64(),
            stuck: match e.reported {
                Level::Fine => None,
                Level::Warning => Some("warning".into()),
                Level::Critical => Some("critical".into()),
            },
        }
    }

    /// The watchdog's round: requests that reached a new level (older than `timeout`:
    /// warning, older than `critical`: critical) since the last round, and how many are
    /// at each level now.
    pub fn check(
        &self,
        timeout: std::time::Duration,
        critical: std::time::Duration,
    ) -> (Vec<Stuck>, u64, u64) {
        let now = Instant::now();
        let mut entries = self.lock();
        let (mut warning, mut critical_count) = (0, 0);
        let mut news = Vec::new();
        for (&n, e) in entries.iter_mut() {
            let Some(since) = e.busy_since else {
                continue;
            };
            let age = now.duration_since(since);
            let level = if age >= critical {
                critical_count += 1;
                Level::Critical
            } else if age >= timeout {
                warning += 1;
                Level::Warning
            } else {
                continue;
            };
            if level > e.reported {
                e.reported = level;
                news.push((n, level));
            }
        }
        let news = news
            .into_iter()
            .map(|(n, level)| Stuck {
                level,
                request: self.describe(n, &entries[&n], now),
            })
            .collect();
        (news, warning, critical_count)
    }

    /// Starts (`true`) or stops the watchdog's clock of a long-lived request: a WebSocket
    /// is stuck only while its app does not take the client's messages. Stopping it also
    /// forgets what was reported, so a later stall is reported again.
    pub fn set_busy(&self, id: u64, busy: bool) {
        if let Some(e) = self.lock().get_mut(&id) {
            if busy {
                e.busy_since.get_or_insert_with(Instant::now);
            } else {
                e.busy_since = None;
                e.reported = Level::Fine;
            }
        }
    }

    /// Forgets a finished request.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Up to `max` requests, oldest first, and how many there are in all.
    pub fn snapshot(&self, max: usize) -> (Vec<InFlightRequest>, u64) {
        let now = Instant::now();
        let entries = self.lock();
        let total = entries.len() as u64;
        let mut oldest: Vec<(&u64, &Entry)> = entries.iter().collect();
        oldest.sort_unstable_by_key(|(id, e)| (e.envelope.started, **id));
        let list = oldest
            .into_iter()
            .take(max)
            .map(|(&n, e)| self.describe(n, e, now))
            .collect();
        (list, total)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        genro_shared::sync::lock(&self.entries)
    }
}

/// `text` cut to `max` bytes at a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits `method path` from one client over `protocol`; returns its key.
    fn admit(
        r: &Registry,
        method: http::Method,
        path: &str,
        protocol: Protocol,
        external: Option<&http::HeaderValue>,
    ) -> u64 {
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        r.insert(&method, &path.parse().unwrap(), client, protocol, external)
            .key
    }

    #[test]
    fn snapshot_lists_oldest_first_and_counts_all() {
        let r = Registry::default();
        let a = admit(&r, http::Method::GET, "/a?q", Protocol::Http1, None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = admit(&r, http::Method::POST, "/b", Protocol::Http2, None);
        admit(&r, http::Method::PUT, "/c", Protocol::Http3, None);
        let (list, total) = r.snapshot(2);
        assert_eq!(total, 3);
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].id, list[0].path.as_str()), (a, "/a"));
        assert_eq!((list[1].id, list[1].protocol.as_str()), (b, "http2"));
        assert_eq!(list[0].request_id, r.request_id(a).to_string());
        assert_eq!(list[0].request_id.len(), 16);
        assert_ne!(r.request_id(a), r.request_id(b));
        assert!(list[0].age >= list[1].age);
        r.remove(a);
        assert_eq!(r.snapshot(10).1, 2);
    }

    #[test]
    fn the_watchdog_reports_each_level_once() {
        let r = Registry::default();
        let external = http::HeaderValue::from_static("abc-123");
        let n = admit(
            &r,
            http::Method::GET,
            "/slow",
            Protocol::Http1,
            Some(&external),
        );
        let ms = std::time::Duration::from_millis;
        assert_eq!(r.check(ms(50), ms(100)).0.len(), 0);
        std::thread::sleep(ms(60));
        let (news, warning, critical) = r.check(ms(50), ms(100));
        assert_eq!((news.len(), warning, critical), (1, 1, 0));
        assert_eq!(news[0].level, Level::Warning);
        assert_eq!(news[0].request.external_id.as_deref(), Some("abc-123"));
        assert_eq!(r.check(ms(50), ms(100)).0.len(), 0, "logged once");
        std::thread::sleep(ms(50));
        let (news, warning, critical) = r.check(ms(50), ms(100));
        assert_eq!((news.len(), warning, critical), (1, 0, 1));
        assert_eq!(news[0].level, Level::Critical);
        assert_eq!(r.external_id(n).as_deref(), Some("abc-123"));
        let long = http::HeaderValue::from_bytes(&[b'a'; MAX_EXTERNAL_ID + 1]).unwrap();
        let m = admit(&r, http::Method::GET, "/", Protocol::Http1, Some(&long));
        assert_eq!(r.external_id(m), None);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let r = Registry::default();
        let path = format!("/{}", "%C3%A9".repeat(100));
        r.insert(
            &http::Method::GET,
            &path.parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            Protocol::Http1,
            None,
        );
        let (list, _) = r.snapshot(1);
        assert!(list[0].path.len() <= MAX_PATH);
        assert!(path.starts_with(&list[0].path));
    }
}
