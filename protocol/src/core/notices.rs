//! Notice jobs: a node with notifiers derives, from each fresh result, the
//! notice job of every notifier that wants it; the jobs are claimed like
//! builds among the nodes labelled with that notifier (leases, failover
//! and all), and the claimant's `Notice` record settles them everywhere.
//! Nodes without notifiers derive nothing and send nothing.

use super::io::{Event, NoticeOutcome};
use super::jobs::{JobView, NoticeRef};
use super::records::{clip, settled_in};
use super::NodeCore;
use crate::ids::Hash32;
use crate::notify::{classify, notice_spec, NoticeEvent, NOTICE_FRESH_MS};
use crate::record::{self, Body, BuildResult, Notice};
use crate::store::Store;
use crate::Millis;

impl<S: Store> NodeCore<S> {
    /// A result stored: the notice jobs of this node's notifiers for it.
    pub(super) fn derive_notices(&mut self, now: Millis, result: Hash32, r: &BuildResult) {
        if self.cfg.notifiers.is_empty() || now.saturating_sub(r.ended_ms) > NOTICE_FRESH_MS {
            return;
        }
        let notifiers = self.cfg.notifiers.clone();
        for n in &notifiers {
            let spec = notice_spec(&n.name, &result);
            if self.jobs.get(&spec.id).is_some() || settled_in(&self.store, &spec.id) {
                continue;
            }
            let Some(event) = classify(&self.store, r, &n.on) else { continue };
            // A failure over several commits names its culprit once the
            // bisection found it: the notice waits for that, within a bound.
            let searching = event == NoticeEvent::Failure && n.bisect_wait_ms > 0 && bisecting(&self.store, r);
            let not_before = if searching { now.saturating_add(n.bisect_wait_ms) } else { now };
            let view = JobView {
                repo: r.repo.clone(),
                branch: r.branch.clone(),
                commit: r.commit.clone(),
                change: result,
                attempt: 0,
                opened_ms: now,
                claim: None,
                lost: vec![],
                seen_ms: now,
                not_before,
                superseded_by: None,
                cancelled: None,
                commit_time: 0,
                forced: false,
                patch: None,
                firing_ms: None,
                notice: Some(NoticeRef { notifier: n.name.clone(), event, result }),
                bisect: None,
                free_sig: 0,
                free_since: now,
                spec,
            };
            if let Some((by, claim, at)) = self.jobs.add_notice(view) {
                let why = self.jobs.get(&claim.job).and_then(|j| self.ineligible(&by, &j.spec));
                let outcome = match why {
                    Some(why) => super::ClaimOutcome::Refused { job: claim.job, by, why },
                    None => self.jobs.take_claim(at, by, claim, self.claim_rules()),
                };
                self.settle(now, outcome);
            }
            self.reconsider(now);
        }
    }

    /// A result stored: the notices waiting for a bisection that has
    /// ended now (found, or given up) may go at once.
    pub(super) fn wake_notices(&mut self, now: Millis) {
        let waiting: Vec<(Hash32, Hash32)> = self
            .jobs
            .open
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.not_before > now)
            .filter_map(|j| Some((j.spec.id, j.notice.as_ref()?.result)))
            .collect();
        for (job, result) in waiting {
            let ended = match self.store.record(&result).as_deref().map(|r| &r.body) {
                Some(Body::Result(r)) => !bisecting(&self.store, r),
                _ => true,
            };
            if ended {
                if let Some(j) = self.jobs.jobs.get_mut(&job) {
                    j.not_before = now;
                }
                self.reconsider(now);
            }
        }
    }

    /// A notice job of this node's ended: its record settles it for every
    /// node, sent or not (a notifier that failed every try says why).
    pub(super) fn on_notice_finished(&mut self, now: Millis, o: NoticeOutcome) {
        let Some(still_ours) = self.end_attempt(now, &o.job, o.attempt) else { return };
        let Some(notice) = self.jobs.get(&o.job).and_then(|j| j.notice.clone()) else { return };
        // Sent while another node took the job over: still recorded, so
        // that the other stops rather than send it again. Not sent, and no
        // longer ours: the holder's try must not be cut short.
        if !o.delivered && !still_ours {
            return;
        }
        let body = Body::Notice(Notice {
            job: o.job,
            notifier: notice.notifier,
            result: notice.result,
            event: notice.event,
            sent_ms: now,
            delivered: o.delivered,
            tries: o.tries,
            error: o.error.map(|e| clip(&e, crate::notify::MAX_ERROR)),
            node_name: self.cfg.name.clone(),
        });
        match self.publish(now, &body) {
            Ok(rec) => self.emit(Event::NoticePublished { job: o.job, delivered: o.delivered, record: rec.id }),
            Err(e) => self.give_back(now, o.job, o.attempt, format!("its notice could not be stored: {e}")),
        }
    }

    /// A notice stored, ours or a peer's: the job is done everywhere.
    pub(super) fn apply_notice(&mut self, now: Millis, signer: libp2p_identity::PeerId, n: &Notice) {
        let lost = self.jobs.settle(&n.job);
        self.keep_lost(now, &n.job, &lost);
        if signer != self.me {
            if let Some(attempt) = self.stop_own_build(now, &n.job) {
                self.out.push_back(super::io::Output::CancelBuild { job: n.job, attempt });
            }
        }
    }

    /// The notices recorded about a result, oldest first.
    pub fn notices_of(&self, result: &Hash32) -> Vec<(libp2p_identity::PeerId, Notice)> {
        let mut out: Vec<(Millis, Hash32, libp2p_identity::PeerId, Notice)> = self
            .store
            .lookup(crate::store::Lookup::ResultNotice, result, 64)
            .iter()
            .filter_map(|id| {
                let rec = record::decode_stored(&self.store.get_record(id)?).ok()?;
                match rec.body {
                    Body::Notice(n) => Some((n.sent_ms, rec.id, rec.signer, n)),
                    _ => None,
                }
            })
            .collect();
        out.sort_by_key(|(t, id, _, _)| (*t, *id));
        out.into_iter().map(|(_, _, s, n)| (s, n)).collect()
    }
}

/// A search for this failure's first failing commit is under way.
fn bisecting<S: Store>(store: &S, r: &BuildResult) -> bool {
    crate::bisect::bisection(store, r).is_some_and(|b| matches!(b.state, crate::bisect::State::Searching { .. }))
}
