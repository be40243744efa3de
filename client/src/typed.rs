//! [`Client`]: the typed view of a changefeed stream.

use std::time::Duration;

use changefeed_core::sse::SseEvent;
use serde::Deserialize;

use crate::source::{Disconnect, EventSource, SseItem};
use crate::{ClientConfig, ClientError, Connector};

use changefeed_core::wire::{Ready, ResetNotice, READY_EVENT as READY, RESET_EVENT as RESET};

/// One change from the log, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The frame's id: the cursor `<epoch>:<seq>` of this event.
    pub id: String,
    /// The event type (`pr_updated`, ...): the frame's `event:` field.
    pub kind: String,
    /// The event JSON exactly as received (the `data:` of the frame).
    pub data: String,
    /// `seq` from the event JSON, if it has one.
    pub seq: Option<u64>,
    /// `projectId` from the event JSON, if it has one.
    pub project_id: Option<String>,
    /// `sessionId` from the event JSON, if it has one.
    pub session_id: Option<String>,
    /// `createdAt` from the event JSON, if it has one.
    pub created_at: Option<String>,
}

impl ChangeEvent {
    /// The event JSON parsed as a value.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(&self.data)
    }

    fn from_sse(event: SseEvent) -> ChangeEvent {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            seq: Option<u64>,
            project_id: Option<String>,
            session_id: Option<String>,
            created_at: Option<String>,
        }
        // The head is informative; an event whose data is not the expected JSON is still
        // delivered, with the fields it lacks set to `None`.
        let head: Head = serde_json::from_str(&event.data).unwrap_or_default();
        ChangeEvent {
            id: event.last_event_id,
            kind: event.event_type,
            data: event.data,
            seq: head.seq,
            project_id: head.project_id,
            session_id: head.session_id,
            created_at: head.created_at,
        }
    }
}

/// What a [`Client`] observed, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientItem {
    /// A stream response was accepted (see [`SseItem::Connected`]).
    Connected {
        /// The URL that answered (after redirects).
        url: String,
    },
    /// A change event.
    Event(ChangeEvent),
    /// `changefeed.reset`: the cursor could not be honoured exactly; events may have been
    /// skipped, so state derived from earlier events must be refetched. The stream continues
    /// after `after`.
    Reset {
        /// The cursor as the server received it.
        requested: String,
        /// The new cursor.
        after: String,
        /// `pruned`, `ahead_of_head`, `epoch_mismatch` or `invalid_cursor`; a reason a newer
        /// server adds is passed on as sent (it is still a reset: refetch).
        reason: String,
    },
    /// `changefeed.ready`: replay caught up and the stream is live.
    Ready {
        /// The position at that moment.
        after: String,
        /// Change frames sent on this connection before it.
        replayed: u64,
        /// The server's heartbeat interval.
        heartbeat_ms: u64,
    },
    /// A comment line (the server's heartbeats are empty comments).
    Comment(String),
    /// A `changefeed.*` control frame whose data is not what the protocol says. The cursor
    /// still moved to its id.
    Malformed {
        /// The frame as received.
        event: SseEvent,
        /// What is wrong with it.
        error: String,
    },
    /// The connection ended or the attempt failed; the client reconnects by itself.
    Disconnected {
        /// What happened.
        reason: Disconnect,
        /// How long until the next attempt.
        retry_in: Duration,
    },
}

impl ClientItem {
    fn from_sse(item: SseItem) -> ClientItem {
        match item {
            SseItem::Connected { url } => ClientItem::Connected { url },
            SseItem::Comment(text) => ClientItem::Comment(text),
            SseItem::Disconnected { reason, retry_in } => {
                ClientItem::Disconnected { reason, retry_in }
            }
            SseItem::Event(event) if event.event_type == RESET => {
                match ResetNotice::from_json(&event.data) {
                    Ok(reset) => ClientItem::Reset {
                        requested: reset.requested,
                        after: reset.after,
                        reason: reset.reason,
                    },
                    Err(error) => ClientItem::Malformed {
                        event,
                        error: error.to_string(),
                    },
                }
            }
            SseItem::Event(event) if event.event_type == READY => {
                match Ready::from_json(&event.data) {
                    Ok(ready) => ClientItem::Ready {
                        after: ready.after.to_string(),
                        replayed: ready.replayed,
                        heartbeat_ms: ready.heartbeat_ms,
                    },
                    Err(error) => ClientItem::Malformed {
                        event,
                        error: error.to_string(),
                    },
                }
            }
            SseItem::Event(event) => ClientItem::Event(ChangeEvent::from_sse(event)),
        }
    }
}

/// A reconnecting changefeed client yielding typed [`ClientItem`]s (see the
/// [crate docs](crate)).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use changefeed_client::{Client, ClientConfig, ClientItem, TcpConnector};
///
/// let mut config = ClientConfig::new("http://127.0.0.1:7467/api/v1/events?project=p1")?;
/// config.last_event_id = Some("00c0ffee00c0ffee:41".into());
/// let mut client = Client::new(config, TcpConnector);
/// while let Some(item) = client.next().await {
///     if let ClientItem::Event(event) = item? {
///         println!("{} {}", event.kind, event.data);
///         // persist client.last_cursor() here to resume after a restart
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client<C: Connector> {
    source: EventSource<C>,
}

impl<C: Connector> Client<C> {
    /// A client for `config`, connecting through `connector` on the first
    /// [`next`](Self::next).
    pub fn new(config: ClientConfig, connector: C) -> Client<C> {
        Client {
            source: EventSource::new(config, connector),
        }
    }

    /// The next item; `Some(Err(_))` once if the client stops on its own, then `None`.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<ClientItem, ClientError>> {
        Some(self.source.next().await?.map(ClientItem::from_sse))
    }

    /// See [`EventSource::last_cursor`].
    pub fn last_cursor(&self) -> Option<&str> {
        self.source.last_cursor()
    }

    /// See [`EventSource::response_head`].
    pub fn response_head(&self) -> Option<&http::response::Parts> {
        self.source.response_head()
    }

    /// See [`EventSource::retry_delay`].
    pub fn retry_delay(&self) -> Duration {
        self.source.retry_delay()
    }

    /// See [`EventSource::restart`].
    pub fn restart(&mut self) {
        self.source.restart();
    }

    /// See [`EventSource::close`].
    pub fn close(&mut self) {
        self.source.close();
    }

    /// The raw event source underneath.
    pub fn into_source(self) -> EventSource<C> {
        self.source
    }
}
