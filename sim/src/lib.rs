//! # changefeed-sim
//!
//! Deterministic simulation of the real changefeed server and client on turmoil: the product's
//! router, tailer and broadcaster over the in-memory store, writers appending bursts, clients
//! running the real `EventSource`, and seeded faults (partitions, held links, crashes and
//! restarts, latency changes, stalled readers, connection drops, retention pruning). Every
//! client's stream is checked against the log ([`check`]). A run is a pure function of its
//! seed ([`scenario::run`]); build with `RUSTFLAGS="--cfg tokio_unstable"` (see
//! `scripts/sim.sh`) so tokio's own randomness is seeded too.

pub mod assembled;
pub mod check;
pub mod net;
pub mod rng;
pub mod scenario;
pub mod seeds;
pub mod store;
