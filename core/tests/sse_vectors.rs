//! Proves the SSE parser matches every browser-checked vector in `tests/data/sse-parse.json`, fed whole, split into two chunks at every byte position, and byte by byte.

use changefeed_core::sse::{Item, Parser};
use serde_json::Value;

/// What a run of the parser over one body produced, in the vectors' terms.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// (type, data, last event id at dispatch) of each dispatched event.
    events: Vec<(String, String, String)>,
    last_id: String,
    retry: Option<u64>,
}

struct Vector {
    name: String,
    input: Vec<u8>,
    seed_id: String,
    expected: Outcome,
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd-length input_hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("input_hex is hex"))
        .collect()
}

fn str_field<'a>(value: &'a Value, key: &str, name: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector {name:?}: {key} must be a string"))
}

fn load() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sse-parse.json");
    let text = std::fs::read_to_string(path).expect("read sse-parse.json");
    let root: Value = serde_json::from_str(&text).expect("sse-parse.json is JSON");
    let vectors = root["vectors"].as_array().expect("vectors is an array");
    vectors
        .iter()
        .map(|v| {
            let name = str_field(v, "name", "?").to_string();
            let input = match (v.get("input"), v.get("input_hex")) {
                (Some(Value::String(text)), None) => text.as_bytes().to_vec(),
                (None, Some(Value::String(text))) => hex(text),
                _ => panic!("vector {name:?}: exactly one of input / input_hex"),
            };
            let seed_id = v
                .get("seed_id")
                .map(|s| s.as_str().expect("seed_id is a string").to_string())
                .unwrap_or_default();
            let events = v["events"]
                .as_array()
                .unwrap_or_else(|| panic!("vector {name:?}: events must be an array"))
                .iter()
                .map(|e| {
                    (
                        str_field(e, "type", &name).to_string(),
                        str_field(e, "data", &name).to_string(),
                        str_field(e, "id", &name).to_string(),
                    )
                })
                .collect();
            let retry = match &v["retry"] {
                Value::Null => None,
                other => Some(
                    other
                        .as_u64()
                        .unwrap_or_else(|| panic!("vector {name:?}: retry is null or a u64")),
                ),
            };
            let expected = Outcome {
                events,
                last_id: str_field(v, "last_id", &name).to_string(),
                retry,
            };
            Vector {
                name,
                input,
                seed_id,
                expected,
            }
        })
        .collect()
}

/// Feeds `chunks` to a fresh parser seeded with `seed`, ends the stream, and collects the result.
fn run<'a>(seed: &str, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::new(seed);
    for chunk in chunks {
        parser
            .feed(chunk)
            .expect("no vector exceeds the default limits");
    }
    parser.finish();
    let mut events = Vec::new();
    let mut last_retry = None;
    while let Some(item) = parser.next_item() {
        match item {
            Item::Event(e) => events.push((e.event_type, e.data, e.last_event_id)),
            Item::Retry(millis) => last_retry = Some(millis),
            Item::Comment(_) => {}
        }
    }
    assert_eq!(
        last_retry,
        parser.retry(),
        "the last Retry item must match Parser::retry"
    );
    Outcome {
        events,
        last_id: parser.last_event_id().to_string(),
        retry: parser.retry(),
    }
}

#[test]
fn every_vector_whole_split_and_byte_by_byte() {
    let vectors = load();
    assert!(!vectors.is_empty(), "sse-parse.json holds no vectors");
    let mut run_count = 0;
    for v in &vectors {
        let input = &v.input[..];

        let whole = run(&v.seed_id, [input]);
        assert_eq!(whole, v.expected, "vector {:?} fed whole", v.name);

        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            let outcome = run(&v.seed_id, [a, b]);
            assert_eq!(
                outcome,
                v.expected,
                "vector {:?} split at byte {split} of {}",
                v.name,
                input.len()
            );
        }

        let bytewise = run(&v.seed_id, input.chunks(1));
        assert_eq!(bytewise, v.expected, "vector {:?} fed byte by byte", v.name);

        run_count += 1;
    }
    assert_eq!(run_count, vectors.len(), "every vector was run");
}
