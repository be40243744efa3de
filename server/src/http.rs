//! The HTTP shell: routes, the `GET /api/v1/events` stream, and serving over any listener.
//!
//! - [`AppState`] holds the store, the live feed, the counters, the configuration, the shutdown
//!   signal and the time base. [`app`] turns it into a [`Router`]; [`serve`] runs the router on
//!   any [`axum::serve::Listener`] (a TCP listener in production, turmoil's in the simulation).
//! - **Time** is read only through `tokio::time` and handed to the core as the [`Duration`]
//!   since [`AppState`]'s base instant, so a simulated clock drives everything.
//! - **One stream = one state machine, no task.** Each response body is a stream owning its
//!   [`Subscription`], its broadcast receiver and its subscriber guard. hyper polls it only
//!   when the connection can take more bytes, so a client that stops reading only lags the
//!   broadcast ring (and later replays from the store): memory stays bounded and nobody else is
//!   delayed. A client that goes away drops the body and everything it holds at once.
//!
//! Each poll of the body: drain the subscription's outputs (frames coalesced into one chunk of
//! up to [`ServerConfig::coalesce_bytes`], `Fetch` answered from the store, `Close` ending the
//! body); when nothing is queued, wait for the first of shutdown, a live event (then take
//! whatever else is already in the ring), or the subscription's deadline.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::IntoFuture;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use axum::Router;
use bytes::{Bytes, BytesMut};
use changefeed_core::subscription::SubscriptionStats;
use changefeed_core::{
    Epoch, ErrorCode, EventsQuery, FetchRequest, Filter, LogPosition, Output, ReplayPage,
    RequestError, Subscription, SubscriptionConfig,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;

use crate::broadcast::{Broadcaster, LiveEvent, DEFAULT_CAPACITY};
use crate::janitor::JanitorConfig;
use crate::metrics::{Metrics, SubscriberGuard};
use crate::shutdown::ShutdownSignal;
use crate::store::{Retention, Store, StoreError};
use crate::tailer::{Tailer, TailerConfig};

/// Everything configurable about a running server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Per-stream protocol settings (heartbeat, retry, lifetime, replay window, held events).
    pub subscription: SubscriptionConfig,
    /// Capacity of the live feed's ring, in events.
    pub broadcast_capacity: usize,
    /// Tailer tunables.
    pub tailer: TailerConfig,
    /// What the janitor prunes (nothing by default).
    pub retention: Retention,
    /// Janitor tunables.
    pub janitor: JanitorConfig,
    /// Frames are concatenated into chunks of up to about this many bytes.
    pub coalesce_bytes: usize,
    /// After a live event wakes a stream, at most this many more are taken from the ring before
    /// the stream yields.
    pub live_drain: usize,
    /// How long shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            subscription: SubscriptionConfig::default(),
            broadcast_capacity: DEFAULT_CAPACITY,
            tailer: TailerConfig::default(),
            retention: Retention::default(),
            janitor: JanitorConfig::default(),
            coalesce_bytes: 64 * 1024,
            live_drain: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The shared state of one server. Cheap to clone.
#[derive(Debug)]
pub struct AppState<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<S> {
    store: S,
    feed: Arc<Broadcaster>,
    epoch: Epoch,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    base: Instant,
    shutdown: ShutdownSignal,
}

impl<S: Store> AppState<S> {
    /// Reads the log's epoch and head (the live feed starts there: older rows are served by
    /// replay) and builds the state. `shutdown` ends every stream, the tailer and the server.
    pub async fn new(
        store: S,
        config: ServerConfig,
        shutdown: ShutdownSignal,
    ) -> Result<AppState<S>, StoreError> {
        let bounds = store.bounds().await?;
        let metrics = Arc::new(Metrics::default());
        metrics.published(bounds.head.0, 0);
        Ok(AppState {
            shared: Arc::new(Shared {
                feed: Arc::new(Broadcaster::new(bounds.head, config.broadcast_capacity)),
                store,
                epoch: bounds.epoch,
                config,
                metrics,
                base: Instant::now(),
                shutdown,
            }),
        })
    }

    /// The tailer for this state (run it with [`Tailer::run`]; [`crate::run`] does).
    pub fn tailer(&self) -> Tailer<S> {
        Tailer {
            store: self.shared.store.clone(),
            feed: self.shared.feed.clone(),
            epoch: self.shared.epoch,
            metrics: self.shared.metrics.clone(),
            config: self.shared.config.tailer,
        }
    }
}

impl<S> AppState<S> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The live feed.
    pub fn feed(&self) -> &Arc<Broadcaster> {
        &self.shared.feed
    }

    /// The log's epoch (read at start-up; frames are encoded with it).
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// A clone of the shutdown signal.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.shared.shutdown.clone()
    }

    /// Time since the state was created, as the core wants it.
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.base)
    }

    fn instant_at(&self, at: Duration) -> Instant {
        self.shared.base + at
    }
}

/// The live viewer: one static page that follows the public endpoint with `EventSource`.
const VIEWER_PAGE: &str = include_str!("../static/viewer.html");

/// The routes: `GET /` (the live viewer page), `GET /api/v1/events`, `GET /healthz`,
/// `GET /metrics`; JSON 404 and 405 otherwise.
pub fn app<S: Store>(state: AppState<S>) -> Router {
    Router::new()
        .route("/", get(viewer))
        .route("/api/v1/events", get(events::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/metrics", get(metrics::<S>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn viewer() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // The page loads nothing from elsewhere and inserts feed data only as text.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        VIEWER_PAGE,
    )
}

/// Serves [`app`] on `listener` until the state's shutdown signal fires, then lets open streams
/// end (each writes a final checkpoint) for at most [`ServerConfig::shutdown_grace`].
/// Returns once every connection is closed or the grace period is over.
pub async fn serve<S, L>(listener: L, state: AppState<S>) -> io::Result<()>
where
    S: Store,
    L: Listener,
    L::Addr: Debug,
{
    let mut shutdown = state.shutdown_signal();
    let grace = state.config().shutdown_grace;
    let server =
        axum::serve(listener, app(state)).with_graceful_shutdown(shutdown.clone().into_future());
    tokio::select! {
        biased;
        result = server.into_future() => result,
        _ = async {
            shutdown.wait().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "connections still open after the shutdown grace period; leaving them");
            Ok(())
        }
    }
}

/// A TCP listener with `TCP_NODELAY` on every accepted connection (small frames must not wait
/// for Nagle's algorithm).
pub fn tcp_listener(
    listener: tokio::net::TcpListener,
) -> impl Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    })
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_json(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    json_response(status, body.to_string())
}

fn request_error(error: &RequestError) -> Response {
    let status = StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, error.to_json())
}

fn unavailable(metrics: &Metrics, error: &StoreError) -> Response {
    metrics.store_error();
    tracing::warn!(%error, "store unavailable");
    error_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the change log cannot be read right now; retry later",
    )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_json(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut response = error_json(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not allowed on {} (use GET)", uri.path()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}

async fn healthz<S: Store>(State(state): State<AppState<S>>) -> Response {
    match state.store().bounds().await {
        Ok(bounds) => {
            state.metrics().log_head(bounds.head.0);
            let body = serde_json::json!({
                "status": "ok",
                "epoch": bounds.epoch.to_string(),
                "head": bounds.head.0,
                "floor": bounds.floor.0,
                "published": state.feed().published().0,
                "subscribers": state.metrics().snapshot().subscribers,
            });
            json_response(StatusCode::OK, body.to_string())
        }
        Err(error) => unavailable(state.metrics(), &error),
    }
}

async fn metrics<S: Store>(State(state): State<AppState<S>>) -> Response {
    match state.store().bounds().await {
        Ok(bounds) => state.metrics().log_head(bounds.head.0),
        Err(error) => {
            state.metrics().store_error();
            tracing::warn!(%error, "metrics: reading the log's head failed");
        }
    }
    let mut response = state.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /api/v1/events` (ARCHITECTURE-NOTES §4).
async fn events<S: Store>(
    State(state): State<AppState<S>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let query = match EventsQuery::parse(uri.query()) {
        Ok(query) => query,
        Err(error) => return request_error(&error),
    };
    if let Some(projects) = &query.filter.projects {
        let ids: Vec<String> = projects.iter().cloned().collect();
        match state.store().missing_projects(&ids).await {
            Ok(missing) if !missing.is_empty() => {
                let names = missing
                    .iter()
                    .map(|id| format!("{id:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return request_error(&RequestError::new(
                    ErrorCode::UnknownProject,
                    format!("no such project: {names}"),
                ));
            }
            Ok(_) => {}
            Err(error) => return unavailable(state.metrics(), &error),
        }
    }
    let start = query.start_from_header(headers.get("last-event-id").map(|v| v.as_bytes()));

    // Subscribe first, learning P atomically with it; then read the bounds (head >= P).
    let (receiver, published) = state.feed().subscribe();
    let bounds = match state.store().bounds().await {
        Ok(bounds) => bounds,
        Err(error) => return unavailable(state.metrics(), &error),
    };
    if bounds.epoch != state.epoch() {
        tracing::error!(
            serving = %state.epoch(),
            store = %bounds.epoch,
            "the log's epoch changed under the running server; restart it"
        );
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the change log was replaced; the server must be restarted",
        );
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
    let cursor = subscription.start_cursor().to_string();
    tracing::debug!(
        cursor,
        projects = ?filter.projects,
        types = ?filter.types,
        "event stream opened"
    );
    let stream = EventStream {
        _guard: state.metrics().subscriber(),
        shutdown: state.shutdown_signal(),
        subscription,
        filter,
        receiver,
        state,
        pending_fetch: None,
        done: false,
        reported: SubscriptionStats::default(),
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), stream))
    });

    let mut response = Response::new(Body::from_stream(body));
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(value) = HeaderValue::from_str(&cursor) {
        response_headers.insert("changefeed-cursor", value);
    }
    response
}

/// One open event stream (the state of a response body).
struct EventStream<S: Store> {
    subscription: Subscription,
    filter: Filter,
    receiver: Receiver<LiveEvent>,
    state: AppState<S>,
    shutdown: ShutdownSignal,
    /// A fetch taken from the subscription but not yet answered (answered after the frames
    /// queued before it are sent, so the client gets its first frame at once).
    pending_fetch: Option<FetchRequest>,
    done: bool,
    /// The subscription counters already added to the metrics.
    reported: SubscriptionStats,
    _guard: SubscriberGuard,
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

impl<S: Store> EventStream<S> {
    /// The next chunk of the body, or `None` at its end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let coalesce = self.state.config().coalesce_bytes.max(1);
        let mut chunk = Chunk::default();
        loop {
            // Drain what the subscription wants done.
            loop {
                if let Some(fetch) = self.pending_fetch.take() {
                    if !chunk.is_empty() {
                        self.pending_fetch = Some(fetch);
                        return Some(self.flush(chunk));
                    }
                    if self.shutdown.is_triggered() {
                        // Long replays still end promptly at shutdown.
                        self.subscription.handle_shutdown(self.state.now());
                        continue;
                    }
                    if let Err(error) = self.answer(fetch).await {
                        self.state.metrics().store_error();
                        tracing::warn!(
                            %error,
                            position = %self.subscription.position(),
                            "event stream: replay read failed; ending the stream (the client resumes from its last id)"
                        );
                        self.done = true;
                        return None;
                    }
                    continue;
                }
                match self.subscription.poll_output() {
                    None => break,
                    Some(Output::Frame(frame)) => {
                        chunk.push(frame);
                        if chunk.bytes >= coalesce {
                            return Some(self.flush(chunk));
                        }
                    }
                    Some(Output::Fetch(fetch)) => self.pending_fetch = Some(fetch),
                    Some(Output::Close) => {
                        self.done = true;
                        return (!chunk.is_empty()).then(|| self.flush(chunk));
                    }
                }
            }
            if !chunk.is_empty() {
                return Some(self.flush(chunk));
            }
            // Nothing queued: wait for the next input.
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
                            self.take_ready_events(now);
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
    }

    /// After one live event, the events already in the ring (bounded), for throughput.
    fn take_ready_events(&mut self, now: Duration) {
        for _ in 0..self.state.config().live_drain {
            match self.receiver.try_recv() {
                Ok(event) => self.subscription.handle_live(&event, now),
                Err(TryRecvError::Lagged(_)) => self.subscription.handle_lagged(now),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
            }
        }
    }

    /// Reads one replay window and feeds it to the subscription.
    async fn answer(&mut self, fetch: FetchRequest) -> Result<(), StoreError> {
        let window = self
            .state
            .store()
            .window(&self.filter, fetch.after, fetch.upto)
            .await?;
        self.subscription.handle_page(
            ReplayPage {
                rows: window.rows,
                head: window.bounds.head,
                floor: window.bounds.floor,
            },
            self.state.now(),
        );
        Ok(())
    }

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

impl<S: Store> Drop for EventStream<S> {
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
