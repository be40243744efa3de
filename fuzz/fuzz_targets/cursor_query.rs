//! Parsing and encoding of arbitrary text: cursors, query strings, timestamps and event rows.
//!
//! Checks, for every input (as lossy UTF-8 text):
//! - `Cursor::parse` never panics and accepts exactly `^([0-9a-f]{16}:)?(0|[1-9][0-9]*)$` with a
//!   seq of at most 2^63 − 1 (against an independent implementation of that grammar), with the
//!   same epoch and seq; an accepted cursor displays as the input itself and parses back; a
//!   rejection's `CursorError` names a part that really is wrong;
//! - any cursor built from the input's first bytes displays as text that parses back to it;
//! - `EventsQuery::parse` never panics; an accepted query, serialised again, parses to the same
//!   query; a rejection carries one of the codes the parser documents (never `unknown_project`,
//!   which only the shell decides), status 400 and a JSON body with that code;
//! - `EventsQuery::start` with the input as `Last-Event-ID` agrees with `Cursor::parse`;
//! - sealed ids: reading the input with a key never panics and accepts only `0` or what the
//!   key sealed (a changed byte of a sealed id never opens); sealing the input's first bytes
//!   reads back to the same position;
//! - the timestamp codec never panics; what it accepts normalises to a 24-byte canonical form
//!   that is a fixed point and names the same unix millisecond;
//! - a row whose columns are the input's `|`-separated parts (payload unchecked) encodes to one
//!   frame that parses back to one event whose data is a JSON object carrying the row's
//!   columns exactly or in their documented degraded form.

#![no_main]

use changefeed_core::sse::{Item, Parser};
use changefeed_core::timestamp::{format_unix_millis, normalize, parse_unix_millis};
use changefeed_core::{
    Cursor, CursorError, Epoch, ErrorCode, EventEncoder, EventRow, EventsQuery, IdKey, Ids,
    PayloadCheck, Seq, Start, MAX_LAST,
};
use libfuzzer_sys::fuzz_target;

/// `0|[1-9][0-9]*`: the seq part is canonical decimal.
fn canonical_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b.len() == 1 || b[0] != b'0')
}

/// The grammar, written independently of `position.rs`: `Some((epoch, seq))` when `text` is a
/// valid cursor.
fn reference(text: &str) -> Option<(Option<u64>, u64)> {
    let b = text.as_bytes();
    let (epoch, seq) = if b.len() > 17 && b[16] == b':' {
        let hex = &b[..16];
        if hex
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            let value = hex.iter().fold(0u64, |n, &c| {
                let digit = if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                };
                (n << 4) | u64::from(digit)
            });
            (Some(value), &text[17..])
        } else {
            (None, text)
        }
    } else {
        (None, text)
    };
    if !canonical_decimal(seq) {
        return None;
    }
    let mut value: u128 = 0;
    for digit in seq.bytes() {
        value = value * 10 + u128::from(digit - b'0');
        if value > (1u128 << 63) - 1 {
            return None;
        }
    }
    Some((epoch, value as u64))
}

fn check_cursor(text: &str) {
    let parsed = Cursor::parse(text);
    let expected = reference(text);
    match (&parsed, expected) {
        (Ok(cursor), Some((epoch, seq))) => {
            assert_eq!(cursor.epoch.map(|e| e.0), epoch, "{text:?}");
            assert_eq!(cursor.seq, Seq(seq), "{text:?}");
            assert_eq!(cursor.to_string(), text, "an accepted cursor is canonical");
            assert_eq!(Cursor::parse(&cursor.to_string()), Ok(*cursor));
        }
        (Err(why), None) => {
            // The parser splits at the first ':'.
            let (epoch_part, seq_part) = match text.split_once(':') {
                Some((epoch, seq)) => (Some(epoch), seq),
                None => (None, text),
            };
            let epoch_ok = epoch_part.is_none_or(|e| {
                e.len() == 16 && e.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            });
            match why {
                CursorError::Empty => assert!(text.is_empty(), "Empty for {text:?}"),
                CursorError::InvalidEpoch => {
                    assert!(!epoch_ok, "InvalidEpoch for {text:?}")
                }
                CursorError::InvalidSeq => assert!(
                    !text.is_empty() && epoch_ok && !canonical_decimal(seq_part),
                    "InvalidSeq for {text:?}"
                ),
                CursorError::SeqTooLarge => assert!(
                    epoch_ok && canonical_decimal(seq_part),
                    "SeqTooLarge for {text:?}"
                ),
                CursorError::NotIssued => panic!("NotIssued from the plain grammar for {text:?}"),
            }
            assert!(!why.to_string().is_empty());
        }
        _ => panic!("Cursor::parse({text:?}) = {parsed:?}, the grammar says {expected:?}"),
    }
}

/// A cursor built from the first bytes displays as text that parses back to it.
fn check_display(data: &[u8]) {
    let mut word = [0u8; 17];
    let n = data.len().min(17);
    word[..n].copy_from_slice(&data[..n]);
    let epoch = u64::from_le_bytes(word[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(word[8..16].try_into().unwrap()) & Seq::MAX.0;
    let cursor = if word[16] & 1 == 0 {
        Cursor::new(Epoch(epoch), Seq(seq))
    } else {
        Cursor {
            epoch: None,
            seq: Seq(seq),
        }
    };
    let text = cursor.to_string();
    assert_eq!(Cursor::parse(&text), Ok(cursor), "{text:?}");
    assert_eq!(reference(&text), Some((cursor.epoch.map(|e| e.0), seq)));
}

fn check_query(text: &str) {
    match EventsQuery::parse(Some(text)) {
        Ok(query) => {
            let mut out = form_urlencoded::Serializer::new(String::new());
            if let Some(raw) = &query.after_raw {
                out.append_pair("after", raw);
            }
            for project in query.filter.projects.iter().flatten() {
                out.append_pair("project", project);
            }
            for session in query.filter.sessions.iter().flatten() {
                out.append_pair("session", session);
            }
            if let Some(last) = query.last {
                assert!((1..=MAX_LAST).contains(&last));
                out.append_pair("last", &last.to_string());
            }
            if let Some(types) = &query.filter.types {
                let joined: Vec<String> = types.iter().map(ToString::to_string).collect();
                out.append_pair("types", &joined.join(","));
            }
            let again = out.finish();
            assert_eq!(
                EventsQuery::parse(Some(&again)),
                Ok(query.clone()),
                "{text:?} re-serialised as {again:?}"
            );
            assert_eq!(
                query.after,
                query
                    .after_raw
                    .as_deref()
                    .map(|raw| Cursor::parse(raw).unwrap())
            );
        }
        Err(error) => {
            assert!(
                matches!(
                    error.code,
                    ErrorCode::InvalidCursor
                        | ErrorCode::UnknownParameter
                        | ErrorCode::DuplicateParameter
                        | ErrorCode::InvalidTypes
                        | ErrorCode::InvalidProject
                        | ErrorCode::InvalidSession
                        | ErrorCode::InvalidLast
                        | ErrorCode::ConflictingParameters
                ),
                "undocumented code {:?} for {text:?}",
                error.code
            );
            assert_eq!(error.code.status(), 400);
            assert!(!error.message.is_empty());
            let body: serde_json::Value =
                serde_json::from_str(&error.to_json()).expect("the error body is JSON");
            assert_eq!(body["error"]["code"], error.code.as_str());
            assert_eq!(body["error"]["message"], error.message.as_str());
        }
    }
}

fn check_start(header: &str) {
    let query = EventsQuery::parse(None).unwrap();
    match (query.start(Some(header)), Cursor::parse(header)) {
        (Start::Head, _) => assert!(header.is_empty()),
        (Start::At { cursor, raw }, Ok(parsed)) => {
            assert_eq!(cursor, parsed);
            assert_eq!(raw, header);
        }
        (Start::Invalid { raw }, Err(_)) => {
            assert!(!header.is_empty());
            assert_eq!(raw, header);
        }
        (start, parsed) => panic!("start({header:?}) = {start:?} but parse = {parsed:?}"),
    }
}

fn check_sealed(text: &str, data: &[u8]) {
    let key = IdKey::from_bytes([0x42; 32]);
    let ids = Ids::Sealed(key.clone());
    match ids.read(text) {
        Ok(cursor) if text == "0" => assert_eq!(cursor.seq, Seq::ZERO),
        Ok(cursor) => {
            let (epoch, seq, _) = key.open(text).expect("read only accepts what opens");
            assert_eq!(cursor, Cursor::new(epoch, seq));
        }
        Err(why) => assert!(matches!(why, CursorError::Empty | CursorError::NotIssued)),
    }
    let mut word = [0u8; 24];
    let n = data.len().min(24);
    word[..n].copy_from_slice(&data[..n]);
    let number = |i: usize| u64::from_le_bytes(word[i..i + 8].try_into().unwrap());
    let (epoch, seq, tweak) = (Epoch(number(0)), Seq(number(8) & Seq::MAX.0), number(16));
    let id = key.seal(epoch, seq, tweak);
    assert_eq!(ids.read(&id), Ok(Cursor::new(epoch, seq)));
    assert_eq!(key.open(&id), Some((epoch, seq, tweak)));
    // Any single changed character: never another position.
    if let Some(&byte) = data.get(24) {
        let at = usize::from(byte) % id.len();
        let mut altered = id.clone().into_bytes();
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.open(std::str::from_utf8(&altered).unwrap()), None);
    }
}

fn check_timestamp(text: &str) {
    let millis = parse_unix_millis(text);
    match normalize(text) {
        Some(canonical) => {
            assert_eq!(canonical.len(), 24, "{text:?} -> {canonical:?}");
            assert_eq!(normalize(&canonical).as_deref(), Some(canonical.as_str()));
            assert_eq!(parse_unix_millis(&canonical), millis, "{text:?}");
            assert_eq!(millis.and_then(format_unix_millis), Some(canonical));
        }
        None => assert!(
            millis.is_none_or(|ms| format_unix_millis(ms).is_none()),
            "{text:?} has a unix time but no normal form"
        ),
    }
}

/// `[a-z][a-z0-9_]*`, written independently of the core.
fn valid_kind(kind: &str) -> bool {
    let mut bytes = kind.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_row(text: &str) {
    let mut parts = text.splitn(5, '|');
    let mut next = || parts.next().unwrap_or("").to_owned();
    let (project_id, session_id, kind, payload, created_at) =
        (next(), next(), next(), next(), next());
    let row = EventRow {
        seq: Seq(text.len() as u64),
        project_id,
        session_id: (!session_id.is_empty()).then_some(session_id),
        kind,
        payload,
        payload_check: PayloadCheck::Unchecked,
        created_at,
    };
    let event = EventEncoder::new(Epoch(7)).encode(&row);
    let mut parser = Parser::default();
    parser
        .feed(&event.frame)
        .expect("a frame within the default limits");
    let Some(Item::Event(sse)) = parser.next_item() else {
        panic!("no event from {:?}", event.frame)
    };
    assert_eq!(parser.next_item(), None, "one item per frame");
    let expected_type = if valid_kind(&row.kind) {
        row.kind.as_str()
    } else {
        "message"
    };
    assert_eq!(sse.event_type, expected_type);
    assert_eq!(sse.last_event_id, format!("{}:{}", Epoch(7), row.seq));
    let json: serde_json::Value = serde_json::from_str(&sse.data).expect("event data is JSON");
    assert_eq!(json["projectId"], row.project_id.as_str());
    assert_eq!(
        json.get("sessionId").and_then(|v| v.as_str()),
        row.session_id.as_deref()
    );
    assert_eq!(json["type"], row.kind.as_str());
    match serde_json::from_str::<serde_json::Value>(&row.payload) {
        Ok(payload) => assert_eq!(json["payload"], payload),
        Err(_) => assert_eq!(json["payload"], row.payload.as_str()),
    }
    match normalize(&row.created_at) {
        Some(created_at) => assert_eq!(json["createdAt"], created_at.as_str()),
        None => assert!(json["createdAt"].is_null()),
    }
    let listed: Vec<&str> = json["degraded"]
        .as_array()
        .map(|list| list.iter().map(|v| v.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(listed, event.degraded.columns().collect::<Vec<_>>());
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_cursor(&text);
    check_display(data);
    check_query(&text);
    check_start(&text);
    check_sealed(&text, data);
    check_timestamp(&text);
    check_row(&text);
});
