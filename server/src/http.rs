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

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::IntoFuture;
use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use axum::Router;
use bytes::Bytes;
use changefeed_core::{ApiError, ErrorCode};

use crate::app::AppState;
use crate::broadcast::LiveFeed;
use crate::metrics::Metrics;
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
    Router::new()
        .route("/", get(viewer))
        .route("/api/v1/events", get(events::<S, F>))
        .route("/healthz", get(healthz::<S, F>))
        .route("/metrics", get(metrics::<S, F>))
        .route("/openapi.json", get(openapi))
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

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

/// Serves [`router`] on `listener` until the state's shutdown signal fires, then lets open
/// streams end (each writes a final checkpoint) for at most the configured
/// [`shutdown_grace`](crate::ServerConfig::shutdown_grace).
/// Returns once every connection is closed or the grace period is over.
pub async fn serve<S, F, L>(listener: L, state: AppState<S, F>) -> io::Result<()>
where
    S: Store,
    F: LiveFeed,
    L: Listener,
    L::Addr: Debug,
{
    let shutdown = state.shutdown_signal();
    let grace = state.config().shutdown_grace;
    serve_router(listener, router(state), shutdown, grace).await
}

/// [`serve`] for a router built by [`router`] and possibly layered (a proxy in front of the
/// routes, as the simulation plants one).
pub async fn serve_router<L>(
    listener: L,
    router: Router,
    mut shutdown: ShutdownSignal,
    grace: Duration,
) -> io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    let server =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().into_future());
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

fn open_error(error: &OpenError) -> Response {
    match error {
        OpenError::Request(error) => api_error(error),
        OpenError::Store(error) => unavailable(error),
        OpenError::EpochChanged { .. } => error_json(
            ErrorCode::Unavailable,
            "the change log was replaced; the server must be restarted",
        ),
    }
}

fn store_unavailable(metrics: &Metrics, error: &StoreError) -> Response {
    metrics.store_error();
    tracing::warn!(%error, "store unavailable");
    unavailable(error)
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

/// `ok` (200) while the store answers and the tailer is not stuck on an error retrying cannot
/// cure; 503 `unavailable` naming the problem otherwise.
async fn healthz<S: Store, F: LiveFeed>(State(state): State<AppState<S, F>>) -> Response {
    let bounds = match state.store().bounds().await {
        Ok(bounds) => bounds,
        Err(error) => return store_unavailable(state.metrics(), &error),
    };
    state.metrics().log_head(bounds.head.0);
    let fault = state.tailer_health().fault();
    if let Some(fault) = fault.as_ref().filter(|fault| !fault.error.is_transient()) {
        return error_json(
            ErrorCode::Unavailable,
            format!(
                "the feed cannot advance past seq {} ({} store error for {} ms): {}",
                fault.published.0,
                fault.error.kind.as_str(),
                fault.since.elapsed().as_millis(),
                fault.error.message
            ),
        );
    }
    let body = serde_json::json!({
        "status": "ok",
        "epoch": bounds.epoch.to_string(),
        "head": bounds.head.0,
        "floor": bounds.floor.0,
        "published": state.feed().published().0,
        "subscribers": state.metrics().snapshot().subscribers,
        "tailer": fault.map_or_else(
            || "ok".to_owned(),
            |fault| format!("retrying: {}", fault.error),
        ),
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn metrics<S: Store, F: LiveFeed>(State(state): State<AppState<S, F>>) -> Response {
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
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let last_event_id = headers.get("last-event-id").map(HeaderValue::as_bytes);
    let stream = match stream::open(&state, uri.query(), last_event_id).await {
        Ok(stream) => stream,
        Err(error) => return open_error(&error),
    };
    let cursor = stream.start_cursor().to_string();
    let head = stream.head_at_open().to_string();
    let mut response = Response::new(body(stream));
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
    if let Ok(value) = HeaderValue::from_str(&head) {
        response_headers.insert("changefeed-head", value);
    }
    response
}

/// The stream as a response body: one chunk per [`EventStream::next_chunk`].
fn body<S: Store, F: LiveFeed>(stream: EventStream<S, F>) -> Body {
    Body::from_stream(futures_util::stream::unfold(
        stream,
        |mut stream| async move {
            let chunk = stream.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), stream))
        },
    ))
}
