//! Change events: a stored row ([`EventRow`]) and its wire form ([`Event`]), encoded once.

use std::sync::Arc;

use bytes::Bytes;

use crate::json;
use crate::position::{Cursor, Epoch, Seq};
use crate::sse::FrameBuilder;

/// One `change_log` row as a store reads it. `payload` is the stored JSON text, never parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Position in the log.
    pub seq: Seq,
    /// The project the change belongs to.
    pub project_id: String,
    /// The session the change belongs to, if any.
    pub session_id: Option<String>,
    /// The kind, e.g. `pr_updated`.
    pub kind: String,
    /// The JSON payload text exactly as stored.
    pub payload: String,
    /// When the change was written, as stored (RFC 3339, or SQLite's `YYYY-MM-DD HH:MM:SS`).
    pub created_at: String,
}

/// A change event ready for the wire: the fields a filter needs plus its whole SSE frame,
/// encoded once and shared by every subscriber (cloning is cheap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log.
    pub seq: Seq,
    /// The project the change belongs to.
    pub project_id: Arc<str>,
    /// The kind, e.g. `pr_updated`.
    pub kind: Arc<str>,
    /// `id: <epoch>:<seq>` / `event: <kind>` / `data: <event JSON>` and the blank line.
    pub frame: Bytes,
}

impl Event {
    /// Encodes a row of the log identified by `epoch` (see the contract's event JSON).
    pub fn encode(row: &EventRow, epoch: Epoch) -> Event {
        let json = event_json(row);
        let id = Cursor::new(epoch, row.seq).to_string();
        let frame = FrameBuilder::with_capacity(json.len() + row.kind.len() + 48)
            .id(&id)
            .event(&row.kind)
            .data_line(&json)
            .finish();
        Event {
            seq: row.seq,
            project_id: Arc::from(row.project_id.as_str()),
            kind: Arc::from(row.kind.as_str()),
            frame,
        }
    }
}

/// The event JSON of the contract, on one line: keys in contract order, `sessionId` omitted when
/// absent, the payload embedded as stored with each raw CR or LF (insignificant whitespace in
/// valid JSON) turned into a space.
pub fn event_json(row: &EventRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.payload.len() + 128);
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(row.seq.0.to_string().as_bytes());
    out.extend_from_slice(b",\"projectId\":");
    json::write_str(&mut out, &row.project_id);
    if let Some(session_id) = &row.session_id {
        out.extend_from_slice(b",\"sessionId\":");
        json::write_str(&mut out, session_id);
    }
    out.extend_from_slice(b",\"type\":");
    json::write_str(&mut out, &row.kind);
    out.extend_from_slice(b",\"payload\":");
    let payload_start = out.len();
    out.extend_from_slice(row.payload.as_bytes());
    for byte in &mut out[payload_start..] {
        if matches!(*byte, b'\r' | b'\n') {
            *byte = b' ';
        }
    }
    out.extend_from_slice(b",\"createdAt\":");
    json::write_str(&mut out, &normalize_created_at(&row.created_at));
    out.push(b'}');
    out
}

/// Normalises SQLite's `YYYY-MM-DD HH:MM:SS[.fff]` (written by programs other than ours) to
/// RFC 3339 UTC with milliseconds; any other text is passed through unchanged.
pub fn normalize_created_at(text: &str) -> std::borrow::Cow<'_, str> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    let sqlite_shape = b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !sqlite_shape {
        return text.into();
    }
    let fraction = &text[19..];
    let millis = match fraction.as_bytes() {
        [] => "000".to_string(),
        [b'.', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => {
            let mut ms: String = fraction[1..].chars().take(3).collect();
            while ms.len() < 3 {
                ms.push('0');
            }
            ms
        }
        _ => return text.into(),
    };
    format!("{}T{}.{millis}Z", &text[..10], &text[11..19]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(session: Option<&str>, payload: &str) -> EventRow {
        EventRow {
            seq: Seq(42),
            project_id: "p1".into(),
            session_id: session.map(Into::into),
            kind: "pr_updated".into(),
            payload: payload.into(),
            created_at: "2026-11-26T21:13:07.123Z".into(),
        }
    }

    #[test]
    fn renders_the_contract_json_and_frame() {
        let event = Event::encode(&row(Some("s1"), "{\"state\":\"open\"}"), Epoch(0xab));
        assert_eq!(
            std::str::from_utf8(&event.frame).unwrap(),
            "id: 00000000000000ab:42\nevent: pr_updated\ndata: {\"seq\":42,\"projectId\":\"p1\",\"sessionId\":\"s1\",\"type\":\"pr_updated\",\"payload\":{\"state\":\"open\"},\"createdAt\":\"2026-11-26T21:13:07.123Z\"}\n\n"
        );
    }

    #[test]
    fn omits_absent_session_and_flattens_raw_newlines() {
        let json = event_json(&row(None, "{\r\n\"a\":\n1}"));
        let text = String::from_utf8(json).unwrap();
        assert!(!text.contains("sessionId"));
        assert!(text.contains("\"payload\":{  \"a\": 1}"));
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["payload"]["a"], 1);
    }

    #[test]
    fn normalizes_sqlite_timestamps_only() {
        assert_eq!(
            normalize_created_at("2026-11-26 21:13:07"),
            "2026-11-26T21:13:07.000Z"
        );
        assert_eq!(
            normalize_created_at("2026-11-26 21:13:07.5"),
            "2026-11-26T21:13:07.500Z"
        );
        assert_eq!(
            normalize_created_at("2026-11-26T21:13:07.123Z"),
            "2026-11-26T21:13:07.123Z"
        );
        assert_eq!(normalize_created_at("yesterday"), "yesterday");
        assert_eq!(
            normalize_created_at("2026-11-26 21:13:07junk"),
            "2026-11-26 21:13:07junk"
        );
    }
}
