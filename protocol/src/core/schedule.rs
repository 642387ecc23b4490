//! Builders' `schedule`: the cluster builds a branch head once per firing,
//! decided without a master.
//!
//! Every node keeps, per branch, the latest change it holds (announced
//! time, then id) with the scheduled builders of its recipe. At a firing
//! time T of one of them, a node may announce a scheduled change: the head
//! it holds, with the jobs of the builders firing at T, each named by
//! (repo, branch, builder, T) only. Nodes that hold different heads so make
//! the same job, and claims make it one build. Not every node announces:
//! the live nodes rank themselves for the job (rendezvous, as claims do);
//! the first announces at T, the next a stagger later if nothing arrived
//! by then, and so on. Only the latest firing is ever announced, and only
//! within `schedule_catchup_ms` of it: a cluster that was down misses
//! firings, at most the last one is built late.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rank::score;
use super::timer::Timer;
use super::NodeCore;
use crate::ids::Hash32;
use crate::recipe::schedule::{is_firing, latest_firing, next_firing, scheduled_job_id, MAX_EARLY_MS};
use crate::record::{Body, Change};
use crate::store::Store;
use crate::Millis;

/// Where the heads are kept between runs (a checkpoint start replays only
/// the records after it).
const HEADS_KEY: &str = "schedule/heads";
/// Branches with a schedule followed, at most.
const MAX_HEADS: usize = 10_000;
/// Heads are looked at again at least this often.
const LOOK_EVERY_MS: Millis = 60_000;

/// A branch's latest change, and its scheduled builders (name, schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub announced_ms: Millis,
    pub change: Hash32,
    pub builders: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Schedules {
    /// By (repo, branch); only branches that had scheduled builders.
    heads: BTreeMap<(String, String), Head>,
}

impl Schedules {
    /// A change heard: it becomes its branch's head if it is the latest.
    /// A time in the future counts as now, so a peer's clock cannot pin a
    /// head. True when the heads changed.
    pub fn note(&mut self, now: Millis, c: &Change, id: Hash32) -> bool {
        if c.force.is_some() || c.firing_ms.is_some() {
            return false;
        }
        let key = (c.repo.clone(), c.branch.clone());
        let at = c.announced_ms.min(now);
        let builders: Vec<(String, String)> =
            c.schedules.iter().filter_map(|j| Some((j.builder.clone(), j.schedule.clone()?))).collect();
        match self.heads.get(&key) {
            Some(h) if (h.announced_ms, h.change) >= (at, id) => return false,
            // A branch that never had a schedule is not followed.
            None if builders.is_empty() || self.heads.len() >= MAX_HEADS => return false,
            _ => {}
        }
        self.heads.insert(key, Head { announced_ms: at, change: id, builders });
        true
    }

    pub fn head(&self, repo: &str, branch: &str) -> Option<&Head> {
        self.heads.get(&(repo.to_string(), branch.to_string()))
    }

    fn encode(&self) -> Vec<u8> {
        crate::codec::encode(&self.heads.iter().collect::<Vec<_>>())
    }

    fn decode(bytes: &[u8]) -> Schedules {
        let v: Vec<((String, String), Head)> = crate::codec::decode(bytes, 16 << 20).unwrap_or_default();
        Schedules { heads: v.into_iter().take(MAX_HEADS).collect() }
    }
}

impl<S: Store> NodeCore<S> {
    pub(super) fn load_schedules(&mut self) {
        if let Some(b) = self.store.get_state(HEADS_KEY) {
            self.schedules = Schedules::decode(&b);
        }
    }

    /// A change stored: maybe a new head to fire from.
    pub(super) fn note_schedules(&mut self, now: Millis, id: Hash32, c: &Change) {
        if !self.schedules.note(now, c, id) {
            return;
        }
        if let Err(e) = self.store.put_state(HEADS_KEY, &self.schedules.encode()) {
            self.storage_failed(now, &e.to_string());
        }
        self.timers.set_earlier(Timer::Schedule, now);
    }

    /// Why a scheduled change from a peer is refused: a firing in the
    /// future, or scheduled builders that are not the commit's own (when
    /// this node holds the commit's change).
    pub(super) fn bad_firing(&self, now: Millis, c: &Change) -> Option<String> {
        let at = c.firing_ms?;
        if at > now + MAX_EARLY_MS {
            return Some(format!("a scheduled build for a firing {} s in the future", (at - now) / 1000));
        }
        let own = self.store.change_for_commit(&c.repo, &c.commit).and_then(|id| self.store.record(&id))?;
        let Body::Change(own) = &own.body else { return None };
        // The commit's own scheduled builder, but for the id.
        let differs = c
            .jobs
            .iter()
            .find(|j| !own.schedules.iter().any(|o| crate::recipe::JobSpec { id: o.id, ..(*j).clone() } == *o))?;
        Some(format!(
            "a scheduled build of builder {:?}, which the commit's recipe does not schedule so",
            differs.builder
        ))
    }

    /// The schedule timer: announce the firings that are due and that no
    /// node announced yet, and set when to look again.
    pub(super) fn on_schedule(&mut self, now: Millis) {
        // While catching up, a firing's change may be on its way here.
        if now < self.started_ms + self.cfg.warmup_ms() || !self.caught_up(now) {
            self.timers.set(Timer::Schedule, now + 1_000);
            return;
        }
        let mut next = now + LOOK_EVERY_MS;
        let my_key = self.members.my_key();
        let live: Vec<u64> = self.members.live_keys().collect();
        let mut due: BTreeMap<(String, String, Millis), Vec<String>> = BTreeMap::new();
        for ((repo, branch), head) in &self.schedules.heads {
            for (builder, expr) in &head.builders {
                if let Some(t) = next_firing(expr, now) {
                    next = next.min(t);
                }
                let Some(t) = latest_firing(expr, now) else { continue };
                if now - t > self.cfg.schedule_catchup_ms {
                    continue;
                }
                let id = scheduled_job_id(repo, branch, builder, t);
                if self.jobs.get(&id).is_some() || self.store.change_for_job(&id).is_some() {
                    continue;
                }
                // Rendezvous rank among the live nodes: the first announces
                // at once, each next one a stagger later.
                let mine = score(&id, my_key);
                let ahead = live.iter().filter(|k| score(&id, **k) > mine).count() as u64;
                let at = t + ahead * self.cfg.claim_stagger_ms;
                if now >= at {
                    due.entry((repo.clone(), branch.clone(), t)).or_default().push(builder.clone());
                } else {
                    next = next.min(at);
                }
            }
        }
        for ((repo, branch, t), builders) in due {
            self.announce_firing(now, &repo, &branch, t, &builders);
        }
        self.timers.set(Timer::Schedule, next);
    }

    /// Publishes the scheduled change of one firing: the head this node
    /// holds, with the jobs of `builders`.
    fn announce_firing(&mut self, now: Millis, repo: &str, branch: &str, at: Millis, builders: &[String]) {
        let Some(head) = self.schedules.head(repo, branch) else { return };
        let Some(rec) = self.store.record(&head.change) else { return };
        let Body::Change(c) = &rec.body else { return };
        let mut jobs: Vec<_> = c
            .schedules
            .iter()
            .filter(|j| builders.contains(&j.builder) && j.schedule.as_deref().is_some_and(|s| is_firing(s, at)))
            .cloned()
            .collect();
        if jobs.is_empty() {
            return;
        }
        for j in jobs.iter_mut() {
            j.id = scheduled_job_id(repo, branch, &j.builder, at);
        }
        let firing = Change {
            jobs,
            schedules: vec![],
            firing_ms: Some(at),
            announced_ms: now,
            force: None,
            recipe_error: None,
            ..c.clone()
        };
        if self.publish(now, &Body::Change(firing)).is_ok() {
            self.reconsider(now);
        }
    }
}
