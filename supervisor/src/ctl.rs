//! `genro-asgi ctl`: an admin peer of the control socket. Sends one request, prints the
//! answer as a table (or JSON with `--json`), exits 0 on success and 1 on an error answer.

use bytes::BytesMut;
use genro_shared::protocol::{self, FleetStatus, Message, Role, WorkerReport};
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
        Message::WorkersReport { workers } => {
            print!("{}", workers_text(&workers));
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
        "{:>4}  {:>8}  {:>4}  {:<9} {:>9}  {:>9}  {:>9}  {:>9}  {:>9}\n",
        "slot", "pid", "gen", "state", "uptime", "requests", "in flight", "loop lag", "rss"
    ));
    let rss = |bytes: u64| match bytes {
        0 => "-".to_owned(),
        bytes => format!("{:.1}MiB", bytes as f64 / (1024.0 * 1024.0)),
    };
    for w in &status.workers {
        out.push_str(&format!(
            "{:>4}  {:>8}  {:>4}  {:<9} {:>8.1}s  {:>9}  {:>9}  {:>7.1}ms  {:>9}\n",
            w.slot,
            w.pid,
            w.generation,
            w.state,
            w.uptime,
            w.served,
            w.in_flight,
            w.loop_lag_ms,
            rss(w.rss)
        ));
    }
    if let Some(w) = &status.front {
        out.push_str(&format!(
            "{:>4}  {:>8}  {:>4}  {:<9} {:>8.1}s  {:>9}  {:>9}  {:>9}  {:>9}\n",
            "h3", w.pid, w.generation, w.state, w.uptime, w.served, w.in_flight, "-", "-"
        ));
    }
    for r in &status.respawning {
        out.push_str(&format!(
            "{:>4}  respawning in {:.1}s after {} failure(s) in a row{}\n",
            if r.front {
                "h3".to_owned()
            } else {
                r.slot.to_string()
            },
            r.respawn_in,
            r.failures,
            if r.crash_loop { " (crash loop)" } else { "" }
        ));
    }
    if !status.replaced.is_empty() {
        out.push_str("replaced (latest last):\n");
        for r in &status.replaced {
            let slot = r.slot.map_or_else(|| "h3".to_owned(), |s| s.to_string());
            out.push_str(&format!(
                "{slot:>4}  {:>8}  {:>8.1}s ago  {}\n",
                r.pid, r.ago, r.reason
            ));
        }
    }
    out
}

/// The human-readable answer to `ctl requests` or `ctl stacks`.
pub fn workers_text(workers: &[WorkerReport]) -> String {
    let mut out = String::new();
    let listing = workers.iter().any(|w| w.stacks.is_none() && w.total > 0);
    if listing {
        out.push_str(&format!(
            "{:>4}  {:>8}  {:<16}  {:>9}  {:<8}  {:<9} {:<7} {:<22} {}\n",
            "slot", "pid", "id", "age", "stuck", "protocol", "method", "client", "path"
        ));
    }
    for w in workers {
        if let Some(error) = &w.error {
            out.push_str(&format!("slot {} pid {}: {error}\n", w.slot, w.pid));
        }
        if let Some(stacks) = &w.stacks {
            out.push_str(&format!(
                "=== slot {} pid {} ===\n{stacks}\n",
                w.slot, w.pid
            ));
        }
        for r in &w.requests {
            out.push_str(&format!(
                "{:>4}  {:>8}  {:<16}  {:>8.3}s  {:<8}  {:<9} {:<7} {:<22} {}\n",
                w.slot,
                w.pid,
                r.request_id,
                r.age,
                r.stuck.as_deref().unwrap_or("-"),
                r.protocol,
                r.method,
                r.client,
                r.path
            ));
        }
        if w.total > w.requests.len() as u64 {
            out.push_str(&format!(
                "slot {} pid {}: {} more not listed\n",
                w.slot,
                w.pid,
                w.total - w.requests.len() as u64
            ));
        }
    }
    if !listing
        && workers
            .iter()
            .all(|w| w.stacks.is_none() && w.error.is_none())
    {
        out.push_str("no requests in flight\n");
    }
    if workers.iter().any(|w| !w.executor.is_empty()) {
        out.push_str(&format!(
            "\nexecutor work:\n{:>4}  {:>8}  {:<7}  {:<7}  {:>9}  {:<16}  {}\n",
            "slot", "pid", "pool", "state", "age", "request", "function"
        ));
        for w in workers {
            for t in &w.executor {
                out.push_str(&format!(
                    "{:>4}  {:>8}  {:<7}  {:<7}  {:>8.3}s  {:<16}  {}\n",
                    w.slot,
                    w.pid,
                    t.pool,
                    t.state,
                    t.age,
                    t.request_id.as_deref().unwrap_or("-"),
                    t.function
                ));
            }
        }
    }
    out
}
