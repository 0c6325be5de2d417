//! The spawner: binds each slot's listening socket and starts the children on it — the
//! workers (`<python> -m genro_asgi_worker`, the slot's socket on fd 3, a private front
//! socket on fd 4 when HTTP/3 is on) and the HTTP/3 front (this binary, `front`). It owns
//! the sockets and how children are started ([`Launch`]), kept across a reload until it
//! succeeded so a failed one can be undone.

use crate::fleet::{Fleet, WorkerState};
use crate::interpreter::Interpreter;
use anyhow::Context;
use genro_config::Config;
use genro_shared::protocol::SlotSocket;
use socket2::Socket;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// A worker's private Unix socket for the HTTP/3 front (mode 0600). The supervisor
/// hands the listener to the worker and keeps only the path, removed when this is
/// dropped (the worker exited): one socket per worker process, so the front moves to a
/// slot's new worker by its path, and a dead worker's socket refuses at once.
pub(crate) struct FrontSocket {
    path: PathBuf,
}

impl FrontSocket {
    fn bind(path: PathBuf) -> std::io::Result<(Self, std::os::unix::net::UnixListener)> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let socket = FrontSocket { path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
        Ok((socket, listener))
    }
}

impl Drop for FrontSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts worker processes; owns the slot sockets.
pub(crate) struct Spawner {
    pub(crate) exe: PathBuf,
    /// How children are started (set from the configuration, replaced by a reload).
    pub(crate) launch: Launch,
    /// How children were started before the reload in progress: kept until the fleet
    /// says it completed ([`Spawner::commit`]) or failed ([`Spawner::rollback`]).
    pub(crate) previous: Option<Launch>,
    pub(crate) addr: SocketAddr,
    pub(crate) backlog: u32,
    pub(crate) control_path: PathBuf,
    pub(crate) sockets: Vec<Option<Socket>>,
    /// The socket passed by systemd (LISTEN_FDS), shared by all slots.
    pub(crate) activated: Option<Socket>,
    /// Each worker's private Unix socket for the HTTP/3 front, by pid (`[http3]` on).
    pub(crate) front_sockets: HashMap<u32, FrontSocket>,
    /// Where the front sockets live (`[http3]` on), else `None`.
    pub(crate) front_dir: Option<PathBuf>,
    /// The HTTP/3 front's UDP socket (`[http3]` on), kept for its respawns.
    pub(crate) udp: Option<std::net::UdpSocket>,
    /// Its port, kept after a stop let go of the socket.
    pub(crate) udp_port: Option<u16>,
}

/// How children are started. A reload keeps the previous one until it succeeded, to undo
/// it if it fails: a worker of the old generation respawned later starts as it did before.
#[derive(Clone)]
pub(crate) struct Launch {
    /// The interpreter workers run in (`<python> -m genro_asgi_worker`).
    pub(crate) python: Interpreter,
    /// The effective configuration, as the children read it.
    pub(crate) config_json: String,
    /// ` [name]` for process titles, or empty.
    pub(crate) title: String,
    pub(crate) secret_key: Option<String>,
}

impl Launch {
    pub(crate) fn new(config: &Config, python: Interpreter) -> anyhow::Result<Self> {
        Ok(Launch {
            python,
            config_json: serde_json::to_string(config).context("serializing the configuration")?,
            title: match config.application.name.as_str() {
                "" => String::new(),
                name => format!(" [{name}]"),
            },
            secret_key: config.application.secret_key.clone(),
        })
    }
}

impl Spawner {
    /// Starts children with `launch` from now on, keeping the previous way until the
    /// reload completed or failed; true when the interpreter changed.
    pub(crate) fn stage(&mut self, launch: Launch) -> bool {
        let previous = std::mem::replace(&mut self.launch, launch);
        let changed = previous.python.program() != self.launch.python.program();
        self.previous = Some(previous);
        changed
    }

    /// The reload completed: its way to start children stays.
    pub(crate) fn commit(&mut self) {
        self.previous = None;
    }

    /// The reload failed: children start as before it (a worker of the old generation
    /// respawned later starts as it did before).
    pub(crate) fn rollback(&mut self) {
        if let Some(previous) = self.previous.take() {
            self.launch = previous;
        }
    }

    pub(crate) fn bind(&mut self, slot: usize) -> anyhow::Result<()> {
        let socket = match &self.activated {
            // Socket activation: every slot shares the socket systemd passed.
            Some(shared) => shared.try_clone()?,
            None => crate::sockets::bind_slots(self.addr, 1, self.backlog)?
                .pop()
                .context("bound no socket")?,
        };
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        self.sockets[slot] = Some(socket);
        Ok(())
    }

    /// Starts a worker for `slot`, with its front socket when HTTP/3 is on.
    pub(crate) fn spawn(
        &mut self,
        slot: usize,
        generation: u64,
    ) -> std::io::Result<tokio::process::Child> {
        let fd = match self.sockets.get(slot) {
            Some(Some(socket)) => socket.as_raw_fd(),
            _ => {
                return Err(std::io::Error::other(format!(
                    "slot {slot} has no listening socket"
                )))
            }
        };
        let mut fds = vec![(fd, genro_shared::LISTEN_FD)];
        let front = match &self.front_dir {
            Some(dir) => {
                let path = dir.join(format!("slot-{slot}-{generation}.sock"));
                let (socket, listener) = FrontSocket::bind(path)?;
                fds.push((listener.as_raw_fd(), genro_shared::FRONT_FD));
                // The listener goes to the worker; ours closes when this scope ends.
                Some((socket, listener))
            }
            None => None,
        };
        // The worker's title is set by the worker itself (`--title`): a custom argv[0] would
        // make CPython lose the virtualenv's sys.prefix.
        let title = format!("genro-asgi: worker {slot}{}", self.launch.title);
        let args = [
            "-m",
            crate::interpreter::WORKER_MODULE,
            "--slot",
            &slot.to_string(),
            "--generation",
            &generation.to_string(),
            "--title",
            &title,
        ];
        let python = self.launch.python.program().to_owned();
        let child = self.launch(&python, None, &args, fds)?;
        if let (Some((socket, _listener)), Some(pid)) = (front, child.id()) {
            self.front_sockets.insert(pid, socket);
        }
        Ok(child)
    }

    /// Starts the HTTP/3 front with the UDP socket on [`genro_shared::LISTEN_FD`].
    pub(crate) fn spawn_front(&self, generation: u64) -> std::io::Result<tokio::process::Child> {
        let Some(udp) = &self.udp else {
            return Err(std::io::Error::other("no UDP socket for the HTTP/3 front"));
        };
        let fds = vec![(udp.as_raw_fd(), genro_shared::LISTEN_FD)];
        let args = ["front", "--generation", &generation.to_string()];
        let title = format!("genro-asgi: http3 front{}", self.launch.title);
        self.launch(&self.exe, Some(title), &args, fds)
    }

    /// Starts `program` as a child (with `arg0` as its process title when given): `fds`
    /// are (ours, theirs) descriptors to pass.
    fn launch(
        &self,
        program: &Path,
        arg0: Option<String>,
        args: &[&str],
        fds: Vec<(i32, i32)>,
    ) -> std::io::Result<tokio::process::Child> {
        let mut command = std::process::Command::new(program);
        if let Some(arg0) = arg0 {
            command.arg0(arg0);
        }
        if let Some(secret) = &self.launch.secret_key {
            // The app reads its secret from the environment, whatever source set it.
            command.env("GENRO_ASGI_APPLICATION_SECRET_KEY", secret);
        }
        command
            .args(args)
            .env(genro_shared::ENV_CONFIG, &self.launch.config_json)
            .env(genro_shared::ENV_CONTROL, &self.control_path)
            .stdin(std::process::Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls are made: dup2 puts
        // each socket on the agreed fd (clearing close-on-exec), setpgid keeps the
        // terminal's signals for the supervisor alone, and prctl asks the kernel to stop
        // the child if the supervisor dies.
        unsafe {
            command.pre_exec(move || {
                for &(ours, theirs) in &fds {
                    if libc::dup2(ours, theirs) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        tokio::process::Command::from(command)
            .kill_on_drop(false)
            .spawn()
    }

    /// Where the front forwards: the socket of every active slot's ready worker (not a
    /// starting one, nor one about to drain).
    pub(crate) fn front_slots(&self, fleet: &Fleet) -> Vec<SlotSocket> {
        fleet
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_active())
            .filter_map(|(slot, s)| {
                let worker = s
                    .worker
                    .as_ref()
                    .filter(|w| w.state == WorkerState::Ready)?;
                Some(SlotSocket {
                    slot: slot as u32,
                    path: self
                        .front_sockets
                        .get(&worker.pid)?
                        .path
                        .to_string_lossy()
                        .into_owned(),
                })
            })
            .collect()
    }
}

/// Sends `signal` to one of our children (`0`: a child whose pid was never known).
pub(crate) fn signal_pid(pid: u32, signal: i32) {
    if pid != 0 {
        // SAFETY: kill has no memory-safety preconditions; pid is one of our children.
        unsafe { libc::kill(pid as i32, signal) };
    }
}
