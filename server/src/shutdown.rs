//! One shutdown signal shared by every part of the server: the accept loop, each event stream
//! (which ends with a final checkpoint), the tailer (which persists the published mark), the
//! janitor and the demo writer.
//!
//! [`channel`] gives a [`ShutdownTrigger`] (kept by whoever decides: `main` on SIGINT/SIGTERM, a
//! test, the simulation) and a cloneable [`ShutdownSignal`]. Dropping the trigger without
//! calling [`ShutdownTrigger::trigger`] also counts as shutdown, so a forgotten trigger never
//! leaves tasks waiting forever.

use tokio::sync::watch;

/// Starts the shutdown of everything holding the matching [`ShutdownSignal`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Resolves when shutdown begins. Cheap to clone; every clone sees the same trigger.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    receiver: watch::Receiver<bool>,
    /// For [`ShutdownSignal::never`]: a sender nobody triggers, kept alive by the signal.
    _never: Option<std::sync::Arc<watch::Sender<bool>>>,
}

/// A new trigger and the signal it fires.
pub fn channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (sender, receiver) = watch::channel(false);
    (
        ShutdownTrigger { sender },
        ShutdownSignal {
            receiver,
            _never: None,
        },
    )
}

impl ShutdownTrigger {
    /// Begins the shutdown (idempotent).
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Another signal fired by this trigger.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            receiver: self.sender.subscribe(),
            _never: None,
        }
    }
}

impl ShutdownSignal {
    /// A signal that never fires (for a server that runs until its process ends).
    pub fn never() -> ShutdownSignal {
        let (sender, receiver) = watch::channel(false);
        ShutdownSignal {
            receiver,
            _never: Some(std::sync::Arc::new(sender)),
        }
    }

    /// Whether shutdown has begun (or the trigger is gone).
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow() || self.receiver.has_changed().is_err()
    }

    /// Resolves once shutdown has begun. Cancel-safe, so it can sit in a `select!`.
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: that counts as shutdown too.
        let _ = self.receiver.wait_for(|triggered| *triggered).await;
    }

    /// [`ShutdownSignal::wait`] by value, for APIs that want a `'static` future.
    pub async fn into_future(mut self) {
        self.wait().await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM. If a handler cannot be installed the error
/// is logged and that signal is simply not awaited.
pub async fn os_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        biased;
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone_and_dropping_counts() {
        let (trigger, signal) = channel();
        let mut first = signal.clone();
        assert!(!first.is_triggered());
        trigger.trigger();
        first.wait().await;
        assert!(signal.is_triggered());

        let (trigger, mut signal) = channel();
        drop(trigger);
        assert!(signal.is_triggered());
        signal.wait().await;
        assert!(!ShutdownSignal::never().is_triggered());
    }
}
