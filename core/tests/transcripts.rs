//! Proves the subscription's exact wire output for scripted histories (handoff race, resets,
//! heartbeats and checkpoints, lag and overflow fallback, lifetime end) by snapshotting the
//! frames each script produces: `tests/transcripts/*.txt` in, `tests/snapshots/*.snap` out.
//!
//! Script lines (`#` starts a comment):
//! - `config heartbeat=MS retry=MS window=N held=N lifetime=MS`
//! - `log head=N floor=N published=N` (epoch is always `00000000000000e1`)
//! - `filter project=P,P types=T,T session=S,S`
//! - `access grant=P,P|* key=BYTE salt=N` (auth on: a grant and ids sealed under `[BYTE; 32]`;
//!   sealed ids are printed as `sealed(SEQ/TWEAK)`, opened with the same key)
//! - `start head` | `start cursor=TEXT` | `start header=TEXT` (a `Last-Event-ID` header) |
//!   `start last=N`
//! - `at MS` (time for the following inputs)
//! - `live SEQ PROJECT KIND [SESSION]` | `page head=N floor=N [SEQ:PROJECT:KIND[:SESSION] ...]` |
//!   `lagged` | `located nth=N|none floor=N`
//! - `timeout` | `shutdown`

use std::fmt::Write as _;
use std::time::Duration;

use changefeed_core::{
    Access, Epoch, EventEncoder, EventRow, EventsQuery, Grant, IdKey, Located, LogPosition, Output,
    PayloadCheck, ReplayPage, Seq, Subscription, SubscriptionConfig,
};

const EPOCH: Epoch = Epoch(0xe1);

fn row(seq: u64, project: &str, kind: &str, session: Option<&str>) -> EventRow {
    EventRow {
        seq: Seq(seq),
        project_id: project.to_owned(),
        session_id: session.map(str::to_owned),
        kind: kind.to_owned(),
        payload: format!("{{\"n\":{seq}}}"),
        payload_check: PayloadCheck::Valid,
        created_at: "2026-11-26T00:00:00.000Z".to_owned(),
    }
}

/// Sealed ids in a frame as `sealed(SEQ/TWEAK)`, so transcripts stay readable and stable.
fn unseal(text: &str, key: Option<&IdKey>) -> String {
    let Some(key) = key else {
        return text.to_owned();
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        match key.open(word) {
            Some((epoch, seq, tweak)) => {
                assert_eq!(epoch, EPOCH);
                out.push_str(&format!("sealed({seq}/{tweak})"));
            }
            None => out.push_str(word),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn words(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|word| word.split_once('='))
}

fn run_script(script: &str) -> String {
    let mut config = SubscriptionConfig::default();
    let mut log = LogPosition {
        epoch: EPOCH,
        head: Seq::ZERO,
        floor: Seq::ZERO,
        published: Seq::ZERO,
    };
    let mut query = String::new();
    let mut access = Access::open();
    let mut key: Option<IdKey> = None;
    let mut subscription: Option<Subscription> = None;
    let mut now = Duration::ZERO;
    let mut transcript = String::new();
    for line in script.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        writeln!(transcript, "{line}").unwrap();
        let command = line.split_whitespace().next().unwrap();
        let number = |value: &str| value.parse::<u64>().expect("number");
        match command {
            "config" => {
                for (key, value) in words(line) {
                    match key {
                        "heartbeat" => config.heartbeat = Duration::from_millis(number(value)),
                        "retry" => config.retry = Duration::from_millis(number(value)),
                        "window" => config.replay_window = number(value),
                        "held" => config.max_held = number(value) as usize,
                        "lifetime" => {
                            config.max_lifetime = Some(Duration::from_millis(number(value)))
                        }
                        other => panic!("unknown config {other}"),
                    }
                }
            }
            "log" => {
                for (key, value) in words(line) {
                    let seq = Seq(number(value));
                    match key {
                        "head" => log.head = seq,
                        "floor" => log.floor = seq,
                        "published" => log.published = seq,
                        other => panic!("unknown log field {other}"),
                    }
                }
            }
            "filter" => {
                let parts: Vec<String> = words(line)
                    .flat_map(|(key, value)| match key {
                        "project" | "session" => {
                            value.split(',').map(|p| format!("{key}={p}")).collect()
                        }
                        "types" => vec![format!("types={value}")],
                        other => panic!("unknown filter {other}"),
                    })
                    .collect();
                query = parts.join("&");
            }
            "access" => {
                let mut grant = Grant::All;
                let mut salt = 0;
                for (name, value) in words(line) {
                    match name {
                        "grant" if value == "*" => grant = Grant::All,
                        "grant" => grant = Grant::projects(value.split(',')),
                        "key" => key = Some(IdKey::from_bytes([number(value) as u8; 32])),
                        "salt" => salt = number(value),
                        other => panic!("unknown access field {other}"),
                    }
                }
                access = Access::tenant(grant, key.clone().expect("key="), salt);
            }
            "start" => {
                let ids = access.ids.clone();
                let parse = |query: &str| EventsQuery::parse_with(Some(query), &ids);
                let parsed = parse(&query).expect("valid filter");
                let rest = line.strip_prefix("start").unwrap().trim();
                let start = if rest == "head" {
                    parsed.start(None)
                } else if let Some(cursor) = rest.strip_prefix("cursor=") {
                    parse(&format!("{query}&after={cursor}"))
                        .expect("valid after")
                        .start(None)
                } else if let Some(header) = rest.strip_prefix("header=") {
                    parsed.start_with(Some(header), &ids)
                } else if let Some(count) = rest.strip_prefix("last=") {
                    parse(&format!("{query}&last={count}"))
                        .expect("valid last")
                        .start(None)
                } else {
                    panic!("bad start {rest}")
                };
                let filter = parsed.authorize(&access.grant).expect("granted");
                let created = Subscription::with_access(
                    start,
                    filter,
                    access.clone(),
                    log,
                    config.clone(),
                    now,
                );
                writeln!(
                    transcript,
                    "  = Changefeed-Cursor: {}",
                    unseal(created.start_id().unwrap_or("(after locate)"), key.as_ref())
                )
                .unwrap();
                subscription = Some(created);
            }
            "at" => now = Duration::from_millis(number(line.split_whitespace().nth(1).unwrap())),
            _ => {
                let sub = subscription.as_mut().expect("start first");
                let mut parts = line.split_whitespace().skip(1);
                match command {
                    "live" => {
                        let seq = number(parts.next().unwrap());
                        let (project, kind) = (parts.next().unwrap(), parts.next().unwrap());
                        let encoder = EventEncoder::with_ids(EPOCH, access.ids.clone());
                        sub.handle_live(
                            &encoder.encode(&row(seq, project, kind, parts.next())),
                            now,
                        )
                    }
                    "located" => {
                        let mut located = Located {
                            nth: None,
                            floor: Seq::ZERO,
                        };
                        for (name, value) in words(line) {
                            match name {
                                "nth" if value == "none" => located.nth = None,
                                "nth" => located.nth = Some(Seq(number(value))),
                                "floor" => located.floor = Seq(number(value)),
                                other => panic!("unknown located field {other}"),
                            }
                        }
                        sub.handle_located(located, now)
                    }
                    "lagged" => sub.handle_lagged(now),
                    "timeout" => sub.handle_timeout(now),
                    "shutdown" => sub.handle_shutdown(now),
                    "page" => {
                        let mut page = ReplayPage {
                            rows: Vec::new(),
                            head: Seq::ZERO,
                            floor: Seq::ZERO,
                        };
                        for part in parts {
                            if let Some(head) = part.strip_prefix("head=") {
                                page.head = Seq(number(head));
                            } else if let Some(floor) = part.strip_prefix("floor=") {
                                page.floor = Seq(number(floor));
                            } else {
                                let fields: Vec<&str> = part.split(':').collect();
                                page.rows.push(row(
                                    number(fields[0]),
                                    fields[1],
                                    fields[2],
                                    fields.get(3).copied(),
                                ));
                            }
                        }
                        sub.handle_page(page, now);
                    }
                    other => panic!("unknown command {other}"),
                }
            }
        }
        if let Some(sub) = subscription.as_mut() {
            while let Some(output) = sub.poll_output() {
                match output {
                    Output::Frames { bytes, .. } => {
                        let text = String::from_utf8(bytes.to_vec()).unwrap();
                        let text = unseal(&text, key.as_ref());
                        writeln!(transcript, "  > {}", text.escape_debug()).unwrap();
                    }
                    Output::Fetch(fetch) => {
                        writeln!(transcript, "  > fetch ({}, {}]", fetch.after, fetch.upto).unwrap()
                    }
                    Output::Locate(locate) => writeln!(
                        transcript,
                        "  > locate {} upto {}",
                        locate.count, locate.upto
                    )
                    .unwrap(),
                    Output::Close => writeln!(transcript, "  > close").unwrap(),
                }
            }
            if let Some((deadline, reason)) = sub.poll_timeout() {
                writeln!(
                    transcript,
                    "  . {:?} phase, timeout at {} ({reason:?})",
                    sub.phase(),
                    deadline.as_millis()
                )
                .unwrap();
            } else {
                writeln!(transcript, "  . {:?} phase", sub.phase()).unwrap();
            }
        }
    }
    transcript
}

#[test]
fn transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("transcripts directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 8, "expected the transcript scripts");
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let script = std::fs::read_to_string(&path).unwrap();
        insta::assert_snapshot!(name, run_script(&script));
    }
}
