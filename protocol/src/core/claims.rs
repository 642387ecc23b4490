//! Claims and leases on the job table: a claim heard, two claims settled
//! by rank, leases renewed, released, or run out. Each returns what
//! happened; the top level turns that into events and cancelled builds.

use std::collections::HashMap;

use libp2p_identity::PeerId;

use super::builds::give_up_deadline;
use super::jobs::{ClaimView, JobView, Jobs, LostAttempt};
use super::rank::claim_winner;
use crate::ids::Hash32;
use crate::wire::{Claim, Lease};
use crate::Millis;

/// Why an attempt was lost when its claimant kept renewing it past its
/// steps' timeouts and the grace: that claimant may claim the job no more,
/// so that a peer that claims and never builds cannot hold a job for ever.
pub const OVERSTAYED: &str = "renewed past its steps' timeouts: lease expired";
/// Why a restarted node gave up the claims it held when it stopped.
pub const RESTARTED: &str = "claimant restarted";

/// The timings claims are judged by, this node's own.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules {
    pub lease_ms: u64,
    /// What a build may take beyond its steps' timeouts.
    pub grace_ms: u64,
}

impl ClaimRules {
    fn lease_cap(&self) -> u64 {
        self.lease_ms.saturating_mul(4)
    }

    /// A claim is renewed no later than this: its steps' timeouts and the
    /// grace from when it was heard, as its claimant gives it up by then.
    fn renewable_until(&self, steps: &[crate::recipe::StepSpec], claimed_ms: Millis) -> Millis {
        give_up_deadline(claimed_ms, steps, self.grace_ms)
    }
}

/// What a claim heard did to the job table.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The job is settled, or the claim is for an older attempt.
    Stale,
    /// The job is not known yet; the claim waits for it.
    Early,
    /// The job had no claim; now `by` holds it.
    Claimed { job: Hash32, attempt: u32, by: PeerId },
    /// The holder claimed again: its lease is extended.
    Extended,
    /// Two claims for one attempt: the better-ranked one holds it.
    Conflict { job: Hash32, attempt: u32, winner: PeerId, loser: PeerId },
    /// The claim breaks a rule; nothing changed.
    Refused { job: Hash32, by: PeerId, why: &'static str },
}

/// A lease that ran out: the job reopened as the next attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub job: Hash32,
    pub attempt: u32,
    pub holder: PeerId,
}

impl Jobs {
    /// Settles a claim from `from`, whose lease is capped at `lease_cap`.
    /// The caller answers `Stale` for a job already settled, which is not
    /// in the table; any other job not in it is not known yet.
    pub fn take_claim(&mut self, now: Millis, from: PeerId, c: Claim, rules: ClaimRules) -> ClaimOutcome {
        let lease_ms = c.lease_ms.min(rules.lease_cap());
        let Some(job) = self.jobs.get_mut(&c.job) else {
            self.keep_early_claim(now, from, c);
            return ClaimOutcome::Early;
        };
        if c.attempt < job.attempt {
            return ClaimOutcome::Stale;
        }
        if let Some(why) = refusal(job, now, from, c.attempt, rules) {
            return ClaimOutcome::Refused { job: c.job, by: from, why };
        }
        if c.attempt > job.attempt {
            // Someone opened a later attempt: whatever this node took to be
            // held was lost, even if the release or the expiry that opened it
            // has not been seen here.
            if let Some(cur) = job.claim.take() {
                let reason = if now > cur.lease_until {
                    "lease expired".to_string()
                } else {
                    format!("taken over by attempt {}", c.attempt)
                };
                job.lost.push(LostAttempt { attempt: cur.attempt, holder: cur.by, reason });
            }
            job.attempt = c.attempt;
        }
        let renewable_until = job.claim.as_ref().map(|cur| rules.renewable_until(&job.spec.steps, cur.claimed_ms));
        let fresh = ClaimView {
            by: from,
            attempt: c.attempt,
            claimed_ms: now,
            lease_until: now + lease_ms,
            step: None,
            overstayed: false,
        };
        match &mut job.claim {
            None => {
                job.claim = Some(fresh);
                ClaimOutcome::Claimed { job: c.job, attempt: c.attempt, by: from }
            }
            Some(cur) if cur.by == from => {
                if renewable_until.is_some_and(|u| now <= u) {
                    cur.lease_until = now + lease_ms;
                } else {
                    cur.overstayed = true;
                }
                ClaimOutcome::Extended
            }
            Some(cur) => {
                let holder = cur.by;
                let winner = claim_winner(&c.job, holder, from);
                let loser = if winner == from { holder } else { from };
                if winner == from {
                    job.claim = Some(fresh);
                }
                crate::invariant!(
                    job.claim.as_ref().is_some_and(|c| c.by == winner),
                    "after a conflict the winner holds the claim"
                );
                ClaimOutcome::Conflict { job: c.job, attempt: c.attempt, winner, loser }
            }
        }
    }

    /// A claimant's running builds, heard in a heartbeat or a renewal:
    /// extends its leases, learns claims it missed, and settles claims that
    /// collide with the ones this node knew.
    pub fn renew(
        &mut self,
        now: Millis,
        me: PeerId,
        from: PeerId,
        leases: Vec<Lease>,
        rules: ClaimRules,
    ) -> Vec<ClaimOutcome> {
        let mut settled = Vec::new();
        let lease_ms = rules.lease_ms;
        for l in leases {
            let Some(job) = self.jobs.get_mut(&l.job) else { continue };
            if l.attempt < job.attempt {
                settled.extend(restore_missed_claim(job, now, me, from, &l, rules));
                continue;
            }
            let until = job.claim.as_ref().map(|c| rules.renewable_until(&job.spec.steps, c.claimed_ms));
            let refused = refusal(job, now, from, l.attempt, rules).is_some();
            match &mut job.claim {
                Some(c) if c.by == from && c.attempt == l.attempt => {
                    if until.is_some_and(|u| now <= u) {
                        c.lease_until = now + lease_ms;
                    } else {
                        c.overstayed = true;
                    }
                    c.step = l.step;
                }
                Some(c) if c.attempt == l.attempt || l.attempt > c.attempt => {
                    // Someone else builds what we took for another's (or our
                    // own) claim: settle it as two claims are settled.
                    let claim = Claim { job: l.job, attempt: l.attempt, lease_ms, sent_ms: now };
                    settled.push(self.take_claim(now, from, claim, rules));
                }
                Some(_) => {}
                // A lease names a claim this node missed (a restarted node
                // learns what is being built this way); it stands for the
                // claim where a claim would.
                None if refused => {}
                None => {
                    // We missed the claim itself; the lease carries it.
                    job.attempt = l.attempt;
                    job.claim = Some(ClaimView {
                        by: from,
                        attempt: l.attempt,
                        claimed_ms: now,
                        lease_until: now + lease_ms,
                        step: l.step,
                        overstayed: false,
                    });
                }
            }
        }
        settled
    }

    /// The holder gave the attempt up; true when the job reopened.
    pub fn release(&mut self, now: Millis, from: PeerId, job: &Hash32, attempt: u32, reason: &str) -> bool {
        let holds =
            self.jobs.get(job).and_then(|j| j.claim.as_ref()).is_some_and(|c| c.by == from && c.attempt == attempt);
        if !holds {
            return false;
        }
        self.reopen(now, job, LostAttempt { attempt, holder: from, reason: reason.to_string() });
        true
    }

    /// Reopens open jobs whose holder (not `me`) let the lease run out.
    pub fn expire_leases(&mut self, now: Millis, me: PeerId) -> Vec<Expired> {
        let mut expired = Vec::new();
        let mut overstayed = Vec::new();
        for id in &self.open {
            if let Some(c) = self.jobs.get(id).and_then(|j| j.claim.as_ref()) {
                if c.by != me && now > c.lease_until {
                    expired.push(Expired { job: *id, attempt: c.attempt, holder: c.by });
                    overstayed.push(c.overstayed);
                }
            }
        }
        for (e, over) in expired.iter().zip(overstayed) {
            let reason = if over { OVERSTAYED } else { "lease expired" };
            self.reopen(now, &e.job, LostAttempt { attempt: e.attempt, holder: e.holder, reason: reason.into() });
        }
        expired
    }

    /// When the earliest lease held by someone else runs out.
    pub fn next_foreign_expiry(&self, me: PeerId) -> Option<Millis> {
        self.open
            .iter()
            .filter_map(|id| self.jobs.get(id).and_then(|j| j.claim.as_ref()))
            .filter(|c| c.by != me)
            .map(|c| c.lease_until + 1)
            .min()
    }

    /// Claims held on open jobs, by the holder's rendezvous key: how busy
    /// each peer is, as every node can tell from the same claims and results.
    pub fn held_claims(
        &self,
        now: Millis,
        key_of: impl Fn(&PeerId) -> u64,
    ) -> HashMap<u64, u32, rustc_hash::FxBuildHasher> {
        let mut held: HashMap<u64, u32, rustc_hash::FxBuildHasher> = HashMap::default();
        for id in &self.open {
            // Notices take no executors, and nodes without notifiers do not
            // even know of them: counting them would make views differ.
            if let Some(c) = self.jobs.get(id).filter(|j| j.notice.is_none()).and_then(|j| j.claim.as_ref()) {
                if c.lease_until >= now {
                    *held.entry(key_of(&c.by)).or_default() += 1;
                }
            }
        }
        held
    }

    /// Marks this node's own claim on a job: the build it starts now.
    pub fn claim_own(&mut self, now: Millis, me: PeerId, id: &Hash32, lease_ms: u64) -> Option<u32> {
        let j = self.jobs.get_mut(id)?;
        j.claim = Some(ClaimView {
            by: me,
            attempt: j.attempt,
            claimed_ms: now,
            lease_until: now + lease_ms,
            step: None,
            overstayed: false,
        });
        Some(j.attempt)
    }

    /// This node renews its own running builds' leases in its own view.
    pub fn extend_own<'a>(&mut self, now: Millis, me: PeerId, jobs: impl Iterator<Item = &'a Hash32>, lease_ms: u64) {
        for job in jobs {
            if let Some(c) = self.jobs.get_mut(job).and_then(|j| j.claim.as_mut()) {
                if c.by == me {
                    c.lease_until = now + lease_ms;
                }
            }
        }
    }

    /// The step a build of this node's is running, for the API.
    pub fn set_own_step(&mut self, me: PeerId, job: &Hash32, attempt: u32, step: String) {
        if let Some(c) = self.jobs.get_mut(job).and_then(|j| j.claim.as_mut()) {
            if c.by == me && c.attempt == attempt {
                c.step = Some(step);
            }
        }
    }
}

/// Why a claim of `attempt` by `from` may not stand, if it may not: a peer
/// that held an attempt of this job past its timeouts before, or a later attempt while the
/// current claim's lease is far from running out here (an honest claimant
/// of the next attempt saw it run out, or heard it released, moments ago).
/// A restarted node gives up the claims it held when it stopped, and
/// reopens their jobs, before it can hear who else builds them: another
/// node may hold the very attempt it gave up (it won a conflict for it
/// while this node was down). Everyone else refuses a later attempt while
/// that node's lease holds, so its lease for the older attempt stands here
/// too: this node takes that claim back, and gives up a later claim of its
/// own if it made one. Only attempts this node's own restart reopened are
/// taken back, so a lease for an older attempt cannot take a job from
/// anyone else.
fn restore_missed_claim(
    job: &mut JobView,
    now: Millis,
    me: PeerId,
    from: PeerId,
    l: &Lease,
    rules: ClaimRules,
) -> Option<ClaimOutcome> {
    let reopened_by_my_restart = (l.attempt..job.attempt)
        .all(|a| job.lost.iter().any(|x| x.attempt == a && x.holder == me && x.reason == RESTARTED));
    if from == me || !reopened_by_my_restart || job.lost.iter().any(|x| x.holder == from && x.reason == OVERSTAYED) {
        return None;
    }
    let mine = match &job.claim {
        None => false,
        Some(c) if c.by == me => true,
        Some(_) => return None,
    };
    job.attempt = l.attempt;
    job.claim = Some(ClaimView {
        by: from,
        attempt: l.attempt,
        claimed_ms: now,
        lease_until: now + rules.lease_ms,
        step: l.step.clone(),
        overstayed: false,
    });
    let id = job.spec.id;
    Some(if mine {
        ClaimOutcome::Conflict { job: id, attempt: l.attempt, winner: from, loser: me }
    } else {
        ClaimOutcome::Claimed { job: id, attempt: l.attempt, by: from }
    })
}

fn refusal(job: &JobView, now: Millis, from: PeerId, attempt: u32, rules: ClaimRules) -> Option<&'static str> {
    if job.lost.iter().any(|l| l.holder == from && l.reason == OVERSTAYED) {
        return Some("it held an attempt of this job past its steps' timeouts");
    }
    match &job.claim {
        Some(cur) if attempt > job.attempt && cur.by != from && cur.lease_until > now + rules.lease_ms / 2 => {
            Some("a later attempt while the current claim's lease holds")
        }
        _ => None,
    }
}
