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
    /// Open jobs whose dependencies have not ended (`depends.rs`).
    pub waiting_on_dependencies: std::collections::BTreeSet<Hash32>,
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
    let free_notices = builds.free_notice_slots() as usize;
    let mut candidates: Vec<Hash32> = Vec::new();
    for id in &jobs.open {
        if builds.is_running(id) || pace.waiting_on_dependencies.contains(id) {
            continue;
        }
        let Some(j) = jobs.jobs.get(id) else { continue };
        if j.claim.is_some() || !satisfies(&pace.labels, &j.spec.requires) {
            continue;
        }
        // A notice sends to the notifier's server, it builds nothing: no
        // repository policy, and slots of its own.
        let notice = j.notice.is_some();
        if (!notice && !pace.repos.allows(&j.repo)) || (notice && free_notices == 0) || (!notice && free == 0) {
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
        let window = elig.len();
        // Notices have slots of their own: every node with the notifier
        // ranks as free for them, so all agree on who goes first and two
        // never send at once.
        let notice = j.notice.is_some();
        let pos =
            position_among_free(&id, my_key, elig, |k| if notice { 0 } else { held.get(&k).copied().unwrap_or(0) });
        let Some(j) = jobs.jobs.get_mut(&id) else { continue };
        if j.free_sig != pos.sig {
            j.free_sig = pos.sig;
            j.free_since = now;
        }
        // A freed slot is claimed at once; after a give-up, a little later.
        let at = (opened.max(j.free_since) + pos.ahead * pace.stagger_ms).max(builds.gave_up_ms + pace.stagger_ms / 4);
        if now >= at {
            let notice = j.notice.is_some();
            ready.push(Ready { priority: std::cmp::Reverse(priority), opened, id, first: pos.first, window, notice });
        } else {
            next_due = next_due.min(at);
        }
    }
    ready.sort_by_key(|r| (r.priority, r.opened, r.id));
    let (notices, ready): (Vec<Ready>, Vec<Ready>) = ready.into_iter().partition(|r| r.notice);
    let mut claim = pick(ready, free);
    crate::invariant!(claim.len() <= free, "never more claims than free slots");
    claim.extend(pick(notices, free_notices));
    ClaimPlan { claim, next_due }
}

struct Ready {
    priority: std::cmp::Reverse<i32>,
    opened: Millis,
    id: Hash32,
    first: bool,
    /// How many peers may build the job.
    window: usize,
    notice: bool,
}

/// Takes up to `free` of the ready jobs, given in order (priority, then
/// oldest first). Two nodes that freed a slot at once may each still see
/// the other busy, and both would take the oldest job. So among the oldest
/// few of a priority (as many as there are peers that may build them), a
/// node first takes the jobs it ranks first for among all their eligible
/// peers, busy or not: jobs no other node prefers the same way. The oldest
/// job still goes first to its best-ranked node, or to a node that ranks
/// first for none of the jobs near it.
fn pick(ready: Vec<Ready>, free: usize) -> Vec<Hash32> {
    let mut keyed = Vec::with_capacity(ready.len());
    let mut class_start = 0;
    for (i, r) in ready.iter().enumerate() {
        if ready[class_start].priority != r.priority {
            class_start = i;
        }
        let own_and_near = r.first && i - class_start < r.window;
        keyed.push((r.priority, !own_and_near, i, r.id));
    }
    keyed.sort_unstable();
    keyed.into_iter().take(free).map(|(_, _, _, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(i: u8, priority: i32, first: bool, window: usize) -> Ready {
        Ready {
            priority: std::cmp::Reverse(priority),
            opened: i as Millis,
            id: Hash32::of(&[i]),
            first,
            window,
            notice: false,
        }
    }

    #[test]
    fn a_node_takes_the_jobs_it_ranks_first_for_among_the_oldest_few() {
        let id = |i: u8| Hash32::of(&[i]);
        // Oldest first; this node ranks first for jobs 2 and 4 only, and
        // three peers may build them.
        let r = vec![ready(1, 0, false, 3), ready(2, 0, true, 3), ready(3, 0, false, 3), ready(4, 0, true, 3)];
        assert_eq!(pick(r, 1), vec![id(2)], "its own job near the head before the oldest");
        let r = vec![ready(1, 0, false, 3), ready(2, 0, true, 3), ready(3, 0, false, 3), ready(4, 0, true, 3)];
        assert_eq!(pick(r, 2), vec![id(2), id(1)], "job 4 lies past the window: age decides");
        // None of its own near the head: the oldest.
        let r = vec![ready(1, 0, false, 2), ready(2, 0, false, 2), ready(3, 0, true, 2)];
        assert_eq!(pick(r, 1), vec![id(1)]);
        // Priority first, whoever ranks first; the window counts within a priority.
        let r = vec![ready(1, 5, false, 2), ready(2, 0, false, 2), ready(3, 0, true, 2)];
        assert_eq!(pick(r, 2), vec![id(1), id(3)]);
    }
}
