//! Proves the changefeed client's HTTP and reconnect behaviour against a scripted SSE server:
//! request headers, typed items, id-only checkpoints carried into `Last-Event-ID`, `retry:`,
//! backoff on 5xx/429 (`Retry-After`), giving up on 204/404/wrong content type, redirects, the
//! read timeout, connect errors, configurable parser limits (an oversized line or event is a
//! terminal error naming the limit, never a reconnect loop) and cancel-safety. Timing is asserted on tokio's paused clock
//! over in-memory pipes, so it is exact and nothing really sleeps.

mod client_support;

use std::io;
use std::time::Duration;

use changefeed_client::{
    ChangeEvent, Client, ClientConfig, ClientError, ClientItem, Disconnect, GiveUpReason,
    ParseError, ParserLimits, TcpConnector,
};
use client_support::{
    change_frame, change_json, cursor, drive, reset_frame, MemConnector, ScriptConn, ScriptServer,
    Seen, REAL, VIRTUAL,
};

const SEC: Duration = Duration::from_secs(1);

/// The URL used over in-memory pipes (the host is never resolved).
const MEM_URL: &str = "http://changefeed.test/api/v1/events";

fn config(url: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url).expect("valid url");
    config.reconnect.jitter_seed = 7;
    config
}

fn mem_client(connector: &MemConnector, config: ClientConfig) -> client_support::Driven {
    drive(Client::new(config, connector.clone()), VIRTUAL)
}

/// Asserts the elapsed virtual time between two instants (tokio timers have 1 ms resolution).
fn assert_elapsed(from: tokio::time::Instant, to: tokio::time::Instant, expected: Duration) {
    let elapsed = to - from;
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(2),
        "elapsed {elapsed:?}, expected {expected:?}"
    );
}

fn disconnected(item: ClientItem) -> (Disconnect, Duration) {
    match item {
        ClientItem::Disconnected { reason, retry_in } => (reason, retry_in),
        other => panic!("expected a disconnect, got {other:?}"),
    }
}

fn event(item: ClientItem) -> ChangeEvent {
    match item {
        ClientItem::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn connected(client: &mut client_support::Driven) -> Seen {
    let (item, seen) = client.item().await;
    assert!(
        matches!(item, ClientItem::Connected { .. }),
        "expected Connected, got {item:?}"
    );
    seen
}

#[tokio::test]
async fn sends_the_headers_and_yields_typed_items() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut config = config(&format!("{base}/api/v1/events?project=p1"));
    config.headers = vec![
        ("Authorization".into(), "Bearer t0k".into()),
        ("x-trace".into(), "1".into()),
        ("x-trace".into(), "2".into()),
    ];
    let mut client = drive(Client::new(config, TcpConnector), REAL);

    let mut conn = server.accept().await;
    let request = &conn.request;
    assert_eq!(request.method, "GET");
    assert_eq!(request.target, "/api/v1/events?project=p1");
    assert_eq!(request.header("host"), Some(&base["http://".len()..]));
    assert_eq!(request.header("accept"), Some("text/event-stream"));
    assert_eq!(request.header("cache-control"), Some("no-cache"));
    assert_eq!(request.header("authorization"), Some("Bearer t0k"));
    assert_eq!(request.headers_named("x-trace"), ["1", "2"]);
    assert_eq!(request.header("last-event-id"), None);

    conn.stream_head().await;
    let (item, seen) = client.item().await;
    assert_eq!(
        item,
        ClientItem::Connected {
            url: format!("{base}/api/v1/events?project=p1")
        }
    );
    assert_eq!(seen.cursor, None);

    conn.write(format!("retry: 2000\nid: {}\n\n", cursor(4)))
        .await;
    conn.write(reset_frame("00000000000000bb:9", 5, "epoch_mismatch"))
        .await;
    let (item, seen) = client.item().await;
    assert_eq!(
        item,
        ClientItem::Reset {
            requested: "00000000000000bb:9".into(),
            after: cursor(5),
            reason: "epoch_mismatch".into(),
        }
    );
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(5)));
    assert_eq!(seen.retry_delay, 2 * SEC);

    conn.write(format!(
        "id: {}\nevent: changefeed.ready\ndata: {{\"after\":\"{}\",\"replayed\":0,\"heartbeatMs\":15000}}\n\n",
        cursor(5),
        cursor(5)
    ))
    .await;
    assert_eq!(
        client.item().await.0,
        ClientItem::Ready {
            after: cursor(5),
            replayed: 0,
            heartbeat_ms: 15000,
        }
    );

    conn.write(change_frame(6, "pr_updated")).await;
    let (item, seen) = client.item().await;
    assert_eq!(
        event(item),
        ChangeEvent {
            id: cursor(6),
            kind: "pr_updated".into(),
            data: change_json(6, "pr_updated"),
            seq: Some(6),
            project_id: Some("p1".into()),
            session_id: Some("s1".into()),
            created_at: Some("2026-11-26T21:13:07.123Z".into()),
        }
    );
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(6)));

    // A heartbeat, then a control frame whose data is broken: surfaced, cursor still moves.
    conn.write(":\n\n").await;
    assert_eq!(client.item().await.0, ClientItem::Comment(String::new()));
    conn.write(format!(
        "id: {}\nevent: changefeed.ready\ndata: nope\n\n",
        cursor(7)
    ))
    .await;
    let (item, seen) = client.item().await;
    assert!(
        matches!(&item, ClientItem::Malformed { event, .. } if event.data == "nope"),
        "{item:?}"
    );
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(7)));

    // A reason this client does not know (a newer server's) is still a reset, passed on as sent.
    conn.write(reset_frame("", 8, "compacted")).await;
    let (item, seen) = client.item().await;
    assert_eq!(
        item,
        ClientItem::Reset {
            requested: String::new(),
            after: cursor(8),
            reason: "compacted".into(),
        }
    );
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(8)));
}

#[tokio::test(start_paused = true)]
async fn an_id_only_checkpoint_moves_the_cursor_and_the_reconnect_carries_it() {
    let (mut server, connector) = ScriptServer::memory();
    let mut client = mem_client(&connector, config(MEM_URL));

    let mut conn = server.accept().await;
    assert_eq!(conn.request.header("last-event-id"), None);
    conn.stream_head().await;
    connected(&mut client).await;
    conn.write(change_frame(1, "session_created")).await;
    let (item, seen) = client.item().await;
    assert_eq!(event(item).id, cursor(1));
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(1)));

    // Events 2..4 did not match this client's filter: the server moves it past them.
    conn.write(format!("id: {}\n\n", cursor(4))).await;
    drop(conn);
    let (item, seen) = client.item().await;
    let (reason, retry_in) = disconnected(item);
    assert_eq!(reason, Disconnect::Ended);
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(4)));
    // A stream that delivered frames reconnects after the base delay (1 s), jittered.
    assert!(retry_in >= SEC / 2 && retry_in <= SEC, "{retry_in:?}");

    let mut conn = server.accept().await;
    assert_elapsed(seen.at, conn.at, retry_in);
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(4)));
    conn.stream_head().await;
    connected(&mut client).await;
    // The parser is seeded with the resume position: an event without `id:` keeps it.
    conn.write("event: pr_created\ndata: {}\n\n").await;
    assert_eq!(event(client.item().await.0).id, cursor(4));
}

#[tokio::test(start_paused = true)]
async fn the_retry_field_sets_the_reconnect_delay() {
    let (mut server, connector) = ScriptServer::memory();
    let mut client = mem_client(&connector, config(MEM_URL));

    let mut conn = server.accept().await;
    conn.stream_head().await;
    conn.write(format!("retry: 5000\nid: {}\n\n", cursor(1)))
        .await;
    conn.write(change_frame(2, "pr_created")).await;
    connected(&mut client).await;
    client.item().await;
    drop(conn);
    let (item, seen) = client.item().await;
    let (_, retry_in) = disconnected(item);
    assert_eq!(seen.retry_delay, 5 * SEC);
    assert!(
        retry_in >= 5 * SEC / 2 && retry_in <= 5 * SEC,
        "{retry_in:?}"
    );
    let mut conn = server.accept().await;
    assert_elapsed(seen.at, conn.at, retry_in);
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(2)));

    // `retry: 0` after a healthy stream: reconnect at once.
    conn.stream_head().await;
    conn.write("retry: 0\n\n").await;
    conn.write(change_frame(3, "pr_created")).await;
    connected(&mut client).await;
    client.item().await;
    drop(conn);
    let (item, seen) = client.item().await;
    assert_eq!(disconnected(item).1, Duration::ZERO);
    assert_eq!(seen.retry_delay, Duration::ZERO);
    let conn = server.accept().await;
    assert_eq!(conn.at, seen.at);
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(3)));
}

#[tokio::test(start_paused = true)]
async fn server_errors_back_off_exponentially_then_the_stream_resumes() {
    let (mut server, connector) = ScriptServer::memory();
    let mut config = config(MEM_URL);
    config.last_event_id = Some(cursor(10));
    let mut client = mem_client(&connector, config);

    // First failure: base 1 s doubled = 2 s, jittered into [1 s, 2 s].
    server
        .accept()
        .await
        .respond("500 Internal Server Error", &[], "boom")
        .await;
    let (item, seen) = client.item().await;
    let (reason, first) = disconnected(item);
    assert_eq!(
        reason,
        Disconnect::Status {
            status: 500,
            body: Some("boom".into())
        }
    );
    assert!(first >= SEC && first <= 2 * SEC, "{first:?}");

    // Second failure: 4 s, jittered into [2 s, 4 s].
    let conn = server.accept().await;
    assert_elapsed(seen.at, conn.at, first);
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(10)));
    conn.respond("503 Service Unavailable", &[], "").await;
    let (item, seen) = client.item().await;
    let (_, second) = disconnected(item);
    assert!(second >= 2 * SEC && second <= 4 * SEC, "{second:?}");

    let mut conn = server.accept().await;
    assert_elapsed(seen.at, conn.at, second);
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(10)));
    conn.stream_head().await;
    conn.write(change_frame(11, "pr_updated")).await;
    connected(&mut client).await;
    assert_eq!(event(client.item().await.0).seq, Some(11));

    // Progress reset the failure count: the next reconnect waits the base delay again.
    drop(conn);
    let (_, retry_in) = disconnected(client.item().await.0);
    assert!(retry_in >= SEC / 2 && retry_in <= SEC, "{retry_in:?}");
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_honours_retry_after() {
    let (mut server, connector) = ScriptServer::memory();
    let mut client = mem_client(&connector, config(MEM_URL));

    server
        .accept()
        .await
        .respond("429 Too Many Requests", &[("retry-after", "120")], "")
        .await;
    let (item, seen) = client.item().await;
    let (reason, retry_in) = disconnected(item);
    assert!(matches!(reason, Disconnect::Status { status: 429, .. }));
    assert_eq!(retry_in, 120 * SEC);
    let conn = server.accept().await;
    assert_elapsed(seen.at, conn.at, 120 * SEC);
}

#[tokio::test]
async fn no_content_gives_up() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut client = drive(Client::new(config(&base), TcpConnector), REAL);
    server
        .accept()
        .await
        .respond("204 No Content", &[], "")
        .await;
    let error = client.error().await;
    assert!(
        matches!(
            &error,
            ClientError::GiveUp {
                reason: GiveUpReason::NoContent,
                ..
            }
        ),
        "{error:?}"
    );
    // The client task has ended: it made no further attempt.
    assert!(server.try_accept().is_none());
}

#[tokio::test]
async fn not_found_gives_up_with_the_error_body() {
    let (mut server, base) = ScriptServer::tcp().await;
    let url = format!("{base}/api/v1/events?project=nope");
    let mut client = drive(Client::new(config(&url), TcpConnector), REAL);
    let body = r#"{"error":{"code":"unknown_project","message":"no project nope"}}"#;
    server
        .accept()
        .await
        .respond(
            "404 Not Found",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    let error = client.error().await;
    let ClientError::GiveUp {
        reason: GiveUpReason::Status(404),
        body: Some(received),
        url: answered,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(received, body);
    assert_eq!(answered, &url);
    let message = error.to_string();
    assert!(
        message.contains("404") && message.contains("unknown_project"),
        "{message}"
    );
}

#[tokio::test]
async fn a_wrong_content_type_gives_up() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut client = drive(Client::new(config(&base), TcpConnector), REAL);
    server
        .accept()
        .await
        .respond(
            "200 OK",
            &[("content-type", "text/html; charset=utf-8")],
            "<html>",
        )
        .await;
    let error = client.error().await;
    assert!(
        matches!(
            &error,
            ClientError::GiveUp { reason: GiveUpReason::ContentType(ct), .. }
                if ct == "text/html; charset=utf-8"
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn follows_a_relative_307_redirect_with_the_same_request() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut config = config(&format!("{base}/old/events?a=1"));
    config.last_event_id = Some(cursor(3));
    config.headers = vec![("x-token".into(), "k".into())];
    config.reconnect.initial_retry = Duration::from_millis(1);
    let mut client = drive(Client::new(config, TcpConnector), REAL);

    let first = server.accept().await;
    assert_eq!(first.request.target, "/old/events?a=1");
    first
        .respond(
            "307 Temporary Redirect",
            &[("location", "../new/events?b=2")],
            "",
        )
        .await;
    let mut conn = server.accept().await;
    assert_eq!(conn.request.target, "/new/events?b=2");
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(3)));
    assert_eq!(conn.request.header("x-token"), Some("k"));
    assert_eq!(conn.request.header("accept"), Some("text/event-stream"));
    conn.stream_head().await;
    assert_eq!(
        client.item().await.0,
        ClientItem::Connected {
            url: format!("{base}/new/events?b=2")
        }
    );
    conn.write(change_frame(4, "pr_created")).await;
    assert_eq!(event(client.item().await.0).seq, Some(4));

    // Reconnects start again from the configured URL.
    drop(conn);
    disconnected(client.item().await.0);
    let conn = server.accept().await;
    assert_eq!(conn.request.target, "/old/events?a=1");
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(4)));
}

#[tokio::test]
async fn a_cross_origin_redirect_drops_credentials_and_303_turns_post_into_get() {
    let (mut first, first_base) = ScriptServer::tcp().await;
    let (mut other, other_base) = ScriptServer::tcp().await;
    let mut config = config(&format!("{first_base}/events"));
    config.method = hyper::Method::POST;
    config.body = "{\"q\":1}".into();
    config.headers = vec![
        ("authorization".into(), "Bearer secret".into()),
        ("content-type".into(), "application/json".into()),
        ("x-token".into(), "k".into()),
    ];
    let mut client = drive(Client::new(config, TcpConnector), REAL);

    let conn = first.accept().await;
    assert_eq!(conn.request.method, "POST");
    assert_eq!(conn.request.body, b"{\"q\":1}");
    assert_eq!(conn.request.header("authorization"), Some("Bearer secret"));
    conn.respond(
        "303 See Other",
        &[("location", &format!("{other_base}/elsewhere"))],
        "",
    )
    .await;
    let mut conn = other.accept().await;
    assert_eq!(conn.request.method, "GET");
    assert!(conn.request.body.is_empty());
    assert_eq!(conn.request.header("content-type"), None);
    assert_eq!(conn.request.header("authorization"), None);
    assert_eq!(conn.request.header("x-token"), Some("k"));
    conn.stream_head().await;
    assert_eq!(
        client.item().await.0,
        ClientItem::Connected {
            url: format!("{other_base}/elsewhere")
        }
    );
}

#[tokio::test]
async fn a_redirect_without_location_fails_clearly() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut client = drive(Client::new(config(&base), TcpConnector), REAL);
    server
        .accept()
        .await
        .respond("301 Moved Permanently", &[], "")
        .await;
    let error = client.error().await;
    assert!(
        matches!(&error, ClientError::Redirect { status: 301, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("{base}/: cannot follow the 301 redirect: the response has no Location header")
    );

    // An empty Location is no better.
    let mut client = drive(Client::new(config(&base), TcpConnector), REAL);
    server
        .accept()
        .await
        .respond("302 Found", &[("location", "")], "")
        .await;
    let error = client.error().await;
    assert!(
        error.to_string().contains("Location header is empty"),
        "{error}"
    );
    assert!(server.try_accept().is_none());
}

#[tokio::test]
async fn too_many_redirects_fail() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut config = config(&base);
    config.max_redirects = 2;
    let mut client = drive(Client::new(config, TcpConnector), REAL);
    for _ in 0..3 {
        server
            .accept()
            .await
            .respond("302 Found", &[("location", "/again")], "")
            .await;
    }
    let error = client.error().await;
    assert!(
        error.to_string().contains("more than 2 redirects"),
        "{error}"
    );
    assert!(server.try_accept().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_read_timeout_breaks_a_silent_connection() {
    let (mut server, connector) = ScriptServer::memory();
    // The default: 45 s, three heartbeats.
    let mut client = mem_client(&connector, config(MEM_URL));

    let mut conn = server.accept().await;
    conn.stream_head().await;
    conn.write(format!("retry: 1000\nid: {}\n\n", cursor(2)))
        .await;
    let start = connected(&mut client).await.at;
    let (item, seen) = client.item().await;
    assert_eq!(disconnected(item).0, Disconnect::ReadTimeout(45 * SEC));
    assert_elapsed(start, seen.at, 45 * SEC);
    assert_eq!(seen.cursor.as_deref(), Some(&*cursor(2)));
    conn.closed().await;

    // Any bytes reset the timer: a heartbeat at +30 s keeps the next connection alive until
    // +75 s. (The sleep only moves the paused clock; it synchronizes nothing.)
    let mut conn = server.accept().await;
    assert_eq!(conn.request.header("last-event-id"), Some(&*cursor(2)));
    conn.stream_head().await;
    let start = connected(&mut client).await.at;
    tokio::time::sleep_until(start + 30 * SEC).await;
    conn.write(":\n\n").await;
    let (item, _) = client.item().await;
    assert_eq!(item, ClientItem::Comment(String::new()));
    let (item, seen) = client.item().await;
    assert_eq!(disconnected(item).0, Disconnect::ReadTimeout(45 * SEC));
    assert_elapsed(start, seen.at, 75 * SEC);
}

#[tokio::test(start_paused = true)]
async fn a_response_head_that_never_comes_times_out() {
    let (mut server, connector) = ScriptServer::memory();
    let mut config = config(MEM_URL);
    config.read_timeout = Some(10 * SEC);
    let mut client = mem_client(&connector, config);
    let mut silent = server.accept().await;
    let (item, seen) = client.item().await;
    assert!(
        matches!(disconnected(item).0, Disconnect::Connect(ref m) if m.contains("no response")),
    );
    assert_elapsed(silent.at, seen.at, 10 * SEC);
    silent.closed().await;
    server.accept().await;
}

#[tokio::test(start_paused = true)]
async fn connect_errors_are_retried_and_unsupported_urls_are_not() {
    let (mut server, connector) = ScriptServer::memory();
    connector.fail_next(io::ErrorKind::ConnectionRefused);
    connector.fail_next(io::ErrorKind::ConnectionRefused);
    let mut client = mem_client(&connector, config(MEM_URL));
    let (item, _) = client.item().await;
    let (reason, first) = disconnected(item);
    assert!(
        matches!(&reason, Disconnect::Connect(m) if m.contains("ConnectionRefused")),
        "{reason:?}"
    );
    let (item, _) = client.item().await;
    let (_, second) = disconnected(item);
    assert!(first >= SEC && first <= 2 * SEC, "{first:?}");
    assert!(second >= 2 * SEC && second <= 4 * SEC, "{second:?}");
    server.accept().await.stream_head().await;
    connected(&mut client).await;

    // No retry can fix an unsupported URL: a terminal error, at once.
    let mut client = drive(
        Client::new(
            config("https://changefeed.test/api/v1/events"),
            TcpConnector,
        ),
        VIRTUAL,
    );
    let error = client.error().await;
    assert!(matches!(&error, ClientError::Connector(_)), "{error:?}");
    assert!(error.to_string().contains("plain http"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn next_is_cancel_safe() {
    let (mut server, connector) = ScriptServer::memory();
    let mut client = Client::new(config(MEM_URL), connector);
    let script = tokio::spawn(async move {
        let mut conn = server.accept().await;
        let tick = Duration::from_millis(50);
        tokio::time::sleep(tick).await;
        conn.stream_head().await;
        tokio::time::sleep(tick).await;
        conn.write(change_frame(1, "pr_created")).await;
        tokio::time::sleep(tick).await;
        // Two events in one chunk, the second split across writes.
        let two = format!(
            "{}{}",
            change_frame(2, "pr_created"),
            change_frame(3, "pr_created")
        );
        let (a, b) = two.split_at(two.len() - 20);
        conn.write(a).await;
        tokio::time::sleep(tick).await;
        conn.write(b).await;
        conn
    });
    // Poll with a deadline shorter than every step, so most calls are cancelled mid-way:
    // while connecting, while waiting for the head, while reading the body.
    let mut items = Vec::new();
    let mut cancelled = 0;
    while items.len() < 4 {
        match tokio::time::timeout(Duration::from_millis(7), client.next()).await {
            Ok(item) => items.push(item.expect("an item").expect("no error")),
            Err(_) => cancelled += 1,
        }
    }
    assert!(cancelled > 10, "{cancelled}");
    assert!(matches!(items[0], ClientItem::Connected { .. }));
    let seqs: Vec<_> = items[1..]
        .iter()
        .map(|item| match item {
            ClientItem::Event(event) => event.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3)]);
    assert_eq!(client.last_cursor(), Some(&*cursor(3)));
    let mut conn = script.await.expect("script");
    // Closing drops the connection and ends the stream.
    client.close();
    assert!(client.next().await.is_none());
    conn.closed().await;
}

#[tokio::test]
async fn the_cursor_advances_item_by_item_within_one_chunk() {
    let (mut server, base) = ScriptServer::tcp().await;
    let mut client = Client::new(config(&base), TcpConnector);
    let script = tokio::spawn(async move {
        let mut conn = server.accept().await;
        conn.stream_head().await;
        // One write: event 1, a checkpoint to 5, event 6, a checkpoint to 9.
        conn.write(format!(
            "{}id: {}\n\n{}id: {}\n\n",
            change_frame(1, "a"),
            cursor(5),
            change_frame(6, "b"),
            cursor(9)
        ))
        .await;
        conn
    });
    assert!(matches!(
        next_item(&mut client).await,
        ClientItem::Connected { .. }
    ));
    assert_eq!(event(next_item(&mut client).await).seq, Some(1));
    // A caller persisting the cursor now must not skip event 6.
    assert_eq!(client.last_cursor(), Some(&*cursor(1)));
    assert_eq!(event(next_item(&mut client).await).seq, Some(6));
    assert_eq!(client.last_cursor(), Some(&*cursor(6)));
    let conn: ScriptConn = script.await.expect("script");
    drop(conn);
    assert_eq!(
        disconnected(next_item(&mut client).await).0,
        Disconnect::Ended
    );
    // The trailing checkpoint was applied before the disconnect was handed out.
    assert_eq!(client.last_cursor(), Some(&*cursor(9)));
}

async fn next_item<C: changefeed_client::Connector>(client: &mut Client<C>) -> ClientItem {
    client_support::bounded("an item", REAL, client.next())
        .await
        .expect("an item")
        .expect("no error")
}

#[tokio::test(start_paused = true)]
async fn an_oversized_line_is_a_terminal_error_naming_the_limit() {
    let (mut server, connector) = ScriptServer::memory();
    let mut config = config(MEM_URL);
    config.parser_limits = ParserLimits {
        max_line: 64,
        max_event_data: 1000,
    };
    let mut client = mem_client(&connector, config);
    let mut conn = server.accept().await;
    conn.stream_head().await;
    connected(&mut client).await;
    // An event within the limits, then one line of 70 bytes in the same chunk.
    conn.write(format!("id: 1\ndata: ok\n\ndata: {}\n\n", "x".repeat(64)))
        .await;
    let (item, seen) = client.item().await;
    assert_eq!(event(item).data, "ok");
    assert_eq!(seen.cursor.as_deref(), Some("1"));
    let error = client.error().await;
    assert!(
        matches!(
            &error,
            ClientError::Parse {
                error: ParseError::LineTooLong { limit: 64 },
                url,
            } if url == MEM_URL
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("limit of 64 bytes"), "{message}");
    // The client ended (`error` saw the end): the connection is dropped and nothing
    // reconnects, however long we wait.
    conn.closed().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(server.try_accept().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_oversized_event_is_a_terminal_error_naming_the_limit() {
    let (mut server, connector) = ScriptServer::memory();
    let mut config = config(MEM_URL);
    config.parser_limits = ParserLimits {
        max_line: 1000,
        max_event_data: 100,
    };
    let mut client = mem_client(&connector, config);
    let mut conn = server.accept().await;
    conn.stream_head().await;
    connected(&mut client).await;
    // Each line fits; together the event's data does not.
    let line = format!("data: {}\n", "y".repeat(60));
    conn.write(format!("{line}{line}\n")).await;
    let error = client.error().await;
    assert!(
        matches!(
            &error,
            ClientError::Parse {
                error: ParseError::EventTooLarge { limit: 100 },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("limit of 100 bytes"), "{error}");
    assert!(server.try_accept().is_none());
}

#[test]
fn parser_limits_default_to_the_public_suites_largest_event_and_must_be_positive() {
    let config = ClientConfig::new(MEM_URL).expect("valid");
    // The suite's largest event is 13,981,016 bytes in one line.
    assert!(config.parser_limits.max_line > 13_981_016 + "data: ".len());
    assert!(config.parser_limits.max_event_data > 13_981_016);
    let mut zero = config.clone();
    zero.parser_limits.max_line = 0;
    assert!(matches!(
        zero.validate(),
        Err(ClientError::InvalidConfig(message)) if message.contains("parser limits")
    ));
}
