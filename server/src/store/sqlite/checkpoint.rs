//! WAL checkpoints on the store's own schedule, so replays never starve them and writers (ours
//! and other processes') do not pay for them in their commits.
//!
//! SQLite checkpoints automatically inside the commit of whichever writer pushes the WAL past
//! 1000 pages, and the WAL restarts from its beginning only after a checkpoint copied every frame
//! while no reader still reads an older snapshot. Replays keep read transactions going nearly
//! all the time, so without help the WAL never restarts: it grows, and from then on *every*
//! writer commit runs a checkpoint (and its fsyncs) itself.
//!
//! So every read transaction of the store takes a shared turn of a [`ReadGate`], and a task
//! takes the exclusive turn every `interval` when the `-wal` file changed since its last
//! complete checkpoint: it waits only for the read transactions in flight (each one bounded
//! window), runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection (PASSIVE never takes
//! the write lock, so no writer waits for it), and lets the readers go on. Readers that begin
//! after a complete checkpoint read the database file, not the WAL, so the next commit restarts
//! the WAL, which then stays far below the automatic checkpoint's threshold.
//!
//! **Invariant:** only readers wait for a checkpoint, never a writer; a read waits at most for
//! the read transactions in flight plus one checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;
use tokio::sync::{watch, RwLock, RwLockReadGuard};
use tokio::task::JoinHandle;

use super::identity::Identity;

/// Read transactions share it; a checkpoint holds it alone.
#[derive(Debug, Default)]
pub(super) struct ReadGate(RwLock<()>);

impl ReadGate {
    /// A shared turn, held for the length of one read transaction.
    pub(super) async fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().await
    }
}

/// The running checkpoint task; [`Checkpointer::stop`] ends it (dropping it aborts the task).
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Ends the task and closes its connection, waiting for a checkpoint in progress.
    pub(super) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Starts checkpointing `database` through `connection` every `interval`, until `identity`
/// finds the file replaced (a checkpoint would then write the old database's pages into
/// whatever file is there). Must be called within a tokio runtime.
pub(super) fn start(
    database: &Path,
    connection: SqliteConnection,
    gate: Arc<ReadGate>,
    identity: Arc<Identity>,
    interval: Duration,
) -> Checkpointer {
    let (stop, stopped) = watch::channel(false);
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    let task = tokio::spawn(run(
        PathBuf::from(wal),
        connection,
        gate,
        identity,
        interval,
        stopped,
    ));
    Checkpointer {
        stop,
        task: std::sync::Mutex::new(Some(task)),
    }
}

/// What the `-wal` file looked like: a checkpoint is due only when it changed.
type WalStamp = Option<(SystemTime, u64)>;

fn stamp(wal: &Path) -> WalStamp {
    let metadata = std::fs::metadata(wal).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

async fn run(
    wal: PathBuf,
    mut connection: SqliteConnection,
    gate: Arc<ReadGate>,
    identity: Arc<Identity>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut checkpointed: WalStamp = None;
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            () = tokio::time::sleep(interval) => {}
        }
        let before = stamp(&wal);
        if before.is_none() || before == checkpointed {
            continue;
        }
        let result = {
            let _alone = gate.0.write().await;
            if identity.replaced().is_some() {
                break;
            }
            sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut connection)
                .await
        };
        match result {
            Ok((_, -1, _)) => {
                tracing::debug!("the database is not in WAL mode; no checkpoints to run");
                break;
            }
            Ok((busy, log, done)) => {
                if failing {
                    tracing::info!("WAL checkpoints work again");
                    failing = false;
                }
                tracing::trace!(
                    busy,
                    wal_frames = log,
                    checkpointed = done,
                    "WAL checkpoint"
                );
                // Frames left over (a commit landed meanwhile, another process's reader): again
                // at the next tick even if the file does not change.
                checkpointed = if busy == 0 && done == log {
                    before
                } else {
                    None
                };
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "WAL checkpoint failed; SQLite's automatic checkpoints remain");
                    failing = true;
                }
            }
        }
    }
    let _ = connection.close().await;
}
