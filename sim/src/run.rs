//! One run of a [`Scenario`]: the turmoil world built from the plan, its hosts started
//! ([`crate::hosts`]), the fault schedule applied between steps ([`crate::faults`]), and the
//! verdict: every client's checker, then — once every client left and the network is whole —
//! no live-feed receiver and no subscriber left on the server.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use changefeed::metrics::Metrics;

use crate::check::{lock, Checker, Oracle, SharedOracle};
use crate::faults::Faults;
use crate::hosts::{self, World};
use crate::memory::MemoryStore;
use crate::plan::{Scenario, PROJECTS, SERVER};
use crate::seams::Bug;

/// The run's trace: every append, fault and client item, with its simulated time.
pub type Trace = Arc<Mutex<Vec<String>>>;

/// Adds a line to the trace, stamped with the simulated time.
pub fn record(trace: &Trace, line: String) {
    lock(trace).push(format!("{:>7} {line}", turmoil::elapsed().as_millis()));
}

fn record_plain(trace: &Trace, line: String) {
    lock(trace).push(line);
}

/// A failed run: what went wrong, the plan, the trace up to it, and how to replay it.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The planted bug, if any.
    pub bug: Bug,
    /// The violation or error.
    pub message: String,
    /// The plan, as printed.
    pub plan: String,
    /// The tail of the trace (all of it with `SIM_TRACE=1`).
    pub trace_tail: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} failed: {}", self.seed, self.message)?;
        writeln!(f, "plan:")?;
        for line in self.plan.lines() {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "last trace entries:")?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        match self.bug {
            Bug::None => writeln!(
                f,
                "replay with: SIM_SEED={} SIM_TRACE=1 scripts/sim.sh",
                self.seed
            ),
            bug => writeln!(
                f,
                "planted bug {bug:?}; replay with: SIM_SEED={} SIM_TRACE=1 scripts/sim.sh",
                self.seed
            ),
        }
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

/// Server-side probes, replaced at each server start.
#[derive(Default)]
pub struct Probe {
    receivers: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
    metrics: Option<Arc<Metrics>>,
    /// Counters of the servers that ran before the current one.
    earlier: Stats,
}

impl Probe {
    /// A new server incarnation (its live feed's receiver count, its counters): folds the
    /// previous one's counters into the totals.
    pub fn replace(
        &mut self,
        receivers: Arc<dyn Fn() -> usize + Send + Sync>,
        metrics: Arc<Metrics>,
    ) {
        self.earlier = self.totals();
        self.receivers = Some(receivers);
        self.metrics = Some(metrics);
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

/// Runs `seed`'s scenario with `bug` planted. `Err` on any invariant violation, host error or
/// panic.
pub fn run_seed(seed: u64, bug: Bug) -> Result<Outcome, Box<Failure>> {
    run(&Scenario::from_seed(seed), bug)
}

/// Runs a scenario with `bug` planted. `Err` on any invariant violation, host error or panic.
pub fn run(scenario: &Scenario, bug: Bug) -> Result<Outcome, Box<Failure>> {
    let trace: Trace = Arc::default();
    let fail = |message: String, trace: &Trace| {
        let lines = lock(trace);
        // SIM_TRACE=1 prints the whole trace of a failing run.
        let keep = if std::env::var_os("SIM_TRACE").is_some() {
            lines.len()
        } else {
            30
        };
        Box::new(Failure {
            seed: scenario.seed,
            bug,
            message,
            plan: scenario.to_string(),
            trace_tail: lines[lines.len().saturating_sub(keep)..].to_vec(),
        })
    };

    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .tick_duration(scenario.tick)
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(scenario.latency)
        .max_message_latency(scenario.latency)
        .tcp_capacity(scenario.tcp_capacity)
        .build();
    record_plain(&trace, format!("{scenario}"));
    record_plain(&trace, format!("bug {bug:?}"));

    // The durable log, outside every host.
    let store = MemoryStore::new(scenario.epoch);
    for project in PROJECTS {
        store.create_project(project);
    }
    let oracle: SharedOracle = Arc::new(Mutex::new(Oracle::default()));
    let world = World {
        trace: trace.clone(),
        oracle: oracle.clone(),
        writers_done: Arc::new(AtomicUsize::new(0)),
        writers: scenario.writers.len(),
        epoch: scenario.epoch,
        auth: scenario.auth,
        ids: scenario.ids,
        heartbeat: scenario.server.subscription.heartbeat,
        catch_up_by: scenario.catch_up_by,
    };

    let probe: Arc<Mutex<Probe>> = Arc::default();
    // Auth on: the server reads the clients' grants from a real tokens file, as `--tokens`.
    let mut config = scenario.server.clone();
    let tokens_dir = tempfile::tempdir().map_err(|error| fail(error.to_string(), &trace))?;
    if scenario.auth {
        config.auth = tokens_auth(tokens_dir.path(), &scenario.tokens_file())
            .map_err(|error| fail(error, &trace))?;
    }
    {
        let (store, probe, trace) = (store.clone(), probe.clone(), trace.clone());
        sim.host(SERVER, move || {
            hosts::server(
                store.clone(),
                config.clone(),
                bug,
                probe.clone(),
                trace.clone(),
            )
        });
    }
    for (index, plan) in scenario.writers.iter().enumerate() {
        let name = plan.name.clone();
        let writer = hosts::writer(
            plan.clone(),
            index,
            store.clone(),
            scenario.prune_keep,
            world.clone(),
        );
        sim.client(name, writer);
    }
    let clients_done = Arc::new(AtomicUsize::new(0));
    let mut checkers = Vec::new();
    for plan in &scenario.clients {
        let checker = Arc::new(Mutex::new(Checker::with_grant(
            &plan.name,
            plan.interest.clone(),
            plan.grant.clone(),
            scenario.ids,
            scenario.epoch,
            None,
            oracle.clone(),
        )));
        checkers.push(checker.clone());
        let (plan, world, done) = (plan.clone(), world.clone(), clients_done.clone());
        sim.client(plan.name.clone(), async move {
            hosts::client(plan, checker, world).await?;
            // The host stays up (its kernel still answers the server with resets) until the
            // run ends.
            done.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(())
        });
    }

    let client_count = scenario.clients.len();
    let mut faults = Faults::new(client_count, scenario.latency);
    let mut schedule = scenario.faults.iter().peekable();
    let mut quiesced = false;
    let mut fault_count = 0;
    install_panic_hook();
    let result = (|| -> Result<(), String> {
        loop {
            let now = sim.elapsed();
            while let Some((_, fault)) = schedule.next_if(|(at, _)| *at <= now) {
                record_plain(&trace, format!("{:>7} fault {fault:?}", now.as_millis()));
                fault_count += 1;
                faults.apply(&mut sim, *fault);
            }
            if !quiesced && now >= scenario.quiet_at {
                quiesced = true;
                record_plain(&trace, format!("{:>7} quiesce", now.as_millis()));
                faults.quiesce(&mut sim);
            }
            let finished = sim.step().map_err(|e| e.to_string())?;
            if let Some(panic) = take_panic() {
                return Err(format!("panic: {panic}"));
            }
            if finished || clients_done.load(Ordering::SeqCst) == client_count {
                break;
            }
        }
        // Every client has left: once the network is whole, each server subscription must be
        // gone.
        if !quiesced {
            record_plain(&trace, format!("{:>7} quiesce", sim.elapsed().as_millis()));
            faults.quiesce(&mut sim);
        }
        let settle = sim.elapsed()
            + crate::net::TCP_USER_TIMEOUT
            + scenario.server.subscription.heartbeat * 4
            + Duration::from_secs(2);
        while sim.elapsed() < settle {
            sim.step().map_err(|e| e.to_string())?;
            if let Some(panic) = take_panic() {
                return Err(format!("panic: {panic}"));
            }
        }
        let probe = lock(&probe);
        if let Some(receivers) = &probe.receivers {
            let receivers = receivers();
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

/// The server's auth from a private tokens file holding `text` in `dir`.
fn tokens_auth(dir: &std::path::Path, text: &str) -> Result<changefeed::auth::Auth, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, text).map_err(|error| error.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| error.to_string())?;
    changefeed::auth::Auth::new(&changefeed::auth::AuthSettings {
        tokens_file: Some(path),
        ..Default::default()
    })
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
