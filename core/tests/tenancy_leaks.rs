//! Proves that with auth on (a grant and sealed ids) what one tenant receives reveals neither
//! how many rows another tenant wrote nor when: tenant A's whole transcript — every frame's
//! bytes with each id replaced by the order of its first appearance, and the time it was
//! written — is identical across worlds that differ only in tenant B's rows and writes (count
//! and timing, before A connects and while A is live). That is stronger than "nothing beyond
//! the heartbeat period": a sealed stream writes a fresh checkpoint at every tick. With plain
//! ids the same worlds are told apart (the comparison has teeth). Store latency is not modelled
//! (pages are answered at once), so how long a replay takes is outside this proof.

use std::collections::HashMap;
use std::time::Duration;

use changefeed_core::sse::{Item, Parser};
use changefeed_core::{
    Access, Epoch, EventEncoder, EventRow, EventsQuery, Grant, IdKey, Ids, LogPosition, Output,
    PayloadCheck, ReplayPage, Seq, Subscription, SubscriptionConfig,
};
use proptest::prelude::*;

const EPOCH: Epoch = Epoch(0x7e7a);
const HEARTBEAT_MS: u64 = 1000;

/// One world: rows written before A connects, then timed writes, in microseconds.
#[derive(Debug, Clone)]
struct World {
    /// Projects of the rows already in the log when A connects.
    before: Vec<&'static str>,
    /// (time in µs, project) of later writes, in time order.
    writes: Vec<(u64, &'static str)>,
    /// When the run ends (µs).
    end: u64,
}

fn row(seq: u64, project: &str) -> EventRow {
    EventRow {
        seq: Seq(seq),
        project_id: project.to_owned(),
        session_id: None,
        kind: "pr_updated".to_owned(),
        payload: "{\"n\":1}".to_owned(),
        payload_check: PayloadCheck::Valid,
        created_at: "2026-11-26T00:00:00.000Z".to_owned(),
    }
}

/// A's transcript: (time µs, frame with ids relabelled by first appearance).
fn transcript(world: &World, sealed: bool) -> Vec<(u64, String)> {
    let ids = if sealed {
        Ids::Sealed(IdKey::from_bytes([3; 32]))
    } else {
        Ids::Plain
    };
    let access = match &ids {
        Ids::Sealed(key) => Access::tenant(Grant::projects(["a"]), key.clone(), 99),
        Ids::Plain => Access::open(),
    };
    let encoder = EventEncoder::with_ids(EPOCH, ids.clone());
    let query = EventsQuery::parse_with(Some("after=0"), &ids).unwrap();
    let filter = query.authorize(&Grant::projects(["a"])).unwrap();
    let mut log: Vec<EventRow> = Vec::new();
    for project in &world.before {
        log.push(row(log.len() as u64 + 1, project));
    }
    let head = Seq(log.len() as u64);
    let config = SubscriptionConfig {
        heartbeat: Duration::from_millis(HEARTBEAT_MS),
        ..SubscriptionConfig::default()
    };
    let position = LogPosition {
        epoch: EPOCH,
        head,
        floor: Seq::ZERO,
        published: head,
    };
    let mut sub = Subscription::with_access(
        query.start_with(None, &ids),
        filter,
        access,
        position,
        config,
        Duration::ZERO,
    );
    let mut out = Vec::new();
    let mut drain = |sub: &mut Subscription, log: &[EventRow], now: u64| loop {
        match sub.poll_output() {
            Some(Output::Frames { bytes, .. }) => out.push((now, bytes.to_vec())),
            Some(Output::Fetch(fetch)) => {
                let rows = log
                    .iter()
                    .filter(|r| r.seq > fetch.after && r.seq <= fetch.upto)
                    .cloned()
                    .collect();
                let page = ReplayPage {
                    rows,
                    head: Seq(log.len() as u64),
                    floor: Seq::ZERO,
                };
                sub.handle_page(page, Duration::from_micros(now));
            }
            Some(Output::Locate(_)) => panic!("no last= here"),
            Some(Output::Close) | None => break,
        }
    };
    drain(&mut sub, &log, 0);
    let mut writes = world.writes.iter().peekable();
    let mut now = 0;
    loop {
        let deadline = sub.poll_timeout().map(|(at, _)| at.as_micros() as u64);
        let next_write = writes.peek().map(|(at, _)| *at);
        match (deadline, next_write) {
            (Some(tick), write) if tick <= world.end && write.is_none_or(|w| tick <= w) => {
                now = tick;
                sub.handle_timeout(Duration::from_micros(now));
            }
            (_, Some(at)) if at <= world.end => {
                now = at;
                let (_, project) = writes.next().unwrap();
                let new = row(log.len() as u64 + 1, project);
                log.push(new.clone());
                sub.handle_live(&encoder.encode(&new), Duration::from_micros(now));
            }
            _ => break,
        }
        drain(&mut sub, &log, now);
    }
    sub.handle_shutdown(Duration::from_micros(world.end.max(now)));
    drain(&mut sub, &log, world.end.max(now));
    relabel(out)
}

/// Replaces every id (in `id:` lines and in JSON) by `#n`, n its order of first appearance.
fn relabel(frames: Vec<(u64, Vec<u8>)>) -> Vec<(u64, String)> {
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut parser = Parser::default();
    frames
        .into_iter()
        .map(|(at, bytes)| {
            let mut text = String::from_utf8(bytes.clone()).unwrap();
            parser.feed(&bytes).unwrap();
            while parser
                .next_item()
                .is_some_and(|item| !matches!(item, Item::Event(_)))
            {}
            let id = parser.last_event_id().to_owned();
            if !id.is_empty() {
                let next = labels.len();
                let label = *labels.entry(id.clone()).or_insert(next);
                text = text.replace(&id, &format!("#{label}"));
            }
            (at, text)
        })
        .collect()
}

/// A world: A's rows and writes as given, B's interleaved at the given places and times.
fn world_of(a_before: usize, b_before: &[usize], a_writes: &[u64], b_writes: &[u64]) -> World {
    let mut before: Vec<&'static str> = vec!["a"; a_before];
    for &at in b_before {
        before.insert(at % (before.len() + 1), "b");
    }
    // A writes at whole milliseconds, B half a millisecond later than any whole one, so the
    // order of writes at one instant never matters.
    let mut writes: Vec<(u64, &'static str)> = a_writes
        .iter()
        .map(|ms| (ms * 1000, "a"))
        .chain(b_writes.iter().map(|ms| (ms * 1000 + 500, "b")))
        .collect();
    writes.sort_by_key(|(at, _)| *at);
    writes.dedup();
    World {
        before,
        writes,
        end: 9_000_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Two worlds with the same rows and writes of A and unrelated rows and writes of B (any
    /// count, any time): A's sealed transcripts are identical — at heartbeat resolution and
    /// below, since a sealed stream writes a fresh checkpoint at every tick whether or not
    /// the position moved.
    #[test]
    fn sealed_transcripts_do_not_depend_on_other_tenants_counts_or_timing(
        a_before in 0usize..6,
        a_writes in prop::collection::vec(0u64..8_000, 0..12),
        b_one in (prop::collection::vec(any::<usize>(), 0..20), prop::collection::vec(0u64..8_000, 0..30)),
        b_two in (prop::collection::vec(any::<usize>(), 0..20), prop::collection::vec(0u64..8_000, 0..30)),
    ) {
        let one = world_of(a_before, &b_one.0, &a_writes, &b_one.1);
        let two = world_of(a_before, &b_two.0, &a_writes, &b_two.1);
        let a = transcript(&one, true);
        prop_assert_eq!(&a, &transcript(&two, true), "world {:?} vs {:?}", one, two);
        // A's own events all arrive, each once.
        let events = a.iter().filter(|(_, f)| f.contains("event: pr_updated")).count();
        let mut distinct = a_writes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(events, a_before + distinct.len());
    }
}

/// The same comparison with plain ids tells the worlds apart: ids carry B's write count.
#[test]
fn plain_ids_reveal_other_tenants_write_counts() {
    let one = World {
        before: vec!["a", "b"],
        writes: vec![(1_000_500, "b"), (2_000_000, "a")],
        end: 5_000_000,
    };
    let many = World {
        before: vec!["a", "b", "b", "b"],
        writes: vec![(1_000_500, "b"), (1_300_500, "b"), (2_000_000, "a")],
        end: 5_000_000,
    };
    assert_ne!(transcript(&one, false), transcript(&many, false));
    assert_eq!(transcript(&one, true), transcript(&many, true));
    // And A's own event is there, once, with no seq in its JSON.
    let sealed = transcript(&many, true);
    let events: Vec<_> = sealed
        .iter()
        .filter(|(_, f)| f.contains("event: pr_updated"))
        .collect();
    assert_eq!(events.len(), 2, "{sealed:?}");
    assert!(events.iter().all(|(_, f)| !f.contains("\"seq\"")));
}

/// Without B writes in a period, a sealed stream still writes a checkpoint at the tick, with an
/// id never seen before: whether the position moved cannot be read from it.
#[test]
fn sealed_ticks_always_write_a_fresh_id() {
    let quiet = World {
        before: vec!["a"],
        writes: vec![],
        end: 3_500_000,
    };
    let busy = World {
        before: vec!["a"],
        writes: vec![(500_500, "b"), (2_100_500, "b")],
        end: 3_500_000,
    };
    let transcript = transcript(&quiet, true);
    let ticks: Vec<&String> = transcript
        .iter()
        .filter(|(at, _)| at % 1_000_000 == 0 && *at > 0)
        .map(|(_, f)| f)
        .collect();
    assert_eq!(ticks.len(), 3, "{transcript:?}");
    let mut seen = std::collections::HashSet::new();
    for (_, frame) in &transcript {
        if let Some(id) = frame.strip_prefix("id: ") {
            assert!(seen.insert(id.to_owned()), "an id repeated: {frame:?}");
        }
    }
    assert_eq!(
        transcript,
        self::transcript(&busy, true),
        "B wrote in periods 1 and 3 but not 2: not even that is visible"
    );
    let plain = |world: &World| self::transcript(world, false);
    assert_ne!(plain(&quiet), plain(&busy), "plain ids show it");
}
