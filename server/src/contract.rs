//! The SSE contract-test service: drives [`EventSource`] for the public `sse-contract-tests`
//! harness (launchdarkly's protocol), so the client is checked against the same suite as other
//! SSE implementations. Run with `changefeed contract-service --port N`, then point the harness
//! at `http://127.0.0.1:N`.
//!
//! Endpoints:
//!
//! - `GET /`: `{"capabilities":[...]}` ([`CAPABILITIES`]).
//! - `POST /`: `{"streamUrl","callbackUrl","initialDelayMs","readTimeoutMs","lastEventId",
//!   "headers","method","body"}` starts a client; `201` with the entity URL in `Location`.
//!   The entity posts what the client sees to `<callbackUrl>/1`, `/2`, ... in order:
//!   `{"kind":"event","event":{"type","data","id"}}`, `{"kind":"comment","comment"}`, and
//!   `{"kind":"error","comment":"<message>"}` for each failed or broken connection (the client
//!   then retries by itself) and for a terminal error.
//! - `POST <entity>` with `{"command":"restart"}`: drop the connection and reconnect with the
//!   last event id (`204`); any other command is a `400`, an unknown entity a `404`.
//! - `DELETE <entity>`: stop that client (`204`, or `404`).
//! - `DELETE /`: stop the service.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use crate::client::{request_once, ClientConfig, Disconnect, EventSource, SseItem, TcpConnector};

/// What the client supports, as the harness names it. Not declared: `event-type-listeners`
/// (the client delivers every event type without being asked).
pub const CAPABILITIES: &[&str] = &[
    "comments",
    "headers",
    "last-event-id",
    "post",
    "report",
    "read-timeout",
    "restart",
    "204",
];

/// How long one callback may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves until `DELETE /`.
pub async fn run_contract_service(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "contract-test service listening");
    serve_contract_service(listener).await
}

/// Serves the contract-test protocol on `listener` until `DELETE /`; then stops every client.
pub async fn serve_contract_service(listener: TcpListener) -> io::Result<()> {
    let service = Arc::new(Service::default());
    let app = Router::new()
        .route("/", get(status).post(create).delete(shutdown))
        .route("/streams/{id}", post(command).delete(close))
        .with_state(Arc::clone(&service));
    let stop = Arc::clone(&service);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stop.notified().await })
        .await;
    let entities = std::mem::take(&mut *service.lock());
    for entity in entities.into_values() {
        entity.task.abort();
    }
    served
}

#[derive(Default)]
struct Service {
    entities: Mutex<HashMap<u64, Entity>>,
    next_id: AtomicU64,
    stop: Notify,
}

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entity>> {
        self.entities.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Entity {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

enum Command {
    Restart,
}

async fn status() -> Response {
    let body = json!({ "capabilities": CAPABILITIES }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn shutdown(State(service): State<Arc<Service>>) -> StatusCode {
    service.stop.notify_one();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateStream {
    stream_url: String,
    callback_url: String,
    initial_delay_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
    last_event_id: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    method: Option<String>,
    body: Option<String>,
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, message.into()).into_response()
}

async fn create(State(service): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let params: CreateStream = match serde_json::from_slice(&body) {
        Ok(params) => params,
        Err(error) => return bad_request(format!("invalid stream parameters: {error}")),
    };
    let mut config = match ClientConfig::new(params.stream_url) {
        Ok(config) => config,
        Err(error) => return bad_request(error.to_string()),
    };
    if let Err(error) = url::Url::parse(&params.callback_url) {
        return bad_request(format!("invalid callbackUrl: {error}"));
    }
    config.headers = params.headers.unwrap_or_default().into_iter().collect();
    config.last_event_id = params.last_event_id;
    // The harness's streams send no heartbeats: no read timeout unless asked for.
    config.read_timeout = params.read_timeout_ms.map(Duration::from_millis);
    if let Some(delay) = params.initial_delay_ms {
        config.reconnect.initial_retry = Duration::from_millis(delay);
    }
    if let Some(method) = params.method.filter(|m| !m.is_empty()) {
        match http::Method::from_bytes(method.as_bytes()) {
            Ok(method) => config.method = method,
            Err(_) => return bad_request(format!("invalid method {method:?}")),
        }
    }
    config.body = params.body.unwrap_or_default().into();
    // Checks the headers too: a bad one is the harness's error, not the stream's.
    if let Err(error) = ClientConfig::validate(&config) {
        return bad_request(error.to_string());
    }

    let id = service.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (commands, receiver) = mpsc::unbounded_channel();
    let callback = Callback {
        base: params.callback_url,
        counter: 0,
    };
    let source = EventSource::new(config, TcpConnector);
    let task = tokio::spawn(run_entity(source, receiver, callback));
    service.lock().insert(id, Entity { commands, task });

    let location = match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) => format!("http://{host}/streams/{id}"),
        None => format!("/streams/{id}"),
    };
    (StatusCode::CREATED, [(header::LOCATION, location)]).into_response()
}

async fn command(
    State(service): State<Arc<Service>>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct CommandParams {
        command: String,
    }
    let params: CommandParams = match serde_json::from_slice(&body) {
        Ok(params) => params,
        Err(error) => return bad_request(format!("invalid command: {error}")),
    };
    let entities = service.lock();
    let Some(entity) = entities.get(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match params.command.as_str() {
        "restart" => {
            // The entity task only ends when removed from the map, so the send succeeds.
            let _ = entity.commands.send(Command::Restart);
            StatusCode::NO_CONTENT.into_response()
        }
        other => bad_request(format!("unsupported command {other:?}")),
    }
}

async fn close(State(service): State<Arc<Service>>, Path(id): Path<u64>) -> StatusCode {
    match service.lock().remove(&id) {
        Some(entity) => {
            // Dropping the client closes its connection.
            entity.task.abort();
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// One stream entity: forwards what the client sees to the harness, and obeys commands.
async fn run_entity(
    mut source: EventSource<TcpConnector>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut callback: Callback,
) {
    let mut running = true;
    loop {
        let item = tokio::select! {
            biased;
            command = commands.recv() => {
                match command {
                    Some(Command::Restart) => source.restart(),
                    None => return,
                }
                continue;
            }
            item = source.next(), if running => item,
        };
        let message = match item {
            Some(Ok(SseItem::Event(event))) => Some(json!({
                "kind": "event",
                "event": {
                    "type": event.event_type,
                    "data": event.data,
                    "id": event.last_event_id,
                },
            })),
            Some(Ok(SseItem::Comment(text))) => Some(json!({ "kind": "comment", "comment": text })),
            // A restart was asked for: not an error.
            Some(Ok(SseItem::Disconnected {
                reason: Disconnect::Restart,
                ..
            }))
            | Some(Ok(SseItem::Connected { .. })) => None,
            Some(Ok(SseItem::Disconnected { reason, .. })) => {
                Some(json!({ "kind": "error", "comment": reason.to_string() }))
            }
            Some(Err(error)) => Some(json!({ "kind": "error", "comment": error.to_string() })),
            None => {
                running = false;
                None
            }
        };
        if let Some(message) = message {
            callback.send(message).await;
        }
    }
}

/// The harness's callback endpoint, with the message counter.
struct Callback {
    base: String,
    counter: u64,
}

impl Callback {
    async fn send(&mut self, message: serde_json::Value) {
        self.counter += 1;
        let url = format!("{}/{}", self.base.trim_end_matches('/'), self.counter);
        let body = Bytes::from(message.to_string());
        match request_once(
            &TcpConnector,
            http::Method::POST,
            &url,
            Some("application/json"),
            body,
            CALLBACK_TIMEOUT,
        )
        .await
        {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, _)) => tracing::warn!(%url, %status, "callback refused"),
            Err(error) => tracing::warn!(%url, %error, "callback failed"),
        }
    }
}
