//! The WebSocket opening handshake on the tokio side, before any Python runs: whether a
//! request opens a WebSocket (HTTP/1.1 Upgrade, RFC 6455; HTTP/2 extended CONNECT, RFC
//! 8441), the key and version checks, and the permessage-deflate offer (RFC 7692).

use crate::ws_pump::Settings;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use yawc::WebSocketError;

/// Whether `request` opens a WebSocket: an HTTP/1.1 `GET` with `Upgrade: websocket` and
/// `Connection: upgrade`, or an HTTP/2 `CONNECT` with `:protocol = websocket`.
pub(crate) fn is_websocket<B>(request: &http::Request<B>) -> bool {
    fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    }
    match request.version() {
        http::Version::HTTP_11 => {
            request.method() == http::Method::GET
                && has_token(request.headers(), http::header::UPGRADE, "websocket")
                && has_token(request.headers(), http::header::CONNECTION, "upgrade")
        }
        http::Version::HTTP_2 => {
            request.method() == http::Method::CONNECT
                && request
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        }
        _ => false,
    }
}

/// A validated handshake: the response head to send on accept, and the upgrade to await.
pub(crate) struct Handshake {
    /// The response head to send on accept.
    pub(crate) head: http::response::Parts,
    /// The upgraded connection, once the response is out.
    pub(crate) upgrade: yawc::UpgradeFut,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handshake")
    }
}

impl Handshake {
    /// Checks the handshake headers (key, version) and negotiates the extensions; `Err` is
    /// the status and text to answer the client with.
    pub(crate) fn new<B>(
        request: &mut http::Request<B>,
        settings: &Settings,
    ) -> Result<Self, (StatusCode, &'static str)> {
        if request.version() == http::Version::HTTP_11
            && !request
                .headers()
                .get(http::header::SEC_WEBSOCKET_KEY)
                .is_none_or(|key| valid_key(key.as_bytes()))
        {
            return Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake: Sec-WebSocket-Key is not 16 bytes in base64\n",
            ));
        }
        // yawc reads one offer; pick it here (RFC 7692 5: the first acceptable one).
        let offer = deflate_offer(request.headers());
        let headers = request.headers_mut();
        headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);
        if let Some(offer) = offer {
            headers.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        match yawc::WebSocket::upgrade_with_options(&mut *request, settings.options.clone()) {
            Ok((response, upgrade)) => Ok(Handshake {
                head: response.into_parts().0,
                upgrade,
            }),
            Err(WebSocketError::InvalidSecWebsocketVersion) => Err((
                StatusCode::UPGRADE_REQUIRED,
                "Unsupported WebSocket version (expected Sec-WebSocket-Version: 13)\n",
            )),
            Err(WebSocketError::MissingSecWebSocketKey) => Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake: no Sec-WebSocket-Key\n",
            )),
            Err(_) => Err((
                StatusCode::BAD_REQUEST,
                "Invalid WebSocket handshake (Sec-WebSocket-Extensions)\n",
            )),
        }
    }
}

/// RFC 6455 4.2.1: the key is 16 bytes in base64, i.e. 22 alphabet characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The first permessage-deflate offer of `Sec-WebSocket-Extensions` (all its fields, each
/// a comma-separated list of offers) that this server can accept, normalized; `None` when
/// there is none. An offer is declined (RFC 7692 7.1) when a parameter is unknown, repeated
/// or has an invalid value, or when it asks for `server_max_window_bits=8`, which zlib
/// cannot produce (it would silently use 9).
fn deflate_offer(headers: &HeaderMap) -> Option<HeaderValue> {
    for value in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for offer in value.split(',') {
            if let Some(accepted) = accept_offer(offer) {
                return HeaderValue::from_str(&accepted).ok();
            }
        }
    }
    None
}

fn accept_offer(offer: &str) -> Option<String> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut out = String::from("permessage-deflate");
    let mut seen: Vec<&str> = Vec::new();
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = |value: Option<&str>| {
            value.and_then(|v| {
                v.parse::<u8>()
                    .ok()
                    .filter(|b| (8..=15).contains(b) && !v.starts_with('0'))
            })
        };
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {
                out.push_str("; ");
                out.push_str(name);
            }
            ("server_max_window_bits", value) => match bits(value) {
                Some(8) | None => return None,
                Some(b) => out.push_str(&format!("; server_max_window_bits={b}")),
            },
            ("client_max_window_bits", None) => out.push_str("; client_max_window_bits"),
            ("client_max_window_bits", value) => match bits(value) {
                None => return None,
                Some(b) => out.push_str(&format!("; client_max_window_bits={b}")),
            },
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        deflate_offer(&headers).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_first_acceptable_deflate_offer_is_chosen() {
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(
            offer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        // Several offers in one field (Autobahn 13.7), and across fields.
        assert_eq!(
            offer(&["permessage-deflate; server_no_context_takeover; server_max_window_bits=9, permessage-deflate; server_no_context_takeover, permessage-deflate"]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        );
        assert_eq!(
            offer(&[
                "foo, permessage-deflate; server_max_window_bits=8",
                "permessage-deflate; client_max_window_bits=\"10\""
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=10")
        );
    }

    #[test]
    fn keys_must_be_16_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ=x"));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!valid_key(b"Z2Vucm8tbG9hZGdlbi0AAAA=="));
    }

    #[test]
    fn invalid_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown_param",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
        }
    }
}
