//! The stream driver, transport-neutral: [`open`] turns a request (its query string and
//! `Last-Event-ID` bytes) into an [`EventStream`], and [`EventStream::next_chunk`] drives the
//! core's `Subscription` to bytes. HTTP ([`crate::http`]) and the simulation both run exactly
//! this; nothing here knows about axum or hyper.
//!
//! **Opening** (in this order): parse the query; check that every `project=` exists; subscribe
//! to the live feed, learning `P` atomically with it; *then* read the log's bounds (so
//! `head >= P`, and every event the receiver misses is at or below the head); refuse a log whose
//! epoch is not the one being served; create the subscription. Failures are [`OpenError`]s,
//! which the transport maps to its error responses.
//!
//! **Driving** follows the core's rule: after every input, drain `poll_output` until it is
//! empty, and only then give the next input. Inputs are, in priority order: a replay window
//! read for the core's `Fetch` (or, once shutdown began, the shutdown instead, so long replays
//! end promptly), shutdown, a live event or lag signal, and the core's deadline. Frames are
//! coalesced into chunks of up to [`ServerConfig::coalesce_bytes`](crate::ServerConfig); queued
//! frames are sent before a store read or a wait, so a client gets its first frame at once.
//! After a live event wakes the stream, up to `live_drain` more are taken from the ring
//! without waiting, one input at a time.
//!
//! **One stream = one state machine, no task.** The transport polls [`EventStream::next_chunk`]
//! only when the connection can take more bytes, so a client that stops reading only lags the
//! live ring (and later replays from the store): memory stays bounded and nobody else is
//! delayed. Dropping the stream releases its subscription and receiver at once.

use bytes::{Bytes, BytesMut};
use changefeed_core::subscription::SubscriptionStats;
use changefeed_core::{
    Cursor, Epoch, ErrorCode, Event, EventsQuery, FetchRequest, Filter, LogPosition, Output,
    ReplayPage, RequestError, Subscription,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::app::AppState;
use crate::broadcast::{LiveFeed, LiveReceiver};
use crate::metrics::SubscriberGuard;
use crate::shutdown::ShutdownSignal;
use crate::store::{Rows, Store, StoreError};

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenError {
    /// The request is wrong (a bad parameter, an unknown project): the client must change it.
    Request(RequestError),
    /// The store could not be read.
    Store(StoreError),
    /// The log's epoch is not the one this server serves: the database was replaced under it.
    EpochChanged {
        /// The epoch the server started with.
        serving: Epoch,
        /// The epoch the store has now.
        store: Epoch,
    },
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Request(error) => error.fmt(f),
            OpenError::Store(error) => error.fmt(f),
            OpenError::EpochChanged { serving, store } => write!(
                f,
                "the log's epoch changed from {serving} to {store} under the running server"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens a stream for a request: `query` is the raw query string (without `?`), and
/// `last_event_id` the raw bytes of the `Last-Event-ID` header, if any.
pub async fn open<S: Store, F: LiveFeed>(
    state: &AppState<S, F>,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
) -> Result<EventStream<S, F>, OpenError> {
    let query = EventsQuery::parse(query).map_err(OpenError::Request)?;
    if let Some(projects) = &query.filter.projects {
        let ids: Vec<String> = projects.iter().cloned().collect();
        let missing = state
            .store()
            .missing_projects(&ids)
            .await
            .map_err(|error| store_failed(state, error))?;
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|id| format!("{id:?}")).collect();
            return Err(OpenError::Request(RequestError::new(
                ErrorCode::UnknownProject,
                format!("no such project: {}", names.join(", ")),
            )));
        }
    }
    let start = query.start_from_header(last_event_id);

    // Subscribe first, learning P atomically with it; then read the bounds (head >= P).
    let (receiver, published) = state.feed().subscribe();
    let bounds = state
        .store()
        .bounds()
        .await
        .map_err(|error| store_failed(state, error))?;
    if bounds.epoch != state.epoch() {
        tracing::error!(
            serving = %state.epoch(),
            store = %bounds.epoch,
            "the log's epoch changed under the running server; restart it"
        );
        return Err(OpenError::EpochChanged {
            serving: state.epoch(),
            store: bounds.epoch,
        });
    }
    let filter = query.filter;
    let subscription = Subscription::new(
        start,
        filter.clone(),
        LogPosition {
            epoch: state.epoch(),
            head: bounds.head,
            floor: bounds.floor,
            published,
        },
        state.config().subscription.clone(),
        state.now(),
    );
    tracing::debug!(
        cursor = %subscription.start_cursor(),
        projects = ?filter.projects,
        types = ?filter.types,
        "event stream opened"
    );
    Ok(EventStream {
        _guard: state.metrics().subscriber(),
        shutdown: state.shutdown_signal(),
        subscription,
        filter,
        receiver,
        state: state.clone(),
        fetch: None,
        live_budget: 0,
        done: false,
        reported: SubscriptionStats::default(),
    })
}

fn store_failed<S, F>(state: &AppState<S, F>, error: StoreError) -> OpenError {
    state.metrics().store_error();
    if error.is_transient() {
        tracing::warn!(%error, "event stream: the store cannot be read right now");
    } else {
        tracing::error!(%error, "event stream: the store cannot be read");
    }
    OpenError::Store(error)
}

/// One open event stream.
pub struct EventStream<S, F: LiveFeed> {
    subscription: Subscription,
    filter: Filter,
    receiver: F::Receiver,
    state: AppState<S, F>,
    shutdown: ShutdownSignal,
    /// The core's outstanding fetch, answered once its queued frames are out.
    fetch: Option<FetchRequest>,
    /// How many more live events may be taken from the ring without waiting.
    live_budget: usize,
    done: bool,
    /// The subscription counters already added to the metrics.
    reported: SubscriptionStats,
    _guard: SubscriberGuard,
}

impl<S, F: LiveFeed> std::fmt::Debug for EventStream<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("position", &self.subscription.position())
            .field("phase", &self.subscription.phase())
            .field("fetch", &self.fetch)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Frames waiting to go out as one chunk.
#[derive(Default)]
struct Chunk {
    frames: Vec<Bytes>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push(frame);
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn into_bytes(mut self) -> Bytes {
        if self.frames.len() == 1 {
            // The shared frame itself: no copy.
            return self.frames.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.bytes);
        for frame in &self.frames {
            joined.extend_from_slice(frame);
        }
        joined.freeze()
    }
}

impl<S: Store, F: LiveFeed> EventStream<S, F> {
    /// The effective starting cursor (the `Changefeed-Cursor` response header).
    pub fn start_cursor(&self) -> Cursor {
        self.subscription.start_cursor()
    }

    /// The next chunk of the body, or `None` at its end. Poll it to completion (or drop the
    /// stream): a call abandoned half-way may lose the frames it was gathering.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let coalesce = self.state.config().coalesce_bytes.max(1);
        let mut chunk = Chunk::default();
        loop {
            // Drain everything the last input produced.
            while let Some(output) = self.subscription.poll_output() {
                match output {
                    Output::Frame(frame) => {
                        chunk.push(frame);
                        if chunk.bytes >= coalesce {
                            return Some(self.flush(chunk));
                        }
                    }
                    Output::Fetch(fetch) => self.fetch = Some(fetch),
                    Output::Close => {
                        self.done = true;
                        return (!chunk.is_empty()).then(|| self.flush(chunk));
                    }
                }
            }
            // Queued frames go out before a store read or a wait.
            if !chunk.is_empty() && (self.fetch.is_some() || self.live_budget == 0) {
                return Some(self.flush(chunk));
            }
            // The next input.
            if let Some(fetch) = self.fetch.take() {
                if self.shutdown.is_triggered() {
                    // Long replays still end promptly at shutdown.
                    self.subscription.handle_shutdown(self.state.now());
                } else if let Err(error) = self.answer(fetch).await {
                    self.replay_failed(&error);
                    return None;
                }
                continue;
            }
            if self.live_budget > 0 {
                self.live_budget -= 1;
                let now = self.state.now();
                match self.receiver.try_recv() {
                    Ok(event) => self.subscription.handle_live(&event, now),
                    Err(TryRecvError::Lagged(_)) => self.subscription.handle_lagged(now),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => self.live_budget = 0,
                }
                continue;
            }
            self.wait_for_input().await;
        }
    }

    /// Waits for the first of shutdown, a live event and the core's deadline, and gives it to
    /// the subscription.
    async fn wait_for_input(&mut self) {
        let deadline = self
            .subscription
            .poll_timeout()
            .map(|(at, _reason)| self.state.instant_at(at));
        tokio::select! {
            biased;
            _ = self.shutdown.wait() => {
                self.subscription.handle_shutdown(self.state.now());
            }
            received = self.receiver.recv() => {
                let now = self.state.now();
                match received {
                    Ok(event) => {
                        self.subscription.handle_live(&event, now);
                        self.live_budget = self.state.config().live_drain;
                    }
                    Err(RecvError::Lagged(_)) => self.subscription.handle_lagged(now),
                    // The feed is gone: the server is stopping.
                    Err(RecvError::Closed) => self.subscription.handle_shutdown(now),
                }
            }
            _ = sleep_until_opt(deadline) => {
                self.subscription.handle_timeout(self.state.now());
            }
        }
    }

    /// Reads one replay window and gives it to the subscription.
    async fn answer(&mut self, fetch: FetchRequest) -> Result<(), StoreError> {
        let rows = self.state.store().window(&self.filter, fetch).await?;
        let page = replay_page(rows, self.state.epoch());
        self.subscription.handle_page(page, self.state.now());
        Ok(())
    }

    /// A replay read failed: end the stream (the client resumes from its last id).
    fn replay_failed(&mut self, error: &StoreError) {
        self.done = true;
        self.state.metrics().store_error();
        let position = self.subscription.position();
        if error.is_transient() {
            tracing::warn!(%error, %position, "event stream: replay read failed; ending the stream (the client resumes from its last id)");
        } else {
            tracing::error!(%error, %position, "event stream: replay read failed; ending the stream (the client resumes from its last id)");
        }
    }
}

impl<S, F: LiveFeed> EventStream<S, F> {
    fn flush(&mut self, chunk: Chunk) -> Bytes {
        let metrics = self.state.metrics();
        metrics.frames_sent(chunk.frames.len() as u64, chunk.bytes as u64);
        self.report();
        chunk.into_bytes()
    }

    /// Adds the subscription's counter increments to the metrics.
    fn report(&mut self) {
        let now = self.subscription.stats();
        let before = std::mem::replace(&mut self.reported, now);
        self.state.metrics().subscription_progress(
            now.replayed_rows - before.replayed_rows,
            now.lag_fallbacks - before.lag_fallbacks,
            now.resets - before.resets,
        );
    }
}

/// The one place where store rows become a replay page for the core.
fn replay_page(rows: Rows, epoch: Epoch) -> ReplayPage {
    let (rows, bounds) = rows.into_parts();
    ReplayPage {
        rows: rows.iter().map(|row| Event::encode(row, epoch)).collect(),
        head: bounds.head,
        floor: bounds.floor,
    }
}

impl<S, F: LiveFeed> Drop for EventStream<S, F> {
    fn drop(&mut self) {
        self.report();
        tracing::debug!(
            position = %self.subscription.position(),
            phase = ?self.subscription.phase(),
            "event stream closed"
        );
        // `_guard` decrements the subscriber gauge as it drops, right after this.
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
