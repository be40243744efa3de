//! Pins a whole response byte for byte: status, the contract headers and every frame of a replay
//! of a fixed scripted history that produces all eight kinds through the domain tables, from
//! the first frame to `changefeed.ready`. The epoch (random per database) and the timestamps are
//! redacted.

use changefeed_tests::{project_sql, TestServer};

/// Replaces each `"createdAt":"…"` value with `[ts]`.
fn redact_timestamps(text: &str) -> String {
    let key = "\"createdAt\":\"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(key) {
        out.push_str(&rest[..at + key.len()]);
        rest = &rest[at + key.len()..];
        let end = rest.find('"').expect("closing quote");
        out.push_str("[ts]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_response_of_a_scripted_history() {
    let server = TestServer::start().await;
    let script = [
        format!("{}{}", project_sql("p1"), project_sql("p2")),
        "INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');".to_owned(),
        "INSERT INTO sessions (id, project_id, display_name) VALUES ('s2', 'p1', 'Second');"
            .to_owned(),
        "UPDATE sessions SET activity = 'working', preview_url = 'https://preview/s1' WHERE id = 's1';"
            .to_owned(),
        "INSERT INTO pull_requests (url, project_id, session_id) VALUES ('https://git/p1/1', 'p1', 's1');"
            .to_owned(),
        "UPDATE pull_requests SET ci_state = 'running', mergeability = 'mergeable' WHERE url = 'https://git/p1/1';"
            .to_owned(),
        "UPDATE pull_requests SET session_id = 's2' WHERE url = 'https://git/p1/1';".to_owned(),
        "INSERT INTO pr_checks (pr_url, name, commit_sha, status) VALUES ('https://git/p1/1', 'build', 'c0ffee', 'pending');"
            .to_owned(),
        "UPDATE pr_checks SET status = 'success' WHERE pr_url = 'https://git/p1/1';".to_owned(),
        "INSERT INTO pr_review_threads (pr_url, thread_id, path, line, is_bot) VALUES ('https://git/p1/1', 't1', 'src/lib.rs', 42, 1);"
            .to_owned(),
        "UPDATE pr_review_threads SET resolved = 1 WHERE thread_id = 't1';".to_owned(),
        "UPDATE sessions SET is_terminated = 1 WHERE id = 's1';".to_owned(),
        "INSERT INTO sessions (id, project_id) VALUES ('s3', 'p2');".to_owned(),
    ];
    for step in &script {
        server.write(step).await;
    }
    // Everything is published before connecting, so the whole history is replayed before
    // `changefeed.ready` (otherwise the last rows could arrive live, after it).
    server.settle().await;

    let mut stream = server.stream("/api/v1/events?after=0").await;
    stream.capture_raw();
    stream
        .events_until(|event| event.event_type == "changefeed.ready")
        .await;
    let mut text = format!("HTTP {}\n", stream.status.as_u16());
    for name in [
        "content-type",
        "cache-control",
        "x-accel-buffering",
        "changefeed-cursor",
    ] {
        text.push_str(&format!(
            "{name}: {}\n",
            stream.header(name).unwrap_or("<absent>")
        ));
    }
    text.push('\n');
    text.push_str(&stream.raw_text());
    let text = redact_timestamps(&text.replace(&server.epoch().to_string(), "[epoch]"));
    insta::assert_snapshot!(text);
}
