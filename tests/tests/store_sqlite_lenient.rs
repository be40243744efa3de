//! Proves that rows of any SQLite storage class in every column of a foreign `change_log` (no
//! types, no CHECKs) never stop the feed: through the real store, tailer and HTTP stream, every
//! row arrives once and in order as one frame of valid JSON, odd columns in their documented
//! degraded form, counted in `/metrics`; replay returns the same rows as live, scoped or not;
//! and unix times stored as INTEGER, REAL, text or BLOB become RFC 3339 UTC with milliseconds.

use std::path::Path;

use changefeed_tests::{change_seqs, data_json, seq_of, TestServer};
use chrono_free::expected_created_at;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// A value of one of SQLite's five storage classes.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row: project, session, kind, payload, created_at.
type Row = [Value; 5];

fn text_like() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("p1".to_owned()),
        Just("pr_updated".to_owned()),
        Just("{\"a\":1}".to_owned()),
        Just("not json".to_owned()),
        Just("2026-11-26 21:13:07.123456789-07:00".to_owned()),
        Just("1764151200".to_owned()),
        Just("1764151200123".to_owned()),
        Just("".to_owned()),
        any::<String>(),
        "[a-z_]{1,8}",
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        prop_oneof![
            any::<i64>(),
            1_000_000_000i64..10_000_000_000,
            1_000_000_000_000i64..10_000_000_000_000
        ]
        .prop_map(Value::Integer),
        prop_oneof![any::<f64>(), 1.0e9f64..1.0e10].prop_map(Value::Real),
        text_like().prop_map(Value::Text),
        prop_oneof![
            text_like().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..16)
        ]
        .prop_map(Value::Blob),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    [value(), value(), value(), value(), value()]
}

/// A `change_log` as another program might declare it: no types, no CHECKs.
async fn create_foreign_change_log(path: &Path) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE change_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, project_id, \
         session_id, event_type, payload, created_at)",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
}

fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    value: &'q Value,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match value {
        Value::Null => query.bind(None::<i64>),
        Value::Integer(n) => query.bind(*n),
        Value::Real(x) => query.bind(*x),
        Value::Text(text) => query.bind(text.as_str()),
        Value::Blob(bytes) => query.bind(bytes.as_slice()),
    }
}

/// The project a row belongs to as the test reads the contract: only TEXT names a project.
fn project_of(row: &Row) -> Option<&str> {
    match &row[0] {
        Value::Text(text) if !text.is_empty() => Some(text),
        _ => None,
    }
}

async fn check_rows(rows: Vec<Row>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("foreign.db");
    create_foreign_change_log(&db_path).await;
    // Another program's change_log: served as it is (`serve --attach`); `dir` outlives it.
    let server = TestServer::attach(&db_path, None).await;
    let mut live = server.stream("/api/v1/events").await;
    let mut write = server.store.begin_write().await.unwrap();
    for row in &rows {
        let mut query = sqlx::query(
            "INSERT INTO change_log (project_id, session_id, event_type, payload, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        );
        for value in row {
            query = bind(query, value);
        }
        query.execute(&mut *write).await.unwrap();
    }
    write.commit().await.unwrap();
    let last = rows.len() as u64;

    let events = live.changes_through(last).await;
    let seqs = change_seqs(&events);
    prop_assert_eq!(&seqs, &(1..=last).collect::<Vec<_>>());
    let mut degraded_rows = 0;
    for (event, row) in events.iter().zip(&rows) {
        let json = data_json(event);
        prop_assert_eq!(json["seq"].as_u64(), Some(seq_of(event)));
        let degraded = json.get("degraded").is_some();
        if degraded || project_of(row).is_none() {
            degraded_rows += 1;
        }
        match &json["createdAt"] {
            serde_json::Value::Null => {
                prop_assert!(json["degraded"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|key| key == "createdAt")));
            }
            serde_json::Value::String(text) => {
                prop_assert!(
                    is_rfc3339_millis(text),
                    "createdAt {:?} of {:?}",
                    text,
                    row[4]
                );
            }
            other => prop_assert!(false, "createdAt {other:?}"),
        }
        if let Some(expected) = expected_created_at(&row[4]) {
            prop_assert_eq!(
                json["createdAt"].as_str(),
                Some(expected.as_str()),
                "{:?}",
                row[4]
            );
        }
        // Event names (the `event:` line) only ever come from a valid TEXT kind.
        match &row[2] {
            Value::Text(kind) if is_kind(kind) => prop_assert_eq!(&event.event_type, kind),
            _ => prop_assert_eq!(event.event_type.as_str(), "message"),
        }
    }
    server
        .wait_metric("changefeed_degraded_rows_total", degraded_rows as f64)
        .await;

    // Replay reads the same rows, unscoped and scoped per project (the SQL filter agrees with
    // the live one about what a project is).
    let mut replay = server.stream("/api/v1/events?after=0").await;
    let replayed = replay.changes_through(last).await;
    prop_assert_eq!(change_seqs(&replayed), seqs);
    for (replayed, live) in replayed.iter().zip(&events) {
        prop_assert_eq!(&replayed.data, &live.data);
    }
    let projects: std::collections::BTreeSet<&str> = rows.iter().filter_map(project_of).collect();
    for project in projects {
        let expected: Vec<u64> = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| project_of(row) == Some(project))
            .map(|(index, _)| index as u64 + 1)
            .collect();
        let query = format!("/api/v1/events?after=0&project={}", url_encode(project));
        // A scoped stream may refuse a project the database does not know; only an open stream
        // is compared.
        let mut scoped = server.stream(&query).await;
        if scoped.status != 200 {
            continue;
        }
        let got = change_seqs(&scoped.changes_through(*expected.last().unwrap()).await);
        prop_assert_eq!(got, expected, "project {:?}", project);
    }
    server.shutdown().await.unwrap();
    Ok(())
}

fn is_kind(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_rfc3339_millis(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The test's own reading of unix times (independent of the core's codec): whole seconds
/// from 10⁹ to 10¹¹ and milliseconds from 10¹² to 10¹⁴, as INTEGER, as REAL, as text or as a
/// BLOB holding the text.
mod chrono_free {
    use super::Value;

    pub fn expected_created_at(value: &Value) -> Option<String> {
        let millis = match value {
            Value::Integer(n) => unix_millis(*n as i128 * 1000)?,
            Value::Real(x) if x.fract() == 0.0 && x.abs() < 1e15 => unix_millis(*x as i128 * 1000)?,
            Value::Text(text) => unix_millis(text.parse::<i128>().ok()? * 1000)?,
            Value::Blob(bytes) => {
                unix_millis(std::str::from_utf8(bytes).ok()?.parse::<i128>().ok()? * 1000)?
            }
            _ => return None,
        };
        Some(format_millis(millis))
    }

    /// `n` thousandths of a stored number → Unix milliseconds, in the two unambiguous ranges.
    fn unix_millis(thousandths: i128) -> Option<i64> {
        let n = thousandths / 1000;
        if (1_000_000_000..100_000_000_000).contains(&n) {
            Some((n * 1000) as i64)
        } else if (1_000_000_000_000..100_000_000_000_000).contains(&n) {
            Some(n as i64)
        } else {
            None
        }
    }

    /// Civil-from-days (Howard Hinnant's algorithm), for years after 1970.
    fn format_millis(millis: i64) -> String {
        let days = millis.div_euclid(86_400_000);
        let of_day = millis.rem_euclid(86_400_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3_600_000,
            of_day / 60_000 % 60,
            of_day / 1000 % 60,
            of_day % 1000
        )
    }
}

#[test]
fn rows_of_any_storage_class_never_stop_the_feed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Few cases (each runs a server); the seed of a failure is printed and replays it with
    // PROPTEST_RNG_SEED.
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(row(), 1..12), |rows| {
        runtime.block_on(check_rows(rows))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
