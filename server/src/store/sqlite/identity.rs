//! Watching that the database file being served is still the one that was opened.
//!
//! A database deleted (with its `-wal` and `-shm`) and created again, or moved aside and
//! replaced, leaves the store's connections reading the old inode: new commits reach nobody.
//! A database copied over the file keeps the inode but is another log. So every poll interval a
//! task compares the path's device and inode with those seen at open, and re-reads the epoch
//! from `changefeed_meta` on a fresh connection. (A copy landing while our `-wal` still holds
//! the page with the epoch is masked by it, as for every reader, until that WAL is
//! checkpointed; the tailer compares the epoch on every read as well.) The first difference is latched for good:
//! [`Identity::replaced`] answers why (a failed read also looks at the file at once:
//! [`Identity::look_now`]), every read of the store fails with a fatal error saying
//! so (nothing of either database is streamed under the old epoch), `/healthz` is not `ok`, and
//! `changefeed serve` exits with the message so it can be restarted on the new file (clients
//! then get `changefeed.reset` with reason `epoch_mismatch`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use changefeed_core::Epoch;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// The device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let metadata = std::fs::metadata(path)?;
    Ok(FileId {
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

/// The watch's verdict, shared by the store's handles.
#[derive(Debug)]
pub(super) struct Identity {
    path: PathBuf,
    opened: FileId,
    replaced: Mutex<Option<String>>,
    signal: watch::Sender<bool>,
    task: Mutex<Option<AbortHandle>>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Identity {
    /// Why the served database is not the one opened any more, if it is not.
    pub(super) fn replaced(&self) -> Option<String> {
        self.replaced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves once the database was found replaced.
    pub(super) async fn wait_replaced(&self) {
        let mut receiver = self.signal.subscribe();
        let _ = receiver.wait_for(|replaced| *replaced).await;
    }

    /// Looks at the file's identity at once (a `stat`, no read of the database) and latches a
    /// replacement it finds: a read that failed because the file was deleted or swapped then
    /// says so at once, instead of a bare I/O error until the next poll.
    pub(super) fn look_now(&self) -> Option<String> {
        if let Some(why) = file_verdict(&self.path, self.opened) {
            self.latch(why);
        }
        self.replaced()
    }

    fn latch(&self, why: String) {
        let mut replaced = self.replaced.lock().unwrap_or_else(PoisonError::into_inner);
        if replaced.is_none() {
            tracing::error!(reason = %why, "the database being served was replaced");
            *replaced = Some(why);
            self.signal.send_replace(true);
        }
    }
}

/// Starts watching `path` (opened with `epoch`, read with `options`) every `poll`; with no
/// epoch (bookkeeping in a sidecar file, nothing to re-read in the database) only the file's
/// identity is watched. The watch holds only a weak reference, so it stops with the store.
pub(super) fn start(
    path: &Path,
    epoch: Option<Epoch>,
    options: SqliteConnectOptions,
    poll: Duration,
) -> std::io::Result<Arc<Identity>> {
    let opened = file_id(path)?;
    let identity = Arc::new(Identity {
        path: path.to_path_buf(),
        opened,
        replaced: Mutex::new(None),
        signal: watch::channel(false).0,
        task: Mutex::new(None),
    });
    let weak = Arc::downgrade(&identity);
    let path: PathBuf = path.to_path_buf();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let verdict = check(&path, opened, epoch, &options).await;
            let Some(identity) = weak.upgrade() else {
                return;
            };
            if let Some(why) = verdict {
                identity.latch(why);
                return;
            }
        }
    });
    *identity.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
    Ok(identity)
}

/// Why `path` is not the file opened as `opened` any more (deleted, moved, or another inode),
/// if it is not.
fn file_verdict(path: &Path, opened: FileId) -> Option<String> {
    match file_id(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "the database file {} was deleted or moved",
            path.display()
        )),
        // Cannot look (permissions changed?): not proof of a replacement; reads will tell.
        Err(_) => None,
        Ok(now) if now != opened => Some(format!(
            "the database file {} was replaced by another file (device/inode {}/{} became \
             {}/{})",
            path.display(),
            opened.device,
            opened.inode,
            now.device,
            now.inode
        )),
        Ok(_) => None,
    }
}

/// Why `path` is not the database opened as `opened` with `epoch` any more, if it is not.
async fn check(
    path: &Path,
    opened: FileId,
    epoch: Option<Epoch>,
    options: &SqliteConnectOptions,
) -> Option<String> {
    if let Some(why) = file_verdict(path, opened) {
        return Some(why);
    }
    let epoch = epoch?;
    // A fresh connection each time: a pooled one may answer from its page cache, which stays
    // valid as long as the shared WAL index does not move (a file copied over does not move it).
    let found: Result<Option<String>, sqlx::Error> = async {
        let mut connection = SqliteConnection::connect_with(options).await?;
        let epoch = sqlx::query_scalar("SELECT value FROM changefeed_meta WHERE key = 'epoch'")
            .fetch_optional(&mut connection)
            .await;
        let _ = connection.close().await;
        epoch
    }
    .await;
    match found {
        Ok(Some(text)) if text == epoch.to_string() => None,
        Ok(Some(text)) => Some(format!(
            "the database file {} now holds another log (epoch {epoch} became {text}): it was \
             copied over or restored",
            path.display()
        )),
        Ok(None) => Some(format!(
            "the database file {} has no changefeed epoch any more: another database was \
             copied over it",
            path.display()
        )),
        Err(error) => {
            // Only an answer about the file's content proves it is another file (not a
            // database, corrupt, our table gone). Busy, mid-copy, or no descriptor to open it
            // with (EMFILE: `unable to open database file`): look again next time.
            let primary_code = match &error {
                sqlx::Error::Database(database) => database
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .map(|code| code & 0xff),
                _ => None,
            };
            const SQLITE_CORRUPT: i32 = 11;
            const SQLITE_NOTADB: i32 = 26;
            const SQLITE_ERROR: i32 = 1; // e.g. no such table: changefeed_meta
            const SQLITE_IOERR: i32 = 10; // reading pages of a file swapped underneath
            let about_content = matches!(
                primary_code,
                Some(SQLITE_CORRUPT | SQLITE_NOTADB | SQLITE_ERROR | SQLITE_IOERR)
            );
            let error = super::StoreError::from(error);
            (about_content && !error.is_transient()).then(|| {
                format!(
                    "the database file {} cannot be read as the log served any more: {error}",
                    path.display()
                )
            })
        }
    }
}
