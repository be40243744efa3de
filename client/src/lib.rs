//! # changefeed-client
//!
//! Follows a changefeed stream: an event-stream reader built on the core's sans-IO [`Parser`]
//! and [`Reconnect`] machine, with hyper's HTTP/1 client connection (plain or over rustls) as
//! the only IO. It depends on none of the server's crates.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use changefeed_client::{Client, ClientConfig, ClientItem, HttpsConnector};
//!
//! let config = ClientConfig::new("http://127.0.0.1:7467/api/v1/events?project=p1")?;
//! let mut client = Client::new(config, HttpsConnector::new()?);
//! while let Some(item) = client.next().await {
//!     if let ClientItem::Event(event) = item? {
//!         println!("{} {}", event.kind, event.data); // then persist client.last_cursor()
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Layers:
//!
//! - [`EventSource`] is a generic SSE client: it yields every dispatched [`SseEvent`] (any event
//!   type, `message` included), comments, and connection-state changes as [`SseItem`]s. It is
//!   what the contract-test service (`contract`, feature `contract-service`) drives.
//! - [`Client`] is the typed view of a changefeed stream on top of it: change events as
//!   [`ChangeEvent`], and the `changefeed.reset` / `changefeed.ready` control frames as
//!   [`ClientItem::Reset`] / [`ClientItem::Ready`].
//! - [`tail`] is the library half of `changefeed tail`: the loop, the cursor file, the output
//!   formats and the progress line (its command-line flags live in the `changefeed` binary).
//!
//! Both clients are generic over a [`Connector`] ([`TcpConnector`] for `http`,
//! [`HttpsConnector`] for `http` and `https`), so the deterministic simulation plugs in
//! turmoil's sockets without any test-only code path here. Time is read only through
//! [`tokio::time`] (which the simulation controls) and the backoff jitter is seeded from
//! [`ReconnectConfig::jitter_seed`].
//!
//! # Behaviour
//!
//! - Every request sends `Accept: text/event-stream`, `Cache-Control: no-cache`, the configured
//!   custom headers (an `Authorization: Bearer …` token goes there), and `Last-Event-ID` when
//!   the client has a position (a custom header of the same name as a default replaces it;
//!   `Last-Event-ID` always comes from the client).
//! - `301`, `302`, `303`, `307` and `308` are followed to their `Location` (absolute or relative)
//!   up to [`ClientConfig::max_redirects`] hops per connection attempt; a redirect without a
//!   usable `Location`, or one hop too many, is a terminal [`ClientError::Redirect`]. Reconnects
//!   start again from the configured URL. A `POST` becomes a `GET` on `301`/`302`/`303`, and
//!   credentials (`Authorization`, `Cookie`, `Proxy-Authorization`) are not forwarded to another
//!   origin, as in the Fetch standard. User info in a URL is never sent (put credentials in an
//!   `Authorization` header) and is left out of items and errors.
//! - The response head is judged by the [`Reconnect`] machine: `5xx` and `429` back off
//!   (honouring `Retry-After`), `204`, other statuses and a content type other than
//!   `text/event-stream` give up: [`ClientError::GiveUp`], then the stream ends.
//! - Each connection gets a fresh parser seeded with the position sent in `Last-Event-ID`, as
//!   browsers do, so an event without `id:` keeps the previous id. `retry:` fields become the
//!   machine's base delay. A UTF-8 byte order mark at the start of a body is skipped.
//! - A line or an event larger than [`ClientConfig::parser_limits`] is a terminal
//!   [`ClientError::Parse`] naming the limit: reconnecting would only fetch it again.
//! - [`ClientConfig::read_timeout`] bounds silence: no bytes for that long (while connecting or
//!   streaming) counts as a broken connection and triggers a reconnect.
//! - The cursor ([`EventSource::last_cursor`]) advances item by item, including id-only
//!   checkpoint frames, so a caller that persists it after handling each item never skips one.
//!
//! `next` is cancel-safe: an in-flight connect attempt, unread queued items and the position all
//! live in the client, so it can sit in a `select!` next to a shutdown signal.
//!
//! [`Parser`]: changefeed_core::sse::Parser
//! [`Reconnect`]: changefeed_core::reconnect::Reconnect

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connector;
#[cfg(feature = "contract-service")]
pub mod contract;
mod request;
mod source;
pub mod tail;
mod typed;

use std::fmt;
use std::io;
use std::time::Duration;

pub use changefeed_core::reconnect::{GiveUpReason, ReconnectConfig};
pub use changefeed_core::sse::{ParseError, ParserLimits, SseEvent};
pub use connector::{
    Connector, HttpsConnector, MaybeTlsStream, TcpConnector, TlsError, TrustRoots,
};
pub use source::{Disconnect, EventSource, SseItem};
pub use typed::{ChangeEvent, Client, ClientItem};

#[cfg(feature = "contract-service")]
pub(crate) use request::request_once;

/// The default read timeout: three times the server's default 15 s heartbeat.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// The default number of redirects followed per connection attempt.
pub const DEFAULT_MAX_REDIRECTS: usize = 5;

/// The default [`ClientConfig::parser_limits`]: lines and events of up to 16 MiB, which covers
/// every case of the public `sse-contract-tests` suite (its largest event is about 14 MB, in one
/// line). A connection holds at most about twice this much parser state.
pub const DEFAULT_PARSER_LIMITS: ParserLimits = ParserLimits {
    max_line: 16 << 20,
    max_event_data: 16 << 20,
};

/// The environment variable holding a bearer token (`changefeed tail`, and
/// [`ClientConfig::with_token_from_env`]).
pub const TOKEN_ENV: &str = "CHANGEFEED_TOKEN";

/// How a [`Client`] or [`EventSource`] connects. Its `Debug` never prints credentials: the
/// values of `Authorization`, `Proxy-Authorization` and `Cookie` headers show as `<redacted>`.
#[derive(Clone)]
pub struct ClientConfig {
    /// The event stream URL (`http://host:port/api/v1/events?...`).
    pub url: String,
    /// Extra request headers, sent on every request in this order. A bearer token is one:
    /// `("Authorization", "Bearer …")` (not forwarded across origins on redirects).
    pub headers: Vec<(String, String)>,
    /// The position to resume from on the first connect (sent as `Last-Event-ID`). When `Some`,
    /// it takes precedence over [`ReconnectConfig::last_event_id`]; `Some("")` means none.
    pub last_event_id: Option<String>,
    /// Silence (no bytes at all) longer than this while connecting or streaming is a broken
    /// connection: the client drops it and reconnects. `None` waits forever. Default
    /// [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Option<Duration>,
    /// Backoff, jitter seed and initial position of the reconnect machine.
    pub reconnect: ReconnectConfig,
    /// Redirects followed per connection attempt (default [`DEFAULT_MAX_REDIRECTS`]).
    pub max_redirects: usize,
    /// The request method (default `GET`).
    pub method: ::http::Method,
    /// A request body, sent on every request (and reconnect) when non-empty. Without a custom
    /// `Content-Type` header it is sent as `text/plain; charset=utf-8`.
    pub body: bytes::Bytes,
    /// The longest line and the largest event the parser accepts (default
    /// [`DEFAULT_PARSER_LIMITS`]); more is a terminal [`ClientError::Parse`].
    pub parser_limits: ParserLimits,
}

/// Headers whose values are credentials, never printed.
fn is_credential_header(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie"]
        .iter()
        .any(|secret| name.eq_ignore_ascii_case(secret))
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if is_credential_header(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("headers", &headers)
            .field("last_event_id", &self.last_event_id)
            .field("read_timeout", &self.read_timeout)
            .field("reconnect", &self.reconnect)
            .field("max_redirects", &self.max_redirects)
            .field("method", &self.method)
            .field("body", &self.body)
            .field("parser_limits", &self.parser_limits)
            .finish()
    }
}

impl ClientConfig {
    /// The defaults for `url`, which is checked here: an absolute `http` or `https` URL.
    pub fn new(url: impl Into<String>) -> Result<ClientConfig, ClientError> {
        let config = ClientConfig {
            url: url.into(),
            headers: Vec::new(),
            last_event_id: None,
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            reconnect: ReconnectConfig::default(),
            max_redirects: DEFAULT_MAX_REDIRECTS,
            method: ::http::Method::GET,
            body: bytes::Bytes::new(),
            parser_limits: DEFAULT_PARSER_LIMITS,
        };
        config.validate()?;
        Ok(config)
    }

    /// Adds `Authorization: Bearer <token>` (for a server started with `--tokens` or
    /// `--jwt-*`), replacing any `Authorization` header already set.
    pub fn with_bearer_token(mut self, token: &str) -> ClientConfig {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
        self.headers
            .push(("Authorization".to_owned(), format!("Bearer {token}")));
        self
    }

    /// [`ClientConfig::with_bearer_token`] with the token in the environment variable
    /// `CHANGEFEED_TOKEN`, when it is set and not empty.
    pub fn with_token_from_env(self) -> ClientConfig {
        match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.is_empty() => self.with_bearer_token(&token),
            _ => self,
        }
    }

    /// Checks the URL (absolute `http` or `https`), the custom headers (valid, and not one the
    /// client sets itself: `Host`, `Content-Length`, `Transfer-Encoding`, `Connection`,
    /// `Last-Event-ID`) and the parser limits (non-zero).
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.parser_limits.max_line == 0 || self.parser_limits.max_event_data == 0 {
            return Err(ClientError::InvalidConfig(
                "the parser limits must be at least 1 byte".into(),
            ));
        }
        request::Plan::from_config(self).map(drop)
    }
}

/// Why a client stopped for good. After an `Err` the client yields `None`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration cannot work: a malformed or non-`http(s)` URL, an invalid header.
    InvalidConfig(String),
    /// The server's answer ends the stream (the reconnect machine gave up): `204 No Content`,
    /// a status that is not retryable, or a content type other than `text/event-stream`.
    GiveUp {
        /// Why, as decided by the reconnect machine.
        reason: GiveUpReason,
        /// The URL that answered (after redirects).
        url: String,
        /// The start of the response body, if it had one (for instance the JSON error).
        body: Option<String>,
    },
    /// A redirect could not be followed.
    Redirect {
        /// The redirect status.
        status: u16,
        /// The URL that answered with it.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The connector refused the URL or the peer in a way no retry can fix (see [`Connector`]):
    /// an unsupported scheme, a certificate that is not trusted.
    Connector(io::Error),
    /// The stream broke the parser's limits ([`ClientConfig::parser_limits`]): a line or an
    /// event too large. Items before it were delivered; reconnecting would fetch it again.
    Parse {
        /// Which limit, and its size.
        error: ParseError,
        /// The URL that sent it.
        url: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidConfig(problem) => {
                write!(f, "invalid client configuration: {problem}")
            }
            ClientError::GiveUp { reason, url, body } => {
                write!(f, "{url}: {reason}")?;
                if let Some(body) = body.as_deref().filter(|b| !b.trim().is_empty()) {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            ClientError::Redirect {
                status,
                url,
                problem,
            } => write!(f, "{url}: cannot follow the {status} redirect: {problem}"),
            ClientError::Connector(error) => write!(f, "cannot connect: {error}"),
            ClientError::Parse { error, url } => write!(
                f,
                "{url}: {error}; the stream cannot go on past it (raise the client's parser \
                 limits to accept it)"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::GiveUp { reason, .. } => Some(reason),
            ClientError::Connector(error) => error.get_ref().map(|inner| inner as _),
            ClientError::Parse { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Formats an error with its chain of sources, `a: b: c`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_credentials_and_keeps_everything_else() {
        let mut config = ClientConfig::new("http://127.0.0.1:7467/api/v1/events?project=p1")
            .unwrap()
            .with_bearer_token("s3cret-bearer");
        config.headers.push((
            "cookie".to_owned(),
            "changefeed_token=s3cret-cookie".to_owned(),
        ));
        config.headers.push((
            "PROXY-Authorization".to_owned(),
            "Basic s3cret-proxy".to_owned(),
        ));
        config
            .headers
            .push(("X-Request-Source".to_owned(), "phone".to_owned()));
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
        assert!(
            shown.contains("(\"Authorization\", \"<redacted>\")"),
            "{shown}"
        );
        assert!(
            shown.contains("(\"X-Request-Source\", \"phone\")"),
            "{shown}"
        );
        assert!(shown.contains("project=p1"), "{shown}");
        assert!(format!("{config:#?}").contains("read_timeout"));
    }
}
