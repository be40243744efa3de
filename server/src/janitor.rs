//! The retention janitor (`--retain-days`, `--retain-rows`): deletes the oldest log rows that
//! retention allows, in small batches, raising the retention floor as it goes.
//!
//! **When it runs:** whenever the log changes (the store's change watch: a writer's commit, the
//! tailer persisting the published mark — which is what makes newly published rows prunable —
//! or its own deletes), at most once per [`JanitorConfig::interval`], and every
//! [`JanitorConfig::idle`] when nothing changes (age-based retention of a quiet log). So with
//! `--retain-rows N` the table holds N rows plus what was written in the last mark interval
//! and janitor interval (about two seconds), not whatever accumulates between timer ticks.
//!
//! **Boundary:** each batch is one short write transaction of at most [`JanitorConfig::batch`]
//! rows, with a pause between batches, so the single writer is never held long (other writers
//! and the published mark never wait for a big delete), and passes are rate-limited so a busy
//! writer does not pay a pruning transaction per commit. Clients whose cursor falls below the
//! floor get a `pruned` reset from the core.

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::shutdown::ShutdownSignal;
use crate::store::{Retention, Store};

/// Tunables of the janitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JanitorConfig {
    /// Rows deleted per transaction.
    pub batch: usize,
    /// Pause between batches while rows are due.
    pub pause: Duration,
    /// The shortest time between the starts of two passes woken by log changes.
    pub interval: Duration,
    /// The longest wait when nothing is due and nothing changes (or after an error).
    pub idle: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        JanitorConfig {
            batch: 500,
            pause: Duration::from_millis(50),
            interval: Duration::from_secs(1),
            idle: Duration::from_secs(30),
        }
    }
}

/// Prunes `store` by `retention` until `shutdown`. Returns at once when retention keeps
/// everything. Returns the number of rows deleted.
pub async fn run<S: Store>(
    store: S,
    retention: Retention,
    config: JanitorConfig,
    metrics: std::sync::Arc<Metrics>,
    mut shutdown: ShutdownSignal,
) -> u64 {
    if retention.keeps_everything() {
        return 0;
    }
    tracing::info!(days = ?retention.days, rows = ?retention.rows, "retention janitor started");
    // Taken before the first pass: a commit during a pass makes the next wait return at once.
    let mut changes = store.changes();
    let mut total = 0u64;
    loop {
        let pass_started = Instant::now();
        let wait = match store.prune(retention, config.batch.max(1)).await {
            Ok(0) => Wait::ForChange,
            Ok(deleted) => {
                total += deleted;
                tracing::debug!(deleted, total, "janitor pruned rows");
                Wait::Pause
            }
            Err(error) => {
                metrics.store_error();
                if error.is_transient() {
                    tracing::warn!(%error, "janitor: pruning failed; retrying later");
                } else {
                    tracing::error!(%error, "janitor: pruning failed; retrying later");
                }
                Wait::Idle
            }
        };
        let resume_at = match wait {
            Wait::Pause => Instant::now() + config.pause,
            Wait::Idle => Instant::now() + config.idle,
            Wait::ForChange => {
                tokio::select! {
                    biased;
                    _ = shutdown.wait() => break,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(config.idle) => {}
                }
                pass_started + config.interval
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep_until(resume_at) => {}
        }
    }
    tracing::info!(total, "retention janitor stopped");
    total
}

enum Wait {
    /// More rows are due: the next batch after a short pause.
    Pause,
    /// Nothing is due: the next pass when the log changes (or after the idle time).
    ForChange,
    /// The store failed: retry after the idle time.
    Idle,
}
