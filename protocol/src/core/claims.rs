//! Claims and leases on the job table: a claim heard, two claims settled
//! by rank, leases renewed, released, or run out. Each returns what
//! happened; the top level turns that into events and cancelled builds.

use std::collections::HashMap;

use libp2p_identity::PeerId;

use super::jobs::{ClaimView, Jobs, LostAttempt};
use super::rank::claim_winner;
use crate::ids::Hash32;
use crate::wire::{Claim, Lease};
use crate::Millis;

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
    pub fn take_claim(&mut self, now: Millis, from: PeerId, c: Claim, lease_cap: u64) -> ClaimOutcome {
        let lease_ms = c.lease_ms.min(lease_cap);
        let Some(job) = self.jobs.get_mut(&c.job) else {
            self.keep_early_claim(now, from, c);
            return ClaimOutcome::Early;
        };
        if c.attempt < job.attempt {
            return ClaimOutcome::Stale;
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
        let fresh =
            ClaimView { by: from, attempt: c.attempt, claimed_ms: now, lease_until: now + lease_ms, step: None };
        match &mut job.claim {
            None => {
                job.claim = Some(fresh);
                ClaimOutcome::Claimed { job: c.job, attempt: c.attempt, by: from }
            }
            Some(cur) if cur.by == from => {
                cur.lease_until = now + lease_ms;
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
    pub fn renew(&mut self, now: Millis, from: PeerId, leases: Vec<Lease>, lease_ms: u64) -> Vec<ClaimOutcome> {
        let mut settled = Vec::new();
        for l in leases {
            let Some(job) = self.jobs.get_mut(&l.job) else { continue };
            if l.attempt < job.attempt {
                continue;
            }
            match &mut job.claim {
                Some(c) if c.by == from && c.attempt == l.attempt => {
                    c.lease_until = now + lease_ms;
                    c.step = l.step;
                }
                Some(c) if c.attempt == l.attempt || l.attempt > c.attempt => {
                    // Someone else builds what we took for another's (or our
                    // own) claim: settle it as two claims are settled.
                    let claim = Claim { job: l.job, attempt: l.attempt, lease_ms, sent_ms: now };
                    settled.push(self.take_claim(now, from, claim, lease_ms.saturating_mul(4)));
                }
                Some(_) => {}
                None => {
                    // We missed the claim itself; the lease carries it.
                    job.attempt = l.attempt;
                    job.claim = Some(ClaimView {
                        by: from,
                        attempt: l.attempt,
                        claimed_ms: now,
                        lease_until: now + lease_ms,
                        step: l.step,
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
        for id in &self.open {
            if let Some(c) = self.jobs.get(id).and_then(|j| j.claim.as_ref()) {
                if c.by != me && now > c.lease_until {
                    expired.push(Expired { job: *id, attempt: c.attempt, holder: c.by });
                }
            }
        }
        for e in &expired {
            self.reopen(
                now,
                &e.job,
                LostAttempt { attempt: e.attempt, holder: e.holder, reason: "lease expired".into() },
            );
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
            if let Some(c) = self.jobs.get(id).and_then(|j| j.claim.as_ref()) {
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
        j.claim =
            Some(ClaimView { by: me, attempt: j.attempt, claimed_ms: now, lease_until: now + lease_ms, step: None });
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
