//! Code shared by the genro-asgi processes: the control-plane protocol (a sans-IO codec
//! plus thin async helpers), the process exit codes, the TLS server configuration from
//! `[ssl]`, and the names of the internal environment variables the supervisor uses to
//! hand work to its children.
#![warn(missing_docs, missing_debug_implementations)]

pub mod access;
pub mod child;
pub mod clock;
pub mod codec_check;
pub mod exit;
pub mod h2_facts;
pub mod logfile;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod recycle;
pub mod signals;
pub mod sync;
pub mod tls;
pub mod tls_facts;

/// Environment variable carrying the effective configuration (JSON) to a child.
pub const ENV_CONFIG: &str = "GENRO_ASGI_INTERNAL_CONFIG";
/// Environment variable carrying the path of the supervisor's control socket.
pub const ENV_CONTROL: &str = "GENRO_ASGI_INTERNAL_CONTROL";
/// File descriptor number on which a worker finds its slot's listening socket (and the
/// HTTP/3 front its UDP socket).
pub const LISTEN_FD: i32 = 3;
/// File descriptor number on which a worker finds its slot's private Unix socket (the
/// HTTP/3 front's way in), when HTTP/3 is on.
pub const FRONT_FD: i32 = 4;
/// Request header the HTTP/3 front sets to the QUIC peer's `ip:port` on the private Unix
/// socket. Workers read it only there (a TCP client cannot set it); the front drops any
/// copy a client sent.
pub const CLIENT_HEADER: &str = "x-genro-asgi-client";
/// The client address of a connection on the `[server] uds` socket, whose peer has no IP
/// address (until a proxy header names the client): `None` in the scope, `unix:` in logs.
pub const UNIX_PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A client address as logs show it: `ip:port`, or `unix:` for [`UNIX_PEER`].
pub fn peer_text(client: std::net::SocketAddr) -> String {
    if client == UNIX_PEER {
        "unix:".to_owned()
    } else {
        client.to_string()
    }
}

/// The first error of type `T` in an error's source chain (hyper, for one, keeps h2's
/// error code there).
pub fn find_source<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// One line for an error and its causes (`a: b: c`); hyper's own message names only the
/// kind ("http2 error") and keeps the detail in the source chain.
pub fn describe_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}
