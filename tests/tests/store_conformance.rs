//! Proves that the SQLite store keeps the store contract: the generic conformance suite
//! (`changefeed::store::conformance`, the same checks every store passes), run on real database
//! files written the way the daemon's writers write them.

use changefeed::store::conformance::{Harness, NewRow};
use changefeed::store::sqlite::SqliteStore;
use changefeed::store::Store;
use changefeed_core::Seq;

/// A fresh SQLite database in a temporary directory, written through the store's own write
/// connection (as the daemon's triggers would write it, in one transaction per row).
struct Sqlite {
    store: SqliteStore,
    url: String,
    _dir: tempfile::TempDir,
}

impl Sqlite {
    async fn new() -> Sqlite {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("changefeed.db").display());
        Sqlite {
            store: SqliteStore::open(&url).await.expect("open"),
            url,
            _dir: dir,
        }
    }
}

impl Harness for Sqlite {
    type Store = SqliteStore;

    fn store(&self) -> SqliteStore {
        self.store.clone()
    }

    async fn create_project(&mut self, id: &str) {
        let mut tx = self.store.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO projects (id, name) VALUES (?1, ?1)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .expect("insert project");
        tx.commit().await.expect("commit");
    }

    async fn append(&mut self, row: NewRow<'_>) -> Seq {
        let mut tx = self.store.begin_write().await.expect("begin");
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO change_log (project_id, session_id, event_type, payload, created_at) \
             VALUES (?, ?, ?, ?, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))) \
             RETURNING seq",
        )
        .bind(row.project)
        .bind(row.session)
        .bind(row.kind)
        .bind(row.payload)
        .bind(row.created_at)
        .fetch_one(&mut *tx)
        .await
        .expect("insert row");
        tx.commit().await.expect("commit");
        Seq(seq as u64)
    }

    async fn delete(&mut self, seq: Seq) {
        let mut tx = self.store.begin_write().await.expect("begin");
        let deleted = sqlx::query("DELETE FROM change_log WHERE seq = ?")
            .bind(seq.0 as i64)
            .execute(&mut *tx)
            .await
            .expect("delete")
            .rows_affected();
        tx.commit().await.expect("commit");
        assert_eq!(deleted, 1, "no row {seq:?} to delete");
    }

    async fn lose_commits_after(&mut self, seq: Seq) {
        let mut tx = self.store.begin_write().await.expect("begin");
        for sql in [
            "DELETE FROM change_log WHERE seq > ?1",
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'change_log' AND seq > ?1",
        ] {
            sqlx::query(sql)
                .bind(seq.0 as i64)
                .execute(&mut *tx)
                .await
                .expect("lose commits");
        }
        tx.commit().await.expect("commit");
    }

    async fn restart(&mut self) {
        self.store.close().await;
        self.store = SqliteStore::open(&self.url).await.expect("reopen");
    }

    async fn published_mark(&mut self) -> Seq {
        self.store.published().await.expect("published mark")
    }
}

changefeed::store_conformance_tests!(Sqlite::new);

#[tokio::test]
async fn the_harness_writes_where_the_store_reads() {
    let mut harness = Sqlite::new().await;
    assert_eq!(harness.append(NewRow::new("p", "k")).await, Seq(1));
    assert_eq!(harness.store().bounds().await.unwrap().head, Seq(1));
}
