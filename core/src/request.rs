//! The `GET /api/v1/events` request: query-string parsing, validation and where to start
//! (`PROTOCOL.md`, "Parameters" and "Where a stream starts").

use std::collections::BTreeSet;

use crate::filter::{Filter, TypePattern};
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
    /// The scope from `project` and `types`.
    pub filter: Filter,
}

/// The most `project` values one request may name.
pub const MAX_PROJECTS: usize = 256;
/// The most `types` patterns one request may name.
pub const MAX_TYPE_PATTERNS: usize = 64;

impl EventsQuery {
    /// Parses a raw (percent-encoded) query string. Unknown or repeated parameters are errors,
    /// never ignored: a typo such as `projectId=` must not silently widen the scope.
    pub fn parse(query: Option<&str>) -> Result<EventsQuery, RequestError> {
        let mut after_raw: Option<String> = None;
        let mut types_raw: Option<String> = None;
        let mut projects: Option<BTreeSet<String>> = None;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match name.as_ref() {
                "after" => set_once(&mut after_raw, "after", value.into_owned())?,
                "types" => set_once(&mut types_raw, "types", value.into_owned())?,
                "project" => {
                    if value.is_empty() {
                        return Err(RequestError::new(
                            ErrorCode::InvalidProject,
                            "project must not be empty",
                        ));
                    }
                    let set = projects.get_or_insert_with(BTreeSet::new);
                    set.insert(value.into_owned());
                    if set.len() > MAX_PROJECTS {
                        return Err(RequestError::new(
                            ErrorCode::InvalidProject,
                            format!("at most {MAX_PROJECTS} project values are allowed"),
                        ));
                    }
                }
                other => {
                    return Err(RequestError::new(
                        ErrorCode::UnknownParameter,
                        format!("unknown query parameter {other:?} (known: after, project, types)"),
                    ))
                }
            }
        }
        let after = match &after_raw {
            Some(raw) => Some(Cursor::parse(raw).map_err(|why| {
                RequestError::new(ErrorCode::InvalidCursor, format!("after={raw:?}: {why}"))
            })?),
            None => None,
        };
        let types = types_raw.as_deref().map(parse_types).transpose()?;
        Ok(EventsQuery {
            after,
            after_raw,
            filter: Filter { projects, types },
        })
    }

    /// Where the stream starts, given the `Last-Event-ID` header. The header wins over `after`
    /// (a browser reconnects to the same URL with the header set, so it is the fresher
    /// position); an empty header counts as absent; a malformed header is not an HTTP error
    /// (browsers never retry a non-200) but a start that the subscription answers with a reset.
    pub fn start(&self, last_event_id: Option<&str>) -> Start {
        match last_event_id {
            Some(raw) if !raw.is_empty() => match Cursor::parse(raw) {
                Ok(cursor) => Start::At {
                    cursor,
                    raw: raw.to_owned(),
                },
                Err(_) => Start::Invalid {
                    raw: raw.to_owned(),
                },
            },
            _ => match (self.after, &self.after_raw) {
                (Some(cursor), Some(raw)) => Start::At {
                    cursor,
                    raw: raw.clone(),
                },
                _ => Start::Head,
            },
        }
    }
}

impl EventsQuery {
    /// [`EventsQuery::start`] for the header's raw bytes: a value that is not UTF-8 cannot be a
    /// cursor, so it is malformed (a reset), never a reason to ignore the header.
    pub fn start_from_header(&self, last_event_id: Option<&[u8]>) -> Start {
        match last_event_id {
            None => self.start(None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => self.start(Some(text)),
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
            "unknown query parameter \"projectId\" (known: after, project, types)"
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
}
