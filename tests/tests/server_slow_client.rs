//! Proves that a client which never reads cannot hurt the server or other clients: while ~160 MB
//! of events go through the log, a raw TCP client that sent its request and reads nothing makes
//! the server hand its connection only a bounded number of bytes, the process's resident memory
//! grows by far less than the data that went through, and a reading client receives every
//! event, in order, meanwhile. (One test in this binary, so the memory reading is its own.)

use changefeed::ServerConfig;
use changefeed_tests::{non_reading_client, project_sql, seq_of, within, TestServer};

const BATCHES: u64 = 80;
const ROWS_PER_BATCH: u64 = 500;
/// Bytes of padding in each payload.
const PAD: usize = 4000;
/// Growth of resident memory allowed while the data goes through (the data is ~160 MiB; the
/// live ring holds at most 256 events of ~4 KiB).
const RSS_BOUND: u64 = 64 << 20;
/// Bytes the server may hand to the stalled connection (socket buffers and one chunk in
/// hyper's write buffer; the data is ~160 MiB).
const STALLED_BOUND: u64 = 16 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_bounded_and_delays_nobody() {
    let server = TestServer::start_with(ServerConfig {
        broadcast_capacity: 256,
        ..ServerConfig::default()
    })
    .await;
    server.write(&project_sql("p")).await;
    server.settle().await;

    let mut reader = server.stream("/api/v1/events").await;
    assert_eq!(reader.expect_event().await.event_type, "changefeed.ready");
    let stalled = non_reading_client(server.addr, "/api/v1/events").await;
    server.wait_metric("changefeed_subscribers", 2.0).await;
    let sent_before = server.metric("changefeed_bytes_sent_total").await as u64;
    let rss_before = rss_bytes();

    let total = BATCHES * ROWS_PER_BATCH;
    let pad = "x".repeat(PAD);
    let writer = async {
        for batch in 0..BATCHES {
            let sql = format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS_PER_BATCH}) \
                 INSERT INTO change_log (project_id, event_type, payload) \
                 SELECT 'p', 'bulk_written', json_object('batch', {batch}, 'i', i, 'pad', '{pad}') FROM n;"
            );
            server.write(&sql).await;
        }
    };
    let reading = async {
        let mut received = 0u64;
        let mut bytes = 0u64;
        let mut last = 0u64;
        while received < total {
            let event = reader.expect_event().await;
            assert_eq!(event.event_type, "bulk_written", "no reset, no gap");
            let seq = seq_of(&event);
            assert_eq!(seq, last + 1, "every event, in order");
            last = seq;
            received += 1;
            bytes += event.data.len() as u64;
        }
        bytes
    };
    let ((), reader_data_bytes) = within("the data to go through", async {
        tokio::join!(writer, reading)
    })
    .await;
    let rss_after = rss_bytes();
    let sent = server.metric("changefeed_bytes_sent_total").await as u64 - sent_before;
    let stalled_share = sent.saturating_sub(reader_data_bytes);
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "data through the log: {:.1} MiB; handed to the stalled client: {:.2} MiB; \
         resident memory growth: {:.1} MiB ({:.1} → {:.1} MiB)",
        reader_data_bytes as f64 / 1048576.0,
        stalled_share as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
    );
    assert!(reader_data_bytes > 150 << 20);
    assert!(
        stalled_share < STALLED_BOUND,
        "the stalled client was handed {stalled_share} bytes"
    );
    assert!(growth < RSS_BOUND, "resident memory grew by {growth} bytes");

    // The stalled client's connection is cleaned up once it goes away.
    drop(stalled);
    server.wait_metric("changefeed_subscribers", 1.0).await;
}
