//! Proves plain `changefeed serve` refuses (exit 2, one line naming what it found and pointing to
//! `--attach`) a database another program created, leaving it unchanged — schema, journal mode,
//! and the owner's writes, which still log exactly one row per change — and that the attach
//! flags reject contradictory use with exit 2.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_changefeed");
const DAEMON_SCHEMA: &str = include_str!("../../tests/fixtures/daemon-schema.sql");

/// Runs `sql` with the `sqlite3` CLI (another process, as the daemon's own writer would),
/// the script on stdin (an argument starting with `--` would be read as an option).
fn sqlite3(db: &Path, sql: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 5000"])
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the sqlite3 CLI (scripts/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sqlite3 failed on {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The schema (every `sqlite_master` row), the journal mode and the change_log, by the CLI.
fn snapshot(db: &Path) -> String {
    sqlite3(
        db,
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name; \
         PRAGMA journal_mode; SELECT * FROM change_log ORDER BY seq;",
    )
}

fn changefeed(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run changefeed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn plain_serve_refuses_the_daemons_database_and_leaves_it_working() {
    for journal_mode in ["wal", "delete"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("daemon.db");
        sqlite3(&db, DAEMON_SCHEMA);
        sqlite3(
            &db,
            &format!(
                "PRAGMA journal_mode = {journal_mode}; \
                 INSERT INTO projects (id, name) VALUES ('p1', 'One'); \
                 INSERT INTO sessions (id, project_id) VALUES ('s1', 'p1');"
            ),
        );
        let before = snapshot(&db);
        assert!(before.contains(&format!("\n{journal_mode}\n")), "{before}");

        let url = format!("sqlite://{}", db.display());
        let output = changefeed(&["serve", "--database", &url, "--listen", "127.0.0.1:0"]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "one line: {message}");
        for needle in [
            "changefeed: database ",
            "was not created by changefeed",
            "no changefeed migration record",
            "(change_log, pr_checks, pr_review_threads, projects, sessions)",
            "left unchanged",
            &format!("changefeed serve --attach --database {url}"),
        ] {
            assert!(message.contains(needle), "{needle:?} in {message}");
        }
        assert_eq!(snapshot(&db), before, "{journal_mode}: nothing changed");

        // The owner's writes succeed, and log exactly one row each (no trigger of ours).
        sqlite3(
            &db,
            "INSERT INTO sessions (id, project_id) VALUES ('s2', 'p1'); \
             UPDATE sessions SET activity_state = 'working' WHERE id = 's2';",
        );
        assert_eq!(
            sqlite3(&db, "SELECT event_type FROM change_log ORDER BY seq"),
            "session_created\nsession_created\nsession_updated\n"
        );
    }
}

#[test]
fn plain_serve_refuses_its_own_database_whose_tables_were_changed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ours.db");
    let url = format!("sqlite://{}", db.display());
    // Let changefeed create it; it then exits 1 on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let created = changefeed(&["serve", "--database", &url, "--listen", &addr]);
    assert_eq!(created.status.code(), Some(1), "{}", stderr(&created));
    assert_eq!(
        sqlite3(&db, "SELECT count(*) FROM _sqlx_migrations").trim(),
        "3"
    );

    sqlite3(
        &db,
        "ALTER TABLE sessions RENAME COLUMN activity TO activity_state",
    );
    let before = snapshot(&db);
    let output = changefeed(&["serve", "--database", &url, "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message
            .contains("table sessions has columns (id TEXT, project_id TEXT, activity_state TEXT"),
        "{message}"
    );
    assert!(
        message.contains("where changefeed's has (id TEXT, project_id TEXT, activity TEXT"),
        "{message}"
    );
    assert_eq!(snapshot(&db), before);
}

#[test]
fn attach_flags_reject_contradictions_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("daemon.db");
    let url = format!("sqlite://{}", db.display());
    let missing = changefeed(&["serve", "--attach", "--database", &url]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("--attach serves an existing database, and there is none"));
    assert!(!db.exists(), "attach creates no database");

    sqlite3(&db, DAEMON_SCHEMA);
    let meta = dir.path().join("feed.meta");
    let meta = meta.to_str().unwrap();
    let retention = changefeed(&[
        "serve",
        "--attach",
        "--database",
        &url,
        "--meta-file",
        meta,
        "--retain-days",
        "7",
    ]);
    assert_eq!(retention.status.code(), Some(2));
    assert!(stderr(&retention).contains("--meta-file opens the database read-only"));

    let without_attach = changefeed(&["serve", "--database", &url, "--meta-file", meta]);
    assert_eq!(without_attach.status.code(), Some(2));
    assert!(
        stderr(&without_attach).contains("--attach"),
        "{}",
        stderr(&without_attach)
    );

    let demo = changefeed(&["demo", "--attach", "--database", &url]);
    assert_eq!(demo.status.code(), Some(2));
    assert!(stderr(&demo).contains("--attach is for serve"));

    let help = String::from_utf8(changefeed(&["serve", "--help"]).stdout).unwrap();
    for flag in [
        "--attach",
        "--meta-file <PATH>",
        "mode=ro",
        "changefeed_meta",
    ] {
        assert!(help.contains(flag), "{flag} in serve --help");
    }
}
