//! The command line, and its validation into a [`Plan`]: what to request, over which
//! protocol, how many connections and streams, when to stop, and (HTTP/3) which server
//! certificates to trust.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, Method, Uri};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Command-line arguments, as typed.
#[derive(Debug, Parser)]
#[command(
    name = "genro-loadgen",
    version,
    about = "HTTP/1.1, h2c and HTTP/3 load generator that reconnects after `Connection: close` \
             or GOAWAY, re-sends the requests the protocol says were not processed, and prints \
             one JSON report"
)]
pub struct Args {
    /// Target: http://host:port/path for h1 and h2 (plain TCP), https://host:port/path for
    /// h3 (QUIC).
    #[arg(long)]
    pub url: String,
    /// h1: HTTP/1.1 keep-alive; h2: HTTP/2 with prior knowledge (h2c); h3: HTTP/3 over QUIC
    /// (needs --ca or --insecure).
    #[arg(long, value_enum, default_value_t = Protocol::H1)]
    pub protocol: Protocol,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// h2, h3: concurrent requests (streams) per connection; h1 sends one at a time.
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
    /// h3: trust the server certificates signed by these PEM roots (SNI is the URL's host).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// h3: do not check the server's certificate (self-signed test certificates).
    #[arg(long)]
    pub insecure: bool,
}

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 over cleartext TCP, with prior knowledge.
    H2,
    /// HTTP/3 over QUIC (TLS 1.3, ALPN `h3`).
    H3,
    /// WebSocket over HTTP/1.1 (no compression): each connection sends a binary message of
    /// `--body-size` bytes and waits for its echo, again and again.
    Ws,
    /// The same over HTTP/3 (RFC 9220 extended CONNECT): one QUIC connection per
    /// connection, one WebSocket stream on each.
    Ws3,
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
    /// The host alone (no port, no IPv6 brackets): the TLS server name (SNI) for HTTP/3.
    pub server_name: String,
    /// The `Host` header for HTTP/1.1.
    pub host: HeaderValue,
    /// `/path?query`: the HTTP/1.1 request target.
    pub origin_form: Uri,
    /// `http://host:port/path?query` (`https://` for HTTP/3): HTTP/2 and HTTP/3 take
    /// `:scheme` and `:authority` from it.
    pub absolute: Uri,
}

/// Which HTTP/3 server certificates are accepted.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any certificate (`--insecure`); the handshake signatures are still checked.
    Insecure,
    /// Certificates that chain to these roots (`--ca`) and name the URL's host.
    Roots(Vec<CertificateDer<'static>>),
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
    /// Server certificate checking: set for HTTP/3 only.
    pub trust: Option<Trust>,
}

impl Args {
    /// Checks the arguments and turns them into a [`Plan`]; the error names the argument.
    pub fn plan(self) -> anyhow::Result<Plan> {
        let target =
            parse_url(&self.url, self.protocol).with_context(|| format!("--url {}", self.url))?;
        let quic = matches!(self.protocol, Protocol::H3 | Protocol::Ws3);
        let trust = match (quic, &self.ca, self.insecure) {
            (true, Some(ca), _) => Some(Trust::Roots(
                load_roots(ca).with_context(|| format!("--ca {}", ca.display()))?,
            )),
            (true, None, true) => Some(Trust::Insecure),
            (true, None, false) => bail!(
                "--protocol h3 and ws3 check the server's certificate and have no system \
                 roots: give --ca FILE (PEM roots) or --insecure (no verification, for \
                 self-signed test certificates)"
            ),
            (_, Some(_), _) | (_, None, true) => {
                bail!("--ca and --insecure apply to --protocol h3 and ws3 only")
            }
            (_, None, false) => None,
        };
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
                Protocol::H1 | Protocol::Ws | Protocol::Ws3 => 1,
                Protocol::H2 | Protocol::H3 => self.streams,
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
            trust,
        })
    }
}

/// The PEM certificates of a `--ca` file; at least one.
fn load_roots(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .context("not a readable PEM file")?;
    if roots.is_empty() {
        bail!("no certificate found");
    }
    Ok(roots)
}

fn seconds(secs: f64, name: &str) -> anyhow::Result<Duration> {
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{name} must be a positive number of seconds, not {secs}");
    }
    Duration::try_from_secs_f64(secs).with_context(|| format!("{name} {secs}"))
}

fn parse_url(url: &str, protocol: Protocol) -> anyhow::Result<Target> {
    let uri: Uri = url.parse().context("not a URL")?;
    let (scheme, default_port) = match (uri.scheme_str(), protocol) {
        (Some("http"), Protocol::H1 | Protocol::H2) => ("http", 80),
        (Some("ws"), Protocol::Ws) => ("ws", 80),
        (_, Protocol::Ws) => bail!("--protocol ws expects ws://host:port/path"),
        (Some("wss"), Protocol::Ws3) => ("https", 443),
        (_, Protocol::Ws3) => bail!("--protocol ws3 expects wss://host:port/path"),
        (Some("https"), Protocol::H3) => ("https", 443),
        (Some("https"), _) => bail!("https needs --protocol h3 (h1 and h2 are plain TCP)"),
        (_, Protocol::H3) => bail!("--protocol h3 expects https://host:port/path"),
        _ => bail!("expected http://host:port/path"),
    };
    let Some(authority) = uri.authority() else {
        bail!("no host");
    };
    if authority.as_str().contains('@') {
        bail!("credentials in the URL are not supported");
    }
    let host = HeaderValue::from_str(authority.as_str()).context("host")?;
    let connect_to = match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:{default_port}", authority.as_str()),
    };
    let server_name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if protocol == Protocol::H3 {
        // rustls takes an IP address or a DNS name; anything else cannot be checked.
        ServerName::try_from(server_name.as_str())
            .with_context(|| format!("{server_name} is not a valid TLS server name"))?;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let origin_form: Uri = path.parse().context("path")?;
    let absolute: Uri = format!("{scheme}://{}{}", authority.as_str(), path)
        .parse()
        .context("URL")?;
    Ok(Target {
        authority: connect_to,
        server_name,
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
        assert_eq!(p.target.server_name, "127.0.0.1");
        assert_eq!(p.target.host, "127.0.0.1:8000");
        assert_eq!(p.target.origin_form, "/a?b=1");
        assert_eq!(p.target.absolute, "http://127.0.0.1:8000/a?b=1");
        let p = plan(&["--url", "http://[::1]", "--duration", "1.5"]).unwrap();
        assert_eq!(p.target.authority, "[::1]:80");
        assert_eq!(p.target.origin_form, "/");
        assert_eq!(p.stop.duration, Some(Duration::from_millis(1500)));
        assert!(p.trust.is_none());
    }

    #[test]
    fn h3_takes_an_https_url_and_a_trust_choice() {
        let p = plan(&[
            "--url",
            "https://[::1]/a",
            "--protocol",
            "h3",
            "--insecure",
            "--requests",
            "1",
        ])
        .unwrap();
        assert_eq!(p.target.authority, "[::1]:443");
        assert_eq!(p.target.server_name, "::1");
        assert_eq!(p.target.absolute, "https://[::1]/a");
        assert_eq!(p.streams, 4);
        assert!(matches!(p.trust, Some(Trust::Insecure)));

        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca = std::env::temp_dir().join(format!("genro-loadgen-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let p = plan(&[
            "--url",
            "https://localhost:4433/",
            "--protocol",
            "h3",
            "--ca",
            ca.to_str().unwrap(),
            "--requests",
            "1",
        ]);
        std::fs::remove_file(&ca).unwrap();
        let p = p.unwrap();
        assert_eq!(p.target.server_name, "localhost");
        assert!(matches!(&p.trust, Some(Trust::Roots(roots)) if roots.len() == 1));
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
        let h3 = |extra: &[&'static str]| {
            let mut argv = vec![
                "--url",
                "https://h:1/",
                "--requests",
                "1",
                "--protocol",
                "h3",
            ];
            argv.extend_from_slice(extra);
            argv
        };
        let owned: Vec<(Vec<&str>, &str)> = vec![
            (h3(&[]), "--ca FILE (PEM roots) or --insecure"),
            (h3(&["--ca", "/nonexistent.pem"]), "--ca /nonexistent.pem"),
            (h3(&["--ca", "/dev/null"]), "no certificate"),
            (h3(&["--ca", "x.pem", "--insecure"]), "cannot be used with"),
            (
                vec!["--url", "http://h:1/", "--requests", "1", "--insecure"],
                "--protocol h3 and ws3 only",
            ),
            (
                vec![
                    "--url",
                    "ws://h:1/",
                    "--requests",
                    "1",
                    "--protocol",
                    "ws3",
                    "--insecure",
                ],
                "wss://",
            ),
            (
                vec![
                    "--url",
                    "http://h:1/",
                    "--requests",
                    "1",
                    "--protocol",
                    "h3",
                ],
                "https://",
            ),
        ];
        let cases = cases
            .iter()
            .map(|(argv, needle)| (argv.to_vec(), *needle))
            .chain(owned);
        for (argv, needle) in cases {
            let err = format!("{:#}", plan(&argv).unwrap_err());
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }
}
