//! What every exchange starts from, whatever its protocol: the connection's facts and the
//! admission that counts a request in flight and lists it in the registry until its last
//! owner lets go.

use crate::registry::Envelope;
use crate::state::Shared;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The request header whose value a client may send as its own request id; the response
/// carries ours under the same name.
pub(crate) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// How the connection reached us.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// Peer address.
    pub(crate) client: SocketAddr,
    /// Local address.
    pub(crate) server: SocketAddr,
    /// TLS or not.
    pub(crate) https: bool,
    /// Forwarded by the HTTP/3 front over the slot's private Unix socket: the request is
    /// HTTP/3 for the app, and `client` comes from [`genro_shared::CLIENT_HEADER`].
    pub(crate) front: bool,
    /// A TLS connection's facts, once its handshake is done (from the front: per request,
    /// from [`genro_shared::tls_facts::TLS_HEADER`]).
    pub(crate) tls: std::sync::OnceLock<Arc<genro_shared::tls_facts::TlsFacts>>,
    /// On the `[server] uds` socket: its path (the scope's `server` is `[path, None]`, and
    /// `client` is `None` while it is [`genro_shared::UNIX_PEER`]).
    pub(crate) unix: Option<Arc<str>>,
    /// `[server] early_hints`.
    pub(crate) early_hints: bool,
    /// Where `103 Early Hints` go on an HTTP/1.1 connection (`None`: off, or the front's).
    pub(crate) hints: Option<Arc<crate::server::Hints>>,
}

impl ConnInfo {
    /// Where the `103 Early Hints` of the request with `parts` go (`None`: it gets none,
    /// and its scope does not offer the extension). HTTP/1.1 through the connection's
    /// queue, HTTP/2 (the front's too) through hyper's stream; HTTP/1.0 clients must not
    /// get interim responses (RFC 9110 §15.2).
    pub(crate) fn early_hints(
        &self,
        parts: &http::request::Parts,
    ) -> Option<crate::server::EarlyHints> {
        use crate::server::EarlyHints;
        if !self.early_hints {
            return None;
        }
        match parts.version {
            http::Version::HTTP_11 => self.hints.clone().map(EarlyHints::Http1),
            http::Version::HTTP_2 => parts
                .extensions
                .get::<hyper::ext::InformationalSender>()
                .cloned()
                .map(EarlyHints::Http2),
            _ => None,
        }
    }
}

/// What every exchange starts from on the Python thread, whatever its protocol.
#[derive(Debug)]
pub(crate) struct Opening {
    /// Method, URI, version, headers (of the handshake, for a WebSocket).
    pub(crate) parts: http::request::Parts,
    /// Connection facts.
    pub(crate) conn: Arc<ConnInfo>,
    /// The exchange's admission (registry entry, in-flight count), held until the app's
    /// task ends.
    pub(crate) admission: Arc<Admission>,
    /// Where the response (or the handshake's answer) goes.
    pub(crate) respond: tokio::sync::oneshot::Sender<http::Response<crate::body::ResponseBody>>,
}

/// One exchange start waiting in the hand-off queue, counted in [`Shared::starts_queued`]
/// until the loop runs its job (or the job is dropped unrun). A request whose client left
/// releases its memory and its slot in `http_in_flight` at once, but its emptied job stays
/// queued until the loop wakes: without this count a blocked loop under a flood of
/// departed clients queued one job per request (150,000 requests: +32 MiB).
#[derive(Debug)]
pub(crate) struct QueuedStart(Arc<Shared>);

impl QueuedStart {
    /// Counts a start in.
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        shared.starts_queued.fetch_add(1, Ordering::Relaxed);
        QueuedStart(shared.clone())
    }

    /// Whether the queue already holds `max` starts (0: unlimited).
    pub(crate) fn full(shared: &Shared, max: usize) -> bool {
        max != 0 && shared.starts_queued.load(Ordering::Relaxed) >= max
    }

    /// The worker's shared state.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0
    }
}

impl Drop for QueuedStart {
    fn drop(&mut self) {
        self.0.starts_queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted request, counted in [`Shared::in_flight`] and listed in
/// [`Shared::registry`] until both the transport (the response body or the service future)
/// and the app's task let go of it: a client that disconnects does not free its slot while
/// the app still runs for it.
#[derive(Debug)]
pub(crate) struct Admission {
    shared: Arc<Shared>,
    /// The request's facts, which its registry entry shares.
    envelope: Arc<Envelope>,
    /// Counted in [`Shared::http_in_flight`].
    http: bool,
}

impl Admission {
    /// Counts a request in.
    pub(crate) fn new<B>(
        shared: Arc<Shared>,
        request: &http::Request<B>,
        client: SocketAddr,
        protocol: crate::metrics::Protocol,
    ) -> Arc<Self> {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let http = protocol != crate::metrics::Protocol::Websocket;
        if http {
            shared.http_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let envelope = shared.registry.insert(
            request.method(),
            request.uri(),
            client,
            protocol,
            request.headers().get(REQUEST_ID),
        );
        Arc::new(Admission {
            shared,
            envelope,
            http,
        })
    }

    /// The request's facts.
    pub(crate) fn envelope(&self) -> &Arc<Envelope> {
        &self.envelope
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.registry.remove(self.envelope.key);
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.http {
            self.shared.http_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
