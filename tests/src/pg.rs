//! Throwaway Postgres databases for the tests that need one.
//!
//! The tests read the admin URL of a disposable cluster from `CHANGEFEED_TEST_POSTGRES`
//! (`scripts/test.sh` starts one with `scripts/postgres.sh` and exports it; locally:
//! `eval "$(scripts/postgres.sh start)"; export CHANGEFEED_TEST_POSTGRES=$DATABASE_URL`). Each
//! test creates its own database there ([`TestDb::create`]) and drops it when done, so tests run
//! in parallel without seeing each other's rows.
//!
//! Without the variable a Postgres test prints why and returns early, except under CI
//! (`CI` set to anything but `false`/`0`), where it fails: CI must never pass by not running them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable naming the disposable cluster (an admin URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`).
pub const ENV: &str = "CHANGEFEED_TEST_POSTGRES";

/// The admin URL of the test cluster, or `None` (with a note on stderr) when none is configured
/// outside CI. Panics under CI when none is configured.
pub fn admin_url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let ci = std::env::var("CI")
                .is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"));
            if ci {
                panic!(
                    "{ENV} is not set but CI is: the Postgres tests must run in CI \
                     (scripts/test.sh starts a cluster with scripts/postgres.sh and exports it)"
                );
            }
            eprintln!(
                "note: {ENV} is not set; this Postgres test did not run \
                 (eval \"$(scripts/postgres.sh start)\"; export {ENV}=$DATABASE_URL)"
            );
            None
        }
    }
}

/// A database of its own on the test cluster, dropped (with `FORCE`) when this is dropped.
pub struct TestDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
    admin: String,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    /// Creates a fresh, empty database, or `None` when no cluster is configured (see
    /// [`admin_url`]).
    pub async fn create() -> Option<TestDb> {
        let admin = admin_url()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "cf_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        execute(&admin, &format!("CREATE DATABASE {name}")).await;
        let url = with_database(&admin, &name);
        Some(TestDb { url, name, admin })
    }

    /// Another database's URL on the same cluster (for restores), created empty.
    pub async fn sibling(&self, suffix: &str) -> TestDb {
        let name = format!("{}_{suffix}", self.name);
        execute(&self.admin, &format!("CREATE DATABASE {name}")).await;
        TestDb {
            url: with_database(&self.admin, &name),
            name,
            admin: self.admin.clone(),
        }
    }

    /// Runs `sql` (no parameters, one or more statements) on this database in one transaction.
    pub async fn execute(&self, sql: &str) {
        let mut connection = connect(&self.url).await;
        sqlx::raw_sql(&format!("BEGIN; {sql}; COMMIT"))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{sql:?} failed: {error}"));
    }

    /// Opens one connection to this database.
    pub async fn connect(&self) -> sqlx::PgConnection {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee; a small runtime on a thread of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    if let Ok(mut connection) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ =
                            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut connection)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

/// One connection to `url` (panics with the reason when it cannot connect).
pub async fn connect(url: &str) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test cluster: {error}"))
}

async fn execute(url: &str, sql: &str) {
    let mut connection = connect(url).await;
    sqlx::raw_sql(sql)
        .execute(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{sql:?} failed: {error}"));
}

/// `admin` with its database path replaced by `name`.
fn with_database(admin: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin).expect("the test cluster URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}
