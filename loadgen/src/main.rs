//! genro-loadgen: a small load generator for genro-asgi's reload and drain tests. It keeps
//! `--connections` connections busy, over HTTP/1.1 keep-alive, HTTP/2 (h2c, prior
//! knowledge) or HTTP/3 (QUIC, `--ca FILE` or `--insecure`), opens a new connection whenever
//! the server closes one (`Connection: close`, GOAWAY), and prints one JSON report. Every
//! request carries `x-load-id: <connection>-<seq>`.
//!
//! Each request ends in exactly one final outcome:
//! - `ok`: a complete response, body read to the end (counted per status code);
//! - `failed`: anything else once the request was handed to a connection (reset, truncated
//!   body, timeout): the server may or may not have run it;
//! - `unsent`: never processed, and the run ended before it could be re-sent.
//!
//! An attempt the protocol guarantees the server did not process is counted `retried` and
//! sent again, with the same id, on a new connection (`classify.rs`):
//! - HTTP/1.1 and HTTP/2: hyper never wrote it (`Error::is_canceled`), or the server refused
//!   the stream (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7), or the request failed with the
//!   server's graceful GOAWAY: assumed to be a stream above its last-stream-id (RFC 9113
//!   §6.8), since h2 and hyper do not say; the tests' app-side ledger checks that no
//!   re-sent request ran twice;
//! - HTTP/3: the server reset or stopped the stream with H3_REQUEST_REJECTED (RFC 9114
//!   §4.1.1; an h3 server does so for streams above its GOAWAY's id), or the request's
//!   stream could not be opened because the server's GOAWAY had arrived or the connection
//!   had ended (RFC 9114 §5.2).
//!
//! Exit code 0 even when requests failed (the caller judges the report), 2 on bad
//! arguments, 1 on an internal error.

mod args;
mod classify;
mod drive;
mod quic;
mod tally;
mod tls;
mod ws;

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap itself exits with code 2 on a malformed command line.
    let plan = match args::Args::parse().plan() {
        Ok(plan) => plan,
        Err(err) => {
            eprintln!("genro-loadgen: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(plan) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("genro-loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(plan: args::Plan) -> anyhow::Result<serde_json::Value> {
    let log = plan
        .log
        .as_ref()
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("--log {}", path.display()))
        })
        .transpose()?;
    // One thread: the load generator shares the machine with the server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if matches!(plan.protocol, args::Protocol::Ws | args::Protocol::Ws3) {
        return runtime.block_on(ws::run(plan));
    }
    runtime.block_on(drive::run(plan, log))
}
