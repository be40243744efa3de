//! Proves by property testing that encoder frames parse back exactly (event rows whatever their columns hold, with the documented degraded forms, and arbitrary text), that parsing never depends on how the stream is split into chunks (items, last event ID, retry and errors alike), and that the line and event-data limits always fire, as soon as they are crossed.

use changefeed_core::sse::{FrameBuilder, Item, ParseError, Parser, ParserLimits, SseEvent};
use changefeed_core::{timestamp, Epoch, EventEncoder, EventRow, PayloadCheck, Seq};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

const CASES: u32 = 512;

/// Everything a parser run produced: items in order, final last event ID and retry, and the error
/// that stopped it, if any.
#[derive(Debug, PartialEq)]
struct Outcome {
    items: Vec<Item>,
    last_event_id: String,
    retry: Option<u64>,
    error: Option<ParseError>,
}

fn drain(parser: &mut Parser) -> Vec<Item> {
    std::iter::from_fn(|| parser.next_item()).collect()
}

/// Feeds `chunks` in order (stopping at the first error, which must then be sticky) and ends
/// the stream.
fn run<'a>(
    seed: &str,
    limits: ParserLimits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut parser = Parser::with_limits(seed, limits);
    let mut error = None;
    for chunk in chunks {
        if let Err(e) = parser.feed(chunk) {
            assert_eq!(parser.feed(b"data: more\n\n"), Err(e), "errors are sticky");
            error = Some(e);
            break;
        }
    }
    parser.finish();
    Outcome {
        items: drain(&mut parser),
        last_event_id: parser.last_event_id().to_string(),
        retry: parser.retry(),
        error,
    }
}

/// Splits `bytes` at the positions the `cuts` pick (sorted; duplicates give empty chunks).
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for cut in at {
        chunks.push(&bytes[start..cut]);
        start = cut;
    }
    chunks.push(&bytes[start..]);
    chunks
}

fn parse_whole(frame: &[u8]) -> Vec<Item> {
    let mut parser = Parser::default();
    parser.feed(frame).expect("frame within the default limits");
    parser.finish();
    drain(&mut parser)
}

/// Arbitrary JSON. Floats are small dyadic fractions so that text round trips are exact.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (any::<i32>(), 0u32..4).prop_map(|(m, e)| Value::from(f64::from(m) / f64::from(1u32 << e))),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// What a row's payload column may hold: JSON text the store vouches for (pretty-printed half
/// the time, so raw newlines appear in it), JSON text it does not vouch for, or any text.
#[derive(Debug, Clone)]
enum StoredPayload {
    Json(Value, bool, PayloadCheck),
    Text(String),
}

fn stored_payload() -> impl Strategy<Value = StoredPayload> {
    let check = prop_oneof![Just(PayloadCheck::Valid), Just(PayloadCheck::Unchecked)];
    prop_oneof![
        3 => (json_value(), any::<bool>(), check).prop_map(|(v, p, c)| StoredPayload::Json(v, p, c)),
        1 => prop_oneof![any::<String>(), "[{}\\[\\]\"a:1, \r\n]{0,12}"].prop_map(StoredPayload::Text),
    ]
}

/// An event row with anything in its text columns: kinds inside and outside the grammar
/// (control characters, spaces, `changefeed.ready`), timestamps in writer formats and
/// arbitrary text, ids with control characters, empty session ids.
fn event_row() -> impl Strategy<Value = (EventRow, StoredPayload)> {
    (
        0..=Seq::MAX.0,
        any::<String>(),
        proptest::option::of(prop_oneof![Just(String::new()), any::<String>()]),
        prop_oneof![
            3 => "[a-z][a-z0-9_]{0,20}",
            1 => any::<String>(),
            1 => "[a-zA-Z0-9_. \r\n:-]{0,12}",
        ],
        stored_payload(),
        prop_oneof![
            any::<String>(),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:?[0-9]{2})?",
            "-?[0-9]{1,19}(\\.[0-9]{1,6})?",
        ],
    )
        .prop_map(
            |(seq, project_id, session_id, kind, payload, created_at)| {
                let (text, payload_check) = match &payload {
                    StoredPayload::Json(value, pretty, check) => (
                        if *pretty {
                            serde_json::to_string_pretty(value)
                        } else {
                            serde_json::to_string(value)
                        }
                        .expect("a Value serializes"),
                        *check,
                    ),
                    StoredPayload::Text(text) => (text.clone(), PayloadCheck::Unchecked),
                };
                let row = EventRow {
                    seq: Seq(seq),
                    project_id,
                    session_id,
                    kind,
                    payload: text,
                    payload_check,
                    created_at,
                };
                (row, payload)
            },
        )
}

/// The kind grammar `[a-z][a-z0-9_]*`, written independently of the filter module.
fn valid_kind(kind: &str) -> bool {
    let mut chars = kind.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Bytes that look like an event stream most of the time: field names, separators, every line
/// ending, digits, NUL, BOMs, broken UTF-8, random bytes and whole lines; half start with a BOM.
fn sse_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        3 => Just(b"data:".to_vec()),
        2 => Just(b"id:".to_vec()),
        2 => Just(b"event:".to_vec()),
        2 => Just(b"retry:".to_vec()),
        2 => Just(b":".to_vec()),
        3 => Just(b" ".to_vec()),
        4 => Just(b"\r".to_vec()),
        4 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        3 => (b'0'..=b'9').prop_map(|d| vec![d]),
        1 => Just(b"99999999999999999999999".to_vec()),
        1 => Just(vec![0]),
        1 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => Just(b"\xEF\xBB".to_vec()),
        1 => Just("é✓😀".as_bytes().to_vec()),
        2 => "[a-z]{1,4}".prop_map(String::into_bytes),
        2 => any::<u8>().prop_map(|b| vec![b]),
        2 => Just(b"data: x\n".to_vec()),
        1 => Just(b"event: e\r".to_vec()),
        1 => Just(b"id: 7\r\n".to_vec()),
        1 => "retry: [0-9]{1,4}\n".prop_map(String::into_bytes),
        2 => Just(b"\n\n".to_vec()),
    ];
    (any::<bool>(), prop::collection::vec(token, 0..80)).prop_map(|(bom, tokens)| {
        let start: &[u8] = if bom { b"\xEF\xBB\xBF" } else { b"" };
        [start, &tokens.concat()].concat()
    })
}

fn limits() -> impl Strategy<Value = ParserLimits> {
    prop_oneof![
        2 => Just(ParserLimits::default()),
        1 => (0usize..48, 0usize..48).prop_map(|(max_line, max_event_data)| ParserLimits {
            max_line,
            max_event_data,
        }),
    ]
}

/// What `FrameBuilder::data` promises a parser reassembles: the text with CRLF and CR as LF.
fn normalise_line_endings(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn encoded_event_parses_back_to_its_row((row, payload) in event_row(), epoch in any::<u64>()) {
        let event = EventEncoder::new(Epoch(epoch)).encode(&row);
        prop_assert!(event.frame.ends_with(b"\n\n") && !event.frame.contains(&b'\r'));
        let kind_ok = valid_kind(&row.kind);
        prop_assert_eq!(
            event.frame.iter().filter(|&&b| b == b'\n').count(),
            if kind_ok { 4 } else { 3 },
            "id, event (valid kinds only), data, blank line: {:?}", event.frame
        );
        let items = parse_whole(&event.frame);
        prop_assert_eq!(items.len(), 1, "one item per frame: {:?}", items);
        let Item::Event(SseEvent { event_type, data, last_event_id }) = &items[0] else {
            panic!("not an event: {:?}", items[0]);
        };
        prop_assert_eq!(event_type, if kind_ok { row.kind.as_str() } else { "message" });
        prop_assert_eq!(last_event_id, &format!("{}:{}", Epoch(epoch), row.seq));
        prop_assert!(data.starts_with("{\"seq\":"), "keys in contract order: {}", data);
        let json: Value = serde_json::from_str(data).expect("event data is JSON");
        let object = json.as_object().expect("event data is an object");
        prop_assert_eq!(&object["seq"], &Value::from(row.seq.0));
        prop_assert_eq!(&object["projectId"], &Value::from(row.project_id.as_str()));
        let session_id = row.session_id.clone().filter(|s| !s.is_empty()).map(Value::from);
        prop_assert_eq!(object.get("sessionId"), session_id.as_ref());
        prop_assert_eq!(&object["type"], &Value::from(row.kind.as_str()));
        let mut degraded = Vec::new();
        if !kind_ok {
            degraded.push("type");
        }
        match &payload {
            StoredPayload::Json(value, ..) => prop_assert_eq!(&object["payload"], value),
            StoredPayload::Text(text) => match serde_json::from_str::<Value>(text) {
                Ok(value) => prop_assert_eq!(&object["payload"], &value),
                Err(_) => {
                    degraded.push("payload");
                    prop_assert_eq!(&object["payload"], &Value::from(text.as_str()));
                }
            },
        }
        match timestamp::normalize(&row.created_at) {
            Some(created_at) => prop_assert_eq!(&object["createdAt"], &Value::from(created_at)),
            None => {
                degraded.push("createdAt");
                prop_assert_eq!(&object["createdAt"], &Value::Null);
            }
        }
        let listed: Vec<&str> = object
            .get("degraded")
            .map(|list| list.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        prop_assert_eq!(&listed, &degraded);
        prop_assert_eq!(event.degraded.columns().collect::<Vec<_>>(), degraded);
    }

    #[test]
    fn frame_builder_data_parses_back_with_normalised_line_endings(
        name in any::<String>(),
        id in any::<String>(),
        text in prop_oneof![any::<String>(), "([ a-z\r\n]|\r\n){0,40}"],
    ) {
        let frame = FrameBuilder::new().id(&id).event(&name).data(&text).finish();
        let items = parse_whole(&frame);
        let name: String = name.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        let id: String = id.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect();
        let expected = SseEvent {
            event_type: if name.is_empty() { "message".into() } else { name },
            data: normalise_line_endings(&text),
            last_event_id: id,
        };
        prop_assert_eq!(items, vec![Item::Event(expected)]);
    }

    #[test]
    fn chunking_never_changes_the_outcome(
        bytes in sse_ish_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
        seed in "[a-z0-9:]{0,8}",
        limits in limits(),
    ) {
        let whole = run(&seed, limits, [&bytes[..]]);
        let chunked = run(&seed, limits, split(&bytes, &cuts));
        prop_assert_eq!(&chunked, &whole, "cuts {:?} of {} bytes", cuts, bytes.len());
        let bytewise = run(&seed, limits, bytes.chunks(1));
        prop_assert_eq!(&bytewise, &whole);
    }

    #[test]
    fn long_line_fails_as_soon_as_it_crosses_the_limit(
        max_line in 16usize..400,
        prefix in prop::collection::vec(
            prop_oneof![Just("data: ab\n\n"), Just(": c\r\n"), Just("id: 1\r\r"), Just("\n")],
            1..5,
        ),
        over in 1usize..64,
        filler in prop::collection::vec(any::<u8>().prop_filter("no line ending", |b| !matches!(b, b'\r' | b'\n')), 1..32),
        ending in prop_oneof![Just(""), Just("\n"), Just("\r\ndata: x\n\n")],
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let prefix = prefix.concat();
        let long: Vec<u8> = filler.iter().copied().cycle().take(max_line + over).collect();
        let bytes = [prefix.as_bytes(), &long, ending.as_bytes()].concat();
        // The first byte past the limit; the chunk holding it must be the one that fails.
        let crossing = prefix.len() + max_line;
        let limits = ParserLimits { max_line, ..ParserLimits::default() };
        let mut parser = Parser::with_limits("", limits);
        let mut offset = 0;
        let mut failed_at = None;
        for chunk in split(&bytes, &cuts) {
            let result = parser.feed(chunk);
            let end = offset + chunk.len();
            if end <= crossing {
                prop_assert_eq!(result, Ok(()), "chunk {}..{} is before the limit", offset, end);
            } else if failed_at.is_none() {
                prop_assert_eq!(result, Err(ParseError::LineTooLong { limit: max_line }));
                failed_at = Some(offset);
            } else {
                prop_assert_eq!(result, Err(ParseError::LineTooLong { limit: max_line }), "sticky");
            }
            offset = end;
        }
        prop_assert!(failed_at.is_some());
        prop_assert_eq!(
            parser.feed(b"\n\n"),
            Err(ParseError::LineTooLong { limit: max_line })
        );
    }

    #[test]
    fn event_data_limit_fires_whatever_the_chunking(
        max_event_data in 0usize..200,
        lines in prop::collection::vec("[a-z ]{0,30}", 1..20),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let dispatched = lines.join("\n");
        let mut body = String::from("data: ok\n\n");
        for line in &lines {
            body.push_str("data: ");
            body.push_str(line);
            body.push('\n');
        }
        body.push('\n');
        let limits = ParserLimits { max_line: 64, max_event_data: max_event_data.max(2) };
        let outcome = run("", limits, split(body.as_bytes(), &cuts));
        let first = Item::Event(SseEvent {
            event_type: "message".into(),
            data: "ok".into(),
            last_event_id: String::new(),
        });
        if dispatched.len() > limits.max_event_data {
            prop_assert_eq!(
                outcome.error,
                Some(ParseError::EventTooLarge { limit: limits.max_event_data })
            );
            prop_assert_eq!(outcome.items, vec![first]);
        } else {
            prop_assert_eq!(outcome.error, None);
            prop_assert_eq!(outcome.items.len(), 2);
        }
    }
}

/// With the default 1 MiB line limit, an endless unterminated line is refused at the chunk that
/// takes it past 1 MiB, so the parser never holds more than the limit.
#[test]
fn endless_line_is_refused_at_the_default_limit() {
    let limit = ParserLimits::default().max_line;
    let mut parser = Parser::default();
    parser.feed(b"data: ok\n\n").unwrap();
    let chunk = vec![b'a'; 64 * 1024 + 7];
    let mut held = 0;
    loop {
        let result = parser.feed(&chunk);
        held += chunk.len();
        if held <= limit {
            assert_eq!(result, Ok(()), "{held} bytes held");
        } else {
            assert_eq!(result, Err(ParseError::LineTooLong { limit }));
            break;
        }
    }
    assert_eq!(drain(&mut parser).len(), 1);
}
