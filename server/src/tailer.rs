//! The tailer: the one reader of new log rows. It encodes each row once and publishes it to the
//! [`Broadcaster`], so subscribers share the frame bytes and the store sees one tail query no
//! matter how many clients are connected.
//!
//! Loop: subscribe to the store's change signal, read `rows_after(P, batch)`, publish, and when
//! the read comes back short, wait for the signal (race-free: a commit between the read and the
//! wait makes the wait return at once; see [`crate::store::ChangeWatch`]).
//!
//! **Invariant:** rows are published in seq order, each once, starting right after the
//! broadcaster's `P`. SQLite has one writer, so rows become visible in seq order and
//! `seq > P` never skips a row that commits later.
//!
//! The published mark ([`Store::mark_published`]) is persisted at start-up (clients may be
//! served everything up to head by replay), then at most once per `mark_interval` while it
//! moves, and at shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use changefeed_core::{Epoch, EventEncoder, Seq};
use tokio::time::Instant;

use crate::broadcast::Broadcaster;
use crate::metrics::{parse_timestamp_millis, Metrics};
use crate::shutdown::ShutdownSignal;
use crate::store::Store;

/// Tunables of the tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailerConfig {
    /// Rows per read.
    pub batch: usize,
    /// Persist the published mark at most this often while it moves.
    pub mark_interval: Duration,
    /// The longest pause between retries after a store error.
    pub max_backoff: Duration,
}

impl Default for TailerConfig {
    fn default() -> Self {
        TailerConfig {
            batch: 512,
            mark_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The tailer's inputs.
#[derive(Debug)]
pub struct Tailer<S> {
    /// The log to read.
    pub store: S,
    /// Where to publish.
    pub feed: Arc<Broadcaster>,
    /// The epoch frames are encoded with.
    pub epoch: Epoch,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Tunables.
    pub config: TailerConfig,
}

impl<S: Store> Tailer<S> {
    /// Runs until `shutdown`, then persists the published mark and returns it. Store errors are
    /// logged and retried with back-off; they never end the tailer.
    pub async fn run(self, mut shutdown: ShutdownSignal) -> Seq {
        let Tailer {
            store,
            feed,
            epoch,
            metrics,
            config,
        } = self;
        let encoder = EventEncoder::new(epoch);
        let batch = config.batch.max(1);
        let mut changes = store.changes();
        let mut published = feed.published();
        let mut mark = Mark {
            persisted: None,
            next_at: Instant::now(),
        };
        let mut backoff = Duration::from_millis(10);
        tracing::info!(after = published.0, "tailer started");
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let rows = match store.rows_after(published, batch).await {
                Ok(rows) => rows,
                Err(error) => {
                    metrics.store_error();
                    tracing::warn!(%error, retry_in = ?backoff, "tailer: reading new rows failed");
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(config.max_backoff);
                    continue;
                }
            };
            backoff = Duration::from_millis(10);
            let full = rows.len() >= batch;
            if !rows.is_empty() {
                let wall_ms = wall_clock_millis();
                let count = rows.len() as u64;
                for row in &rows {
                    if let (Some(wall), Some(created)) =
                        (wall_ms, parse_timestamp_millis(&row.created_at))
                    {
                        // Millisecond timestamps: allow a little skew either way, skip rows of
                        // another clock domain or from long ago.
                        if created <= wall + 1000 && wall.saturating_sub(created) <= 3_600_000 {
                            metrics.observe_tail_latency(Duration::from_millis(
                                wall.saturating_sub(created),
                            ));
                        }
                    }
                    feed.publish(encoder.encode(row));
                    published = row.seq;
                }
                metrics.published(published.0, count);
                tracing::trace!(count, published = published.0, "tailer published");
            }
            if mark.persisted != Some(published) && Instant::now() >= mark.next_at {
                mark.persist(&store, published, &metrics, config.mark_interval)
                    .await;
            }
            if full {
                continue;
            }
            let mark_due = (mark.persisted != Some(published)).then_some(mark.next_at);
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                _ = changes.changed() => {}
                _ = sleep_until_opt(mark_due) => {
                    mark.persist(&store, published, &metrics, config.mark_interval).await;
                }
            }
        }
        if mark.persisted != Some(published) {
            mark.persist(&store, published, &metrics, config.mark_interval)
                .await;
        }
        tracing::info!(published = published.0, "tailer stopped");
        published
    }
}

struct Mark {
    persisted: Option<Seq>,
    next_at: Instant,
}

impl Mark {
    async fn persist<S: Store>(
        &mut self,
        store: &S,
        seq: Seq,
        metrics: &Metrics,
        interval: Duration,
    ) {
        self.next_at = Instant::now() + interval;
        match store.mark_published(seq).await {
            Ok(()) => self.persisted = Some(seq),
            Err(error) => {
                metrics.store_error();
                tracing::warn!(%error, seq = seq.0, "tailer: persisting the published mark failed");
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The wall clock in Unix milliseconds, for the latency metric only (never for behaviour).
fn wall_clock_millis() -> Option<u64> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|elapsed| u64::try_from(elapsed.as_millis()).ok())
}
