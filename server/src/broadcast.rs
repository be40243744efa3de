//! The live feed: one publisher (the tailer), many subscribers (event streams), and the exact
//! last published seq `P`.
//!
//! **Invariant:** `P` and the ring move together. [`Broadcaster::publish`] sends an event and
//! raises `P` under one lock; [`Broadcaster::subscribe`] creates a receiver and reads `P` under
//! the same lock. So every event a receiver will ever get has a seq above the `P` it was handed,
//! and every event at or below `P` is in the store — the replay-to-live handoff of the core
//! (ARCHITECTURE-NOTES §5) relies on exactly this.
//!
//! **Boundary:** the ring is a [`tokio::sync::broadcast`] channel of fixed capacity. A subscriber
//! that falls more than a ring behind gets a lag signal (and replays the gap from the store);
//! the publisher never waits for anybody, so memory is bounded by the ring whatever a client
//! does.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use changefeed_core::{Event, Seq};
use tokio::sync::broadcast;

/// The default ring capacity, in events.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The live feed. Share it in an `Arc`.
#[derive(Debug)]
pub struct Broadcaster {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    published: Seq,
    sender: broadcast::Sender<LiveEvent>,
}

/// What subscribers receive: one shared allocation per event, so handing an event to each of
/// N subscribers costs one reference-count increment each (not one per field).
pub type LiveEvent = Arc<Event>;

impl Broadcaster {
    /// A feed whose last published seq is `published` (the log's head when the server starts:
    /// rows at or below it are served by replay), with a ring of `capacity` events (at least 1).
    pub fn new(published: Seq, capacity: usize) -> Broadcaster {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Broadcaster {
            inner: Mutex::new(Inner { published, sender }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; a poisoned feed is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of every event published from now on, and `P` read atomically with it.
    pub fn subscribe(&self) -> (broadcast::Receiver<LiveEvent>, Seq) {
        let inner = self.lock();
        (inner.sender.subscribe(), inner.published)
    }

    /// Publishes `event` and raises `P` to its seq. Events must come in increasing seq order;
    /// one at or below `P` is a caller bug and is dropped (with a log line) rather than sent
    /// out of order.
    pub fn publish(&self, event: Event) {
        let mut inner = self.lock();
        if event.seq <= inner.published {
            tracing::error!(
                seq = event.seq.0,
                published = inner.published.0,
                "event published out of order; dropped"
            );
            return;
        }
        inner.published = event.seq;
        // An error only means nobody is subscribed right now.
        let _ = inner.sender.send(Arc::new(event));
    }

    /// `P`: the last published seq.
    pub fn published(&self) -> Seq {
        self.lock().published
    }

    /// How many receivers exist.
    pub fn receiver_count(&self) -> usize {
        self.lock().sender.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use changefeed_core::{Epoch, EventEncoder, EventRow, PayloadCheck};

    fn event(seq: u64) -> Event {
        EventEncoder::new(Epoch(1)).encode(&EventRow {
            seq: Seq(seq),
            project_id: "p".into(),
            session_id: None,
            kind: "k".into(),
            payload: "{}".into(),
            payload_check: PayloadCheck::Valid,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        })
    }

    #[test]
    fn subscribers_get_exactly_the_events_after_their_p() {
        let feed = Broadcaster::new(Seq(10), 8);
        feed.publish(event(11));
        let (mut rx, p) = feed.subscribe();
        assert_eq!(p, Seq(11));
        feed.publish(event(13));
        feed.publish(event(12)); // out of order: dropped
        assert_eq!(rx.try_recv().unwrap().seq, Seq(13));
        assert!(rx.try_recv().is_err());
        assert_eq!(feed.published(), Seq(13));
    }

    #[test]
    fn a_slow_receiver_lags_instead_of_growing_the_ring() {
        let feed = Broadcaster::new(Seq(0), 2);
        let (mut rx, _) = feed.subscribe();
        for seq in 1..=5 {
            feed.publish(event(seq));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(3))
        ));
        assert_eq!(rx.try_recv().unwrap().seq, Seq(4));
    }
}
