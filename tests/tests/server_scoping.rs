//! Proves scoping over real HTTP: with several projects written concurrently (by the server's
//! store and by the `sqlite3` CLI), `project=` / `types=` streams — live ones opened before the
//! writes and replaying ones opened after — get exactly the log's matching events, once each,
//! in order; and every malformed query gets its documented 4xx with a JSON error code.

use std::time::Duration;

use changefeed::ServerConfig;
use changefeed_tests::{
    change_seqs, data_json, log_rows, project_sql, session_sql, sqlite3, LogRow, SseStream,
    TestServer,
};
use hyper::StatusCode;

/// Six steps of realistic activity for `project` (seven kinds of event), one transaction each.
async fn activity(server: &TestServer, project: &str, rounds: usize) {
    for round in 0..rounds {
        let session = format!("{project}-s{round}");
        let pr = format!("https://git.example/{project}/pull/{round}");
        let steps = [
            format!("INSERT INTO sessions (id, project_id) VALUES ('{session}', '{project}');"),
            format!("UPDATE sessions SET activity = 'working' WHERE id = '{session}';"),
            format!(
                "INSERT INTO pull_requests (url, project_id, session_id) \
                 VALUES ('{pr}', '{project}', '{session}');"
            ),
            format!(
                "INSERT INTO pr_checks (pr_url, name, commit_sha, status) \
                 VALUES ('{pr}', 'build', 'abc', 'pending');"
            ),
            format!(
                "INSERT INTO pr_review_threads (pr_url, thread_id, path, line) \
                 VALUES ('{pr}', 't1', 'src/lib.rs', 7);"
            ),
            format!(
                "UPDATE pull_requests SET ci_state = 'success' WHERE url = '{pr}'; \
                 UPDATE pr_review_threads SET resolved = 1 WHERE pr_url = '{pr}';"
            ),
        ];
        for step in steps {
            server.write(&step).await;
        }
    }
}

struct Scope {
    query: &'static str,
    matches: fn(&LogRow) -> bool,
}

const SCOPES: [Scope; 6] = [
    Scope {
        query: "project=a",
        matches: |row| row.project == "a",
    },
    Scope {
        query: "project=a&project=b",
        matches: |row| row.project == "a" || row.project == "b",
    },
    Scope {
        query: "types=pr_*",
        matches: |row| row.kind.starts_with("pr_"),
    },
    Scope {
        query: "project=c&types=session_created,pr_check*",
        matches: |row| {
            row.project == "c"
                && (row.kind == "session_created" || row.kind.starts_with("pr_check"))
        },
    },
    Scope {
        query: "types=pr_review_thread_resolved",
        matches: |row| row.kind == "pr_review_thread_resolved",
    },
    Scope {
        query: "types=*",
        matches: |_| true,
    },
];

fn check_payloads(events: &[changefeed_core::sse::SseEvent], log: &[LogRow]) {
    for event in events
        .iter()
        .filter(|event| !event.event_type.starts_with("changefeed."))
    {
        let data = data_json(event);
        let seq = data["seq"].as_u64().unwrap();
        let row = log.iter().find(|row| row.seq == seq).expect("row exists");
        assert_eq!(data["projectId"], row.project.as_str());
        assert_eq!(data["type"], row.kind.as_str());
        assert_eq!(event.event_type, row.kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_streams_get_exactly_their_events() {
    let mut config = ServerConfig::default();
    // Filtered live streams learn the final position from an id-only heartbeat checkpoint.
    config.subscription.heartbeat = Duration::from_millis(100);
    let server = TestServer::start_with(config).await;
    server
        .write(&["a", "b", "c"].map(project_sql).concat())
        .await;

    let mut live: Vec<SseStream> = Vec::new();
    for scope in &SCOPES {
        let stream = server
            .stream(&format!("/api/v1/events?{}", scope.query))
            .await;
        assert_eq!(stream.status, StatusCode::OK, "{}", scope.query);
        live.push(stream);
    }

    let cli_writes = async {
        for i in 0..5 {
            sqlite3(&server.db_path, &session_sql("b", &format!("cli-{i}"))).await;
        }
    };
    tokio::join!(
        activity(&server, "a", 4),
        activity(&server, "b", 4),
        activity(&server, "c", 4),
        cli_writes
    );
    let head = server.head().await.0;
    server.settle().await;
    let log = log_rows(&server.db_path).await;
    assert_eq!(log.last().unwrap().seq, head);
    let kinds: std::collections::BTreeSet<&str> = log.iter().map(|row| row.kind.as_str()).collect();
    assert_eq!(kinds.len(), 7, "{kinds:?}");

    for (scope, stream) in SCOPES.iter().zip(&mut live) {
        let expected: Vec<u64> = log
            .iter()
            .filter(|row| (scope.matches)(row))
            .map(|row| row.seq)
            .collect();
        assert!(!expected.is_empty(), "{}", scope.query);
        let events = stream.read_until_id(&server.cursor(head)).await;
        assert_eq!(change_seqs(&events), expected, "live {}", scope.query);
        check_payloads(&events, &log);

        let mut replay = server
            .stream(&format!("/api/v1/events?after=0&{}", scope.query))
            .await;
        let events = replay
            .events_until(|event| event.event_type == "changefeed.ready")
            .await;
        assert_eq!(change_seqs(&events), expected, "replay {}", scope.query);
        let ready = data_json(events.last().unwrap());
        assert_eq!(ready["replayed"], expected.len());
        assert_eq!(ready["after"], server.cursor(head));
        check_payloads(&events, &log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_documented_errors() {
    let server = TestServer::start().await;
    server.write(&project_sql("a")).await;
    let cases: [(&str, StatusCode, &str); 17] = [
        ("projectId=a", StatusCode::BAD_REQUEST, "unknown_parameter"),
        (
            "project=a&limit=5",
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
        ),
        ("project=", StatusCode::BAD_REQUEST, "invalid_project"),
        (
            "project=a&project=",
            StatusCode::BAD_REQUEST,
            "invalid_project",
        ),
        ("types=", StatusCode::BAD_REQUEST, "invalid_types"),
        ("types=pr_%25", StatusCode::BAD_REQUEST, "invalid_types"),
        ("types=pr*x", StatusCode::BAD_REQUEST, "invalid_types"),
        ("types=a,,b", StatusCode::BAD_REQUEST, "invalid_types"),
        ("types=PR_UPDATED", StatusCode::BAD_REQUEST, "invalid_types"),
        ("after=", StatusCode::BAD_REQUEST, "invalid_cursor"),
        ("after=abc", StatusCode::BAD_REQUEST, "invalid_cursor"),
        ("after=01", StatusCode::BAD_REQUEST, "invalid_cursor"),
        (
            "after=9223372036854775808",
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "after=1&after=2",
            StatusCode::BAD_REQUEST,
            "duplicate_parameter",
        ),
        (
            "types=a&types=b",
            StatusCode::BAD_REQUEST,
            "duplicate_parameter",
        ),
        ("project=nope", StatusCode::NOT_FOUND, "unknown_project"),
        (
            "project=a&project=nope",
            StatusCode::NOT_FOUND,
            "unknown_project",
        ),
    ];
    for (query, status, code) in cases {
        let response = server.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(response.status, status, "{query}: {}", response.body);
        assert_eq!(response.error_code(), code, "{query}");
        assert_eq!(
            response.headers.get("content-type").unwrap(),
            "application/json",
            "{query}"
        );
        assert!(
            response.json()["error"]["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty()),
            "{query}"
        );
    }

    // `after` is validated even when the header wins.
    let mut stream = SseStream::connect(
        server.addr,
        "/api/v1/events?after=bogus",
        Some(server.cursor(0).as_bytes()),
    )
    .await;
    assert_eq!(stream.status, StatusCode::BAD_REQUEST);
    assert!(stream.next_event().await.is_none());

    let response = server.get("/nowhere").await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.error_code(), "not_found");
    let response = changefeed_tests::request(server.addr, "POST", "/api/v1/events").await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.error_code(), "method_not_allowed");
}
