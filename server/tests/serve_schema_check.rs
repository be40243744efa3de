//! Proves that `changefeed serve` refuses a foreign `change_log` it cannot serve before serving:
//! exit code 2 and one line naming every problem, the database left unchanged; and that the
//! library's `SqliteStore::open` refuses it with the same message.

use std::path::Path;
use std::process::Command;

use changefeed::store::sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

async fn create(path: &Path, sql: &str) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

async fn table_names(path: &Path) -> Vec<String> {
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::query_scalar("SELECT name FROM sqlite_master ORDER BY name")
        .fetch_all(&mut connection)
        .await
        .unwrap()
}

fn serve(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_changefeed"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite://{}", path.display()))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run changefeed")
}

#[tokio::test]
async fn serve_refuses_a_change_log_missing_columns_and_autoincrement_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    create(
        &path,
        "CREATE TABLE change_log (seq INTEGER PRIMARY KEY, project_id TEXT, event_type TEXT, \
         created_at TEXT)",
    )
    .await;
    let before = table_names(&path).await;
    let output = serve(&path);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.is_empty()).collect();
    let refusal = lines
        .iter()
        .find(|line| line.starts_with("changefeed: "))
        .unwrap_or_else(|| panic!("no refusal line in {stderr:?}"));
    for named in [
        "column session_id is missing",
        "column payload is missing",
        "not declared AUTOINCREMENT",
    ] {
        assert!(refusal.contains(named), "{named:?} not in {refusal:?}");
    }
    assert!(!stderr.contains("sqlite_sequence"), "{stderr}");
    assert!(!stderr.contains("changefeed serving"), "{stderr}");
    assert_eq!(table_names(&path).await, before, "nothing was created");
}

#[tokio::test]
async fn serve_refuses_a_wrong_primary_key_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("composite.db");
    create(
        &path,
        "CREATE TABLE change_log (seq INTEGER, project_id TEXT, session_id TEXT, \
         event_type TEXT, payload TEXT, created_at TEXT, PRIMARY KEY (project_id, seq))",
    )
    .await;
    let output = serve(&path);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("the primary key is (project_id, seq)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_store_refuses_a_change_log_without_autoincrement_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-autoincrement.db");
    create(
        &path,
        "CREATE TABLE change_log (seq INTEGER PRIMARY KEY, project_id TEXT, session_id TEXT, \
         event_type TEXT, payload TEXT, created_at TEXT)",
    )
    .await;
    let error = SqliteStore::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_err();
    assert!(
        error.message.contains("change_log cannot be served")
            && error.message.contains("AUTOINCREMENT"),
        "{error}"
    );
    assert!(!error.message.contains("sqlite_sequence"), "{error}");
}
