//! The store boundary: everything the server needs from a change log, behind one trait, so the
//! HTTP layer and the tailer run unchanged on SQLite, Postgres and the in-memory store of the
//! simulation.

use std::future::Future;

use changefeed_core::{Epoch, EventRow, Filter, Seq};

pub mod memory;
pub mod postgres;
pub mod sqlite;

/// What a store failure looks like to the server.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError(error.to_string())
    }
}

/// The log's identity and bounds, read in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The log's epoch.
    pub epoch: Epoch,
    /// The highest seq ever allocated (not `MAX(seq)`: deleting the newest rows must not move
    /// it back). Every row that will ever have a seq at or below it is already visible.
    pub head: Seq,
    /// The retention floor: rows at or below it may have been pruned; a cursor below it cannot
    /// be honoured.
    pub floor: Seq,
}

/// One replay window read in a single read transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRows {
    /// The rows in `(after, upto]` matching the filter, in seq order.
    pub rows: Vec<EventRow>,
    /// Head and floor read in the same transaction as `rows`.
    pub bounds: LogBounds,
}

/// A change log. Implementations: SQLite ([`sqlite::SqliteStore`]), in-memory
/// ([`memory::MemoryStore`]); Postgres follows behind the same trait.
pub trait Store: Clone + Send + Sync + 'static {
    /// Epoch, head and floor, read together.
    fn bounds(&self) -> impl Future<Output = Result<LogBounds, StoreError>> + Send;

    /// The rows in `(after, upto]` that `filter` matches, in seq order, with the bounds read in
    /// the same transaction. The filter is pushed down to the query (project set, kind globs);
    /// callers re-check with [`Filter::matches`].
    fn window(
        &self,
        filter: &Filter,
        after: Seq,
        upto: Seq,
    ) -> impl Future<Output = Result<WindowRows, StoreError>> + Send;

    /// Up to `limit` rows with seq above `after`, every project and kind, in seq order (the
    /// tailer's read).
    fn rows_after(
        &self,
        after: Seq,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EventRow>, StoreError>> + Send;

    /// The ids among `ids` that name no project.
    fn missing_projects(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// A subscription to "the log may have changed" signals (a commit by this process or any
    /// other). Take it *before* reading, then read, then wait on [`ChangeWatch::changed`]: a
    /// commit that lands between the read and the wait makes the wait return at once, so no
    /// wake-up is lost. Spurious wake-ups are allowed; missed ones are not, within the store's
    /// safety-net poll interval.
    fn changes(&self) -> ChangeWatch;

    /// Durably records that every seq up to `seq` has been published to clients, so a log found
    /// behind it at the next start gets a new epoch.
    fn mark_published(&self, seq: Seq) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes up to `batch` rows that retention allows (older than `retain_days`, or beyond the
    /// newest `retain_rows`) and raises the floor to the highest seq deleted. Returns how many
    /// rows were deleted (0 when nothing is due). Implementations delete a prefix in seq order,
    /// stopping at the first row retention keeps, so no row above the floor is ever pruned.
    /// Rows above the published mark ([`Store::mark_published`]) are never pruned: live
    /// subscribers have not been sent them, and deleting them would skip them without a reset.
    fn prune(
        &self,
        retention: Retention,
        batch: usize,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
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
