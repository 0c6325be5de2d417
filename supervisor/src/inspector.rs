//! The request inspector (`[inspector]`): a live page on the metrics listener showing the
//! fleet's workers, the requests in flight, the open WebSockets and the executors' work.
//!
//! The page and its script are static files compiled in (no build step, no CDN); they
//! hold no data. The data is one JSON document at `/inspector/data`, made by the main
//! loop from the fleet's status and a `Requests` query to every worker process (the same
//! fan-out as `genro-asgi ctl requests`), and guarded by the optional bearer token. The
//! script renders every value as text, never as markup: a request path is whatever a
//! client sent.

use crate::endpoints::{ask, text, Probe};
use bytes::Bytes;
use genro_shared::protocol::{FleetStatus, WorkerReport};
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tokio::sync::mpsc;

const PAGE: &str = include_str!("inspector/index.html");
const SCRIPT: &str = include_str!("inspector/app.js");
const STYLE: &str = include_str!("inspector/app.css");

/// The inspector's settings, as started.
#[derive(Debug, Clone)]
pub struct Inspector {
    token: Option<String>,
}

/// What the page shows: the fleet and each worker process's requests.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Phase, uptime, restarts, every worker process.
    pub fleet: FleetStatus,
    /// Each worker process's requests in flight (WebSockets included), oldest first.
    pub workers: Vec<WorkerReport>,
}

/// Whether `path` is one of the inspector's.
pub fn is_inspector_path(path: &str) -> bool {
    path == "/inspector" || path.starts_with("/inspector/")
}

/// Compares two secrets in time that depends only on their lengths, not on where they
/// differ.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut differ = given.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        differ |= usize::from(byte ^ given.get(i).copied().unwrap_or(!byte));
    }
    differ == 0
}

impl Inspector {
    /// The inspector `[inspector]` describes, if it is on.
    pub fn new(config: &genro_config::Config) -> Option<Self> {
        config.inspector.enabled.then(|| Inspector {
            token: config.inspector.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// Whether `headers` carry the token (when one is set).
    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // RFC 9110 11.6.2: `Bearer <token>`, the scheme in any case.
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, given)| given.trim());
        same_secret(given.as_bytes(), token.as_bytes())
    }

    /// Answers a GET of one of the inspector's paths.
    pub async fn answer(
        &self,
        path: &str,
        headers: &HeaderMap,
        probes: &mpsc::Sender<Probe>,
    ) -> Response<Full<Bytes>> {
        let mut response = match path {
            "/inspector" | "/inspector/" => {
                text(StatusCode::OK, "text/html; charset=utf-8", PAGE.into())
            }
            "/inspector/app.js" => text(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                SCRIPT.into(),
            ),
            "/inspector/app.css" => text(StatusCode::OK, "text/css; charset=utf-8", STYLE.into()),
            "/inspector/data" if !self.allows(headers) => {
                let mut response = text(
                    StatusCode::UNAUTHORIZED,
                    "text/plain; charset=utf-8",
                    "the inspector needs its token: Authorization: Bearer <[inspector] token>\n"
                        .into(),
                );
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"genro-asgi inspector\""),
                );
                response
            }
            "/inspector/data" => match ask(probes, Probe::Inspect).await {
                Some(inspection) => text(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string(&inspection).unwrap_or_else(|_| "{}".into()),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "the supervisor did not answer in time\n".into(),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found; try /inspector\n".into(),
            ),
        };
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Only our own script runs, and nothing is framed or sent elsewhere.
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cres", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3crett", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn the_token_is_a_bearer_header() {
        let inspector = Inspector {
            token: Some("abc".into()),
        };
        let mut headers = HeaderMap::new();
        assert!(!inspector.allows(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abd"));
        assert!(!inspector.allows(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(!inspector.allows(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(inspector.allows(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert!(inspector.allows(&headers));
        let open = Inspector { token: None };
        assert!(open.allows(&HeaderMap::new()));
    }

    #[test]
    fn its_paths_are_its_own() {
        assert!(is_inspector_path("/inspector"));
        assert!(is_inspector_path("/inspector/data"));
        assert!(!is_inspector_path("/inspectors"));
        assert!(!is_inspector_path("/metrics"));
    }
}
