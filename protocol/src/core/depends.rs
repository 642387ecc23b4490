//! `depends_on`: a job waits until the jobs of the builders it names, on
//! the same commit, are settled. All of them passed (`success` or
//! `warnings`): it is claimed and built like any job. One failed, was
//! cancelled or superseded: the node that claims it builds nothing and
//! publishes a `cancelled` result whose error names the dependency
//! ("skipped: ..."). So a skip is an ordinary result: one claim, one
//! record, shown and replicated like any, and older nodes read it.

use std::collections::BTreeSet;

use super::builds::assemble_result;
use super::io::{BuildOutcome, Event};
use super::jobs::JobView;
use super::NodeCore;
use crate::ids::Hash32;
use crate::record::{Body, Status};
use crate::store::{Lookup, Store};
use crate::wire::{self, Gossip};
use crate::Millis;

/// Results of a dependency read at most; more means it was built again.
const MAX_DEP_RESULTS: usize = 8;

/// What a job's dependencies say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependencies {
    /// All passed, or there are none.
    Passed,
    /// Some have not ended yet.
    Waiting,
    /// This one did not pass: why, for the skipped job's result.
    Failed(String),
}

/// The prefix of a skipped job's result error.
pub const SKIPPED: &str = "skipped:";

impl<S: Store> NodeCore<S> {
    /// The job of each builder `j` depends on: the one its own change
    /// lists (a forced or scheduled change names its own jobs), else the
    /// commit's ordinary job of that builder.
    fn dependency_jobs(&self, j: &JobView) -> Vec<(String, Hash32)> {
        let listed = match self.store.record(&j.change).as_deref().map(|r| &r.body) {
            Some(Body::Change(c)) => c.jobs.iter().map(|s| (s.builder.clone(), s.id)).collect(),
            _ => vec![],
        };
        j.spec
            .depends_on
            .iter()
            .map(|d| {
                let id = listed
                    .iter()
                    .find(|(b, _)| b == d)
                    .map(|(_, id)| *id)
                    .unwrap_or_else(|| crate::recipe::job_id(&j.repo, &j.commit, d));
                (d.clone(), id)
            })
            .collect()
    }

    /// What `j`'s dependencies say, from the records this node holds.
    pub fn dependencies(&self, j: &JobView) -> Dependencies {
        let mut waiting = false;
        for (builder, id) in self.dependency_jobs(j) {
            let statuses: Vec<Status> = self
                .store
                .lookup(Lookup::JobResult, &id, MAX_DEP_RESULTS)
                .iter()
                .filter_map(|r| match &self.store.record(r)?.body {
                    Body::Result(b) => Some(b.status),
                    _ => None,
                })
                .collect();
            // Built twice with different ends: one pass is enough.
            if statuses.iter().any(|s| matches!(s, Status::Success | Status::Warnings)) {
                continue;
            }
            let why = if let Some(s) = statuses.first() {
                format!("{SKIPPED} dependency {builder:?} ended {}", s.as_str())
            } else if self.store.cancel_for_job(&id).is_some() {
                format!("{SKIPPED} dependency {builder:?} was cancelled")
            } else if self.store.superseded_by(&id).is_some() {
                format!("{SKIPPED} dependency {builder:?} was superseded by a newer change")
            } else {
                waiting = true;
                continue;
            };
            return Dependencies::Failed(why);
        }
        if waiting {
            Dependencies::Waiting
        } else {
            Dependencies::Passed
        }
    }

    /// Open jobs not claimable yet: a dependency has not ended.
    pub(super) fn waiting_on_dependencies(&self) -> BTreeSet<Hash32> {
        self.jobs
            .open
            .iter()
            .filter_map(|id| self.jobs.get(id).map(|j| (id, j)))
            .filter(|(_, j)| !j.spec.depends_on.is_empty() && j.claim.is_none())
            .filter(|(_, j)| self.dependencies(j) == Dependencies::Waiting)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A job just claimed here whose dependency did not pass: settled by a
    /// `cancelled` result that names it, with nothing built. True if so.
    pub(super) fn skip_if_dependency_failed(&mut self, now: Millis, id: Hash32, attempt: u32) -> bool {
        let Some(j) = self.jobs.get(&id).filter(|j| !j.spec.depends_on.is_empty()).cloned() else {
            return false;
        };
        let why = match self.dependencies(&j) {
            Dependencies::Passed => return false,
            Dependencies::Failed(why) => why,
            // Claimed before its dependencies ended: never, the plan
            // leaves such jobs alone; give it back rather than build.
            Dependencies::Waiting => {
                crate::invariant!(false, "a job is claimed only once its dependencies ended");
                self.give_back(now, id, attempt, "its dependencies have not ended".into());
                return true;
            }
        };
        self.broadcast(&Gossip::Claim(wire::Claim { job: id, attempt, lease_ms: self.cfg.lease_ms, sent_ms: now }));
        self.emit(Event::Claimed { job: id, attempt, by: self.me });
        let outcome = BuildOutcome {
            job: id,
            attempt,
            started_ms: now,
            ended_ms: now,
            steps: vec![],
            error: None,
            cancelled: true,
        };
        let (author, title) = match self.store.record(&j.change).as_deref().map(|r| &r.body) {
            Some(Body::Change(c)) => (c.author.clone(), c.title.clone()),
            _ => (String::new(), String::new()),
        };
        let mut result = assemble_result(&outcome, &j, &self.cfg.labels, author, title, &self.cfg.name);
        result.error = Some(why);
        match self.publish(now, &Body::Result(result)) {
            Ok(rec) => self.emit(Event::BuildPublished { job: id, attempt, status: Status::Cancelled, record: rec.id }),
            Err(e) => self.give_back(now, id, attempt, format!("its skipped result could not be stored: {e}")),
        }
        true
    }
}
