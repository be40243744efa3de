//! Commit → client latency: paced writes (the bench's sqlx connection, the `sqlite3` CLI, Nchan's
//! publisher), each subscriber timing every delivery against the send time carried in the payload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::Subscribers;
use crate::procs;
use crate::report::{Better, Compare, LatencyBar, Report};
use crate::system::{join_writer, percentile, which, SelfCpu, System};
use crate::writers::{self, Sink};
use crate::{Config, PAYLOAD};

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

pub async fn run(config: &Config, report: &mut Report) {
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
        let setup = format!("{setup}; writer: {writer}");
        let table = Compare {
            scenario: "1 latency",
            setup: &setup,
            peer: "Nchan (POST /pub)",
        };
        let theirs = Some(&nchan);
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            let metric = format!("{name} latency, per delivery (ms)");
            table.row(
                report,
                metric,
                &ours,
                theirs,
                |r| r.delivery[k],
                Better::Lower,
            );
        }
        for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
            let metric = format!("{name} latency, last of all subscribers (ms)");
            table.row(report, metric, &ours, theirs, |r| r.all[k], Better::Lower);
        }
        let metric = "writes achieved/s (target 1,000)";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.writes_per_s,
            Better::Higher,
        );
        let metric = "deliveries missing after 5 s";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.missing as f64,
            Better::Lower,
        );
        let metric = "server CPU (% of one core)";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.server_cpu,
            Better::Lower,
        );
        let metric = "machine CPU busy (% of all cores, everything running)";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.machine_busy,
            Better::Lower,
        );
        if let Ok(r) = &ours {
            report.load_generator(
                &format!("commit→client latency, writer: {writer}"),
                r.gen_cpu,
            );
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
