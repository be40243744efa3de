//! The plan of one run, as a value: [`Scenario::from_seed`] draws every choice up front from a
//! seeded [`fastrand::Rng`] — the network, the server's configuration, what each writer appends
//! and when, what each client asks for and how it behaves, and the fault schedule — so a seed
//! names one run exactly, and a failing seed can print what it ran ([`fmt::Display`]).
//!
//! Only two things are left to the run itself: where a client that starts "at a logged seq"
//! starts (it depends on what the log holds then, so the plan holds the draw, `pick`), and the
//! interleaving turmoil and tokio produce from their own seeded RNGs.

use std::fmt;
use std::time::Duration;

use changefeed::tailer::TailerConfig;
use changefeed::ServerConfig;
use changefeed_core::{Epoch, IdKey, SubscriptionConfig};

use crate::check::{Interest, SimIds};

/// The port the server listens on.
pub const PORT: u16 = 7467;
/// The server host's name.
pub const SERVER: &str = "server";
/// The projects writers write to (all exist in the store).
pub const PROJECTS: [&str; 3] = ["p0", "p1", "p2"];
/// The kinds writers append.
pub const KINDS: [&str; 6] = [
    "session_created",
    "session_updated",
    "pr_created",
    "pr_updated",
    "pr_check_recorded",
    "project_created",
];

/// Everything one run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed everything was drawn from (also turmoil's and tokio's).
    pub seed: u64,
    /// turmoil's tick.
    pub tick: Duration,
    /// The latency of every link, until a fault changes it. Fixed per link (min == max):
    /// turmoil draws a ranged latency per message in send order, and the order in which a
    /// crashing host's sockets send their FINs follows tokio's process-global task ids, so the
    /// same seed could deliver differently in one process and the next.
    pub latency: Duration,
    /// Segments in flight per socket, and the listener's backlog (turmoil panics on a full
    /// backlog where a kernel would drop the SYN; held links release their queued SYNs
    /// together, so it stays well above the clients' reconnect attempts).
    pub tcp_capacity: usize,
    /// The log's epoch at the start.
    pub epoch: Epoch,
    /// The server's configuration: small buffers, so bursts overflow them.
    pub server: ServerConfig,
    /// Faults, in time order, all over by `quiet_at`.
    pub faults: Vec<(Duration, Fault)>,
    /// The writers.
    pub writers: Vec<WriterPlan>,
    /// Writers prune the log down to this many rows now and then (`None`: never).
    pub prune_keep: Option<u64>,
    /// The clients.
    pub clients: Vec<ClientPlan>,
    /// Auth on: every client presents its own token (see [`ClientPlan::grant`]), the server
    /// reads the [`Scenario::tokens_file`] and seals ids with [`Scenario::ids`]' key.
    pub auth: bool,
    /// How the server spells ids (sealed exactly when auth is on).
    pub ids: SimIds,
    /// When the network is made whole and the server brought up for good.
    pub quiet_at: Duration,
    /// By when every client that stayed must have caught up with the final head.
    pub catch_up_by: Duration,
}

/// One writer: bursts of appends, as a domain writer's transactions would produce them.
#[derive(Debug, Clone)]
pub struct WriterPlan {
    /// Its host name.
    pub name: String,
    /// Before the first burst.
    pub start_delay: Duration,
    /// The bursts, in order.
    pub bursts: Vec<Burst>,
}

/// One burst: a pause, then rows appended back to back.
#[derive(Debug, Clone)]
pub struct Burst {
    /// The pause before it.
    pub gap: Duration,
    /// (project, kind) of each row.
    pub rows: Vec<(&'static str, &'static str)>,
    /// Whether the writer prunes after it (to [`Scenario::prune_keep`]).
    pub prune: bool,
}

/// Where a client starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// No cursor: at the head.
    Head,
    /// `after=0`-like: from the beginning.
    Beginning,
    /// At a seq between the retention floor and the head when it starts (`pick` chooses it).
    Logged {
        /// The draw that picks the seq.
        pick: u64,
    },
}

/// One client.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Its host name.
    pub name: String,
    /// What it asks for.
    pub interest: Interest,
    /// Where it starts.
    pub start: StartAt,
    /// When it starts.
    pub start_delay: Duration,
    /// When it leaves for good, if it does.
    pub leave_at: Option<Duration>,
    /// When it stops reading, and for how long.
    pub stalls: Vec<(Duration, Duration)>,
    /// When it drops its connection and reconnects.
    pub restarts: Vec<Duration>,
    /// Its reconnect jitter seed.
    pub jitter_seed: u64,
    /// The typed `Client` rather than the raw `EventSource`.
    pub typed: bool,
    /// A slow reader: pauses this long after each item.
    pub read_delay: Option<Duration>,
    /// With auth on, the projects its token grants (`None`: `*`, every project). Its
    /// `project=` values are within the grant (a 403 would be a configuration error).
    pub grant: Option<Vec<String>>,
}

/// The token of the planted [`crate::seams::Bug::GrantBypass`]: it grants every project.
pub const ROOT_TOKEN: &str = "tok-root";

impl ClientPlan {
    /// The client's bearer token with auth on.
    pub fn token(&self) -> String {
        format!("tok-{}", self.name)
    }
}

/// A fault, applied between simulation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Partition the server from client `c`.
    Partition(usize),
    /// Repair that link.
    Repair(usize),
    /// Hold the server–client link (messages queue).
    Hold(usize),
    /// Release it.
    Release(usize),
    /// Crash the server.
    Crash,
    /// Start the server again (or restart it if it runs).
    Restart,
    /// Set the server–client link's latency, in milliseconds.
    Latency(usize, u64),
    /// Partition the server from every client.
    Isolate,
    /// Repair every server–client link.
    Heal,
}

fn pick<T: Copy>(rng: &mut fastrand::Rng, items: &[T]) -> T {
    items[rng.usize(..items.len())]
}

fn chance(rng: &mut fastrand::Rng, percent: u64) -> bool {
    rng.u64(..100) < percent
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = fastrand::Rng::with_seed(seed);
        let tick = millis(pick(&mut rng, &[1, 2, 5]));
        let latency = millis(rng.u64(0..=20));
        let tcp_capacity = pick(&mut rng, &[64, 128]);
        let epoch = Epoch(rng.u64(..) | 1);
        let mut server = ServerConfig {
            subscription: SubscriptionConfig {
                heartbeat: millis(pick(&mut rng, &[200, 500, 1000])),
                retry: millis(pick(&mut rng, &[0, 50, 250])),
                max_lifetime: chance(&mut rng, 20).then(|| millis(rng.u64(1_000..=8_000))),
                replay_window: pick(&mut rng, &[1, 3, 16, 256]),
                max_held: pick(&mut rng, &[1, 4, 32]),
                batch_bytes: 0,
            },
            broadcast_capacity: pick(&mut rng, &[1, 4, 16, 256]),
            tailer: TailerConfig {
                batch: pick(&mut rng, &[1, 5, 64]),
                ..TailerConfig::default()
            },
            coalesce_bytes: pick(&mut rng, &[1, 512, 65_536]),
            live_drain: pick(&mut rng, &[0, 3, 256]),
            shutdown_grace: Duration::from_secs(1),
            ..ServerConfig::default()
        };

        let prune_keep = chance(&mut rng, 35).then(|| rng.u64(5..=60));
        let mut write_until = Duration::ZERO;
        let writers = (0..rng.usize(1..=2))
            .map(|w| {
                let mut wrng = rng.fork();
                let start_delay = millis(wrng.u64(0..=500));
                let bursts = wrng.u64(5..=40);
                let max_gap = wrng.u64(50..=1_500);
                let max_burst = pick(&mut wrng, &[1, 5, 40]);
                write_until = write_until.max(millis(bursts * max_gap));
                let bursts = (0..bursts)
                    .map(|_| Burst {
                        gap: millis(wrng.u64(0..=max_gap)),
                        rows: (0..wrng.u64(1..=max_burst))
                            .map(|_| (pick(&mut wrng, &PROJECTS), pick(&mut wrng, &KINDS)))
                            .collect(),
                        prune: prune_keep.is_some() && chance(&mut wrng, 30),
                    })
                    .collect();
                WriterPlan {
                    name: format!("writer{w}"),
                    start_delay,
                    bursts,
                }
            })
            .collect();

        let quiet_at = write_until + millis(500);
        let catch_up_by = quiet_at + Duration::from_secs(90);
        let horizon = quiet_at.as_millis() as u64 + 1;
        let mut clients: Vec<ClientPlan> = (0..rng.usize(2..=6))
            .map(|c| {
                let mut crng = rng.fork();
                let interest = random_interest(&mut crng);
                let start = match crng.u64(..3) {
                    0 => StartAt::Head,
                    1 => StartAt::Beginning,
                    _ => StartAt::Logged { pick: crng.u64(..) },
                };
                let start_delay = millis(crng.u64(..write_until.as_millis() as u64 + 1));
                let mut stalls: Vec<(Duration, Duration)> = (0..crng.u64(0..=3))
                    .map(|_| (millis(crng.u64(..horizon)), millis(crng.u64(100..=6_000))))
                    .collect();
                let mut restarts: Vec<Duration> = (0..crng.u64(0..=2))
                    .map(|_| millis(crng.u64(..horizon)))
                    .collect();
                stalls.sort();
                restarts.sort();
                ClientPlan {
                    name: format!("c{c}"),
                    interest,
                    start,
                    start_delay,
                    leave_at: chance(&mut crng, 25).then(|| millis(crng.u64(..horizon))),
                    stalls,
                    restarts,
                    jitter_seed: crng.u64(..),
                    typed: chance(&mut crng, 50),
                    read_delay: chance(&mut crng, 25).then(|| millis(crng.u64(1..=30))),
                    grant: None,
                }
            })
            .collect();

        let mut faults = Vec::new();
        for _ in 0..rng.u64(0..=8) {
            let at = rng.u64(..horizon);
            let end = millis((at + rng.u64(50..=8_000)).min(horizon));
            let at = millis(at);
            let c = rng.usize(..clients.len());
            match rng.u64(..6) {
                0 => faults.extend([(at, Fault::Partition(c)), (end, Fault::Repair(c))]),
                1 => faults.extend([(at, Fault::Hold(c)), (end, Fault::Release(c))]),
                2 => faults.extend([(at, Fault::Crash), (end, Fault::Restart)]),
                3 => faults.push((at, Fault::Restart)),
                4 => faults.extend([
                    (at, Fault::Latency(c, rng.u64(0..=400))),
                    (end, Fault::Latency(c, latency.as_millis() as u64)),
                ]),
                _ => faults.extend([(at, Fault::Isolate), (end, Fault::Heal)]),
            }
        }
        faults.sort_by_key(|(at, _)| *at);

        // Drawn last, from a fork, so the rest of a seed's plan is what it was without auth.
        let mut arng = rng.fork();
        let auth = chance(&mut arng, 40);
        let mut ids = SimIds::Plain;
        if auth {
            let key: [u8; 32] = std::array::from_fn(|_| arng.u8(..));
            ids = SimIds::Sealed(key);
            server.id_key = Some(IdKey::from_bytes(key));
            server.id_salt = Some(arng.u64(..));
            for client in &mut clients {
                if chance(&mut arng, 25) {
                    continue;
                }
                let mut grant: Vec<String> = PROJECTS
                    .iter()
                    .filter(|_| chance(&mut arng, 40))
                    .map(|project| project.to_string())
                    .collect();
                if grant.is_empty() {
                    grant.push(pick(&mut arng, &PROJECTS).to_string());
                }
                if let Some(projects) = &mut client.interest.projects {
                    projects.retain(|project| grant.contains(project));
                    if projects.is_empty() {
                        client.interest.projects = None;
                    }
                }
                client.grant = Some(grant);
            }
        }

        Scenario {
            seed,
            tick,
            latency,
            tcp_capacity,
            epoch,
            server,
            writers,
            prune_keep,
            clients,
            auth,
            ids,
            faults,
            quiet_at,
            catch_up_by,
        }
    }

    /// The tokens file of an auth-on run: each client's token and grant, and [`ROOT_TOKEN`].
    pub fn tokens_file(&self) -> String {
        let mut text = format!("{ROOT_TOKEN} *\n");
        for client in &self.clients {
            let grant = client
                .grant
                .as_ref()
                .map_or("*".to_owned(), |g| g.join(","));
            text.push_str(&format!("{} {grant}\n", client.token()));
        }
        text
    }

    /// How many rows the writers append in all.
    pub fn rows(&self) -> usize {
        self.writers
            .iter()
            .flat_map(|writer| &writer.bursts)
            .map(|burst| burst.rows.len())
            .sum()
    }
}

fn random_interest(rng: &mut fastrand::Rng) -> Interest {
    let mut interest = Interest::default();
    if chance(rng, 50) {
        let mut projects: Vec<String> = PROJECTS
            .iter()
            .filter(|_| chance(rng, 50))
            .map(|project| project.to_string())
            .collect();
        if projects.is_empty() {
            projects.push(pick(rng, &PROJECTS).to_string());
        }
        interest.projects = Some(projects);
    }
    if chance(rng, 40) {
        const CHOICES: [&[&str]; 5] = [
            &["pr_*"],
            &["session_created"],
            &["session_*", "pr_updated"],
            &["project_created"],
            &["*"],
        ];
        let patterns = CHOICES[rng.usize(..CHOICES.len())];
        interest.types = Some(patterns.iter().map(|p| p.to_string()).collect());
    }
    interest
}

/// Milliseconds, for the plan's one-line entries.
fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub = &self.server.subscription;
        writeln!(
            f,
            "seed {}: tick {}ms, latency {}ms, tcp capacity {}, epoch {}, quiet at {}ms, \
             catch up by {}ms",
            self.seed,
            ms(self.tick),
            ms(self.latency),
            self.tcp_capacity,
            self.epoch,
            ms(self.quiet_at),
            ms(self.catch_up_by)
        )?;
        writeln!(
            f,
            "server: heartbeat {}ms, retry {}ms, max lifetime {:?}, replay window {}, max held \
             {}, ring {}, tailer batch {}, coalesce {} B, live drain {}",
            ms(sub.heartbeat),
            ms(sub.retry),
            sub.max_lifetime.map(ms),
            sub.replay_window,
            sub.max_held,
            self.server.broadcast_capacity,
            self.server.tailer.batch,
            self.server.coalesce_bytes,
            self.server.live_drain
        )?;
        if self.auth {
            writeln!(f, "auth: on, sealed ids, salt {:?}", self.server.id_salt)?;
        }
        for writer in &self.writers {
            let rows: usize = writer.bursts.iter().map(|burst| burst.rows.len()).sum();
            let prunes = writer.bursts.iter().filter(|burst| burst.prune).count();
            let longest = writer.bursts.iter().map(|burst| burst.gap).max();
            writeln!(
                f,
                "{}: from {}ms, {} bursts, {rows} rows, longest gap {}ms, prunes {prunes}x to \
                 {:?} rows",
                writer.name,
                ms(writer.start_delay),
                writer.bursts.len(),
                longest.map_or(0, ms),
                self.prune_keep
            )?;
        }
        for client in &self.clients {
            writeln!(
                f,
                "{}: {} client, {}{}, start {:?} at {}ms, leaves {:?}, stalls {:?}, restarts {:?}, \
                 read delay {:?}",
                client.name,
                if client.typed { "typed" } else { "raw" },
                client.interest,
                match (self.auth, &client.grant) {
                    (false, _) => String::new(),
                    (true, None) => " (grant *)".to_owned(),
                    (true, Some(grant)) => format!(" (grant {})", grant.join(",")),
                },
                client.start,
                ms(client.start_delay),
                client.leave_at.map(ms),
                client
                    .stalls
                    .iter()
                    .map(|(at, length)| (ms(*at), ms(*length)))
                    .collect::<Vec<_>>(),
                client.restarts.iter().copied().map(ms).collect::<Vec<_>>(),
                client.read_delay.map(ms)
            )?;
        }
        write!(f, "faults:")?;
        if self.faults.is_empty() {
            write!(f, " none")?;
        }
        for (at, fault) in &self.faults {
            write!(f, " {}ms {fault:?};", ms(*at))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_plan() {
        let first = Scenario::from_seed(42);
        let again = Scenario::from_seed(42);
        assert_eq!(format!("{first:?}"), format!("{again:?}"));
        assert_eq!(first.to_string(), again.to_string());
        assert_ne!(
            format!("{first:?}"),
            format!("{:?}", Scenario::from_seed(43))
        );
        let shown = first.to_string();
        assert!(shown.starts_with("seed 42: "), "{shown}");
        assert!(shown.contains("writer0: "), "{shown}");
        assert!(shown.contains("c0: "), "{shown}");
        assert!(first.rows() > 0);
        assert!(first.faults.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert!(first.faults.iter().all(|(at, _)| *at <= first.quiet_at));
    }
}
