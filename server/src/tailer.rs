//! The tailer: the one reader of new log rows. It encodes each row once and publishes it to the
//! [`Broadcaster`], so subscribers share the frame bytes and the store sees one tail query no
//! matter how many clients are connected.
//!
//! Loop: subscribe to the store's change signal, read `rows_after(P, batch)`, publish, and when
//! the read comes back short, wait for the signal (race-free: a commit between the read and the
//! wait makes the wait return at once; see [`crate::store::ChangeWatch`]).
//!
//! **Invariant:** rows are published in seq order, each once, starting right after the feed's
//! `P`, and never past the store's visibility watermark (a [`crate::store::Rows`] holds no row
//! above it): every seq at or below a published row is committed or will never exist, so
//! `seq > P` never skips a row that commits later, however many writers the store has.
//!
//! **Odd rows never stop the feed:** stores decode every value leniently and the core's encoder
//! is total, so a row that cannot be a valid event is published in its degraded form
//! (`PROTOCOL.md`, "Degraded rows"), counted in `changefeed_degraded_rows_total` and logged
//! once with its seq; the rows after it follow.
//!
//! **Errors:** a transient store error is retried with back-off; any other (fatal, bad data, or
//! the log's epoch changing under the server) is retried at the longest back-off and reported
//! through [`TailerHealth`] (so `/healthz` is not `ok` while the feed cannot advance). Nothing is
//! published from a read that failed.
//!
//! The published mark ([`Store::mark_published`]) is persisted at start-up (clients may be
//! served everything up to head by replay), then at most once per `mark_interval` while it
//! moves, and at shutdown.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use changefeed_core::{Epoch, EventEncoder, EventRow, Ids, Seq};
use tokio::time::Instant;

use crate::broadcast::LiveFeed;
use crate::metrics::{parse_timestamp_millis, Metrics};
use crate::shutdown::ShutdownSignal;
use crate::store::{Store, StoreError};

/// Tunables of the tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailerConfig {
    /// Rows per read.
    pub batch: usize,
    /// Persist the published mark at most this often while it moves.
    pub mark_interval: Duration,
    /// The longest pause between retries after a store error.
    pub max_backoff: Duration,
    /// `/healthz` reports the tailer stuck when the feed has been behind the log's head at the
    /// same seq, or reads have kept failing, for longer than this.
    pub stall_after: Duration,
}

impl Default for TailerConfig {
    fn default() -> Self {
        TailerConfig {
            batch: 512,
            mark_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            stall_after: Duration::from_secs(10),
        }
    }
}

/// What keeps the tailer from advancing right now, if anything (read by `/healthz`).
#[derive(Debug, Default)]
pub struct TailerHealth {
    fault: Mutex<Option<TailerFault>>,
    /// The published seq found behind the head, and since when it has been behind there.
    behind: Mutex<Option<(Seq, Instant)>>,
}

/// Why the feed is not healthy (see [`TailerHealth::assess`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Unhealthy {
    /// `stuck` (behind the head without moving), `store_error` (reads failing) or
    /// `database_replaced` (the head went below what was published: another log).
    pub reason: &'static str,
    /// The seq the feed is stuck after.
    pub published: Seq,
    /// Since when.
    pub since: Instant,
    /// For people.
    pub message: String,
}

/// A failure the tailer is retrying.
#[derive(Debug, Clone, PartialEq)]
pub struct TailerFault {
    /// The last error.
    pub error: StoreError,
    /// The seq the feed is stuck after.
    pub published: Seq,
    /// Since when reads have been failing (the first failure of this run of failures).
    pub since: Instant,
}

impl TailerHealth {
    /// The current fault, if the last read failed.
    pub fn fault(&self) -> Option<TailerFault> {
        self.lock().clone()
    }

    /// Whether the feed is healthy given the log's `head` just read and the feed's `published`
    /// seq: not when a fatal or bad-data error is being retried, nor when reads have failed or
    /// the feed has sat behind the head at the same seq for longer than `stall_after`, nor when
    /// the head is below what was published. A feed that is behind but moving, or has nothing
    /// to do, is healthy.
    pub fn assess(
        &self,
        head: Seq,
        published: Seq,
        stall_after: Duration,
    ) -> Result<(), Unhealthy> {
        let now = Instant::now();
        if head < published {
            return Err(Unhealthy {
                reason: "database_replaced",
                published,
                since: now,
                message: format!(
                    "the log's head {} is below the published seq {}: the database was replaced                      or restored under the running server",
                    head.0, published.0
                ),
            });
        }
        if let Some(fault) = self.fault() {
            if !fault.error.is_transient() || now - fault.since > stall_after {
                return Err(Unhealthy {
                    reason: if fault.error.message.contains("replaced")
                        || fault.error.message.contains("epoch changed")
                    {
                        "database_replaced"
                    } else {
                        "store_error"
                    },
                    published: fault.published,
                    since: fault.since,
                    message: format!(
                        "the feed cannot advance past seq {} ({} store error): {}",
                        fault.published.0,
                        fault.error.kind.as_str(),
                        fault.error.message
                    ),
                });
            }
        }
        let mut behind = self.behind.lock().unwrap_or_else(PoisonError::into_inner);
        if head <= published {
            *behind = None;
            return Ok(());
        }
        let since = match *behind {
            Some((seq, since)) if seq == published => since,
            _ => {
                *behind = Some((published, now));
                now
            }
        };
        if now - since > stall_after {
            return Err(Unhealthy {
                reason: "stuck",
                published,
                since,
                message: format!(
                    "the tailer is stuck at seq {} while the log's head is {}",
                    published.0, head.0
                ),
            });
        }
        Ok(())
    }

    fn failed(&self, error: StoreError, published: Seq) {
        let mut fault = self.lock();
        let since = fault
            .as_ref()
            .map_or_else(Instant::now, |fault| fault.since);
        *fault = Some(TailerFault {
            error,
            published,
            since,
        });
    }

    fn recovered(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<TailerFault>> {
        self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The tailer's inputs.
#[derive(Debug)]
pub struct Tailer<S, F> {
    /// The log to read.
    pub store: S,
    /// Where to publish.
    pub feed: Arc<F>,
    /// The epoch frames are encoded with (the log's at start-up).
    pub epoch: Epoch,
    /// How frames spell ids (the same [`Ids`] as the streams', or they treat the frames as
    /// lost and replay them).
    pub ids: Ids,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where failures are reported.
    pub health: Arc<TailerHealth>,
    /// Tunables.
    pub config: TailerConfig,
}

impl<S: Store, F: LiveFeed> Tailer<S, F> {
    /// Runs until `shutdown`, then persists the published mark and returns it. Store errors are
    /// logged, reported and retried with back-off; they never end the tailer.
    pub async fn run(self, mut shutdown: ShutdownSignal) -> Seq {
        let Tailer {
            store,
            feed,
            epoch,
            ids,
            metrics,
            health,
            config,
        } = self;
        let encoder = EventEncoder::with_ids(epoch, ids);
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
            let rows = match read(&store, published, batch, epoch).await {
                Ok(rows) => rows,
                Err(error) => {
                    metrics.store_error();
                    if error.is_transient() {
                        tracing::warn!(%error, retry_in = ?backoff, "tailer: reading new rows failed");
                    } else {
                        // Retrying cannot help until someone acts; do not hammer the store.
                        backoff = config.max_backoff;
                        tracing::error!(%error, after = published.0, retry_in = ?backoff, "tailer: the feed cannot advance");
                    }
                    health.failed(error, published);
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(config.max_backoff);
                    continue;
                }
            };
            health.recovered();
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
                    let event = encoder.encode(row);
                    if !event.degraded.is_empty() || row.project_id.is_empty() {
                        // Each row passes the tailer once: logged once, counted once.
                        metrics.degraded_row();
                        tracing::warn!(
                            seq = row.seq.0,
                            degraded = %event.degraded,
                            no_project = row.project_id.is_empty(),
                            "tailer: published a row in its degraded form"
                        );
                    }
                    feed.publish(event);
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

/// One tail read, refused when the log is not the one being served any more.
async fn read<S: Store>(
    store: &S,
    after: Seq,
    batch: usize,
    epoch: Epoch,
) -> Result<Vec<EventRow>, StoreError> {
    let (rows, bounds) = store.rows_after(after, batch).await?.into_parts();
    if bounds.epoch != epoch {
        return Err(StoreError::fatal(format!(
            "the log's epoch changed from {epoch} to {} under the running server (the database \
             was replaced or restored); restart the server",
            bounds.epoch
        )));
    }
    Ok(rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_feed_behind_but_moving_or_caught_up_is_healthy() {
        let health = TailerHealth::default();
        assert_eq!(health.assess(Seq(5), Seq(5), STALL), Ok(()));
        assert_eq!(health.assess(Seq(9), Seq(5), STALL), Ok(()));
        tokio::time::advance(STALL).await;
        // It moved: the stall clock starts again.
        assert_eq!(health.assess(Seq(9), Seq(6), STALL), Ok(()));
        tokio::time::advance(STALL).await;
        assert_eq!(health.assess(Seq(9), Seq(9), STALL), Ok(()));
        tokio::time::advance(STALL * 3).await;
        assert_eq!(
            health.assess(Seq(9), Seq(9), STALL),
            Ok(()),
            "nothing to do"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_behind_at_the_same_seq_too_long_is_stuck() {
        let health = TailerHealth::default();
        assert_eq!(health.assess(Seq(9), Seq(5), STALL), Ok(()));
        tokio::time::advance(STALL + Duration::from_millis(1)).await;
        let stuck = health.assess(Seq(12), Seq(5), STALL).unwrap_err();
        assert_eq!(stuck.reason, "stuck");
        assert_eq!(stuck.published, Seq(5));
        assert_eq!(
            stuck.message,
            "the tailer is stuck at seq 5 while the log's head is 12"
        );
        assert_eq!(
            Instant::now() - stuck.since,
            STALL + Duration::from_millis(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_below_what_was_published_means_another_database() {
        let health = TailerHealth::default();
        let replaced = health.assess(Seq(3), Seq(7), STALL).unwrap_err();
        assert_eq!(replaced.reason, "database_replaced");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_reads_are_unhealthy_at_once_if_fatal_and_after_the_stall_if_transient() {
        let health = TailerHealth::default();
        health.failed(StoreError::transient("database is locked"), Seq(4));
        assert_eq!(health.assess(Seq(4), Seq(4), STALL), Ok(()));
        tokio::time::advance(STALL + Duration::from_millis(1)).await;
        health.failed(StoreError::transient("database is locked"), Seq(4));
        let failing = health.assess(Seq(4), Seq(4), STALL).unwrap_err();
        assert_eq!(failing.reason, "store_error");
        assert!(
            failing.message.contains("database is locked"),
            "{failing:?}"
        );
        health.recovered();
        assert_eq!(health.assess(Seq(4), Seq(4), STALL), Ok(()));
        health.failed(StoreError::fatal("no such column: payload"), Seq(4));
        assert_eq!(
            health.assess(Seq(4), Seq(4), STALL).unwrap_err().reason,
            "store_error"
        );
        health.failed(
            StoreError::fatal("the database file x.db was replaced by another file"),
            Seq(4),
        );
        assert_eq!(
            health.assess(Seq(4), Seq(4), STALL).unwrap_err().reason,
            "database_replaced"
        );
    }
}
