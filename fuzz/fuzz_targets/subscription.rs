//! The subscription against its reference model: bytes become a [`Scenario`] (via `arbitrary`),
//! which `changefeed_core::model::run` plays, settles and checks — the same harness and the
//! same assertions as the property test `core/tests/subscription_model.rs`. Any assertion
//! failure is a crash.
//!
//! Values are mapped into the ranges of the property test's strategy (the model's domain: see
//! `Scenario`), except that scenarios may be longer (up to 64 log rows and 256 actions).

#![no_main]

use arbitrary::Arbitrary;
use changefeed_core::model::{self, Action, Scenario, StartChoice, TenantChoice, PROJECTS};
use libfuzzer_sys::fuzz_target;

const MAX_ROWS: usize = 64;
const MAX_ACTIONS: usize = 256;
const TYPES: [&str; 5] = ["pr_*", "session_created", "*", "pr_check_recorded", "p*"];

#[derive(Debug, Arbitrary)]
enum FuzzAction {
    Commit(u8),
    Publish,
    DeliverLive,
    DuplicateLive,
    Lag(u8),
    AnswerFetch { sloppy: bool },
    Prune(u8),
    Tick(u16),
    Transmit(u16),
    Disconnect,
}

#[derive(Debug, Arbitrary)]
enum FuzzStart {
    Head,
    Seq { offset: u8, bare: bool },
    Ahead,
    Foreign,
    Invalid,
    Forged,
    Last(u8),
}

#[derive(Debug, Arbitrary)]
struct FuzzTenant {
    grant: Option<Vec<u8>>,
    bypass_authorize: bool,
}

#[derive(Debug, Arbitrary)]
struct FuzzScenario {
    gaps: Vec<(u8, u8, u8)>,
    preloaded: u8,
    published_before: u8,
    floor_eighths: u8,
    start: FuzzStart,
    projects: Option<Vec<u8>>,
    types: Option<Vec<u8>>,
    sessions: Option<Vec<u8>>,
    tenant: Option<FuzzTenant>,
    max_held: u8,
    window: u8,
    lifetime: Option<u16>,
    batch_bytes: u16,
    actions: Vec<FuzzAction>,
}

/// `1..=max` for a non-empty selection of at most `max` items.
fn some_of<T>(items: &[u8], max: usize, pick: impl Fn(u8) -> T) -> Vec<T> {
    let mut out: Vec<T> = items.iter().take(max).map(|&b| pick(b)).collect();
    if out.is_empty() {
        out.push(pick(0));
    }
    out
}

impl From<FuzzAction> for Action {
    fn from(action: FuzzAction) -> Action {
        match action {
            FuzzAction::Commit(n) => Action::Commit(1 + usize::from(n) % 3),
            FuzzAction::Publish => Action::Publish,
            FuzzAction::DeliverLive => Action::DeliverLive,
            FuzzAction::DuplicateLive => Action::DuplicateLive,
            FuzzAction::Lag(n) => Action::Lag(1 + usize::from(n) % 5),
            FuzzAction::AnswerFetch { sloppy } => Action::AnswerFetch { sloppy },
            FuzzAction::Prune(e) => Action::Prune(e % 9),
            FuzzAction::Tick(ms) => Action::Tick(1 + u64::from(ms) % 2999),
            FuzzAction::Transmit(n) => Action::Transmit(1 + usize::from(n) % 399),
            FuzzAction::Disconnect => Action::Disconnect,
        }
    }
}

impl From<FuzzScenario> for Scenario {
    fn from(f: FuzzScenario) -> Scenario {
        let gaps: Vec<(u64, usize, usize)> = f
            .gaps
            .iter()
            .take(MAX_ROWS)
            .map(|&(gap, project, kind)| {
                (
                    1 + u64::from(gap) % 3,
                    usize::from(project) % PROJECTS.len(),
                    usize::from(kind) % model::KINDS.len(),
                )
            })
            .collect();
        let preloaded = (usize::from(f.preloaded) % 40).min(gaps.len());
        let published_before = (usize::from(f.published_before) % 40).min(preloaded);
        Scenario {
            gaps,
            preloaded,
            published_before,
            floor_eighths: f.floor_eighths % 5,
            start: match f.start {
                FuzzStart::Head => StartChoice::Head,
                FuzzStart::Seq { offset, bare } => StartChoice::Seq {
                    offset: u64::from(offset) % 80,
                    bare,
                },
                FuzzStart::Ahead => StartChoice::Ahead,
                FuzzStart::Foreign => StartChoice::Foreign,
                FuzzStart::Invalid => StartChoice::Invalid,
                FuzzStart::Forged => StartChoice::Forged,
                FuzzStart::Last(n) => StartChoice::Last(1 + u32::from(n) % 5),
            },
            projects: f
                .projects
                .map(|p| some_of(&p, 2, |b| usize::from(b) % PROJECTS.len())),
            types: f
                .types
                .map(|t| some_of(&t, 2, |b| TYPES[usize::from(b) % TYPES.len()].to_owned())),
            // s1 and s2 (the empty session is no valid `session=` value).
            sessions: f.sessions.map(|s| some_of(&s, 2, |b| usize::from(b) % 2)),
            tenant: f.tenant.map(|t| TenantChoice {
                grant: t
                    .grant
                    .map(|g| some_of(&g, 2, |b| usize::from(b) % PROJECTS.len())),
                bypass_authorize: t.bypass_authorize,
            }),
            max_held: 1 + usize::from(f.max_held) % 5,
            window: 1 + u64::from(f.window) % 11,
            lifetime: f.lifetime.map(|ms| 1000 + u64::from(ms) % 19_000),
            // 0 (every frame alone) or batches of up to a few frames.
            batch_bytes: usize::from(f.batch_bytes) % 600,
            actions: f
                .actions
                .into_iter()
                .take(MAX_ACTIONS)
                .map(Action::from)
                .collect(),
        }
    }
}

/// Set `PRINT_SCENARIO=1` to print each scenario before it runs (for reproducing a crash as a
/// property-test case).
fn print_scenarios() -> bool {
    static PRINT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRINT.get_or_init(|| std::env::var_os("PRINT_SCENARIO").is_some())
}

fuzz_target!(|input: FuzzScenario| {
    let scenario = Scenario::from(input);
    if print_scenarios() {
        eprintln!("{scenario:?}");
    }
    model::run(&scenario);
});
