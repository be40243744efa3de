//! Fan-out throughput: one writer as fast as delivery keeps up, N subscribers, frames/s and CPU;
//! over HTTP/1.1 (one connection per subscriber) and over HTTP/2 (h2c with prior knowledge,
//! [`STREAMS_PER_CONNECTION`] streams on each connection, as a browser multiplexes its tabs).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::h2load;
use crate::loadgen::Subscribers;
use crate::procs;
use crate::report::{Better, Compare, Report};
use crate::system::{join_writer, SelfCpu, System};
use crate::writers::{self, Sink};
use crate::{Config, PAYLOAD};

/// HTTP/2 streams per connection in the HTTP/2 fan-out (the server allows 200).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// How the subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http1,
    Http2,
}

/// How `n` HTTP/2 subscribers connect, for a row's setup.
pub fn http2_streams(n: usize) -> String {
    format!(
        "HTTP/2 streams (h2c, {STREAMS_PER_CONNECTION} per connection, {} connections)",
        n.div_ceil(STREAMS_PER_CONNECTION)
    )
}

/// Starts `n` subscribers of `system` over `transport` (HTTP/2: [`STREAMS_PER_CONNECTION`] on
/// each h2c connection, Nchan on its HTTP/2 port).
pub fn subscribe(
    config: &Config,
    system: &System,
    n: usize,
    transport: Transport,
) -> Result<Subscribers, String> {
    Ok(match transport {
        Transport::Http1 => Subscribers::start(&system.target(None), n, config.groups, false, 0),
        Transport::Http2 => {
            let mut target = system.target(None);
            if let System::Nchan { .. } = system {
                target.addr = config
                    .nchan_h2
                    .ok_or("Nchan has no HTTP/2 port in this run")?;
            }
            h2load::start(&target, n, STREAMS_PER_CONNECTION, false, 0)
        }
    })
}

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
    transport: Transport,
) -> Result<FanoutResult, String> {
    let subs = subscribe(config, system, subs_n, transport)?;
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

pub async fn run(config: &Config, report: &mut Report) {
    let runs = config
        .fanout_subs()
        .into_iter()
        .map(|n| (n, Transport::Http1))
        .chain(
            config
                .fanout_subs()
                .into_iter()
                .map(|n| (n, Transport::Http2)),
        );
    for (subs_n, transport) in runs {
        let (scenario, over, tag) = match transport {
            Transport::Http1 => ("2 fan-out", String::new(), ""),
            Transport::Http2 => (
                "2 fan-out, HTTP/2",
                format!(" as {}", http2_streams(subs_n)),
                "h2-",
            ),
        };
        let setup = format!(
            "{subs_n} subscribers{over}, writer as fast as delivery keeps up (≤ 1,000 events ahead), {} s, {PAYLOAD} B payload",
            config.fanout_secs()
        );
        let ours = match System::changefeed(config, &format!("fanout-{tag}{subs_n}")).await {
            Ok(system) => fanout_run(config, &system, subs_n, transport).await,
            Err(error) => Err(error),
        };
        let nchan = match System::nchan(
            config,
            &format!("fanout{}{subs_n}", tag.trim_end_matches('-')),
        ) {
            Ok(system) => fanout_run(config, &system, subs_n, transport).await,
            Err(error) => Err(error),
        };
        let table = Compare {
            scenario,
            setup: &setup,
            peer: "Nchan (POST /pub)",
        };
        let theirs = Some(&nchan);
        let metric = "frames delivered/s (all subscribers)";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.frames_per_s,
            Better::Higher,
        );
        let metric = "events written/s";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            |r| r.events_per_s,
            Better::Higher,
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
        let per_1000_frames =
            |r: &FanoutResult| r.server_cpu / 100.0 * 1e6 / r.frames_per_s.max(1e-9) * 1000.0;
        let metric = "server CPU µs per 1,000 frames";
        table.row(
            report,
            metric,
            &ours,
            theirs,
            per_1000_frames,
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
        let metric = "lag fallbacks / rows re-read from the database (server /metrics)";
        table.text_row(report, metric, &ours, |r| {
            format!("{} / {}", r.lag_fallbacks as u64, r.replayed_rows as u64)
        });
        if let Ok(r) = &ours {
            report.load_generator(&format!("fan-out {tag}{subs_n}, changefeed"), r.gen_cpu);
        }
        if let Ok(r) = &nchan {
            report.load_generator(&format!("fan-out {tag}{subs_n}, Nchan"), r.gen_cpu);
        }
    }
}
