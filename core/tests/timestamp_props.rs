//! Proves the timestamp codec by property testing against chrono's own formatting: every writer
//! format of any instant normalises to that instant's RFC 3339 UTC form truncated to the
//! millisecond, unix milliseconds round trip, and arbitrary text never panics and normalises
//! (when it does) to a canonical form that is a fixed point.

use changefeed_core::timestamp::{format_unix_millis, normalize, parse_unix_millis};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use proptest::prelude::*;

const CASES: u32 = 2048;

/// 0001-01-02 and 9998-12-30 in unix milliseconds: any offset keeps the local time in 0000–9999.
const EARLIEST_MS: i64 = -62_135_510_400_000;
const LATEST_MS: i64 = 253_370_592_000_000;
/// 1973-03-04 and 5138-11-15: the span in which every unix unit is read by magnitude.
const UNIX_EARLIEST_S: i64 = 100_000_000;
const UNIX_LATEST_S: i64 = 99_999_999_999;

/// The contract form, by chrono.
fn expected(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn instant(ms: i64, sub_ms_nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
        + chrono::Duration::nanoseconds(sub_ms_nanos.into())
}

/// The instant written as a writer would, by chrono's strftime.
fn render(instant: DateTime<Utc>, offset_minutes: i32, format: usize) -> String {
    let local = instant.with_timezone(&FixedOffset::east_opt(offset_minutes * 60).unwrap());
    match format {
        // SQLite datetime() and CURRENT_TIMESTAMP: UTC, space, optional fraction.
        0 => instant.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        1 => instant.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
        2 => instant.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string(),
        3 => local.format("%Y-%m-%dT%H:%M:%S%.f%:z").to_string(),
        4 => local.format("%Y-%m-%dT%H:%M:%S%.f%z").to_string(),
        // Go's 2006-01-02 15:04:05.999999999-07:00.
        5 => local.format("%Y-%m-%d %H:%M:%S%.f%:z").to_string(),
        // Go's time.Time.String(), zone name and monotonic reading included.
        6 => local
            .format("%Y-%m-%d %H:%M:%S%.f %z XYZ m=+0.000123456")
            .to_string(),
        7 => local.to_rfc3339_opts(SecondsFormat::Nanos, false),
        _ => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn every_date_format_names_the_same_instant(
        ms in EARLIEST_MS..LATEST_MS,
        sub_ms in 0u32..1_000_000,
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59),
        format in 0usize..8,
        padding in prop_oneof![Just(""), Just(" "), Just("\n")],
    ) {
        let at = instant(ms, sub_ms);
        let text = format!("{padding}{}{padding}", render(at, offset_minutes, format));
        prop_assert_eq!(normalize(&text), Some(expected(at)), "{:?}", text);
        prop_assert_eq!(parse_unix_millis(&text), Some(ms), "{:?}", text);
    }

    #[test]
    fn unix_numbers_in_every_unit_name_the_same_instant(
        seconds in UNIX_EARLIEST_S..UNIX_LATEST_S,
        nanos in 0u32..1_000_000_000,
        unit in 0usize..6,
    ) {
        let at = DateTime::from_timestamp(seconds, nanos).unwrap();
        let text = match unit {
            0 => seconds.to_string(),
            1 => format!("{seconds}.{nanos:09}"),
            2 => at.timestamp_millis().to_string(),
            3 => format!("{}.{:06}", at.timestamp_millis(), nanos % 1_000_000),
            4 => at.timestamp_micros().to_string(),
            _ => at.timestamp_nanos_opt().map_or_else(|| at.timestamp_micros().to_string(), |n| n.to_string()),
        };
        let whole_seconds = DateTime::from_timestamp(seconds, 0).unwrap();
        let want = if unit == 0 { whole_seconds } else { at };
        prop_assert_eq!(normalize(&text), Some(expected(want)), "{:?}", text);
    }

    #[test]
    fn unix_millis_round_trip(ms in EARLIEST_MS..LATEST_MS) {
        let text = format_unix_millis(ms).expect("in range");
        prop_assert_eq!(&text, &expected(DateTime::from_timestamp_millis(ms).unwrap()));
        prop_assert_eq!(parse_unix_millis(&text), Some(ms));
        prop_assert_eq!(normalize(&text), Some(text));
    }

    #[test]
    fn arbitrary_text_never_panics_and_normalises_to_a_fixed_point(
        text in prop_oneof![
            any::<String>(),
            "[0-9:. TZ+-]{0,30}",
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[ Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{0,12})?)?( ?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?))?( [A-Z+0-9]{1,5})?",
        ],
    ) {
        let millis = parse_unix_millis(&text);
        match normalize(&text) {
            Some(canonical) => {
                prop_assert_eq!(canonical.len(), 24);
                prop_assert_eq!(normalize(&canonical), Some(canonical.clone()));
                let ms = parse_unix_millis(&canonical);
                prop_assert!(ms.is_some());
                prop_assert_eq!(ms, millis, "{:?}", text);
                prop_assert_eq!(DateTime::parse_from_rfc3339(&canonical).map(|d| d.timestamp_millis()).ok(), ms);
            }
            None => prop_assert!(millis.is_none_or(|ms| format_unix_millis(ms).is_none()), "{:?}", text),
        }
    }
}
