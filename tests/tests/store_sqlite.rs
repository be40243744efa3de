//! Proves what is SQLite's own in the SQLite store, against real database files: idempotent
//! migrations, all eight change kinds' triggers and payloads (also when the `sqlite3` CLI
//! writes), the CHECKs, head from `sqlite_sequence` also when another process deletes rows, and
//! that commits by another process wake `changes()` within milliseconds. The store contract
//! shared with every store is `store_conformance.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use changefeed::store::sqlite::{SqliteStore, SqliteStoreOptions};
use changefeed::store::Store;
use changefeed_core::{EventRow, FetchRequest, Filter, Seq};
use serde_json::Value;
use tempfile::TempDir;

/// A failure bound only: every wait below returns as soon as its condition holds.
const WAKE_BOUND: Duration = Duration::from_secs(5);

struct Db {
    _dir: TempDir,
    path: PathBuf,
    url: String,
}

fn temp_db() -> Db {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("changefeed.db");
    let url = format!("sqlite://{}", path.display());
    Db {
        _dir: dir,
        path,
        url,
    }
}

async fn open(db: &Db) -> SqliteStore {
    SqliteStore::open(&db.url).await.expect("open store")
}

fn sqlite3_output(path: &Path, sql: &str) -> Output {
    match Command::new("sqlite3").arg(path).arg(sql).output() {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run the sqlite3 CLI ({error}); these tests need it: scripts/install-deps.sh \
             installs it (apt-get install sqlite3)"
        ),
    }
}

/// Runs `sql` with the `sqlite3` CLI (another process, SQLite 3.40 on Debian 12); returns stdout.
fn sqlite3(path: &Path, sql: &str) -> String {
    let output = sqlite3_output(path, sql);
    assert!(
        output.status.success(),
        "sqlite3 failed on {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn all_rows(store: &SqliteStore) -> Vec<EventRow> {
    let (rows, _) = store
        .rows_after(Seq::ZERO, 100_000)
        .await
        .unwrap()
        .into_parts();
    rows
}

fn seqs(rows: &[EventRow]) -> Vec<u64> {
    rows.iter().map(|row| row.seq.0).collect()
}

fn is_rfc3339_millis(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

/// Asserts `rows` are exactly `expected` (seq, project, session, kind, payload text in contract
/// key order), that each payload parses to the expected JSON, and that timestamps are RFC 3339.
fn assert_rows(rows: &[EventRow], expected: &[(u64, &str, Option<&str>, &str, &str)]) {
    let got: Vec<_> = rows
        .iter()
        .map(|row| {
            (
                row.seq.0,
                row.project_id.as_str(),
                row.session_id.as_deref(),
                row.kind.as_str(),
                row.payload.as_str(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    for (row, (_, _, _, _, payload)) in rows.iter().zip(expected) {
        let parsed: Value = serde_json::from_str(&row.payload).expect("payload is JSON");
        assert_eq!(parsed, serde_json::from_str::<Value>(payload).unwrap());
        assert!(is_rfc3339_millis(&row.created_at), "{}", row.created_at);
    }
}

const SETUP: &str = "INSERT INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two');
    INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');";

#[tokio::test]
async fn migrations_are_idempotent_and_keep_the_epoch() {
    let db = temp_db();
    let store = open(&db).await;
    store.execute_write(SETUP).await.unwrap();
    let first = store.bounds().await.unwrap();
    assert_eq!(first.head, Seq(1));
    assert_eq!(first.floor, Seq(0));
    assert_eq!(first.epoch.to_string().len(), 16);
    store.close().await;
    drop(store);

    let store = open(&db).await;
    assert_eq!(store.bounds().await.unwrap(), first);
    assert_eq!(all_rows(&store).await.len(), 1);
    store.close().await;
    drop(store);

    assert_eq!(
        sqlite3(&db.path, "SELECT count(*) FROM _sqlx_migrations").trim(),
        "3"
    );
    assert_eq!(
        sqlite3(
            &db.path,
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name GLOB 'changefeed_*'"
        )
        .trim(),
        "9",
        "eight kinds, pr_check_recorded on insert and on update"
    );
    assert_eq!(
        sqlite3(&db.path, "SELECT key FROM changefeed_meta ORDER BY key"),
        "epoch\nfloor\npublished\n"
    );
    assert_eq!(sqlite3(&db.path, "PRAGMA journal_mode").trim(), "wal");
}

#[tokio::test]
async fn attaches_a_database_whose_change_log_another_program_created() {
    let db = temp_db();
    // The upstream daemon's shape: same columns, SQLite's own timestamp format.
    sqlite3(
        &db.path,
        "CREATE TABLE change_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT NOT NULL,
             session_id TEXT, event_type TEXT NOT NULL, payload TEXT NOT NULL,
             created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO change_log (project_id, event_type, payload) VALUES
             ('p', 'a', '{}'), ('p', 'b', '{}'), ('p', 'c', '{}');
         DELETE FROM change_log WHERE seq = 3;",
    );
    let refused = SqliteStore::open(&db.url).await.unwrap_err();
    assert!(
        refused.message.contains("was not created by changefeed"),
        "{refused}"
    );
    let store = SqliteStore::attach(&db.url, None).await.expect("attach");
    let bounds = store.bounds().await.unwrap();
    assert_eq!(
        bounds.head,
        Seq(3),
        "head from sqlite_sequence, not MAX(seq)"
    );
    let rows = all_rows(&store).await;
    assert_eq!(seqs(&rows), [1, 2]);
    assert_eq!(rows[0].created_at.len(), 19, "stored as the owner wrote it");
    store.close().await;
}

#[tokio::test]
async fn triggers_log_every_kind_with_the_documented_payload() {
    let db = temp_db();
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One');
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');
             INSERT INTO sessions (id, project_id, is_terminated, display_name)
                 VALUES ('s2', 'p1', 1, 'Two');
             UPDATE sessions SET activity = 'busy', preview_url = 'http://x' WHERE id = 's1';
             INSERT INTO pull_requests (url, project_id, session_id) VALUES ('u1', 'p1', 's1');
             UPDATE pull_requests SET ci_state = 'passing', review_decision = 'approved'
                 WHERE url = 'u1';
             UPDATE pull_requests SET session_id = 's2' WHERE url = 'u1';
             INSERT INTO pr_checks (pr_url, name, commit_sha, status)
                 VALUES ('u1', 'build', 'abc', 'queued');
             UPDATE pr_checks SET status = 'success' WHERE pr_url = 'u1';
             INSERT INTO pr_review_threads (pr_url, thread_id, path, line, is_bot)
                 VALUES ('u1', 't1', 'src/a.rs', 7, 1);
             UPDATE pr_review_threads SET resolved = 1 WHERE thread_id = 't1';",
        )
        .await
        .unwrap();
    assert_rows(
        &all_rows(&store).await,
        &[
            (
                1,
                "p1",
                Some("s1"),
                "session_created",
                r#"{"id":"s1","activity":"idle","isTerminated":false}"#,
            ),
            (
                2,
                "p1",
                Some("s2"),
                "session_created",
                r#"{"id":"s2","activity":"idle","isTerminated":true}"#,
            ),
            (
                3,
                "p1",
                Some("s1"),
                "session_updated",
                r#"{"id":"s1","activity":"busy","isTerminated":false,"displayName":null,"previewUrl":"http://x"}"#,
            ),
            (
                4,
                "p1",
                Some("s1"),
                "pr_created",
                r#"{"url":"u1","session":"s1","state":"open","ci":"pending","review":null,"mergeability":null}"#,
            ),
            (
                5,
                "p1",
                Some("s1"),
                "pr_updated",
                r#"{"url":"u1","session":"s1","state":"open","ci":"passing","review":"approved","mergeability":null}"#,
            ),
            (
                6,
                "p1",
                Some("s2"),
                "pr_session_changed",
                r#"{"url":"u1","fromSession":"s1","toSession":"s2"}"#,
            ),
            (
                7,
                "p1",
                Some("s2"),
                "pr_check_recorded",
                r#"{"pr":"u1","name":"build","commit":"abc","status":"queued"}"#,
            ),
            (
                8,
                "p1",
                Some("s2"),
                "pr_check_recorded",
                r#"{"pr":"u1","name":"build","commit":"abc","status":"success"}"#,
            ),
            (
                9,
                "p1",
                Some("s2"),
                "pr_review_thread_added",
                r#"{"pr":"u1","thread":"t1","path":"src/a.rs","line":7,"resolved":false,"isBot":true}"#,
            ),
            (
                10,
                "p1",
                Some("s2"),
                "pr_review_thread_resolved",
                r#"{"pr":"u1","thread":"t1","path":"src/a.rs","line":7,"resolved":true}"#,
            ),
        ],
    );
    store.close().await;
}

#[tokio::test]
async fn updates_compare_nullable_columns_and_skip_non_changes() {
    let db = temp_db();
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One');
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');
             INSERT INTO pull_requests (url, project_id, session_id) VALUES ('u1', 'p1', 's1');
             INSERT INTO pr_checks (pr_url, name, commit_sha, status)
                 VALUES ('u1', 'build', 'abc', 'queued');
             INSERT INTO pr_review_threads (pr_url, thread_id) VALUES ('u1', 't1');",
        )
        .await
        .unwrap();
    let head = store.bounds().await.unwrap().head;
    assert_eq!(head, Seq(4));

    // Nothing the triggers watch changes: no rows.
    store
        .execute_write(
            "UPDATE sessions SET updated_at = '2030-01-01T00:00:00.000Z', activity = 'idle';
             UPDATE pull_requests SET updated_at = '2030-01-01T00:00:00.000Z', state = 'open',
                 review_decision = NULL;
             UPDATE pr_checks SET status = 'queued';
             UPDATE pr_review_threads SET path = 'moved.rs', line = 3, resolved = 0;",
        )
        .await
        .unwrap();
    assert_eq!(store.bounds().await.unwrap().head, head);

    // NULL -> value and value -> NULL both count (IS NOT, not !=).
    store
        .execute_write(
            "UPDATE sessions SET display_name = 'x' WHERE id = 's1';
             UPDATE sessions SET display_name = 'x' WHERE id = 's1';
             UPDATE sessions SET display_name = NULL WHERE id = 's1';
             UPDATE pull_requests SET mergeability = 'clean' WHERE url = 'u1';
             UPDATE pull_requests SET session_id = NULL, state = 'merged' WHERE url = 'u1';",
        )
        .await
        .unwrap();
    let (rows, _) = store.rows_after(head, 100).await.unwrap().into_parts();
    // One UPDATE changing both the session and the state logs both kinds; SQLite runs the
    // triggers newest first, so pr_session_changed comes before pr_updated.
    assert_rows(
        &rows,
        &[
            (
                5,
                "p1",
                Some("s1"),
                "session_updated",
                r#"{"id":"s1","activity":"idle","isTerminated":false,"displayName":"x","previewUrl":null}"#,
            ),
            (
                6,
                "p1",
                Some("s1"),
                "session_updated",
                r#"{"id":"s1","activity":"idle","isTerminated":false,"displayName":null,"previewUrl":null}"#,
            ),
            (
                7,
                "p1",
                Some("s1"),
                "pr_updated",
                r#"{"url":"u1","session":"s1","state":"open","ci":"pending","review":null,"mergeability":"clean"}"#,
            ),
            (
                8,
                "p1",
                None,
                "pr_session_changed",
                r#"{"url":"u1","fromSession":"s1","toSession":null}"#,
            ),
            (
                9,
                "p1",
                None,
                "pr_updated",
                r#"{"url":"u1","session":null,"state":"merged","ci":"pending","review":null,"mergeability":"clean"}"#,
            ),
        ],
    );
    store.close().await;
}

#[tokio::test]
async fn change_log_checks_reject_bad_kinds_and_payloads() {
    let db = temp_db();
    let store = open(&db).await;
    let insert = |kind: &str, payload: &str| {
        format!(
            "INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', '{kind}', '{payload}')"
        )
    };
    for bad in [
        "",
        "Pr_updated",
        "1pr",
        "pr-x",
        "pr x",
        "pr*",
        "_pr",
        "prè",
        "pr_UPDATED",
    ] {
        let error = store.execute_write(&insert(bad, "{}")).await.unwrap_err();
        assert!(
            error.message.contains("CHECK constraint failed"),
            "{bad:?}: {error}"
        );
    }
    for bad in ["", "{", "nope", "{''a'':1}", "[1,]"] {
        let error = store.execute_write(&insert("k", bad)).await.unwrap_err();
        assert!(
            error.message.contains("CHECK constraint failed"),
            "{bad:?}: {error}"
        );
    }
    assert_eq!(
        store.bounds().await.unwrap().head,
        Seq(0),
        "nothing was written"
    );
    for good in ["a", "tracker_issue_updated", "x9_", "project_created"] {
        store.execute_write(&insert(good, "{}")).await.unwrap();
    }
    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|row| is_rfc3339_millis(&row.created_at)));
    // The same CHECKs hold for another process.
    let output = sqlite3_output(&db.path, &insert("Bad", "{}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("CHECK constraint failed"));
    store.close().await;
}

#[tokio::test]
async fn cli_writes_fire_the_triggers_and_wake_waiters_within_milliseconds() {
    let version = sqlite3(Path::new(":memory:"), "SELECT sqlite_version()");
    eprintln!("sqlite3 CLI version {}", version.trim());
    let db = temp_db();
    // An hour-long safety-net poll: only the file watch can wake the waiter in time.
    let options = SqliteStoreOptions {
        poll_interval: Duration::from_secs(3600),
        ..SqliteStoreOptions::default()
    };
    let store = SqliteStore::open_with(&db.url, options).await.unwrap();
    sqlite3(
        &db.path,
        "INSERT INTO projects (id, name) VALUES ('p1', 'One');
         INSERT INTO sessions (id, project_id) VALUES ('s0', 'p1');
         INSERT INTO pull_requests (url, project_id, session_id) VALUES ('u1', 'p1', 's0');",
    );
    assert_rows(
        &all_rows(&store).await,
        &[
            (
                1,
                "p1",
                Some("s0"),
                "session_created",
                r#"{"id":"s0","activity":"idle","isTerminated":false}"#,
            ),
            (
                2,
                "p1",
                Some("s0"),
                "pr_created",
                r#"{"url":"u1","session":"s0","state":"open","ci":"pending","review":null,"mergeability":null}"#,
            ),
        ],
    );

    let mut latencies_ms = Vec::new();
    for i in 1..=20 {
        let mut changes = store.changes();
        let head = store.bounds().await.unwrap().head;
        // The CLI prints the wall-clock time right after its commit (Unix ms).
        let sql = format!(
            "INSERT INTO pr_checks (pr_url, name, commit_sha, status)
                 VALUES ('u1', 'check{i}', 'abc', 'queued');
             SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER);"
        );
        let child = tokio::process::Command::new("sqlite3")
            .arg(&db.path)
            .arg(&sql)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        let deadline = Instant::now() + WAKE_BOUND;
        let rows = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(remaining, changes.changed())
                .await
                .unwrap_or_else(|_| {
                    panic!("changes() did not wake within {WAKE_BOUND:?} of a sqlite3 CLI commit")
                });
            let (rows, _) = store.rows_after(head, 10).await.unwrap().into_parts();
            if !rows.is_empty() {
                break rows;
            }
        };
        let woke_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let output = child.wait_with_output().await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let committed_ms: i64 = String::from_utf8(output.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        latencies_ms.push((woke_ms - committed_ms).max(0));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "pr_check_recorded");
        assert_eq!(rows[0].session_id.as_deref(), Some("s0"));
        assert_eq!(
            rows[0].payload,
            format!(r#"{{"pr":"u1","name":"check{i}","commit":"abc","status":"queued"}}"#)
        );
    }
    latencies_ms.sort_unstable();
    eprintln!(
        "cross-process wake-up latency over {} sqlite3 CLI commits (commit -> changes() woke and \
         the row was readable): median {} ms, max {} ms, all {:?}",
        latencies_ms.len(),
        latencies_ms[latencies_ms.len() / 2],
        latencies_ms[latencies_ms.len() - 1],
        latencies_ms
    );
    store.close().await;
}

#[tokio::test]
async fn own_write_transactions_wake_waiters_and_roll_back_when_dropped() {
    let db = temp_db();
    let store = open(&db).await;
    let mut changes = store.changes();
    let mut tx = store.begin_write().await.unwrap();
    sqlx::query("INSERT INTO projects (id, name) VALUES (?, ?)")
        .bind("p1")
        .bind("One")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO sessions (id, project_id) VALUES (?, ?)")
        .bind("s1")
        .bind("p1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(changes.has_changed(), "commit bumps the generation at once");
    tokio::time::timeout(WAKE_BOUND, changes.changed())
        .await
        .unwrap();
    assert_eq!(store.bounds().await.unwrap().head, Seq(1));

    let mut tx = store.begin_write().await.unwrap();
    sqlx::query("INSERT INTO sessions (id, project_id) VALUES ('s2', 'p1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    // The write connection is free again and the insert is gone.
    store
        .execute_write("INSERT INTO sessions (id, project_id) VALUES ('s3', 'p1')")
        .await
        .unwrap();
    let rows = all_rows(&store).await;
    assert_eq!(
        rows.iter()
            .map(|row| row.session_id.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["s1", "s3"]
    );
    // Foreign keys are on for our writes.
    assert!(store
        .execute_write("INSERT INTO sessions (id, project_id) VALUES ('s4', 'nope')")
        .await
        .is_err());
    store.close().await;
}

#[tokio::test]
async fn head_comes_from_sqlite_sequence_not_max_seq() {
    let db = temp_db();
    let store = open(&db).await;
    for _ in 0..5 {
        store
            .execute_write(
                "INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', 'k', '{}')",
            )
            .await
            .unwrap();
    }
    // Another process deletes the newest rows.
    sqlite3(&db.path, "DELETE FROM change_log WHERE seq >= 4");
    assert_eq!(
        sqlite3(&db.path, "SELECT MAX(seq) FROM change_log").trim(),
        "3"
    );
    let bounds = store.bounds().await.unwrap();
    assert_eq!(bounds.head, Seq(5));
    let window = store
        .window(
            &Filter::all(),
            FetchRequest {
                after: Seq(0),
                upto: Seq(5),
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(window.rows()), [1, 2, 3]);
    assert_eq!(window.bounds(), bounds);
    store
        .execute_write(
            "INSERT INTO change_log (project_id, event_type, payload) VALUES ('p', 'k', '{}')",
        )
        .await
        .unwrap();
    assert_eq!(seqs(&all_rows(&store).await), [1, 2, 3, 6]);
    store.close().await;
}
