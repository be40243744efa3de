//! Proves how streams end: at graceful shutdown every open stream ends with a final id-only
//! checkpoint carrying its position (also a filtered stream that was shown nothing), the body
//! ends cleanly, the server returns and the published mark is persisted; with a maximum stream
//! lifetime an idle stream gets comment heartbeats and then ends with a checkpoint.

use std::time::Duration;

use changefeed::ServerConfig;
use changefeed_core::sse::Item;
use changefeed_tests::{id_seq, project_sql, seq_of, session_sql, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_a_final_checkpoint() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("quiet")))
        .await;
    let mut all = server.stream("/api/v1/events").await;
    let mut quiet = server.stream("/api/v1/events?project=quiet").await;
    all.capture_raw();
    quiet.capture_raw();
    for stream in [&mut all, &mut quiet] {
        assert_eq!(stream.expect_event().await.event_type, "changefeed.ready");
    }
    for i in 0..3 {
        server.write(&session_sql("a", &format!("s{i}"))).await;
    }
    let head = server.head().await.0;
    let changes = all.changes_through(head).await;
    assert_eq!(changes.iter().map(seq_of).collect::<Vec<_>>(), [1, 2, 3]);

    let store = server.store.clone();
    let checkpoint = server.cursor(head);
    let server_epoch = server.epoch();
    server.shutdown().await.expect("clean shutdown");

    for (stream, exact) in [(&mut all, true), (&mut quiet, false)] {
        let rest = stream.read_to_end().await;
        assert!(rest.is_empty(), "no more events: {rest:?}");
        assert!(stream.ended());
        let last = stream.last_event_id().to_owned();
        if exact {
            // It had received everything: its position is head.
            assert_eq!(last, checkpoint);
        } else {
            // It may stop before taking the last live events from the ring; its checkpoint is
            // its own position in this log, never beyond head.
            assert!(last.starts_with(&format!("{}:", server_epoch)), "{last}");
            assert!(id_seq(&last) <= head);
        }
        let raw = stream.raw_text();
        assert!(
            raw.ends_with(&format!("\n\nid: {last}\n\n")),
            "ends with an id-only checkpoint: {raw:?}"
        );
    }
    assert_eq!(store.published().await.unwrap().0, head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_heartbeats_and_end_at_their_lifetime() {
    let mut config = ServerConfig::default();
    config.subscription.heartbeat = Duration::from_millis(40);
    config.subscription.max_lifetime = Some(Duration::from_millis(400));
    let server = TestServer::start_with(config).await;
    server.write(&project_sql("p")).await;
    server.write(&session_sql("p", "s0")).await;
    server.settle().await;

    let mut stream = server.stream("/api/v1/events").await;
    stream.capture_raw();
    let mut items = Vec::new();
    while let Some(item) = stream.next_item().await {
        items.push(item);
    }
    assert_eq!(items[0], Item::Retry(1000));
    assert!(matches!(&items[1], Item::Event(ready) if ready.event_type == "changefeed.ready"));
    let heartbeats = items[2..]
        .iter()
        .filter(|item| **item == Item::Comment(String::new()))
        .count();
    assert!(heartbeats >= 1, "{items:?}");
    assert_eq!(
        heartbeats,
        items.len() - 2,
        "only heartbeats while idle: {items:?}"
    );
    let checkpoint = server.cursor(1);
    assert_eq!(stream.last_event_id(), checkpoint);
    assert!(stream
        .raw_text()
        .ends_with(&format!(":\n\nid: {checkpoint}\n\n")));
}
