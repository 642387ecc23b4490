//! Starting without reading the history. What decides a node's future is
//! small: the changes with a job still open, the admission and revocation
//! records, the recent findings. A node that stops cleanly saves their ids
//! (`NodeCore::checkpoint`); the next start reads those records alone,
//! whatever the history holds. The checkpoint is taken away as the node
//! starts, and again by the first record stored after it was written, so
//! a node that crashed, or whose store another writer changed, reads its
//! whole history as before.

use serde::{Deserialize, Serialize};

use super::NodeCore;
use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::record::{self, VerifiedRecord};
use crate::store::{Store, StoreError};
use crate::Millis;

/// The store's state key the checkpoint is saved under.
pub const CHECKPOINT_KEY: &str = "checkpoint";
const VERSION: u32 = 1;
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
}

/// How the node read its store at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Startup {
    /// From a clean stop's checkpoint, not the whole history.
    pub from_checkpoint: bool,
    /// Records read and applied.
    pub records_read: u64,
}

impl<S: Store> NodeCore<S> {
    /// Saves what the next start needs, so that it reads no history. Call
    /// it as the node stops, after its last input.
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
        let cp =
            Checkpoint { v: VERSION, trust: self.trust_records.clone(), open, findings: self.jobs.findings_seen() };
        self.store.put_state(CHECKPOINT_KEY, &encode(&cp))?;
        self.checkpointed = true;
        Ok(())
    }

    /// How this node read its store at start.
    pub fn startup(&self) -> Startup {
        self.startup
    }

    /// A record was stored after the checkpoint: it no longer says what
    /// the store holds.
    pub(super) fn checkpoint_spoiled(&mut self) {
        if self.checkpointed && self.store.delete_state(CHECKPOINT_KEY).is_ok() {
            self.checkpointed = false;
        }
    }

    /// Reads the store at start: from a checkpoint if a clean stop left
    /// one, otherwise the whole history.
    pub(super) fn load(&mut self, now: Millis) {
        let cp = self.store.get_state(CHECKPOINT_KEY);
        // Taken away first: a crash from here on must not find it again.
        let cp = match cp {
            Some(bytes) if self.store.delete_state(CHECKPOINT_KEY).is_ok() => {
                decode::<Checkpoint>(&bytes, MAX_CHECKPOINT_BYTES).ok().filter(|c| c.v == VERSION)
            }
            _ => None,
        };
        match cp {
            Some(cp) if self.resume(now, &cp) => {}
            _ => self.replay(now),
        }
        self.replaying = false;
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
