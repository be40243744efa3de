//! Measures `last=`'s locate on a large SQLite log: the SQLite store's one indexed backwards
//! scan against the `Store` trait's default walk of replay windows ([`WalkingLocate`]), on the
//! same file, for a few filters. Prints a markdown table of medians with the machine's load.
//!
//! ```text
//! cargo run --profile fast -p changefeed --example locate_speed -- [ROWS] [RUNS]
//! ```
//! (defaults: 1000000 rows, 5 runs per case).

use std::time::Instant;

use changefeed::store::sqlite::SqliteStore;
use changefeed::store::walking::WalkingLocate;
use changefeed::store::Store;
use changefeed_core::{EventsQuery, LocateRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("locate.db");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::open(&url).await.expect("open");
    // 10 projects, 1000 sessions, 4 kinds, spread evenly and independently: written by the
    // sqlite3 CLI.
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
         INSERT INTO change_log (project_id, session_id, event_type, payload) \
         SELECT 'p' || (i % 10), 's' || ((i / 10) % 1000), \
         CASE (i / 3) % 4 WHEN 0 THEN 'pr_updated' WHEN 1 THEN 'pr_created' \
         WHEN 2 THEN 'session_updated' ELSE 'pr_check_recorded' END, '{{\"i\":' || i || '}}' FROM n;"
    );
    let started = Instant::now();
    let status = std::process::Command::new("sqlite3")
        .args([path.to_str().unwrap(), &sql])
        .status()
        .expect("run sqlite3");
    assert!(status.success(), "sqlite3 failed");
    let head = store.bounds().await.expect("bounds").head;
    eprintln!("{rows} rows written in {:.1?}", started.elapsed());
    let walking = WalkingLocate(store.clone());
    let cases = [
        ("every project", "", 100),
        ("every project", "", 10_000),
        ("project=p3", "project=p3", 1_000),
        (
            "project=p3&types=pr_updated",
            "project=p3&types=pr_updated",
            1_000,
        ),
        ("session=s7", "session=s7", 1_000),
        ("project=p3&session=s7", "project=p3&session=s7", 100),
        ("project=p1&project=p2", "project=p1&project=p2", 1_000),
        (
            "project=p1&project=p2&types=pr_*",
            "project=p1&project=p2&types=pr_*",
            1_000,
        ),
    ];
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("| filter | last | indexed (ms) | default walk (ms) | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for (name, query, count) in cases {
        let filter = EventsQuery::parse(Some(query)).expect("query").filter;
        let request = LocateRequest { count, upto: head };
        let mut ours = Vec::new();
        let mut default = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let a = store.locate(&filter, request).await.expect("locate");
            ours.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let b = walking
                .locate(&filter, request)
                .await
                .expect("default locate");
            default.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(a, b, "{name} last={count}: the two locates disagree");
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (ours, default) = (median(ours), median(default));
        println!(
            "| {name} | {count} | {ours:.2} | {default:.2} | {:.1}x |",
            default / ours
        );
    }
    println!();
    println!(
        "{rows} rows, median of {runs} runs; load average {}",
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    store.close().await;
}
