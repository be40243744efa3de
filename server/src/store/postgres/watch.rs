//! The change watch of one replica: LISTEN for the sequencer's NOTIFY (one per batch, payload
//! the new head) on a connection of its own, and poll head every `poll_interval` as the safety
//! net, so a NOTIFY lost (the LISTEN connection dropped, Postgres restarted) costs at most one
//! poll interval. Each poll also samples the sequencer lag and the xmin horizon for the
//! metrics, and refreshes this replica's published mark (its lease).
//!
//! Every signal only bumps the store's generation ([`crate::store::ChangeWatch`]); waiters then
//! read. A lost LISTEN connection bumps too (something may have been missed) and reconnects
//! with back-off.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row;
use tokio::sync::watch;

use super::sequencer::SequencerStats;
use super::NOTIFY_CHANNEL;
use crate::store::bump;

/// Tunables of the change watch.
#[derive(Debug, Clone)]
pub(crate) struct WatchConfig {
    pub poll_interval: Duration,
    pub replica: String,
    /// Head when the store opened: any later head counts as a change.
    pub initial_head: u64,
}

/// Head, the oldest pending row's age, the pending rows, the horizon's age and pid (the oldest
/// transaction holding an xid in this database: other databases cannot delay its rows), all in
/// one statement.
const POLL_SQL: &str = "SELECT \
     (SELECT head FROM changefeed_sequencer) AS head, \
     (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint) AS now_ms, \
     (SELECT created_at FROM change_log WHERE seq IS NULL ORDER BY id LIMIT 1) AS oldest_pending, \
     (SELECT count(*) FROM change_log WHERE seq IS NULL) AS pending_rows, \
     h.pid AS horizon_pid, \
     (extract(epoch FROM clock_timestamp() - h.xact_start) * 1000)::bigint AS horizon_age_ms \
     FROM (SELECT 1) AS one \
     LEFT JOIN LATERAL ( \
         SELECT pid, xact_start FROM pg_stat_activity \
         WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
           AND datname = current_database() \
         ORDER BY age(backend_xid) DESC LIMIT 1 \
     ) AS h ON true";

/// Runs until aborted.
pub(crate) async fn run(
    pool: PgPool,
    changes: watch::Sender<u64>,
    stats: Arc<SequencerStats>,
    config: WatchConfig,
) {
    let listen = listen(pool.clone(), changes.clone(), stats.clone());
    let poll = poll(pool, changes, stats, config);
    tokio::join!(listen, poll);
}

/// LISTENs on a connection taken from the pool for good (given back only when it breaks).
async fn listen(pool: PgPool, changes: watch::Sender<u64>, stats: Arc<SequencerStats>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                Ok(()) => listener,
                Err(error) => {
                    tracing::debug!(%error, "LISTEN failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
            Err(error) => {
                tracing::debug!(%error, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Connected: whatever happened while we were not listening may have been missed.
        bump(&changes);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    stats.notifies_received.fetch_add(1, Relaxed);
                    let head = notification.payload().trim().parse::<u64>().unwrap_or(0);
                    stats.announce(head);
                    bump(&changes);
                }
                Ok(None) | Err(_) => {
                    stats.listener_reconnects.fetch_add(1, Relaxed);
                    tracing::debug!("LISTEN connection lost; reconnecting");
                    bump(&changes);
                    break;
                }
            }
        }
    }
}

async fn poll(
    pool: PgPool,
    changes: watch::Sender<u64>,
    stats: Arc<SequencerStats>,
    config: WatchConfig,
) {
    let mut interval = tokio::time::interval(config.poll_interval.max(Duration::from_millis(10)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_head = config.initial_head;
    loop {
        interval.tick().await;
        let row = match sqlx::query(POLL_SQL).fetch_one(&pool).await {
            Ok(row) => row,
            Err(error) => {
                tracing::debug!(%error, "change watch poll failed");
                continue;
            }
        };
        let head = row
            .try_get::<i64, _>("head")
            .ok()
            .and_then(|head| u64::try_from(head).ok());
        if let Some(head) = head {
            if head > seen_head && stats.announce(head) {
                // Nobody told this replica about this head: a NOTIFY was lost.
                stats.poll_fallbacks.fetch_add(1, Relaxed);
                tracing::debug!(head, "poll found rows no NOTIFY announced");
                bump(&changes);
            }
            seen_head = seen_head.max(head);
        }
        let now_ms: i64 = row.try_get("now_ms").unwrap_or(0);
        let lag = row
            .try_get::<Option<String>, _>("oldest_pending")
            .ok()
            .flatten()
            .and_then(|created_at| changefeed_core::timestamp::parse_unix_millis(&created_at))
            .map_or(-1, |ms| now_ms.saturating_sub(ms).max(0));
        stats.lag_ms.store(lag, Relaxed);
        if let Ok(pending) = row.try_get::<i64, _>("pending_rows") {
            stats.pending_rows.store(pending, Relaxed);
        }
        let pid = row.try_get::<Option<i32>, _>("horizon_pid").ok().flatten();
        let age = row
            .try_get::<Option<i64>, _>("horizon_age_ms")
            .ok()
            .flatten();
        stats.horizon_pid.store(pid.map_or(-1, i64::from), Relaxed);
        stats.horizon_age_ms.store(age.unwrap_or(-1), Relaxed);
        // Keep this replica's mark alive (no-op until the tailer first marks).
        if let Err(error) =
            sqlx::query("UPDATE changefeed_replicas SET seen_at = now() WHERE replica = $1")
                .bind(&config.replica)
                .execute(&pool)
                .await
        {
            tracing::debug!(%error, "refreshing this replica's lease failed");
        }
    }
}
