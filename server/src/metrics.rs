//! Server counters, exported at `GET /metrics` in the OpenMetrics text format
//! ([`CONTENT_TYPE`]; Prometheus scrapes it natively) by `prometheus-client`.
//!
//! One registry per [`Metrics`] (several servers run in one process in tests and the
//! simulation, so there is no global recorder). The tail latency is a histogram of the time
//! from a row's `created_at` (stamped by the trigger inside the writer's transaction, RFC 3339
//! with milliseconds) to the moment the tailer published it: commit → publish, with millisecond
//! resolution, for writers in this process and in others alike. Rows whose `created_at` cannot
//! be read, or lies more than an hour away from the wall clock (old rows, another clock
//! domain), are not counted.
//!
//! Series (names as scraped): `changefeed_subscribers`, `changefeed_log_head`,
//! `changefeed_published_seq` (gauges); `changefeed_frames_sent_total`,
//! `changefeed_bytes_sent_total`, `changefeed_replayed_rows_total`,
//! `changefeed_lag_fallbacks_total`, `changefeed_resets_total`,
//! `changefeed_events_published_total`, `changefeed_store_errors_total`,
//! `changefeed_degraded_rows_total` (counters);
//! `changefeed_tail_latency_seconds` (histogram); auth and limits:
//! `changefeed_auth_rejections_total{code="unauthorized"|"forbidden"}`,
//! `changefeed_limit_rejections_total{limit="per_token"|"global"}` (429s) and
//! `changefeed_auth_stream_ends_total{reason="revoked"|"expired"}`. A store may add series of
//! its own ([`crate::store::Store::metrics_collector`]: a Postgres replica's sequencer and change
//! watch, `server/src/store/postgres/metrics.rs`), collected at each scrape into the same
//! registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the tail-latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every counter the server keeps, and the registry that exports them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    subscribers: Gauge<i64, AtomicI64>,
    frames_sent: Counter<u64, AtomicU64>,
    bytes_sent: Counter<u64, AtomicU64>,
    replayed_rows: Counter<u64, AtomicU64>,
    lag_fallbacks: Counter<u64, AtomicU64>,
    resets: Counter<u64, AtomicU64>,
    published_seq: Gauge<u64, AtomicU64>,
    log_head: Gauge<u64, AtomicU64>,
    events_published: Counter<u64, AtomicU64>,
    store_errors: Counter<u64, AtomicU64>,
    degraded_rows: Counter<u64, AtomicU64>,
    /// Gives freed memory back to the OS after many streams closed (not exported).
    memory: std::sync::Arc<crate::memory::ReleaseAfterClose>,
    /// Tasks alive in the async runtime serving `/metrics`, sampled at each scrape (a leak of
    /// tasks shows here first; the soak run watches it).
    runtime_tasks: Gauge<i64, AtomicI64>,
    latency: Histogram,
    /// Observations in `latency`, for [`Metrics::snapshot`] (the histogram's own count is
    /// only readable through the exposition).
    latency_count: AtomicU64,
    auth: AuthMetrics,
}

/// Counters of requests refused by auth or a limit, and of streams ended by auth.
type LabelledCounter = Family<Vec<(String, String)>, Counter<u64, AtomicU64>>;

#[derive(Debug, Default)]
struct AuthMetrics {
    rejections: LabelledCounter,
    limit_rejections: LabelledCounter,
    stream_ends: LabelledCounter,
}

fn label(name: &str, value: &str) -> Vec<(String, String)> {
    vec![(name.to_owned(), value.to_owned())]
}

impl AuthMetrics {
    fn register(&self, registry: &mut Registry) {
        // Every label value exists from the start, so a scrape shows zeros, not gaps.
        for code in ["unauthorized", "forbidden"] {
            drop(self.rejections.get_or_create(&label("code", code)));
        }
        for limit in ["per_token", "global"] {
            drop(self.limit_rejections.get_or_create(&label("limit", limit)));
        }
        for reason in ["revoked", "expired"] {
            drop(self.stream_ends.get_or_create(&label("reason", reason)));
        }
        registry.register(
            "changefeed_auth_rejections",
            "Requests refused for want of a valid token (unauthorized) or outside its grant (forbidden)",
            self.rejections.clone(),
        );
        registry.register(
            "changefeed_limit_rejections",
            "Event streams refused with 429 because a concurrent-stream limit was reached",
            self.limit_rejections.clone(),
        );
        registry.register(
            "changefeed_auth_stream_ends",
            "Event streams ended with a final checkpoint because their token was revoked or expired",
            self.stream_ends.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_collector(None)
    }
}

impl Metrics {
    /// The server's metrics plus, when given, a store's own series (collected at each scrape:
    /// [`crate::store::Store::metrics_collector`]).
    pub fn with_collector(
        collector: Option<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            subscribers: Gauge::default(),
            frames_sent: Counter::default(),
            bytes_sent: Counter::default(),
            replayed_rows: Counter::default(),
            lag_fallbacks: Counter::default(),
            resets: Counter::default(),
            published_seq: Gauge::default(),
            log_head: Gauge::default(),
            events_published: Counter::default(),
            store_errors: Counter::default(),
            degraded_rows: Counter::default(),
            memory: Default::default(),
            runtime_tasks: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            latency_count: AtomicU64::new(0),
            auth: AuthMetrics::default(),
        };
        let mut registry = Registry::default();
        // Counters are registered without `_total`: the OpenMetrics encoder appends it.
        registry.register(
            "changefeed_subscribers",
            "Event streams currently open",
            metrics.subscribers.clone(),
        );
        registry.register(
            "changefeed_runtime_alive_tasks",
            "Tasks alive in the server's async runtime, sampled at each scrape",
            metrics.runtime_tasks.clone(),
        );
        registry.register(
            "changefeed_frames_sent",
            "SSE frames handed to client connections",
            metrics.frames_sent.clone(),
        );
        registry.register(
            "changefeed_bytes_sent",
            "Bytes of SSE frames handed to client connections",
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "changefeed_replayed_rows",
            "Rows read from the store by replay pages",
            metrics.replayed_rows.clone(),
        );
        registry.register(
            "changefeed_lag_fallbacks",
            "Times a subscriber fell behind the live feed and replayed the gap from the store",
            metrics.lag_fallbacks.clone(),
        );
        registry.register(
            "changefeed_resets",
            "changefeed.reset frames sent",
            metrics.resets.clone(),
        );
        registry.register(
            "changefeed_log_head",
            "Highest seq ever allocated in the change log",
            metrics.log_head.clone(),
        );
        registry.register(
            "changefeed_published_seq",
            "Highest seq published to the live feed",
            metrics.published_seq.clone(),
        );
        registry.register(
            "changefeed_events_published",
            "Events read by the tailer and published to the live feed",
            metrics.events_published.clone(),
        );
        registry.register(
            "changefeed_store_errors",
            "Failed store calls",
            metrics.store_errors.clone(),
        );
        registry.register(
            "changefeed_degraded_rows",
            "Rows the tailer published in a degraded form (PROTOCOL.md, Degraded rows) or with no project",
            metrics.degraded_rows.clone(),
        );
        registry.register(
            "changefeed_tail_latency_seconds",
            "Time from a row's created_at (commit) to its publication to the live feed",
            metrics.latency.clone(),
        );
        metrics.auth.register(&mut registry);
        if let Some(collector) = collector {
            registry.register_collector(collector);
        }
        Metrics {
            registry,
            ..metrics
        }
    }
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
    /// Rows the tailer published degraded.
    pub degraded_rows: u64,
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
        self.metrics.subscribers.dec();
        self.metrics.memory.stream_closed();
    }
}

impl Metrics {
    /// Counts a new live stream until the guard is dropped.
    pub fn subscriber(self: &std::sync::Arc<Self>) -> SubscriberGuard {
        self.subscribers.inc();
        SubscriberGuard {
            metrics: self.clone(),
        }
    }

    /// Frames (and their bytes) written to a client.
    pub fn frames_sent(&self, frames: u64, bytes: u64) {
        self.frames_sent.inc_by(frames);
        self.bytes_sent.inc_by(bytes);
    }

    /// Adds one subscription's counter increments.
    pub fn subscription_progress(&self, replayed_rows: u64, lag_fallbacks: u64, resets: u64) {
        self.replayed_rows.inc_by(replayed_rows);
        self.lag_fallbacks.inc_by(lag_fallbacks);
        self.resets.inc_by(resets);
    }

    /// The tailer published events up to `seq`.
    pub fn published(&self, seq: u64, events: u64) {
        self.published_seq.set(seq);
        self.log_head.inner().fetch_max(seq, Relaxed);
        self.events_published.inc_by(events);
    }

    /// The store's head as just read.
    pub fn log_head(&self, head: u64) {
        self.log_head.set(head);
    }

    /// A store call failed.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// The tailer published a row in a degraded form.
    pub fn degraded_row(&self) {
        self.degraded_rows.inc();
    }

    /// One commit → publish latency.
    pub fn observe_tail_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// A request refused by auth: `code` is `unauthorized` or `forbidden`.
    pub fn auth_rejected(&self, code: &str) {
        self.auth
            .rejections
            .get_or_create(&label("code", code))
            .inc();
    }

    /// A stream refused by a limit: `limit` is `per_token` or `global`.
    pub fn limit_rejected(&self, limit: &str) {
        self.auth
            .limit_rejections
            .get_or_create(&label("limit", limit))
            .inc();
    }

    /// A stream ended by auth: `reason` is `revoked` or `expired`.
    pub fn auth_stream_ended(&self, reason: &str) {
        self.auth
            .stream_ends
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// Streams refused by the limit `limit` so far.
    pub fn limit_rejections(&self, limit: &str) -> u64 {
        self.auth
            .limit_rejections
            .get_or_create(&label("limit", limit))
            .get()
    }

    /// Requests refused with `code` (`unauthorized`, `forbidden`) so far.
    pub fn auth_rejections(&self, code: &str) -> u64 {
        self.auth
            .rejections
            .get_or_create(&label("code", code))
            .get()
    }

    /// Streams ended by auth for `reason` (`revoked`, `expired`) so far.
    pub fn auth_stream_ends(&self, reason: &str) -> u64 {
        self.auth
            .stream_ends
            .get_or_create(&label("reason", reason))
            .get()
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            subscribers: self.subscribers.get(),
            frames_sent: self.frames_sent.get(),
            bytes_sent: self.bytes_sent.get(),
            replayed_rows: self.replayed_rows.get(),
            lag_fallbacks: self.lag_fallbacks.get(),
            resets: self.resets.get(),
            published_seq: self.published_seq.get(),
            log_head: self.log_head.get(),
            events_published: self.events_published.get(),
            store_errors: self.store_errors.get(),
            degraded_rows: self.degraded_rows.get(),
            latency_count: self.latency_count.load(Relaxed),
        }
    }

    /// The OpenMetrics text exposition (served as [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
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
    fn renders_openmetrics_text_with_a_cumulative_histogram() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let guard = metrics.subscriber();
        metrics.frames_sent(3, 120);
        metrics.observe_tail_latency(Duration::from_micros(700));
        metrics.observe_tail_latency(Duration::from_secs(60));
        let text = metrics.render();
        assert!(text.contains("\nchangefeed_subscribers 1\n"), "{text}");
        assert!(
            text.contains("\nchangefeed_frames_sent_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE changefeed_frames_sent counter\n"),
            "{text}"
        );
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"10.0\"} 1\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("changefeed_tail_latency_seconds_count 2\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(metrics.snapshot().latency_count, 2);
        drop(guard);
        assert_eq!(metrics.snapshot().subscribers, 0);
    }

    #[test]
    fn each_instance_has_its_own_registry() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.store_error();
        assert_eq!(a.snapshot().store_errors, 1);
        assert_eq!(b.snapshot().store_errors, 0);
        assert!(b.render().contains("\nchangefeed_store_errors_total 0\n"));
    }
}
