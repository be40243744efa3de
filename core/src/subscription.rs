//! One client's stream as a sans-IO state machine: replay from the store, join the live feed
//! without loss or duplicate, heartbeats, resets and the end of the stream.
//!
//! The wire contract it implements is `PROTOCOL.md` at the repository root.
//!
//! The shell creates a [`Subscription`] right after subscribing to the live feed, passing the
//! last published seq `P` it read *atomically with that subscription* and the store's head read
//! *after* it ([`LogPosition`]). It then
//! feeds inputs (`handle_*`) and, after every input, drains [`Subscription::poll_output`] until
//! it returns `None`: frames to write, [`FetchRequest`]s to answer with
//! [`Subscription::handle_page`], or [`Output::Close`]. It sleeps until
//! [`Subscription::poll_timeout`].
//!
//! ## Positions
//! - `scanned`: the highest seq accounted for — emitted, or known not to match the filter.
//!   Every frame's `id` and every checkpoint carries `scanned`.
//! - `announced`: the last position written in an `id:` field, so heartbeats know whether a
//!   checkpoint is due.
//!
//! ## Invariants (checked by the model property test in `tests/subscription_model.rs`)
//! 1. Change frames are emitted in strictly increasing seq order, each at most once.
//! 2. Every event the filter matches with seq in `(start, scanned]` has been emitted, where
//!    `start` is the effective starting cursor.
//! 3. A cursor that cannot be honoured exactly produces exactly one `changefeed.reset` frame
//!    before anything else; events are never skipped without one.
//! 4. Memory is bounded: at most [`SubscriptionConfig::max_held`] live events are held.
//! 5. `changefeed.ready` comes once, when `scanned` has reached the head read at open: every
//!    matching row committed before the response started is sent before it.
//!
//! ## The join rule (replay-to-live handoff)
//! The replay target is `P` while no live event is held; once live events are held it is
//! `first_held.seq − 1`. Until ready is sent the target is at least the head read at open
//! (`P` lags commits by the tailer's wake-up): live events up to that head are not held, since
//! replay sends them, and their live copies are dropped as duplicates. A cursor-less stream,
//! and one reset to head, starts at that head. Replay pages are seq windows
//! `(scanned, min(scanned + W, target)]`.
//! The subscription goes live only when `scanned` reaches the target, then emits the held
//! events above `scanned`. On overflow of the held buffer or a lag signal it drops what it
//! holds and the target becomes unknown: the next live event that arrives sets it, or, if none
//! arrives, a page whose store head lies within its window shows the gap is closed. The gap is
//! always replayed from the store: never a hole between `scanned` and the first live event.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::event::{frame_capacity, Degraded, Event, EventEncoder, EventRow};
use crate::filter::{Filter, Grant};
use crate::ids::{IdKey, Ids};
use crate::position::{Cursor, Epoch, Seq};
use crate::request::Start;
use crate::sse::FrameBuilder;
use crate::wire::{Ready, Reset};
pub use crate::wire::{ResetReason, READY_EVENT, RESET_EVENT};

/// Tunables of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// Silence after which a heartbeat is written (default 15 s, see `PROTOCOL.md`).
    pub heartbeat: Duration,
    /// The `retry:` the client is told to wait before reconnecting.
    pub retry: Duration,
    /// End the stream (after a final checkpoint) this long after it started.
    pub max_lifetime: Option<Duration>,
    /// The widest seq window one replay page may span.
    pub replay_window: u64,
    /// The most live events held while replay catches up.
    pub max_held: usize,
    /// Frames the subscription encodes itself (replayed rows) are written straight into one
    /// buffer, together with whatever frames follow them, until it holds at least this many
    /// bytes; then it goes out as one [`Output::Frames`]. 0: every frame on its own.
    pub batch_bytes: usize,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(1),
            max_lifetime: None,
            replay_window: 1024,
            max_held: 1024,
            batch_bytes: 0,
        }
    }
}

/// The log as the shell saw it when subscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The log's epoch.
    pub epoch: Epoch,
    /// The store's head, read after `P`: every row at or below it is committed or will never
    /// exist. Cursor-less streams start here and `changefeed.ready` waits until replay reaches
    /// it.
    pub head: Seq,
    /// The retention floor: a cursor below it cannot be honoured.
    pub floor: Seq,
    /// `P`: the last seq the live feed published, read atomically with the live subscription
    /// (every later live event has a greater seq).
    pub published: Seq,
}

/// What a subscription may read and how it spells ids: with auth off everything with plain
/// cursors ([`Access::open`]); with auth on a token's [`Grant`] and sealed ids
/// ([`Access::tenant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The projects the subscriber may read: applied to every replayed and live event, on top
    /// of the filter.
    pub grant: Grant,
    /// How ids are spelled and read. Sealed ids also make checkpoints quiet: with them an
    /// id-only frame is written only at heartbeat ticks (at every tick, each with a fresh id),
    /// never in response to a row this subscriber is not shown.
    pub ids: Ids,
    /// A value unique to this subscription (the shell draws it from its OS random source): the
    /// tweak of every id the subscription writes itself starts here, so no two subscriptions
    /// write the same id for a position.
    pub salt: u64,
}

impl Access {
    /// Auth off: every project, plain cursors.
    pub fn open() -> Access {
        Access {
            grant: Grant::All,
            ids: Ids::Plain,
            salt: 0,
        }
    }

    /// Auth on: `grant`, ids sealed under `key`, tweaks from `salt`.
    pub fn tenant(grant: Grant, key: IdKey, salt: u64) -> Access {
        Access {
            grant,
            ids: Ids::Sealed(key),
            salt,
        }
    }
}

impl Default for Access {
    fn default() -> Access {
        Access::open()
    }
}

/// For `last=<count>`: the shell asks the store for the `count`-th newest row at or below
/// `upto` that the subscription's filter matches exactly (projects, sessions, kinds, and
/// within the grant), and answers with [`Subscription::handle_located`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocateRequest {
    /// How many matching rows the stream should replay.
    pub count: u32,
    /// The highest seq to count from (the head read at open).
    pub upto: Seq,
}

/// The store's answer to a [`LocateRequest`], read in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// The seq of the `count`-th newest matching row at or below `upto`, or `None` when fewer
    /// rows match (then every retained matching row is replayed).
    pub nth: Option<Seq>,
    /// The retention floor in the same transaction.
    pub floor: Seq,
}

/// Rows the shell must read from the store: those matching the filter in `(after, upto]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequest {
    /// Exclusive lower bound.
    pub after: Seq,
    /// Inclusive upper bound.
    pub upto: Seq,
}

/// The store's answer to a [`FetchRequest`], read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPage {
    /// The rows in `(after, upto]` the filter may match, in seq order, as stored: the
    /// subscription re-checks the filter and encodes the matching ones itself.
    pub rows: Vec<EventRow>,
    /// The store's head in the same transaction.
    pub head: Seq,
    /// The retention floor in the same transaction.
    pub floor: Seq,
}

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the client: `count` whole frames, in order (more than one only
    /// with [`SubscriptionConfig::batch_bytes`]).
    Frames {
        /// The frames, each ending with its blank line.
        bytes: Bytes,
        /// How many frames `bytes` holds.
        count: usize,
    },
    /// Read this window from the store and pass the result to [`Subscription::handle_page`].
    Fetch(FetchRequest),
    /// `last=`: find where the stream starts and pass it to [`Subscription::handle_located`].
    /// It comes first, before any frame; shells answer it before writing the response headers
    /// (so [`Subscription::start_id`] is known for `Changefeed-Cursor`).
    Locate(LocateRequest),
    /// End the response (after writing every frame before it).
    Close,
}

/// The room a batch starting with `first` reserves: its frames up to the first that reaches
/// `limit`, as far as `upcoming` has them (one allocation per batch).
fn batch_room(first: &EventRow, upcoming: &[EventRow], limit: usize) -> usize {
    let mut room = frame_capacity(first);
    for next in upcoming {
        if room >= limit {
            break;
        }
        room += frame_capacity(next);
    }
    room
}

/// Why [`Subscription::poll_timeout`] wants to be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutReason {
    /// Nothing written for a heartbeat interval.
    Heartbeat,
    /// The maximum stream lifetime is reached.
    MaxLifetime,
}

/// The phase of a subscription; all transitions live in this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading from the store; live events are held.
    Replaying,
    /// Forwarding live events.
    Live,
    /// Finished; no more output after what is queued.
    Closed,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Rows received from replay pages.
    pub replayed_rows: u64,
    /// Change frames emitted (replayed and live).
    pub change_frames: u64,
    /// Times held live events were dropped (overflow or lag) and the gap replayed instead.
    pub lag_fallbacks: u64,
    /// Reset frames emitted.
    pub resets: u64,
    /// Replayed change frames with a degraded column (`PROTOCOL.md`, "Degraded rows").
    pub degraded_rows: u64,
    /// The last replayed row with a degraded column, and which columns, for the shell's log.
    pub last_degraded: Option<(Seq, Degraded)>,
}

#[derive(Debug)]
enum State {
    Replaying {
        /// `None` after overflow or lag until the gap's end is known.
        target: Option<Seq>,
        /// Consecutive live events (no gap between them), all above `scanned`.
        held: VecDeque<Event>,
        in_flight: Option<FetchRequest>,
    },
    Live,
    Closed,
}

/// One client's stream. See the module documentation for the protocol and its invariants.
#[derive(Debug)]
pub struct Subscription {
    config: SubscriptionConfig,
    filter: Filter,
    grant: Grant,
    encoder: EventEncoder,
    /// Which live frames this subscription may forward ([`Ids::tag`]).
    ids_tag: u64,
    salt: u64,
    /// Ids this subscription wrote itself (their tweaks count up from `salt`).
    announcements: u64,
    /// `last=` waiting for the store's answer: no frame is written before it.
    locating: Option<LocateRequest>,
    /// The first frame's id.
    start_id: Option<String>,
    state: State,
    scanned: Seq,
    announced: Seq,
    /// The highest seq the live feed has delivered. The feed delivers in seq order, so
    /// anything at or below it is a duplicate — also after a lag, where a stale duplicate
    /// taken as the next live event would set the join target past an unreplayed gap.
    live_high: Seq,
    start: Cursor,
    requested: Option<String>,
    ready_sent: bool,
    /// The head read when the stream opened: `changefeed.ready` waits until `scanned` reaches
    /// it, so every row committed before the response started is sent before ready.
    ready_at: Seq,
    change_frames_before_ready: u64,
    started_at: Duration,
    last_write: Duration,
    output: VecDeque<Output>,
    /// Frames queued after everything in `output`, not yet handed out as [`Output::Frames`].
    batch: Vec<u8>,
    batch_frames: usize,
    stats: SubscriptionStats,
}

impl Subscription {
    /// Starts a subscription (see [`Start`] for where it begins). The first frame is queued at
    /// once: `retry` and the effective starting cursor as `id` (combined with the reset event
    /// when the cursor cannot be honoured, so a client never adopts the new cursor without
    /// seeing the reset).
    pub fn new(
        start: Start,
        filter: Filter,
        log: LogPosition,
        config: SubscriptionConfig,
        now: Duration,
    ) -> Subscription {
        Subscription::with_access(start, filter, Access::open(), log, config, now)
    }

    /// [`Subscription::new`] with what the subscriber may read and how ids are spelled. The
    /// filter should come from [`crate::EventsQuery::authorize`]; the grant is applied again to
    /// every event regardless.
    pub fn with_access(
        start: Start,
        filter: Filter,
        access: Access,
        log: LogPosition,
        config: SubscriptionConfig,
        now: Duration,
    ) -> Subscription {
        let head = log.head.max(log.published);
        let at_head = head;
        let mut locating = None;
        let (begin, reset, requested) = match start {
            Start::Head => (at_head, None, None),
            Start::Last { count } => {
                locating = Some(LocateRequest { count, upto: head });
                (at_head, None, None)
            }
            Start::Invalid { raw } => (at_head, Some(ResetReason::InvalidCursor), Some(raw)),
            Start::At { cursor, raw } => {
                let reason = if cursor.epoch.is_some_and(|epoch| epoch != log.epoch) {
                    Some(ResetReason::EpochMismatch)
                } else if cursor.seq > head {
                    Some(ResetReason::AheadOfHead)
                } else if cursor.seq < log.floor {
                    Some(ResetReason::Pruned)
                } else {
                    None
                };
                match reason {
                    Some(_) => (at_head, reason, Some(raw)),
                    None => (cursor.seq, None, Some(raw)),
                }
            }
        };
        let Access { grant, ids, salt } = access;
        let mut subscription = Subscription {
            config,
            filter,
            grant,
            ids_tag: ids.tag(),
            encoder: EventEncoder::with_ids(log.epoch, ids),
            salt,
            announcements: 0,
            locating,
            start_id: None,
            state: State::Replaying {
                target: Some(log.published),
                held: VecDeque::new(),
                in_flight: None,
            },
            scanned: begin,
            announced: begin,
            live_high: log.published,
            start: Cursor::new(log.epoch, begin),
            requested,
            ready_sent: false,
            ready_at: head,
            change_frames_before_ready: 0,
            started_at: now,
            last_write: now,
            output: VecDeque::new(),
            batch: Vec::new(),
            batch_frames: 0,
            stats: SubscriptionStats::default(),
        };
        if let Some(locate) = locating {
            subscription.push_output(Output::Locate(locate));
            return subscription;
        }
        subscription.write_first_frame(reset, now);
        subscription.advance(now);
        subscription
    }

    fn write_first_frame(&mut self, reset: Option<ResetReason>, now: Duration) {
        let first = FrameBuilder::new().retry(self.config.retry.as_millis() as u64);
        let frame = match reset {
            Some(reason) => self.reset_frame(first, reason),
            None => {
                let id = self.announce();
                let frame = first.id(&id).finish();
                self.start_id = Some(id);
                frame
            }
        };
        self.write(frame, now);
    }

    /// The store's answer to the [`Output::Locate`] of a `last=` stream: the stream starts
    /// right before the `count`-th newest matching row (at the floor when fewer match), never
    /// below the floor and never above the head read at open. Ignored unless a locate is
    /// outstanding.
    pub fn handle_located(&mut self, located: Located, now: Duration) {
        self.expire(now);
        let Some(locate) = self.locating.take() else {
            return;
        };
        let begin = located
            .nth
            .map_or(located.floor, Seq::prev)
            .max(located.floor)
            .min(locate.upto);
        self.scanned = begin;
        self.announced = begin;
        self.start = Cursor::new(self.encoder.epoch(), begin);
        self.write_first_frame(None, now);
        self.advance(now);
    }

    /// The effective starting cursor (for logs; with sealed ids the header carries
    /// [`Subscription::start_id`]). For `last=`, final once the locate is answered.
    pub fn start_cursor(&self) -> Cursor {
        self.start
    }

    /// The first frame's id as written (for the `Changefeed-Cursor` header): the starting
    /// cursor, or its sealed id. `None` until a `last=` locate is answered.
    pub fn start_id(&self) -> Option<&str> {
        self.start_id.as_deref()
    }

    /// The highest seq accounted for.
    pub fn position(&self) -> Seq {
        self.scanned
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Replaying { .. } => Phase::Replaying,
            State::Live => Phase::Live,
            State::Closed => Phase::Closed,
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SubscriptionStats {
        self.stats
    }

    /// How many live events are held right now.
    pub fn held(&self) -> usize {
        match &self.state {
            State::Replaying { held, .. } => held.len(),
            _ => 0,
        }
    }

    /// The next thing the shell must do, or `None` when it should wait for an input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.output.pop_front().or_else(|| self.take_batch())
    }

    /// The batch as one output (it always follows everything in `output`).
    fn take_batch(&mut self) -> Option<Output> {
        if self.batch_frames == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.batch_frames);
        let bytes = Bytes::from(std::mem::take(&mut self.batch));
        Some(Output::Frames { bytes, count })
    }

    /// Moves the batch, if any, to the end of `output`.
    fn queue_batch(&mut self) {
        if let Some(batch) = self.take_batch() {
            self.output.push_back(batch);
        }
    }

    /// Queues a non-frame output, after the batch.
    fn push_output(&mut self, output: Output) {
        self.queue_batch();
        self.output.push_back(output);
    }

    /// Hands the batch out once it holds `batch_bytes`.
    fn close_full_batch(&mut self) {
        if self.batch.len() >= self.config.batch_bytes {
            self.queue_batch();
        }
    }

    /// When the shell must call [`Subscription::handle_timeout`], and why.
    pub fn poll_timeout(&self) -> Option<(Duration, TimeoutReason)> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        if self.locating.is_some() {
            // Nothing is written before the first frame: only the lifetime can end it.
            return self
                .config
                .max_lifetime
                .map(|lifetime| (self.started_at + lifetime, TimeoutReason::MaxLifetime));
        }
        let heartbeat = (
            self.last_write + self.config.heartbeat,
            TimeoutReason::Heartbeat,
        );
        match self.config.max_lifetime {
            Some(lifetime) if self.started_at + lifetime <= heartbeat.0 => {
                Some((self.started_at + lifetime, TimeoutReason::MaxLifetime))
            }
            _ => Some(heartbeat),
        }
    }

    /// The store's answer to the outstanding [`FetchRequest`]. A page with no fetch outstanding
    /// is ignored; rows outside the requested window are ignored. The rows are given back, so
    /// the shell may read the next page into their allocations.
    pub fn handle_page(&mut self, page: ReplayPage, now: Duration) -> Vec<EventRow> {
        self.expire(now);
        let owed = self.owed();
        let State::Replaying {
            target, in_flight, ..
        } = &mut self.state
        else {
            return page.rows;
        };
        let Some(fetch) = in_flight.take() else {
            return page.rows;
        };
        if page.floor > fetch.after {
            // Retention pruned rows this replay still needed: say so, then continue from the
            // join target (or the store's head when the target is not known yet).
            let resume = target.unwrap_or(page.head).max(owed).max(self.scanned);
            self.scanned = resume;
            let frame = self.reset_frame(FrameBuilder::new(), ResetReason::Pruned);
            self.write(frame, now);
            self.advance(now);
            return page.rows;
        }
        for (index, row) in page.rows.iter().enumerate() {
            self.stats.replayed_rows += 1;
            if row.seq <= self.scanned || row.seq > fetch.upto {
                continue;
            }
            self.scanned = row.seq;
            if self.shows(&row.project_id, row.session_id.as_deref(), &row.kind) {
                let degraded = self.write_row(row, &page.rows[index + 1..], now);
                if !degraded.is_empty() {
                    self.stats.degraded_rows += 1;
                    self.stats.last_degraded = Some((row.seq, degraded));
                }
            }
        }
        let covered = fetch.upto.min(page.head);
        self.scanned = self.scanned.max(covered);
        if let State::Replaying { target, .. } = &mut self.state {
            if target.is_none() && page.head <= fetch.upto {
                // The store holds nothing beyond this window: the gap is closed.
                *target = Some(self.scanned);
            }
        }
        self.advance(now);
        page.rows
    }

    /// A live event from the broadcaster (in publish order; duplicates and events already
    /// covered by replay are dropped here). Borrowed: the broadcaster's copy is shared by every
    /// subscriber, and only a matching event's frame (or a held event) is cloned.
    pub fn handle_live(&mut self, event: &Event, now: Duration) {
        self.expire(now);
        if event.ids_tag != self.ids_tag {
            // Spelled for another mode (a shell wiring mistake): forwarding it could leak a
            // plain seq, so it counts as lost and the gap is replayed from the store.
            self.handle_lagged(now);
            return;
        }
        if event.seq <= self.live_high.max(self.scanned) {
            return;
        }
        self.live_high = event.seq;
        let owed = self.owed();
        match &mut self.state {
            State::Closed => {}
            State::Live => self.forward_live(event, now),
            State::Replaying { target, held, .. } => {
                if event.seq <= owed {
                    // Replay sends it before ready anyway: not held; its copy is a duplicate.
                } else if held.len() < self.config.max_held {
                    if held.is_empty() {
                        *target = Some(event.seq.prev());
                    }
                    held.push_back(event.clone());
                } else {
                    held.clear();
                    *target = None;
                    self.stats.lag_fallbacks += 1;
                }
                self.advance(now);
            }
        }
    }

    /// Emits a live event above `scanned` (in the Live phase, or held events on joining).
    /// Held events at or below `scanned` were sent by replay: a window asked for while the
    /// target was unknown may reach past the first event held after it.
    fn forward_live(&mut self, event: &Event, now: Duration) {
        if event.seq <= self.scanned {
            return;
        }
        self.scanned = event.seq;
        if self.shows(&event.project_id, event.session_id.as_deref(), &event.kind) {
            self.emit_change(event.frame.clone(), now);
        }
    }

    /// The live feed dropped events for this subscriber: fall back to replaying the gap.
    pub fn handle_lagged(&mut self, now: Duration) {
        self.expire(now);
        match &mut self.state {
            State::Closed => return,
            State::Live => {
                self.state = State::Replaying {
                    target: None,
                    held: VecDeque::new(),
                    in_flight: None,
                };
            }
            State::Replaying { target, held, .. } => {
                held.clear();
                *target = None;
            }
        }
        self.stats.lag_fallbacks += 1;
        self.advance(now);
    }

    /// Time passed: write a heartbeat or end the stream when due.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.fire_due_timers(now);
    }

    /// The server is shutting down: end with a final checkpoint.
    pub fn handle_shutdown(&mut self, now: Duration) {
        self.finish(now);
    }

    /// The one rule for what this subscriber is shown: within the grant and matching the filter.
    fn shows(&self, project_id: &str, session_id: Option<&str>, kind: &str) -> bool {
        self.grant.allows(project_id) && self.filter.matches_event(project_id, session_id, kind)
    }

    /// Marks `scanned` as announced and returns the id to write for it: the cursor, or a sealed
    /// id with a tweak no other announcement uses.
    fn announce(&mut self) -> String {
        self.announced = self.scanned;
        self.announcements += 1;
        let tweak = self.salt.wrapping_add(self.announcements);
        self.encoder
            .ids()
            .spell(Cursor::new(self.encoder.epoch(), self.scanned), tweak)
    }

    /// Queues a frame built elsewhere (a live event's shared frame, a control frame): as it
    /// is, or copied into the batch when one is being filled.
    fn write(&mut self, frame: Bytes, now: Duration) {
        self.last_write = now;
        if self.batch_frames == 0 {
            self.output.push_back(Output::Frames {
                bytes: frame,
                count: 1,
            });
            return;
        }
        self.batch.extend_from_slice(&frame);
        self.batch_frames += 1;
        self.close_full_batch();
    }

    /// Encodes `row`'s change frame straight into the batch. `upcoming` are the rows that may
    /// follow it in this page: a new batch reserves room for as many as it will hold.
    fn write_row(&mut self, row: &EventRow, upcoming: &[EventRow], now: Duration) -> Degraded {
        self.last_write = now;
        self.count_change();
        if self.batch_frames == 0 {
            self.batch
                .reserve(batch_room(row, upcoming, self.config.batch_bytes));
        }
        let degraded = self.encoder.append_frame(&mut self.batch, row);
        self.batch_frames += 1;
        self.close_full_batch();
        degraded
    }

    fn emit_change(&mut self, frame: Bytes, now: Duration) {
        self.count_change();
        self.write(frame, now);
    }

    fn count_change(&mut self) {
        self.stats.change_frames += 1;
        if !self.ready_sent {
            self.change_frames_before_ready += 1;
        }
        self.announced = self.scanned;
    }

    fn reset_frame(&mut self, frame: FrameBuilder, reason: ResetReason) -> Bytes {
        self.stats.resets += 1;
        let after = self.announce();
        if self.start_id.is_none() {
            self.start_id = Some(after.clone());
        }
        let frame = frame.id(&after);
        let data = Reset {
            requested: self.requested.clone().unwrap_or_default(),
            after,
            reason,
        }
        .to_json();
        frame.event(RESET_EVENT).data_line(data.as_bytes()).finish()
    }

    /// Before ready, every join target is at least the head read at open (see
    /// `changefeed.ready` in `PROTOCOL.md`): replay goes on to it even when the live feed is
    /// behind, and the dedup drops the live copies of what replay sent.
    fn owed(&self) -> Seq {
        if self.ready_sent {
            Seq::ZERO
        } else {
            self.ready_at
        }
    }

    /// After every input: go live when the join rule allows, else ask for the next page; then
    /// fire any timer that is already due.
    fn advance(&mut self, now: Duration) {
        if self.locating.is_some() {
            // Live events are held as in any replay; nothing else moves before the start.
            self.fire_due_timers(now);
            return;
        }
        let owed = self.owed();
        if let State::Replaying {
            target,
            held,
            in_flight,
        } = &mut self.state
        {
            if in_flight.is_none() {
                let target = target.map(|target| target.max(owed));
                match target {
                    Some(target) if self.scanned >= target => {
                        let held = std::mem::take(held);
                        self.state = State::Live;
                        for event in &held {
                            self.forward_live(event, now);
                        }
                        if !self.ready_sent {
                            self.ready_sent = true;
                            let frame = self.ready_frame();
                            self.write(frame, now);
                        }
                    }
                    _ => {
                        let window_end = Seq(self
                            .scanned
                            .0
                            .saturating_add(self.config.replay_window.max(1)));
                        let upto = match target {
                            Some(target) => target.min(window_end),
                            None => window_end,
                        };
                        let fetch = FetchRequest {
                            after: self.scanned,
                            upto,
                        };
                        *in_flight = Some(fetch);
                        self.push_output(Output::Fetch(fetch));
                    }
                }
            }
        }
        self.fire_due_timers(now);
    }

    fn ready_frame(&mut self) -> Bytes {
        let after = self.announce();
        let frame = FrameBuilder::new().id(&after);
        let data = Ready {
            after,
            replayed: self.change_frames_before_ready,
            heartbeat_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
        }
        .to_json();
        frame.event(READY_EVENT).data_line(data.as_bytes()).finish()
    }

    fn fire_due_timers(&mut self, now: Duration) {
        let Some((deadline, reason)) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        match reason {
            TimeoutReason::MaxLifetime => self.finish(now),
            TimeoutReason::Heartbeat => {
                // Sealed ids: a checkpoint at every tick, so whether the position moved (rows
                // of other tenants) shows neither in the frame nor in its timing.
                let frame = if self.scanned > self.announced || self.encoder.ids().is_sealed() {
                    self.checkpoint_frame()
                } else {
                    FrameBuilder::new().comment("").finish()
                };
                self.write(frame, now);
            }
        }
    }

    fn checkpoint_frame(&mut self) -> Bytes {
        let id = self.announce();
        FrameBuilder::new().id(&id).finish()
    }

    /// Ends the stream first if its lifetime is over, so no input is processed past it.
    fn expire(&mut self, now: Duration) {
        if let Some(lifetime) = self.config.max_lifetime {
            if now >= self.started_at + lifetime {
                self.finish(now);
            }
        }
    }

    fn finish(&mut self, now: Duration) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.locating.take().is_none() {
            // Before a `last=` start is known there is no position to give.
            let frame = self.checkpoint_frame();
            self.write(frame, now);
        }
        self.state = State::Closed;
        self.push_output(Output::Close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::PayloadCheck;
    use crate::request::EventsQuery;

    const EPOCH: Epoch = Epoch(0xe1);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn row(seq: u64, project: &str, kind: &str) -> EventRow {
        EventRow {
            seq: Seq(seq),
            project_id: project.into(),
            session_id: None,
            kind: kind.into(),
            payload: "{}".into(),
            payload_check: PayloadCheck::Valid,
            created_at: "2026-11-26T00:00:00.000Z".into(),
        }
    }

    fn live(seq: u64, project: &str) -> Event {
        EventEncoder::new(EPOCH).encode(&row(seq, project, "pr_updated"))
    }

    fn log(head: u64, published: u64) -> LogPosition {
        LogPosition {
            epoch: EPOCH,
            head: Seq(head),
            floor: Seq::ZERO,
            published: Seq(published),
        }
    }

    fn config(heartbeat: u64, lifetime: Option<u64>) -> SubscriptionConfig {
        SubscriptionConfig {
            heartbeat: MS(heartbeat),
            retry: MS(250),
            max_lifetime: lifetime.map(MS),
            replay_window: 4,
            max_held: 2,
            batch_bytes: 0,
        }
    }

    fn after(seq: u64) -> Start {
        EventsQuery::parse(Some(&format!("after={seq}")))
            .unwrap()
            .start(None)
    }

    fn project(name: &str) -> Filter {
        EventsQuery::parse(Some(&format!("project={name}")))
            .unwrap()
            .filter
    }

    /// Every output as text: frames verbatim, fetches as `fetch (a, b]`, `close`.
    fn drain(sub: &mut Subscription) -> Vec<String> {
        std::iter::from_fn(|| sub.poll_output())
            .map(|output| match output {
                Output::Frames { bytes, .. } => String::from_utf8(bytes.to_vec()).unwrap(),
                Output::Fetch(fetch) => format!("fetch ({}, {}]", fetch.after, fetch.upto),
                Output::Locate(locate) => format!("locate {} upto {}", locate.count, locate.upto),
                Output::Close => "close".into(),
            })
            .collect()
    }

    fn page(rows: Vec<EventRow>, head: u64) -> ReplayPage {
        ReplayPage {
            rows,
            head: Seq(head),
            floor: Seq::ZERO,
        }
    }

    #[test]
    fn rows_outside_the_window_and_pages_without_a_fetch_are_ignored() {
        let mut sub = Subscription::new(
            after(2),
            Filter::all(),
            log(5, 5),
            config(1000, None),
            MS(0),
        );
        assert_eq!(drain(&mut sub)[1], "fetch (2, 5]");
        sub.handle_page(
            page(
                vec![row(2, "a", "x"), row(3, "a", "x"), row(6, "a", "x")],
                6,
            ),
            MS(1),
        );
        let out = drain(&mut sub);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("id: 00000000000000e1:3\n"), "{out:?}");
        assert!(out[1].contains("event: changefeed.ready"), "{out:?}");
        assert_eq!(sub.position(), Seq(5));
        assert_eq!(sub.stats().replayed_rows, 3, "every row received counts");
        assert_eq!(sub.stats().change_frames, 1);
        sub.handle_page(page(vec![row(7, "a", "x")], 7), MS(2));
        assert!(drain(&mut sub).is_empty(), "no fetch outstanding");
        assert_eq!(sub.position(), Seq(5));
    }

    #[test]
    fn stats_count_what_the_subscription_did() {
        let mut sub =
            Subscription::new(after(0), project("a"), log(3, 3), config(1000, None), MS(0));
        drain(&mut sub);
        let mut broken = row(2, "a", "Bad Kind");
        broken.created_at = "never".into();
        sub.handle_page(
            page(vec![row(1, "a", "x"), broken, row(3, "b", "x")], 3),
            MS(1),
        );
        drain(&mut sub);
        let stats = sub.stats();
        assert_eq!(stats.replayed_rows, 3);
        assert_eq!(
            stats.change_frames, 2,
            "rows 1 and 2 match, row 3 is another project's"
        );
        assert_eq!(stats.degraded_rows, 1);
        assert_eq!(
            stats.last_degraded,
            Some((Seq(2), Degraded::TYPE | Degraded::CREATED_AT))
        );
        assert_eq!((stats.lag_fallbacks, stats.resets), (0, 0));
        assert_eq!(sub.phase(), Phase::Live);
        sub.handle_live(&live(4, "a"), MS(2));
        assert_eq!(sub.stats().change_frames, 3);
        sub.handle_lagged(MS(3));
        assert_eq!(sub.phase(), Phase::Replaying);
        assert_eq!(sub.stats().lag_fallbacks, 1);
        // Overflowing the held buffer (two events) is a fallback too.
        for seq in 5..8 {
            sub.handle_live(&live(seq, "a"), MS(4));
        }
        assert_eq!(sub.stats().lag_fallbacks, 2);
        assert_eq!(sub.held(), 0);
        let reset = Subscription::new(
            after(9),
            Filter::all(),
            log(3, 3),
            config(1000, None),
            MS(0),
        );
        assert_eq!(reset.stats().resets, 1);
        assert_eq!(reset.stats().change_frames, 0);
    }

    #[test]
    fn held_events_wait_for_replay_and_count() {
        let mut sub = Subscription::new(
            after(0),
            Filter::all(),
            log(2, 2),
            config(1000, None),
            MS(0),
        );
        assert_eq!(drain(&mut sub)[1], "fetch (0, 2]");
        sub.handle_live(&live(3, "a"), MS(1));
        sub.handle_live(&live(4, "a"), MS(1));
        assert_eq!(sub.held(), 2);
        assert_eq!(sub.phase(), Phase::Replaying);
        sub.handle_page(page(vec![row(1, "a", "x")], 4), MS(2));
        let out = drain(&mut sub);
        let ids: Vec<&str> = out.iter().map(|f| f.lines().next().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "id: 00000000000000e1:1",
                "id: 00000000000000e1:3",
                "id: 00000000000000e1:4",
                "id: 00000000000000e1:4"
            ]
        );
        assert!(out[3].contains("\"replayed\":3"), "{}", out[3]);
        assert_eq!(sub.held(), 0, "nothing is held once live");
    }

    #[test]
    fn lifetime_and_heartbeat_deadlines() {
        let start = MS(500);
        let sub = Subscription::new(
            after(0),
            Filter::all(),
            log(0, 0),
            config(1000, None),
            start,
        );
        assert_eq!(
            sub.poll_timeout(),
            Some((MS(1500), TimeoutReason::Heartbeat))
        );
        for (lifetime, expected) in [
            (999, (MS(1499), TimeoutReason::MaxLifetime)),
            (1000, (MS(1500), TimeoutReason::MaxLifetime)),
            (1001, (MS(1500), TimeoutReason::Heartbeat)),
        ] {
            let sub = Subscription::new(
                after(0),
                Filter::all(),
                log(0, 0),
                config(1000, Some(lifetime)),
                start,
            );
            assert_eq!(sub.poll_timeout(), Some(expected), "lifetime {lifetime}");
        }
    }

    #[test]
    fn a_lifetime_due_with_a_heartbeat_ends_the_stream_without_the_heartbeat() {
        let mut sub = Subscription::new(
            after(0),
            Filter::all(),
            log(0, 0),
            config(1000, Some(1000)),
            MS(500),
        );
        drain(&mut sub);
        sub.handle_timeout(MS(1500));
        assert_eq!(
            drain(&mut sub),
            ["id: 00000000000000e1:0\n\n", "close"],
            "the final checkpoint and the end, no heartbeat comment"
        );
        assert_eq!(sub.poll_timeout(), None);
        assert_eq!(sub.phase(), Phase::Closed);
        sub.handle_timeout(MS(9000));
        sub.handle_shutdown(MS(9000));
        assert!(drain(&mut sub).is_empty(), "nothing after close");
    }

    #[test]
    fn inputs_after_the_lifetime_end_the_stream_first() {
        let mut sub = Subscription::new(
            after(0),
            Filter::all(),
            log(0, 0),
            config(1000, Some(800)),
            MS(100),
        );
        drain(&mut sub);
        sub.handle_live(&live(1, "a"), MS(900));
        assert_eq!(drain(&mut sub), ["id: 00000000000000e1:0\n\n", "close"]);
        let mut sub = Subscription::new(
            after(0),
            Filter::all(),
            log(0, 0),
            config(1000, Some(800)),
            MS(100),
        );
        drain(&mut sub);
        sub.handle_live(&live(1, "a"), MS(899));
        assert_eq!(
            drain(&mut sub).len(),
            1,
            "one millisecond before the end: the event"
        );
    }

    #[test]
    fn heartbeats_are_comments_or_checkpoints() {
        let mut sub =
            Subscription::new(after(0), project("a"), log(0, 0), config(1000, None), MS(0));
        drain(&mut sub);
        sub.handle_timeout(MS(999));
        assert!(drain(&mut sub).is_empty(), "not due yet");
        sub.handle_timeout(MS(1000));
        assert_eq!(drain(&mut sub), [":\n\n"]);
        sub.handle_live(&live(1, "b"), MS(1500));
        assert!(
            drain(&mut sub).is_empty(),
            "another project's event is not shown"
        );
        assert_eq!(
            sub.poll_timeout(),
            Some((MS(2000), TimeoutReason::Heartbeat))
        );
        sub.handle_timeout(MS(2000));
        assert_eq!(drain(&mut sub), ["id: 00000000000000e1:1\n\n"]);
        sub.handle_timeout(MS(3000));
        assert_eq!(drain(&mut sub), [":\n\n"], "the position was announced");
    }

    fn sealed() -> (Access, IdKey) {
        let key = IdKey::from_bytes([8; 32]);
        (Access::tenant(Grant::projects(["a"]), key.clone(), 10), key)
    }

    #[test]
    fn a_frame_spelled_for_another_mode_is_never_forwarded() {
        let (access, key) = sealed();
        let mut sub = Subscription::with_access(
            Start::Head,
            Filter::all(),
            access,
            log(2, 2),
            config(1000, None),
            MS(0),
        );
        let out = drain(&mut sub);
        assert_eq!(sub.phase(), Phase::Live, "{out:?}");
        // A plain frame (the tailer wired without the key) would leak its seq: it counts as
        // lost, and the gap is replayed from the store with sealed ids.
        sub.handle_live(&live(3, "a"), MS(1));
        assert_eq!(sub.phase(), Phase::Replaying);
        assert_eq!(sub.stats().lag_fallbacks, 1);
        assert_eq!(drain(&mut sub), ["fetch (2, 6]"]);
        sub.handle_page(page(vec![row(3, "a", "x"), row(4, "b", "x")], 4), MS(2));
        let out = drain(&mut sub);
        assert_eq!(out.len(), 1, "{out:?}");
        let id = key.seal(EPOCH, Seq(3), 0);
        assert!(out[0].starts_with(&format!("id: {id}\n")), "{out:?}");
        assert!(!out[0].contains("\"seq\""));
        let sealed_live = EventEncoder::with_ids(EPOCH, Ids::Sealed(key.clone())).encode(&row(
            5,
            "a",
            "pr_updated",
        ));
        sub.handle_live(&sealed_live, MS(3));
        assert_eq!(
            sub.stats().lag_fallbacks,
            1,
            "the right spelling is forwarded"
        );
        assert_eq!(sub.phase(), Phase::Live);
        assert_eq!(drain(&mut sub).len(), 1);
        assert!(sub.start_id().is_some_and(|id| key.open(id).is_some()));
    }

    #[test]
    fn the_grant_holds_even_for_a_filter_that_was_never_authorized() {
        let (access, _) = sealed();
        let mut sub = Subscription::with_access(
            after(0),
            project("b"),
            Access {
                ids: Ids::Plain,
                ..access
            },
            log(2, 2),
            config(1000, None),
            MS(0),
        );
        drain(&mut sub);
        sub.handle_page(page(vec![row(1, "b", "x"), row(2, "a", "x")], 2), MS(1));
        let out = drain(&mut sub);
        assert_eq!(out.len(), 1, "only ready: {out:?}");
        assert!(out[0].contains("changefeed.ready"));
        sub.handle_live(&live(3, "b"), MS(2));
        assert!(drain(&mut sub).is_empty());
    }

    #[test]
    fn locate_edges() {
        let last = |count| Start::Last { count };
        let mut sub =
            Subscription::new(last(2), Filter::all(), log(9, 9), config(1000, None), MS(0));
        assert_eq!(drain(&mut sub), ["locate 2 upto 9"]);
        assert_eq!(sub.start_id(), None);
        assert_eq!(
            sub.poll_timeout(),
            None,
            "no heartbeat before the first frame"
        );
        sub.handle_timeout(MS(5000));
        assert!(drain(&mut sub).is_empty());
        // A floor above the head read at open: start at that head, and the replay's first page
        // reports the pruning.
        sub.handle_located(
            Located {
                nth: None,
                floor: Seq(12),
            },
            MS(5000),
        );
        assert_eq!(sub.start_cursor(), Cursor::new(EPOCH, Seq(9)));
        assert_eq!(sub.start_id(), Some("00000000000000e1:9"));
        let out = drain(&mut sub);
        assert_eq!(out[0], "retry: 250\nid: 00000000000000e1:9\n\n");
        sub.handle_located(
            Located {
                nth: Some(Seq(3)),
                floor: Seq::ZERO,
            },
            MS(5001),
        );
        assert_eq!(sub.start_cursor().seq, Seq(9), "a second answer is ignored");
        // nth at the floor's next row: start at the floor, never below it.
        let mut sub =
            Subscription::new(last(2), Filter::all(), log(9, 9), config(1000, None), MS(0));
        drain(&mut sub);
        sub.handle_located(
            Located {
                nth: Some(Seq(4)),
                floor: Seq(4),
            },
            MS(1),
        );
        assert_eq!(sub.start_cursor().seq, Seq(4));
        assert_eq!(drain(&mut sub)[1], "fetch (4, 8]");
        // Shutdown while locating: nothing to checkpoint, just the end.
        let mut sub = Subscription::new(
            last(1),
            Filter::all(),
            log(9, 9),
            config(1000, Some(900)),
            MS(0),
        );
        drain(&mut sub);
        assert_eq!(
            sub.poll_timeout(),
            Some((MS(900), TimeoutReason::MaxLifetime))
        );
        sub.handle_shutdown(MS(10));
        assert_eq!(drain(&mut sub), ["close"]);
        sub.handle_located(
            Located {
                nth: Some(Seq(9)),
                floor: Seq::ZERO,
            },
            MS(11),
        );
        assert!(drain(&mut sub).is_empty(), "closed");
    }

    /// Every output: frames as (count, text), the rest as [`drain`] spells it.
    fn outputs(sub: &mut Subscription) -> Vec<(usize, String)> {
        std::iter::from_fn(|| sub.poll_output())
            .map(|output| match output {
                Output::Frames { bytes, count } => {
                    (count, String::from_utf8(bytes.to_vec()).unwrap())
                }
                Output::Fetch(fetch) => (0, format!("fetch ({}, {}]", fetch.after, fetch.upto)),
                other => (0, format!("{other:?}")),
            })
            .collect()
    }

    #[test]
    fn replayed_frames_go_out_in_batches_that_end_once_they_reach_batch_bytes() {
        let rows: Vec<EventRow> = (1..=4).map(|seq| row(seq, "a", "x")).collect();
        let replay = |batch_bytes: usize| {
            let mut config = config(1000, None);
            config.batch_bytes = batch_bytes;
            let mut sub = Subscription::new(after(0), Filter::all(), log(4, 4), config, MS(0));
            let mut seen = outputs(&mut sub);
            let back = sub.handle_page(page(rows.clone(), 4), MS(1));
            assert_eq!(back, rows, "the page's rows come back for reuse");
            seen.extend(outputs(&mut sub));
            seen
        };
        let single = replay(0);
        assert!(single.iter().all(|(count, _)| *count <= 1), "{single:?}");
        // retry, fetch, four changes, ready.
        assert_eq!(single.len(), 7, "{single:?}");
        let frame = single[2].1.len();
        assert!(single[2..6].iter().all(|(_, text)| text.len() == frame));
        // Two frames reach the limit exactly: each batch ends there.
        let batched = replay(2 * frame);
        let counts: Vec<usize> = batched.iter().map(|(count, _)| *count).collect();
        assert_eq!(counts, [1, 0, 2, 2, 1], "{batched:?}");
        let joined = |outputs: &[(usize, String)]| -> String {
            outputs.iter().map(|(_, text)| text.as_str()).collect()
        };
        assert_eq!(joined(&batched), joined(&single));
        assert_eq!(batched[2].1, single[2].1.clone() + &single[3].1);
        // One byte more: three changes reach it, and ready joins the fourth.
        let counts: Vec<usize> = replay(2 * frame + 1).iter().map(|(c, _)| *c).collect();
        assert_eq!(counts, [1, 0, 3, 2]);
    }

    #[test]
    fn a_batch_goes_out_before_the_next_fetch_and_a_live_frame_is_not_copied() {
        let mut config = config(1000, None);
        config.replay_window = 2;
        config.batch_bytes = 1 << 20;
        let rows: Vec<EventRow> = (1..=4).map(|seq| row(seq, "a", "x")).collect();
        let mut sub = Subscription::new(after(0), Filter::all(), log(4, 4), config, MS(0));
        let first = outputs(&mut sub);
        assert_eq!((first[0].0, first[1].1.as_str()), (1, "fetch (0, 2]"));
        sub.handle_page(page(rows[..2].to_vec(), 4), MS(1));
        let second = outputs(&mut sub);
        assert_eq!(second.len(), 2, "{second:?}");
        assert_eq!(second[0].0, 2);
        assert!(second[0].1.starts_with("id: "), "{second:?}");
        assert_eq!(second[1].1, "fetch (2, 4]");
        sub.handle_page(page(rows[2..].to_vec(), 4), MS(2));
        let third = outputs(&mut sub);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].0, 3, "two changes and ready: {third:?}");
        assert!(third[0].1.contains(READY_EVENT));
        let event = live(5, "a");
        sub.handle_live(&event, MS(3));
        match sub.poll_output() {
            Some(Output::Frames { bytes, count: 1 }) => {
                assert_eq!(
                    bytes.as_ptr(),
                    event.frame.as_ptr(),
                    "the shared frame itself"
                )
            }
            other => panic!("{other:?}"),
        }
        // Shutdown right after the last page: the batch (two changes, ready and the final
        // checkpoint), then the end.
        let mut batched = self::config(1000, None);
        batched.batch_bytes = 1 << 20;
        let mut sub = Subscription::new(after(0), Filter::all(), log(4, 4), batched, MS(0));
        outputs(&mut sub);
        sub.handle_page(page(rows[..2].to_vec(), 4), MS(1));
        sub.handle_shutdown(MS(2));
        let last = outputs(&mut sub);
        assert_eq!(last.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [4, 0]);
        assert_eq!(last[1].1, "Close");
    }

    #[test]
    fn a_batch_reserves_room_for_the_frames_it_will_hold() {
        let rows: Vec<EventRow> = (1..=4).map(|seq| row(seq, "a", "x")).collect();
        let each = frame_capacity(&rows[0]);
        assert_eq!(batch_room(&rows[0], &rows[1..], 0), each);
        assert_eq!(batch_room(&rows[0], &rows[1..], each), each);
        assert_eq!(batch_room(&rows[0], &rows[1..], each + 1), 2 * each);
        assert_eq!(batch_room(&rows[0], &rows[1..], 2 * each + 1), 3 * each);
        assert_eq!(batch_room(&rows[0], &rows[1..], usize::MAX), 4 * each);
        assert_eq!(batch_room(&rows[0], &[], usize::MAX), each);
    }
}
