//! Proves that the simulation's in-memory log keeps the store contract: the same generic
//! conformance suite the SQLite store passes (`changefeed::store::conformance`).

use changefeed::store::conformance::{Harness, NewRow};
use changefeed_core::{Epoch, Seq};
use changefeed_sim::memory::MemoryStore;

/// The log the simulation's writers append to, handed to each server incarnation.
struct Memory {
    store: MemoryStore,
}

impl Memory {
    async fn new() -> Memory {
        Memory {
            store: MemoryStore::new(Epoch(0x0123_4567_89ab_cdef)),
        }
    }
}

impl Harness for Memory {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn create_project(&mut self, id: &str) {
        assert!(self.store.create_project(id), "project {id} exists");
    }

    async fn append(&mut self, row: NewRow<'_>) -> Seq {
        self.store
            .append_at(
                row.project,
                row.session,
                row.kind,
                row.payload,
                row.created_at,
            )
            .expect("append")
    }

    async fn delete(&mut self, seq: Seq) {
        assert!(self.store.delete(seq), "no row {seq:?} to delete");
    }

    async fn lose_commits_after(&mut self, seq: Seq) {
        self.store.rollback(seq);
    }

    async fn restart(&mut self) {
        self.store.restart();
    }

    async fn published_mark(&mut self) -> Seq {
        self.store.published()
    }
}

changefeed::store_conformance_tests!(Memory::new);
