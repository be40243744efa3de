//! One replica's sequencer and change-watch counters as `/metrics` series, read from
//! [`SequencerStats`] at every scrape (a `prometheus-client` collector in the server's own
//! registry, so several replicas in one process keep separate series).
//!
//! Series (names as scraped): `changefeed_sequencer_ticks_total`,
//! `changefeed_sequencer_batches_total`, `changefeed_sequencer_rows_assigned_total`,
//! `changefeed_sequencer_elections_lost_total`, `changefeed_sequencer_errors_total`,
//! `changefeed_notifies_sent_total`, `changefeed_notifies_received_total`,
//! `changefeed_poll_fallbacks_total`, `changefeed_listener_reconnects_total` (counters);
//! `changefeed_sequencer_batch_rows` (histogram); `changefeed_sequencer_lag_seconds`,
//! `changefeed_pending_rows`, `changefeed_horizon_age_seconds`, `changefeed_horizon_pid`,
//! `changefeed_announced_head` (gauges, sampled by the change watch's poll; 0 when there is
//! nothing to report).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::SequencerStats;

/// Renders one replica's [`SequencerStats`] at each scrape.
#[derive(Debug)]
pub struct StatsCollector(pub Arc<SequencerStats>);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value.load(Relaxed));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A sampled value where -1 means "none": 0 then.
fn sampled(value: &AtomicI64) -> i64 {
    value.load(Relaxed).max(0)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        // Counters are named without `_total`: the OpenMetrics encoder appends it.
        for (name, help, value) in [
            (
                "changefeed_sequencer_ticks",
                "Sequencer ticks this replica ran (idle, lost the election, or assigned)",
                &stats.ticks,
            ),
            (
                "changefeed_sequencer_batches",
                "Batches this replica's sequencer assigned (one transaction, one NOTIFY each)",
                &stats.batches,
            ),
            (
                "changefeed_sequencer_rows_assigned",
                "Rows this replica's sequencer gave a seq",
                &stats.rows_assigned,
            ),
            (
                "changefeed_sequencer_elections_lost",
                "Ticks with pending rows where another replica held the sequencer lock",
                &stats.elections_lost,
            ),
            (
                "changefeed_sequencer_errors",
                "Sequencer ticks that failed (retried with back-off)",
                &stats.errors,
            ),
            (
                "changefeed_notifies_sent",
                "NOTIFYs this replica's sequencer sent (one per batch)",
                &stats.notifies_sent,
            ),
            (
                "changefeed_notifies_received",
                "NOTIFYs this replica's change watch received (wake-ups by NOTIFY)",
                &stats.notifies_received,
            ),
            (
                "changefeed_poll_fallbacks",
                "Wake-ups by the safety-net poll: a new head that no NOTIFY announced",
                &stats.poll_fallbacks,
            ),
            (
                "changefeed_listener_reconnects",
                "Times the LISTEN connection was lost and re-established",
                &stats.listener_reconnects,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        let batch_rows = &stats.batch_rows;
        batch_rows.encode(encoder.encode_descriptor(
            "changefeed_sequencer_batch_rows",
            "Rows per batch this replica's sequencer assigned",
            None,
            batch_rows.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "changefeed_sequencer_lag_seconds",
            "Age of the oldest row still waiting for a seq (0: none waits), as last polled",
            sampled(&stats.lag_ms) as f64 / 1000.0,
        )?;
        gauge(
            &mut encoder,
            "changefeed_pending_rows",
            "Committed rows still waiting for a seq, as last polled (rows of open transactions are invisible until they commit; the horizon gauges name such a transaction)",
            sampled(&stats.pending_rows),
        )?;
        gauge(
            &mut encoder,
            "changefeed_horizon_age_seconds",
            "Age of the oldest open transaction holding a transaction id (0: none), as last polled",
            sampled(&stats.horizon_age_ms) as f64 / 1000.0,
        )?;
        gauge(
            &mut encoder,
            "changefeed_horizon_pid",
            "Backend pid of that transaction (see pg_stat_activity; 0: none)",
            sampled(&stats.horizon_pid),
        )?;
        gauge(
            &mut encoder,
            "changefeed_announced_head",
            "Highest head announced to this replica (by NOTIFY, poll or its own batch)",
            stats.announced_head.load(Relaxed),
        )?;
        Ok(())
    }
}
