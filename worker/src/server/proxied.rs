//! `[server] proxy_protocol` on the slot's TCP listener: who must send a PROXY header,
//! and reading it off the raw socket before TLS and HTTP see a byte. The header's source
//! address then replaces the socket's peer for everything downstream (scope `client`,
//! access log, `ctl requests`, and the peer that forwarding headers are judged against).
//!
//! 1. a peer outside `forwarded_allow_ips` is refused at accept (closed, counted);
//! 2. a trusted peer's connection must begin with a header of an accepted version, whole
//!    within `header_read_timeout`; anything else closes it, counted by reason;
//! 3. TLS or HTTP detection then start on the first byte after the header.

use crate::metrics::ProxyRefusal;
use crate::proxy_protocol::{parse, Accept, Error, Header, Parsed, Version, MAX_LEN};
use genro_config::net::Trusted;
use genro_config::Config;
use genro_config::ProxyProtocol;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The listener's PROXY protocol policy, when `[server] proxy_protocol` is not `off`.
#[derive(Debug)]
pub(super) struct Gate {
    /// The versions accepted.
    accept: Accept,
    /// The balancers that must send a header: `forwarded_allow_ips`.
    trusted: Trusted,
    /// `[limits] header_read_timeout`: the whole header must arrive within it.
    timeout: Duration,
}

impl Gate {
    /// The policy of `config`, or `None` when the setting is `off`.
    pub(super) fn new(config: &Config) -> anyhow::Result<Option<Gate>> {
        let accept = match config.server.proxy_protocol {
            ProxyProtocol::Off => return Ok(None),
            ProxyProtocol::V1 => Accept::V1,
            ProxyProtocol::V2 => Accept::V2,
            ProxyProtocol::Auto => Accept::Both,
        };
        let trusted = Trusted::parse(&config.server.forwarded_allow_ips)
            .map_err(|bad| anyhow::anyhow!("[server] forwarded_allow_ips: {bad}"))?;
        Ok(Some(Gate {
            accept,
            trusted,
            timeout: config.limits.header_read_timeout,
        }))
    }

    /// Whether a connection from `peer` may be served at all (step 1).
    pub(super) fn admits(&self, peer: SocketAddr) -> bool {
        self.trusted.contains(peer.ip())
    }

    /// Reads the header off `stream` (step 2) and returns the connection's client: the
    /// header's source, or `peer` when the header names none (v2 LOCAL, UNSPEC or Unix;
    /// v1 UNKNOWN).
    pub(super) async fn client(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, Refused> {
        match tokio::time::timeout(self.timeout, read_header(stream, self.accept)).await {
            Ok(Ok(header)) => Ok(header.source().unwrap_or(peer)),
            Ok(Err(refused)) => Err(refused),
            Err(_) => Err(Refused::Timeout),
        }
    }
}

/// Why a connection was closed before TLS or HTTP.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refused {
    /// The peer is not in `forwarded_allow_ips` (step 1).
    #[error("the peer is not in [server] forwarded_allow_ips, so it may not connect when proxy_protocol is on")]
    Untrusted,
    /// The bytes are not an accepted header.
    #[error(transparent)]
    Header(#[from] Error),
    /// The peer closed the connection before the header was complete.
    #[error("the connection closed inside its PROXY protocol header")]
    Closed,
    /// Reading failed (a reset, mostly).
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[source] std::io::Error),
    /// The header was not complete within `header_read_timeout`.
    #[error("no complete PROXY protocol header within header_read_timeout")]
    Timeout,
}

impl Refused {
    /// The metric label.
    pub(super) fn reason(&self) -> ProxyRefusal {
        match self {
            Refused::Untrusted => ProxyRefusal::Untrusted,
            Refused::Header(Error::Signature) => ProxyRefusal::Missing,
            Refused::Header(Error::Version(_)) => ProxyRefusal::Version,
            Refused::Header(Error::Oversized(_)) => ProxyRefusal::Oversized,
            Refused::Header(Error::Malformed { .. }) => ProxyRefusal::Malformed,
            Refused::Closed | Refused::Io(_) => ProxyRefusal::Truncated,
            Refused::Timeout => ProxyRefusal::Timeout,
        }
    }
}

/// Reads exactly the header's bytes: what follows stays in the kernel's receive queue for
/// TLS or hyper.
///
/// Peek, not a replay buffer: the stream stays a plain `TcpStream`, so the TLS acceptor,
/// hyper's h2c preface detection and `sendfile` (which needs the socket's own fd) work
/// unchanged, with no wrapper on the hot path of every later read. Peeking alone would spin
/// on a partial header (the same bytes again, at once), so each round consumes what it
/// peeked when the parser says `Incomplete`, which it says only while every byte seen is a
/// header byte; the next peek then waits for new bytes. A header costs two or three system
/// calls, once per connection.
async fn read_header(stream: &mut TcpStream, accept: Accept) -> Result<Header, Refused> {
    let mut buf = vec![0; MAX_LEN];
    let mut taken = 0;
    loop {
        if taken == buf.len() {
            // `parse` is never Incomplete at MAX_LEN bytes; this keeps a zero-length peek
            // (which would read as end of stream) impossible whatever it says.
            return Err(Error::Oversized(Version::V2).into());
        }
        let seen = stream.peek(&mut buf[taken..]).await.map_err(Refused::Io)?;
        if seen == 0 {
            return Err(Refused::Closed);
        }
        match parse(&buf[..taken + seen], accept)? {
            Parsed::Done { header, consumed } => {
                stream
                    .read_exact(&mut buf[taken..consumed])
                    .await
                    .map_err(Refused::Io)?;
                return Ok(header);
            }
            Parsed::Incomplete => {
                stream
                    .read_exact(&mut buf[taken..taken + seen])
                    .await
                    .map_err(Refused::Io)?;
                taken += seen;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn reads_the_header_in_pieces_and_leaves_the_rest() {
        let (mut client, mut server) = pair().await;
        let writer = tokio::spawn(async move {
            for piece in [
                &b"PRO"[..],
                b"XY TCP4 192.0.2.7 ",
                b"192.0.2.8 1 2\r",
                b"\nGET /",
            ] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let header = read_header(&mut server, Accept::Both).await.unwrap();
        assert_eq!(header.source(), Some("192.0.2.7:1".parse().unwrap()));
        let _client = writer.await.unwrap();
        let mut rest = [0; 5];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /");
    }

    #[tokio::test]
    async fn a_close_inside_the_header_is_truncated() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21").await.unwrap();
        drop(client);
        let refused = read_header(&mut server, Accept::V2).await.unwrap_err();
        assert_eq!(refused.reason(), ProxyRefusal::Truncated);
    }

    #[tokio::test]
    async fn garbage_is_refused_without_waiting() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let refused = read_header(&mut server, Accept::V1).await.unwrap_err();
        assert_eq!(refused.reason(), ProxyRefusal::Missing);
    }
}
