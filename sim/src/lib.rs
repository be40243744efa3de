//! # changefeed-sim
//!
//! Deterministic simulation of the real changefeed server and client on turmoil: the product's
//! router, tailer and broadcaster (`changefeed::serve` over an [`net::SimListener`]) on the
//! in-memory store, writers appending bursts for several projects and pruning, clients running
//! the real `EventSource` / typed `Client` through a turmoil [`net::SimConnector`], and seeded
//! faults (partitions, held links, crashes and restarts, latency changes, stalled and slow
//! readers, connection drops, retention pruning). Every client's stream is checked against the
//! log as it arrives ([`check`]).
//!
//! - [`scenario::run`] is a pure function of its seed (proven by `tests/determinism.rs`); build
//!   with `RUSTFLAGS="--cfg tokio_unstable"` (see `scripts/sim.sh`) so tokio's own randomness is
//!   seeded too.
//! - [`assembled`] and [`store`] plant bugs around the real pieces, without any test-only code
//!   in the product; `tests/mutants.rs` proves each is caught.
//! - [`seeds`]: `SIM_SEED` replays one seed, `SIM_SEEDS` sets how many run.

pub mod assembled;
pub mod check;
pub mod net;
pub mod replicated;
pub mod rng;
pub mod scenario;
pub mod seeds;
pub mod store;
