//! Proves, against a reference model, that a client following `Subscription` streams receives
//! every matching event after its cursor exactly once and in order — across any interleaving of
//! commits, publishes, replay pages, early/late/duplicated live deliveries, lag, pruning,
//! heartbeats, lifetimes and reconnects that resume from the last id the client parsed — gets a
//! `changefeed.reset` exactly when its cursor cannot be honoured, and at each
//! `changefeed.ready` has every matching row with seq ≤ the head read when that connection
//! opened. Filters include `session=`; `last=n` starts right before the model's own n-th newest
//! matching row; with auth on (a grant, sealed ids) nothing outside the grant is ever
//! delivered — also when the subscription gets a filter that was never authorized — a
//! `project=` outside the grant is `forbidden`, ids open (with the model's own implementation
//! of the format) to exact positions, and id-only frames come only at heartbeat ticks.
//!
//! The harness (scenario, world, client, checks) lives in `changefeed_core::model` (feature
//! `model`) so that the `subscription` fuzz target runs the very same checks.

use changefeed_core::model::*;
use changefeed_core::Seq;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1usize..4).prop_map(Action::Commit),
        3 => Just(Action::Publish),
        4 => Just(Action::DeliverLive),
        1 => Just(Action::DuplicateLive),
        1 => (1usize..6).prop_map(Action::Lag),
        5 => any::<bool>().prop_map(|sloppy| Action::AnswerFetch { sloppy }),
        1 => (0u8..=8).prop_map(Action::Prune),
        2 => (1u64..3000).prop_map(Action::Tick),
        4 => (1usize..400).prop_map(Action::Transmit),
        1 => Just(Action::Disconnect),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let gaps = prop::collection::vec((1u64..4, 0..PROJECTS.len(), 0..KINDS.len()), 0..40);
    let start = prop_oneof![
        2 => Just(StartChoice::Head),
        6 => (0u64..80, any::<bool>()).prop_map(|(offset, bare)| StartChoice::Seq { offset, bare }),
        1 => Just(StartChoice::Ahead),
        1 => Just(StartChoice::Foreign),
        1 => Just(StartChoice::Invalid),
        1 => Just(StartChoice::Forged),
        2 => (1u32..6).prop_map(StartChoice::Last),
    ];
    let sessions = prop::option::weighted(0.3, prop::collection::vec(0..2usize, 1..3)); // s1, s2 (not the empty one)
    let tenant = prop::option::weighted(
        0.4,
        (
            prop::option::of(prop::collection::vec(0..PROJECTS.len(), 1..3)),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(grant, bypass_authorize)| TenantChoice {
                grant,
                bypass_authorize,
            }),
    );
    let projects = prop::option::of(prop::collection::vec(0..PROJECTS.len(), 1..3));
    let types = prop::option::of(prop::collection::vec(
        prop::sample::select(vec![
            "pr_*",
            "session_created",
            "*",
            "pr_check_recorded",
            "p*",
        ]),
        1..3,
    ))
    .prop_map(|types| types.map(|t| t.into_iter().map(String::from).collect()));
    (
        gaps,
        0usize..40,
        0usize..40,
        0u8..=4,
        start,
        projects,
        types,
        (
            1usize..6,
            1u64..12,
            prop::option::of(1000u64..20_000),
            prop_oneof![Just(0usize), 1usize..600],
        ),
        prop::collection::vec(action(), 0..120),
        (sessions, tenant),
    )
        .prop_map(
            |(
                gaps,
                preloaded,
                published_before,
                floor_eighths,
                start,
                projects,
                types,
                (max_held, window, lifetime, batch_bytes),
                actions,
                (sessions, tenant),
            )| {
                let preloaded = preloaded.min(gaps.len());
                Scenario {
                    published_before: published_before.min(preloaded),
                    preloaded,
                    gaps,
                    floor_eighths,
                    start,
                    projects,
                    types,
                    sessions,
                    tenant,
                    max_held,
                    window,
                    lifetime,
                    batch_bytes,
                    actions,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048),
        max_shrink_iters: 20_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/subscription_model.txt"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn exactly_the_models_events_once_in_order(scenario in scenario()) {
        run(&scenario);
    }
}

/// A cursor-less client that loses its first connection before any event and resumes with the
/// id of the first frame misses nothing written in between.
#[test]
fn first_frame_id_makes_a_cursorless_client_resumable() {
    let scenario = Scenario {
        gaps: vec![(1, 0, 0), (1, 1, 1), (2, 2, 2)],
        preloaded: 1,
        published_before: 1,
        floor_eighths: 0,
        start: StartChoice::Head,
        projects: None,
        types: None,
        sessions: None,
        tenant: None,
        max_held: 4,
        window: 8,
        lifetime: None,
        batch_bytes: 0,
        actions: vec![
            Action::Transmit(usize::MAX),
            Action::Commit(2),
            Action::Publish,
            Action::Publish,
            Action::Disconnect,
        ],
    };
    let mut harness = Harness::new(&scenario);
    for action in &scenario.actions {
        harness.apply(action);
    }
    harness.settle();
    harness.check();
    assert_eq!(harness.client.segments[0].received, vec![Seq(2), Seq(4)]);
}

/// Found by the `subscription` fuzz target: a client whose cursor was ahead of head loses its
/// connection before the reset reaches it; the log then grows past the cursor and is pruned
/// above it, so the reconnection gets a `pruned` reset. The cursor never held anything, so the
/// events at or below it (2 and 4) were never owed: the promise of an unconfirmed segment starts
/// at the cursor the connection starts from.
#[test]
fn an_unconfirmed_cursor_pruned_on_reconnect_was_owed_nothing_before_it() {
    run(&Scenario {
        gaps: vec![(2, 1, 3), (2, 1, 3), (2, 2, 2)],
        preloaded: 0,
        published_before: 0,
        floor_eighths: 1,
        start: StartChoice::Ahead,
        projects: None,
        types: None,
        sessions: None,
        tenant: None,
        max_held: 1,
        window: 3,
        lifetime: Some(9535),
        batch_bytes: 0,
        actions: vec![Action::Commit(3), Action::Prune(8), Action::Disconnect],
    });
}

/// Rows committed by another process right before the connect, before the tailer published
/// them (head 5, P 2): they all arrive before `changefeed.ready`, although the live feed has
/// not delivered any of them yet when replay finishes. The ready check in the harness asserts
/// it; the received list pins that they came exactly once.
#[test]
fn rows_committed_before_connect_precede_ready_even_when_unpublished() {
    let scenario = Scenario {
        gaps: vec![
            (1, 0, 0),
            (1, 0, 1),
            (1, 1, 1),
            (1, 0, 2),
            (1, 2, 3),
            (1, 0, 0),
        ],
        preloaded: 5,
        published_before: 2,
        floor_eighths: 0,
        start: StartChoice::Seq {
            offset: 0,
            bare: true,
        },
        projects: Some(vec![0]),
        types: None,
        sessions: None,
        tenant: None,
        max_held: 1,
        window: 2,
        lifetime: None,
        batch_bytes: 0,
        actions: vec![
            Action::AnswerFetch { sloppy: true },
            Action::AnswerFetch { sloppy: false },
            Action::AnswerFetch { sloppy: false },
            Action::Transmit(usize::MAX),
            Action::Publish,
            Action::Publish,
            Action::DeliverLive,
        ],
    };
    let mut harness = Harness::new(&scenario);
    for action in &scenario.actions {
        harness.apply(action);
    }
    assert_eq!(
        harness.client.ready_this_connection, 1,
        "ready without any live event"
    );
    assert_eq!(
        harness.client.segments[0].received,
        vec![Seq(1), Seq(2), Seq(4)]
    );
    harness.settle();
    harness.check();
    assert_eq!(
        harness.client.segments[0].received,
        vec![Seq(1), Seq(2), Seq(4), Seq(6)]
    );
}
