//! Idle memory: RSS per connected, live, idle stream.

use std::time::Duration;

use crate::loadgen::Subscribers;
use crate::report::{Better, Compare, Report};
use crate::system::System;
use crate::Config;

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

pub async fn run(config: &Config, report: &mut Report) {
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
    let table = Compare {
        scenario: "4 idle memory",
        setup: &setup,
        peer: "Nchan",
    };
    let theirs = Some(&nchan);
    let metric = "server RSS before (MiB)";
    table.row(
        report,
        metric,
        &ours,
        theirs,
        |r| r.before_kib as f64 / 1024.0,
        Better::Lower,
    );
    let metric = "server RSS with streams (MiB)";
    table.row(
        report,
        metric,
        &ours,
        theirs,
        |r| r.after_kib as f64 / 1024.0,
        Better::Lower,
    );
    let metric = "RSS per stream (KiB)";
    table.row(
        report,
        metric,
        &ours,
        theirs,
        |r| r.per_conn_kib,
        Better::Lower,
    );
}
