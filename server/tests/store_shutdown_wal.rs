//! Proves that closing the SQLite store checkpoints the WAL into the database file and truncates
//! it (nothing left in `-wal`, every row readable from the file alone), and that a reader in
//! another connection holding a snapshot makes the checkpoint stop short without losing rows.

use std::path::Path;

use changefeed::store::sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

fn wal_len(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |metadata| metadata.len())
}

async fn projects(db: &Path) -> i64 {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    let count = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    count
}

async fn open_and_write(db: &Path, rows: usize) -> SqliteStore {
    let store = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for index in 0..rows {
        store
            .execute_write(&format!(
                "INSERT INTO projects (id, name) VALUES ('p{index}', 'P')"
            ))
            .await
            .unwrap();
    }
    store
}

#[tokio::test]
async fn a_clean_close_leaves_an_empty_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wal.db");
    let store = open_and_write(&db, 50).await;
    assert!(wal_len(&db) > 0, "the writes are in the WAL before closing");
    store.close().await;
    assert_eq!(wal_len(&db), 0, "the WAL was checkpointed and truncated");
    // Even with the WAL gone, the file holds every row.
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let _ = std::fs::remove_file(wal);
    assert_eq!(projects(&db).await, 50);
}

#[tokio::test]
async fn a_reader_in_another_connection_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("held.db");
    let store = open_and_write(&db, 20).await;
    let options = SqliteConnectOptions::new().filename(&db).read_only(true);
    let mut reader = SqliteConnection::connect_with(&options).await.unwrap();
    let mut snapshot = reader.begin().await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *snapshot)
        .await
        .unwrap();
    assert_eq!(seen, 20);
    store
        .execute_write("INSERT INTO projects (id, name) VALUES ('late', 'P')")
        .await
        .unwrap();
    store.close().await;
    snapshot.commit().await.unwrap();
    reader.close().await.unwrap();
    assert_eq!(projects(&db).await, 21, "nothing lost");
}
