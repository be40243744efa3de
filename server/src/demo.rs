//! `changefeed demo`: realistic activity written through the domain tables only (projects,
//! sessions, pull requests, checks, review threads), so the triggers produce every one of the
//! eight kinds exactly as the real daemon's writes would. One short transaction per step: on
//! SQLite through the store's single write connection ([`SqliteStore::begin_write`]), on
//! Postgres through the store's pool ([`PostgresStore::pool`]); the SQL is the same on both
//! (`?` placeholders become `$n` for Postgres, `{now}` the dialect's current timestamp).
//!
//! The writer keeps a small model of what exists (live sessions, open pull requests with their
//! checks and review threads) and picks a plausible next step at random: sessions start, work,
//! wait and end; pull requests open, run CI, collect checks and review threads, get reassigned,
//! approved and merged or closed. The model stays bounded (a few sessions and pull requests per
//! project).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shutdown::ShutdownSignal;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{SqliteStore, WriteTx};
use crate::store::StoreError;

/// Where the demo writes.
#[derive(Debug, Clone)]
pub enum DemoTarget {
    /// A SQLite store (its single write connection).
    Sqlite(SqliteStore),
    /// A Postgres store (its pool).
    Postgres(PostgresStore),
}

impl From<SqliteStore> for DemoTarget {
    fn from(store: SqliteStore) -> Self {
        DemoTarget::Sqlite(store)
    }
}

impl From<PostgresStore> for DemoTarget {
    fn from(store: PostgresStore) -> Self {
        DemoTarget::Postgres(store)
    }
}

/// A bind value of the demo's statements.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

impl From<&str> for Arg {
    fn from(text: &str) -> Self {
        Arg::Text(text.to_owned())
    }
}

impl From<&String> for Arg {
    fn from(text: &String) -> Self {
        Arg::Text(text.clone())
    }
}

impl From<String> for Arg {
    fn from(text: String) -> Self {
        Arg::Text(text)
    }
}

impl From<Option<String>> for Arg {
    fn from(text: Option<String>) -> Self {
        Arg::OptText(text)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

/// One demo transaction on either store.
enum DemoTx {
    Sqlite(WriteTx),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl DemoTarget {
    async fn begin(&self) -> Result<DemoTx, StoreError> {
        Ok(match self {
            DemoTarget::Sqlite(store) => DemoTx::Sqlite(store.begin_write().await?),
            DemoTarget::Postgres(store) => DemoTx::Postgres(store.pool().begin().await?),
        })
    }
}

impl DemoTx {
    /// Runs one statement written with `?` placeholders and `{now}`; returns rows affected.
    async fn execute(&mut self, sql: &str, args: Vec<Arg>) -> Result<u64, StoreError> {
        match self {
            DemoTx::Sqlite(tx) => {
                let sql = sql.replace("{now}", "strftime('%Y-%m-%dT%H:%M:%fZ','now')");
                let mut query = sqlx::query(&sql);
                for arg in args {
                    query = match arg {
                        Arg::Text(text) => query.bind(text),
                        Arg::OptText(text) => query.bind(text),
                        Arg::Int(value) => query.bind(value),
                    };
                }
                Ok(query.execute(&mut **tx).await?.rows_affected())
            }
            DemoTx::Postgres(tx) => {
                let sql = numbered_placeholders(&sql.replace("{now}", "changefeed_now()"));
                let mut query = sqlx::query(&sql);
                for arg in args {
                    query = match arg {
                        Arg::Text(text) => query.bind(text),
                        Arg::OptText(text) => query.bind(text),
                        Arg::Int(value) => query.bind(value),
                    };
                }
                Ok(query.execute(&mut **tx).await?.rows_affected())
            }
        }
    }

    async fn count(&mut self, sql: &str) -> Result<i64, StoreError> {
        Ok(match self {
            DemoTx::Sqlite(tx) => sqlx::query_scalar(sql).fetch_one(&mut **tx).await?,
            DemoTx::Postgres(tx) => sqlx::query_scalar(sql).fetch_one(&mut **tx).await?,
        })
    }

    async fn commit(self) -> Result<(), StoreError> {
        match self {
            DemoTx::Sqlite(tx) => tx.commit().await,
            DemoTx::Postgres(tx) => Ok(tx.commit().await?),
        }
    }
}

/// `?` placeholders as Postgres's `$1`, `$2`, ... (the demo's SQL has no `?` in literals).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1;
    for c in sql.chars() {
        if c == '?' {
            out.push_str(&format!("${next}"));
            next += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// What the demo writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoConfig {
    /// Steps per second (each step is one transaction producing one or a few events).
    pub rate: f64,
    /// How many projects (`demo-1` … `demo-N`).
    pub projects: u32,
    /// Seed of the random choices (the CLI uses the clock).
    pub seed: u64,
}

const MAX_SESSIONS_PER_PROJECT: usize = 4;
const MAX_PRS_PER_PROJECT: usize = 4;
const CHECKS: [&str; 3] = ["build", "test", "lint"];
const ACTIVITIES: [&str; 3] = ["working", "waiting", "idle"];
const PATHS: [&str; 5] = [
    "src/main.rs",
    "src/lib.rs",
    "README.md",
    "server/src/http.rs",
    "core/src/event.rs",
];

#[derive(Debug)]
struct Session {
    id: String,
    project: usize,
}

#[derive(Debug)]
struct PullRequest {
    url: String,
    project: usize,
    session: Option<String>,
    commit: String,
    checks: Vec<(&'static str, &'static str)>,
    threads: Vec<(String, bool)>,
    approved: bool,
}

/// Ids and the random source of one demo run.
#[derive(Debug)]
struct Demo {
    rng: fastrand::Rng,
    tag: String,
    projects: Vec<String>,
    sessions: Vec<Session>,
    prs: Vec<PullRequest>,
    next_session: u64,
    next_pr: u64,
    next_thread: u64,
}

impl Demo {
    fn below(&mut self, n: usize) -> usize {
        self.rng.usize(..n.max(1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.rng.u64(..100) < percent
    }

    fn commit_sha(&mut self) -> String {
        format!("{:016x}{:08x}", self.rng.u64(..), self.rng.u32(..))
    }
}

/// Seeds the run from the wall clock (the demo is not meant to be reproducible).
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Writes demo activity into `store` until `shutdown`. Returns the number of steps written.
/// A failed step is logged and skipped; failing to create the projects is an error.
pub async fn run(
    store: impl Into<DemoTarget>,
    config: DemoConfig,
    mut shutdown: ShutdownSignal,
) -> Result<u64, StoreError> {
    let store = store.into();
    let mut demo = Demo {
        rng: fastrand::Rng::with_seed(config.seed),
        tag: String::new(),
        projects: (1..=config.projects.max(1))
            .map(|n| format!("demo-{n}"))
            .collect(),
        sessions: Vec::new(),
        prs: Vec::new(),
        next_session: 1,
        next_pr: 1,
        next_thread: 1,
    };
    demo.tag = format!("{:04x}", demo.rng.u16(..));
    {
        let mut tx = store.begin().await?;
        for (index, id) in demo.projects.iter().enumerate() {
            tx.execute(
                "INSERT INTO projects (id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
                vec![id.into(), format!("Demo project {}", index + 1).into()],
            )
            .await?;
        }
        let prs = tx.count("SELECT COUNT(*) FROM pull_requests").await?;
        demo.next_pr = u64::try_from(prs).unwrap_or(0) + 1;
        tx.commit().await?;
    }
    let period = Duration::from_secs_f64(1.0 / config.rate.clamp(0.001, 100_000.0));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut steps = 0u64;
    tracing::info!(rate = config.rate, projects = ?demo.projects, "demo writer started");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = ticks.tick() => {}
        }
        match step(&store, &mut demo).await {
            Ok(what) => {
                steps += 1;
                tracing::debug!(step = what, "demo write");
            }
            Err(error) => tracing::warn!(%error, "demo write failed; skipped"),
        }
    }
    tracing::info!(steps, "demo writer stopped");
    Ok(steps)
}

/// One transaction of plausible activity; returns what it did.
async fn step(store: &DemoTarget, demo: &mut Demo) -> Result<&'static str, StoreError> {
    let mut tx = store.begin().await?;
    let project = demo.below(demo.projects.len());
    let what = choose(demo, project, &mut tx).await?;
    tx.commit().await?;
    Ok(what)
}

async fn choose(
    demo: &mut Demo,
    project: usize,
    db: &mut DemoTx,
) -> Result<&'static str, StoreError> {
    let sessions: Vec<usize> = (0..demo.sessions.len())
        .filter(|&i| demo.sessions[i].project == project)
        .collect();
    let prs: Vec<usize> = (0..demo.prs.len())
        .filter(|&i| demo.prs[i].project == project)
        .collect();
    let roll = demo.below(100);

    if sessions.is_empty() || (roll < 10 && sessions.len() < MAX_SESSIONS_PER_PROJECT) {
        let id = format!("sess-{}-{}", demo.tag, demo.next_session);
        demo.next_session += 1;
        db.execute("INSERT INTO sessions (id, project_id, activity, display_name) VALUES (?, ?, 'working', ?)", vec![Arg::from(&id), Arg::from(&demo.projects[project]), Arg::from(format!("Session {}", demo.next_session - 1))]).await?;
        demo.sessions.push(Session { id, project });
        return Ok("session_created");
    }
    let session = sessions[demo.below(sessions.len())];

    if prs.is_empty() || (roll < 20 && prs.len() < MAX_PRS_PER_PROJECT) {
        let url = format!(
            "https://git.example.com/acme/{}/pull/{}",
            demo.projects[project], demo.next_pr
        );
        demo.next_pr += 1;
        let session_id = demo.sessions[session].id.clone();
        let commit = demo.commit_sha();
        db.execute(
            "INSERT INTO pull_requests (url, project_id, session_id) VALUES (?, ?, ?)",
            vec![
                Arg::from(&url),
                Arg::from(&demo.projects[project]),
                Arg::from(&session_id),
            ],
        )
        .await?;
        demo.prs.push(PullRequest {
            url,
            project,
            session: Some(session_id),
            commit,
            checks: Vec::new(),
            threads: Vec::new(),
            approved: false,
        });
        return Ok("pr_created");
    }
    let pr = prs[demo.below(prs.len())];

    if roll < 40 {
        // Session activity, sometimes its end.
        let id = demo.sessions[session].id.clone();
        if demo.chance(10) && sessions.len() > 1 {
            db.execute("UPDATE sessions SET is_terminated = 1, activity = 'idle', updated_at = {now} WHERE id = ?", vec![Arg::from(&id)]).await?;
            demo.sessions.remove(session);
            for pr in &mut demo.prs {
                if pr.session.as_deref() == Some(id.as_str()) {
                    pr.session = None;
                }
            }
            return Ok("session_updated (terminated)");
        }
        let activity = ACTIVITIES[demo.below(ACTIVITIES.len())];
        let preview = demo
            .chance(30)
            .then(|| format!("https://preview.example.com/{id}"));
        db.execute("UPDATE sessions SET activity = ?, preview_url = COALESCE(?, preview_url), updated_at = {now} WHERE id = ?", vec![Arg::from(activity), Arg::from(preview), Arg::from(&id)]).await?;
        return Ok("session_updated");
    }

    if roll < 65 {
        // CI: record a check, or move one to its result, then roll the PR's ci_state up.
        let url = demo.prs[pr].url.clone();
        let commit = demo.prs[pr].commit.clone();
        let pending = demo.prs[pr]
            .checks
            .iter()
            .position(|(_, status)| *status == "pending");
        if let Some(index) = pending.filter(|_| demo.chance(60)) {
            let status = if demo.chance(80) {
                "success"
            } else {
                "failure"
            };
            let name = demo.prs[pr].checks[index].0;
            db.execute(
                "UPDATE pr_checks SET status = ? WHERE pr_url = ? AND name = ? AND commit_sha = ?",
                vec![
                    Arg::from(status),
                    Arg::from(&url),
                    Arg::from(name),
                    Arg::from(&commit),
                ],
            )
            .await?;
            demo.prs[pr].checks[index].1 = status;
        } else if demo.prs[pr].checks.len() < CHECKS.len() {
            let name = CHECKS[demo.prs[pr].checks.len()];
            db.execute("INSERT INTO pr_checks (pr_url, name, commit_sha, status) VALUES (?, ?, ?, 'pending')", vec![Arg::from(&url), Arg::from(name), Arg::from(&commit)]).await?;
            demo.prs[pr].checks.push((name, "pending"));
        } else {
            // Every check ran: a new commit restarts CI.
            demo.prs[pr].commit = demo.commit_sha();
            demo.prs[pr].checks.clear();
            db.execute("UPDATE pull_requests SET ci_state = 'pending', mergeability = 'unknown', updated_at = {now} WHERE url = ?", vec![Arg::from(&url)]).await?;
            return Ok("pr_updated (new commit)");
        }
        let checks = &demo.prs[pr].checks;
        let ci = if checks.iter().any(|(_, s)| *s == "failure") {
            "failure"
        } else if checks.len() == CHECKS.len() && checks.iter().all(|(_, s)| *s == "success") {
            "success"
        } else {
            "running"
        };
        db.execute(
            "UPDATE pull_requests SET ci_state = ?, updated_at = {now} WHERE url = ?",
            vec![Arg::from(ci), Arg::from(&url)],
        )
        .await?;
        return Ok("pr_check_recorded");
    }

    if roll < 80 {
        // Review threads: open one, or resolve one.
        let url = demo.prs[pr].url.clone();
        let open = demo.prs[pr]
            .threads
            .iter()
            .position(|(_, resolved)| !resolved);
        if let Some(index) = open.filter(|_| demo.chance(50)) {
            let thread = demo.prs[pr].threads[index].0.clone();
            db.execute(
                "UPDATE pr_review_threads SET resolved = 1 WHERE pr_url = ? AND thread_id = ?",
                vec![Arg::from(&url), Arg::from(&thread)],
            )
            .await?;
            demo.prs[pr].threads[index].1 = true;
            return Ok("pr_review_thread_resolved");
        }
        let thread = format!("thr-{}-{}", demo.tag, demo.next_thread);
        demo.next_thread += 1;
        let path = PATHS[demo.below(PATHS.len())];
        let line = 1 + demo.below(400) as i64;
        let is_bot = demo.chance(30);
        db.execute("INSERT INTO pr_review_threads (pr_url, thread_id, path, line, is_bot) VALUES (?, ?, ?, ?, ?)", vec![Arg::from(&url), Arg::from(&thread), Arg::from(path), Arg::from(line), Arg::from(i64::from(is_bot))]).await?;
        demo.prs[pr].threads.push((thread, false));
        return Ok("pr_review_thread_added");
    }

    if roll < 88 {
        // Hand the pull request to another session of the project (or take it from none).
        let url = demo.prs[pr].url.clone();
        let current = demo.prs[pr].session.clone();
        let other = sessions
            .iter()
            .map(|&i| demo.sessions[i].id.clone())
            .find(|id| Some(id) != current.as_ref());
        if let Some(other) = other {
            db.execute(
                "UPDATE pull_requests SET session_id = ?, updated_at = {now} WHERE url = ?",
                vec![Arg::from(&other), Arg::from(&url)],
            )
            .await?;
            demo.prs[pr].session = Some(other);
            return Ok("pr_session_changed");
        }
    }

    // Review decision, then merge or close.
    let url = demo.prs[pr].url.clone();
    if !demo.prs[pr].approved {
        let decision = if demo.chance(75) {
            "approved"
        } else {
            "changes_requested"
        };
        db.execute("UPDATE pull_requests SET review_decision = ?, mergeability = 'mergeable', updated_at = {now} WHERE url = ?", vec![Arg::from(decision), Arg::from(&url)]).await?;
        demo.prs[pr].approved = decision == "approved";
        return Ok("pr_updated (review)");
    }
    let state = if demo.chance(85) { "merged" } else { "closed" };
    db.execute(
        "UPDATE pull_requests SET state = ?, updated_at = {now} WHERE url = ?",
        vec![Arg::from(state), Arg::from(&url)],
    )
    .await?;
    demo.prs.remove(pr);
    Ok("pr_updated (closed)")
}
