//! Which failed attempts are safe to re-send: those the protocol guarantees the server did
//! not process. Everything else that goes wrong after a request was handed to the
//! connection is a failure.

use std::error::Error as StdError;

/// Why an attempt may be re-sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// hyper never handed the request to the connection (`hyper::Error::is_canceled`): the
    /// connection had closed or was shutting down, e.g. after a GOAWAY, before this request
    /// was written.
    NotSent,
    /// The server reset the stream with REFUSED_STREAM, which promises that no application
    /// processing happened (RFC 9113 §8.7).
    RefusedStream,
    /// The server's GOAWAY (NO_ERROR) named a last-stream-id below this stream: streams
    /// above it were not processed (RFC 9113 §6.8).
    GoAway,
}

impl RetryCause {
    /// The name used in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            RetryCause::NotSent => "not_sent",
            RetryCause::RefusedStream => "refused_stream",
            RetryCause::GoAway => "goaway",
        }
    }
}

/// The HTTP/2 facts about an error that decide whether it is retryable (what
/// `h2::Error` tells), kept apart so the decision is a pure function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct H2Facts {
    /// The error code, if any.
    pub reason: Option<h2::Reason>,
    /// It came from a GOAWAY (ours, theirs or the library's).
    pub go_away: bool,
    /// It came from a RST_STREAM.
    pub reset: bool,
    /// The peer sent it (as opposed to our side detecting it).
    pub remote: bool,
}

impl H2Facts {
    fn of(err: &h2::Error) -> Self {
        H2Facts {
            reason: err.reason(),
            go_away: err.is_go_away(),
            reset: err.is_reset(),
            remote: err.is_remote(),
        }
    }

    /// Whether an attempt that ended with this error, before any response head arrived,
    /// was certainly not processed by the server.
    pub fn retry_cause(self) -> Option<RetryCause> {
        if !self.remote {
            return None;
        }
        match self.reason {
            Some(h2::Reason::REFUSED_STREAM) if self.reset => Some(RetryCause::RefusedStream),
            // h2 gives the GOAWAY's own error to the streams above its last-stream-id (and to
            // requests it refuses to open afterwards). Only a graceful GOAWAY is trusted here:
            // after an error GOAWAY the connection may fail the remaining streams with it too.
            Some(h2::Reason::NO_ERROR) if self.go_away => Some(RetryCause::GoAway),
            _ => None,
        }
    }
}

/// Classifies an error from sending a request or awaiting its response head:
/// `Some(cause)` when the request may be re-sent, `None` when it failed.
pub fn retry_cause(err: &hyper::Error) -> Option<RetryCause> {
    if err.is_canceled() {
        return Some(RetryCause::NotSent);
    }
    h2_error(err).and_then(|h2| H2Facts::of(h2).retry_cause())
}

/// The `h2::Error` in an error's source chain.
fn h2_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a h2::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        next = err.source();
    }
    None
}

/// One line for an error and its causes (`a: b: c`); hyper's own message names only the
/// kind ("http2 error") and keeps the detail in the source chain.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::Reason;

    #[test]
    fn only_promises_from_the_peer_are_retryable() {
        let remote = |reason, go_away, reset| H2Facts {
            reason: Some(reason),
            go_away,
            reset,
            remote: true,
        };
        let cases = [
            (
                remote(Reason::REFUSED_STREAM, false, true),
                Some(RetryCause::RefusedStream),
            ),
            (
                remote(Reason::NO_ERROR, true, false),
                Some(RetryCause::GoAway),
            ),
            // Processing may have started: a cancelled or failed stream, an error GOAWAY.
            (remote(Reason::CANCEL, false, true), None),
            (remote(Reason::INTERNAL_ERROR, false, true), None),
            (remote(Reason::NO_ERROR, false, true), None),
            (remote(Reason::INTERNAL_ERROR, true, false), None),
            (remote(Reason::PROTOCOL_ERROR, true, false), None),
            // Our side's errors promise nothing about the server.
            (
                H2Facts {
                    remote: false,
                    ..remote(Reason::REFUSED_STREAM, false, true)
                },
                None,
            ),
            (
                H2Facts {
                    remote: false,
                    ..remote(Reason::NO_ERROR, true, false)
                },
                None,
            ),
            (H2Facts::default(), None),
        ];
        for (facts, expected) in cases {
            assert_eq!(facts.retry_cause(), expected, "{facts:?}");
        }
    }

    #[test]
    fn h2_error_is_found_down_the_source_chain() {
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
        let found = h2_error(&err).expect("h2 error in the chain");
        assert_eq!(found.reason(), Some(Reason::REFUSED_STREAM));
        // A protocol error we raised ourselves is not a promise from the peer.
        assert_eq!(H2Facts::of(found).retry_cause(), None);
        assert_eq!(
            describe(&err),
            "http2 error: protocol error: refused stream before processing any application logic"
        );
        assert!(h2_error(&std::io::Error::other("x")).is_none());
    }
}
