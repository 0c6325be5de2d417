//! Counting outcomes, and the JSON report printed at the end.

use crate::classify::RetryCause;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// How many distinct error strings are counted; later new ones go to one "other" bucket so
/// a pathological run cannot grow the map without bound.
const MAX_DISTINCT_ERRORS: usize = 1000;
/// How many distinct error strings the report lists (most frequent first).
const REPORTED_ERRORS: usize = 20;

/// Outcome counters of a run.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests answered with a complete response (any status).
    pub ok: u64,
    /// Requests that failed after they were handed to a connection.
    pub failed: u64,
    /// Attempts that were not processed and were re-sent (one request may count twice).
    pub retried: u64,
    /// Requests not processed and never re-sent because the run ended first.
    pub unsent: u64,
    /// Failed TCP connects and handshakes.
    pub connect_errors: u64,
    /// Connections opened after a task's first one.
    pub reconnects: u64,
    /// Response body bytes of the complete responses.
    pub response_bytes: u64,
    statuses: BTreeMap<u16, u64>,
    retry_causes: BTreeMap<&'static str, u64>,
    errors: HashMap<String, u64>,
}

impl Tally {
    /// A complete response with a body of `bytes`.
    pub fn handle_ok(&mut self, status: u16, bytes: u64) {
        self.ok += 1;
        self.response_bytes += bytes;
        *self.statuses.entry(status).or_default() += 1;
    }

    /// A request that failed.
    pub fn handle_failed(&mut self, error: &str) {
        self.failed += 1;
        self.count_error("failed", error);
    }

    /// An attempt that will be re-sent.
    pub fn handle_retry(&mut self, cause: RetryCause, error: &str) {
        self.retried += 1;
        *self.retry_causes.entry(cause.name()).or_default() += 1;
        self.count_error("retried", error);
    }

    /// Requests given up unsent at the end of the run.
    pub fn handle_unsent(&mut self, count: u64) {
        self.unsent += count;
    }

    /// A connect or handshake failure.
    pub fn handle_connect_error(&mut self, error: &str) {
        self.connect_errors += 1;
        self.count_error("connect", error);
    }

    fn count_error(&mut self, kind: &str, error: &str) {
        let key = format!("{kind}: {error}");
        if let Some(count) = self.errors.get_mut(&key) {
            *count += 1;
        } else if self.errors.len() < MAX_DISTINCT_ERRORS {
            self.errors.insert(key, 1);
        } else {
            *self
                .errors
                .entry(format!("{kind}: (other errors)"))
                .or_default() += 1;
        }
    }

    /// The report: counters, statuses, retry causes, the most frequent errors, and the
    /// rate of complete responses over `seconds`.
    pub fn report(&self, seconds: f64) -> Value {
        let mut errors: Vec<(&String, &u64)> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let errors: Vec<Value> = errors
            .into_iter()
            .take(REPORTED_ERRORS)
            .map(|(error, count)| json!({"error": error, "count": count}))
            .collect();
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(status, count)| (status.to_string(), json!(count)))
            .collect();
        let causes: serde_json::Map<String, Value> = RetryCause::ALL
            .into_iter()
            .map(|cause| {
                let count = self.retry_causes.get(cause.name()).copied().unwrap_or(0);
                (cause.name().to_string(), json!(count))
            })
            .collect();
        let rps = if seconds > 0.0 {
            self.ok as f64 / seconds
        } else {
            0.0
        };
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "retried": self.retried,
            "retry_causes": causes,
            "unsent": self.unsent,
            "connect_errors": self.connect_errors,
            "reconnects": self.reconnects,
            "response_bytes": self.response_bytes,
            "statuses": statuses,
            "errors": errors,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "rps": (rps * 10.0).round() / 10.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_statuses_causes_and_top_errors() {
        let mut t = Tally::default();
        t.handle_ok(200, 10);
        t.handle_ok(200, 10);
        t.handle_ok(503, 0);
        t.handle_failed("timeout");
        t.handle_retry(RetryCause::NotSent, "connection closed");
        t.handle_retry(RetryCause::NotSent, "connection closed");
        t.handle_connect_error("refused");
        t.handle_unsent(2);
        let r = t.report(2.0);
        assert_eq!(r["ok"], 3);
        assert_eq!(r["failed"], 1);
        assert_eq!(r["retried"], 2);
        assert_eq!(r["unsent"], 2);
        assert_eq!(r["connect_errors"], 1);
        assert_eq!(r["statuses"], json!({"200": 2, "503": 1}));
        assert_eq!(
            r["retry_causes"],
            json!({"not_sent": 2, "refused_stream": 0, "request_rejected": 0, "goaway": 0})
        );
        assert_eq!(r["response_bytes"], 20);
        assert_eq!(
            r["errors"][0],
            json!({"error": "retried: connection closed", "count": 2})
        );
        assert_eq!(r["errors"].as_array().map(Vec::len), Some(3));
        assert_eq!(r["rps"], 1.5);
    }

    #[test]
    fn distinct_errors_are_bounded() {
        let mut t = Tally::default();
        for n in 0..MAX_DISTINCT_ERRORS + 5 {
            t.handle_failed(&n.to_string());
        }
        assert_eq!(t.errors.len(), MAX_DISTINCT_ERRORS + 1);
        assert_eq!(t.errors["failed: (other errors)"], 5);
        assert_eq!(t.report(1.0)["errors"].as_array().map(Vec::len), Some(20));
    }
}
