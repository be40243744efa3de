//! Proves the reset cases over real HTTP: a cursor ahead of head, of a foreign epoch (another
//! database file), below the retention floor (pruned through the store), or a malformed
//! `Last-Event-ID` header (text or not even UTF-8) each yields exactly one `changefeed.reset`
//! as the first frame, then `changefeed.ready`, then live events; that the retention janitor
//! prunes in batches down to `--retain-rows` and old cursors then reset; and that deleting the
//! newest rows does not cause a reset (head comes from `sqlite_sequence`).

use std::time::Duration;

use changefeed::janitor::JanitorConfig;
use changefeed::store::sqlite::SqliteStore;
use changefeed::store::{Retention, Store};
use changefeed::ServerConfig;
use changefeed_core::sse::Item;
use changefeed_core::Seq;
use changefeed_tests::{
    data_json, log_rows, project_sql, seq_of, session_sql, sqlite_url, within, SseStream,
    TestServer,
};

async fn server_with_rows(rows: usize) -> TestServer {
    let server = TestServer::start().await;
    server.write(&project_sql("p")).await;
    for i in 0..rows {
        server.write(&session_sql("p", &format!("old-{i}"))).await;
    }
    assert_eq!(server.head().await.0, rows as u64);
    server.settle().await;
    server
}

/// First frame: `retry` + reset (with the new cursor); then ready; then a live event; and no
/// second reset on the way.
async fn assert_reset_then_live(
    server: &TestServer,
    mut stream: SseStream,
    requested: &str,
    reason: &str,
) {
    assert_eq!(stream.status, 200);
    let head = server.head().await.0;
    let expected_after = server.cursor(head);
    assert_eq!(
        stream.header("changefeed-cursor"),
        Some(expected_after.as_str())
    );
    assert_eq!(stream.next_item().await, Some(Item::Retry(1000)));
    let reset = stream.expect_event().await;
    assert_eq!(reset.event_type, "changefeed.reset");
    assert_eq!(reset.last_event_id, expected_after);
    let data = data_json(&reset);
    assert_eq!(data["reason"], reason);
    assert_eq!(data["requested"], requested);
    assert_eq!(data["after"], expected_after.as_str());

    let ready = stream.expect_event().await;
    assert_eq!(ready.event_type, "changefeed.ready");
    assert_eq!(data_json(&ready)["replayed"], 0);

    server.write(&session_sql("p", "fresh")).await;
    let live = stream.expect_event().await;
    assert_eq!(live.event_type, "session_created");
    assert_eq!(seq_of(&live), head + 1);
    assert_eq!(data_json(&live)["sessionId"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_ahead_of_head_resets() {
    let server = server_with_rows(3).await;
    let requested = server.cursor(100);
    let stream = server.resume("/api/v1/events", &requested).await;
    assert_reset_then_live(&server, stream, &requested, "ahead_of_head").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_of_another_database_resets() {
    let server = server_with_rows(3).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = SqliteStore::open(&sqlite_url(&other_dir.path().join("other.db")))
        .await
        .unwrap();
    let foreign = other.bounds().await.unwrap().epoch;
    assert_ne!(foreign, server.epoch());
    let requested = format!("{foreign}:2");
    let stream = server
        .stream(&format!("/api/v1/events?after={requested}"))
        .await;
    assert_reset_then_live(&server, stream, &requested, "epoch_mismatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_below_the_retention_floor_resets() {
    let server = server_with_rows(10).await;
    let keep_two = Retention {
        days: None,
        rows: Some(2),
    };
    // Retention only removes rows the tailer has durably marked as published (within a second).
    within("the tailer to mark all rows published", async {
        loop {
            let mut changes = server.store.changes();
            if server.store.published().await.unwrap() >= Seq(10) {
                break;
            }
            // The mark is written by the tailer's own commit; re-check on each change (the
            // bounded wait only guards against a wake-up the watch does not report).
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        }
    })
    .await;
    assert_eq!(server.store.prune(keep_two, 500).await.unwrap(), 8);
    assert_eq!(server.store.bounds().await.unwrap().floor.0, 8);
    let requested = server.cursor(3);
    let stream = server.resume("/api/v1/events", &requested).await;
    assert_reset_then_live(&server, stream, &requested, "pruned").await;

    // At the floor itself nothing was lost: no reset, the two kept rows are replayed.
    let mut exact = server.resume("/api/v1/events", &server.cursor(8)).await;
    let first = exact.expect_event().await;
    assert_eq!(first.event_type, "session_created");
    assert_eq!(seq_of(&first), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_last_event_id_header_resets() {
    let server = server_with_rows(3).await;
    let stream = server.resume("/api/v1/events", "garbage").await;
    assert_reset_then_live(&server, stream, "garbage", "invalid_cursor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_last_event_id_header_resets() {
    let server = server_with_rows(3).await;
    let stream = SseStream::connect(server.addr, "/api/v1/events", Some(b"12\xff\xfe")).await;
    assert_reset_then_live(&server, stream, "12\u{fffd}\u{fffd}", "invalid_cursor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_newest_rows_does_not_reset() {
    let server = server_with_rows(5).await;
    let seen = server.cursor(5);
    server.write("DELETE FROM change_log WHERE seq > 3").await;
    assert_eq!(server.head().await.0, 5, "head comes from sqlite_sequence");
    let mut stream = server.resume("/api/v1/events", &seen).await;
    assert_eq!(stream.header("changefeed-cursor"), Some(seen.as_str()));
    let ready = stream.expect_event().await;
    assert_eq!(ready.event_type, "changefeed.ready", "no reset: {ready:?}");
    assert_eq!(ready.last_event_id, seen);

    server.write(&session_sql("p", "next")).await;
    let live = stream.expect_event().await;
    assert_eq!(seq_of(&live), 6, "a deleted seq is never allocated again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_seq_cursor_means_this_log() {
    let server = server_with_rows(4).await;
    let mut stream = server.resume("/api/v1/events", "2").await;
    assert_eq!(
        stream.header("changefeed-cursor"),
        Some(server.cursor(2).as_str())
    );
    let events = stream
        .events_until(|event| event.event_type == "changefeed.ready")
        .await;
    let seqs: Vec<u64> = events.iter().map(seq_of).collect();
    assert_eq!(seqs, [3, 4, 4], "two replayed changes, then ready at 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_prunes_in_batches_and_old_cursors_reset() {
    let server = TestServer::start_with(ServerConfig {
        retention: Retention {
            days: None,
            rows: Some(5),
        },
        janitor: JanitorConfig {
            batch: 4,
            pause: Duration::from_millis(1),
            interval: Duration::from_millis(1),
            idle: Duration::from_millis(20),
        },
        ..ServerConfig::default()
    })
    .await;
    server.write(&project_sql("p")).await;
    for i in 0..20 {
        server.write(&session_sql("p", &format!("old-{i}"))).await;
    }
    server.settle().await;
    within("the janitor to prune down to 5 rows", async {
        while server.get("/healthz").await.json()["floor"] != 15 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let kept: Vec<u64> = log_rows(&server.db_path)
        .await
        .iter()
        .map(|row| row.seq)
        .collect();
    assert_eq!(kept, [16, 17, 18, 19, 20]);
    let requested = server.cursor(3);
    let stream = server.resume("/api/v1/events", &requested).await;
    assert_reset_then_live(&server, stream, &requested, "pruned").await;
}
