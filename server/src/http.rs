//! The HTTP transport: routes, and the mapping of every failure to a JSON error response. It
//! makes no protocol decisions: `GET /api/v1/events` hands the query string and the
//! `Last-Event-ID` header to [`stream::open`] and streams [`EventStream::next_chunk`] as the
//! body.
//!
//! - [`router`] builds the routes for an [`AppState`]; [`serve`] runs them on any
//!   [`axum::serve::Listener`] (a TCP listener in production, turmoil's in the simulation)
//!   until the state's shutdown signal, then lets open streams end with their final checkpoint
//!   for at most [`ServerConfig::shutdown_grace`](crate::ServerConfig::shutdown_grace).
//! - Every error is `{"error":{"code":"...","message":"..."}}` with the status its code has;
//!   store failures are `503 unavailable` (with `Retry-After` when they are transient).
//! - With auth on ([`crate::auth`]): `401 unauthorized` carries `WWW-Authenticate: Bearer`,
//!   `429 too_many_streams` carries `Retry-After`; `/metrics` and `/healthz` answer a loopback
//!   peer, a token granting every project, or anyone with `--public-metrics`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use axum::{Extension, Router};
use bytes::Bytes;
use changefeed_core::{ApiError, ErrorCode, Seq};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::AppState;
use crate::auth::{self, AuthError, OperationsRefusal};
use crate::broadcast::LiveFeed;
use crate::conn::{self, ClientGone, ClientGoneWatch, ConnectionConfig};
use crate::shutdown::ShutdownSignal;
use crate::store::{Store, StoreError, StoreErrorKind};
use crate::stream::{self, EventStream, OpenError};

/// The live viewer: one static page that follows the public endpoint with `EventSource`.
const VIEWER_PAGE: &str = include_str!("../static/viewer.html");

/// The HTTP API in OpenAPI 3.1, served at `GET /openapi.json` (checked against the real
/// responses by `tests/tests/server_openapi.rs`).
pub const OPENAPI_JSON: &str = include_str!("../static/openapi.json");

/// The routes: `GET /` (the live viewer page), `GET /api/v1/events`, `GET /healthz`,
/// `GET /metrics`, `GET /openapi.json`; JSON 404 and 405 otherwise.
pub fn router<S: Store, F: LiveFeed>(state: AppState<S, F>) -> Router {
    let limits = &state.config().connection;
    let slots = StreamSlots {
        slots: Arc::new(Semaphore::new(limits.max_streams)),
        limit: limits.max_streams,
        retry_after_secs: limits.retry_after_secs,
    };
    Router::new()
        .route("/", get(viewer))
        .route("/api/v1/events", get(events::<S, F>))
        .route("/healthz", get(healthz::<S, F>))
        .route("/metrics", get(metrics::<S, F>))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(slots))
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

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// Serves [`router`] on `listener` until the state's shutdown signal fires, then lets open
/// streams end (each writes a final checkpoint) for at most the configured
/// [`shutdown_grace`](crate::ServerConfig::shutdown_grace).
/// Returns once every connection is closed or the grace period is over. Connections are
/// handled by [`crate::conn`] (HTTP/1.1 and HTTP/2, TLS, timeouts and limits of
/// [`ServerConfig::connection`](crate::ServerConfig::connection)).
pub async fn serve<S, F, L>(listener: L, state: AppState<S, F>) -> io::Result<()>
where
    S: Store,
    F: LiveFeed,
    L: Listener,
    L::Addr: Debug,
{
    let shutdown = state.shutdown_signal();
    let config = state.config().clone();
    conn::serve(
        listener,
        router(state),
        &config.connection,
        shutdown,
        config.shutdown_grace,
    )
    .await
}

/// [`serve`] for a router built by [`router`] and possibly layered (a proxy in front of the
/// routes, as the simulation plants one), with the default connection settings.
pub async fn serve_router<L>(
    listener: L,
    router: Router,
    shutdown: ShutdownSignal,
    grace: Duration,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    conn::serve(
        listener,
        router,
        &ConnectionConfig::default(),
        shutdown,
        grace,
    )
    .await
}

/// A TCP listener with `TCP_NODELAY` on every accepted connection that survives descriptor
/// exhaustion ([`conn::TcpAcceptor`]).
pub fn tcp_listener(listener: tokio::net::TcpListener) -> conn::TcpAcceptor {
    conn::TcpAcceptor::new(listener)
}

/// The concurrent-stream limit ([`ConnectionConfig::max_streams`]), shared by a router's
/// event streams; a stream holds a permit until its body is dropped.
#[derive(Clone)]
struct StreamSlots {
    slots: Arc<Semaphore>,
    limit: usize,
    retry_after_secs: u64,
}

/// The address of the connection a request came on, when the listener's address type is a
/// socket address (TCP, the simulation's); `None` otherwise. [`conn::serve`] puts it in every
/// request's extensions as `ConnectInfo<PeerAddr>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub Option<std::net::SocketAddr>);

impl PeerAddr {
    /// The peer of a connection accepted with address `addr`.
    pub fn of<A: 'static>(addr: &A) -> PeerAddr {
        let addr: &dyn std::any::Any = addr;
        PeerAddr(addr.downcast_ref::<std::net::SocketAddr>().copied())
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The contract's error body (the core's [`ApiError`]) with the status its code has.
fn api_error(error: &ApiError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, error.to_json())
}

fn error_json(code: ErrorCode, message: impl Into<String>) -> Response {
    api_error(&ApiError::new(code, message))
}

/// A store failure: 503, and `Retry-After` when retrying soon may work.
fn unavailable(error: &StoreError) -> Response {
    let mut response = error_json(
        ErrorCode::Unavailable,
        match error.kind {
            StoreErrorKind::Transient => "the change log cannot be read right now; retry later",
            StoreErrorKind::Fatal | StoreErrorKind::BadData => {
                "the change log cannot be read; the server's log says why"
            }
        },
    );
    if error.is_transient() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `401 unauthorized` with the bearer challenge (RFC 6750).
fn unauthorized(error: &AuthError) -> Response {
    let mut response = error_json(ErrorCode::Unauthorized, error.message.clone());
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(error.challenge()),
    );
    response
}

fn open_error(error: &OpenError) -> Response {
    match error {
        OpenError::Request(error) => api_error(error),
        OpenError::Unauthorized(error) => unauthorized(error),
        OpenError::TooManyStreams(_) => {
            let mut response = error_json(ErrorCode::TooManyStreams, error.to_string());
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(auth::LIMIT_RETRY_AFTER_SECS),
            );
            response
        }
        OpenError::Store(error) => unavailable(error),
        OpenError::EpochChanged { .. } => error_json(
            ErrorCode::Unavailable,
            "the change log was replaced; the server must be restarted",
        ),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error_json(
        ErrorCode::NotFound,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut response = error_json(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {} (use GET)", uri.path()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}

/// With auth on, `/metrics` and `/healthz` answer only a loopback peer or a token granting
/// every project, unless `--public-metrics`.
fn operations_refused<S, F>(
    state: &AppState<S, F>,
    peer: Option<&ConnectInfo<PeerAddr>>,
    headers: &HeaderMap,
) -> Option<Response> {
    let peer = peer
        .and_then(|ConnectInfo(PeerAddr(addr))| *addr)
        .map(|addr| addr.ip());
    let result = state
        .config()
        .auth
        .may_read_operations(peer, auth::presented_token(headers));
    match result {
        Ok(()) => None,
        Err(OperationsRefusal::Unauthorized(error)) => {
            state.metrics().auth_rejected("unauthorized");
            Some(unauthorized(&error))
        }
        Err(OperationsRefusal::Forbidden) => {
            state.metrics().auth_rejected("forbidden");
            Some(error_json(
                ErrorCode::Forbidden,
                "this endpoint needs a token that grants every project (or a loopback client)",
            ))
        }
    }
}

/// `ok` (200) only while the store answers and the tailer advances (or has nothing to do);
/// otherwise 503: the contract's error body (`unavailable`, the message naming the problem)
/// plus `reason` (`store_error`, `stuck`, `database_replaced`), `published` (the seq the feed
/// is stuck after), `head` when the store answered, and `since` (RFC 3339, when it started).
async fn healthz<S: Store, F: LiveFeed>(
    State(state): State<AppState<S, F>>,
    request: axum::http::request::Parts,
) -> Response {
    let peer = request.extensions.get::<ConnectInfo<PeerAddr>>();
    if let Some(refused) = operations_refused(&state, peer, &request.headers) {
        return refused;
    }
    let published = state.feed().published();
    let bounds = match state.store().bounds().await {
        Ok(bounds) => bounds,
        Err(error) => {
            state.metrics().store_error();
            let reason = if error.message.contains("replaced") {
                "database_replaced"
            } else {
                "store_error"
            };
            let since = state
                .tailer_health()
                .fault()
                .map_or_else(tokio::time::Instant::now, |fault| fault.since);
            return unhealthy(
                reason,
                format!("the change log cannot be read: {error}"),
                published,
                None,
                since,
            );
        }
    };
    state.metrics().log_head(bounds.head.0);
    if let Err(problem) =
        state
            .tailer_health()
            .assess(bounds.head, published, state.config().tailer.stall_after)
    {
        return unhealthy(
            problem.reason,
            problem.message,
            problem.published,
            Some(bounds.head),
            problem.since,
        );
    }
    let fault = state.tailer_health().fault();
    let body = serde_json::json!({
        "status": "ok",
        "epoch": bounds.epoch.to_string(),
        "head": bounds.head.0,
        "floor": bounds.floor.0,
        "published": published.0,
        "subscribers": state.metrics().snapshot().subscribers,
        "tailer": fault.map_or_else(
            || "ok".to_owned(),
            |fault| format!("retrying: {}", fault.error),
        ),
    });
    json_response(StatusCode::OK, body.to_string())
}

/// The 503 of `/healthz` (see [`healthz`]).
fn unhealthy(
    reason: &str,
    message: String,
    published: Seq,
    head: Option<Seq>,
    since: tokio::time::Instant,
) -> Response {
    tracing::warn!(reason, %message, "healthz: not ok");
    let since_ms = since.elapsed().as_millis();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|now| i64::try_from(now.as_millis().saturating_sub(since_ms)).ok())
        .and_then(changefeed_core::timestamp::format_unix_millis);
    let mut body = serde_json::json!({
        "error": {"code": ErrorCode::Unavailable.as_str(), "message": message},
        "reason": reason,
        "published": published.0,
        "since": since,
    });
    if let Some(head) = head {
        body["head"] = head.0.into();
    }
    json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

async fn metrics<S: Store, F: LiveFeed>(
    State(state): State<AppState<S, F>>,
    request: axum::http::request::Parts,
) -> Response {
    let peer = request.extensions.get::<ConnectInfo<PeerAddr>>();
    if let Some(refused) = operations_refused(&state, peer, &request.headers) {
        return refused;
    }
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
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// `GET /api/v1/events` (see `PROTOCOL.md`).
async fn events<S: Store, F: LiveFeed>(
    State(state): State<AppState<S, F>>,
    Extension(slots): Extension<StreamSlots>,
    gone: Option<Extension<ClientGone>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Ok(slot) = slots.slots.clone().try_acquire_owned() else {
        let mut response = error_json(
            ErrorCode::Overloaded,
            format!(
                "the server is at its limit of {} concurrent streams; retry later",
                slots.limit
            ),
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(slots.retry_after_secs),
        );
        return response;
    };
    let last_event_id = headers.get("last-event-id").map(HeaderValue::as_bytes);
    let presented = auth::presented_token(&headers);
    let stream = match stream::open_with_token(&state, uri.query(), last_event_id, presented).await
    {
        Ok(stream) => stream,
        Err(error) => return open_error(&error),
    };
    let gone = gone.map(|Extension(gone)| gone.watch());
    let cursor = stream.start_id();
    let head = stream.head_at_open().map(|head| head.to_string());
    let mut response = Response::new(body(stream, slot, gone));
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
    if let Some(Ok(value)) = head.as_deref().map(HeaderValue::from_str) {
        response_headers.insert("changefeed-head", value);
    }
    response
}

/// The stream as a response body: one chunk per [`EventStream::next_chunk`], ending (and
/// dropping the stream, its subscription and its stream slot) as soon as the connection layer
/// sees the client gone.
fn body<S: Store, F: LiveFeed>(
    stream: EventStream<S, F>,
    slot: OwnedSemaphorePermit,
    gone: Option<ClientGoneWatch>,
) -> Body {
    Body::from_stream(futures_util::stream::unfold(
        (stream, slot, gone),
        |(mut stream, slot, mut gone)| async move {
            let chunk = match gone.as_mut() {
                Some(watch) => tokio::select! {
                    biased;
                    () = watch.gone() => {
                        tracing::debug!("event stream: the client went away");
                        None
                    }
                    chunk = stream.next_chunk() => chunk,
                },
                None => stream.next_chunk().await,
            }?;
            Some((Ok::<Bytes, Infallible>(chunk), (stream, slot, gone)))
        },
    ))
}
