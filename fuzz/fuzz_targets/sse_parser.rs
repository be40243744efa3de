//! The SSE parser on arbitrary bytes split at arbitrary points.
//!
//! Checks, for every input:
//! - no panic;
//! - chunk-split invariance: the body fed whole, byte by byte and in the fuzzer's chunks gives
//!   identical items, last event ID, retry and error (an error is sticky);
//! - agreement with an independent, whole-body reference implementation of WHATWG HTML §9.2
//!   with the same [`ParserLimits`] (so the limits fire exactly when crossed);
//! - bounded memory: while feeding, no single allocation exceeds what the limits allow;
//! - `finish` readies the parser for a reconnection exactly like a new parser seeded with the
//!   last event ID (the retry value is kept).
//!
//! Input layout: `[k, s, l, split × k, seed × s, body…]` where `k = byte & 31` chunk lengths
//! (each `0..=255`, cycled) drive the chunked run, `s = byte & 31` bytes are the seed last event
//! ID (lossy UTF-8), and `l` picks the limits (`0`: 4 KiB line / 16 KiB data; otherwise
//! `4096 >> (l & 15)` / `16384 >> (l >> 4)`). Missing header bytes count as zero, so
//! `[0, 0, 0] ++ body` is a plain body.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use changefeed_core::sse::{Item, ParseError, Parser, ParserLimits, SseEvent};
use libfuzzer_sys::fuzz_target;

/// Records the largest single allocation made while armed.
struct Tracking;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    last_id: String,
    retry: Option<u64>,
    error: Option<ParseError>,
}

struct Input<'a> {
    splits: &'a [u8],
    seed: String,
    limits: ParserLimits,
    body: &'a [u8],
}

fn decode(data: &[u8]) -> Input<'_> {
    let header = |i: usize| data.get(i).copied().unwrap_or(0);
    let k = usize::from(header(0) & 31);
    let s = usize::from(header(1) & 31);
    let l = header(2);
    let rest = data.get(3..).unwrap_or_default();
    let (splits, rest) = rest.split_at(k.min(rest.len()));
    let (seed, body) = rest.split_at(s.min(rest.len()));
    let limits = if l == 0 {
        ParserLimits {
            max_line: 4096,
            max_event_data: 16384,
        }
    } else {
        ParserLimits {
            max_line: 4096 >> (l & 15),
            max_event_data: 16384 >> (l >> 4),
        }
    };
    Input {
        splits,
        seed: String::from_utf8_lossy(seed).into_owned(),
        limits,
        body,
    }
}

/// The most one allocation made while feeding may take: decoded text is at most 3× its bytes
/// (every invalid byte becomes U+FFFD) and a growing buffer at most doubles, plus the item queue.
fn allocation_bound(limits: ParserLimits, seed: &str, items: usize) -> usize {
    let text = limits
        .max_line
        .max(limits.max_event_data.saturating_add(1))
        .max(seed.len());
    6 * text + std::mem::size_of::<Item>() * (2 * items + 8) + 64
}

/// Feeds `chunks` in order, stopping at the first error (which must then be sticky), then ends
/// the stream.
fn run<'a>(
    seed: &str,
    limits: ParserLimits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut parser = Parser::with_limits(seed, limits);
    let mut items = Vec::new();
    let mut error = None;
    for chunk in chunks {
        LARGEST.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        let result = parser.feed(chunk);
        ARMED.store(false, Ordering::Relaxed);
        let before = items.len();
        items.extend(std::iter::from_fn(|| parser.next_item()));
        let largest = LARGEST.load(Ordering::Relaxed);
        let bound = allocation_bound(limits, seed, items.len() - before);
        assert!(
            largest <= bound,
            "feeding {} bytes allocated {largest} bytes at once (bound {bound}, {limits:?})",
            chunk.len()
        );
        if let Err(e) = result {
            assert_eq!(parser.feed(b"x"), Err(e), "errors are sticky");
            assert_eq!(parser.feed(b""), Err(e), "errors are sticky");
            assert_eq!(parser.next_item(), None, "no items after an error");
            error = Some(e);
            break;
        }
    }
    parser.finish();
    items.extend(std::iter::from_fn(|| parser.next_item()));
    Outcome {
        items,
        last_id: parser.last_event_id().to_owned(),
        retry: parser.retry(),
        error,
    }
}

/// The fuzzer's chunks: lengths taken from `splits` in turn (zero gives an empty feed), the
/// remainder as the last chunk.
fn chunks<'a>(body: &'a [u8], splits: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    if !splits.is_empty() {
        for &size in splits.iter().cycle().take(body.len() + splits.len()) {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(usize::from(size).min(rest.len()));
            out.push(chunk);
            rest = tail;
        }
    }
    out.push(rest);
    out
}

/// WHATWG HTML §9.2 over a whole body, written for clarity rather than speed, with the limits
/// of [`ParserLimits`]: a line (complete, or the unterminated rest) longer than `max_line`, or
/// a `data` line that would make the dispatched data longer than `max_event_data`, stops the
/// stream with that error; what was dispatched before it stands.
fn reference(seed: &str, limits: ParserLimits, body: &[u8]) -> Outcome {
    let mut out = Outcome {
        items: Vec::new(),
        last_id: seed.to_owned(),
        retry: None,
        error: None,
    };
    // A body that is only the start of a BOM ends before the parser knows what it is.
    if body.len() < BOM.len() && BOM.starts_with(body) {
        return out;
    }
    let body = body.strip_prefix(BOM).unwrap_or(body);
    let mut id_buffer = seed.to_owned();
    let mut data: Vec<u8> = Vec::new();
    let mut event_type: Vec<u8> = Vec::new();
    let mut start = 0;
    loop {
        let Some(end) = (start..body.len()).find(|&i| body[i] == b'\r' || body[i] == b'\n') else {
            // The unterminated rest is discarded at the end of the stream, but still bounded.
            if body.len() - start > limits.max_line {
                out.error = Some(ParseError::LineTooLong {
                    limit: limits.max_line,
                });
            }
            return out;
        };
        let line = &body[start..end];
        start = if body[end] == b'\r' && body.get(end + 1) == Some(&b'\n') {
            end + 2
        } else {
            end + 1
        };
        if line.len() > limits.max_line {
            out.error = Some(ParseError::LineTooLong {
                limit: limits.max_line,
            });
            return out;
        }
        if line.is_empty() {
            // Dispatch.
            out.last_id.clone_from(&id_buffer);
            if !data.is_empty() {
                data.pop();
                let kind = if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    String::from_utf8_lossy(&event_type).into_owned()
                };
                out.items.push(Item::Event(SseEvent {
                    event_type: kind,
                    data: String::from_utf8_lossy(&data).into_owned(),
                    last_event_id: out.last_id.clone(),
                }));
            }
            data.clear();
            event_type.clear();
            continue;
        }
        if line[0] == b':' {
            out.items.push(Item::Comment(
                String::from_utf8_lossy(&line[1..]).into_owned(),
            ));
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                // Dispatched data is the buffer without its final LF.
                if data.len() + value.len() > limits.max_event_data {
                    out.error = Some(ParseError::EventTooLarge {
                        limit: limits.max_event_data,
                    });
                    return out;
                }
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"event" => event_type = value.to_vec(),
            // An id containing NUL is ignored.
            b"id" if !value.contains(&0) => {
                id_buffer = String::from_utf8_lossy(value).into_owned();
            }
            // Only ASCII digits; values too large for a u64 are ignored (the spec leaves them
            // open).
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let parsed = value.iter().try_fold(0u64, |n, &d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                });
                if let Some(millis) = parsed {
                    out.retry = Some(millis);
                    out.items.push(Item::Retry(millis));
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = decode(data);
    let (seed, limits, body) = (input.seed.as_str(), input.limits, input.body);

    let whole = run(seed, limits, [body]);
    let expected = reference(seed, limits, body);
    assert_eq!(whole, expected, "whole body vs the reference");

    let bytewise = run(seed, limits, body.chunks(1));
    assert_eq!(bytewise, whole, "byte by byte vs whole");

    let chunked = run(seed, limits, chunks(body, input.splits));
    assert_eq!(chunked, whole, "chunks {:?} vs whole", input.splits);

    // A reconnection: `finish`, then the rest of the body as a new stream, is a new parser
    // seeded with the last event ID (keeping the retry value).
    let (first, second) = body.split_at(body.len() / 2);
    let mut parser = Parser::with_limits(seed, limits);
    if parser.feed(first).is_ok() {
        parser.finish();
        let before = run(seed, limits, [first]);
        let after = run(&before.last_id, limits, [second]);
        let mut items: Vec<Item> = std::iter::from_fn(|| parser.next_item()).collect();
        let result = parser.feed(second);
        parser.finish();
        items.extend(std::iter::from_fn(|| parser.next_item()));
        let mut expected_items = before.items;
        expected_items.extend(after.items);
        assert_eq!(result.err(), after.error);
        assert_eq!(items, expected_items, "items across finish");
        assert_eq!(parser.last_event_id(), after.last_id);
        assert_eq!(parser.retry(), after.retry.or(before.retry));
    }
});
