//! The simulation's store: the product's [`MemoryStore`] (one shared, durable log that survives a
//! simulated server crash), optionally behind a planted bug at the store boundary.

use changefeed::store::memory::MemoryStore;
use changefeed::store::{ChangeWatch, LogBounds, Retention, Store, StoreError, WindowRows};
use changefeed_core::{EventRow, Filter, Seq};

/// A planted store bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// The real store.
    None,
    /// `window` drops the first row of every non-empty window: the classic off-by-one of a
    /// replay that starts at `cursor + 1` instead of after `cursor`.
    DropFirstRow,
    /// `window` reports a head no later than the window's end, as if head had been read in an
    /// earlier transaction than the rows: after a lag, the core then believes the gap is closed
    /// and goes live with a hole.
    StaleHead,
}

/// [`MemoryStore`] with an optional [`StoreFault`].
#[derive(Debug, Clone)]
pub struct SimStore {
    /// The shared log.
    pub inner: MemoryStore,
    /// The planted bug.
    pub fault: StoreFault,
}

impl Store for SimStore {
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        self.inner.bounds().await
    }

    async fn window(
        &self,
        filter: &Filter,
        after: Seq,
        upto: Seq,
    ) -> Result<WindowRows, StoreError> {
        let mut window = self.inner.window(filter, after, upto).await?;
        match self.fault {
            StoreFault::None => {}
            StoreFault::DropFirstRow => {
                if !window.rows.is_empty() {
                    window.rows.remove(0);
                }
            }
            StoreFault::StaleHead => {
                window.bounds.head = Seq(window.bounds.head.0.min(upto.0));
            }
        }
        Ok(window)
    }

    async fn rows_after(&self, after: Seq, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.inner.rows_after(after, limit).await
    }

    async fn missing_projects(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.inner.missing_projects(ids).await
    }

    fn changes(&self) -> ChangeWatch {
        self.inner.changes()
    }

    async fn mark_published(&self, seq: Seq) -> Result<(), StoreError> {
        self.inner.mark_published(seq).await
    }

    async fn prune(&self, retention: Retention, batch: usize) -> Result<u64, StoreError> {
        self.inner.prune(retention, batch).await
    }
}
