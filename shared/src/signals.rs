//! The child processes' signal handling (workers and the HTTP/3 front alike).

use tokio::sync::watch;

/// SIGTERM / SIGINT turn `stop` true (a drain); a second one exits at once. SIGUSR1
/// reopens the log file.
pub async fn stop_loop(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut seen = false;
    loop {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
            _ = usr1.recv() => {
                if let Err(err) = crate::logfile::reopen() {
                    tracing::error!("SIGUSR1: cannot reopen the log file: {err}");
                }
                continue;
            }
        }
        if seen {
            tracing::warn!("second stop signal: exiting now");
            std::process::exit(crate::exit::OK);
        }
        seen = true;
        stop.send_replace(true);
    }
}
