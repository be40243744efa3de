//! Server counters, exported at `GET /metrics` in the Prometheus text format.
//!
//! Plain atomics (relaxed: each value is independent and only ever read for reporting), no
//! metrics crate. The tail latency is a fixed-bucket histogram of the time from a row's
//! `created_at` (stamped by the trigger inside the writer's transaction, RFC 3339 with
//! milliseconds) to the moment the tailer published it: commit → publish, with millisecond
//! resolution, for writers in this process and in others alike. Rows whose `created_at` cannot
//! be read, or lies more than an hour away from the wall clock (old rows, another clock
//! domain), are not counted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the tail-latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every counter the server keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    subscribers: AtomicI64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    replayed_rows: AtomicU64,
    lag_fallbacks: AtomicU64,
    resets: AtomicU64,
    published_seq: AtomicU64,
    log_head: AtomicU64,
    events_published: AtomicU64,
    store_errors: AtomicU64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Non-cumulative counts: `buckets[i]` counts observations in `(bound[i-1], bound[i]]`, the
    /// last one those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A copy of the counters at one moment (for tests and `/healthz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// Live event-stream bodies.
    pub subscribers: i64,
    /// Frames written to clients.
    pub frames_sent: u64,
    /// Bytes of frames written to clients.
    pub bytes_sent: u64,
    /// Rows read by replay pages.
    pub replayed_rows: u64,
    /// Times a subscriber lagged the live feed and fell back to replay.
    pub lag_fallbacks: u64,
    /// Reset frames sent.
    pub resets: u64,
    /// The last seq the tailer published.
    pub published_seq: u64,
    /// The store's head as last seen.
    pub log_head: u64,
    /// Events the tailer published.
    pub events_published: u64,
    /// Store errors (tailer, streams, janitor).
    pub store_errors: u64,
    /// Tail-latency observations.
    pub latency_count: u64,
}

/// Guard counting one live event stream; decrements the gauge when dropped.
#[derive(Debug)]
pub struct SubscriberGuard {
    metrics: std::sync::Arc<Metrics>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.metrics.subscribers.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// Counts a new live stream until the guard is dropped.
    pub fn subscriber(self: &std::sync::Arc<Self>) -> SubscriberGuard {
        self.subscribers.fetch_add(1, Relaxed);
        SubscriberGuard {
            metrics: self.clone(),
        }
    }

    /// Frames (and their bytes) written to a client.
    pub fn frames_sent(&self, frames: u64, bytes: u64) {
        self.frames_sent.fetch_add(frames, Relaxed);
        self.bytes_sent.fetch_add(bytes, Relaxed);
    }

    /// Adds one subscription's counter increments.
    pub fn subscription_progress(&self, replayed_rows: u64, lag_fallbacks: u64, resets: u64) {
        self.replayed_rows.fetch_add(replayed_rows, Relaxed);
        self.lag_fallbacks.fetch_add(lag_fallbacks, Relaxed);
        self.resets.fetch_add(resets, Relaxed);
    }

    /// The tailer published events up to `seq`.
    pub fn published(&self, seq: u64, events: u64) {
        self.published_seq.store(seq, Relaxed);
        self.log_head.fetch_max(seq, Relaxed);
        self.events_published.fetch_add(events, Relaxed);
    }

    /// The store's head as just read.
    pub fn log_head(&self, head: u64) {
        self.log_head.store(head, Relaxed);
    }

    /// A store call failed.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    /// One commit → publish latency.
    pub fn observe_tail_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency.buckets[bucket].fetch_add(1, Relaxed);
        self.latency.sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
        self.latency.count.fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            subscribers: self.subscribers.load(Relaxed),
            frames_sent: self.frames_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            replayed_rows: self.replayed_rows.load(Relaxed),
            lag_fallbacks: self.lag_fallbacks.load(Relaxed),
            resets: self.resets.load(Relaxed),
            published_seq: self.published_seq.load(Relaxed),
            log_head: self.log_head.load(Relaxed),
            events_published: self.events_published.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
            latency_count: self.latency.count.load(Relaxed),
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let s = self.snapshot();
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        metric(
            "changefeed_subscribers",
            "gauge",
            "Event streams currently open.",
            s.subscribers.to_string(),
        );
        metric(
            "changefeed_frames_sent_total",
            "counter",
            "SSE frames handed to client connections.",
            s.frames_sent.to_string(),
        );
        metric(
            "changefeed_bytes_sent_total",
            "counter",
            "Bytes of SSE frames handed to client connections.",
            s.bytes_sent.to_string(),
        );
        metric(
            "changefeed_replayed_rows_total",
            "counter",
            "Rows read from the store by replay pages.",
            s.replayed_rows.to_string(),
        );
        metric(
            "changefeed_lag_fallbacks_total",
            "counter",
            "Times a subscriber fell behind the live feed and replayed the gap from the store.",
            s.lag_fallbacks.to_string(),
        );
        metric(
            "changefeed_resets_total",
            "counter",
            "changefeed.reset frames sent.",
            s.resets.to_string(),
        );
        metric(
            "changefeed_log_head",
            "gauge",
            "Highest seq ever allocated in the change log.",
            s.log_head.to_string(),
        );
        metric(
            "changefeed_published_seq",
            "gauge",
            "Highest seq published to the live feed.",
            s.published_seq.to_string(),
        );
        metric(
            "changefeed_events_published_total",
            "counter",
            "Events read by the tailer and published to the live feed.",
            s.events_published.to_string(),
        );
        metric(
            "changefeed_store_errors_total",
            "counter",
            "Failed store calls.",
            s.store_errors.to_string(),
        );
        let name = "changefeed_tail_latency_seconds";
        let _ = write!(
            out,
            "# HELP {name} Time from a row's created_at (commit) to its publication to the live feed.\n# TYPE {name} histogram\n"
        );
        let mut cumulative = 0u64;
        for (index, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency.buckets[index].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.latency.buckets[LATENCY_BUCKETS.len()].load(Relaxed);
        let sum = self.latency.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}\n"
        );
        out
    }
}

/// Unix milliseconds of a `created_at` in any format a writer may store (the core's timestamp
/// codec), or `None` when it is none or lies before 1970.
pub fn parse_timestamp_millis(text: &str) -> Option<u64> {
    changefeed_core::timestamp::parse_unix_millis(text).and_then(|ms| u64::try_from(ms).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trigger_and_sqlite_timestamps() {
        assert_eq!(parse_timestamp_millis("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_timestamp_millis("2026-01-01T00:00:00.250Z"),
            Some(1_767_225_600_250)
        );
        assert_eq!(
            parse_timestamp_millis("2026-01-01 00:00:01"),
            Some(1_767_225_601_000)
        );
        assert_eq!(
            parse_timestamp_millis("2024-02-29T12:34:56.7Z"),
            Some(1_709_210_096_700)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_timestamp_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn renders_prometheus_text_with_a_cumulative_histogram() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let guard = metrics.subscriber();
        metrics.observe_tail_latency(Duration::from_micros(700));
        metrics.observe_tail_latency(Duration::from_secs(60));
        let text = metrics.render();
        assert!(text.contains("\nchangefeed_subscribers 1\n"), "{text}");
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_count 2\n"));
        drop(guard);
        assert_eq!(metrics.snapshot().subscribers, 0);
    }
}
