//! The retention janitor (`--retain-days`, `--retain-rows`): deletes the oldest log rows that
//! retention allows, in small batches, raising the retention floor as it goes.
//!
//! **Boundary:** each batch is one short write transaction of at most [`JanitorConfig::batch`]
//! rows, with a pause between batches, so the single writer is never held long (other writers
//! and the published mark never wait for a big delete). When nothing is due it sleeps for
//! [`JanitorConfig::idle`]. Clients whose cursor falls below the floor get a `pruned` reset
//! from the core.

use std::time::Duration;

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
    /// Pause when nothing is due (or after an error).
    pub idle: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        JanitorConfig {
            batch: 500,
            pause: Duration::from_millis(50),
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
    let mut total = 0u64;
    loop {
        let pause = match store.prune(retention, config.batch.max(1)).await {
            Ok(0) => config.idle,
            Ok(deleted) => {
                total += deleted;
                tracing::debug!(deleted, total, "janitor pruned rows");
                config.pause
            }
            Err(error) => {
                metrics.store_error();
                if error.is_transient() {
                    tracing::warn!(%error, "janitor: pruning failed; retrying later");
                } else {
                    tracing::error!(%error, "janitor: pruning failed; retrying later");
                }
                config.idle
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!(total, "retention janitor stopped");
    total
}
