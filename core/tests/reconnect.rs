//! Proves the client `Reconnect` state machine's rules: status and MIME verdicts, terminal
//! give-up, resume ids, `retry:` and `Retry-After`, exponential backoff with cap, and seeded
//! jitter, plus a proptest over random input sequences.

use std::time::Duration;

use changefeed_core::reconnect::{
    Action, GiveUpReason, Reconnect, ReconnectConfig, Verdict, MAX_RETRY_AFTER,
};
use proptest::prelude::*;

const ES: Option<&str> = Some("text/event-stream");

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn config(seed: u64) -> ReconnectConfig {
    ReconnectConfig {
        jitter_seed: seed,
        ..ReconnectConfig::default()
    }
}

/// Polls at `now` expecting a connect, and returns the id it carries.
#[track_caller]
fn connect(rc: &mut Reconnect, now: Duration) -> Option<String> {
    match rc.poll(now) {
        Action::Connect { last_event_id } => last_event_id,
        other => panic!("expected Connect at {now:?}, got {other:?}"),
    }
}

/// Polls at `now` expecting a back-off, and returns the delay from `now`.
#[track_caller]
fn wait(rc: &mut Reconnect, now: Duration) -> Duration {
    match rc.poll(now) {
        Action::WaitUntil(deadline) => deadline - now,
        other => panic!("expected WaitUntil at {now:?}, got {other:?}"),
    }
}

/// Connects at `now` and streams a `200 text/event-stream` response.
#[track_caller]
fn stream(rc: &mut Reconnect, now: Duration) {
    connect(rc, now);
    assert_eq!(rc.on_response(now, 200, ES, None), Verdict::Stream);
    assert_eq!(rc.poll(now), Action::Streaming);
}

/// The delays of `n` consecutive connect errors, each reconnect made right at its deadline.
fn failure_schedule(seed: u64, n: usize) -> Vec<Duration> {
    let mut rc = Reconnect::new(config(seed));
    let mut now = s(0);
    let mut delays = Vec::new();
    for _ in 0..n {
        connect(&mut rc, now);
        rc.on_connect_error(now);
        let delay = wait(&mut rc, now);
        delays.push(delay);
        now += delay;
    }
    delays
}

#[test]
fn connects_at_once_with_the_configured_id() {
    let mut rc = Reconnect::new(ReconnectConfig {
        last_event_id: Some("abc:7".into()),
        ..ReconnectConfig::default()
    });
    assert_eq!(rc.last_event_id(), Some("abc:7"));
    assert_eq!(connect(&mut rc, s(0)), Some("abc:7".into()));
}

#[test]
fn connect_is_returned_once_per_attempt_and_poll_is_idempotent() {
    let mut rc = Reconnect::new(config(1));
    assert!(matches!(rc.poll(s(5)), Action::Connect { .. }));
    assert_eq!(rc.poll(s(5)), Action::Connecting);
    assert_eq!(rc.poll(s(6)), Action::Connecting);
    rc.on_connect_error(s(6));
    let first = rc.poll(s(6));
    assert!(matches!(first, Action::WaitUntil(_)));
    assert_eq!(rc.poll(s(6)), first);
    assert_eq!(rc.poll(s(6)), first);
    let Action::WaitUntil(deadline) = first else {
        unreachable!()
    };
    assert_eq!(rc.poll(deadline - Duration::from_nanos(1)), first);
    assert!(matches!(rc.poll(deadline), Action::Connect { .. }));
    rc.on_response(deadline, 200, ES, None);
    assert_eq!(rc.poll(deadline), Action::Streaming);
    assert_eq!(rc.poll(deadline + s(100)), Action::Streaming);
}

#[test]
fn event_stream_content_types_are_accepted() {
    for ct in [
        "text/event-stream",
        "text/event-stream; charset=utf-8",
        "TEXT/Event-Stream",
        "  text/event-stream  ;charset=UTF-8",
    ] {
        let mut rc = Reconnect::new(config(0));
        connect(&mut rc, s(0));
        assert_eq!(
            rc.on_response(s(0), 200, Some(ct), None),
            Verdict::Stream,
            "{ct}"
        );
        assert_eq!(rc.poll(s(0)), Action::Streaming);
    }
}

/// Asserts that the machine has given up for `reason` and stays given up whatever comes next.
#[track_caller]
fn assert_given_up_for_good(rc: &mut Reconnect, reason: GiveUpReason) {
    let give_up = Action::GiveUp(reason.clone());
    for t in [0, 1, 60, 3600, 86_400] {
        assert_eq!(rc.poll(s(t)), give_up);
    }
    rc.on_disconnect(s(1));
    rc.on_connect_error(s(2));
    rc.on_progress(s(3));
    rc.on_retry(0);
    rc.on_last_event_id("later");
    assert_eq!(
        rc.on_response(s(4), 200, ES, None),
        Verdict::GiveUp(reason.clone())
    );
    assert_eq!(
        rc.on_response(s(4), 503, None, Some("1")),
        Verdict::GiveUp(reason.clone())
    );
    rc.close();
    assert_eq!(rc.poll(s(1_000_000)), give_up);
    assert_eq!(rc.poll(s(1_000_000)), give_up);
}

#[test]
fn wrong_or_missing_content_type_gives_up() {
    for (ct, reported) in [
        (Some("text/plain"), "text/plain"),
        (Some("application/json"), "application/json"),
        (Some("text/event-streamx"), "text/event-streamx"),
        (None, ""),
    ] {
        let mut rc = Reconnect::new(config(0));
        connect(&mut rc, s(0));
        let reason = GiveUpReason::ContentType(reported.into());
        assert_eq!(
            rc.on_response(s(0), 200, ct, None),
            Verdict::GiveUp(reason.clone())
        );
        assert_given_up_for_good(&mut rc, reason);
    }
}

#[test]
fn no_content_gives_up() {
    let mut rc = Reconnect::new(config(0));
    stream(&mut rc, s(0));
    rc.on_progress(s(1));
    rc.on_disconnect(s(2));
    let delay = wait(&mut rc, s(2));
    connect(&mut rc, s(2) + delay);
    assert_eq!(
        rc.on_response(s(2) + delay, 204, None, None),
        Verdict::GiveUp(GiveUpReason::NoContent)
    );
    assert_given_up_for_good(&mut rc, GiveUpReason::NoContent);
}

#[test]
fn non_retryable_statuses_give_up() {
    for status in [
        100, 101, 201, 206, 301, 302, 304, 307, 400, 401, 403, 404, 410, 418, 600,
    ] {
        let mut rc = Reconnect::new(config(0));
        connect(&mut rc, s(0));
        assert_eq!(
            rc.on_response(s(0), status, ES, Some("1")),
            Verdict::GiveUp(GiveUpReason::Status(status)),
            "{status}"
        );
        assert_given_up_for_good(&mut rc, GiveUpReason::Status(status));
    }
}

#[test]
fn server_errors_and_429_are_retried() {
    for status in [429, 500, 502, 503, 504, 599] {
        let mut rc = Reconnect::new(config(0));
        connect(&mut rc, s(0));
        assert_eq!(rc.on_response(s(0), status, None, None), Verdict::Retry);
        assert_eq!(rc.attempts(), 1);
        let delay = wait(&mut rc, s(0));
        assert!(delay >= s(1) && delay <= s(2), "{status}: {delay:?}");
        connect(&mut rc, delay);
    }
}

#[test]
fn close_gives_up_from_any_state() {
    // Waiting to connect.
    let mut rc = Reconnect::new(config(0));
    rc.close();
    assert_given_up_for_good(&mut rc, GiveUpReason::Closed);
    // Connecting.
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(0));
    rc.close();
    assert_given_up_for_good(&mut rc, GiveUpReason::Closed);
    // Streaming.
    let mut rc = Reconnect::new(config(0));
    stream(&mut rc, s(0));
    rc.close();
    assert_given_up_for_good(&mut rc, GiveUpReason::Closed);
    // Backing off.
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(0));
    rc.on_connect_error(s(0));
    rc.close();
    assert_given_up_for_good(&mut rc, GiveUpReason::Closed);
}

#[test]
fn close_keeps_an_earlier_reason() {
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(0));
    rc.on_response(s(0), 404, None, None);
    rc.close();
    assert_eq!(rc.poll(s(0)), Action::GiveUp(GiveUpReason::Status(404)));
}

#[test]
fn id_only_frame_sets_the_resume_id() {
    let mut rc = Reconnect::new(config(0));
    assert_eq!(connect(&mut rc, s(0)), None);
    rc.on_response(s(0), 200, ES, None);
    // `id: 1` + data, then a frame with only `id: 2` (no data, so no event is dispatched).
    rc.on_last_event_id("1");
    rc.on_progress(s(1));
    rc.on_last_event_id("2");
    rc.on_progress(s(2));
    rc.on_disconnect(s(3));
    assert_eq!(rc.last_event_id(), Some("2"));
    let delay = wait(&mut rc, s(3));
    assert_eq!(connect(&mut rc, s(3) + delay), Some("2".into()));
}

#[test]
fn empty_id_clears_the_header() {
    let mut rc = Reconnect::new(ReconnectConfig {
        last_event_id: Some("5".into()),
        ..config(0)
    });
    stream(&mut rc, s(0));
    rc.on_last_event_id("6");
    rc.on_progress(s(1));
    rc.on_last_event_id("");
    rc.on_progress(s(2));
    assert_eq!(rc.last_event_id(), None);
    rc.on_disconnect(s(3));
    let delay = wait(&mut rc, s(3));
    assert_eq!(connect(&mut rc, s(3) + delay), None);
}

#[test]
fn id_survives_failed_attempts() {
    let mut rc = Reconnect::new(config(9));
    stream(&mut rc, s(0));
    rc.on_last_event_id("77");
    rc.on_progress(s(0));
    rc.on_disconnect(s(1));
    let mut now = s(1);
    for status in [503, 502] {
        now += wait(&mut rc, now);
        assert_eq!(connect(&mut rc, now), Some("77".into()));
        rc.on_response(now, status, None, None);
    }
    now += wait(&mut rc, now);
    assert_eq!(connect(&mut rc, now), Some("77".into()));
    rc.on_connect_error(now);
    now += wait(&mut rc, now);
    assert_eq!(connect(&mut rc, now), Some("77".into()));
}

#[test]
fn reconnect_after_progress_waits_the_base_delay() {
    for seed in 0..50 {
        let mut rc = Reconnect::new(config(seed));
        stream(&mut rc, s(0));
        rc.on_progress(s(1));
        rc.on_disconnect(s(10));
        assert_eq!(rc.attempts(), 0);
        let delay = wait(&mut rc, s(10));
        // Base 1 s, no growth, jittered into [0.5 s, 1 s].
        assert!(delay >= ms(500) && delay <= s(1), "{delay:?}");
    }
}

#[test]
fn retry_field_changes_the_wait() {
    for seed in 0..50 {
        let mut rc = Reconnect::new(config(seed));
        stream(&mut rc, s(0));
        rc.on_retry(10_000);
        assert_eq!(rc.retry_delay(), s(10));
        rc.on_progress(s(1));
        rc.on_disconnect(s(2));
        let delay = wait(&mut rc, s(2));
        assert!(delay >= s(5) && delay <= s(10), "{delay:?}");
        // It stays the base for failures too: 10 s × 2 after one failure.
        connect(&mut rc, s(2) + delay);
        rc.on_connect_error(s(2) + delay);
        let next = wait(&mut rc, s(2) + delay);
        assert!(next >= s(10) && next <= s(20), "{next:?}");
    }
}

#[test]
fn retry_zero_reconnects_at_once_after_progress() {
    let mut rc = Reconnect::new(config(3));
    stream(&mut rc, s(0));
    rc.on_retry(0);
    rc.on_progress(s(1));
    rc.on_disconnect(s(2));
    assert!(matches!(rc.poll(s(2)), Action::Connect { .. }));
    // ...but repeated failures still back off instead of spinning.
    rc.on_connect_error(s(2));
    assert!(wait(&mut rc, s(2)) > Duration::ZERO);
}

#[test]
fn disconnect_without_progress_is_a_failure() {
    let mut rc = Reconnect::new(config(0));
    stream(&mut rc, s(0));
    rc.on_disconnect(s(1));
    assert_eq!(rc.attempts(), 1);
    let delay = wait(&mut rc, s(1));
    assert!(delay >= s(1) && delay <= s(2), "{delay:?}");
}

#[test]
fn backoff_grows_exponentially_to_the_cap() {
    for seed in 0..20 {
        let delays = failure_schedule(seed, 10);
        for (i, delay) in delays.iter().enumerate() {
            // Failure n (1-based) waits 1 s × 2^n capped at 30 s, jittered into [d/2, d].
            let nominal = s(1u64 << (i + 1)).min(s(30));
            assert!(
                *delay >= nominal / 2 && *delay <= nominal,
                "seed {seed}, failure {}: {delay:?} not in [{:?}, {nominal:?}]",
                i + 1,
                nominal / 2
            );
        }
    }
}

#[test]
fn attempts_count_and_progress_resets_them() {
    let mut rc = Reconnect::new(config(0));
    let mut now = s(0);
    for n in 1..=4 {
        connect(&mut rc, now);
        rc.on_connect_error(now);
        assert_eq!(rc.attempts(), n);
        now += wait(&mut rc, now);
    }
    stream(&mut rc, now);
    assert_eq!(rc.attempts(), 4, "a 200 alone is not yet progress");
    rc.on_progress(now);
    assert_eq!(rc.attempts(), 0);
    rc.on_disconnect(now);
    let delay = wait(&mut rc, now);
    assert!(delay <= s(1), "{delay:?}");
}

#[test]
fn custom_config_is_respected() {
    let mut rc = Reconnect::new(ReconnectConfig {
        initial_retry: ms(100),
        max_delay: ms(250),
        jitter_seed: 5,
        last_event_id: None,
    });
    assert_eq!(rc.retry_delay(), ms(100));
    let mut now = s(0);
    let mut delays = Vec::new();
    for _ in 0..5 {
        connect(&mut rc, now);
        rc.on_connect_error(now);
        let delay = wait(&mut rc, now);
        delays.push(delay);
        now += delay;
    }
    assert!(delays[0] >= ms(100) && delays[0] <= ms(200));
    for delay in &delays[1..] {
        assert!(*delay >= ms(125) && *delay <= ms(250), "{delay:?}");
    }
}

#[test]
fn jitter_is_deterministic_per_seed() {
    for seed in [0, 1, 42, u64::MAX] {
        assert_eq!(failure_schedule(seed, 12), failure_schedule(seed, 12));
    }
    let schedules: Vec<_> = (0..8).map(|seed| failure_schedule(seed, 6)).collect();
    for (i, a) in schedules.iter().enumerate() {
        for b in &schedules[i + 1..] {
            assert_ne!(a, b, "different seeds should give different schedules");
        }
    }
}

#[test]
fn jitter_spreads_over_the_interval() {
    // The first reconnect after progress over many seeds: within [0.5 s, 1 s] and spread out.
    let delays: Vec<Duration> = (0..200)
        .map(|seed| {
            let mut rc = Reconnect::new(config(seed));
            stream(&mut rc, s(0));
            rc.on_progress(s(0));
            rc.on_disconnect(s(0));
            wait(&mut rc, s(0))
        })
        .collect();
    assert!(delays.iter().all(|d| *d >= ms(500) && *d <= s(1)));
    assert!(delays.iter().any(|d| *d < ms(625)));
    assert!(delays.iter().any(|d| *d > ms(875)));
}

#[test]
fn retry_after_seconds_is_honoured() {
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(100));
    assert_eq!(
        rc.on_response(s(100), 503, None, Some("120")),
        Verdict::Retry
    );
    assert_eq!(rc.poll(s(100)), Action::WaitUntil(s(220)));
    assert_eq!(rc.poll(s(219)), Action::WaitUntil(s(220)));
    assert!(matches!(rc.poll(s(220)), Action::Connect { .. }));
    // 429 too, and with surrounding whitespace.
    assert_eq!(
        rc.on_response(s(220), 429, None, Some(" 45 ")),
        Verdict::Retry
    );
    assert_eq!(rc.poll(s(220)), Action::WaitUntil(s(265)));
}

#[test]
fn retry_after_shorter_than_backoff_uses_backoff() {
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(0));
    rc.on_response(s(0), 503, None, Some("0"));
    let delay = wait(&mut rc, s(0));
    assert!(delay >= s(1) && delay <= s(2), "{delay:?}");
}

#[test]
fn retry_after_is_clamped() {
    let mut rc = Reconnect::new(config(0));
    connect(&mut rc, s(0));
    rc.on_response(s(0), 503, None, Some("999999999999999999999999"));
    assert_eq!(wait(&mut rc, s(0)), MAX_RETRY_AFTER);
}

#[test]
fn retry_after_http_date_is_ignored() {
    for value in ["Wed, 21 Oct 2099 07:28:00 GMT", "soon", "-5", "1.5", ""] {
        let mut rc = Reconnect::new(config(0));
        connect(&mut rc, s(0));
        assert_eq!(rc.on_response(s(0), 503, None, Some(value)), Verdict::Retry);
        let delay = wait(&mut rc, s(0));
        assert!(delay >= s(1) && delay <= s(2), "{value:?}: {delay:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Random input sequences.

#[derive(Debug, Clone)]
enum Input {
    Advance(u64),
    Poll,
    Response {
        status: u16,
        content_type: Option<&'static str>,
        retry_after: Option<&'static str>,
    },
    LastEventId(String),
    Retry(u64),
    Progress,
    Disconnect,
    ConnectError,
    Close,
}

fn input() -> impl Strategy<Value = Input> {
    let status = prop_oneof![
        4 => Just(200u16),
        1 => Just(204u16),
        2 => Just(429u16),
        4 => 500u16..=599,
        1 => any::<u16>(),
        1 => prop::sample::select(vec![100u16, 301, 304, 404]),
    ];
    let content_type = prop::sample::select(vec![
        Some("text/event-stream"),
        Some("text/event-stream; charset=utf-8"),
        Some("TEXT/Event-Stream"),
        Some("text/plain"),
        None,
    ]);
    let retry_after = prop::sample::select(vec![
        None,
        Some("0"),
        Some("3"),
        Some("120"),
        Some("4000"),
        Some("99999999999999999999999"),
        Some("Wed, 21 Oct 2099 07:28:00 GMT"),
        Some("x"),
    ]);
    prop_oneof![
        4 => (0u64..70_000).prop_map(Input::Advance),
        6 => Just(Input::Poll),
        4 => (status, content_type, retry_after).prop_map(|(status, content_type, retry_after)| {
            Input::Response { status, content_type, retry_after }
        }),
        3 => "[a-z0-9:]{0,6}".prop_map(Input::LastEventId),
        1 => prop_oneof![0u64..5_000, any::<u64>()].prop_map(Input::Retry),
        3 => Just(Input::Progress),
        2 => Just(Input::Disconnect),
        2 => Just(Input::ConnectError),
        1 => Just(Input::Close),
    ]
}

/// What the test knows about the machine from its outputs alone.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Backing off since `at`; the delay must lie in `[min, max]`.
    Waiting {
        at: Duration,
        min: Duration,
        max: Duration,
    },
    Connecting,
    Streaming,
    GaveUp(GiveUpReason),
}

/// The `Retry-After` a well-behaved machine may honour for `value`, or zero.
fn retry_after_bound(value: Option<&str>) -> Duration {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            s(v.parse().unwrap_or(u64::MAX)).min(MAX_RETRY_AFTER)
        }
        _ => Duration::ZERO,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_inputs_keep_the_invariants(
        seed in any::<u64>(),
        initial_retry in 0u64..5_000,
        max_delay in prop_oneof![0u64..=2, 0u64..2_000, 0u64..60_000],
        initial_id in prop::option::of("[a-z0-9]{0,4}"),
        inputs in prop::collection::vec(input(), 0..120),
    ) {
        let cap = ms(max_delay);
        let mut rc = Reconnect::new(ReconnectConfig {
            initial_retry: ms(initial_retry),
            max_delay: cap,
            jitter_seed: seed,
            last_event_id: initial_id.clone(),
        });
        let mut latest_id = initial_id.filter(|id| !id.is_empty());
        let mut now = Duration::ZERO;
        let mut base = ms(initial_retry);
        let mut seen = Seen::Waiting { at: now, min: Duration::ZERO, max: Duration::ZERO };

        for input in inputs {
            // A failure or a disconnect schedules a reconnect unless backing off or done.
            let may_schedule = matches!(seen, Seen::Connecting | Seen::Streaming);
            // Any backoff is at least the base (capped), jittered down by at most half.
            let min = base.min(cap) / 2;
            match input {
                Input::Advance(millis) => now += ms(millis),
                Input::Poll => {
                    let action = rc.poll(now);
                    match &action {
                        Action::Connect { last_event_id } => {
                            prop_assert!(matches!(seen, Seen::Waiting { .. }), "{seen:?}");
                            prop_assert_eq!(last_event_id, &latest_id);
                            seen = Seen::Connecting;
                            prop_assert_eq!(rc.poll(now), Action::Connecting);
                        }
                        Action::WaitUntil(deadline) => {
                            let Seen::Waiting { at, min, max } = seen.clone() else {
                                return Err(TestCaseError::fail(format!("wait in {seen:?}")));
                            };
                            prop_assert!(*deadline > now);
                            prop_assert!(*deadline >= at);
                            let delay = *deadline - at;
                            prop_assert!(delay >= min && delay <= max, "{delay:?} not in [{min:?}, {max:?}]");
                            prop_assert_eq!(rc.poll(now), action.clone());
                        }
                        Action::Connecting => {
                            prop_assert_eq!(&seen, &Seen::Connecting);
                            prop_assert_eq!(rc.poll(now), action.clone());
                        }
                        Action::Streaming => {
                            prop_assert_eq!(&seen, &Seen::Streaming);
                            prop_assert_eq!(rc.poll(now), action.clone());
                        }
                        Action::GiveUp(reason) => {
                            prop_assert_eq!(&seen, &Seen::GaveUp(reason.clone()));
                            prop_assert_eq!(rc.poll(now), action.clone());
                        }
                    }
                }
                Input::Response { status, content_type, retry_after } => {
                    let verdict = rc.on_response(now, status, content_type, retry_after);
                    if let Seen::GaveUp(reason) = &seen {
                        prop_assert_eq!(verdict, Verdict::GiveUp(reason.clone()));
                        continue;
                    }
                    match verdict {
                        Verdict::Stream => {
                            prop_assert_eq!(status, 200);
                            seen = Seen::Streaming;
                        }
                        Verdict::Retry => {
                            prop_assert!(status == 429 || (500..=599).contains(&status));
                            let max = cap.max(retry_after_bound(retry_after));
                            seen = Seen::Waiting { at: now, min, max };
                        }
                        Verdict::GiveUp(reason) => {
                            match &reason {
                                GiveUpReason::NoContent => prop_assert_eq!(status, 204),
                                GiveUpReason::ContentType(_) => prop_assert_eq!(status, 200),
                                GiveUpReason::Status(code) => prop_assert_eq!(*code, status),
                                GiveUpReason::Closed => prop_assert!(false, "closed by a response"),
                            }
                            seen = Seen::GaveUp(reason);
                        }
                    }
                }
                Input::LastEventId(id) => {
                    rc.on_last_event_id(&id);
                    latest_id = Some(id).filter(|id| !id.is_empty());
                    prop_assert_eq!(rc.last_event_id(), latest_id.as_deref());
                }
                Input::Retry(millis) => {
                    rc.on_retry(millis);
                    base = ms(millis);
                    prop_assert_eq!(rc.retry_delay(), base);
                }
                Input::Progress => {
                    rc.on_progress(now);
                    if seen == Seen::Streaming {
                        prop_assert_eq!(rc.attempts(), 0);
                    }
                }
                Input::Disconnect => {
                    rc.on_disconnect(now);
                    if may_schedule {
                        seen = Seen::Waiting { at: now, min, max: cap };
                    }
                }
                Input::ConnectError => {
                    let before = rc.attempts();
                    rc.on_connect_error(now);
                    if may_schedule {
                        prop_assert_eq!(rc.attempts(), before.saturating_add(1));
                        seen = Seen::Waiting { at: now, min, max: cap };
                    }
                }
                Input::Close => {
                    rc.close();
                    if !matches!(seen, Seen::GaveUp(_)) {
                        seen = Seen::GaveUp(GiveUpReason::Closed);
                    }
                }
            }
        }

        // Whatever happened, a given-up machine stays given up; a live one answers sensibly.
        let action = rc.poll(now);
        if let Seen::GaveUp(reason) = &seen {
            prop_assert_eq!(action, Action::GiveUp(reason.clone()));
        } else if let Action::Connect { last_event_id } = action {
            prop_assert_eq!(last_event_id, latest_id);
        }
    }
}
