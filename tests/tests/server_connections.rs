//! Proves the connection layer's limits against real sockets: hundreds of silent and slowloris
//! connections are closed after the head timeout while a normal client is served, idle
//! keep-alive connections are closed, connections and streams beyond their limits get a JSON
//! 503 `overloaded` with `Retry-After`, oversized targets and headers get JSON 414/431, a huge
//! `Last-Event-ID` is echoed only in part, and a client that pipelined a second request and left
//! is dropped from the subscriber gauge long before any heartbeat could notice.

use std::net::SocketAddr;
use std::time::Duration;

use changefeed::conn::ConnectionConfig;
use changefeed::ServerConfig;
use changefeed_core::wire::{Reset, MAX_REQUESTED_BYTES};
use changefeed_tests::{project_sql, request, within, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const SILENT: usize = 300;
const SLOW: usize = 100;

fn config(connection: ConnectionConfig) -> ServerConfig {
    let mut config = ServerConfig {
        connection,
        ..ServerConfig::default()
    };
    // Heartbeats far apart: nothing here may be noticed through a failed heartbeat write.
    config.subscription.heartbeat = Duration::from_secs(120);
    config
}

/// Reads until the peer closes (EOF or reset); what was read.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    within("connect", TcpStream::connect(addr))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed_while_a_normal_client_is_served() {
    let head_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(config(ConnectionConfig {
        head_timeout,
        ..ConnectionConfig::default()
    }))
    .await;
    server.write(&project_sql("p")).await;
    server.settle().await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(connect(server.addr).await);
    }
    // Slowloris: a request head trickled a byte at a time, never finished.
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let mut stream = connect(server.addr).await;
        slow.push(tokio::spawn(async move {
            stream
                .write_all(format!("GET /healthz HTTP/1.1\r\nX-Slow-{i}: ").as_bytes())
                .await
                .expect("start the head");
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => panic!("a slowloris head got an answer"),
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stream.write_all(b"a").await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile a normal client is served: a request, and a stream that gets a live event.
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    let mut stream = server.stream("/api/v1/events?project=p").await;
    assert_eq!(stream.expect_event().await.event_type, "changefeed.ready");
    server
        .write("INSERT INTO sessions (id, project_id) VALUES ('s1', 'p');")
        .await;
    assert_eq!(stream.expect_event().await.event_type, "session_created");
    let served_at = opened.elapsed();

    for (i, connection) in silent.iter_mut().enumerate() {
        let seen = within("a silent connection to be closed", until_closed(connection)).await;
        assert!(seen.is_empty(), "silent connection {i} got {seen:?}");
    }
    for task in slow {
        within("a slowloris connection to be closed", task)
            .await
            .expect("slowloris task");
    }
    let closed_at = opened.elapsed();
    // Closed by the head timeout (never before it), with the normal client served first.
    assert!(closed_at >= head_timeout, "closed after {closed_at:?}");
    assert!(
        served_at < closed_at,
        "served at {served_at:?}, closed at {closed_at:?}"
    );
    // The open stream is a request in flight, not a silent connection: it is still live.
    server
        .write("INSERT INTO sessions (id, project_id) VALUES ('s2', 'p');")
        .await;
    assert_eq!(stream.expect_event().await.event_type, "session_created");
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let idle_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config(ConnectionConfig {
        idle_timeout,
        ..ConnectionConfig::default()
    }))
    .await;
    let mut stream = connect(server.addr).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    // The response arrives and the connection stays open (keep-alive) ...
    while !String::from_utf8_lossy(&head).contains("\"status\":\"ok\"") {
        let n = within("the response", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the response");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    // ... until it has been idle for the idle timeout.
    let rest = within(
        "the idle connection to be closed",
        until_closed(&mut stream),
    )
    .await;
    assert!(rest.is_empty());
    assert!(started.elapsed() >= idle_timeout, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_a_json_503_with_retry_after() {
    let server = TestServer::start_with(config(ConnectionConfig {
        max_connections: 2,
        ..ConnectionConfig::default()
    }))
    .await;
    server.settle().await;
    let first = server.stream("/api/v1/events").await;
    let second = server.stream("/api/v1/events").await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 200));
    let refused = server.get("/healthz").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.error_code(), "overloaded");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 connections"));
    // A slot frees when a connection closes.
    drop(first);
    within("a connection slot to free up", async {
        while server.get("/healthz").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_get_a_json_503_with_retry_after() {
    let server = TestServer::start_with(config(ConnectionConfig {
        max_streams: 2,
        retry_after_secs: 3,
        ..ConnectionConfig::default()
    }))
    .await;
    server.settle().await;
    let first = server.stream("/api/v1/events").await;
    let _second = server.stream("/api/v1/events").await;
    server.wait_metric("changefeed_subscribers", 2.0).await;
    let refused = server.stream("/api/v1/events").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "3");
    assert_eq!(
        refused.headers["content-type"], "application/json",
        "a JSON error, not a stream"
    );
    // Other requests are not streams and are still served.
    assert_eq!(server.get("/healthz").await.status, 200);
    drop(first);
    server.wait_metric("changefeed_subscribers", 1.0).await;
    within("a stream slot to free up", async {
        loop {
            let stream = server.stream("/api/v1/events").await;
            if stream.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_targets_and_headers_get_json_414_and_431_and_a_huge_cursor_is_echoed_in_part() {
    let server = TestServer::start().await;
    server.settle().await;
    let long = format!("/api/v1/events?types={}", "a".repeat(10_000));
    let response = request(server.addr, "GET", &long).await;
    assert_eq!(response.status, 414);
    assert_eq!(response.error_code(), "uri_too_long");

    let mut stream = connect(server.addr).await;
    let big = "b".repeat(40_000);
    stream
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(within("a 431", until_closed(&mut stream)).await).unwrap();
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.contains("application/json"), "{text}");
    assert!(text.contains("\"code\":\"headers_too_large\""), "{text}");

    // A malformed cursor within the header limit: the reset echoes a bounded prefix of it.
    let cursor = "c".repeat(20_000);
    let mut resumed = server.resume("/api/v1/events", &cursor).await;
    assert_eq!(resumed.status, 200);
    let reset = resumed.expect_event().await;
    assert_eq!(reset.event_type, "changefeed.reset");
    assert!(
        reset.data.len() < MAX_REQUESTED_BYTES + 200,
        "{}",
        reset.data
    );
    let reset = Reset::from_json(&reset.data).unwrap();
    assert_eq!(reset.requested, "c".repeat(MAX_REQUESTED_BYTES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelined_a_request_and_left_is_noticed_long_before_a_heartbeat() {
    let server = TestServer::start_with(config(ConnectionConfig::default())).await;
    server.settle().await;
    for pipelined in [true, false] {
        let mut stream = connect(server.addr).await;
        let mut requests = String::from("GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n");
        if pipelined {
            requests.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        }
        stream.write_all(requests.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("changefeed.ready") {
            let n = within("the stream's first frames", stream.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        server.wait_metric("changefeed_subscribers", 1.0).await;
        let left = Instant::now();
        drop(stream);
        // The heartbeat is two minutes away; the gauge must drop on the read half's EOF.
        server.wait_metric("changefeed_subscribers", 0.0).await;
        let noticed = left.elapsed();
        eprintln!("pipelined={pipelined}: gone noticed after {noticed:?}");
        assert!(noticed < Duration::from_secs(30), "{noticed:?}");
    }
}
