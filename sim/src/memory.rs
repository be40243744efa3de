//! The simulation's durable log: an in-memory [`Store`] keeping the same contract as SQLite
//! (proven by the same conformance suite, `tests/store_conformance.rs`), with no IO, no threads
//! and no clock but `tokio::time`.
//!
//! A [`MemoryStore`] is a cheap [`Clone`] handle over one shared log, so the log outlives a
//! simulated server crash: the simulation keeps a handle, hands clones to each incarnation of the
//! server, writes through [`MemoryStore::append`] as the domain writers' triggers would, and
//! calls [`MemoryStore::restart`] when a server comes back (the store contract's start-up epoch
//! rule, [`epoch_at_start`]).
//!
//! One writer at a time (appends take the lock), so the watermark is the highest seq allocated,
//! as on SQLite.
//!
//! Determinism: state sits behind one `std::sync::Mutex` never held across an `.await`; rows and
//! projects live in ordered maps (no hash iteration decides anything); a rotated epoch is derived
//! from the previous one, not drawn at random.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use changefeed::store::{
    epoch_at_start, prunable_prefix, ChangeNotifier, ChangeWatch, EpochDecision, LogBounds,
    PruneCandidate, Retention, Rows, Store, StoreError,
};
use changefeed_core::filter::is_kind;
use changefeed_core::{timestamp, Epoch, EventRow, FetchRequest, Filter, PayloadCheck, Seq};
use tokio::time::Instant;

/// 2026-01-01T00:00:00Z in Unix milliseconds: the wall-clock time the simulated clock starts at
/// (the first time the store reads `tokio::time`), unless [`MemoryStore::with_wall_origin`]
/// says otherwise.
pub const DEFAULT_WALL_ORIGIN_MS: u64 = 1_767_225_600_000;

/// An in-memory change log shared by every clone of the handle.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changes: ChangeNotifier,
}

#[derive(Debug)]
struct State {
    epoch: Epoch,
    /// The highest seq ever allocated.
    head: u64,
    published: u64,
    floor: u64,
    rows: BTreeMap<u64, EventRow>,
    projects: BTreeSet<String>,
    wall_origin_ms: u64,
    /// The `tokio::time` instant that [`State::wall_origin_ms`] corresponds to, fixed at the first
    /// read of the clock.
    clock_origin: Option<Instant>,
}

impl State {
    /// Time since the clock origin (zero at the first call).
    fn elapsed(&mut self) -> Duration {
        let now = Instant::now();
        let origin = *self.clock_origin.get_or_insert(now);
        now.saturating_duration_since(origin)
    }

    /// The simulated wall clock, in Unix milliseconds.
    fn wall_ms(&mut self) -> u64 {
        let elapsed = self.elapsed();
        self.wall_origin_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    fn bounds(&self) -> LogBounds {
        LogBounds {
            epoch: self.epoch,
            head: Seq(self.head),
            floor: Seq(self.floor),
        }
    }
}

impl MemoryStore {
    /// An empty log of `epoch`, with no projects.
    pub fn new(epoch: Epoch) -> MemoryStore {
        MemoryStore::with_wall_origin(epoch, DEFAULT_WALL_ORIGIN_MS)
    }

    /// An empty log whose `created_at` timestamps start at `wall_origin_ms` (Unix milliseconds)
    /// when the store first reads the clock, advancing with `tokio::time`.
    pub fn with_wall_origin(epoch: Epoch, wall_origin_ms: u64) -> MemoryStore {
        let changes = ChangeNotifier::default();
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    epoch,
                    head: 0,
                    published: 0,
                    floor: 0,
                    rows: BTreeMap::new(),
                    projects: BTreeSet::new(),
                    wall_origin_ms,
                    clock_origin: None,
                }),
                changes,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, but a poisoned log is still the log.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a project (no log row, as in SQLite); false if it already existed.
    pub fn create_project(&self, id: &str) -> bool {
        self.state().projects.insert(id.to_owned())
    }

    /// Appends one row as a trigger would, in its own "transaction": allocates `head + 1`, stamps
    /// the current time (RFC 3339 with milliseconds) and wakes every [`ChangeWatch`]. Rejects
    /// what SQLite's CHECKs reject: a kind outside `[a-z][a-z0-9_]*`, a payload that is not JSON.
    pub fn append(
        &self,
        project_id: &str,
        session_id: Option<&str>,
        kind: &str,
        payload_json: &str,
    ) -> Result<Seq, StoreError> {
        self.append_at(project_id, session_id, kind, payload_json, None)
    }

    /// [`MemoryStore::append`] with the timestamp as a writer stored it (`None`: now).
    pub fn append_at(
        &self,
        project_id: &str,
        session_id: Option<&str>,
        kind: &str,
        payload_json: &str,
        created_at: Option<&str>,
    ) -> Result<Seq, StoreError> {
        if !is_kind(kind) {
            return Err(StoreError::fatal(format!(
                "CHECK constraint failed: event_type {kind:?} is not [a-z][a-z0-9_]*"
            )));
        }
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(payload_json) {
            return Err(StoreError::fatal(format!(
                "CHECK constraint failed: payload is not valid JSON ({error})"
            )));
        }
        let seq = {
            let mut state = self.state();
            if state.head >= Seq::MAX.0 {
                return Err(StoreError::transient(
                    "database or disk is full: seq exhausted",
                ));
            }
            let created_at = match created_at {
                Some(text) => text.to_owned(),
                // Beyond the year 9999 the row gets no timestamp (encoded as a degraded null).
                None => i64::try_from(state.wall_ms())
                    .ok()
                    .and_then(timestamp::format_unix_millis)
                    .unwrap_or_default(),
            };
            state.head += 1;
            let seq = Seq(state.head);
            state.rows.insert(
                seq.0,
                EventRow {
                    seq,
                    project_id: project_id.to_owned(),
                    session_id: session_id.map(str::to_owned),
                    kind: kind.to_owned(),
                    payload: payload_json.to_owned(),
                    // Appends do not check the payload, so the encoder does.
                    payload_check: PayloadCheck::Unchecked,
                    created_at,
                },
            );
            seq
        };
        self.shared.changes.notify();
        Ok(seq)
    }

    /// An ordinary `DELETE`: removes the row, leaving a hole; head does not move. False if there
    /// was no such row.
    pub fn delete(&self, seq: Seq) -> bool {
        let removed = self.state().rows.remove(&seq.0).is_some();
        if removed {
            self.shared.changes.notify();
        }
        removed
    }

    /// Simulates a writer with `synchronous=NORMAL` losing its last commits to a power cut: rows
    /// above `to` vanish and head moves back to `to` (if above), so those seqs will be allocated
    /// again. Call [`MemoryStore::restart`] next, as a restarting server would.
    pub fn rollback(&self, to: Seq) {
        {
            let mut state = self.state();
            state.rows.split_off(&(to.0.saturating_add(1)));
            state.head = state.head.min(to.0);
        }
        self.shared.changes.notify();
    }

    /// What a restarting server's store does at open: the start-up epoch rule
    /// ([`epoch_at_start`]); a rotated epoch is derived from the old one, deterministically.
    /// Returns whether the epoch rotated.
    pub fn restart(&self) -> bool {
        {
            let mut state = self.state();
            let decision = epoch_at_start(Seq(state.head), Seq(state.floor), Seq(state.published));
            let EpochDecision::Rotate { published, floor } = decision else {
                return false;
            };
            state.epoch = Epoch(splitmix64(state.epoch.0));
            state.published = published.0;
            state.floor = floor.0;
        }
        self.shared.changes.notify();
        true
    }

    /// The published mark (see [`Store::mark_published`]).
    pub fn published(&self) -> Seq {
        Seq(self.state().published)
    }

    /// How many rows the log holds.
    pub fn len(&self) -> usize {
        self.state().rows.len()
    }

    /// Whether the log holds no rows.
    pub fn is_empty(&self) -> bool {
        self.state().rows.is_empty()
    }
}

impl Store for MemoryStore {
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        Ok(self.state().bounds())
    }

    async fn window(&self, filter: &Filter, range: FetchRequest) -> Result<Rows, StoreError> {
        let state = self.state();
        let rows = if range.upto <= range.after {
            Vec::new()
        } else {
            state
                .rows
                .range(range.after.0.saturating_add(1)..=range.upto.0)
                .map(|(_, row)| row)
                .filter(|row| filter.matches(&row.project_id, &row.kind))
                .cloned()
                .collect()
        };
        Ok(Rows::new(rows, state.bounds()))
    }

    async fn rows_after(&self, after: Seq, limit: usize) -> Result<Rows, StoreError> {
        let state = self.state();
        let rows = state
            .rows
            .range(after.0.saturating_add(1)..)
            .take(limit)
            .map(|(_, row)| row.clone())
            .collect();
        Ok(Rows::new(rows, state.bounds()))
    }

    async fn missing_projects(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let state = self.state();
        let mut seen = BTreeSet::new();
        Ok(ids
            .iter()
            .filter(|id| seen.insert(id.as_str()) && !state.projects.contains(id.as_str()))
            .cloned()
            .collect())
    }

    fn changes(&self) -> ChangeWatch {
        self.shared.changes.watch()
    }

    async fn mark_published(&self, seq: Seq) -> Result<(), StoreError> {
        let mut state = self.state();
        state.published = state.published.max(seq.0);
        Ok(())
    }

    async fn prune(&self, retention: Retention, batch: usize) -> Result<u64, StoreError> {
        if batch == 0 || retention.keeps_everything() {
            return Ok(0);
        }
        let mut state = self.state();
        let now_ms = state.wall_ms();
        // The (rows+1)-th newest row and everything older are beyond the newest `rows`.
        let beyond_rows = retention.rows.and_then(|keep| {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            state.rows.keys().rev().nth(keep).map(|seq| Seq(*seq))
        });
        let max_age_ms = retention.days.map(|days| days.saturating_mul(86_400_000));
        let candidates: Vec<PruneCandidate> = state
            .rows
            .values()
            .take(batch)
            .map(|row| PruneCandidate {
                seq: row.seq,
                // As on SQLite: a timestamp that cannot be read is never due by age.
                older_than_days: max_age_ms.is_some_and(|max_age| {
                    timestamp::parse_unix_millis(&row.created_at).is_some_and(|created| {
                        i128::from(now_ms) - i128::from(created) > i128::from(max_age)
                    })
                }),
            })
            .collect();
        let Some(last) = prunable_prefix(candidates, Seq(state.published), beyond_rows) else {
            return Ok(0);
        };
        let kept = state.rows.split_off(&(last.0 + 1));
        let deleted = std::mem::replace(&mut state.rows, kept).len() as u64;
        state.floor = state.floor.max(last.0);
        Ok(deleted)
    }
}

/// A bijective mix of the old epoch: a new, deterministic epoch.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: Epoch = Epoch(0x0123_4567_89ab_cdef);

    fn seqs(rows: &Rows) -> Vec<u64> {
        rows.rows().iter().map(|row| row.seq.0).collect()
    }

    #[tokio::test]
    async fn append_rejects_what_sqlite_rejects() {
        let store = MemoryStore::new(EPOCH);
        assert_eq!(
            store.append("p", None, "pr_updated", "{\"a\":1}").unwrap(),
            Seq(1)
        );
        for bad in ["", "Pr", "1x", "pr-x", "pr x", "prè"] {
            assert!(store.append("p", None, bad, "{}").is_err(), "{bad:?}");
        }
        for bad in ["", "{", "{'a':1}", "nope"] {
            assert!(store.append("p", None, "k", bad).is_err(), "{bad:?}");
        }
        assert_eq!(store.len(), 1);
        assert_eq!(store.bounds().await.unwrap().head, Seq(1));
    }

    #[tokio::test(start_paused = true)]
    async fn timestamps_and_ages_follow_the_simulated_clock() {
        let store = MemoryStore::new(EPOCH);
        store.append("p", None, "old", "{}").unwrap();
        store.append("p", None, "old", "{}").unwrap();
        tokio::time::advance(Duration::from_secs(2 * 86_400)).await;
        store.append("p", None, "new", "{}").unwrap();
        let (rows, _) = store.rows_after(Seq::ZERO, 10).await.unwrap().into_parts();
        assert_eq!(rows[0].created_at, "2026-01-01T00:00:00.000Z");
        assert_eq!(rows[2].created_at, "2026-01-03T00:00:00.000Z");
        let one_day = Retention {
            days: Some(1),
            rows: None,
        };
        store.mark_published(Seq(3)).await.unwrap();
        assert_eq!(store.prune(one_day, 1).await.unwrap(), 1);
        assert_eq!(store.prune(one_day, 10).await.unwrap(), 1);
        assert_eq!(store.prune(one_day, 10).await.unwrap(), 0);
        let bounds = store.bounds().await.unwrap();
        assert_eq!((bounds.floor, bounds.head), (Seq(2), Seq(3)));
    }

    #[tokio::test]
    async fn clones_share_one_log_and_restart_derives_the_new_epoch() {
        let store = MemoryStore::new(EPOCH);
        let server = store.clone();
        let mut changes = server.changes();
        store.append("p", None, "k", "{}").unwrap();
        store.append("p", None, "k", "{}").unwrap();
        changes.changed().await;
        server.mark_published(Seq(2)).await.unwrap();
        drop(server);
        assert_eq!(
            seqs(&store.rows_after(Seq::ZERO, 10).await.unwrap()),
            [1, 2]
        );
        store.rollback(Seq(1));
        assert!(store.restart());
        let rotated = store.bounds().await.unwrap().epoch;
        assert_eq!(rotated, Epoch(splitmix64(EPOCH.0)), "deterministic");
        assert!(!store.restart());
    }
}
