//! Decoded records and lookups kept in memory in front of RocksDB: a page
//! of the API reads the same few of them many times over (each job shown
//! reads its change, its results and about ten lookups; each build shown
//! reads its commit's change for blame), and a dashboard asks for the same
//! newest pages again and again. A hit costs a hash probe where a miss
//! costs a RocksDB iterator or point read and a CBOR decode.
//!
//! Records never change once stored, so they are never invalidated. A
//! lookup changes when an id is filed under its key: the writer drops the
//! cached entry after its write lands, and a read that raced with it does
//! not put back what it read (see `generation`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::VerifiedRecord;
use peerbot_protocol::store::Lookup;

/// Megabytes of the cache (`--read-cache-mb`); 0 keeps nothing.
static READ_CACHE_MB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(32);

pub fn set_read_cache_mb(mb: usize) {
    READ_CACHE_MB.store(mb, std::sync::atomic::Ordering::Relaxed);
}

/// A lookup is read this far even when fewer ids are asked for, so that
/// one entry answers every caller (they ask for 1 or 64): reading a key's
/// only id costs the same either way.
pub(super) const LOOKUP_READ: usize = 64;

/// Two generations of entries, each up to half the budget: hits move an
/// entry to the young one, and when that is full the old one is dropped
/// whole. Entries used since the last turn survive it, so this keeps
/// about what an LRU would, with no list to maintain.
struct Generations<K, V> {
    young: HashMap<K, (V, usize)>,
    old: HashMap<K, (V, usize)>,
    young_cost: usize,
    half: usize,
}

impl<K: Hash + Eq, V: Clone> Generations<K, V> {
    fn new(budget: usize) -> Self {
        Generations { young: HashMap::new(), old: HashMap::new(), young_cost: 0, half: budget / 2 }
    }

    fn get(&mut self, k: &K) -> Option<V> {
        if let Some((v, _)) = self.young.get(k) {
            return Some(v.clone());
        }
        let (k2, (v, cost)) = self.old.remove_entry(k)?;
        self.put(k2, v.clone(), cost);
        Some(v)
    }

    fn put(&mut self, k: K, v: V, cost: usize) {
        if cost > self.half {
            return;
        }
        if self.young_cost + cost > self.half {
            self.old = std::mem::take(&mut self.young);
            self.young_cost = 0;
        }
        if let Some((_, was)) = self.young.insert(k, (v, cost)) {
            self.young_cost -= was;
        }
        self.young_cost += cost;
    }

    fn remove(&mut self, k: &K) {
        if let Some((_, cost)) = self.young.remove(k) {
            self.young_cost -= cost;
        }
        self.old.remove(k);
    }
}

/// The ids filed under one key, the first `LOOKUP_READ` at most.
pub(super) type Filed = Arc<[Hash32]>;

struct Inner {
    records: Generations<Hash32, Arc<VerifiedRecord>>,
    lookups: Generations<(Lookup, Hash32), Filed>,
    /// Counts the lookup invalidations: a read that began before one may
    /// have read the database before that write, so it is not kept.
    generation: u64,
}

pub(super) struct ReadCache {
    inner: Option<Mutex<Inner>>,
}

impl ReadCache {
    /// Sized by `--read-cache-mb`: three quarters for records, the rest
    /// for lookups.
    pub fn configured() -> Self {
        Self::with_budget(READ_CACHE_MB.load(std::sync::atomic::Ordering::Relaxed) << 20)
    }

    pub fn with_budget(bytes: usize) -> Self {
        let inner = (bytes > 0).then(|| {
            Mutex::new(Inner {
                records: Generations::new(bytes / 4 * 3),
                lookups: Generations::new(bytes / 4),
                generation: 0,
            })
        });
        ReadCache { inner }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        Some(self.inner.as_ref()?.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn record(&self, id: &Hash32, read: impl FnOnce() -> Option<VerifiedRecord>) -> Option<Arc<VerifiedRecord>> {
        self.record_if(id, read, |_| true)
    }

    /// A record read on a miss is kept only if `keep` says so: a filtered
    /// scan past many records that do not match must not push out those
    /// that are read again and again.
    pub fn record_if(
        &self,
        id: &Hash32,
        read: impl FnOnce() -> Option<VerifiedRecord>,
        keep: impl FnOnce(&VerifiedRecord) -> bool,
    ) -> Option<Arc<VerifiedRecord>> {
        if let Some(hit) = self.lock().and_then(|mut c| c.records.get(id)) {
            return Some(hit);
        }
        let rec = Arc::new(read()?);
        if !keep(&rec) {
            return Some(rec);
        }
        if let Some(mut c) = self.lock() {
            // The decoded body takes about as much again as the bytes.
            let cost = 3 * rec.bytes.len() + 256;
            c.records.put(rec.id, rec.clone(), cost);
        }
        Some(rec)
    }

    /// The ids filed under `key`, read with `read(LOOKUP_READ)` on a miss.
    pub fn lookup(&self, l: Lookup, key: &Hash32, read: impl FnOnce(usize) -> Vec<Hash32>) -> Filed {
        let started = match self.lock() {
            Some(mut c) => match c.lookups.get(&(l, *key)) {
                Some(hit) => return hit,
                None => Some(c.generation),
            },
            None => None,
        };
        let filed: Filed = read(LOOKUP_READ).into();
        if let (Some(g), Some(mut c)) = (started, self.lock()) {
            if c.generation == g {
                let cost = 96 + 32 * filed.len();
                c.lookups.put((l, *key), filed.clone(), cost);
            }
        }
        filed
    }

    /// Call after a write that filed ids under these keys has landed.
    pub fn filed(&self, keys: impl IntoIterator<Item = (Lookup, Hash32)>) {
        if let Some(mut c) = self.lock() {
            c.generation += 1;
            for k in keys {
                c.lookups.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_stay_within_the_budget_and_keep_what_is_used() {
        let mut g: Generations<u32, u32> = Generations::new(1000);
        for i in 0..10_000 {
            g.put(i, i, 10);
            // Entry 0 is asked for all along: it is never dropped.
            assert_eq!(g.get(&0), Some(0));
            assert!(g.young_cost <= 500);
            assert!(g.young.len() + g.old.len() <= 101);
        }
        assert_eq!(g.get(&1), None, "long unused");
        assert_eq!(g.get(&9_999), Some(9_999));
        g.put(7, 7, 501);
        assert_eq!(g.get(&7), None, "larger than a generation: not kept");
        g.remove(&0);
        assert_eq!(g.get(&0), None);
    }

    #[test]
    fn a_lookup_read_before_an_invalidation_is_not_kept() {
        let c = ReadCache::with_budget(1 << 20);
        let key = Hash32([1; 32]);
        let old = c.lookup(Lookup::JobResult, &key, |_| {
            // A write lands while this read is under way.
            c.filed([(Lookup::JobResult, key)]);
            vec![]
        });
        assert!(old.is_empty());
        let new = c.lookup(Lookup::JobResult, &key, |_| vec![Hash32([2; 32])]);
        assert_eq!(&*new, &[Hash32([2; 32])]);
        let hit = c.lookup(Lookup::JobResult, &key, |_| panic!("cached"));
        assert_eq!(&*hit, &[Hash32([2; 32])]);
        c.filed([(Lookup::JobResult, key)]);
        let again = c.lookup(Lookup::JobResult, &key, |_| vec![]);
        assert!(again.is_empty(), "dropped by the write");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let c = ReadCache::with_budget(0);
        let key = Hash32([1; 32]);
        c.lookup(Lookup::JobChange, &key, |_| vec![key]);
        assert!(c.lookup(Lookup::JobChange, &key, |_| vec![]).is_empty());
    }
}
