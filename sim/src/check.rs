//! The per-client invariant, checked as each frame arrives and again at the end.
//!
//! The oracle is every row ever appended (seq → project, kind), recorded by the writers at the
//! moment of the append, so it still knows rows that retention has since pruned. A client's
//! position is the seq of its last event id. On every change frame at seq `q`:
//! - the event matches the client's filter (no leak), and is the logged row of that seq;
//! - `q` is above the position (no duplicate, no reordering);
//! - no row the filter matches lies strictly between the position and `q` (no loss).
//!
//! On every other position move to `x` (first frame, checkpoint, ready): `x` is not below the
//! position, and no matching row lies in `(position, x]`. A `changefeed.reset` starts a new
//! segment at its `after`; it is legitimate only as `pruned` and only when the retention floor
//! has passed the position. At the end, a client that stayed must have reached the final head.
//!
//! Which rows a client wants is decided by [`Interest::wants`], the simulation's own matcher,
//! written from the contract's filter rules (projects; kinds `kind`, `prefix*`, `*`), never the
//! core's `Filter`, so a bug there cannot hide itself here. With auth on, a client's token
//! grants it some projects: a change outside the grant is a `GRANT LEAK` (checked first, also
//! against the sim's own list, never the core's `Grant`), and only granted rows count as lost.
//! Ids are then sealed: [`SimIds`] opens them with the simulation's own implementation of the
//! format in `PROTOCOL.md`, and the event JSON must carry no `seq`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aes_siv::siv::Aes128Siv;
use aes_siv::KeyInit;
use base64ct::{Base64UrlUnpadded, Encoding};
use changefeed_core::{Cursor, Epoch};

/// How the simulated server spells ids, as the simulation itself reads and writes them: plain
/// cursors, or (auth on) sealed ids under a key — AES-SIV of `epoch ‖ seq ‖ tweak`, big-endian,
/// associated data `changefeed sealed id v1`, unpadded base64url (`PROTOCOL.md`, "Sealed ids").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimIds {
    /// `<epoch>:<seq>`.
    Plain,
    /// Sealed under this key.
    Sealed([u8; 32]),
}

const SEALED_AD: &[u8] = b"changefeed sealed id v1";

impl SimIds {
    /// The id a server would write for `(epoch, seq)` in an event's own frame (tweak 0).
    pub fn make(&self, epoch: Epoch, seq: u64) -> String {
        match self {
            SimIds::Plain => format!("{epoch}:{seq}"),
            SimIds::Sealed(key) => {
                let mut plain = Vec::with_capacity(24);
                for word in [epoch.0, seq, 0] {
                    plain.extend_from_slice(&word.to_be_bytes());
                }
                let sealed = Aes128Siv::new(key.into())
                    .encrypt([SEALED_AD], &plain)
                    .expect("AES-SIV seals 24 bytes");
                Base64UrlUnpadded::encode_string(&sealed)
            }
        }
    }

    /// `(epoch, seq)` of an id the server wrote, or `None` when it is not one.
    pub fn read(&self, id: &str) -> Option<(Option<Epoch>, u64)> {
        match self {
            SimIds::Plain => Cursor::parse(id).ok().map(|c| (c.epoch, c.seq.0)),
            SimIds::Sealed(key) => {
                let bytes = Base64UrlUnpadded::decode_vec(id).ok()?;
                let plain = Aes128Siv::new(key.into())
                    .decrypt([SEALED_AD], &bytes)
                    .ok()?;
                let word = |i: usize| u64::from_be_bytes(plain[i..i + 8].try_into().unwrap());
                (plain.len() == 24).then(|| (Some(Epoch(word(0))), word(8)))
            }
        }
    }
}

/// What a client asked for: `project=` values and `types=` patterns, as the simulation wrote
/// them into its query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    /// The projects asked for (`None`: every project).
    pub projects: Option<Vec<String>>,
    /// The kind patterns asked for (`None`: every kind).
    pub types: Option<Vec<String>>,
}

impl Interest {
    /// Whether a row of `project` and `kind` is one the client asked for.
    pub fn wants(&self, project: &str, kind: &str) -> bool {
        let project_ok = self
            .projects
            .as_ref()
            .is_none_or(|projects| projects.iter().any(|wanted| wanted == project));
        let kind_ok = self.types.as_ref().is_none_or(|patterns| {
            patterns
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => kind.starts_with(prefix),
                    None => pattern == kind,
                })
        });
        project_ok && kind_ok
    }

    /// The query string asking for exactly this (without `?`; empty for everything).
    pub fn query(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for project in self.projects.iter().flatten() {
            parts.push(format!("project={project}"));
        }
        if let Some(types) = &self.types {
            parts.push(format!("types={}", types.join(",")));
        }
        parts.join("&")
    }
}

impl fmt::Display for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.query().as_str() {
            "" => f.write_str("everything"),
            query => f.write_str(query),
        }
    }
}

/// Every row ever appended, and the retention floor, shared by writers and checkers.
#[derive(Debug, Default)]
pub struct Oracle {
    /// seq → (project, kind).
    pub rows: BTreeMap<u64, (String, String)>,
    /// The highest seq retention has deleted up to.
    pub floor: u64,
}

/// A shared handle to the [`Oracle`].
pub type SharedOracle = Arc<Mutex<Oracle>>;

/// Locks a mutex, ignoring poisoning (a panic already fails the run).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client's checker.
#[derive(Debug)]
pub struct Checker {
    name: String,
    interest: Interest,
    /// The projects the client's token grants (`None`: every project, or auth off).
    grant: Option<Vec<String>>,
    ids: SimIds,
    epoch: Epoch,
    oracle: SharedOracle,
    /// The position: `None` until a cursor-less client's first frame.
    position: Option<u64>,
    /// Change frames received.
    pub changes: u64,
    /// Resets received.
    pub resets: u64,
    /// Connections opened.
    pub connects: u64,
    /// The first violation, if any.
    pub violation: Option<String>,
}

impl Checker {
    /// A checker for a client asking for `interest`, starting after `start` (`None`: at head,
    /// i.e. at the id of its first frame).
    pub fn new(
        name: &str,
        interest: Interest,
        epoch: Epoch,
        start: Option<u64>,
        oracle: SharedOracle,
    ) -> Checker {
        Checker::with_grant(name, interest, None, SimIds::Plain, epoch, start, oracle)
    }

    /// [`Checker::new`] for a client whose token grants `grant` (`None`: every project), on a
    /// server spelling ids as `ids`.
    pub fn with_grant(
        name: &str,
        interest: Interest,
        grant: Option<Vec<String>>,
        ids: SimIds,
        epoch: Epoch,
        start: Option<u64>,
        oracle: SharedOracle,
    ) -> Checker {
        Checker {
            name: name.to_owned(),
            interest,
            grant,
            ids,
            epoch,
            oracle,
            position: start,
            changes: 0,
            resets: 0,
            connects: 0,
            violation: None,
        }
    }

    /// Sets the starting position (before the first frame).
    pub fn set_start(&mut self, start: Option<u64>) {
        self.position = start;
    }

    /// The current position.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("{}: {what}", self.name));
        }
    }

    /// Whether the client's token grants `project`.
    fn granted(&self, project: &str) -> bool {
        self.grant
            .as_ref()
            .is_none_or(|grant| grant.iter().any(|granted| granted == project))
    }

    fn parse_id(&mut self, id: &str) -> Option<u64> {
        match self.ids.read(id) {
            Some((Some(epoch), seq)) if epoch == self.epoch => Some(seq),
            _ => {
                self.fail(format!("id {id:?} is not a cursor of epoch {}", self.epoch));
                None
            }
        }
    }

    /// The matching rows in `(after, upto)` (or `(after, upto]` when `inclusive`).
    fn matching_between(&self, after: u64, upto: u64, inclusive: bool) -> Vec<u64> {
        let oracle = lock(&self.oracle);
        let end = if inclusive {
            upto.saturating_add(1)
        } else {
            upto
        };
        if end <= after + 1 {
            return Vec::new();
        }
        oracle
            .rows
            .range(after + 1..end)
            .filter(|(_, (project, kind))| {
                self.granted(project) && self.interest.wants(project, kind)
            })
            .map(|(seq, _)| *seq)
            .take(5)
            .collect()
    }

    /// A connection was accepted.
    pub fn on_connected(&mut self) {
        self.connects += 1;
    }

    /// The client's position moved to `id` by a frame that was not a change or reset.
    pub fn on_position(&mut self, id: &str) {
        let Some(x) = self.parse_id(id) else { return };
        let Some(pos) = self.position else {
            self.position = Some(x);
            return;
        };
        if x < pos {
            self.fail(format!("position moved back from {pos} to {x}"));
            return;
        }
        let lost = self.matching_between(pos, x, true);
        if !lost.is_empty() {
            self.fail(format!(
                "LOSS: position moved from {pos} to {x} past matching events {lost:?}"
            ));
        }
        self.position = Some(x);
    }

    /// A change frame: its id and event JSON.
    pub fn on_change(&mut self, id: &str, kind: &str, data: &str) {
        self.changes += 1;
        let Some(q) = self.parse_id(id) else { return };
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(data);
        let (seq, project, json_kind) = match &parsed {
            Ok(value) => (
                value["seq"].as_u64(),
                value["projectId"].as_str().unwrap_or("").to_owned(),
                value["type"].as_str().unwrap_or("").to_owned(),
            ),
            Err(_) => (None, String::new(), String::new()),
        };
        // With sealed ids the event JSON has no `seq` (it is what the id hides).
        let expected_seq = match self.ids {
            SimIds::Plain => Some(q),
            SimIds::Sealed(_) => None,
        };
        if seq != expected_seq || json_kind != kind {
            self.fail(format!(
                "frame id {id} / event {kind} disagrees with data {data}"
            ));
            return;
        }
        let logged = lock(&self.oracle).rows.get(&q).cloned();
        if logged.as_ref() != Some(&(project.clone(), json_kind.clone())) {
            self.fail(format!(
                "PHANTOM: seq {q} ({project}, {json_kind}) is not the logged row {logged:?}"
            ));
            return;
        }
        if !self.granted(&project) {
            self.fail(format!(
                "GRANT LEAK: seq {q} ({project}, {json_kind}) is outside the token's grant {:?}",
                self.grant
            ));
            return;
        }
        if !self.interest.wants(&project, &json_kind) {
            self.fail(format!(
                "LEAK: seq {q} ({project}, {json_kind}) is outside what the client asked for ({})",
                self.interest
            ));
            return;
        }
        let Some(pos) = self.position else {
            self.fail(format!("change {q} before any position"));
            return;
        };
        if q <= pos {
            self.fail(format!(
                "DUPLICATE or REORDER: change {q} at position {pos}"
            ));
            return;
        }
        let lost = self.matching_between(pos, q, false);
        if !lost.is_empty() {
            self.fail(format!(
                "LOSS: change {q} at position {pos} skipped matching events {lost:?}"
            ));
        }
        self.position = Some(q);
    }

    /// A `changefeed.reset` frame.
    /// `id` is the frame's id, `after` and `reason` what its data says.
    pub fn on_reset(&mut self, id: &str, after: &str, reason: &str) {
        self.resets += 1;
        let Some(new_position) = self.parse_id(id) else {
            return;
        };
        let floor = lock(&self.oracle).floor;
        match self.position {
            Some(pos) if reason == "pruned" && floor > pos => {}
            pos => self.fail(format!(
                "unjustified reset (reason {reason:?}) at position {pos:?}, floor {floor}"
            )),
        }
        if after != id {
            self.fail(format!(
                "reset id {id} disagrees with its data (after {after})"
            ));
        }
        self.position = Some(new_position);
    }

    /// The end of the run for a client that stayed: it must have caught up with `head`.
    pub fn finish(&mut self, head: u64) {
        match self.position {
            Some(pos) if pos >= head => {}
            pos => self.fail(format!("did not catch up: position {pos:?}, head {head}")),
        }
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let _ = write!(
            text,
            "{} pos={:?} changes={} resets={} connects={}",
            self.name, self.position, self.changes, self.resets, self.connects
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(projects: Option<&[&str]>, types: Option<&[&str]>) -> Interest {
        let owned = |items: &[&str]| items.iter().map(|item| item.to_string()).collect();
        Interest {
            projects: projects.map(owned),
            types: types.map(owned),
        }
    }

    #[test]
    fn the_matcher_follows_the_contract_rules() {
        let everything = interest(None, None);
        assert!(everything.wants("p0", "pr_updated"));
        assert_eq!(everything.query(), "");
        let prs = interest(Some(&["p0", "p2"]), Some(&["pr_*", "session_created"]));
        assert!(prs.wants("p0", "pr_updated"));
        assert!(prs.wants("p2", "session_created"));
        assert!(!prs.wants("p1", "pr_updated"), "another project");
        assert!(
            !prs.wants("p0", "project_created"),
            "`_` is literal in pr_*"
        );
        assert!(!prs.wants("p0", "session_updated"), "exact kinds are exact");
        assert_eq!(
            prs.query(),
            "project=p0&project=p2&types=pr_*,session_created"
        );
        assert!(interest(None, Some(&["*"])).wants("p1", "anything"));
    }

    #[test]
    fn sealed_ids_round_trip_and_foreign_ones_do_not_open() {
        let epoch = Epoch(0xe1);
        let ids = SimIds::Sealed([3; 32]);
        let id = ids.make(epoch, 42);
        assert_eq!(id.len(), 54);
        assert_eq!(ids.read(&id), Some((Some(epoch), 42)));
        assert_eq!(SimIds::Sealed([4; 32]).read(&id), None);
        assert_eq!(ids.read("00000000000000e1:42"), None);
        assert_eq!(SimIds::Plain.make(epoch, 7), "00000000000000e1:7");
        assert_eq!(
            SimIds::Plain.read("00000000000000e1:7"),
            Some((Some(epoch), 7))
        );
    }

    #[test]
    fn a_change_outside_the_grant_is_a_grant_leak() {
        let oracle: SharedOracle = Arc::default();
        lock(&oracle)
            .rows
            .insert(1, ("p1".into(), "pr_updated".into()));
        lock(&oracle)
            .rows
            .insert(2, ("p0".into(), "pr_updated".into()));
        let ids = SimIds::Sealed([9; 32]);
        let epoch = Epoch(5);
        let mut checker = Checker::with_grant(
            "c0",
            interest(None, None),
            Some(vec!["p0".into()]),
            ids,
            epoch,
            Some(0),
            oracle,
        );
        // Row 1 is outside the grant: moving past it is no loss.
        checker.on_change(
            &ids.make(epoch, 2),
            "pr_updated",
            r#"{"projectId":"p0","type":"pr_updated"}"#,
        );
        assert_eq!(checker.violation, None);
        let mut leaky = Checker::with_grant(
            "c1",
            interest(None, None),
            Some(vec!["p0".into()]),
            ids,
            epoch,
            Some(0),
            checker.oracle.clone(),
        );
        leaky.on_change(
            &ids.make(epoch, 1),
            "pr_updated",
            r#"{"projectId":"p1","type":"pr_updated"}"#,
        );
        let violation = leaky.violation.unwrap();
        assert!(violation.contains("GRANT LEAK"), "{violation}");
    }
}
