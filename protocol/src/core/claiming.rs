//! Claiming: whether this node may claim now (the gate), what to claim
//! (`scheduler::plan_claims`), and a claim made: the build ordered, or,
//! for a job whose dependency failed, the skip published (`depends.rs`).

use super::builds::give_up_deadline;
use super::io::{BuildOrder, Event, Output};
use super::scheduler::{plan_claims, Pace};
use super::timer::Timer;
use super::NodeCore;
use crate::ids::Hash32;
use crate::store::Store;
use crate::wire::{self, Gossip};
use crate::Millis;

impl<S: Store> NodeCore<S> {
    /// May this node claim at all now? Not while warming up, catching up,
    /// or with every slot taken.
    pub(super) fn claim_gate(&self, now: Millis) -> bool {
        // A node still catching up history would take old jobs whose
        // results it has not fetched yet for jobs waiting to be built.
        if now < self.started_ms + self.cfg.warmup_ms() || !self.caught_up(now) {
            return false;
        }
        // Storage that cannot keep a result: build nothing new for a while.
        if self.health.claims_paused_until().is_some_and(|until| now < until) {
            return false;
        }
        // A busy node leaves waiting jobs to the next free one.
        self.builds.free_slots(self.cfg.executors) > 0
            || (!self.cfg.notifiers.is_empty() && self.builds.free_notice_slots() > 0)
    }

    pub(super) fn consider_claims(&mut self, now: Millis) {
        // Leases of others' claims run out on their own clock.
        let mut next_due = now + self.heartbeat_interval();
        if let Some(t) = self.jobs.next_foreign_expiry(self.me) {
            next_due = next_due.min(t);
        }
        if now < self.started_ms + self.cfg.warmup_ms() {
            next_due = next_due.min(self.started_ms + self.cfg.warmup_ms());
        }
        if let Some(until) = self.health.claims_paused_until().filter(|u| *u > now) {
            next_due = next_due.min(until);
        }
        if !self.claim_gate(now) {
            self.timers.set(Timer::Claims, next_due);
            return;
        }
        let pace = Pace {
            stagger_ms: self.cfg.claim_stagger_ms,
            labels: self.cfg.labels.clone(),
            executors: self.cfg.executors,
            repos: self.cfg.repos.clone(),
            waiting_on_dependencies: self.waiting_on_dependencies(),
        };
        let plan = plan_claims(now, self.me, &pace, &mut self.jobs, &mut self.members, &self.builds, next_due);
        for id in plan.claim {
            self.claim(now, id);
        }
        self.timers.set(Timer::Claims, plan.next_due);
    }

    fn claim(&mut self, now: Millis, id: Hash32) {
        let Some(attempt) = self.jobs.claim_own(now, self.me, &id, self.cfg.lease_ms) else { return };
        if self.skip_if_dependency_failed(now, id, attempt) {
            return;
        }
        let Some(j) = self.jobs.get(&id) else { return };
        let order = BuildOrder {
            job: id,
            attempt,
            repo: j.repo.clone(),
            branch: j.branch.clone(),
            commit: j.commit.clone(),
            builder: j.spec.builder.clone(),
            announced: j.spec.clone(),
            patch: j.patch.and_then(|p| Some((p, self.store.record(&j.change)?.signer))),
            notice: j.notice.clone(),
        };
        let give_up_at = give_up_deadline(now, &order.announced.steps, self.cfg.build_grace_ms);
        self.builds.start(id, attempt, now, give_up_at, order.notice.is_some());
        self.timers.set_earlier(Timer::GiveUp, give_up_at);
        self.timers.set_earlier(Timer::Renew, now + (self.cfg.lease_ms / 3).max(100));
        self.save_own_claims(now);
        self.broadcast(&Gossip::Claim(wire::Claim { job: id, attempt, lease_ms: self.cfg.lease_ms, sent_ms: now }));
        self.emit(Event::Claimed { job: id, attempt, by: self.me });
        self.emit(Event::BuildStarted { job: id, attempt });
        self.out.push_back(Output::StartBuild(order));
        crate::invariant!(
            self.builds.builds_running() <= self.cfg.executors,
            "a node never runs more builds than it has executors"
        );
    }
}
