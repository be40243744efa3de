//! Which seeds a test runs.
//!
//! - `SIM_SEED=<n>`: exactly that seed (a replay).
//! - Otherwise `SIM_SEEDS` seeds (default [`DEFAULT_SEEDS`]): the fixed seeds `0..`
//!   (at most [`FIXED_SEEDS`] of them, so CI always covers the same ground), then fresh random
//!   seeds drawn from a base taken from the clock, or from `SIM_SEED_BASE` to repeat a run. The
//!   base is printed; every failure prints its own seed and the `SIM_SEED=...` replay command.

/// Seeds run when neither variable is set (plain `cargo test` / nextest; `scripts/sim.sh`
/// sets more).
pub const DEFAULT_SEEDS: u64 = 24;

/// The fixed seeds at the start of every run.
pub const FIXED_SEEDS: u64 = 100;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
}

/// The seeds to run.
pub fn seeds() -> Vec<u64> {
    if let Some(seed) = env_u64("SIM_SEED") {
        return vec![seed];
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let fixed = count.min(FIXED_SEEDS);
    let mut seeds: Vec<u64> = (0..fixed).collect();
    if count > fixed {
        let base = env_u64("SIM_SEED_BASE").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        });
        println!(
            "sim: {fixed} fixed seeds, then {} random seeds from SIM_SEED_BASE={base}",
            count - fixed
        );
        let mut rng = fastrand::Rng::with_seed(base);
        // Random seeds above the fixed range, so the two never overlap.
        seeds.extend((fixed..count).map(|_| FIXED_SEEDS + rng.u64(..u64::MAX / 2)));
    }
    seeds
}

/// The run's fixed seed budget, `0..SIM_SEEDS`, ignoring `SIM_SEED` (the mutant checks need a
/// reproducible budget, also while one seed is being replayed).
pub fn budget() -> Vec<u64> {
    (0..env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}
