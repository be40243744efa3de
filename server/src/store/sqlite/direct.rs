//! Replay windows, `rows_after`, `last=`'s locate scan (`locate.rs`) and the log's bounds,
//! stepped straight off a read connection's SQLite handle.
//!
//! sqlx steps a statement on the connection's worker thread, copies every value of every row
//! into a row object, and sends each row through a channel to the reading task, which frees it:
//! a thread hand-off, six value copies and cross-thread frees per row, most of a replay's cost.
//! Here the reading task locks the connection (sqlx's worker waits meanwhile), steps the window's
//! statement itself and turns each row into an [`EventRow`] from SQLite's own buffers, which
//! SQLite reuses for the next row (written over the strings of a spare row where the caller
//! has one).
//!
//! The same goes for the bounds read with them, and the transaction around both: locking the
//! handle is the one round trip to the worker thread per read (sqlx's `BEGIN`, query and
//! `COMMIT` were one each). The connection, its pragmas (`query_only`, busy timeout) and the
//! read gate stay sqlx's and the caller's. Rows of any storage class read exactly as
//! the sqlx-based oracle in the store's tests reads them (a test compares the two).

use changefeed_core::{EventRow, PayloadCheck, Seq};
use rusqlite::types::ValueRef;
use sqlx::sqlite::LockedSqliteHandle;

use crate::store::{seq_from, sqlite_code_kind, StoreError, StoreErrorKind};

/// Runs `read` on the connection behind `handle`, on this thread. Synchronous: no statement
/// of ours outlives the call, so the connection goes back to sqlx as it was.
pub(super) fn with_connection<T>(
    handle: &mut LockedSqliteHandle<'_>,
    read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // SAFETY: the handle is locked for as long as `handle` is borrowed, so sqlx's worker does
    // not use the connection meanwhile; `from_handle` does not take ownership (dropping the
    // `Connection` leaves the database open), and the `Connection` and its statements are
    // dropped (finalized) before this function returns, while the lock is still held.
    let connection = unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) }
        .map_err(store_error)?;
    read(&connection)
}

/// [`with_connection`] in one read transaction (one snapshot), rolled back if `read` fails.
pub(super) fn in_snapshot<T>(
    handle: &mut LockedSqliteHandle<'_>,
    read: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    with_connection(handle, |connection| {
        // Dropping the transaction without a commit (an error, a panic) rolls it back.
        let transaction = connection.unchecked_transaction().map_err(store_error)?;
        let value = read(&transaction)?;
        transaction.commit().map_err(store_error)?;
        Ok(value)
    })
}

/// `sql` prepared with the two `leading` integers bound, then `binds`.
pub(super) fn prepared<'c>(
    connection: &'c rusqlite::Connection,
    sql: &str,
    leading: (i64, i64),
    binds: &[String],
) -> Result<rusqlite::Statement<'c>, StoreError> {
    let mut statement = connection.prepare(sql).map_err(store_error)?;
    statement
        .raw_bind_parameter(1, leading.0)
        .map_err(store_error)?;
    statement
        .raw_bind_parameter(2, leading.1)
        .map_err(store_error)?;
    for (index, value) in binds.iter().enumerate() {
        statement
            .raw_bind_parameter(index + 3, value.as_str())
            .map_err(store_error)?;
    }
    Ok(statement)
}

/// The rows of `sql` (which selects [`super::ROW_COLUMNS`] and takes the two `leading`
/// integers, then `binds`), read into the rows of `spare` as far as it has them.
pub(super) fn rows(
    connection: &rusqlite::Connection,
    sql: &str,
    leading: (i64, i64),
    binds: &[String],
    payload_check: PayloadCheck,
    capacity: usize,
    spare: Vec<EventRow>,
) -> Result<Vec<EventRow>, StoreError> {
    let mut statement = prepared(connection, sql, leading, binds)?;
    // The spare rows' strings are overwritten in place: a replay allocates per window, not
    // per row.
    let mut rows = spare;
    rows.reserve(capacity.saturating_sub(rows.len()));
    let mut read = 0;
    let mut stepped = statement.raw_query();
    while let Some(row) = stepped.next().map_err(store_error)? {
        if read == rows.len() {
            rows.push(EventRow {
                seq: Seq::ZERO,
                project_id: String::new(),
                session_id: None,
                kind: String::new(),
                payload: String::new(),
                payload_check,
                created_at: String::new(),
            });
        }
        read_row(row, payload_check, &mut rows[read])?;
        read += 1;
    }
    rows.truncate(read);
    Ok(rows)
}

/// One row into `out` (every field overwritten, its strings' allocations kept), with the
/// store's rules for every storage class (see the module docs of [`super`]: ids and kinds
/// that are not TEXT read as none, a NULL payload as `null`).
fn read_row(
    row: &rusqlite::Row<'_>,
    payload_check: PayloadCheck,
    out: &mut EventRow,
) -> Result<(), StoreError> {
    let seq = read_seq(row)?;
    read_ids(
        row,
        seq,
        (1, 2, 3),
        &mut out.project_id,
        &mut out.session_id,
        &mut out.kind,
    )?;
    let payload = column(row, 4, seq)?;
    let created_at = column(row, 5, seq)?;
    out.seq = seq;
    out.payload_check = match payload {
        ValueRef::Text(_) => payload_check,
        _ => PayloadCheck::Unchecked,
    };
    match payload {
        ValueRef::Null => {
            out.payload.clear();
            out.payload.push_str("null");
        }
        other => set_as_text(&mut out.payload, other),
    }
    set_as_text(&mut out.created_at, created_at);
    Ok(())
}

/// The row's seq, its first column.
pub(super) fn read_seq(row: &rusqlite::Row<'_>) -> Result<Seq, StoreError> {
    match row.get_ref(0).map_err(store_error)? {
        ValueRef::Integer(seq) => seq_from("seq", seq),
        other => Err(StoreError::bad_data(
            None,
            format!("change_log seq is not an integer: {:?}", other.data_type()),
        )),
    }
}

/// The project, session and kind of the row at `seq` (their column indexes in `columns`) into
/// the strings given, as replay reads them: TEXT as it is; a project or kind of any other
/// class as the empty string, a session of any other class as none (no filter names them).
pub(super) fn read_ids(
    row: &rusqlite::Row<'_>,
    seq: Seq,
    columns: (usize, usize, usize),
    project: &mut String,
    session: &mut Option<String>,
    kind: &mut String,
) -> Result<(), StoreError> {
    set_text_or_empty(project, column(row, columns.0, seq)?);
    match (column(row, columns.1, seq)?, &mut *session) {
        (ValueRef::Text(bytes), Some(session_id)) => set_utf8(session_id, bytes),
        (ValueRef::Text(bytes), none) => *none = Some(super::utf8_text(bytes)),
        (_, session_id) => *session_id = None,
    }
    set_text_or_empty(kind, column(row, columns.2, seq)?);
    Ok(())
}

/// Column `index` of the row at `seq`; a failure names the row.
fn column<'r>(
    row: &'r rusqlite::Row<'_>,
    index: usize,
    seq: Seq,
) -> Result<ValueRef<'r>, StoreError> {
    row.get_ref(index).map_err(|error| StoreError {
        seq: Some(seq),
        ..store_error(error)
    })
}

/// `bytes` as UTF-8 (invalid sequences replaced, like [`super::utf8_text`]) into `out`.
fn set_utf8(out: &mut String, bytes: &[u8]) {
    out.clear();
    out.push_str(&String::from_utf8_lossy(bytes));
}

/// An id or kind: TEXT as it is, any other class as the empty string (no filter names it).
fn set_text_or_empty(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Text(bytes) => set_utf8(out, bytes),
        _ => out.clear(),
    }
}

/// A value of any class as text, as the tests' sqlx oracle (`column_text`) reads it: INTEGER and REAL in
/// decimal (REAL without an exponent), TEXT and BLOB as UTF-8, NULL as the empty string.
fn set_as_text(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.clear(),
        ValueRef::Integer(number) => set_display(out, number),
        ValueRef::Real(number) => set_display(out, number),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => set_utf8(out, bytes),
    }
}

/// `value` in its `Display` form into `out`.
fn set_display(out: &mut String, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    out.clear();
    write!(out, "{value}").expect("writing into a String cannot fail");
}

/// A rusqlite error, classified by its SQLite result code like sqlx's (see [`sqlite_code_kind`]).
pub(super) fn store_error(error: rusqlite::Error) -> StoreError {
    let kind = match &error {
        rusqlite::Error::SqliteFailure(failure, _) => {
            sqlite_code_kind(i64::from(failure.extended_code))
        }
        _ => StoreErrorKind::Fatal,
    };
    StoreError {
        kind,
        message: error.to_string(),
        seq: None,
    }
}
