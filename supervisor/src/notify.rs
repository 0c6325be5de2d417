//! systemd's notify protocol (`Type=notify`): datagrams to `$NOTIFY_SOCKET` saying READY,
//! RELOADING, STOPPING, STATUS and WATCHDOG keep-alives. Without the variable every call
//! is a no-op, so the supervisor calls it unconditionally.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// A connection to systemd's notify socket, if there is one.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, Target)>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = path.as_encoded_bytes();
            let target = match bytes.first() {
                Some(b'@') => Target::Abstract(bytes[1..].to_vec()),
                Some(b'/') => Target::Path(PathBuf::from(&path)),
                _ => return None,
            };
            UnixDatagram::unbound().ok().map(|socket| (socket, target))
        });
        let for_us = env_number::<u32>("WATCHDOG_PID").is_none_or(|pid| pid == std::process::id());
        let watchdog = env_number::<u64>("WATCHDOG_USEC")
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// How often to send `WATCHDOG=1` (half the watchdog timeout), if systemd asked.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends one state update, e.g. `"READY=1\nSTATUS=serving"`. Failures are logged once
    /// per call and otherwise ignored: systemd being gone must not stop the server.
    pub fn send(&self, state: &str) {
        let Some((socket, target)) = &self.target else {
            return;
        };
        let result = match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
        };
        if let Err(err) = result {
            tracing::warn!("sd_notify: {err}");
        }
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ requires.
    pub fn reloading(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the valid timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"
        ));
    }
}

/// A number systemd passed in the environment (`WATCHDOG_USEC`, `LISTEN_FDS`, ...), or
/// `None` when unset or not a number.
pub(crate) fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}
