//! The composition root: what a server is configured with ([`ServerConfig`]), the state every
//! transport shares ([`AppState`]), and the one function that wires a running server together
//! for a store ([`start`]): the live feed starting at the log's head, the tailer, the retention
//! janitor, and their shutdown. The binary (`serve`, `demo`), the end-to-end tests and the
//! simulation all start servers through it, then hand the state to a transport
//! ([`crate::http::serve`]).
//!
//! **Boundary:** no IO of its own besides the store reads at start-up; time only through
//! `tokio::time` ([`AppState::now`] is the core's clock). **Invariant:** the feed's `P` starts at
//! the log's head read at start-up (older rows are served by replay), and the tailer reads
//! after it; the tailer and janitor run until the shutdown signal, and [`App::stopped`] returns
//! only after the tailer has persisted the published mark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use changefeed_core::{Access, Epoch, Grant, IdKey, Ids, SubscriptionConfig};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::Auth;
use crate::broadcast::{Broadcaster, LiveFeed, DEFAULT_CAPACITY};
use crate::conn::ConnectionConfig;
use crate::janitor::{self, JanitorConfig};
use crate::metrics::Metrics;
use crate::shutdown::ShutdownSignal;
use crate::store::{Retention, Store, StoreError};
use crate::tailer::{Tailer, TailerConfig, TailerHealth};

/// Everything configurable about a running server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Per-stream protocol settings (heartbeat, retry, lifetime, replay window, held events).
    pub subscription: SubscriptionConfig,
    /// Capacity of the live feed's ring, in events.
    pub broadcast_capacity: usize,
    /// Tailer tunables.
    pub tailer: TailerConfig,
    /// What the janitor prunes (nothing by default).
    pub retention: Retention,
    /// Janitor tunables.
    pub janitor: JanitorConfig,
    /// Frames are concatenated into chunks of up to about this many bytes.
    pub coalesce_bytes: usize,
    /// After a live event wakes a stream, at most this many more are taken from the ring before
    /// the stream yields.
    pub live_drain: usize,
    /// How long shutdown waits for connections to finish before giving up on them.
    pub shutdown_grace: Duration,
    /// Tokens, JWT keys and stream limits (off by default: anyone who can connect reads
    /// every project).
    pub auth: Auth,
    /// The key ids are sealed with while auth is on (`--id-key`; every replica of one log needs
    /// the same). With auth on and no key, a random key for this process: ids then survive
    /// neither a restart nor a switch of replica (the client gets an `invalid_cursor` reset).
    /// Unused with auth off (ids are plain cursors).
    pub id_key: Option<IdKey>,
    /// Where the id tweaks of this server's streams start (see [`AppState::access`]); `None`:
    /// drawn from the OS at start-up. The simulation fixes it so a seed replays exactly.
    pub id_salt: Option<u64>,
    /// Connection timeouts and limits, TLS ([`crate::conn`]).
    pub connection: ConnectionConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            subscription: SubscriptionConfig::default(),
            broadcast_capacity: DEFAULT_CAPACITY,
            tailer: TailerConfig::default(),
            retention: Retention::default(),
            janitor: JanitorConfig::default(),
            coalesce_bytes: 64 * 1024,
            live_drain: 256,
            shutdown_grace: Duration::from_secs(5),
            auth: Auth::off(),
            id_key: None,
            id_salt: None,
            connection: ConnectionConfig::default(),
        }
    }
}

/// The shared state of one running server: the store, the live feed, the counters, the
/// configuration, the shutdown signal and the time base. Cheap to clone.
#[derive(Debug)]
pub struct AppState<S, F = Broadcaster> {
    shared: Arc<Shared<S, F>>,
}

impl<S, F> Clone for AppState<S, F> {
    fn clone(&self) -> Self {
        AppState {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<S, F> {
    store: S,
    feed: Arc<F>,
    epoch: Epoch,
    config: ServerConfig,
    /// How ids are spelled: sealed exactly when auth is on.
    ids: Ids,
    /// The next stream's id salt.
    next_salt: AtomicU64,
    metrics: Arc<Metrics>,
    tailer_health: Arc<TailerHealth>,
    base: Instant,
    shutdown: ShutdownSignal,
}

impl<S, F> AppState<S, F> {
    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The live feed.
    pub fn feed(&self) -> &Arc<F> {
        &self.shared.feed
    }

    /// The log's epoch (read at start-up; frames are encoded with it).
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// How this server spells ids: [`Ids::Sealed`] exactly when auth is on.
    pub fn ids(&self) -> &Ids {
        &self.shared.ids
    }

    /// What a stream may read and how it spells ids: with auth off everything with plain
    /// cursors; with auth on `grant`, sealed ids, and a salt no other stream of this server
    /// uses (streams are spaced 2^32 tweaks apart, more announcements than any stream makes).
    pub fn access(&self, grant: Option<&Grant>) -> Access {
        let grant = grant.cloned().unwrap_or(Grant::All);
        match &self.shared.ids {
            Ids::Sealed(key) => {
                let salt = self.shared.next_salt.fetch_add(1 << 32, Ordering::Relaxed);
                Access::tenant(grant, key.clone(), salt)
            }
            Ids::Plain => Access {
                grant,
                ..Access::open()
            },
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// What keeps the tailer from advancing, if anything.
    pub fn tailer_health(&self) -> &TailerHealth {
        &self.shared.tailer_health
    }

    /// A clone of the shutdown signal.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        self.shared.shutdown.clone()
    }

    /// Time since the state was created, as the core wants it.
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.base)
    }

    /// The instant the core's time `at` stands for.
    pub fn instant_at(&self, at: Duration) -> Instant {
        self.shared.base + at
    }
}

/// A started server: its state (for a transport) and its background tasks.
#[derive(Debug)]
pub struct App<S, F = Broadcaster> {
    state: AppState<S, F>,
    tailer: JoinHandle<changefeed_core::Seq>,
    janitor: JoinHandle<u64>,
}

impl<S, F> App<S, F> {
    /// The state to serve (clone it into each transport).
    pub fn state(&self) -> &AppState<S, F> {
        &self.state
    }

    /// Waits for the background tasks to finish after the shutdown signal fired (the tailer
    /// persists the published mark on its way out). Call it after the transports returned.
    pub async fn stopped(self) {
        if !self.state.shared.shutdown.is_triggered() {
            // A transport that returns on its own (an accept loop failing) stops the rest.
            self.tailer.abort();
            self.janitor.abort();
        }
        if let Err(error) = self.tailer.await {
            if !error.is_cancelled() {
                tracing::error!(%error, "tailer task failed");
            }
        }
        if let Err(error) = self.janitor.await {
            if !error.is_cancelled() {
                tracing::error!(%error, "janitor task failed");
            }
        }
    }
}

/// Starts a server for `store`: reads the log's epoch and head, creates the live feed at that
/// head, and spawns the tailer and the retention janitor, which run until `shutdown` fires.
pub async fn start<S: Store>(
    store: S,
    config: ServerConfig,
    shutdown: ShutdownSignal,
) -> Result<App<S>, StoreError> {
    start_with(store, config, shutdown, |feed| feed).await
}

/// [`start`] with the live feed passed through `wrap` first (the simulation plants bugs at
/// this seam; the product passes the [`Broadcaster`] unchanged).
pub async fn start_with<S: Store, F: LiveFeed>(
    store: S,
    config: ServerConfig,
    shutdown: ShutdownSignal,
    wrap: impl FnOnce(Broadcaster) -> F,
) -> Result<App<S, F>, StoreError> {
    let bounds = store.bounds().await?;
    let ids = if config.auth.enabled() {
        Ids::Sealed(config.id_key.clone().unwrap_or_else(|| {
            tracing::warn!(
                "auth is on without --id-key: ids are sealed with a key of this process only, so \
                 after a restart (or on another replica) clients resume with an invalid_cursor \
                 reset; give every replica the same --id-key FILE"
            );
            IdKey::from_bytes(os_random())
        }))
    } else {
        Ids::Plain
    };
    let first_salt = config
        .id_salt
        .unwrap_or_else(|| u64::from_be_bytes(os_random()));
    let metrics = Arc::new(Metrics::with_collector(store.metrics_collector()));
    metrics.published(bounds.head.0, 0);
    let feed = Arc::new(wrap(Broadcaster::new(
        bounds.head,
        config.broadcast_capacity,
    )));
    let tailer_health = Arc::new(TailerHealth::default());
    let tailer = Tailer {
        store: store.clone(),
        feed: feed.clone(),
        epoch: bounds.epoch,
        ids: ids.clone(),
        metrics: metrics.clone(),
        health: tailer_health.clone(),
        config: config.tailer,
    };
    let tailer = tokio::spawn(tailer.run(shutdown.clone()));
    let janitor = tokio::spawn(janitor::run(
        store.clone(),
        config.retention,
        config.janitor,
        metrics.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        shared: Arc::new(Shared {
            store,
            feed,
            epoch: bounds.epoch,
            config,
            ids,
            next_salt: AtomicU64::new(first_salt),
            metrics,
            tailer_health,
            base: Instant::now(),
            shutdown,
        }),
    };
    Ok(App {
        state,
        tailer,
        janitor,
    })
}

/// Bytes from the operating system's random source (for ids' salts and a per-process key).
fn os_random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    bytes
}
