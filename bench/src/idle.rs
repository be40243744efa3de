//! Idle memory: RSS per connected, live, idle stream, and RSS once they all closed again
//! (memory a server keeps after its clients left: allocator retention, caches); over HTTP/1.1
//! (one connection per stream) and over HTTP/2 (streams multiplexed as a browser's tabs are,
//! [`fanout::STREAMS_PER_CONNECTION`] per connection, so per-connection buffers are shared).

use std::time::Duration;

use crate::fanout::{self, Transport};
use crate::report::{Better, Compare, Report};
use crate::system::System;
use crate::Config;

struct IdleResult {
    before_kib: u64,
    after_kib: u64,
    closed_kib: u64,
    per_stream_kib: f64,
}

async fn idle_run(
    config: &Config,
    system: &System,
    n: usize,
    transport: Transport,
) -> Result<IdleResult, String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = system.rss_kib();
    let subs = fanout::subscribe(config, system, n, transport)?;
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
    // The server notices the closed connections at once (read EOF); give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed_kib = system.rss_kib();
    Ok(IdleResult {
        before_kib,
        after_kib,
        closed_kib,
        per_stream_kib: after_kib.saturating_sub(before_kib) as f64 / n as f64,
    })
}

pub async fn run(config: &Config, report: &mut Report) {
    let n = config.idle_streams();
    for transport in [Transport::Http1, Transport::Http2] {
        let (scenario, over, tag) = match transport {
            Transport::Http1 => ("4 idle memory", String::new(), ""),
            Transport::Http2 => (
                "4 idle memory, HTTP/2",
                format!(", as {}", fanout::http2_streams(n)),
                "h2",
            ),
        };
        let ours = match System::changefeed(config, &format!("idle{tag}")).await {
            Ok(system) => idle_run(config, &system, n, transport).await,
            Err(error) => Err(error),
        };
        let nchan = match System::nchan(config, &format!("idle{tag}")) {
            Ok(system) => idle_run(config, &system, n, transport).await,
            Err(error) => Err(error),
        };
        let setup = format!("{n} idle streams (connected, live, no events){over}");
        rows(report, scenario, &setup, &ours, &nchan);
    }
}

fn rows(
    report: &mut Report,
    scenario: &'static str,
    setup: &str,
    ours: &Result<IdleResult, String>,
    nchan: &Result<IdleResult, String>,
) {
    let table = Compare {
        scenario,
        setup,
        peer: "Nchan",
    };
    let theirs = Some(nchan);
    let metric = "server RSS before (MiB)";
    table.row(
        report,
        metric,
        ours,
        theirs,
        |r| r.before_kib as f64 / 1024.0,
        Better::Lower,
    );
    let metric = "server RSS with streams (MiB)";
    table.row(
        report,
        metric,
        ours,
        theirs,
        |r| r.after_kib as f64 / 1024.0,
        Better::Lower,
    );
    let metric = "server RSS after the streams closed (MiB)";
    table.row(
        report,
        metric,
        ours,
        theirs,
        |r| r.closed_kib as f64 / 1024.0,
        Better::Lower,
    );
    let metric = "RSS per stream (KiB)";
    table.row(
        report,
        metric,
        ours,
        theirs,
        |r| r.per_stream_kib,
        Better::Lower,
    );
}
