//! [`WalkingLocate`]: any store with `last=`'s locate answered by the [`Store`] trait's default
//! walk of replay windows instead of the store's own, so a store's indexed locate can be
//! compared against it (the SQLite store's differential test, `server/examples/locate_speed.rs`).

use changefeed_core::{FetchRequest, Filter, Seq};

use super::{ChangeWatch, LogBounds, Retention, Rows, Store, StoreError};

/// `S` with the default `locate` (every other call passes through).
#[derive(Debug, Clone)]
pub struct WalkingLocate<S>(pub S);

impl<S: Store> Store for WalkingLocate<S> {
    fn bounds(&self) -> impl std::future::Future<Output = Result<LogBounds, StoreError>> + Send {
        self.0.bounds()
    }

    fn window(
        &self,
        filter: &Filter,
        range: FetchRequest,
    ) -> impl std::future::Future<Output = Result<Rows, StoreError>> + Send {
        self.0.window(filter, range)
    }

    fn rows_after(
        &self,
        after: Seq,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Rows, StoreError>> + Send {
        self.0.rows_after(after, limit)
    }

    fn missing_projects(
        &self,
        ids: &[String],
    ) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send {
        self.0.missing_projects(ids)
    }

    fn changes(&self) -> ChangeWatch {
        self.0.changes()
    }

    fn mark_published(
        &self,
        seq: Seq,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        self.0.mark_published(seq)
    }

    fn prune(
        &self,
        retention: Retention,
        batch: usize,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        self.0.prune(retention, batch)
    }
}
