//! Proves that the Postgres store keeps the store contract: the same generic conformance suite
//! as SQLite (`changefeed::store::conformance`), on a real Postgres database per check, written
//! the way the application's writers write it (rows with no seq, numbered by the sequencer).

use std::time::Duration;

use changefeed::store::conformance::{Harness, NewRow};
use changefeed::store::postgres::PostgresStore;
use changefeed::store::Store;
use changefeed_core::Seq;
use changefeed_tests::pg::TestDb;

/// A failure bound only: waits return as soon as the sequencer has numbered the row.
const BOUND: Duration = Duration::from_secs(10);

/// A fresh database on the test cluster, served by one replica (with its sequencer); rows are
/// appended by plain `INSERT`s on connections of their own, as another program would.
struct Postgres {
    store: PostgresStore,
    db: TestDb,
}

impl Postgres {
    /// `None` when no test cluster is configured (outside CI; `TestDb::create` says so).
    async fn new() -> Option<Postgres> {
        let db = TestDb::create().await?;
        let store = PostgresStore::open(&db.url).await.expect("open the store");
        Some(Postgres { store, db })
    }

    async fn execute(&self, sql: &str, value: i64) {
        let mut connection = self.db.connect().await;
        sqlx::query(sql)
            .bind(value)
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql:?} failed: {error}"));
    }
}

impl Harness for Postgres {
    type Store = PostgresStore;

    fn store(&self) -> PostgresStore {
        self.store.clone()
    }

    async fn create_project(&mut self, id: &str) {
        let mut connection = self.db.connect().await;
        sqlx::query("INSERT INTO projects (id, name) VALUES ($1, $1)")
            .bind(id)
            .execute(&mut connection)
            .await
            .expect("insert project");
    }

    async fn append(&mut self, row: NewRow<'_>) -> Seq {
        // Subscribed before the commit, so the sequencer's wake-up for this row is not missed.
        let mut changes = self.store.changes();
        let mut connection = self.db.connect().await;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO change_log (project_id, session_id, event_type, payload, created_at) \
             VALUES ($1, $2, $3, $4, COALESCE($5, changefeed_now())) RETURNING id",
        )
        .bind(row.project)
        .bind(row.session)
        .bind(row.kind)
        .bind(row.payload)
        .bind(row.created_at)
        .fetch_one(&mut connection)
        .await
        .expect("insert row");
        let numbered = async {
            loop {
                let seq: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM change_log WHERE id = $1")
                        .bind(id)
                        .fetch_one(&mut connection)
                        .await
                        .expect("read the row's seq");
                if let Some(seq) = seq {
                    return Seq(seq as u64);
                }
                changes.changed().await;
            }
        };
        tokio::time::timeout(BOUND, numbered)
            .await
            .unwrap_or_else(|_| panic!("row {id} got no seq within {BOUND:?}"))
    }

    async fn delete(&mut self, seq: Seq) {
        let mut connection = self.db.connect().await;
        let deleted = sqlx::query("DELETE FROM change_log WHERE seq = $1")
            .bind(seq.0 as i64)
            .execute(&mut connection)
            .await
            .expect("delete")
            .rows_affected();
        assert_eq!(deleted, 1, "no row {seq:?} to delete");
    }

    async fn lose_commits_after(&mut self, seq: Seq) {
        // What a restore of an older backup looks like: the newest rows and the counter that
        // numbered them are gone, so those seqs are assigned again.
        self.execute("DELETE FROM change_log WHERE seq > $1", seq.0 as i64)
            .await;
        self.execute(
            "UPDATE changefeed_sequencer SET head = $1 WHERE head > $1",
            seq.0 as i64,
        )
        .await;
    }

    async fn restart(&mut self) {
        self.store.close().await;
        self.store = PostgresStore::open(&self.db.url)
            .await
            .expect("reopen the store");
    }

    async fn published_mark(&mut self) -> Seq {
        self.store.published().await.expect("published mark")
    }
}

changefeed::store_conformance_tests!(optional Postgres::new);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_writes_where_the_store_reads() {
    let Some(mut harness) = Postgres::new().await else {
        return;
    };
    assert_eq!(harness.append(NewRow::new("p", "k")).await, Seq(1));
    assert_eq!(harness.append(NewRow::new("p", "k")).await, Seq(2));
    assert_eq!(harness.store().bounds().await.unwrap().head, Seq(2));
}
