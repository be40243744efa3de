//! The SQLite store: a database file in WAL mode, read through a small pool and written through
//! exactly one connection.
//!
//! - **Schema.** `migrations/sqlite/` (embedded at compile time, no database needed to build) creates
//!   the domain tables, `change_log` and its triggers (one per change kind) with
//!   `IF NOT EXISTS`, and keeps our own bookkeeping in `changefeed_meta` (`epoch`, `published`,
//!   `floor`), so it can run against a database whose tables another program owns.
//! - **Reads** (`bounds`, `window`, `rows_after`, `missing_projects`) use a pool of read-only
//!   (`query_only`) connections, one short transaction per call, each holding a shared turn
//!   of the [`checkpoint`] gate, so the store's own WAL checkpoints run between them and the
//!   WAL restarts however many replays run. Replay windows, `rows_after` and the bounds step
//!   SQLite themselves on the connection's locked handle ([`direct`]); windows do so on a
//!   blocking thread. Payload text is never parsed here; the encoder
//!   checks it only when the table has no `CHECK (json_valid(payload))`.
//! - **Rows of any storage class** (a `change_log` another program created may hold anything;
//!   [`schema`] checks only columns and keys) are read leniently and never fail to decode:
//!   `created_at` of any class goes to the core's timestamp codec as text (INTEGER and REAL
//!   unix times in decimal, a BLOB as UTF-8); a payload that is not TEXT is checked by the
//!   encoder like an unvouched one (NULL is the JSON `null`); a `project_id`, `session_id` or
//!   `event_type` that is not TEXT reads as no project (`""`, which no `project=` names), no
//!   session, and the empty kind (a degraded `type`): the replay query's `typeof(...) = 'text'`
//!   makes replay select exactly the rows live filtering does. What the encoder still cannot
//!   place gets the degraded form of `PROTOCOL.md` ("Degraded rows").
//! - **Writes** of our own (`mark_published`, `prune`, the demo writer and tests through
//!   [`SqliteStore::begin_write`]) go through one connection (`synchronous=FULL`) with
//!   `BEGIN IMMEDIATE`, so they queue in-process instead of fighting over the file lock.
//! - **Change signal.** Our own write transactions bump the generation on commit; commits by
//!   other processes are noticed by the [`monitor`] (file watch on the `-wal` file plus
//!   `PRAGMA data_version`, with a one-second poll as the safety net).
//!
//! - **Pruning by the owner** (attach): retention is the owner's business there, so the floor
//!   also follows the oldest remaining row ([`owner_pruned_floor`]): a cursor below a row the
//!   owner deleted from the old end gets the `pruned` reset, not a silent gap. Rows already
//!   gone when the epoch began (`base` in the bookkeeping) never count. The owner should prune
//!   only at or below `changefeed_meta`'s `published` value: a row deleted before the tailer
//!   published it is never delivered live (a resume below it still gets the reset).
//!
//! **Invariant (head):** the watermark of the store contract ([`crate::store`]) is the
//! `sqlite_sequence` value of `change_log`, never `MAX(seq)`. SQLite runs one write transaction
//! at a time and `sqlite_sequence` changes in the same transaction as the row it allocates, so
//! in any read snapshot every seq at or below it is committed, deleted or rolled back with it.
//!
//! **Invariant (epoch):** a seq that was published is never served again under the same epoch:
//! [`SqliteStore::open`] applies [`epoch_at_start`](super::epoch_at_start) in one write
//! transaction (a writer with `synchronous=NORMAL` can lose committed rows, whose seqs will then
//! be allocated again).

mod checkpoint;
mod direct;
mod identity;
mod locate;
mod meta_file;
mod monitor;
pub mod ownership;
pub mod schema;

use crate::store::{seq_from, to_sql};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use changefeed_core::{Epoch, EventRow, FetchRequest, Filter, PayloadCheck, Seq, TypePattern};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};
#[cfg(test)]
use sqlx::{Decode, TypeInfo, ValueRef};
use tokio::sync::watch;

use super::{
    bump, epoch_at_start, prunable_prefix, ChangeWatch, EpochDecision, LogBounds, PruneCandidate,
    Retention, Rows, Store, StoreError,
};

/// The embedded migrations (`migrations/sqlite/` at the workspace root).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The one table an attached database gets: `changefeed_meta`, exactly as the first migration
/// makes it (`CREATE TABLE IF NOT EXISTS`, `INSERT OR IGNORE`: an existing epoch is kept).
const META_TABLE_SQL: &str = include_str!("../../../migrations/sqlite/0001_changefeed_meta.sql");

/// The head alone, for bookkeeping kept outside the database (see [`BOUNDS_SQL`]).
const HEAD_SQL: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0)";

/// [`BOUNDS_SQL`] for a log its owner prunes (attach): also the epoch's base and the oldest
/// row, for [`owner_pruned_floor`].
const ATTACHED_BOUNDS_SQL: &str = "SELECT \
     (SELECT value FROM changefeed_meta WHERE key = 'epoch'), \
     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0), \
     (SELECT value FROM changefeed_meta WHERE key = 'floor'), \
     (SELECT value FROM changefeed_meta WHERE key = 'base'), \
     (SELECT MIN(seq) FROM change_log WHERE seq > 0)";

/// The head and the oldest row, for a read-only attach's bounds (see [`ATTACHED_BOUNDS_SQL`]).
const HEAD_AND_OLDEST_SQL: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0), \
     (SELECT MIN(seq) FROM change_log WHERE seq > 0)";

/// An epoch's base: the oldest row when the epoch begins, or the next seq when the log is
/// empty (see [`owner_pruned_floor`]). Rows an owner inserted with a seq of 0 or below are
/// never served (every read is `seq > after`), so "oldest" counts only seqs above 0.
const BASE_NOW_SQL: &str = "SELECT COALESCE((SELECT MIN(seq) FROM change_log WHERE seq > 0), \
     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0) + 1)";

/// The columns of an [`EventRow`], in the order [`direct`] reads them.
const ROW_COLUMNS: &str = "seq, project_id, session_id, event_type, payload, created_at";

/// Epoch, head and floor in one statement (so one consistent snapshot even outside a
/// transaction). Head is `sqlite_sequence`'s value, not `MAX(seq)`.
const BOUNDS_SQL: &str = "SELECT \
     (SELECT value FROM changefeed_meta WHERE key = 'epoch'), \
     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0), \
     (SELECT value FROM changefeed_meta WHERE key = 'floor')";

/// How to open a [`SqliteStore`]; [`Default`] is what [`SqliteStore::open`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteStoreOptions {
    /// Connections in the read pool.
    pub read_connections: u32,
    /// How long a statement waits for a lock held by another connection or process.
    pub busy_timeout: Duration,
    /// The safety-net poll of `PRAGMA data_version`, for commits the file watch did not report.
    pub poll_interval: Duration,
    /// How often the store checkpoints the WAL itself between its read transactions (see
    /// [`checkpoint`]); `None` leaves checkpoints to SQLite's automatic ones.
    pub checkpoint_interval: Option<Duration>,
}

impl Default for SqliteStoreOptions {
    fn default() -> Self {
        SqliteStoreOptions {
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            checkpoint_interval: Some(Duration::from_millis(100)),
        }
    }
}

/// A change log in a SQLite database file. A cheap [`Clone`] handle; the pools, the file watch
/// and the poll task stop when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    read: SqlitePool,
    /// Whether the table's `CHECK (json_valid(payload))` vouches for TEXT payloads.
    payload_check: PayloadCheck,
    write: SqlitePool,
    path: PathBuf,
    bookkeeping: Bookkeeping,
    /// Whether another program owns the log and may prune it (attach): the floor then also
    /// follows the oldest row ([`owner_pruned_floor`]).
    owner_prunes: bool,
    changes: watch::Sender<u64>,
    identity: Arc<identity::Identity>,
    /// Every read transaction holds a shared turn; the checkpointer holds it alone.
    gate: Arc<checkpoint::ReadGate>,
    checkpointer: Option<checkpoint::Checkpointer>,
    _monitor: monitor::ChangeMonitor,
}

/// Where changefeed keeps its own bookkeeping (epoch, published mark, floor).
#[derive(Debug)]
enum Bookkeeping {
    /// The `changefeed_meta` table of the database itself.
    Table,
    /// A sidecar file (read-only attach): its content, and a lock that keeps replacements in
    /// order.
    File {
        path: PathBuf,
        state: std::sync::Mutex<meta_file::MetaState>,
        writes: tokio::sync::Mutex<()>,
    },
}

/// How [`SqliteStore`] treats the database: whose it is, where the bookkeeping goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteMode {
    /// changefeed's own database: created if missing, migrated, WAL. Refused when it was not
    /// created by changefeed ([`ownership`]).
    Owned,
    /// Another program's database, served as it is: its `change_log` must pass
    /// [`schema::check_change_log`]; nothing is created but `changefeed_meta`; no migrations,
    /// no triggers, no journal-mode change.
    Attach,
    /// [`SqliteMode::Attach`] with the database opened read-only (`mode=ro`) and the bookkeeping
    /// in this sidecar file, replaced atomically.
    AttachReadOnly {
        /// The sidecar file (created if missing).
        meta_file: PathBuf,
    },
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or `sqlite:path`) with
    /// the default options: WAL, `foreign_keys=ON`, a 5 s busy timeout, four read connections and
    /// one write connection (`synchronous=FULL`). Runs the embedded migrations, then applies the
    /// start-up epoch rule (see the module docs). Refuses, changing nothing, a database that
    /// changefeed did not create ([`ownership`]; serve those with [`SqliteStore::attach`]).
    /// Must be called within a tokio runtime.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(url, SqliteStoreOptions::default()).await
    }

    /// [`SqliteStore::open`] with explicit options.
    pub async fn open_with(
        url: &str,
        options: SqliteStoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_in_mode(url, &SqliteMode::Owned, options).await
    }

    /// Serves the `change_log` of an existing database another program owns, as it is (see
    /// [`SqliteMode::Attach`]; with `meta_file`, [`SqliteMode::AttachReadOnly`]).
    pub async fn attach(url: &str, meta_file: Option<&Path>) -> Result<SqliteStore, StoreError> {
        let mode = match meta_file {
            None => SqliteMode::Attach,
            Some(path) => SqliteMode::AttachReadOnly {
                meta_file: path.to_path_buf(),
            },
        };
        SqliteStore::open_in_mode(url, &mode, SqliteStoreOptions::default()).await
    }

    /// Opens the database at `url` in `mode`.
    pub async fn open_in_mode(
        url: &str,
        mode: &SqliteMode,
        options: SqliteStoreOptions,
    ) -> Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::fatal(format!("invalid SQLite URL {url:?}: {error}")))?
            .foreign_keys(true)
            .busy_timeout(options.busy_timeout);
        let path = base.get_filename().to_path_buf();
        if is_in_memory(url, &path) {
            return Err(StoreError::fatal(format!(
                "SqliteStore needs a database file path (sqlite://path), not {url:?}: in-memory \
                 databases and file: URIs are not supported"
            )));
        }
        let read_only = matches!(mode, SqliteMode::AttachReadOnly { .. });
        let base = base.read_only(read_only);

        let write_options = match mode {
            SqliteMode::Owned => {
                // A change_log that cannot be served is named as such first (read-only).
                schema::check_file(&path)
                    .await?
                    .map_err(|error| StoreError::from(error).context(path.display()))?;
                // Before anything is created or a journal mode set: is it ours to migrate?
                if let Err(foreign) = check_owned_file(&path).await? {
                    return Err(StoreError::fatal(foreign.to_string()));
                }
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
            }
            SqliteMode::Attach | SqliteMode::AttachReadOnly { .. } => {
                if ownership::no_database_at(&path) {
                    return Err(StoreError::fatal(format!(
                        "there is no database at {} (--attach serves an existing database)",
                        path.display()
                    )));
                }
                // No journal mode: the owner's stays. synchronous is per connection.
                base.clone().synchronous(SqliteSynchronous::Full)
            }
        };
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(write_options.clone())
            .await?;
        let bookkeeping = match mode {
            SqliteMode::Owned => {
                // A change_log someone else created must be servable before anything touches
                // it (the migrations would fail on it with a less helpful message, or serve it
                // wrongly).
                let exists = schema::change_log_exists(&mut *write.acquire().await?).await?;
                if exists {
                    check_attached(&write, &path).await?;
                }
                MIGRATOR.run(&write).await.map_err(|error| {
                    StoreError::fatal(format!("migrating {}: {error}", path.display()))
                })?;
                apply_epoch_rule(&write).await?;
                Bookkeeping::Table
            }
            SqliteMode::Attach => {
                check_attached(&write, &path).await?;
                ensure_meta_table(&write, &path).await?;
                apply_epoch_rule(&write).await?;
                Bookkeeping::Table
            }
            SqliteMode::AttachReadOnly { meta_file } => {
                check_attached(&write, &path).await?;
                let state = open_meta_file(&write, &path, meta_file).await?;
                Bookkeeping::File {
                    path: meta_file.clone(),
                    state: std::sync::Mutex::new(state),
                    writes: tokio::sync::Mutex::new(()),
                }
            }
        };
        let payload_check = if schema::payload_is_checked(&mut *write.acquire().await?).await? {
            PayloadCheck::Valid
        } else {
            PayloadCheck::Unchecked
        };

        // Readers only read (an owned database is in WAL mode now, a persistent setting). No
        // log rows go through sqlx's row channel: replay windows, `rows_after`, `locate`'s
        // scans and the bounds step SQLite themselves ([`direct`]).
        let read_options = base.clone().pragma("query_only", "ON");
        let read = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(read_options.clone())
            .await?;
        let monitor_connection = SqliteConnection::connect_with(&read_options).await?;

        // With the bookkeeping in a sidecar file, the database holds no epoch to re-read.
        let opened_epoch = match &bookkeeping {
            Bookkeeping::Table => {
                Some(bounds_from(&sqlx::query(BOUNDS_SQL).fetch_one(&read).await?)?.epoch)
            }
            Bookkeeping::File { .. } => None,
        };
        let identity = identity::start(
            &path,
            opened_epoch,
            read_options.clone(),
            options.poll_interval,
        )
        .map_err(|error| StoreError::fatal(format!("cannot stat {}: {error}", path.display())))?;
        let gate = Arc::new(checkpoint::ReadGate::default());
        // A read-only database cannot be checkpointed by us; its owner's writers do it.
        let checkpointer = match (options.checkpoint_interval, read_only) {
            (Some(interval), false) => Some(checkpoint::start(
                &path,
                SqliteConnection::connect_with(&write_options).await?,
                gate.clone(),
                identity.clone(),
                interval,
            )),
            _ => None,
        };
        let (changes, _) = watch::channel(0u64);
        let monitor = monitor::start(
            &path,
            monitor_connection,
            changes.clone(),
            options.poll_interval,
        )
        .await;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                read,
                payload_check,
                write,
                path,
                bookkeeping,
                owner_prunes: !matches!(mode, SqliteMode::Owned),
                changes,
                identity,
                gate,
                checkpointer,
                _monitor: monitor,
            }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE`) on the single write connection, for domain
    /// writes (demo writer, tests). Waits while another of our writes holds the connection.
    /// [`WriteTx::commit`] wakes every [`ChangeWatch`] at once; dropping the transaction rolls
    /// it back.
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx {
            transaction: begin_immediate(&self.inner.write).await?,
            changes: self.inner.changes.clone(),
        })
    }

    /// Runs `sql` (one or more `;`-separated statements, no parameters) in one write transaction
    /// and returns the rows affected. For tests and scripts; prefer [`SqliteStore::begin_write`]
    /// with bound parameters for anything built from input.
    pub async fn execute_write(&self, sql: &str) -> Result<u64, StoreError> {
        let mut transaction = self.begin_write().await?;
        let affected = sqlx::raw_sql(sql)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        Ok(affected)
    }

    /// Wakes every [`ChangeWatch`] now, for a commit made some other way than
    /// [`SqliteStore::begin_write`] (the monitor would notice it within milliseconds anyway).
    pub fn notify_local_write(&self) {
        bump(&self.inner.changes);
    }

    /// Why the file being served is not the database that was opened any more (deleted,
    /// replaced, another database copied over it), once the identity watch noticed; from then
    /// on every read fails with a fatal error saying so.
    pub fn replaced(&self) -> Option<String> {
        self.inner.identity.replaced()
    }

    /// Resolves once [`SqliteStore::replaced`] has an answer.
    pub async fn wait_replaced(&self) {
        self.inner.identity.wait_replaced().await;
    }

    /// Fails when the database was found replaced (nothing of either file is served then).
    fn check_identity(&self) -> Result<(), StoreError> {
        match self.inner.identity.replaced() {
            None => Ok(()),
            // `/healthz` reports "database_replaced" for errors saying "replaced".
            Some(why) => Err(StoreError::fatal(format!(
                "the database was replaced under the running server ({why}); restart the server \
                 to serve the new database"
            ))),
        }
    }

    /// A read's result, with a failure explained as the database's replacement when the file
    /// is not the one opened any more (see [`identity::Identity::look_now`]).
    fn explained<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(error) if self.inner.identity.look_now().is_some() => {
                Err(self.check_identity().err().unwrap_or(error))
            }
            other => other,
        }
    }

    /// The published mark: the highest seq recorded by [`Store::mark_published`].
    pub async fn published(&self) -> Result<Seq, StoreError> {
        if let Bookkeeping::File { state, .. } = &self.inner.bookkeeping {
            return Ok(lock(state).published());
        }
        let mut connection = self.inner.read.acquire().await?;
        read_mark(&mut connection, "published").await
    }

    /// Closes both pools, waiting for connections in use to come back (clean shutdown). After
    /// the readers are gone, the WAL is checkpointed into the database file and truncated
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`), so a stopped server leaves an empty `-wal`; another
    /// process still reading the database keeps its frames (the checkpoint then stops short and
    /// says so in the log, nothing is lost).
    pub async fn close(&self) {
        if let Some(checkpointer) = &self.inner.checkpointer {
            checkpointer.stop().await;
        }
        self.inner.read.close().await;
        if self.replaced().is_some() {
            // Checkpointing would write the old database's pages into whatever file is there.
            self.inner.write.close().await;
            return;
        }
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.inner.write)
            .await
        {
            Ok((0, _, _)) => tracing::debug!("WAL checkpointed and truncated"),
            Ok((_, log, checkpointed)) => tracing::info!(
                wal_frames = log,
                checkpointed,
                "another connection is using the database; the WAL was not truncated"
            ),
            Err(error) => tracing::warn!(%error, "checkpointing the WAL at shutdown failed"),
        }
        self.inner.write.close().await;
    }
}

/// A write transaction on the store's single write connection (see
/// [`SqliteStore::begin_write`]). Dereferences to the connection, so
/// `sqlx::query(..).execute(&mut *tx)` works.
#[derive(Debug)]
pub struct WriteTx {
    transaction: Transaction<'static, Sqlite>,
    changes: watch::Sender<u64>,
}

impl WriteTx {
    /// Commits, then wakes every [`ChangeWatch`].
    pub async fn commit(self) -> Result<(), StoreError> {
        self.transaction.commit().await?;
        bump(&self.changes);
        Ok(())
    }

    /// Rolls back (dropping the transaction does too, without waiting).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.transaction.rollback().await?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.transaction
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.transaction
    }
}

impl Inner {
    /// Epoch, head and floor in one snapshot of `connection` (read through [`direct`]).
    fn bounds_in(&self, connection: &rusqlite::Connection) -> Result<LogBounds, StoreError> {
        let query =
            |sql: &str, columns: usize| -> Result<Vec<rusqlite::types::Value>, StoreError> {
                connection
                    .query_row(sql, [], |row| {
                        (0..columns).map(|index| row.get(index)).collect()
                    })
                    .map_err(direct::store_error)
            };
        match &self.bookkeeping {
            Bookkeeping::Table if !self.owner_prunes => {
                let values = query(BOUNDS_SQL, 3)?;
                bounds_from_values(text(&values[0])?, integer(&values[1])?, text(&values[2])?)
            }
            Bookkeeping::Table => {
                let values = query(ATTACHED_BOUNDS_SQL, 5)?;
                let mut bounds =
                    bounds_from_values(text(&values[0])?, integer(&values[1])?, text(&values[2])?)?;
                let base = parse_mark("base", text(&values[3])?.as_deref().unwrap_or("0"))?;
                let pruned = owner_pruned_floor(base, oldest_seq(&values[4])?, bounds.head);
                bounds.floor = bounds.floor.max(pruned).min(bounds.head);
                Ok(bounds)
            }
            Bookkeeping::File { path, state, .. } => {
                let values = query(HEAD_AND_OLDEST_SQL, 2)?;
                let head = seq_from("head", integer(&values[0])?)?;
                let state = lock(state).clone();
                let pruned = owner_pruned_floor(state.base(), oldest_seq(&values[1])?, head);
                Ok(LogBounds {
                    epoch: state.epoch(path)?,
                    head,
                    floor: state.floor().max(pruned).min(head),
                })
            }
        }
    }
}

/// A bookkeeping value that must be TEXT or NULL.
fn text(value: &rusqlite::types::Value) -> Result<Option<String>, StoreError> {
    match value {
        rusqlite::types::Value::Null => Ok(None),
        rusqlite::types::Value::Text(text) => Ok(Some(text.clone())),
        other => Err(StoreError::fatal(format!(
            "changefeed_meta holds a {:?}, not text",
            other.data_type()
        ))),
    }
}

/// A head that must be an INTEGER.
fn integer(value: &rusqlite::types::Value) -> Result<i64, StoreError> {
    match value {
        rusqlite::types::Value::Integer(number) => Ok(*number),
        other => Err(StoreError::fatal(format!(
            "the head is a {:?}, not an integer",
            other.data_type()
        ))),
    }
}

/// The oldest row's seq (NULL: the log is empty).
fn oldest_seq(value: &rusqlite::types::Value) -> Result<Option<Seq>, StoreError> {
    match value {
        rusqlite::types::Value::Null => Ok(None),
        other => integer(other)
            .and_then(|seq| seq_from("oldest seq", seq))
            .map(Some),
    }
}

/// The floor of a log whose owner prunes it (attach), from what is left of it: every row below
/// the oldest remaining one (every row up to head when none remains) was pruned, unless it was
/// already gone when the epoch began (`base`, the oldest row then: no client of this epoch saw
/// it, so a read from the start of such a log is no reset). Deletions above the oldest
/// remaining row (holes) are not pruning and do not move it.
fn owner_pruned_floor(base: Seq, oldest: Option<Seq>, head: Seq) -> Seq {
    let gone_through = oldest.map_or(head, Seq::prev);
    if gone_through < base {
        Seq::ZERO
    } else {
        gone_through
    }
}

/// The sidecar bookkeeping, also after a panic elsewhere (plain data, always consistent).
fn lock(
    state: &std::sync::Mutex<meta_file::MetaState>,
) -> std::sync::MutexGuard<'_, meta_file::MetaState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reads behind [`Store`]'s methods, which check the database's identity before and after.
impl SqliteStore {
    async fn read_bounds(&self) -> Result<LogBounds, StoreError> {
        let _turn = self.inner.gate.enter().await;
        let mut connection = self.inner.read.acquire().await?;
        let mut handle = connection.lock_handle().await?;
        direct::with_connection(&mut handle, |connection| self.inner.bounds_in(connection))
    }

    /// Stepped on a blocking thread, not on the runtime's workers: a window is a millisecond or
    /// more of CPU, and live streams, the tailer and writers in this process must not queue
    /// behind replays. The read runs to its end even when the caller goes away, so the
    /// connection always goes back to the pool outside any transaction.
    async fn read_window(
        &self,
        filter: &Filter,
        range: FetchRequest,
        spare: Vec<EventRow>,
    ) -> Result<Rows, StoreError> {
        let query = WindowQuery::new(ROW_COLUMNS, filter, range);
        let span = range.upto.0.saturating_sub(range.after.0);
        let capacity = usize::try_from(span.min(4096)).unwrap_or(0);
        let inner = Arc::clone(&self.inner);
        self.blocking_read(move |connection| {
            let rows = match &query {
                None => Vec::new(),
                Some(query) => direct::rows(
                    connection,
                    &query.sql,
                    (to_sql(range.after), to_sql(range.upto)),
                    &query.binds,
                    inner.payload_check,
                    capacity,
                    spare,
                )?,
            };
            Ok(Rows::new(rows, inner.bounds_in(connection)?))
        })
        .await
    }

    /// One backwards index scan instead of the default walk of replay windows (see
    /// [`locate`]), in one read transaction stepped directly, on a blocking thread like a
    /// window: a filter that matches few rows scans far.
    async fn read_locate(
        &self,
        filter: &Filter,
        request: changefeed_core::LocateRequest,
    ) -> Result<changefeed_core::Located, StoreError> {
        let inner = Arc::clone(&self.inner);
        let filter = filter.clone();
        self.blocking_read(move |connection| {
            let bounds = inner.bounds_in(connection)?;
            locate::locate_in(connection, &bounds, &filter, request)
        })
        .await
    }

    /// `read` in one read transaction on a pooled connection, on a blocking thread (see
    /// [`Self::read_window`]).
    async fn blocking_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let read = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Handle::current();
            let _turn = runtime.block_on(inner.gate.enter());
            let mut connection = runtime.block_on(inner.read.acquire())?;
            let mut handle = runtime.block_on(connection.lock_handle())?;
            direct::in_snapshot(&mut handle, read)
        });
        match read.await {
            Ok(value) => value,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(StoreError::transient(format!(
                "store read cancelled: {error}"
            ))),
        }
    }

    async fn read_rows_after(&self, after: Seq, limit: usize) -> Result<Rows, StoreError> {
        let sql =
            format!("SELECT {ROW_COLUMNS} FROM change_log WHERE seq > ? ORDER BY seq LIMIT ?");
        let _turn = self.inner.gate.enter().await;
        let mut connection = self.inner.read.acquire().await?;
        let mut handle = connection.lock_handle().await?;
        let (rows, bounds) = direct::in_snapshot(&mut handle, |connection| {
            let rows = direct::rows(
                connection,
                &sql,
                (to_sql(after), i64::try_from(limit).unwrap_or(i64::MAX)),
                &[],
                self.inner.payload_check,
                limit.min(4096),
                Vec::new(),
            )?;
            Ok((rows, self.inner.bounds_in(connection)?))
        })?;
        Ok(Rows::new(rows, bounds))
    }
}

impl Store for SqliteStore {
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        self.check_identity()?;
        self.explained(self.read_bounds().await)
    }

    async fn window(&self, filter: &Filter, range: FetchRequest) -> Result<Rows, StoreError> {
        self.window_reusing(filter, range, Vec::new()).await
    }

    async fn window_reusing(
        &self,
        filter: &Filter,
        range: FetchRequest,
        spare: Vec<EventRow>,
    ) -> Result<Rows, StoreError> {
        self.check_identity()?;
        self.explained(self.read_window(filter, range, spare).await)
    }

    async fn locate(
        &self,
        filter: &Filter,
        request: changefeed_core::LocateRequest,
    ) -> Result<changefeed_core::Located, StoreError> {
        self.check_identity()?;
        self.explained(self.read_locate(filter, request).await)
    }

    async fn rows_after(&self, after: Seq, limit: usize) -> Result<Rows, StoreError> {
        self.check_identity()?;
        self.explained(self.read_rows_after(after, limit).await)
    }

    async fn missing_projects(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let wanted: Vec<&String> = {
            let mut seen = BTreeSet::new();
            ids.iter().filter(|id| seen.insert(id.as_str())).collect()
        };
        let mut found = BTreeSet::new();
        for chunk in wanted.chunks(500) {
            let sql = format!(
                "SELECT id FROM projects WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut statement = sqlx::query_scalar::<_, String>(&sql);
            for id in chunk {
                statement = statement.bind(id.as_str());
            }
            found.extend(statement.fetch_all(&self.inner.read).await?);
        }
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
        if let Bookkeeping::File {
            path,
            state,
            writes,
        } = &self.inner.bookkeeping
        {
            // One replacement at a time, in order; the in-memory copy follows the file.
            let _turn = writes.lock().await;
            let mut next = lock(state).clone();
            if seq.0 <= next.published {
                return Ok(());
            }
            next.published = seq.0;
            let (file, written) = (path.clone(), next.clone());
            tokio::task::spawn_blocking(move || meta_file::write(&file, &written))
                .await
                .map_err(|error| {
                    StoreError::fatal(format!("meta file writer failed: {error}"))
                })??;
            *lock(state) = next;
            return Ok(());
        }
        let mut transaction = begin_immediate(&self.inner.write).await?;
        sqlx::query(
            "UPDATE changefeed_meta SET value = CAST(?1 AS TEXT) \
             WHERE key = 'published' AND CAST(value AS INTEGER) < ?1",
        )
        .bind(to_sql(seq))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn prune(&self, retention: Retention, batch: usize) -> Result<u64, StoreError> {
        if batch == 0 || retention.keeps_everything() {
            return Ok(0);
        }
        if matches!(self.inner.bookkeeping, Bookkeeping::File { .. }) {
            return Err(StoreError::fatal(
                "the database is attached read-only (--meta-file): retention is its owner's",
            ));
        }
        // The newest row beyond the newest `rows` is the (rows+1)-th newest. Finding it steps
        // over `rows` index entries, so it is read on a read connection, outside the write lock:
        // rows appended meanwhile only push more rows beyond the newest `rows`.
        let beyond_rows: Option<i64> = match retention.rows {
            None => None,
            Some(keep) => {
                sqlx::query_scalar("SELECT seq FROM change_log ORDER BY seq DESC LIMIT 1 OFFSET ?")
                    .bind(i64::try_from(keep).unwrap_or(i64::MAX))
                    .fetch_optional(&self.inner.read)
                    .await?
            }
        };
        let beyond_rows = beyond_rows.map(|seq| seq_from("seq", seq)).transpose()?;
        // One short write transaction touching at most `batch` rows.
        let mut transaction = begin_immediate(&self.inner.write).await?;
        let published = read_mark(&mut transaction, "published").await?;
        // julianday() reads both our RFC 3339 text and SQLite's 'YYYY-MM-DD HH:MM:SS'; text it
        // cannot read is never due by age.
        let age_modifier = retention.days.map(|days| format!("-{days} days"));
        let oldest: Vec<(i64, bool)> = sqlx::query_as(
            "SELECT seq, COALESCE(julianday(created_at) < julianday('now', ?1), 0) \
             FROM change_log ORDER BY seq LIMIT ?2",
        )
        .bind(age_modifier)
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .fetch_all(&mut *transaction)
        .await?;
        let candidates = oldest
            .into_iter()
            .map(|(seq, older_than_days)| {
                Ok(PruneCandidate {
                    seq: seq_from("seq", seq)?,
                    older_than_days,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let Some(last) = prunable_prefix(candidates, published, beyond_rows) else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM change_log WHERE seq <= ?")
            .bind(to_sql(last))
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE changefeed_meta SET value = CAST(?1 AS TEXT) \
             WHERE key = 'floor' AND CAST(value AS INTEGER) < ?1",
        )
        .bind(to_sql(last))
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(deleted)
    }
}

/// Reads one of our marks (`published`, `floor`) from `changefeed_meta`.
async fn read_mark(connection: &mut SqliteConnection, key: &str) -> Result<Seq, StoreError> {
    let text: String = sqlx::query_scalar("SELECT value FROM changefeed_meta WHERE key = ?")
        .bind(key)
        .fetch_one(connection)
        .await?;
    parse_mark(key, &text)
}

/// Applies [`epoch_at_start`] in one write transaction: on rotation, a new random epoch, the
/// published mark reset to head and the floor capped at it.
async fn apply_epoch_rule(write: &SqlitePool) -> Result<(), StoreError> {
    let mut transaction = begin_immediate(write).await?;
    let bounds = bounds_from(&sqlx::query(BOUNDS_SQL).fetch_one(&mut *transaction).await?)?;
    let published = read_mark(&mut transaction, "published").await?;
    let EpochDecision::Rotate {
        published: new_published,
        floor: new_floor,
    } = epoch_at_start(bounds.head, bounds.floor, published)
    else {
        transaction.rollback().await?;
        return Ok(());
    };
    sqlx::query("UPDATE changefeed_meta SET value = lower(hex(randomblob(8))) WHERE key = 'epoch'")
        .execute(&mut *transaction)
        .await?;
    for (key, value) in [("published", new_published), ("floor", new_floor)] {
        sqlx::query("UPDATE changefeed_meta SET value = CAST(?1 AS TEXT) WHERE key = ?2")
            .bind(to_sql(value))
            .bind(key)
            .execute(&mut *transaction)
            .await?;
    }
    // A new epoch begins with what is in the log now (only attached databases keep a base).
    sqlx::query(&format!(
        "UPDATE changefeed_meta SET value = CAST(({BASE_NOW_SQL}) AS TEXT) WHERE key = 'base'"
    ))
    .execute(&mut *transaction)
    .await?;
    let epoch: String = sqlx::query_scalar("SELECT value FROM changefeed_meta WHERE key = 'epoch'")
        .fetch_one(&mut *transaction)
        .await?;
    transaction.commit().await?;
    tracing::warn!(
        head = bounds.head.0,
        published = published.0,
        old_epoch = %bounds.epoch,
        new_epoch = %epoch,
        "the log is behind the published mark (committed rows were lost); rotated the epoch"
    );
    Ok(())
}

/// The ownership check of [`ownership`] for a database file, before default `serve` opens it
/// for writing. `Ok(Err(..))` names what makes the database another program's.
pub async fn check_owned(url: &str) -> Result<Result<(), ownership::ForeignDatabase>, StoreError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| StoreError::fatal(format!("invalid SQLite URL {url:?}: {error}")))?;
    check_owned_file(options.get_filename()).await
}

async fn check_owned_file(
    path: &Path,
) -> Result<Result<(), ownership::ForeignDatabase>, StoreError> {
    ownership::check_owned(path, &MIGRATOR)
        .await
        .map_err(|error| StoreError::from(error).context(path.display()))
}

/// An attached database's `change_log` must be servable as it is.
async fn check_attached(write: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let mut connection = write.acquire().await?;
    schema::check_change_log(&mut connection)
        .await?
        .map_err(|error| StoreError::from(error).context(path.display()))
}

/// Creates `changefeed_meta` in an attached database, unless it is there with our columns.
async fn ensure_meta_table(write: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let mut transaction = begin_immediate(write).await?;
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info('changefeed_meta')")
            .fetch_all(&mut *transaction)
            .await?;
    if !columns.is_empty() && columns != ["key", "value"] {
        return Err(StoreError::fatal(format!(
            "{}: table changefeed_meta has columns ({}), not changefeed's (key, value); \
             it belongs to someone else",
            path.display(),
            columns.join(", ")
        )));
    }
    // Executor::execute, not raw_sql: raw_sql's future is not provably Send (open must be).
    sqlx::Executor::execute(&mut *transaction, META_TABLE_SQL).await?;
    // The epoch's base (see `owner_pruned_floor`), also for a table from before it was kept.
    sqlx::query(&format!(
        "INSERT OR IGNORE INTO changefeed_meta (key, value) VALUES ('base', CAST(({BASE_NOW_SQL}) AS TEXT))"
    ))
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Reads (or creates) the sidecar bookkeeping of a read-only attach and applies
/// [`epoch_at_start`] to it; bookkeeping written for another database file gets a new epoch.
async fn open_meta_file(
    read: &SqlitePool,
    database: &Path,
    meta: &Path,
) -> Result<meta_file::MetaState, StoreError> {
    let head: i64 = sqlx::query_scalar(HEAD_SQL).fetch_one(read).await?;
    let head = seq_from("head", head)?;
    let base_now: i64 = sqlx::query_scalar(BASE_NOW_SQL).fetch_one(read).await?;
    let base_now = Some(seq_from("base", base_now)?.0);
    let database_name = database.display().to_string();
    let existing = meta_file::read(meta)?;
    let state = match existing.clone() {
        None => meta_file::MetaState {
            epoch: fresh_epoch(read).await?,
            published: 0,
            floor: 0,
            database: database_name.clone(),
            base: base_now,
        },
        Some(state) if state.database != database_name => {
            tracing::warn!(
                meta_file = %meta.display(),
                recorded = %state.database,
                database = %database_name,
                "the meta file was written for another database; starting a new epoch"
            );
            meta_file::MetaState {
                epoch: fresh_epoch(read).await?,
                published: head.0,
                floor: 0,
                database: database_name.clone(),
                base: base_now,
            }
        }
        Some(state) => match epoch_at_start(head, state.floor(), state.published()) {
            // A file from before the base was kept gets today's.
            EpochDecision::Keep => meta_file::MetaState {
                base: state.base.or(base_now),
                ..state
            },
            EpochDecision::Rotate { published, floor } => {
                let epoch = fresh_epoch(read).await?;
                tracing::warn!(
                    head = head.0,
                    published = state.published,
                    old_epoch = %state.epoch,
                    new_epoch = %epoch,
                    "the log is behind the published mark (committed rows were lost); rotated the epoch"
                );
                meta_file::MetaState {
                    epoch,
                    published: published.0,
                    floor: floor.0,
                    database: database_name.clone(),
                    base: base_now,
                }
            }
        },
    };
    state.epoch(meta)?;
    if existing.as_ref() != Some(&state) {
        let (meta, written) = (meta.to_path_buf(), state.clone());
        tokio::task::spawn_blocking(move || meta_file::write(&meta, &written))
            .await
            .map_err(|error| StoreError::fatal(format!("meta file writer failed: {error}")))??;
    }
    Ok(state)
}

/// A new random epoch, from SQLite (works on a read-only connection).
async fn fresh_epoch(read: &SqlitePool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT lower(hex(randomblob(8)))")
        .fetch_one(read)
        .await
}

async fn begin_immediate(write: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    Ok(write.begin_with("BEGIN IMMEDIATE").await?)
}

/// The SQL of one replay window with the filter pushed down, and the binds after `after` and
/// `upto`; `None` when nothing can match.
struct WindowQuery {
    sql: String,
    binds: Vec<String>,
}

impl WindowQuery {
    fn new(columns: &str, filter: &Filter, range: FetchRequest) -> Option<WindowQuery> {
        if range.upto <= range.after {
            return None;
        }
        let mut sql = format!("SELECT {columns} FROM change_log WHERE seq > ? AND seq <= ?");
        let mut binds = Vec::new();
        if let Some(projects) = &filter.projects {
            if projects.is_empty() {
                return None;
            }
            // With the project set as an IN list, SQLite reads (project_id, seq) index ranges.
            // Only TEXT ids are ids (see `direct`); the check reads the index entry.
            sql.push_str(&format!(
                " AND project_id IN ({}) AND typeof(project_id) = 'text'",
                placeholders(projects.len())
            ));
            binds.extend(projects.iter().cloned());
        }
        push_kind_filter(filter, &mut sql, &mut binds)?;
        sql.push_str(" ORDER BY seq");
        Some(WindowQuery { sql, binds })
    }
}

/// Appends the filter's kinds as a pushed-down clause (`event_type = ?` for an exact kind,
/// `GLOB` for a prefix pattern) and their binds; `None` when no kind can match.
fn push_kind_filter(filter: &Filter, sql: &mut String, binds: &mut Vec<String>) -> Option<()> {
    if filter.all_types() {
        return Some(());
    }
    let patterns = filter.types.as_deref().unwrap_or_default();
    if patterns.is_empty() {
        return None;
    }
    let clauses: Vec<&str> = patterns
        .iter()
        .map(|pattern| match pattern {
            TypePattern::Exact(_) => "event_type = ?",
            // GLOB, never LIKE: `_` is a LIKE wildcard (`pr_%` matches project_created).
            _ => "event_type GLOB ?",
        })
        .collect();
    sql.push_str(&format!(
        " AND typeof(event_type) = 'text' AND ({})",
        clauses.join(" OR ")
    ));
    binds.extend(patterns.iter().map(|pattern| match pattern {
        TypePattern::Exact(kind) => kind.clone(),
        other => other.glob(),
    }));
    Some(())
}

fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

/// Our own bookkeeping: a value that is not a seq means `changefeed_meta` is corrupt.
fn parse_mark(key: &str, text: &str) -> Result<Seq, StoreError> {
    text.trim()
        .parse::<u64>()
        .map(Seq)
        .map_err(|_| StoreError::fatal(format!("changefeed_meta {key} is not a seq: {text:?}")))
}

fn bounds_from(row: &SqliteRow) -> Result<LogBounds, StoreError> {
    bounds_from_values(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)
}

/// The bounds of [`BOUNDS_SQL`]'s three values.
fn bounds_from_values(
    epoch: Option<String>,
    head: i64,
    floor: Option<String>,
) -> Result<LogBounds, StoreError> {
    let epoch = epoch.ok_or_else(|| StoreError::fatal("changefeed_meta has no epoch"))?;
    let epoch = Epoch::parse(&epoch).map_err(|_| {
        StoreError::fatal(format!(
            "changefeed_meta epoch is not 16 lowercase hex digits: {epoch:?}"
        ))
    })?;
    Ok(LogBounds {
        epoch,
        head: seq_from("head", head)?,
        floor: parse_mark("floor", floor.as_deref().unwrap_or("0"))?,
    })
}

/// A row of any storage classes as an [`EventRow`], read through sqlx: the tests' oracle for
/// [`direct`], which reads replay windows and `rows_after` (never fails on a value: see
/// [`column_text`] for how each class reads, and the module docs for what each column becomes
/// when it is not TEXT).
#[cfg(test)]
fn row_from(row: &SqliteRow, payload_check: PayloadCheck) -> Result<EventRow, StoreError> {
    let seq = seq_from("seq", row.try_get(0)?)?;
    let at_seq = |error: sqlx::Error| StoreError {
        seq: Some(seq),
        ..StoreError::from(error)
    };
    let column = |index| column_text(row, index).map_err(at_seq);
    // Ids and kinds that are not TEXT are compared by no filter (the replay query requires
    // `typeof(...) = 'text'` too), so replay and live agree: no project, no session, no kind.
    let (project_class, project_id) = column(1)?;
    let (session_class, session_id) = column(2)?;
    let (kind_class, kind) = column(3)?;
    let (payload_class, payload) = column(4)?;
    let (_, created_at) = column(5)?;
    let text = StorageClass::Text;
    Ok(EventRow {
        seq,
        project_id: if project_class == text {
            project_id
        } else {
            String::new()
        },
        session_id: (session_class == text).then_some(session_id),
        kind: if kind_class == text {
            kind
        } else {
            String::new()
        },
        payload: if payload_class == StorageClass::Null {
            "null".to_owned()
        } else {
            payload
        },
        payload_check: if payload_class == text {
            payload_check
        } else {
            PayloadCheck::Unchecked
        },
        created_at,
    })
}

/// Text bytes as a `String`, invalid UTF-8 sequences replaced by U+FFFD (checked the fast way
/// first: valid text is the rule).
fn utf8_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// SQLite's storage classes (what `typeof()` answers), for the tests' sqlx oracle.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageClass {
    Null,
    Integer,
    Real,
    Text,
    Blob,
}

/// A column's storage class and its value as text: INTEGER in decimal, REAL in decimal without
/// an exponent (so the timestamp codec reads unix times stored as REAL), TEXT and BLOB as
/// UTF-8 (invalid sequences replaced by U+FFFD), NULL as the empty string. The tests' sqlx
/// oracle for the direct reader.
#[cfg(test)]
fn column_text(row: &SqliteRow, index: usize) -> Result<(StorageClass, String), sqlx::Error> {
    let value = row.try_get_raw(index)?;
    if value.is_null() {
        return Ok((StorageClass::Null, String::new()));
    }
    let decode_error = |source| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source,
    };
    let class = match value.type_info().name() {
        "INTEGER" => StorageClass::Integer,
        "REAL" => StorageClass::Real,
        "TEXT" => StorageClass::Text,
        _ => StorageClass::Blob,
    };
    let text = match class {
        StorageClass::Integer => <i64 as Decode<Sqlite>>::decode(value)
            .map_err(decode_error)?
            .to_string(),
        StorageClass::Real => <f64 as Decode<Sqlite>>::decode(value)
            .map_err(decode_error)?
            .to_string(),
        _ => utf8_text(<&[u8] as Decode<Sqlite>>::decode(value).map_err(decode_error)?),
    };
    Ok((class, text))
}

fn is_in_memory(url: &str, path: &Path) -> bool {
    let name = path.to_string_lossy();
    url.contains(":memory:")
        || url.contains("mode=memory")
        || name.is_empty()
        || name == ":memory:"
        || name.starts_with("file:")
}

/// Compile-time check: opening a store is a `Send` future in every mode (callers spawn it, and a
/// closure or `raw_sql` held across an `.await` silently breaks that for every caller).
#[cfg(test)]
#[allow(dead_code)]
fn open_futures_are_send(url: &str, mode: &SqliteMode, path: &Path) {
    fn is_send<T: Send>(_: T) {}
    is_send(SqliteStore::open_in_mode(
        url,
        mode,
        SqliteStoreOptions::default(),
    ));
    is_send(SqliteStore::attach(url, Some(path)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(after: u64, upto: u64) -> FetchRequest {
        let (after, upto) = (Seq(after), Seq(upto));
        FetchRequest { after, upto }
    }

    #[test]
    fn released_migrations_are_unchanged() {
        crate::store::assert_released_migrations_unchanged(
            &MIGRATOR,
            &[
                (1, "5488f3ef249162fc7e865ccfacbd355183543ff9566c21591f1fa0e171d51fef6b301fb4fb91debeb76d3e182ef4b7ed"),
                (2, "fdb5a404f9b1779dd59939d573928b3c1c51813f7754b1a1b924515de6a6919f7d9b173f619518992bb0ebfb37a8ecb8"),
                (3, "c4ccbdcd8959178004e0d8070941f3607c436f0c5df8431659c940b28dc9c15ab8ad6308f9d83f3707714d25d42acee5"),
            ],
        );
    }

    #[test]
    fn the_owner_pruned_floor_counts_only_rows_gone_since_the_epoch_began() {
        let floor = |base, oldest: Option<u64>, head| {
            owner_pruned_floor(Seq(base), oldest.map(Seq), Seq(head))
        };
        // Nothing pruned: the oldest row is the base (or older rows were gone before it).
        assert_eq!(floor(1, Some(1), 9), Seq(0));
        assert_eq!(floor(4, Some(4), 9), Seq(0));
        // The owner pruned from the base up: everything below the oldest remaining row.
        assert_eq!(floor(4, Some(5), 9), Seq(4));
        assert_eq!(floor(1, Some(7), 9), Seq(6));
        // An emptied log: everything up to head; an empty log that was empty at the start: none.
        assert_eq!(floor(1, None, 9), Seq(9));
        assert_eq!(floor(10, None, 9), Seq(0));
        assert_eq!(floor(10, None, 10), Seq(10));
    }

    /// The filter of a query string, as the endpoint parses it.
    fn query(text: &str) -> Filter {
        changefeed_core::EventsQuery::parse(Some(text))
            .unwrap()
            .filter
    }

    #[test]
    fn window_query_pushes_the_filter_down() {
        let query = WindowQuery::new(
            ROW_COLUMNS,
            &query("project=a&project=b&types=pr_*,session_created"),
            range(1, 9),
        )
        .unwrap();
        assert_eq!(
            query.sql,
            "SELECT seq, project_id, session_id, event_type, payload, created_at FROM change_log \
             WHERE seq > ? AND seq <= ? AND project_id IN (?, ?) AND typeof(project_id) = 'text' \
             AND typeof(event_type) = 'text' AND (event_type GLOB ? OR event_type = ?) ORDER BY seq"
        );
        assert_eq!(query.binds, ["a", "b", "pr_*", "session_created"]);
    }

    #[test]
    fn window_query_skips_the_kind_clause_for_all_types() {
        for text in ["", "types=*", "types=pr_*,*"] {
            let query = WindowQuery::new(ROW_COLUMNS, &query(text), range(0, 5)).unwrap();
            let clauses = query.sql.split(" WHERE ").nth(1).unwrap();
            assert!(!clauses.contains("event_type"), "{}", query.sql);
            assert!(query.binds.is_empty());
        }
    }

    #[test]
    fn window_query_is_none_when_nothing_can_match() {
        assert!(WindowQuery::new(ROW_COLUMNS, &Filter::all(), range(5, 5)).is_none());
        let no_project = Filter {
            projects: Some(BTreeSet::new()),
            ..Filter::all()
        };
        let no_type = Filter {
            types: Some(Vec::new()),
            ..Filter::all()
        };
        assert!(WindowQuery::new(ROW_COLUMNS, &no_project, range(0, 5)).is_none());
        assert!(WindowQuery::new(ROW_COLUMNS, &no_type, range(0, 5)).is_none());
    }

    #[tokio::test]
    async fn window_query_reads_the_project_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        for projects in ["project=a", "project=a&project=b&project=c"] {
            let query = WindowQuery::new(
                ROW_COLUMNS,
                &query(&format!("{projects}&types=pr_*,session_created")),
                range(0, 100),
            )
            .unwrap();
            let sql = format!("EXPLAIN QUERY PLAN {}", query.sql);
            let mut statement = sqlx::query(&sql).bind(0i64).bind(100i64);
            for value in &query.binds {
                statement = statement.bind(value.as_str());
            }
            let plan: Vec<String> = statement
                .fetch_all(&store.inner.read)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get("detail"))
                .collect();
            assert!(
                plan.iter()
                    .any(|detail| detail.contains("INDEX change_log_project_seq")),
                "{plan:?}"
            );
        }
        store.close().await;
    }

    #[tokio::test]
    async fn window_rows_read_exactly_as_sqlx_reads_the_columns() {
        // Another program's database may store its text as UTF-16: SQLite converts it for
        // both readers alike.
        for encoding in ["UTF-8", "UTF-16le", "UTF-16be"] {
            window_rows_read_exactly_as_sqlx_reads_them(encoding).await;
        }
    }

    async fn window_rows_read_exactly_as_sqlx_reads_them(encoding: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("direct.db");
        let url = format!("sqlite://{}", path.display());
        // Another program's table, without our CHECKs: any value of any class.
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query(&format!("PRAGMA encoding = '{encoding}'"))
            .execute(&mut connection)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE change_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, project_id, \
             session_id, event_type, payload, created_at)",
        )
        .execute(&mut connection)
        .await
        .unwrap();
        connection.close().await.unwrap();
        let store = SqliteStore::attach(&url, None).await.unwrap();
        // Texts with spaces and digits, multi-byte and invalid UTF-8, NULs, empty strings, NULL
        // and empty sessions; and values of every other class in every column.
        store
            .execute_write(
                "INSERT INTO change_log (project_id, session_id, event_type, payload, created_at) VALUES \
                 ('p 1 2', NULL, 'pr_updated', '{\"a\":\"1 2 3 \"}', '2026-01-01T00:00:00.000Z'), \
                 ('', '', '', '\"\"', ''), \
                 ('é☃', 's 9', 'k', '[1, 2]', '  2026-01-01 10:00:00  '), \
                 (CAST(X'66FF6F' AS TEXT), CAST(X'00' AS TEXT), 'a' || char(0) || 'b', '1', '7'), \
                 (42, 'sess', 'kind', '{}', 1700000000), \
                 ('p', 3.5, X'6B', NULL, 1.5), \
                 (X'70', 7, NULL, X'7B7D', NULL), \
                 (NULL, X'73', 2.25, 12, -0.5)",
            )
            .await
            .unwrap();
        let head = store.bounds().await.unwrap().head;
        let direct = store
            .window(&Filter::all(), range(0, head.0))
            .await
            .unwrap();
        let after = store.rows_after(Seq(0), 100).await.unwrap();
        let full: Vec<EventRow> = sqlx::query(&format!(
            "SELECT {ROW_COLUMNS} FROM change_log ORDER BY seq"
        ))
        .fetch_all(&store.inner.read)
        .await
        .unwrap()
        .iter()
        .map(|row| row_from(row, store.inner.payload_check).unwrap())
        .collect();
        assert_eq!(full.len(), 8, "{encoding}");
        let stored: String = sqlx::query_scalar("PRAGMA encoding")
            .fetch_one(&store.inner.read)
            .await
            .unwrap();
        assert_eq!(stored.to_lowercase(), encoding.to_lowercase());
        assert_eq!(full[2].project_id, "é☃", "{encoding}");
        assert_eq!(direct.rows(), &full[..]);
        assert_eq!(after.rows(), &full[..]);
        // Read over the rows of another page: longer strings, sessions where none are, more
        // rows than the window has. Nothing of them shows through.
        let spare: Vec<EventRow> = (1..=12)
            .map(|seq| EventRow {
                seq: Seq(seq),
                project_id: "a much longer project id than any row has".into(),
                session_id: Some("a session where the row has none".into()),
                kind: "leftover_kind_name".into(),
                payload: "{\"left\":\"over from the last page\"}".into(),
                payload_check: PayloadCheck::Valid,
                created_at: "2000-01-01T00:00:00.000000Z".into(),
            })
            .collect();
        let reused = store
            .window_reusing(&Filter::all(), range(0, head.0), spare)
            .await
            .unwrap();
        assert_eq!(reused.rows(), &full[..]);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_read_its_caller_abandons_gives_its_connection_back_outside_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("abandoned.db").display());
        // One read connection: the next read gets the very connection the abandoned one used.
        let options = SqliteStoreOptions {
            read_connections: 1,
            ..SqliteStoreOptions::default()
        };
        let store = SqliteStore::open_with(&url, options).await.unwrap();
        store
            .execute_write(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
                 INSERT INTO change_log (project_id, event_type, payload) \
                 SELECT 'p', 'bench_tick', '{}' FROM n",
            )
            .await
            .unwrap();
        let head = store.bounds().await.unwrap().head;
        assert_eq!(head, Seq(20000));
        let all = Filter::all();
        let mut abandoned = 0;
        for _ in 0..20 {
            let mut read = Box::pin(store.window(&all, range(0, head.0)));
            // Polled once (the read starts on its blocking thread), then dropped mid-read.
            if tokio::time::timeout(Duration::ZERO, &mut read)
                .await
                .is_err()
            {
                abandoned += 1;
            }
            drop(read);
        }
        assert!(
            abandoned > 0,
            "no 20,000-row read was still running at its first poll"
        );
        // A leftover transaction would make this read's BEGIN fail; a connection never given
        // back would make it wait for the pool until the timeout.
        let rows = tokio::time::timeout(
            Duration::from_secs(30),
            store.window(&all, range(0, head.0)),
        )
        .await
        .expect("the connection came back to the pool")
        .unwrap();
        assert_eq!(rows.rows().len(), 20000);
        assert_eq!(rows.rows().last().map(|row| row.seq), Some(head));
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_read_of_a_replaced_file_says_it_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replaced.db");
        // A poll far away: only the failed read can look at the file.
        let options = SqliteStoreOptions {
            poll_interval: Duration::from_secs(3600),
            ..SqliteStoreOptions::default()
        };
        let store = SqliteStore::open_with(&format!("sqlite://{}", path.display()), options)
            .await
            .unwrap();
        let failed = || Err::<(), _>(StoreError::transient("disk I/O error"));
        // The file is the one opened: the failure stays what it was.
        assert_eq!(store.explained(failed()), failed());
        assert_eq!(store.replaced(), None);
        std::fs::rename(&path, dir.path().join("aside.db")).unwrap();
        std::fs::write(&path, b"").unwrap();
        let explained = store.explained(failed()).unwrap_err();
        assert!(!explained.is_transient(), "{explained:?}");
        assert!(explained.message.contains("replaced"), "{explained:?}");
        assert!(store.replaced().unwrap().contains("another file"));
        // Latched: every read says so from now on, before touching the database.
        let bounds = store.bounds().await.unwrap_err();
        assert!(bounds.message.contains("replaced"), "{bounds:?}");
        // A success is a success.
        assert_eq!(store.explained(Ok(7)), Ok(7));
    }

    #[test]
    fn in_memory_urls_are_recognised() {
        let path = |url: &str| {
            SqliteConnectOptions::from_str(url)
                .unwrap()
                .get_filename()
                .to_path_buf()
        };
        assert!(is_in_memory("sqlite::memory:", &path("sqlite::memory:")));
        assert!(!is_in_memory("sqlite://x.db", &path("sqlite://x.db")));
        assert!(!is_in_memory("sqlite:dir/x.db", &path("sqlite:dir/x.db")));
    }
}
