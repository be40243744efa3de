//! # changefeed-sim
//!
//! Deterministic simulation of the real changefeed server and client on turmoil: the product's
//! own wiring (`changefeed::app::start`) and HTTP transport over a [`net::SimListener`], on the
//! in-memory log ([`memory`]), writers appending bursts for several projects and pruning, clients
//! running the real `EventSource` / typed `Client` through a turmoil [`net::SimConnector`], and
//! seeded faults (partitions, held links, crashes and restarts, latency changes, stalled and slow
//! readers, connection drops, retention pruning). Every client's stream is checked against the
//! log as it arrives ([`check`], with its own filter matcher).
//!
//! - [`plan`]: [`plan::Scenario::from_seed`], the whole run as a printable value.
//! - [`hosts`]: the server, writer and client hosts; [`faults`]: applying the fault schedule;
//!   [`run`]: one run and its verdict, a pure function of the seed (proven by
//!   `tests/determinism.rs`); build with `RUSTFLAGS="--cfg tokio_unstable"` (see
//!   `scripts/sim.sh`) so tokio's own randomness is seeded too.
//! - [`seams`]: planted bugs at narrow seams around real parts (store, live feed, transport),
//!   without any test-only code in the product; `tests/mutants.rs` proves each is caught.
//! - [`seeds`]: `SIM_SEED` replays one seed, `SIM_SEEDS` sets how many run.

pub mod check;
pub mod faults;
pub mod hosts;
pub mod memory;
pub mod net;
pub mod plan;
pub mod replicated;
pub mod run;
pub mod seams;
pub mod seeds;
