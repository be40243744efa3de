//! The in-memory store of the deterministic simulation: the same [`Store`] contract as SQLite,
//! with no IO, no threads and no clock but `tokio::time`.
//!
//! A [`MemoryStore`] is a cheap [`Clone`] handle over one shared log, so the log outlives a
//! simulated server crash: the simulation keeps a handle, hands clones to each incarnation of the
//! server, writes through [`MemoryStore::append`] as the domain writers' triggers would, and
//! calls [`MemoryStore::restart`] when a server comes back (the start-up epoch rule of
//! [`SqliteStore::open`](super::sqlite::SqliteStore::open)).
//!
//! Determinism: state sits behind one `std::sync::Mutex` never held across an `.await`; rows and
//! projects live in ordered maps (no hash iteration decides anything); a rotated epoch is derived
//! from the previous one, not drawn at random.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use changefeed_core::filter::is_kind;
use changefeed_core::{timestamp, Epoch, EventRow, Filter, PayloadCheck, Seq};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{bump, ChangeWatch, LogBounds, Retention, Store, StoreError, WindowRows};

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
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    epoch: Epoch,
    /// The highest seq ever allocated.
    head: u64,
    published: u64,
    floor: u64,
    rows: BTreeMap<u64, StoredRow>,
    projects: BTreeSet<String>,
    wall_origin_ms: u64,
    /// The `tokio::time` instant that [`State::wall_origin_ms`] corresponds to, fixed at the first
    /// read of the clock.
    clock_origin: Option<Instant>,
}

#[derive(Debug)]
struct StoredRow {
    row: EventRow,
    /// When it was appended, as time since `clock_origin` (what the age rule of `prune` reads).
    age_origin: Duration,
}

impl State {
    /// Time since the clock origin (zero at the first call).
    fn elapsed(&mut self) -> Duration {
        let now = Instant::now();
        let origin = *self.clock_origin.get_or_insert(now);
        now.saturating_duration_since(origin)
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
        let (changes, _) = watch::channel(0u64);
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
        if !is_kind(kind) {
            return Err(StoreError(format!(
                "CHECK constraint failed: event_type {kind:?} is not [a-z][a-z0-9_]*"
            )));
        }
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(payload_json) {
            return Err(StoreError(format!(
                "CHECK constraint failed: payload is not valid JSON ({error})"
            )));
        }
        let seq = {
            let mut state = self.state();
            if state.head >= Seq::MAX.0 {
                return Err(StoreError("database or disk is full: seq exhausted".into()));
            }
            let elapsed = state.elapsed();
            let wall_ms = state
                .wall_origin_ms
                .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            // Beyond the year 9999 the row gets no timestamp (encoded as a degraded null).
            let created_at = i64::try_from(wall_ms)
                .ok()
                .and_then(timestamp::format_unix_millis)
                .unwrap_or_default();
            state.head += 1;
            let seq = state.head;
            state.rows.insert(
                seq,
                StoredRow {
                    row: EventRow {
                        seq: Seq(seq),
                        project_id: project_id.to_owned(),
                        session_id: session_id.map(str::to_owned),
                        kind: kind.to_owned(),
                        payload: payload_json.to_owned(),
                        // Appends do not check the payload, so the encoder does.
                        payload_check: PayloadCheck::Unchecked,
                        created_at,
                    },
                    age_origin: elapsed,
                },
            );
            Seq(seq)
        };
        bump(&self.shared.changes);
        Ok(seq)
    }

    /// An ordinary `DELETE`: removes the row, leaving a hole; head does not move. False if there
    /// was no such row.
    pub fn delete(&self, seq: Seq) -> bool {
        let removed = self.state().rows.remove(&seq.0).is_some();
        if removed {
            bump(&self.shared.changes);
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
        bump(&self.shared.changes);
    }

    /// The start-up epoch rule, as [`SqliteStore::open`](super::sqlite::SqliteStore::open)
    /// applies it: if head is below the published mark, the epoch rotates (derived from the old
    /// one, deterministically), the mark resets to head and the floor is capped at head. Returns
    /// whether the epoch rotated.
    pub fn restart(&self) -> bool {
        {
            let mut state = self.state();
            if state.head >= state.published {
                return false;
            }
            state.epoch = Epoch(splitmix64(state.epoch.0));
            state.published = state.head;
            state.floor = state.floor.min(state.head);
        }
        bump(&self.shared.changes);
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

    async fn window(
        &self,
        filter: &Filter,
        after: Seq,
        upto: Seq,
    ) -> Result<WindowRows, StoreError> {
        let state = self.state();
        let rows = if upto <= after {
            Vec::new()
        } else {
            state
                .rows
                .range(after.0.saturating_add(1)..=upto.0)
                .map(|(_, stored)| &stored.row)
                .filter(|row| filter.matches(&row.project_id, &row.kind))
                .cloned()
                .collect()
        };
        Ok(WindowRows {
            rows,
            bounds: state.bounds(),
        })
    }

    async fn rows_after(&self, after: Seq, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let state = self.state();
        Ok(state
            .rows
            .range(after.0.saturating_add(1)..)
            .take(limit)
            .map(|(_, stored)| stored.row.clone())
            .collect())
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
        ChangeWatch::new(self.shared.changes.subscribe())
    }

    async fn mark_published(&self, seq: Seq) -> Result<(), StoreError> {
        let mut state = self.state();
        state.published = state.published.max(seq.0);
        Ok(())
    }

    async fn prune(&self, retention: Retention, batch: usize) -> Result<u64, StoreError> {
        if batch == 0 || (retention.days.is_none() && retention.rows.is_none()) {
            return Ok(0);
        }
        let mut state = self.state();
        let now = state.elapsed();
        let total = state.rows.len() as u64;
        // Rows older than this (appended before `now - days`) are due by age.
        let max_age = retention
            .days
            .map(|days| Duration::from_secs(days.saturating_mul(86_400)));
        // As in SQLite: only a prefix in seq order goes, so the floor stays exact.
        let mut last = None;
        for (index, (seq, stored)) in state.rows.iter().take(batch).enumerate() {
            // Never above the published mark: live subscribers have not seen those rows, and
            // deleting them would skip them without a reset.
            if *seq > state.published {
                break;
            }
            let beyond_rows = retention
                .rows
                .is_some_and(|keep| (index as u64) < total.saturating_sub(keep));
            let too_old =
                max_age.is_some_and(|max_age| now.saturating_sub(stored.age_origin) > max_age);
            if !(beyond_rows || too_old) {
                break;
            }
            last = Some(*seq);
        }
        let Some(last) = last else {
            return Ok(0);
        };
        let kept = state.rows.split_off(&(last + 1));
        let deleted = std::mem::replace(&mut state.rows, kept).len() as u64;
        state.floor = state.floor.max(last);
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
    use changefeed_core::TypePattern;

    const EPOCH: Epoch = Epoch(0x0123_4567_89ab_cdef);

    fn store_with(rows: &[(&str, &str)]) -> MemoryStore {
        let store = MemoryStore::new(EPOCH);
        for (project, kind) in rows {
            store.append(project, Some("s"), kind, "{}").unwrap();
        }
        store
    }

    fn seqs(rows: &[EventRow]) -> Vec<u64> {
        rows.iter().map(|row| row.seq.0).collect()
    }

    fn filter(projects: Option<&[&str]>, types: Option<&[&str]>) -> Filter {
        Filter {
            projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
            types: types.map(|t| t.iter().map(|s| TypePattern::parse(s).unwrap()).collect()),
        }
    }

    #[tokio::test]
    async fn append_allocates_seqs_and_rejects_what_sqlite_rejects() {
        let store = MemoryStore::new(EPOCH);
        assert_eq!(
            store.append("p", None, "pr_updated", "{\"a\":1}").unwrap(),
            Seq(1)
        );
        assert_eq!(store.append("p", Some("s"), "x9_y", "[]").unwrap(), Seq(2));
        for bad in ["", "Pr", "1x", "pr-x", "pr x", "prè"] {
            assert!(store.append("p", None, bad, "{}").is_err(), "{bad:?}");
        }
        for bad in ["", "{", "{'a':1}", "nope"] {
            assert!(store.append("p", None, "k", bad).is_err(), "{bad:?}");
        }
        let rows = store.rows_after(Seq::ZERO, 10).await.unwrap();
        assert_eq!(seqs(&rows), [1, 2]);
        assert_eq!(rows[0].session_id, None);
        assert_eq!(rows[1].session_id.as_deref(), Some("s"));
        assert_eq!(rows[0].created_at, "2026-01-01T00:00:00.000Z");
        assert_eq!(store.bounds().await.unwrap().head, Seq(2));
    }

    #[tokio::test]
    async fn head_survives_deleting_the_newest_rows() {
        let store = store_with(&[("p", "a"), ("p", "b"), ("p", "c")]);
        assert!(store.delete(Seq(3)));
        assert!(store.delete(Seq(2)));
        assert!(!store.delete(Seq(2)));
        let bounds = store.bounds().await.unwrap();
        assert_eq!(bounds.head, Seq(3));
        assert_eq!(bounds.epoch, EPOCH);
        assert_eq!(store.append("p", None, "d", "{}").unwrap(), Seq(4));
    }

    #[tokio::test]
    async fn window_applies_projects_kinds_and_bounds() {
        let store = store_with(&[
            ("a", "pr_updated"),
            ("a", "project_created"),
            ("b", "pr_created"),
            ("a", "session_created"),
            ("c", "pr_updated"),
        ]);
        store.delete(Seq(4));
        let all = store.window(&Filter::all(), Seq(0), Seq(5)).await.unwrap();
        assert_eq!(seqs(&all.rows), [1, 2, 3, 5]);
        assert_eq!(all.bounds.head, Seq(5));
        let prs = filter(None, Some(&["pr_*"]));
        let window = store.window(&prs, Seq(0), Seq(5)).await.unwrap();
        assert_eq!(
            seqs(&window.rows),
            [1, 3, 5],
            "pr_* must not match project_created"
        );
        let scoped = filter(Some(&["a", "b"]), Some(&["pr_*", "session_created"]));
        let window = store.window(&scoped, Seq(1), Seq(4)).await.unwrap();
        assert_eq!(seqs(&window.rows), [3]);
        let empty = store.window(&Filter::all(), Seq(3), Seq(3)).await.unwrap();
        assert!(empty.rows.is_empty());
        assert_eq!(empty.bounds.head, Seq(5));
        assert_eq!(seqs(&store.rows_after(Seq(1), 2).await.unwrap()), [2, 3]);
    }

    #[tokio::test]
    async fn missing_projects_lists_unknown_ids_once_in_order() {
        let store = MemoryStore::new(EPOCH);
        assert!(store.create_project("a"));
        assert!(!store.create_project("a"));
        let ids: Vec<String> = ["z", "a", "y", "z"].map(String::from).into();
        assert_eq!(store.missing_projects(&ids).await.unwrap(), ["z", "y"]);
        assert!(store.missing_projects(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn changes_wake_every_waiter_and_lose_nothing_between_calls() {
        let store = MemoryStore::new(EPOCH);
        let mut first = store.changes();
        let mut second = first.clone();
        assert!(!first.has_changed());
        // A commit between subscribing (or the previous wake) and waiting is not lost.
        store.append("p", None, "k", "{}").unwrap();
        assert!(first.has_changed());
        first.changed().await;
        second.changed().await;
        assert!(!first.has_changed());
        let waiter = tokio::spawn(async move {
            first.changed().await;
        });
        tokio::task::yield_now().await;
        store.append("p", None, "k", "{}").unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .unwrap();
        // A watch taken after the commit does not see it as a change.
        assert!(!store.changes().has_changed());
    }

    #[tokio::test]
    async fn published_mark_only_rises_and_restart_rotates_when_head_is_behind() {
        let store = store_with(&[("p", "a"), ("p", "b"), ("p", "c")]);
        store.mark_published(Seq(3)).await.unwrap();
        store.mark_published(Seq(2)).await.unwrap();
        assert_eq!(store.published(), Seq(3));
        assert!(!store.restart(), "head == published: same log");
        assert_eq!(store.bounds().await.unwrap().epoch, EPOCH);

        // Rows 2 and 3 are lost (and floor was at 3): seqs 2 and 3 will be allocated again.
        store
            .prune(
                Retention {
                    days: None,
                    rows: Some(0),
                },
                3,
            )
            .await
            .unwrap();
        assert_eq!(store.bounds().await.unwrap().floor, Seq(3));
        store.rollback(Seq(1));
        assert!(store.restart());
        let bounds = store.bounds().await.unwrap();
        assert_ne!(bounds.epoch, EPOCH);
        assert_eq!(bounds.head, Seq(1));
        assert_eq!(bounds.floor, Seq(1));
        assert_eq!(store.published(), Seq(1));
        assert_eq!(store.append("p", None, "d", "{}").unwrap(), Seq(2));
        assert!(!store.restart());
    }

    #[tokio::test]
    async fn prune_by_rows_respects_batch_and_raises_floor() {
        let store = store_with(&[("p", "a"); 10]);
        let keep_four = Retention {
            days: None,
            rows: Some(4),
        };
        // Only up to the published mark: rows live subscribers were not sent yet stay.
        assert_eq!(store.prune(keep_four, 10).await.unwrap(), 0);
        store.mark_published(Seq(2)).await.unwrap();
        assert_eq!(store.prune(keep_four, 10).await.unwrap(), 2);
        assert_eq!(store.bounds().await.unwrap().floor, Seq(2));
        store.mark_published(Seq(10)).await.unwrap();
        assert_eq!(store.prune(keep_four, 2).await.unwrap(), 2);
        assert_eq!(store.bounds().await.unwrap().floor, Seq(4));
        assert_eq!(store.prune(keep_four, 4).await.unwrap(), 2);
        assert_eq!(store.bounds().await.unwrap().floor, Seq(6));
        assert_eq!(store.prune(keep_four, 4).await.unwrap(), 0);
        assert_eq!(store.len(), 4);
        assert_eq!(store.prune(Retention::default(), 4).await.unwrap(), 0);
        assert_eq!(store.prune(keep_four, 0).await.unwrap(), 0);
        let bounds = store.bounds().await.unwrap();
        assert_eq!((bounds.floor, bounds.head), (Seq(6), Seq(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn prune_by_days_uses_tokio_time() {
        let store = store_with(&[("p", "old"), ("p", "old")]);
        tokio::time::advance(Duration::from_secs(2 * 86_400)).await;
        store.append("p", None, "new", "{}").unwrap();
        let rows = store.rows_after(Seq(2), 1).await.unwrap();
        assert_eq!(rows[0].created_at, "2026-01-03T00:00:00.000Z");
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
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn clones_share_one_log() {
        let store = MemoryStore::new(EPOCH);
        let server = store.clone();
        let mut changes = server.changes();
        store.append("p", None, "k", "{}").unwrap();
        changes.changed().await;
        drop(server);
        assert_eq!(store.len(), 1);
        assert_eq!(store.clone().bounds().await.unwrap().head, Seq(1));
    }
}
