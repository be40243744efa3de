//! The sequencer: gives committed `change_log` rows their seqs, after commit, in one statement.
//!
//! Writers' triggers append rows with `seq` NULL. On every tick each replica tries
//! `pg_try_advisory_xact_lock` (its own statement, so the assignment's snapshot is taken after
//! the lock is held and sees every earlier batch); the winner, in **one statement**, takes the
//! pending rows it can see in insertion order (`id`), bumps the counter row
//! (`changefeed_sequencer.head`) by their number, gives them the next seqs (guarded by
//! `seq IS NULL`), and queues one NOTIFY carrying the new head. The NOTIFY is delivered at
//! commit, never before the rows are visible.
//!
//! Why this is safe (no loss, no duplicate, no reorder for a tail reading `seq > P`):
//! - A batch's seqs are all above every earlier batch's, because the counter row's lock is held
//!   from the bump to the commit: the next batch cannot read the counter before this one is
//!   visible (the advisory lock only spares the other replicas the wait). So seqs become
//!   visible in increasing order, a whole batch at once, and the visible seqs are always a
//!   prefix of the log: `seq > P` never skips one that shows up later.
//! - Only committed rows are visible to the statement, so a row that is still being written,
//!   or rolled back, or whose writer dies, never gets a seq; a row committed after the
//!   statement's snapshot is taken by the next tick.
//! - The unique index on `seq` and the `seq IS NULL` guard make a second assignment of a row
//!   impossible, even if two sequencers ever overlapped.
//! - Insertion order keeps changes to one domain row in commit order: a writer that changes a
//!   row another transaction changed waits for that transaction's commit (the row lock) before
//!   its trigger runs, so its change row's `id` is higher. Ordering by transaction id instead
//!   (`(xid, id)`, the classic PgQ order) does not: a transaction that took its xid early but
//!   changed the row last would come first. [`AssignMode::XidHorizon`] is that design, kept to
//!   measure it side by side; `tests/store_postgres_order.rs` shows the reorder.
//!
//! Costs: one UPDATE per row (on the sequencer, not the writer), and a latency floor of one
//! tick. A long-open transaction delays only its own rows (they are invisible until it commits).
//!
//! [`AssignMode`] is the seam for the planted-bug and comparison tests: the product uses
//! [`AssignMode::Visible`]; every other mode is a known-wrong or compared variant.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use changefeed_core::Seq;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;

use super::{seq_from, NOTIFY_CHANNEL};
use crate::store::{bump, StoreError};

/// The advisory lock key the sequencers of all replicas compete for ("cf_seqnc").
pub const SEQUENCER_LOCK: i64 = 0x6366_5f73_6571_6e63;

/// How the sequencer picks and orders rows. Only [`AssignMode::Visible`] is correct; the
/// others exist for the tests that prove the choice (and for the benchmark comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssignMode {
    /// The product: every committed pending row, in insertion order, one statement.
    #[default]
    Visible,
    /// The PgQ-style design: only rows whose transaction id is below the snapshot's xmin (no
    /// transaction that old is still running), ordered by `(xid, id)`, one statement. Safe for
    /// a `seq > P` tail, but any open writing transaction in the cluster holds every event
    /// back, and a transaction that took its xid early is ordered before a later committer of
    /// the same domain row.
    XidHorizon,
    /// [`AssignMode::XidHorizon`] without the horizon filter: `(xid, id)` order over every
    /// committed pending row.
    XidNoHorizon,
    /// [`AssignMode::XidHorizon`] with the horizon read in its own statement before the
    /// assignment (a newer snapshot then assigns).
    XidHorizonSeparate,
    /// Planted bug: no election, every replica assigns at once (`FOR UPDATE SKIP LOCKED`),
    /// seqs from a Postgres sequence (taken before commit, outside any lock): a batch with lower
    /// seqs can commit after one with higher seqs, and a tail past them skips it.
    ConcurrentSequence,
}

/// Tunables of a replica's sequencer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencerConfig {
    /// Pause between ticks while nothing is pending (a full batch is followed at once).
    pub tick: Duration,
    /// Rows per batch (one statement, one transaction).
    pub batch: u32,
    /// How rows are picked (see [`AssignMode`]).
    pub mode: AssignMode,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            tick: Duration::from_millis(5),
            batch: 5000,
            mode: AssignMode::Visible,
        }
    }
}

/// Upper bounds of the batch-size histogram's buckets (rows per batch); `+Inf` is implied.
pub const BATCH_BUCKETS: [f64; 10] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
];

/// Counters of the sequencer and the change watch of one replica (all relaxed: reporting only),
/// exported at `/metrics` by [`super::metrics::StatsCollector`].
#[derive(Debug)]
pub struct SequencerStats {
    /// Sequencer ticks this replica ran (idle, lost or assigning).
    pub ticks: AtomicU64,
    /// Rows this replica's sequencer assigned.
    pub rows_assigned: AtomicU64,
    /// Rows per batch this replica's sequencer assigned.
    pub batch_rows: Histogram,
    /// Batches (transactions that assigned at least one row).
    pub batches: AtomicU64,
    /// Ticks where another replica held the sequencer lock.
    pub elections_lost: AtomicU64,
    /// NOTIFYs this replica's sequencer sent (one per batch).
    pub notifies_sent: AtomicU64,
    /// NOTIFYs the change watch received.
    pub notifies_received: AtomicU64,
    /// Times the safety-net poll found a head that no NOTIFY (or local batch) had announced.
    pub poll_fallbacks: AtomicU64,
    /// Failed ticks.
    pub errors: AtomicU64,
    /// Times the LISTEN connection was lost and re-established.
    pub listener_reconnects: AtomicU64,
    /// The highest head announced to this replica's waiters (by NOTIFY, poll or local batch).
    pub announced_head: AtomicU64,
    /// Age in milliseconds of the oldest committed row still waiting for a seq (-1: none), as
    /// last sampled by the change watch.
    pub lag_ms: AtomicI64,
    /// Age in milliseconds of the oldest transaction holding a transaction id (the xmin
    /// horizon; -1: none), as last sampled.
    pub horizon_age_ms: AtomicI64,
    /// The backend pid of that transaction (-1: none).
    pub horizon_pid: AtomicI64,
    /// Committed or open rows still without a seq (-1: not sampled yet), as last sampled.
    pub pending_rows: AtomicI64,
}

impl Default for SequencerStats {
    fn default() -> Self {
        SequencerStats {
            ticks: AtomicU64::new(0),
            rows_assigned: AtomicU64::new(0),
            batch_rows: Histogram::new(BATCH_BUCKETS),
            batches: AtomicU64::new(0),
            elections_lost: AtomicU64::new(0),
            notifies_sent: AtomicU64::new(0),
            notifies_received: AtomicU64::new(0),
            poll_fallbacks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            listener_reconnects: AtomicU64::new(0),
            announced_head: AtomicU64::new(0),
            lag_ms: AtomicI64::new(-1),
            horizon_age_ms: AtomicI64::new(-1),
            horizon_pid: AtomicI64::new(-1),
            pending_rows: AtomicI64::new(-1),
        }
    }
}

impl SequencerStats {
    /// Records that waiters were told about `head`; returns whether it was news.
    pub(crate) fn announce(&self, head: u64) -> bool {
        self.announced_head.fetch_max(head, Relaxed) < head
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing was pending.
    Idle,
    /// Another replica holds the sequencer lock.
    Lost,
    /// This replica assigned `rows` rows; head is now `head`.
    Assigned {
        /// Rows assigned.
        rows: u64,
        /// The new head.
        head: Seq,
    },
}

/// What a sequencer runs against: one database's pending rows and its lock. Postgres
/// ([`PgPool`], the SQL below) in the product; the simulation models the same rules in memory, so
/// the loop, the election outcome handling, the back-off and the signalling are this code in
/// both.
pub trait SequencerBackend: Clone + Send + Sync + 'static {
    /// Whether any row waits for a seq (a cheap check, outside any transaction).
    fn has_pending(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Tries the sequencer lock and, when won, assigns one batch of at most `batch` rows and
    /// commits it: [`Tick::Lost`], [`Tick::Idle`] or [`Tick::Assigned`].
    fn assign_batch(
        &self,
        mode: AssignMode,
        batch: u32,
    ) -> impl Future<Output = Result<Tick, StoreError>> + Send;
}

impl SequencerBackend for PgPool {
    async fn has_pending(&self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM change_log WHERE seq IS NULL)")
                .fetch_one(self)
                .await?,
        )
    }

    async fn assign_batch(&self, mode: AssignMode, batch: u32) -> Result<Tick, StoreError> {
        let mut transaction = self.begin().await?;
        let outcome = assign(&mut transaction, mode, batch).await?;
        transaction.commit().await?;
        if mode == AssignMode::ConcurrentSequence {
            if let Tick::Assigned { head, .. } = outcome {
                // The planted design raises head after commit, in its own statement.
                sqlx::query("UPDATE changefeed_sequencer SET head = GREATEST(head, $1)")
                    .bind(super::to_sql(head))
                    .execute(self)
                    .await?;
            }
        }
        Ok(outcome)
    }
}

/// One replica's sequencer.
#[derive(Debug, Clone)]
pub struct Sequencer<B = PgPool> {
    backend: B,
    config: SequencerConfig,
    stats: Arc<SequencerStats>,
    changes: Option<watch::Sender<u64>>,
}

impl<B: SequencerBackend> Sequencer<B> {
    /// A sequencer on `backend`.
    pub fn new(backend: B, config: SequencerConfig, stats: Arc<SequencerStats>) -> Sequencer<B> {
        Sequencer {
            backend,
            config,
            stats,
            changes: None,
        }
    }

    /// Also wakes this replica's waiters directly after each batch (no NOTIFY round trip).
    pub fn signalling(mut self, changes: watch::Sender<u64>) -> Sequencer<B> {
        self.changes = Some(changes);
        self
    }

    /// One tick: a cheap check for pending rows, then (if any) one transaction that tries the
    /// lock and assigns a batch.
    pub async fn tick(&self) -> Result<Tick, StoreError> {
        self.stats.ticks.fetch_add(1, Relaxed);
        if !self.backend.has_pending().await? {
            return Ok(Tick::Idle);
        }
        let outcome = self
            .backend
            .assign_batch(self.config.mode, self.config.batch)
            .await?;
        match outcome {
            Tick::Lost => {
                self.stats.elections_lost.fetch_add(1, Relaxed);
            }
            Tick::Idle => {}
            Tick::Assigned { rows, head } => {
                self.stats.rows_assigned.fetch_add(rows, Relaxed);
                self.stats.batch_rows.observe(rows as f64);
                self.stats.batches.fetch_add(1, Relaxed);
                self.stats.notifies_sent.fetch_add(1, Relaxed);
                if let Some(changes) = &self.changes {
                    self.stats.announce(head.0);
                    bump(changes);
                }
            }
        }
        Ok(outcome)
    }

    /// Ticks until the task is aborted (the store stops it when its last handle drops). Errors
    /// (Postgres restarting, a lost connection) are counted, logged once per outage and retried
    /// with back-off; they never end the loop.
    pub async fn run(self) {
        let mut interval = tokio::time::interval(self.config.tick.max(Duration::from_micros(100)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(10);
        let mut failing = false;
        loop {
            match self.tick().await {
                Ok(outcome) => {
                    if failing {
                        tracing::info!("sequencer: Postgres reachable again; assigning");
                        failing = false;
                    }
                    backoff = Duration::from_millis(10);
                    let full = matches!(outcome, Tick::Assigned { rows, .. }
                        if rows >= u64::from(self.config.batch));
                    if !full {
                        interval.tick().await;
                    }
                }
                Err(error) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    if !failing {
                        tracing::warn!(%error, "sequencer: tick failed; retrying with back-off");
                        failing = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Tries the sequencer lock and assigns one batch of at most `batch` rows, in the caller's
/// transaction (commit it to publish the batch; the NOTIFY goes out at commit). Tests use it to
/// hold a batch open and kill the backend mid-batch.
pub async fn assign(
    transaction: &mut PgConnection,
    mode: AssignMode,
    batch: u32,
) -> Result<Tick, StoreError> {
    let batch = i64::from(batch.max(1));
    if mode == AssignMode::ConcurrentSequence {
        sqlx::query("CREATE SEQUENCE IF NOT EXISTS changefeed_planted_seq")
            .execute(&mut *transaction)
            .await?;
        let row = sqlx::query(CONCURRENT_SEQUENCE_SQL)
            .bind(batch)
            .fetch_one(&mut *transaction)
            .await?;
        return tick_from(&row);
    }
    // The lock in its own statement: the assignment below then takes its snapshot after the
    // previous holder's commit is visible.
    let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SEQUENCER_LOCK)
        .fetch_one(&mut *transaction)
        .await?;
    if !won {
        return Ok(Tick::Lost);
    }
    let row = match mode {
        AssignMode::Visible => sqlx::query(&ASSIGN_VISIBLE).bind(batch),
        AssignMode::XidHorizon => sqlx::query(&ASSIGN_BELOW_HORIZON).bind(batch),
        AssignMode::XidNoHorizon => sqlx::query(&ASSIGN_XID_ORDER).bind(batch),
        AssignMode::XidHorizonSeparate => {
            let horizon: String =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                    .fetch_one(&mut *transaction)
                    .await?;
            sqlx::query(&ASSIGN_BELOW_GIVEN_HORIZON)
                .bind(batch)
                .bind(horizon)
        }
        AssignMode::ConcurrentSequence => unreachable!("handled above"),
    }
    .fetch_one(&mut *transaction)
    .await?;
    tick_from(&row)
}

fn tick_from(row: &sqlx::postgres::PgRow) -> Result<Tick, StoreError> {
    let rows: i64 = row.try_get("assigned")?;
    let head: Option<i64> = row.try_get("head")?;
    Ok(match head {
        Some(head) if rows > 0 => Tick::Assigned {
            rows: rows as u64,
            head: seq_from("head", head)?,
        },
        _ => Tick::Idle,
    })
}

/// The product's pending rows: every committed row without a seq, in insertion order.
const PENDING_VISIBLE: &str = "SELECT id, row_number() OVER (ORDER BY id) AS n \
     FROM change_log WHERE seq IS NULL ORDER BY id LIMIT $1";

/// PgQ-style: below the snapshot's xmin, in transaction-id order.
const PENDING_BELOW_HORIZON: &str = "SELECT id, row_number() OVER (ORDER BY xid, id) AS n \
     FROM change_log \
     WHERE seq IS NULL AND xid < (SELECT pg_snapshot_xmin(pg_current_snapshot())) \
     ORDER BY xid, id LIMIT $1";

/// Transaction-id order with no horizon.
const PENDING_XID_ORDER: &str = "SELECT id, row_number() OVER (ORDER BY xid, id) AS n \
     FROM change_log WHERE seq IS NULL ORDER BY xid, id LIMIT $1";

/// Below a horizon read by an earlier statement (`$2`).
const PENDING_BELOW_GIVEN_HORIZON: &str = "SELECT id, row_number() OVER (ORDER BY xid, id) AS n \
     FROM change_log WHERE seq IS NULL AND xid < $2::xid8 ORDER BY xid, id LIMIT $1";

static ASSIGN_VISIBLE: LazyLock<String> = LazyLock::new(|| assign_sql(PENDING_VISIBLE));
static ASSIGN_BELOW_HORIZON: LazyLock<String> = LazyLock::new(|| assign_sql(PENDING_BELOW_HORIZON));
static ASSIGN_XID_ORDER: LazyLock<String> = LazyLock::new(|| assign_sql(PENDING_XID_ORDER));
static ASSIGN_BELOW_GIVEN_HORIZON: LazyLock<String> =
    LazyLock::new(|| assign_sql(PENDING_BELOW_GIVEN_HORIZON));

/// One statement: the pending rows, the counter bump (its row lock held to commit), the
/// assignment (guarded by `seq IS NULL`) and one NOTIFY with the new head (delivered at commit).
fn assign_sql(pending: &str) -> String {
    format!(
        "WITH pending AS MATERIALIZED ({pending}), \
         counter AS ( \
             UPDATE changefeed_sequencer SET head = head + (SELECT count(*) FROM pending) \
             WHERE EXISTS (SELECT 1 FROM pending) \
             RETURNING head - (SELECT count(*) FROM pending) AS base \
         ), \
         assigned AS ( \
             UPDATE change_log AS c SET seq = counter.base + pending.n \
             FROM pending, counter \
             WHERE c.id = pending.id AND c.seq IS NULL \
             RETURNING c.seq \
         ), \
         notified AS ( \
             SELECT pg_notify('{NOTIFY_CHANNEL}', max(seq)::text) FROM assigned \
             HAVING count(*) > 0 \
         ) \
         SELECT (SELECT count(*) FROM assigned) AS assigned, \
                (SELECT max(seq) FROM assigned) AS head, \
                (SELECT count(*) FROM notified) AS notified"
    )
}

/// The planted concurrent design (see [`AssignMode::ConcurrentSequence`]).
const CONCURRENT_SEQUENCE_SQL: &str = "WITH pending AS ( \
         SELECT id FROM change_log WHERE seq IS NULL ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED \
     ), \
     assigned AS ( \
         UPDATE change_log AS c SET seq = nextval('changefeed_planted_seq') \
         FROM pending WHERE c.id = pending.id AND c.seq IS NULL \
         RETURNING c.seq \
     ), \
     notified AS ( \
         SELECT pg_notify('changefeed', max(seq)::text) FROM assigned HAVING count(*) > 0 \
     ) \
     SELECT (SELECT count(*) FROM assigned) AS assigned, (SELECT max(seq) FROM assigned) AS head, \
         (SELECT count(*) FROM notified) AS notified";
