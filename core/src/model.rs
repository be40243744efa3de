//! The reference model of a subscription's client, shared by the model property test
//! (`tests/subscription_model.rs`) and the `subscription` fuzz target (`fuzz/`).
//!
//! A [`Scenario`] is a starting log, a cursor, a filter, tunables and a list of [`Action`]s: any
//! interleaving of commits, publishes, replay pages, early/late/duplicated live deliveries, lag,
//! pruning, heartbeats, lifetimes and reconnects that resume from the last id the client
//! parsed. [`run`] plays it against a real [`Subscription`] and a real SSE [`Parser`] as the
//! client, then asserts (panics) unless the client received every matching event after its
//! cursor exactly once and in order, got a `changefeed.reset` exactly when its cursor could
//! not be honoured, and had received, at each `changefeed.ready`, every matching row committed
//! before that connection opened. Which events match is decided by the model's own
//! [`ModelFilter`], never by the code under test.
//!
//! Test support only: compiled with the `model` feature, hidden from the docs, not part of the
//! crate's API.

use std::collections::VecDeque;
use std::time::Duration;

use crate::sse::{Item, Parser};
use crate::wire::{READY_EVENT, RESET_EVENT};
use crate::{
    Cursor, Epoch, Event, EventEncoder, EventRow, EventsQuery, Filter, LogPosition, Output,
    PayloadCheck, Ready, ReplayPage, Reset, ResetReason, Seq, Subscription, SubscriptionConfig,
};

/// The epoch of the modelled log.
pub const EPOCH: Epoch = Epoch(0x00c0_ffee_0000_0001);
/// An epoch of another log.
pub const FOREIGN: Epoch = Epoch(0x0bad_0bad_0bad_0bad);
/// The projects events belong to.
pub const PROJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The kinds events have.
pub const KINDS: [&str; 4] = [
    "session_created",
    "pr_updated",
    "pr_check_recorded",
    "project_created",
];

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commit the next `n` log events to the store (not yet published).
    Commit(usize),
    /// The tailer publishes the next committed event to every live subscriber.
    Publish,
    /// Deliver the next queued live event to the subscription.
    DeliverLive,
    /// Deliver the previously delivered live event again.
    DuplicateLive,
    /// The live channel drops up to `n` queued events and signals lag.
    Lag(usize),
    /// Answer the outstanding fetch from the store; optionally include non-matching rows.
    AnswerFetch {
        /// Also include rows the filter does not match.
        sloppy: bool,
    },
    /// Retention prunes the store up to a fraction (in 1/8) of its head.
    Prune(u8),
    /// Time passes.
    Tick(u64),
    /// Move up to `n` written bytes to the client.
    Transmit(usize),
    /// The connection breaks; undelivered bytes are lost; the client reconnects.
    Disconnect,
}

/// The cursor the client starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartChoice {
    /// No cursor: start at head.
    Head,
    /// A cursor at `min(offset, head)`, bare (`<seq>`) or with the epoch.
    Seq {
        /// The seq, capped at the store's head.
        offset: u64,
        /// Whether the cursor omits the epoch.
        bare: bool,
    },
    /// A cursor beyond the store's head.
    Ahead,
    /// A cursor of another epoch.
    Foreign,
    /// A malformed cursor.
    Invalid,
}

/// A whole run: the log, where the client starts, its filter, the tunables and the steps.
///
/// The property test's strategy keeps the values in the ranges the model is meant for:
/// `gaps[i].0` in `1..4`, `gaps[i].1 < PROJECTS.len()`, `gaps[i].2 < KINDS.len()`,
/// `published_before <= preloaded <= gaps.len()`, `floor_eighths <= 8`, `max_held >= 1`,
/// `window >= 1`, `lifetime >= 1000` (a heartbeat interval), project indices below
/// `PROJECTS.len()` and type patterns valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Each log row as (seq gap from the previous row, project index, kind index).
    pub gaps: Vec<(u64, usize, usize)>,
    /// Rows committed before the client connects.
    pub preloaded: usize,
    /// Rows published before the client connects.
    pub published_before: usize,
    /// The retention floor before the client connects, in eighths of the head.
    pub floor_eighths: u8,
    /// The client's starting cursor.
    pub start: StartChoice,
    /// `project=` values, as indices into [`PROJECTS`].
    pub projects: Option<Vec<usize>>,
    /// `types=` patterns.
    pub types: Option<Vec<String>>,
    /// [`SubscriptionConfig::max_held`].
    pub max_held: usize,
    /// [`SubscriptionConfig::replay_window`].
    pub window: u64,
    /// [`SubscriptionConfig::max_lifetime`] in milliseconds.
    pub lifetime: Option<u64>,
    /// The steps, in order.
    pub actions: Vec<Action>,
}

/// The model's own filter: the scenario's project names and type patterns, matched by rules
/// written here from the contract (`PROTOCOL.md`), independently of [`Filter::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFilter {
    projects: Option<Vec<&'static str>>,
    types: Option<Vec<String>>,
}

impl ModelFilter {
    /// The filter a scenario's `project=` and `types=` describe.
    pub fn new(scenario: &Scenario) -> ModelFilter {
        ModelFilter {
            projects: scenario
                .projects
                .as_ref()
                .map(|indices| indices.iter().map(|&p| PROJECTS[p]).collect()),
            types: scenario.types.clone(),
        }
    }

    /// Whether a client with this filter is shown an event of `project` and `kind`: its
    /// project is one of the named ones, and its kind equals a pattern, starts with a pattern's
    /// text before a trailing `*`, or a pattern is `*`.
    pub fn matches(&self, project: &str, kind: &str) -> bool {
        let project_ok = match &self.projects {
            None => true,
            Some(projects) => projects.contains(&project),
        };
        let kind_ok = match &self.types {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => kind.starts_with(prefix),
                    None => pattern == kind,
                }),
        };
        project_ok && kind_ok
    }
}

/// The store, the tailer and the live feed of one server, as plain data.
pub struct World {
    /// Every row the log will ever hold.
    pub log: Vec<EventRow>,
    /// How many rows of `log` are committed.
    pub committed: usize,
    /// How many rows of `log` the tailer has published.
    pub published: usize,
    /// The retention floor.
    pub floor: Seq,
}

impl World {
    /// The highest committed seq.
    pub fn head(&self) -> Seq {
        self.log[..self.committed]
            .last()
            .map_or(Seq::ZERO, |row| row.seq)
    }
    /// The highest published seq.
    pub fn published_seq(&self) -> Seq {
        self.log[..self.published]
            .last()
            .map_or(Seq::ZERO, |row| row.seq)
    }
    /// The head a shell reads right after subscribing (never below what was published).
    pub fn head_at_open(&self) -> Seq {
        self.head().max(self.published_seq())
    }
    /// The matching rows committed when a connection opens: all sent before its ready.
    fn owed_at_ready(&self, filter: &ModelFilter) -> Vec<Seq> {
        let head = self.head_at_open();
        self.log[..self.committed]
            .iter()
            .filter(|row| row.seq <= head && filter.matches(&row.project_id, &row.kind))
            .map(|row| row.seq)
            .collect()
    }
    /// The position a shell would read when subscribing.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            epoch: EPOCH,
            head: self.head(),
            floor: self.floor,
            published: self.published_seq(),
        }
    }
}

/// The client: a real parser seeded with the previous last id on each reconnect (as browsers
/// do), and what it received, split into segments at each reset.
pub struct Client {
    /// The client's SSE parser.
    pub parser: Parser,
    /// The last id after the previous complete frame.
    id_before_frame: String,
    previous_byte: u8,
    /// What the client received, split at each reset.
    pub segments: Vec<Segment>,
    /// Whether a frame of the current segment has reached the client.
    confirmed: bool,
    // Per connection:
    frames_this_connection: usize,
    /// `changefeed.ready` frames received on the current connection.
    pub ready_this_connection: usize,
    /// The matching rows committed when the current connection opened.
    owed_at_ready: Vec<Seq>,
    expect_reset_first: bool,
    pruned_pages: usize,
    mid_stream_resets: usize,
}

/// The events received between two resets.
#[derive(Debug)]
pub struct Segment {
    /// The position the segment starts after.
    pub start: Seq,
    /// The seqs of the change events received, in order.
    pub received: Vec<Seq>,
    /// The client's last id just before the reset that ended this segment.
    pub ended_at: Option<Seq>,
}

/// The seq of an id of the modelled log (panics on anything else).
pub fn seq_of(id: &str) -> Seq {
    let cursor = Cursor::parse(id).unwrap_or_else(|e| panic!("bad id {id:?}: {e}"));
    assert_eq!(cursor.epoch, Some(EPOCH), "id {id:?} of another epoch");
    cursor.seq
}

impl Client {
    fn new(header: Option<&str>, start: Seq) -> Client {
        Client {
            parser: Parser::new(header.unwrap_or_default()),
            id_before_frame: header.unwrap_or_default().to_owned(),
            previous_byte: 0,
            segments: vec![Segment {
                start,
                received: Vec::new(),
                ended_at: None,
            }],
            confirmed: false,
            frames_this_connection: 0,
            ready_this_connection: 0,
            owed_at_ready: Vec::new(),
            expect_reset_first: false,
            pruned_pages: 0,
            mid_stream_resets: 0,
        }
    }

    fn reconnecting(&mut self, expect_reset_first: bool) {
        self.parser.finish();
        let id = self.parser.last_event_id().to_owned();
        self.parser = Parser::new(id.clone());
        self.id_before_frame = id;
        self.previous_byte = 0;
        self.frames_this_connection = 0;
        self.ready_this_connection = 0;
        self.expect_reset_first = expect_reset_first;
        self.pruned_pages = 0;
        self.mid_stream_resets = 0;
    }

    /// Feeds bytes one frame at a time (server frames end in a blank line and hold none
    /// inside), so the id before each frame is known.
    fn consume(&mut self, bytes: &[u8], filter: &ModelFilter) {
        let mut piece_start = 0;
        for (at, &byte) in bytes.iter().enumerate() {
            let frame_end = byte == b'\n' && self.previous_byte == b'\n';
            self.previous_byte = byte;
            if frame_end {
                self.feed(&bytes[piece_start..=at], filter);
                piece_start = at + 1;
                self.frames_this_connection += 1;
                self.confirmed = true;
                self.id_before_frame = self.parser.last_event_id().to_owned();
                // A blank line resets the "previous newline" state for the next frame.
                self.previous_byte = 0;
            }
        }
        self.feed(&bytes[piece_start..], filter);
    }

    fn feed(&mut self, bytes: &[u8], filter: &ModelFilter) {
        self.parser.feed(bytes).expect("server frames parse");
        while let Some(item) = self.parser.next_item() {
            if let Item::Event(event) = item {
                self.on_event(event, filter);
            }
        }
    }

    fn on_event(&mut self, event: crate::sse::SseEvent, filter: &ModelFilter) {
        let first_frame = self.frames_this_connection == 0;
        if first_frame {
            assert_eq!(
                event.event_type == RESET_EVENT,
                self.expect_reset_first,
                "reset as first frame exactly when the model says the cursor cannot be honoured"
            );
        }
        match event.event_type.as_str() {
            RESET_EVENT => {
                if !first_frame {
                    self.mid_stream_resets += 1;
                    assert!(
                        self.mid_stream_resets <= self.pruned_pages,
                        "a mid-stream reset without a pruned page"
                    );
                }
                let reset = Reset::from_json(&event.data).expect("reset data per the contract");
                let after = seq_of(&reset.after.to_string());
                assert_eq!(seq_of(&event.last_event_id), after);
                let before = Cursor::parse(&self.id_before_frame)
                    .ok()
                    .filter(|c| c.epoch.is_none_or(|e| e == EPOCH));
                let current = self.segments.last_mut().unwrap();
                // Only a pruned reset ends a segment the client really held; a cursor of
                // another log, ahead of head or malformed promised nothing.
                current.ended_at = Some(match (reset.reason, before) {
                    (ResetReason::Pruned, Some(before)) => before.seq,
                    _ => current.start,
                });
                self.confirmed = true;
                self.segments.push(Segment {
                    start: after,
                    received: Vec::new(),
                    ended_at: None,
                });
            }
            READY_EVENT => {
                self.ready_this_connection += 1;
                assert_eq!(
                    self.ready_this_connection, 1,
                    "ready twice on one connection"
                );
                let ready = Ready::from_json(&event.data).expect("ready data per the contract");
                assert_eq!(
                    seq_of(&ready.after.to_string()),
                    seq_of(&event.last_event_id)
                );
                // Ready means caught up with the request: every matching row committed before
                // this connection opened (and owed to this segment) has arrived.
                let segment = self.segments.last().unwrap();
                let missing: Vec<Seq> = self
                    .owed_at_ready
                    .iter()
                    .copied()
                    .filter(|&seq| seq > segment.start && !segment.received.contains(&seq))
                    .collect();
                assert!(
                    missing.is_empty(),
                    "at ready, rows committed before the connection opened are missing: {missing:?}"
                );
            }
            kind => {
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                let seq = Seq(data["seq"].as_u64().unwrap());
                assert_eq!(seq_of(&event.last_event_id), seq);
                assert_eq!(data["type"], kind);
                let project = data["projectId"].as_str().unwrap();
                assert!(filter.matches(project, kind), "leaked {project}/{kind}");
                self.segments.last_mut().unwrap().received.push(seq);
            }
        }
    }
}

struct Connection {
    subscription: Subscription,
    live: VecDeque<Event>,
    last_live: Option<Event>,
    wire: VecDeque<u8>,
    pending_fetch: Option<crate::FetchRequest>,
    closed: bool,
}

/// A scenario in progress: the world, the client and its current connection.
pub struct Harness {
    /// The store and the live feed.
    pub world: World,
    /// The client's filter, as the request parser made it (what the subscription gets).
    pub filter: Filter,
    /// The model's own version of the same filter (what the checks use).
    pub model_filter: ModelFilter,
    /// The subscription's tunables.
    pub config: SubscriptionConfig,
    /// The client.
    pub client: Client,
    connection: Connection,
    /// The current time.
    pub now: Duration,
}

impl Harness {
    /// Sets up the world and connects the client.
    pub fn new(scenario: &Scenario) -> Harness {
        let mut seq = 0;
        let log: Vec<EventRow> = scenario
            .gaps
            .iter()
            .map(|&(gap, project, kind)| {
                seq += gap;
                EventRow {
                    seq: Seq(seq),
                    project_id: PROJECTS[project].to_owned(),
                    session_id: (seq % 2 == 0).then(|| format!("s{seq}")),
                    kind: KINDS[kind].to_owned(),
                    payload: format!("{{\"n\":{seq},\r\n\"text\":\"a\\nb\"}}"),
                    payload_check: PayloadCheck::Valid,
                    created_at: "2026-11-26 00:00:00".to_owned(),
                }
            })
            .collect();
        let mut world = World {
            log,
            committed: scenario.preloaded,
            published: scenario.published_before,
            floor: Seq::ZERO,
        };
        world.floor = Seq(world.head().0 * u64::from(scenario.floor_eighths) / 8);
        let mut query = Vec::new();
        for &p in scenario.projects.iter().flatten() {
            query.push(format!("project={}", PROJECTS[p]));
        }
        if let Some(types) = &scenario.types {
            query.push(format!("types={}", types.join(",")));
        }
        let filter = EventsQuery::parse(Some(&query.join("&")))
            .expect("generated queries are valid")
            .filter;
        let config = SubscriptionConfig {
            heartbeat: Duration::from_millis(1000),
            retry: Duration::from_millis(500),
            max_lifetime: scenario.lifetime.map(Duration::from_millis),
            replay_window: scenario.window,
            max_held: scenario.max_held,
        };
        let head = world.head_at_open();
        let (header, start) = match scenario.start {
            StartChoice::Head => (None, head),
            StartChoice::Seq { offset, bare } => {
                let seq = Seq(offset.min(world.head().0));
                let text = if bare {
                    seq.to_string()
                } else {
                    Cursor::new(EPOCH, seq).to_string()
                };
                (Some(text), seq)
            }
            StartChoice::Ahead => (
                Some(Cursor::new(EPOCH, Seq(world.head().0 + 5)).to_string()),
                head,
            ),
            StartChoice::Foreign => (Some(Cursor::new(FOREIGN, Seq(1)).to_string()), head),
            StartChoice::Invalid => (Some("not-a-cursor".to_owned()), head),
        };
        let mut client = Client::new(header.as_deref(), start);
        let model_filter = ModelFilter::new(scenario);
        client.owed_at_ready = world.owed_at_ready(&model_filter);
        let connection = Harness::open(&world, &filter, &config, &client, Duration::ZERO);
        let mut harness = Harness {
            world,
            filter,
            model_filter,
            config,
            client,
            connection,
            now: Duration::ZERO,
        };
        harness.client.expect_reset_first =
            header.as_deref().is_some_and(|h| !harness.honourable(h));
        harness.drain();
        harness
    }

    fn open(
        world: &World,
        filter: &Filter,
        config: &SubscriptionConfig,
        client: &Client,
        now: Duration,
    ) -> Connection {
        let header = client.parser.last_event_id();
        let start = EventsQuery::parse(None)
            .unwrap()
            .start((!header.is_empty()).then_some(header));
        Connection {
            subscription: Subscription::new(
                start,
                filter.clone(),
                world.position(),
                config.clone(),
                now,
            ),
            live: VecDeque::new(),
            last_live: None,
            wire: VecDeque::new(),
            pending_fetch: None,
            closed: false,
        }
    }

    /// The model's answer: can this cursor be honoured exactly?
    fn honourable(&self, header: &str) -> bool {
        let Ok(cursor) = Cursor::parse(header) else {
            return false;
        };
        let head = self.world.head_at_open();
        cursor.epoch.is_none_or(|e| e == EPOCH)
            && cursor.seq <= head
            && cursor.seq >= self.world.floor
    }

    fn reconnect(&mut self) {
        self.client.parser.finish();
        let header = self.client.parser.last_event_id().to_owned();
        let expect_reset = !header.is_empty() && !self.honourable(&header);
        if !self.client.confirmed {
            // No frame of this segment reached the client yet, so the promise starts where
            // this connection starts: at head without a cursor, at the cursor if it is a
            // position of this log — honoured, or pruned, when the reset ends the segment right
            // at the cursor (one that was ahead of head when the segment began held nothing).
            let head = self.world.head_at_open();
            let position = Cursor::parse(&header)
                .ok()
                .filter(|c| c.epoch.is_none_or(|e| e == EPOCH) && c.seq <= head);
            let segment = self.client.segments.last_mut().unwrap();
            assert!(segment.received.is_empty());
            if header.is_empty() {
                segment.start = self.world.head_at_open();
            } else if let Some(cursor) = position {
                segment.start = cursor.seq;
            }
        }
        self.client.reconnecting(expect_reset);
        self.client.owed_at_ready = self.world.owed_at_ready(&self.model_filter);
        self.connection = Harness::open(
            &self.world,
            &self.filter,
            &self.config,
            &self.client,
            self.now,
        );
        self.drain();
    }

    /// Moves the subscription's outputs to the wire; a fetch stays pending until answered.
    fn drain(&mut self) {
        while let Some(output) = self.connection.subscription.poll_output() {
            assert!(!self.connection.closed, "output after Close");
            match output {
                Output::Frame(bytes) => self.connection.wire.extend(bytes.iter()),
                Output::Fetch(fetch) => {
                    assert!(
                        self.connection.pending_fetch.is_none(),
                        "two fetches in flight"
                    );
                    assert!(fetch.after < fetch.upto, "empty fetch window {fetch:?}");
                    assert!(fetch.upto.0 - fetch.after.0 <= self.config.replay_window);
                    self.connection.pending_fetch = Some(fetch);
                }
                Output::Close => self.connection.closed = true,
            }
        }
        assert!(self.connection.subscription.held() <= self.config.max_held);
    }

    /// Performs one step, then drains the subscription's outputs.
    pub fn apply(&mut self, action: &Action) {
        match *action {
            Action::Commit(n) => {
                self.world.committed = (self.world.committed + n).min(self.world.log.len());
            }
            Action::Publish => {
                if self.world.published < self.world.committed {
                    let event =
                        EventEncoder::new(EPOCH).encode(&self.world.log[self.world.published]);
                    self.world.published += 1;
                    if !self.connection.closed {
                        self.connection.live.push_back(event);
                    }
                }
            }
            Action::DeliverLive => {
                if let Some(event) = self.connection.live.pop_front() {
                    self.connection.last_live = Some(event.clone());
                    self.connection.subscription.handle_live(&event, self.now);
                }
            }
            Action::DuplicateLive => {
                if let Some(event) = self.connection.last_live.clone() {
                    self.connection.subscription.handle_live(&event, self.now);
                }
            }
            Action::Lag(n) => {
                let n = n.min(self.connection.live.len());
                self.connection.live.drain(..n);
                self.connection.subscription.handle_lagged(self.now);
            }
            Action::AnswerFetch { sloppy } => {
                if let Some(fetch) = self.connection.pending_fetch.take() {
                    let floor = self.world.floor;
                    let rows = self.world.log[..self.world.committed]
                        .iter()
                        .filter(|row| row.seq > fetch.after && row.seq <= fetch.upto)
                        .filter(|row| row.seq > floor)
                        .filter(|row| {
                            sloppy || self.model_filter.matches(&row.project_id, &row.kind)
                        })
                        .cloned()
                        .collect();
                    if floor > fetch.after {
                        self.client.pruned_pages += 1;
                    }
                    let page = ReplayPage {
                        rows,
                        head: self.world.head(),
                        floor,
                    };
                    self.connection.subscription.handle_page(page, self.now);
                }
            }
            Action::Prune(eighths) => {
                let target = Seq(self.world.head().0 * u64::from(eighths) / 8);
                self.world.floor = self.world.floor.max(target);
            }
            Action::Tick(millis) => {
                self.now += Duration::from_millis(millis);
                if let Some((deadline, _)) = self.connection.subscription.poll_timeout() {
                    if self.now >= deadline {
                        self.connection.subscription.handle_timeout(self.now);
                    }
                }
            }
            Action::Transmit(n) => {
                let n = n.min(self.connection.wire.len());
                let bytes: Vec<u8> = self.connection.wire.drain(..n).collect();
                self.client.consume(&bytes, &self.model_filter);
                if self.connection.closed && self.connection.wire.is_empty() {
                    self.reconnect();
                }
            }
            Action::Disconnect => self.reconnect(),
        }
        self.drain();
    }

    /// Commits and publishes everything, then delivers until nothing moves.
    pub fn settle(&mut self) {
        self.world.committed = self.world.log.len();
        while self.world.published < self.world.committed {
            self.apply(&Action::Publish);
        }
        self.quiesce();
        // One heartbeat interval of silence: the position is announced (or the lifetime ends
        // with a final checkpoint and the client reconnects).
        let heartbeat = self.config.heartbeat.as_millis() as u64;
        self.apply(&Action::Tick(heartbeat));
        self.quiesce();
    }

    fn quiesce(&mut self) {
        for round in 0.. {
            assert!(round < 100_000, "no progress towards quiescence");
            if !self.connection.live.is_empty() {
                self.apply(&Action::DeliverLive);
            } else if self.connection.pending_fetch.is_some() {
                self.apply(&Action::AnswerFetch { sloppy: false });
            } else if !self.connection.wire.is_empty() {
                self.apply(&Action::Transmit(usize::MAX));
            } else if self.connection.closed {
                self.reconnect();
            } else {
                break;
            }
        }
        assert_eq!(self.connection.subscription.phase(), crate::Phase::Live);
    }

    /// Asserts that the client received exactly the model's events, once each and in order.
    pub fn check(&self) {
        let end = seq_of(self.client.parser.last_event_id());
        assert_eq!(
            end,
            self.world.published_seq(),
            "the client's final position is the head"
        );
        assert_eq!(
            self.client.ready_this_connection, 1,
            "one ready per connection"
        );
        let history = &self.world.log[..self.world.committed];
        for (index, segment) in self.client.segments.iter().enumerate() {
            let until = segment.ended_at.unwrap_or(end);
            let expected: Vec<Seq> = history
                .iter()
                .filter(|row| row.seq > segment.start && row.seq <= until)
                .filter(|row| self.model_filter.matches(&row.project_id, &row.kind))
                .map(|row| row.seq)
                .collect();
            assert_eq!(
                segment.received, expected,
                "segment {index} from {} to {until}: received vs model",
                segment.start
            );
        }
    }
}

/// Plays a scenario, settles it and checks the client against the model (panics on a
/// violation).
pub fn run(scenario: &Scenario) {
    let mut harness = Harness::new(scenario);
    for action in &scenario.actions {
        harness.apply(action);
    }
    harness.settle();
    harness.check();
}
