//! Replay: one and ten clients replaying a large log from seq 0 to `changefeed.ready`, and a
//! writer's commit latency idle and during the ten replays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loadgen::Subscribers;
use crate::procs::Server;
use crate::report::{Better, Compare, Report};
use crate::system::{fresh_db, join_writer, percentile, System};
use crate::writers::{self, Sink};
use crate::{Config, PAYLOAD};

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

pub async fn run(config: &Config, report: &mut Report) {
    let rows = config.replay_rows();
    let result = replay_run(config, rows).await;
    let setup =
        format!("{rows} rows of {PAYLOAD} B payload, replay from seq 0 to changefeed.ready");
    let table = Compare {
        scenario: "3 replay",
        setup: &setup,
        peer: "—",
    };
    let metric = "1 client: events/s";
    table.row(
        report,
        metric,
        &result,
        None,
        |r| r.one_events_per_s,
        Better::Higher,
    );
    let metric = "1 client: seconds to ready";
    table.row(report, metric, &result, None, |r| r.one_secs, Better::Lower);
    let setup10 = format!("{setup}; 10 clients at once while a sqlx writer commits 500/s");
    let table = Compare {
        setup: &setup10,
        ..table
    };
    let metric = "10 clients: events/s (all clients)";
    table.row(
        report,
        metric,
        &result,
        None,
        |r| r.ten_events_per_s,
        Better::Higher,
    );
    let metric = "10 clients: seconds until all ready";
    table.row(report, metric, &result, None, |r| r.ten_secs, Better::Lower);
    for (k, name) in ["p50", "p99", "max"].iter().enumerate() {
        let metric = format!("writer commit {name}, idle (ms)");
        table.row(report, metric, &result, None, |r| r.idle[k], Better::Lower);
        let metric = format!("writer commit {name}, during 10 replays (ms)");
        table.row(
            report,
            metric,
            &result,
            None,
            |r| r.during[k],
            Better::Lower,
        );
    }
}
