//! Giving memory back after many streams close. glibc keeps the heap pages its arenas freed
//! mapped and counted in RSS, so after a mass disconnect RSS stayed near its peak (199 MiB
//! after 10,000 streams closed, against 12 MiB idle: `scripts/bench.sh`, "RSS after close").
//! `malloc_trim(0)` returns every whole free page of every arena. Trims are coalesced: one a
//! second after the first of at least [`CLOSES_PER_TRIM`] closes, so a wave of closes costs
//! one or a few trims and steady churn at most one a second. Elsewhere (not glibc) this does
//! nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Closed streams that make a trim worth its cost (each idle stream held about 20 KiB).
pub const CLOSES_PER_TRIM: u64 = 256;

/// How long a trim waits after it is due, so the rest of a wave of closes is freed first.
const SETTLE: Duration = Duration::from_secs(1);

/// Counts closed streams and schedules trims.
#[derive(Debug, Default)]
pub struct ReleaseAfterClose {
    closed: AtomicU64,
    scheduled: AtomicBool,
    trims: AtomicU64,
}

impl ReleaseAfterClose {
    /// A stream closed (its memory is freed by now or soon).
    pub fn stream_closed(self: &Arc<Self>) {
        if self.closed.fetch_add(1, Ordering::Relaxed) + 1 < CLOSES_PER_TRIM {
            return;
        }
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        // Streams close inside the runtime; a guard dropped outside one (a runtime shutting
        // down) skips the trim.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.scheduled.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(SETTLE).await;
            this.closed.store(0, Ordering::Relaxed);
            this.scheduled.store(false, Ordering::Release);
            if tokio::task::spawn_blocking(trim).await.is_ok() {
                this.trims.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Trims run so far.
    pub fn trims(&self) -> u64 {
        self.trims.load(Ordering::Relaxed)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no
    // pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wave_of_closes_is_one_trim_after_it_settles_and_few_closes_are_none() {
        let release = Arc::new(ReleaseAfterClose::default());
        for _ in 0..CLOSES_PER_TRIM - 1 {
            release.stream_closed();
        }
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(release.trims(), 0, "fewer closes than a trim is worth");

        for _ in 0..CLOSES_PER_TRIM * 4 {
            release.stream_closed();
        }
        // The trim runs on a blocking thread: wait for it through the count, not the clock.
        while release.trims() == 0 {
            tokio::time::sleep(SETTLE).await;
        }
        tokio::time::sleep(SETTLE * 3).await;
        assert_eq!(release.trims(), 1, "one wave, one trim");
        assert!(!release.scheduled.load(Ordering::Acquire));
    }
}
