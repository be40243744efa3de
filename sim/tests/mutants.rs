//! Proves the simulation has teeth: planted bugs — a store that drops the first row of each
//! replay window, a store whose window reports a stale head, and a shell that bypasses the core's dedup once live —
//! are each caught within the CI seed budget, while the same assembled shell without the bug
//! passes those seeds.

use changefeed_sim::assembled::Variant;
use changefeed_sim::scenario::{run, Options, ServerKind};
use changefeed_sim::seeds::{budget, seeds};
use changefeed_sim::store::StoreFault;

/// The first seed (of the budget) whose run fails, and why.
fn first_detection(server: ServerKind, store_fault: StoreFault) -> Option<(u64, String)> {
    budget().into_iter().find_map(|seed| {
        run(Options {
            seed,
            server,
            store_fault,
        })
        .err()
        .map(|failure| (seed, failure.message))
    })
}

/// Asserts that some seed of the budget fails, and that it fails by the invariant the bug
/// breaks (`expected` appears in the violation), not by some unrelated error.
fn assert_caught(name: &str, server: ServerKind, store_fault: StoreFault, expected: &str) {
    let budget = budget().len();
    match first_detection(server, store_fault) {
        Some((seed, message)) => {
            println!("sim: mutant {name:?} caught at seed {seed}: {message}");
            assert!(
                message.contains(expected),
                "mutant {name:?} made seed {seed} fail, but not with {expected}: {message}"
            );
        }
        None => panic!("mutant {name:?} survived all {budget} seeds"),
    }
}

#[test]
fn replay_off_by_one_is_caught() {
    assert_caught(
        "window drops its first row",
        ServerKind::Real,
        StoreFault::DropFirstRow,
        "LOSS",
    );
}

#[test]
fn stale_window_head_is_caught() {
    assert_caught(
        "window reports a stale head",
        ServerKind::Real,
        StoreFault::StaleHead,
        "LOSS",
    );
}

#[test]
fn bypassing_dedup_is_caught() {
    assert_caught(
        "live frames bypass the core's dedup",
        ServerKind::Assembled(Variant::BypassDedup),
        StoreFault::None,
        "DUPLICATE",
    );
}

#[test]
fn assembled_control_passes() {
    for seed in seeds() {
        if let Err(failure) = run(Options {
            seed,
            server: ServerKind::Assembled(Variant::Correct),
            store_fault: StoreFault::None,
        }) {
            panic!(
                "the assembled shell without a planted bug failed: {failure}\nreplay with: \
                 SIM_SEED={seed} RUSTFLAGS=\"--cfg tokio_unstable\" CARGO_TARGET_DIR=target/sim \
                 cargo test --profile fast -p changefeed-sim --test mutants -- --nocapture"
            );
        }
    }
}
