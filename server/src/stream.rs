//! The stream driver, transport-neutral: [`open`] turns a request (its query string and
//! `Last-Event-ID` bytes) into an [`EventStream`], and [`EventStream::next_chunk`] drives the
//! core's `Subscription` to bytes. HTTP ([`crate::http`]) and the simulation both run exactly
//! this; nothing here knows about axum or hyper.
//!
//! **Opening** (in this order): parse the query; with auth on, authenticate the presented
//! token (`401`), narrow the filter to its grant (`403` for a `project=` outside it, before
//! any existence check) and take a stream slot (`429`); check that every `project=` exists; subscribe
//! to the live feed, learning `P` atomically with it; *then* read the log's bounds (so
//! `head >= P`, and every event the receiver misses is at or below the head); refuse a log whose
//! epoch is not the one being served; create the subscription. Failures are [`OpenError`]s,
//! which the transport maps to its error responses.
//!
//! **Driving** follows the core's rule: after every input, drain `poll_output` until it is
//! empty, and only then give the next input. Inputs are, in priority order: a replay window
//! read for the core's `Fetch` (or, once shutdown began, the shutdown instead, so long replays
//! end promptly), shutdown, a live event or lag signal, and the core's deadline. The core
//! writes replayed frames into batches of [`ServerConfig::coalesce_bytes`](crate::ServerConfig)
//! and its outputs are coalesced into chunks of up to that size; queued frames are sent before
//! a store read or a wait, so a client gets its first frame at once. Each window is read into
//! the rows of the last one.
//! After a live event wakes the stream, up to `live_drain` more are taken from the ring
//! without waiting, one input at a time.
//!
//! **Auth while streaming:** a stream opened with a token ends with a final checkpoint (as at
//! shutdown) when the token expires or a tokens-file reload no longer grants its projects.
//!
//! **One stream = one state machine, no task.** The transport polls [`EventStream::next_chunk`]
//! only when the connection can take more bytes, so a client that stops reading only lags the
//! live ring (and later replays from the store): memory stays bounded and nobody else is
//! delayed. Dropping the stream releases its subscription and receiver at once.

use bytes::{Bytes, BytesMut};
use changefeed_core::subscription::{SubscriptionConfig, SubscriptionStats};
use changefeed_core::{
    Cursor, Epoch, ErrorCode, EventRow, EventsQuery, FetchRequest, Filter, LogPosition, Output,
    ReplayPage, RequestError, Subscription,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::app::AppState;
use crate::auth::{self, AuthError, Limit, Presented, StreamAuth, StreamPermit};
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
    /// Auth is on and the request has no valid token.
    Unauthorized(AuthError),
    /// A concurrent-stream limit is reached.
    TooManyStreams(Limit),
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
            OpenError::Unauthorized(error) => error.fmt(f),
            OpenError::TooManyStreams(limit) => write!(
                f,
                "too many concurrent streams ({} limit); retry later",
                match limit {
                    Limit::PerToken => "per-token",
                    Limit::Global => "server",
                }
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens a stream for a request: `query` is the raw query string (without `?`), and
/// `last_event_id` the raw bytes of the `Last-Event-ID` header, if any.
/// Without a token: with auth on this is `401`.
pub async fn open<S: Store, F: LiveFeed>(
    state: &AppState<S, F>,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
) -> Result<EventStream<S, F>, OpenError> {
    open_with_token(state, query, last_event_id, Ok(None)).await
}

/// [`open`] with the token the request presented (see [`auth::presented_token`]); ignored
/// with auth off.
pub async fn open_with_token<S: Store, F: LiveFeed>(
    state: &AppState<S, F>,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
    presented: Presented,
) -> Result<EventStream<S, F>, OpenError> {
    // With auth on ids are sealed: `after` and `Last-Event-ID` must be ids this key sealed.
    let ids = state.ids();
    let query = EventsQuery::parse_with(query, ids).map_err(OpenError::Request)?;
    let config_auth = &state.config().auth;
    let metrics = state.metrics();
    let principal = if config_auth.enabled() {
        let principal = config_auth.authenticate(presented).map_err(|error| {
            metrics.auth_rejected("unauthorized");
            OpenError::Unauthorized(error)
        })?;
        Some(principal)
    } else {
        None
    };
    let filter = match &principal {
        Some(principal) => query.authorize(&principal.grant).map_err(|error| {
            metrics.auth_rejected("forbidden");
            OpenError::Request(error)
        })?,
        None => query.filter.clone(),
    };
    let permit = config_auth
        .admit(principal.as_ref(), metrics)
        .map_err(OpenError::TooManyStreams)?;
    // Only the projects the request names must exist (granted ones may not exist yet).
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
    let start = query.start_from_header_with(last_event_id, ids);

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
    let stream_auth = principal
        .as_ref()
        .map(|principal| config_auth.watch_stream(principal, filter.projects.clone()));
    // With auth on the core applies the grant again to every replayed and live row, and
    // seals every id.
    let access = state.access(principal.as_ref().map(|principal| &principal.grant));
    let mut subscription = Subscription::with_access(
        start,
        filter.clone(),
        access,
        LogPosition {
            epoch: state.epoch(),
            head: bounds.head,
            floor: bounds.floor,
            published,
        },
        SubscriptionConfig {
            // The core writes replayed frames straight into buffers of the chunk size.
            batch_bytes: state.config().coalesce_bytes,
            ..state.config().subscription.clone()
        },
        state.now(),
    );
    if query.last.is_some() {
        // `last=`: the store locates the start before anything is written (the core's
        // `Output::Locate` is the only output queued until it is answered).
        if let Some(Output::Locate(request)) = subscription.poll_output() {
            let located = state
                .store()
                .locate(&filter, request)
                .await
                .map_err(|error| store_failed(state, error))?;
            subscription.handle_located(located, state.now());
        }
    }
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
        // Sealed ids hide the global head: no `Changefeed-Head`.
        head_at_open: (!ids.is_sealed()).then(|| Cursor::new(state.epoch(), published)),
        state: state.clone(),
        fetch: None,
        live_budget: 0,
        spare_rows: Vec::new(),
        done: false,
        reported: SubscriptionStats::default(),
        auth: stream_auth,
        _permit: permit,
    })
}

fn store_failed<S, F>(state: &AppState<S, F>, error: StoreError) -> OpenError {
    state.metrics().store_error();
    tracing::warn!(%error, "event stream: the store cannot be read; not opening the stream");
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
    /// The last replay page's rows, read over by the next window.
    spare_rows: Vec<EventRow>,
    done: bool,
    /// The subscription counters already added to the metrics.
    reported: SubscriptionStats,
    /// The newest position published when the stream opened (`Changefeed-Head`): a replay
    /// reaches at least this far before `changefeed.ready`. `None` with sealed ids.
    head_at_open: Option<Cursor>,
    /// The token's expiry and revocation, with auth on.
    auth: Option<StreamAuth>,
    /// The stream's slot under the concurrent-stream limits.
    _permit: Option<StreamPermit>,
    _guard: SubscriberGuard,
}

/// Frames waiting to go out as one chunk.
#[derive(Default)]
struct Chunk {
    /// The core's outputs, each one or more whole frames.
    parts: Vec<Bytes>,
    frames: usize,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, frames: Bytes, count: usize) {
        self.bytes += frames.len();
        self.frames += count;
        self.parts.push(frames);
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn into_bytes(mut self) -> Bytes {
        if self.parts.len() == 1 {
            // A shared live frame or the core's batch itself: no copy.
            return self.parts.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.bytes);
        for part in &self.parts {
            joined.extend_from_slice(part);
        }
        joined.freeze()
    }
}

impl<S: Store, F: LiveFeed> EventStream<S, F> {
    /// The effective starting cursor (for logs and tests; clients see [`Self::start_id`]).
    pub fn start_cursor(&self) -> Cursor {
        self.subscription.start_cursor()
    }

    /// The first frame's id (the `Changefeed-Cursor` response header): the effective starting
    /// cursor, sealed with auth on.
    pub fn start_id(&self) -> String {
        match self.subscription.start_id() {
            Some(id) => id.to_owned(),
            None => self.subscription.start_cursor().to_string(),
        }
    }

    /// The newest position published when the stream opened (the `Changefeed-Head` header),
    /// or `None` with sealed ids (it would be the global head).
    pub fn head_at_open(&self) -> Option<Cursor> {
        self.head_at_open
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
                    Output::Frames { bytes, count } => {
                        chunk.push(bytes, count);
                        if chunk.bytes >= coalesce {
                            return Some(self.flush(chunk));
                        }
                    }
                    Output::Fetch(fetch) => self.fetch = Some(fetch),
                    // Answered in `open`; never asked for again.
                    Output::Locate(_) | Output::Close => {
                        self.done = true;
                        return (!chunk.is_empty()).then(|| self.flush(chunk));
                    }
                }
            }
            // Queued frames go out before a store read or a wait.
            if !chunk.is_empty() && (self.fetch.is_some() || self.live_budget == 0) {
                return Some(self.flush(chunk));
            }
            // The next input. (The store read is boxed: its state is large, and an idle live
            // stream's future should not be sized for it.)
            if let Some(fetch) = self.fetch.take() {
                if self.shutdown.is_triggered() {
                    // Long replays still end promptly at shutdown.
                    self.subscription.handle_shutdown(self.state.now());
                } else if let Some(reason) = self.auth.as_mut().and_then(StreamAuth::check_now) {
                    // And at a revocation or expiry: nothing more is read for this token.
                    self.end_for_auth(reason);
                } else if let Err(error) = Box::pin(self.answer(fetch)).await {
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
            // Nothing left to fetch: the last page's rows go (an idle stream holds none).
            self.spare_rows = Vec::new();
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
            reason = auth_ended(&mut self.auth) => {
                self.end_for_auth(reason);
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

    /// The token expired or was revoked: end with a final checkpoint, so the client resumes
    /// exactly once it has a valid token again.
    fn end_for_auth(&mut self, reason: auth::EndReason) {
        self.auth = None;
        self.state.metrics().auth_stream_ended(reason.as_str());
        tracing::info!(
            reason = reason.as_str(),
            position = %self.subscription.position(),
            "event stream: the token no longer holds; ending the stream with a final checkpoint"
        );
        self.subscription.handle_shutdown(self.state.now());
    }

    /// Reads one replay window (into the last page's rows) and gives it to the subscription.
    async fn answer(&mut self, fetch: FetchRequest) -> Result<(), StoreError> {
        let spare = std::mem::take(&mut self.spare_rows);
        let rows = self
            .state
            .store()
            .window_reusing(&self.filter, fetch, spare)
            .await?;
        let page = replay_page(rows);
        self.spare_rows = self.subscription.handle_page(page, self.state.now());
        Ok(())
    }

    /// A replay read failed: end the stream (the client resumes from its last id).
    fn replay_failed(&mut self, error: &StoreError) {
        self.done = true;
        self.state.metrics().store_error();
        tracing::warn!(
            %error,
            position = %self.subscription.position(),
            "event stream: replay read failed; ending the stream (the client resumes from its last id)"
        );
    }
}

impl<S, F: LiveFeed> EventStream<S, F> {
    fn flush(&mut self, chunk: Chunk) -> Bytes {
        let metrics = self.state.metrics();
        metrics.frames_sent(chunk.frames as u64, chunk.bytes as u64);
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

/// The one place where store rows become a replay page: the rows go to the core as they are
/// (it encodes the matching ones with its own epoch), with the bounds of their snapshot.
fn replay_page(rows: Rows) -> ReplayPage {
    let (rows, bounds) = rows.into_parts();
    ReplayPage {
        rows,
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

async fn auth_ended(auth: &mut Option<StreamAuth>) -> auth::EndReason {
    match auth {
        Some(auth) => auth.ended().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The driver against a real SQLite log and the real wiring, one chunk at a time. The tests
    //! run on the current-thread runtime, so whatever the tailer publishes in one go is in the
    //! ring before the stream looks.

    use std::time::Duration;

    use changefeed_core::Seq;

    use super::*;
    use crate::app::{self, App};
    use crate::shutdown::{self, ShutdownTrigger};
    use crate::store::sqlite::SqliteStore;
    use crate::ServerConfig;

    struct Fixture {
        server: App<SqliteStore>,
        store: SqliteStore,
        trigger: ShutdownTrigger,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        async fn new(config: ServerConfig) -> Fixture {
            Fixture::with_rows(config, &[]).await
        }

        /// A log holding `rows` (project, kind) before the server starts.
        async fn with_rows(config: ServerConfig, rows: &[(&str, &str)]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("stream.db").display());
            let store = SqliteStore::open(&url).await.unwrap();
            store
                .execute_write("INSERT INTO projects (id, name) VALUES ('p', 'P'), ('q', 'Q')")
                .await
                .unwrap();
            append(&store, rows).await;
            let (trigger, signal) = shutdown::channel();
            let server = app::start(store.clone(), config, signal).await.unwrap();
            Fixture {
                server,
                store,
                trigger,
                _dir: dir,
            }
        }

        fn state(&self) -> &AppState<SqliteStore> {
            self.server.state()
        }

        async fn open(
            &self,
            query: &str,
        ) -> EventStream<SqliteStore, crate::broadcast::Broadcaster> {
            open(self.state(), Some(query), None).await.unwrap()
        }

        /// Appends rows and waits until the tailer published them.
        async fn publish(&self, rows: &[(&str, &str)]) {
            let head = append(&self.store, rows).await;
            while self.state().feed().published() < head {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn append(store: &SqliteStore, rows: &[(&str, &str)]) -> Seq {
        for (project, kind) in rows {
            store
                .execute_write(&format!(
                    "INSERT INTO change_log (project_id, event_type, payload) \
                     VALUES ('{project}', '{kind}', '{{}}')"
                ))
                .await
                .unwrap();
        }
        store.bounds().await.unwrap().head
    }

    fn config() -> ServerConfig {
        let mut config = ServerConfig::default();
        config.tailer.mark_interval = Duration::from_secs(3600);
        config
    }

    /// What a chunk holds, frame by frame: `c<seq>` per change, `ready`, `reset`, `id` (an
    /// id-only checkpoint), `:` (a comment), `retry` (the first frame, then `reset` if it is one).
    fn kinds(chunk: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(chunk).unwrap();
        assert!(
            text.ends_with("\n\n"),
            "a chunk holds whole frames: {text:?}"
        );
        let mut kinds = Vec::new();
        for frame in text.split_terminator("\n\n") {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::to_owned)
            };
            if frame.starts_with(':') {
                kinds.push(":".to_owned());
                continue;
            }
            if field("retry: ").is_some() {
                kinds.push("retry".to_owned());
            }
            match (field("event: ").as_deref(), field("id: ")) {
                (Some("changefeed.ready"), _) => kinds.push("ready".to_owned()),
                (Some("changefeed.reset"), _) => kinds.push("reset".to_owned()),
                (Some(_), Some(id)) => kinds.push(format!("c{}", id.rsplit(':').next().unwrap())),
                (None, Some(_)) if field("retry: ").is_none() => kinds.push("id".to_owned()),
                _ => {}
            }
        }
        kinds
    }

    async fn chunk(
        stream: &mut EventStream<SqliteStore, crate::broadcast::Broadcaster>,
    ) -> Vec<String> {
        let bytes = tokio::time::timeout(Duration::from_secs(10), stream.next_chunk())
            .await
            .expect("a chunk within the failure bound")
            .expect("a chunk, not the end");
        kinds(&bytes)
    }

    #[tokio::test]
    async fn the_first_frame_goes_out_before_replay_then_replay_and_ready_in_one_chunk() {
        let fx = Fixture::with_rows(config(), &[("p", "a"), ("q", "b"), ("p", "c")]).await;
        let mut stream = fx.open("after=0&project=p").await;
        assert_eq!(stream.start_cursor().seq, Seq(0));
        assert_eq!(chunk(&mut stream).await, ["retry"]);
        assert_eq!(chunk(&mut stream).await, ["c1", "c3", "ready"]);
        let metrics = fx.state().metrics().snapshot();
        assert_eq!(metrics.subscribers, 1);
        assert_eq!(metrics.replayed_rows, 2, "q's row is filtered in the query");
        assert_eq!(metrics.frames_sent, 4);
        drop(stream);
        assert_eq!(fx.state().metrics().snapshot().subscribers, 0);
        assert_eq!(fx.state().feed().receiver_count(), 0);
    }

    #[tokio::test]
    async fn coalescing_stops_at_the_configured_size() {
        let mut config = config();
        config.coalesce_bytes = 1;
        let fx = Fixture::with_rows(config, &[("p", "a"), ("p", "b")]).await;
        let mut stream = fx.open("after=0").await;
        for expected in [&["retry"][..], &["c1"], &["c2"], &["ready"]] {
            assert_eq!(chunk(&mut stream).await, expected);
        }
        assert_eq!(
            fx.state().metrics().snapshot().replayed_rows,
            2,
            "counted once"
        );
    }

    #[tokio::test]
    async fn live_events_already_in_the_ring_are_taken_up_to_the_drain_budget() {
        let mut config = config();
        config.live_drain = 2;
        let fx = Fixture::new(config).await;
        let mut stream = fx.open("").await;
        // At the head nothing is to replay: the first frame and ready go out together.
        assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
        fx.publish(&[("p", "a"), ("p", "b"), ("p", "c"), ("p", "d"), ("p", "e")])
            .await;
        // One woke the stream, two more came without waiting; then the rest.
        assert_eq!(chunk(&mut stream).await, ["c1", "c2", "c3"]);
        assert_eq!(chunk(&mut stream).await, ["c4", "c5"]);
    }

    #[tokio::test]
    async fn without_a_drain_budget_each_live_event_is_its_own_chunk() {
        let mut config = config();
        config.live_drain = 0;
        let fx = Fixture::new(config).await;
        let mut stream = fx.open("project=p").await;
        assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
        fx.publish(&[("p", "a"), ("q", "b"), ("p", "c")]).await;
        assert_eq!(chunk(&mut stream).await, ["c1"]);
        // q's event moves the position without a frame; the next frame is p's.
        assert_eq!(chunk(&mut stream).await, ["c3"]);
    }

    #[tokio::test]
    async fn a_lagging_stream_replays_the_gap_once() {
        let mut config = config();
        config.broadcast_capacity = 1;
        let fx = Fixture::new(config).await;
        let mut stream = fx.open("").await;
        assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
        fx.publish(&[("p", "a"), ("p", "b"), ("p", "c"), ("p", "d")])
            .await;
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.extend(chunk(&mut stream).await);
        }
        assert_eq!(seen, ["c1", "c2", "c3", "c4"]);
        drop(stream);
        let metrics = fx.state().metrics().snapshot();
        assert_eq!(
            metrics.lag_fallbacks, 1,
            "counted once, also after the drop"
        );
        assert!(metrics.replayed_rows >= 3, "{metrics:?}");
    }

    #[tokio::test]
    async fn counters_of_a_stream_that_ends_without_a_chunk_still_count() {
        let mut config = config();
        config.broadcast_capacity = 1;
        let fx = Fixture::new(config).await;
        let mut stream = fx.open("").await;
        assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
        fx.publish(&[("p", "a"), ("p", "b"), ("p", "c")]).await;
        fx.store.close().await;
        // Lagged, and the replay of the gap fails: the stream ends without another chunk.
        assert_eq!(stream.next_chunk().await, None);
        assert_eq!(fx.state().metrics().snapshot().lag_fallbacks, 0);
        drop(stream);
        assert_eq!(fx.state().metrics().snapshot().lag_fallbacks, 1);
    }

    /// Runs a test body on its own thread and runtime, failing if it does not finish: a driver
    /// that spins without ever waiting would otherwise hang the test instead of failing it.
    fn watched<F: std::future::Future<Output = ()> + 'static>(body: fn() -> F) {
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(body());
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => thread.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(thread.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the stream never waited: it spun or hung")
            }
        }
    }

    #[test]
    fn a_quiet_stream_waits_for_its_deadline_then_sends_the_heartbeat() {
        watched(|| async {
            let mut config = config();
            // Below the failure bound of `chunk`, whose timer runs on the same clock.
            config.subscription.heartbeat = Duration::from_secs(5);
            let fx = Fixture::new(config).await;
            let mut stream = fx.open("").await;
            assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
            // On a paused clock time moves only while everything waits: a stream that polls
            // its deadline in a loop instead of sleeping until it never gets there.
            tokio::time::pause();
            let before = tokio::time::Instant::now();
            assert_eq!(chunk(&mut stream).await, [":"]);
            let waited = before.elapsed();
            assert!(
                waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
                "{waited:?}"
            );
        });
    }

    #[tokio::test]
    async fn shutdown_ends_the_stream_with_a_final_checkpoint() {
        let fx = Fixture::with_rows(config(), &[("p", "a")]).await;
        let mut stream = fx.open("").await;
        assert_eq!(chunk(&mut stream).await, ["retry", "ready"]);
        fx.trigger.trigger();
        assert_eq!(chunk(&mut stream).await, ["id"]);
        assert_eq!(stream.next_chunk().await, None);
        let again = tokio::time::timeout(Duration::from_secs(10), stream.next_chunk()).await;
        assert_eq!(again, Ok(None), "and stays ended");
    }

    #[tokio::test]
    async fn shutdown_during_replay_skips_the_rest_of_it() {
        let mut config = config();
        config.subscription.replay_window = 1;
        let fx = Fixture::with_rows(config, &[("p", "a"), ("p", "b"), ("p", "c")]).await;
        let mut stream = fx.open("after=0").await;
        assert_eq!(chunk(&mut stream).await, ["retry"]);
        assert_eq!(chunk(&mut stream).await, ["c1"]);
        fx.trigger.trigger();
        assert_eq!(chunk(&mut stream).await, ["id"]);
        assert_eq!(stream.next_chunk().await, None);
    }

    #[tokio::test]
    async fn a_failed_replay_read_ends_the_stream() {
        let fx = Fixture::with_rows(config(), &[("p", "a")]).await;
        let mut stream = fx.open("after=0").await;
        assert_eq!(chunk(&mut stream).await, ["retry"]);
        fx.store.close().await;
        let errors = fx.state().metrics().snapshot().store_errors;
        assert_eq!(stream.next_chunk().await, None);
        assert_eq!(fx.state().metrics().snapshot().store_errors, errors + 1);
        let again = tokio::time::timeout(Duration::from_secs(10), stream.next_chunk()).await;
        assert_eq!(again, Ok(None), "and stays ended");
    }

    async fn refused(state: &AppState<SqliteStore>, query: Option<&str>) -> OpenError {
        match open(state, query, None).await {
            Ok(_) => panic!("{query:?} opened a stream"),
            Err(error) => error,
        }
    }

    #[tokio::test]
    async fn open_refuses_bad_requests_unknown_projects_and_a_replaced_log() {
        let fx = Fixture::new(config()).await;
        let state = fx.state();
        match refused(state, Some("nope=1")).await {
            OpenError::Request(error) => assert_eq!(error.code, ErrorCode::UnknownParameter),
            other => panic!("{other:?}"),
        }
        match refused(state, Some("project=p&project=x&project=y")).await {
            OpenError::Request(error) => {
                assert_eq!(error.code, ErrorCode::UnknownProject);
                assert_eq!(error.message, r#"no such project: "x", "y""#);
            }
            other => panic!("{other:?}"),
        }
        assert!(open(state, Some("project=p&project=q"), None).await.is_ok());
        fx.store
            .execute_write(
                "UPDATE changefeed_meta SET value = '00000000000000aa' WHERE key = 'epoch'",
            )
            .await
            .unwrap();
        let error = refused(state, None).await;
        assert_eq!(
            error,
            OpenError::EpochChanged {
                serving: state.epoch(),
                store: Epoch(0xaa),
            }
        );
        assert_eq!(
            error.to_string(),
            format!(
                "the log's epoch changed from {} to 00000000000000aa under the running server",
                state.epoch()
            )
        );
        fx.store.close().await;
        let errors = state.metrics().snapshot().store_errors;
        let error = refused(state, Some("project=p")).await;
        assert!(matches!(&error, OpenError::Store(_)), "{error:?}");
        assert!(error.to_string().contains("error"), "{error}");
        assert!(matches!(refused(state, None).await, OpenError::Store(_)));
        assert_eq!(state.metrics().snapshot().store_errors, errors + 2);
        assert_eq!(
            state.metrics().snapshot().subscribers,
            0,
            "a refused open leaves no subscriber behind"
        );
        assert_eq!(state.feed().receiver_count(), 0);
    }

    #[tokio::test]
    async fn the_last_event_id_header_decides_where_the_stream_starts() {
        let fx = Fixture::with_rows(config(), &[("p", "a"), ("p", "b")]).await;
        let epoch = fx.state().epoch();
        let header = format!("{epoch}:1");
        let mut stream = open(fx.state(), Some("after=0"), Some(header.as_bytes()))
            .await
            .unwrap();
        assert_eq!(stream.start_cursor().to_string(), header);
        chunk(&mut stream).await;
        assert_eq!(chunk(&mut stream).await, ["c2", "ready"]);
        let mut reset = open(fx.state(), None, Some(b"garbage")).await.unwrap();
        assert_eq!(chunk(&mut reset).await, ["retry", "reset", "ready"]);
        drop(reset);
        assert_eq!(fx.state().metrics().snapshot().resets, 1, "counted once");
    }

    #[test]
    fn a_single_output_is_sent_without_a_copy() {
        let frame = Bytes::from_static(b"data: x\n\n");
        let mut chunk = Chunk::default();
        chunk.push(frame.clone(), 1);
        assert_eq!(chunk.into_bytes().as_ptr(), frame.as_ptr());
        let mut chunk = Chunk::default();
        chunk.push(frame.clone(), 1);
        chunk.push(Bytes::from_static(b": hb\n\n:\n\n"), 2);
        assert_eq!((chunk.bytes, chunk.frames), (18, 3));
        assert_eq!(&chunk.into_bytes()[..], b"data: x\n\n: hb\n\n:\n\n");
    }
}
