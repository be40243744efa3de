//! Which events a subscriber is shown: a project set, a session set and kind patterns, with one
//! rule ([`Filter::matches_event`]); and what a token may read at all ([`Grant`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::event::EventRow;

/// A kind pattern from `types=`: an exact kind, a `prefix*`, or `*` alone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypePattern {
    /// Every kind.
    Any,
    /// Exactly this kind.
    Exact(String),
    /// Every kind starting with this prefix (possibly empty is excluded: that is `Any`).
    Prefix(String),
}

impl TypePattern {
    /// Parses one pattern: `[a-z][a-z0-9_]*`, optionally followed by `*`, or `*` alone.
    pub fn parse(text: &str) -> Result<TypePattern, String> {
        if text == "*" {
            return Ok(TypePattern::Any);
        }
        let (stem, prefix) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if !is_kind(stem) {
            return Err(format!(
                "type pattern {text:?} must be a kind ([a-z][a-z0-9_]*), a prefix ending in '*', or '*'"
            ));
        }
        Ok(if prefix {
            TypePattern::Prefix(stem.to_owned())
        } else {
            TypePattern::Exact(stem.to_owned())
        })
    }

    /// Whether `kind` matches.
    pub fn matches(&self, kind: &str) -> bool {
        match self {
            TypePattern::Any => true,
            TypePattern::Exact(exact) => kind == exact,
            TypePattern::Prefix(prefix) => kind.starts_with(prefix.as_str()),
        }
    }

    /// The SQL `GLOB` pattern equivalent to this pattern. Patterns hold only `[a-z0-9_]`, none
    /// of which is a GLOB metacharacter, so no escaping is needed (unlike `LIKE`, where `_` is).
    pub fn glob(&self) -> String {
        match self {
            TypePattern::Any => "*".to_owned(),
            TypePattern::Exact(exact) => exact.clone(),
            TypePattern::Prefix(prefix) => format!("{prefix}*"),
        }
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.glob())
    }
}

/// Whether `text` is a valid event kind: `[a-z][a-z0-9_]*`.
pub fn is_kind(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// The subscriber's scope. `None` means "all" for any part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events of these projects; `None` for every project.
    pub projects: Option<BTreeSet<String>>,
    /// Only events whose kind matches one of these; `None` for every kind.
    pub types: Option<Vec<TypePattern>>,
    /// Only events of these sessions (`session=`); `None` for events of any session or none.
    /// An event without a session (absent or empty) never matches a session set.
    pub sessions: Option<BTreeSet<String>>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// The project and kind parts of the rule only (`sessions` is not looked at): for stores
    /// pushing a filter down coarsely. The subscription decides with
    /// [`Filter::matches_event`].
    pub fn matches(&self, project_id: &str, kind: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|projects| projects.contains(project_id))
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|pattern| pattern.matches(kind)))
    }

    /// The one rule deciding whether a subscriber is shown an event: its project, session and
    /// kind all match (`session_id` as stored; `Some("")` counts as none).
    pub fn matches_event(&self, project_id: &str, session_id: Option<&str>, kind: &str) -> bool {
        self.matches(project_id, kind)
            && self.sessions.as_ref().is_none_or(|sessions| {
                session_id.is_some_and(|id| !id.is_empty() && sessions.contains(id))
            })
    }

    /// [`Filter::matches_event`] for a stored row.
    pub fn matches_row(&self, row: &EventRow) -> bool {
        self.matches_event(&row.project_id, row.session_id.as_deref(), &row.kind)
    }

    /// Whether the kind part matches everything (no `types`, or a `*` among them).
    pub fn all_types(&self) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&TypePattern::Any))
    }
}

/// What a token may read: every project, or a set of them. With auth on, the shell resolves
/// the request's token to a grant and the core applies it twice: to the request
/// ([`crate::EventsQuery::authorize`]: a `project=` outside it is `forbidden`, no `project=`
/// means exactly the granted ones) and to every replayed and live event of the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every project (`TOKEN *`).
    All,
    /// Only these projects.
    Projects(BTreeSet<String>),
}

impl Grant {
    /// A grant of these projects.
    pub fn projects<I, S>(projects: I) -> Grant
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Grant::Projects(projects.into_iter().map(Into::into).collect())
    }

    /// Whether events of `project_id` may be read.
    pub fn allows(&self, project_id: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Projects(projects) => projects.contains(project_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_strictly() {
        assert_eq!(TypePattern::parse("*"), Ok(TypePattern::Any));
        assert_eq!(
            TypePattern::parse("pr_*"),
            Ok(TypePattern::Prefix("pr_".into()))
        );
        assert_eq!(
            TypePattern::parse("pr_updated"),
            Ok(TypePattern::Exact("pr_updated".into()))
        );
        for bad in ["", "**", "pr*x", "Pr", "1pr", "pr-x", "pr%", "*pr", "pr_?"] {
            assert!(TypePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn glob_and_display_spell_the_pattern_for_sql() {
        for (text, pattern) in [
            ("*", TypePattern::Any),
            ("pr_*", TypePattern::Prefix("pr_".into())),
            ("pr_updated", TypePattern::Exact("pr_updated".into())),
        ] {
            assert_eq!(TypePattern::parse(text), Ok(pattern.clone()));
            assert_eq!(pattern.glob(), text);
            assert_eq!(pattern.to_string(), text);
        }
    }

    #[test]
    fn all_types_only_without_types_or_with_a_star() {
        let with = |types: Option<Vec<TypePattern>>| Filter {
            types,
            ..Filter::all()
        };
        assert!(with(None).all_types());
        assert!(with(Some(vec![TypePattern::Exact("a".into()), TypePattern::Any])).all_types());
        assert!(!with(Some(vec![TypePattern::Prefix("a".into())])).all_types());
        assert!(!with(Some(Vec::new())).all_types());
    }

    #[test]
    fn underscore_is_literal_unlike_like() {
        let filter = Filter {
            types: Some(vec![TypePattern::parse("pr_*").unwrap()]),
            ..Filter::all()
        };
        assert!(filter.matches("p", "pr_updated"));
        assert!(!filter.matches("p", "project_created"));
    }

    #[test]
    fn projects_and_types_both_apply() {
        let filter = Filter {
            projects: Some(["a".to_string()].into()),
            types: Some(vec![TypePattern::Exact("x".into())]),
            sessions: None,
        };
        assert!(filter.matches("a", "x"));
        assert!(!filter.matches("b", "x"));
        assert!(!filter.matches("a", "y"));
        assert!(Filter::all().matches("anything", "at_all"));
        assert!(filter.matches_event("a", None, "x"));
        assert!(!filter.matches_event("b", Some("s"), "x"));
        assert!(!filter.matches_event("a", Some("s"), "y"));
    }

    #[test]
    fn sessions_match_only_events_of_those_sessions() {
        let filter = Filter {
            sessions: Some(["s1".to_string(), "s2".to_string()].into()),
            ..Filter::all()
        };
        assert!(filter.matches_event("p", Some("s1"), "k"));
        assert!(filter.matches_event("p", Some("s2"), "k"));
        assert!(!filter.matches_event("p", Some("s3"), "k"));
        assert!(!filter.matches_event("p", None, "k"), "no session");
        assert!(!filter.matches_event("p", Some(""), "k"), "empty is none");
        assert!(filter.matches("p", "k"), "matches ignores sessions");
        let empty_session = Filter {
            sessions: Some([String::new()].into()),
            ..Filter::all()
        };
        assert!(!empty_session.matches_event("p", Some(""), "k"));
        assert!(Filter::all().matches_event("p", None, "k"));
        assert!(Filter::all().matches_event("p", Some(""), "k"));
        let row = EventRow {
            seq: crate::Seq(1),
            project_id: "p".into(),
            session_id: Some("s2".into()),
            kind: "k".into(),
            payload: "{}".into(),
            payload_check: crate::PayloadCheck::Valid,
            created_at: String::new(),
        };
        assert!(filter.matches_row(&row));
        let other = EventRow {
            session_id: None,
            ..row
        };
        assert!(!filter.matches_row(&other));
    }

    #[test]
    fn grants_allow_their_projects() {
        let grant = Grant::projects(["a", "b"]);
        assert!(grant.allows("a") && grant.allows("b"));
        assert!(!grant.allows("c"));
        assert!(!grant.allows(""));
        assert!(Grant::All.allows("anything"));
        assert!(!Grant::projects(Vec::<String>::new()).allows("a"));
    }
}
