//! The store boundary: everything the server needs from a change log, behind one trait, so the
//! stream driver and the tailer run unchanged on SQLite, Postgres and the simulation's
//! in-memory log.
//!
//! # The contract
//!
//! A change log is a sequence of rows, each with a unique `seq` (a positive integer), read by
//! many connections while writers (triggers in other processes, several at once on Postgres)
//! append to it. Four numbers describe it; [`LogBounds`] carries the first three, read in one
//! snapshot:
//!
//! - **epoch**: the log's identity. A cursor of another epoch is not a position in this log.
//! - **head** — the *visibility watermark*. Every seq at or below it is committed and visible to
//!   every read that starts after the one that returned it, or will never exist (rolled back,
//!   deleted, never allocated). No read returns a row above the head it read with it
//!   ([`Rows`] enforces this). Within an epoch the head never decreases; deleting the newest
//!   rows does not move it back (it is not `MAX(seq)`). On SQLite (one writer at a time) it is
//!   the highest seq ever allocated and committed; on a store with concurrent writers whose seqs
//!   commit out of order it is the highest seq below which nothing is still in flight.
//! - **floor** — the retention floor. Rows at or below it may have been pruned; none above it
//!   has been pruned. A cursor below it cannot be honoured. `floor <= head`.
//! - **the published mark** ([`Store::mark_published`]) — persisted by the tailer: every seq at
//!   or below it may have reached clients under this epoch. It only rises. A log found with its
//!   head below the mark at start-up has lost committed rows whose seqs will be allocated again,
//!   so it gets a new epoch ([`epoch_at_start`], applied by every store when it opens).
//!
//! Between them: `floor <= published mark` (retention never prunes a row live subscribers were
//! not sent, [`prunable_prefix`]; the owner of an attached SQLite log can break this by
//! pruning unpublished rows, see `store/sqlite.rs`) and `P <= head`, where `P` is the live feed's last published
//! seq (the tailer publishes only rows it read, and it never reads past the head).
//!
//! Errors carry a [`StoreErrorKind`]: **transient** (retry: the database is busy, a connection
//! dropped), **fatal** (the log cannot be served as it is: schema missing, bookkeeping corrupt,
//! the database replaced) or **bad data** (a row that cannot be decoded). The tailer backs off
//! on transient errors and reports the others on `/healthz`; a stream open answers 503; a stream
//! that fails mid-replay ends and the client resumes from its last id.
//!
//! The rules shared by every store are pure functions here ([`epoch_at_start`],
//! [`prunable_prefix`]); the checks every store must pass are one generic suite
//! ([`conformance`], feature `conformance`).

use std::future::Future;

use changefeed_core::{Epoch, EventRow, FetchRequest, Filter, LocateRequest, Located, Seq};

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod postgres;
pub mod sqlite;
pub mod walking;

/// What kind of failure a [`StoreError`] is, which decides what the caller does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Worth retrying as it is: the database is busy or locked, a connection dropped, a pool
    /// timed out, the disk is full for now.
    Transient,
    /// The log cannot be served as it is: a table or column is missing, the store's own
    /// bookkeeping is corrupt, the database is not one (or not ours any more). Retrying does
    /// not help until someone acts.
    Fatal,
    /// A row could not be turned into an event (a value of the wrong type or shape).
    BadData,
}

impl StoreErrorKind {
    /// The kind as a word for logs and `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Transient => "transient",
            StoreErrorKind::Fatal => "fatal",
            StoreErrorKind::BadData => "bad_data",
        }
    }
}

/// What a store failure looks like to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// What the caller should do about it.
    pub kind: StoreErrorKind,
    /// What went wrong, for logs.
    pub message: String,
    /// The row concerned, when one row is to blame.
    pub seq: Option<Seq>,
}

impl StoreError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Transient, message)
    }

    /// A failure retrying does not cure.
    pub fn fatal(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Fatal, message)
    }

    /// A row (or value) that cannot be decoded.
    pub fn bad_data(seq: Option<Seq>, message: impl Into<String>) -> StoreError {
        StoreError {
            seq,
            ..StoreError::new(StoreErrorKind::BadData, message)
        }
    }

    fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            seq: None,
        }
    }

    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    /// The same error with `context` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> StoreError {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} error", self.message, self.kind.as_str())?;
        if let Some(seq) = self.seq {
            write!(f, " at seq {}", seq.0)?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let kind = match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreErrorKind::Transient,
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreErrorKind::BadData,
            sqlx::Error::Database(database) => database_error_kind(database.as_ref()),
            _ => StoreErrorKind::Fatal,
        };
        StoreError::new(kind, error.to_string())
    }
}

/// Classifies a database's error by its code: SQLite's result codes, or Postgres' SQLSTATE.
fn database_error_kind(error: &dyn sqlx::error::DatabaseError) -> StoreErrorKind {
    let code = error.code();
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        return code
            .and_then(|code| code.parse::<i64>().ok())
            .map_or(StoreErrorKind::Fatal, sqlite_code_kind);
    }
    code.map_or(StoreErrorKind::Fatal, |code| sqlstate_kind(&code))
}

/// SQLite (extended) result codes: SQLITE_BUSY 5, SQLITE_LOCKED 6, SQLITE_NOMEM 7,
/// SQLITE_INTERRUPT 9, SQLITE_IOERR 10, SQLITE_FULL 13 and SQLITE_PROTOCOL 15 clear up by
/// themselves; the rest (no such table, corrupt file, not a database, read-only, ...) do not.
fn sqlite_code_kind(code: i64) -> StoreErrorKind {
    match code & 0xff {
        5 | 6 | 7 | 9 | 10 | 13 | 15 => StoreErrorKind::Transient,
        _ => StoreErrorKind::Fatal,
    }
}

/// Postgres SQLSTATEs: connection exceptions (08), serialization failures and deadlocks
/// (40001, 40P01), insufficient resources (53), operator intervention such as a restart
/// (57P0x), lock not available (55P03) are transient; data exceptions (22) are bad data.
fn sqlstate_kind(code: &str) -> StoreErrorKind {
    match code {
        _ if code.starts_with("08") || code.starts_with("53") => StoreErrorKind::Transient,
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" => StoreErrorKind::Transient,
        _ if code.starts_with("22") => StoreErrorKind::BadData,
        _ => StoreErrorKind::Fatal,
    }
}

/// The log's identity and bounds, read in one snapshot (see the module docs for what each
/// means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The log's epoch.
    pub epoch: Epoch,
    /// The visibility watermark: every seq at or below it is committed and visible, or will
    /// never exist. Never `MAX(seq)`: deleting the newest rows does not move it back.
    pub head: Seq,
    /// The retention floor: rows at or below it may have been pruned; a cursor below it cannot
    /// be honoured.
    pub floor: Seq,
}

/// Rows read together with the bounds of the same snapshot, none above its watermark: the only
/// way rows leave a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    rows: Vec<EventRow>,
    bounds: LogBounds,
}

impl Rows {
    /// `rows` (in seq order) read in the snapshot that `bounds` describes. Rows above the
    /// watermark are not visible yet by definition and are left out: a store may read a little
    /// past it (say, rows and watermark in two statements of a weaker isolation level), but
    /// nobody downstream ever sees such a row before the watermark passes it.
    pub fn new(mut rows: Vec<EventRow>, bounds: LogBounds) -> Rows {
        debug_assert!(
            rows.windows(2).all(|pair| pair[0].seq < pair[1].seq),
            "rows must come in strictly increasing seq order"
        );
        let visible = rows.partition_point(|row| row.seq <= bounds.head);
        rows.truncate(visible);
        Rows { rows, bounds }
    }

    /// The rows, in seq order, none above `bounds().head`.
    pub fn rows(&self) -> &[EventRow] {
        &self.rows
    }

    /// The bounds of the snapshot the rows were read in.
    pub fn bounds(&self) -> LogBounds {
        self.bounds
    }

    /// The rows and the bounds.
    pub fn into_parts(self) -> (Vec<EventRow>, LogBounds) {
        (self.rows, self.bounds)
    }
}

/// A change log. Implementations: SQLite ([`sqlite::SqliteStore`]), Postgres
/// ([`postgres::PostgresStore`]) and the simulation's in-memory log; every one passes
/// [`conformance`].
pub trait Store: Clone + Send + Sync + 'static {
    /// Epoch, head (the watermark) and floor, read in one snapshot.
    fn bounds(&self) -> impl Future<Output = Result<LogBounds, StoreError>> + Send;

    /// One replay window: the rows in `(range.after, range.upto]` that `filter` matches, in seq
    /// order, with the bounds of the same snapshot. The filter is pushed down to the query
    /// (project set, kind globs); the core re-checks every row.
    fn window(
        &self,
        filter: &Filter,
        range: FetchRequest,
    ) -> impl Future<Output = Result<Rows, StoreError>> + Send;

    /// [`Store::window`], reading into the allocations of `spare` (the rows of a page the
    /// caller is done with) where the store can, so a long replay does not allocate and free
    /// every row's strings. The default drops them.
    fn window_reusing(
        &self,
        filter: &Filter,
        range: FetchRequest,
        spare: Vec<EventRow>,
    ) -> impl Future<Output = Result<Rows, StoreError>> + Send {
        drop(spare);
        self.window(filter, range)
    }

    /// `last=`: the seq of the `request.count`-th newest row at or below `request.upto` that
    /// `filter` matches exactly ([`Filter::matches_row`]), or `None` when fewer match, with the
    /// floor (`PROTOCOL.md`, "Store contract for the core's requests"). The default walks
    /// replay windows backwards from `upto`; a store may answer with one indexed query.
    fn locate(
        &self,
        filter: &Filter,
        request: LocateRequest,
    ) -> impl Future<Output = Result<Located, StoreError>> + Send {
        async move {
            const WINDOW: u64 = 4096;
            let mut remaining = request.count as usize;
            let mut upto = request.upto;
            loop {
                let after = Seq(upto.0.saturating_sub(WINDOW));
                let (rows, bounds) = self
                    .window(filter, FetchRequest { after, upto })
                    .await?
                    .into_parts();
                let matching: Vec<Seq> = rows
                    .iter()
                    .filter(|row| row.seq > after && row.seq <= upto && filter.matches_row(row))
                    .map(|row| row.seq)
                    .collect();
                if matching.len() >= remaining {
                    let nth = matching[matching.len() - remaining];
                    return Ok(Located {
                        nth: Some(nth),
                        floor: bounds.floor,
                    });
                }
                remaining -= matching.len();
                if after <= bounds.floor {
                    return Ok(Located {
                        nth: None,
                        floor: bounds.floor,
                    });
                }
                upto = after;
            }
        }
    }

    /// The tailer's read: up to `limit` rows with seq above `after`, every project and kind, in
    /// seq order, with the bounds of the same snapshot.
    fn rows_after(
        &self,
        after: Seq,
        limit: usize,
    ) -> impl Future<Output = Result<Rows, StoreError>> + Send;

    /// The ids among `ids` that name no project, each once, in the order given.
    fn missing_projects(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A subscription to "the log may have changed" signals (a commit by this process or any
    /// other, or the watermark moving). Take it *before* reading, then read, then wait on
    /// [`ChangeWatch::changed`]: a commit that lands between the read and the wait makes the
    /// wait return at once, so no wake-up is lost. Spurious wake-ups are allowed; missed ones
    /// are not, within the store's safety-net poll interval.
    fn changes(&self) -> ChangeWatch;

    /// Durably records that every seq up to `seq` may have reached clients. Never lowers the
    /// mark.
    fn mark_published(&self, seq: Seq) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes up to `batch` of the oldest rows that `retention` allows, and raises the floor to
    /// the highest seq deleted, in one transaction. Which rows go is [`prunable_prefix`]'s
    /// decision. Returns how many rows were deleted (0 when nothing is due).
    fn prune(
        &self,
        retention: Retention,
        batch: usize,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The store's own `/metrics` series (a Postgres replica's sequencer and change watch),
    /// collected at every scrape into the server's registry; `None` when it has none.
    fn metrics_collector(&self) -> Option<Box<dyn prometheus_client::collector::Collector>> {
        None
    }
}

/// What a store does at start-up about its epoch, given the head, floor and published mark it
/// finds: keep it, or rotate it because committed rows that clients may have seen were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochDecision {
    /// The log is the one clients were served: keep the epoch and the marks.
    Keep,
    /// The head is behind the published mark: seqs that clients saw will be allocated again.
    /// Give the log a new epoch and set the published mark and the floor to these values.
    Rotate {
        /// The new published mark (the head).
        published: Seq,
        /// The new floor (capped at the head).
        floor: Seq,
    },
}

/// The start-up epoch rule, the same for every store: a log whose head is below its published
/// mark gets a new epoch, with the mark reset to the head and the floor capped at it.
pub fn epoch_at_start(head: Seq, floor: Seq, published: Seq) -> EpochDecision {
    if head >= published {
        return EpochDecision::Keep;
    }
    EpochDecision::Rotate {
        published: head,
        floor: floor.min(head),
    }
}

/// One of the oldest rows, as [`prunable_prefix`] needs to see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCandidate {
    /// Its seq.
    pub seq: Seq,
    /// Whether it is older than `retention.days` (false when its timestamp cannot be read, or
    /// when no age rule is set).
    pub older_than_days: bool,
}

/// The retention rule, the same for every store. Given the oldest rows in seq order (at most
/// one batch), the published mark, and `beyond_rows` — the seq of the newest row that the
/// `retention.rows` rule no longer keeps (the (rows+1)-th newest), if any — returns the highest
/// seq of the prefix to delete. A row is due when it is at or below the published mark (live
/// subscribers were sent it) and either beyond the newest `rows` or older than `days`. Only a
/// prefix goes, stopping at the first row that is not due, so the floor stays exact: every row
/// at or below it is gone and none above it was pruned.
pub fn prunable_prefix(
    oldest: impl IntoIterator<Item = PruneCandidate>,
    published: Seq,
    beyond_rows: Option<Seq>,
) -> Option<Seq> {
    oldest
        .into_iter()
        .take_while(|row| {
            row.seq <= published
                && (beyond_rows.is_some_and(|cutoff| row.seq <= cutoff) || row.older_than_days)
        })
        .map(|row| row.seq)
        .last()
}

/// A store's change signal as seen by one waiter: a generation counter in a
/// [`tokio::sync::watch`] channel that the store bumps whenever the log may have changed.
///
/// Each waiter owns its `ChangeWatch` (cloning one gives an independent waiter that starts from
/// the same generation), so "changed since I last looked" is per waiter and race-free:
///
/// ```ignore
/// let mut changes = store.changes();      // 1. subscribe
/// loop {
///     let rows = store.rows_after(last, 512).await?; // 2. read
///     // ... publish rows, advance `last` ...
///     changes.changed().await;            // 3. returns at once if anything was committed
/// }                                       //    since step 1 / the previous wake-up
/// ```
#[derive(Debug, Clone)]
pub struct ChangeWatch {
    receiver: tokio::sync::watch::Receiver<u64>,
}

impl ChangeWatch {
    /// Wraps a receiver of a store's generation counter; the current generation counts as seen.
    pub fn new(mut receiver: tokio::sync::watch::Receiver<u64>) -> ChangeWatch {
        receiver.mark_unchanged();
        ChangeWatch { receiver }
    }

    /// Resolves once the generation has moved past the last one this waiter saw (at creation or
    /// at the previous return), and marks it seen. Cancel-safe, so it can sit in a `select!`.
    /// Never resolves once the store is gone (no busy loop on a closed channel).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the generation moved since this waiter last looked, without waiting or marking.
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }
}

/// The sending side of a store's change signal: [`ChangeNotifier::notify`] wakes every
/// [`ChangeWatch`] taken from it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChangeNotifier {
    sender: tokio::sync::watch::Sender<u64>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        ChangeNotifier {
            sender: tokio::sync::watch::channel(0u64).0,
        }
    }
}

impl ChangeNotifier {
    /// The log may have changed: wake every waiter (with or without any).
    pub fn notify(&self) {
        bump(&self.sender);
    }

    /// A new waiter, which counts the current generation as seen.
    pub fn watch(&self) -> ChangeWatch {
        ChangeWatch::new(self.sender.subscribe())
    }
}

/// Bumps a store's generation counter (wakes every [`ChangeWatch`]), with or without receivers.
pub(crate) fn bump(changes: &tokio::sync::watch::Sender<u64>) {
    changes.send_modify(|generation| *generation = generation.wrapping_add(1));
}

/// How much of the log to keep; `None` keeps everything for that rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep rows newer than this many days.
    pub days: Option<u64>,
    /// Keep at most this many of the newest rows.
    pub rows: Option<u64>,
}

impl Retention {
    /// Whether this keeps every row (no rule set).
    pub fn keeps_everything(&self) -> bool {
        self.days.is_none() && self.rows.is_none()
    }
}

/// A seq as SQL's signed 64-bit integer (both stores' column type); past `i64::MAX` it
/// saturates, which no log reaches.
pub(crate) fn to_sql(seq: Seq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

/// A seq read from SQL: a negative value is bad data in `column`, never a wrap-around.
pub(crate) fn seq_from(column: &str, value: i64) -> Result<Seq, StoreError> {
    u64::try_from(value)
        .map(Seq)
        .map_err(|_| StoreError::bad_data(None, format!("negative {column}: {value}")))
}

/// Fails unless every released migration is still in `migrator`, byte for byte. sqlx checks
/// each applied migration's checksum (SHA-384 of the whole file, comments included) when a
/// store opens, and the ownership check compares them too, so an edited released file would
/// make every database created before the edit refuse to open. `released`: (version, checksum
/// in hex) of each migration as it shipped.
#[cfg(test)]
pub(crate) fn assert_released_migrations_unchanged(
    migrator: &sqlx::migrate::Migrator,
    released: &[(i64, &str)],
) {
    for &(version, checksum) in released {
        let migration = migrator
            .iter()
            .find(|migration| migration.version == version)
            .unwrap_or_else(|| panic!("released migration {version} is gone"));
        let hex: String = migration
            .checksum
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        assert_eq!(
            hex, checksum,
            "released migration {version} ({}) was edited: add a new migration instead",
            migration.description
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of which only the seq matters here.
    fn row(seq: u64) -> EventRow {
        let text = String::new;
        EventRow {
            seq: Seq(seq),
            project_id: text(),
            session_id: None,
            kind: text(),
            payload: text(),
            payload_check: changefeed_core::PayloadCheck::Unchecked,
            created_at: text(),
        }
    }

    fn bounds(head: u64) -> LogBounds {
        LogBounds {
            epoch: Epoch(1),
            head: Seq(head),
            floor: Seq(0),
        }
    }

    fn seqs(rows: &Rows) -> Vec<u64> {
        rows.rows().iter().map(|row| row.seq.0).collect()
    }

    #[test]
    fn rows_never_go_past_the_watermark() {
        let read = || vec![row(2), row(3), row(5), row(6)];
        assert_eq!(seqs(&Rows::new(read(), bounds(6))), [2, 3, 5, 6]);
        assert_eq!(seqs(&Rows::new(read(), bounds(5))), [2, 3, 5]);
        assert_eq!(seqs(&Rows::new(read(), bounds(4))), [2, 3]);
        assert_eq!(seqs(&Rows::new(read(), bounds(1))), Vec::<u64>::new());
        let (rows, at) = Rows::new(read(), bounds(3)).into_parts();
        assert_eq!(rows.len(), 2);
        assert_eq!(at, bounds(3));
    }

    #[test]
    fn the_epoch_rotates_only_when_the_head_is_behind_the_mark() {
        assert_eq!(epoch_at_start(Seq(5), Seq(2), Seq(5)), EpochDecision::Keep);
        assert_eq!(epoch_at_start(Seq(9), Seq(2), Seq(5)), EpochDecision::Keep);
        assert_eq!(epoch_at_start(Seq(0), Seq(0), Seq(0)), EpochDecision::Keep);
        assert_eq!(
            epoch_at_start(Seq(4), Seq(2), Seq(5)),
            EpochDecision::Rotate {
                published: Seq(4),
                floor: Seq(2)
            }
        );
        assert_eq!(
            epoch_at_start(Seq(3), Seq(8), Seq(10)),
            EpochDecision::Rotate {
                published: Seq(3),
                floor: Seq(3)
            },
            "the floor is capped at the head"
        );
    }

    fn candidates(rows: &[(u64, bool)]) -> Vec<PruneCandidate> {
        rows.iter()
            .map(|&(seq, older_than_days)| PruneCandidate {
                seq: Seq(seq),
                older_than_days,
            })
            .collect()
    }

    #[test]
    fn only_a_due_prefix_at_or_below_the_mark_is_prunable() {
        let old = candidates(&[(1, true), (2, true), (4, true), (5, false), (6, true)]);
        // By age: the prefix stops at the first recent row, even with old rows behind it.
        assert_eq!(prunable_prefix(old.clone(), Seq(10), None), Some(Seq(4)));
        // Never above the published mark.
        assert_eq!(prunable_prefix(old.clone(), Seq(3), None), Some(Seq(2)));
        assert_eq!(prunable_prefix(old.clone(), Seq(0), None), None);
        // By count: everything at or below the cut-off is due, whatever its age.
        let recent = candidates(&[(1, false), (2, false), (3, false), (7, false)]);
        assert_eq!(
            prunable_prefix(recent.clone(), Seq(10), Some(Seq(3))),
            Some(Seq(3))
        );
        assert_eq!(prunable_prefix(recent.clone(), Seq(10), Some(Seq(0))), None);
        assert_eq!(
            prunable_prefix(recent.clone(), Seq(2), Some(Seq(3))),
            Some(Seq(2))
        );
        assert_eq!(prunable_prefix(recent, Seq(10), None), None);
        // Either rule makes a row due.
        let mixed = candidates(&[(1, false), (2, true), (3, false)]);
        assert_eq!(prunable_prefix(mixed, Seq(10), Some(Seq(1))), Some(Seq(2)));
        assert_eq!(prunable_prefix(Vec::new(), Seq(10), Some(Seq(5))), None);
    }

    #[test]
    fn error_kinds_follow_the_database_codes() {
        use StoreErrorKind::*;
        // SQLITE_BUSY, _BUSY_SNAPSHOT, _LOCKED, _FULL; _ERROR (no such table), _CORRUPT,
        // _NOTADB, _CONSTRAINT_CHECK.
        for (code, kind) in [
            (5, Transient),
            (517, Transient),
            (6, Transient),
            (13, Transient),
            (1, Fatal),
            (11, Fatal),
            (26, Fatal),
            (275, Fatal),
        ] {
            assert_eq!(sqlite_code_kind(code), kind, "{code}");
        }
        // Connection failure, serialization failure, admin shutdown; undefined table; invalid
        // text representation.
        for (code, kind) in [
            ("08006", Transient),
            ("40001", Transient),
            ("57P01", Transient),
            ("42P01", Fatal),
            ("22P02", BadData),
        ] {
            assert_eq!(sqlstate_kind(code), kind, "{code}");
        }
        let io = StoreError::from(sqlx::Error::Io(std::io::Error::other("reset")));
        assert!(io.is_transient());
        assert_eq!(StoreError::from(sqlx::Error::RowNotFound).kind, Fatal);
        let bad = StoreError::bad_data(Some(Seq(7)), "created_at is a BLOB");
        assert_eq!(
            bad.to_string(),
            "created_at is a BLOB (bad_data error at seq 7)"
        );
        assert_eq!(
            StoreError::transient("busy").context("reading").to_string(),
            "reading: busy (transient error)"
        );
    }

    #[tokio::test]
    async fn a_notifier_wakes_every_watch_taken_before_it_fires() {
        let notifier = ChangeNotifier::default();
        let mut first = notifier.watch();
        let second = first.clone();
        assert!(!first.has_changed());
        notifier.notify();
        assert!(first.has_changed() && second.has_changed());
        first.changed().await;
        assert!(!first.has_changed());
        assert!(
            !notifier.watch().has_changed(),
            "a later watch starts from now"
        );
    }
}
