//! Postgres, side by side in one run (`--postgres URL`: an admin URL of a disposable cluster with
//! Postgres's durable defaults; `scripts/bench.sh` starts one):
//!
//! - **writers**: 8 connections, one domain UPDATE per transaction (its trigger logs one row),
//!   with changefeed's triggers and a replica serving (its sequencer assigning), against the same
//!   writes logged into a plain `BIGSERIAL` log (no ordering: what an unsafe tail reads) and into
//!   a log numbered from a global counter row (the common "safe" design). Rounds alternate the
//!   three; medians.
//! - **latency**: commit → client over three replica processes with 1,000 subscribers spread
//!   over them, for the sequencer design the product uses and for the transaction-id-horizon
//!   design (PgQ-style), also while one transaction at a time stays open for a second.
//! - **replay**: one client replaying the whole log from 0 on Postgres, beside SQLite.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use changefeed::store::postgres::sequencer::Sequencer;
use changefeed::store::postgres::{AssignMode, PostgresStore, SequencerConfig, SequencerStats};
use sqlx::{Connection, PgConnection};

use crate::loadgen::{payload, unix_micros, Subscribers, Target};
use crate::procs::{self, Server};
use crate::report::{Cell, Report, Row};
use crate::system::percentile;
use crate::{writers, Config, PAYLOAD};

/// Writers of the throughput comparison.
const WRITERS: usize = 8;

/// The plain-`BIGSERIAL` and counter-row baselines: the same domain table, trigger payload and
/// checks as changefeed's schema; only how the log row gets its seq differs.
const BASELINE_COMMON: &str = r#"
CREATE FUNCTION changefeed_now() RETURNS text LANGUAGE sql VOLATILE
AS $$ SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;
CREATE FUNCTION changefeed_json_text(value text) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT COALESCE(to_json(value)::text, 'null') $$;
CREATE FUNCTION changefeed_json_flag(value bigint) RETURNS text LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN value <> 0 THEN 'true' ELSE 'false' END $$;
CREATE TABLE projects (id text PRIMARY KEY, name text NOT NULL,
    created_at text NOT NULL DEFAULT changefeed_now());
CREATE TABLE sessions (id text PRIMARY KEY, project_id text NOT NULL REFERENCES projects (id),
    activity text NOT NULL DEFAULT 'idle', is_terminated integer NOT NULL DEFAULT 0,
    display_name text, preview_url text, created_at text NOT NULL DEFAULT changefeed_now(),
    updated_at text NOT NULL DEFAULT changefeed_now());
"#;

const BASELINE_SERIAL: &str = r#"
CREATE TABLE change_log (seq bigserial PRIMARY KEY, project_id text NOT NULL, session_id text,
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_]*$'),
    payload text NOT NULL CHECK ((payload::json) IS NOT NULL),
    created_at text NOT NULL DEFAULT changefeed_now());
CREATE INDEX ON change_log (project_id, seq);
CREATE FUNCTION log_session_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (NEW.project_id, NEW.id, 'session_updated',
        '{"id":' || changefeed_json_text(NEW.id) || ',"activity":' || changefeed_json_text(NEW.activity)
        || ',"isTerminated":' || changefeed_json_flag(NEW.is_terminated)
        || ',"displayName":' || changefeed_json_text(NEW.display_name)
        || ',"previewUrl":' || changefeed_json_text(NEW.preview_url) || '}');
    RETURN NULL;
END $$;
CREATE TRIGGER log_session_updated AFTER UPDATE ON sessions FOR EACH ROW
    WHEN (OLD.activity IS DISTINCT FROM NEW.activity) EXECUTE FUNCTION log_session_updated();
"#;

const BASELINE_COUNTER: &str = r#"
CREATE TABLE change_counter (singleton boolean PRIMARY KEY DEFAULT true, head bigint NOT NULL DEFAULT 0);
INSERT INTO change_counter DEFAULT VALUES;
CREATE TABLE change_log (seq bigint PRIMARY KEY, project_id text NOT NULL, session_id text,
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_]*$'),
    payload text NOT NULL CHECK ((payload::json) IS NOT NULL),
    created_at text NOT NULL DEFAULT changefeed_now());
CREATE INDEX ON change_log (project_id, seq);
CREATE FUNCTION log_session_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE next bigint;
BEGIN
    UPDATE change_counter SET head = head + 1 RETURNING head INTO next;
    INSERT INTO change_log (seq, project_id, session_id, event_type, payload)
    VALUES (next, NEW.project_id, NEW.id, 'session_updated',
        '{"id":' || changefeed_json_text(NEW.id) || ',"activity":' || changefeed_json_text(NEW.activity)
        || ',"isTerminated":' || changefeed_json_flag(NEW.is_terminated)
        || ',"displayName":' || changefeed_json_text(NEW.display_name)
        || ',"previewUrl":' || changefeed_json_text(NEW.preview_url) || '}');
    RETURN NULL;
END $$;
CREATE TRIGGER log_session_updated AFTER UPDATE ON sessions FOR EACH ROW
    WHEN (OLD.activity IS DISTINCT FROM NEW.activity) EXECUTE FUNCTION log_session_updated();
"#;

/// Runs the Postgres rows; without `--postgres` they say why they did not run.
pub async fn run(config: &Config, report: &mut Report) {
    let admin = match &config.postgres {
        Some(admin) => Ok(admin.clone()),
        None => Err("no Postgres (--postgres URL; scripts/bench.sh starts one)".to_string()),
    };
    let durable = match &admin {
        Ok(admin) => durability(admin).await,
        Err(error) => Err(error.clone()),
    };
    writer_throughput(config, &admin, &durable, report).await;
    latency(config, &admin, &durable, report).await;
    replay(config, &admin, report).await;
}

/// "fsync on" or what is off, for the setup column.
async fn durability(admin: &str) -> Result<String, String> {
    let mut connection = PgConnection::connect(admin)
        .await
        .map_err(|e| format!("connecting to Postgres: {e}"))?;
    let (fsync, commit): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
    Ok(if fsync == "on" && commit == "on" {
        "fsync on".into()
    } else {
        format!("fsync {fsync}, synchronous_commit {commit}")
    })
}

/// A fresh database named `name` on the cluster; its URL.
async fn fresh_database(admin: &str, name: &str) -> Result<String, String> {
    let mut connection = PgConnection::connect(admin)
        .await
        .map_err(|e| format!("connecting to Postgres: {e}"))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(&sql)
            .execute(&mut connection)
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
    }
    url_with_database(admin, name)
}

fn url_with_database(admin: &str, name: &str) -> Result<String, String> {
    // postgres://user@host:port/db?params → replace the path.
    let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
    let scheme_end = base.find("://").ok_or("not a postgres:// URL")? + 3;
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |index| scheme_end + index);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let mut connection = PgConnection::connect(url)
        .await
        .map_err(|e| format!("connecting to Postgres: {e}"))?;
    sqlx::raw_sql(sql)
        .execute(&mut connection)
        .await
        .map_err(|e| format!("setting up: {e}"))?;
    Ok(())
}

/// A `changefeed serve` process over a Postgres database; killed on drop.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Replica {
    fn start(config: &Config, url: &str, name: &str, extra: &[&str]) -> Result<Replica, String> {
        let log_path = config.work.join(format!("replica-{name}.log"));
        let mut log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(&config.server_bin)
            .args(["serve", "--database", url, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", config.server_bin.display()))?;
        procs::record_pid(&config.work, child.id());
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("changefeed serving") {
                    let addr = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|addr| addr.parse::<SocketAddr>().ok());
                    let _ = addr_tx.send(addr);
                }
                let _ = writeln!(log, "{line}");
            }
        });
        match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(addr)) => Ok(Replica { child, addr }),
            _ => {
                let _ = child.kill();
                Err(format!(
                    "the replica did not start: {}",
                    procs::tail(&log_path)
                ))
            }
        }
    }

    fn target(&self, path: &str) -> Target {
        Target {
            addr: self.addr,
            path: path.to_string(),
            ready_event: true,
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Writer throughput

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogDesign {
    Changefeed,
    Serial,
    Counter,
}

impl LogDesign {
    fn name(self) -> &'static str {
        match self {
            LogDesign::Changefeed => "changefeed",
            LogDesign::Serial => "serial",
            LogDesign::Counter => "counter",
        }
    }
}

/// A database of `design` with `WRITERS` sessions to update; for changefeed, a replica serving
/// it (its sequencer assigns while the writers write).
async fn writer_database(
    config: &Config,
    admin: &str,
    design: LogDesign,
) -> Result<(String, Option<Replica>), String> {
    let url = fresh_database(admin, &format!("bench_writers_{}", design.name())).await?;
    let replica = match design {
        LogDesign::Changefeed => {
            let store = PostgresStore::open(&url)
                .await
                .map_err(|e| format!("migrating: {e}"))?;
            store.close().await;
            let (config, url2) = (config.clone(), url.clone());
            Some(
                tokio::task::spawn_blocking(move || Replica::start(&config, &url2, "writers", &[]))
                    .await
                    .map_err(|e| e.to_string())??,
            )
        }
        LogDesign::Serial => {
            execute(&url, &format!("{BASELINE_COMMON}{BASELINE_SERIAL}")).await?;
            None
        }
        LogDesign::Counter => {
            execute(&url, &format!("{BASELINE_COMMON}{BASELINE_COUNTER}")).await?;
            None
        }
    };
    execute(
        &url,
        &format!(
            "INSERT INTO projects (id, name) VALUES ('bench', 'Bench'); \
             INSERT INTO sessions (id, project_id) \
             SELECT 'w' || n, 'bench' FROM generate_series(1, {WRITERS}) AS n"
        ),
    )
    .await?;
    Ok((url, replica))
}

/// Transactions per second of `WRITERS` connections for `secs`, each one UPDATE per transaction.
async fn writers_round(url: &str, secs: f64) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 1..=WRITERS {
        let mut connection = PgConnection::connect(url)
            .await
            .map_err(|e| format!("connecting a writer: {e}"))?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("w{writer}");
            while !stop.load(Ordering::Relaxed) {
                sqlx::query(
                    "UPDATE sessions SET activity = CASE WHEN activity = 'a' THEN 'b' ELSE 'a' END \
                     WHERE id = $1",
                )
                .bind(&id)
                .execute(&mut connection)
                .await
                .map_err(|e| format!("writing: {e}"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(count as f64 / elapsed)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

async fn writer_throughput(
    config: &Config,
    admin: &Result<String, String>,
    durable: &Result<String, String>,
    report: &mut Report,
) {
    let (rounds, secs) = if config.quick { (1, 2.0) } else { (3, 8.0) };
    let setup = format!(
        "{WRITERS} connections, one domain UPDATE per transaction (+1 log row), {}, {rounds} × {secs} s per design, alternating",
        durable.as_deref().unwrap_or("?")
    );
    let result: Result<[f64; 3], String> = async {
        let admin = admin.as_ref().map_err(Clone::clone)?;
        let designs = [LogDesign::Changefeed, LogDesign::Serial, LogDesign::Counter];
        let mut databases = Vec::new();
        for design in designs {
            databases.push(writer_database(config, admin, design).await?);
        }
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (index, (url, _)) in databases.iter().enumerate() {
                let tps = writers_round(url, secs).await?;
                eprintln!(
                    "   writers round {round}: {} {tps:.0} tx/s",
                    designs[index].name()
                );
                samples[index].push(tps);
            }
        }
        // Every changefeed row got its seq (the sequencer kept up).
        let (url, _) = &databases[0];
        let mut connection = PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM change_log WHERE seq IS NULL")
                    .fetch_one(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            if pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{pending} rows still without a seq after 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok([
            median(&mut samples[0]),
            median(&mut samples[1]),
            median(&mut samples[2]),
        ])
    }
    .await;
    for (index, peer) in [
        (1, "plain BIGSERIAL log (no ordering)"),
        (2, "global counter row"),
    ] {
        report.push(Row {
            scenario: "6 postgres",
            setup: setup.clone(),
            metric: "writer transactions/s (median)".into(),
            ours: cell(result.as_ref().map(|r| r[0])),
            peer,
            theirs: cell(result.as_ref().map(|r| r[index])),
            lower_is_better: false,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Commit → client latency over replicas

struct LatencyResult {
    /// Per delivery: p50, p99, max (ms).
    delivery: [f64; 3],
    missing: u64,
}

async fn latency_run(
    config: &Config,
    admin: &str,
    design: AssignMode,
    long_transactions: bool,
) -> Result<LatencyResult, String> {
    let name = format!(
        "bench_latency_{}{}",
        if design == AssignMode::Visible {
            "visible"
        } else {
            "horizon"
        },
        if long_transactions { "_long" } else { "" }
    );
    let url = fresh_database(admin, &name).await?;
    let store = PostgresStore::open_with(
        &url,
        changefeed::store::postgres::PostgresStoreOptions {
            sequencer: None,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("migrating: {e}"))?;
    store.close().await;
    let replicas_n = 3;
    let subs_n = if config.quick { 300 } else { 1000 };
    let secs = if config.quick { 3 } else { 10 };
    let rate = 200u64;
    // The product runs its sequencer in every replica; the compared design runs as the same
    // number of sequencers with the same tick, in this process, beside replicas that only serve.
    let extra: &[&str] = if design == AssignMode::Visible {
        &[]
    } else {
        &["--no-sequencer"]
    };
    let mut replicas = Vec::new();
    for index in 0..replicas_n {
        let (config, url, name) = (config.clone(), url.clone(), format!("{name}-{index}"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        replicas.push(
            tokio::task::spawn_blocking(move || {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                Replica::start(&config, &url, &name, &extra)
            })
            .await
            .map_err(|e| e.to_string())??,
        );
    }
    let mut sequencers = Vec::new();
    if design != AssignMode::Visible {
        for _ in 0..replicas_n {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            let sequencer = Sequencer::new(
                pool,
                SequencerConfig {
                    mode: design,
                    ..SequencerConfig::default()
                },
                Arc::new(SequencerStats::default()),
            );
            sequencers.push(tokio::spawn(sequencer.run()));
        }
    }
    let count = rate * secs;
    let per_replica = subs_n / replicas_n;
    let groups: Vec<Subscribers> = replicas
        .iter()
        .map(|replica| {
            Subscribers::start(
                &replica.target("/api/v1/events"),
                per_replica,
                2,
                true,
                count as usize,
            )
        })
        .collect();
    for group in &groups {
        group.wait_ready(Duration::from_secs(60)).await?;
    }
    // One writing transaction at a time held open for a second, then a short pause.
    let stop_long = Arc::new(AtomicBool::new(false));
    let long = if long_transactions {
        let mut connection = PgConnection::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let stop = stop_long.clone();
        Some(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Ok(mut tx) = connection.begin().await else {
                    return;
                };
                let insert = sqlx::query("INSERT INTO projects (id, name) VALUES ($1, 'L')")
                    .bind(format!("long-{n}"))
                    .execute(&mut *tx)
                    .await;
                if insert.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.commit().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = paced_writer(url.clone(), rate, count);
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "writer thread panicked".to_string())??;
    stop_long.store(true, Ordering::Relaxed);
    if let Some(long) = long {
        let _ = long.await;
    }
    let expected = written * (per_replica * replicas_n) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while groups
        .iter()
        .map(|g| g.shared.events.load(Ordering::Relaxed))
        .sum::<u64>()
        < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::new();
    let mut received = 0;
    for group in groups {
        received += group.shared.events.load(Ordering::Relaxed);
        latencies.extend(group.stop().await);
    }
    for sequencer in sequencers {
        sequencer.abort();
    }
    drop(replicas);
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p) / 1000.0;
    Ok(LatencyResult {
        delivery: [
            ms(50.0),
            ms(99.0),
            latencies.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        ],
        missing: expected.saturating_sub(received),
    })
}

/// Inserts `count` log rows at `rate` per second, each carrying its send time; on its own thread
/// so the subscribers' tasks cannot delay its pacing. Returns how many it wrote.
fn paced_writer(
    url: String,
    rate: u64,
    count: u64,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut connection = PgConnection::connect(&url)
                .await
                .map_err(|e| format!("connecting the writer: {e}"))?;
            let period = Duration::from_secs_f64(1.0 / rate as f64);
            let started = Instant::now();
            for index in 0..count {
                let due = started + period * index as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                sqlx::query(
                    "INSERT INTO change_log (project_id, event_type, payload) \
                     VALUES ('bench', 'bench_tick', $1)",
                )
                .bind(payload(unix_micros(), index, PAYLOAD))
                .execute(&mut connection)
                .await
                .map_err(|e| format!("writing: {e}"))?;
            }
            Ok(count)
        })
    })
}

async fn latency(
    config: &Config,
    admin: &Result<String, String>,
    durable: &Result<String, String>,
    report: &mut Report,
) {
    let subs = if config.quick { 300 } else { 1000 };
    let secs = if config.quick { 3 } else { 10 };
    for long in [false, true] {
        let setup = format!(
            "{subs} subscribers over 3 replica processes, 200 writes/s for {secs} s, {}, medians of {} alternating runs{}",
            durable.as_deref().unwrap_or("?"),
            if config.quick { 1 } else { 2 },
            if long {
                "; one writing transaction at a time held open 1 s"
            } else {
                ""
            }
        );
        // Rounds alternate the two designs (the machine's load drifts); medians per measure.
        let rounds = if config.quick { 1 } else { 2 };
        let designs = [AssignMode::Visible, AssignMode::XidHorizon];
        let mut runs: [Vec<Result<LatencyResult, String>>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (index, design) in designs.into_iter().enumerate() {
                let result = match admin {
                    Ok(admin) => latency_run(config, admin, design, long).await,
                    Err(error) => Err(error.clone()),
                };
                match &result {
                    Ok(result) => eprintln!(
                        "   {design:?}: p50 {:.1} ms, p99 {:.1} ms, {} deliveries missing",
                        result.delivery[0], result.delivery[1], result.missing
                    ),
                    Err(error) => eprintln!("   {design:?}: {error}"),
                }
                runs[index].push(result);
            }
        }
        let results: Vec<Result<LatencyResult, String>> = runs
            .iter()
            .map(|runs| {
                let ok: Vec<&LatencyResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
                if ok.is_empty() {
                    return Err(runs
                        .iter()
                        .find_map(|r| r.as_ref().err().cloned())
                        .unwrap_or_else(|| "no run".into()));
                }
                let mut delivery = [0.0; 3];
                for (k, value) in delivery.iter_mut().enumerate() {
                    let mut values: Vec<f64> = ok.iter().map(|r| r.delivery[k]).collect();
                    *value = median(&mut values);
                }
                Ok(LatencyResult {
                    delivery,
                    missing: ok.iter().map(|r| r.missing).sum(),
                })
            })
            .collect();
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            report.push(Row {
                scenario: "6 postgres",
                setup: setup.clone(),
                metric: format!("{name} commit→client latency (ms)"),
                ours: cell(results[0].as_ref().map(|r| r.delivery[k])),
                peer: "xid-horizon sequencer (PgQ-style)",
                theirs: cell(results[1].as_ref().map(|r| r.delivery[k])),
                lower_is_better: true,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replay

async fn replay_postgres(config: &Config, admin: &str, rows: u64) -> Result<f64, String> {
    let url = fresh_database(admin, "bench_replay").await?;
    let store = PostgresStore::open_with(
        &url,
        changefeed::store::postgres::PostgresStoreOptions {
            sequencer: None,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("migrating: {e}"))?;
    store.close().await;
    let pad = "x".repeat(PAYLOAD.saturating_sub(40));
    execute(
        &url,
        &format!(
            "INSERT INTO change_log (seq, project_id, event_type, payload) \
             SELECT n, 'bench', 'bench_tick', \
                    '{{\"t\":0,\"i\":' || n || ',\"pad\":\"{pad}\"}}' \
             FROM generate_series(1, {rows}) AS n; \
             UPDATE changefeed_sequencer SET head = {rows}"
        ),
    )
    .await?;
    execute(&url, "VACUUM ANALYZE change_log").await?;
    let (config2, url2) = (config.clone(), url.clone());
    let replica = tokio::task::spawn_blocking(move || {
        Replica::start(&config2, &url2, "replay", &["--no-sequencer"])
    })
    .await
    .map_err(|e| e.to_string())??;
    replay_one(&replica.target("/api/v1/events?after=0"), rows, config).await
}

async fn replay_sqlite(config: &Config, rows: u64) -> Result<f64, String> {
    let db = config.work.join("pg-replay-peer.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store = changefeed::store::sqlite::SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .map_err(|e| e.to_string())?;
    drop(store);
    writers::bulk_fill(&db, rows, PAYLOAD).await?;
    let (bin, work, db2) = (config.server_bin.clone(), config.work.clone(), db.clone());
    let server =
        tokio::task::spawn_blocking(move || Server::start(&bin, &db2, &work, "pg-replay-peer"))
            .await
            .map_err(|e| e.to_string())??;
    let target = Target {
        addr: server.addr,
        path: "/api/v1/events?after=0".into(),
        ready_event: true,
    };
    replay_one(&target, rows, config).await
}

/// Events per second of one client replaying `rows` from 0 to `changefeed.ready`.
async fn replay_one(target: &Target, rows: u64, config: &Config) -> Result<f64, String> {
    let timeout = Duration::from_secs(if config.quick { 60 } else { 600 });
    let one = Subscribers::start(target, 1, 1, false, 0);
    let time = one.wait_ready(timeout).await;
    let events = one.shared.events.load(Ordering::Relaxed);
    one.stop().await;
    let time = time?;
    if events < rows {
        return Err(format!(
            "replayed {events} of {rows} rows before changefeed.ready"
        ));
    }
    Ok(rows as f64 / time.as_secs_f64())
}

async fn replay(config: &Config, admin: &Result<String, String>, report: &mut Report) {
    let rows = if config.quick { 100_000 } else { 1_000_000 };
    let ours = match admin {
        Ok(admin) => replay_postgres(config, admin, rows).await,
        Err(error) => Err(error.clone()),
    };
    let theirs = replay_sqlite(config, rows).await;
    report.push(Row {
        scenario: "6 postgres",
        setup: format!("one client replays {rows} rows of {PAYLOAD} B from seq 0 to ready"),
        metric: "replay events/s (Postgres vs SQLite)".into(),
        ours: cell(ours.as_ref().map(|v| *v)),
        peer: "the same log on SQLite",
        theirs: cell(theirs.as_ref().map(|v| *v)),
        lower_is_better: false,
    });
}

/// A measurement, or the error that kept it from being taken.
fn cell(result: Result<f64, &String>) -> Cell {
    match result {
        Ok(value) => Cell::Value(value),
        Err(error) => Cell::Error(error.clone()),
    }
}
