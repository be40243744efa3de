//! How `tail` prints one event: the JSON as received, or a line for people.

use std::fmt::Write as _;
use std::str::FromStr;

use crate::ChangeEvent;

/// How `tail` prints events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TailFormat {
    /// The event JSON as received, one line per event.
    #[default]
    Json,
    /// A readable line per event: time, project, session, kind, seq, a short payload.
    Pretty,
}

impl TailFormat {
    /// Every format, as spelled on the command line.
    pub const NAMES: [&'static str; 2] = ["json", "pretty"];
}

impl FromStr for TailFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<TailFormat, String> {
        match text {
            "json" => Ok(TailFormat::Json),
            "pretty" => Ok(TailFormat::Pretty),
            other => Err(format!(
                "unknown format {other:?} (expected json or pretty)"
            )),
        }
    }
}

/// The longest payload a pretty line shows, in characters (then `…`).
const PAYLOAD_CHARS: usize = 96;

/// ANSI styles of the pretty format.
const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const BLUE: &str = "\x1b[34m";
const BOLD_GREEN: &str = "\x1b[1;32m";
const BOLD_YELLOW: &str = "\x1b[1;33m";
const BOLD_RED: &str = "\x1b[1;31m";
const BOLD_MAGENTA: &str = "\x1b[1;35m";
const RESET: &str = "\x1b[0m";

/// The line printed for `event` (without its newline).
pub(super) fn line(event: &ChangeEvent, format: TailFormat, color: bool) -> String {
    match format {
        TailFormat::Json => one_line(&event.data),
        TailFormat::Pretty => pretty(event, color),
    }
}

/// Line breaks in the data (never in server JSON, possible from another server) become spaces,
/// so one event is always one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// `2026-11-26 21:13:07.123Z  project  session  kind  #seq  payload`.
fn pretty(event: &ChangeEvent, color: bool) -> String {
    let paint = |style: &str, text: &str| {
        if color {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let time = event
        .created_at
        .as_deref()
        .map_or_else(|| "-".to_owned(), |at| at.replacen('T', " ", 1));
    let kind_style = if event.kind.ends_with("_created") {
        BOLD_GREEN
    } else if event.kind.ends_with("_deleted") {
        BOLD_RED
    } else if event.kind.ends_with("_updated") {
        BOLD_YELLOW
    } else {
        BOLD_MAGENTA
    };
    let position = match event.seq {
        Some(seq) => format!("#{seq}"),
        None => format!("id={}", event.id),
    };
    let mut line = String::new();
    let _ = write!(
        line,
        "{}  {}  {}  {}  {}",
        paint(DIM, &time),
        paint(CYAN, event.project_id.as_deref().unwrap_or("-")),
        paint(BLUE, event.session_id.as_deref().unwrap_or("-")),
        paint(kind_style, &event.kind),
        paint(DIM, &position),
    );
    let payload = event
        .json()
        .ok()
        .and_then(|json| json.get("payload").map(|payload| payload.to_string()))
        .unwrap_or_else(|| one_line(&event.data));
    line.push_str("  ");
    line.push_str(&shorten(&payload, PAYLOAD_CHARS));
    line
}

/// `text` cut to `max` characters, `…` marking the cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => {
            let mut short = text[..at].to_owned();
            short.push('…');
            short
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> ChangeEvent {
        let data = format!(
            r#"{{"seq":42,"projectId":"p1","sessionId":"s1","type":"pr_updated","payload":{payload},"createdAt":"2026-11-26T21:13:07.123Z"}}"#
        );
        ChangeEvent {
            id: "00000000000000ab:42".into(),
            kind: "pr_updated".into(),
            data,
            seq: Some(42),
            project_id: Some("p1".into()),
            session_id: Some("s1".into()),
            created_at: Some("2026-11-26T21:13:07.123Z".into()),
        }
    }

    #[test]
    fn pretty_lines_without_and_with_colour() {
        let event = event(r#"{"url":"u"}"#);
        assert_eq!(
            line(&event, TailFormat::Pretty, false),
            r#"2026-11-26 21:13:07.123Z  p1  s1  pr_updated  #42  {"url":"u"}"#
        );
        let coloured = line(&event, TailFormat::Pretty, true);
        assert!(
            coloured.contains("\x1b[1;33mpr_updated\x1b[0m"),
            "{coloured:?}"
        );
        assert!(coloured.contains("\x1b[36mp1\x1b[0m"), "{coloured:?}");
        // The JSON format never colours and is the data as received.
        assert_eq!(line(&event, TailFormat::Json, true), event.data);
    }

    #[test]
    fn long_payloads_are_shortened_on_a_char_boundary() {
        let long = format!(r#"{{"title":"{}"}}"#, "é".repeat(200));
        let text = line(&event(&long), TailFormat::Pretty, false);
        let payload = text.rsplit("  ").next().unwrap();
        assert_eq!(payload.chars().count(), PAYLOAD_CHARS + 1);
        assert!(payload.ends_with('…'));
    }

    #[test]
    fn frames_without_the_event_json_still_print() {
        let event = ChangeEvent {
            id: "7".into(),
            kind: "message".into(),
            data: "not\njson".into(),
            seq: None,
            project_id: None,
            session_id: None,
            created_at: None,
        };
        assert_eq!(
            line(&event, TailFormat::Pretty, false),
            "-  -  -  message  id=7  not json"
        );
        assert_eq!(line(&event, TailFormat::Json, false), "not json");
    }

    #[test]
    fn formats_parse_by_name() {
        for name in TailFormat::NAMES {
            assert!(name.parse::<TailFormat>().is_ok());
        }
        assert!("xml".parse::<TailFormat>().is_err());
    }
}
