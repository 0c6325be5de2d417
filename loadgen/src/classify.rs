//! Which failed attempts are safe to re-send: those the protocol guarantees the server did
//! not process. Everything else that goes wrong after a request was handed to the
//! connection is a failure.
//!
//! HTTP/2 (hyper + h2): hyper's `is_canceled`, a RST_STREAM REFUSED_STREAM, and the error
//! of the server's graceful GOAWAY (NO_ERROR). The last one is an assumption, not a
//! certainty: h2 gives the GOAWAY's error to the streams above its last-stream-id (not
//! processed, RFC 9113 §6.8, which clients re-send) but also to anything that touches the
//! connection afterwards, and neither crate tells which stream the error is about. Counting
//! those as failed would report requests the server never saw as failures (measured: every
//! one of them absent from the app's ledger), so they are re-sent like a compliant client
//! would, and `tests/test_load.py` checks with the app-side ledger that no re-sent request
//! ran twice — which is what would show if the assumption were ever wrong.
//!
//! HTTP/3 (h3 0.0.8): a stream reset or STOP_SENDING with H3_REQUEST_REJECTED (RFC 9114
//! §4.1.1), and, while the request was being opened (its HEADERS frame not yet wholly
//! written), the server's GOAWAY or the connection's end. h3 does not tell a client the
//! GOAWAY's stream id; an h3 server rejects the streams above it with H3_REQUEST_REJECTED.

pub use genro_shared::h2_facts::H2Facts;
use h3::error::{Code, StreamError};

/// Why an attempt may be re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// The request never left: hyper never handed it to the connection
    /// (`hyper::Error::is_canceled`), or the HTTP/3 connection ended before its HEADERS frame
    /// was wholly written.
    NotSent,
    /// The server reset the HTTP/2 stream with REFUSED_STREAM, which promises that no
    /// application processing happened (RFC 9113 §8.7).
    RefusedStream,
    /// The server reset or stopped the HTTP/3 stream with H3_REQUEST_REJECTED, which promises
    /// the same (RFC 9114 §4.1.1).
    RequestRejected,
    /// A graceful GOAWAY: HTTP/2's error for a stream the server did not take (RFC 9113
    /// §6.8; assumed, see the module comment), or HTTP/3's refusal to open a stream after
    /// the server's GOAWAY arrived (RFC 9114 §5.2).
    GoAway,
}

impl RetryCause {
    /// Every cause, in report order.
    pub const ALL: [RetryCause; 4] = [
        RetryCause::NotSent,
        RetryCause::RefusedStream,
        RetryCause::RequestRejected,
        RetryCause::GoAway,
    ];

    /// The name used in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            RetryCause::NotSent => "not_sent",
            RetryCause::RefusedStream => "refused_stream",
            RetryCause::RequestRejected => "request_rejected",
            RetryCause::GoAway => "goaway",
        }
    }
}

/// Whether an attempt that ended with this HTTP/2 error, before any response head
/// arrived, was not processed by the server: the peer's REFUSED_STREAM, or its graceful
/// GOAWAY (see the module comment for why the latter is assumed).
pub fn h2_retry_cause(facts: H2Facts) -> Option<RetryCause> {
    if facts.refused() {
        Some(RetryCause::RefusedStream)
    } else if facts.graceful_go_away() {
        Some(RetryCause::GoAway)
    } else {
        None
    }
}

/// Classifies an error from sending a request or awaiting its response head:
/// `Some(cause)` when the request may be re-sent, `None` when it failed.
pub fn retry_cause(err: &hyper::Error) -> Option<RetryCause> {
    if err.is_canceled() {
        return Some(RetryCause::NotSent);
    }
    H2Facts::find(err).and_then(h2_retry_cause)
}

/// How far an HTTP/3 attempt had got when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H3Stage {
    /// Opening the stream and writing the HEADERS frame (`SendRequest::send_request`). Until
    /// that returns, the frame is not wholly written (h3-quinn's `poll_ready`), so the server
    /// cannot have the request head.
    Opening,
    /// Sending the body or receiving the response, before the response head arrived.
    Exchange,
}

/// What an HTTP/3 error says, as far as retrying goes (what `h3::error::StreamError`
/// tells), kept apart so the decision is a pure function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H3Facts {
    /// h3 refused to open a stream because the server's GOAWAY had arrived
    /// (`StreamError::RemoteClosing`).
    GoAwayReceived,
    /// The connection ended: closed by either side, lost, or idle.
    ConnectionEnded,
    /// The peer reset the stream (our receiving side) or sent STOP_SENDING (our sending
    /// side) with this code.
    Terminated(u64),
    /// Anything else: local limits, malformed messages, unknown QUIC errors.
    Other,
}

impl H3Facts {
    /// The facts of an h3 error.
    pub fn of(err: &StreamError) -> Self {
        match err {
            StreamError::RemoteClosing { .. } => H3Facts::GoAwayReceived,
            StreamError::ConnectionError { .. } => H3Facts::ConnectionEnded,
            StreamError::RemoteTerminate { code, .. } => H3Facts::Terminated(code.value()),
            _ => H3Facts::Other,
        }
    }

    /// Whether an attempt that ended with this error at `stage`, before any response head
    /// arrived, was certainly not processed by the server.
    pub fn retry_cause(self, stage: H3Stage) -> Option<RetryCause> {
        match (self, stage) {
            (H3Facts::Terminated(code), _) if code == Code::H3_REQUEST_REJECTED.value() => {
                Some(RetryCause::RequestRejected)
            }
            (H3Facts::GoAwayReceived, H3Stage::Opening) => Some(RetryCause::GoAway),
            (H3Facts::ConnectionEnded, H3Stage::Opening) => Some(RetryCause::NotSent),
            // Once the request head is out, the server may have run it: even a connection
            // closed with H3_NO_ERROR after a GOAWAY, since h3 does not say whether this
            // stream was above the GOAWAY's id.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::Reason;

    #[test]
    fn only_promises_from_the_peer_are_retryable() {
        let remote = |reason, reset| H2Facts {
            reason: Some(reason),
            go_away: false,
            reset,
            remote: true,
        };
        let cases = [
            (
                remote(Reason::REFUSED_STREAM, true),
                Some(RetryCause::RefusedStream),
            ),
            // Processing may have started: a cancelled or failed stream.
            (remote(Reason::CANCEL, true), None),
            (remote(Reason::INTERNAL_ERROR, true), None),
            (remote(Reason::NO_ERROR, true), None),
            (remote(Reason::INTERNAL_ERROR, false), None),
            (remote(Reason::PROTOCOL_ERROR, false), None),
            (remote(Reason::REFUSED_STREAM, false), None),
            // Our side's errors promise nothing about the server.
            (
                H2Facts {
                    remote: false,
                    ..remote(Reason::REFUSED_STREAM, true)
                },
                None,
            ),
            (H2Facts::default(), None),
        ];
        for (facts, expected) in cases {
            assert_eq!(h2_retry_cause(facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn only_a_graceful_goaway_from_the_server_is_re_sent() {
        let goaway = |reason, remote| H2Facts {
            reason: Some(reason),
            go_away: true,
            reset: false,
            remote,
        };
        assert_eq!(
            h2_retry_cause(goaway(Reason::NO_ERROR, true)),
            Some(RetryCause::GoAway)
        );
        assert_eq!(h2_retry_cause(goaway(Reason::INTERNAL_ERROR, true)), None);
        assert_eq!(h2_retry_cause(goaway(Reason::NO_ERROR, false)), None);
    }

    #[test]
    fn h3_retries_only_what_the_server_promises_it_did_not_process() {
        let rejected = Code::H3_REQUEST_REJECTED.value();
        let cases = [
            (
                H3Facts::Terminated(rejected),
                H3Stage::Opening,
                Some(RetryCause::RequestRejected),
            ),
            (
                H3Facts::Terminated(rejected),
                H3Stage::Exchange,
                Some(RetryCause::RequestRejected),
            ),
            (
                H3Facts::GoAwayReceived,
                H3Stage::Opening,
                Some(RetryCause::GoAway),
            ),
            (
                H3Facts::ConnectionEnded,
                H3Stage::Opening,
                Some(RetryCause::NotSent),
            ),
            // The request head may have been read and run.
            (H3Facts::ConnectionEnded, H3Stage::Exchange, None),
            (H3Facts::GoAwayReceived, H3Stage::Exchange, None),
            (
                H3Facts::Terminated(Code::H3_REQUEST_CANCELLED.value()),
                H3Stage::Exchange,
                None,
            ),
            (
                H3Facts::Terminated(Code::H3_NO_ERROR.value()),
                H3Stage::Exchange,
                None,
            ),
            (
                H3Facts::Terminated(Code::H3_INTERNAL_ERROR.value()),
                H3Stage::Opening,
                None,
            ),
            (H3Facts::Other, H3Stage::Opening, None),
            (H3Facts::Other, H3Stage::Exchange, None),
        ];
        for (facts, stage, expected) in cases {
            assert_eq!(facts.retry_cause(stage), expected, "{facts:?} {stage:?}");
        }
    }

    #[test]
    fn h2_error_is_found_down_the_source_chain() {
        use genro_shared::describe_error;
        use std::error::Error as StdError;
        #[derive(Debug)]
        struct Wrapper(h2::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("http2 error")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let err = Wrapper(h2::Error::from(Reason::REFUSED_STREAM));
        let found = H2Facts::find(&err).expect("h2 error in the chain");
        assert_eq!(found.reason, Some(Reason::REFUSED_STREAM));
        // A protocol error we raised ourselves is not a promise from the peer.
        assert_eq!(h2_retry_cause(found), None);
        assert_eq!(
            describe_error(&err),
            "http2 error: protocol error: refused stream before processing any application logic"
        );
        assert!(H2Facts::find(&std::io::Error::other("x")).is_none());
    }
}
