//! The job table: the jobs still to be decided (waiting, claimed, being
//! built), which are open, their claims, and collapsing. A job leaves the
//! table when it is settled (a result, a cancel, a newer job in its place);
//! what the past holds is read from the store's lookups, so the table
//! grows with the work in flight, not with history. A job reopens (a new
//! attempt, no claim) by one rule, `reopen`, whatever the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use libp2p_identity::PeerId;

use crate::ids::Hash32;
use crate::recipe::JobSpec;
use crate::record::Change;
use crate::wire::Claim;
use crate::Millis;

/// Claims for jobs not yet known are kept up to this many.
const MAX_EARLY_CLAIMS: usize = 10_000;
/// Jobs built more than once, newest kept.
const MAX_FINDINGS: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimView {
    pub by: PeerId,
    pub attempt: u32,
    pub claimed_ms: Millis,
    pub lease_until: Millis,
    pub step: Option<String>,
    /// Its claimant renewed it past its steps' timeouts and the grace,
    /// which an honest claimant, having given the build up, never does.
    pub overstayed: bool,
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
    /// A newer change on the branch took this job's place (collapsing);
    /// only in views of settled jobs, read from the store.
    pub superseded_by: Option<Hash32>,
    /// A user cancelled the job: why, and through which node; only in
    /// views of settled jobs.
    pub cancelled: Option<(String, PeerId)>,
    pub commit_time: i64,
    pub forced: bool,
    /// A try build's patch.
    pub patch: Option<crate::record::PatchRef>,
    /// A scheduled build: the firing time it builds the branch head for.
    pub firing_ms: Option<Millis>,
    /// A notice job: which notifier, and what about (`notices.rs`).
    pub notice: Option<NoticeRef>,
    /// A bisect build: the failing job whose range it searches.
    pub bisect: Option<Hash32>,
    /// Which eligible peers had a free slot when last ranked, and since when.
    pub(crate) free_sig: u64,
    pub(crate) free_since: Millis,
}

/// What a notice job is to send: its notifier, the event, and the result
/// record it speaks of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRef {
    pub notifier: String,
    pub event: crate::notify::NoticeEvent,
    pub result: Hash32,
}

/// A job a newer one of a collapsing builder took the place of.
pub struct Superseded {
    pub job: Hash32,
    pub by: Hash32,
    pub lost: Vec<LostAttempt>,
}

/// Where a settled job's lost attempts are kept (node-local state).
pub(crate) fn lost_key(job: &Hash32) -> String {
    format!("lost/{}", job.to_hex())
}

pub(crate) fn encode_lost(lost: &[LostAttempt]) -> Vec<u8> {
    let v: Vec<(u32, Vec<u8>, &str)> =
        lost.iter().map(|l| (l.attempt, l.holder.to_bytes(), l.reason.as_str())).collect();
    crate::codec::encode(&v)
}

pub(crate) fn decode_lost(bytes: &[u8]) -> Vec<LostAttempt> {
    let v: Vec<(u32, serde_bytes::ByteBuf, String)> = crate::codec::decode(bytes, 1 << 20).unwrap_or_default();
    v.into_iter()
        .filter_map(|(attempt, holder, reason)| {
            Some(LostAttempt { attempt, holder: PeerId::from_bytes(&holder).ok()?, reason })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Claimed,
    Done,
    Superseded,
    Cancelled,
}

#[derive(Default, Clone)]
pub struct Jobs {
    /// Jobs not settled yet. Hashed with fixed keys: iteration order must
    /// not vary between runs.
    pub(crate) jobs: HashMap<Hash32, JobView, rustc_hash::FxBuildHasher>,
    /// The table's ids in id order: claiming and lease expiry walk them in
    /// an order that does not depend on the hash map.
    pub(crate) open: BTreeSet<Hash32>,
    /// Claims heard before the change that defines the job.
    early_claims: BTreeMap<Hash32, (PeerId, Claim, Millis)>,
    /// Open jobs of collapsing builders, by (repo, branch, builder).
    collapsible: BTreeMap<(String, String, String), Vec<Hash32>>,
    /// Jobs that got a second result, newest last, at most `MAX_FINDINGS`.
    findings: VecDeque<(Millis, Hash32)>,
}

impl Jobs {
    pub fn get(&self, id: &Hash32) -> Option<&JobView> {
        self.jobs.get(id)
    }
    /// The jobs still to be decided.
    pub fn live(&self) -> &HashMap<Hash32, JobView, rustc_hash::FxBuildHasher> {
        &self.jobs
    }
    pub fn is_open(&self, id: &Hash32) -> bool {
        self.open.contains(id)
    }

    /// The state of a job of the table; `None` for one not in it (settled,
    /// or never heard of).
    pub fn state(&self, job: &Hash32) -> Option<JobState> {
        let j = self.jobs.get(job)?;
        Some(if j.claim.is_some() { JobState::Claimed } else { JobState::Pending })
    }

    /// Adds the jobs of a change that are not settled yet; returns the
    /// claims heard for them before the change arrived, to be applied now.
    pub fn add_change(
        &mut self,
        now: Millis,
        c: &Change,
        change: Hash32,
        settled: &dyn Fn(&Hash32) -> bool,
    ) -> Vec<(PeerId, Claim, Millis)> {
        let mut early = Vec::new();
        for spec in &c.jobs {
            if let Some(j) = self.jobs.get_mut(&spec.id).filter(|j| j.firing_ms.is_some()) {
                // Two nodes announced one firing, maybe with different
                // heads: while it waits, the change with the smaller id
                // defines it, on every node alike. Once claimed, the
                // claimant builds the head it holds; its result names it.
                if j.claim.is_none() && change < j.change {
                    let (attempt, lost) = (j.attempt, std::mem::take(&mut j.lost));
                    let (opened_ms, seen_ms, not_before) = (j.opened_ms, j.seen_ms, j.not_before);
                    *j = JobView { attempt, lost, opened_ms, seen_ms, not_before, ..new_job(now, c, change, spec) };
                }
            }
            if self.jobs.contains_key(&spec.id) || settled(&spec.id) {
                self.early_claims.remove(&spec.id);
                continue;
            }
            self.jobs.insert(spec.id, new_job(now, c, change, spec));
            self.open.insert(spec.id);
            if let Some(e) = self.early_claims.remove(&spec.id) {
                early.push(e);
            }
        }
        early
    }

    /// A notice job derived from a result; the claims heard for it before
    /// are returned to be taken.
    pub fn add_notice(&mut self, view: JobView) -> Option<(PeerId, Claim, Millis)> {
        let id = view.spec.id;
        if self.jobs.contains_key(&id) {
            return None;
        }
        self.jobs.insert(id, view);
        self.open.insert(id);
        self.early_claims.remove(&id)
    }

    /// A job is settled (built, cancelled, superseded): it leaves the
    /// table. Returns its lost attempts, which only this node saw, for the
    /// caller to keep.
    pub fn settle(&mut self, job: &Hash32) -> Vec<LostAttempt> {
        self.open.remove(job);
        self.early_claims.remove(job);
        self.jobs.remove(job).map(|j| j.lost).unwrap_or_default()
    }

    /// A job got another result: a reproducibility finding.
    pub fn note_finding(&mut self, seen_ms: Millis, job: Hash32) {
        if self.findings.iter().any(|(_, j)| *j == job) {
            return;
        }
        if self.findings.len() >= MAX_FINDINGS {
            self.findings.pop_front();
        }
        self.findings.push_back((seen_ms, job));
    }

    /// The findings with when each was seen, oldest first: for a checkpoint.
    pub fn findings_seen(&self) -> Vec<(Millis, Hash32)> {
        self.findings.iter().copied().collect()
    }

    /// Findings saved by a checkpoint, kept as they were.
    pub fn restore_findings(&mut self, saved: &[(Millis, Hash32)]) {
        for (seen, job) in saved.iter().rev().take(MAX_FINDINGS).rev() {
            self.note_finding(*seen, *job);
        }
    }

    /// Jobs built more than once, newest first.
    pub fn findings(&self) -> Vec<Hash32> {
        let mut v: Vec<(Millis, Hash32)> = self.findings.iter().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Keeps a claim for a job not known yet, up to a bound.
    pub fn keep_early_claim(&mut self, now: Millis, from: PeerId, c: Claim) {
        if self.early_claims.len() < MAX_EARLY_CLAIMS {
            self.early_claims.insert(c.job, (from, c, now));
        }
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
    /// collapsing builders; returns those, each with the job in its place
    /// and its lost attempts.
    pub fn branch_activity(&mut self, now: Millis, c: &Change) -> Vec<Superseded> {
        let open_waiting: Vec<Hash32> = self
            .open
            .iter()
            .filter(|id| {
                self.jobs.get(id).is_some_and(|j| {
                    j.repo == c.repo
                        && j.branch == c.branch
                        && j.claim.is_none()
                        && j.spec.tree_stable_secs > 0
                        && j.bisect.is_none()
                })
            })
            .copied()
            .collect();
        for id in open_waiting {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.not_before = j.not_before.max(now + j.spec.tree_stable_secs * 1000);
            }
        }
        let mut superseded = Vec::new();
        for spec in c.jobs.iter().filter(|s| s.collapse) {
            self.collapse(&c.repo, &c.branch, spec, &mut superseded);
        }
        superseded
    }

    fn collapse(&mut self, repo: &str, branch: &str, spec: &JobSpec, superseded: &mut Vec<Superseded>) {
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
            if let (Some(n), true) = (newest.filter(|n| *n != id), unclaimed) {
                let lost = self.settle(&id);
                superseded.push(Superseded { job: id, by: n, lost });
            } else {
                keep.push(id);
            }
        }
        self.collapsible.insert(key, keep);
    }

    /// Jobs of the table whose id starts with the hex prefix `p`.
    pub fn with_prefix<'a>(&'a self, p: &'a str) -> impl Iterator<Item = Hash32> + 'a {
        self.jobs.keys().filter(move |id| id.to_hex().starts_with(p)).copied()
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

pub(crate) fn new_job(now: Millis, c: &Change, change: Hash32, spec: &JobSpec) -> JobView {
    let bisect = c.force.as_ref().and_then(|f| f.bisect.as_ref()).map(|b| b.origin);
    // A bisect build's commit is old: its tree was stable long ago.
    let stable_ms = if bisect.is_some() { 0 } else { spec.tree_stable_secs * 1000 };
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
        not_before: now + stable_ms,
        superseded_by: None,
        cancelled: None,
        commit_time: c.commit_time,
        forced: c.force.is_some(),
        patch: c.force.as_ref().and_then(|f| f.patch),
        firing_ms: c.firing_ms,
        notice: None,
        bisect,
        free_sig: 0,
        free_since: now,
    }
}
