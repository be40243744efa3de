//! The SSE contract-test service: drives [`EventSource`] for the public `sse-contract-tests`
//! harness (launchdarkly's service protocol), so the client is checked against the same suite
//! as other SSE implementations. Run `changefeed-contract-service --port N` (or
//! `changefeed contract-service --port N`), then point the harness at `http://127.0.0.1:N`.
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
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::{
    request_once, ClientConfig, Disconnect, EventSource, HttpsConnector, SseItem, TcpConnector,
};

/// What the client supports, spelled as the harness spells it. Not declared:
/// `event-type-listeners`, which means the client's API *requires* a listener per event type;
/// this client delivers every type without being asked (the harness's default).
pub const CAPABILITIES: &[&str] = &[
    "bom",
    "comments",
    "headers",
    "last-event-id",
    "post",
    "read-timeout",
    "report",
    "restart",
    "server-directed-shutdown-request",
];

/// How long one callback may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body the service reads (stream parameters, commands).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// How long connections may take to finish their last response after `DELETE /`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds `addr` and serves until `DELETE /`.
pub async fn run_contract_service(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "contract-test service listening");
    serve_contract_service(listener).await
}

/// Serves the contract-test protocol on `listener` until `DELETE /`; then stops every client.
pub async fn serve_contract_service(listener: TcpListener) -> io::Result<()> {
    // Stream URLs may be `https` (trusting the platform's roots); callbacks are plain `http`.
    let connector = HttpsConnector::new().map_err(io::Error::other)?;
    let service = Arc::new(Service {
        connector,
        entities: Mutex::default(),
        next_id: AtomicU64::default(),
        stop: Notify::new(),
    });
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            () = service.stop.notified() => break,
            accepted = listener.accept() => accepted?,
        };
        let service = Arc::clone(&service);
        let mut stop_signal = stop_signal.clone();
        connections.spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(route(&service, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), handler);
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async { drop(stop_signal.wait_for(|stop| *stop).await) } => {
                    // Finish the response in flight (the `DELETE /` itself), close idle ones.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "contract service connection failed");
            }
        });
    }
    drop(listener);
    let entities = std::mem::take(&mut *service.lock());
    for entity in entities.into_values() {
        entity.task.abort();
    }
    let _ = stopping.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        connections.abort_all();
    }
    Ok(())
}

struct Service {
    connector: HttpsConnector,
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

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn bad_request(message: impl Into<String>) -> Reply {
    reply(StatusCode::BAD_REQUEST, message.into())
}

async fn route(service: &Service, request: Request<Incoming>) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(error) => return bad_request(format!("cannot read the request body: {error}")),
    };
    let entity = path
        .strip_prefix("/streams/")
        .map(|id| id.parse::<u64>().ok());
    match (method, path.as_str(), entity) {
        (Method::GET, "/", _) => {
            let mut response = reply(
                StatusCode::OK,
                json!({ "capabilities": CAPABILITIES }).to_string(),
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        (Method::POST, "/", _) => create(service, host.as_deref(), &body),
        (Method::DELETE, "/", _) => {
            service.stop.notify_one();
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        (Method::POST, _, Some(Some(id))) => command(service, id, &body),
        (Method::DELETE, _, Some(Some(id))) => close(service, id),
        (_, _, Some(_)) | (_, "/", _) => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    }
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

fn create(service: &Service, host: Option<&str>, body: &[u8]) -> Reply {
    let params: CreateStream = match serde_json::from_slice(body) {
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
        match Method::from_bytes(method.as_bytes()) {
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
    let source = EventSource::new(config, service.connector.clone());
    let task = tokio::spawn(run_entity(source, receiver, callback));
    service.lock().insert(id, Entity { commands, task });

    let location = match host {
        Some(host) => format!("http://{host}/streams/{id}"),
        None => format!("/streams/{id}"),
    };
    let mut response = reply(StatusCode::CREATED, Bytes::new());
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn command(service: &Service, id: u64, body: &[u8]) -> Reply {
    #[derive(Deserialize)]
    struct CommandParams {
        command: String,
    }
    let params: CommandParams = match serde_json::from_slice(body) {
        Ok(params) => params,
        Err(error) => return bad_request(format!("invalid command: {error}")),
    };
    let entities = service.lock();
    let Some(entity) = entities.get(&id) else {
        return reply(StatusCode::NOT_FOUND, Bytes::new());
    };
    match params.command.as_str() {
        "restart" => {
            // The entity task only ends when removed from the map, so the send succeeds.
            let _ = entity.commands.send(Command::Restart);
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        other => bad_request(format!("unsupported command {other:?}")),
    }
}

fn close(service: &Service, id: u64) -> Reply {
    match service.lock().remove(&id) {
        Some(entity) => {
            // Dropping the client closes its connection.
            entity.task.abort();
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        None => reply(StatusCode::NOT_FOUND, Bytes::new()),
    }
}

/// One stream entity: forwards what the client sees to the harness, and obeys commands.
async fn run_entity(
    mut source: EventSource<HttpsConnector>,
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
            Method::POST,
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
