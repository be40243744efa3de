//! The live feed: one publisher (the tailer), many subscribers (event streams), and the exact
//! last published seq `P`.
//!
//! **Invariant:** `P` and the ring move together. [`Broadcaster::publish`] sends an event and
//! raises `P` under one lock; [`Broadcaster::subscribe`] creates a receiver and reads `P` under
//! the same lock. So every event a receiver will ever get has a seq above the `P` it was handed,
//! and every event at or below `P` is in the store — the core's replay-to-live handoff
//! (`changefeed_core::subscription`) relies on exactly this.
//!
//! [`LiveFeed`] is what the tailer and the stream driver need from a feed; [`Broadcaster`] is
//! the one implementation, and the simulation wraps it to plant bugs at this seam.
//!
//! **Boundary:** the ring is a [`tokio::sync::broadcast`] channel of fixed capacity. A subscriber
//! that falls more than a ring behind gets a lag signal (and replays the gap from the store);
//! the publisher never waits for anybody, so memory is bounded by the ring whatever a client
//! does.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use changefeed_core::{Event, Seq};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

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

/// The live feed as the tailer (one publisher) and the streams (many subscribers) use it.
pub trait LiveFeed: Send + Sync + 'static {
    /// What a subscriber receives events from.
    type Receiver: LiveReceiver;

    /// A receiver of every event published from now on, and `P` read atomically with it:
    /// every event the receiver will get has a seq above `P`, every seq at or below `P` was
    /// published before.
    fn subscribe(&self) -> (Self::Receiver, Seq);

    /// Publishes `event` (seqs strictly increasing) and raises `P` to its seq.
    fn publish(&self, event: Event);

    /// `P`: the last published seq.
    fn published(&self) -> Seq;

    /// How many receivers exist.
    fn receiver_count(&self) -> usize;
}

/// One subscriber's end of a [`LiveFeed`]: events in publish order, or a lag signal when it
/// fell more than the feed's buffer behind (events were dropped for it), or closed.
pub trait LiveReceiver: Send + 'static {
    /// The next event; cancel-safe (it sits in a `select!`).
    fn recv(&mut self) -> impl Future<Output = Result<LiveEvent, RecvError>> + Send;

    /// The next event if one is ready, without waiting.
    fn try_recv(&mut self) -> Result<LiveEvent, TryRecvError>;
}

impl LiveReceiver for broadcast::Receiver<LiveEvent> {
    fn recv(&mut self) -> impl Future<Output = Result<LiveEvent, RecvError>> + Send {
        broadcast::Receiver::recv(self)
    }

    fn try_recv(&mut self) -> Result<LiveEvent, TryRecvError> {
        broadcast::Receiver::try_recv(self)
    }
}

impl LiveFeed for Broadcaster {
    type Receiver = broadcast::Receiver<LiveEvent>;

    fn subscribe(&self) -> (Self::Receiver, Seq) {
        Broadcaster::subscribe(self)
    }

    fn publish(&self, event: Event) {
        Broadcaster::publish(self, event);
    }

    fn published(&self) -> Seq {
        Broadcaster::published(self)
    }

    fn receiver_count(&self) -> usize {
        Broadcaster::receiver_count(self)
    }
}

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
