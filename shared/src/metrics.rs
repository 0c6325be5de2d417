//! Metrics plumbing shared by the processes: every worker and the HTTP/3 front keep their
//! own `prometheus` registry whose series carry a constant `worker` label; at scrape time
//! the supervisor asks each of them for the Prometheus text over the control plane and
//! [`merge`]s the texts with its own, so that each metric family appears once, with one
//! `# HELP` and one `# TYPE` line, as the text format requires.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::HashMap;

/// Prefix of every metric name.
pub const PREFIX: &str = "genro_asgi";

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the Python loop lag histogram, in seconds.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A registry whose series all carry `worker="<worker>"` (a slot number, or `h3` for the
/// HTTP/3 front).
pub fn registry(worker: &str) -> Registry {
    let labels = HashMap::from([("worker".to_owned(), worker.to_owned())]);
    Registry::new_custom(Some(PREFIX.to_owned()), Some(labels))
        .expect("the prefix and the label name are valid")
}

/// Registers a counter family with `labels`.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// Registers a gauge family with `labels`.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding into a Vec does not fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// One metric family while merging: its `# HELP` and `# TYPE` lines, then its samples.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Merges Prometheus texts (as written by [`encode`]) into one: a family present in
/// several texts gets its `# HELP`/`# TYPE` once and all the samples, in the order of the
/// texts. Families keep the order in which they first appear.
pub fn merge<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    for text in texts {
        let mut current: Option<String> = None;
        for line in text.lines() {
            let (name, what) = if let Some(rest) = line.strip_prefix("# HELP ") {
                (rest.split(' ').next().unwrap_or(""), Some(true))
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                (rest.split(' ').next().unwrap_or(""), Some(false))
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                // Every sample belongs to the family declared before it (a histogram's
                // `_bucket`/`_sum`/`_count` too); [`encode`] always declares.
                let family = current
                    .clone()
                    .unwrap_or_else(|| line.split(['{', ' ']).next().unwrap_or("").to_owned());
                let entry = families.entry(family.clone()).or_insert_with(|| {
                    order.push(family.clone());
                    Family::default()
                });
                entry.samples.push(line.to_owned());
                current = Some(family);
                continue;
            };
            let name = name.to_owned();
            let entry = families.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                Family::default()
            });
            match what {
                Some(true) => entry.help.get_or_insert_with(|| line.to_owned()),
                _ => entry.kind.get_or_insert_with(|| line.to_owned()),
            };
            current = Some(name);
        }
    }
    let mut out = String::new();
    for name in order {
        let family = &families[&name];
        for line in family
            .help
            .iter()
            .chain(&family.kind)
            .chain(&family.samples)
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, IntCounterVec, Opts};

    fn worker_text(worker: &str, hits: u64) -> String {
        let registry = registry(worker);
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "Requests."), &["status"]).unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        requests.with_label_values(&["2xx"]).inc_by(hits);
        let duration = prometheus::Histogram::with_opts(
            HistogramOpts::new("request_duration_seconds", "Duration.").buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        duration.observe(0.5);
        encode(&registry)
    }

    #[test]
    fn families_appear_once_with_every_worker_sample() {
        let a = worker_text("0", 3);
        let b = worker_text("1", 4);
        let merged = merge([a.as_str(), b.as_str()]);
        assert_eq!(
            merged
                .matches("# TYPE genro_asgi_requests_total counter")
                .count(),
            1
        );
        assert_eq!(
            merged
                .matches("# TYPE genro_asgi_request_duration_seconds histogram")
                .count(),
            1
        );
        assert!(merged.contains("genro_asgi_requests_total{status=\"2xx\",worker=\"0\"} 3"));
        assert!(merged.contains("genro_asgi_requests_total{status=\"2xx\",worker=\"1\"} 4"));
        // The histogram's samples stay together under their family.
        let lines: Vec<&str> = merged.lines().collect();
        let type_at = lines
            .iter()
            .position(|l| l.starts_with("# TYPE genro_asgi_request_duration"))
            .unwrap();
        let samples: Vec<&&str> = lines[type_at + 1..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(samples.len(), 2 * 5, "{merged}");
        assert!(samples
            .iter()
            .all(|l| l.starts_with("genro_asgi_request_duration_seconds_")));
    }

    #[test]
    fn an_empty_text_changes_nothing() {
        let a = worker_text("0", 1);
        assert_eq!(merge([a.as_str(), ""]), a);
    }
}
