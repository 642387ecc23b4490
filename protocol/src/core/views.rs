//! Read-only answers about the domain, for the API and the simulator
//! alike: what state a job is in as a user sees it, why it waits, which
//! jobs were built more than once (who broke a builder is `crate::blame`).

use libp2p_identity::PeerId;

use super::jobs::{decode_lost, lost_key, new_job, JobState, JobView};
use super::records::settled_in;
use super::NodeCore;
use crate::ids::Hash32;
use crate::record::{Body, Status, VerifiedRecord};
use crate::store::{Lookup, Store};
use crate::Millis;

/// A job's state as a user sees it: `Claimed` splits into claimed and
/// running (a step has started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Pending,
    Claimed,
    Running,
    Done,
    Superseded,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Claimed,
        JobStatus::Running,
        JobStatus::Done,
        JobStatus::Superseded,
        JobStatus::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Claimed => "claimed",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Superseded => "superseded",
            JobStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<JobStatus> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Why a pending job is not being built yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitingReason {
    /// No live node has every label the builder requires.
    NoEligibleNode { requires: Vec<String> },
    /// The branch has not been quiet for the builder's tree-stable time.
    TreeStable { remaining_ms: u64 },
    /// Every eligible node's executors are taken.
    EligibleBusy { eligible: usize },
    /// This node is the only eligible one, and its repository policy
    /// (`--allow-repo`) does not let it build this repository.
    NotAllowedHere { repo: String },
    /// A builder it depends on has not ended on this commit (`depends_on`).
    Dependencies { builders: Vec<String> },
    /// Eligible nodes are free; the best-ranked one takes it in turn.
    InLine,
}

impl std::fmt::Display for WaitingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitingReason::NoEligibleNode { requires } => write!(f, "no live node has all of {requires:?}"),
            WaitingReason::TreeStable { remaining_ms } => {
                write!(f, "waiting for the branch to be quiet ({} s more)", remaining_ms.div_ceil(1000))
            }
            WaitingReason::EligibleBusy { eligible } => {
                write!(f, "all {eligible} eligible node(s) are busy")
            }
            WaitingReason::NotAllowedHere { repo } => {
                write!(f, "no other node can build it, and this one does not build {repo:?} (not in its --allow-repo)")
            }
            WaitingReason::Dependencies { builders } => {
                write!(f, "waiting for its dependencies {builders:?} to end")
            }
            WaitingReason::InLine => write!(f, "about to be claimed by the best-ranked free node"),
        }
    }
}

/// Results that disagree on one job: a reproducibility finding.
pub fn results_disagree(statuses: impl IntoIterator<Item = Status>) -> bool {
    let mut it = statuses.into_iter();
    let Some(first) = it.next() else { return false };
    it.any(|s| s != first)
}

impl<S: Store> NodeCore<S> {
    fn stored(&self, id: &Hash32) -> Option<std::sync::Arc<VerifiedRecord>> {
        self.store.record(id)
    }

    /// Whether the store holds any record of the job (its change, a result
    /// or a cancel).
    pub(super) fn store_knows_job(&self, job: &Hash32) -> bool {
        self.store.change_for_job(job).is_some() || settled_in(&self.store, job)
    }

    /// A job's state: from the table while it is being decided, from the
    /// store once it is settled. A job never heard of is `Pending`.
    pub fn job_state(&self, job: &Hash32) -> JobState {
        if let Some(s) = self.jobs.state(job) {
            return s;
        }
        if self.store.lookup(Lookup::JobResult, job, 1).len() == 1 {
            JobState::Done
        } else if self.store.cancel_for_job(job).is_some() {
            JobState::Cancelled
        } else if self.store.superseded_by(job).is_some() {
            JobState::Superseded
        } else {
            JobState::Pending
        }
    }

    /// A job as the table holds it, or as the store tells it once settled
    /// (its change, the latest attempt of its results, its cancel, the job
    /// in its place, the attempts this node saw lost).
    pub fn job(&self, id: &Hash32) -> Option<JobView> {
        if let Some(j) = self.jobs.get(id) {
            return Some(j.clone());
        }
        let change = self.store.change_for_job(id)?;
        let rec = self.stored(&change)?;
        let Body::Change(c) = &rec.body else { return None };
        let spec = c.jobs.iter().find(|s| s.id == *id)?;
        let mut v = new_job(c.announced_ms, c, change, spec);
        v.not_before = 0;
        v.attempt = self
            .store
            .results_for_job(id)
            .iter()
            .filter_map(|r| match &self.stored(r)?.body {
                Body::Result(b) => Some(b.attempt),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        v.superseded_by = self.store.superseded_by(id);
        v.lost = self.store.get_state(&lost_key(id)).map(|b| decode_lost(&b)).unwrap_or_default();
        v.cancelled = self.store.cancel_for_job(id).and_then(|k| {
            let rec = self.stored(&k)?;
            match &rec.body {
                Body::Cancel(k) => Some((k.reason.clone(), rec.signer)),
                _ => None,
            }
        });
        Some(v)
    }

    /// The results stored for a job (more than one when it was built twice).
    pub fn results_of(&self, job: &Hash32) -> Vec<Hash32> {
        self.store.results_for_job(job)
    }

    /// A job by a unique hex prefix of its id, among the jobs being decided
    /// and the jobs the store holds changes for.
    pub fn find_job(&self, prefix: &str) -> Result<Hash32, String> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || p.len() > 64 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{prefix:?} is not a job id (4 to 64 hex digits)"));
        }
        let bytes = hex::decode(&p[..p.len() & !1]).unwrap_or_default();
        let mut found: Vec<Hash32> = self.jobs.with_prefix(&p).collect();
        for (job, _) in self.store.lookup_prefix(Lookup::JobChange, &bytes, 64) {
            if job.to_hex().starts_with(&p) && !found.contains(&job) {
                found.push(job);
            }
        }
        match found.as_slice() {
            [id] => Ok(*id),
            [] => Err(format!("no job {prefix}")),
            _ => Err(format!("job id prefix {prefix} is ambiguous")),
        }
    }

    /// A job's state as a user sees it.
    pub fn job_status(&self, job: &Hash32) -> JobStatus {
        match self.job_state(job) {
            JobState::Done => JobStatus::Done,
            JobState::Claimed
                if self.jobs.get(job).and_then(|j| j.claim.as_ref()).is_some_and(|c| c.step.is_some()) =>
            {
                JobStatus::Running
            }
            JobState::Claimed => JobStatus::Claimed,
            JobState::Pending => JobStatus::Pending,
            JobState::Superseded => JobStatus::Superseded,
            JobState::Cancelled => JobStatus::Cancelled,
        }
    }

    /// Why a pending job waits; `None` for a job that is not pending.
    pub fn waiting_reason(&self, now: Millis, job: &Hash32) -> Option<WaitingReason> {
        if self.jobs.state(job) != Some(JobState::Pending) {
            return None;
        }
        let j = self.jobs.get(job)?;
        let eligible: Vec<PeerId> = self.members.eligible(&j.spec.requires);
        if eligible.is_empty() {
            return Some(WaitingReason::NoEligibleNode { requires: j.spec.requires.clone() });
        }
        if !j.spec.depends_on.is_empty() && self.dependencies(j) == super::depends::Dependencies::Waiting {
            return Some(WaitingReason::Dependencies { builders: j.spec.depends_on.clone() });
        }
        if now < j.not_before {
            return Some(WaitingReason::TreeStable { remaining_ms: j.not_before - now });
        }
        if eligible == [self.me] && !self.cfg.repos.allows(&j.repo) {
            return Some(WaitingReason::NotAllowedHere { repo: j.repo.clone() });
        }
        let held = self.jobs.held_claims(now, |p| self.members.key_of(p).unwrap_or(0));
        let free = |p: &PeerId| -> bool {
            if *p == self.me {
                return self.builds.free_slots(self.cfg.executors) > 0;
            }
            let key = self.members.key_of(p).unwrap_or(0);
            let executors = self.members.peers().get(p).map(|v| v.executors.max(1)).unwrap_or(1);
            held.get(&key).copied().unwrap_or(0) < executors
        };
        if !eligible.iter().any(free) {
            return Some(WaitingReason::EligibleBusy { eligible: eligible.len() });
        }
        Some(WaitingReason::InLine)
    }

    /// Jobs built more than once, newest first (the latest 1024).
    pub fn findings(&self) -> Vec<Hash32> {
        self.jobs.findings()
    }

    /// The statuses of a job's results, as stored.
    pub fn result_statuses(&self, job: &Hash32) -> Vec<(Hash32, Status)> {
        self.store
            .results_for_job(job)
            .iter()
            .filter_map(|id| match &self.stored(id)?.body {
                Body::Result(r) => Some((*id, r.status)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disagreement_needs_two_different_statuses() {
        assert!(!results_disagree([]));
        assert!(!results_disagree([Status::Success, Status::Success]));
        assert!(results_disagree([Status::Success, Status::Failure]));
    }

    #[test]
    fn job_status_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("nope"), None);
    }
}
