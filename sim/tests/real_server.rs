//! Proves that the real server (the product's wiring and HTTP transport over the in-memory log)
//! and the real client deliver every client exactly its filter's events of the log, once each,
//! in order, under every seeded fault schedule, and release each subscription when its client
//! leaves.

use std::time::Instant;

use changefeed_sim::run::{run_seed, Stats};
use changefeed_sim::seams::Bug;
use changefeed_sim::seeds::seeds;

#[test]
fn real_server_and_client_keep_every_invariant() {
    let seeds = seeds();
    let started = Instant::now();
    let mut appended = 0;
    let mut stats = Stats::default();
    for &seed in &seeds {
        println!("sim: seed {seed}");
        match run_seed(seed, Bug::None) {
            Ok(outcome) => {
                appended += outcome.appended;
                stats += outcome.stats;
                if seeds.len() == 1 {
                    for line in &outcome.summary {
                        println!("  {line}");
                    }
                }
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sim: {} seeds ({appended} events appended) in {secs:.1}s: {:.1} seeds/s",
        seeds.len(),
        seeds.len() as f64 / secs.max(1e-9)
    );
    println!("sim: exercised {stats:?}");
}
