//! Whose database is it? Default `serve` migrates only a database changefeed created: one that
//! is new (missing, empty, no schema objects) or that records changefeed's own migrations, with
//! the tables those migrations made still shaped as they made them. Anything else is refused
//! before a single statement writes to it (no journal-mode change either): its tables belong to
//! another program, and changefeed's migrations would add tables and triggers to them (a trigger
//! naming a column the owner's table lacks breaks every write of the owner). `--attach` serves
//! such a database's `change_log` without touching its schema.
//!
//! The expected shape is not written down twice: it is what the embedded migrations produce on
//! an in-memory database, compared table by table (`PRAGMA table_info`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};

/// The table in which sqlx records applied migrations.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Why default `serve` will not migrate a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignDatabase {
    /// The database file.
    pub path: String,
    /// What was found, one phrase each (joined with `; ` in the message).
    pub findings: Vec<String>,
}

impl fmt::Display for ForeignDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "database {} was not created by changefeed: {}; changefeed's migrations would add \
             tables and triggers to it, so it was left unchanged; to serve its change_log as it \
             is, run: changefeed serve --attach --database sqlite://{}",
            self.path,
            self.findings.join("; "),
            self.path
        )
    }
}

impl std::error::Error for ForeignDatabase {}

/// One schema object (`sqlite_master` row) outside SQLite's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    kind: String,
    name: String,
    table: String,
}

/// Checks the database file at `path` on a read-only connection of its own, changing nothing.
/// `Ok(Ok(()))` when changefeed may migrate it (it does not exist, holds no schema, or is
/// changefeed's); `Err` when the file cannot be read as a database.
pub async fn check_owned(
    path: &Path,
    migrator: &Migrator,
) -> Result<Result<(), ForeignDatabase>, sqlx::Error> {
    if no_database_at(path) {
        return Ok(Ok(()));
    }
    let options = SqliteConnectOptions::new().filename(path).read_only(true);
    let mut connection = SqliteConnection::connect_with(&options).await?;
    let name = path.display().to_string();
    let result = check_connection(&mut connection, migrator, &name).await;
    connection.close().await?;
    result
}

/// Whether there is no database at `path` yet: no file, or an empty one with no write-ahead log
/// holding its first pages.
pub fn no_database_at(path: &Path) -> bool {
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |meta| meta.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    size(path) == 0 && size(Path::new(&wal)) == 0
}

async fn check_connection(
    connection: &mut SqliteConnection,
    migrator: &Migrator,
    path: &str,
) -> Result<Result<(), ForeignDatabase>, sqlx::Error> {
    let found = objects(connection).await?;
    if found.is_empty() {
        return Ok(Ok(()));
    }
    // A plain function, not a closure: a closure holding `&str` across `.await` makes the
    // future's Send bound unprovable.
    fn foreign(
        path: &str,
        findings: Vec<String>,
    ) -> Result<Result<(), ForeignDatabase>, sqlx::Error> {
        Ok(Err(ForeignDatabase {
            path: path.to_owned(),
            findings,
        }))
    }
    let has_record = found
        .iter()
        .any(|object| object.kind == "table" && object.name == MIGRATIONS_TABLE);
    if !has_record {
        return foreign(path, vec![no_record_finding(&found)]);
    }

    // Applied migrations must be a subset of ours, with our checksums.
    let applied: Vec<(i64, Vec<u8>)> = sqlx::query(&format!(
        "SELECT version, checksum FROM {MIGRATIONS_TABLE} ORDER BY version"
    ))
    .fetch_all(&mut *connection)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let ours: BTreeMap<i64, &[u8]> = migrator
        .iter()
        .map(|migration| (migration.version, migration.checksum.as_ref()))
        .collect();
    let strangers: Vec<String> = applied
        .iter()
        .filter(|(version, checksum)| ours.get(version) != Some(&checksum.as_slice()))
        .map(|(version, _)| version.to_string())
        .collect();
    if !strangers.is_empty() || applied.is_empty() {
        let finding = if applied.is_empty() {
            format!("{MIGRATIONS_TABLE} records no migration")
        } else {
            format!(
                "{MIGRATIONS_TABLE} records migrations that are not changefeed's (version {})",
                strangers.join(", ")
            )
        };
        return foreign(path, vec![finding]);
    }

    // Our record is there: every table our applied migrations made must still have their columns.
    let versions: BTreeSet<i64> = applied.iter().map(|(version, _)| *version).collect();
    let expected = expected_schema(migrator, &versions).await?;
    let mut findings = Vec::new();
    for (table, columns) in &expected.tables {
        let actual = table_columns(connection, table).await?;
        if actual.is_empty() {
            continue; // Dropped: the migrations would create it again, nobody else's.
        }
        if &actual != columns {
            findings.push(format!(
                "table {table} has columns ({}) where changefeed's has ({})",
                actual.join(", "),
                columns.join(", ")
            ));
        }
    }
    expected.close().await;
    if findings.is_empty() {
        Ok(Ok(()))
    } else {
        foreign(path, findings)
    }
}

/// The finding for a database without a migration record: the objects changefeed's migrations
/// would touch (same names), else a few of the tables it has.
fn no_record_finding(found: &[Object]) -> String {
    const OURS: [&str; 7] = [
        "projects",
        "sessions",
        "pull_requests",
        "pr_checks",
        "pr_review_threads",
        "change_log",
        "changefeed_meta",
    ];
    let tables: Vec<&str> = found
        .iter()
        .filter(|object| object.kind == "table")
        .map(|object| object.name.as_str())
        .collect();
    let touched: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|name| OURS.iter().any(|ours| ours.eq_ignore_ascii_case(name)))
        .collect();
    let shown = if touched.is_empty() {
        &tables
    } else {
        &touched
    };
    let mut list = shown.iter().take(8).copied().collect::<Vec<_>>().join(", ");
    if shown.len() > 8 {
        list.push_str(&format!(" and {} more", shown.len() - 8));
    }
    let what = if touched.is_empty() {
        "it has tables of its own"
    } else {
        "it has tables changefeed's migrations would touch"
    };
    let triggers: Vec<&str> = found
        .iter()
        .filter(|object| object.kind == "trigger" && object.name.starts_with("changefeed_"))
        .map(|object| object.name.as_str())
        .collect();
    let mut finding =
        format!("no changefeed migration record ({MIGRATIONS_TABLE}), and {what} ({list})");
    if !triggers.is_empty() {
        finding.push_str(&format!(
            ", plus {} changefeed_* trigger(s) an older changefeed left",
            triggers.len()
        ));
    }
    finding
}

async fn objects(connection: &mut SqliteConnection) -> Result<Vec<Object>, sqlx::Error> {
    sqlx::query(
        "SELECT type, name, tbl_name FROM sqlite_master \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name",
    )
    .fetch_all(connection)
    .await?
    .iter()
    .map(|row| {
        Ok(Object {
            kind: row.try_get(0)?,
            name: row.try_get(1)?,
            table: row.try_get(2)?,
        })
    })
    .collect()
}

/// Column names and declared types, `name TYPE`, in table order; empty when there is no such
/// table.
async fn table_columns(
    connection: &mut SqliteConnection,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query("SELECT name, type FROM pragma_table_info(?1)")
        .bind(table)
        .fetch_all(connection)
        .await?
        .iter()
        .map(|row| {
            let name: String = row.try_get(0)?;
            let declared: String = row.try_get(1)?;
            Ok(format!("{name} {declared}").trim_end().to_owned())
        })
        .collect()
}

/// What the migrations of `versions` make, read back from an in-memory database.
struct Expected {
    connection: SqliteConnection,
    tables: BTreeMap<String, Vec<String>>,
}

impl Expected {
    async fn close(self) {
        let _ = self.connection.close().await;
    }
}

async fn expected_schema(
    migrator: &Migrator,
    versions: &BTreeSet<i64>,
) -> Result<Expected, sqlx::Error> {
    let options = SqliteConnectOptions::new().in_memory(true);
    let mut connection = SqliteConnection::connect_with(&options).await?;
    // Collected first: an iterator with a closure held across `.await` makes the future's
    // Send bound unprovable.
    let scripts: Vec<String> = migrator
        .iter()
        .filter(|migration| versions.contains(&migration.version))
        .map(|migration| migration.sql.to_string())
        .collect();
    for script in &scripts {
        // Executor::execute, not raw_sql: raw_sql's future is not provably Send here.
        sqlx::Executor::execute(&mut connection, script.as_str()).await?;
    }
    let mut tables = BTreeMap::new();
    for object in objects(&mut connection).await? {
        if object.kind == "table" && object.name == object.table {
            let columns = table_columns(&mut connection, &object.name).await?;
            tables.insert(object.name, columns);
        }
    }
    Ok(Expected { connection, tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check(setup: &str) -> Result<(), ForeignDatabase> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut connection = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql(setup).execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
        check_owned(&path, &super::super::MIGRATOR).await.unwrap()
    }

    #[tokio::test]
    async fn a_missing_or_empty_database_is_ours_to_create() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.db");
        let migrator = &super::super::MIGRATOR;
        assert_eq!(check_owned(&missing, migrator).await.unwrap(), Ok(()));
        std::fs::write(&missing, b"").unwrap();
        assert_eq!(check_owned(&missing, migrator).await.unwrap(), Ok(()));
        assert_eq!(check("PRAGMA user_version = 3").await, Ok(()));
    }

    #[tokio::test]
    async fn tables_without_our_record_are_named() {
        let error = check(
            "CREATE TABLE projects (id TEXT PRIMARY KEY); \
             CREATE TABLE sessions (id TEXT PRIMARY KEY, status TEXT); \
             CREATE TABLE goose_db_version (id INTEGER PRIMARY KEY);",
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("no changefeed migration record (_sqlx_migrations)"),
            "{message}"
        );
        assert!(
            message.contains("would touch (projects, sessions)"),
            "{message}"
        );
        assert!(message.contains("serve --attach"), "{message}");
        let unrelated = check("CREATE TABLE notes (x)").await.unwrap_err();
        assert!(
            unrelated.to_string().contains("tables of its own (notes)"),
            "{unrelated}"
        );
    }

    #[tokio::test]
    async fn another_programs_sqlx_record_is_not_ours() {
        let error = check(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT, \
             installed_on TEXT, success BOOLEAN, checksum BLOB, execution_time BIGINT); \
             INSERT INTO _sqlx_migrations VALUES (1, 'users', '', 1, x'00', 0); \
             CREATE TABLE users (id);",
        )
        .await
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("records migrations that are not changefeed's (version 1)"),
            "{error}"
        );
    }
}
