//! One event's delivery: the target URL taken apart, the trust store for https, and the
//! POST attempts over HTTP/1.1 (plain or TLS).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::{Timing, WebhookError};

/// The URL scheme, which picks the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

/// Where events go, taken apart once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) scheme: Scheme,
    /// Name or address to connect to and to verify, without IPv6 brackets.
    pub(super) host: String,
    pub(super) port: u16,
    /// The `Host` header: the URL's authority without credentials.
    pub(super) authority: String,
    /// The request target (RFC 9112 origin-form).
    pub(super) path_and_query: String,
}

impl Target {
    pub(super) fn parse(url: &str) -> Result<Target, WebhookError> {
        let uri: Uri = url.parse().map_err(|source| WebhookError::NotAUrl {
            url: url.to_owned(),
            source,
        })?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => {
                return Err(WebhookError::Scheme {
                    url: url.to_owned(),
                })
            }
        };
        let no_host = || WebhookError::NoHost {
            url: url.to_owned(),
        };
        let authority = uri.authority().ok_or_else(no_host)?;
        if authority.as_str().contains('@') {
            // Sending without them would only turn into 401s; a token belongs in the path.
            return Err(WebhookError::Credentials {
                url: url.to_owned(),
            });
        }
        let bracketed = authority.host();
        let host = bracketed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(bracketed);
        if host.is_empty() {
            return Err(no_host());
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let path = match uri.path() {
            "" => "/",
            path => path,
        };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        Ok(Target {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// The name the server's certificate must carry.
    pub(super) fn server_name(&self) -> Result<ServerName<'static>, WebhookError> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::from(ip)),
            Err(_) => {
                ServerName::try_from(self.host.clone()).map_err(|source| WebhookError::ServerName {
                    host: self.host.clone(),
                    source,
                })
            }
        }
    }
}

/// The system trust store, or why there is none.
pub(super) fn system_roots() -> Result<RootCertStore, WebhookError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _unparsable) = roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        let why = loaded
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(WebhookError::NoRoots { why });
    }
    Ok(roots)
}

/// A TLS client offering only HTTP/1.1, on the ring provider like the rest of the server.
pub(super) fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    /// TCP connect (or name resolution) failed.
    #[error("connect to {0} failed: {1}")]
    Connect(String, #[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The host is not a valid TLS server name.
    #[error(transparent)]
    ServerName(WebhookError),
    /// HTTP/1.1 failed on an open connection.
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built from the parsed URL.
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    /// The connection closed before a response head.
    #[error("connection closed before a response")]
    Closed,
    /// The whole attempt took longer than its bound.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The receiver answered, but not with a 2xx.
    #[error("answered {0}")]
    Status(StatusCode),
}

/// How to send one body: target, transport and timing.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) target: Target,
    pub(super) tls: Option<Arc<ClientConfig>>,
    pub(super) user_agent: String,
    pub(super) timing: Timing,
}

impl Delivery {
    /// Sends one body with retries; logs and drops it when every attempt failed.
    pub(super) async fn deliver(&self, body: Bytes) {
        let attempts = 1 + self.timing.retry_delays.len();
        let mut delays = self.timing.retry_delays.iter();
        loop {
            let bound = self.timing.attempt_timeout;
            let error = match tokio::time::timeout(bound, self.attempt(body.clone())).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error,
                Err(_) => AttemptError::Timeout(bound),
            };
            match delays.next() {
                Some(delay) => {
                    tracing::debug!(error = %error, retry_in = ?delay, "critical-event webhook attempt failed");
                    tokio::time::sleep(*delay).await;
                }
                None => {
                    // Only the authority: webhook paths often carry a secret token.
                    tracing::warn!(
                        error = %error,
                        host = %self.target.authority,
                        "critical-event webhook failed after {attempts} attempts; event dropped"
                    );
                    return;
                }
            }
        }
    }

    /// One connection, one request, a 2xx or an error.
    pub(super) async fn attempt(&self, body: Bytes) -> Result<(), AttemptError> {
        let target = &self.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| AttemptError::Connect(format!("{}:{}", target.host, target.port), e))?;
        // Small requests, one at a time: do not let Nagle hold the body back.
        let _ = tcp.set_nodelay(true);
        let status = match &self.tls {
            None => self.exchange(tcp, body).await?,
            Some(config) => {
                let name = target.server_name().map_err(AttemptError::ServerName)?;
                let tls = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(AttemptError::Tls)?;
                self.exchange(tls, body).await?
            }
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(status))
        }
    }

    /// POSTs the body on an open connection and returns the response status.
    pub(super) async fn exchange<IO>(&self, io: IO, body: Bytes) -> Result<StatusCode, AttemptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.target.path_and_query.as_str())
            .header(HOST, self.target.authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, self.user_agent.as_str())
            .body(Full::new(body));
        // The parts were validated by `Target::parse`; a failure here would be a bug, and
        // is reported like any other failed attempt rather than panicking the sender.
        let request = request?;
        // The connection is driven here, not spawned, so a timeout drops it with the attempt.
        tokio::pin!(connection);
        tokio::select! {
            response = sender.send_request(request) => Ok(response?.status()),
            closed = &mut connection => match closed {
                Err(error) => Err(AttemptError::Http(error)),
                Ok(()) => Err(AttemptError::Closed),
            },
        }
    }
}
