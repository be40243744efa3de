//! The Postgres store: one database shared by several server replicas and by any number of
//! application processes writing domain rows concurrently.
//!
//! - **Schema.** `migrations/postgres/` (embedded; applied under sqlx's migration lock, so
//!   replicas starting together are safe) creates the same domain tables and columns as on
//!   SQLite, `change_log`, one PL/pgSQL trigger per kind (same rows and payload bytes as
//!   SQLite's), and the bookkeeping every replica shares: `changefeed_meta` (epoch, highest
//!   published seq, retention floor, database identity), `changefeed_sequencer` (head) and
//!   `changefeed_replicas` (each running replica's published mark).
//! - **Commit order.** Writers' triggers append rows with no seq (a writer takes no lock and sends
//!   no NOTIFY). The [`sequencer`], running in every replica and elected per tick, gives
//!   committed rows the next seqs after commit, so seqs become visible in order and a tail of
//!   `seq > P` never skips a row that commits late. See [`sequencer`] for why this is safe.
//! - **Reads** (`bounds`, `window`, `rows_after`, `missing_projects`) are single statements, so
//!   rows and bounds always come from one snapshot. Head is the sequencer's counter: every seq
//!   at or below it is assigned and visible (assignment and counter commit together).
//! - **Change signal.** [`watch`] LISTENs for the sequencer's NOTIFY (one per batch) and polls
//!   head as the safety net; the local sequencer signals its own commits directly.
//!
//! **Invariant (epoch):** a seq that was published is never served again under the same epoch.
//! At [`PostgresStore::open`] the epoch rotates when the database is not the one the log was
//! created in (a restore into another database or cluster), when head is below the highest
//! published seq, or when pending rows carry transaction ids from the future (rows restored
//! from a dump taken on another cluster).
//!
//! **Invariant (retention):** rows above the lowest published mark of any replica seen within
//! [`PostgresStoreOptions::replica_lease`] are never pruned (a replica's live subscribers have
//! not been sent them).

pub mod metrics;
pub mod sequencer;
mod watch;

use crate::store::{seq_from, to_sql};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use changefeed_core::{Epoch, EventRow, FetchRequest, Filter, PayloadCheck, Seq, TypePattern};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, Postgres, Row, Transaction};
use tokio::sync::watch as tokio_watch;

pub use sequencer::{AssignMode, SequencerConfig, SequencerStats};

use super::{
    epoch_at_start, prunable_prefix, ChangeWatch, EpochDecision, LogBounds, PruneCandidate,
    Retention, Rows, Store, StoreError,
};

/// The embedded migrations (`migrations/postgres/` at the workspace root).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the sequencer NOTIFYs after each batch (payload: the new head).
pub const NOTIFY_CHANNEL: &str = "changefeed";

/// The advisory lock key of the start-up epoch rule (replicas starting together take turns).
const STARTUP_LOCK: i64 = 0x6366_5f73_7461_7274; // "cf_start"

/// The columns of an [`EventRow`], in [`row_from`]'s order.
const ROW_COLUMNS: &str = "seq, project_id, session_id, event_type, payload, created_at";

/// Epoch, head and floor in one statement (one snapshot).
const BOUNDS_SQL: &str = "SELECT \
     (SELECT value FROM changefeed_meta WHERE key = 'epoch') AS epoch, \
     (SELECT head FROM changefeed_sequencer) AS head, \
     (SELECT value FROM changefeed_meta WHERE key = 'floor') AS floor";

/// How to open a [`PostgresStore`]; [`Default`] is what [`PostgresStore::open`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStoreOptions {
    /// Connections in the pool (reads, our writes, the sequencer's ticks).
    pub connections: u32,
    /// How long a call waits for a connection before it fails (also the start-up connect bound).
    pub acquire_timeout: Duration,
    /// The safety-net poll of head, for NOTIFYs that were lost (a NOTIFY lost costs at most this).
    pub poll_interval: Duration,
    /// The sequencer this replica runs (`None`: none; another replica must run one).
    pub sequencer: Option<SequencerConfig>,
    /// A replica whose mark was not refreshed for this long no longer holds retention back.
    pub replica_lease: Duration,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        PostgresStoreOptions {
            connections: 8,
            acquire_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            sequencer: Some(SequencerConfig::default()),
            replica_lease: Duration::from_secs(60),
        }
    }
}

/// A change log in a Postgres database. A cheap [`Clone`] handle; the pool, the sequencer and
/// the change watch stop when the last handle is dropped (or at [`PostgresStore::close`]).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    url: String,
    replica: String,
    replica_lease: Duration,
    changes: tokio_watch::Sender<u64>,
    stats: Arc<SequencerStats>,
    tasks: Vec<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Opens the database at `url` (`postgres://user:password@host:port/db`) with the default
    /// options: runs the embedded migrations, applies the start-up epoch rule (see the module
    /// docs), starts the change watch and this replica's sequencer. Must be called within a
    /// tokio runtime. Errors name the URL without its password.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(url, PostgresStoreOptions::default()).await
    }

    /// [`PostgresStore::open`] with explicit options.
    pub async fn open_with(
        url: &str,
        options: PostgresStoreOptions,
    ) -> Result<PostgresStore, StoreError> {
        let shown = redact_url(url);
        let connect = connect_options(url)?;
        // One direct connection first: the pool would report every failure as a timeout, this
        // says why (refused, authentication, no such database).
        match tokio::time::timeout(
            options.acquire_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        {
            Err(_) => {
                return Err(StoreError::transient(format!(
                    "cannot connect to {shown}: no answer within {:?}",
                    options.acquire_timeout
                )))
            }
            Ok(Err(error)) => {
                return Err(StoreError::from(error).context(format!("cannot connect to {shown}")));
            }
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|error| {
                StoreError::from(error).context(format!("cannot connect to {shown}"))
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|error| StoreError::fatal(format!("migrating {shown}: {error}")))?;
        apply_epoch_rule(&pool).await?;
        let replica: String = sqlx::query_scalar("SELECT gen_random_uuid()::text")
            .fetch_one(&pool)
            .await?;

        let initial_head: i64 = sqlx::query_scalar("SELECT head FROM changefeed_sequencer")
            .fetch_one(&pool)
            .await?;
        let (changes, _) = tokio_watch::channel(0u64);
        let stats = Arc::new(SequencerStats::default());
        stats.announce(u64::try_from(initial_head).unwrap_or(0));
        let mut tasks = Vec::new();
        tasks.push(AbortOnDrop(tokio::spawn(watch::run(
            pool.clone(),
            changes.clone(),
            stats.clone(),
            watch::WatchConfig {
                poll_interval: options.poll_interval,
                replica: replica.clone(),
                initial_head: u64::try_from(initial_head).unwrap_or(0),
            },
        ))));
        if let Some(config) = options.sequencer {
            let sequencer = sequencer::Sequencer::new(pool.clone(), config, stats.clone())
                .signalling(changes.clone());
            tasks.push(AbortOnDrop(tokio::spawn(sequencer.run())));
        }
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                url: shown,
                replica,
                replica_lease: options.replica_lease,
                changes,
                stats,
                tasks,
            }),
        })
    }

    /// The pool, for domain writes (demo writer, tests) and diagnostics.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// This replica's id (its row in `changefeed_replicas`).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The sequencer's and the change watch's counters (rows assigned, NOTIFYs, poll fallbacks,
    /// lag and horizon samples).
    pub fn stats(&self) -> &Arc<SequencerStats> {
        &self.inner.stats
    }

    /// Runs `sql` (one or more `;`-separated statements, no parameters) in one transaction and
    /// returns the rows affected. For tests and scripts.
    pub async fn execute_write(&self, sql: &str) -> Result<u64, StoreError> {
        let mut transaction = self.inner.pool.begin().await?;
        let affected = sqlx::raw_sql(sql)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        Ok(affected)
    }

    /// The highest seq any replica has published.
    pub async fn published(&self) -> Result<Seq, StoreError> {
        let text: String =
            sqlx::query_scalar("SELECT value FROM changefeed_meta WHERE key = 'published'")
                .fetch_one(&self.inner.pool)
                .await?;
        parse_mark("published", &text)
    }

    /// Stops the background tasks, removes this replica's mark (it no longer holds retention
    /// back) and closes the pool.
    pub async fn close(&self) {
        for task in &self.inner.tasks {
            task.0.abort();
        }
        if let Err(error) = sqlx::query("DELETE FROM changefeed_replicas WHERE replica = $1")
            .bind(&self.inner.replica)
            .execute(&self.inner.pool)
            .await
        {
            tracing::debug!(%error, "removing this replica's mark failed");
        }
        self.inner.pool.close().await;
    }
}

impl Store for PostgresStore {
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        let row = sqlx::query(BOUNDS_SQL).fetch_one(&self.inner.pool).await?;
        bounds_from(&row)
    }

    async fn window(&self, filter: &Filter, range: FetchRequest) -> Result<Rows, StoreError> {
        let Some(query) = WindowQuery::new(filter) else {
            return Ok(Rows::new(Vec::new(), self.bounds().await?));
        };
        let mut statement = sqlx::query(&query.sql)
            .bind(to_sql(range.after))
            .bind(to_sql(range.upto.max(range.after)));
        if let Some(projects) = &query.projects {
            statement = statement.bind(projects);
        }
        for value in &query.kinds {
            statement = statement.bind(value.as_str());
        }
        rows_with_bounds(statement.fetch_all(&self.inner.pool).await?)
    }

    async fn rows_after(&self, after: Seq, limit: usize) -> Result<Rows, StoreError> {
        // Rows and bounds in one statement, so one snapshot.
        let sql = format!(
            "SELECT b.epoch, b.head, b.floor, r.* FROM ({BOUNDS_SQL}) AS b \
             LEFT JOIN LATERAL (SELECT {ROW_COLUMNS} FROM change_log \
                                WHERE seq > $1 ORDER BY seq LIMIT $2) AS r \
             ON true ORDER BY r.seq"
        );
        let rows = sqlx::query(&sql)
            .bind(to_sql(after))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await?;
        rows_with_bounds(rows)
    }

    async fn missing_projects(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let wanted: Vec<&String> = {
            let mut seen = BTreeSet::new();
            ids.iter().filter(|id| seen.insert(id.as_str())).collect()
        };
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<&str> = wanted.iter().map(|id| id.as_str()).collect();
        let found: BTreeSet<String> =
            sqlx::query_scalar("SELECT id FROM projects WHERE id = ANY($1)")
                .bind(&list)
                .fetch_all(&self.inner.pool)
                .await?
                .into_iter()
                .collect();
        Ok(wanted
            .into_iter()
            .filter(|id| !found.contains(id.as_str()))
            .cloned()
            .collect())
    }

    fn changes(&self) -> ChangeWatch {
        ChangeWatch::new(self.inner.changes.subscribe())
    }

    async fn mark_published(&self, seq: Seq) -> Result<(), StoreError> {
        // This replica's mark (retention) and the highest mark of all (the epoch rule), in one
        // statement.
        sqlx::query(
            "WITH mine AS ( \
                 INSERT INTO changefeed_replicas AS r (replica, published, seen_at) \
                 VALUES ($1, $2, now()) \
                 ON CONFLICT (replica) DO UPDATE \
                 SET published = GREATEST(r.published, EXCLUDED.published), seen_at = now() \
             ) \
             UPDATE changefeed_meta SET value = $2::text \
             WHERE key = 'published' AND value::bigint < $2",
        )
        .bind(&self.inner.replica)
        .bind(to_sql(seq))
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    fn metrics_collector(&self) -> Option<Box<dyn prometheus_client::collector::Collector>> {
        Some(Box::new(metrics::StatsCollector(self.inner.stats.clone())))
    }

    async fn prune(&self, retention: Retention, batch: usize) -> Result<u64, StoreError> {
        if batch == 0 || retention.keeps_everything() {
            return Ok(0);
        }
        let mut transaction = self.inner.pool.begin().await?;
        // Rows at or below the (rows+1)-th newest are beyond the newest `rows`.
        let rows_cutoff: Option<i64> = match retention.rows {
            None => None,
            Some(keep) => {
                sqlx::query_scalar(
                    "SELECT seq FROM change_log WHERE seq IS NOT NULL \
                 ORDER BY seq DESC LIMIT 1 OFFSET $1",
                )
                .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                .fetch_optional(&mut *transaction)
                .await?
            }
        };
        // Never above the lowest mark of a live replica, nor above the highest published seq.
        let (bound, now_ms): (i64, i64) = sqlx::query_as(
            "SELECT LEAST( \
                 (SELECT value::bigint FROM changefeed_meta WHERE key = 'published'), \
                 COALESCE((SELECT min(published) FROM changefeed_replicas \
                           WHERE seen_at > now() - make_interval(secs => $1)), \
                          9223372036854775807)), \
                 (extract(epoch FROM now()) * 1000)::bigint",
        )
        .bind(self.inner.replica_lease.as_secs_f64())
        .fetch_one(&mut *transaction)
        .await?;
        let oldest: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, created_at FROM change_log WHERE seq IS NOT NULL ORDER BY seq LIMIT $1",
        )
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *transaction)
        .await?;
        let max_age_ms = retention
            .days
            .map(|days| i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX));
        // Text that is not a timestamp is never due by age (as on SQLite).
        let older_than_days = |created_at: &str| {
            max_age_ms.is_some_and(|max_age| {
                changefeed_core::timestamp::parse_unix_millis(created_at)
                    .is_some_and(|ms| ms < now_ms.saturating_sub(max_age))
            })
        };
        let candidates = oldest
            .iter()
            .map(|(seq, created_at)| {
                Ok(PruneCandidate {
                    seq: seq_from("seq", *seq)?,
                    older_than_days: older_than_days(created_at),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rows_cutoff = rows_cutoff.map(|seq| seq_from("seq", seq)).transpose()?;
        let Some(last) = prunable_prefix(candidates, seq_from("published", bound)?, rows_cutoff)
        else {
            return Ok(0);
        };
        let last = to_sql(last);
        let deleted = sqlx::query("DELETE FROM change_log WHERE seq IS NOT NULL AND seq <= $1")
            .bind(last)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE changefeed_meta SET value = $1::text \
             WHERE key = 'floor' AND value::bigint < $1",
        )
        .bind(last)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(deleted)
    }
}

/// The start-up epoch rule (see the module docs), under an advisory lock so replicas starting
/// together apply it one at a time. One transaction.
async fn apply_epoch_rule(pool: &PgPool) -> Result<(), StoreError> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(STARTUP_LOCK)
        .execute(&mut *transaction)
        .await?;
    let identity = database_identity(&mut transaction).await?;
    let row = sqlx::query(
        "SELECT \
             (SELECT value FROM changefeed_meta WHERE key = 'database') AS recorded, \
             (SELECT head FROM changefeed_sequencer) AS head, \
             (SELECT value FROM changefeed_meta WHERE key = 'published') AS published, \
             EXISTS (SELECT 1 FROM change_log WHERE seq IS NULL \
                     AND xid >= pg_snapshot_xmax(pg_current_snapshot())) AS future_rows",
    )
    .fetch_one(&mut *transaction)
    .await?;
    let recorded: Option<String> = row.try_get("recorded")?;
    let head = seq_from("head", row.try_get("head")?)?;
    let published = parse_mark("published", &row.try_get::<String, _>("published")?)?;
    let future_rows: bool = row.try_get("future_rows")?;

    let mut reasons = Vec::new();
    if recorded
        .as_deref()
        .is_some_and(|recorded| recorded != identity)
    {
        reasons.push("the database is not the one the log was created in (restored or moved)");
    }
    let floor = parse_mark(
        "floor",
        &sqlx::query_scalar::<_, String>("SELECT value FROM changefeed_meta WHERE key = 'floor'")
            .fetch_one(&mut *transaction)
            .await?,
    )?;
    // The rule every store shares; a restore also rotates (below), with the same resets.
    let (new_published, new_floor) = match epoch_at_start(head, floor, published) {
        EpochDecision::Rotate { published, floor } => {
            reasons.push("head is below the highest published seq (committed rows were lost)");
            (published, floor)
        }
        EpochDecision::Keep => (published.min(head), floor.min(head)),
    };
    if future_rows {
        reasons.push("pending rows carry transaction ids from another cluster (restored)");
    }
    if reasons.is_empty() {
        if recorded.is_none() {
            sqlx::query("INSERT INTO changefeed_meta (key, value) VALUES ('database', $1)")
                .bind(&identity)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        return Ok(());
    }
    let old_epoch: String =
        sqlx::query_scalar("SELECT value FROM changefeed_meta WHERE key = 'epoch'")
            .fetch_one(&mut *transaction)
            .await?;
    let epoch: String = sqlx::query_scalar(
        "UPDATE changefeed_meta SET value = substr(md5(gen_random_uuid()::text), 1, 16) \
         WHERE key = 'epoch' RETURNING value",
    )
    .fetch_one(&mut *transaction)
    .await?;
    for (key, value) in [("published", new_published), ("floor", new_floor)] {
        sqlx::query("UPDATE changefeed_meta SET value = $1::text WHERE key = $2")
            .bind(to_sql(value))
            .bind(key)
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(
        "INSERT INTO changefeed_meta (key, value) VALUES ('database', $1) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(&identity)
    .execute(&mut *transaction)
    .await?;
    // Restored rows are committed; give them a transaction id of this cluster so every
    // sequencer mode sees them as finished.
    sqlx::query(
        "UPDATE change_log SET xid = pg_current_xact_id() \
         WHERE seq IS NULL AND xid >= pg_snapshot_xmax(pg_current_snapshot())",
    )
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    tracing::warn!(
        head = head.0,
        published = published.0,
        old_epoch,
        new_epoch = epoch,
        reasons = reasons.join("; "),
        "rotated the log's epoch: clients holding cursors of the old epoch refetch"
    );
    Ok(())
}

/// The cluster's system identifier and the database's oid: a restore (into another database or
/// cluster) changes it. Falls back to the oid alone where `pg_control_system()` is not granted.
async fn database_identity(
    transaction: &mut Transaction<'static, Postgres>,
) -> Result<String, StoreError> {
    let oid: i64 = sqlx::query_scalar(
        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&mut **transaction)
    .await?;
    sqlx::query("SAVEPOINT identity")
        .execute(&mut **transaction)
        .await?;
    let system: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
            .fetch_one(&mut **transaction)
            .await;
    let system = match system {
        Ok(system) => {
            sqlx::query("RELEASE SAVEPOINT identity")
                .execute(&mut **transaction)
                .await?;
            system.to_string()
        }
        Err(_) => {
            sqlx::query("ROLLBACK TO SAVEPOINT identity")
                .execute(&mut **transaction)
                .await?;
            "-".to_owned()
        }
    };
    Ok(format!("{system}:{oid}"))
}

/// The SQL of one replay window with the filter pushed down, in one statement with the bounds
/// (`$1` after, `$2` upto, then `$3` the project list if any, then one bind per kind pattern).
/// The bounds row is joined to the rows so both come from one snapshot; with no matching rows
/// the statement still returns the bounds (with a NULL seq). `None` when nothing can match.
struct WindowQuery {
    sql: String,
    projects: Option<Vec<String>>,
    kinds: Vec<String>,
}

impl WindowQuery {
    fn new(filter: &Filter) -> Option<WindowQuery> {
        let mut clauses = vec!["seq > $1".to_owned(), "seq <= $2".to_owned()];
        let mut next = 3;
        let projects = match &filter.projects {
            None => None,
            Some(projects) if projects.is_empty() => return None,
            Some(projects) => {
                clauses.push(format!("project_id = ANY(${next})"));
                next += 1;
                Some(projects.iter().cloned().collect::<Vec<_>>())
            }
        };
        let mut kinds = Vec::new();
        if !filter.all_types() {
            let patterns = filter.types.as_deref().unwrap_or_default();
            if patterns.is_empty() {
                return None;
            }
            let mut alternatives = Vec::new();
            for pattern in patterns {
                match pattern {
                    // starts_with, never LIKE: `_` is a LIKE wildcard (`pr_%` would match
                    // `project_created`).
                    TypePattern::Prefix(prefix) => {
                        alternatives.push(format!("starts_with(event_type, ${next})"));
                        kinds.push(prefix.clone());
                    }
                    TypePattern::Exact(kind) => {
                        alternatives.push(format!("event_type = ${next}"));
                        kinds.push(kind.clone());
                    }
                    TypePattern::Any => unreachable!("all_types() is false"),
                }
                next += 1;
            }
            clauses.push(format!("({})", alternatives.join(" OR ")));
        }
        let sql = format!(
            "SELECT b.epoch, b.head, b.floor, r.* FROM ({BOUNDS_SQL}) AS b \
             LEFT JOIN LATERAL (SELECT {ROW_COLUMNS} FROM change_log WHERE {} ORDER BY seq) AS r \
             ON true ORDER BY r.seq",
            clauses.join(" AND ")
        );
        Some(WindowQuery {
            sql,
            projects,
            kinds,
        })
    }
}

/// Connect options from `url`, with the application name set (visible in `pg_stat_activity`).
fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|error| {
            StoreError::fatal(format!("invalid Postgres URL {}: {error}", redact_url(url)))
        })?
        .application_name("changefeed"))
}

/// `url` with its password replaced by `***` (for messages and logs).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL we can take apart: show only the scheme.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(unparseable URL)".to_owned(),
        },
    }
}

fn parse_mark(key: &str, text: &str) -> Result<Seq, StoreError> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| StoreError::fatal(format!("changefeed_meta {key} is not a seq: {text:?}")))
        .and_then(|value| seq_from(key, value))
}

fn bounds_from(row: &PgRow) -> Result<LogBounds, StoreError> {
    let epoch: Option<String> = row.try_get("epoch")?;
    let head: Option<i64> = row.try_get("head")?;
    let floor: Option<String> = row.try_get("floor")?;
    let epoch = epoch.ok_or_else(|| StoreError::fatal("changefeed_meta has no epoch"))?;
    let epoch = Epoch::parse(&epoch).map_err(|_| {
        StoreError::fatal(format!(
            "changefeed_meta epoch is not 16 lowercase hex digits: {epoch:?}"
        ))
    })?;
    let head = head.ok_or_else(|| StoreError::fatal("changefeed_sequencer has no row"))?;
    Ok(LogBounds {
        epoch,
        head: seq_from("head", head)?,
        floor: parse_mark("floor", floor.as_deref().unwrap_or("0"))?,
    })
}

/// The rows of a statement that joins the bounds row to the rows it read (`LEFT JOIN LATERAL`,
/// so there is one row with a NULL seq when none matched): rows and bounds of one snapshot.
fn rows_with_bounds(rows: Vec<PgRow>) -> Result<Rows, StoreError> {
    let first = rows
        .first()
        .ok_or_else(|| StoreError::fatal("the bounds row is missing from a read"))?;
    let bounds = bounds_from(first)?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<Option<i64>, _>("seq")?.is_some() {
            events.push(row_from(row)?);
        }
    }
    Ok(Rows::new(events, bounds))
}

fn row_from(row: &PgRow) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        seq: seq_from("seq", row.try_get("seq")?)?,
        project_id: row.try_get("project_id")?,
        session_id: row.try_get("session_id")?,
        kind: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        // The column's CHECK casts every payload to json.
        payload_check: PayloadCheck::Valid,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(projects: Option<&[&str]>, types: Option<&[&str]>) -> Filter {
        Filter {
            projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
            types: types.map(|t| t.iter().map(|s| TypePattern::parse(s).unwrap()).collect()),
            sessions: None,
        }
    }

    #[test]
    fn released_migrations_are_unchanged() {
        crate::store::assert_released_migrations_unchanged(
            &MIGRATOR,
            &[
                (1, "e6a7e782ca95c490ccd89c033575515e17956c53035a06c4b17940d60fce7b6f6921301b8f2daba6bbb05211e699516a"),
                (2, "4905e4463f49c51a02c10c9f2cc579a38170f5e2bedc5c3eee7e646d29ae5bb7fbe8fdce11558531e52f5aab3e5f45a8"),
                (3, "809ae9183768e951c3ead9cf61596ce8a54814902c8beb5a016c49cc3cd4d4b9666b668005619d4416f3a19963e18826"),
            ],
        );
    }

    #[test]
    fn window_query_pushes_the_filter_down_without_like() {
        let query = WindowQuery::new(&filter(
            Some(&["a", "b"]),
            Some(&["pr_*", "session_created"]),
        ))
        .unwrap();
        assert!(
            query.sql.contains(
                "WHERE seq > $1 AND seq <= $2 AND project_id = ANY($3) \
                 AND (starts_with(event_type, $4) OR event_type = $5) ORDER BY seq"
            ),
            "{}",
            query.sql
        );
        assert!(!query.sql.to_ascii_uppercase().contains(" LIKE "));
        assert_eq!(query.projects.unwrap(), ["a", "b"]);
        assert_eq!(query.kinds, ["pr_", "session_created"]);
    }

    #[test]
    fn window_query_skips_the_kind_clause_for_all_types() {
        for types in [None, Some(&["*"][..]), Some(&["pr_*", "*"][..])] {
            let query = WindowQuery::new(&filter(None, types)).unwrap();
            assert!(!query.sql.contains("event_type ="), "{}", query.sql);
            assert!(!query.sql.contains("starts_with"), "{}", query.sql);
            assert!(query.kinds.is_empty());
        }
    }

    #[test]
    fn window_query_is_none_when_nothing_can_match() {
        assert!(WindowQuery::new(&filter(Some(&[]), None)).is_none());
        assert!(WindowQuery::new(&filter(None, Some(&[]))).is_none());
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/feed"),
            "postgres://app:***@db.example:5432/feed"
        );
        assert_eq!(
            redact_url("postgres://app@db.example/feed"),
            "postgres://app@db.example/feed"
        );
        assert_eq!(redact_url("postgres://app:s3cret@[::1"), "postgres://…");
    }
}
