//! Automatic bisection: when a failure follows a pass and covers several
//! commits (collapsed, or a branch that moved several commits at once),
//! the cluster builds commits in between as bisect builds, halving the
//! range each time, until the first failing commit is found.
//!
//! Everything here reads only the store, so every node gives one answer:
//! the candidates are the failing commit and its first parents back to
//! (not including) the commit of the previous, passing, result of the
//! builder (`blame`); each watched commit was announced as a change of its
//! own, so each has its job specs. A bisect build is a forced change of
//! one candidate for the one builder, whose nonce is derived from the
//! failing job and the commit (`nonce`): any node announcing the same
//! step makes the same job, so duplicates are harmless, and `blame`
//! already ignores forced builds. Who announces the next step is
//! `core/bisect.rs`.

use std::sync::Arc;

use crate::ids::Hash32;
use crate::recipe::{forced_job_id, job_id, JobSpec};
use crate::record::{is_try_branch, BisectRef, Body, BuildResult, Change, Force, Status, VerifiedRecord};
use crate::store::Store;
use crate::Millis;

/// Candidates (the failing commit included) searched at most; a longer
/// range is given up rather than built 7 times or more.
pub const MAX_CANDIDATES: usize = 64;

/// The nonce of the bisect build of `commit` for the failing job `origin`.
pub fn nonce(origin: &Hash32, commit: &str) -> Hash32 {
    Hash32::of_fields("peerbot.bisect.v1", &[&origin.0, commit.as_bytes()])
}

/// The job id of that bisect build.
pub fn step_job(repo: &str, commit: &str, builder: &str, origin: &Hash32) -> Hash32 {
    forced_job_id(repo, commit, builder, &nonce(origin, commit))
}

/// Builds a binary search of `n` candidates needs at most: ⌈log2 n⌉.
pub fn max_builds(n: usize) -> usize {
    match n {
        0 | 1 => 0,
        n => (usize::BITS - (n - 1).leading_zeros()) as usize,
    }
}

/// Where a search stands, by candidate index (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Build this candidate next (or wait for its build).
    Next(usize),
    /// The first failing candidate.
    Found(usize),
    /// The build of this candidate neither passed nor failed.
    Inconclusive(usize, Status),
}

/// The search itself, pure: `n` candidates oldest first, the last known
/// to fail and the parent of the first known to pass; `status(i)` is how
/// the bisect build of candidate `i` ended, if it did. Returns the
/// candidates visited, in order, and the decision. The last candidate is
/// never built, and at most `max_builds(n)` are.
pub fn search(n: usize, status: impl Fn(usize) -> Option<Status>) -> (Vec<usize>, Decision) {
    let (mut lo, mut hi) = (0, n.saturating_sub(1));
    let mut path = Vec::new();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        path.push(mid);
        match status(mid) {
            None => return (path, Decision::Next(mid)),
            Some(Status::Success | Status::Warnings) => lo = mid + 1,
            Some(Status::Failure) => hi = mid,
            Some(s) => return (path, Decision::Inconclusive(mid, s)),
        }
    }
    (path, Decision::Found(lo))
}

/// A commit of the range.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub commit: String,
    pub author: String,
    pub title: String,
    /// The builder's job at this commit, as its own change announced it.
    pub spec: Option<JobSpec>,
}

/// One bisect build of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub commit: String,
    pub job: Hash32,
    /// Its change is stored (the build was asked for).
    pub announced: bool,
    /// How it ended, and its result record; `Cancelled` without a result
    /// when the job was cancelled before it was built.
    pub status: Option<Status>,
    pub result: Option<Hash32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Waiting for the build of `next`.
    Searching {
        next: String,
    },
    Found {
        commit: String,
        author: String,
        title: String,
    },
    GaveUp {
        reason: String,
    },
}

/// The search for the first failing commit of a failing result.
#[derive(Debug, Clone, PartialEq)]
pub struct Bisection {
    /// The failing job whose range is searched.
    pub origin: Hash32,
    pub repo: String,
    pub branch: String,
    pub builder: String,
    /// The commit of the previous, passing, result.
    pub good: String,
    /// The range, oldest first; the last is the failing commit.
    pub candidates: Vec<Candidate>,
    /// The bisect builds visited, in search order.
    pub steps: Vec<Step>,
    pub state: State,
    /// Bisect builds this search needs at most.
    pub max_builds: usize,
}

impl Bisection {
    /// The step to announce now: its commit and job, while searching.
    pub fn next_step(&self) -> Option<(&str, Hash32)> {
        match &self.state {
            State::Searching { next } => {
                self.steps.last().filter(|s| s.commit == *next).map(|s| (next.as_str(), s.job))
            }
            _ => None,
        }
    }

    /// The change that asks for the next step's build, at `now`: the
    /// candidate's own change with only this builder's job, forced under
    /// the bisect nonce.
    pub fn step_change<S: Store + ?Sized>(&self, store: &S, now: Millis) -> Option<Change> {
        let (commit, job) = self.next_step()?;
        let spec = self.candidates.iter().find(|c| c.commit == commit)?.spec.clone()?;
        let rec = store.record(&store.change_for_commit(&self.repo, commit)?)?;
        let Body::Change(c) = &rec.body else { return None };
        let reason = format!(
            "bisect: {} commits after {} for job {}, build {} of at most {}",
            self.candidates.len(),
            short(&self.good),
            self.origin.short(),
            self.steps.len(),
            self.max_builds
        );
        Some(Change {
            jobs: vec![JobSpec { id: job, ..spec }],
            schedules: vec![],
            firing_ms: None,
            recipe_error: None,
            announced_ms: now,
            force: Some(Force {
                nonce: nonce(&self.origin, commit),
                reason,
                patch: None,
                bisect: Some(BisectRef { origin: self.origin }),
            }),
            ..c.clone()
        })
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

fn change_of<S: Store + ?Sized>(store: &S, repo: &str, commit: &str) -> Option<Arc<VerifiedRecord>> {
    let rec = store.record(&store.change_for_commit(repo, commit)?)?;
    matches!(&rec.body, Body::Change(c) if c.force.is_none()).then_some(rec)
}

/// How a job ended: its earliest result (time, then id), or `Cancelled`
/// when it was cancelled before any result.
fn ended<S: Store + ?Sized>(store: &S, job: &Hash32) -> (Option<Status>, Option<Hash32>) {
    let mut best: Option<(Millis, Hash32, Status)> = None;
    for id in store.results_for_job(job) {
        let Some(rec) = store.record(&id) else { continue };
        let Body::Result(r) = &rec.body else { continue };
        if best.is_none_or(|b| (rec.time(), rec.id) < (b.0, b.1)) {
            best = Some((rec.time(), rec.id, r.status));
        }
    }
    match best {
        Some((_, id, s)) => (Some(s), Some(id)),
        None if store.cancel_for_job(job).is_some() => (Some(Status::Cancelled), None),
        None => (None, None),
    }
}

/// A job's earliest result (time, then id): the one a search reads.
pub fn first_result<S: Store + ?Sized>(store: &S, job: &Hash32) -> Option<BuildResult> {
    match &store.record(&ended(store, job).1?)?.body {
        Body::Result(r) => Some(r.clone()),
        _ => None,
    }
}

/// The failing result whose search the result `r` belongs to: `r` itself
/// when it is an ordinary build, the origin's first result when `r` is a
/// bisect build.
pub fn origin_of<S: Store + ?Sized>(store: &S, r: &BuildResult) -> Option<BuildResult> {
    if r.job == job_id(&r.repo, &r.commit, &r.builder) {
        return Some(r.clone());
    }
    first_result(store, &bisect_ref(store, &r.job)?.origin)
}

/// What a bisect job searches for; `None` for any other job.
pub fn bisect_ref<S: Store + ?Sized>(store: &S, job: &Hash32) -> Option<BisectRef> {
    let rec = store.record(&store.change_for_job(job)?)?;
    match &rec.body {
        Body::Change(c) => c.force.as_ref()?.bisect.clone(),
        _ => None,
    }
}

/// The search for the first failing commit of `result`, as the store
/// holds it now. `None` when there is none to make: not an ordinary
/// failure of a real branch, a builder with `bisect = false`, no passing
/// previous result, or a single commit (blame names its author already).
pub fn bisection<S: Store + ?Sized>(store: &S, result: &BuildResult) -> Option<Bisection> {
    let r = result;
    let origin = job_id(&r.repo, &r.commit, &r.builder);
    if r.job != origin || r.status != Status::Failure || is_try_branch(&r.branch) {
        return None;
    }
    let own = change_of(store, &r.repo, &r.commit)?;
    let Body::Change(own_change) = &own.body else { return None };
    let spec = own_change.jobs.iter().find(|j| j.builder == r.builder)?;
    if !spec.bisect {
        return None;
    }
    let depends = !spec.depends_on.is_empty();
    let blame = crate::blame::blame(store, r);
    let (prev, prev_status) = blame.previous?;
    if !matches!(prev_status, Status::Success | Status::Warnings) {
        return None;
    }
    let good = match &store.record(&prev)?.body {
        Body::Result(p) => p.commit.clone(),
        _ => return None,
    };
    let mut out = Bisection {
        origin,
        repo: r.repo.clone(),
        branch: r.branch.clone(),
        builder: r.builder.clone(),
        good: good.clone(),
        candidates: vec![],
        steps: vec![],
        state: State::GaveUp { reason: String::new() },
        max_builds: 0,
    };
    // The first-parent line back to the good commit, newest first.
    let mut line: Vec<Candidate> = Vec::new();
    let mut rec = own;
    loop {
        let Body::Change(c) = &rec.body else { return None };
        line.push(Candidate {
            commit: c.commit.clone(),
            author: c.author.clone(),
            title: c.title.clone(),
            spec: c.jobs.iter().find(|j| j.builder == r.builder).cloned(),
        });
        let parent = c.parents.first()?.clone();
        if parent.eq_ignore_ascii_case(&good) {
            break;
        }
        if line.len() >= MAX_CANDIDATES {
            out.state = State::GaveUp {
                reason: format!("over {MAX_CANDIDATES} commits since the last pass: too many to bisect"),
            };
            return Some(out);
        }
        match change_of(store, &r.repo, &parent) {
            Some(next) => rec = next,
            None => {
                out.state = State::GaveUp { reason: format!("commit {} was never announced", short(&parent)) };
                return Some(out);
            }
        }
    }
    if line.len() < 2 {
        return None;
    }
    line.reverse();
    out.candidates = line;
    out.max_builds = max_builds(out.candidates.len());
    if depends {
        out.state = State::GaveUp { reason: "the builder depends on others, which a bisect build does not run".into() };
        return Some(out);
    }
    let job_of = |i: usize| step_job(&r.repo, &out.candidates[i].commit, &r.builder, &origin);
    let (path, decision) = search(out.candidates.len(), |i| ended(store, &job_of(i)).0);
    out.steps = path
        .iter()
        .map(|&i| {
            let job = job_of(i);
            let (status, result) = ended(store, &job);
            Step {
                commit: out.candidates[i].commit.clone(),
                job,
                announced: store.change_for_job(&job).is_some(),
                status,
                result,
            }
        })
        .collect();
    out.state = match decision {
        Decision::Found(i) => {
            let c = &out.candidates[i];
            State::Found { commit: c.commit.clone(), author: c.author.clone(), title: c.title.clone() }
        }
        Decision::Inconclusive(i, s) => State::GaveUp {
            reason: format!("the bisect build of {} ended {}", short(&out.candidates[i].commit), s.as_str()),
        },
        Decision::Next(i) => match &out.candidates[i].spec {
            Some(s) if !s.bisect => State::GaveUp {
                reason: format!("the recipe at {} opts out of bisecting", short(&out.candidates[i].commit)),
            },
            Some(_) => State::Searching { next: out.candidates[i].commit.clone() },
            None => State::GaveUp {
                reason: format!("the recipe at {} has no builder {:?}", short(&out.candidates[i].commit), r.builder),
            },
        },
    };
    Some(out)
}

#[cfg(test)]
mod tests;
