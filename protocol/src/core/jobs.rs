//! The job table: every job this node knows, which are open, their claims,
//! their results, cancels and collapsing. A job reopens (a new attempt, no
//! claim) by one rule, `reopen`, whatever the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libp2p_identity::PeerId;

use crate::ids::Hash32;
use crate::recipe::JobSpec;
use crate::record::Change;
use crate::wire::Claim;
use crate::Millis;

/// Claims for jobs not yet known are kept up to this many.
const MAX_EARLY_CLAIMS: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimView {
    pub by: PeerId,
    pub attempt: u32,
    pub claimed_ms: Millis,
    pub lease_until: Millis,
    pub step: Option<String>,
}

/// An attempt whose claimant went silent or gave up.
#[derive(Debug, Clone, PartialEq)]
pub struct LostAttempt {
    pub attempt: u32,
    pub holder: PeerId,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct JobView {
    pub spec: JobSpec,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub change: Hash32,
    pub attempt: u32,
    /// When the current attempt opened here; ranks count stagger from it.
    pub opened_ms: Millis,
    pub claim: Option<ClaimView>,
    pub lost: Vec<LostAttempt>,
    /// When this node first learned of the job.
    pub seen_ms: Millis,
    /// Not claimable before this (the builder's tree-stable timer).
    pub not_before: Millis,
    /// A newer change on the branch took this job's place (collapsing).
    pub superseded_by: Option<Hash32>,
    /// A user cancelled the job: why, and through which node.
    pub cancelled: Option<(String, PeerId)>,
    pub commit_time: i64,
    pub forced: bool,
    /// Which eligible peers had a free slot when last ranked, and since when.
    pub(crate) free_sig: u64,
    pub(crate) free_since: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Claimed,
    Done,
    Superseded,
    Cancelled,
}

#[derive(Default)]
pub struct Jobs {
    /// Hashed with fixed keys: iteration order must not vary between runs.
    pub(crate) jobs: HashMap<Hash32, JobView, rustc_hash::FxBuildHasher>,
    /// Jobs with no result yet, not cancelled and not superseded.
    pub(crate) open: BTreeSet<Hash32>,
    pub(crate) results_by_job: HashMap<Hash32, Vec<Hash32>, rustc_hash::FxBuildHasher>,
    changes_by_commit: BTreeMap<(String, String), Hash32>,
    /// Claims heard before the change that defines the job.
    early_claims: BTreeMap<Hash32, (PeerId, Claim, Millis)>,
    /// Cancel records, by job (the job may not be known yet).
    cancels: HashMap<Hash32, (String, PeerId), rustc_hash::FxBuildHasher>,
    /// Open jobs of collapsing builders, by (repo, branch, builder).
    collapsible: BTreeMap<(String, String, String), Vec<Hash32>>,
}

impl Jobs {
    pub fn get(&self, id: &Hash32) -> Option<&JobView> {
        self.jobs.get(id)
    }
    pub fn all(&self) -> &HashMap<Hash32, JobView, rustc_hash::FxBuildHasher> {
        &self.jobs
    }
    pub fn is_open(&self, id: &Hash32) -> bool {
        self.open.contains(id)
    }
    pub fn results_of(&self, job: &Hash32) -> &[Hash32] {
        self.results_by_job.get(job).map(|v| v.as_slice()).unwrap_or(&[])
    }
    pub fn change_of_commit(&self, repo: &str, commit: &str) -> Option<Hash32> {
        self.changes_by_commit.get(&(repo.to_string(), commit.to_string())).copied()
    }

    pub fn state(&self, job: &Hash32) -> JobState {
        let view = self.jobs.get(job);
        if self.results_by_job.contains_key(job) {
            JobState::Done
        } else if self.cancels.contains_key(job) {
            JobState::Cancelled
        } else if view.is_some_and(|j| j.superseded_by.is_some() && j.claim.is_none()) {
            JobState::Superseded
        } else if view.is_some_and(|j| j.claim.is_some()) {
            JobState::Claimed
        } else {
            JobState::Pending
        }
    }

    /// Adds the jobs of a change; returns the claims heard for them before
    /// the change arrived, to be applied now.
    pub fn add_change(&mut self, now: Millis, c: &Change, change: Hash32) -> Vec<(PeerId, Claim, Millis)> {
        if c.force.is_none() {
            self.changes_by_commit.entry((c.repo.clone(), c.commit.clone())).or_insert(change);
        }
        let mut early = Vec::new();
        for spec in &c.jobs {
            if self.jobs.contains_key(&spec.id) {
                continue;
            }
            self.jobs.insert(spec.id, new_job(now, c, change, spec));
            if !self.results_by_job.contains_key(&spec.id) && !self.cancels.contains_key(&spec.id) {
                self.open.insert(spec.id);
            }
            if let Some((reason, by)) = self.cancels.get(&spec.id).cloned() {
                if let Some(j) = self.jobs.get_mut(&spec.id) {
                    j.cancelled = Some((reason, by));
                }
            }
            if let Some(e) = self.early_claims.remove(&spec.id) {
                early.push(e);
            }
        }
        early
    }

    /// Keeps a claim for a job not known yet, up to a bound.
    pub fn keep_early_claim(&mut self, now: Millis, from: PeerId, c: Claim) {
        if self.early_claims.len() < MAX_EARLY_CLAIMS {
            self.early_claims.insert(c.job, (from, c, now));
        }
    }

    pub fn add_cancel(&mut self, job: Hash32, reason: &str, by: PeerId) {
        self.cancels.insert(job, (reason.to_string(), by));
        self.open.remove(&job);
        if let Some(j) = self.jobs.get_mut(&job) {
            j.cancelled = Some((reason.to_string(), by));
        }
    }

    pub fn add_result(&mut self, job: Hash32, record: Hash32) {
        self.results_by_job.entry(job).or_default().push(record);
        self.open.remove(&job);
        self.early_claims.remove(&job);
    }

    /// The one way a job opens again: the attempt that was held is lost, a
    /// new attempt starts with no claim.
    pub fn reopen(&mut self, now: Millis, job: &Hash32, lost: LostAttempt) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.attempt = lost.attempt + 1;
            j.lost.push(lost);
            j.claim = None;
            j.opened_ms = now;
        }
    }

    /// A new change on a branch restarts the tree-stable timers of the
    /// branch's waiting jobs, and supersedes older unclaimed jobs of
    /// collapsing builders.
    pub fn branch_activity(&mut self, now: Millis, c: &Change) {
        let open_waiting: Vec<Hash32> = self
            .open
            .iter()
            .filter(|id| {
                self.jobs.get(id).is_some_and(|j| {
                    j.repo == c.repo && j.branch == c.branch && j.claim.is_none() && j.spec.tree_stable_secs > 0
                })
            })
            .copied()
            .collect();
        for id in open_waiting {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.not_before = j.not_before.max(now + j.spec.tree_stable_secs * 1000);
            }
        }
        for spec in c.jobs.iter().filter(|s| s.collapse) {
            self.collapse(&c.repo, &c.branch, spec);
        }
    }

    fn collapse(&mut self, repo: &str, branch: &str, spec: &JobSpec) {
        let key = (repo.to_string(), branch.to_string(), spec.builder.clone());
        let mut group = self.collapsible.remove(&key).unwrap_or_default();
        if !group.contains(&spec.id) {
            group.push(spec.id);
        }
        group.retain(|id| self.open.contains(id));
        // The newest commit of the group stays; older unclaimed ones go.
        let newest = group
            .iter()
            .filter_map(|id| self.jobs.get(id).map(|j| ((j.commit_time, j.seen_ms, *id), *id)))
            .max()
            .map(|(_, id)| id);
        let mut keep = Vec::new();
        for id in group {
            let unclaimed = self.jobs.get(&id).is_some_and(|j| j.claim.is_none());
            if Some(id) != newest && unclaimed {
                if let (Some(j), Some(n)) = (self.jobs.get_mut(&id), newest) {
                    j.superseded_by = Some(n);
                }
                self.open.remove(&id);
            } else {
                keep.push(id);
            }
        }
        self.collapsible.insert(key, keep);
    }

    /// A job by a unique hex prefix of its id.
    pub fn find(&self, prefix: &str) -> Result<Hash32, String> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{prefix:?} is not a job id (at least 4 hex digits)"));
        }
        let mut found = self.jobs.keys().filter(|id| id.to_hex().starts_with(&p));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(*id),
            (None, _) => Err(format!("no job {prefix}")),
            _ => Err(format!("job id prefix {prefix} is ambiguous")),
        }
    }

    /// Waiting jobs in the order nodes take them: priority, then age.
    pub fn queue(&self) -> Vec<Hash32> {
        let mut q: Vec<(std::cmp::Reverse<i32>, Millis, Hash32)> = self
            .open
            .iter()
            .filter_map(|id| {
                self.jobs
                    .get(id)
                    .filter(|j| j.claim.is_none())
                    .map(|j| (std::cmp::Reverse(j.spec.priority), j.seen_ms, *id))
            })
            .collect();
        q.sort();
        q.into_iter().map(|(_, _, id)| id).collect()
    }
}

fn new_job(now: Millis, c: &Change, change: Hash32, spec: &JobSpec) -> JobView {
    JobView {
        spec: spec.clone(),
        repo: c.repo.clone(),
        branch: c.branch.clone(),
        commit: c.commit.clone(),
        change,
        attempt: 0,
        opened_ms: now,
        claim: None,
        lost: vec![],
        seen_ms: c.announced_ms.min(now),
        not_before: now + spec.tree_stable_secs * 1000,
        superseded_by: None,
        cancelled: None,
        commit_time: c.commit_time,
        forced: c.force.is_some(),
        free_sig: 0,
        free_since: now,
    }
}
