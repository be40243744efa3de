//! The cursor file: the position of `tail`, replaced atomically after each printed event.

use std::io;
use std::path::{Path, PathBuf};

use super::TailError;

/// A cursor file and what it holds.
pub(super) struct CursorFile {
    path: PathBuf,
    /// What the file holds (or held at start).
    written: Option<String>,
}

impl CursorFile {
    /// Opens `path`, reading the saved cursor (`None` if the file does not exist or is blank).
    pub(super) fn open(path: PathBuf) -> Result<CursorFile, TailError> {
        let written = read_cursor(&path).map_err(|source| TailError::CursorFile {
            path: path.clone(),
            source,
        })?;
        Ok(CursorFile { path, written })
    }

    /// The cursor the file held when opened (or last written).
    pub(super) fn saved(&self) -> Option<&str> {
        self.written.as_deref()
    }

    /// Records `cursor`, if it moved.
    pub(super) fn persist(&mut self, cursor: Option<&str>) -> Result<(), TailError> {
        let Some(cursor) = cursor else {
            return Ok(());
        };
        if self.written.as_deref() == Some(cursor) {
            return Ok(());
        }
        write_cursor(&self.path, cursor).map_err(|source| TailError::CursorFile {
            path: self.path.clone(),
            source,
        })?;
        self.written = Some(cursor.to_owned());
        Ok(())
    }
}

/// The cursor saved in `path`; `None` if the file does not exist or is blank.
fn read_cursor(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|cursor| !cursor.is_empty())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Replaces `path` atomically: a temporary file beside it, then a rename over it.
fn write_cursor(path: &Path, cursor: &str) -> io::Result<()> {
    let mut name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?
        .to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(name);
    std::fs::write(&temporary, format!("{cursor}\n"))?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_blank_files() {
        let dir = std::env::temp_dir().join(format!("changefeed-tail-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cursor");
        let _ = std::fs::remove_file(&path);
        assert_eq!(read_cursor(&path).unwrap(), None);
        let mut file = CursorFile::open(path.clone()).unwrap();
        file.persist(Some("00000000000000ab:7")).unwrap();
        assert_eq!(
            read_cursor(&path).unwrap().as_deref(),
            Some("00000000000000ab:7")
        );
        assert_eq!(
            CursorFile::open(path.clone()).unwrap().saved(),
            Some("00000000000000ab:7")
        );
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(read_cursor(&path).unwrap(), None);
        // A directory is not a cursor file: a clear error, not a panic.
        assert!(CursorFile::open(dir.clone()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
