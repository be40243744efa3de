//! The changefeed benchmark harness, run by `scripts/bench.sh`: changefeed side by side with a
//! peer (Nchan, the `eventsource-stream` parser) in one run, on one machine.
//!
//! ```text
//! changefeed-bench [latency|fanout|replay|idle|parser|postgres|all|soak ...] [--quick]
//!                  --server-bin PATH [--nchan ADDR --nchan-pid FILE [--nchan-h2 ADDR]]
//!                  [--postgres URL] [--out DIR] [--work DIR]
//! ```
//!
//! Starts a fresh `changefeed serve` (on a fresh SQLite file) per measurement, drives it with
//! the load generator in [`loadgen`], optionally measures the same load against Nchan (started
//! by the script), and prints one markdown table (also written to `OUT/results.md`) plus an SVG
//! latency chart (`OUT/latency.svg`). One file per scenario (`latency`, `fanout`, `replay`,
//! `idle`, `parser`, `postgres`); [`report::Compare`] makes each side-by-side row. No performance
//! assertions: a scenario that fails is reported as such and the others still run
//! (`BENCH_STRICT=1` makes such a run exit 1).

mod fanout;
mod h2load;
mod idle;
mod latency;
mod loadgen;
mod parser;
mod postgres;
mod procs;
mod replay;
mod report;
mod soak;
mod sqlite_cli;
mod system;
mod writers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser as _, ValueEnum};

use report::Report;

/// Payload size of every benchmark event (bytes of the stored JSON payload).
const PAYLOAD: usize = 200;

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Commit → client latency (changefeed with two writers, Nchan).
    Latency,
    /// Fan-out throughput to many subscribers.
    Fanout,
    /// Replay of a large log, and writer latency during replays.
    Replay,
    /// Memory per idle stream.
    Idle,
    /// SSE parser throughput.
    Parser,
    /// Postgres: writer throughput against plain BIGSERIAL and a counter row, commit → client
    /// latency over replicas, replay beside SQLite.
    Postgres,
    /// Every scenario above.
    All,
    /// The soak: long-running streams and writes, failing on growth beyond its bounds (not
    /// part of `all`; see scripts/soak.sh).
    Soak,
}

const EVERY: [Scenario; 6] = [
    Scenario::Latency,
    Scenario::Fanout,
    Scenario::Replay,
    Scenario::Idle,
    Scenario::Parser,
    Scenario::Postgres,
];

/// Side-by-side benchmarks of changefeed (see scripts/bench.sh, which builds and starts the
/// peers).
#[derive(Debug, clap::Parser)]
#[command(name = "changefeed-bench")]
struct Args {
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,

    /// Scale every scenario down (about a minute in all; the same rows are printed).
    #[arg(long)]
    quick: bool,

    /// The `changefeed` binary to measure.
    #[arg(long, value_name = "PATH", default_value = "target/fast/changefeed")]
    server_bin: PathBuf,

    /// Address of the Nchan peer (nginx), when one is running.
    #[arg(long, value_name = "ADDR", requires = "nchan_pid")]
    nchan: Option<SocketAddr>,

    /// Nchan's HTTP/2 port (h2c with prior knowledge; same nginx), for the HTTP/2 fan-out.
    #[arg(long, value_name = "ADDR", requires = "nchan")]
    nchan_h2: Option<SocketAddr>,

    /// The Nchan peer's nginx pid file (its workers are measured and restarted per run).
    #[arg(long, value_name = "FILE", requires = "nchan")]
    nchan_pid: Option<PathBuf>,

    /// Where results.md and latency.svg go.
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,

    /// Scratch directory for databases and logs (default: OUT/work).
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,

    /// Soak: how long the writer runs, in minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 30.0)]
    soak_minutes: f64,

    /// Soak: live streams.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    soak_streams: usize,

    /// Soak: writes per second (one transaction each, the bench's own sqlx connection).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    soak_rate: u64,

    /// Soak: seconds between samples of RSS, open fds and runtime tasks.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    soak_sample_secs: u64,

    /// Soak: allowed RSS growth from the end of the warm-up (the first quarter) to the end.
    #[arg(long, value_name = "MIB", default_value_t = 32.0)]
    soak_max_rss_growth_mib: f64,

    /// Soak: allowed growth of open fds (after the warm-up, and after every stream closed
    /// compared with before any opened).
    #[arg(long, value_name = "N", default_value_t = 16)]
    soak_max_fd_growth: u64,

    /// Soak: allowed growth of runtime tasks (measured as the fds are).
    #[arg(long, value_name = "N", default_value_t = 16)]
    soak_max_task_growth: u64,

    /// Admin URL of a disposable Postgres cluster for the `postgres` scenario (each
    /// measurement creates a database of its own there).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,

    /// Passed by `cargo bench` to harness-less benches; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    server_bin: PathBuf,
    nchan: Option<(SocketAddr, PathBuf)>,
    nchan_h2: Option<SocketAddr>,
    out: PathBuf,
    work: PathBuf,
    groups: usize,
    /// Admin URL of a disposable Postgres cluster for the `postgres` scenario.
    postgres: Option<String>,
}

impl Config {
    /// Subscriber counts of the latency runs (each against Nchan in the same run).
    fn latency_subs(&self) -> Vec<usize> {
        if self.quick {
            vec![20, 100]
        } else {
            vec![100, 1000]
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

fn main() {
    let args = Args::parse();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for scenario in args.scenarios {
        let wanted: &[Scenario] = if scenario == Scenario::All {
            &EVERY
        } else {
            std::slice::from_ref(&scenario)
        };
        for scenario in wanted {
            if !scenarios.contains(scenario) {
                scenarios.push(*scenario);
            }
        }
    }
    if scenarios.is_empty() {
        scenarios.extend(EVERY);
    }
    let work = args.work.unwrap_or_else(|| args.out.join("work"));
    std::fs::create_dir_all(&args.out).expect("creating the output directory");
    std::fs::create_dir_all(&work).expect("creating the work directory");
    let config = Config {
        quick: args.quick,
        server_bin: args.server_bin,
        nchan: args.nchan.zip(args.nchan_pid),
        nchan_h2: args.nchan_h2,
        out: args.out,
        work,
        groups: 4,
        postgres: args.postgres,
    };

    let soak_options = soak::SoakOptions {
        duration: std::time::Duration::from_secs_f64(args.soak_minutes.max(0.05) * 60.0),
        streams: args.soak_streams.max(1),
        rate: args.soak_rate.max(1),
        sample_every: std::time::Duration::from_secs(args.soak_sample_secs.max(1)),
        max_rss_growth_mib: args.soak_max_rss_growth_mib,
        max_fd_growth: args.soak_max_fd_growth,
        max_task_growth: args.soak_max_task_growth,
    };
    let mut soak_failed = false;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut report = Report::new(config.quick);
    runtime.block_on(async {
        for scenario in &scenarios {
            eprintln!("== {scenario:?} ({:.0}s)", started.elapsed().as_secs_f64());
            match scenario {
                Scenario::Latency => latency::run(&config, &mut report).await,
                Scenario::Fanout => fanout::run(&config, &mut report).await,
                Scenario::Replay => replay::run(&config, &mut report).await,
                Scenario::Idle => idle::run(&config, &mut report).await,
                Scenario::Parser => parser::run(&config, &mut report),
                Scenario::Soak => {
                    soak_failed |= !soak::run(&config, &soak_options, &mut report).await;
                }
                Scenario::Postgres => postgres::run(&config, &mut report).await,
                Scenario::All => unreachable!("expanded above"),
            }
        }
    });
    let errors = report.finish(&config.out, started.elapsed());
    // The soak is a check, not a comparison: exceeding a bound fails the run.
    if soak_failed {
        eprintln!("the soak failed (see its verdict row)");
        std::process::exit(1);
    }
    // No performance assertions, ever; a measurement that could not be taken only fails the run
    // when asked (BENCH_STRICT=1).
    if errors > 0 && std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1") {
        eprintln!("{errors} measurements failed (BENCH_STRICT=1)");
        std::process::exit(1);
    }
}
