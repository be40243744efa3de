//! Proves that a database deleted and created again, or another database copied over the file,
//! under a running server is noticed: `/healthz` turns 503 naming `database_replaced`, new
//! streams are refused, and nothing of the other database is published under the old epoch.

use std::path::Path;
use std::time::{Duration, Instant};

use changefeed_tests::{project_sql, session_sql, sqlite3, TestServer};

/// A failure bound only: the waits return as soon as the condition holds.
const NOTICE_BOUND: Duration = Duration::from_secs(15);

/// Polls `/healthz` until it is 503 with a body `settled` accepts; returns that body.
async fn wait_unhealthy(
    server: &TestServer,
    settled: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + NOTICE_BOUND;
    loop {
        let response = server.get("/healthz").await;
        if response.status != 200 {
            assert_eq!(response.status, 503, "{}", response.body);
            let health = response.json();
            if settled(&health) {
                return health;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/healthz not settled: {}",
            response.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_deleted_and_created_again_is_noticed() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await.json()["status"], "ok");
    remove_database(&server.db_path);
    sqlite3(
        &server.db_path,
        "CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT);",
    )
    .await;
    // A read of the deleted file may fail before the identity watch's poll looks: that failure
    // looks at the file at once, so every 503 already names the replacement (never a bare
    // `store_error`, the disk I/O error behind it).
    let health = wait_unhealthy(&server, |health| {
        assert_eq!(health["reason"], "database_replaced", "{health}");
        true
    })
    .await;
    assert_eq!(health["reason"], "database_replaced", "{health}");
    assert_eq!(health["error"]["code"], "unavailable");
    let message = health["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("deleted or moved") || message.contains("replaced"),
        "{message}"
    );
    assert_eq!(server.get("/api/v1/events").await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_database_copied_over_the_file_is_never_streamed() {
    let other = TestServer::start().await;
    other.write(&project_sql("p1")).await;
    other.write(&session_sql("p1", "s1")).await;
    let other_head = other.head().await;
    assert!(other_head.0 >= 1);
    // A standalone copy of the other database (its WAL folded in), as a restore would bring.
    let scratch = tempfile::tempdir().unwrap();
    let other_path = scratch.path().join("other.db");
    sqlite3(
        &other.db_path,
        &format!("VACUUM INTO '{}';", other_path.display()),
    )
    .await;
    other.shutdown().await.unwrap();

    let server = TestServer::start().await;
    // An open stream of the old log: the copy must never reach it.
    let live = server.stream("/api/v1/events").await;
    assert_eq!(live.status, 200);
    // At rest (the WAL checkpointed, as after a quiet spell), the other database is copied
    // over the file in place: same inode, another log.
    sqlite3(&server.db_path, "PRAGMA wal_checkpoint(TRUNCATE);").await;
    std::fs::copy(&other_path, &server.db_path).expect("copy the other database over");
    let health = wait_unhealthy(&server, |_| true).await;
    // Whichever looks first names it: the identity watch (another epoch: `database_replaced`)
    // or the tailer's next read of the swapped pages (`store_error`, "malformed").
    assert!(
        health["reason"] == "database_replaced" || health["reason"] == "store_error",
        "{health}"
    );
    assert_eq!(
        server.state.feed().published().0,
        0,
        "nothing of the other log was published"
    );
    assert_eq!(
        server.metric("changefeed_events_published_total").await,
        0.0
    );
    drop(live);
}
