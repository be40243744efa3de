//! The one timestamp codec: every format a writer may store in `created_at`, turned into the
//! contract's RFC 3339 UTC with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ` (`PROTOCOL.md`, "Event
//! JSON"), plus the unix-millisecond conversions the shells need (latency metrics, stamping rows).
//!
//! Accepted, after trimming ASCII whitespace at both ends:
//!
//! - **Date and time**: `YYYY-MM-DD`, then optionally `T`, `t` or a space and `HH:MM`,
//!   optionally `:SS`, optionally `.` and any number of fraction digits; then optionally an
//!   offset: `Z`, `z`, `±HH:MM`, `±HHMM` or `±HH`, directly or after one space. Without an
//!   offset the time is UTC (SQLite's `datetime()` and `CURRENT_TIMESTAMP`). A date alone is
//!   midnight UTC. After a space-separated numeric offset a zone name may follow (Go's
//!   `time.Time.String()`: `2026-11-26 10:00:03.123456789 +0000 UTC`), then Go's monotonic
//!   clock reading (` m=+0.000012345`); both are ignored, the numeric offset decides. A bare
//!   ` UTC` or ` GMT` suffix is offset zero. This covers SQLite (`2026-11-26 10:00:00`),
//!   RFC 3339 / ISO 8601 in extended format, and Go's
//!   `2006-01-02 15:04:05.999999999-07:00`.
//! - **Unix time** as decimal text, optionally negative, optionally with a fraction (an
//!   INTEGER or REAL column read as text). The unit follows from the magnitude of the integer
//!   part, so that each unit covers the years 1973 to 5138: below 10¹¹ seconds, below 10¹⁴
//!   milliseconds, below 10¹⁷ microseconds, else nanoseconds. (Milliseconds before
//!   1973-03-03 are therefore read as seconds.)
//!
//! Fractions are truncated to the millisecond, never rounded (rounding could carry into the next
//! second, day or year). A leap second (`:60`) is read as the last millisecond of its minute.
//! Calendar dates are checked (no February 30th). The result must lie in the years 0000 to
//! 9999, which RFC 3339 can write. Anything else is not a timestamp: [`normalize`] answers
//! `None` and the event encoder writes `"createdAt":null` (a degraded row, see
//! [`crate::event`]). No input panics.

use chrono::{DateTime, Datelike, NaiveDate, Timelike};

/// The contract form of `text` (RFC 3339 UTC with milliseconds), or `None` when `text` is in
/// none of the accepted formats (see the [module docs](self)).
pub fn normalize(text: &str) -> Option<String> {
    let trimmed = trim(text);
    if is_canonical(trimmed) {
        // The encoder's hot path: what our own writers store is already the contract form.
        return Some(trimmed.to_owned());
    }
    format_unix_millis(parse_unix_millis(trimmed)?)
}

/// Milliseconds since 1970-01-01T00:00:00Z of `text` in any accepted format.
pub fn parse_unix_millis(text: &str) -> Option<i64> {
    let text = trim(text);
    // A date has its first `-` after four digits; a number has none there.
    if text.as_bytes().get(4) == Some(&b'-') {
        date_time(text.as_bytes())
    } else {
        unix_number(text)
    }
}

/// `unix_ms` in the contract form `YYYY-MM-DDTHH:MM:SS.mmmZ`, or `None` outside the years
/// 0000 to 9999.
pub fn format_unix_millis(unix_ms: i64) -> Option<String> {
    let at = DateTime::from_timestamp_millis(unix_ms)?.naive_utc();
    if !(0..=9999).contains(&at.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        at.month(),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.nanosecond() / 1_000_000
    ))
}

fn trim(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` with a real calendar date and time of day.
fn is_canonical(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23]
            .into_iter()
            .all(|range| b[range].iter().all(u8::is_ascii_digit))
        && date_time(b).is_some()
        && digits(&b[17..19]) < 60
}

/// The value of ASCII digits (the caller checked them; at most 4 here).
fn digits(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0, |value, digit| value * 10 + u32::from(digit - b'0'))
}

/// Reads exactly `count` ASCII digits at the front of `bytes`.
fn take_digits(bytes: &mut &[u8], count: usize) -> Option<u32> {
    let (head, rest) = bytes.split_at_checked(count)?;
    if !head.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *bytes = rest;
    Some(digits(head))
}

/// Consumes `byte` at the front of `bytes` if it is there.
fn eat(bytes: &mut &[u8], byte: u8) -> bool {
    match bytes.split_first() {
        Some((&first, rest)) if first == byte => {
            *bytes = rest;
            true
        }
        _ => false,
    }
}

fn date_time(mut b: &[u8]) -> Option<i64> {
    let year = take_digits(&mut b, 4)?;
    let month = eat(&mut b, b'-').then(|| take_digits(&mut b, 2))??;
    let day = eat(&mut b, b'-').then(|| take_digits(&mut b, 2))??;
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    if let [b'T' | b't' | b' ', d, ..] = b {
        if d.is_ascii_digit() {
            b = &b[1..];
            hour = take_digits(&mut b, 2)?;
            minute = eat(&mut b, b':').then(|| take_digits(&mut b, 2))??;
            if eat(&mut b, b':') {
                second = take_digits(&mut b, 2)?;
                if eat(&mut b, b'.') {
                    let count = b.iter().take_while(|c| c.is_ascii_digit()).count();
                    if count == 0 {
                        return None;
                    }
                    let mut scale = 100;
                    for digit in &b[..count.min(3)] {
                        millis += u32::from(digit - b'0') * scale;
                        scale /= 10;
                    }
                    b = &b[count..];
                }
            }
        }
    }
    if second == 60 {
        (second, millis) = (59, 999);
    }
    let offset_secs = offset(b)?;
    // chrono rejects hours above 23, minutes above 59 and seconds above 59.
    let local = date.and_hms_milli_opt(hour, minute, second, millis)?;
    local
        .and_utc()
        .timestamp_millis()
        .checked_sub(i64::from(offset_secs) * 1000)
}

/// The offset east of UTC in seconds of what follows the time: nothing, `Z`, `±HH[[:]MM]`
/// (directly or after a space, then optionally a zone name and Go's monotonic reading), or a
/// space and `UTC`/`GMT`.
fn offset(mut b: &[u8]) -> Option<i32> {
    if b.is_empty() {
        return Some(0);
    }
    if matches!(b, b"Z" | b"z" | b" Z" | b" z" | b" UTC" | b" GMT") {
        return Some(0);
    }
    let spaced = eat(&mut b, b' ');
    let sign = match b.split_first() {
        Some((b'+', _)) => 1,
        Some((b'-', _)) => -1,
        _ => return None,
    };
    b = &b[1..];
    let hours = take_digits(&mut b, 2)?;
    let minutes = if eat(&mut b, b':') {
        take_digits(&mut b, 2)?
    } else {
        take_digits(&mut b, 2).unwrap_or(0)
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    if !(b.is_empty() || spaced && go_suffix(b)) {
        return None;
    }
    Some(sign * i32::try_from(hours * 3600 + minutes * 60).ok()?)
}

/// What Go's `time.Time.String()` writes after the numeric offset: ` NAME` (letters, or a
/// signed number such as `+03`), then optionally ` m=±SECONDS.FRACTION`.
fn go_suffix(b: &[u8]) -> bool {
    let Some(rest) = b.strip_prefix(b" ") else {
        return false;
    };
    let name_len = rest.iter().take_while(|&&c| c != b' ').count();
    let (name, rest) = rest.split_at(name_len);
    let name_ok = match name {
        [b'+' | b'-', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => !name.is_empty() && name.iter().all(u8::is_ascii_alphabetic),
    };
    name_ok
        && match rest {
            [] => true,
            [b' ', b'm', b'=', b'+' | b'-', reading @ ..] => {
                !reading.is_empty() && reading.iter().all(|c| c.is_ascii_digit() || *c == b'.')
            }
            _ => false,
        }
}

/// Unix time as `-?DIGITS(.DIGITS)?`, the unit chosen by magnitude (see the module docs).
fn unix_number(text: &str) -> Option<i64> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (unsigned, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|c| c.is_ascii_digit());
    if whole.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || (unsigned.contains('.') && fraction.is_empty())
    {
        return None;
    }
    // Leading zeros do not change the magnitude; 20 significant digits overflow any unit.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 19 {
        return None;
    }
    let value: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_nonzero = |skip: usize| fraction.bytes().skip(skip).any(|c| c != b'0');
    // Whole milliseconds (floor of the absolute value), and whether anything below remains.
    let (ms, below_ms) = match value {
        0..100_000_000_000 => {
            let mut ms = value * 1000;
            for (digit, scale) in fraction.bytes().zip([100, 10, 1]) {
                ms += u64::from(digit - b'0') * scale;
            }
            (ms, fraction_nonzero(3))
        }
        100_000_000_000..100_000_000_000_000 => (value, fraction_nonzero(0)),
        100_000_000_000_000..100_000_000_000_000_000 => {
            (value / 1000, value % 1000 != 0 || fraction_nonzero(0))
        }
        _ => (
            value / 1_000_000,
            value % 1_000_000 != 0 || fraction_nonzero(0),
        ),
    };
    let ms = i64::try_from(ms).ok()?;
    Some(if negative {
        // Floor: an instant a fraction of a millisecond before -N ms lies in millisecond -N-1.
        -ms - i64::from(below_ms)
    } else {
        ms
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Option<String> {
        normalize(text)
    }

    #[test]
    fn every_writer_format_becomes_the_contract_form() {
        let want = Some("2026-11-26T10:00:03.123Z".to_owned());
        for text in [
            "2026-11-26T10:00:03.123Z",
            "2026-11-26 10:00:03.123",
            "2026-11-26 10:00:03.1234",
            "2026-11-26T10:00:03.123456789",
            "2026-11-26t10:00:03.123z",
            "2026-11-26 10:00:03.123456789+00:00",
            "2026-11-26 10:00:03.123456789-00:00",
            "2026-11-26T12:00:03.123+02:00",
            "2026-11-26T12:00:03.123+0200",
            "2026-11-26T12:00:03.123+02",
            "2026-11-26 05:30:03.123-04:30",
            "2026-11-26 10:00:03.123456789 +0000 UTC",
            "2026-11-26 13:00:03.123456789 +0300 +03",
            "2026-11-26 11:00:03.123 +0100 CET m=+0.000012345",
            "2026-11-26 10:00:03.123 UTC",
            "2026-11-26 10:00:03.123 Z",
            "  2026-11-26 10:00:03.123\n",
            "1795687203123",
            "1795687203.123",
            "1795687203.1239",
            "1795687203123.9",
            "1795687203123456",
            "1795687203123456789",
        ] {
            assert_eq!(n(text), want, "{text:?}");
        }
        assert_eq!(
            n("2026-11-26 10:00:03"),
            Some("2026-11-26T10:00:03.000Z".into())
        );
        assert_eq!(n("1795687203"), Some("2026-11-26T10:00:03.000Z".into()));
        assert_eq!(
            n("2026-11-26 10:00"),
            Some("2026-11-26T10:00:00.000Z".into())
        );
        assert_eq!(n("2026-11-26"), Some("2026-11-26T00:00:00.000Z".into()));
        assert_eq!(
            n("2026-11-26 10:00:03.5"),
            Some("2026-11-26T10:00:03.500Z".into())
        );
        assert_eq!(
            n("2026-01-01T00:30:00+01:00"),
            Some("2025-12-31T23:30:00.000Z".into()),
            "an offset may move the date back a year"
        );
        assert_eq!(
            n("2026-11-26T23:59:00+23:59"),
            Some("2026-11-26T00:00:00.000Z".into())
        );
        assert_eq!(
            n("2026-11-26T00:00:00-23:59"),
            Some("2026-11-26T23:59:00.000Z".into())
        );
        assert_eq!(
            n("2016-12-31T23:59:60.5Z"),
            Some("2016-12-31T23:59:59.999Z".into())
        );
        assert_eq!(n("0"), Some("1970-01-01T00:00:00.000Z".into()));
        assert_eq!(n("-1.5"), Some("1969-12-31T23:59:58.500Z".into()));
        assert_eq!(n("-0.0001"), Some("1969-12-31T23:59:59.999Z".into()));
        assert_eq!(n("-100000000000"), Some("1966-10-31T14:13:20.000Z".into()));
        assert_eq!(
            n("0000-01-01T00:00:00Z"),
            Some("0000-01-01T00:00:00.000Z".into())
        );
        assert_eq!(
            n("9999-12-31 23:59:59.999"),
            Some("9999-12-31T23:59:59.999Z".into())
        );
    }

    #[test]
    fn the_magnitude_rule_picks_the_unit() {
        assert_eq!(parse_unix_millis("99999999999"), Some(99_999_999_999_000));
        assert_eq!(parse_unix_millis("100000000000"), Some(100_000_000_000));
        assert_eq!(
            parse_unix_millis("99999999999999"),
            Some(99_999_999_999_999)
        );
        assert_eq!(parse_unix_millis("100000000000000"), Some(100_000_000_000));
        assert_eq!(
            parse_unix_millis("99999999999999999"),
            Some(99_999_999_999_999)
        );
        assert_eq!(
            parse_unix_millis("100000000000000000"),
            Some(100_000_000_000)
        );
        assert_eq!(parse_unix_millis("18446744073709551615"), None);
        assert_eq!(
            parse_unix_millis("9223372036854775807"),
            Some(9_223_372_036_854)
        );
        assert_eq!(
            parse_unix_millis("-100000000000000"),
            Some(-100_000_000_000)
        );
        assert_eq!(
            parse_unix_millis("-100000000000000.5"),
            Some(-100_000_000_001)
        );
        assert_eq!(
            parse_unix_millis("-100000000000001"),
            Some(-100_000_000_001)
        );
        assert_eq!(
            parse_unix_millis("-100000000000000"),
            Some(-100_000_000_000)
        );
        assert_eq!(
            parse_unix_millis("-1000000000000000001"),
            Some(-1_000_000_000_001)
        );
        assert_eq!(
            parse_unix_millis("-1000000000000000000.0"),
            Some(-1_000_000_000_000)
        );
        assert_eq!(
            parse_unix_millis("-1000000000000.5"),
            Some(-1_000_000_000_001)
        );
        assert_eq!(parse_unix_millis("-1.0005"), Some(-1001));
        assert_eq!(parse_unix_millis("-1.000"), Some(-1000));
        assert_eq!(parse_unix_millis("007"), Some(7000));
        assert_eq!(parse_unix_millis("1.0009"), Some(1000));
    }

    #[test]
    fn anything_else_is_not_a_timestamp() {
        for bad in [
            "",
            " ",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-02-30 00:00:00",
            "2026-11-26T24:00:00Z",
            "2026-11-26T10:60:00Z",
            "2026-11-26T10:00:61Z",
            "2026-11-26T10:00:00.Z",
            "2026-11-26T10:00:00+24:00",
            "2026-11-26T10:00:00+01:60",
            "2026-11-26T10:00:00+1",
            "2026-11-26T10:00:00 +0000 UTC extra",
            "2026-11-26T10:00:00+0000 UTC",
            "2026-11-26T10:00:00 +0000 U1C",
            "2026-11-26T10:00:00 +0000 UTC m=",
            "2026-11-26T10:00:00 +0000 +",
            "2026-11-26T10:00:00 +0000 +0x",
            "2026-11-26T10:00:00 +0000 -",
            "2026-11-26T10:00:00 +0000  UTC",
            "2026-11-26T10:00:00 +0000 UTC  m=+1",
            "2026-11-26T10:00:00 +0000 UTC m=1",
            "2026-11-26T10:00:00 +0000 UTC x=+1",
            "2026-11-26T10:00:00 +0000 UTC m=+x",
            "2026-11-26 10:00:00junk",
            "2026-11-26 10",
            "2026-11-26 1:00",
            "2026-1-26",
            "+5",
            "1e9",
            "1.",
            ".5",
            "-",
            "--1",
            "1.2.3",
            "0x10",
            "12345678901234567890",
            "10000-01-01T00:00:00Z",
            "0000-01-01T00:30:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "NaN",
            "\u{0}",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_unix_millis_in_range_only() {
        assert_eq!(
            format_unix_millis(0),
            Some("1970-01-01T00:00:00.000Z".into())
        );
        assert_eq!(
            format_unix_millis(951_782_400_123),
            Some("2000-02-29T00:00:00.123Z".into())
        );
        assert_eq!(
            format_unix_millis(-1),
            Some("1969-12-31T23:59:59.999Z".into())
        );
        assert_eq!(
            format_unix_millis(-62_167_219_200_000),
            Some("0000-01-01T00:00:00.000Z".into())
        );
        assert_eq!(format_unix_millis(-62_167_219_200_001), None);
        assert_eq!(
            format_unix_millis(253_402_300_799_999),
            Some("9999-12-31T23:59:59.999Z".into())
        );
        assert_eq!(format_unix_millis(253_402_300_800_000), None);
        assert_eq!(format_unix_millis(i64::MAX), None);
        assert_eq!(format_unix_millis(i64::MIN), None);
    }

    #[test]
    fn canonical_fast_path_still_checks_the_calendar() {
        assert!(is_canonical("2024-02-29T23:59:59.999Z"));
        assert!(!is_canonical("2023-02-29T00:00:00.000Z"));
        assert!(!is_canonical("2024-02-28T00:00:60.000Z"));
        assert!(!is_canonical("2024-02-28 00:00:00.000Z"));
        assert!(!is_canonical("2024-02-28T00:00:00.000+"));
        assert!(!is_canonical("2024-02-28T00:00:00,000Z"));
        assert!(!is_canonical("2024-02-28T0a:00:00.000Z"));
        assert_eq!(
            n("2024-02-28T00:00:60.000Z"),
            Some("2024-02-28T00:00:59.999Z".into())
        );
    }
}
