//! Proves sealed ids over real HTTP with auth on: every id is sealed under the configured key
//! (opened here with the tests' own reading of the format), the event JSON carries no `seq`,
//! `Changefeed-Cursor` is the first frame's sealed id and `Changefeed-Head` is absent; a replica
//! with the same key resumes exactly from another's id; a forged, altered, plain or foreign id
//! is the JSON `400 invalid_cursor` (`after=`) or an `invalid_cursor` reset (`Last-Event-ID`),
//! never a panic; and another tenant's writes produce no checkpoint before the heartbeat.

use std::path::Path;

use changefeed::auth::{Auth, AuthSettings};
use changefeed::ServerConfig;
use changefeed_core::IdKey;
use changefeed_tests::{
    data_json, log_rows, project_sql, request_with_headers, seq_of, session_sql, unseal, SseStream,
    TestServer, TEST_ID_KEY,
};

const TOKENS: &str = "tok-p1 p1\ntok-p2 p2\n";

fn config_with_tokens(dir: &Path) -> ServerConfig {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, TOKENS).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let auth = Auth::new(&AuthSettings {
        tokens_file: Some(path),
        ..AuthSettings::default()
    })
    .expect("auth settings");
    ServerConfig {
        auth,
        id_key: Some(IdKey::from_bytes(TEST_ID_KEY)),
        ..ServerConfig::default()
    }
}

async fn start(dir: &Path) -> TestServer {
    let server = TestServer::start_with(config_with_tokens(dir)).await;
    for project in ["p1", "p2"] {
        server.write(&project_sql(project)).await;
    }
    server
}

async fn sessions(server: &TestServer, projects: &[&str]) -> u64 {
    for project in projects {
        let session = format!("{project}-{}", fastrand::u64(..));
        server.write(&session_sql(project, &session)).await;
    }
    server.head().await.0
}

const P1: (&str, &str) = ("authorization", "Bearer tok-p1");

/// Opens an id with the tests' key, panicking with the id when it does not open.
fn opened(id: &str) -> (u64, u64, u64) {
    assert_eq!(id.len(), 54, "a sealed id is 54 characters: {id:?}");
    unseal(&TEST_ID_KEY, id).unwrap_or_else(|| panic!("{id:?} is not sealed with the key"))
}

#[tokio::test]
async fn ids_are_sealed_the_head_is_hidden_and_a_replica_with_the_key_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let through = sessions(&server, &["p1", "p2", "p1", "p2"]).await;
    let mut stream =
        SseStream::connect_with_headers(server.addr, "/api/v1/events?after=0", None, &[P1]).await;
    assert_eq!(stream.status, 200);
    stream.capture_raw();
    assert_eq!(
        stream.header("changefeed-head"),
        None,
        "the global head is hidden"
    );
    let header = stream.header("changefeed-cursor").unwrap().to_owned();
    assert_eq!(opened(&header).1, 0, "the stream starts after 0");
    let changes = stream.changes_through(through - 1).await;
    let raw = stream.raw_text();
    let first_frame = raw.split("\n\n").next().unwrap();
    assert!(
        first_frame.starts_with("retry: ") && first_frame.ends_with(&format!("\nid: {header}")),
        "the header is the first frame's id: {first_frame:?}"
    );
    let expected: Vec<u64> = log_rows(&server.db_path)
        .await
        .into_iter()
        .filter(|row| row.project == "p1")
        .map(|row| row.seq)
        .collect();
    assert_eq!(changes.iter().map(seq_of).collect::<Vec<_>>(), expected);
    for change in &changes {
        let (epoch, _, tweak) = opened(&change.last_event_id);
        assert_eq!(epoch, server.epoch().0);
        assert_eq!(tweak, 0, "an event's own frame uses tweak 0");
        let data = data_json(change);
        assert!(
            data.get("seq").is_none(),
            "the seq is what the id hides: {data}"
        );
        assert_eq!(data["projectId"], "p1");
    }
    let resume_from = changes.last().unwrap().last_event_id.clone();
    drop(stream);

    // A replica over the same log with the same key: resume is exact.
    let missed = sessions(&server, &["p2", "p1", "p1"]).await;
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = TestServer::start_on(
        tempfile::tempdir().unwrap(),
        server.db_path.clone(),
        config_with_tokens(replica_dir.path()),
    )
    .await;
    let mut resumed = SseStream::connect_with_headers(
        replica.addr,
        "/api/v1/events",
        Some(resume_from.as_bytes()),
        &[P1],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let after = resumed.changes_through(missed).await;
    let expected: Vec<u64> = log_rows(&server.db_path)
        .await
        .into_iter()
        .filter(|row| row.project == "p1" && row.seq > seq_of(changes.last().unwrap()))
        .map(|row| row.seq)
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(after.iter().map(seq_of).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn forged_altered_plain_or_foreign_ids_are_invalid_cursor_errors_or_resets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    sessions(&server, &["p1"]).await;
    let mut stream =
        SseStream::connect_with_headers(server.addr, "/api/v1/events?after=0", None, &[P1]).await;
    let genuine = stream.changes_through(1).await.pop().unwrap().last_event_id;
    drop(stream);
    let mut altered = genuine.clone().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let foreign = IdKey::from_bytes([0x77; 32]).seal(server.epoch(), changefeed_core::Seq(1), 0);
    let plain = server.cursor(1);
    for bad in [
        altered.as_str(),
        foreign.as_str(),
        plain.as_str(),
        "1",
        &"A".repeat(54),
    ] {
        let response = request_with_headers(
            server.addr,
            "GET",
            &format!("/api/v1/events?after={bad}"),
            &[P1],
        )
        .await;
        assert_eq!(response.status, 400, "after={bad}: {}", response.body);
        assert_eq!(response.error_code(), "invalid_cursor", "after={bad}");
        assert!(!response.body.contains(&genuine), "{}", response.body);

        let mut reset = SseStream::connect_with_headers(
            server.addr,
            "/api/v1/events",
            Some(bad.as_bytes()),
            &[P1],
        )
        .await;
        assert_eq!(reset.status, 200, "Last-Event-ID: {bad}");
        let first = reset.expect_event().await;
        assert_eq!(first.event_type, "changefeed.reset", "Last-Event-ID: {bad}");
        let data = data_json(&first);
        assert_eq!(data["reason"], "invalid_cursor");
        assert_eq!(data["requested"], bad);
        assert_eq!(opened(data["after"].as_str().unwrap()).0, server.epoch().0);
    }
    // The genuine id still resumes (the server did not fall over).
    let mut resumed = SseStream::connect_with_headers(
        server.addr,
        "/api/v1/events",
        Some(genuine.as_bytes()),
        &[P1],
    )
    .await;
    assert_eq!(resumed.expect_event().await.event_type, "changefeed.ready");
}

#[tokio::test]
async fn another_tenants_writes_send_no_checkpoint_before_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut stream =
        SseStream::connect_with_headers(server.addr, "/api/v1/events", None, &[P1]).await;
    assert_eq!(stream.expect_event().await.event_type, "changefeed.ready");
    stream.capture_raw();
    // The other tenant writes a lot; then one row of p1.
    sessions(&server, &["p2"; 20]).await;
    let own = sessions(&server, &["p1"]).await;
    let change = stream.expect_event().await;
    assert_eq!(seq_of(&change), own);
    // Between ready and the p1 event (the default heartbeat is 15 s), not one frame: no id-only
    // checkpoint tells the tenant that p2 wrote.
    let raw = stream.raw_text();
    assert_eq!(
        raw.matches("\n\n").count(),
        1,
        "only the p1 event arrived: {raw:?}"
    );
    assert!(
        raw.starts_with(&format!(
            "id: {}\nevent: session_created\n",
            change.last_event_id
        )),
        "{raw:?}"
    );
}
