//! What an `h2::Error` tells about a failed HTTP/2 stream, kept as plain data so that the
//! decisions made on it (may the request be sent again? must the connection be
//! replaced?) are pure functions that the HTTP/3 front and the load generator share.

/// The facts about an HTTP/2 error that decide whether it is retryable.
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
    /// The facts of one error.
    pub fn of(err: &h2::Error) -> Self {
        H2Facts {
            reason: err.reason(),
            go_away: err.is_go_away(),
            reset: err.is_reset(),
            remote: err.is_remote(),
        }
    }

    /// The facts of the first `h2::Error` in an error's source chain (hyper keeps h2's
    /// error there), if there is one.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        crate::find_source::<h2::Error>(err).map(Self::of)
    }

    /// The peer refused the stream (RST_STREAM with REFUSED_STREAM): RFC 9113 §8.7
    /// promises it did no processing, so the request may be sent again.
    pub fn refused(self) -> bool {
        self.remote && self.reset && self.reason == Some(h2::Reason::REFUSED_STREAM)
    }

    /// The peer closed the connection with a graceful GOAWAY (NO_ERROR). After an error
    /// GOAWAY the connection may fail its remaining streams with the same error although
    /// they were processed, so only this kind says anything about the server.
    pub fn graceful_go_away(self) -> bool {
        self.remote && self.go_away && self.reason == Some(h2::Reason::NO_ERROR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::Reason;

    fn facts(reason: Reason, go_away: bool, reset: bool, remote: bool) -> H2Facts {
        H2Facts {
            reason: Some(reason),
            go_away,
            reset,
            remote,
        }
    }

    #[test]
    fn only_the_peers_refused_stream_reset_is_a_refusal() {
        assert!(facts(Reason::REFUSED_STREAM, false, true, true).refused());
        assert!(!facts(Reason::REFUSED_STREAM, false, true, false).refused());
        assert!(!facts(Reason::REFUSED_STREAM, false, false, true).refused());
        assert!(!facts(Reason::CANCEL, false, true, true).refused());
        assert!(!H2Facts::default().refused());
    }

    #[test]
    fn only_the_peers_no_error_goaway_is_graceful() {
        assert!(facts(Reason::NO_ERROR, true, false, true).graceful_go_away());
        assert!(!facts(Reason::NO_ERROR, true, false, false).graceful_go_away());
        assert!(!facts(Reason::INTERNAL_ERROR, true, false, true).graceful_go_away());
        assert!(!facts(Reason::NO_ERROR, false, true, true).graceful_go_away());
    }

    #[test]
    fn find_reads_the_source_chain() {
        assert_eq!(H2Facts::find(&std::io::Error::other("x")), None);
        // The chain's first link counts too (hyper's error keeps h2's as a source, which
        // the load generator's tests cover).
        let err = h2::Error::from(Reason::REFUSED_STREAM);
        let found = H2Facts::find(&err).expect("h2 error in the chain");
        assert_eq!(found.reason, Some(Reason::REFUSED_STREAM));
    }
}
