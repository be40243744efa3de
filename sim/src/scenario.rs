//! One simulated run, fully determined by its seed: a server host (the real router, tailer and
//! broadcaster over the shared [`MemoryStore`], or a sim-assembled variant), writer hosts
//! appending bursts for several projects (and pruning), client hosts running the real
//! [`EventSource`] or typed [`Client`] over turmoil sockets (some with filters, some without a
//! cursor, some slow, stalling, reconnecting or leaving early), and a fault schedule applied
//! between simulation steps: partitions, held links, server crashes and restarts, latency
//! changes. Each client is checked frame by frame ([`Checker`]); at the end every client that
//! stayed must have caught up, and the server must hold no subscription.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changefeed::broadcast::Broadcaster;
use changefeed::client::{Client, ClientConfig, ClientItem, EventSource, SseItem};
use changefeed::http::{AppState, ServerConfig};
use changefeed::metrics::Metrics;
use changefeed::shutdown;
use changefeed::store::memory::MemoryStore;
use changefeed::store::{Retention, Store};
use changefeed::tailer::{Tailer, TailerConfig};
use changefeed_core::{Epoch, Filter, Seq, SubscriptionConfig, TypePattern};
use tokio::time::Instant;

use crate::assembled::{self, Assembled, Variant};
use crate::check::{lock, Checker, Oracle, SharedOracle};
use crate::net::{SimConnector, SimListener};
use crate::rng::Rng;
use crate::store::{SimStore, StoreFault};

const PORT: u16 = 7467;
const SERVER: &str = "server";
const PROJECTS: [&str; 3] = ["p0", "p1", "p2"];
const KINDS: [&str; 6] = [
    "session_created",
    "session_updated",
    "pr_created",
    "pr_updated",
    "pr_check_recorded",
    "project_created",
];

/// Which server runs on the server host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `changefeed::serve` + `AppState::tailer` — the product.
    Real,
    /// The sim-assembled shell ([`assembled`]) in one of its variants.
    Assembled(Variant),
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The seed: every choice of the run derives from it.
    pub seed: u64,
    /// The server.
    pub server: ServerKind,
    /// A planted store bug.
    pub store_fault: StoreFault,
}

impl Options {
    /// The product, unmodified, for `seed`.
    pub fn real(seed: u64) -> Options {
        Options {
            seed,
            server: ServerKind::Real,
            store_fault: StoreFault::None,
        }
    }
}

/// A failed run: what went wrong, and the trace up to it.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The violation or error.
    pub message: String,
    /// The tail of the trace.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.message)?;
        writeln!(f, "last trace entries:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// A completed run.
#[derive(Debug)]
pub struct Outcome {
    /// Everything observable, in order: appends, faults, every client item (with sim time).
    pub trace: Vec<String>,
    /// Per-client summaries.
    pub summary: Vec<String>,
    /// Rows appended.
    pub appended: u64,
    /// What the run exercised.
    pub stats: Stats,
}

type Trace = Arc<Mutex<Vec<String>>>;

fn record(trace: &Trace, line: String) {
    lock(trace).push(format!("{:>7} {line}", turmoil::elapsed().as_millis()));
}

/// Server-side probes (replaced at each server start).
#[derive(Default)]
struct Probe {
    feed: Option<Arc<Broadcaster>>,
    metrics: Option<Arc<Metrics>>,
    /// Counters of the servers that ran before the current one.
    earlier: Stats,
}

impl Probe {
    /// Starts a new server incarnation: folds the previous one's counters into the totals.
    fn replace(&mut self, feed: Arc<Broadcaster>, metrics: Option<Arc<Metrics>>) {
        self.earlier = self.totals();
        self.feed = Some(feed);
        self.metrics = metrics;
    }

    fn totals(&self) -> Stats {
        let mut stats = self.earlier;
        if let Some(metrics) = &self.metrics {
            let snapshot = metrics.snapshot();
            stats.lag_fallbacks += snapshot.lag_fallbacks;
            stats.resets += snapshot.resets;
            stats.replayed_rows += snapshot.replayed_rows;
        }
        stats
    }
}

/// What a run exercised (summed over seeds by the tests, to show the faults bite).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Server: live-feed overflows or lags that fell back to replay.
    pub lag_fallbacks: u64,
    /// Server: reset frames sent.
    pub resets: u64,
    /// Server: rows read by replay pages.
    pub replayed_rows: u64,
    /// Clients: connections opened.
    pub connects: u64,
    /// Clients: change frames received.
    pub changes: u64,
    /// Faults applied (partitions, holds, crashes, restarts, latency changes).
    pub faults: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        self.lag_fallbacks += other.lag_fallbacks;
        self.resets += other.resets;
        self.replayed_rows += other.replayed_rows;
        self.connects += other.connects;
        self.changes += other.changes;
        self.faults += other.faults;
    }
}

#[derive(Debug, Clone)]
enum Fault {
    Partition(usize),
    Repair(usize),
    Hold(usize),
    Release(usize),
    Crash,
    Restart,
    Latency(usize, u64),
    /// Partition the server from every client.
    Isolate,
    /// Repair every server–client link.
    Heal,
}

struct ClientPlan {
    name: String,
    filter: Filter,
    query: String,
    start_kind: u64,
    start_delay: Duration,
    start_pick: u64,
    leave_at: Option<Duration>,
    stalls: Vec<(Duration, Duration)>,
    restarts: Vec<Duration>,
    jitter_seed: u64,
    /// The typed `Client` rather than the raw `EventSource`.
    typed: bool,
    /// A slow reader: pauses this long after each item.
    read_delay: Option<Duration>,
}

fn random_filter(rng: &mut Rng) -> (Filter, String) {
    let mut filter = Filter::all();
    let mut query = Vec::new();
    if rng.chance(50) {
        let mut projects = std::collections::BTreeSet::new();
        for project in PROJECTS {
            if rng.chance(50) {
                projects.insert(project.to_owned());
            }
        }
        if projects.is_empty() {
            projects.insert(rng.pick(&PROJECTS).to_string());
        }
        for project in &projects {
            query.push(format!("project={project}"));
        }
        filter.projects = Some(projects);
    }
    if rng.chance(40) {
        const CHOICES: [&[&str]; 5] = [
            &["pr_*"],
            &["session_created"],
            &["session_*", "pr_updated"],
            &["project_created"],
            &["*"],
        ];
        let patterns: &[&str] = CHOICES[rng.below(CHOICES.len() as u64) as usize];
        query.push(format!("types={}", patterns.join(",")));
        filter.types = Some(
            patterns
                .iter()
                .map(|p| TypePattern::parse(p).expect("valid pattern"))
                .collect(),
        );
    }
    (filter, query.join("&"))
}

/// Runs one seed. `Err` on any invariant violation, host error or panic.
pub fn run(options: Options) -> Result<Outcome, Box<Failure>> {
    let seed = options.seed;
    let mut rng = Rng::new(seed);
    let trace: Trace = Arc::default();
    let fail = |message: String, trace: &Trace| {
        let lines = lock(trace);
        // SIM_TRACE=1 prints the whole trace of a failing run.
        let keep = if std::env::var_os("SIM_TRACE").is_some() {
            lines.len()
        } else {
            30
        };
        let tail = lines[lines.len().saturating_sub(keep)..].to_vec();
        Box::new(Failure {
            seed,
            message,
            trace_tail: tail,
        })
    };

    // The world.
    let tick = Duration::from_millis(*rng.pick(&[1, 2, 5]));
    // Latency is fixed per link (min == max): turmoil draws each message's latency from its
    // RNG in send order, and the order in which a crashing host's sockets send their FINs
    // follows tokio's task ids, which are process-global; with a range, the same seed could
    // give different deliveries in one process and the next. Variety comes from per-link
    // latency changes instead.
    let min_latency = rng.range(0, 20);
    let max_latency = min_latency;
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(seed)
        .tick_duration(tick)
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(min_latency))
        .max_message_latency(Duration::from_millis(max_latency))
        // Segments in flight per socket, and also the listener's backlog: turmoil panics on a
        // full backlog (a kernel would drop the SYN), and held links release their queued SYNs
        // together, so it stays well above the clients' reconnect attempts.
        .tcp_capacity(*rng.pick(&[64, 128]));
    let mut sim = builder.build();

    // The durable log, outside every host.
    let epoch = Epoch(rng.next_u64() | 1);
    let memory = MemoryStore::new(epoch);
    for project in PROJECTS {
        memory.create_project(project);
    }
    let store = SimStore {
        inner: memory,
        fault: options.store_fault,
    };
    let oracle: SharedOracle = Arc::new(Mutex::new(Oracle::default()));

    // Server configuration: small buffers so bursts overflow them.
    let heartbeat = Duration::from_millis(*rng.pick(&[200, 500, 1000]));
    let config = ServerConfig {
        subscription: SubscriptionConfig {
            heartbeat,
            retry: Duration::from_millis(*rng.pick(&[0, 50, 250])),
            max_lifetime: rng
                .chance(20)
                .then(|| Duration::from_millis(rng.range(1_000, 8_000))),
            replay_window: *rng.pick(&[1, 3, 16, 256]),
            max_held: *rng.pick(&[1, 4, 32]),
        },
        broadcast_capacity: *rng.pick(&[1, 4, 16, 256]),
        tailer: TailerConfig {
            batch: *rng.pick(&[1, 5, 64]),
            ..TailerConfig::default()
        },
        coalesce_bytes: *rng.pick(&[1, 512, 65_536]),
        live_drain: *rng.pick(&[0, 3, 256]),
        shutdown_grace: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    record_plain(
        &trace,
        format!(
            "seed {seed} tick {tick:?} latency {min_latency}..{max_latency}ms {:?} server {:?} fault {:?}",
            config, options.server, options.store_fault
        ),
    );

    let probe: Arc<Mutex<Probe>> = Arc::default();
    {
        let store = store.clone();
        let probe = probe.clone();
        let config = config.clone();
        let trace = trace.clone();
        let kind = options.server;
        sim.host(SERVER, move || {
            let store = store.clone();
            let probe = probe.clone();
            let config = config.clone();
            let trace = trace.clone();
            async move {
                // A restarting server applies the start-up epoch rule.
                store.inner.restart();
                record(&trace, "server start".into());
                let (trigger, signal) = shutdown::channel();
                let listener = SimListener::bind(PORT).await?;
                match kind {
                    ServerKind::Real => {
                        let state = AppState::new(store, config, signal.clone()).await?;
                        lock(&probe).replace(state.feed().clone(), Some(state.metrics().clone()));
                        tokio::spawn(state.tailer().run(signal));
                        changefeed::serve(listener, state).await?;
                    }
                    ServerKind::Assembled(variant) => {
                        let bounds = store.bounds().await?;
                        let feed =
                            Arc::new(Broadcaster::new(bounds.head, config.broadcast_capacity));
                        let metrics = Arc::new(Metrics::default());
                        lock(&probe).replace(feed.clone(), None);
                        let tailer = Tailer {
                            store: store.clone(),
                            feed: feed.clone(),
                            epoch: bounds.epoch,
                            metrics,
                            config: config.tailer,
                        };
                        tokio::spawn(tailer.run(signal));
                        let router = assembled::router(Arc::new(Assembled {
                            store,
                            feed,
                            config: config.subscription.clone(),
                            variant,
                            origin: Instant::now(),
                        }));
                        axum::serve(listener, router).await?;
                    }
                }
                drop(trigger);
                Ok(())
            }
        });
    }

    // Writers: bursts for several projects, and retention pruning below slow clients.
    let writers = rng.range(1, 2) as usize;
    let writers_done = Arc::new(AtomicUsize::new(0));
    let clients_done = Arc::new(AtomicUsize::new(0));
    let prune_keep = rng.chance(35).then(|| rng.range(5, 60));
    let mut write_until = Duration::ZERO;
    for w in 0..writers {
        let mut wrng = rng.fork();
        let bursts = wrng.range(5, 40);
        let max_gap = wrng.range(50, 1_500);
        let max_burst = *wrng.pick(&[1, 5, 40]);
        write_until = write_until.max(Duration::from_millis(bursts * max_gap));
        let store = store.clone();
        let oracle = oracle.clone();
        let trace = trace.clone();
        let done = writers_done.clone();
        sim.client(format!("writer{w}"), async move {
            tokio::time::sleep(Duration::from_millis(wrng.range(0, 500))).await;
            for _ in 0..bursts {
                tokio::time::sleep(Duration::from_millis(wrng.range(0, max_gap))).await;
                let n = wrng.range(1, max_burst);
                for _ in 0..n {
                    let project = *wrng.pick(&PROJECTS);
                    let kind = *wrng.pick(&KINDS);
                    let seq = store.inner.append(project, Some("s1"), kind, "{\"k\":1}")?;
                    lock(&oracle)
                        .rows
                        .insert(seq.0, (project.to_owned(), kind.to_owned()));
                    record(&trace, format!("w{w} append {} {project} {kind}", seq.0));
                }
                if let Some(keep) = prune_keep {
                    if wrng.chance(30) {
                        // The store itself never prunes above its published mark (a
                        // row live subscribers were not sent yet); the checks would see it.
                        let retention = Retention {
                            days: None,
                            rows: Some(keep),
                        };
                        let deleted = store.inner.prune(retention, 1_000).await?;
                        let floor = store.inner.bounds().await?.floor;
                        lock(&oracle).floor = floor.0;
                        record(&trace, format!("w{w} prune {deleted} floor {}", floor.0));
                    }
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
            record(&trace, format!("w{w} done"));
            Ok(())
        });
    }

    // Clients.
    let client_count = rng.range(2, 6) as usize;
    let quiet_at = write_until + Duration::from_millis(500);
    let catch_up_by = quiet_at + Duration::from_secs(90);
    let mut checkers = Vec::new();
    for i in 0..client_count {
        let mut crng = rng.fork();
        let (filter, query) = random_filter(&mut crng);
        // 0: no cursor (starts at head); 1: from the beginning; 2: from a random logged seq.
        let start_kind = crng.below(3);
        let start_delay = Duration::from_millis(crng.below(horizon_ms(write_until)));
        let start_pick = crng.next_u64();
        let mut stalls = Vec::new();
        let mut restarts = Vec::new();
        let horizon = quiet_at.as_millis() as u64 + 1;
        for _ in 0..crng.range(0, 3) {
            stalls.push((
                Duration::from_millis(crng.below(horizon)),
                Duration::from_millis(crng.range(100, 6_000)),
            ));
        }
        for _ in 0..crng.range(0, 2) {
            restarts.push(Duration::from_millis(crng.below(horizon)));
        }
        stalls.sort();
        restarts.sort();
        let plan = ClientPlan {
            name: format!("c{i}"),
            filter,
            query,
            start_kind,
            start_delay,
            start_pick,
            leave_at: crng
                .chance(25)
                .then(|| Duration::from_millis(crng.below(horizon))),
            stalls,
            restarts,
            jitter_seed: crng.next_u64(),
            typed: crng.chance(50),
            read_delay: crng
                .chance(25)
                .then(|| Duration::from_millis(crng.range(1, 30))),
        };
        let checker = Arc::new(Mutex::new(Checker::new(
            &plan.name,
            plan.filter.clone(),
            epoch,
            None,
            oracle.clone(),
        )));
        checkers.push(checker.clone());
        record_plain(
            &trace,
            format!(
                "{} typed {} slow {:?} query {:?} start {} after {:?} leave {:?} stalls {:?} restarts {:?}",
                plan.name,
                plan.typed,
                plan.read_delay,
                plan.query,
                plan.start_kind,
                plan.start_delay,
                plan.leave_at,
                plan.stalls,
                plan.restarts
            ),
        );
        let trace = trace.clone();
        let oracle = oracle.clone();
        let writers_done = writers_done.clone();
        let clients_done = clients_done.clone();
        sim.client(plan.name.clone(), async move {
            run_client(
                plan,
                heartbeat,
                checker,
                trace,
                oracle,
                writers_done,
                writers,
                epoch,
                catch_up_by,
            )
            .await?;
            // The host stays up (its kernel still answers the server with resets) until the
            // run ends.
            clients_done.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(())
        });
    }

    // Faults, chosen up front, all over by `quiet_at`.
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let horizon = quiet_at.as_millis() as u64 + 1;
    for _ in 0..rng.range(0, 8) {
        let at = rng.below(horizon);
        let length = rng.range(50, 8_000);
        let end = Duration::from_millis((at + length).min(horizon));
        let at = Duration::from_millis(at);
        let c = rng.below(client_count as u64) as usize;
        match rng.below(6) {
            5 => {
                faults.push((at, Fault::Isolate));
                faults.push((end, Fault::Heal));
            }
            0 => {
                faults.push((at, Fault::Partition(c)));
                faults.push((end, Fault::Repair(c)));
            }
            1 => {
                faults.push((at, Fault::Hold(c)));
                faults.push((end, Fault::Release(c)));
            }
            2 => {
                faults.push((at, Fault::Crash));
                faults.push((end, Fault::Restart));
            }
            3 => faults.push((at, Fault::Restart)),
            _ => {
                faults.push((at, Fault::Latency(c, rng.range(0, 400))));
                faults.push((end, Fault::Latency(c, max_latency)));
            }
        }
    }
    faults.sort_by_key(|(at, _)| *at);
    let mut faults = faults.into_iter().peekable();
    let mut server_up = true;
    let mut quiesced = false;
    let mut fault_count = 0;

    install_panic_hook();
    let result = (|| -> Result<(), String> {
        loop {
            let now = sim.elapsed();
            while let Some((at, _)) = faults.peek() {
                if *at > now {
                    break;
                }
                let (_, fault) = faults.next().expect("peeked");
                record_plain(&trace, format!("{:>7} fault {fault:?}", now.as_millis()));
                fault_count += 1;
                match fault {
                    Fault::Partition(c) => sim.partition(SERVER, format!("c{c}")),
                    Fault::Repair(c) => sim.repair(SERVER, format!("c{c}")),
                    Fault::Hold(c) => sim.hold(SERVER, format!("c{c}")),
                    Fault::Release(c) => sim.release(SERVER, format!("c{c}")),
                    Fault::Isolate | Fault::Heal => {
                        for c in 0..client_count {
                            if matches!(fault, Fault::Isolate) {
                                sim.partition(SERVER, format!("c{c}"));
                            } else {
                                sim.repair(SERVER, format!("c{c}"));
                            }
                        }
                    }
                    Fault::Crash => {
                        if server_up {
                            sim.crash(SERVER);
                            server_up = false;
                        }
                    }
                    Fault::Restart => {
                        sim.bounce(SERVER);
                        server_up = true;
                    }
                    Fault::Latency(c, ms) => {
                        set_latency(&sim, &format!("c{c}"), Duration::from_millis(ms))
                    }
                }
            }
            if !quiesced && now >= quiet_at {
                quiesced = true;
                quiesce(&mut sim, &trace, client_count, max_latency, &mut server_up);
            }
            let finished = sim.step().map_err(|e| e.to_string())?;
            if let Some(panic) = take_panic() {
                return Err(format!("panic: {panic}"));
            }
            if finished || clients_done.load(Ordering::SeqCst) == client_count {
                break;
            }
        }
        // Every client has left: once the network is healthy, each server subscription must be
        // gone.
        if !quiesced {
            quiesce(&mut sim, &trace, client_count, max_latency, &mut server_up);
        }
        let settle =
            sim.elapsed() + crate::net::TCP_USER_TIMEOUT + heartbeat * 4 + Duration::from_secs(2);
        while sim.elapsed() < settle {
            sim.step().map_err(|e| e.to_string())?;
            if let Some(panic) = take_panic() {
                return Err(format!("panic: {panic}"));
            }
        }
        let probe = lock(&probe);
        if let Some(feed) = &probe.feed {
            let receivers = feed.receiver_count();
            if receivers != 0 {
                return Err(format!(
                    "{receivers} live-feed receivers remain after every client left"
                ));
            }
        }
        if let Some(metrics) = &probe.metrics {
            let subscribers = metrics.snapshot().subscribers;
            if subscribers != 0 {
                return Err(format!(
                    "changefeed_subscribers is {subscribers} after every client left"
                ));
            }
        }
        Ok(())
    })();
    let mut summary = Vec::new();
    let mut violation = None;
    let mut stats = lock(&probe).totals();
    stats.faults = fault_count;
    for checker in &checkers {
        let checker = lock(checker);
        stats.connects += checker.connects;
        stats.changes += checker.changes;
        summary.push(checker.summary());
        if violation.is_none() {
            violation.clone_from(&checker.violation);
        }
    }
    if let Some(violation) = violation {
        return Err(fail(violation, &trace));
    }
    if let Err(message) = result {
        return Err(fail(message, &trace));
    }
    let appended = lock(&oracle).rows.len() as u64;
    let trace = std::mem::take(&mut *lock(&trace));
    Ok(Outcome {
        trace,
        summary,
        appended,
        stats,
    })
}

/// Ends every fault: links repaired, released and back to the base latency, server running.
fn quiesce(
    sim: &mut turmoil::Sim<'_>,
    trace: &Trace,
    client_count: usize,
    latency: u64,
    server_up: &mut bool,
) {
    record_plain(trace, format!("{:>7} quiesce", sim.elapsed().as_millis()));
    for c in 0..client_count {
        let name = format!("c{c}");
        sim.repair(SERVER, name.as_str());
        sim.release(SERVER, name.as_str());
        set_latency(sim, &name, Duration::from_millis(latency));
    }
    if !*server_up {
        sim.bounce(SERVER);
        *server_up = true;
    }
}

/// Sets the latency of the server–client link, if it exists yet (turmoil creates links on
/// first use and panics on a missing one).
fn set_latency(sim: &turmoil::Sim<'_>, client: &str, latency: Duration) {
    let pair = {
        let (a, b) = (sim.lookup(SERVER), sim.lookup(client));
        if a < b {
            (a, b)
        } else {
            (b, a)
        }
    };
    let mut exists = false;
    sim.links(|links| {
        for link in links {
            exists |= link.pair() == pair;
        }
    });
    if exists {
        sim.set_link_latency(SERVER, client, latency);
    }
}

fn horizon_ms(until: Duration) -> u64 {
    until.as_millis() as u64 + 1
}

fn record_plain(trace: &Trace, line: String) {
    lock(trace).push(line);
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    plan: ClientPlan,
    heartbeat: Duration,
    checker: Arc<Mutex<Checker>>,
    trace: Trace,
    oracle: SharedOracle,
    writers_done: Arc<AtomicUsize>,
    writers: usize,
    epoch: Epoch,
    catch_up_by: Duration,
) -> turmoil::Result {
    let name = plan.name.clone();
    let mut url = format!("http://{SERVER}:{PORT}/api/v1/events");
    if !plan.query.is_empty() {
        url.push('?');
        url.push_str(&plan.query);
    }
    let mut config = ClientConfig::new(url)?;
    config.read_timeout = Some(heartbeat * 3);
    config.reconnect.jitter_seed = plan.jitter_seed;
    config.reconnect.initial_retry = Duration::from_millis(100);
    config.reconnect.max_delay = Duration::from_secs(2);
    tokio::time::sleep(plan.start_delay).await;
    let start = {
        let oracle = lock(&oracle);
        let head = oracle.rows.keys().next_back().copied().unwrap_or(0);
        match plan.start_kind {
            0 => None,
            1 => Some(0),
            // At or above the retention floor, at or below head.
            _ => Some(oracle.floor + plan.start_pick % (head - oracle.floor.min(head) + 1)),
        }
    };
    record(&trace, format!("{name} starts after {start:?}"));
    lock(&checker).set_start(start);
    config.last_event_id =
        start.map(|seq| changefeed_core::Cursor::new(epoch, Seq(seq)).to_string());
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
    async fn next(&mut self) -> Option<Result<Seen, changefeed::client::ClientError>> {
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

thread_local! {
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records any panic on this thread (a host's spawned task included) so the run fails, even
/// where tokio or hyper would swallow it.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANIC.with(|slot| {
                slot.borrow_mut().get_or_insert_with(|| info.to_string());
            });
            previous(info);
        }));
    });
}

fn take_panic() -> Option<String> {
    PANIC.with(|slot| slot.borrow_mut().take())
}
