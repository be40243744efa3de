//! Proves the server over Postgres end to end (real HTTP, a real cluster): the demo writer produces all eight kinds through the domain tables, and a client replaying from 0 gets them with dense, increasing seqs and the same event JSON shape as on SQLite; the same domain writes give byte-identical event data on both stores.

use std::collections::BTreeSet;

use changefeed::app::{self, ServerConfig};
use changefeed::demo::{self, DemoConfig};
use changefeed::http::tcp_listener;
use changefeed::shutdown;
use changefeed::store::postgres::PostgresStore;
use changefeed_tests::pg::TestDb;
use changefeed_tests::{SseStream, TestServer};

/// A server over `store` on an ephemeral port, in this runtime.
async fn serve(
    store: PostgresStore,
) -> (
    std::net::SocketAddr,
    shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (trigger, signal) = shutdown::channel();
    let server = app::start(store, ServerConfig::default(), signal)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(changefeed::run(tcp_listener(listener), server));
    (addr, trigger, task)
}

fn seq_of(data: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(data).unwrap();
    value["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_writes_every_kind_on_postgres_and_a_replay_streams_them_densely() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PostgresStore::open(&db.url).await.unwrap();
    let (addr, trigger, server) = serve(store.clone()).await;
    let demo_task = tokio::spawn(demo::run(
        store.clone(),
        DemoConfig {
            rate: 400.0,
            projects: 3,
            seed: 7,
        },
        trigger.signal(),
    ));
    let mut stream = SseStream::connect(addr, "/api/v1/events?after=0", None).await;
    assert_eq!(stream.status, 200);
    let mut kinds = BTreeSet::new();
    let mut last = 0;
    let all_kinds = 8;
    while kinds.len() < all_kinds {
        let event = stream.expect_event().await;
        if event.event_type.starts_with("changefeed.") || event.data.is_empty() {
            continue;
        }
        let seq = seq_of(&event.data);
        assert_eq!(seq, last + 1, "seqs on Postgres are dense and in order");
        last = seq;
        let value: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(value["type"], event.event_type.as_str());
        let created = value["createdAt"].as_str().unwrap();
        assert!(
            created.len() == 24 && created.ends_with('Z') && created.as_bytes()[19] == b'.',
            "{created}"
        );
        kinds.insert(event.event_type.clone());
    }
    trigger.trigger();
    let steps = demo_task.await.unwrap().unwrap();
    assert!(steps > 0);
    server.await.unwrap().unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_writes_give_the_same_event_data_on_sqlite_and_postgres() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PostgresStore::open(&db.url).await.unwrap();
    let (addr, trigger, server) = serve(store.clone()).await;
    let sqlite = TestServer::start().await;
    let script = "INSERT INTO projects (id, name) VALUES ('p1', 'One');
        INSERT INTO sessions (id, project_id, display_name) VALUES ('s1', 'p1', 'tab\there \"q\"');
        INSERT INTO pull_requests (url, project_id, session_id) VALUES ('u1', 'p1', 's1');
        UPDATE pull_requests SET state = 'merged', session_id = NULL WHERE url = 'u1';
        INSERT INTO pr_review_threads (pr_url, thread_id, path, line, is_bot)
            VALUES ('u1', 't1', 'é/😀', 3, 1)";
    store.execute_write(script).await.unwrap();
    sqlite.write(script).await;
    let mut from_pg = SseStream::connect(addr, "/api/v1/events?after=0", None).await;
    let mut from_sqlite = sqlite.stream("/api/v1/events?after=0").await;
    let strip = |data: &str| {
        let mut value: serde_json::Value = serde_json::from_str(data).unwrap();
        value["createdAt"] = serde_json::Value::Null;
        value.to_string()
    };
    let pg_events = from_pg.changes_through(5).await;
    let sqlite_events = from_sqlite.changes_through(5).await;
    assert_eq!(pg_events.len(), 5);
    for (pg, lite) in pg_events.iter().zip(&sqlite_events) {
        assert_eq!(pg.event_type, lite.event_type);
        assert_eq!(strip(&pg.data), strip(&lite.data));
        // Byte for byte up to createdAt (the payload is embedded as stored).
        let cut = |data: &str| data[..data.find("\"createdAt\"").unwrap()].to_owned();
        assert_eq!(cut(&pg.data), cut(&lite.data));
    }
    trigger.trigger();
    server.await.unwrap().unwrap();
    sqlite.shutdown().await.unwrap();
    store.close().await;
}

/// `/metrics` of one replica, checked by a strict OpenMetrics parser, as `series → value`.
async fn replica_metrics(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let response = changefeed_tests::request(addr, "GET", "/metrics").await;
    assert_eq!(response.status, 200);
    if let Err(error) = openmetrics_parser::openmetrics::parse_openmetrics(&response.body) {
        panic!("not valid OpenMetrics text ({error:?}):\n{}", response.body);
    }
    changefeed_tests::parse_metrics(&response.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_reports_its_sequencer_its_wake_ups_and_the_transaction_holding_rows() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (first, second) = (
        PostgresStore::open(&db.url).await.unwrap(),
        PostgresStore::open(&db.url).await.unwrap(),
    );
    let (addr_a, trigger_a, server_a) = serve(first.clone()).await;
    let (addr_b, trigger_b, server_b) = serve(second.clone()).await;
    let mut stream = SseStream::connect(addr_b, "/api/v1/events?after=0", None).await;
    let rows: u32 = 12;
    for index in 0..rows {
        first
            .execute_write(&format!(
                "INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', 'k', '{{\"i\":{index}}}')"
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        stream.changes_through(u64::from(rows)).await.len(),
        rows as usize
    );

    // A transaction that wrote a row and stays open: its row waits, and the replicas name it.
    let mut open = db.connect().await;
    sqlx::raw_sql(
        "BEGIN; INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', 'k', '{}')",
    )
    .execute(&mut open)
    .await
    .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut open)
        .await
        .unwrap();
    let (a, b) = changefeed_tests::within("both replicas to sample the open transaction", async {
        loop {
            let (a, b) = (replica_metrics(addr_a).await, replica_metrics(addr_b).await);
            // The open transaction's row is invisible to the replicas until it commits: it is
            // not among the pending rows (committed rows still without a seq), and the horizon
            // gauges name the transaction instead.
            let names_it = |m: &std::collections::BTreeMap<String, f64>| {
                m.get("changefeed_horizon_pid") == Some(&f64::from(pid))
                    && m.get("changefeed_pending_rows") == Some(&0.0)
            };
            if names_it(&a) && names_it(&b) {
                return (a, b);
            }
            // The change watch samples once per poll interval; ask again after a while.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let total = |name: &str| a[name] + b[name];
    // Every row was numbered by exactly one replica, one NOTIFY per batch.
    assert_eq!(
        total("changefeed_sequencer_rows_assigned_total"),
        f64::from(rows)
    );
    assert_eq!(
        total("changefeed_sequencer_batches_total"),
        total("changefeed_notifies_sent_total")
    );
    assert_eq!(
        a["changefeed_sequencer_batch_rows_count"] + b["changefeed_sequencer_batch_rows_count"],
        total("changefeed_sequencer_batches_total")
    );
    for replica in [&a, &b] {
        assert!(replica["changefeed_sequencer_ticks_total"] >= 1.0);
        // Every batch's NOTIFY reaches every replica (the poll only makes up for lost ones).
        assert!(
            replica["changefeed_notifies_received_total"]
                + replica["changefeed_poll_fallbacks_total"]
                >= 1.0
        );
        assert!(replica["changefeed_horizon_age_seconds"] >= 0.0);
        assert!(replica["changefeed_sequencer_lag_seconds"] >= 0.0);
        assert_eq!(replica["changefeed_announced_head"], f64::from(rows));
    }
    sqlx::raw_sql("ROLLBACK").execute(&mut open).await.unwrap();
    trigger_a.trigger();
    trigger_b.trigger();
    server_a.await.unwrap().unwrap();
    server_b.await.unwrap().unwrap();
    first.close().await;
    second.close().await;
}
