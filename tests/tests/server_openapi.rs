//! Proves that `GET /openapi.json` describes the real HTTP API: every path it lists answers, every
//! status, content type, header and JSON body a real request gets is documented and validates
//! against the document's schemas (with a JSON Schema 2020-12 validator), the query parameters it
//! documents are exactly those the server accepts, and every error code it lists is one the
//! server really sends (and vice versa).

use std::collections::BTreeSet;

use changefeed_core::sse::SseEvent;
use changefeed_core::wire::ErrorCode;
use changefeed_tests::{
    data_json, project_sql, request, session_sql, within, HttpResponse, TestServer,
};
use serde_json::{json, Value};

/// The served document.
async fn spec(server: &TestServer) -> Value {
    let response = server.get("/openapi.json").await;
    assert_eq!(response.status, 200);
    assert_eq!(media_type(&response), "application/json");
    let spec = response.json();
    assert!(
        spec["openapi"].as_str().unwrap_or("").starts_with("3.1."),
        "not OpenAPI 3.1: {}",
        spec["openapi"]
    );
    spec
}

fn media_type(response: &HttpResponse) -> String {
    let value = response
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    value.split(';').next().unwrap_or("").trim().to_owned()
}

/// Validates `instance` against `schema` (a schema object of the document, `$ref`s into its
/// components resolved against the document itself).
fn assert_valid(spec: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        map.insert("components".into(), spec["components"].clone());
    }
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|error| panic!("{what}: the document's schema does not compile: {error}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {instance} does not match the document: {errors:?}"
    );
}

fn component<'a>(spec: &'a Value, name: &str) -> &'a Value {
    let schema = &spec["components"]["schemas"][name];
    assert!(schema.is_object(), "components.schemas.{name} missing");
    schema
}

/// The documented response of `GET path` for `status`, `$ref` to components resolved.
fn documented<'a>(spec: &'a Value, path: &str, status: u16) -> &'a Value {
    let operation = &spec["paths"][path]["get"];
    assert!(operation.is_object(), "GET {path} is not documented");
    let mut response = &operation["responses"][status.to_string()];
    if let Some(reference) = response["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/responses/")
            .expect("a components.responses reference");
        response = &spec["components"]["responses"][name];
    }
    assert!(
        response.is_object(),
        "GET {path} answered {status}, which the document does not list"
    );
    response
}

/// Checks a real response against the document: its status and content type are documented,
/// and a JSON body validates against the documented schema. Returns the error code, if any.
fn check(spec: &Value, path: &str, response: &HttpResponse) -> Option<String> {
    let documented = documented(spec, path, response.status.as_u16());
    let media = media_type(response);
    let content = &documented["content"][&media];
    assert!(
        content.is_object(),
        "GET {path} {}: content type {media:?} not documented",
        response.status
    );
    if media == "application/json" {
        let body = response.json();
        assert_valid(
            spec,
            &content["schema"],
            &body,
            &format!("GET {path} {}", response.status),
        );
        return body["error"]["code"].as_str().map(str::to_owned);
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_path_answers_as_documented() {
    let server = TestServer::start().await;
    let spec = spec(&server).await;
    let paths: BTreeSet<&str> = spec["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/",
            "/api/v1/events",
            "/healthz",
            "/metrics",
            "/openapi.json"
        ])
    );
    for path in ["/", "/healthz", "/metrics", "/openapi.json"] {
        let response = server.get(path).await;
        assert_eq!(response.status, 200, "GET {path}");
        check(&spec, path, &response);
    }
    let health = server.get("/healthz").await.json();
    assert_valid(&spec, component(&spec, "Health"), &health, "/healthz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_parameters_are_exactly_the_accepted_ones() {
    let server = TestServer::start().await;
    let spec = spec(&server).await;
    let parameters = spec["paths"]["/api/v1/events"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let named = |place: &str| -> BTreeSet<String> {
        parameters
            .iter()
            .filter(|p| p["in"] == place)
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        named("header"),
        BTreeSet::from(["Last-Event-ID".to_owned()])
    );
    let query = named("query");
    // The server names the parameters it knows when it rejects an unknown one.
    let rejected = server.get("/api/v1/events?bogus=1").await;
    assert_eq!(rejected.error_code(), "unknown_parameter");
    let message = rejected.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    let known = message
        .split_once("known: ")
        .map(|(_, list)| list.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("the message lists no known parameters: {message}"));
    let accepted: BTreeSet<String> = known.split(", ").map(str::to_owned).collect();
    assert_eq!(query, accepted);
    // And each documented query parameter is accepted with a value its schema allows.
    server.write(&project_sql("p1")).await;
    for query in ["after=0", "project=p1", "types=pr_*"] {
        let mut stream = server.stream(&format!("/api/v1/events?{query}")).await;
        let ready = stream
            .events_until(|e| e.event_type == "changefeed.ready")
            .await;
        assert!(!ready.is_empty(), "{query}: no ready frame");
    }
}

/// `GET path` with one extra header, over a raw HTTP/1.1 connection (hyper's client would
/// refuse nothing here, but a raw request keeps the header exactly as sent).
async fn get_with_header(
    addr: std::net::SocketAddr,
    path: &str,
    name: &str,
    value: &str,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{name}: {value}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    within("the response", stream.read_to_end(&mut raw))
        .await
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .expect("status");
    let mut headers = hyper::header::HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(": ").expect("a header line");
        headers.insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    HttpResponse {
        status: status.parse::<u16>().unwrap().try_into().unwrap(),
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_documented_and_every_documented_code_is_real() {
    let server = TestServer::start().await;
    let spec = spec(&server).await;
    server.write(&project_sql("p1")).await;
    let cases = [
        ("/api/v1/events?projectId=p1", 400, "unknown_parameter"),
        ("/api/v1/events?after=1&after=2", 400, "duplicate_parameter"),
        ("/api/v1/events?after=01", 400, "invalid_cursor"),
        ("/api/v1/events?types=a,,b", 400, "invalid_types"),
        ("/api/v1/events?project=", 400, "invalid_project"),
        ("/api/v1/events?project=nope", 404, "unknown_project"),
        ("/api/v1/events?session=", 400, "invalid_session"),
        ("/api/v1/events?last=0", 400, "invalid_last"),
        (
            "/api/v1/events?after=1&last=1",
            400,
            "conflicting_parameters",
        ),
    ];
    let mut seen = BTreeSet::new();
    for (path_and_query, status, code) in cases {
        let response = server.get(path_and_query).await;
        assert_eq!(response.status, status, "{path_and_query}");
        let got = check(&spec, "/api/v1/events", &response);
        assert_eq!(got.as_deref(), Some(code), "{path_and_query}");
        seen.insert(code.to_owned());
    }
    // Outside the documented operations: 404 and 405 bodies follow the same Error schema.
    let error = component(&spec, "Error");
    let missing = server.get("/api/v2/events").await;
    assert_eq!(missing.status, 404);
    assert_valid(&spec, error, &missing.json(), "404");
    seen.insert(missing.error_code());
    let wrong_method = request(server.addr, "POST", "/api/v1/events").await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.headers.contains_key("allow"));
    assert_valid(&spec, error, &wrong_method.json(), "405");
    seen.insert(wrong_method.error_code());
    let documented: BTreeSet<String> = error["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .expect("the Error schema enumerates its codes")
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    // The document lists exactly the core's codes, each with its status where it can occur.
    let core: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|code| code.as_str().to_owned())
        .collect();
    assert_eq!(documented, core);
    for (path_and_query, status, code) in cases {
        let code = ErrorCode::parse(code).expect("a core error code");
        assert_eq!(code.status(), status, "{path_and_query}");
    }
    // The connection layer's answers, on every route (checked before routing).
    let long = format!("/healthz?{}", "a".repeat(10_000));
    let too_long = server.get(&long).await;
    assert_eq!(too_long.status, 414);
    assert_eq!(
        check(&spec, "/healthz", &too_long).as_deref(),
        Some("uri_too_long")
    );
    seen.insert(too_long.error_code());
    let too_large = get_with_header(server.addr, "/metrics", "x-big", &"b".repeat(40_000)).await;
    assert_eq!(too_large.status, 431);
    assert_eq!(
        check(&spec, "/metrics", &too_large).as_deref(),
        Some("headers_too_large")
    );
    seen.insert(too_large.error_code());
    let limited = TestServer::start_with(changefeed::ServerConfig {
        connection: changefeed::conn::ConnectionConfig {
            max_streams: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let _held = limited.stream("/api/v1/events").await;
    let overloaded = limited.get("/api/v1/events").await;
    assert_eq!(overloaded.status, 503);
    assert!(overloaded.headers.contains_key("retry-after"));
    assert_eq!(
        check(&spec, "/api/v1/events", &overloaded).as_deref(),
        Some("overloaded")
    );
    seen.insert(overloaded.error_code());
    // The auth codes, from a server with a tokens file and a per-token limit of one stream.
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "tok-p1 p1\n").expect("tokens file");
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let auth = changefeed::auth::Auth::new(&changefeed::auth::AuthSettings {
        tokens_file: Some(tokens),
        max_streams_per_token: Some(1),
        ..Default::default()
    })
    .expect("auth");
    let authed = TestServer::start_with(changefeed::ServerConfig {
        auth,
        ..Default::default()
    })
    .await;
    authed.write(&project_sql("p1")).await;
    let bearer = [("authorization", "Bearer tok-p1")];
    let open = changefeed_tests::SseStream::connect_with_headers(
        authed.addr,
        "/api/v1/events",
        None,
        &bearer,
    )
    .await;
    assert_eq!(open.status, 200);
    for (headers, path_and_query, status, code) in [
        (&[][..], "/api/v1/events", 401, "unauthorized"),
        (&bearer[..], "/api/v1/events?project=p2", 403, "forbidden"),
        (&bearer[..], "/api/v1/events", 429, "too_many_streams"),
    ] {
        let response =
            changefeed_tests::request_with_headers(authed.addr, "GET", path_and_query, headers)
                .await;
        assert_eq!(response.status, status, "{path_and_query}");
        let got = check(&spec, "/api/v1/events", &response);
        assert_eq!(got.as_deref(), Some(code), "{path_and_query}");
        assert_eq!(ErrorCode::parse(code).map(ErrorCode::status), Some(status));
        seen.insert(code.to_owned());
    }
    drop(open);
    // `unavailable` needs a failing store; every other documented code was just produced.
    let mut expected = seen.clone();
    expected.insert("unavailable".to_owned());
    assert_eq!(documented, expected);
    assert!(
        spec["paths"]["/api/v1/events"]["get"]["responses"]["503"].is_object()
            && spec["paths"]["/healthz"]["get"]["responses"]["503"].is_object(),
        "503 unavailable is documented where the store is read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_and_frame_payloads_match_the_document() {
    let server = TestServer::start().await;
    let spec = spec(&server).await;
    server.write(&project_sql("p1")).await;
    server.write(&session_sql("p1", "s1")).await;
    server
        .write("UPDATE sessions SET activity = 'waiting' WHERE id = 's1';")
        .await;
    server.settle().await;

    let mut stream = server.stream("/api/v1/events?after=0").await;
    let documented = documented(&spec, "/api/v1/events", 200);
    assert!(documented["content"]["text/event-stream"].is_object());
    for (name, header) in documented["headers"].as_object().expect("headers") {
        let value = stream
            .header(name)
            .unwrap_or_else(|| panic!("documented header {name} missing"));
        assert_valid(&spec, &header["schema"], &json!(value), name);
    }
    let events = stream
        .events_until(|e| e.event_type == "changefeed.ready")
        .await;
    let (changes, control): (Vec<&SseEvent>, Vec<&SseEvent>) = events
        .iter()
        .partition(|e| !e.event_type.starts_with("changefeed."));
    assert_eq!(changes.len(), 2, "{events:?}");
    for event in changes {
        let data = data_json(event);
        assert_valid(
            &spec,
            component(&spec, "ChangeEvent"),
            &data,
            "a change frame",
        );
        assert_eq!(data["type"], event.event_type.as_str());
    }
    assert_eq!(control.len(), 1);
    assert_valid(
        &spec,
        component(&spec, "Ready"),
        &data_json(control[0]),
        "changefeed.ready",
    );

    // A cursor of another log: the stream answers with a reset.
    let mut stream = server.resume("/api/v1/events", "0123456789abcdef:1").await;
    let events = stream
        .events_until(|e| e.event_type == "changefeed.ready")
        .await;
    let reset = events
        .iter()
        .find(|e| e.event_type == "changefeed.reset")
        .expect("a reset frame");
    let data = data_json(reset);
    assert_valid(&spec, component(&spec, "Reset"), &data, "changefeed.reset");
    assert_eq!(data["reason"], "epoch_mismatch");
    // A cursor the document's Cursor schema rejects is one the server rejects too.
    let cursor = component(&spec, "Cursor");
    for (text, ok) in [
        ("0", true),
        ("0123456789abcdef:42", true),
        ("01", false),
        ("x:1", false),
    ] {
        let validator = jsonschema::validator_for(cursor).unwrap();
        assert_eq!(validator.is_valid(&json!(text)), ok, "{text}");
        let response_ok = if ok {
            server
                .stream(&format!("/api/v1/events?after={text}"))
                .await
                .header("changefeed-cursor")
                .is_some()
        } else {
            server
                .get(&format!("/api/v1/events?after={text}"))
                .await
                .status
                == 400
        };
        assert!(response_ok, "{text}");
    }
}
