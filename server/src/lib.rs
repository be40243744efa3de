//! # changefeed (server)
//!
//! The thin shell around [`changefeed_core`]: a [`store`] trait with SQLite and in-memory
//! implementations, one [`tailer`] that reads new rows and publishes them through the
//! [`broadcast`] feed, the [`http`] routes where each response body runs one core
//! `Subscription`, the retention [`janitor`], the [`demo`] writer and the [`cli`].
//!
//! Code map:
//! - [`http`]: [`AppState`], [`app`] (the router), [`serve`] (any `axum::serve::Listener`).
//! - [`broadcast`]: the live feed; `P` is read atomically with each subscription.
//! - [`tailer`]: store → encoded events → feed; persists the published mark.
//! - [`run`]: the whole server (tailer + janitor + HTTP) until the shutdown signal.
//!
//! **Boundary:** time is read only through `tokio::time`; networking only through the listener
//! given to [`serve`]/[`run`]; the database only through [`store::Store`]. The simulation swaps
//! all three.

pub mod broadcast;
pub mod cli;
pub mod demo;
pub mod http;
pub mod janitor;
pub mod metrics;
pub mod shutdown;
pub mod store;
pub mod tailer;

use std::fmt::Debug;

use axum::serve::Listener;

pub use http::{app, serve, AppState, ServerConfig};

/// Runs a whole server on `listener`: the tailer, the retention janitor (when configured) and
/// the HTTP routes, until the state's shutdown signal fires. Then every stream ends with a
/// final checkpoint, the tailer persists the published mark, and this returns.
pub async fn run<S, L>(listener: L, state: AppState<S>) -> std::io::Result<()>
where
    S: store::Store,
    L: Listener,
    L::Addr: Debug,
{
    let shutdown = state.shutdown_signal();
    let tailer = tokio::spawn(state.tailer().run(shutdown.clone()));
    let janitor = tokio::spawn(janitor::run(
        state.store().clone(),
        state.config().retention,
        state.config().janitor,
        state.metrics().clone(),
        shutdown.clone(),
    ));
    let result = http::serve(listener, state).await;
    if !shutdown.is_triggered() {
        // `serve` only returns after shutdown; if it ever does otherwise, stop the rest too.
        tailer.abort();
        janitor.abort();
    }
    if let Err(error) = tailer.await {
        if !error.is_cancelled() {
            tracing::error!(%error, "tailer task failed");
        }
    }
    let _ = janitor.await;
    result
}
