//! The hosts of a run: the server (the product's wiring, [`changefeed::app::start`], and its
//! HTTP transport on a turmoil listener, with a planted bug when asked), the writers (appending
//! to the shared log as triggers would, and pruning), and the clients (the product's clients
//! on turmoil sockets, checked frame by frame).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changefeed::app::{self, App};
use changefeed::broadcast::LiveFeed;
use changefeed::http;
use changefeed::shutdown;
use changefeed::store::{Retention, Store};
use changefeed::ServerConfig;
use changefeed_client::{Client, ClientConfig, ClientItem, EventSource, SseItem};
use changefeed_core::Epoch;

use crate::check::{lock, Checker, SharedOracle, SimIds};
use crate::memory::MemoryStore;
use crate::net::{SimConnector, SimListener};
use crate::plan::{ClientPlan, StartAt, WriterPlan, PORT, SERVER};
use crate::run::{record, Probe, Trace};
use crate::seams::{self, Bug, FaultyStore, LateFeed};

/// What every host of a run shares.
#[derive(Clone)]
pub struct World {
    /// The run's trace.
    pub trace: Trace,
    /// Every row appended, and the retention floor.
    pub oracle: SharedOracle,
    /// Writers that finished.
    pub writers_done: Arc<AtomicUsize>,
    /// How many writers there are.
    pub writers: usize,
    /// The log's epoch at the start.
    pub epoch: Epoch,
    /// Auth on: every client presents its token.
    pub auth: bool,
    /// How the server spells ids (the sim's own reading and writing of them).
    pub ids: SimIds,
    /// The server's heartbeat (clients time out reads after three).
    pub heartbeat: Duration,
    /// By when a client that stayed must have caught up.
    pub catch_up_by: Duration,
}

/// One incarnation of the server host: the store's start-up rule, then the product's wiring
/// and HTTP transport, until the host crashes.
pub async fn server(
    store: MemoryStore,
    config: ServerConfig,
    bug: Bug,
    probe: Arc<Mutex<Probe>>,
    trace: Trace,
) -> turmoil::Result {
    // A restarting server's store applies the start-up epoch rule.
    store.restart();
    record(&trace, "server start".into());
    let (trigger, signal) = shutdown::channel();
    let listener = SimListener::bind(PORT).await?;
    match bug {
        Bug::None => {
            let server = app::start(store, config, signal).await?;
            serve(server, listener, probe, None).await?;
        }
        Bug::DropFirstRow | Bug::StaleHead => {
            let store = FaultyStore { inner: store, bug };
            let server = app::start(store, config, signal).await?;
            serve(server, listener, probe, None).await?;
        }
        Bug::SubscribeLate => {
            let server = app::start_with(store, config, signal, LateFeed::new).await?;
            serve(server, listener, probe, None).await?;
        }
        Bug::DuplicateFrame => {
            let server = app::start(store, config, signal).await?;
            serve(server, listener, probe, Some(seams::duplicating)).await?;
        }
        Bug::GrantBypass => {
            let server = app::start(store, config, signal).await?;
            serve(server, listener, probe, Some(seams::bypassing_grants)).await?;
        }
    }
    drop(trigger);
    Ok(())
}

async fn serve<S: Store, F: LiveFeed>(
    server: App<S, F>,
    listener: SimListener,
    probe: Arc<Mutex<Probe>>,
    proxy: Option<fn(axum::Router) -> axum::Router>,
) -> std::io::Result<()> {
    let state = server.state().clone();
    let feed = state.feed().clone();
    lock(&probe).replace(
        Arc::new(move || feed.receiver_count()),
        state.metrics().clone(),
    );
    let result = if let Some(proxy) = proxy {
        let router = proxy(http::router(state.clone()));
        let grace = state.config().shutdown_grace;
        http::serve_router(listener, router, state.shutdown_signal(), grace).await
    } else {
        http::serve(listener, state).await
    };
    server.stopped().await;
    result
}

/// One writer host: its bursts appended to the shared log (recorded in the oracle at the
/// moment of each append), pruning after some of them.
pub async fn writer(
    plan: WriterPlan,
    index: usize,
    store: MemoryStore,
    prune_keep: Option<u64>,
    world: World,
) -> turmoil::Result {
    tokio::time::sleep(plan.start_delay).await;
    for burst in plan.bursts {
        tokio::time::sleep(burst.gap).await;
        for (project, kind) in burst.rows {
            let seq = store.append(project, Some("s1"), kind, "{\"k\":1}")?;
            lock(&world.oracle)
                .rows
                .insert(seq.0, (project.to_owned(), kind.to_owned()));
            record(
                &world.trace,
                format!("w{index} append {} {project} {kind}", seq.0),
            );
        }
        if let (true, Some(keep)) = (burst.prune, prune_keep) {
            // The store itself never prunes above its published mark (a row live subscribers
            // were not sent yet); the checks would see it.
            let retention = Retention {
                days: None,
                rows: Some(keep),
            };
            let deleted = store.prune(retention, 1_000).await?;
            let floor = store.bounds().await?.floor;
            lock(&world.oracle).floor = floor.0;
            record(
                &world.trace,
                format!("w{index} prune {deleted} floor {}", floor.0),
            );
        }
    }
    world.writers_done.fetch_add(1, Ordering::SeqCst);
    record(&world.trace, format!("w{index} done"));
    Ok(())
}

/// One client host: the product's raw `EventSource` or typed `Client` over turmoil, following
/// its plan (stalls, restarts, slow reads, leaving), every item checked as it arrives. Returns
/// once it left or caught up with the final head.
pub async fn client(
    plan: ClientPlan,
    checker: Arc<Mutex<Checker>>,
    world: World,
) -> turmoil::Result {
    let World {
        trace,
        oracle,
        writers_done,
        writers,
        epoch,
        auth,
        ids,
        heartbeat,
        catch_up_by,
    } = world;
    let name = plan.name.clone();
    let mut url = format!("http://{SERVER}:{PORT}/api/v1/events");
    let query = plan.interest.query();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let mut config = ClientConfig::new(url)?;
    if auth {
        config = config.with_bearer_token(&plan.token());
    }
    config.read_timeout = Some(heartbeat * 3);
    config.reconnect.jitter_seed = plan.jitter_seed;
    config.reconnect.initial_retry = Duration::from_millis(100);
    config.reconnect.max_delay = Duration::from_secs(2);
    tokio::time::sleep(plan.start_delay).await;
    let start = {
        let oracle = lock(&oracle);
        let head = oracle.rows.keys().next_back().copied().unwrap_or(0);
        match plan.start {
            StartAt::Head => None,
            StartAt::Beginning => Some(0),
            // At or above the retention floor, at or below head.
            StartAt::Logged { pick } => {
                Some(oracle.floor + pick % (head - oracle.floor.min(head) + 1))
            }
        }
    };
    record(&trace, format!("{name} starts after {start:?}"));
    lock(&checker).set_start(start);
    // A stored id as the server would have written it (sealed with auth on).
    config.last_event_id = start.map(|seq| ids.make(epoch, seq));
    let mut source = if plan.typed {
        AnyClient::Typed(Client::new(config, SimConnector))
    } else {
        AnyClient::Raw(EventSource::new(config, SimConnector))
    };
    let mut stalls = plan.stalls.into_iter().peekable();
    let mut restarts = plan.restarts.into_iter().peekable();
    let mut seen_cursor = source.last_cursor().map(str::to_owned);
    let violated = |checker: &Arc<Mutex<Checker>>| lock(checker).violation.clone();
    loop {
        let now = turmoil::elapsed();
        if plan.leave_at.is_some_and(|at| now >= at) {
            record(&trace, format!("{name} leaves"));
            return leave(source).await;
        }
        if let Some((at, length)) = stalls.peek().copied() {
            if now >= at {
                stalls.next();
                record(&trace, format!("{name} stalls {length:?}"));
                tokio::time::sleep(length).await;
                continue;
            }
        }
        if restarts.peek().is_some_and(|at| now >= *at) {
            restarts.next();
            record(&trace, format!("{name} restarts its connection"));
            source.restart();
        }
        // A cursor move by id-only frames that no item carried.
        let cursor = source.last_cursor().map(str::to_owned);
        if cursor != seen_cursor {
            if let Some(id) = &cursor {
                lock(&checker).on_position(id);
            }
            seen_cursor = cursor;
        }
        if let Some(violation) = violated(&checker) {
            return Err(violation.into());
        }
        if writers_done.load(Ordering::SeqCst) == writers {
            let head = lock(&oracle).rows.keys().next_back().copied().unwrap_or(0);
            let position = lock(&checker).position();
            if position.is_some_and(|pos| pos >= head) {
                record(&trace, format!("{name} caught up at {head}"));
                return leave(source).await;
            }
            if now >= catch_up_by {
                let mut checker = lock(&checker);
                checker.finish(head);
                return Err(checker.violation.clone().unwrap_or_default().into());
            }
        }
        let item = tokio::select! {
            biased;
            item = source.next() => item,
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let item = match item {
            None => return Err(format!("{name}: the client stopped").into()),
            Some(Err(error)) => return Err(format!("{name}: client error: {error}").into()),
            Some(Ok(item)) => item,
        };
        {
            let mut checker = lock(&checker);
            match &item {
                Seen::Connected => {
                    checker.on_connected();
                    record(&trace, format!("{name} connected"));
                }
                Seen::Reset { id, after, reason } => {
                    record(&trace, format!("{name} reset {id} {reason}"));
                    checker.on_reset(id, after, reason);
                }
                Seen::Ready { id } => {
                    record(&trace, format!("{name} ready {id}"));
                    checker.on_position(id);
                }
                Seen::Change { id, kind, data } => {
                    record(&trace, format!("{name} change {id}"));
                    checker.on_change(id, kind, data);
                }
                Seen::Comment => {}
                Seen::Disconnected(reason) => {
                    record(&trace, format!("{name} disconnected: {reason}"));
                }
                Seen::Malformed(what) => {
                    return Err(format!("{name}: malformed control frame: {what}").into());
                }
            }
        }
        if let Some(delay) = plan.read_delay {
            tokio::time::sleep(delay).await;
        }
        seen_cursor = source.last_cursor().map(str::to_owned);
        if !matches!(
            item,
            Seen::Change { .. } | Seen::Reset { .. } | Seen::Ready { .. }
        ) {
            // Id-only frames before a comment moved the cursor.
            if let Some(id) = seen_cursor.clone() {
                lock(&checker).on_position(&id);
            }
        }
    }
}

/// What a client saw, from either client API.
enum Seen {
    Connected,
    Change {
        id: String,
        kind: String,
        data: String,
    },
    Reset {
        id: String,
        after: String,
        reason: String,
    },
    Ready {
        id: String,
    },
    Comment,
    Disconnected(String),
    Malformed(String),
}

/// The product's raw [`EventSource`] or its typed [`Client`] (chosen per client by the seed).
enum AnyClient {
    Raw(EventSource<SimConnector>),
    Typed(Client<SimConnector>),
}

impl AnyClient {
    async fn next(&mut self) -> Option<Result<Seen, changefeed_client::ClientError>> {
        Some(Ok(match self {
            AnyClient::Raw(source) => match source.next().await? {
                Ok(item) => match item {
                    SseItem::Connected { .. } => Seen::Connected,
                    SseItem::Comment(_) => Seen::Comment,
                    SseItem::Disconnected { reason, .. } => Seen::Disconnected(reason.to_string()),
                    SseItem::Event(event) => {
                        let id = event.last_event_id;
                        match event.event_type.as_str() {
                            changefeed_core::RESET_EVENT => {
                                let (after, reason) =
                                    changefeed_core::Reset::from_json(&event.data)
                                        .map(|reset| {
                                            (reset.after.to_string(), reset.reason.to_string())
                                        })
                                        .unwrap_or_default();
                                Seen::Reset { id, after, reason }
                            }
                            changefeed_core::READY_EVENT => Seen::Ready { id },
                            _ => Seen::Change {
                                id,
                                kind: event.event_type,
                                data: event.data,
                            },
                        }
                    }
                },
                Err(error) => return Some(Err(error)),
            },
            AnyClient::Typed(client) => match client.next().await? {
                Ok(item) => match item {
                    ClientItem::Connected { .. } => Seen::Connected,
                    ClientItem::Comment(_) => Seen::Comment,
                    ClientItem::Disconnected { reason, .. } => {
                        Seen::Disconnected(reason.to_string())
                    }
                    ClientItem::Event(event) => Seen::Change {
                        id: event.id,
                        kind: event.kind,
                        data: event.data,
                    },
                    ClientItem::Reset { after, reason, .. } => Seen::Reset {
                        id: client.last_cursor().unwrap_or("").to_owned(),
                        after,
                        reason,
                    },
                    ClientItem::Ready { .. } => Seen::Ready {
                        id: client.last_cursor().unwrap_or("").to_owned(),
                    },
                    ClientItem::Malformed { error, .. } => Seen::Malformed(error),
                },
                Err(error) => return Some(Err(error)),
            },
        }))
    }

    fn last_cursor(&self) -> Option<&str> {
        match self {
            AnyClient::Raw(source) => source.last_cursor(),
            AnyClient::Typed(client) => client.last_cursor(),
        }
    }

    fn restart(&mut self) {
        match self {
            AnyClient::Raw(source) => source.restart(),
            AnyClient::Typed(client) => client.restart(),
        }
    }

    fn close(&mut self) {
        match self {
            AnyClient::Raw(source) => source.close(),
            AnyClient::Typed(client) => client.close(),
        }
    }
}

/// Closes the client (its connection task is aborted, and the host keeps running, so the
/// socket is dropped and the FIN sent).
async fn leave(mut source: AnyClient) -> turmoil::Result {
    source.close();
    Ok(())
}
