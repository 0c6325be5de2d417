//! Binding the listening sockets: one SO_REUSEPORT socket per worker slot, owned by the
//! supervisor for its whole life, so a respawned worker inherits the very socket (and the
//! accept queue) of its predecessor.

use crate::notify::env_number;
use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `host:port` to the address to bind.
pub fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("[server] host {host:?} does not resolve"))?
        .next()
        .with_context(|| format!("[server] host {host:?} resolves to no address"))
}

/// Binds `count` SO_REUSEPORT sockets on `addr`. With port 0, the first socket picks a free
/// port and the others join it.
pub fn bind_slots(addr: SocketAddr, count: usize, backlog: u32) -> anyhow::Result<Vec<Socket>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = bind_one(addr, backlog).with_context(|| format!("cannot listen on {addr}"))?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()?
                .as_socket()
                .context("bound socket has no IP address")?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

/// `[server] uds`: the listening Unix socket every worker accepts on, with `mode`. A
/// socket file nobody listens on (a killed server's) is replaced; a live one, or a file
/// that is not a socket, is an error. The file is removed when the [`UdsFile`] drops.
pub fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    backlog: u32,
) -> anyhow::Result<(Socket, UdsFile)> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                // Nobody listens: what a killed server leaves.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Ok(_) => anyhow::bail!("[server] uds {shown}: a server is already listening on it"),
                Err(err) => anyhow::bail!("[server] uds {shown}: an existing socket that may be live ({err}); not replacing it"),
            }
            std::fs::remove_file(path)
                .with_context(|| format!("[server] uds {shown}: cannot remove the stale socket"))?;
        }
        Ok(_) => {
            anyhow::bail!("[server] uds {shown}: exists and is not a socket; not replacing it")
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("[server] uds {shown}")),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    // The file gets its mode as it is created, from the umask: a chmod by path afterwards
    // would follow a symlink swapped in meanwhile. The supervisor is starting: no other
    // thread creates files now.
    // SAFETY: umask has no preconditions.
    let previous = unsafe { libc::umask(!mode & 0o777) };
    let bound = socket.bind(&socket2::SockAddr::unix(path)?);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    bound.with_context(|| format!("[server] uds {shown}: cannot bind"))?;
    let file = UdsFile(path.to_owned());
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_cloexec(true)?;
    Ok((socket, file))
}

/// The `[server] uds` socket file, removed on drop (the supervisor's exit).
#[derive(Debug)]
pub struct UdsFile(std::path::PathBuf);

impl Drop for UdsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the HTTP/3 front's UDP socket on `addr`, asking for 4 MiB socket buffers (QUIC
/// at speed needs more than the default; the kernel caps them at `net.core.rmem_max` /
/// `wmem_max`). The supervisor keeps it for the front's whole life, so datagrams that
/// arrive while a front restarts wait in its queue.
pub fn bind_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("creating the UDP socket")?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind udp {addr} for HTTP/3"))?;
    Ok(socket.into())
}

/// The listening socket passed by systemd socket activation (`LISTEN_PID` = our pid,
/// `LISTEN_FDS` >= 1: the first fd, 3, is used), or `None`. The variables are removed so
/// the workers do not see them.
pub fn activated() -> anyhow::Result<Option<Socket>> {
    let for_us = env_number::<u32>("LISTEN_PID").is_some_and(|pid| pid == std::process::id());
    let count = env_number::<u32>("LISTEN_FDS").unwrap_or(0);
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Called at start-up on the main thread, before the runtime or any child exists.
        std::env::remove_var(name);
    }
    if !for_us || count == 0 {
        return Ok(None);
    }
    const FIRST_FD: i32 = 3;
    // SAFETY: systemd's protocol hands us fd 3 open; we take ownership of it once.
    let socket = unsafe { <Socket as std::os::fd::FromRawFd>::from_raw_fd(FIRST_FD) };
    // Check what we were given: a listening TCP socket.
    let is_stream = socket
        .r#type()
        .context("LISTEN_FDS: fd 3 is not a socket")?
        == Type::STREAM;
    let local = socket.local_addr().context("LISTEN_FDS: fd 3")?;
    if !is_stream || local.as_socket().is_none() {
        anyhow::bail!("LISTEN_FDS: fd 3 is not a TCP stream socket");
    }
    socket.set_cloexec(true)?;
    Ok(Some(socket))
}

/// Serves one of the supervisor's own TCP listeners (metrics, debugger) until the process
/// exits: at most `max` connections at once (more wait in the listen queue), each handed
/// to `serve` on a task of its own. A failed accept is logged under `what` and retried
/// after 100 ms.
pub async fn serve_bounded<F, Fut>(
    listener: tokio::net::TcpListener,
    max: usize,
    what: &str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("{what}: accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let connection = serve(stream, peer);
        tokio::spawn(async move {
            let _permit = permit;
            connection.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_share_one_port() {
        let sockets = bind_slots("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        let ports: Vec<u16> = sockets
            .iter()
            .map(|s| s.local_addr().unwrap().as_socket().unwrap().port())
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }

    #[test]
    fn ipv6_host_binds() {
        // Loopback IPv6 may be disabled in some sandboxes; only check when it resolves.
        if let Ok(addr) = resolve("::1", 0) {
            if let Ok(sockets) = bind_slots(addr, 2, 16) {
                assert!(sockets[0]
                    .local_addr()
                    .unwrap()
                    .as_socket()
                    .unwrap()
                    .is_ipv6());
            }
        }
    }
}
