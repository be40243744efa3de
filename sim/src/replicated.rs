//! The simulation's model of one Postgres log shared by several replicas: writers whose
//! transactions stay open for a while and commit (or roll back, or die) out of order, rows that
//! get no seq until a sequencer numbers them, and a sequencer in every replica — the product's
//! own [`Sequencer`] loop, run against this model through its [`SequencerBackend`] seam, with the
//! election, the batch and its commit modelled on what the SQL of `AssignMode` does:
//!
//! - [`AssignMode::Visible`] (the product): the winner of the lock takes every committed pending
//!   row in insertion order, numbers it from the counter, and the batch becomes visible at once
//!   when it commits (after a simulated commit latency). The lock is held until then; a replica
//!   that dies meanwhile rolls the batch back (its rows are pending again, the counter unchanged).
//! - [`AssignMode::ConcurrentSequence`] (planted): no lock; each batch skips rows another open
//!   batch holds, takes seqs from a non-transactional sequence when it starts, and becomes
//!   visible when it commits, so a batch with lower seqs can become visible after one with
//!   higher seqs — below a tail that already moved past them.
//!
//! Determinism: one `std::sync::Mutex` never held across an `.await`, ordered maps only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use changefeed::store::postgres::sequencer::{SequencerBackend, Tick};
use changefeed::store::postgres::AssignMode;
use changefeed::store::StoreError;
use changefeed_core::{Epoch, Seq};

/// A writer's transaction in the model.
pub type Xid = u64;

/// One pending row: written by transaction `xid`, visible to sequencers once it committed.
#[derive(Debug, Clone)]
pub struct PendingRow {
    /// The writing transaction.
    pub xid: Xid,
    /// Its project.
    pub project: String,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: String,
    /// Whether its transaction committed (uncommitted rows are invisible).
    pub committed: bool,
}

/// A numbered row of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Its seq.
    pub seq: Seq,
    /// Its insertion id (the order the sequencer numbers in).
    pub id: u64,
    /// Its project.
    pub project: String,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: String,
}

#[derive(Debug)]
struct Batch {
    rows: Vec<(u64, Seq, PendingRow)>,
    holds_lock: bool,
}

#[derive(Debug)]
struct State {
    epoch: Epoch,
    /// The counter: highest seq any committed batch assigned.
    head: u64,
    next_id: u64,
    next_xid: Xid,
    next_batch: u64,
    /// The planted design's sequence (never rolled back).
    sequence: u64,
    open_transactions: BTreeSet<Xid>,
    pending: BTreeMap<u64, PendingRow>,
    log: BTreeMap<u64, LogRow>,
    /// Batches begun and not yet committed or rolled back.
    batches: BTreeMap<u64, Batch>,
    /// Who holds the sequencer lock (a batch id), if anyone.
    lock: Option<u64>,
    /// Generations of change signals (NOTIFY), one per committed batch.
    notifies: u64,
    /// Draws each batch's commit latency (seeded: a run is a function of its seed).
    latency: fastrand::Rng,
}

/// The shared log; a cheap clone.
#[derive(Debug, Clone)]
pub struct ReplicatedLog {
    state: Arc<Mutex<State>>,
    /// The longest a sequencer batch takes to commit (while it holds its rows and the lock);
    /// each batch draws its own latency up to this.
    commit_latency: Duration,
}

impl ReplicatedLog {
    /// An empty log of `epoch` whose sequencer batches take up to `commit_latency` to commit,
    /// each drawn from `seed`.
    pub fn new(epoch: Epoch, commit_latency: Duration, seed: u64) -> ReplicatedLog {
        ReplicatedLog {
            state: Arc::new(Mutex::new(State {
                epoch,
                head: 0,
                next_id: 1,
                next_xid: 1,
                next_batch: 1,
                sequence: 0,
                open_transactions: BTreeSet::new(),
                pending: BTreeMap::new(),
                log: BTreeMap::new(),
                batches: BTreeMap::new(),
                lock: None,
                notifies: 0,
                latency: fastrand::Rng::with_seed(seed),
            })),
            commit_latency,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Begins a writer's transaction. Dropping the returned guard without committing rolls it
    /// back (a writer that dies mid-transaction).
    pub fn begin(&self) -> WriterTx {
        let mut state = self.state();
        let xid = state.next_xid;
        state.next_xid += 1;
        state.open_transactions.insert(xid);
        WriterTx {
            log: self.clone(),
            xid,
            done: false,
        }
    }

    /// Every numbered row, in seq order.
    pub fn rows(&self) -> Vec<LogRow> {
        self.state().log.values().cloned().collect()
    }

    /// The counter (head).
    pub fn head(&self) -> Seq {
        Seq(self.state().head)
    }

    /// Committed rows still without a visible seq: pending, or taken by a batch that has not
    /// committed (as `seq IS NULL` counts them on Postgres; a batch killed before its commit
    /// gives them back).
    pub fn waiting(&self) -> usize {
        let state = self.state();
        let pending = state.pending.values().filter(|row| row.committed).count();
        let in_batches: usize = state.batches.values().map(|batch| batch.rows.len()).sum();
        pending + in_batches
    }

    /// How many batches have committed (the NOTIFYs sent).
    pub fn notifies(&self) -> u64 {
        self.state().notifies
    }

    /// The log's epoch.
    pub fn epoch(&self) -> Epoch {
        self.state().epoch
    }

    fn begin_batch(&self, mode: AssignMode, batch: u32) -> Option<BatchGuard> {
        let mut state = self.state();
        let state = &mut *state;
        let holds_lock = mode != AssignMode::ConcurrentSequence;
        if holds_lock && state.lock.is_some() {
            return None;
        }
        let taken: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, row)| row.committed)
            .map(|(id, _)| *id)
            .take(batch.max(1) as usize)
            .collect();
        let mut rows = Vec::new();
        for (index, id) in taken.into_iter().enumerate() {
            let row = state.pending.remove(&id).expect("taken from pending");
            let seq = if holds_lock {
                // From the counter: the next seqs after every committed batch.
                state.head + 1 + index as u64
            } else {
                state.sequence += 1;
                state.sequence
            };
            rows.push((id, Seq(seq), row));
        }
        let id = state.next_batch;
        state.next_batch += 1;
        if holds_lock {
            state.lock = Some(id);
        }
        state.batches.insert(id, Batch { rows, holds_lock });
        Some(BatchGuard {
            log: self.clone(),
            id,
            done: false,
        })
    }
}

/// A writer's open transaction.
#[derive(Debug)]
pub struct WriterTx {
    log: ReplicatedLog,
    xid: Xid,
    done: bool,
}

impl WriterTx {
    /// Appends one row (invisible until commit); returns its insertion id.
    pub fn append(&mut self, project: &str, kind: &str, payload: &str) -> u64 {
        let mut state = self.log.state();
        let id = state.next_id;
        state.next_id += 1;
        state.pending.insert(
            id,
            PendingRow {
                xid: self.xid,
                project: project.to_owned(),
                kind: kind.to_owned(),
                payload: payload.to_owned(),
                committed: false,
            },
        );
        id
    }

    /// Commits: its rows become visible to the sequencers.
    pub fn commit(mut self) {
        self.done = true;
        let mut state = self.log.state();
        state.open_transactions.remove(&self.xid);
        let xid = self.xid;
        for row in state.pending.values_mut().filter(|row| row.xid == xid) {
            row.committed = true;
        }
    }

    /// Rolls back: its rows vanish.
    pub fn rollback(mut self) {
        self.done = true;
        self.abort();
    }

    fn abort(&self) {
        let mut state = self.log.state();
        state.open_transactions.remove(&self.xid);
        let xid = self.xid;
        state.pending.retain(|_, row| row.xid != xid);
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}

/// A sequencer batch that has its rows and seqs and has not committed; dropped uncommitted (the
/// replica died) it rolls back: the rows are pending again, the lock free, the counter unchanged
/// (the planted design's sequence is not rolled back, as a Postgres sequence is not).
#[derive(Debug)]
struct BatchGuard {
    log: ReplicatedLog,
    id: u64,
    done: bool,
}

impl BatchGuard {
    fn commit(mut self) -> Tick {
        self.done = true;
        let mut state = self.log.state();
        let state = &mut *state;
        let batch = state.batches.remove(&self.id).expect("an open batch");
        if batch.holds_lock {
            state.lock = None;
        }
        let mut rows = 0;
        let mut high = 0;
        for (id, seq, row) in batch.rows {
            rows += 1;
            high = high.max(seq.0);
            state.log.insert(
                seq.0,
                LogRow {
                    seq,
                    id,
                    project: row.project,
                    kind: row.kind,
                    payload: row.payload,
                },
            );
        }
        if rows == 0 {
            return Tick::Idle;
        }
        state.head = state.head.max(high);
        state.notifies += 1;
        Tick::Assigned {
            rows,
            head: Seq(high),
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.log.state();
        if let Some(batch) = state.batches.remove(&self.id) {
            if batch.holds_lock {
                state.lock = None;
            }
            for (id, _, row) in batch.rows {
                state.pending.insert(id, row);
            }
        }
    }
}

impl SequencerBackend for ReplicatedLog {
    async fn has_pending(&self) -> Result<bool, StoreError> {
        Ok(self.waiting() > 0)
    }

    async fn assign_batch(&self, mode: AssignMode, batch: u32) -> Result<Tick, StoreError> {
        let Some(guard) = self.begin_batch(mode, batch) else {
            return Ok(Tick::Lost);
        };
        // The commit takes a while; a replica that dies here rolls the batch back.
        let max = u64::try_from(self.commit_latency.as_micros()).unwrap_or(u64::MAX);
        let latency = Duration::from_micros(self.state().latency.u64(0..=max));
        tokio::time::sleep(latency).await;
        Ok(guard.commit())
    }
}
