//! `genro-asgi ctl`: an admin peer of the control socket. Sends one request, prints the
//! answer as a table (or JSON with `--json`), exits 0 on success and 1 on an error answer.

use bytes::BytesMut;
use genro_shared::protocol::{self, FleetStatus, Message, Role};
use std::path::Path;

/// Sends `request` to the supervisor listening on `socket`; returns the exit code.
pub fn run(socket: &Path, request: Message, json: bool) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("genro-asgi ctl: {err}");
            return 1;
        }
    };
    let answer = runtime.block_on(async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot reach the supervisor at {}: {e} (is it running? is --config the same file?)", socket.display()))?;
        let (mut read, mut write) = stream.into_split();
        let hello = Message::Hello {
            role: Role::Admin,
            slot: 0,
            pid: std::process::id(),
            generation: 0,
        };
        protocol::write_frame(&mut write, &hello).await.map_err(|e| e.to_string())?;
        protocol::write_frame(&mut write, &request).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        protocol::read_frame(&mut read, &mut buf)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the supervisor closed the connection without an answer".to_owned())
    });
    let answer = match answer {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("genro-asgi ctl: {err}");
            return 1;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return i32::from(matches!(answer, Message::Error { .. }));
    }
    match answer {
        Message::StatusReport { status } => {
            print!("{}", table(&status));
            0
        }
        Message::Done { message } => {
            println!("{message}");
            0
        }
        Message::Error { message } => {
            eprintln!("genro-asgi ctl: {message}");
            1
        }
        other => {
            eprintln!("genro-asgi ctl: unexpected answer {}", other.kind());
            1
        }
    }
}

/// The human-readable status table.
pub fn table(status: &FleetStatus) -> String {
    let mut out = format!(
        "supervisor pid {}  {}{}  up {:.1}s  restarts {}\n",
        status.pid,
        status.phase,
        if status.reloading { " (reloading)" } else { "" },
        status.uptime,
        status.restarts
    );
    out.push_str(&format!(
        "{:>4}  {:>8}  {:>4}  {:<9} {:>9}  {:>9}  {:>9}\n",
        "slot", "pid", "gen", "state", "uptime", "requests", "in flight"
    ));
    for w in &status.workers {
        out.push_str(&format!(
            "{:>4}  {:>8}  {:>4}  {:<9} {:>8.1}s  {:>9}  {:>9}\n",
            w.slot, w.pid, w.generation, w.state, w.uptime, w.served, w.in_flight
        ));
    }
    out
}
