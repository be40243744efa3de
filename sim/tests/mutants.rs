//! Proves the simulation has teeth: bugs planted at narrow seams around the real product — a
//! store whose replay windows drop their first row, a store whose windows report a stale head, a
//! live feed whose subscriptions take effect late, a proxy that sends a change frame twice, and
//! a layer that authenticates every request with a token granting every project — are each caught within the CI seed budget, by the invariant each one breaks.

use changefeed_sim::run::run_seed;
use changefeed_sim::seams::Bug;
use changefeed_sim::seeds::budget;

/// The first seed (of the budget) whose run fails, and why.
fn first_detection(bug: Bug) -> Option<(u64, String)> {
    budget().into_iter().find_map(|seed| {
        run_seed(seed, bug)
            .err()
            .map(|failure| (seed, failure.message))
    })
}

/// Asserts that some seed of the budget fails, and that it fails by the invariant the bug
/// breaks (`expected` appears in the violation), not by some unrelated error.
fn assert_caught(bug: Bug, expected: &str) {
    let budget = budget().len();
    match first_detection(bug) {
        Some((seed, message)) => {
            println!("sim: planted bug {bug:?} caught at seed {seed}: {message}");
            assert!(
                message.contains(expected),
                "planted bug {bug:?} made seed {seed} fail, but not with {expected}: {message}\n\
                 replay with: SIM_SEED={seed} SIM_TRACE=1 scripts/sim.sh"
            );
        }
        None => panic!("planted bug {bug:?} survived all {budget} seeds"),
    }
}

#[test]
fn replay_off_by_one_is_caught() {
    assert_caught(Bug::DropFirstRow, "LOSS");
}

#[test]
fn stale_window_head_is_caught() {
    assert_caught(Bug::StaleHead, "LOSS");
}

#[test]
fn a_live_subscription_that_takes_effect_late_is_caught() {
    assert_caught(Bug::SubscribeLate, "LOSS");
}

#[test]
fn a_frame_sent_twice_is_caught() {
    assert_caught(Bug::DuplicateFrame, "DUPLICATE");
}

#[test]
fn a_bypassed_grant_check_is_caught() {
    assert_caught(Bug::GrantBypass, "GRANT LEAK");
}
