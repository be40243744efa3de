//! Replay: one client replaying a large log from seq 0 to `changefeed.ready`, side by side with
//! the `sqlite3` CLI's own scan and print of the same rows (the storage limit), alternating in
//! rounds so both see the same load; ten clients at once; and the commit latency of a writer in
//! this process (sqlx) and of one in another process (the `sqlite3` CLI), each idle and during
//! ten concurrent full replays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::{Subscribers, Target};
use crate::procs::{self, Server};
use crate::report::{Better, Compare, Report};
use crate::system::{fresh_db, join_writer, percentile, System};
use crate::writers::{self, Sink, WriterReport};
use crate::{sqlite_cli, Config, PAYLOAD};

/// Rounds of (CLI scan, one-client replay); the medians are reported.
const ROUNDS: usize = 3;

/// Commits per second of each paced writer.
const WRITE_RATE: u64 = 500;

struct OneClient {
    events_per_s: f64,
    secs: f64,
    /// The server's CPU time (user + system) over the replay, per event; `None` for the scan.
    cpu_micros_per_event: Option<f64>,
}

struct TenClients {
    events_per_s: f64,
    secs: f64,
}

/// p50, p99 and max commit latency (ms).
type Latency = [f64; 3];

struct Writers {
    sqlx_idle: Latency,
    sqlx_during: Latency,
    cli_idle: Latency,
    cli_during: Latency,
}

struct Results {
    one: Result<OneClient, String>,
    scan: Result<OneClient, String>,
    ten: Result<TenClients, String>,
    writers: Result<Writers, String>,
    /// The load average (1 min) when each part was measured.
    load_one: String,
    load_writers: String,
}

fn load_now() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn stats(mut micros: Vec<u32>) -> Latency {
    micros.sort_unstable();
    [
        percentile(&micros, 50.0) / 1000.0,
        percentile(&micros, 99.0) / 1000.0,
        micros.last().copied().unwrap_or(0) as f64 / 1000.0,
    ]
}

/// One client from seq 0 until `changefeed.ready`, and the CPU time `server` spent on it.
async fn one_replay(
    target: &Target,
    server: &[u32],
    rows: u64,
    timeout: Duration,
) -> Result<OneClient, String> {
    let ticks_before = procs::cpu_ticks_sum(server);
    let one = Subscribers::start(target, 1, 1, false, 0);
    let time = one.wait_ready(timeout).await;
    let ticks = procs::cpu_ticks_sum(server) - ticks_before;
    let events = one.shared.events.load(Ordering::Relaxed);
    one.stop().await;
    let time = time?;
    if events < rows {
        return Err(format!(
            "replayed {events} of {rows} rows before changefeed.ready"
        ));
    }
    Ok(OneClient {
        events_per_s: events as f64 / time.as_secs_f64(),
        secs: time.as_secs_f64(),
        cpu_micros_per_event: Some(ticks as f64 / procs::clock_ticks() * 1e6 / events as f64),
    })
}

/// Ten clients from seq 0 at once while `writer` commits; the writer is stopped as soon as
/// the first client is ready, so every commit it timed overlapped ten running replays.
async fn ten_replays(
    target: &Target,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<Result<WriterReport, String>>,
) -> Result<(TenClients, WriterReport), String> {
    let ten = Subscribers::start(target, 10, 2, false, 0);
    let start = Instant::now();
    while ten.shared.ready.load(Ordering::Relaxed) == 0
        && ten.shared.failed.load(Ordering::Relaxed) == 0
        && start.elapsed() < timeout
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let time = ten
        .wait_ready(timeout.saturating_sub(start.elapsed()))
        .await;
    let events = ten.shared.events.load(Ordering::Relaxed);
    ten.stop().await;
    let during = tokio::task::spawn_blocking(move || join_writer(writer))
        .await
        .map_err(|e| e.to_string())??;
    let _ = time?;
    let secs = start.elapsed().as_secs_f64();
    Ok((
        TenClients {
            events_per_s: events as f64 / secs,
            secs,
        },
        during,
    ))
}

async fn replay_run(config: &Config, rows: u64) -> Result<Results, String> {
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

    // The scan and the replay alternate, so a change of load hits both.
    let load_one = load_now();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut first_error = None;
    for _ in 0..ROUNDS {
        let scan_db = db.clone();
        match tokio::task::spawn_blocking(move || sqlite_cli::scan(&scan_db))
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(scan) if scan.rows >= rows => theirs.push(scan),
            Ok(scan) => {
                first_error.get_or_insert(format!("sqlite3 printed {} of {rows} rows", scan.rows));
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
        ours.push(one_replay(&target, &system.pids(), rows, timeout).await?);
    }
    let one = Ok(OneClient {
        events_per_s: median(ours.iter().map(|r| r.events_per_s).collect()),
        secs: median(ours.iter().map(|r| r.secs).collect()),
        cpu_micros_per_event: Some(median(
            ours.iter().filter_map(|r| r.cpu_micros_per_event).collect(),
        )),
    });
    let scan = if theirs.is_empty() {
        Err(first_error.unwrap_or_else(|| "no scan".into()))
    } else {
        Ok(OneClient {
            events_per_s: median(
                theirs
                    .iter()
                    .map(|s| s.rows as f64 / s.elapsed.as_secs_f64())
                    .collect(),
            ),
            secs: median(theirs.iter().map(|s| s.elapsed.as_secs_f64()).collect()),
            cpu_micros_per_event: None,
        })
    };
    eprintln!(
        "   one client: {:.0} events/s; sqlite3 scan: {:.0} rows/s (load {load_one})",
        one.as_ref().map_or(f64::NAN, |r| r.events_per_s),
        scan.as_ref().map_or(f64::NAN, |r| r.events_per_s),
    );

    // Each writer alone (idle), then during ten concurrent replays.
    let load_writers = load_now();
    let idle_count = WRITE_RATE * if config.quick { 2 } else { 5 };
    let during_count = WRITE_RATE * timeout.as_secs();
    let never = Arc::new(AtomicBool::new(false));
    let sqlx_writer = |count: u64, stop: Arc<AtomicBool>| {
        writers::paced(Sink::Sqlx(db.clone()), WRITE_RATE, count, PAYLOAD, stop)
    };
    let cli_writer = |count: u64, stop: Arc<AtomicBool>| {
        sqlite_cli::paced(
            db.clone(),
            config.work.clone(),
            WRITE_RATE,
            count,
            PAYLOAD,
            stop,
        )
    };
    let writers = async {
        let sqlx_idle = join_writer(sqlx_writer(idle_count, never.clone()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ten, sqlx_during) = ten_replays(
            &target,
            timeout,
            stop.clone(),
            sqlx_writer(during_count, stop),
        )
        .await?;
        let cli_idle = tokio::task::spawn_blocking({
            let handle = cli_writer(idle_count, never.clone());
            move || join_writer(handle)
        })
        .await
        .map_err(|e| e.to_string())??;
        let stop = Arc::new(AtomicBool::new(false));
        let (_, cli_during) = ten_replays(
            &target,
            timeout,
            stop.clone(),
            cli_writer(during_count, stop),
        )
        .await?;
        Ok::<_, String>((
            ten,
            Writers {
                sqlx_idle: stats(sqlx_idle.commit_micros),
                sqlx_during: stats(sqlx_during.commit_micros),
                cli_idle: stats(cli_idle.commit_micros),
                cli_during: stats(cli_during.commit_micros),
            },
        ))
    }
    .await;
    let (ten, writers) = match writers {
        Ok((ten, writers)) => (Ok(ten), Ok(writers)),
        Err(error) => (Err(error.clone()), Err(error)),
    };
    Ok(Results {
        one,
        scan,
        ten,
        writers,
        load_one,
        load_writers,
    })
}

pub async fn run(config: &Config, report: &mut Report) {
    let rows = config.replay_rows();
    let results = replay_run(config, rows).await;
    let (results, load_one, load_writers) = match results {
        Ok(r) => {
            let (one, writers) = (r.load_one.clone(), r.load_writers.clone());
            (Ok(r), one, writers)
        }
        Err(error) => (Err(error), "?".into(), "?".into()),
    };
    let one = results
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| match &r.one {
            Ok(o) => Ok((
                o.events_per_s,
                o.secs,
                o.cpu_micros_per_event.unwrap_or(f64::NAN),
            )),
            Err(e) => Err(e.clone()),
        });
    let cpu = one.clone().map(|(_, _, cpu)| cpu);

    let scan = results
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| match &r.scan {
            Ok(o) => Ok((o.events_per_s, o.secs, f64::NAN)),
            Err(e) => Err(e.clone()),
        });
    let ten = results
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| match &r.ten {
            Ok(t) => Ok((t.events_per_s, t.secs)),
            Err(e) => Err(e.clone()),
        });
    let writers = results
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|r| match &r.writers {
            Ok(w) => Ok([w.sqlx_idle, w.sqlx_during, w.cli_idle, w.cli_during]),
            Err(e) => Err(e.clone()),
        });

    let setup = format!(
        "{rows} rows of {PAYLOAD} B payload, replay from seq 0 to changefeed.ready; the sqlite3 \
         CLI prints the same columns of the same rows to a pipe; median of {ROUNDS} alternating \
         rounds; load avg {load_one}"
    );
    let table = Compare {
        scenario: "3 replay",
        setup: &setup,
        peer: "sqlite3 CLI scan+print",
    };
    table.row(
        report,
        "1 client: events/s",
        &one,
        Some(&scan),
        |r| r.0,
        Better::Higher,
    );
    table.row(
        report,
        "1 client: seconds to ready",
        &one,
        Some(&scan),
        |r| r.1,
        Better::Lower,
    );
    // CPU time is what a loaded host's wall clock hides: compare runs by it.
    let table_cpu = Compare {
        peer: "—", ..table
    };
    table_cpu.row(
        report,
        "1 client: server CPU per event (µs)",
        &cpu,
        None,
        |v| *v,
        Better::Lower,
    );
    let setup10 = format!(
        "{rows} rows each, 10 clients at once while a writer commits {WRITE_RATE}/s; load avg \
         {load_writers}"
    );
    let table = Compare {
        setup: &setup10,
        peer: "—",
        ..table
    };
    table.row(
        report,
        "10 clients: events/s (all clients)",
        &ten,
        None,
        |r| r.0,
        Better::Higher,
    );
    table.row(
        report,
        "10 clients: seconds until all ready",
        &ten,
        None,
        |r| r.1,
        Better::Lower,
    );
    let setup_writers = format!(
        "one writer at a time, {WRITE_RATE} commits/s of one row: sqlx (this process, \
         synchronous=NORMAL) and the sqlite3 CLI (another process; commit timed across its \
         pipe), idle, then during 10 concurrent full replays (until the first is ready); the \
         peer column is the same writer idle; load avg {load_writers}"
    );
    let table = Compare {
        setup: &setup_writers,
        peer: "same writer, idle",
        ..table
    };
    for (writer, idle, during) in [("writer", 0, 1), ("sqlite3 CLI writer", 2, 3)] {
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            let idle_value = writers.as_ref().map(|w| w[idle][k]).map_err(Clone::clone);
            let during_value = writers.as_ref().map(|w| w[during][k]).map_err(Clone::clone);
            let metric = format!("{writer} commit {name}, idle (ms)");
            table.row(report, metric, &idle_value, None, |v| *v, Better::Lower);
            let metric = format!("{writer} commit {name}, during 10 replays (ms)");
            table.row(
                report,
                metric,
                &during_value,
                Some(&idle_value),
                |v| *v,
                Better::Lower,
            );
        }
    }
}
