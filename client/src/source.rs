//! [`EventSource`]: the generic, reconnecting SSE client.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use changefeed_core::reconnect::{Action, GiveUpReason, Reconnect, Verdict};
use changefeed_core::sse::{Item, Parser, ParserLimits, SseEvent};
use http::header;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::request::{open, redacted, ConnTask, OpenError, Opened, Plan};
use crate::{error_chain, ClientConfig, ClientError, Connector};

/// Something an [`EventSource`] observed, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A `200 text/event-stream` response was accepted and is being read.
    Connected {
        /// The URL that answered (after redirects).
        url: String,
    },
    /// A dispatched event, of any type (`message` when the frame had no `event:`).
    Event(SseEvent),
    /// A comment line: the text after the `:` (a leading space is kept).
    Comment(String),
    /// The connection ended or the attempt failed; the client reconnects by itself.
    Disconnected {
        /// What happened.
        reason: Disconnect,
        /// How long until the next connection attempt.
        retry_in: Duration,
    },
}

/// Why a connection ended or an attempt failed (the client retries after each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The server ended the response body.
    Ended,
    /// Nothing arrived for this long.
    ReadTimeout(Duration),
    /// Reading the body failed.
    Io(String),
    /// Connecting or sending the request failed, or the response head did not arrive in time.
    Connect(String),
    /// The server answered a retryable status (`5xx`, `429`).
    Status {
        /// The status code.
        status: u16,
        /// The start of the response body, if any.
        body: Option<String>,
    },
    /// The caller asked for it ([`EventSource::restart`]).
    Restart,
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Ended => f.write_str("the server ended the event stream"),
            Disconnect::ReadTimeout(after) => {
                write!(
                    f,
                    "nothing received for {after:?}: the connection is presumed broken"
                )
            }
            Disconnect::Io(error) => write!(f, "reading the event stream failed: {error}"),
            Disconnect::Connect(error) => f.write_str(error),
            Disconnect::Status { status, body } => {
                write!(f, "the server answered HTTP status {status}")?;
                if let Some(body) = body.as_deref().filter(|b| !b.trim().is_empty()) {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            Disconnect::Restart => f.write_str("restarted by the caller"),
        }
    }
}

type Attempt = Pin<Box<dyn Future<Output = Result<Opened, OpenError>> + Send>>;

enum Conn {
    /// No connection: backing off, or about to ask the machine what to do.
    Idle,
    /// A connection attempt (connect, request, redirects) is in flight.
    Connecting {
        attempt: Attempt,
        deadline: Option<Instant>,
    },
    /// A response body is being read.
    Streaming {
        body: Incoming,
        _conn: ConnTask,
        deadline: Option<Instant>,
        /// The URL that answered, for errors.
        url: String,
    },
}

/// A queued output: an item, or a cursor move by a frame that dispatched no event.
enum Queued {
    Item(SseItem),
    Cursor(String),
}

/// A reconnecting SSE client yielding raw [`SseItem`]s (see the [crate docs](crate)).
pub struct EventSource<C: Connector> {
    connector: C,
    plan: Result<Arc<Plan>, Option<ClientError>>,
    read_timeout: Option<Duration>,
    machine: Reconnect,
    limits: ParserLimits,
    parser: Parser,
    /// The head of the response being streamed (or last streamed).
    response: Option<http::response::Parts>,
    origin: Instant,
    conn: Conn,
    queue: VecDeque<Queued>,
    /// A `Connect` the machine already answered (while computing `retry_in`), not yet started.
    connect_now: Option<Option<String>>,
    /// The position as of the last item handed out.
    cursor: Option<String>,
    /// A terminal error to hand out next.
    terminal: Option<ClientError>,
    finished: bool,
}

impl<C: Connector> fmt::Debug for EventSource<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSource")
            .field("machine", &self.machine)
            .field("cursor", &self.cursor)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<C: Connector> EventSource<C> {
    /// A client for `config` that connects through `connector` on the first [`next`](Self::next).
    /// A configuration error surfaces there as [`ClientError::InvalidConfig`].
    pub fn new(config: ClientConfig, connector: C) -> EventSource<C> {
        let plan = Plan::from_config(&config).map(Arc::new).map_err(Some);
        let mut reconnect = config.reconnect.clone();
        if config.last_event_id.is_some() {
            reconnect.last_event_id = config.last_event_id.clone();
        }
        let machine = Reconnect::new(reconnect);
        let cursor = machine.last_event_id().map(str::to_owned);
        EventSource {
            connector,
            plan,
            read_timeout: config.read_timeout,
            limits: config.parser_limits,
            parser: Parser::with_limits(cursor.clone().unwrap_or_default(), config.parser_limits),
            response: None,
            machine,
            origin: Instant::now(),
            conn: Conn::Idle,
            queue: VecDeque::new(),
            connect_now: None,
            cursor,
            terminal: None,
            finished: false,
        }
    }

    /// The position after the last item returned by [`next`](Self::next) (including frames
    /// that carried only an `id:`), or the configured starting position; `None` if there is
    /// none. Persist it to resume later with [`ClientConfig::last_event_id`].
    pub fn last_cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The head (status and headers) of the response being streamed, from the moment its
    /// [`SseItem::Connected`] is handed out until the next one; `None` before the first. A
    /// changefeed server sends `Changefeed-Cursor` (where the stream starts) and
    /// `Changefeed-Head` (the newest position when it opened) there.
    pub fn response_head(&self) -> Option<&http::response::Parts> {
        self.response.as_ref()
    }

    /// The reconnect base delay: the server's last `retry:` value, else the configured initial
    /// delay.
    pub fn retry_delay(&self) -> Duration {
        self.machine.retry_delay()
    }

    /// Drops the current connection (or connection attempt) and reconnects as if the server had
    /// dropped it, yielding [`SseItem::Disconnected`] with [`Disconnect::Restart`]. Does nothing
    /// while backing off or after the client stopped.
    pub fn restart(&mut self) {
        if self.finished || matches!(self.conn, Conn::Idle) {
            return;
        }
        self.conn = Conn::Idle;
        let now = self.now();
        self.machine.on_disconnect(now);
        self.disconnected(Disconnect::Restart);
    }

    /// Stops for good: drops any connection; [`next`](Self::next) returns `None` from now on.
    pub fn close(&mut self) {
        self.machine.close();
        self.conn = Conn::Idle;
        self.queue.clear();
        self.connect_now = None;
        self.terminal = None;
        self.finished = true;
    }

    /// The next item; `Some(Err(_))` once if the client stops on its own, then `None`.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Result<SseItem, ClientError>> {
        loop {
            while let Some(queued) = self.queue.pop_front() {
                match queued {
                    Queued::Cursor(id) => self.cursor = Some(id).filter(|id| !id.is_empty()),
                    Queued::Item(item) => {
                        if let SseItem::Event(event) = &item {
                            self.cursor =
                                Some(event.last_event_id.clone()).filter(|id| !id.is_empty());
                        }
                        return Some(Ok(item));
                    }
                }
            }
            if let Some(error) = self.terminal.take() {
                self.stop();
                return Some(Err(error));
            }
            if self.finished {
                return None;
            }
            match &mut self.conn {
                Conn::Idle => self.idle().await,
                Conn::Connecting { attempt, deadline } => {
                    let outcome = match *deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, attempt.as_mut())
                            .await
                            .unwrap_or_else(|_| {
                                Err(OpenError::Retry(format!(
                                    "no response within {:?}",
                                    self.read_timeout.unwrap_or_default()
                                )))
                            }),
                        None => attempt.as_mut().await,
                    };
                    self.conn = Conn::Idle;
                    self.opened(outcome);
                }
                Conn::Streaming { body, deadline, .. } => {
                    let frame = match *deadline {
                        Some(at) => match tokio::time::timeout_at(at, body.frame()).await {
                            Ok(frame) => frame,
                            Err(_) => {
                                let silence = self.read_timeout.unwrap_or_default();
                                self.end_stream(Disconnect::ReadTimeout(silence));
                                continue;
                            }
                        },
                        None => body.frame().await,
                    };
                    match frame {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                self.received(&data);
                            }
                        }
                        Some(Err(error)) => self.end_stream(Disconnect::Io(error_chain(&error))),
                        None => self.end_stream(Disconnect::Ended),
                    }
                }
            }
        }
    }

    /// No connection: start one if the machine says so, else wait until it may.
    async fn idle(&mut self) {
        let plan = match &mut self.plan {
            Ok(plan) => Arc::clone(plan),
            Err(error) => {
                self.terminal = error.take();
                self.finished |= self.terminal.is_none();
                return;
            }
        };
        let now = self.now();
        let action = match self.connect_now.take() {
            Some(last_event_id) => Action::Connect { last_event_id },
            None => self.machine.poll(now),
        };
        match action {
            Action::Connect { last_event_id } => {
                tracing::debug!(url = %plan.url, ?last_event_id, "connecting");
                let attempt = open(self.connector.clone(), plan, last_event_id);
                self.conn = Conn::Connecting {
                    attempt: Box::pin(attempt),
                    deadline: self.deadline(),
                };
            }
            Action::WaitUntil(at) => tokio::time::sleep_until(self.instant(at)).await,
            Action::GiveUp(GiveUpReason::Closed) => self.stop(),
            Action::GiveUp(reason) => {
                // The machine gave up while judging a response, which already queued the error.
                tracing::debug!(%reason, "event source stopped");
                self.stop();
            }
            // The machine expects an outcome no connection will report (cannot happen while
            // `conn` is idle); report the attempt as failed so it schedules a new one.
            Action::Connecting | Action::Streaming => self.machine.on_connect_error(now),
        }
    }

    /// Judges the outcome of a connection attempt.
    fn opened(&mut self, outcome: Result<Opened, OpenError>) {
        let now = self.now();
        let opened = match outcome {
            Ok(opened) => opened,
            Err(OpenError::Retry(message)) => {
                self.machine.on_connect_error(now);
                self.disconnected(Disconnect::Connect(message));
                return;
            }
            Err(OpenError::Fatal(error)) => {
                self.machine.close();
                self.terminal = Some(error);
                return;
            }
        };
        let header_text = |name: header::HeaderName| {
            opened
                .head
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let content_type = header_text(header::CONTENT_TYPE);
        let retry_after = header_text(header::RETRY_AFTER);
        let status = opened.head.status.as_u16();
        match self
            .machine
            .on_response(now, status, content_type.as_deref(), retry_after.as_deref())
        {
            Verdict::Stream => {
                let seed = self.machine.last_event_id().unwrap_or_default();
                self.parser = Parser::with_limits(seed, self.limits);
                let url = redacted(&opened.url);
                self.queue
                    .push_back(Queued::Item(SseItem::Connected { url: url.clone() }));
                self.response = Some(opened.head);
                self.conn = Conn::Streaming {
                    body: opened.body,
                    _conn: opened.conn,
                    deadline: self.deadline(),
                    url,
                };
            }
            Verdict::Retry => self.disconnected(Disconnect::Status {
                status,
                body: opened.snippet,
            }),
            Verdict::GiveUp(reason) => {
                self.terminal = Some(ClientError::GiveUp {
                    reason,
                    url: redacted(&opened.url),
                    body: opened.snippet,
                });
            }
        }
    }

    /// Feeds a chunk of the body to the parser and queues what it completed.
    fn received(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if let Conn::Streaming { deadline, .. } = &mut self.conn {
            *deadline = self
                .read_timeout
                .and_then(|t| Instant::now().checked_add(t));
        }
        let fed = self.parser.feed(data);
        let mut progressed = false;
        // The position as of the last queued event (or before this chunk).
        let mut position = self.machine.last_event_id().unwrap_or_default().to_owned();
        while let Some(item) = self.parser.next_item() {
            progressed = true;
            match item {
                Item::Event(event) => {
                    position.clone_from(&event.last_event_id);
                    self.queue.push_back(Queued::Item(SseItem::Event(event)));
                }
                Item::Comment(text) => self.queue.push_back(Queued::Item(SseItem::Comment(text))),
                Item::Retry(millis) => self.machine.on_retry(millis),
            }
        }
        let last = self.parser.last_event_id();
        if last != position {
            // Frames after the last event carried only an `id:`.
            progressed = true;
            self.queue.push_back(Queued::Cursor(last.to_owned()));
        }
        if self.machine.last_event_id().unwrap_or_default() != last {
            self.machine.on_last_event_id(last);
        }
        if progressed {
            let now = self.now();
            self.machine.on_progress(now);
        }
        if let Err(error) = fed {
            // Terminal: a reconnect would fetch the same oversized line or event again.
            let url = match &self.conn {
                Conn::Streaming { url, .. } => url.clone(),
                _ => String::new(),
            };
            tracing::debug!(%error, %url, "event stream exceeds the parser limits");
            self.stop();
            self.terminal = Some(ClientError::Parse { error, url });
        }
    }

    /// The response body ended or broke: drop the connection and schedule the next.
    fn end_stream(&mut self, reason: Disconnect) {
        self.conn = Conn::Idle;
        self.parser.finish();
        let now = self.now();
        self.machine.on_disconnect(now);
        self.disconnected(reason);
    }

    /// Queues a [`SseItem::Disconnected`] with the delay the machine scheduled.
    fn disconnected(&mut self, reason: Disconnect) {
        let now = self.now();
        let retry_in = match self.machine.poll(now) {
            Action::WaitUntil(at) => at.saturating_sub(now),
            Action::Connect { last_event_id } => {
                self.connect_now = Some(last_event_id);
                Duration::ZERO
            }
            _ => Duration::ZERO,
        };
        tracing::debug!(%reason, ?retry_in, "event stream disconnected");
        self.queue
            .push_back(Queued::Item(SseItem::Disconnected { reason, retry_in }));
    }

    fn stop(&mut self) {
        self.machine.close();
        self.conn = Conn::Idle;
        self.connect_now = None;
        self.finished = true;
    }

    fn deadline(&self) -> Option<Instant> {
        self.read_timeout
            .and_then(|t| Instant::now().checked_add(t))
    }

    /// Now on the machine's time scale.
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// A machine deadline as an instant (far in the future if it does not fit).
    fn instant(&self, at: Duration) -> Instant {
        self.origin
            .checked_add(at)
            .or_else(|| Instant::now().checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or_else(Instant::now)
    }
}
