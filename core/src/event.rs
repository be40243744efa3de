//! Change events: a stored row ([`EventRow`]) and its wire form ([`Event`]), encoded once by
//! the one encoder, [`EventEncoder`].
//!
//! Encoding is total (`PROTOCOL.md`, "Degraded rows"): whatever a row's text columns hold, the
//! result is one well-formed SSE frame whose data is one line of valid JSON. A column that has
//! no honest place in the event JSON as it is gets a documented degraded form instead, and the
//! event says so in `"degraded":[...]` (also reported in [`Event::degraded`], so the shell can
//! count and log it):
//!
//! | column | when | degraded form |
//! |---|---|---|
//! | `type` | the kind is not `[a-z][a-z0-9_]*` (it could break the `event:` line, or pass for `changefeed.ready`) | the frame has no `event:` line (SSE clients see a `message` event); `"type"` still holds the kind, JSON-escaped |
//! | `payload` | the store did not vouch for it ([`PayloadCheck::Unchecked`]) and it is not JSON | `"payload"` is the text as a JSON string |
//! | `createdAt` | no format of [`crate::timestamp`] matches it | `"createdAt":null` |
//!
//! Not degraded, because JSON escaping carries them exactly: any characters in the project and
//! session ids (control characters included). A session id that is absent or empty leaves
//! `sessionId` out.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::filter::is_kind;
use crate::ids::Ids;
use crate::json;
use crate::position::{Cursor, Epoch, Seq};
use crate::sse::FrameBuilder;
use crate::timestamp;

/// What the store knows about a row's `payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadCheck {
    /// The store vouches that it is valid JSON text (a `CHECK (json_valid(payload))` on the
    /// column, or the store checked it): it is embedded as-is and never parsed.
    Valid,
    /// Not known: the encoder checks it and embeds it as a JSON string if it is not JSON.
    Unchecked,
}

/// One `change_log` row as a store reads it, every text column as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Position in the log.
    pub seq: Seq,
    /// The project the change belongs to.
    pub project_id: String,
    /// The session the change belongs to, if any (`Some("")` counts as none).
    pub session_id: Option<String>,
    /// The kind, e.g. `pr_updated`.
    pub kind: String,
    /// The payload text exactly as stored.
    pub payload: String,
    /// Whether the store vouches that `payload` is JSON.
    pub payload_check: PayloadCheck,
    /// When the change was written, in any format [`crate::timestamp`] reads (or not).
    pub created_at: String,
}

/// Which columns of a row were written in their degraded form (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Degraded(u8);

impl Degraded {
    /// Nothing degraded.
    pub const NONE: Degraded = Degraded(0);
    /// The kind is not a valid event name.
    pub const TYPE: Degraded = Degraded(1);
    /// The payload was not JSON.
    pub const PAYLOAD: Degraded = Degraded(2);
    /// `created_at` is not a timestamp.
    pub const CREATED_AT: Degraded = Degraded(4);

    const NAMES: [(Degraded, &'static str); 3] = [
        (Degraded::TYPE, "type"),
        (Degraded::PAYLOAD, "payload"),
        (Degraded::CREATED_AT, "createdAt"),
    ];

    /// Whether no column was degraded.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every column of `other` is degraded here.
    pub fn contains(self, other: Degraded) -> bool {
        self.0 & other.0 == other.0
    }

    /// The degraded columns' JSON keys, in event JSON order.
    pub fn columns(self) -> impl Iterator<Item = &'static str> {
        Degraded::NAMES
            .into_iter()
            .filter(move |&(flag, _)| self.contains(flag))
            .map(|(_, name)| name)
    }
}

impl std::ops::BitOr for Degraded {
    type Output = Degraded;
    fn bitor(self, other: Degraded) -> Degraded {
        Degraded(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Degraded {
    fn bitor_assign(&mut self, other: Degraded) {
        self.0 |= other.0;
    }
}

impl fmt::Display for Degraded {
    /// The columns' JSON keys separated by commas (`type,createdAt`), empty when none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, name) in self.columns().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// A change event ready for the wire: the fields a filter needs plus its whole SSE frame,
/// encoded once and shared by every subscriber (cloning is cheap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log.
    pub seq: Seq,
    /// The project the change belongs to.
    pub project_id: Arc<str>,
    /// The session the change belongs to, as stored (`None` or empty: none).
    pub session_id: Option<Arc<str>>,
    /// The kind as stored (filters match it, whatever it holds).
    pub kind: Arc<str>,
    /// Which columns were written in their degraded form.
    pub degraded: Degraded,
    /// Which id spelling the frame uses ([`Ids::tag`]): a subscription never forwards a frame
    /// spelled for another mode (a plain id on a sealed stream would leak the seq).
    pub ids_tag: u64,
    /// `id: <id>` / `event: <kind>` / `data: <event JSON>` and the blank line.
    pub frame: Bytes,
}

/// The one encoder of rows into frames, for the log of one epoch and one id spelling. The
/// subscription encodes replayed rows with it; the tailer encodes live rows with it (with the
/// same [`Ids`] as the subscriptions, or they treat its events as lost and replay them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEncoder {
    epoch: Epoch,
    ids: Ids,
    ids_tag: u64,
}

impl EventEncoder {
    /// The encoder of the log identified by `epoch`, with plain ids.
    pub fn new(epoch: Epoch) -> EventEncoder {
        EventEncoder::with_ids(epoch, Ids::Plain)
    }

    /// The encoder of the log identified by `epoch`, spelling ids with `ids`. With sealed
    /// ids, the frame's `id:` is the row's sealed id (tweak 0) and the event JSON has no `seq`.
    pub fn with_ids(epoch: Epoch, ids: Ids) -> EventEncoder {
        let ids_tag = ids.tag();
        EventEncoder {
            epoch,
            ids,
            ids_tag,
        }
    }

    /// The epoch every frame's id carries.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// How ids are spelled.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// The event of `row`, frame included. Never fails (see the [module docs](self)).
    pub fn encode(&self, row: &EventRow) -> Event {
        let (frame, degraded) = self.frame(row);
        Event {
            seq: row.seq,
            project_id: Arc::from(row.project_id.as_str()),
            session_id: row.session_id.as_deref().map(Arc::from),
            kind: Arc::from(row.kind.as_str()),
            degraded,
            ids_tag: self.ids_tag,
            frame,
        }
    }

    /// The frame of `row` and which of its columns were degraded: `id: <id>`,
    /// `event: <kind>` (left out for a degraded kind), `data: <event JSON>`.
    pub fn frame(&self, row: &EventRow) -> (Bytes, Degraded) {
        let mut frame = Vec::with_capacity(frame_capacity(row));
        let degraded = self.append_frame(&mut frame, row);
        (Bytes::from(frame), degraded)
    }

    /// Appends [`EventEncoder::frame`]'s frame of `row` to `out` (which holds whole frames or
    /// nothing), the event JSON written straight into it.
    pub fn append_frame(&self, out: &mut Vec<u8>, row: &EventRow) -> Degraded {
        let cursor = Cursor::new(self.epoch, row.seq);
        let mut frame = FrameBuilder::appending(std::mem::take(out))
            .id_with(|id| self.ids.spell_into(id, cursor, 0));
        if is_kind(&row.kind) {
            frame = frame.event(&row.kind);
        }
        let with_seq = !self.ids.is_sealed();
        let (frame, degraded) = frame.data_line_with(|json| write_json(json, row, with_seq));
        *out = frame.end();
        degraded
    }
}

/// About how many bytes [`EventEncoder::frame`] writes for `row` (more when its text needs
/// escaping): enough to reserve a frame's buffer, or a batch of them, in one allocation.
pub fn frame_capacity(row: &EventRow) -> usize {
    let session = row.session_id.as_deref().map_or(0, str::len);
    2 * row.kind.len()
        + row.project_id.len()
        + session
        + row.payload.len()
        + row.created_at.len()
        + 192
}

/// The event JSON of the contract, on one line, and which columns were degraded: keys in
/// contract order (`seq`, `projectId`, `sessionId` unless absent or empty, `type`, `payload`,
/// `createdAt`, then `degraded` only when something was), the payload embedded as stored with
/// each raw CR or LF (insignificant whitespace in valid JSON) turned into a space.
pub fn event_json(row: &EventRow) -> (Vec<u8>, Degraded) {
    let mut out = Vec::with_capacity(row.payload.len() + 128);
    let degraded = write_json(&mut out, row, true);
    (out, degraded)
}

/// Appends [`event_json`] to `out`, with the `seq` key only when `with_seq` (sealed ids leave
/// it out: it is the global position the sealed id hides).
fn write_json(out: &mut Vec<u8>, row: &EventRow, with_seq: bool) -> Degraded {
    let mut degraded = Degraded::NONE;
    if with_seq {
        out.extend_from_slice(b"{\"seq\":");
        write_decimal(out, row.seq.0);
        out.extend_from_slice(b",\"projectId\":");
    } else {
        out.extend_from_slice(b"{\"projectId\":");
    }
    json::write_str(out, &row.project_id);
    if let Some(session_id) = row.session_id.as_deref().filter(|id| !id.is_empty()) {
        out.extend_from_slice(b",\"sessionId\":");
        json::write_str(out, session_id);
    }
    out.extend_from_slice(b",\"type\":");
    json::write_str(out, &row.kind);
    if !is_kind(&row.kind) {
        degraded |= Degraded::TYPE;
    }
    out.extend_from_slice(b",\"payload\":");
    let payload_is_json = match row.payload_check {
        PayloadCheck::Valid => true,
        PayloadCheck::Unchecked => is_json(&row.payload),
    };
    if payload_is_json {
        let payload_start = out.len();
        out.extend_from_slice(row.payload.as_bytes());
        for byte in &mut out[payload_start..] {
            if matches!(*byte, b'\r' | b'\n') {
                *byte = b' ';
            }
        }
    } else {
        degraded |= Degraded::PAYLOAD;
        json::write_str(out, &row.payload);
    }
    out.extend_from_slice(b",\"createdAt\":");
    match timestamp::normalize_cow(&row.created_at) {
        Some(created_at) => json::write_str(out, &created_at),
        None => {
            degraded |= Degraded::CREATED_AT;
            out.extend_from_slice(b"null");
        }
    }
    if !degraded.is_empty() {
        out.extend_from_slice(b",\"degraded\":[");
        for (index, name) in degraded.columns().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            json::write_str(out, name);
        }
        out.push(b']');
    }
    out.push(b'}');
    degraded
}

/// Appends `value` in decimal (no allocation).
fn write_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Whether `text` is one JSON value (surrounding whitespace allowed), checked without
/// building it.
/// Whether `text` is JSON a client can parse: `IgnoredAny` would skip numbers unchecked, so a
/// `1e999` (finite in the grammar, out of range for every f64 parser) would pass and break the
/// client's decode; a full parse refuses it.
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchecked_payload_with_an_out_of_range_number_is_embedded_as_a_string() {
        assert!(is_json("{\"a\":1e308}"));
        assert!(!is_json("{\"a\":1e999}"));
        assert!(!is_json("66666666666666666666e6666"));
    }

    fn row(session: Option<&str>, payload: &str) -> EventRow {
        EventRow {
            seq: Seq(42),
            project_id: "p1".into(),
            session_id: session.map(Into::into),
            kind: "pr_updated".into(),
            payload: payload.into(),
            payload_check: PayloadCheck::Valid,
            created_at: "2026-11-26T21:13:07.123Z".into(),
        }
    }

    fn text(row: &EventRow) -> (String, Degraded) {
        let (json, degraded) = event_json(row);
        (String::from_utf8(json).unwrap(), degraded)
    }

    #[test]
    fn renders_the_contract_json_and_frame() {
        let event = EventEncoder::new(Epoch(0xab)).encode(&row(Some("s1"), "{\"state\":\"open\"}"));
        assert_eq!(
            std::str::from_utf8(&event.frame).unwrap(),
            "id: 00000000000000ab:42\nevent: pr_updated\ndata: {\"seq\":42,\"projectId\":\"p1\",\"sessionId\":\"s1\",\"type\":\"pr_updated\",\"payload\":{\"state\":\"open\"},\"createdAt\":\"2026-11-26T21:13:07.123Z\"}\n\n"
        );
        assert_eq!(event.seq, Seq(42));
        assert_eq!(&*event.project_id, "p1");
        assert_eq!(&*event.kind, "pr_updated");
        assert_eq!(event.degraded, Degraded::NONE);
        assert_eq!(EventEncoder::new(Epoch(0xab)).epoch(), Epoch(0xab));
    }

    #[test]
    fn frames_appended_to_a_buffer_are_the_frames_themselves() {
        let encoder = EventEncoder::new(Epoch(0xab));
        let rows = [
            row(Some("s1"), "{\"state\":\"open\"}"),
            EventRow {
                payload_check: PayloadCheck::Unchecked,
                ..row(None, "not json")
            },
        ];
        let mut buffer = b":\n\n".to_vec();
        let mut expected = buffer.clone();
        for row in &rows {
            let (frame, degraded) = encoder.frame(row);
            assert_eq!(encoder.append_frame(&mut buffer, row), degraded);
            expected.extend_from_slice(&frame);
        }
        assert_eq!(buffer, expected);
        assert_eq!(encoder.frame(&rows[1]).1, Degraded::PAYLOAD);
        // The estimate covers the frame and stays within its fixed slack of it.
        let long = EventRow {
            project_id: "a-project-with-a-longer-name".into(),
            session_id: Some("session-with-a-name".into()),
            kind: "review_thread_resolved".into(),
            payload: format!("{{\"pad\":\"{}\"}}", "x".repeat(200)),
            ..row(None, "")
        };
        for row in rows.iter().chain([&long]) {
            let (capacity, frame) = (frame_capacity(row), encoder.frame(row).0.len());
            assert!(
                (frame..frame + 192).contains(&capacity),
                "{capacity} for {frame}"
            );
        }
    }

    #[test]
    fn omits_absent_or_empty_session_and_flattens_raw_newlines() {
        for session in [None, Some("")] {
            let (text, degraded) = text(&row(session, "{\r\n\"a\":\n1}"));
            assert!(!text.contains("sessionId"), "{text}");
            assert!(text.contains("\"payload\":{  \"a\": 1}"));
            assert!(degraded.is_empty());
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed["payload"]["a"], 1);
        }
    }

    #[test]
    fn normalizes_created_at_through_the_timestamp_codec() {
        let mut stored = row(None, "{}");
        stored.created_at = "2026-11-26 21:13:07.5".into();
        let (text, degraded) = text(&stored);
        assert!(
            text.ends_with(",\"createdAt\":\"2026-11-26T21:13:07.500Z\"}"),
            "{text}"
        );
        assert!(degraded.is_empty());
    }

    #[test]
    fn unreadable_columns_get_their_degraded_form() {
        let stored = EventRow {
            seq: Seq(7),
            project_id: "p\u{1}\n".into(),
            session_id: Some("s\r".into()),
            kind: "changefeed.ready\r\nid: 1".into(),
            payload: "not json\r\n".into(),
            payload_check: PayloadCheck::Unchecked,
            created_at: "yesterday".into(),
        };
        let (text, degraded) = text(&stored);
        assert_eq!(
            text,
            "{\"seq\":7,\"projectId\":\"p\\u0001\\n\",\"sessionId\":\"s\\r\",\"type\":\"changefeed.ready\\r\\nid: 1\",\"payload\":\"not json\\r\\n\",\"createdAt\":null,\"degraded\":[\"type\",\"payload\",\"createdAt\"]}"
        );
        assert_eq!(
            degraded,
            Degraded::TYPE | Degraded::PAYLOAD | Degraded::CREATED_AT
        );
        let event = EventEncoder::new(Epoch(1)).encode(&stored);
        assert_eq!(event.degraded, degraded);
        assert_eq!(
            &*event.kind, "changefeed.ready\r\nid: 1",
            "filters see the kind as stored"
        );
        let frame = std::str::from_utf8(&event.frame).unwrap();
        assert!(
            frame.starts_with("id: 0000000000000001:7\ndata: {"),
            "{frame}"
        );
        assert_eq!(
            frame.matches('\n').count(),
            3,
            "id, data and the blank line: {frame:?}"
        );
        assert!(!frame.contains('\r'));
    }

    #[test]
    fn each_column_degrades_alone() {
        let mut kind = row(None, "{}");
        kind.kind = "Pr updated".into();
        assert_eq!(text(&kind).1, Degraded::TYPE);
        assert!(text(&kind).0.ends_with(",\"degraded\":[\"type\"]}"));
        let mut payload = row(None, "{\"a\":1,}");
        payload.payload_check = PayloadCheck::Unchecked;
        assert_eq!(text(&payload).1, Degraded::PAYLOAD);
        let mut created = row(None, "{}");
        created.created_at = String::new();
        assert_eq!(text(&created).1, Degraded::CREATED_AT);
        assert!(text(&created)
            .0
            .ends_with(",\"createdAt\":null,\"degraded\":[\"createdAt\"]}"));
    }

    #[test]
    fn unchecked_payloads_are_checked_and_vouched_ones_are_not() {
        for good in [
            "{}",
            " [1, 2]\n",
            "\"text\"",
            "42",
            "null",
            "{\"a\":{\"b\":[true]}}",
        ] {
            let mut stored = row(None, good);
            stored.payload_check = PayloadCheck::Unchecked;
            assert!(text(&stored).1.is_empty(), "{good:?}");
        }
        for bad in [
            "",
            "{",
            "{\"a\":\"\u{1}\"}",
            "[1,]",
            "{\"a\" 1}",
            "1 2",
            "\"\\u12\"",
            "NaN",
        ] {
            let mut stored = row(None, bad);
            stored.payload_check = PayloadCheck::Unchecked;
            let (json, degraded) = text(&stored);
            assert_eq!(degraded, Degraded::PAYLOAD, "{bad:?}");
            let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(parsed["payload"], bad);
            // The store's word is taken: no check, the text goes in as it is.
            assert_eq!(text(&row(None, bad)).1, Degraded::NONE);
        }
    }

    #[test]
    fn degraded_lists_its_columns() {
        assert_eq!(Degraded::NONE.to_string(), "");
        assert_eq!(Degraded::TYPE.to_string(), "type");
        assert_eq!(
            (Degraded::CREATED_AT | Degraded::TYPE).to_string(),
            "type,createdAt"
        );
        let all = Degraded::TYPE | Degraded::PAYLOAD | Degraded::CREATED_AT;
        assert_eq!(
            all.columns().collect::<Vec<_>>(),
            ["type", "payload", "createdAt"]
        );
        assert!(all.contains(Degraded::PAYLOAD));
        assert!(!Degraded::TYPE.contains(Degraded::PAYLOAD));
        assert_eq!(Degraded::TYPE | Degraded::TYPE, Degraded::TYPE);
        let mut twice = Degraded::PAYLOAD;
        twice |= Degraded::PAYLOAD;
        assert_eq!(twice, Degraded::PAYLOAD);
        assert!(!all.is_empty());
        assert!(Degraded::default().is_empty());
    }

    #[test]
    fn sealed_encoders_hide_the_seq() {
        let key = crate::ids::IdKey::from_bytes([4; 32]);
        let encoder = EventEncoder::with_ids(Epoch(0xab), Ids::Sealed(key.clone()));
        assert!(encoder.ids().is_sealed());
        let event = encoder.encode(&row(Some("s1"), "{}"));
        let frame = std::str::from_utf8(&event.frame).unwrap();
        let id = key.seal(Epoch(0xab), Seq(42), 0);
        assert_eq!(
            frame,
            format!("id: {id}\nevent: pr_updated\ndata: {{\"projectId\":\"p1\",\"sessionId\":\"s1\",\"type\":\"pr_updated\",\"payload\":{{}},\"createdAt\":\"2026-11-26T21:13:07.123Z\"}}\n\n")
        );
        assert_eq!(event.ids_tag, Ids::Sealed(key).tag());
        assert_eq!(event.session_id.as_deref(), Some("s1"));
        let plain = EventEncoder::new(Epoch(0xab)).encode(&row(None, "{}"));
        assert_eq!(plain.ids_tag, 0);
        assert_eq!(plain.session_id, None);
        assert!(!EventEncoder::new(Epoch(1)).ids().is_sealed());
    }
}
