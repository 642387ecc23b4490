//! Which waiting jobs this node claims now. Every eligible node ranks the
//! same peers the same way; the node at rank r waits r staggers, counted
//! from when the job opened or the set of free peers last changed. A node
//! claims only jobs whose labels it has and whose repository its policy
//! allows; the others still count it among the eligible peers, so a job it
//! refuses waits a stagger longer for the next one.

use libp2p_identity::PeerId;

use super::builds::OwnBuilds;
use super::jobs::Jobs;
use super::members::Membership;
use super::rank::position_among_free;
use crate::ids::Hash32;
use crate::labels::satisfies;
use crate::repos::RepoPolicy;
use crate::Millis;

/// The jobs to claim now, best first, and when to look again.
pub struct ClaimPlan {
    pub claim: Vec<Hash32>,
    pub next_due: Millis,
}

pub struct Pace {
    pub stagger_ms: u64,
    pub labels: Vec<String>,
    pub executors: u32,
    /// This node's policy: jobs of repositories it refuses are left to the
    /// nodes that allow them.
    pub repos: RepoPolicy,
}

/// Plans this node's claims among the open jobs it can build.
pub fn plan_claims(
    now: Millis,
    me: PeerId,
    pace: &Pace,
    jobs: &mut Jobs,
    members: &mut Membership,
    builds: &OwnBuilds,
    mut next_due: Millis,
) -> ClaimPlan {
    let free = builds.free_slots(pace.executors) as usize;
    let mut candidates: Vec<Hash32> = Vec::new();
    for id in &jobs.open {
        if builds.is_running(id) {
            continue;
        }
        let Some(j) = jobs.jobs.get(id) else { continue };
        if j.claim.is_some() || !satisfies(&pace.labels, &j.spec.requires) || !pace.repos.allows(&j.repo) {
            continue;
        }
        if now < j.not_before {
            next_due = next_due.min(j.not_before);
            continue;
        }
        candidates.push(*id);
    }
    if candidates.is_empty() {
        return ClaimPlan { claim: vec![], next_due };
    }
    // Rank among the eligible peers that have a free slot. When that set
    // changes, the job's stagger starts again from that moment, so a job
    // that waited for capacity is not grabbed by all free nodes at once.
    let my_key = members.my_key();
    let held = jobs.held_claims(now, |p| if *p == me { my_key } else { members.key_of(p).unwrap_or(0) });
    let mut ready = Vec::new();
    for id in candidates {
        let j = &jobs.jobs[&id];
        let (opened, priority) = (j.opened_ms.max(j.not_before), j.spec.priority);
        let requires = j.spec.requires.clone();
        let elig = members.eligible_keys(&requires);
        let (ahead, sig) = position_among_free(&id, my_key, elig, |k| held.get(&k).copied().unwrap_or(0));
        let Some(j) = jobs.jobs.get_mut(&id) else { continue };
        if j.free_sig != sig {
            j.free_sig = sig;
            j.free_since = now;
        }
        let at = (opened.max(j.free_since) + ahead * pace.stagger_ms).max(builds.freed_ms + pace.stagger_ms / 4);
        if now >= at {
            ready.push((std::cmp::Reverse(priority), opened, id));
        } else {
            next_due = next_due.min(at);
        }
    }
    ready.sort();
    let claim: Vec<Hash32> = ready.into_iter().take(free).map(|(_, _, id)| id).collect();
    crate::invariant!(claim.len() <= free, "never more claims than free slots");
    ClaimPlan { claim, next_due }
}
