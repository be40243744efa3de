//! The start-up check of a `change_log` someone else may have created: can this table be served
//! as it is? Every problem is named in one message, before anything is served.
//!
//! Served means: the six columns the store reads (`seq`, `project_id`, `session_id`,
//! `event_type`, `payload`, `created_at`) exist; `seq` is the table's only primary-key column and
//! an `INTEGER PRIMARY KEY` (the rowid, so `ORDER BY seq` and `seq > ?` read the table's own
//! b-tree); and the table is declared `AUTOINCREMENT`, so a seq is never handed out twice and
//! the head can be read from `sqlite_sequence` (the store's head invariant, see
//! [`super`]). Column types and CHECKs are not required: rows of any storage class are read
//! leniently.

use std::fmt;
use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

/// The columns the store reads, in its `SELECT` order.
pub const REQUIRED_COLUMNS: [&str; 6] = [
    "seq",
    "project_id",
    "session_id",
    "event_type",
    "payload",
    "created_at",
];

/// One reason a `change_log` cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaProblem {
    /// There is no `change_log` table (a view does not count).
    MissingTable,
    /// A column the store reads is not there.
    MissingColumn(&'static str),
    /// `seq` is not the table's one `INTEGER PRIMARY KEY`; says what the key is instead.
    WrongPrimaryKey(String),
    /// The table is not declared `AUTOINCREMENT`.
    NoAutoincrement,
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaProblem::MissingTable => f.write_str("there is no change_log table"),
            SchemaProblem::MissingColumn(column) => write!(f, "column {column} is missing"),
            SchemaProblem::WrongPrimaryKey(found) => write!(
                f,
                "seq must be its only primary key, declared INTEGER PRIMARY KEY, but {found}"
            ),
            SchemaProblem::NoAutoincrement => f.write_str(
                "it is not declared AUTOINCREMENT (seq INTEGER PRIMARY KEY AUTOINCREMENT), so a \
                 seq could be handed out twice",
            ),
        }
    }
}

/// Why a `change_log` cannot be served: every problem found, in one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// What is wrong, in a stable order: the table, the columns in the store's order, the
    /// primary key, AUTOINCREMENT.
    pub problems: Vec<SchemaProblem>,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("change_log cannot be served: ")?;
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SchemaError {}

impl From<SchemaError> for super::StoreError {
    fn from(error: SchemaError) -> Self {
        super::StoreError::fatal(error.to_string())
    }
}

/// Checks the `change_log` of the database file at `path` on a read-only connection of its own,
/// changing nothing. `Ok(Ok(()))` also when the file or the table does not exist yet (the store
/// creates them); `Err` when the file cannot be read as a database.
pub async fn check_file(path: &Path) -> Result<Result<(), SchemaError>, sqlx::Error> {
    if !path.exists() {
        return Ok(Ok(()));
    }
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await?;
    let result = if change_log_exists(&mut connection).await? {
        check_change_log(&mut connection).await?
    } else {
        Ok(())
    };
    connection.close().await?;
    Ok(result)
}

/// Whether the connection's `main` schema has a table named `change_log`.
pub async fn change_log_exists(connection: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    change_log_exists_in(connection, "main").await
}

/// Checks the `change_log` of the connection's `main` schema (see the [module docs](self)).
/// `Err(sqlx::Error)` inside means the check itself could not run (the file is not a database,
/// it is locked).
pub async fn check_change_log(
    connection: &mut SqliteConnection,
) -> Result<Result<(), SchemaError>, sqlx::Error> {
    check_change_log_in(connection, "main").await
}

/// [`check_change_log`] for the `change_log` of an attached schema (`ATTACH ... AS <schema>`).
pub async fn check_change_log_in(
    connection: &mut SqliteConnection,
    schema: &str,
) -> Result<Result<(), SchemaError>, sqlx::Error> {
    if !change_log_exists_in(connection, schema).await? {
        return Ok(Err(SchemaError {
            problems: vec![SchemaProblem::MissingTable],
        }));
    }
    let quoted = quote_identifier(schema);
    // name, declared type, pk (1-based position in the primary key, 0 if not part of it).
    let columns: Vec<(String, String, i64)> =
        sqlx::query(&format!("PRAGMA {quoted}.table_info(change_log)"))
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("name")?,
                    row.try_get::<String, _>("type")?,
                    row.try_get::<i64, _>("pk")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
    let sql: String = sqlx::query_scalar(&format!(
        "SELECT COALESCE(sql, '') FROM {quoted}.sqlite_master \
         WHERE type = 'table' AND name = 'change_log' COLLATE NOCASE"
    ))
    .fetch_one(&mut *connection)
    .await?;
    Ok(problems(&columns, &sql))
}

/// Whether `main.change_log` is declared with `CHECK (json_valid(payload))`, which vouches that
/// every TEXT payload is JSON (so the encoder need not parse it).
pub async fn payload_is_checked(connection: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let sql: Option<String> = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'change_log' COLLATE NOCASE",
    )
    .fetch_optional(connection)
    .await?
    .flatten();
    let compact: String = sql
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    Ok(compact.contains("CHECK(JSON_VALID(PAYLOAD))"))
}

async fn change_log_exists_in(
    connection: &mut SqliteConnection,
    schema: &str,
) -> Result<bool, sqlx::Error> {
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.sqlite_master WHERE type = 'table' AND name = 'change_log' COLLATE NOCASE",
        quote_identifier(schema)
    ))
    .fetch_one(connection)
    .await?;
    Ok(count > 0)
}

/// The problems of a table with `columns` (name, declared type, pk position) created by `sql`.
fn problems(columns: &[(String, String, i64)], sql: &str) -> Result<(), SchemaError> {
    let find = |name: &str| {
        columns
            .iter()
            .find(|(column, _, _)| column.eq_ignore_ascii_case(name))
    };
    let mut problems: Vec<SchemaProblem> = REQUIRED_COLUMNS
        .into_iter()
        .filter(|name| find(name).is_none())
        .map(SchemaProblem::MissingColumn)
        .collect();
    let key: Vec<&str> = {
        let mut key: Vec<&(String, String, i64)> =
            columns.iter().filter(|(_, _, pk)| *pk > 0).collect();
        key.sort_by_key(|(_, _, pk)| *pk);
        key.into_iter().map(|(name, _, _)| name.as_str()).collect()
    };
    if let Some((_, declared, _)) = find("seq") {
        let wrong = match key.as_slice() {
            [] => Some("the table has no primary key".to_owned()),
            [only] if only.eq_ignore_ascii_case("seq") => (!declared
                .eq_ignore_ascii_case("INTEGER"))
            .then(|| format!("seq is declared {declared:?}, which is not the rowid")),
            key => Some(format!("the primary key is ({})", key.join(", "))),
        };
        problems.extend(wrong.map(SchemaProblem::WrongPrimaryKey));
    }
    if !declares_autoincrement(sql) {
        problems.push(SchemaProblem::NoAutoincrement);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaError { problems })
    }
}

/// Whether the `CREATE TABLE` text has the `AUTOINCREMENT` keyword outside comments and quotes.
fn declares_autoincrement(sql: &str) -> bool {
    let mut words = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                words.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
                words.push(' ');
            }
            '\'' | '"' | '`' | '[' => {
                let close = if c == '[' { ']' } else { c };
                for c in chars.by_ref() {
                    if c == close {
                        break;
                    }
                }
                words.push(' ');
            }
            c if c.is_ascii_alphanumeric() || c == '_' => words.push(c.to_ascii_uppercase()),
            _ => words.push(' '),
        }
    }
    words.split(' ').any(|word| word == "AUTOINCREMENT")
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(create: &str) -> Result<(), SchemaError> {
        let options = SqliteConnectOptions::new().in_memory(true);
        let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql(create)
            .execute(&mut connection)
            .await
            .unwrap();
        check_change_log(&mut connection).await.unwrap()
    }

    fn messages(result: Result<(), SchemaError>) -> String {
        result.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn accepts_our_schema_and_an_untyped_foreign_one() {
        let ours = include_str!("../../../../migrations/sqlite/0002_domain_schema.sql");
        assert_eq!(check(ours).await, Ok(()));
        let foreign = "CREATE TABLE Change_Log (SEQ integer primary key autoincrement, \
                       project_id, session_id, event_type, payload, created_at TIMESTAMP)";
        assert_eq!(check(foreign).await, Ok(()));
    }

    #[tokio::test]
    async fn names_every_missing_column_in_one_message() {
        let result = check(
            "CREATE TABLE change_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT, \
             kind TEXT, created_at TEXT)",
        )
        .await;
        assert_eq!(
            result.clone().unwrap_err().problems,
            [
                SchemaProblem::MissingColumn("session_id"),
                SchemaProblem::MissingColumn("event_type"),
                SchemaProblem::MissingColumn("payload"),
            ]
        );
        assert_eq!(
            messages(result),
            "change_log cannot be served: column session_id is missing; column event_type is \
             missing; column payload is missing"
        );
    }

    #[tokio::test]
    async fn refuses_a_wrong_primary_key() {
        let columns = "project_id TEXT, session_id TEXT, event_type TEXT, payload TEXT, \
                       created_at TEXT";
        let no_key = check(&format!("CREATE TABLE change_log (seq INTEGER, {columns})")).await;
        assert_eq!(
            no_key.unwrap_err().problems,
            [
                SchemaProblem::WrongPrimaryKey("the table has no primary key".into()),
                SchemaProblem::NoAutoincrement
            ]
        );
        let composite = messages(
            check(&format!(
                "CREATE TABLE change_log (seq INTEGER, {columns}, PRIMARY KEY (project_id, seq))"
            ))
            .await,
        );
        assert!(
            composite.contains("the primary key is (project_id, seq)"),
            "{composite}"
        );
        let not_rowid = messages(
            check(&format!(
                "CREATE TABLE change_log (seq BIGINT PRIMARY KEY, {columns})"
            ))
            .await,
        );
        assert!(
            not_rowid.contains("seq is declared \"BIGINT\", which is not the rowid"),
            "{not_rowid}"
        );
    }

    #[tokio::test]
    async fn refuses_a_missing_autoincrement_even_in_a_comment() {
        let result = check(
            "CREATE TABLE change_log ( -- AUTOINCREMENT some day\n\
             seq INTEGER PRIMARY KEY /* AUTOINCREMENT */, project_id DEFAULT 'AUTOINCREMENT', \
             session_id, event_type, payload, created_at)",
        )
        .await;
        assert_eq!(
            result.unwrap_err().problems,
            [SchemaProblem::NoAutoincrement]
        );
    }

    #[tokio::test]
    async fn a_view_is_not_a_table() {
        let result = check("CREATE VIEW change_log AS SELECT 1 AS seq").await;
        assert_eq!(
            messages(result),
            "change_log cannot be served: there is no change_log table"
        );
    }
}
