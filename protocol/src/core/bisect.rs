//! Who announces a bisection's next step (`crate::bisect` decides which
//! step), without a master and, when nothing fails, without duplicates.
//!
//! When a result is stored that starts a search (an ordinary failure
//! after a pass, over several commits) or advances one (a bisect build's
//! result), the node that signed that result announces the next step at
//! once. Every other live node waits its turn: the rendezvous rank of the
//! step's job among the live nodes, one claim stagger per node ahead of
//! it, plus one for the signer; at its turn it announces the step unless
//! its change has arrived. Two announcements of one step make the same
//! job (its nonce is derived), so a duplicate costs a record, not a
//! build. Only results that ended within `FRESH_MS` and that arrive
//! while this node is caught up count: a node replaying or fetching old
//! history starts no old searches. The waiting turns are not kept across
//! a restart; the other nodes' turns cover for them.

use std::collections::BTreeMap;

use libp2p_identity::PeerId;

use super::rank::score;
use super::timer::Timer;
use super::NodeCore;
use crate::bisect::{bisection, first_result, origin_of};
use crate::ids::Hash32;
use crate::record::{Body, BuildResult, Status};
use crate::store::Store;
use crate::Millis;

/// A result that ended longer ago than this starts or advances nothing.
pub const FRESH_MS: Millis = 30 * 60 * 1000;
/// Steps waited for at most; more (a flood of failures) are dropped.
const MAX_WAITING: usize = 1024;

/// Steps this node announces at their turn unless someone did: by the
/// step's job, its turn and the failing job searched.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    due: BTreeMap<Hash32, (Millis, Hash32)>,
}

impl Turns {
    fn next(&self) -> Option<Millis> {
        self.due.values().map(|(at, _)| *at).min()
    }
}

impl<S: Store> NodeCore<S> {
    /// A result stored: if it starts or advances a search, take a turn to
    /// announce the next step.
    pub(super) fn note_bisect(&mut self, now: Millis, signer: PeerId, r: &BuildResult) {
        let ordinary = r.job == crate::recipe::job_id(&r.repo, &r.commit, &r.builder);
        if self.replaying || (ordinary && r.status != Status::Failure) || r.ended_ms.saturating_add(FRESH_MS) < now {
            return;
        }
        if !self.caught_up(now) || self.turns.due.len() >= MAX_WAITING {
            return;
        }
        let Some(origin) = origin_of(&self.store, r) else { return };
        let Some(b) = bisection(&self.store, &origin) else { return };
        let Some((_, job)) = b.next_step() else { return };
        if self.store.change_for_job(&job).is_some() || self.turns.due.contains_key(&job) {
            return;
        }
        let at = if signer == self.me {
            now
        } else {
            let mine = score(&job, self.members.my_key());
            let ahead = self.members.live_keys().filter(|k| score(&job, *k) > mine).count() as u64;
            now + (1 + ahead) * self.cfg.claim_stagger_ms
        };
        self.turns.due.insert(job, (at, b.origin));
        self.timers.set_earlier(Timer::Bisect, at);
    }

    /// The bisect timer: announce the steps whose turn came and whose
    /// change has not arrived.
    pub(super) fn on_bisect(&mut self, now: Millis) {
        let due: Vec<(Hash32, Hash32)> =
            self.turns.due.iter().filter(|(_, (at, _))| *at <= now).map(|(job, (_, origin))| (*job, *origin)).collect();
        if !due.is_empty() && !self.caught_up(now) {
            // The step's change may be on its way here.
            self.timers.set(Timer::Bisect, now + 1_000);
            return;
        }
        for (job, origin) in due {
            self.turns.due.remove(&job);
            if self.store.change_for_job(&job).is_some() {
                continue;
            }
            let Some(change) = self.step_change_of(now, &origin) else { continue };
            if change.jobs.first().map(|j| j.id) == Some(job) && self.publish(now, &Body::Change(change)).is_ok() {
                self.reconsider(now);
            }
        }
        self.timers.set_or_stop(Timer::Bisect, self.turns.next());
    }

    /// The change of the next step of the search of the failing job
    /// `origin`, as the store holds it now.
    fn step_change_of(&self, now: Millis, origin: &Hash32) -> Option<crate::record::Change> {
        let r = first_result(&self.store, origin)?;
        bisection(&self.store, &r)?.step_change(&self.store, now)
    }
}
