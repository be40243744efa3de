//! Proves that a run is a pure function of its seed: the same seed run twice yields the same
//! full trace (every append, fault, and client item with its simulated time), so any failure
//! replays exactly with `SIM_SEED`.

use changefeed_sim::run::run_seed;
use changefeed_sim::seams::Bug;
use changefeed_sim::seeds::seeds;

/// How many of the run's seeds are replayed (each runs twice).
const REPLAYED: usize = 16;

#[test]
fn same_seed_same_trace() {
    let all = seeds();
    // The first seeds of the run, and a few more spread over it.
    let mut chosen: Vec<u64> = all.iter().copied().take(REPLAYED).collect();
    chosen.extend(
        all.iter()
            .copied()
            .skip(REPLAYED)
            .step_by(97)
            .take(REPLAYED),
    );
    for seed in chosen {
        println!("sim: determinism of seed {seed}");
        let replay = format!("replay with: SIM_SEED={seed} scripts/sim.sh");
        let first = run_seed(seed, Bug::None).unwrap_or_else(|f| panic!("{f}"));
        let second = run_seed(seed, Bug::None).unwrap_or_else(|f| panic!("{f}"));
        assert!(
            first.trace.len() > 10,
            "seed {seed}: trace too short to prove anything"
        );
        if first.trace != second.trace {
            let at = first
                .trace
                .iter()
                .zip(&second.trace)
                .position(|(a, b)| a != b)
                .unwrap_or(first.trace.len().min(second.trace.len()));
            panic!(
                "seed {seed}: traces diverge at entry {at}:\n  first:  {:?}\n  second: {:?}\n{replay}",
                first.trace.get(at),
                second.trace.get(at)
            );
        }
        assert_eq!(
            first.summary, second.summary,
            "seed {seed}: summaries differ\n{replay}"
        );
        println!(
            "sim: seed {seed}: {} identical trace entries, digest {:016x}",
            first.trace.len(),
            digest(&first.trace)
        );
    }
}

/// FNV-1a over the trace, so runs in different processes (or builds) can be compared by eye.
fn digest(trace: &[String]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in trace.iter().flat_map(|line| line.bytes().chain([b'\n'])) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
