//! The changefeed benchmark harness (issue #5), run by `scripts/bench.sh`.
//!
//! ```text
//! bench [latency|fanout|replay|idle|parser ...] [--quick] --server-bin PATH [--nchan ADDR
//!       --nchan-pid FILE] [--out DIR] [--work DIR]
//! ```
//!
//! Starts a fresh `changefeed serve` (on a fresh SQLite file) per measurement, drives it with
//! the load generator in [`loadgen`], optionally measures the same load against Nchan (started
//! by the script), and prints one markdown table (also written to `OUT/results.md`) plus an SVG
//! latency chart (`OUT/latency.svg`). No performance assertions: a scenario that fails is
//! reported as such and the others still run (`BENCH_STRICT=1` makes such a run exit 1).

mod loadgen;
mod postgres;
mod procs;
mod report;
mod writers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use changefeed_core::sse::{Item, Parser};

use loadgen::{Subscribers, Target};
use procs::Server;
use report::{Cell, LatencyBar, Report, Row};
use writers::Sink;

/// Payload size of every benchmark event (bytes of the stored JSON payload).
const PAYLOAD: usize = 200;

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    server_bin: PathBuf,
    nchan: Option<(SocketAddr, PathBuf)>,
    out: PathBuf,
    work: PathBuf,
    groups: usize,
    /// Admin URL of a disposable Postgres cluster for the `postgres` scenario.
    postgres: Option<String>,
}

impl Config {
    fn latency_subs(&self) -> usize {
        if self.quick {
            100
        } else {
            1000
        }
    }
    fn latency_secs(&self) -> u64 {
        if self.quick {
            3
        } else {
            10
        }
    }
    fn fanout_subs(&self) -> Vec<usize> {
        if self.quick {
            vec![100, 1000]
        } else {
            vec![1000, 10_000]
        }
    }
    fn fanout_secs(&self) -> u64 {
        if self.quick {
            3
        } else {
            10
        }
    }
    fn replay_rows(&self) -> u64 {
        if self.quick {
            100_000
        } else {
            1_000_000
        }
    }
    fn idle_streams(&self) -> usize {
        if self.quick {
            1000
        } else {
            10_000
        }
    }
    fn parser_mib(&self) -> usize {
        if self.quick {
            8
        } else {
            64
        }
    }
}

const SCENARIOS: [&str; 6] = ["latency", "fanout", "replay", "idle", "parser", "postgres"];

fn usage() -> ! {
    eprintln!(
        "usage: bench [{}|all ...] [--quick] --server-bin PATH [--nchan ADDR --nchan-pid FILE] [--postgres URL] [--out DIR] [--work DIR]",
        SCENARIOS.join("|")
    );
    std::process::exit(2)
}

fn main() {
    let mut scenarios = Vec::new();
    let mut quick = false;
    let mut server_bin = None;
    let mut nchan_addr = None;
    let mut nchan_pid = None;
    let mut out = PathBuf::from("target/bench");
    let mut work = None;
    let mut postgres = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            // `cargo bench` passes this to harness-less benches.
            "--bench" => {}
            "--server-bin" => server_bin = args.next().map(PathBuf::from),
            "--nchan" => nchan_addr = args.next().and_then(|a| a.parse::<SocketAddr>().ok()),
            "--nchan-pid" => nchan_pid = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--work" => work = args.next().map(PathBuf::from),
            "--postgres" => postgres = args.next(),
            "all" => scenarios.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => scenarios.push(s.to_string()),
            _ => usage(),
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(SCENARIOS.iter().map(|s| s.to_string()));
    }
    let work = work.unwrap_or_else(|| out.join("work"));
    std::fs::create_dir_all(&out).expect("creating the output directory");
    std::fs::create_dir_all(&work).expect("creating the work directory");
    let config = Config {
        quick,
        server_bin: server_bin.unwrap_or_else(|| PathBuf::from("target/fast/changefeed")),
        nchan: nchan_addr.zip(nchan_pid),
        out,
        work,
        groups: 4,
        postgres,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut report = Report::new(quick);
    runtime.block_on(async {
        for scenario in &scenarios {
            eprintln!("== {scenario} ({:.0}s)", started.elapsed().as_secs_f64());
            match scenario.as_str() {
                "latency" => latency(&config, &mut report).await,
                "fanout" => fanout(&config, &mut report).await,
                "replay" => replay(&config, &mut report).await,
                "idle" => idle(&config, &mut report).await,
                "parser" => parser(&config, &mut report),
                "postgres" => postgres::run(&config, &mut report).await,
                _ => unreachable!(),
            }
        }
    });
    let errors = report.finish(&config.out, started.elapsed());
    // No performance assertions, ever; a measurement that could not be taken only fails the run
    // when asked (BENCH_STRICT=1).
    if errors > 0 && std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1") {
        eprintln!("{errors} measurements failed (BENCH_STRICT=1)");
        std::process::exit(1);
    }
}

/// A fresh database (schema and triggers created by the server's own store code).
async fn fresh_db(config: &Config, name: &str) -> Result<PathBuf, String> {
    let db = config.work.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store = changefeed::store::sqlite::SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .map_err(|e| format!("creating {}: {e}", db.display()))?;
    drop(store);
    Ok(db)
}

/// The system under test for one measurement: a fresh changefeed server, or Nchan.
enum System {
    Changefeed {
        server: Server,
        db: PathBuf,
    },
    Nchan {
        addr: SocketAddr,
        master: u32,
        channel: String,
    },
}

impl System {
    async fn changefeed(config: &Config, name: &str) -> Result<System, String> {
        let db = fresh_db(config, name).await?;
        let (bin, work, n) = (
            config.server_bin.clone(),
            config.work.clone(),
            name.to_string(),
        );
        let db2 = db.clone();
        let server = tokio::task::spawn_blocking(move || Server::start(&bin, &db2, &work, &n))
            .await
            .map_err(|e| e.to_string())??;
        Ok(System::Changefeed { server, db })
    }

    fn nchan(config: &Config, channel: &str) -> Result<System, String> {
        let (addr, pid_file) = config.nchan.as_ref().ok_or("Nchan not available")?;
        let master = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("{}: {e}", pid_file.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("nginx pid: {e}"))?;
        // Fresh workers for every measurement (as changefeed gets a fresh process): a reload
        // (SIGHUP) starts new workers; the old ones exit once their connections are gone.
        // Otherwise memory freed by an earlier run is reused and hides per-stream growth.
        let old = procs::children(master);
        let status = std::process::Command::new("kill")
            .args(["-HUP", &master.to_string()])
            .status()
            .map_err(|e| format!("kill -HUP nginx: {e}"))?;
        if !status.success() {
            return Err(format!("kill -HUP {master} failed: {status}"));
        }
        let start = Instant::now();
        loop {
            let now = procs::children(master);
            if !now.is_empty() && now.iter().all(|pid| !old.contains(pid)) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err("nginx workers did not restart within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(System::Nchan {
            addr: *addr,
            master,
            channel: channel.to_string(),
        })
    }

    fn target(&self, path: Option<&str>) -> Target {
        match self {
            System::Changefeed { server, .. } => Target {
                addr: server.addr,
                path: path.unwrap_or("/api/v1/events").to_string(),
                ready_event: true,
            },
            System::Nchan { addr, channel, .. } => Target {
                addr: *addr,
                path: format!("/sub/{channel}"),
                ready_event: false,
            },
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            System::Changefeed { server, .. } => vec![server.pid()],
            System::Nchan { master, .. } => {
                let mut pids = vec![*master];
                pids.extend(procs::children(*master));
                pids
            }
        }
    }

    /// Counters from changefeed's `/metrics` (none for Nchan).
    fn counters(&self) -> Counters {
        let System::Changefeed { server, .. } = self else {
            return Counters::default();
        };
        let text = procs::http_get(server.addr, "/metrics").unwrap_or_default();
        Counters {
            lag_fallbacks: procs::metric(&text, "changefeed_lag_fallbacks_total").unwrap_or(0.0),
            replayed_rows: procs::metric(&text, "changefeed_replayed_rows_total").unwrap_or(0.0),
        }
    }

    fn rss_kib(&self) -> u64 {
        self.pids().into_iter().filter_map(procs::rss_kib).sum()
    }

    fn cpu_ticks(&self) -> u64 {
        procs::cpu_ticks_sum(&self.pids())
    }

    fn paced_sink(&self, cli: bool) -> Sink {
        match self {
            System::Changefeed { db, .. } if cli => Sink::Sqlite3Cli(db.clone()),
            System::Changefeed { db, .. } => Sink::Sqlx(db.clone()),
            System::Nchan { addr, channel, .. } => Sink::Nchan(*addr, channel.clone()),
        }
    }
}

/// Server counters that explain a result (a lagging subscriber falls back to the database).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    lag_fallbacks: f64,
    replayed_rows: f64,
}

/// CPU of this process (the load generator and writers).
struct SelfCpu(u64, Instant);

impl SelfCpu {
    fn start() -> SelfCpu {
        SelfCpu(procs::cpu_ticks("self").unwrap_or(0), Instant::now())
    }
    fn percent(&self) -> f64 {
        let ticks = procs::cpu_ticks("self").unwrap_or(0).saturating_sub(self.0);
        procs::cpu_percent(ticks, self.1.elapsed())
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn join_writer(
    handle: std::thread::JoinHandle<Result<writers::WriterReport, String>>,
) -> Result<writers::WriterReport, String> {
    handle
        .join()
        .map_err(|_| "writer thread panicked".to_string())?
}

// ---------------------------------------------------------------------------------------------
// 1. Commit → client latency

struct LatencyResult {
    /// Per delivery: p50, p99, max (ms).
    delivery: [f64; 3],
    /// Per event, the last subscriber's receipt: p50, p99, max (ms).
    all: [f64; 3],
    missing: u64,
    writes_per_s: f64,
    gen_cpu: f64,
    server_cpu: f64,
    machine_busy: f64,
}

async fn latency_run(
    config: &Config,
    system: &System,
    sink: Sink,
) -> Result<LatencyResult, String> {
    let subs_n = config.latency_subs();
    let rate = 1000u64;
    let count = rate * config.latency_secs();
    let subs = Subscribers::start(
        &system.target(None),
        subs_n,
        config.groups,
        true,
        count as usize,
    );
    let ready = subs.wait_ready(Duration::from_secs(60)).await;
    if let Err(error) = ready {
        subs.stop().await;
        return Err(error);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gen = SelfCpu::start();
    let machine0 = procs::machine_ticks();
    let server0 = system.cpu_ticks();
    let t0 = Instant::now();
    let writer = writers::paced(sink, rate, count, PAYLOAD, Arc::new(AtomicBool::new(false)));
    let writer = tokio::task::spawn_blocking(move || join_writer(writer))
        .await
        .map_err(|e| e.to_string())??;
    let written = writer.written;
    let writes_per_s = written as f64 / writer.elapsed.as_secs_f64().max(1e-9);
    let expected = written * subs_n as u64;
    subs.wait_events(expected, Duration::from_secs(5)).await;
    let server_cpu = procs::cpu_percent(system.cpu_ticks().saturating_sub(server0), t0.elapsed());
    let gen_cpu = gen.percent();
    let machine_busy = procs::machine_busy(machine0, procs::machine_ticks());
    let received = subs.shared.events.load(Ordering::Relaxed);
    let error = subs.shared.error();
    let shared = subs.shared.clone();
    let mut delivery = subs.stop().await;
    if let Some(error) = error {
        return Err(error);
    }
    delivery.sort_unstable();
    let mut all: Vec<u32> = (0..written as usize)
        .filter(|&i| shared.per_event_count[i].load(Ordering::Relaxed) as usize >= subs_n)
        .map(|i| {
            shared.per_event_max[i]
                .load(Ordering::Relaxed)
                .min(u32::MAX as u64) as u32
        })
        .collect();
    all.sort_unstable();
    if delivery.is_empty() {
        return Err(format!("no event arrived ({written} written)"));
    }
    let ms = |v: &[u32]| {
        [
            percentile(v, 50.0) / 1000.0,
            percentile(v, 99.0) / 1000.0,
            v.last().copied().unwrap_or(0) as f64 / 1000.0,
        ]
    };
    Ok(LatencyResult {
        delivery: ms(&delivery),
        all: ms(&all),
        missing: expected.saturating_sub(received),
        writes_per_s,
        gen_cpu,
        server_cpu,
        machine_busy,
    })
}

async fn latency(config: &Config, report: &mut Report) {
    let setup = format!(
        "{} subscribers, 1,000 writes/s for {} s, {PAYLOAD} B payload",
        config.latency_subs(),
        config.latency_secs()
    );
    let nchan = match System::nchan(config, "latency") {
        Ok(system) => latency_run(config, &system, system.paced_sink(false)).await,
        Err(error) => Err(error),
    };
    for (writer, cli) in [("bench sqlx connection", false), ("sqlite3 CLI", true)] {
        let ours =
            match System::changefeed(config, if cli { "latency-cli" } else { "latency" }).await {
                Ok(system) => {
                    let sink = system.paced_sink(cli);
                    if cli && which("sqlite3").is_none() {
                        Err("sqlite3 CLI not installed".to_string())
                    } else {
                        latency_run(config, &system, sink).await
                    }
                }
                Err(error) => Err(error),
            };
        let label = format!("commit→client latency, writer: {writer}");
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            report.push(Row {
                scenario: "1 latency",
                setup: format!("{setup}; writer: {writer}"),
                metric: format!("{name} latency, per delivery (ms)"),
                ours: Cell::from(ours.as_ref().map(|r| r.delivery[k])),
                peer: "Nchan (POST /pub)",
                theirs: Cell::from(nchan.as_ref().map(|r| r.delivery[k])),
                lower_is_better: true,
            });
        }
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            report.push(Row {
                scenario: "1 latency",
                setup: format!("{setup}; writer: {writer}"),
                metric: format!("{name} latency, last of all subscribers (ms)"),
                ours: Cell::from(ours.as_ref().map(|r| r.all[k])),
                peer: "Nchan (POST /pub)",
                theirs: Cell::from(nchan.as_ref().map(|r| r.all[k])),
                lower_is_better: true,
            });
        }
        report.push(Row {
            scenario: "1 latency",
            setup: format!("{setup}; writer: {writer}"),
            metric: "writes achieved/s (target 1,000)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.writes_per_s)),
            peer: "Nchan (POST /pub)",
            theirs: Cell::from(nchan.as_ref().map(|r| r.writes_per_s)),
            lower_is_better: false,
        });
        report.push(Row {
            scenario: "1 latency",
            setup: format!("{setup}; writer: {writer}"),
            metric: "deliveries missing after 5 s".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.missing as f64)),
            peer: "Nchan (POST /pub)",
            theirs: Cell::from(nchan.as_ref().map(|r| r.missing as f64)),
            lower_is_better: true,
        });
        report.push(Row {
            scenario: "1 latency",
            setup: format!("{setup}; writer: {writer}"),
            metric: "server CPU (% of one core)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.server_cpu)),
            peer: "Nchan (POST /pub)",
            theirs: Cell::from(nchan.as_ref().map(|r| r.server_cpu)),
            lower_is_better: true,
        });
        report.push(Row {
            scenario: "1 latency",
            setup: format!("{setup}; writer: {writer}"),
            metric: "machine CPU busy (% of all cores, everything running)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.machine_busy)),
            peer: "Nchan (POST /pub)",
            theirs: Cell::from(nchan.as_ref().map(|r| r.machine_busy)),
            lower_is_better: true,
        });
        if let Ok(r) = &ours {
            report.load_generator(&label, r.gen_cpu);
            report.bars.push(LatencyBar {
                label: format!("changefeed, {writer}"),
                p50: r.delivery[0],
                p99: r.delivery[1],
                max: r.delivery[2],
            });
        }
    }
    if let Ok(r) = &nchan {
        report.load_generator("commit→client latency, Nchan", r.gen_cpu);
        report.bars.push(LatencyBar {
            label: "Nchan, HTTP publish".into(),
            p50: r.delivery[0],
            p99: r.delivery[1],
            max: r.delivery[2],
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Fan-out throughput

struct FanoutResult {
    lag_fallbacks: f64,
    replayed_rows: f64,
    frames_per_s: f64,
    events_per_s: f64,
    server_cpu: f64,
    gen_cpu: f64,
    machine_busy: f64,
}

async fn fanout_run(
    config: &Config,
    system: &System,
    subs_n: usize,
) -> Result<FanoutResult, String> {
    let subs = Subscribers::start(&system.target(None), subs_n, config.groups, false, 0);
    if let Err(error) = subs.wait_ready(Duration::from_secs(120)).await {
        subs.stop().await;
        return Err(error);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sink = match system {
        System::Changefeed { db, .. } => Sink::Sqlx(db.clone()),
        System::Nchan { addr, channel, .. } => Sink::Nchan(*addr, channel.clone()),
    };
    let duration = Duration::from_secs(config.fanout_secs());
    let gen = SelfCpu::start();
    let counters0 = system.counters();
    let machine0 = procs::machine_ticks();
    let server0 = system.cpu_ticks();
    let events0 = subs.shared.events.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let writer = writers::flow_controlled(
        sink,
        subs.shared.clone(),
        subs_n as u64,
        1000,
        duration,
        PAYLOAD,
    );
    let result = tokio::task::spawn_blocking(move || join_writer(writer))
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = t0.elapsed();
    let delivered = subs.shared.events.load(Ordering::Relaxed) - events0;
    let server_cpu = procs::cpu_percent(system.cpu_ticks().saturating_sub(server0), elapsed);
    let gen_cpu = gen.percent();
    let machine_busy = procs::machine_busy(machine0, procs::machine_ticks());
    let counters = system.counters();
    let error = subs.shared.error();
    subs.stop().await;
    let written = result?.written;
    if let Some(error) = error {
        return Err(error);
    }
    Ok(FanoutResult {
        lag_fallbacks: counters.lag_fallbacks - counters0.lag_fallbacks,
        replayed_rows: counters.replayed_rows - counters0.replayed_rows,
        frames_per_s: delivered as f64 / elapsed.as_secs_f64(),
        events_per_s: written as f64 / elapsed.as_secs_f64(),
        server_cpu,
        gen_cpu,
        machine_busy,
    })
}

async fn fanout(config: &Config, report: &mut Report) {
    for subs_n in config.fanout_subs() {
        let setup = format!(
            "{subs_n} subscribers, writer as fast as delivery keeps up (≤ 1,000 events ahead), {} s, {PAYLOAD} B payload",
            config.fanout_secs()
        );
        let ours = match System::changefeed(config, &format!("fanout-{subs_n}")).await {
            Ok(system) => fanout_run(config, &system, subs_n).await,
            Err(error) => Err(error),
        };
        let nchan = match System::nchan(config, &format!("fanout{subs_n}")) {
            Ok(system) => fanout_run(config, &system, subs_n).await,
            Err(error) => Err(error),
        };
        let peer = "Nchan (POST /pub)";
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "frames delivered/s (all subscribers)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.frames_per_s)),
            peer,
            theirs: Cell::from(nchan.as_ref().map(|r| r.frames_per_s)),
            lower_is_better: false,
        });
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "events written/s".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.events_per_s)),
            peer,
            theirs: Cell::from(nchan.as_ref().map(|r| r.events_per_s)),
            lower_is_better: false,
        });
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "server CPU (% of one core)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.server_cpu)),
            peer,
            theirs: Cell::from(nchan.as_ref().map(|r| r.server_cpu)),
            lower_is_better: true,
        });
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "server CPU µs per 1,000 frames".into(),
            ours: Cell::from(
                ours.as_ref()
                    .map(|r| r.server_cpu / 100.0 * 1e6 / r.frames_per_s.max(1e-9) * 1000.0),
            ),
            peer,
            theirs: Cell::from(
                nchan
                    .as_ref()
                    .map(|r| r.server_cpu / 100.0 * 1e6 / r.frames_per_s.max(1e-9) * 1000.0),
            ),
            lower_is_better: true,
        });
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "machine CPU busy (% of all cores, everything running)".into(),
            ours: Cell::from(ours.as_ref().map(|r| r.machine_busy)),
            peer,
            theirs: Cell::from(nchan.as_ref().map(|r| r.machine_busy)),
            lower_is_better: true,
        });
        report.push(Row {
            scenario: "2 fan-out",
            setup: setup.clone(),
            metric: "lag fallbacks / rows re-read from the database (server /metrics)".into(),
            ours: match &ours {
                Ok(r) => Cell::Text(format!(
                    "{} / {}",
                    r.lag_fallbacks as u64, r.replayed_rows as u64
                )),
                Err(error) => Cell::Error(error.clone()),
            },
            peer,
            theirs: Cell::NotRun,
            lower_is_better: true,
        });
        if let Ok(r) = &ours {
            report.load_generator(&format!("fan-out {subs_n}, changefeed"), r.gen_cpu);
        }
        if let Ok(r) = &nchan {
            report.load_generator(&format!("fan-out {subs_n}, Nchan"), r.gen_cpu);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Replay

struct ReplayResult {
    one_events_per_s: f64,
    one_secs: f64,
    ten_events_per_s: f64,
    ten_secs: f64,
    idle: [f64; 3],
    during: [f64; 3],
}

async fn replay_run(config: &Config, rows: u64) -> Result<ReplayResult, String> {
    let db = fresh_db(config, "replay").await?;
    let fill = Instant::now();
    writers::bulk_fill(&db, rows, PAYLOAD).await?;
    eprintln!(
        "   filled {rows} rows in {:.1}s",
        fill.elapsed().as_secs_f64()
    );
    let (bin, work, db2) = (config.server_bin.clone(), config.work.clone(), db.clone());
    let server = tokio::task::spawn_blocking(move || Server::start(&bin, &db2, &work, "replay"))
        .await
        .map_err(|e| e.to_string())??;
    let system = System::Changefeed {
        server,
        db: db.clone(),
    };
    let target = system.target(Some("/api/v1/events?after=0"));
    let timeout = Duration::from_secs(if config.quick { 60 } else { 600 });

    // One client from seq 0.
    let one = Subscribers::start(&target, 1, 1, false, 0);
    let one_time = one.wait_ready(timeout).await;
    let one_events = one.shared.events.load(Ordering::Relaxed);
    one.stop().await;
    let one_time = one_time?;
    if one_events < rows {
        return Err(format!(
            "replayed {one_events} of {rows} rows before changefeed.ready"
        ));
    }

    // Writer alone (idle), then during ten concurrent replays.
    let rate = 500u64;
    let idle_secs = if config.quick { 2 } else { 5 };
    let stop = Arc::new(AtomicBool::new(false));
    let idle = join_writer(writers::paced(
        Sink::Sqlx(db.clone()),
        rate,
        rate * idle_secs,
        PAYLOAD,
        stop.clone(),
    ))?;
    let writer = writers::paced(
        Sink::Sqlx(db.clone()),
        rate,
        rate * timeout.as_secs(),
        PAYLOAD,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ten = Subscribers::start(&target, 10, 2, false, 0);
    let ten_time = ten.wait_ready(timeout).await;
    let ten_events = ten.shared.events.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    ten.stop().await;
    let during = tokio::task::spawn_blocking(move || join_writer(writer))
        .await
        .map_err(|e| e.to_string())??;
    let ten_time = ten_time?;
    let stats = |mut v: Vec<u32>| {
        v.sort_unstable();
        [
            percentile(&v, 50.0) / 1000.0,
            percentile(&v, 99.0) / 1000.0,
            v.last().copied().unwrap_or(0) as f64 / 1000.0,
        ]
    };
    Ok(ReplayResult {
        one_events_per_s: one_events as f64 / one_time.as_secs_f64(),
        one_secs: one_time.as_secs_f64(),
        ten_events_per_s: ten_events as f64 / ten_time.as_secs_f64(),
        ten_secs: ten_time.as_secs_f64(),
        idle: stats(idle.commit_micros),
        during: stats(during.commit_micros),
    })
}

async fn replay(config: &Config, report: &mut Report) {
    let rows = config.replay_rows();
    let result = replay_run(config, rows).await;
    let setup =
        format!("{rows} rows of {PAYLOAD} B payload, replay from seq 0 to changefeed.ready");
    let peer = "—";
    let mut row = |metric: &str, value: Result<f64, &String>, lower: bool, setup: &str| {
        report.push(Row {
            scenario: "3 replay",
            setup: setup.to_string(),
            metric: metric.into(),
            ours: Cell::from(value),
            peer,
            theirs: Cell::NotRun,
            lower_is_better: lower,
        })
    };
    row(
        "1 client: events/s",
        result.as_ref().map(|r| r.one_events_per_s),
        false,
        &setup,
    );
    row(
        "1 client: seconds to ready",
        result.as_ref().map(|r| r.one_secs),
        true,
        &setup,
    );
    let setup10 = format!("{setup}; 10 clients at once while a sqlx writer commits 500/s");
    row(
        "10 clients: events/s (all clients)",
        result.as_ref().map(|r| r.ten_events_per_s),
        false,
        &setup10,
    );
    row(
        "10 clients: seconds until all ready",
        result.as_ref().map(|r| r.ten_secs),
        true,
        &setup10,
    );
    for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
        row(
            &format!("writer commit {name}, idle (ms)"),
            result.as_ref().map(|r| r.idle[k]),
            true,
            &setup10,
        );
        row(
            &format!("writer commit {name}, during 10 replays (ms)"),
            result.as_ref().map(|r| r.during[k]),
            true,
            &setup10,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Idle memory

struct IdleResult {
    before_kib: u64,
    after_kib: u64,
    per_conn_kib: f64,
}

async fn idle_run(system: &System, n: usize, groups: usize) -> Result<IdleResult, String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = system.rss_kib();
    let subs = Subscribers::start(&system.target(None), n, groups, false, 0);
    let ready = subs.wait_ready(Duration::from_secs(120)).await;
    if ready.is_ok() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after_kib = system.rss_kib();
    let error = subs.shared.error();
    subs.stop().await;
    ready?;
    if let Some(error) = error {
        return Err(error);
    }
    Ok(IdleResult {
        before_kib,
        after_kib,
        per_conn_kib: after_kib.saturating_sub(before_kib) as f64 / n as f64,
    })
}

async fn idle(config: &Config, report: &mut Report) {
    let n = config.idle_streams();
    let ours = match System::changefeed(config, "idle").await {
        Ok(system) => idle_run(&system, n, config.groups).await,
        Err(error) => Err(error),
    };
    let nchan = match System::nchan(config, "idle") {
        Ok(system) => idle_run(&system, n, config.groups).await,
        Err(error) => Err(error),
    };
    let setup = format!("{n} idle streams (connected, live, no events)");
    let peer = "Nchan";
    for (metric, f) in [
        (
            "server RSS before (MiB)",
            (|r: &IdleResult| r.before_kib as f64 / 1024.0) as fn(&IdleResult) -> f64,
        ),
        ("server RSS with streams (MiB)", |r| {
            r.after_kib as f64 / 1024.0
        }),
        ("RSS per stream (KiB)", |r| r.per_conn_kib),
    ] {
        report.push(Row {
            scenario: "4 idle memory",
            setup: setup.clone(),
            metric: metric.into(),
            ours: Cell::from(ours.as_ref().map(f)),
            peer,
            theirs: Cell::from(nchan.as_ref().map(f)),
            lower_is_better: true,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Parser

fn corpus(mib: usize) -> (Vec<u8>, usize) {
    let mut corpus = Vec::with_capacity(mib << 20);
    let mut count = 0;
    let mut seq = 1u64;
    while corpus.len() < mib << 20 {
        let mut frame = format!(
            "id: 0123456789abcdef:{seq}\nevent: session_updated\ndata: {{\"seq\":{seq},\"projectId\":\"p1\",\"type\":\"session_updated\",\"payload\":{{\"id\":\"s1\",\"pad\":\""
        );
        let tail = "\"}}\n\n";
        let pad = 200usize.saturating_sub(frame.len() + tail.len());
        frame.push_str(&"x".repeat(pad));
        frame.push_str(tail);
        corpus.extend_from_slice(frame.as_bytes());
        count += 1;
        seq += 1;
    }
    (corpus, count)
}

fn parser(config: &Config, report: &mut Report) {
    let mib = config.parser_mib();
    let (corpus, count) = corpus(mib);
    let chunk = 4096;
    let runs = if config.quick { 5 } else { 11 };
    let size = corpus.len() as f64 / (1 << 20) as f64;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };

    let mut ours = Vec::new();
    let mut ours_ok = true;
    for _ in 0..runs {
        let t = Instant::now();
        let mut parser = Parser::new("");
        let mut events = 0usize;
        for piece in corpus.chunks(chunk) {
            if parser.feed(piece).is_err() {
                ours_ok = false;
            }
            while let Some(item) = parser.next_item() {
                if matches!(item, Item::Event(_)) {
                    events += 1;
                }
            }
        }
        ours_ok &= events == count;
        ours.push(size / t.elapsed().as_secs_f64());
    }

    let mut theirs = Vec::new();
    let mut theirs_ok = true;
    for _ in 0..runs {
        let chunks: Vec<bytes::Bytes> = corpus
            .chunks(chunk)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let t = Instant::now();
        // The input stream is always ready, so polling with a no-op waker never sees Pending.
        let events = {
            use eventsource_stream::Eventsource;
            use futures_util::Stream;
            let mut stream = std::pin::pin!(futures_util::stream::iter(
                chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
            )
            .eventsource());
            let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
            let mut events = 0usize;
            while let std::task::Poll::Ready(Some(event)) = stream.as_mut().poll_next(&mut cx) {
                if event.is_ok() {
                    events += 1;
                }
            }
            events
        };
        theirs_ok &= events == count;
        theirs.push(size / t.elapsed().as_secs_f64());
    }
    let setup = format!(
        "{size:.0} MiB corpus of {count} 200-byte events in {chunk}-byte chunks, median of {runs} runs"
    );
    report.push(Row {
        scenario: "5 parser",
        setup,
        metric: "SSE parse throughput (MiB/s)".into(),
        ours: if ours_ok {
            Cell::Value(median(ours))
        } else {
            Cell::Error("wrong event count".into())
        },
        peer: "eventsource-stream 0.2",
        theirs: if theirs_ok {
            Cell::Value(median(theirs))
        } else {
            Cell::Error("wrong event count".into())
        },
        lower_is_better: false,
    });
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| Path::new(path).is_file())
    })
}
