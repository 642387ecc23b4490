//! Notifications: which results a notifier speaks of, and the ids that make
//! each one a job of its own, claimed once among the nodes that have the
//! notifier and settled by a signed `Notice` record.
//!
//! A notifier is known by its name, the same on every node that has it;
//! such a node carries the label `notifier=<name>`, so the claim ranks only
//! those nodes. Every one of them derives the same notice job from the same
//! result: its id is the notifier's name and the result's record id.

use serde::{Deserialize, Serialize};

use crate::blame::blame;
use crate::ids::Hash32;
use crate::recipe::{job_id, JobSpec};
use crate::record::{is_try_branch, BuildResult, Status};
use crate::store::Store;
use crate::Millis;

/// Only results this recent are notified: a node catching up on a year of
/// history, or restarting, speaks of nothing old.
pub const NOTICE_FRESH_MS: Millis = 60 * 60 * 1000;
/// Notices a node sends at once, apart from its executors: a node busy
/// building still notifies.
pub const NOTICE_SLOTS: u32 = 4;
/// Longest notifier name.
pub const MAX_NAME: usize = 64;
/// Longest error kept in a notice record.
pub const MAX_ERROR: usize = 1000;

/// What a result is, as a notifier's `on` list names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeEvent {
    /// It failed where the previous result of its builder (by commit
    /// ancestry) passed, or there was none.
    Failure,
    /// It passed where the previous one failed.
    Fixed,
    /// It has warnings where the previous one had none.
    Warnings,
    /// Any result.
    Every,
}

impl NoticeEvent {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoticeEvent::Failure => "failure",
            NoticeEvent::Fixed => "fixed",
            NoticeEvent::Warnings => "warnings",
            NoticeEvent::Every => "every",
        }
    }
    pub fn parse(s: &str) -> Option<NoticeEvent> {
        Some(match s {
            "failure" => NoticeEvent::Failure,
            "fixed" => NoticeEvent::Fixed,
            "warnings" => NoticeEvent::Warnings,
            "every" => NoticeEvent::Every,
            _ => return None,
        })
    }
}

/// What the core needs of a notifier: its name and the events it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifierSpec {
    pub name: String,
    pub on: Vec<NoticeEvent>,
    /// A failure whose range is being bisected waits this long at most for
    /// the first failing commit before it is sent without it.
    pub bisect_wait_ms: Millis,
}

/// How long a failure's notice waits for its bisection by default.
pub const BISECT_WAIT_MS: Millis = 30 * 60 * 1000;

/// A name that fits a label value and a job's builder name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("notifier name {name:?} must be 1 to {MAX_NAME} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("notifier name {name:?} may hold only A-Z, a-z, 0-9, '.', '_' and '-'"));
    }
    Ok(())
}

/// The label a node with this notifier carries.
pub fn notifier_label(name: &str) -> String {
    format!("notifier={name}")
}

/// The builder name a notice job shows in job lists.
pub fn notice_builder(name: &str) -> String {
    format!("notify:{name}")
}

/// One notice per notifier and result, whichever event it is.
pub fn notice_job_id(notifier: &str, result: &Hash32) -> Hash32 {
    Hash32::of_fields("peerbot.notice.v1", &[notifier.as_bytes(), &result.0])
}

/// The notice job's spec: no steps; only nodes with the notifier match it.
pub fn notice_spec(notifier: &str, result: &Hash32) -> JobSpec {
    JobSpec {
        id: notice_job_id(notifier, result),
        builder: notice_builder(notifier),
        requires: vec![notifier_label(notifier)],
        steps: vec![],
        recipe_hash: Hash32::of_fields("peerbot.notice.spec.v1", &[notifier.as_bytes()]),
        tree_stable_secs: 0,
        collapse: false,
        priority: 0,
        submodules: false,
        schedule: None,
        depends_on: vec![],
        bisect: false,
    }
}

fn failed(s: Status) -> bool {
    matches!(s, Status::Failure | Status::Exception)
}

fn passed(s: Status) -> bool {
    matches!(s, Status::Success | Status::Warnings)
}

/// The event a result is for a notifier that wants `on`, if any: a
/// transition (failure, fixed, warnings) before `every`. Try builds are
/// never notified; forced rebuilds are no transition (blame does not judge
/// them), so only `every` speaks of them. Reads only the store: every node
/// with the records gives one answer.
pub fn classify<S: Store + ?Sized>(store: &S, r: &BuildResult, on: &[NoticeEvent]) -> Option<NoticeEvent> {
    if is_try_branch(&r.branch) || on.is_empty() {
        return None;
    }
    let judged = r.job == job_id(&r.repo, &r.commit, &r.builder);
    let wants = |e: NoticeEvent| on.contains(&e);
    if judged && (wants(NoticeEvent::Failure) || wants(NoticeEvent::Fixed) || wants(NoticeEvent::Warnings)) {
        let previous = blame(store, r).previous.map(|(_, s)| s);
        if wants(NoticeEvent::Failure) && failed(r.status) && previous.is_none_or(passed) {
            return Some(NoticeEvent::Failure);
        }
        if wants(NoticeEvent::Fixed) && passed(r.status) && previous.is_some_and(failed) {
            return Some(NoticeEvent::Fixed);
        }
        if wants(NoticeEvent::Warnings) && r.status == Status::Warnings && previous != Some(Status::Warnings) {
            return Some(NoticeEvent::Warnings);
        }
    }
    wants(NoticeEvent::Every).then_some(NoticeEvent::Every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_label_values_and_ids_differ_by_notifier_and_result() {
        assert!(check_name("team-mail.1_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a=b").is_err());
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert!(crate::labels::parse_label(&notifier_label("team-mail.1_x")).is_ok());
        let (r1, r2) = (Hash32::of(b"r1"), Hash32::of(b"r2"));
        assert_ne!(notice_job_id("a", &r1), notice_job_id("b", &r1));
        assert_ne!(notice_job_id("a", &r1), notice_job_id("a", &r2));
        assert_eq!(notice_spec("a", &r1).id, notice_job_id("a", &r1));
        for e in [NoticeEvent::Failure, NoticeEvent::Fixed, NoticeEvent::Warnings, NoticeEvent::Every] {
            assert_eq!(NoticeEvent::parse(e.as_str()), Some(e));
        }
    }
}
