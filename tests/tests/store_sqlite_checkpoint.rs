//! Proves that replays never starve the WAL: while replay windows run back to back on every read
//! connection and a writer that never checkpoints (`wal_autocheckpoint=0`) commits row after row,
//! the store's own checkpoints still restart the WAL; and that with them turned off it does not
//! (so the first check could fail).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use changefeed::store::sqlite::{SqliteStore, SqliteStoreOptions};
use changefeed::store::Store;
use changefeed_core::{FetchRequest, Filter, Seq};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use sqlx::{Connection, Executor};

/// A failure bound only: the writer stops as soon as the WAL restarted.
const RESTART_BOUND: Duration = Duration::from_secs(30);

/// The WAL header's checkpoint sequence number (bytes 12..16, big-endian), which SQLite
/// increments each time the WAL restarts from its beginning.
fn wal_restarts(database: &Path) -> u32 {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    let header = std::fs::read(PathBuf::from(wal)).unwrap_or_default();
    header
        .get(12..16)
        .map_or(0, |bytes| u32::from_be_bytes(bytes.try_into().unwrap()))
}

/// A writer in its own connection that never checkpoints: only the store can.
async fn writer(database: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .busy_timeout(Duration::from_secs(10))
        .synchronous(SqliteSynchronous::Normal)
        .pragma("wal_autocheckpoint", "0");
    SqliteConnection::connect_with(&options).await.unwrap()
}

async fn insert(writer: &mut SqliteConnection) {
    writer
        .execute(
            "INSERT INTO change_log (project_id, event_type, payload) \
             VALUES ('p', 'bench_tick', '{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}')",
        )
        .await
        .unwrap();
}

/// Runs eight replay loops (more than the read connections, so every connection always has a
/// read transaction going) while one writer commits single rows; returns the WAL restarts seen
/// and the commits made before two restarts were seen or `bound` passed.
async fn replays_and_a_writer(options: SqliteStoreOptions, bound: Duration) -> (u32, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.db");
    let store = SqliteStore::open_with(&format!("sqlite://{}", path.display()), options)
        .await
        .unwrap();
    let mut writer = writer(&path).await;
    // A log worth replaying: 2,000 rows in one transaction.
    writer.execute("BEGIN").await.unwrap();
    for _ in 0..2000 {
        insert(&mut writer).await;
    }
    writer.execute("COMMIT").await.unwrap();
    let head = store.bounds().await.unwrap().head;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let mut windows = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let range = FetchRequest {
                        after: Seq(0),
                        upto: head,
                    };
                    let rows = store.window(&Filter::all(), range).await.unwrap();
                    assert_eq!(rows.rows().len() as u64, head.0);
                    windows += 1;
                }
                windows
            })
        })
        .collect();
    let before = wal_restarts(&path);
    let started = Instant::now();
    let mut commits = 0u64;
    while wal_restarts(&path).wrapping_sub(before) < 2 && started.elapsed() < bound {
        insert(&mut writer).await;
        commits += 1;
        // Paced, like a real writer, so the readers run between commits.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let restarts = wal_restarts(&path).wrapping_sub(before);
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0, "every reader replayed");
    }
    writer.close().await.unwrap();
    store.close().await;
    (restarts, commits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_checkpoints_restart_the_wal_while_replays_run() {
    let options = SqliteStoreOptions {
        checkpoint_interval: Some(Duration::from_millis(10)),
        ..SqliteStoreOptions::default()
    };
    let (restarts, commits) = replays_and_a_writer(options, RESTART_BOUND).await;
    assert!(
        restarts >= 2,
        "the WAL restarted {restarts} times in {commits} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_them_the_wal_never_restarts() {
    let options = SqliteStoreOptions {
        checkpoint_interval: None,
        ..SqliteStoreOptions::default()
    };
    let (restarts, commits) = replays_and_a_writer(options, Duration::from_secs(2)).await;
    assert_eq!(restarts, 0, "in {commits} commits");
    assert!(
        commits > 100,
        "the writer was not blocked: {commits} commits"
    );
}
