//! `[watchdog]`: a tokio task (not Python, so it keeps running while the app blocks the
//! event loop) that every `interval` looks at the envelopes of the requests in flight and
//! at the loop's liveness. A request older than `timeout` is logged once as a warning,
//! older than `critical` once more as critical, with its id, path and age; the counts go
//! to the `requests_stuck` gauge. A loop that has not run for `timeout` is reported with
//! the Python stack of the loop thread (taken from Rust, see [`crate::health::Stacks`]).

use crate::health::Stacks;
use crate::registry::Level;
use crate::state::Shared;
use genro_config::Watchdog;
use genro_shared::protocol::InFlightRequest;
use std::sync::Arc;
use std::time::Duration;

/// Runs until the worker exits.
pub async fn run(shared: Arc<Shared>, stacks: Option<Arc<Stacks>>, settings: Watchdog) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loop_reported = Level::Fine;
    loop {
        tick.tick().await;
        let (news, warning, critical) = shared.registry.check(settings.timeout, settings.critical);
        if let Some(metrics) = &shared.metrics {
            metrics.set_stuck(warning, critical);
        }
        for stuck in news {
            report_request(&shared, stuck.level, &stuck.request, &settings);
        }
        let stalled = Duration::from_millis(shared.health.stalled_ms());
        let level = level_of(stalled, &settings);
        if level <= loop_reported {
            if level == Level::Fine {
                if loop_reported != Level::Fine {
                    tracing::info!("the Python event loop runs again");
                }
                loop_reported = Level::Fine;
            }
            continue;
        }
        loop_reported = level;
        let stack = match &stacks {
            Some(stacks) => {
                let stacks = stacks.clone();
                match tokio::task::spawn_blocking(move || stacks.loop_stack()).await {
                    Ok(Ok(stack)) => stack,
                    Ok(Err(err)) => format!("(stack dump failed: {err})"),
                    Err(err) => format!("(stack dump failed: {err})"),
                }
            }
            None => "(stack dumps are not available in this worker)".into(),
        };
        let message = format!(
            "the Python event loop has been blocked for {:.1}s (watchdog {} {:.0}s); {} request(s) in flight; the loop thread is at:\n{}",
            stalled.as_secs_f64(),
            if level == Level::Critical { "critical" } else { "timeout" },
            threshold(level, &settings).as_secs_f64(),
            shared.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            stack.trim_end()
        );
        if level == Level::Critical {
            tracing::error!(levelname = "CRITICAL", "{message}");
            shared.notify(serde_json::json!({
                "event": "loop_blocked",
                "blocked_seconds": stalled.as_secs_f64(),
                "pid": std::process::id(),
                "stack": stack,
            }));
        } else {
            tracing::warn!("{message}");
        }
    }
}

fn level_of(age: Duration, settings: &Watchdog) -> Level {
    if age >= settings.critical {
        Level::Critical
    } else if age >= settings.timeout {
        Level::Warning
    } else {
        Level::Fine
    }
}

fn threshold(level: Level, settings: &Watchdog) -> Duration {
    match level {
        Level::Critical => settings.critical,
        _ => settings.timeout,
    }
}

fn report_request(shared: &Shared, level: Level, r: &InFlightRequest, settings: &Watchdog) {
    let external = r
        .external_id
        .as_deref()
        .map(|e| format!(" (external id {e})"))
        .unwrap_or_default();
    let what = if r.protocol == crate::metrics::Protocol::Websocket.label() {
        // Open WebSockets are long-lived; one is stuck only while its app does not accept
        // it or does not take the client's messages.
        format!(
            "WebSocket {}{external} {} from {} (open {:.1}s) is stuck: the app has not accepted it or stopped taking its messages",
            r.request_id, r.path, r.client, r.age
        )
    } else {
        format!(
            "request {}{external} {} {} from {} ({}) still running after {:.1}s",
            r.request_id, r.method, r.path, r.client, r.protocol, r.age
        )
    };
    if level == Level::Critical {
        tracing::error!(
            levelname = "CRITICAL",
            "{what} (watchdog critical {:.0}s)",
            settings.critical.as_secs_f64()
        );
        shared.notify(serde_json::json!({
            "event": "stuck_request",
            "request_id": r.request_id,
            "external_id": r.external_id,
            "method": r.method,
            "path": r.path,
            "client": r.client,
            "age_seconds": r.age,
            "pid": std::process::id(),
        }));
    } else {
        tracing::warn!(
            "{what} (watchdog timeout {:.0}s)",
            settings.timeout.as_secs_f64()
        );
    }
}
