//! Proves the first frame gives every client a resume point: a cursor-less client whose filter
//! matched nothing yet loses its connection while matching events are written, reconnects with
//! the id of its first frame, and misses nothing (and sees nothing it should not); both responses
//! name the published head in `Changefeed-Head`.

use changefeed_core::sse::Item;
use changefeed_tests::{change_seqs, log_rows, project_sql, session_sql, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_first_frame_id_misses_nothing() {
    let server = TestServer::start().await;
    server
        .write(&format!("{}{}", project_sql("a"), project_sql("b")))
        .await;
    for i in 0..3 {
        server.write(&session_sql("b", &format!("b-old-{i}"))).await;
    }
    server.settle().await;

    // No cursor: starts at head. The first frame is `retry` + `id`, before any event.
    let mut first = server.stream("/api/v1/events?project=a").await;
    let start = server.cursor(3);
    assert_eq!(first.header("changefeed-cursor"), Some(start.as_str()));
    // Everything is published (settled): the head at open is the log's head.
    assert_eq!(first.header("changefeed-head"), Some(start.as_str()));
    assert_eq!(first.next_item().await, Some(Item::Retry(1000)));
    let first_id = first.last_event_id().to_owned();
    assert_eq!(
        first_id, start,
        "the first frame carries the starting cursor"
    );
    let ready = first.expect_event().await;
    assert_eq!(ready.event_type, "changefeed.ready");
    drop(first);

    // Matching (and other) events are written while the client is away.
    for i in 0..4 {
        server.write(&session_sql("a", &format!("a-{i}"))).await;
        server.write(&session_sql("b", &format!("b-{i}"))).await;
    }
    let head = server.head().await.0;
    server.settle().await;

    let mut second = server.resume("/api/v1/events?project=a", &first_id).await;
    assert_eq!(second.header("changefeed-cursor"), Some(first_id.as_str()));
    assert_eq!(
        second.header("changefeed-head"),
        Some(server.cursor(head).as_str()),
        "the resume starts below the head it reports"
    );
    let events = second
        .events_until(|event| event.event_type == "changefeed.ready")
        .await;
    let expected: Vec<u64> = log_rows(&server.db_path)
        .await
        .iter()
        .filter(|row| row.project == "a")
        .map(|row| row.seq)
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(change_seqs(&events), expected);
    assert_eq!(events.last().unwrap().last_event_id, server.cursor(head));
}
