//! Proves, against a reference model, that a client following `Subscription` streams receives
//! every matching event after its cursor exactly once and in order — across any interleaving of
//! commits, publishes, replay pages, early/late/duplicated live deliveries, lag, pruning,
//! heartbeats, lifetimes and reconnects that resume from the last id the client parsed — and
//! gets a `changefeed.reset` exactly when its cursor cannot be honoured.

use std::collections::VecDeque;
use std::time::Duration;

use changefeed_core::sse::{Item, Parser};
use changefeed_core::{
    Cursor, Epoch, Event, EventRow, EventsQuery, Filter, LogPosition, Output, ReplayPage, Seq,
    Subscription, SubscriptionConfig,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const EPOCH: Epoch = Epoch(0x00c0_ffee_0000_0001);
const FOREIGN: Epoch = Epoch(0x0bad_0bad_0bad_0bad);
const PROJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
const KINDS: [&str; 4] = [
    "session_created",
    "pr_updated",
    "pr_check_recorded",
    "project_created",
];

#[derive(Debug, Clone)]
enum Action {
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
    AnswerFetch { sloppy: bool },
    /// Retention prunes the store up to a fraction (in 1/8) of its head.
    Prune(u8),
    /// Time passes.
    Tick(u64),
    /// Move up to `n` written bytes to the client.
    Transmit(usize),
    /// The connection breaks; undelivered bytes are lost; the client reconnects.
    Disconnect,
}

#[derive(Debug, Clone)]
enum StartChoice {
    Head,
    Seq { offset: u64, bare: bool },
    Ahead,
    Foreign,
    Invalid,
}

#[derive(Debug, Clone)]
struct Scenario {
    gaps: Vec<(u64, usize, usize)>,
    preloaded: usize,
    published_before: usize,
    floor_eighths: u8,
    start: StartChoice,
    projects: Option<Vec<usize>>,
    types: Option<Vec<String>>,
    max_held: usize,
    window: u64,
    lifetime: Option<u64>,
    actions: Vec<Action>,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1usize..4).prop_map(Action::Commit),
        3 => Just(Action::Publish),
        4 => Just(Action::DeliverLive),
        1 => Just(Action::DuplicateLive),
        1 => (1usize..6).prop_map(Action::Lag),
        5 => any::<bool>().prop_map(|sloppy| Action::AnswerFetch { sloppy }),
        1 => (0u8..=8).prop_map(Action::Prune),
        2 => (1u64..3000).prop_map(Action::Tick),
        4 => (1usize..400).prop_map(Action::Transmit),
        1 => Just(Action::Disconnect),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let gaps = prop::collection::vec((1u64..4, 0..PROJECTS.len(), 0..KINDS.len()), 0..40);
    let start = prop_oneof![
        2 => Just(StartChoice::Head),
        6 => (0u64..80, any::<bool>()).prop_map(|(offset, bare)| StartChoice::Seq { offset, bare }),
        1 => Just(StartChoice::Ahead),
        1 => Just(StartChoice::Foreign),
        1 => Just(StartChoice::Invalid),
    ];
    let projects = prop::option::of(prop::collection::vec(0..PROJECTS.len(), 1..3));
    let types = prop::option::of(prop::collection::vec(
        prop::sample::select(vec![
            "pr_*",
            "session_created",
            "*",
            "pr_check_recorded",
            "p*",
        ]),
        1..3,
    ))
    .prop_map(|types| types.map(|t| t.into_iter().map(String::from).collect()));
    (
        gaps,
        0usize..40,
        0usize..40,
        0u8..=4,
        start,
        projects,
        types,
        (1usize..6, 1u64..12, prop::option::of(1000u64..20_000)),
        prop::collection::vec(action(), 0..120),
    )
        .prop_map(
            |(
                gaps,
                preloaded,
                published_before,
                floor_eighths,
                start,
                projects,
                types,
                (max_held, window, lifetime),
                actions,
            )| {
                let preloaded = preloaded.min(gaps.len());
                Scenario {
                    published_before: published_before.min(preloaded),
                    preloaded,
                    gaps,
                    floor_eighths,
                    start,
                    projects,
                    types,
                    max_held,
                    window,
                    lifetime,
                    actions,
                }
            },
        )
}

/// The store, the tailer and the live feed of one server, as plain data.
struct World {
    log: Vec<EventRow>,
    committed: usize,
    published: usize,
    floor: Seq,
}

impl World {
    fn head(&self) -> Seq {
        self.log[..self.committed]
            .last()
            .map_or(Seq::ZERO, |row| row.seq)
    }
    fn published_seq(&self) -> Seq {
        self.log[..self.published]
            .last()
            .map_or(Seq::ZERO, |row| row.seq)
    }
    fn position(&self) -> LogPosition {
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
struct Client {
    parser: Parser,
    /// The last id after the previous complete frame.
    id_before_frame: String,
    previous_byte: u8,
    segments: Vec<Segment>,
    /// Whether a frame of the current segment has reached the client.
    confirmed: bool,
    // Per connection:
    frames_this_connection: usize,
    ready_this_connection: usize,
    expect_reset_first: bool,
    pruned_pages: usize,
    mid_stream_resets: usize,
}

#[derive(Debug)]
struct Segment {
    start: Seq,
    received: Vec<Seq>,
    /// The client's last id just before the reset that ended this segment.
    ended_at: Option<Seq>,
}

fn seq_of(id: &str) -> Seq {
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
    fn consume(&mut self, bytes: &[u8], filter: &Filter) {
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

    fn feed(&mut self, bytes: &[u8], filter: &Filter) {
        self.parser.feed(bytes).expect("server frames parse");
        while let Some(item) = self.parser.next_item() {
            if let Item::Event(event) = item {
                self.on_event(event, filter);
            }
        }
    }

    fn on_event(&mut self, event: changefeed_core::sse::SseEvent, filter: &Filter) {
        let first_frame = self.frames_this_connection == 0;
        if first_frame {
            assert_eq!(
                event.event_type == "changefeed.reset",
                self.expect_reset_first,
                "reset as first frame exactly when the model says the cursor cannot be honoured"
            );
        }
        match event.event_type.as_str() {
            "changefeed.reset" => {
                if !first_frame {
                    self.mid_stream_resets += 1;
                    assert!(
                        self.mid_stream_resets <= self.pruned_pages,
                        "a mid-stream reset without a pruned page"
                    );
                }
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                let after = seq_of(data["after"].as_str().unwrap());
                assert_eq!(seq_of(&event.last_event_id), after);
                let before = Cursor::parse(&self.id_before_frame)
                    .ok()
                    .filter(|c| c.epoch.is_none_or(|e| e == EPOCH));
                let current = self.segments.last_mut().unwrap();
                // Only a pruned reset ends a segment the client really held; a cursor of
                // another log, ahead of head or malformed promised nothing.
                current.ended_at = Some(match (data["reason"].as_str(), before) {
                    (Some("pruned"), Some(before)) => before.seq,
                    _ => current.start,
                });
                self.confirmed = true;
                self.segments.push(Segment {
                    start: after,
                    received: Vec::new(),
                    ended_at: None,
                });
            }
            "changefeed.ready" => {
                self.ready_this_connection += 1;
                assert_eq!(
                    self.ready_this_connection, 1,
                    "ready twice on one connection"
                );
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                assert_eq!(
                    seq_of(data["after"].as_str().unwrap()),
                    seq_of(&event.last_event_id)
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
    pending_fetch: Option<changefeed_core::FetchRequest>,
    closed: bool,
}

struct Harness {
    world: World,
    filter: Filter,
    config: SubscriptionConfig,
    client: Client,
    connection: Connection,
    now: Duration,
}

impl Harness {
    fn new(scenario: &Scenario) -> Harness {
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
        let head = world.published_seq();
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
        let client = Client::new(header.as_deref(), start);
        let connection = Harness::open(&world, &filter, &config, &client, Duration::ZERO);
        let mut harness = Harness {
            world,
            filter,
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
        let head = self.world.head().max(self.world.published_seq());
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
            // this connection starts: at head without a cursor, at the cursor if honoured.
            let segment = self.client.segments.last_mut().unwrap();
            assert!(segment.received.is_empty());
            if header.is_empty() {
                segment.start = self.world.published_seq();
            } else if !expect_reset {
                segment.start = Cursor::parse(&header).unwrap().seq;
            }
        }
        self.client.reconnecting(expect_reset);
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

    fn apply(&mut self, action: &Action) {
        match *action {
            Action::Commit(n) => {
                self.world.committed = (self.world.committed + n).min(self.world.log.len());
            }
            Action::Publish => {
                if self.world.published < self.world.committed {
                    let event = Event::encode(&self.world.log[self.world.published], EPOCH);
                    self.world.published += 1;
                    if !self.connection.closed {
                        self.connection.live.push_back(event);
                    }
                }
            }
            Action::DeliverLive => {
                if let Some(event) = self.connection.live.pop_front() {
                    self.connection.last_live = Some(event.clone());
                    self.connection.subscription.handle_live(event, self.now);
                }
            }
            Action::DuplicateLive => {
                if let Some(event) = self.connection.last_live.clone() {
                    self.connection.subscription.handle_live(event, self.now);
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
                        .filter(|row| sloppy || self.filter.matches(&row.project_id, &row.kind))
                        .map(|row| Event::encode(row, EPOCH))
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
                self.client.consume(&bytes, &self.filter);
                if self.connection.closed && self.connection.wire.is_empty() {
                    self.reconnect();
                }
            }
            Action::Disconnect => self.reconnect(),
        }
        self.drain();
    }

    /// Commits and publishes everything, then delivers until nothing moves.
    fn settle(&mut self) {
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
        assert_eq!(
            self.connection.subscription.phase(),
            changefeed_core::Phase::Live
        );
    }

    fn check(&self) {
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
                .filter(|row| self.filter.matches(&row.project_id, &row.kind))
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

fn run(scenario: &Scenario) {
    let mut harness = Harness::new(scenario);
    for action in &scenario.actions {
        harness.apply(action);
    }
    harness.settle();
    harness.check();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048),
        max_shrink_iters: 20_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/subscription_model.txt"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn exactly_the_models_events_once_in_order(scenario in scenario()) {
        run(&scenario);
    }
}

/// A cursor-less client that loses its first connection before any event and resumes with the
/// id of the first frame misses nothing written in between.
#[test]
fn first_frame_id_makes_a_cursorless_client_resumable() {
    let scenario = Scenario {
        gaps: vec![(1, 0, 0), (1, 1, 1), (2, 2, 2)],
        preloaded: 1,
        published_before: 1,
        floor_eighths: 0,
        start: StartChoice::Head,
        projects: None,
        types: None,
        max_held: 4,
        window: 8,
        lifetime: None,
        actions: vec![
            Action::Transmit(usize::MAX),
            Action::Commit(2),
            Action::Publish,
            Action::Publish,
            Action::Disconnect,
        ],
    };
    let mut harness = Harness::new(&scenario);
    for action in &scenario.actions {
        harness.apply(action);
    }
    harness.settle();
    harness.check();
    assert_eq!(harness.client.segments[0].received, vec![Seq(2), Seq(4)]);
}
