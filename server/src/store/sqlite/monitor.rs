//! Noticing commits made by other processes (the daemon, the `sqlite3` CLI) within milliseconds.
//!
//! Two sources feed one task:
//! - a file watch (inotify through `notify`) on the database's directory, reporting writes to the
//!   database file and its `-wal` file;
//! - a safety-net timer (default every second).
//!
//! Either one only makes the task look at `PRAGMA data_version` on a dedicated connection (kept
//! locked, so a look is a direct call: see [`run`]); the
//! generation counter is bumped when that number moves, i.e. when a commit by another connection
//! is visible. A file event can precede the visibility of its commit (SQLite writes and syncs the
//! WAL frames *before* it publishes them in the wal-index, which is shared memory and produces no
//! file event), so after a file event the task re-checks with a short exponential back-off (1 ms
//! doubling to ~0.5 s) until the number moves, waking at once on every further file event.
//!
//! **Invariant:** a commit by any process is signalled within the back-off bound after its last
//! WAL write, and within one poll interval whatever happens to the file watch.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sqlx::sqlite::{LockedSqliteHandle, SqliteConnection};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

/// The longest pause between re-checks after a file event with no visible commit yet.
const RECHECK_MAX: Duration = Duration::from_millis(512);

/// The running monitor; dropping it stops the file watch and the task.
pub(super) struct ChangeMonitor {
    _watcher: Option<RecommendedWatcher>,
    task: AbortHandle,
}

impl Drop for ChangeMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ChangeMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeMonitor")
            .field("file_watch", &self._watcher.is_some())
            .finish()
    }
}

/// Starts watching `database` (a file path) and polling `connection` every `poll`, bumping
/// `changes` when a commit becomes visible. Must be called within a tokio runtime.
///
/// The file watch is in place and the first `data_version` read before this returns, so every
/// commit after it is signalled (one that lands during the start-up is seen by any read made
/// after it returns).
pub(super) async fn start(
    database: &Path,
    mut connection: SqliteConnection,
    changes: watch::Sender<u64>,
    poll: Duration,
) -> ChangeMonitor {
    let file_events = Arc::new(Notify::new());
    let watcher = match watch_files(database, Arc::clone(&file_events)) {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                database = %database.display(),
                %error,
                poll_ms = poll.as_millis() as u64,
                "cannot watch the database files; other processes' commits are noticed by polling only"
            );
            None
        }
    };
    let mut checker = Checker {
        last: None,
        failing: false,
    };
    match connection.lock_handle().await {
        Ok(mut handle) => {
            checker.check(&mut handle);
        }
        Err(error) => checker.unreadable(&error.to_string()),
    }
    let task = tokio::spawn(run(connection, checker, file_events, changes, poll)).abort_handle();
    ChangeMonitor {
        _watcher: watcher,
        task,
    }
}

/// Watches the database's directory (the `-wal` file comes and goes) for writes to the database
/// or its `-wal` file; each one wakes the task (wake-ups coalesce in the `Notify` permit).
fn watch_files(database: &Path, wake: Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    let directory = match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = database
        .file_name()
        .map(OsString::from)
        .ok_or_else(|| notify::Error::generic("database path has no file name"))?;
    let mut wal = name.clone();
    wal.push("-wal");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            // An error may mean lost events: look, a spurious check is cheap.
            Err(_) => true,
            Ok(event) => {
                matches!(
                    event.kind,
                    EventKind::Modify(_)
                        | EventKind::Create(_)
                        | EventKind::Remove(_)
                        | EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Any
                        | EventKind::Other
                ) && event.paths.iter().any(|path| {
                    path.file_name()
                        .is_some_and(|file| file == name.as_os_str() || file == wal.as_os_str())
                })
            }
        };
        if relevant {
            wake.notify_one();
        }
    })?;
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

async fn run(
    mut connection: SqliteConnection,
    mut checker: Checker,
    file_events: Arc<Notify>,
    changes: watch::Sender<u64>,
    poll: Duration,
) {
    // The connection is the monitor's alone: it stays locked for good, so each check is a
    // direct call on this task, not a round trip to sqlx's worker thread (which waits for the
    // lock until the task ends).
    let mut handle = match connection.lock_handle().await {
        Ok(handle) => Some(handle),
        Err(error) => {
            checker.unreadable(&error.to_string());
            None
        }
    };
    let mut check = |checker: &mut Checker| match handle.as_mut() {
        Some(handle) => checker.check(handle),
        None => true,
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let from_file = tokio::select! {
            biased;
            () = file_events.notified() => true,
            _ = ticker.tick() => false,
        };
        if check(&mut checker) {
            crate::store::bump(&changes);
            continue;
        }
        if !from_file {
            continue;
        }
        // A file event whose commit is not visible yet: re-check with back-off, at once on any
        // further file event, until the commit shows or the back-off runs out.
        let mut delay = Duration::from_millis(1);
        while delay <= RECHECK_MAX {
            tokio::select! {
                biased;
                () = file_events.notified() => delay = Duration::from_millis(1),
                () = tokio::time::sleep(delay) => delay *= 2,
            }
            if check(&mut checker) {
                crate::store::bump(&changes);
                break;
            }
        }
    }
}

struct Checker {
    last: Option<i64>,
    failing: bool,
}

impl Checker {
    /// Whether a commit by another connection became visible since the previous check. An error
    /// counts as "maybe": a spurious wake-up is allowed, a missed one is not.
    fn check(&mut self, handle: &mut LockedSqliteHandle<'_>) -> bool {
        let version = super::direct::with_connection(handle, |connection| {
            connection
                .query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
                .map_err(super::direct::store_error)
        });
        match version {
            Ok(version) => {
                if self.failing {
                    tracing::info!("PRAGMA data_version readable again");
                    self.failing = false;
                }
                let moved = self.last.is_some_and(|last| last != version);
                self.last = Some(version);
                moved
            }
            Err(error) => {
                self.unreadable(&error.message);
                true
            }
        }
    }

    fn unreadable(&mut self, error: &str) {
        if !self.failing {
            tracing::warn!(%error, "cannot read PRAGMA data_version; waking waiters on every file event and poll");
            self.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeWatch;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::Connection;

    async fn connect(path: &Path) -> SqliteConnection {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        SqliteConnection::connect_with(&options).await.unwrap()
    }

    async fn commit(writer: &mut SqliteConnection) {
        sqlx::query("INSERT INTO t (x) VALUES (1)")
            .execute(&mut *writer)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_poll_alone_notices_other_connections_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poll.db");
        let mut writer = connect(&path).await;
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut writer)
            .await
            .unwrap();
        let (changes, _) = watch::channel(0u64);
        let mut waiter = ChangeWatch::new(changes.subscribe());
        // A directory that does not exist: no file watch, only the poll.
        let unwatchable = dir.path().join("missing").join("poll.db");
        let monitor = start(
            &unwatchable,
            connect(&path).await,
            changes,
            Duration::from_millis(20),
        )
        .await;
        assert!(monitor._watcher.is_none());
        // Committed right after start returned, before the task ever ran: still signalled.
        commit(&mut writer).await;
        tokio::time::timeout(Duration::from_secs(5), waiter.changed())
            .await
            .expect("the poll noticed the commit");
        commit(&mut writer).await;
        tokio::time::timeout(Duration::from_secs(5), waiter.changed())
            .await
            .expect("the poll noticed the second commit");
    }

    #[tokio::test]
    async fn reads_alone_do_not_signal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quiet.db");
        let mut writer = connect(&path).await;
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut writer)
            .await
            .unwrap();
        let (changes, _) = watch::channel(0u64);
        let waiter = ChangeWatch::new(changes.subscribe());
        let _monitor = start(
            &path,
            connect(&path).await,
            changes,
            Duration::from_millis(10),
        )
        .await;
        for _ in 0..5 {
            sqlx::query("SELECT count(*) FROM t")
                .fetch_one(&mut writer)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        assert!(!waiter.has_changed(), "no commit, no wake-up");
    }
}
