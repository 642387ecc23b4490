//! Starting without reading the history. What decides a node's future is
//! small: the changes with a job still open, the admission and revocation
//! records, the recent findings. A checkpoint saves their ids with the
//! store's arrival position at that moment (`NodeCore::checkpoint`): as
//! the node stops, every `CHECKPOINT_EVERY_MS` while records arrive, and
//! after every `CHECKPOINT_EVERY_RECORDS` records. The next start reads
//! the records it names, then applies those that arrived after it, in
//! arrival order: after a clean stop none, after a crash at most what
//! arrived in the last interval. Applying records does not depend on their
//! order (see `replay`), so this ends where a full read would.

use serde::{Deserialize, Serialize};

use super::NodeCore;
use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::record::{self, VerifiedRecord};
use crate::store::{Store, StoreError};
use crate::Millis;

/// The store's state key the checkpoint is saved under.
pub const CHECKPOINT_KEY: &str = "checkpoint";
/// Version 1 had no arrival position; it is read as no checkpoint.
const VERSION: u32 = 2;
/// A checkpoint is saved this often while records arrive, bounding what a
/// start after a crash reads.
pub const CHECKPOINT_EVERY_MS: Millis = 10_000;
/// ...and after this many records, so that a catch-up that is cut short
/// does not read them all again.
pub const CHECKPOINT_EVERY_RECORDS: u64 = 4_096;
/// Records read per store call when applying those after the checkpoint.
const TAIL_CHUNK: usize = 4096;
/// Admission and revocation records a checkpoint lists at most; a cluster
/// with more starts by reading its history.
pub(super) const MAX_TRUST_RECORDS: usize = 1 << 16;
/// Open jobs are bounded by the work waiting, but a checkpoint is refused
/// past this many changes, rather than made huge.
const MAX_OPEN_CHANGES: usize = 1 << 20;
const MAX_CHECKPOINT_BYTES: usize = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    v: u32,
    /// Admission and revocation records, in the order they were applied.
    trust: Vec<Hash32>,
    /// Changes with a job open when the node stopped.
    open: Vec<Hash32>,
    /// Jobs built more than once, and when that was seen.
    findings: Vec<(Millis, Hash32)>,
    /// The store's arrival position when it was saved: what it covers.
    arrivals: u64,
}

/// How the node read its store at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Startup {
    /// From a checkpoint, not the whole history.
    pub from_checkpoint: bool,
    /// Records read and applied.
    pub records_read: u64,
    /// Of those, records that arrived after the checkpoint (a crash, or
    /// another writer, since it was saved).
    pub after_checkpoint: u64,
}

impl<S: Store> NodeCore<S> {
    /// Saves what the next start needs, so that it reads no history. The
    /// core calls it on its own while records arrive; call it as the node
    /// stops, after its last input, so that the next start reads nothing
    /// more.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.trust_records.len() > MAX_TRUST_RECORDS {
            return Err(StoreError("too many admission records for a checkpoint".into()));
        }
        let mut open: Vec<Hash32> =
            self.jobs.open.iter().filter_map(|id| self.jobs.get(id)).map(|j| j.change).collect();
        open.sort_unstable();
        open.dedup();
        if open.len() > MAX_OPEN_CHANGES {
            return Err(StoreError(format!("{} open changes: too many for a checkpoint", open.len())));
        }
        let arrivals = self.store.arrivals();
        let cp = Checkpoint {
            v: VERSION,
            trust: self.trust_records.clone(),
            open,
            findings: self.jobs.findings_seen(),
            arrivals,
        };
        self.store.put_state(CHECKPOINT_KEY, &encode(&cp))?;
        self.checkpointed_at = arrivals;
        Ok(())
    }

    /// How this node read its store at start.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// Records arrived: checkpoint when enough have since the last one.
    pub(super) fn checkpoint_if_many(&mut self) {
        if self.store.arrivals().saturating_sub(self.checkpointed_at) >= CHECKPOINT_EVERY_RECORDS {
            self.checkpoint_now();
        }
    }

    /// The timer: checkpoint if anything arrived since the last one.
    pub(super) fn checkpoint_if_any(&mut self) {
        if self.store.arrivals() > self.checkpointed_at {
            self.checkpoint_now();
        }
    }

    fn checkpoint_now(&mut self) {
        if let Err(e) = self.checkpoint() {
            self.emit(super::Event::StoreFailed { reason: format!("checkpoint: {e}") });
            // Not again before the next interval's worth of records.
            self.checkpointed_at = self.store.arrivals();
        }
    }

    /// Reads the store at start: from the checkpoint and what arrived after
    /// it, or the whole history when there is no usable checkpoint.
    pub(super) fn load(&mut self, now: Millis) {
        let cp = self
            .store
            .get_state(CHECKPOINT_KEY)
            .and_then(|bytes| decode::<Checkpoint>(&bytes, MAX_CHECKPOINT_BYTES).ok())
            // A checkpoint past the store's arrivals describes records the
            // store no longer has (a restored backup): not to be trusted.
            .filter(|c| c.v == VERSION && c.arrivals <= self.store.arrivals());
        match cp {
            Some(cp) if self.resume(now, &cp) => self.apply_arrived_after(now, cp.arrivals),
            _ => {
                self.startup = Startup::default();
                self.replay(now);
            }
        }
        self.checkpointed_at = self.store.arrivals();
        self.replaying = false;
        if self.startup.records_read > 0 && (!self.startup.from_checkpoint || self.startup.after_checkpoint > 0) {
            // So that a second crash does not read all that again.
            self.checkpoint_now();
        }
    }

    fn apply_arrived_after(&mut self, now: Millis, mut after: u64) {
        loop {
            let ids = self.store.arrived_after(after, TAIL_CHUNK);
            let Some(&(last, _)) = ids.last() else { break };
            for (_, id) in ids {
                if let Some(r) = self.store.get_record(&id).and_then(|b| record::decode_stored(&b).ok()) {
                    self.apply(now, &r);
                    self.startup.records_read += 1;
                    self.startup.after_checkpoint += 1;
                }
            }
            after = last;
        }
    }

    /// Applies the records a checkpoint names; false if one is missing
    /// (then the whole history is read after all).
    fn resume(&mut self, now: Millis, cp: &Checkpoint) -> bool {
        let read = |store: &S, id: &Hash32| store.get_record(id).and_then(|b| record::decode_stored(&b).ok());
        let mut changes: Vec<VerifiedRecord> = Vec::with_capacity(cp.open.len());
        for id in &cp.open {
            match read(&self.store, id) {
                Some(r) => changes.push(r),
                None => return false,
            }
        }
        for id in &cp.trust {
            match read(&self.store, id) {
                Some(r) => {
                    self.apply(now, &r);
                    self.startup.records_read += 1;
                }
                None => return false,
            }
        }
        // In the order the whole history would apply them.
        changes.sort_by_key(|r| (r.time(), r.id));
        for r in &changes {
            self.apply(now, r);
        }
        self.startup.records_read += changes.len() as u64;
        self.jobs.restore_findings(&cp.findings);
        self.startup.from_checkpoint = true;
        true
    }
}
