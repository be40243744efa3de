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
//! [`ModelFilter`] (projects, sessions, kinds and the token's grant), never by the code under
//! test; where a `last=` stream starts is the model's own count; with auth on, ids are sealed
//! and opened by the model's own implementation of the sealed-id format ([`ModelIds`]), the
//! event JSON must not carry `seq`, and no id-only frame may follow anything but a heartbeat
//! tick or precede the end of the stream.
//!
//! Test support only: compiled with the `model` feature, hidden from the docs, not part of the
//! crate's API.

use std::collections::VecDeque;
use std::time::Duration;

use aes_siv::siv::Aes128Siv;
use aes_siv::KeyInit;
use base64ct::{Base64UrlUnpadded, Encoding};

use crate::sse::{Item, Parser};
use crate::wire::{READY_EVENT, RESET_EVENT};
use crate::{
    Access, Cursor, Epoch, ErrorCode, Event, EventEncoder, EventRow, EventsQuery, Filter, Grant,
    IdKey, LocateRequest, Located, LogPosition, Output, PayloadCheck, Ready, ReplayPage, Reset,
    ResetReason, Seq, Subscription, SubscriptionConfig,
};

/// The epoch of the modelled log.
pub const EPOCH: Epoch = Epoch(0x00c0_ffee_0000_0001);
/// An epoch of another log.
pub const FOREIGN: Epoch = Epoch(0x0bad_0bad_0bad_0bad);
/// The projects events belong to.
pub const PROJECTS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The sessions events have (row `seq` has `SESSIONS[seq % 4]`, none for index 3); `""` is a
/// stored empty session, which counts as none.
pub const SESSIONS: [&str; 3] = ["s1", "s2", ""];
/// The sealed-id key of the modelled server.
pub const KEY: [u8; 32] = [0x5a; 32];
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
    /// A valid id with one character changed.
    Forged,
    /// `last=<n>` (no cursor).
    Last(u32),
}

/// Auth on: the token's grant and whether the subscription gets the request's filter without
/// [`EventsQuery::authorize`] (so the grant must hold inside the subscription by itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantChoice {
    /// Granted projects as indices into [`PROJECTS`]; `None` for `*`.
    pub grant: Option<Vec<usize>>,
    /// Skip `authorize` and hand the subscription the raw filter.
    pub bypass_authorize: bool,
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
    /// `session=` values, as indices into [`SESSIONS`].
    pub sessions: Option<Vec<usize>>,
    /// Auth on (grant, sealed ids), or `None` for auth off.
    pub tenant: Option<TenantChoice>,
    /// [`SubscriptionConfig::max_held`].
    pub max_held: usize,
    /// [`SubscriptionConfig::replay_window`].
    pub window: u64,
    /// [`SubscriptionConfig::max_lifetime`] in milliseconds.
    pub lifetime: Option<u64>,
    /// [`SubscriptionConfig::batch_bytes`].
    pub batch_bytes: usize,
    /// The steps, in order.
    pub actions: Vec<Action>,
}

/// The model's own filter: the scenario's project names and type patterns, matched by rules
/// written here from the contract (`PROTOCOL.md`), independently of [`Filter::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFilter {
    projects: Option<Vec<&'static str>>,
    types: Option<Vec<String>>,
    sessions: Option<Vec<&'static str>>,
    grant: Option<Vec<&'static str>>,
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
            sessions: scenario
                .sessions
                .as_ref()
                .map(|indices| indices.iter().map(|&s| SESSIONS[s]).collect()),
            grant: scenario
                .tenant
                .as_ref()
                .and_then(|tenant| tenant.grant.as_ref())
                .map(|indices| indices.iter().map(|&p| PROJECTS[p]).collect()),
        }
    }

    /// Whether the request names a project outside the grant (then it is `forbidden`).
    pub fn forbidden(&self) -> bool {
        match (&self.projects, &self.grant) {
            (Some(projects), Some(grant)) => projects.iter().any(|p| !grant.contains(p)),
            _ => false,
        }
    }

    /// Whether a client with this filter is shown an event of `project` and `kind`: its
    /// project is one of the named ones, and its kind equals a pattern, starts with a pattern's
    /// text before a trailing `*`, or a pattern is `*`.
    /// The session must be one of the named ones (a row without one, or with an empty one,
    /// never is), and the project within the grant.
    pub fn matches(&self, project: &str, session: Option<&str>, kind: &str) -> bool {
        let project_ok = match &self.projects {
            None => true,
            Some(projects) => projects.contains(&project),
        };
        let session_ok = match (&self.sessions, session) {
            (None, _) => true,
            (Some(_), None | Some("")) => false,
            (Some(sessions), Some(session)) => sessions.contains(&session),
        };
        let granted = self
            .grant
            .as_ref()
            .is_none_or(|grant| grant.contains(&project));
        let kind_ok = match &self.types {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => kind.starts_with(prefix),
                    None => pattern == kind,
                }),
        };
        project_ok && kind_ok && session_ok && granted
    }
}

impl ModelFilter {
    fn matches_row(&self, row: &EventRow) -> bool {
        self.matches(&row.project_id, row.session_id.as_deref(), &row.kind)
    }
}

/// The model's own implementation of the sealed-id format of `PROTOCOL.md` (AES-SIV of
/// `epoch ‖ seq ‖ tweak`, big-endian, associated data `changefeed sealed id v1`, unpadded
/// base64url), or plain cursors with auth off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIds {
    key: Option<[u8; 32]>,
}

impl ModelIds {
    /// Sealed under `KEY` when auth is on.
    pub fn new(sealed: bool) -> ModelIds {
        ModelIds {
            key: sealed.then_some(KEY),
        }
    }

    /// Whether ids are sealed.
    pub fn sealed(&self) -> bool {
        self.key.is_some()
    }

    /// An id of `(epoch, seq)` as the server would write it.
    pub fn make(&self, epoch: Epoch, seq: Seq, tweak: u64) -> String {
        let Some(key) = self.key else {
            return format!("{:016x}:{}", epoch.0, seq.0);
        };
        let mut plain = Vec::new();
        for word in [epoch.0, seq.0, tweak] {
            plain.extend_from_slice(&word.to_be_bytes());
        }
        let sealed = Aes128Siv::new(&key.into())
            .encrypt([b"changefeed sealed id v1"], &plain)
            .expect("AES-SIV seals");
        Base64UrlUnpadded::encode_string(&sealed)
    }

    /// What a client-sent id means to the model: `Some((epoch, seq))` for a position (epoch
    /// `None` for a bare seq), `None` when the server must call it malformed.
    pub fn read(&self, text: &str) -> Option<(Option<Epoch>, Seq)> {
        let Some(key) = self.key else {
            return Cursor::parse(text).ok().map(|c| (c.epoch, c.seq));
        };
        if text == "0" {
            return Some((None, Seq::ZERO));
        }
        let bytes = Base64UrlUnpadded::decode_vec(text).ok()?;
        let plain = Aes128Siv::new(&key.into())
            .decrypt([b"changefeed sealed id v1"], &bytes)
            .ok()?;
        let word = |i: usize| u64::from_be_bytes(plain[i..i + 8].try_into().unwrap());
        (plain.len() == 24 && word(8) <= Seq::MAX.0).then(|| (Some(Epoch(word(0))), Seq(word(8))))
    }

    /// The seq of an id the server wrote (panics unless it is a position of the modelled log).
    pub fn seq_of(&self, id: &str) -> Seq {
        match self.read(id) {
            Some((Some(epoch), seq)) => {
                assert_eq!(epoch, EPOCH, "id {id:?} of another epoch");
                seq
            }
            other => panic!("bad id {id:?}: {other:?}"),
        }
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
            .filter(|row| row.seq <= head && filter.matches_row(row))
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
    ids: ModelIds,
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

/// The seq of a plain id of the modelled log (panics on anything else).
pub fn seq_of(id: &str) -> Seq {
    ModelIds::new(false).seq_of(id)
}

impl Client {
    fn new(header: Option<&str>, start: Seq, ids: ModelIds) -> Client {
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
            ids,
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
                let after = self.ids.seq_of(&reset.after);
                assert_eq!(reset.after, event.last_event_id);
                let before = self
                    .ids
                    .read(&self.id_before_frame)
                    .filter(|(epoch, _)| epoch.is_none_or(|e| e == EPOCH));
                let current = self.segments.last_mut().unwrap();
                // Only a pruned reset ends a segment the client really held; a cursor of
                // another log, ahead of head or malformed promised nothing.
                current.ended_at = Some(match (reset.reason, before) {
                    (ResetReason::Pruned, Some((_, before))) => before,
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
                assert_eq!(ready.after, event.last_event_id);
                self.ids.seq_of(&ready.after);
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
                let seq = self.ids.seq_of(&event.last_event_id);
                if self.ids.sealed() {
                    assert!(data.get("seq").is_none(), "sealed ids, yet a seq: {data}");
                } else {
                    assert_eq!(data["seq"].as_u64(), Some(seq.0));
                }
                assert_eq!(data["type"], kind);
                let project = data["projectId"].as_str().unwrap();
                let session = data.get("sessionId").map(|s| s.as_str().unwrap());
                assert!(
                    filter.matches(project, session, kind),
                    "leaked {project}/{session:?}/{kind}"
                );
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
    pending_locate: Option<LocateRequest>,
    /// The head read when this connection opened (what a locate counts up to).
    head_at_open: Seq,
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
    /// The request as parsed (what each connection starts from).
    query: EventsQuery,
    /// The access every connection gets.
    access: Access,
    /// `last=` of the request.
    last: Option<u32>,
    /// Ids as the model spells and reads them.
    ids: ModelIds,
    /// Whether the step being applied is a heartbeat tick (the only time a sealed stream may
    /// write a checkpoint that does not end it).
    ticking: bool,
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
                    session_id: SESSIONS.get((seq % 4) as usize).map(|s| s.to_string()),
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
        for &session in scenario.sessions.iter().flatten() {
            query.push(format!("session={}", SESSIONS[session]));
        }
        if let Some(types) = &scenario.types {
            query.push(format!("types={}", types.join(",")));
        }
        let last = match scenario.start {
            StartChoice::Last(n) => Some(n),
            _ => None,
        };
        if let Some(n) = last {
            query.push(format!("last={n}"));
        }
        let ids = ModelIds::new(scenario.tenant.is_some());
        let access = match &scenario.tenant {
            None => Access::open(),
            Some(tenant) => {
                let grant = match &tenant.grant {
                    None => Grant::All,
                    Some(indices) => Grant::projects(indices.iter().map(|&p| PROJECTS[p])),
                };
                Access::tenant(grant, IdKey::from_bytes(KEY), 0x5eed)
            }
        };
        let model_filter = ModelFilter::new(scenario);
        let parsed = EventsQuery::parse_with(Some(&query.join("&")), &access.ids)
            .expect("generated queries are valid");
        let filter = match &scenario.tenant {
            Some(tenant) if tenant.bypass_authorize => parsed.filter.clone(),
            _ => match parsed.authorize(&access.grant) {
                Ok(filter) => {
                    assert!(!model_filter.forbidden(), "authorized outside the grant");
                    filter
                }
                Err(error) => {
                    assert!(
                        model_filter.forbidden(),
                        "forbidden inside the grant: {error}"
                    );
                    assert_eq!(error.code, ErrorCode::Forbidden);
                    assert_eq!(error.status(), 403);
                    // The client drops `project=` and asks for everything it may read.
                    let mut filter = parsed.filter.clone();
                    filter.projects = None;
                    EventsQuery {
                        filter,
                        ..parsed.clone()
                    }
                    .authorize(&access.grant)
                    .expect("no project= is always granted")
                }
            },
        };
        let model_filter =
            if model_filter.forbidden() && !scenario.tenant.as_ref().unwrap().bypass_authorize {
                ModelFilter {
                    projects: None,
                    ..model_filter
                }
            } else {
                model_filter
            };
        let config = SubscriptionConfig {
            heartbeat: Duration::from_millis(1000),
            retry: Duration::from_millis(500),
            max_lifetime: scenario.lifetime.map(Duration::from_millis),
            replay_window: scenario.window,
            max_held: scenario.max_held,
            batch_bytes: scenario.batch_bytes,
        };
        let head = world.head_at_open();
        let (header, start) = match scenario.start {
            StartChoice::Head | StartChoice::Last(_) => (None, head),
            StartChoice::Seq { offset, bare } => {
                let seq = Seq(offset.min(world.head().0));
                let text = if bare {
                    seq.to_string()
                } else {
                    ids.make(EPOCH, seq, 777)
                };
                // A bare seq other than 0 is malformed with sealed ids: it promises nothing.
                let promised = if ids.read(&text).is_some() { seq } else { head };
                (Some(text), promised)
            }
            StartChoice::Ahead => (Some(ids.make(EPOCH, Seq(world.head().0 + 5), 1)), head),
            StartChoice::Foreign => (Some(ids.make(FOREIGN, Seq(1), 1)), head),
            StartChoice::Invalid => (Some("not-a-cursor".to_owned()), head),
            StartChoice::Forged => {
                let mut text = ids.make(EPOCH, Seq(1), 1).into_bytes();
                text[3] = if text[3] == b'a' { b'b' } else { b'a' };
                (Some(String::from_utf8(text).unwrap()), head)
            }
        };
        let mut client = Client::new(header.as_deref(), start, ids.clone());
        client.owed_at_ready = world.owed_at_ready(&model_filter);
        let mut harness = Harness {
            connection: Connection::placeholder(),
            world,
            filter,
            model_filter,
            config,
            query: parsed,
            access,
            last,
            ids,
            ticking: false,
            client,
            now: Duration::ZERO,
        };
        harness.connection = harness.open();
        harness.client.expect_reset_first =
            header.as_deref().is_some_and(|h| !harness.honourable(h));
        harness.drain();
        harness
    }

    fn open(&self) -> Connection {
        let header = self.client.parser.last_event_id();
        let start = self
            .query
            .start_with((!header.is_empty()).then_some(header), &self.access.ids);
        let mut access = self.access.clone();
        // Each connection is a new subscription with its own salt.
        access.salt = access
            .salt
            .wrapping_add(self.now.as_millis() as u64 * 1_000_003);
        Connection {
            subscription: Subscription::with_access(
                start,
                self.filter.clone(),
                access,
                self.world.position(),
                self.config.clone(),
                self.now,
            ),
            live: VecDeque::new(),
            last_live: None,
            wire: VecDeque::new(),
            pending_fetch: None,
            pending_locate: None,
            head_at_open: self.world.head_at_open(),
            closed: false,
        }
    }

    /// The model's answer: can this cursor be honoured exactly?
    fn honourable(&self, header: &str) -> bool {
        let Some((epoch, seq)) = self.ids.read(header) else {
            return false;
        };
        let head = self.world.head_at_open();
        epoch.is_none_or(|e| e == EPOCH) && seq <= head && seq >= self.world.floor
    }

    /// The model's own count for `last=`: the `count`-th newest matching retained row at or
    /// below `upto`.
    fn locate(&self, count: u32, upto: Seq) -> Located {
        let floor = self.world.floor;
        let nth = self.world.log[..self.world.committed]
            .iter()
            .rev()
            .filter(|row| row.seq <= upto && row.seq > floor)
            .filter(|row| self.model_filter.matches_row(row))
            .nth(count as usize - 1)
            .map(|row| row.seq);
        Located { nth, floor }
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
            let position = self
                .ids
                .read(&header)
                .filter(|(epoch, seq)| epoch.is_none_or(|e| e == EPOCH) && *seq <= head);
            let segment = self.client.segments.last_mut().unwrap();
            assert!(segment.received.is_empty());
            if header.is_empty() {
                // With `last=`, the locate answer sets it.
                segment.start = self.world.head_at_open();
            } else if let Some((_, seq)) = position {
                segment.start = seq;
            }
        }
        self.client.reconnecting(expect_reset);
        self.client.owed_at_ready = self.world.owed_at_ready(&self.model_filter);
        self.connection = self.open();
        self.drain();
    }

    /// Moves the subscription's outputs to the wire; a fetch stays pending until answered.
    /// A frame that is not the last of its output must be followed by nothing but further
    /// frames, so the quiet-checkpoint rule applies to each frame of a batch.
    fn drain(&mut self) {
        let mut quiet_checkpoint: Option<Vec<u8>> = None;
        while let Some(output) = self.connection.subscription.poll_output() {
            assert!(!self.connection.closed, "output after Close");
            if let Some(frame) = quiet_checkpoint.take() {
                assert!(
                    matches!(output, Output::Close),
                    "sealed ids: an id-only frame {:?} outside a heartbeat tick",
                    String::from_utf8_lossy(&frame)
                );
            }
            match output {
                Output::Frames { bytes, count } => {
                    let frames = split_frames(&bytes);
                    assert_eq!(frames.len(), count, "the frame count of {bytes:?}");
                    assert!(
                        count == 1
                            || bytes.len() - frames[count - 1].len() < self.config.batch_bytes,
                        "a batch goes out once it reaches batch_bytes, not later"
                    );
                    for frame in frames {
                        if let Some(previous) = quiet_checkpoint.take() {
                            panic!(
                                "sealed ids: an id-only frame {:?} outside a heartbeat tick",
                                String::from_utf8_lossy(&previous)
                            );
                        }
                        let id_only = frame.starts_with(b"id: ")
                            && frame.iter().filter(|&&b| b == b'\n').count() == 2;
                        let comment = frame.starts_with(b":");
                        if self.ids.sealed() && !self.ticking {
                            assert!(!comment, "a heartbeat comment outside a tick");
                            if id_only {
                                // Allowed only as the final checkpoint (lifetime, shutdown).
                                quiet_checkpoint = Some(frame.to_vec());
                            }
                        }
                        if self.ids.sealed() && self.ticking {
                            assert!(!comment, "sealed ids: a checkpoint at every tick");
                        }
                    }
                    self.connection.wire.extend(bytes.iter())
                }
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
                Output::Locate(locate) => {
                    assert_eq!(Some(locate.count), self.last, "locate for last=");
                    assert_eq!(locate.upto, self.connection.head_at_open);
                    assert!(self.connection.pending_locate.is_none(), "two locates");
                    self.connection.pending_locate = Some(locate);
                }
            }
        }
        assert!(
            quiet_checkpoint.is_none(),
            "sealed ids: an id-only frame outside a heartbeat tick, not ending the stream"
        );
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
            Action::AnswerFetch { .. } if self.connection.pending_locate.is_some() => {
                let locate = self.connection.pending_locate.take().unwrap();
                let located = self.locate(locate.count, locate.upto);
                if !self.client.confirmed {
                    let segment = self.client.segments.last_mut().unwrap();
                    // Never above the head read at open (retention may have passed it since:
                    // then the first page reports `pruned`).
                    segment.start = located
                        .nth
                        .map_or(located.floor, Seq::prev)
                        .min(locate.upto);
                }
                self.connection
                    .subscription
                    .handle_located(located, self.now);
            }
            Action::AnswerFetch { sloppy } => {
                if let Some(fetch) = self.connection.pending_fetch.take() {
                    let floor = self.world.floor;
                    let rows = self.world.log[..self.world.committed]
                        .iter()
                        .filter(|row| row.seq > fetch.after && row.seq <= fetch.upto)
                        .filter(|row| row.seq > floor)
                        .filter(|row| sloppy || self.model_filter.matches_row(row))
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
                        self.ticking = true;
                        self.drain();
                        self.ticking = false;
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
            } else if self.connection.pending_fetch.is_some()
                || self.connection.pending_locate.is_some()
            {
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
        let end = self.ids.seq_of(self.client.parser.last_event_id());
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
                .filter(|row| self.model_filter.matches_row(row))
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

impl Connection {
    /// Replaced by the first real connection right after the harness is built.
    fn placeholder() -> Connection {
        Connection {
            subscription: Subscription::new(
                crate::Start::Head,
                Filter::all(),
                LogPosition {
                    epoch: EPOCH,
                    head: Seq::ZERO,
                    floor: Seq::ZERO,
                    published: Seq::ZERO,
                },
                SubscriptionConfig::default(),
                Duration::ZERO,
            ),
            live: VecDeque::new(),
            last_live: None,
            wire: VecDeque::new(),
            pending_fetch: None,
            pending_locate: None,
            head_at_open: Seq::ZERO,
            closed: true,
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

/// The whole frames of one output, by the wire rule (a frame ends at its first blank line;
/// no field line is empty), written here rather than taken from the SSE parser under test.
fn split_frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at + 1 < bytes.len() {
        if bytes[at] == b'\n' && bytes[at + 1] == b'\n' {
            frames.push(&bytes[start..at + 2]);
            start = at + 2;
            at = start;
        } else {
            at += 1;
        }
    }
    assert_eq!(
        start,
        bytes.len(),
        "an output ends with a whole frame: {bytes:?}"
    );
    frames
}
