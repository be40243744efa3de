//! The `GET /api/v1/events` request: query-string parsing, validation and where to start
//! (`PROTOCOL.md`, "Parameters" and "Where a stream starts").

use std::collections::BTreeSet;

use crate::filter::{Filter, Grant, TypePattern};
use crate::ids::Ids;
use crate::position::{Cursor, CursorError};
pub use crate::wire::{ApiError, ErrorCode};

/// A rejected request: the [`ApiError`] the request parser returns (code and message).
pub type RequestError = ApiError;

/// A validated query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// `after=<cursor>`, if given.
    pub after: Option<Cursor>,
    /// `after` exactly as received (for the reset frame's `requested`).
    pub after_raw: Option<String>,
    /// The scope from `project`, `session` and `types`.
    pub filter: Filter,
    /// `last=<n>`: start so that the newest `n` matching events are replayed.
    pub last: Option<u32>,
}

/// The most `project` values one request may name.
pub const MAX_PROJECTS: usize = 256;
/// The most `session` values one request may name.
pub const MAX_SESSIONS: usize = 256;
/// The most `types` patterns one request may name.
pub const MAX_TYPE_PATTERNS: usize = 64;
/// The largest `last=` (a phone's "recent history, then live" without a full replay).
pub const MAX_LAST: u32 = 10_000;

const KNOWN: &str = "after, last, project, session, types";

impl EventsQuery {
    /// Parses a raw (percent-encoded) query string with plain cursors. Unknown or repeated
    /// parameters are errors, never ignored: a typo such as `projectId=` must not silently
    /// widen the scope.
    pub fn parse(query: Option<&str>) -> Result<EventsQuery, RequestError> {
        EventsQuery::parse_with(query, &Ids::Plain)
    }

    /// [`EventsQuery::parse`] reading `after` with `ids` (with sealed ids, only an id this
    /// server issued, or `0`).
    pub fn parse_with(query: Option<&str>, ids: &Ids) -> Result<EventsQuery, RequestError> {
        let mut after_raw: Option<String> = None;
        let mut types_raw: Option<String> = None;
        let mut last_raw: Option<String> = None;
        let mut projects: Option<BTreeSet<String>> = None;
        let mut sessions: Option<BTreeSet<String>> = None;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "after" => set_once(&mut after_raw, "after", value.into_owned())?,
                "types" => set_once(&mut types_raw, "types", value.into_owned())?,
                "last" => set_once(&mut last_raw, "last", value.into_owned())?,
                "project" => add_to(
                    &mut projects,
                    value.into_owned(),
                    "project",
                    MAX_PROJECTS,
                    ErrorCode::InvalidProject,
                )?,
                "session" => add_to(
                    &mut sessions,
                    value.into_owned(),
                    "session",
                    MAX_SESSIONS,
                    ErrorCode::InvalidSession,
                )?,
                other => {
                    return Err(RequestError::new(
                        ErrorCode::UnknownParameter,
                        format!("unknown query parameter {other:?} (known: {KNOWN})"),
                    ))
                }
            }
        }
        let after = match &after_raw {
            Some(raw) => Some(ids.read(raw).map_err(|why| {
                RequestError::new(ErrorCode::InvalidCursor, format!("after={raw:?}: {why}"))
            })?),
            None => None,
        };
        let types = types_raw.as_deref().map(parse_types).transpose()?;
        let last = last_raw.as_deref().map(parse_last).transpose()?;
        if after.is_some() && last.is_some() {
            return Err(RequestError::new(
                ErrorCode::ConflictingParameters,
                "after and last exclude each other (after resumes at a position, last starts \
                 from recent history)",
            ));
        }
        Ok(EventsQuery {
            after,
            after_raw,
            filter: Filter {
                projects,
                types,
                sessions,
            },
            last,
        })
    }

    /// The filter a token with `grant` gets for this request: a `project=` outside the grant
    /// is `forbidden` — checked before any existence check, so the answer is the same whether
    /// or not the project exists; without `project=` the scope is exactly the granted projects.
    pub fn authorize(&self, grant: &Grant) -> Result<Filter, RequestError> {
        let mut filter = self.filter.clone();
        match (grant, &self.filter.projects) {
            (Grant::All, _) => {}
            (Grant::Projects(granted), None) => filter.projects = Some(granted.clone()),
            (Grant::Projects(granted), Some(requested)) => {
                if let Some(outside) = requested.iter().find(|p| !granted.contains(*p)) {
                    return Err(RequestError::new(
                        ErrorCode::Forbidden,
                        format!("project {outside:?} is not granted to this token"),
                    ));
                }
            }
        }
        Ok(filter)
    }

    /// Where the stream starts, given the `Last-Event-ID` header, with plain cursors. The
    /// header wins over `after` and `last` (a browser reconnects to the same URL with the
    /// header set, so it is the fresher position); an empty header counts as absent; a
    /// malformed header is not an HTTP error (browsers never retry a non-200) but a start that
    /// the subscription answers with a reset.
    pub fn start(&self, last_event_id: Option<&str>) -> Start {
        self.start_with(last_event_id, &Ids::Plain)
    }

    /// [`EventsQuery::start`] reading the header with `ids` (a forged or altered sealed id is
    /// malformed: an `invalid_cursor` reset).
    pub fn start_with(&self, last_event_id: Option<&str>, ids: &Ids) -> Start {
        match last_event_id {
            Some(raw) if !raw.is_empty() => match ids.read(raw) {
                Ok(cursor) => Start::At {
                    cursor,
                    raw: raw.to_owned(),
                },
                Err(_) => Start::Invalid {
                    raw: raw.to_owned(),
                },
            },
            _ => match (self.after, &self.after_raw, self.last) {
                (Some(cursor), Some(raw), _) => Start::At {
                    cursor,
                    raw: raw.clone(),
                },
                (_, _, Some(count)) => Start::Last { count },
                _ => Start::Head,
            },
        }
    }
}

impl EventsQuery {
    /// [`EventsQuery::start`] for the header's raw bytes: a value that is not UTF-8 cannot be a
    /// cursor, so it is malformed (a reset), never a reason to ignore the header.
    pub fn start_from_header(&self, last_event_id: Option<&[u8]>) -> Start {
        self.start_from_header_with(last_event_id, &Ids::Plain)
    }

    /// [`EventsQuery::start_from_header`] reading the header with `ids`.
    pub fn start_from_header_with(&self, last_event_id: Option<&[u8]>, ids: &Ids) -> Start {
        match last_event_id {
            None => self.start_with(None, ids),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => self.start_with(Some(text), ids),
                Err(_) => Start::Invalid {
                    raw: String::from_utf8_lossy(bytes).into_owned(),
                },
            },
        }
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No cursor: at the head of the log.
    Head,
    /// Right after this cursor (`raw` is how the client spelled it).
    At {
        /// The parsed cursor.
        cursor: Cursor,
        /// The cursor as received.
        raw: String,
    },
    /// A malformed `Last-Event-ID` header: reset (`invalid_cursor`) to head.
    Invalid {
        /// The header as received.
        raw: String,
    },
    /// `last=<count>` without a cursor: right before the `count`-th newest matching event at
    /// or below head (all retained ones when fewer match), found by the store
    /// ([`crate::Output::Locate`]).
    Last {
        /// How many matching events to replay, `1..=MAX_LAST`.
        count: u32,
    },
}

fn set_once(slot: &mut Option<String>, name: &str, value: String) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(RequestError::new(
            ErrorCode::DuplicateParameter,
            format!("{name} may be given only once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn add_to(
    slot: &mut Option<BTreeSet<String>>,
    value: String,
    name: &str,
    max: usize,
    code: ErrorCode,
) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::new(code, format!("{name} must not be empty")));
    }
    let set = slot.get_or_insert_with(BTreeSet::new);
    set.insert(value);
    if set.len() > max {
        return Err(RequestError::new(
            code,
            format!("at most {max} {name} values are allowed"),
        ));
    }
    Ok(())
}

/// `1..=MAX_LAST`, canonical decimal (no sign, no leading zeros), like cursors.
fn parse_last(raw: &str) -> Result<u32, RequestError> {
    let invalid = || {
        RequestError::new(
            ErrorCode::InvalidLast,
            format!("last={raw:?}: must be a whole number from 1 to {MAX_LAST}"),
        )
    };
    let bytes = raw.as_bytes();
    if bytes.is_empty()
        || bytes.len() > 5
        || bytes[0] == b'0'
        || !bytes.iter().all(u8::is_ascii_digit)
    {
        return Err(invalid());
    }
    let count: u32 = raw.parse().map_err(|_| invalid())?;
    if count > MAX_LAST {
        return Err(invalid());
    }
    Ok(count)
}

fn parse_types(raw: &str) -> Result<Vec<TypePattern>, RequestError> {
    if raw.is_empty() {
        return Err(RequestError::new(
            ErrorCode::InvalidTypes,
            "types must not be empty (omit it for all kinds)",
        ));
    }
    let mut patterns = Vec::new();
    for part in raw.split(',') {
        let pattern = TypePattern::parse(part)
            .map_err(|why| RequestError::new(ErrorCode::InvalidTypes, why))?;
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
        if patterns.len() > MAX_TYPE_PATTERNS {
            return Err(RequestError::new(
                ErrorCode::InvalidTypes,
                format!("at most {MAX_TYPE_PATTERNS} type patterns are allowed"),
            ));
        }
    }
    Ok(patterns)
}

impl From<CursorError> for RequestError {
    fn from(why: CursorError) -> RequestError {
        RequestError::new(ErrorCode::InvalidCursor, why.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{Epoch, Seq};

    fn code(query: &str) -> ErrorCode {
        EventsQuery::parse(Some(query)).unwrap_err().code
    }

    #[test]
    fn parses_a_full_query() {
        let query = EventsQuery::parse(Some(
            "project=a&project=b%20c&types=pr_*,session_created&after=7",
        ))
        .unwrap();
        assert_eq!(query.after.map(|c| c.seq), Some(Seq(7)));
        assert_eq!(
            query.filter.projects,
            Some(["a".to_string(), "b c".to_string()].into())
        );
        assert_eq!(query.filter.types.as_ref().map(Vec::len), Some(2));
        assert_eq!(EventsQuery::parse(None).unwrap().filter, Filter::all());
    }

    #[test]
    fn rejects_with_the_documented_codes() {
        assert_eq!(code("projectId=a"), ErrorCode::UnknownParameter);
        assert_eq!(code("after=1&after=2"), ErrorCode::DuplicateParameter);
        assert_eq!(code("types=a&types=b"), ErrorCode::DuplicateParameter);
        assert_eq!(code("after=01"), ErrorCode::InvalidCursor);
        assert_eq!(code("after="), ErrorCode::InvalidCursor);
        assert_eq!(code("types="), ErrorCode::InvalidTypes);
        assert_eq!(code("types=a,,b"), ErrorCode::InvalidTypes);
        assert_eq!(code("types=pr_%25"), ErrorCode::InvalidTypes);
        assert_eq!(code("project="), ErrorCode::InvalidProject);
        let body = EventsQuery::parse(Some("x=1")).unwrap_err().to_json();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["error"]["code"], "unknown_parameter");
    }

    #[test]
    fn limits_allow_exactly_their_maximum() {
        let projects = |n: usize| {
            (0..n)
                .map(|i| format!("project=p{i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let query = EventsQuery::parse(Some(&projects(MAX_PROJECTS))).unwrap();
        assert_eq!(query.filter.projects.map(|p| p.len()), Some(MAX_PROJECTS));
        let error = EventsQuery::parse(Some(&projects(MAX_PROJECTS + 1))).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidProject);
        assert_eq!(error.message, "at most 256 project values are allowed");
        // A repeated value is one project.
        let repeated = format!("{}&project=p0&project=p0", projects(MAX_PROJECTS));
        assert!(EventsQuery::parse(Some(&repeated)).is_ok());

        let types = |n: usize| {
            let kinds: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            format!("types={}", kinds.join(","))
        };
        let query = EventsQuery::parse(Some(&types(MAX_TYPE_PATTERNS))).unwrap();
        assert_eq!(query.filter.types.map(|t| t.len()), Some(MAX_TYPE_PATTERNS));
        let error = EventsQuery::parse(Some(&types(MAX_TYPE_PATTERNS + 1))).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidTypes);
        assert_eq!(error.message, "at most 64 type patterns are allowed");
        let repeated = format!("{},k0,k1", types(MAX_TYPE_PATTERNS));
        let query = EventsQuery::parse(Some(&repeated)).unwrap();
        assert_eq!(
            query.filter.types.map(|t| t.len()),
            Some(MAX_TYPE_PATTERNS),
            "deduplicated"
        );
    }

    #[test]
    fn messages_name_the_problem() {
        let message = |query: &str| EventsQuery::parse(Some(query)).unwrap_err().message;
        assert_eq!(
            message("projectId=a"),
            "unknown query parameter \"projectId\" (known: after, last, project, session, types)"
        );
        assert_eq!(message("after=1&after=2"), "after may be given only once");
        assert_eq!(
            message("after=01"),
            "after=\"01\": cursor seq must be a decimal number without sign or leading zeros"
        );
        assert_eq!(message("project="), "project must not be empty");
        assert_eq!(
            message("types="),
            "types must not be empty (omit it for all kinds)"
        );
        let from_cursor = RequestError::from(CursorError::SeqTooLarge);
        assert_eq!(from_cursor.code, ErrorCode::InvalidCursor);
        assert_eq!(from_cursor.message, CursorError::SeqTooLarge.to_string());
    }

    #[test]
    fn header_wins_over_after_and_empty_header_is_absent() {
        let query = EventsQuery::parse(Some("after=5")).unwrap();
        let at = |seq| Start::At {
            cursor: Cursor::new(Epoch(1), Seq(seq)),
            raw: format!("{}:{seq}", Epoch(1)),
        };
        assert_eq!(query.start(Some("0000000000000001:9")), at(9));
        assert!(matches!(query.start(Some("")), Start::At { cursor, .. } if cursor.seq == Seq(5)));
        assert!(matches!(query.start(None), Start::At { cursor, .. } if cursor.seq == Seq(5)));
        assert_eq!(
            query.start(Some("garbage")),
            Start::Invalid {
                raw: "garbage".into()
            }
        );
        assert_eq!(EventsQuery::parse(None).unwrap().start(None), Start::Head);
        assert_eq!(
            query.start_from_header(Some(b"12\xff")),
            Start::Invalid {
                raw: "12\u{fffd}".into()
            }
        );
        assert_eq!(query.start_from_header(Some(b"0000000000000001:9")), at(9));
        assert_eq!(query.start_from_header(None), query.start(None));
    }

    #[test]
    fn sessions_last_and_their_errors() {
        let query = EventsQuery::parse(Some("session=s1&session=s%202&last=10000")).unwrap();
        assert_eq!(
            query.filter.sessions,
            Some(["s1".to_string(), "s 2".to_string()].into())
        );
        assert_eq!(query.last, Some(MAX_LAST));
        assert_eq!(query.start(None), Start::Last { count: MAX_LAST });
        assert_eq!(EventsQuery::parse(Some("last=1")).unwrap().last, Some(1));
        for bad in [
            "last=0",
            "last=",
            "last=10001",
            "last=099",
            "last=+5",
            "last=-1",
            "last=1e3",
            "last=99999",
            "last=123456",
            "last=%201",
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidLast, "{bad}");
        }
        assert_eq!(
            EventsQuery::parse(Some("last=0")).unwrap_err().message,
            "last=\"0\": must be a whole number from 1 to 10000"
        );
        assert_eq!(code("last=1&last=2"), ErrorCode::DuplicateParameter);
        assert_eq!(code("session="), ErrorCode::InvalidSession);
        assert_eq!(
            EventsQuery::parse(Some("session=")).unwrap_err().message,
            "session must not be empty"
        );
        let many: Vec<String> = (0..=MAX_SESSIONS)
            .map(|i| format!("session=s{i}"))
            .collect();
        let error = EventsQuery::parse(Some(&many.join("&"))).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidSession);
        assert_eq!(error.message, "at most 256 session values are allowed");
        assert!(EventsQuery::parse(Some(&many[..MAX_SESSIONS].join("&"))).is_ok());
        let error = EventsQuery::parse(Some("after=1&last=5")).unwrap_err();
        assert_eq!(error.code, ErrorCode::ConflictingParameters);
        assert_eq!(error.status(), 400);
        assert!(error
            .message
            .starts_with("after and last exclude each other"));
        // A bad value is named before the conflict.
        assert_eq!(code("after=x&last=5"), ErrorCode::InvalidCursor);
        assert_eq!(code("after=1&last=0"), ErrorCode::InvalidLast);
    }

    #[test]
    fn the_header_wins_over_last() {
        let query = EventsQuery::parse(Some("last=5")).unwrap();
        assert!(matches!(
            query.start(Some("0000000000000001:9")),
            Start::At { cursor, .. } if cursor.seq == Seq(9)
        ));
        assert_eq!(
            query.start(Some("bad")),
            Start::Invalid { raw: "bad".into() }
        );
        assert_eq!(query.start(Some("")), Start::Last { count: 5 });
        assert_eq!(query.start_from_header(None), Start::Last { count: 5 });
    }

    #[test]
    fn grants_narrow_or_forbid_the_request() {
        let grant = Grant::projects(["a", "b"]);
        let none = EventsQuery::parse(Some("types=pr_*")).unwrap();
        let filter = none.authorize(&grant).unwrap();
        assert_eq!(
            filter.projects,
            Some(["a".to_string(), "b".to_string()].into())
        );
        assert_eq!(filter.types, none.filter.types, "the rest is kept");
        let inside = EventsQuery::parse(Some("project=b&session=s")).unwrap();
        assert_eq!(inside.authorize(&grant), Ok(inside.filter.clone()));
        for outside in ["project=c", "project=a&project=zzz", "project=b&project=c"] {
            let error = EventsQuery::parse(Some(outside))
                .unwrap()
                .authorize(&grant)
                .unwrap_err();
            assert_eq!(error.code, ErrorCode::Forbidden, "{outside}");
            assert_eq!(error.status(), 403);
        }
        assert_eq!(
            EventsQuery::parse(Some("project=c"))
                .unwrap()
                .authorize(&grant)
                .unwrap_err()
                .message,
            "project \"c\" is not granted to this token"
        );
        let all = EventsQuery::parse(Some("project=c")).unwrap();
        assert_eq!(all.authorize(&Grant::All), Ok(all.filter.clone()));
        assert_eq!(none.authorize(&Grant::All), Ok(none.filter.clone()));
    }

    #[test]
    fn sealed_ids_are_read_as_sealed() {
        let key = crate::ids::IdKey::from_bytes([2; 32]);
        let ids = Ids::Sealed(key.clone());
        let id = key.seal(Epoch(1), Seq(7), 3);
        let query = EventsQuery::parse_with(Some(&format!("after={id}")), &ids).unwrap();
        assert_eq!(query.after, Some(Cursor::new(Epoch(1), Seq(7))));
        assert_eq!(query.after_raw.as_deref(), Some(id.as_str()));
        let error = EventsQuery::parse_with(Some("after=0000000000000001:7"), &ids).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidCursor);
        assert_eq!(
            error.message,
            "after=\"0000000000000001:7\": cursor is not an id this server issued"
        );
        assert!(EventsQuery::parse_with(Some("after=0"), &ids).is_ok());
        let plain = EventsQuery::parse(None).unwrap();
        assert_eq!(
            plain.start_with(Some(&id), &ids),
            Start::At {
                cursor: Cursor::new(Epoch(1), Seq(7)),
                raw: id.clone()
            }
        );
        assert_eq!(
            plain.start_with(Some("0000000000000001:7"), &ids),
            Start::Invalid {
                raw: "0000000000000001:7".into()
            }
        );
        assert_eq!(
            plain.start_from_header_with(Some(id.as_bytes()), &ids),
            plain.start_with(Some(&id), &ids)
        );
        assert_eq!(
            plain.start_from_header_with(Some(b"\xff"), &ids),
            Start::Invalid {
                raw: "\u{fffd}".into()
            }
        );
        assert_eq!(plain.start_from_header_with(None, &ids), Start::Head);
        // With plain ids a sealed id is just malformed.
        assert!(matches!(plain.start(Some(&id)), Start::Invalid { .. }));
    }
}
