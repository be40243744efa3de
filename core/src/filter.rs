//! Which events a subscriber is shown: a project set and kind patterns, with one [`Filter::matches`].

use std::collections::BTreeSet;
use std::fmt;

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

/// The subscriber's scope. `None` means "all" for either part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events of these projects; `None` for every project.
    pub projects: Option<BTreeSet<String>>,
    /// Only events whose kind matches one of these; `None` for every kind.
    pub types: Option<Vec<TypePattern>>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// The one rule deciding whether a subscriber is shown an event.
    pub fn matches(&self, project_id: &str, kind: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|projects| projects.contains(project_id))
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|pattern| pattern.matches(kind)))
    }

    /// Whether the kind part matches everything (no `types`, or a `*` among them).
    pub fn all_types(&self) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&TypePattern::Any))
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
            projects: None,
            types,
        };
        assert!(with(None).all_types());
        assert!(with(Some(vec![TypePattern::Exact("a".into()), TypePattern::Any])).all_types());
        assert!(!with(Some(vec![TypePattern::Prefix("a".into())])).all_types());
        assert!(!with(Some(Vec::new())).all_types());
    }

    #[test]
    fn underscore_is_literal_unlike_like() {
        let filter = Filter {
            projects: None,
            types: Some(vec![TypePattern::parse("pr_*").unwrap()]),
        };
        assert!(filter.matches("p", "pr_updated"));
        assert!(!filter.matches("p", "project_created"));
    }

    #[test]
    fn projects_and_types_both_apply() {
        let filter = Filter {
            projects: Some(["a".to_string()].into()),
            types: Some(vec![TypePattern::Exact("x".into())]),
        };
        assert!(filter.matches("a", "x"));
        assert!(!filter.matches("b", "x"));
        assert!(!filter.matches("a", "y"));
        assert!(Filter::all().matches("anything", "at_all"));
    }
}
