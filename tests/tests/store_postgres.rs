//! Proves the Postgres store against a real cluster: idempotent migrations, triggers writing the same rows and payload bytes as SQLite's (also when psql writes), the CHECKs, head from the sequencer's counter, filter push-down without LIKE wildcards, the start-up epoch rules (lost rows, a restore from a dump), per-replica published marks and pruning, and that a commit by another process wakes `changes()` through the sequencer's NOTIFY; an unreachable or silent server fails within the connect bound, without printing the password.

use std::process::Command;
use std::time::Duration;

use changefeed::store::postgres::{PostgresStore, PostgresStoreOptions};
use changefeed::store::sqlite::SqliteStore;
use changefeed::store::{Retention, Store};
use changefeed_core::{Epoch, EventEncoder, EventRow, FetchRequest, Filter, Seq, TypePattern};
use changefeed_tests::pg::TestDb;

/// A failure bound only: every wait returns as soon as its condition holds.
const BOUND: Duration = Duration::from_secs(20);

async fn open(db: &TestDb) -> PostgresStore {
    PostgresStore::open(&db.url).await.expect("open the store")
}

async fn open_without_sequencer(db: &TestDb) -> PostgresStore {
    PostgresStore::open_with(
        &db.url,
        PostgresStoreOptions {
            sequencer: None,
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .expect("open the store")
}

/// Waits (on the store's change signal, bounded by [`BOUND`]) until head reaches `head`.
async fn wait_head(store: &PostgresStore, head: u64) {
    let mut changes = store.changes();
    let wait = async {
        loop {
            if store.bounds().await.unwrap().head.0 >= head {
                return;
            }
            changes.changed().await;
        }
    };
    tokio::time::timeout(BOUND, wait)
        .await
        .unwrap_or_else(|_| panic!("head did not reach {head} within {BOUND:?}"));
}

async fn all_rows(store: &PostgresStore) -> Vec<EventRow> {
    store
        .rows_after(Seq::ZERO, 100_000)
        .await
        .unwrap()
        .into_parts()
        .0
}

async fn pending(db: &TestDb) -> i64 {
    let mut connection = db.connect().await;
    sqlx::query_scalar("SELECT count(*) FROM change_log WHERE seq IS NULL")
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

fn filter(projects: Option<&[&str]>, types: Option<&[&str]>) -> Filter {
    Filter {
        projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
        types: types.map(|t| t.iter().map(|s| TypePattern::parse(s).unwrap()).collect()),
        sessions: None,
    }
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

/// Domain writes exercising every kind, the no-change updates, NULL transitions, and strings
/// that need JSON escapes (quotes, backslash, control characters, non-ASCII). Plain SQL both
/// SQLite and Postgres accept; one statement per step so the row order is the trigger order.
fn domain_script() -> Vec<String> {
    let tricky = "Qu\"ote \\ back\tslash\nnew\u{1}line \u{7f} é € 😀 \u{2028}";
    let tricky = tricky.replace('\'', "''");
    vec![
        "INSERT INTO projects (id, name) VALUES ('p1', 'One'), ('p2', 'Two')".into(),
        "INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1')".into(),
        format!(
            "INSERT INTO sessions (id, project_id, is_terminated, display_name) \
             VALUES ('s2', 'p2', 1, '{tricky}')"
        ),
        "UPDATE sessions SET activity = 'busy', preview_url = 'http://x' WHERE id = 's1'".into(),
        "UPDATE sessions SET updated_at = '2030-01-01T00:00:00.000Z' WHERE id = 's1'".into(),
        "UPDATE sessions SET display_name = NULL WHERE id = 's2'".into(),
        "UPDATE sessions SET is_terminated = 0 WHERE id = 's2'".into(),
        "INSERT INTO pull_requests (url, project_id, session_id) VALUES ('u1', 'p1', 's1')".into(),
        "UPDATE pull_requests SET ci_state = 'passing', review_decision = 'approved' \
         WHERE url = 'u1'"
            .into(),
        "UPDATE pull_requests SET state = 'merged', session_id = NULL WHERE url = 'u1'".into(),
        "UPDATE pull_requests SET session_id = 's1' WHERE url = 'u1'".into(),
        "UPDATE pull_requests SET updated_at = '2030-01-01T00:00:00.000Z' WHERE url = 'u1'".into(),
        "INSERT INTO pr_checks (pr_url, name, commit_sha, status) \
         VALUES ('u1', 'build', 'abc', 'queued')"
            .into(),
        "UPDATE pr_checks SET status = 'success' WHERE pr_url = 'u1'".into(),
        "UPDATE pr_checks SET status = 'success' WHERE pr_url = 'u1'".into(),
        "INSERT INTO pr_review_threads (pr_url, thread_id, is_bot) VALUES ('u1', 't0', 1)".into(),
        format!(
            "INSERT INTO pr_review_threads (pr_url, thread_id, path, line) \
             VALUES ('u1', 't1', '{tricky}', 7)"
        ),
        "UPDATE pr_review_threads SET resolved = 1 WHERE thread_id = 't1'".into(),
        "UPDATE pr_review_threads SET resolved = 1 WHERE thread_id = 't1'".into(),
    ]
}

#[tokio::test]
async fn triggers_write_the_same_rows_and_payload_bytes_as_sqlite() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&format!("sqlite://{}", dir.path().join("x.db").display()))
        .await
        .unwrap();
    for statement in domain_script() {
        store.execute_write(&statement).await.unwrap();
        sqlite.execute_write(&statement).await.unwrap();
    }
    let expected = sqlite
        .rows_after(Seq::ZERO, 1000)
        .await
        .unwrap()
        .into_parts()
        .0;
    assert_eq!(expected.len(), 15, "the script logs 15 changes on SQLite");
    wait_head(&store, expected.len() as u64).await;
    let got = all_rows(&store).await;
    let shape = |rows: &[EventRow]| -> Vec<(u64, String, Option<String>, String, String)> {
        rows.iter()
            .map(|row| {
                (
                    row.seq.0,
                    row.project_id.clone(),
                    row.session_id.clone(),
                    row.kind.clone(),
                    row.payload.clone(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&got), shape(&expected));
    // The wire form is then identical too, apart from createdAt (both RFC 3339 with millis).
    for (pg, lite) in got.iter().zip(&expected) {
        assert!(is_rfc3339_millis(&pg.created_at), "{}", pg.created_at);
        let aligned = EventRow {
            created_at: lite.created_at.clone(),
            ..pg.clone()
        };
        let encoder = EventEncoder::new(Epoch(7));
        assert_eq!(encoder.encode(&aligned).frame, encoder.encode(lite).frame);
    }
    sqlite.close().await;
    store.close().await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_keep_the_epoch() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let first = open(&db).await;
    let epoch = first.bounds().await.unwrap().epoch;
    first.close().await;
    let second = open(&db).await;
    assert_eq!(second.bounds().await.unwrap().epoch, epoch);
    let mut connection = db.connect().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(applied, 3);
    second.close().await;
}

#[tokio::test]
async fn opens_a_database_whose_domain_tables_another_program_created() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // The application's own schema: an extra column, rows already there, other column types
    // (varchar ids, a boolean flag) than the ones changefeed would create.
    db.execute(
        "CREATE TABLE projects (id text PRIMARY KEY, name text NOT NULL, \
             created_at text NOT NULL DEFAULT '2020-01-01', owner text); \
         INSERT INTO projects (id, name, owner) VALUES ('p1', 'One', 'ann'); \
         CREATE TABLE sessions (id varchar(40) PRIMARY KEY, project_id text NOT NULL, \
             activity varchar(20) NOT NULL DEFAULT 'idle', is_terminated boolean NOT NULL DEFAULT false, \
             display_name text, preview_url text, created_at text NOT NULL DEFAULT '', \
             updated_at text NOT NULL DEFAULT '')",
    )
    .await;
    let store = open(&db).await;
    assert!(store
        .missing_projects(&["p1".into()])
        .await
        .unwrap()
        .is_empty());
    store
        .execute_write(
            "INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1'); \
             UPDATE sessions SET is_terminated = true WHERE id = 's1'",
        )
        .await
        .unwrap();
    wait_head(&store, 2).await;
    let rows = all_rows(&store).await;
    assert_eq!(
        rows[0].payload,
        r#"{"id":"s1","activity":"idle","isTerminated":false}"#
    );
    assert_eq!(
        rows[1].payload,
        r#"{"id":"s1","activity":"idle","isTerminated":true,"displayName":null,"previewUrl":null}"#
    );
    store.close().await;
}

#[tokio::test]
async fn psql_writes_fire_the_triggers_and_wake_waiters_through_the_notify() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PostgresStore::open_with(
        &db.url,
        PostgresStoreOptions {
            // A poll this slow cannot be what wakes the waiter within the bound below.
            poll_interval: Duration::from_secs(3600),
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .unwrap();
    store
        .execute_write("INSERT INTO projects (id, name) VALUES ('p1', 'One')")
        .await
        .unwrap();
    let mut changes = store.changes();
    let output = Command::new("psql")
        .arg(&db.url)
        .args(["-v", "ON_ERROR_STOP=1", "-qc"])
        .arg("INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1')")
        .output()
        .expect("psql runs (Debian's postgresql-client)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tokio::time::timeout(BOUND, async {
        while store.bounds().await.unwrap().head.0 < 1 {
            changes.changed().await;
        }
    })
    .await
    .expect("the sequencer's commit woke the waiter");
    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].payload,
        r#"{"id":"s1","activity":"idle","isTerminated":false}"#
    );
    store.close().await;
}

#[tokio::test]
async fn a_notify_from_another_replica_wakes_this_one() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let sequencing = open(&db).await;
    let listening = PostgresStore::open_with(
        &db.url,
        PostgresStoreOptions {
            poll_interval: Duration::from_secs(3600),
            sequencer: None,
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .unwrap();
    // The LISTEN connection is up once the watch has bumped for its (re)connect.
    let mut changes = listening.changes();
    tokio::time::timeout(BOUND, changes.changed())
        .await
        .expect("the change watch connects");
    let mut changes = listening.changes();
    sequencing
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1')",
        )
        .await
        .unwrap();
    let stats = listening.stats();
    // The head alone can reach 1 before the NOTIFY is read (the sequencer commits first), so
    // wait for both; the watch counts a NOTIFY before it bumps, and the poll never fires here.
    tokio::time::timeout(BOUND, async {
        loop {
            let received = stats
                .notifies_received
                .load(std::sync::atomic::Ordering::Relaxed);
            if received >= 1 && listening.bounds().await.unwrap().head.0 >= 1 {
                break;
            }
            changes.changed().await;
        }
    })
    .await
    .expect("the other replica's NOTIFY woke this one");
    assert_eq!(
        stats
            .rows_assigned
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    listening.close().await;
    sequencing.close().await;
}

#[tokio::test]
async fn change_log_checks_reject_bad_kinds_and_payloads() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open_without_sequencer(&db).await;
    for (kind, payload) in [
        ("Bad", "{}"),
        ("9lives", "{}"),
        ("has-dash", "{}"),
        ("", "{}"),
        ("ok_kind", "{not json"),
        ("ok_kind", ""),
    ] {
        let sql = format!(
            "INSERT INTO change_log (project_id, event_type, payload) \
             VALUES ('p', '{kind}', '{payload}')"
        );
        assert!(
            store.execute_write(&sql).await.is_err(),
            "accepted {kind:?} {payload:?}"
        );
    }
    store
        .execute_write(
            "INSERT INTO change_log (project_id, event_type, payload) \
             VALUES ('p', 'tracker_issue_updated', '{\"a\": [1, 2]}')",
        )
        .await
        .unwrap();
    assert_eq!(pending(&db).await, 1);
    // A check on a pull request that does not exist fails the write (no row logged).
    assert!(store
        .execute_write(
            "INSERT INTO pr_checks (pr_url, name, commit_sha, status) VALUES ('nope', 'b', 'c', 'd')"
        )
        .await
        .is_err());
    assert_eq!(pending(&db).await, 1);
    store.close().await;
}

#[tokio::test]
async fn head_is_the_sequencers_counter_not_max_seq() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1'), ('s2', 'p1'), ('s3', 'p1')",
        )
        .await
        .unwrap();
    wait_head(&store, 3).await;
    store
        .execute_write("DELETE FROM change_log WHERE seq >= 2")
        .await
        .unwrap();
    let bounds = store.bounds().await.unwrap();
    assert_eq!(bounds.head, Seq(3));
    assert_eq!(all_rows(&store).await.len(), 1);
    // Pending rows are not part of the log yet: head and reads ignore them.
    let idle = open_without_sequencer(&db).await;
    store.close().await;
    idle.execute_write("INSERT INTO sessions (id, project_id) VALUES ('s4', 'p1')")
        .await
        .unwrap();
    assert_eq!(idle.bounds().await.unwrap().head, Seq(3));
    assert_eq!(
        idle.rows_after(Seq::ZERO, 10)
            .await
            .unwrap()
            .into_parts()
            .0
            .len(),
        1
    );
    idle.close().await;
}

#[tokio::test]
async fn window_pushes_projects_and_prefixes_down_without_like_wildcards() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('a', 'A'), ('b', 'B'), ('c', 'C'); \
             INSERT INTO change_log (project_id, event_type, payload) VALUES \
                 ('a', 'pr_created', '{}'), ('b', 'prx_created', '{}'), \
                 ('a', 'project_created', '{}'), ('c', 'pr_updated', '{}'), \
                 ('b', 'session_created', '{}'), ('a', 'pr', '{}')",
        )
        .await
        .unwrap();
    wait_head(&store, 6).await;
    let seqs = |rows: &[EventRow]| rows.iter().map(|row| row.seq.0).collect::<Vec<_>>();
    let window = store
        .window(
            &filter(None, Some(&["pr_*"])),
            FetchRequest {
                after: Seq(0),
                upto: Seq(6),
            },
        )
        .await
        .unwrap();
    // `pr_*` is the prefix "pr_": LIKE 'pr_%' would also match prx_created and project_created.
    assert_eq!(seqs(window.rows()), [1, 4]);
    assert_eq!(window.bounds().head, Seq(6));
    let window = store
        .window(
            &filter(Some(&["a", "b"]), Some(&["pr", "session_*"])),
            FetchRequest {
                after: Seq(0),
                upto: Seq(6),
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(window.rows()), [5, 6]);
    let window = store
        .window(
            &filter(Some(&["a"]), None),
            FetchRequest {
                after: Seq(1),
                upto: Seq(3),
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(window.rows()), [3]);
    // An empty window still carries the bounds of its snapshot.
    let window = store
        .window(
            &filter(Some(&["c"]), Some(&["session_*"])),
            FetchRequest {
                after: Seq(0),
                upto: Seq(6),
            },
        )
        .await
        .unwrap();
    assert!(window.rows().is_empty());
    assert_eq!(window.bounds().head, Seq(6));
    let window = store
        .window(
            &Filter::all(),
            FetchRequest {
                after: Seq(4),
                upto: Seq(4),
            },
        )
        .await
        .unwrap();
    assert!(window.rows().is_empty());
    assert_eq!(
        store
            .missing_projects(&["a".into(), "zz".into(), "zz".into(), "c".into()])
            .await
            .unwrap(),
        ["zz"]
    );
    store.close().await;
}

#[tokio::test]
async fn epoch_rotates_at_open_when_head_is_below_the_published_mark() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1'), ('s2', 'p1')",
        )
        .await
        .unwrap();
    wait_head(&store, 2).await;
    store.mark_published(Seq(2)).await.unwrap();
    let before = store.bounds().await.unwrap();
    store.close().await;
    // Reopening with nothing lost keeps the epoch.
    let store = open(&db).await;
    assert_eq!(store.bounds().await.unwrap().epoch, before.epoch);
    store.close().await;
    // Committed rows lost (head moved back below what clients were sent): a new epoch.
    db.execute("UPDATE changefeed_sequencer SET head = 1; DELETE FROM change_log WHERE seq = 2")
        .await;
    let store = open(&db).await;
    let after = store.bounds().await.unwrap();
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.head, Seq(1));
    assert_eq!(store.published().await.unwrap(), Seq(1));
    store.close().await;
}

#[tokio::test]
async fn a_restore_from_a_dump_into_another_database_rotates_the_epoch() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1')",
        )
        .await
        .unwrap();
    wait_head(&store, 1).await;
    store.mark_published(Seq(1)).await.unwrap();
    let epoch = store.bounds().await.unwrap().epoch;
    store.close().await;
    // One more committed row that no sequencer has seen: restored as a pending row.
    db.execute("INSERT INTO sessions (id, project_id) VALUES ('s2', 'p1')")
        .await;
    let copy = db.sibling("copy").await;
    let dump = Command::new("pg_dump")
        .args(["--no-owner", "--format=plain", &db.url])
        .output()
        .expect("pg_dump runs (Debian's postgresql-client)");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut restore = Command::new("psql")
        .args(["-v", "ON_ERROR_STOP=1", "-q", &copy.url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql runs");
    std::io::Write::write_all(restore.stdin.as_mut().unwrap(), &dump.stdout).unwrap();
    drop(restore.stdin.take());
    assert!(restore.wait().unwrap().success());

    let restored = open(&copy).await;
    let bounds = restored.bounds().await.unwrap();
    assert_ne!(
        bounds.epoch, epoch,
        "a restored log must not reuse the epoch"
    );
    // The restored pending row is committed: it gets the next seq.
    wait_head(&restored, 2).await;
    let rows = all_rows(&restored).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].session_id.as_deref(), Some("s2"));
    restored.close().await;
    // The original keeps its epoch.
    let original = open(&db).await;
    assert_eq!(original.bounds().await.unwrap().epoch, epoch);
    original.close().await;
}

#[tokio::test]
async fn pending_rows_from_another_clusters_transactions_rotate_the_epoch() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open_without_sequencer(&db).await;
    let epoch = store.bounds().await.unwrap().epoch;
    store.close().await;
    // As a restore from another cluster leaves them: committed, with xids this one never issued.
    db.execute(
        "INSERT INTO change_log (project_id, event_type, payload, xid) \
         VALUES ('p', 'k', '{}', '99999999999'::xid8)",
    )
    .await;
    let store = open(&db).await;
    assert_ne!(store.bounds().await.unwrap().epoch, epoch);
    wait_head(&store, 1).await;
    store.close().await;
}

#[tokio::test]
async fn published_marks_are_per_replica_and_retention_stops_at_the_lowest() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a = open(&db).await;
    let b = open_without_sequencer(&db).await;
    let mut sql = String::from("INSERT INTO projects (id, name) VALUES ('p1', 'One');");
    for n in 1..=10 {
        sql.push_str(&format!(
            "INSERT INTO sessions (id, project_id) VALUES ('s{n}', 'p1');"
        ));
    }
    a.execute_write(&sql).await.unwrap();
    wait_head(&a, 10).await;
    let keep_two = Retention {
        days: None,
        rows: Some(2),
    };
    // Nothing published yet: nothing may go.
    assert_eq!(a.prune(keep_two, 100).await.unwrap(), 0);
    a.mark_published(Seq(9)).await.unwrap();
    b.mark_published(Seq(4)).await.unwrap();
    // B's live feed is at 4: rows 5.. stay although only 2 should be kept.
    assert_eq!(a.prune(keep_two, 100).await.unwrap(), 4);
    assert_eq!(a.bounds().await.unwrap().floor, Seq(4));
    // Marks only go up.
    b.mark_published(Seq(3)).await.unwrap();
    assert_eq!(a.prune(keep_two, 100).await.unwrap(), 0);
    // B stops: its mark no longer holds retention back; batches are small.
    b.close().await;
    assert_eq!(a.prune(keep_two, 2).await.unwrap(), 2);
    assert_eq!(a.prune(keep_two, 100).await.unwrap(), 2);
    assert_eq!(a.bounds().await.unwrap().floor, Seq(8));
    assert_eq!(a.published().await.unwrap(), Seq(9));
    assert_eq!(
        all_rows(&a)
            .await
            .iter()
            .map(|row| row.seq.0)
            .collect::<Vec<_>>(),
        [9, 10]
    );
    a.close().await;
}

#[tokio::test]
async fn prune_by_age_reads_the_stored_timestamps_and_keeps_pending_rows() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = open(&db).await;
    store
        .execute_write(
            "INSERT INTO change_log (project_id, event_type, payload, created_at) VALUES \
                 ('p', 'k', '{}', '2020-01-01T00:00:00.000Z'), \
                 ('p', 'k', '{}', '2020-01-02 00:00:00'), \
                 ('p', 'k', '{}', 'not a time'), \
                 ('p', 'k', '{}', '2020-01-03T00:00:00.000Z')",
        )
        .await
        .unwrap();
    wait_head(&store, 4).await;
    store.mark_published(Seq(4)).await.unwrap();
    let old = Retention {
        days: Some(1),
        rows: None,
    };
    // Unreadable text is never due by age, and only a prefix goes.
    assert_eq!(store.prune(old, 100).await.unwrap(), 2);
    assert_eq!(store.bounds().await.unwrap().floor, Seq(2));
    store.close().await;
    let idle = open_without_sequencer(&db).await;
    idle.execute_write(
        "INSERT INTO change_log (project_id, event_type, payload, created_at) \
         VALUES ('p', 'k', '{}', '2020-01-01T00:00:00.000Z')",
    )
    .await
    .unwrap();
    assert_eq!(
        idle.prune(
            Retention {
                days: Some(1),
                rows: Some(0)
            },
            100
        )
        .await
        .unwrap(),
        2
    );
    assert_eq!(pending(&db).await, 1, "a pending row is never pruned");
    idle.close().await;
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_with_the_url_but_not_its_password() {
    // Port 9 (discard): nothing listens there on a test machine.
    let started = std::time::Instant::now();
    let error = PostgresStore::open_with(
        "postgres://app:hunter2@127.0.0.1:9/feed",
        PostgresStoreOptions {
            acquire_timeout: Duration::from_secs(2),
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .expect_err("nothing listens there");
    let message = error.to_string();
    assert!(message.contains("127.0.0.1:9/feed"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(started.elapsed() < BOUND);
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_fails_within_the_connect_bound() {
    // A socket that never speaks (a hung proxy, a black-holed port forward): the TCP handshake
    // completes, the Postgres startup reply never comes. Without the bound, sqlx would wait
    // for the OS's TCP timeouts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let bound = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let error = PostgresStore::open_with(
        &format!("postgres://app:hunter2@127.0.0.1:{port}/feed"),
        PostgresStoreOptions {
            acquire_timeout: bound,
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .expect_err("the server never answers");
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(message.contains("no answer within"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/feed")),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(elapsed >= bound, "gave up before the bound: {elapsed:?}");
    assert!(elapsed < BOUND, "{elapsed:?}");
    silent.abort();
}

#[tokio::test]
async fn a_lost_notify_is_made_up_for_by_the_poll() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PostgresStore::open_with(
        &db.url,
        PostgresStoreOptions {
            sequencer: None,
            poll_interval: Duration::from_millis(200),
            ..PostgresStoreOptions::default()
        },
    )
    .await
    .unwrap();
    store
        .execute_write(
            "INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
             INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1')",
        )
        .await
        .unwrap();
    let mut changes = store.changes();
    // A sequencer whose NOTIFY never arrives: the seq assigned by hand, no NOTIFY sent.
    db.execute(
        "UPDATE change_log SET seq = 1 WHERE seq IS NULL; \
         UPDATE changefeed_sequencer SET head = 1",
    )
    .await;
    let stats = store.stats().clone();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    // Woken (each time) by the watch; done once the poll has announced the head nobody else did.
    tokio::time::timeout(BOUND, async {
        while stats.poll_fallbacks.load(relaxed) == 0 {
            changes.changed().await;
        }
    })
    .await
    .expect("the poll noticed the new head and woke the waiter");
    assert_eq!(store.bounds().await.unwrap().head, Seq(1));
    assert_eq!(stats.notifies_received.load(relaxed), 0);
    assert_eq!(stats.poll_fallbacks.load(relaxed), 1);
    store.close().await;
}
