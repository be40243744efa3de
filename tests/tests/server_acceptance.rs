//! Proves the end-to-end path over real HTTP and a real SQLite file: rows committed through the
//! server's own store and rows committed by another process (the `sqlite3` CLI) both reach an
//! open stream, in order, with their contract JSON; and measures commit → receipt latency for
//! both kinds of writer (printed for the record; the foreign median is asserted to be well under
//! the store's one-second safety-net poll, i.e. the file watch works).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use changefeed::metrics::parse_timestamp_millis;
use changefeed_tests::{data_json, project_sql, seq_of, sqlite3, TestServer};

const WRITES: usize = 50;

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// created_at (stamped by the trigger inside the writer's transaction) → receipt, in whole ms.
fn created_to_receipt(event: &changefeed_core::sse::SseEvent, received_wall_ms: u64) -> Duration {
    let created = data_json(event)["createdAt"]
        .as_str()
        .and_then(parse_timestamp_millis)
        .expect("createdAt is RFC 3339 with milliseconds");
    Duration::from_millis(received_wall_ms.saturating_sub(created))
}

fn report(label: &str, samples: &[Duration]) {
    eprintln!(
        "{label}: n={} median={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        percentile(samples, 0.5).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.iter().max().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_and_foreign_commits_reach_an_open_stream_within_milliseconds() {
    let server = TestServer::start().await;
    server.write(&project_sql("p1")).await;
    let mut stream = server.stream("/api/v1/events").await;
    assert_eq!(stream.status, 200);
    let ready = stream.expect_event().await;
    assert_eq!(ready.event_type, "changefeed.ready");

    // Writes through the server's own single write connection.
    let mut own_commit = Vec::new();
    let mut own_created = Vec::new();
    let mut last_seq = 0;
    for i in 0..WRITES {
        let session = format!("own-{i}");
        let mut tx = server.store.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO sessions (id, project_id) VALUES (?, 'p1')")
            .bind(&session)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        let committed = Instant::now();
        let event = stream.expect_event().await;
        own_commit.push(committed.elapsed());
        own_created.push(created_to_receipt(&event, wall_ms()));
        assert_eq!(event.event_type, "session_created");
        let data = data_json(&event);
        assert_eq!(data["sessionId"], session.as_str());
        assert_eq!(data["projectId"], "p1");
        assert!(seq_of(&event) > last_seq);
        last_seq = seq_of(&event);
    }

    // Writes by another process. The CLI and the stream are awaited together, so the receipt
    // time is taken when the event arrives, not after the process has been reaped.
    let mut foreign_created = Vec::new();
    let mut foreign_exit = Vec::new();
    for i in 0..WRITES {
        let sql = format!(
            "INSERT INTO projects (id, name) VALUES ('cli-{i}', 'CLI {i}'); \
             INSERT INTO sessions (id, project_id) VALUES ('cli-session-{i}', 'cli-{i}');"
        );
        let cli = async {
            sqlite3(&server.db_path, &sql).await;
            Instant::now()
        };
        let receive = async {
            let event = stream.expect_event().await;
            (event, Instant::now(), wall_ms())
        };
        let (exited, (event, received, received_wall)) = tokio::join!(cli, receive);
        foreign_created.push(created_to_receipt(&event, received_wall));
        foreign_exit.push(received.saturating_duration_since(exited));
        assert_eq!(event.event_type, "session_created");
        let data = data_json(&event);
        assert_eq!(data["sessionId"], format!("cli-session-{i}"));
        assert_eq!(data["projectId"], format!("cli-{i}"));
        assert_eq!(data["payload"]["isTerminated"], false);
        assert!(seq_of(&event) > last_seq);
        last_seq = seq_of(&event);
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "latency (one stream, sequential writes; loadavg {})",
        load.trim()
    );
    report(
        "  own store: commit() returned -> event received",
        &own_commit,
    );
    report("  own store: created_at -> event received", &own_created);
    report(
        "  sqlite3 CLI: created_at -> event received",
        &foreign_created,
    );
    report(
        "  sqlite3 CLI: process exit -> event received (0 when the event came first)",
        &foreign_exit,
    );
    let foreign_median = percentile(&foreign_created, 0.5);
    assert!(
        foreign_median < Duration::from_millis(500),
        "a commit by another process took {foreign_median:?} (median) to arrive: the file watch is \
         not working and the one-second poll is doing the job"
    );
}
