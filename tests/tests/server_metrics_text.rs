//! Proves that `GET /metrics` is valid OpenMetrics text by a strict third-party parser (the format
//! Prometheus scrapes with the content type we send), that every series keeps its name and type,
//! and that the values follow real traffic (events published, frames sent, the latency
//! histogram's observations).

use std::collections::BTreeMap;

use changefeed_tests::{project_sql, session_sql, TestServer};
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricNumber, OpenMetricsType, OpenMetricsValue};

/// The families with a label (auth and limit outcomes); every other family is one unlabelled
/// sample.
const LABELLED: [&str; 3] = [
    "changefeed_auth_rejections",
    "changefeed_limit_rejections",
    "changefeed_auth_stream_ends",
];

/// Family name → (type, the single sample's value, or the first for a labelled family).
async fn scrape(server: &TestServer) -> BTreeMap<String, (OpenMetricsType, OpenMetricsValue)> {
    let response = server.get("/metrics").await;
    assert_eq!(response.status, 200);
    let content_type = response.headers["content-type"].to_str().unwrap();
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let exposition = parse_openmetrics(&response.body).unwrap_or_else(|error| {
        panic!("not valid OpenMetrics text ({error:?}):\n{}", response.body)
    });
    exposition
        .families
        .into_iter()
        .map(|(name, family)| {
            let samples: Vec<_> = family.iter_samples().map(|s| s.value.clone()).collect();
            if LABELLED.contains(&name.as_str()) {
                // One sample per label value, every value present from the start.
                assert!(
                    samples.len() >= 2,
                    "{name}: a sample per label value expected"
                );
            } else {
                assert_eq!(samples.len(), 1, "{name}: one unlabelled sample expected");
            }
            (name, (family.family_type, samples[0].clone()))
        })
        .collect()
}

fn number(value: &OpenMetricsValue) -> f64 {
    let n: &MetricNumber = match value {
        OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n,
        OpenMetricsValue::Counter(counter) => &counter.value,
        other => panic!("not a number: {other:?}"),
    };
    n.as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_openmetrics_with_every_series_named_and_typed() {
    let server = TestServer::start().await;
    let families = scrape(&server).await;
    // Family names as OpenMetrics writes them: a counter family `x` is scraped as `x_total`.
    let expected = [
        ("changefeed_subscribers", OpenMetricsType::Gauge),
        ("changefeed_log_head", OpenMetricsType::Gauge),
        ("changefeed_published_seq", OpenMetricsType::Gauge),
        ("changefeed_frames_sent", OpenMetricsType::Counter),
        ("changefeed_bytes_sent", OpenMetricsType::Counter),
        ("changefeed_replayed_rows", OpenMetricsType::Counter),
        ("changefeed_lag_fallbacks", OpenMetricsType::Counter),
        ("changefeed_resets", OpenMetricsType::Counter),
        ("changefeed_events_published", OpenMetricsType::Counter),
        ("changefeed_degraded_rows", OpenMetricsType::Counter),
        ("changefeed_store_errors", OpenMetricsType::Counter),
        ("changefeed_auth_rejections", OpenMetricsType::Counter),
        ("changefeed_limit_rejections", OpenMetricsType::Counter),
        ("changefeed_auth_stream_ends", OpenMetricsType::Counter),
        (
            "changefeed_tail_latency_seconds",
            OpenMetricsType::Histogram,
        ),
    ];
    let got: Vec<(&str, OpenMetricsType)> = families
        .iter()
        .map(|(name, (kind, _))| (name.as_str(), *kind))
        .collect();
    let mut want: Vec<(&str, OpenMetricsType)> = expected.to_vec();
    want.sort_by_key(|(name, _)| *name);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_values_follow_real_traffic() {
    let server = TestServer::start().await;
    server.write(&project_sql("p1")).await;
    let mut stream = server.stream("/api/v1/events?project=p1").await;
    stream
        .events_until(|e| e.event_type == "changefeed.ready")
        .await;
    for i in 0..3 {
        server.write(&session_sql("p1", &format!("s{i}"))).await;
    }
    let changes = stream.changes_through(3).await;
    assert_eq!(changes.len(), 3);
    server.settle().await;

    let families = scrape(&server).await;
    let value = |name: &str| number(&families[name].1);
    assert_eq!(value("changefeed_subscribers"), 1.0);
    assert_eq!(value("changefeed_events_published"), 3.0);
    assert_eq!(value("changefeed_published_seq"), 3.0);
    assert_eq!(value("changefeed_log_head"), 3.0);
    assert!(
        value("changefeed_frames_sent") >= 5.0,
        "first frame, ready, 3 changes"
    );
    assert!(value("changefeed_bytes_sent") > 0.0);
    let OpenMetricsValue::Histogram(latency) = &families["changefeed_tail_latency_seconds"].1
    else {
        panic!("the tail latency is a histogram");
    };
    // The trigger's created_at is this machine's clock: each published row is one observation.
    assert_eq!(latency.count, Some(3));
    let last = latency.buckets.last().expect("buckets");
    assert!(last.upper_bound.is_infinite() && last.count.as_f64() == 3.0);
    let bounds: Vec<f64> = latency.buckets.iter().map(|b| b.upper_bound).collect();
    assert_eq!(
        bounds[..bounds.len() - 1],
        changefeed::metrics::LATENCY_BUCKETS
    );
    drop(stream);
}
