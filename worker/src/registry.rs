//! The worker's registry of requests in flight: an entry from admission until both the
//! transport and the app's task let go of the request (see [`crate::bridge::Admission`]).
//! It is read on the Rust side only, so `genro-asgi ctl requests` answers even while the
//! Python loop is blocked.

use genro_shared::protocol::InFlightRequest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Longest path kept in an entry (bytes, cut at a character boundary).
const MAX_PATH: usize = 256;

#[derive(Debug)]
struct Entry {
    method: http::Method,
    /// The request's URI: cloning it shares the parsed bytes (no copy on the hot path).
    uri: http::Uri,
    client: SocketAddr,
    version: http::Version,
    started: Instant,
}

/// Requests in flight, by worker-local id.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    /// Records a request; returns its id.
    pub fn insert(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        client: SocketAddr,
        version: http::Version,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Entry {
            method: method.clone(),
            uri: uri.clone(),
            client,
            version,
            started: Instant::now(),
        };
        self.lock().insert(id, entry);
        id
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
        oldest.sort_unstable_by_key(|(id, e)| (e.started, **id));
        let list = oldest
            .into_iter()
            .take(max)
            .map(|(&id, e)| InFlightRequest {
                id,
                method: e.method.to_string(),
                path: cut_path(e.uri.path()),
                client: e.client.to_string(),
                protocol: match e.version {
                    http::Version::HTTP_2 => "http/2",
                    http::Version::HTTP_10 => "http/1.0",
                    _ => "http/1.1",
                }
                .into(),
                age: now.duration_since(e.started).as_secs_f64(),
            })
            .collect();
        (list, total)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The path, cut to [`MAX_PATH`] bytes at a character boundary.
fn cut_path(path: &str) -> String {
    let mut cut = path.len().min(MAX_PATH);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    path[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lists_oldest_first_and_counts_all() {
        let r = Registry::default();
        let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let uri = |p: &str| p.parse::<http::Uri>().unwrap();
        let a = r.insert(
            &http::Method::GET,
            &uri("/a?q"),
            client,
            http::Version::HTTP_11,
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = r.insert(
            &http::Method::POST,
            &uri("/b"),
            client,
            http::Version::HTTP_2,
        );
        r.insert(
            &http::Method::PUT,
            &uri("/c"),
            client,
            http::Version::HTTP_10,
        );
        let (list, total) = r.snapshot(2);
        assert_eq!(total, 3);
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].id, list[0].path.as_str()), (a, "/a"));
        assert_eq!((list[1].id, list[1].protocol.as_str()), (b, "http/2"));
        assert!(list[0].age >= list[1].age);
        r.remove(a);
        assert_eq!(r.snapshot(10).1, 2);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let r = Registry::default();
        let path = format!("/{}", "%C3%A9".repeat(100));
        r.insert(
            &http::Method::GET,
            &path.parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            http::Version::HTTP_11,
        );
        let (list, _) = r.snapshot(1);
        assert!(list[0].path.len() <= MAX_PATH);
        assert!(path.starts_with(&list[0].path));
    }
}
