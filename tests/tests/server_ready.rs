//! Proves that `changefeed.ready` means caught up with the request: rows another process (the
//! `sqlite3` CLI) committed right before a client connected with `?after=0&project=...` all
//! arrive before the client's `changefeed.ready`, also while the server's tailer has not
//! published them yet — and nothing of another project arrives at all.

use changefeed::tailer::TailerConfig;
use changefeed::ServerConfig;
use changefeed_tests::{
    assert_strictly_increasing, change_seqs, log_rows, project_sql, sqlite3, TestServer,
};

/// Rows each commit adds (half of them in the project the client asks for).
const ROWS_PER_COMMIT: usize = 100;
/// Streams opened while the tailer was still behind the commit, before the test is done.
const LATE_STREAMS: usize = 3;
/// The most commits tried to get there.
const MAX_ROUNDS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_committed_before_the_request_arrives_before_ready() {
    // A tailer reading one row at a time takes a while to publish a commit of many rows, so
    // clients connecting right after the commit find it behind.
    let server = TestServer::start_with(ServerConfig {
        tailer: TailerConfig {
            batch: 1,
            ..TailerConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    server
        .write(&format!("{}{}", project_sql("p1"), project_sql("p2")))
        .await;
    server.settle().await;
    let mut late = 0;
    let mut round = 0;
    while late < LATE_STREAMS && round < MAX_ROUNDS {
        // Another process commits rows of both projects, and prints the head it committed.
        let committed: u64 = sqlite3(
            &server.db_path,
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS_PER_COMMIT})
                 INSERT INTO sessions (id, project_id)
                     SELECT 'r{round}-' || i, CASE i % 2 WHEN 0 THEN 'p1' ELSE 'p2' END FROM n;
                 SELECT seq FROM sqlite_sequence WHERE name = 'change_log';"
            ),
        )
        .await
        .trim()
        .parse()
        .expect("the committed head");
        // At once.
        let mut stream = server.stream("/api/v1/events?after=0&project=p1").await;
        assert_eq!(stream.status, 200);
        let published = server.state.feed().published().0;
        if published < committed {
            late += 1;
        }
        let before_ready = stream
            .events_until(|event| event.event_type == "changefeed.ready")
            .await;
        let delivered = change_seqs(&before_ready);
        assert_strictly_increasing(&delivered);
        let expected: Vec<u64> = log_rows(&server.db_path)
            .await
            .into_iter()
            .filter(|row| row.project == "p1" && row.seq <= committed)
            .map(|row| row.seq)
            .collect();
        assert_eq!(expected.len(), (round + 1) * ROWS_PER_COMMIT / 2);
        assert_eq!(
            delivered, expected,
            "round {round}: every row of p1 up to the committed seq {committed} before ready \
             (the tailer had published up to {published} when the stream opened)"
        );
        round += 1;
    }
    eprintln!("{late} of {round} streams opened before the tailer had published the commit");
    assert!(
        late > 0,
        "the tailer always caught up before the client connected, so this proved nothing"
    );
}
