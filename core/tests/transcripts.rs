//! Proves the subscription's exact wire output for scripted histories (handoff race, resets,
//! heartbeats and checkpoints, lag and overflow fallback, lifetime end) by snapshotting the
//! frames each script produces: `tests/transcripts/*.txt` in, `tests/snapshots/*.snap` out.
//!
//! Script lines (`#` starts a comment):
//! - `config heartbeat=MS retry=MS window=N held=N lifetime=MS`
//! - `log head=N floor=N published=N` (epoch is always `00000000000000e1`)
//! - `filter project=P,P types=T,T`
//! - `start head` | `start cursor=TEXT` | `start header=TEXT` (a `Last-Event-ID` header)
//! - `at MS` (time for the following inputs)
//! - `live SEQ PROJECT KIND` | `page head=N floor=N [SEQ:PROJECT:KIND ...]` | `lagged`
//! - `timeout` | `shutdown`

use std::fmt::Write as _;
use std::time::Duration;

use changefeed_core::{
    Epoch, Event, EventEncoder, EventRow, EventsQuery, LogPosition, Output, PayloadCheck,
    ReplayPage, Seq, Subscription, SubscriptionConfig,
};

const EPOCH: Epoch = Epoch(0xe1);

fn row(seq: u64, project: &str, kind: &str) -> EventRow {
    EventRow {
        seq: Seq(seq),
        project_id: project.to_owned(),
        session_id: None,
        kind: kind.to_owned(),
        payload: format!("{{\"n\":{seq}}}"),
        payload_check: PayloadCheck::Valid,
        created_at: "2026-11-26T00:00:00.000Z".to_owned(),
    }
}

fn live(seq: u64, project: &str, kind: &str) -> Event {
    EventEncoder::new(EPOCH).encode(&row(seq, project, kind))
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
                    .flat_map(|(key, value)| {
                        let key = if key == "project" { "project" } else { "types" };
                        if key == "project" {
                            value.split(',').map(|p| format!("project={p}")).collect()
                        } else {
                            vec![format!("types={value}")]
                        }
                    })
                    .collect();
                query = parts.join("&");
            }
            "start" => {
                let parsed = EventsQuery::parse(Some(&query)).expect("valid filter");
                let rest = line.strip_prefix("start").unwrap().trim();
                let start = if rest == "head" {
                    parsed.start(None)
                } else if let Some(cursor) = rest.strip_prefix("cursor=") {
                    EventsQuery::parse(Some(&format!("{query}&after={cursor}")))
                        .expect("valid after")
                        .start(None)
                } else if let Some(header) = rest.strip_prefix("header=") {
                    parsed.start(Some(header))
                } else {
                    panic!("bad start {rest}")
                };
                let created = Subscription::new(start, parsed.filter, log, config.clone(), now);
                writeln!(
                    transcript,
                    "  = Changefeed-Cursor: {}",
                    created.start_cursor()
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
                        sub.handle_live(
                            &live(seq, parts.next().unwrap(), parts.next().unwrap()),
                            now,
                        )
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
                                page.rows.push(row(number(fields[0]), fields[1], fields[2]));
                            }
                        }
                        sub.handle_page(page, now)
                    }
                    other => panic!("unknown command {other}"),
                }
            }
        }
        if let Some(sub) = subscription.as_mut() {
            while let Some(output) = sub.poll_output() {
                match output {
                    Output::Frame(bytes) => {
                        let text = String::from_utf8(bytes.to_vec()).unwrap();
                        writeln!(transcript, "  > {}", text.escape_debug()).unwrap();
                    }
                    Output::Fetch(fetch) => {
                        writeln!(transcript, "  > fetch ({}, {}]", fetch.after, fetch.upto).unwrap()
                    }
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
