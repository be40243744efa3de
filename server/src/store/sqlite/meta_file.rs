//! changefeed's bookkeeping in a sidecar file, for a database attached read-only
//! (`serve --attach --meta-file PATH`): the values an attached database's `changefeed_meta`
//! holds (`epoch`, `published`, `floor`, `base`) plus the database it belongs to, as one JSON
//! object.
//!
//! **Invariant:** the file is only ever replaced whole (write a temporary file in the same
//! directory, `fsync` it, rename it over the old one, `fsync` the directory), so a crash leaves
//! the old or the new content, never a mix; and `published` in the file only rises within an
//! epoch, like the column.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use changefeed_core::{Epoch, Seq};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MetaState {
    /// The log's epoch (16 lowercase hex digits).
    pub epoch: String,
    /// The highest seq published to clients under this epoch.
    pub published: u64,
    /// The retention floor (changefeed never prunes a read-only database: stays as it is).
    pub floor: u64,
    /// The database file this bookkeeping is for, as given when it was written.
    pub database: String,
    /// The oldest seq in the log when the epoch began (the floor follows the owner's pruning
    /// above it; see `owner_pruned_floor` in `store/sqlite.rs`). Absent in files written before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
}

impl MetaState {
    pub fn epoch(&self, path: &Path) -> Result<Epoch, StoreError> {
        Epoch::parse(&self.epoch).map_err(|_| {
            StoreError::fatal(format!(
                "{}: epoch is not 16 lowercase hex digits: {:?}",
                path.display(),
                self.epoch
            ))
        })
    }

    pub fn published(&self) -> Seq {
        Seq(self.published)
    }

    pub fn floor(&self) -> Seq {
        Seq(self.floor)
    }

    pub fn base(&self) -> Seq {
        Seq(self.base.unwrap_or(0))
    }
}

/// Reads the file; `Ok(None)` when it does not exist yet.
pub(super) fn read(path: &Path) -> Result<Option<MetaState>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::fatal(format!(
                "cannot read the meta file {}: {error}",
                path.display()
            )))
        }
    };
    let state: MetaState = serde_json::from_str(&text).map_err(|error| {
        StoreError::fatal(format!(
            "the meta file {} is not changefeed's bookkeeping ({error})",
            path.display()
        ))
    })?;
    state.epoch(path)?;
    Ok(Some(state))
}

/// Replaces the file atomically with `state` (see the module docs).
pub(super) fn write(path: &Path, state: &MetaState) -> Result<(), StoreError> {
    let fail = |what: &str, error: std::io::Error| {
        StoreError::transient(format!(
            "cannot {what} the meta file {}: {error}",
            path.display()
        ))
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "meta".into());
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut text = serde_json::to_vec_pretty(state).expect("plain data serializes");
    text.push(b'\n');
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        // The rename is durable once the directory is.
        if let Ok(dir) = fs::File::open(&directory) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    result.map_err(|error| {
        let _ = fs::remove_file(&temporary);
        fail("replace", error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.meta");
        assert_eq!(read(&path).unwrap(), None);
        let mut state = MetaState {
            epoch: "0123456789abcdef".into(),
            published: 7,
            floor: 0,
            database: "daemon.db".into(),
            base: Some(1),
        };
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap(), Some(state.clone()));
        state.published = 9;
        write(&path, &state).unwrap();
        assert_eq!(read(&path).unwrap().unwrap().published(), Seq(9));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("feed.meta")]);
    }

    #[test]
    fn refuses_a_file_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.meta");
        fs::write(&path, "epoch=1").unwrap();
        let error = read(&path).unwrap_err();
        assert!(
            error.message.contains("not changefeed's bookkeeping"),
            "{error}"
        );
        fs::write(
            &path,
            r#"{"epoch":"XYZ","published":1,"floor":0,"database":"d"}"#,
        )
        .unwrap();
        let error = read(&path).unwrap_err();
        assert!(error.message.contains("16 lowercase hex"), "{error}");
    }
}
