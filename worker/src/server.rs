//! The worker's HTTP server: accepts on the slot's socket, terminates TLS, serves
//! HTTP/1.1 and HTTP/2 (prior-knowledge h2c and ALPN `h2`) with hyper, applies the
//! `[limits]`, and drains gracefully when told to stop.

use crate::body::ResponseBody;
use crate::bridge::{ConnInfo, Event, Exchange, RequestStart, Shared};
use bytes::Bytes;
use genro_config::{Config, TlsVersion};
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Limits and settings the request path reads on every request.
#[derive(Debug)]
pub struct Limits {
    /// `[limits] max_concurrency` (0: unlimited).
    pub max_concurrency: usize,
    /// `[limits] max_body_size` (0: unlimited).
    pub max_body_size: u64,
    /// Requests in flight in this worker.
    pub in_flight: AtomicUsize,
}

/// Builds the rustls acceptor from `[ssl]`, or `None` when TLS is off.
pub fn tls_acceptor(config: &Config) -> anyhow::Result<Option<TlsAcceptor>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ssl = &config.ssl;
    if !ssl.enabled {
        return Ok(None);
    }
    let (Some(certfile), Some(keyfile)) = (&ssl.certfile, &ssl.keyfile) else {
        anyhow::bail!("[ssl] enabled = true needs certfile and keyfile");
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| {
            format!(
                "[ssl] certfile {}: not a readable PEM certificate chain",
                certfile.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "[ssl] certfile {}: no certificate found",
            certfile.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(keyfile).with_context(|| {
        format!(
            "[ssl] keyfile {}: not a readable unencrypted PEM private key",
            keyfile.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match ssl.min_version {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let builder = match &ssl.ca_certs {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("[ssl] ca_certs {}", ca.display()))?
            {
                let cert = cert.with_context(|| format!("[ssl] ca_certs {}", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("[ssl] ca_certs {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .context("[ssl] ca_certs: client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .context("[ssl] certfile/keyfile do not form a valid certificate and key")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(tls))))
}

fn plain(status: StatusCode, text: &'static str, close: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Decrements the in-flight count and tells the exchange the client is done when dropped:
/// with the response body (written or abandoned), or with the service future (client gone
/// before the app answered).
struct InFlight {
    limits: Arc<Limits>,
    exchange: Arc<Exchange>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.exchange.mark_disconnected();
    }
}

async fn handle(
    request: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
) -> Result<Response<ResponseBody>, Infallible> {
    let in_flight = limits.in_flight.fetch_add(1, Ordering::Relaxed);
    if limits.max_concurrency != 0 && in_flight >= limits.max_concurrency {
        limits.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server busy, retry later\n",
            false,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(response);
    }
    if limits.max_body_size != 0 {
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body_size) {
            limits.in_flight.fetch_sub(1, Ordering::Relaxed);
            // Close: we do not read the body we refuse.
            return Ok(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large\n",
                true,
            ));
        }
    }
    let (parts, body) = request.into_parts();
    let exchange = Arc::new(Exchange::new(body, limits.max_body_size));
    let guard = InFlight {
        limits: limits.clone(),
        exchange: exchange.clone(),
    };
    let (respond, response) = tokio::sync::oneshot::channel();
    shared.bridge.push(Event::Request(Box::new(RequestStart {
        parts,
        conn,
        exchange,
        respond,
    })));
    match response.await {
        Ok(response) => Ok(response.map(|body| body.on_drop(Box::new(move || drop(guard))))),
        // The exchange was dropped without an answer (worker stopping).
        Err(_) => Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server shutting down\n",
            true,
        )),
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves `listener` until `stop` turns true, then drains within `graceful_timeout`.
pub async fn serve(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let limits = Arc::new(Limits {
        max_concurrency: config.limits.max_concurrency,
        max_body_size: config.limits.max_body_size,
        in_flight: AtomicUsize::new(0),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.limits.header_read_timeout)
        .max_buf_size((config.limits.max_header_size as usize).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.limits.max_header_size.min(u32::MAX as u64) as u32);
    let graceful = GracefulShutdown::new();
    let handshake_timeout = config.limits.header_read_timeout;
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let server = stream.local_addr().unwrap_or(client);
        let conn = Arc::new(ConnInfo {
            client,
            server,
            https: tls.is_some(),
        });
        let service = {
            let shared = shared.clone();
            let limits = limits.clone();
            let conn = conn.clone();
            service_fn(move |request| handle(request, conn.clone(), shared.clone(), limits.clone()))
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(async move {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(err) = watcher.watch(connection).await {
                        tracing::debug!(%client, "connection ended: {err}");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            return tracing::debug!(%client, "TLS handshake failed: {err}")
                        }
                        Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
                    };
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(err) = watcher.watch(connection).await {
                        tracing::debug!(%client, "connection ended: {err}");
                    }
                });
            }
        }
    }
    drop(listener);
    let grace = config.server.graceful_timeout;
    tracing::info!(
        "draining: no longer accepting; waiting up to {:.1}s for in-flight requests",
        grace.as_secs_f64()
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = limits.in_flight.load(Ordering::Relaxed),
            "graceful_timeout reached with requests still in flight; cancelling them"
        );
    }
    Ok(())
}
