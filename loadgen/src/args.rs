//! The command line, and its validation into a [`Plan`]: what to request, over which
//! protocol, how many connections and streams, and when to stop.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, Method, Uri};
use std::path::PathBuf;
use std::time::Duration;

/// Command-line arguments, as typed.
#[derive(Debug, Parser)]
#[command(
    name = "genro-loadgen",
    version,
    about = "HTTP/1.1 and h2c load generator that reconnects after `Connection: close` or GOAWAY, \
             re-sends the requests the protocol says were not processed, and prints one JSON \
             report"
)]
pub struct Args {
    /// Target, e.g. http://127.0.0.1:8000/path (plain TCP only).
    #[arg(long)]
    pub url: String,
    /// h1: HTTP/1.1 keep-alive; h2: HTTP/2 with prior knowledge (h2c).
    #[arg(long, value_enum, default_value_t = Protocol::H1)]
    pub protocol: Protocol,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// h2: concurrent requests (streams) per connection; h1 sends one at a time.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// Stop starting new requests after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many requests in total (retries of a request do not count).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Request method.
    #[arg(long, value_enum, ignore_case = true, default_value_t = MethodArg::Get)]
    pub method: MethodArg,
    /// Request body size in bytes (filled with `x`).
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Write one line per request outcome to this file:
    /// `<id> <ok|retried-ok|failed|unsent> <status or -> <sent_ms> <done_ms>`.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Seconds one request may take, from sending to the end of the response body.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 over cleartext TCP, with prior knowledge.
    H2,
}

/// Request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// GET
    #[value(name = "GET")]
    Get,
    /// POST
    #[value(name = "POST")]
    Post,
}

/// Where requests go: the URL split into what each protocol needs.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, to connect to.
    pub authority: String,
    /// The `Host` header for HTTP/1.1.
    pub host: HeaderValue,
    /// `/path?query`: the HTTP/1.1 request target.
    pub origin_form: Uri,
    /// `http://host:port/path?query`: HTTP/2 takes `:scheme` and `:authority` from it.
    pub absolute: Uri,
}

/// When the run stops starting new requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stop {
    /// Run for this long.
    pub duration: Option<Duration>,
    /// Send this many requests.
    pub requests: Option<u64>,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where requests go.
    pub target: Target,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Concurrent connections.
    pub connections: usize,
    /// Concurrent requests per connection (1 for HTTP/1.1).
    pub streams: usize,
    /// Stop condition.
    pub stop: Stop,
    /// Request method.
    pub method: Method,
    /// Request body (shared by every request).
    pub body: Bytes,
    /// Outcome log file.
    pub log: Option<PathBuf>,
    /// Per-request time limit.
    pub timeout: Duration,
}

impl Args {
    /// Checks the arguments and turns them into a [`Plan`]; the error names the argument.
    pub fn plan(self) -> anyhow::Result<Plan> {
        let target = parse_url(&self.url).with_context(|| format!("--url {}", self.url))?;
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.streams == 0 {
            bail!("--streams must be at least 1");
        }
        if self.duration.is_none() && self.requests.is_none() {
            bail!("give a stop condition: --duration SECS and/or --requests N");
        }
        let duration = self
            .duration
            .map(|secs| seconds(secs, "--duration"))
            .transpose()?;
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        let timeout = seconds(self.timeout, "--timeout")?;
        Ok(Plan {
            target,
            protocol: self.protocol,
            connections: self.connections,
            streams: match self.protocol {
                Protocol::H1 => 1,
                Protocol::H2 => self.streams,
            },
            stop: Stop {
                duration,
                requests: self.requests,
            },
            method: match self.method {
                MethodArg::Get => Method::GET,
                MethodArg::Post => Method::POST,
            },
            body: Bytes::from(vec![b'x'; self.body_size]),
            log: self.log,
            timeout,
        })
    }
}

fn seconds(secs: f64, name: &str) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{name} must be a positive number of seconds, not {secs}");
    }
    Duration::try_from_secs_f64(secs).with_context(|| format!("{name} {secs}"))
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().context("not a URL")?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!("https is not supported (plain TCP only)"),
        _ => bail!("expected http://host:port/path"),
    }
    let Some(authority) = uri.authority() else {
        bail!("no host");
    };
    if authority.as_str().contains('@') {
        bail!("credentials in the URL are not supported");
    }
    let host = HeaderValue::from_str(authority.as_str()).context("host")?;
    let connect_to = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.as_str()),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let origin_form: Uri = path.parse().context("path")?;
    let absolute: Uri = format!("http://{}{}", authority.as_str(), path)
        .parse()
        .context("URL")?;
    Ok(Target {
        authority: connect_to,
        host,
        origin_form,
        absolute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &[&str]) -> anyhow::Result<Plan> {
        let mut argv = vec!["genro-loadgen"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)?.plan()
    }

    #[test]
    fn url_splits_into_connect_address_host_and_both_request_forms() {
        let p = plan(&["--url", "http://127.0.0.1:8000/a?b=1", "--requests", "5"]).unwrap();
        assert_eq!(p.target.authority, "127.0.0.1:8000");
        assert_eq!(p.target.host, "127.0.0.1:8000");
        assert_eq!(p.target.origin_form, "/a?b=1");
        assert_eq!(p.target.absolute, "http://127.0.0.1:8000/a?b=1");
        let p = plan(&["--url", "http://[::1]", "--duration", "1.5"]).unwrap();
        assert_eq!(p.target.authority, "[::1]:80");
        assert_eq!(p.target.origin_form, "/");
        assert_eq!(p.stop.duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn defaults_and_h1_streams() {
        let p = plan(&["--url", "http://h:1/", "--requests", "5"]).unwrap();
        assert_eq!((p.protocol, p.connections, p.streams), (Protocol::H1, 8, 1));
        assert_eq!(p.method, Method::GET);
        assert!(p.body.is_empty());
        assert_eq!(p.timeout, Duration::from_secs(30));
        let p = plan(&[
            "--url",
            "http://h:1/",
            "--requests",
            "5",
            "--protocol",
            "h2",
            "--method",
            "post",
            "--body-size",
            "3",
        ])
        .unwrap();
        assert_eq!((p.protocol, p.streams), (Protocol::H2, 4));
        assert_eq!((p.method, &p.body[..]), (Method::POST, &b"xxx"[..]));
    }

    #[test]
    fn bad_arguments_are_refused_with_the_argument_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--url", "http://h:1/"], "stop condition"),
            (&["--url", "https://h:1/", "--requests", "1"], "https"),
            (&["--url", "h:1/x", "--requests", "1"], "--url"),
            (&["--url", "http://h:1/", "--requests", "0"], "--requests"),
            (&["--url", "http://h:1/", "--duration=-1"], "--duration"),
            (&["--url", "http://h:1/", "--duration", "0"], "--duration"),
            (&["--url", "http://h:1/", "--duration", "NaN"], "--duration"),
            (
                &["--url", "http://h:1/", "--requests", "1", "--timeout", "0"],
                "--timeout",
            ),
            (
                &[
                    "--url",
                    "http://h:1/",
                    "--requests",
                    "1",
                    "--connections",
                    "0",
                ],
                "--connections",
            ),
            (
                &["--url", "http://h:1/", "--requests", "1", "--streams", "0"],
                "--streams",
            ),
        ];
        for (argv, needle) in cases {
            let err = format!("{:#}", plan(argv).unwrap_err());
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
        assert!(plan(&[
            "--url",
            "http://h:1/",
            "--requests",
            "1",
            "--protocol",
            "h3"
        ])
        .is_err());
    }
}
