//! Proves the contract-test service speaks the `sse-contract-tests` harness protocol: it
//! declares its capabilities, creates stream entities that pass the configured request
//! (headers, `Last-Event-ID`, method and body) and report events, comments and errors to the
//! numbered callback URLs in order, restarts with the last event id on command, rejects unknown
//! commands, stops an entity on `DELETE`, and exits on `DELETE /`.

mod client_support;

use changefeed_client::contract::{serve_contract_service, CAPABILITIES};
use client_support::{bounded, http, Callbacks, ScriptServer, REAL};
use serde_json::json;

struct Service {
    base: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_service() -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(serve_contract_service(listener));
    Service { base, task }
}

/// Creates a stream entity; returns its URL.
async fn create(service: &Service, params: serde_json::Value) -> String {
    let (status, headers, body) =
        http("POST", &format!("{}/", service.base), &params.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let location = headers
        .get("location")
        .expect("Location")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.starts_with(&service.base), "{location}");
    location
}

fn event(kind: &str, data: &str, id: &str) -> serde_json::Value {
    json!({ "kind": "event", "event": { "type": kind, "data": data, "id": id } })
}

#[tokio::test]
async fn the_service_drives_the_client_for_the_harness() {
    let service = start_service().await;
    let (mut streams, stream_base) = ScriptServer::tcp().await;
    let mut callbacks = Callbacks::start().await;

    let (status, _, body) = http("GET", &format!("{}/", service.base), "").await;
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status, json!({ "capabilities": CAPABILITIES }));
    // Spelled as the public `sse-contract-tests` harness spells them.
    for capability in [
        "bom",
        "comments",
        "headers",
        "last-event-id",
        "post",
        "read-timeout",
        "report",
        "restart",
        "server-directed-shutdown-request",
    ] {
        assert!(CAPABILITIES.contains(&capability), "{capability}");
    }
    assert!(!CAPABILITIES.contains(&"204"));

    let entity = create(
        &service,
        json!({
            "streamUrl": format!("{stream_base}/stream"),
            "callbackUrl": format!("{}/cb/7", callbacks.base),
            "tag": "a test",
            "initialDelayMs": 0,
            "lastEventId": "abc",
            "headers": { "x-harness": "yes" },
            "readTimeoutMs": null,
        }),
    )
    .await;

    let mut conn = streams.accept().await;
    assert_eq!(conn.request.method, "GET");
    assert_eq!(conn.request.target, "/stream");
    assert_eq!(conn.request.header("last-event-id"), Some("abc"));
    assert_eq!(conn.request.header("x-harness"), Some("yes"));
    assert_eq!(conn.request.header("accept"), Some("text/event-stream"));
    assert_eq!(conn.request.header("cache-control"), Some("no-cache"));
    conn.stream_head().await;
    conn.write(":hello\n").await;
    conn.write("id: 1\nevent: put\ndata: x\n\n").await;
    conn.write("data: line1\ndata: line2\n\n").await;
    assert_eq!(
        callbacks.next().await,
        (
            "/cb/7/1".into(),
            json!({ "kind": "comment", "comment": "hello" })
        )
    );
    assert_eq!(
        callbacks.next().await,
        ("/cb/7/2".into(), event("put", "x", "1"))
    );
    assert_eq!(
        callbacks.next().await,
        ("/cb/7/3".into(), event("message", "line1\nline2", "1"))
    );

    // Restart: the connection is dropped and the client reconnects with the last id, with no
    // error reported.
    let (status, _, _) = http("POST", &entity, r#"{"command":"restart"}"#).await;
    assert_eq!(status, 204);
    conn.closed().await;
    let mut conn = streams.accept().await;
    assert_eq!(conn.request.header("last-event-id"), Some("1"));
    conn.stream_head().await;
    conn.write("data: after restart\n\n").await;
    assert_eq!(
        callbacks.next().await,
        ("/cb/7/4".into(), event("message", "after restart", "1"))
    );

    // Unknown commands and entities.
    let (status, _, _) = http(
        "POST",
        &entity,
        r#"{"command":"listen","listen":{"type":"x"}}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http("POST", &entity, "not json").await;
    assert_eq!(status, 400);
    let (status, _, _) = http(
        "POST",
        &format!("{}/streams/999", service.base),
        r#"{"command":"restart"}"#,
    )
    .await;
    assert_eq!(status, 404);

    // The server breaks the connection: an error callback, then a reconnect.
    drop(conn);
    let (path, message) = callbacks.next().await;
    assert_eq!(path, "/cb/7/5");
    assert_eq!(message["kind"], "error");
    assert_eq!(message["comment"], "the server ended the event stream");
    let mut conn = streams.accept().await;
    assert_eq!(conn.request.header("last-event-id"), Some("1"));

    // Delete: the client closes its connection and stops.
    let (status, _, _) = http("DELETE", &entity, "").await;
    assert_eq!(status, 204);
    conn.closed().await;
    let (status, _, _) = http("DELETE", &entity, "").await;
    assert_eq!(status, 404);

    let (status, _, _) = http("DELETE", &format!("{}/", service.base), "").await;
    assert_eq!(status, 204);
    bounded("the service to exit", REAL, service.task)
        .await
        .expect("service task")
        .expect("service result");
    assert!(streams.try_accept().is_none());
}

#[tokio::test]
async fn post_requests_terminal_errors_and_bad_parameters() {
    let service = start_service().await;
    let (mut streams, stream_base) = ScriptServer::tcp().await;
    let mut callbacks = Callbacks::start().await;

    // `post`: the method, body and content type on every request, reconnects included.
    let entity = create(
        &service,
        json!({
            "streamUrl": format!("{stream_base}/post"),
            "callbackUrl": format!("{}/cb/1/", callbacks.base),
            "initialDelayMs": 0,
            "method": "POST",
            "body": "{\"hello\": \"world\"}",
            "headers": { "content-type": "application/json; charset=utf-8" },
        }),
    )
    .await;
    for _ in 0..2 {
        let mut conn = streams.accept().await;
        assert_eq!(conn.request.method, "POST");
        assert_eq!(conn.request.body, b"{\"hello\": \"world\"}");
        assert_eq!(
            conn.request.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        conn.stream_head().await;
        conn.write("data: hi\n\n").await;
        let (_, message) = callbacks.next().await;
        assert_eq!(message, event("message", "hi", ""));
        drop(conn);
        let (_, message) = callbacks.next().await;
        assert_eq!(message["kind"], "error");
    }
    let mut conn = streams.accept().await;
    assert_eq!(conn.request.method, "POST");
    let (status, _, _) = http("DELETE", &entity, "").await;
    assert_eq!(status, 204);
    conn.closed().await;

    // A terminal answer (204) is reported once as an error, and nothing reconnects.
    let mut callbacks = Callbacks::start().await;
    create(
        &service,
        json!({
            "streamUrl": format!("{stream_base}/done"),
            "callbackUrl": callbacks.base,
        }),
    )
    .await;
    streams
        .accept()
        .await
        .respond("204 No Content", &[], "")
        .await;
    let (path, message) = callbacks.next().await;
    assert_eq!(path, "/1");
    assert_eq!(message["kind"], "error");
    assert!(
        message["comment"]
            .as_str()
            .unwrap_or_default()
            .contains("204"),
        "{message}"
    );

    for bad in [
        json!({ "callbackUrl": callbacks.base }),
        json!({ "streamUrl": "ftp://x/", "callbackUrl": callbacks.base }),
        json!({ "streamUrl": format!("{stream_base}/"), "callbackUrl": "not a url" }),
        json!({ "streamUrl": format!("{stream_base}/"), "callbackUrl": callbacks.base, "method": "BAD METHOD" }),
        json!({ "streamUrl": format!("{stream_base}/"), "callbackUrl": callbacks.base, "headers": { "bad header": "x" } }),
    ] {
        let (status, _, body) = http("POST", &format!("{}/", service.base), &bad.to_string()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _, _) = http("DELETE", &format!("{}/", service.base), "").await;
    assert_eq!(status, 204);
    bounded("the service to exit", REAL, service.task)
        .await
        .expect("service task")
        .expect("service result");
}
