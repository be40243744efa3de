//! The store contract as checks every [`Store`] must pass, generic over a small [`Harness`]
//! that writes to the log the way the store's writers do (feature `conformance`).
//!
//! A store's test file implements [`Harness`] and invokes [`store_conformance_tests!`] once; it
//! expands to one `#[tokio::test]` per check, each on a fresh log:
//!
//! ```ignore
//! changefeed::store_conformance_tests!(MyHarness::new);  // an async fn() -> MyHarness
//! ```
//!
//! The expected values are written out in each check (never computed by code under test), and
//! filters are checked against hand-written lists of seqs.

use std::future::Future;
use std::time::Duration;

use changefeed_core::{Epoch, EventRow, FetchRequest, Filter, Seq, TypePattern};

use super::{LogBounds, Retention, Rows, Store};
use changefeed_core::LocateRequest;

/// A row to append, as a writer's trigger would write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRow<'a> {
    /// Its project.
    pub project: &'a str,
    /// Its session, if any.
    pub session: Option<&'a str>,
    /// Its kind.
    pub kind: &'a str,
    /// Its payload JSON text.
    pub payload: &'a str,
    /// Its timestamp as stored, or `None` for the store's own "now".
    pub created_at: Option<&'a str>,
}

impl<'a> NewRow<'a> {
    /// A row of `project` and `kind` with an empty payload, stamped now.
    pub fn new(project: &'a str, kind: &'a str) -> NewRow<'a> {
        NewRow {
            project,
            session: None,
            kind,
            payload: "{}",
            created_at: None,
        }
    }

    /// The same row stamped `created_at`.
    pub fn at(self, created_at: &'a str) -> NewRow<'a> {
        NewRow {
            created_at: Some(created_at),
            ..self
        }
    }
}

/// How the suite drives one store: the writes and restarts a test needs, done the way the
/// store's own writers and server would. Failures panic (they fail the check).
pub trait Harness: Send {
    /// The store under test.
    type Store: Store;

    /// The store as the server would hold it now (after the last [`Harness::restart`]).
    fn store(&self) -> Self::Store;

    /// Creates a project (no log row).
    fn create_project(&mut self, id: &str) -> impl Future<Output = ()> + Send;

    /// Appends one row in its own committed transaction and returns its seq.
    fn append(&mut self, row: NewRow<'_>) -> impl Future<Output = Seq> + Send;

    /// Deletes one row, as any `DELETE` by another program would.
    fn delete(&mut self, seq: Seq) -> impl Future<Output = ()> + Send;

    /// A writer lost its newest commits (a power cut under `synchronous=NORMAL`, a restored
    /// backup): every row above `seq` vanishes and those seqs will be allocated again.
    fn lose_commits_after(&mut self, seq: Seq) -> impl Future<Output = ()> + Send;

    /// Stops the store and opens it again, as a restarting server does.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;

    /// The persisted published mark, read directly.
    fn published_mark(&mut self) -> impl Future<Output = Seq> + Send;
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh harness from
/// `$make` (an `async fn() -> impl Harness`, or a closure returning such a future).
///
/// `store_conformance_tests!(optional $make)` takes a `$make` that returns
/// `Option<impl Harness>` instead: `None` (say, no database server configured; the harness says
/// why, and fails where it must not be missing) ends the check without running it.
#[macro_export]
macro_rules! store_conformance_tests {
    (optional $make:expr) => {
        $crate::store_conformance_tests!(@checks optional $make);
    };
    ($make:expr) => {
        $crate::store_conformance_tests!(@checks required $make);
    };
    // The one list of checks, for both forms.
    (@checks $how:ident $make:expr) => {
        $crate::store_conformance_tests!(@ $how $make;
            head_is_a_watermark_that_deletes_do_not_lower,
            rows_keep_their_fields_and_come_in_seq_order,
            windows_apply_the_filter_and_the_range,
            locate_counts_exactly_matching_rows_from_the_end,
            rows_after_skips_holes_and_honours_the_limit,
            missing_projects_names_each_unknown_id_once,
            a_watch_taken_before_a_commit_wakes,
            the_published_mark_only_rises,
            a_restart_keeps_the_epoch_unless_commits_were_lost,
            prune_by_count_deletes_batches_up_to_the_published_mark,
            prune_by_age_stops_at_the_first_recent_row,
        );
    };
    (@optional $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(harness) = ($make)().await {
                    $crate::store::conformance::$check(harness).await;
                }
            }
        )*
    };
    (@required $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::store::conformance::$check(($make)().await).await;
            }
        )*
    };
}

/// A failure bound only: waits return as soon as their condition holds.
const WAKE_BOUND: Duration = Duration::from_secs(10);

fn range(after: u64, upto: u64) -> FetchRequest {
    FetchRequest {
        after: Seq(after),
        upto: Seq(upto),
    }
}

fn filter(projects: Option<&[&str]>, types: Option<&[&str]>) -> Filter {
    Filter {
        projects: projects.map(|p| p.iter().map(|s| s.to_string()).collect()),
        types: types.map(|t| t.iter().map(|s| TypePattern::parse(s).unwrap()).collect()),
        ..Filter::all()
    }
}

/// The seqs of `rows`, after checking what every read must hold: strictly increasing seqs,
/// none above the watermark of the same snapshot.
fn seqs(rows: &Rows) -> Vec<u64> {
    let head = rows.bounds().head;
    let seqs: Vec<u64> = rows.rows().iter().map(|row| row.seq.0).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "rows out of order: {seqs:?}"
    );
    assert!(
        seqs.iter().all(|seq| *seq <= head.0),
        "rows {seqs:?} above the watermark {head:?}"
    );
    seqs
}

async fn bounds<H: Harness>(harness: &H) -> LogBounds {
    harness.store().bounds().await.expect("bounds")
}

async fn all_rows<H: Harness>(harness: &H) -> Rows {
    harness
        .store()
        .rows_after(Seq::ZERO, 100_000)
        .await
        .expect("rows_after")
}

async fn append_n<H: Harness>(harness: &mut H, count: usize) {
    for _ in 0..count {
        harness.append(NewRow::new("p", "k")).await;
    }
}

async fn prune<H: Harness>(harness: &H, days: Option<u64>, rows: Option<u64>, batch: usize) -> u64 {
    harness
        .store()
        .prune(Retention { days, rows }, batch)
        .await
        .expect("prune")
}

/// Head is the watermark: it covers every row, and deleting the newest rows does not move it
/// back (the next row gets the next seq, never a deleted one).
pub async fn head_is_a_watermark_that_deletes_do_not_lower<H: Harness>(mut harness: H) {
    let empty = bounds(&harness).await;
    assert_eq!((empty.head, empty.floor), (Seq(0), Seq(0)));
    for kind in ["a", "b", "c"] {
        harness.append(NewRow::new("p", kind)).await;
    }
    assert_eq!(bounds(&harness).await.head, Seq(3));
    harness.delete(Seq(3)).await;
    harness.delete(Seq(2)).await;
    let after_delete = bounds(&harness).await;
    assert_eq!(
        after_delete.head,
        Seq(3),
        "deleting the newest rows keeps the head"
    );
    assert_eq!(after_delete.epoch, empty.epoch);
    assert_eq!(harness.append(NewRow::new("p", "d")).await, Seq(4));
    let rows = all_rows(&harness).await;
    assert_eq!(seqs(&rows), [1, 4]);
    assert_eq!(rows.bounds().head, Seq(4));
}

/// Rows come back exactly as written, in seq order.
pub async fn rows_keep_their_fields_and_come_in_seq_order<H: Harness>(mut harness: H) {
    let first = harness
        .append(NewRow {
            project: "p1",
            session: Some("s1"),
            kind: "pr_updated",
            payload: r#"{"a":1,"b":[true,null]}"#,
            created_at: Some("2020-01-01 00:00:00"),
        })
        .await;
    let second = harness
        .append(NewRow {
            project: "p2",
            session: None,
            kind: "x9_y",
            payload: "[]",
            created_at: Some("2026-11-26T21:13:07.123Z"),
        })
        .await;
    let third = harness.append(NewRow::new("p1", "session_created")).await;
    assert_eq!((first, second, third), (Seq(1), Seq(2), Seq(3)));
    let rows = all_rows(&harness).await;
    assert_eq!(seqs(&rows), [1, 2, 3]);
    // Every column as written (whether a store vouches for the payload is its own business).
    let columns = |row: &EventRow| {
        (
            row.seq.0,
            row.project_id.clone(),
            row.session_id.clone(),
            row.kind.clone(),
            row.payload.clone(),
            row.created_at.clone(),
        )
    };
    let text = |text: &str| text.to_owned();
    assert_eq!(
        rows.rows()[..2].iter().map(columns).collect::<Vec<_>>(),
        [
            (
                1,
                text("p1"),
                Some(text("s1")),
                text("pr_updated"),
                text(r#"{"a":1,"b":[true,null]}"#),
                text("2020-01-01 00:00:00"),
            ),
            (
                2,
                text("p2"),
                None,
                text("x9_y"),
                text("[]"),
                text("2026-11-26T21:13:07.123Z"),
            ),
        ]
    );
    let now_stamped = &rows.rows()[2].created_at;
    assert!(
        now_stamped.len() >= 19 && now_stamped.as_bytes()[4] == b'-',
        "a row stamped by the store has a timestamp: {now_stamped:?}"
    );
}

/// A window holds exactly the rows in `(after, upto]` its filter matches (projects, exact
/// kinds, `prefix*` globs in which `_` is literal), with the bounds of its snapshot.
pub async fn windows_apply_the_filter_and_the_range<H: Harness>(mut harness: H) {
    for (project, kind) in [
        ("a", "pr_created"),
        ("a", "project_created"),
        ("b", "pr_updated"),
        ("c", "pr_updated"),
        ("a", "session_created"),
        ("b", "prx"),
        ("a", "pr_check_recorded"),
        ("b", "session_updated"),
    ] {
        harness.append(NewRow::new(project, kind)).await;
    }
    harness.delete(Seq(5)).await;
    let epoch: Epoch = bounds(&harness).await.epoch;
    let cases: &[(Filter, u64, u64, &[u64])] = &[
        (Filter::all(), 0, 8, &[1, 2, 3, 4, 6, 7, 8]),
        (filter(None, Some(&["*"])), 0, 8, &[1, 2, 3, 4, 6, 7, 8]),
        (filter(None, Some(&["pr_*"])), 0, 8, &[1, 3, 4, 7]),
        (filter(Some(&["a", "b"]), Some(&["pr_*"])), 0, 8, &[1, 3, 7]),
        (filter(Some(&["a"]), None), 0, 8, &[1, 2, 7]),
        (filter(Some(&["b"]), None), 3, 6, &[6]),
        (
            filter(None, Some(&["pr_updated", "session_*"])),
            0,
            8,
            &[3, 4, 8],
        ),
        (filter(Some(&["a"]), Some(&["session_*"])), 0, 8, &[]),
        (filter(Some(&["nobody"]), None), 0, 8, &[]),
        (filter(Some(&[]), None), 0, 8, &[]),
        (filter(None, Some(&[])), 0, 8, &[]),
        (Filter::all(), 2, 4, &[3, 4]),
        (Filter::all(), 4, 6, &[6]),
        (Filter::all(), 6, 100, &[7, 8]),
        (Filter::all(), 8, 8, &[]),
        (Filter::all(), 5, 3, &[]),
    ];
    for (filter, after, upto, expected) in cases {
        let window = harness
            .store()
            .window(filter, range(*after, *upto))
            .await
            .expect("window");
        assert_eq!(seqs(&window), *expected, "{filter:?} ({after}, {upto}]");
        let at = window.bounds();
        assert_eq!((at.epoch, at.head, at.floor), (epoch, Seq(8), Seq(0)));
    }
}

/// `last=`'s locate: the `count`-th newest row at or below `upto` the filter matches exactly
/// (deleted rows are holes), or none when fewer match.
pub async fn locate_counts_exactly_matching_rows_from_the_end<H: Harness>(mut harness: H) {
    for (project, session, kind) in [
        ("a", Some("s1"), "pr_created"),
        ("b", Some("s2"), "pr_updated"),
        ("a", Some("s1"), "pr_updated"),
        ("a", Some("s1"), "session_created"),
        ("b", Some("s1"), "pr_updated"),
        ("a", None, "pr_updated"),
    ] {
        harness
            .append(NewRow {
                session,
                ..NewRow::new(project, kind)
            })
            .await;
    }
    harness.delete(Seq(3)).await;
    let sessions = |ids: &[&str], projects: Option<&[&str]>, kinds: Option<&[&str]>| Filter {
        sessions: Some(ids.iter().map(|id| id.to_string()).collect()),
        ..filter(projects, kinds)
    };
    let cases: &[(Filter, u32, u64, Option<u64>)] = &[
        (Filter::all(), 1, 6, Some(6)),
        (Filter::all(), 2, 6, Some(5)),
        (Filter::all(), 5, 6, Some(1)),
        (Filter::all(), 6, 6, None),
        (Filter::all(), 1, 4, Some(4)),
        (filter(Some(&["a"]), None), 2, 6, Some(4)),
        (filter(Some(&["a"]), Some(&["pr_*"])), 2, 6, Some(1)),
        (filter(Some(&["a"]), Some(&["pr_*"])), 3, 6, None),
        (filter(Some(&["b"]), None), 1, 4, Some(2)),
        // Rows of session s1: 1, 4 and 5 (3 is deleted); s2: 2; s3: none.
        (sessions(&["s1"], None, None), 1, 6, Some(5)),
        (sessions(&["s1"], None, None), 2, 6, Some(4)),
        (sessions(&["s1"], None, None), 3, 6, Some(1)),
        (sessions(&["s1"], None, None), 4, 6, None),
        (sessions(&["s1"], None, None), 1, 4, Some(4)),
        (sessions(&["s1"], Some(&["a"]), None), 1, 6, Some(4)),
        (
            sessions(&["s1"], Some(&["a"]), Some(&["pr_*"])),
            1,
            6,
            Some(1),
        ),
        (sessions(&["s1", "s2"], None, None), 3, 6, Some(2)),
        (sessions(&["s2"], Some(&["a"]), None), 1, 6, None),
        (sessions(&["s3"], None, None), 1, 6, None),
    ];
    for (filter, count, upto, expected) in cases {
        let request = LocateRequest {
            count: *count,
            upto: Seq(*upto),
        };
        let located = harness
            .store()
            .locate(filter, request)
            .await
            .expect("locate");
        assert_eq!(located.nth, expected.map(Seq), "{filter:?} {request:?}");
        assert_eq!(located.floor, Seq(0));
    }
}

/// The tailer's read skips holes, honours its limit and carries the bounds.
pub async fn rows_after_skips_holes_and_honours_the_limit<H: Harness>(mut harness: H) {
    append_n(&mut harness, 6).await;
    harness.delete(Seq(3)).await;
    harness.delete(Seq(6)).await;
    let store = harness.store();
    let read = |after: u64, limit: usize| {
        let store = store.clone();
        async move {
            store
                .rows_after(Seq(after), limit)
                .await
                .expect("rows_after")
        }
    };
    assert_eq!(seqs(&read(0, 100).await), [1, 2, 4, 5]);
    assert_eq!(seqs(&read(2, 2).await), [4, 5]);
    assert_eq!(seqs(&read(1, 1).await), [2]);
    assert_eq!(seqs(&read(5, 10).await), Vec::<u64>::new());
    let tail = read(5, 10).await;
    assert_eq!(
        tail.bounds().head,
        Seq(6),
        "the head covers the deleted row"
    );
    assert_eq!(seqs(&read(0, 0).await), Vec::<u64>::new());
}

/// Unknown project ids are named once each, in the order asked.
pub async fn missing_projects_names_each_unknown_id_once<H: Harness>(mut harness: H) {
    harness.create_project("p1").await;
    harness.create_project("p2").await;
    let ids: Vec<String> = ["x", "p1", "y", "p2", "x"].map(String::from).into();
    let store = harness.store();
    assert_eq!(store.missing_projects(&ids).await.unwrap(), ["x", "y"]);
    assert!(store.missing_projects(&[]).await.unwrap().is_empty());
    let known: Vec<String> = ["p2", "p1"].map(String::from).into();
    assert!(store.missing_projects(&known).await.unwrap().is_empty());
}

/// A watch taken before a commit wakes for it (also when nobody waited yet at commit time),
/// and the read after the wake sees the row.
pub async fn a_watch_taken_before_a_commit_wakes<H: Harness>(mut harness: H) {
    for round in 1..=3u64 {
        let mut changes = harness.store().changes();
        let mut other = changes.clone();
        harness.append(NewRow::new("p", "k")).await;
        tokio::time::timeout(WAKE_BOUND, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("no wake-up within {WAKE_BOUND:?} of a commit"));
        tokio::time::timeout(WAKE_BOUND, other.changed())
            .await
            .unwrap_or_else(|_| panic!("a cloned watch missed the commit"));
        let rows = harness
            .store()
            .rows_after(Seq(round - 1), 10)
            .await
            .expect("rows_after");
        assert_eq!(
            seqs(&rows),
            [round],
            "the row is readable after the wake-up"
        );
    }
}

/// The published mark is durable and never lowered.
pub async fn the_published_mark_only_rises<H: Harness>(mut harness: H) {
    append_n(&mut harness, 3).await;
    assert_eq!(harness.published_mark().await, Seq(0));
    let store = harness.store();
    store.mark_published(Seq(3)).await.unwrap();
    store.mark_published(Seq(2)).await.unwrap();
    assert_eq!(harness.published_mark().await, Seq(3));
    harness.restart().await;
    assert_eq!(
        harness.published_mark().await,
        Seq(3),
        "durable across a restart"
    );
}

/// The start-up epoch rule: a log at or above its published mark keeps its epoch and bounds
/// across restarts; one that lost commits clients may have seen gets a new epoch, with the mark
/// reset to the head and the floor capped at it — and keeps that epoch from then on.
pub async fn a_restart_keeps_the_epoch_unless_commits_were_lost<H: Harness>(mut harness: H) {
    append_n(&mut harness, 3).await;
    harness.store().mark_published(Seq(3)).await.unwrap();
    let before = bounds(&harness).await;
    harness.restart().await;
    assert_eq!(
        bounds(&harness).await,
        before,
        "head == published mark: same log"
    );
    append_n(&mut harness, 2).await;
    harness.restart().await;
    assert_eq!(
        bounds(&harness).await.epoch,
        before.epoch,
        "head above the mark"
    );

    // Prune up to the mark (floor 3), then lose every commit after seq 1.
    assert_eq!(prune(&harness, None, Some(0), 10).await, 3);
    assert_eq!(bounds(&harness).await.floor, Seq(3));
    harness.lose_commits_after(Seq(1)).await;
    harness.restart().await;
    let after = bounds(&harness).await;
    assert_ne!(after.epoch, before.epoch, "a new epoch");
    assert_eq!(after.head, Seq(1));
    assert_eq!(after.floor, Seq(1), "floor capped at the head");
    assert_eq!(
        harness.published_mark().await,
        Seq(1),
        "mark reset to the head"
    );
    assert_eq!(harness.append(NewRow::new("p", "k")).await, Seq(2));
    harness.restart().await;
    assert_eq!(
        bounds(&harness).await.epoch,
        after.epoch,
        "stable once rotated"
    );
}

/// Retention by count deletes the oldest rows in batches, never above the published mark,
/// and raises the floor to the highest seq deleted.
pub async fn prune_by_count_deletes_batches_up_to_the_published_mark<H: Harness>(mut harness: H) {
    append_n(&mut harness, 10).await;
    let keep_four = Some(4);
    let floor = |harness: &H| {
        let store = harness.store();
        async move { store.bounds().await.unwrap().floor }
    };
    assert_eq!(
        prune(&harness, None, keep_four, 10).await,
        0,
        "nothing published yet"
    );
    harness.store().mark_published(Seq(2)).await.unwrap();
    assert_eq!(prune(&harness, None, keep_four, 10).await, 2);
    assert_eq!(floor(&harness).await, Seq(2));
    harness.store().mark_published(Seq(10)).await.unwrap();
    assert_eq!(
        prune(&harness, None, keep_four, 2).await,
        2,
        "batch respected"
    );
    assert_eq!(floor(&harness).await, Seq(4));
    assert_eq!(prune(&harness, None, keep_four, 4).await, 2);
    assert_eq!(floor(&harness).await, Seq(6));
    assert_eq!(prune(&harness, None, keep_four, 4).await, 0);
    assert_eq!(
        prune(&harness, None, None, 4).await,
        0,
        "no rule: keep everything"
    );
    assert_eq!(prune(&harness, None, Some(1), 0).await, 0, "batch 0");
    let at = bounds(&harness).await;
    assert_eq!((at.floor, at.head), (Seq(6), Seq(10)));
    let window = harness
        .store()
        .window(&Filter::all(), range(0, 10))
        .await
        .unwrap();
    assert_eq!(seqs(&window), [7, 8, 9, 10]);
    assert_eq!(window.bounds().floor, Seq(6));
}

/// Retention by age reads the stored timestamps (ours and SQLite's shape), stops at the first
/// recent row even with old rows behind it, and combines with retention by count.
pub async fn prune_by_age_stops_at_the_first_recent_row<H: Harness>(mut harness: H) {
    for created_at in [
        "2020-01-01 00:00:00",
        "2020-01-01 00:00:01",
        "2020-01-01 00:00:02.5",
        "2020-01-02T00:00:00.000Z",
        "2020-01-02T00:00:01.000Z",
    ] {
        harness.append(NewRow::new("p", "k").at(created_at)).await;
    }
    harness.append(NewRow::new("p", "k")).await;
    harness
        .append(NewRow::new("p", "k").at("2020-01-03 00:00:00"))
        .await;
    append_n(&mut harness, 3).await;
    let floor = |harness: &H| {
        let store = harness.store();
        async move { store.bounds().await.unwrap().floor }
    };
    let day = Some(1);
    assert_eq!(
        prune(&harness, day, None, 10).await,
        0,
        "nothing published yet"
    );
    harness.store().mark_published(Seq(10)).await.unwrap();
    assert_eq!(prune(&harness, day, None, 2).await, 2, "batch respected");
    assert_eq!(floor(&harness).await, Seq(2));
    assert_eq!(prune(&harness, day, None, 2).await, 2);
    assert_eq!(prune(&harness, day, None, 10).await, 1);
    assert_eq!(floor(&harness).await, Seq(5));
    // Row 6 is recent: pruning stops there (row 7 is old but behind it).
    assert_eq!(prune(&harness, day, None, 10).await, 0);
    assert_eq!(floor(&harness).await, Seq(5));
    assert_eq!(seqs(&all_rows(&harness).await), [6, 7, 8, 9, 10]);
    assert_eq!(prune(&harness, None, Some(3), 1).await, 1);
    assert_eq!(prune(&harness, None, Some(3), 10).await, 1);
    assert_eq!(floor(&harness).await, Seq(7));
    // Either rule makes a row due.
    assert_eq!(prune(&harness, day, Some(1), 10).await, 2);
    let at = bounds(&harness).await;
    assert_eq!((at.floor, at.head), (Seq(9), Seq(10)));
    assert_eq!(seqs(&all_rows(&harness).await), [10]);
}
