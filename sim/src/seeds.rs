//! Which seeds a test runs: `SIM_SEED=<n>` runs exactly one; otherwise a fixed set plus
//! `SIM_SEEDS` (default [`DEFAULT_SEEDS`]) seeds derived from the fixed base, so CI runs the
//! same seeds every time and a long run (`SIM_SEEDS=10000`) explores more.

/// Seeds run when neither variable is set.
pub const DEFAULT_SEEDS: u64 = 24;

/// The seeds to run.
pub fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
    {
        return vec![seed];
    }
    budget()
}

/// The run's seed budget, `0..SIM_SEEDS`, ignoring `SIM_SEED` (the mutant checks need a budget
/// even while one seed is being replayed).
pub fn budget() -> Vec<u64> {
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (0..count).collect()
}
