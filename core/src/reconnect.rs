//! The client's reconnect logic as a sans-IO state machine: [`Reconnect`].
//!
//! The machine decides *when* to connect and *whether* a response may be streamed; the HTTP shell
//! performs the IO. It never reads a clock: every input that depends on time takes `now`, a
//! [`Duration`] since an arbitrary origin chosen by the caller (typically a monotonic
//! `Instant` taken at start-up), and deadlines come back on the same scale. Jitter is drawn from a
//! seeded [`fastrand::Rng`], so a given seed and input sequence always yields the same schedule.
//!
//! # Driving it
//!
//! ```
//! use std::time::Duration;
//! use changefeed_core::reconnect::{Action, Reconnect, ReconnectConfig, Verdict};
//!
//! let mut rc = Reconnect::new(ReconnectConfig::default());
//! let t0 = Duration::ZERO;
//! assert_eq!(rc.poll(t0), Action::Connect { last_event_id: None });
//! // The shell connects and reports the response head.
//! let verdict = rc.on_response(t0, 200, Some("text/event-stream"), None);
//! assert_eq!(verdict, Verdict::Stream);
//! // For every dispatched frame: the parser's last event id, then progress.
//! rc.on_last_event_id("42");
//! rc.on_progress(t0);
//! // The stream ends; the next connect is scheduled and resumes from "42".
//! rc.on_disconnect(Duration::from_secs(10));
//! let Action::WaitUntil(deadline) = rc.poll(Duration::from_secs(10)) else { panic!() };
//! assert_eq!(rc.poll(deadline), Action::Connect { last_event_id: Some("42".into()) });
//! ```
//!
//! # Rules
//!
//! - `200` with a `Content-Type` whose MIME essence is `text/event-stream` is streamed; `200`
//!   with any other or no content type gives up ([`GiveUpReason::ContentType`]).
//! - `204` gives up ([`GiveUpReason::NoContent`]): the server says the stream is finished.
//! - `5xx` and `429` are retried with backoff, honouring a delta-seconds `Retry-After`.
//! - Every other status gives up ([`GiveUpReason::Status`]); the shell follows redirects itself.
//! - Giving up is terminal: [`Reconnect::poll`] returns the same [`Action::GiveUp`] forever.
//!
//! # Backoff
//!
//! The base delay is the server's `retry:` value, or [`ReconnectConfig::initial_retry`] until
//! the server sends one. With `n` consecutive failures ([`Reconnect::attempts`]) the delay is
//! `base × 2ⁿ`, capped at [`ReconnectConfig::max_delay`]; a failure is a connect error, a
//! retryable status or a stream that ended before delivering a complete frame. A stream that
//! delivered a frame resets `n` to zero, so the reconnect after it waits the base delay. Every
//! delay is then jittered uniformly into `[delay / 2, delay]`, which spreads the reconnects of
//! many clients dropped at the same moment.
//!
//! A server may send `retry: 0` to ask for an immediate reconnect after a healthy stream. So that
//! it cannot turn a failing server into a busy loop, the growth after failures starts from at
//! least [`MIN_FAILURE_BASE`] (still capped at `max_delay`).

use std::fmt;
use std::time::Duration;

/// The `Content-Type` essence an event stream must have.
const EVENT_STREAM: &str = "text/event-stream";

/// The longest `Retry-After` honoured; larger values are clamped so a wait stays bounded.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// The smallest base delay that failure backoff grows from (see the [module docs](self)).
pub const MIN_FAILURE_BASE: Duration = Duration::from_millis(100);

/// How a [`Reconnect`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// The base delay until the server sends a `retry:` field (default 1 s).
    pub initial_retry: Duration,
    /// The cap of the exponential backoff (default 30 s).
    pub max_delay: Duration,
    /// Seed of the jitter PRNG: the same seed and inputs give the same schedule (default 0).
    pub jitter_seed: u64,
    /// The position to resume from on the first connect, e.g. read from a cursor file.
    /// `Some("")` is the same as `None`: no `Last-Event-ID` header is sent.
    pub last_event_id: Option<String>,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_retry: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            jitter_seed: 0,
            last_event_id: None,
        }
    }
}

/// What the shell should do next, as answered by [`Reconnect::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection now, sending `Last-Event-ID: <id>` if `last_event_id` is `Some`.
    /// Report the outcome with [`Reconnect::on_response`] or [`Reconnect::on_connect_error`].
    /// Returned once per attempt.
    Connect {
        /// The resume position to send, or `None` to send no `Last-Event-ID` header.
        last_event_id: Option<String>,
    },
    /// A connect attempt is in flight: wait for its outcome, then report it.
    Connecting,
    /// Backing off: poll again at (or after) this deadline, on the caller's `now` scale.
    WaitUntil(Duration),
    /// Stop for good. Once returned, every later poll returns the same value.
    GiveUp(GiveUpReason),
    /// A response is being streamed: feed it to the parser and report frames and its end.
    Streaming,
}

/// Why a [`Reconnect`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The server answered `204 No Content`: the stream is finished, do not reconnect.
    NoContent,
    /// The server answered a status that is neither `200`, `204` nor retryable (`5xx`, `429`).
    Status(u16),
    /// The server answered `200` with this `Content-Type` (empty if missing), whose MIME
    /// essence is not `text/event-stream`.
    ContentType(String),
    /// The user called [`Reconnect::close`].
    Closed,
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::NoContent => {
                f.write_str("the server answered 204 No Content: the event stream is finished")
            }
            GiveUpReason::Status(code) => {
                write!(
                    f,
                    "the server answered HTTP status {code}, which is not retryable"
                )
            }
            GiveUpReason::ContentType(ct) if ct.is_empty() => {
                write!(
                    f,
                    "the server response has no Content-Type (expected {EVENT_STREAM})"
                )
            }
            GiveUpReason::ContentType(ct) => write!(
                f,
                "the server response has Content-Type {ct:?} (expected {EVENT_STREAM})"
            ),
            GiveUpReason::Closed => f.write_str("the event stream client was closed"),
        }
    }
}

impl std::error::Error for GiveUpReason {}

/// The machine's judgement of a response head, returned by [`Reconnect::on_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Read the body as an event stream.
    Stream,
    /// Drop the response; a reconnect is scheduled (see [`Reconnect::poll`]).
    Retry,
    /// Drop the response and stop for good.
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Connect at or after this instant (`ZERO` at start: at once).
    Waiting { until: Duration },
    /// `Connect` was returned; waiting for the response head or a connect error.
    Connecting,
    /// Reading a response body; `progressed` once a complete frame arrived.
    Streaming { progressed: bool },
    /// Terminal.
    Done(GiveUpReason),
}

/// The client reconnect state machine (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Reconnect {
    state: State,
    last_event_id: Option<String>,
    /// The server's `retry:` if it sent one, else `initial_retry`.
    base: Duration,
    max_delay: Duration,
    /// Consecutive failures.
    failures: u32,
    rng: fastrand::Rng,
}

impl Reconnect {
    /// A machine that connects at once, resuming from `config.last_event_id`.
    pub fn new(config: ReconnectConfig) -> Reconnect {
        Reconnect {
            state: State::Waiting {
                until: Duration::ZERO,
            },
            last_event_id: config.last_event_id.filter(|id| !id.is_empty()),
            base: config.initial_retry,
            max_delay: config.max_delay,
            failures: 0,
            rng: fastrand::Rng::with_seed(config.jitter_seed),
        }
    }

    /// What to do at `now`. Without inputs in between, asking again at the same `now` gives the
    /// same answer, except that [`Action::Connect`] is returned once per attempt: the machine
    /// then answers [`Action::Connecting`] until the outcome is reported.
    pub fn poll(&mut self, now: Duration) -> Action {
        match &self.state {
            State::Waiting { until } if now >= *until => {
                self.state = State::Connecting;
                Action::Connect {
                    last_event_id: self.last_event_id.clone(),
                }
            }
            State::Waiting { until } => Action::WaitUntil(*until),
            State::Connecting => Action::Connecting,
            State::Streaming { .. } => Action::Streaming,
            State::Done(reason) => Action::GiveUp(reason.clone()),
        }
    }

    /// Judges a response head received at `now`: its status, `Content-Type` and `Retry-After`
    /// header values (`None` if absent).
    ///
    /// `Retry-After` is honoured on `5xx` and `429` when it holds delta-seconds: the wait is
    /// the later of the backoff and `Retry-After` (clamped to [`MAX_RETRY_AFTER`]). An
    /// HTTP-date cannot be evaluated without a wall clock, which this machine does not read, so
    /// it is ignored and the normal backoff applies.
    ///
    /// After giving up this returns the same [`Verdict::GiveUp`] and changes nothing.
    pub fn on_response(
        &mut self,
        now: Duration,
        status: u16,
        content_type: Option<&str>,
        retry_after: Option<&str>,
    ) -> Verdict {
        if let State::Done(reason) = &self.state {
            return Verdict::GiveUp(reason.clone());
        }
        match status {
            200 => match content_type {
                Some(ct) if is_event_stream(ct) => {
                    self.state = State::Streaming { progressed: false };
                    Verdict::Stream
                }
                ct => self.give_up(GiveUpReason::ContentType(ct.unwrap_or("").to_owned())),
            },
            204 => self.give_up(GiveUpReason::NoContent),
            429 | 500..=599 => {
                self.failures = self.failures.saturating_add(1);
                let floor = retry_after.and_then(parse_retry_after);
                self.schedule(now, floor.unwrap_or(Duration::ZERO));
                Verdict::Retry
            }
            _ => self.give_up(GiveUpReason::Status(status)),
        }
    }

    /// Records the parser's last event id after a dispatched frame (including frames that only
    /// carry an `id:`); the next [`Action::Connect`] carries it. `""` clears it, as the spec says:
    /// then no `Last-Event-ID` header is sent.
    pub fn on_last_event_id(&mut self, id: &str) {
        if id.is_empty() {
            self.last_event_id = None;
        } else if self.last_event_id.as_deref() != Some(id) {
            self.last_event_id = Some(id.to_owned());
        }
    }

    /// Records the server's `retry:` field: it becomes the base delay.
    pub fn on_retry(&mut self, millis: u64) {
        self.base = Duration::from_millis(millis);
    }

    /// The stream delivered a complete frame: the connection is healthy, so the consecutive
    /// failure count is reset and the reconnect after this stream waits the base delay.
    /// Ignored unless a response is being streamed.
    pub fn on_progress(&mut self, now: Duration) {
        // `now` is part of the input contract (every stream event is timestamped) but the
        // backoff policy does not depend on when progress happened.
        let _ = now;
        if let State::Streaming { progressed } = &mut self.state {
            *progressed = true;
            self.failures = 0;
        }
    }

    /// The stream ended or broke at `now` (EOF, IO error, read timeout): schedules the next
    /// connect. A stream that delivered no complete frame counts as a failure. Ignored while
    /// backing off or after giving up; while connecting it is treated as a connect error.
    pub fn on_disconnect(&mut self, now: Duration) {
        match self.state {
            State::Streaming { progressed: true } => self.schedule(now, Duration::ZERO),
            State::Streaming { progressed: false } | State::Connecting => self.fail(now),
            State::Waiting { .. } | State::Done(_) => {}
        }
    }

    /// The connect attempt failed at `now` without a response (DNS, refused, TLS, timeout):
    /// a failure, schedules the next connect. Ignored while backing off or after giving up.
    pub fn on_connect_error(&mut self, now: Duration) {
        match self.state {
            State::Connecting | State::Streaming { .. } => self.fail(now),
            State::Waiting { .. } | State::Done(_) => {}
        }
    }

    /// The user stops: [`Action::GiveUp`]`(`[`GiveUpReason::Closed`]`)` from now on. If the
    /// machine had already given up, it keeps its original reason.
    pub fn close(&mut self) {
        if !matches!(self.state, State::Done(_)) {
            self.state = State::Done(GiveUpReason::Closed);
        }
    }

    /// The id the next [`Action::Connect`] will carry (`None`: no `Last-Event-ID` header).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The current base delay: the server's last `retry:` value, else `initial_retry`.
    pub fn retry_delay(&self) -> Duration {
        self.base
    }

    /// The number of consecutive failures so far (reset by [`Reconnect::on_progress`]).
    pub fn attempts(&self) -> u32 {
        self.failures
    }

    fn give_up(&mut self, reason: GiveUpReason) -> Verdict {
        self.state = State::Done(reason.clone());
        Verdict::GiveUp(reason)
    }

    fn fail(&mut self, now: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.schedule(now, Duration::ZERO);
    }

    /// Enters `Waiting` until `now` plus the jittered backoff, or `now + floor` if later.
    fn schedule(&mut self, now: Duration, floor: Duration) {
        let delay = backoff(self.base, self.failures, self.max_delay);
        let delay = jitter(delay, &mut self.rng).max(floor);
        self.state = State::Waiting {
            until: now.checked_add(delay).unwrap_or(Duration::MAX),
        };
    }
}

/// Whether the MIME essence of a `Content-Type` value is `text/event-stream`: the part before
/// any `;`, trimmed of HTTP whitespace, compared ASCII-case-insensitively.
fn is_event_stream(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("");
    trim_http_whitespace(essence).eq_ignore_ascii_case(EVENT_STREAM)
}

fn trim_http_whitespace(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// A delta-seconds `Retry-After` (digits only, surrounding whitespace allowed), clamped to
/// [`MAX_RETRY_AFTER`]. Anything else, an HTTP-date included, is `None`.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let digits = trim_http_whitespace(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Only digits, so parsing can fail only by overflow: clamp.
    let secs = digits.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// `base × 2^failures`, capped at `cap`; after a failure growth starts from [`MIN_FAILURE_BASE`].
fn backoff(base: Duration, failures: u32, cap: Duration) -> Duration {
    let base = if failures > 0 {
        base.max(MIN_FAILURE_BASE)
    } else {
        base
    };
    1u32.checked_shl(failures)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(cap, |delay| delay.min(cap))
}

/// A delay drawn uniformly from `[delay / 2, delay]`.
fn jitter(delay: Duration, rng: &mut fastrand::Rng) -> Duration {
    let nanos = delay.as_nanos();
    let jittered = rng.u128(nanos / 2..=nanos);
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    // `jittered <= nanos`, so the seconds fit the `u64` they came from.
    Duration::new(
        (jittered / NANOS_PER_SEC) as u64,
        (jittered % NANOS_PER_SEC) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn event_stream_essence() {
        for ok in [
            "text/event-stream",
            "TEXT/Event-Stream",
            "text/event-stream; charset=utf-8",
            " text/event-stream ;foo",
            "\ttext/event-stream\t",
            "text/event-stream;",
        ] {
            assert!(is_event_stream(ok), "{ok:?}");
        }
        for bad in [
            "",
            "text/plain",
            "text/event-streams",
            "text/ event-stream",
            "application/json; x=text/event-stream",
            "text/event-stream2",
            ";text/event-stream",
        ] {
            assert!(!is_event_stream(bad), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(MAX_RETRY_AFTER, S(3600));
        assert_eq!(MIN_FAILURE_BASE, MS(100));
        assert_eq!(parse_retry_after("0"), Some(S(0)));
        assert_eq!(parse_retry_after("120"), Some(S(120)));
        assert_eq!(parse_retry_after(" 7 "), Some(S(7)));
        assert_eq!(parse_retry_after("3601"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("  "), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("+5"), None);
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cap = S(30);
        assert_eq!(backoff(S(1), 0, cap), S(1));
        assert_eq!(backoff(S(1), 1, cap), S(2));
        assert_eq!(backoff(S(1), 4, cap), S(16));
        assert_eq!(backoff(S(1), 5, cap), S(30));
        assert_eq!(backoff(S(1), 31, cap), S(30));
        assert_eq!(backoff(S(1), 32, cap), S(30));
        assert_eq!(backoff(S(1), u32::MAX, cap), S(30));
        assert_eq!(backoff(Duration::MAX, 3, cap), S(30));
        assert_eq!(backoff(S(60), 0, cap), S(30));
        // retry: 0 reconnects at once after a healthy stream, but failures still back off.
        assert_eq!(backoff(S(0), 0, cap), S(0));
        assert_eq!(backoff(S(0), 1, cap), MIN_FAILURE_BASE * 2);
        assert_eq!(backoff(S(0), 1, MS(50)), MS(50));
        assert_eq!(backoff(S(5), 3, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_upper_half_and_reaches_both_ends() {
        let mut rng = fastrand::Rng::with_seed(7);
        for delay in [
            S(0),
            Duration::from_nanos(1),
            MS(3),
            S(1),
            S(30),
            Duration::MAX,
        ] {
            for _ in 0..1000 {
                let j = jitter(delay, &mut rng);
                assert!(j <= delay && j >= delay / 2, "{j:?} for {delay:?}");
            }
        }
        assert_eq!(jitter(S(0), &mut rng), S(0));
        let draws: Vec<Duration> = (0..200)
            .map(|_| jitter(Duration::from_nanos(10), &mut rng))
            .collect();
        assert!(draws.contains(&Duration::from_nanos(5)), "the lower end");
        assert!(draws.contains(&Duration::from_nanos(10)), "the upper end");
        // Seconds and nanoseconds are split correctly above one second.
        let long = jitter(S(7) + Duration::from_nanos(3), &mut rng);
        assert!(long >= MS(3500) && long <= S(7) + Duration::from_nanos(3));
    }

    #[test]
    fn jitter_follows_the_seed() {
        let draws = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..8).map(|_| jitter(S(30), &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        assert_ne!(draws(3), draws(4));
    }

    #[test]
    fn empty_initial_id_is_none() {
        let mut rc = Reconnect::new(ReconnectConfig {
            last_event_id: Some(String::new()),
            ..ReconnectConfig::default()
        });
        assert_eq!(rc.last_event_id(), None);
        assert_eq!(
            rc.poll(S(0)),
            Action::Connect {
                last_event_id: None
            }
        );
    }

    #[test]
    fn out_of_order_inputs_are_tolerated() {
        let mut rc = Reconnect::new(ReconnectConfig::default());
        // Nothing in flight: ignored.
        rc.on_disconnect(S(0));
        rc.on_connect_error(S(0));
        rc.on_progress(S(0));
        assert_eq!(rc.attempts(), 0);
        assert!(matches!(rc.poll(S(0)), Action::Connect { .. }));
        assert_eq!(rc.poll(S(0)), Action::Connecting);
        // A disconnect while connecting is a failure.
        rc.on_disconnect(S(1));
        assert_eq!(rc.attempts(), 1);
        assert!(matches!(rc.poll(S(1)), Action::WaitUntil(_)));
    }

    #[test]
    fn deadline_saturates() {
        let mut rc = Reconnect::new(ReconnectConfig::default());
        let far = Duration::MAX - MS(1);
        assert!(matches!(rc.poll(far), Action::Connect { .. }));
        rc.on_connect_error(far);
        assert_eq!(rc.poll(far), Action::WaitUntil(Duration::MAX));
    }

    #[test]
    fn display_messages() {
        assert_eq!(
            GiveUpReason::NoContent.to_string(),
            "the server answered 204 No Content: the event stream is finished"
        );
        assert_eq!(
            GiveUpReason::Status(404).to_string(),
            "the server answered HTTP status 404, which is not retryable"
        );
        assert_eq!(
            GiveUpReason::ContentType(String::new()).to_string(),
            "the server response has no Content-Type (expected text/event-stream)"
        );
        assert_eq!(
            GiveUpReason::ContentType("text/html".into()).to_string(),
            "the server response has Content-Type \"text/html\" (expected text/event-stream)"
        );
        assert_eq!(
            GiveUpReason::Closed.to_string(),
            "the event stream client was closed"
        );
    }
}
