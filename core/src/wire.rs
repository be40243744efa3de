//! The payloads of the wire contract (`PROTOCOL.md`), each with its encoder and its decoder:
//! the data of the control events [`RESET_EVENT`] ([`Reset`]) and [`READY_EVENT`] ([`Ready`]),
//! and the JSON error body ([`ApiError`]) with every error code of the HTTP API
//! ([`ErrorCode`], each with its status).
//!
//! Encoding is what the server sends (the subscription and the HTTP shell call it); decoding
//! is what clients, the simulation and the reference model use to read it back, strictly: a
//! payload that is not exactly what the contract says is a [`WireError`], never a default.
//! Keys a decoder does not know are ignored, so a newer server may add some.

use std::fmt;

use serde_json::{Map, Value};

use crate::ids::is_wire_id;
use crate::json;

/// The event name of the frame that says a cursor could not be honoured.
pub const RESET_EVENT: &str = "changefeed.reset";
/// The event name of the frame that says replay caught up and the stream is live.
pub const READY_EVENT: &str = "changefeed.ready";

/// Why a cursor could not be honoured (the `reason` of a [`Reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResetReason {
    /// Rows after the cursor were pruned by retention.
    Pruned,
    /// The cursor is beyond anything this log ever allocated.
    AheadOfHead,
    /// The cursor belongs to another log (recreated or rolled-back database).
    EpochMismatch,
    /// The `Last-Event-ID` header is not a cursor.
    InvalidCursor,
}

impl ResetReason {
    /// Every reason, in the order `PROTOCOL.md` lists them.
    pub const ALL: [ResetReason; 4] = [
        ResetReason::Pruned,
        ResetReason::AheadOfHead,
        ResetReason::EpochMismatch,
        ResetReason::InvalidCursor,
    ];

    /// The reason as it appears in the reset frame.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Pruned => "pruned",
            ResetReason::AheadOfHead => "ahead_of_head",
            ResetReason::EpochMismatch => "epoch_mismatch",
            ResetReason::InvalidCursor => "invalid_cursor",
        }
    }

    /// The reason spelled `text`, if it is one.
    pub fn parse(text: &str) -> Option<ResetReason> {
        ResetReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// At most this many bytes of the client's cursor are echoed in a reset's `requested` (a valid
/// cursor is far shorter; a huge malformed `Last-Event-ID` must not be sent back whole).
pub const MAX_REQUESTED_BYTES: usize = 128;

/// The data of a [`RESET_EVENT`] frame:
/// `{"requested":"<cursor as received>","after":"<new cursor>","reason":"<reason>"}`, where
/// `requested` is cut to its first [`MAX_REQUESTED_BYTES`] bytes (at a character boundary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The cursor as the client sent it (`""` when a reset happens mid-stream without one);
    /// [`Reset::to_json`] echoes at most [`MAX_REQUESTED_BYTES`] of it.
    pub requested: String,
    /// Where the stream continues: the frame's `id` (a cursor, or a sealed id with auth on).
    pub after: String,
    /// Why the cursor could not be honoured.
    pub reason: ResetReason,
}

impl Reset {
    /// The JSON text, keys in contract order, on one line.
    pub fn to_json(&self) -> String {
        let requested = truncated(&self.requested, MAX_REQUESTED_BYTES);
        let mut out = Vec::with_capacity(requested.len() + 80);
        out.extend_from_slice(b"{\"requested\":");
        json::write_str(&mut out, requested);
        out.extend_from_slice(b",\"after\":");
        json::write_str(&mut out, &self.after);
        out.extend_from_slice(b",\"reason\":");
        json::write_str(&mut out, self.reason.as_str());
        out.push(b'}');
        json::into_string(out)
    }

    /// Reads the JSON text of a reset frame whose reason this version knows (servers, oracles).
    /// Clients read [`ResetNotice`] instead, which also takes reasons added later.
    pub fn from_json(text: &str) -> Result<Reset, WireError> {
        let notice = ResetNotice::from_json(text)?;
        let reason = ResetReason::parse(&notice.reason)
            .ok_or_else(|| WireError::new(format!("unknown reset reason {:?}", notice.reason)))?;
        Ok(Reset {
            requested: notice.requested,
            after: notice.after,
            reason,
        })
    }
}

/// A reset frame as a client reads it: the reason stays text, so a reason a newer server adds
/// still reads as a reset (whatever the reason, the client must refetch and continue from
/// `after`; reporting the frame as malformed would let it keep stale state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetNotice {
    /// The cursor as the server received it.
    pub requested: String,
    /// Where the stream continues (a cursor or a sealed id).
    pub after: String,
    /// The reason as sent (one of [`ResetReason::ALL`] for this version's servers).
    pub reason: String,
}

impl ResetNotice {
    /// Reads the JSON text of a reset frame; any string is taken as the reason.
    pub fn from_json(text: &str) -> Result<ResetNotice, WireError> {
        let object = object(text)?;
        Ok(ResetNotice {
            requested: string(&object, "requested")?.to_owned(),
            after: id(&object, "after")?,
            reason: string(&object, "reason")?.to_owned(),
        })
    }

    /// The reason, if this version knows it.
    pub fn known_reason(&self) -> Option<ResetReason> {
        ResetReason::parse(&self.reason)
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The data of a [`READY_EVENT`] frame: `{"after":"<cursor>","replayed":N,"heartbeatMs":H}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The position when the stream went live: the frame's `id` (a cursor, or a sealed id with
    /// auth on).
    pub after: String,
    /// Change frames sent on this connection before it.
    pub replayed: u64,
    /// The server's heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
}

impl Ready {
    /// The JSON text, keys in contract order, on one line.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"{\"after\":");
        json::write_str(&mut out, &self.after);
        out.extend_from_slice(b",\"replayed\":");
        out.extend_from_slice(self.replayed.to_string().as_bytes());
        out.extend_from_slice(b",\"heartbeatMs\":");
        out.extend_from_slice(self.heartbeat_ms.to_string().as_bytes());
        out.push(b'}');
        json::into_string(out)
    }

    /// Reads the JSON text of a ready frame.
    pub fn from_json(text: &str) -> Result<Ready, WireError> {
        let object = object(text)?;
        Ok(Ready {
            after: id(&object, "after")?,
            replayed: number(&object, "replayed")?,
            heartbeat_ms: number(&object, "heartbeatMs")?,
        })
    }
}

/// Defines [`ErrorCode`] from one table, so adding a code is one line: variant, wire name,
/// HTTP status and what it means.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:literal;)*) => {
        /// Every machine-readable error code of the HTTP API, each with its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears in the JSON error body.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }

            /// The HTTP status a response with this code has.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    /// `after` is not a valid cursor (with sealed ids: not an id this server issued).
    InvalidCursor = "invalid_cursor", 400;
    /// A query parameter the endpoint does not know.
    UnknownParameter = "unknown_parameter", 400;
    /// `after`, `types` or `last` given more than once.
    DuplicateParameter = "duplicate_parameter", 400;
    /// `types` is empty or holds an invalid pattern.
    InvalidTypes = "invalid_types", 400;
    /// A `project` value is empty, or too many are given.
    InvalidProject = "invalid_project", 400;
    /// A `session` value is empty, or too many are given.
    InvalidSession = "invalid_session", 400;
    /// `last` is not a decimal number from 1 to the documented maximum.
    InvalidLast = "invalid_last", 400;
    /// Two parameters that exclude each other (`after` and `last`).
    ConflictingParameters = "conflicting_parameters", 400;
    /// Auth is on and the request has no valid token (no hint whether any project exists).
    Unauthorized = "unauthorized", 401;
    /// A `project` outside the token's grant (the same answer whether it exists or not).
    Forbidden = "forbidden", 403;
    /// A `project` names no existing project (checked by the shell against the store).
    UnknownProject = "unknown_project", 404;
    /// No route has this path.
    NotFound = "not_found", 404;
    /// The route exists but not for this method (the response carries `Allow`).
    MethodNotAllowed = "method_not_allowed", 405;
    /// A limit on concurrent streams (per token, or for the server) is reached; the response
    /// carries `Retry-After`.
    TooManyStreams = "too_many_streams", 429;
    /// The request target (path and query) is longer than the server accepts.
    UriTooLong = "uri_too_long", 414;
    /// The request's header fields together are larger than the server accepts.
    HeadersTooLarge = "headers_too_large", 431;
    /// The server is at its limit of concurrent connections or streams (the response carries
    /// `Retry-After`); retry later.
    Overloaded = "overloaded", 503;
    /// The change log cannot be read right now (store error, replaced database); retry later.
    Unavailable = "unavailable", 503;
}

impl ErrorCode {
    /// The code spelled `text`, if it is one.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer of the HTTP API: a code and a message naming the problem. Its body is
/// `{"error":{"code":"...","message":"..."}}` ([`ApiError::to_json`]) and its status
/// [`ErrorCode::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of problem.
    pub code: ErrorCode,
    /// A human-readable explanation naming the offending parameter or value.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of the response ([`ErrorCode::status`]).
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON error body: `{"error":{"code":"...","message":"..."}}`.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.message.len() + 48);
        out.extend_from_slice(b"{\"error\":{\"code\":");
        json::write_str(&mut out, self.code.as_str());
        out.extend_from_slice(b",\"message\":");
        json::write_str(&mut out, &self.message);
        out.extend_from_slice(b"}}");
        json::into_string(out)
    }

    /// Reads an error body.
    pub fn from_json(text: &str) -> Result<ApiError, WireError> {
        let outer = object(text)?;
        let inner = match outer.get("error") {
            Some(Value::Object(inner)) => inner,
            Some(_) => return Err(WireError::new("\"error\" is not an object")),
            None => return Err(WireError::new("no \"error\" object")),
        };
        let code = string(inner, "code")?;
        Ok(ApiError {
            code: ErrorCode::parse(code)
                .ok_or_else(|| WireError::new(format!("unknown error code {code:?}")))?,
            message: string(inner, "message")?.to_owned(),
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl WireError {
    fn new(message: impl Into<String>) -> WireError {
        WireError(message.into())
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn object(text: &str) -> Result<Map<String, Value>, WireError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(WireError::new("the payload is not a JSON object")),
        Err(error) => Err(WireError::new(format!("the payload is not JSON: {error}"))),
    }
}

fn string<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a str, WireError> {
    match object.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(WireError::new(format!("{key:?} is not a string"))),
        None => Err(WireError::new(format!("{key:?} is missing"))),
    }
}

fn number(object: &Map<String, Value>, key: &str) -> Result<u64, WireError> {
    match object.get(key) {
        Some(value) => value.as_u64().ok_or_else(|| {
            WireError::new(format!("{key:?} is not a non-negative integer: {value}"))
        }),
        None => Err(WireError::new(format!("{key:?} is missing"))),
    }
}

/// A position as the server writes it: a cursor or a sealed id ([`is_wire_id`]).
fn id(object: &Map<String, Value>, key: &str) -> Result<String, WireError> {
    let text = string(object, key)?;
    if is_wire_id(text) {
        Ok(text.to_owned())
    } else {
        Err(WireError::new(format!(
            "{key:?} = {text:?} is neither a cursor nor a sealed id"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdKey;
    use crate::position::{Epoch, Seq};

    const AFTER: &str = "00000000000000e1:42";

    #[test]
    fn reset_encodes_in_contract_order_and_decodes_back() {
        for reason in ResetReason::ALL {
            let reset = Reset {
                requested: "weird \"cursor\"\n\u{1}".into(),
                after: AFTER.into(),
                reason,
            };
            let text = reset.to_json();
            assert_eq!(
                text,
                format!(
                    "{{\"requested\":\"weird \\\"cursor\\\"\\n\\u0001\",\"after\":\"00000000000000e1:42\",\"reason\":\"{}\"}}",
                    reason.as_str()
                )
            );
            assert_eq!(Reset::from_json(&text), Ok(reset));
            assert_eq!(ResetReason::parse(reason.as_str()), Some(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        assert_eq!(ResetReason::parse("Pruned"), None);
    }

    #[test]
    fn reset_echoes_at_most_the_bound_of_a_huge_cursor_cut_at_a_character() {
        // 300 KB in must not be 300 KB out; a multi-byte character straddling the bound is
        // dropped whole, so the echo stays valid UTF-8 and valid JSON.
        let mut requested = "x".repeat(MAX_REQUESTED_BYTES - 1);
        requested.push('é');
        requested.push_str(&"y".repeat(300_000));
        let reset = Reset {
            requested: requested.clone(),
            after: AFTER.into(),
            reason: ResetReason::InvalidCursor,
        };
        let text = reset.to_json();
        assert!(
            text.len() < MAX_REQUESTED_BYTES + 100,
            "{} bytes",
            text.len()
        );
        let decoded = Reset::from_json(&text).unwrap();
        assert_eq!(decoded.requested, "x".repeat(MAX_REQUESTED_BYTES - 1));
        assert!(requested.starts_with(&decoded.requested));
        // A cursor within the bound is echoed whole.
        let exact = "z".repeat(MAX_REQUESTED_BYTES);
        let short = Reset {
            requested: exact.clone(),
            ..reset
        };
        assert_eq!(Reset::from_json(&short.to_json()).unwrap().requested, exact);
    }

    #[test]
    fn ready_encodes_in_contract_order_and_decodes_back() {
        let ready = Ready {
            after: AFTER.into(),
            replayed: 7,
            heartbeat_ms: 15_000,
        };
        let text = ready.to_json();
        assert_eq!(
            text,
            "{\"after\":\"00000000000000e1:42\",\"replayed\":7,\"heartbeatMs\":15000}"
        );
        assert_eq!(Ready::from_json(&text), Ok(ready.clone()));
        let sealed = Ready {
            after: IdKey::from_bytes([9; 32]).seal(Epoch(1), Seq(2), 3),
            ..ready.clone()
        };
        assert_eq!(Ready::from_json(&sealed.to_json()), Ok(sealed));
        let newer =
            "{\"after\":\"00000000000000e1:42\",\"replayed\":7,\"heartbeatMs\":15000,\"x\":1}";
        assert_eq!(
            Ready::from_json(newer),
            Ok(ready),
            "unknown keys are ignored"
        );
    }

    #[test]
    fn decoders_reject_what_the_contract_does_not_say() {
        for bad in [
            "nope",
            "[]",
            "{}",
            "{\"after\":\"00000000000000e1:42\",\"replayed\":-1,\"heartbeatMs\":1}",
            "{\"after\":\"00000000000000e1:42\",\"replayed\":1.5,\"heartbeatMs\":1}",
            "{\"after\":\"00000000000000e1:42\",\"replayed\":\"1\",\"heartbeatMs\":1}",
            "{\"after\":\"00000000000000e1:42\",\"replayed\":1}",
            "{\"after\":\"x\",\"replayed\":1,\"heartbeatMs\":1}",
            "{\"after\":42,\"replayed\":1,\"heartbeatMs\":1}",
        ] {
            let error = Ready::from_json(bad).unwrap_err();
            assert!(!error.to_string().is_empty(), "{bad:?}");
        }
        for bad in [
            "{\"requested\":\"\",\"after\":\"00000000000000e1:42\",\"reason\":\"gone\"}",
            "{\"requested\":\"\",\"after\":\"00000000000000e1:42\"}",
            "{\"requested\":1,\"after\":\"00000000000000e1:42\",\"reason\":\"pruned\"}",
            "{\"after\":\"00000000000000e1:42\",\"reason\":\"pruned\"}",
            "{\"requested\":\"\",\"after\":\"\",\"reason\":\"pruned\"}",
        ] {
            assert!(Reset::from_json(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Reset::from_json(
                "{\"requested\":\"\",\"after\":\"00000000000000e1:42\",\"reason\":\"gone\"}"
            )
            .unwrap_err()
            .to_string(),
            "unknown reset reason \"gone\""
        );
    }

    #[test]
    fn a_client_reads_a_reset_with_a_reason_it_does_not_know() {
        let newer = "{\"requested\":\"00000000000000e1:9\",\"after\":\"00000000000000e1:42\",\"reason\":\"compacted\",\"x\":1}";
        let notice = ResetNotice::from_json(newer).unwrap();
        assert_eq!(
            notice,
            ResetNotice {
                requested: "00000000000000e1:9".into(),
                after: "00000000000000e1:42".into(),
                reason: "compacted".into(),
            }
        );
        assert_eq!(notice.known_reason(), None);
        for reason in ResetReason::ALL {
            let reset = Reset {
                requested: String::new(),
                after: "00000000000000e1:42".into(),
                reason,
            };
            let notice = ResetNotice::from_json(&reset.to_json()).unwrap();
            assert_eq!(notice.reason, reason.as_str());
            assert_eq!(notice.known_reason(), Some(reason));
        }
        // Everything but the reason is as strict as for a known one.
        for bad in [
            "{\"requested\":\"\",\"after\":\"00000000000000e1:42\"}",
            "{\"requested\":\"\",\"after\":\"00000000000000e1:42\",\"reason\":7}",
            "{\"requested\":1,\"after\":\"00000000000000e1:42\",\"reason\":\"x\"}",
            "{\"after\":\"00000000000000e1:42\",\"reason\":\"x\"}",
            "{\"requested\":\"\",\"after\":\"\",\"reason\":\"x\"}",
            "[]",
        ] {
            assert!(ResetNotice::from_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_error_code_has_its_status_and_round_trips() {
        let expected = [
            ("invalid_cursor", 400),
            ("unknown_parameter", 400),
            ("duplicate_parameter", 400),
            ("invalid_types", 400),
            ("invalid_project", 400),
            ("invalid_session", 400),
            ("invalid_last", 400),
            ("conflicting_parameters", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("unknown_project", 404),
            ("not_found", 404),
            ("method_not_allowed", 405),
            ("too_many_streams", 429),
            ("uri_too_long", 414),
            ("headers_too_large", 431),
            ("overloaded", 503),
            ("unavailable", 503),
        ];
        let table: Vec<(&str, u16)> = ErrorCode::ALL
            .iter()
            .map(|code| (code.as_str(), code.status()))
            .collect();
        assert_eq!(table, expected);
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
            let error = ApiError::new(code, "line one\nand \"two\"");
            assert_eq!(error.status(), code.status());
            let body = error.to_json();
            assert_eq!(
                body,
                format!(
                    "{{\"error\":{{\"code\":\"{}\",\"message\":\"line one\\nand \\\"two\\\"\"}}}}",
                    code.as_str()
                )
            );
            assert_eq!(ApiError::from_json(&body), Ok(error.clone()));
            assert_eq!(
                error.to_string(),
                format!("{}: line one\nand \"two\"", code.as_str())
            );
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
    }

    #[test]
    fn error_body_decoder_is_strict() {
        for bad in [
            "{}",
            "{\"error\":\"x\"}",
            "{\"error\":{\"code\":\"teapot\",\"message\":\"m\"}}",
            "{\"error\":{\"code\":\"not_found\"}}",
            "{\"error\":{\"message\":\"m\"}}",
            "{\"code\":\"not_found\",\"message\":\"m\"}",
        ] {
            assert!(ApiError::from_json(bad).is_err(), "{bad:?}");
        }
    }
}
