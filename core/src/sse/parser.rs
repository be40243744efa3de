//! Incremental SSE parser following WHATWG HTML §9.2 "Interpreting an event stream".
//!
//! Bytes go in through [`Parser::feed`] in chunks of any size; completed [`Item`]s come out of
//! [`Parser::next_item`]. The result never depends on where the chunks are split: a line is only
//! interpreted once it is complete (a CR at the end of one chunk and an LF at the start of the
//! next are one line ending), and each line is decoded as UTF-8 on its own. Memory is bounded by
//! [`ParserLimits`].

use std::collections::VecDeque;
use std::fmt;

/// The UTF-8 byte order mark, skipped once at the very start of a stream.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// Bounds on what one stream may make the parser hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// The longest line accepted, in bytes, without its line ending (default 1 MiB).
    pub max_line: usize,
    /// The most data one event may carry, in bytes, as it would be dispatched (default 16 MiB).
    pub max_event_data: usize,
}

impl Default for ParserLimits {
    fn default() -> ParserLimits {
        ParserLimits {
            max_line: 1 << 20,
            max_event_data: 16 << 20,
        }
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type: the last `event` field of the frame, or `message` when there was none
    /// (or it was empty).
    pub event_type: String,
    /// The `data` lines of the frame joined with LF.
    pub data: String,
    /// The stream's last event ID when this event was dispatched.
    pub last_event_id: String,
}

/// Something the parser recognised in the stream, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line; holds the text after the `:` (a leading space is kept).
    Comment(String),
    /// A valid `retry` field: the new reconnection time in milliseconds.
    Retry(u64),
}

/// Why a stream was rejected. Once a feed fails, the parser keeps returning the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A line was longer than [`ParserLimits::max_line`] bytes.
    LineTooLong {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The data of one event grew beyond [`ParserLimits::max_event_data`] bytes.
    EventTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::LineTooLong { limit } => {
                write!(f, "SSE line exceeds the limit of {limit} bytes")
            }
            ParseError::EventTooLarge { limit } => {
                write!(f, "SSE event data exceeds the limit of {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// An incremental, sans-IO parser of one `text/event-stream` body (WHATWG HTML §9.2).
///
/// Feed it the body in chunks with [`Parser::feed`], pop the results with [`Parser::next_item`],
/// and call [`Parser::finish`] at the end of the body.
#[derive(Debug, Clone)]
pub struct Parser {
    limits: ParserLimits,
    /// Bytes of a leading BOM matched so far, or `None` once the start of the stream is past.
    bom_matched: Option<usize>,
    /// The previous chunk ended with CR, so an LF starting the next chunk ends no line.
    skip_lf: bool,
    /// The partial line held across chunks (at most `max_line` bytes).
    line: Vec<u8>,
    /// The data buffer: each `data` value followed by LF.
    data: Vec<u8>,
    /// The event type buffer.
    event_type: Vec<u8>,
    /// The last event ID buffer: persists across events, set by `id` fields.
    id_buffer: String,
    /// The last event ID string: set from the buffer at each dispatch.
    last_event_id: String,
    retry: Option<u64>,
    items: VecDeque<Item>,
    failed: Option<ParseError>,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::new("")
    }
}

impl Parser {
    /// A parser for a stream whose last event ID starts as `last_event_id`: the ID of the
    /// previous connection when reconnecting (as browsers do), `""` for a fresh stream.
    pub fn new(last_event_id: impl Into<String>) -> Parser {
        Parser::with_limits(last_event_id, ParserLimits::default())
    }

    /// Like [`Parser::new`] with explicit limits.
    pub fn with_limits(last_event_id: impl Into<String>, limits: ParserLimits) -> Parser {
        let last_event_id = last_event_id.into();
        Parser {
            limits,
            bom_matched: Some(0),
            skip_lf: false,
            line: Vec::new(),
            data: Vec::new(),
            event_type: Vec::new(),
            id_buffer: last_event_id.clone(),
            last_event_id,
            retry: None,
            items: VecDeque::new(),
            failed: None,
        }
    }

    /// Parses the whole of `chunk`; completed items are queued for [`Parser::next_item`].
    ///
    /// Fails when a line or an event's data exceeds the [`ParserLimits`]; items completed before
    /// the offending line stay queued, and every later call returns the same error.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let result = self.feed_inner(chunk);
        if let Err(error) = result {
            self.failed = Some(error);
            self.line = Vec::new();
            self.data = Vec::new();
            self.event_type = Vec::new();
        }
        result
    }

    /// The next completed item, in stream order.
    pub fn next_item(&mut self) -> Option<Item> {
        self.items.pop_front()
    }

    /// Ends the stream: a partial line or an event without its blank line is discarded, as the
    /// spec requires. Queued items stay available. The parser is then ready for the body of a
    /// reconnection, as if new with [`Parser::last_event_id`] as its seed (the retry value is
    /// kept; a failed parser stays failed).
    pub fn finish(&mut self) {
        self.bom_matched = Some(0);
        self.skip_lf = false;
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
    }

    /// The stream's last event ID string: updated at each dispatch, including frames that carry
    /// an `id` but no data.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last valid `retry` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), ParseError> {
        let mut rest = chunk;
        if let Some(matched) = self.bom_matched {
            let want = &BOM[matched..];
            let n = want.len().min(rest.len());
            if rest[..n] == want[..n] {
                rest = &rest[n..];
                if matched + n < BOM.len() {
                    // The chunk ended inside what may still be a BOM.
                    self.bom_matched = Some(matched + n);
                    return Ok(());
                }
            } else {
                // Not a BOM after all: the bytes held back start the first line.
                self.line.extend_from_slice(&BOM[..matched]);
            }
            self.bom_matched = None;
        }
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
            let part = &rest[..at];
            if self.line.len() + part.len() > self.limits.max_line {
                return Err(ParseError::LineTooLong {
                    limit: self.limits.max_line,
                });
            }
            if self.line.is_empty() {
                self.process_line(part)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                reserve_bounded(&mut line, part.len(), self.limits.max_line);
                line.extend_from_slice(part);
                let processed = self.process_line(&line);
                line.clear();
                self.line = line;
                processed?;
            }
            let ending = rest[at];
            rest = &rest[at + 1..];
            if ending == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        if !rest.is_empty() {
            let needed = self.line.len() + rest.len();
            if needed > self.limits.max_line {
                return Err(ParseError::LineTooLong {
                    limit: self.limits.max_line,
                });
            }
            reserve_bounded(&mut self.line, rest.len(), self.limits.max_line);
            self.line.extend_from_slice(rest);
        }
        Ok(())
    }

    /// Interprets one complete line (without its ending).
    fn process_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            self.items.push_back(Item::Comment(decode(&line[1..])));
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                // The dispatched data drops the final LF, so it is `data.len() + value.len()`.
                if self.data.len() + value.len() > self.limits.max_event_data {
                    return Err(ParseError::EventTooLarge {
                        limit: self.limits.max_event_data,
                    });
                }
                reserve_bounded(
                    &mut self.data,
                    value.len() + 1,
                    self.limits.max_event_data.saturating_add(1),
                );
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            // An id containing NUL is ignored (falls through to the last arm).
            b"id" if memchr::memchr(0, value).is_none() => {
                self.id_buffer.clear();
                self.id_buffer.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" => {
                if let Some(millis) = parse_retry(value) {
                    self.retry = Some(millis);
                    self.items.push_back(Item::Retry(millis));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Dispatches the event buffered so far (the spec's "dispatch the event").
    fn dispatch(&mut self) {
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the LF after the last data line
        let event_type = if self.event_type.is_empty() {
            String::from("message")
        } else {
            decode(&self.event_type)
        };
        self.event_type.clear();
        self.items.push_back(Item::Event(SseEvent {
            event_type,
            data: decode_owned(data),
            last_event_id: self.last_event_id.clone(),
        }));
    }
}

/// A `retry` value: one or more ASCII digits, read as decimal. Anything else, and values that do
/// not fit in a `u64`, give `None`.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // All ASCII digits, so valid UTF-8 and only overflow can fail.
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reserves room for `additional` more bytes, growing geometrically but never past `cap` total
/// (when the result fits under `cap`), so a buffer's capacity stays within its limit.
fn reserve_bounded(buf: &mut Vec<u8>, additional: usize, cap: usize) {
    let needed = buf.len() + additional;
    if needed <= buf.capacity() {
        return;
    }
    let target = needed
        .max(buf.capacity().saturating_mul(2))
        .min(cap.max(needed));
    buf.reserve_exact(target - buf.len());
}

/// UTF-8 with replacement.
fn decode(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// UTF-8 with replacement, reusing the allocation when `bytes` is valid.
///
/// Decoding data lines joined by LF equals joining their separate decodings: LF is ASCII, so no
/// byte sequence spans it.
fn decode_owned(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(parser: &mut Parser) -> Vec<Item> {
        std::iter::from_fn(|| parser.next_item()).collect()
    }

    fn event(event_type: &str, data: &str, id: &str) -> Item {
        Item::Event(SseEvent {
            event_type: event_type.into(),
            data: data.into(),
            last_event_id: id.into(),
        })
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut parser = Parser::default();
        parser.feed(b"data: a\r").unwrap();
        parser.feed(b"\ndata: b\r").unwrap();
        parser.feed(b"").unwrap();
        parser.feed(b"\n\r").unwrap();
        assert_eq!(items(&mut parser), [event("message", "a\nb", "")]);
        // A CR right after a chunk-ending CR is a blank line; the LF after it pairs with it.
        parser.feed(b"data: c\r").unwrap();
        parser.feed(b"\r").unwrap();
        parser.feed(b"\n").unwrap();
        assert_eq!(items(&mut parser), [event("message", "c", "")]);
    }

    #[test]
    fn lone_cr_at_chunk_end_then_other_byte() {
        let mut parser = Parser::default();
        parser.feed(b"data: a\r").unwrap();
        parser.feed(b"data: b\r").unwrap();
        parser.feed(b"\r").unwrap();
        assert_eq!(items(&mut parser), [event("message", "a\nb", "")]);
    }

    #[test]
    fn bom_is_skipped_only_at_the_start_even_when_split() {
        let mut parser = Parser::default();
        parser.feed(b"\xEF").unwrap();
        parser.feed(b"\xBB").unwrap();
        parser.feed(b"\xBFdata: x\n\n").unwrap();
        parser.feed(b"\xEF\xBB\xBFdata: y\n\ndata: z\n\n").unwrap();
        assert_eq!(
            items(&mut parser),
            [event("message", "x", ""), event("message", "z", "")]
        );

        // A prefix of a BOM that turns out not to be one starts the first line.
        let mut parser = Parser::default();
        parser.feed(b"\xEF\xBB").unwrap();
        parser.feed(b"data: x\n\n").unwrap();
        parser.feed(b"data: y\n\n").unwrap();
        assert_eq!(items(&mut parser), [event("message", "y", "")]);
    }

    #[test]
    fn seed_id_persists_until_replaced() {
        let mut parser = Parser::new("e:5");
        parser.feed(b"data: a\n\nid: e:6\n\ndata: b\n\n").unwrap();
        assert_eq!(
            items(&mut parser),
            [event("message", "a", "e:5"), event("message", "b", "e:6")]
        );
        assert_eq!(parser.last_event_id(), "e:6");
    }

    #[test]
    fn id_with_nul_is_ignored() {
        let mut parser = Parser::new("seed");
        parser.feed(b"id: 1\0\ndata: a\n\n").unwrap();
        assert_eq!(items(&mut parser), [event("message", "a", "seed")]);
        assert_eq!(parser.last_event_id(), "seed");
    }

    #[test]
    fn finish_drops_the_partial_event_and_keeps_the_dispatched_id() {
        let mut parser = Parser::default();
        parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n").unwrap();
        parser.finish();
        assert_eq!(items(&mut parser), [event("message", "a", "1")]);
        assert_eq!(parser.last_event_id(), "1");
        // The next body is a reconnection seeded with "1".
        parser.feed(b"\xEF\xBB\xBFdata: c\n\n").unwrap();
        assert_eq!(items(&mut parser), [event("message", "c", "1")]);
    }

    #[test]
    fn comments_and_retry_are_items() {
        let mut parser = Parser::default();
        parser
            .feed(b": hi\nretry: 10\nretry: x\nretry: 99999999999999999999999\n\n")
            .unwrap();
        assert_eq!(
            items(&mut parser),
            [Item::Comment(" hi".into()), Item::Retry(10)]
        );
        assert_eq!(parser.retry(), Some(10));
    }

    #[test]
    fn line_limit_error_is_sticky() {
        let limits = ParserLimits {
            max_line: 8,
            max_event_data: 100,
        };
        let mut parser = Parser::with_limits("", limits);
        parser.feed(b"data: ab\n\ndata: ").unwrap(); // exactly 8 bytes is fine
        let error = ParseError::LineTooLong { limit: 8 };
        assert_eq!(parser.feed(b"abc"), Err(error));
        assert_eq!(parser.feed(b"\n\n"), Err(error));
        assert_eq!(parser.feed(b""), Err(error));
        assert_eq!(items(&mut parser), [event("message", "ab", "")]);
        assert_eq!(error.to_string(), "SSE line exceeds the limit of 8 bytes");
    }

    #[test]
    fn event_data_limit_error_is_sticky() {
        let limits = ParserLimits {
            max_line: 100,
            max_event_data: 5,
        };
        let mut parser = Parser::with_limits("", limits);
        // "ab\ncd" is exactly 5 bytes.
        parser.feed(b"data: ab\ndata: cd\n\n").unwrap();
        let error = ParseError::EventTooLarge { limit: 5 };
        assert_eq!(parser.feed(b"data: abc\ndata: de\n\n"), Err(error));
        assert_eq!(parser.feed(b"data: x\n\n"), Err(error));
        assert_eq!(items(&mut parser), [event("message", "ab\ncd", "")]);
        assert_eq!(
            error.to_string(),
            "SSE event data exceeds the limit of 5 bytes"
        );
    }

    #[test]
    fn retry_is_digits_only_not_what_rust_parses_as_a_number() {
        // `u64::from_str` accepts a leading `+`; the SSE grammar does not.
        let mut parser = Parser::default();
        parser
            .feed(b"retry: +5\nretry: 7\nretry: \nretry: -1\n\n")
            .unwrap();
        assert_eq!(items(&mut parser), [Item::Retry(7)]);
        assert_eq!(parser.retry(), Some(7));
    }

    #[test]
    fn an_events_data_buffer_never_grows_past_its_limit() {
        // Three 300-byte data lines under a 1,000-byte limit: plain doubling would take the
        // buffer to 1,200 bytes of capacity; the bounded growth stops at the limit (+ 1 for the
        // last line ending), so a stream near the limit cannot make the parser hold more.
        let limits = ParserLimits {
            max_line: 1000,
            max_event_data: 1000,
        };
        let mut parser = Parser::with_limits("", limits);
        let line = [b"data: ".as_slice(), &[b'x'; 300], b"\n"].concat();
        for _ in 0..3 {
            parser.feed(&line).unwrap();
        }
        assert_eq!(parser.data.len(), 903);
        assert!(
            parser.data.capacity() <= 1001,
            "capacity {} is over the limit",
            parser.data.capacity()
        );
        parser.feed(b"\n").unwrap();
        let Some(Item::Event(event)) = parser.next_item() else {
            panic!("one event");
        };
        assert_eq!(event.data.len(), 902);
    }
}
