//! # changefeed (server)
//!
//! The thin shell around [`changefeed_core`]: a [`store`] contract with the SQLite
//! implementation, one [`tailer`] that reads new rows and publishes them through the
//! [`broadcast`] feed, the transport-neutral [`stream`] driver that runs one core
//! `Subscription` per client, the [`http`] routes, the retention [`janitor`], the [`demo`]
//! writer and the [`cli`], all wired together in one place ([`app`]).
//!
//! Code map:
//! - [`app`]: [`ServerConfig`], [`AppState`], [`app::start`] (feed, tailer, janitor, shutdown).
//! - [`auth`]: tokens file, JWTs, grants, stream limits, `/metrics` access.
//! - [`stream`]: [`stream::open`] (project check, subscribe-then-bounds, epoch check) and the
//!   driver that turns the subscription's outputs into body chunks.
//! - [`http`]: [`http::router`], [`http::serve`] (any `axum::serve::Listener`), error mapping.
//! - [`conn`]: the accept loop on hyper-util (HTTP/1.1, HTTP/2, TLS), connection timeouts and
//!   limits, descriptor exhaustion, disconnect detection.
//! - [`broadcast`]: the live feed; `P` is read atomically with each subscription.
//! - [`tailer`]: store → encoded events → feed; persists the published mark.
//! - [`store`]: the contract (watermark, floor, published mark, error kinds, shared rules).
//!
//! **Boundary:** time is read only through `tokio::time`; networking only through the listener
//! given to [`http::serve`]/[`run`]; the database only through [`store::Store`]. The simulation
//! swaps all three.

pub mod app;
pub mod auth;
pub mod broadcast;
pub mod cli;
pub mod conn;
pub mod demo;
pub mod http;
pub mod janitor;
pub mod memory;
pub mod metrics;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod tailer;

use std::fmt::Debug;

use axum::serve::Listener;

pub use app::{AppState, ServerConfig};

/// Serves a started server's HTTP routes on `listener` until its shutdown signal fires, then
/// waits for the tailer and janitor to stop (every stream ends with a final checkpoint, the
/// tailer persists the published mark).
pub async fn run<S, F, L>(listener: L, app: app::App<S, F>) -> std::io::Result<()>
where
    S: store::Store,
    F: broadcast::LiveFeed,
    L: Listener,
    L::Addr: Debug,
{
    let result = http::serve(listener, app.state().clone()).await;
    app.stopped().await;
    result
}
