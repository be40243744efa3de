//! `last=`'s locate for SQLite as one indexed backwards scan: the log read backwards from `upto`
//! with the filter pushed down (kinds, sessions; a project through the `(project_id, seq)`
//! index), only the four columns a match needs, stopping at the `count`-th row the core's
//! filter matches. For one project or none it is one range read (by `seq`, the rowid, without
//! a project); for several, one range read of the index per project in a `UNION ALL ...
//! ORDER BY seq DESC`, which SQLite runs as a streaming merge of the arms (no sort of every
//! row of those projects, and about `count` rows read in all, not `count` per project: a scan
//! per project, merged afterwards, read twice the rows for two projects and was slower than the
//! walk of replay windows). The pushed-down clauses only narrow what is read; the core's
//! [`Filter::matches_event`] decides, on the values decoded as replay decodes them (see
//! `direct`), so the count is of exactly the rows a replay would send.

use changefeed_core::{Filter, LocateRequest, Located, Seq};

use super::direct::{self, store_error};
use super::{placeholders, push_kind_filter, to_sql};
use crate::store::{LogBounds, StoreError};

/// The SQL of a locate scan and its binds after `floor` and `upto`; `None` when nothing can
/// match.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LocateQuery {
    pub(super) sql: String,
    pub(super) binds: Vec<String>,
}

impl LocateQuery {
    pub(super) fn new(filter: &Filter) -> Option<LocateQuery> {
        let mut sql = String::new();
        let mut binds = Vec::new();
        match &filter.projects {
            None => LocateQuery::arm(filter, None, &mut sql, &mut binds)?,
            Some(projects) if projects.is_empty() => return None,
            Some(projects) => {
                for (index, project) in projects.iter().enumerate() {
                    if index > 0 {
                        sql.push_str(" UNION ALL ");
                    }
                    LocateQuery::arm(filter, Some(project), &mut sql, &mut binds)?;
                }
            }
        }
        sql.push_str(" ORDER BY seq DESC");
        Some(LocateQuery {
            sql: numbered(&sql),
            binds,
        })
    }

    /// One range read: of `project`'s index range, or of the whole log. `?1` and `?2` (floor
    /// and `upto`) are shared by every arm; each arm's own values follow in bind order (plain
    /// `?` here, numbered by [`numbered`]).
    fn arm(
        filter: &Filter,
        project: Option<&String>,
        sql: &mut String,
        binds: &mut Vec<String>,
    ) -> Option<()> {
        sql.push_str(
            "SELECT seq, project_id, session_id, event_type FROM change_log \
             WHERE seq > ?1 AND seq <= ?2",
        );
        if let Some(project) = project {
            sql.push_str(" AND project_id = ? AND typeof(project_id) = 'text'");
            binds.push(project.clone());
        }
        if let Some(sessions) = &filter.sessions {
            if sessions.is_empty() {
                return None;
            }
            sql.push_str(&format!(
                " AND session_id IN ({}) AND typeof(session_id) = 'text'",
                placeholders(sessions.len())
            ));
            binds.extend(sessions.iter().cloned());
        }
        push_kind_filter(filter, sql, binds)
    }
}

/// `sql` with every plain `?` numbered from `?3` in order. sqlx counts plain `?` from the first
/// bind whatever numbered ones came before, so with `?1`/`?2` shared by several arms every
/// other placeholder must carry its number too.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut next = 3;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '?' && !chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str(&next.to_string());
            next += 1;
        }
    }
    out
}

/// Answers `request` in the read transaction of `connection`, whose bounds are `bounds`: rows
/// at or below the floor are never counted (a stream never starts below it anyway).
pub(super) fn locate_in(
    connection: &rusqlite::Connection,
    bounds: &LogBounds,
    filter: &Filter,
    request: LocateRequest,
) -> Result<Located, StoreError> {
    let located = |nth| Located {
        nth,
        floor: bounds.floor,
    };
    let upto = request.upto.min(bounds.head);
    if request.count == 0 || upto <= bounds.floor {
        return Ok(located(None));
    }
    let count = request.count as usize;
    let nth = scan(connection, bounds.floor, upto, filter, count)?
        .get(count - 1)
        .copied();
    Ok(located(nth))
}

/// The seqs of the newest `count` rows in `(floor, upto]` the filter matches, newest first.
fn scan(
    connection: &rusqlite::Connection,
    floor: Seq,
    upto: Seq,
    filter: &Filter,
    count: usize,
) -> Result<Vec<Seq>, StoreError> {
    let Some(query) = LocateQuery::new(filter) else {
        return Ok(Vec::new());
    };
    let mut statement = direct::prepared(
        connection,
        &query.sql,
        (to_sql(floor), to_sql(upto)),
        &query.binds,
    )?;
    let mut rows = statement.raw_query();
    let mut found = Vec::new();
    let (mut project, mut session, mut kind) = (String::new(), None, String::new());
    while let Some(row) = rows.next().map_err(store_error)? {
        let seq = direct::read_seq(row)?;
        direct::read_ids(row, seq, (1, 2, 3), &mut project, &mut session, &mut kind)?;
        if filter.matches_event(&project, session.as_deref(), &kind) {
            found.push(seq);
            if found.len() == count {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::walking::WalkingLocate;
    use crate::store::Store;

    /// A log of odd rows: ids and kinds of several storage classes, sessions NULL, empty or
    /// set, deleted rows; every filter and count answered by the SQL locate and by the default
    /// walk (another algorithm, on the replay path) must agree.
    #[tokio::test]
    async fn the_indexed_locate_agrees_with_the_default_walk_on_odd_rows() {
        let seed = std::env::var("LOCATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("locate.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let projects = ["a", "b", "c"];
        let sessions = ["'s1'", "'s2'", "NULL", "''", "7", "X'7331'"];
        let kinds = [
            "pr_created",
            "pr_updated",
            "session_created",
            "project_created",
        ];
        let mut sql = String::from("BEGIN;");
        for _ in 0..400 {
            let project = match rng.u8(..10) {
                0 => "5".to_owned(),
                1 => "X'61'".to_owned(),
                _ => format!("'{}'", projects[rng.usize(..projects.len())]),
            };
            let session = sessions[rng.usize(..sessions.len())];
            let kind = kinds[rng.usize(..kinds.len())];
            sql.push_str(&format!(
                "INSERT INTO change_log (project_id, session_id, event_type, payload) \
                 VALUES ({project}, {session}, '{kind}', '{{}}');"
            ));
        }
        sql.push_str("DELETE FROM change_log WHERE seq % 17 = 0; COMMIT;");
        sqlx::raw_sql(&sql)
            .execute(&store.inner.write)
            .await
            .unwrap();
        let walking = WalkingLocate(store.clone());
        for case in 0..300 {
            let mut query = Vec::new();
            for project in ["a", "b", "c", "5"] {
                if rng.u8(..4) == 0 {
                    query.push(format!("project={project}"));
                }
            }
            for session in ["s1", "s2", "7"] {
                if rng.u8(..5) == 0 {
                    query.push(format!("session={session}"));
                }
            }
            match rng.u8(..4) {
                0 => query.push("types=pr_*".into()),
                1 => query.push("types=session_created,project_created".into()),
                2 => query.push("types=*".into()),
                _ => {}
            }
            let filter = changefeed_core::EventsQuery::parse(Some(&query.join("&")))
                .unwrap()
                .filter;
            let request = LocateRequest {
                count: rng.u32(1..=60),
                upto: Seq(rng.u64(0..=420)),
            };
            let ours = store.locate(&filter, request).await.unwrap();
            let default = walking.locate(&filter, request).await.unwrap();
            assert_eq!(
                ours, default,
                "case {case}: {query:?} {request:?} (replay with LOCATE_SEED={seed})"
            );
        }
        store.close().await;
    }

    #[test]
    fn the_locate_query_pushes_the_filter_down() {
        let filter = changefeed_core::EventsQuery::parse(Some(
            "project=a&session=s1&session=s2&types=pr_*,session_created",
        ))
        .unwrap()
        .filter;
        let query = LocateQuery::new(&filter).unwrap();
        assert_eq!(
            query.sql,
            "SELECT seq, project_id, session_id, event_type FROM change_log WHERE seq > ?1 AND \
             seq <= ?2 AND project_id = ?3 AND typeof(project_id) = 'text' AND session_id \
             IN (?4, ?5) AND typeof(session_id) = 'text' AND typeof(event_type) = 'text' AND \
             (event_type GLOB ?6 OR event_type = ?7) ORDER BY seq DESC"
        );
        assert_eq!(query.binds, ["a", "s1", "s2", "pr_*", "session_created"]);
        // Several projects: one index range per project, merged by SQLite in seq order.
        let two = changefeed_core::EventsQuery::parse(Some("project=a&project=b&types=pr_*"))
            .unwrap()
            .filter;
        let query = LocateQuery::new(&two).unwrap();
        let arm = |first: u32| {
            format!(
                "SELECT seq, project_id, session_id, event_type FROM change_log WHERE seq > ?1 \
                 AND seq <= ?2 AND project_id = ?{first} AND typeof(project_id) = 'text' AND \
                 typeof(event_type) = 'text' AND (event_type GLOB ?{})",
                first + 1
            )
        };
        assert_eq!(
            query.sql,
            format!("{} UNION ALL {} ORDER BY seq DESC", arm(3), arm(5))
        );
        assert_eq!(query.binds, ["a", "pr_*", "b", "pr_*"]);
        let all = LocateQuery::new(&changefeed_core::Filter::all()).unwrap();
        assert!(!all.sql.contains(" AND project_id"), "{}", all.sql);
    }
}
