//! The soak run (`scripts/soak.sh`): many live streams and a steady writer for a long time,
//! sampling the server's RSS, open file descriptors and runtime tasks at a fixed interval. It
//! fails when any of them grows beyond a stated bound between the end of the warm-up and the
//! end of the run, when they do not come back near the idle figures after every stream closed,
//! or when the subscribers did not receive every write exactly as many times as there are
//! streams. Not part of `all`: it is a check with its own duration, not a comparison.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::Subscribers;
use crate::procs;
use crate::report::{Compare, Report};
use crate::system::{join_writer, System};
use crate::writers;
use crate::{Config, PAYLOAD};

/// The soak's size and its bounds (flags of `changefeed-bench soak`).
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub duration: Duration,
    pub streams: usize,
    pub rate: u64,
    pub sample_every: Duration,
    pub max_rss_growth_mib: f64,
    pub max_fd_growth: u64,
    pub max_task_growth: u64,
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    tasks: u64,
    subscribers: u64,
    /// Change events received so far, over all streams.
    delivered: u64,
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

fn sample(system: &System, at: Duration, delivered: u64) -> Sample {
    let (pid, addr) = match system {
        System::Changefeed { server, .. } => (server.pid(), server.addr),
        System::Nchan { .. } => unreachable!("the soak runs changefeed only"),
    };
    let text = procs::http_get(addr, "/metrics").unwrap_or_default();
    let gauge = |name| procs::metric(&text, name).unwrap_or(f64::NAN) as u64;
    Sample {
        at,
        rss_kib: procs::rss_kib(pid).unwrap_or(0),
        fds: open_fds(pid),
        tasks: gauge("changefeed_runtime_alive_tasks"),
        subscribers: gauge("changefeed_subscribers"),
        delivered,
    }
}

fn print_sample(label: &str, s: &Sample) {
    eprintln!(
        "   soak {label:>8} {:>6.0}s  RSS {:>8.1} MiB  fds {:>5}  tasks {:>5}  streams {:>5}  delivered {:>11}",
        s.at.as_secs_f64(),
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.tasks,
        s.subscribers,
        s.delivered
    );
}

/// What the soak saw; `problems` empty means it passed.
struct SoakResult {
    idle: Sample,
    warm: Sample,
    end: Sample,
    closed: Sample,
    peak_rss_kib: u64,
    written: u64,
    expected: u64,
    delivered: u64,
    lag_fallbacks: f64,
    problems: Vec<String>,
}

async fn soak_run(config: &Config, options: &SoakOptions) -> Result<SoakResult, String> {
    let system = System::changefeed(config, "soak").await?;
    let started = Instant::now();
    let idle = sample(&system, started.elapsed(), 0);
    print_sample("idle", &idle);
    let subs = Subscribers::start(
        &system.target(None),
        options.streams,
        config.groups,
        false,
        0,
    );
    if let Err(error) = subs.wait_ready(Duration::from_secs(120)).await {
        subs.stop().await;
        return Err(error);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let count = options.rate * options.duration.as_secs().max(1);
    let writer = writers::paced(
        system.paced_sink(false),
        options.rate,
        count,
        PAYLOAD,
        stop.clone(),
    );
    let run_started = Instant::now();
    let counters0 = system.counters();
    // The warm-up is the first quarter of the run (at least one sample): caches, pools and the
    // allocator's arenas settle there; growth is measured from its end.
    let warm_until = options.duration / 4;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = options.sample_every;
    let mut warm: Option<Sample> = None;
    while run_started.elapsed() < options.duration {
        let due = next.min(options.duration);
        tokio::time::sleep_until(tokio::time::Instant::from_std(run_started + due)).await;
        next += options.sample_every;
        let delivered = subs.shared.events.load(Ordering::Relaxed);
        let s = sample(&system, run_started.elapsed(), delivered);
        print_sample("running", &s);
        if warm.is_none() && s.at >= warm_until {
            warm = Some(s);
        }
        samples.push(s);
        if subs.shared.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let report = tokio::task::spawn_blocking(move || join_writer(writer))
        .await
        .map_err(|e| e.to_string())??;
    let written = report.written;
    let expected = written * options.streams as u64;
    let drained = subs.wait_events(expected, Duration::from_secs(120)).await;
    let delivered = subs.shared.events.load(Ordering::Relaxed);
    let end = sample(&system, run_started.elapsed(), delivered);
    print_sample("end", &end);
    samples.push(end);
    let counters = system.counters();
    let failure = subs.shared.error();
    subs.stop().await;

    // Every stream closed: the subscriber gauge falls to zero (bounded wait), then the idle
    // figures are compared.
    let closing = Instant::now();
    let mut closed = sample(&system, started.elapsed(), delivered);
    while closed.subscribers > 0 && closing.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        closed = sample(&system, started.elapsed(), delivered);
    }
    print_sample("closed", &closed);

    let warm = warm.unwrap_or(samples[0]);
    let mut problems = Vec::new();
    if let Some(error) = failure {
        problems.push(format!("a subscription failed: {error}"));
    }
    if !drained || delivered != expected {
        problems.push(format!(
            "delivered {delivered} events, expected {expected} ({written} writes × {} streams)",
            options.streams
        ));
    }
    let rss_growth_mib = (end.rss_kib as f64 - warm.rss_kib as f64) / 1024.0;
    if rss_growth_mib > options.max_rss_growth_mib {
        problems.push(format!(
            "RSS grew {rss_growth_mib:.1} MiB after the warm-up (bound {} MiB)",
            options.max_rss_growth_mib
        ));
    }
    if end.fds > warm.fds + options.max_fd_growth {
        problems.push(format!(
            "open fds grew from {} to {} after the warm-up (bound +{})",
            warm.fds, end.fds, options.max_fd_growth
        ));
    }
    if end.tasks > warm.tasks + options.max_task_growth {
        problems.push(format!(
            "runtime tasks grew from {} to {} after the warm-up (bound +{})",
            warm.tasks, end.tasks, options.max_task_growth
        ));
    }
    if closed.subscribers != 0 {
        problems.push(format!(
            "{} streams still open 30 s after every client closed",
            closed.subscribers
        ));
    }
    if closed.fds > idle.fds + options.max_fd_growth {
        problems.push(format!(
            "{} fds open after every stream closed, {} before any opened (bound +{})",
            closed.fds, idle.fds, options.max_fd_growth
        ));
    }
    if closed.tasks > idle.tasks + options.max_task_growth {
        problems.push(format!(
            "{} runtime tasks alive after every stream closed, {} before any opened (bound +{})",
            closed.tasks, idle.tasks, options.max_task_growth
        ));
    }
    Ok(SoakResult {
        idle,
        warm,
        end,
        closed,
        peak_rss_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        written,
        expected,
        delivered,
        lag_fallbacks: counters.lag_fallbacks - counters0.lag_fallbacks,
        problems,
    })
}

/// Runs the soak; returns false when it failed (a bound was exceeded or it could not run).
pub async fn run(config: &Config, options: &SoakOptions, report: &mut Report) -> bool {
    let setup = format!(
        "{} streams, {} writes/s, {} s, {PAYLOAD} B payload, sampled every {} s; bounds after the warm-up (first quarter): RSS +{} MiB, fds +{}, tasks +{}",
        options.streams,
        options.rate,
        options.duration.as_secs(),
        options.sample_every.as_secs(),
        options.max_rss_growth_mib,
        options.max_fd_growth,
        options.max_task_growth
    );
    let result = soak_run(config, options).await;
    let table = Compare {
        scenario: "6 soak",
        setup: &setup,
        peer: "-",
    };
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    table.text_row(
        report,
        "RSS idle / after warm-up / end / peak / all closed (MiB)",
        &result,
        |r| {
            format!(
                "{} / {} / {} / {} / {}",
                mib(r.idle.rss_kib),
                mib(r.warm.rss_kib),
                mib(r.end.rss_kib),
                mib(r.peak_rss_kib),
                mib(r.closed.rss_kib)
            )
        },
    );
    table.text_row(
        report,
        "open fds idle / after warm-up / end / all closed",
        &result,
        |r| {
            format!(
                "{} / {} / {} / {}",
                r.idle.fds, r.warm.fds, r.end.fds, r.closed.fds
            )
        },
    );
    table.text_row(
        report,
        "runtime tasks idle / after warm-up / end / all closed",
        &result,
        |r| {
            format!(
                "{} / {} / {} / {}",
                r.idle.tasks, r.warm.tasks, r.end.tasks, r.closed.tasks
            )
        },
    );
    table.text_row(
        report,
        "events delivered / expected (writes × streams)",
        &result,
        |r| format!("{} / {} ({} writes)", r.delivered, r.expected, r.written),
    );
    table.text_row(report, "lag fallbacks (server /metrics)", &result, |r| {
        format!("{}", r.lag_fallbacks as u64)
    });
    table.text_row(report, "verdict", &result, |r| {
        if r.problems.is_empty() {
            "ok".to_string()
        } else {
            format!("FAILED: {}", r.problems.join("; "))
        }
    });
    match &result {
        Ok(r) if r.problems.is_empty() => true,
        Ok(r) => {
            for problem in &r.problems {
                eprintln!("soak: {problem}");
            }
            false
        }
        Err(error) => {
            eprintln!("soak: could not run: {error}");
            false
        }
    }
}
