//! Proves `serve --attach` serves a database another program owns exactly as it is: on the
//! daemon's schema shape (tests/fixtures/daemon-schema.sql), written by the `sqlite3` CLI in
//! another process with history holes and mixed timestamp formats, the stream equals the log
//! byte for byte while the owner's writes keep succeeding, and afterwards the schema and journal
//! mode are unchanged but for `changefeed_meta`; the read-only variant (`--meta-file`) leaves
//! the database file byte-identical; rows the owner prunes give a resume below them the
//! `pruned` reset in both modes.

use std::path::Path;

use changefeed_tests::{data_json, seq_of, sqlite3, within, SseStream, TestServer};

const DAEMON_SCHEMA: &str = include_str!("../fixtures/daemon-schema.sql");

/// The daemon's history before changefeed attaches: every kind it writes, its two timestamp
/// formats and other offsets, a NULL and an empty session, and a hole (a never-spawned session
/// whose rows were deleted).
const HISTORY: &str = "
INSERT INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two');
INSERT INTO change_log (project_id, event_type, payload, created_at)
    VALUES ('p1', 'project_created', '{\"id\":\"p1\"}', '2026-11-26 10:00:03.123456789+00:00');
INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');
INSERT INTO sessions (id, project_id) VALUES ('s2', 'p1');
UPDATE sessions SET activity_state = 'working' WHERE id = 's1';
INSERT INTO pr (url, session_id) VALUES ('https://git/pr/1', 's1');
INSERT INTO pr_checks VALUES ('https://git/pr/1', 'ci', 'abc', 'queued');
INSERT INTO pr_review_threads (pr_url, thread_id, path, line) VALUES ('https://git/pr/1', 't1', 'a.rs', 3);
UPDATE pr SET ci_state = 'passing' WHERE url = 'https://git/pr/1';
DELETE FROM change_log WHERE session_id = 's2';
DELETE FROM sessions WHERE id = 's2';
INSERT INTO change_log (project_id, session_id, event_type, payload, created_at) VALUES
    ('p1', 's1', 'review_run_created', '{\"run\":1}', '2026-11-26 12:00:03.5+02:00'),
    ('p1', 's1', 'review_run_updated', '{\"run\":1,\"state\":\"done\"}', '2026-11-26T10:00:04Z'),
    ('p1', '', 'notification_created', '{\"id\":\"n1\"}', '2026-11-26 05:30:00-04:30'),
    ('p1', NULL, 'notification_resolved', '{\"id\":\"n1\"}', '2026-11-26 10:00:05'),
    ('p1', 's1', 'pr_comment_recorded', '{\"pr\":\"https://git/pr/1\",\"body\":\"ok \\u00e9 \\\"q\\\"\"}', '2026-11-26 10:00:06.000000001+00:00'),
    ('p1', 's1', 'pr_review_recorded', '{\"pr\":\"https://git/pr/1\"}', '2026-11-26 10:00:07.250'),
    ('p2', NULL, 'project_updated', '{\"id\":\"p2\", \"name\" : \"Two\"}', '2026-11-26 10:00:08.999+00:00');
";

/// One of the daemon's later transactions (the `n`th): a session is created and updated, a PR
/// and its check recorded; every third one creates a session that is never spawned and deletes
/// it with its rows in the same transaction (a hole); Go-formatted direct inserts in between.
fn daemon_write(n: u32) -> String {
    let session = format!("live{n}");
    let mut sql = format!(
        "BEGIN IMMEDIATE;
         INSERT INTO sessions (id, project_id) VALUES ('{session}', 'p2');
         UPDATE sessions SET activity_state = 'working', display_name = 'Run {n}' WHERE id = '{session}';
         INSERT INTO pr (url, session_id) VALUES ('https://git/pr/live{n}', '{session}');
         INSERT INTO pr_checks VALUES ('https://git/pr/live{n}', 'ci', 'c{n}', 'queued');
         INSERT INTO change_log (project_id, session_id, event_type, payload, created_at)
             VALUES ('p2', '{session}', 'notification_created', '{{\"n\":{n}}}',
                     '2026-11-27 09:00:{:02}.987123456+01:00');",
        n % 60
    );
    if n % 3 == 0 {
        sql.push_str(&format!(
            "INSERT INTO sessions (id, project_id) VALUES ('ghost{n}', 'p2');
             DELETE FROM change_log WHERE session_id = 'ghost{n}';
             DELETE FROM sessions WHERE id = 'ghost{n}';"
        ));
    }
    sql.push_str("COMMIT;");
    sql
}

/// The database's schema (every `sqlite_master` row) and journal mode, read by the CLI.
async fn schema_dump(db: &Path) -> (Vec<String>, String) {
    let rows = sqlite3(
        db,
        "SELECT type || '|' || name || '|' || tbl_name || '|' || replace(COALESCE(sql, ''), char(10), ' ') \
         FROM sqlite_master ORDER BY type, name",
    )
    .await;
    let mode = sqlite3(db, "PRAGMA journal_mode").await;
    (
        rows.lines().map(str::to_owned).collect(),
        mode.trim().to_owned(),
    )
}

/// The event JSON the contract promises for every row of the log, built from the CLI's view of
/// the table: keys in order, `sessionId` left out when NULL or empty, the payload as stored, and
/// `createdAt` converted by SQLite's own date functions (truncating fractions the test never
/// gives a rounding digit).
/// Only rows with a seq above 0: no read goes below `after=0`.
async fn expected_events(db: &Path) -> Vec<(u64, String, String)> {
    let output = tokio::process::Command::new("sqlite3")
        .args(["-json", "-cmd", ".timeout 10000"])
        .arg(db)
        .arg(
            "SELECT seq, project_id, session_id, event_type, payload, \
             strftime('%Y-%m-%dT%H:%M:%fZ', created_at) AS created FROM change_log \
             WHERE seq > 0 ORDER BY seq",
        )
        .output()
        .await
        .expect("run the sqlite3 CLI");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let rows: Vec<serde_json::Value> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&text).expect("sqlite3 -json output")
    };
    rows.iter()
        .map(|row| {
            let seq = row["seq"].as_u64().expect("seq");
            let string = |value: &serde_json::Value| serde_json::to_string(value).unwrap();
            let mut json = format!(
                "{{\"seq\":{seq},\"projectId\":{}",
                string(&row["project_id"])
            );
            if let Some(session) = row["session_id"].as_str().filter(|s| !s.is_empty()) {
                json.push_str(&format!(",\"sessionId\":{}", string(&session.into())));
            }
            let kind = row["event_type"].as_str().expect("kind").to_owned();
            json.push_str(&format!(
                ",\"type\":{},\"payload\":{},\"createdAt\":{}}}",
                string(&row["event_type"]),
                row["payload"].as_str().expect("payload"),
                string(&row["created"]),
            ));
            (seq, kind, json)
        })
        .collect()
}

/// What the stream delivered: (seq, SSE event type, data), change events only, through `last`.
async fn stream_through(stream: &mut SseStream, last: u64) -> Vec<(u64, String, String)> {
    within("the stream to reach the log's last row", async {
        stream
            .changes_through(last)
            .await
            .into_iter()
            .map(|event| (seq_of(&event), event.event_type, event.data))
            .collect()
    })
    .await
}

async fn create_daemon_database(dir: &Path) -> std::path::PathBuf {
    use tokio::io::AsyncWriteExt as _;
    let db = dir.join("daemon.db");
    // The script on stdin: an argument starting with `--` would be read as an option.
    let mut child = tokio::process::Command::new("sqlite3")
        .args(["-bail"])
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run the sqlite3 CLI");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(DAEMON_SCHEMA.as_bytes()).await.unwrap();
    drop(stdin);
    assert!(
        child.wait().await.unwrap().success(),
        "the daemon schema applies"
    );
    sqlite3(&db, HISTORY).await;
    db
}

#[tokio::test]
async fn an_attached_daemon_database_streams_its_log_exactly_and_keeps_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_daemon_database(dir.path()).await;
    let (schema_before, mode_before) = schema_dump(&db).await;
    assert_eq!(mode_before, "wal");

    let server = TestServer::attach(&db, None).await;
    let mut stream = server.stream("/api/v1/events?after=0").await;
    assert_eq!(stream.status, 200);

    // The daemon keeps writing, from another process, while changefeed is attached: every
    // transaction must succeed (the helper fails the test otherwise).
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        for n in 1..=12 {
            sqlite3(&writer_db, &daemon_write(n)).await;
        }
    });
    within("the daemon's writes", writer).await.unwrap();

    let expected = expected_events(&db).await;
    let last = expected.last().unwrap().0;
    let delivered = stream_through(&mut stream, last).await;
    assert_eq!(
        delivered, expected,
        "the stream is the log, row for row and byte for byte"
    );
    let seqs: Vec<u64> = expected.iter().map(|row| row.0).collect();
    assert!(
        seqs.windows(2).any(|pair| pair[1] > pair[0] + 1),
        "the log has holes: {seqs:?}"
    );
    for kind in [
        "review_run_created",
        "review_run_updated",
        "notification_created",
        "notification_resolved",
        "pr_comment_recorded",
        "pr_review_recorded",
        "project_created",
        "project_updated",
    ] {
        assert!(
            delivered.iter().any(|row| row.1 == kind),
            "{kind} passes through"
        );
    }

    server.shutdown().await.unwrap();
    // The owner's writes still work after changefeed is gone, with exactly one row per change.
    let before = expected.len();
    sqlite3(&db, &daemon_write(13)).await;
    assert_eq!(expected_events(&db).await.len(), before + 5);

    let (schema_after, mode_after) = schema_dump(&db).await;
    assert_eq!(mode_after, mode_before, "journal mode unchanged");
    let (ours, theirs): (Vec<String>, Vec<String>) = schema_after
        .into_iter()
        .partition(|row| row.split('|').nth(2) == Some("changefeed_meta"));
    assert_eq!(theirs, schema_before, "the owner's schema is untouched");
    assert_eq!(
        ours.iter().filter(|row| row.starts_with("table|")).count(),
        1,
        "changefeed added one table: {ours:?}"
    );
    assert_eq!(
        sqlite3(&db, "SELECT key FROM changefeed_meta ORDER BY key").await,
        "base\nepoch\nfloor\npublished\n"
    );
}

#[tokio::test]
async fn a_read_only_attach_leaves_the_database_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = create_daemon_database(dir.path()).await;
    let meta_dir = tempfile::tempdir().unwrap();
    let meta = meta_dir.path().join("changefeed.meta");
    let bytes_before = std::fs::read(&db).unwrap();
    let expected = expected_events(&db).await;
    let last = expected.last().unwrap().0;

    let server = TestServer::attach(&db, Some(&meta)).await;
    let epoch = server.epoch();
    let mut stream = server.stream("/api/v1/events?after=0").await;
    assert_eq!(stream_through(&mut stream, last).await, expected);
    drop(stream);
    server.settle().await;
    server.shutdown().await.unwrap();
    server_store_closed(&db).await;

    assert!(
        std::fs::read(&db).unwrap() == bytes_before,
        "the database file is byte-identical"
    );
    let wal = std::fs::metadata(db.with_extension("db-wal")).map_or(0, |meta| meta.len());
    assert_eq!(wal, 0, "nothing was written to the WAL");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(saved["epoch"], epoch.to_string());
    assert_eq!(
        saved["published"], last,
        "the published mark is in the sidecar file"
    );

    // A second attach continues the same log: same epoch, so cursors stay valid.
    let again = TestServer::attach(&db, Some(&meta)).await;
    assert_eq!(again.epoch(), epoch);
    let mut resumed = again
        .resume("/api/v1/events", &format!("{epoch}:{}", expected[2].0))
        .await;
    assert_eq!(
        stream_through(&mut resumed, last).await,
        expected[3..].to_vec()
    );
    again.shutdown().await.unwrap();
    assert!(std::fs::read(&db).unwrap() == bytes_before);
}

/// Both attach modes: rows the owner prunes from the old end of its log raise the floor, so a
/// resume below them gets the `pruned` reset instead of a silent gap; a resume at the edge
/// continues exactly; a row already gone before changefeed attached never counts, so a read
/// from the start is no reset; an emptied log resets every cursor below its head.
#[tokio::test]
async fn pruning_by_the_owner_resets_a_resume_below_it_but_not_a_read_from_the_start() {
    for read_only in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = create_daemon_database(dir.path()).await;
        // Gone before changefeed ever saw the log: its oldest row. And a row the owner wrote
        // with a negative seq, which no read serves (every read is `seq > after`) and which
        // must not stop the bounds from being read.
        sqlite3(
            &db,
            "DELETE FROM change_log WHERE seq = 1; \
             INSERT INTO change_log (seq, project_id, event_type, payload) \
             VALUES (-7, 'p1', 'project_updated', '{}');",
        )
        .await;
        let meta = dir.path().join("changefeed.meta");
        let server = TestServer::attach(&db, read_only.then_some(meta.as_path())).await;
        let expected = expected_events(&db).await;
        let seqs: Vec<u64> = expected.iter().map(|row| row.0).collect();
        assert!(seqs[0] > 1 && seqs.len() > 6, "{seqs:?}");
        let last = *seqs.last().unwrap();

        let mut from_start = server.stream("/api/v1/events?after=0").await;
        let events = within(
            "the history from the start",
            from_start.events_until(|event| {
                !event.event_type.starts_with("changefeed.") && seq_of(event) >= last
            }),
        )
        .await;
        assert!(
            events.iter().all(|e| e.event_type != "changefeed.reset"),
            "mode {read_only}: a row gone before the attach is no reset: {events:?}"
        );
        let delivered: Vec<u64> = events
            .iter()
            .filter(|e| !e.event_type.starts_with("changefeed."))
            .map(seq_of)
            .collect();
        assert_eq!(delivered, seqs, "mode {read_only}");
        drop(from_start);

        // The owner prunes its three oldest rows.
        let pruned_through = seqs[2];
        sqlite3(
            &db,
            &format!("DELETE FROM change_log WHERE seq <= {pruned_through}"),
        )
        .await;
        let below = server.cursor(seqs[0]);
        let mut resumed = server.resume("/api/v1/events", &below).await;
        let reset = within(
            "the reset",
            resumed.events_until(|e| {
                e.event_type == "changefeed.reset" || !e.event_type.starts_with("changefeed.")
            }),
        )
        .await;
        let reset = reset.last().unwrap();
        assert_eq!(reset.event_type, "changefeed.reset", "mode {read_only}");
        let data = data_json(reset);
        assert_eq!(data["reason"], "pruned", "mode {read_only}: {data}");
        assert_eq!(data["requested"], below.as_str());
        drop(resumed);

        // At the edge of what is left: nothing was lost after it.
        let mut at_edge = server
            .resume("/api/v1/events", &server.cursor(pruned_through))
            .await;
        let rest = stream_through(&mut at_edge, last).await;
        assert_eq!(rest, expected[3..].to_vec(), "mode {read_only}");
        drop(at_edge);

        // The owner empties its log: every cursor below the head is behind pruned rows.
        sqlite3(&db, "DELETE FROM change_log").await;
        let mut emptied = server
            .resume("/api/v1/events", &server.cursor(last - 1))
            .await;
        let reset = within(
            "the reset of an emptied log",
            emptied.events_until(|e| {
                e.event_type == "changefeed.reset" || e.event_type == "changefeed.ready"
            }),
        )
        .await;
        assert_eq!(
            reset.last().unwrap().event_type,
            "changefeed.reset",
            "mode {read_only}: {reset:?}"
        );
        assert_eq!(data_json(reset.last().unwrap())["reason"], "pruned");
        drop(emptied);
        server.shutdown().await.unwrap();
    }
}

/// The CLI can still open the database for writing (no lock left behind by the server).
async fn server_store_closed(db: &Path) {
    sqlite3(db, "BEGIN IMMEDIATE; ROLLBACK;").await;
}
