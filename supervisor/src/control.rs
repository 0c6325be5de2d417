//! The supervisor's control socket: `<run_dir>/control.sock`, mode 0600, peers checked with
//! SO_PEERCRED. Each connection's frames become [`Incoming`] events for the fleet loop;
//! a malformed frame gets an error reply and the connection is closed.

use bytes::BytesMut;
use genro_shared::protocol::{self, Message, Role};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// An event from a control connection.
#[derive(Debug)]
pub enum Incoming {
    /// A worker (or the HTTP/3 front) said hello; `writer` sends it messages.
    Hello {
        /// Its pid.
        pid: u32,
        /// Messages to the worker.
        writer: mpsc::Sender<Message>,
    },
    /// A message from a worker.
    Message {
        /// Its pid.
        pid: u32,
        /// The message.
        message: Message,
    },
    /// A request from `genro-asgi ctl`; the answer goes to `reply`.
    Admin {
        /// The request.
        request: Message,
        /// Where the answer goes.
        reply: oneshot::Sender<Message>,
    },
}

/// Binds the control socket.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts control connections forever, sending their events to `events`.
pub async fn serve(listener: UnixListener, events: mpsc::Sender<Incoming>) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == uid || cred.uid() == 0 => {
                let peer = cred.pid().map(|p| p as u32);
                tokio::spawn(connection(stream, peer, events.clone()));
            }
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: refused a peer of another user")
            }
            Err(err) => tracing::warn!("control socket: cannot read peer credentials: {err}"),
        }
    }
}

async fn connection(stream: UnixStream, peer: Option<u32>, events: mpsc::Sender<Incoming>) {
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::new();
    let pid = match protocol::read_frame(&mut read, &mut buf).await {
        Ok(Some(Message::Hello {
            role: Role::Worker | Role::Front,
            pid,
            ..
        })) if peer.is_none_or(|peer| peer == pid) => pid,
        Ok(Some(Message::Hello {
            role: Role::Worker | Role::Front,
            pid,
            ..
        })) => {
            let message = format!(
                "hello says pid {pid} but the peer is pid {}",
                peer.unwrap_or(0)
            );
            tracing::warn!("control socket: {message}");
            reply_error(&mut write, message).await;
            return;
        }
        Ok(Some(Message::Hello {
            role: Role::Admin, ..
        })) => return admin(read, write, buf, events).await,
        Ok(None) => return,
        Ok(Some(other)) => {
            reply_error(
                &mut write,
                format!("expected hello first, got {}", other.kind()),
            )
            .await;
            return;
        }
        Err(err) => {
            tracing::warn!("control socket: {err}");
            reply_error(&mut write, err.to_string()).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let errors = tx.clone();
    if events
        .send(Incoming::Hello { pid, writer: tx })
        .await
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let last = matches!(message, Message::Error { .. });
            // After an error frame the connection is over: dropping `write` closes it.
            if protocol::write_frame(&mut write, &message).await.is_err() || last {
                return;
            }
        }
    });
    loop {
        match protocol::read_frame(&mut read, &mut buf).await {
            Ok(Some(message)) => {
                if events
                    .send(Incoming::Message { pid, message })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(pid, "control socket: {err}; closing the connection");
                let _ = errors
                    .send(Message::Error {
                        message: err.to_string(),
                    })
                    .await;
                return;
            }
        }
    }
}

/// Serves an admin peer: one request, one answer, until it hangs up.
async fn admin(
    mut read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut buf: BytesMut,
    events: mpsc::Sender<Incoming>,
) {
    loop {
        let request = match protocol::read_frame(&mut read, &mut buf).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(err) => {
                reply_error(&mut write, err.to_string()).await;
                return;
            }
        };
        let answer = match request {
            Message::Status
            | Message::Reload
            | Message::Drain
            | Message::Stop
            | Message::Requests
            | Message::Stacks
            | Message::Scale { .. } => {
                let (reply, answer) = oneshot::channel();
                if events
                    .send(Incoming::Admin { request, reply })
                    .await
                    .is_err()
                {
                    return;
                }
                answer.await.unwrap_or(Message::Error {
                    message: "the supervisor is exiting".into(),
                })
            }
            other => Message::Error {
                message: format!(
                    "{} is not an admin request (status, reload, drain, stop, scale, requests, stacks)",
                    other.kind()
                ),
            },
        };
        let close = matches!(answer, Message::Error { .. });
        if protocol::write_frame(&mut write, &answer).await.is_err() || close {
            return;
        }
    }
}

/// Answers with an error frame; the caller then closes the connection.
async fn reply_error(write: &mut tokio::net::unix::OwnedWriteHalf, message: String) {
    let _ = protocol::write_frame(write, &Message::Error { message }).await;
}
