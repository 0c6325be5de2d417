//! The ASGI HTTP response state machine, sans-IO: typed outbound messages in, actions out.
//!
//! `Init -> Started -> (Streaming) -> (AwaitingTrailers) -> Done`. The response head is held
//! until the first body message, so a one-shot response leaves as a single write with a
//! known length. Only the dict -> [`Outbound`] conversion (in `bridge`) needs the GIL.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::path::PathBuf;

/// The head the app asked for in `http.response.start`.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Response status.
    pub status: StatusCode,
    /// Response headers, as sent by the app.
    pub headers: HeaderMap,
}

/// A message the app passed to `send()`, already validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// `http.response.start`.
    Start {
        /// Status and headers.
        head: Head,
        /// Whether `http.response.trailers` messages will follow the body.
        trailers: bool,
    },
    /// `http.response.body`.
    Body {
        /// The chunk.
        body: Bytes,
        /// `more_body`.
        more: bool,
    },
    /// `http.response.trailers`.
    Trailers {
        /// Trailer fields.
        headers: HeaderMap,
        /// `more_trailers`.
        more: bool,
    },
    /// `http.response.pathsend`: the server sends the file.
    PathSend {
        /// Absolute path of the file.
        path: PathBuf,
    },
    /// `http.response.early_hint` (hypercorn's extension): a `103 Early Hints` with these
    /// `Link` values, before the response. Handled beside the state machine.
    EarlyHint {
        /// The `Link` header values.
        links: Vec<http::HeaderValue>,
    },
}

/// What the transport must do after a message.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Nothing to send yet (the head is held until the body).
    Hold,
    /// Send the whole response: head and this body, then done.
    Complete(Head, Bytes),
    /// Send the head and open a streamed body that starts with this chunk.
    Open(Head, Bytes),
    /// Send the head and the file as the body.
    File(Head, PathBuf),
    /// Send a chunk of an open stream.
    Chunk(Bytes),
    /// Send a last chunk and end the stream.
    Last(Bytes),
    /// Send trailer fields; `end` closes the stream.
    Trailers(HeaderMap, bool),
}

/// Where the response is.
#[derive(Debug, Default)]
pub enum State {
    /// Nothing received.
    #[default]
    Init,
    /// `http.response.start` received and held.
    Started {
        /// The held head.
        head: Head,
        /// Trailers announced.
        trailers: bool,
    },
    /// Head sent, body streaming.
    Streaming {
        /// Trailers announced.
        trailers: bool,
    },
    /// Body finished, trailers announced and not all sent.
    AwaitingTrailers,
    /// The response is complete, or was aborted.
    Done,
}

/// A message that is not allowed where the response is.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ProtocolError(pub &'static str);

impl State {
    /// Whether any part of the response has been handed to the transport.
    #[cfg(test)]
    pub fn is_head_sent(&self) -> bool {
        matches!(
            self,
            State::Streaming { .. } | State::AwaitingTrailers | State::Done
        )
    }

    /// Whether the response is complete (or aborted).
    pub fn is_done(&self) -> bool {
        matches!(self, State::Done)
    }

    /// Feeds one message; on error the state is left unchanged.
    pub fn handle(&mut self, message: Outbound) -> Result<Action, ProtocolError> {
        let state = std::mem::take(self);
        let (next, action) = match (state, message) {
            (State::Init, Outbound::Start { head, trailers }) => {
                (State::Started { head, trailers }, Ok(Action::Hold))
            }
            (State::Started { head, trailers }, Outbound::Body { body, more }) => {
                match (more, trailers) {
                    (false, false) => (State::Done, Ok(Action::Complete(head, body))),
                    (false, true) => (State::AwaitingTrailers, Ok(Action::Open(head, body))),
                    (true, _) => (State::Streaming { trailers }, Ok(Action::Open(head, body))),
                }
            }
            // The file is the whole body: trailers cannot follow a pathsend.
            (
                State::Started {
                    head,
                    trailers: false,
                },
                Outbound::PathSend { path },
            ) => (State::Done, Ok(Action::File(head, path))),
            (State::Streaming { trailers }, Outbound::Body { body, more }) => {
                match (more, trailers) {
                    (true, _) => (State::Streaming { trailers }, Ok(Action::Chunk(body))),
                    (false, false) => (State::Done, Ok(Action::Last(body))),
                    (false, true) => (State::AwaitingTrailers, Ok(Action::Chunk(body))),
                }
            }
            (State::AwaitingTrailers, Outbound::Trailers { headers, more }) => {
                let next = if more {
                    State::AwaitingTrailers
                } else {
                    State::Done
                };
                (next, Ok(Action::Trailers(headers, !more)))
            }
            (state, message) => {
                let why = match (&state, &message) {
                    (State::Init, _) => "expected http.response.start first",
                    (_, Outbound::Start { .. }) => "http.response.start sent twice",
                    (State::Done, _) => "message sent after the response completed",
                    (
                        State::Started {
                            trailers: false, ..
                        }
                        | State::Streaming { trailers: false },
                        Outbound::Trailers { .. },
                    ) => "http.response.trailers without trailers: true in http.response.start",
                    (
                        State::Started { .. } | State::Streaming { .. },
                        Outbound::Trailers { .. },
                    ) => "http.response.trailers before the body finished",
                    (State::Streaming { .. }, Outbound::PathSend { .. }) => {
                        "http.response.pathsend after the body started"
                    }
                    (State::Started { trailers: true, .. }, Outbound::PathSend { .. }) => {
                        "http.response.pathsend cannot be combined with trailers"
                    }
                    (_, Outbound::EarlyHint { .. }) => {
                        "http.response.early_hint after the response started"
                    }
                    (State::AwaitingTrailers, _) => "expected http.response.trailers",
                    _ => "unexpected message",
                };
                (state, Err(ProtocolError(why)))
            }
        };
        *self = next;
        action
    }

    /// Marks the response aborted (client gone, or the app failed mid-stream).
    pub fn abort(&mut self) {
        *self = State::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(trailers: bool) -> Outbound {
        Outbound::Start {
            head: head(),
            trailers,
        }
    }
    fn head() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }
    fn body(b: &'static str, more: bool) -> Outbound {
        Outbound::Body {
            body: Bytes::from_static(b.as_bytes()),
            more,
        }
    }
    fn trailers(more: bool) -> Outbound {
        Outbound::Trailers {
            headers: HeaderMap::new(),
            more,
        }
    }
    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn valid_sequences() {
        let table: Vec<(&str, Vec<Outbound>, Vec<Action>)> = vec![
            (
                "one shot",
                vec![start(false), body("hi", false)],
                vec![Action::Hold, Action::Complete(head(), b("hi"))],
            ),
            (
                "streamed",
                vec![
                    start(false),
                    body("a", true),
                    body("b", true),
                    body("", false),
                ],
                vec![
                    Action::Hold,
                    Action::Open(head(), b("a")),
                    Action::Chunk(b("b")),
                    Action::Last(b("")),
                ],
            ),
            (
                "trailers",
                vec![
                    start(true),
                    body("a", false),
                    trailers(true),
                    trailers(false),
                ],
                vec![
                    Action::Hold,
                    Action::Open(head(), b("a")),
                    Action::Trailers(HeaderMap::new(), false),
                    Action::Trailers(HeaderMap::new(), true),
                ],
            ),
            (
                "pathsend",
                vec![start(false), Outbound::PathSend { path: "/x".into() }],
                vec![Action::Hold, Action::File(head(), "/x".into())],
            ),
        ];
        for (name, messages, want) in table {
            let mut state = State::default();
            let got: Vec<Action> = messages
                .into_iter()
                .map(|m| state.handle(m).expect(name))
                .collect();
            assert_eq!(got, want, "{name}");
            assert!(state.is_done(), "{name}");
        }
    }

    #[test]
    fn invalid_sequences() {
        let table: Vec<(&str, Vec<Outbound>, &str)> = vec![
            (
                "body first",
                vec![body("x", false)],
                "expected http.response.start first",
            ),
            (
                "two starts",
                vec![start(false), start(false)],
                "http.response.start sent twice",
            ),
            (
                "after done",
                vec![start(false), body("", false), body("", false)],
                "after the response completed",
            ),
            (
                "unannounced trailers",
                vec![start(false), body("", true), trailers(false)],
                "without trailers: true",
            ),
            (
                "trailers too early",
                vec![start(true), body("", true), trailers(false)],
                "before the body finished",
            ),
            (
                "missing trailers",
                vec![start(true), body("", false), body("", false)],
                "expected http.response.trailers",
            ),
        ];
        for (name, messages, want) in table {
            let mut state = State::default();
            let n = messages.len();
            for (i, m) in messages.into_iter().enumerate() {
                let result = state.handle(m);
                if i + 1 < n {
                    result.expect(name);
                } else {
                    assert!(result.expect_err(name).0.contains(want), "{name}");
                }
            }
        }
    }

    #[test]
    fn head_sent_tracking() {
        let mut state = State::default();
        assert!(!state.is_head_sent());
        state.handle(start(false)).unwrap();
        assert!(!state.is_head_sent(), "the head is held until the body");
        state.handle(body("a", true)).unwrap();
        assert!(state.is_head_sent());
        state.abort();
        assert!(state.is_done());
    }
}
