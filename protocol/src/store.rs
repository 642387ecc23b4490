//! Storage as the core sees it. `MemStore` here; RocksDB in the node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use crate::ids::Hash32;
use crate::keyspace::{min_bound, Fingerprint, SyncKey};
use crate::record::{Body, VerifiedRecord};

/// Reads the keys of a range, `lo` to `hi` (open when `None`): their count and fingerprint.
pub type RangeScan<'a> = dyn Fn(&SyncKey, Option<&SyncKey>) -> (u64, Fingerprint) + 'a;

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// Lookups by job and by commit, so that what the past holds can stay on
/// disk: each maps a 32-byte key to the ids filed under it. All but
/// `Superseded` are written with the record they come from, in the same
/// durable write (see [`lookups_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Lookup {
    /// Job id → the changes that ask for it (two announcers make two).
    JobChange = 1,
    /// Job id → its results.
    JobResult = 2,
    /// Job id → cancels of it.
    JobCancel = 3,
    /// [`commit_key`] → the changes of that commit (forced ones left out).
    CommitChange = 4,
    /// Job id → the job that took its place on a collapsing builder. The
    /// core derives it and files it; replaying the records derives it again.
    Superseded = 5,
    /// Notice job id → the notices that settled it.
    JobNotice = 6,
    /// Result record id → the notices sent about it.
    ResultNotice = 7,
}

/// The key a commit of a repository is filed under.
pub fn commit_key(repo: &str, commit: &str) -> Hash32 {
    Hash32::of_fields("peerbot.lookup.commit.v1", &[repo.as_bytes(), commit.as_bytes()])
}

/// The lookups a record files itself under.
pub fn lookups_of(rec: &VerifiedRecord) -> Vec<(Lookup, Hash32, Hash32)> {
    match &rec.body {
        Body::Change(c) => {
            let mut v: Vec<_> = c.jobs.iter().map(|j| (Lookup::JobChange, j.id, rec.id)).collect();
            // Forced and scheduled changes are extra builds, not the commit's announcement.
            if c.force.is_none() && c.firing_ms.is_none() {
                v.push((Lookup::CommitChange, commit_key(&c.repo, &c.commit), rec.id));
            }
            v
        }
        Body::Result(r) => vec![(Lookup::JobResult, r.job, rec.id)],
        Body::Cancel(k) => vec![(Lookup::JobCancel, k.job, rec.id)],
        Body::Notice(n) => vec![(Lookup::JobNotice, n.job, rec.id), (Lookup::ResultNotice, n.result, rec.id)],
        Body::Admission(_) | Body::Revocation(_) => vec![],
    }
}

pub trait Store {
    /// Stores a verified record durably; `Ok(false)` if it was already there.
    fn put_record(&mut self, rec: &VerifiedRecord) -> Result<bool, StoreError>;
    /// Stores new verified records in one durable write (they are not
    /// stored yet; the caller checked).
    fn put_records(&mut self, recs: &[VerifiedRecord]) -> Result<(), StoreError> {
        for r in recs {
            self.put_record(r)?;
        }
        Ok(())
    }
    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>>;
    /// A stored record, decoded (a store may keep decoded records, and
    /// share them rather than copy them).
    fn record(&self, id: &Hash32) -> Option<Arc<VerifiedRecord>> {
        crate::record::decode_stored(&self.get_record(id)?).ok().map(Arc::new)
    }
    fn has_record(&self, id: &Hash32) -> bool;
    /// Which of `ids` are stored, in order. A fetched batch asks for all of
    /// its ids at once, which a store on disk answers for less than one
    /// look-up each.
    fn has_records(&self, ids: &[Hash32]) -> Vec<bool> {
        ids.iter().map(|id| self.has_record(id)).collect()
    }
    fn record_count(&self) -> u64;
    /// Keys in `[lo, hi)` in (time, id) order, at most `limit` of them.
    fn keys_in(&self, lo: &SyncKey, hi: Option<&SyncKey>, limit: usize) -> Vec<SyncKey>;
    /// Count and fingerprint of `[lo, hi)`.
    fn summary(&self, lo: &SyncKey, hi: Option<&SyncKey>) -> (u64, Fingerprint) {
        let keys = self.keys_in(lo, hi, usize::MAX);
        let mut fp = Fingerprint::default();
        for k in &keys {
            fp.add(&k.id);
        }
        (keys.len() as u64, fp)
    }
    /// Up to `parts - 1` increasing bounds strictly inside `(lo, hi)` that cut
    /// the range into pieces of similar size (any bounds are correct; even
    /// ones only make reconciliation faster).
    fn split_bounds(&self, lo: &SyncKey, hi: Option<&SyncKey>, parts: usize) -> Vec<SyncKey> {
        split_by_scan(&self.keys_in(lo, hi, usize::MAX), parts)
    }
    /// Calls `f` with the bytes of every stored record (used at start-up).
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8]));
    /// How many records arrived here: the newest one's position in arrival
    /// order, counting from 1 (0 when empty). Positions never change, so a
    /// checkpoint names the records it covers by one number.
    fn arrivals(&self) -> u64;
    /// Up to `limit` records that arrived after position `after`, oldest
    /// first, with their positions.
    fn arrived_after(&self, after: u64, limit: usize) -> Vec<(u64, Hash32)>;

    /// Files `value` under `key` (for lookups the core derives; records
    /// file theirs as they are stored).
    fn put_lookup(&mut self, lookup: Lookup, key: &Hash32, value: &Hash32) -> Result<(), StoreError>;
    /// Up to `limit` ids filed under `key`, in id order.
    fn lookup(&self, lookup: Lookup, key: &Hash32, limit: usize) -> Vec<Hash32>;
    /// Up to `limit` (key, id) pairs whose key starts with `prefix`.
    fn lookup_prefix(&self, lookup: Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)>;

    /// The results of a job, at most 64.
    fn results_for_job(&self, job: &Hash32) -> Vec<Hash32> {
        self.lookup(Lookup::JobResult, job, 64)
    }
    /// A change that asks for the job.
    fn change_for_job(&self, job: &Hash32) -> Option<Hash32> {
        self.lookup(Lookup::JobChange, job, 1).first().copied()
    }
    /// A cancel record of the job.
    fn cancel_for_job(&self, job: &Hash32) -> Option<Hash32> {
        self.lookup(Lookup::JobCancel, job, 1).first().copied()
    }
    /// An unforced change of the commit.
    fn change_for_commit(&self, repo: &str, commit: &str) -> Option<Hash32> {
        self.lookup(Lookup::CommitChange, &commit_key(repo, commit), 1).first().copied()
    }
    fn superseded_by(&self, job: &Hash32) -> Option<Hash32> {
        self.lookup(Lookup::Superseded, job, 1).first().copied()
    }

    fn put_blob(&mut self, hash: &Hash32, bytes: &[u8]) -> Result<(), StoreError>;
    fn get_blob(&self, hash: &Hash32) -> Option<Vec<u8>>;
    fn has_blob(&self, hash: &Hash32) -> bool;
    fn delete_blob(&mut self, hash: &Hash32) -> Result<(), StoreError>;

    /// Small node-local state (own claims, watcher positions).
    fn put_state(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn get_state(&self, key: &str) -> Option<Vec<u8>>;
    fn delete_state(&mut self, key: &str) -> Result<(), StoreError>;
}

/// Record bytes shared by the stores of one process, each distinct record
/// kept once: the simulator's nodes all hold the same records, and without
/// this a cluster of n nodes keeps n copies of its history.
#[derive(Clone, Default)]
pub struct RecordPool(Arc<Mutex<PoolInner>>);

#[derive(Default)]
struct PoolInner {
    live: HashMap<Hash32, Weak<[u8]>>,
    /// Entries whose records every store dropped are swept at this size.
    sweep_at: usize,
}

impl RecordPool {
    fn share(&self, id: &Hash32, bytes: &[u8]) -> Arc<[u8]> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = p.live.get(id).and_then(Weak::upgrade) {
            return b;
        }
        let b: Arc<[u8]> = bytes.into();
        p.live.insert(*id, Arc::downgrade(&b));
        if p.live.len() >= p.sweep_at {
            p.live.retain(|_, w| w.strong_count() > 0);
            p.sweep_at = (p.live.len() * 2).max(1024);
        }
        b
    }
}

#[derive(Default, Clone)]
pub struct MemStore {
    records: HashMap<Hash32, Arc<[u8]>>,
    pool: Option<RecordPool>,
    order: BTreeSet<SyncKey>,
    blobs: HashMap<Hash32, Vec<u8>>,
    state: BTreeMap<String, Vec<u8>>,
    index: BucketIndex,
    lookups: BTreeSet<(Lookup, Hash32, Hash32)>,
    arrived: Vec<Hash32>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// A store whose record bytes are shared through `pool`.
    pub fn with_pool(pool: RecordPool) -> Self {
        MemStore { pool: Some(pool), ..Self::default() }
    }
    pub fn ids(&self) -> BTreeSet<Hash32> {
        self.records.keys().copied().collect()
    }
}

impl Store for MemStore {
    fn put_record(&mut self, rec: &VerifiedRecord) -> Result<bool, StoreError> {
        if self.records.contains_key(&rec.id) {
            return Ok(false);
        }
        let bytes = match &self.pool {
            Some(pool) => pool.share(&rec.id, &rec.bytes),
            None => rec.bytes.as_slice().into(),
        };
        self.records.insert(rec.id, bytes);
        self.arrived.push(rec.id);
        let key = SyncKey { time: rec.time(), id: rec.id };
        self.order.insert(key);
        self.index.add(&key);
        self.lookups.extend(lookups_of(rec));
        Ok(true)
    }
    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>> {
        self.records.get(id).map(|b| b.to_vec())
    }
    fn has_record(&self, id: &Hash32) -> bool {
        self.records.contains_key(id)
    }
    fn record_count(&self) -> u64 {
        self.records.len() as u64
    }
    fn keys_in(&self, lo: &SyncKey, hi: Option<&SyncKey>, limit: usize) -> Vec<SyncKey> {
        let it = self.order.range(*lo..);
        match hi {
            Some(hi) => it.take_while(|k| *k < hi).take(limit).copied().collect(),
            None => it.take(limit).copied().collect(),
        }
    }
    fn summary(&self, lo: &SyncKey, hi: Option<&SyncKey>) -> (u64, Fingerprint) {
        self.index.summary(lo, hi, &|lo, hi| {
            let mut fp = Fingerprint::default();
            let mut n = 0;
            for k in self.order.range(*lo..).take_while(|k| hi.is_none_or(|h| *k < h)) {
                fp.add(&k.id);
                n += 1;
            }
            (n, fp)
        })
    }
    fn split_bounds(&self, lo: &SyncKey, hi: Option<&SyncKey>, parts: usize) -> Vec<SyncKey> {
        let (count, _) = self.summary(lo, hi);
        self.index.split_bounds(lo, hi, parts, count, &|lo, hi| self.keys_in(lo, hi, usize::MAX))
    }
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8])) {
        for k in &self.order {
            if let Some(b) = self.records.get(&k.id) {
                f(b)
            }
        }
    }
    fn arrivals(&self) -> u64 {
        self.arrived.len() as u64
    }
    fn arrived_after(&self, after: u64, limit: usize) -> Vec<(u64, Hash32)> {
        let from = usize::try_from(after).unwrap_or(usize::MAX).min(self.arrived.len());
        self.arrived[from..].iter().take(limit).enumerate().map(|(i, id)| (after + 1 + i as u64, *id)).collect()
    }
    fn put_lookup(&mut self, lookup: Lookup, key: &Hash32, value: &Hash32) -> Result<(), StoreError> {
        self.lookups.insert((lookup, *key, *value));
        Ok(())
    }
    fn lookup(&self, lookup: Lookup, key: &Hash32, limit: usize) -> Vec<Hash32> {
        let from = (lookup, *key, Hash32::ZERO);
        self.lookups.range(from..).take_while(|(l, k, _)| *l == lookup && k == key).take(limit).map(|e| e.2).collect()
    }
    fn lookup_prefix(&self, lookup: Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)> {
        let mut start = Hash32::ZERO;
        let n = prefix.len().min(32);
        start.0[..n].copy_from_slice(&prefix[..n]);
        self.lookups
            .range((lookup, start, Hash32::ZERO)..)
            .take_while(|(l, k, _)| *l == lookup && k.0.starts_with(&prefix[..n]))
            .take(limit)
            .map(|e| (e.1, e.2))
            .collect()
    }
    fn put_blob(&mut self, hash: &Hash32, bytes: &[u8]) -> Result<(), StoreError> {
        self.blobs.insert(*hash, bytes.to_vec());
        Ok(())
    }
    fn get_blob(&self, hash: &Hash32) -> Option<Vec<u8>> {
        self.blobs.get(hash).cloned()
    }
    fn has_blob(&self, hash: &Hash32) -> bool {
        self.blobs.contains_key(hash)
    }
    fn delete_blob(&mut self, hash: &Hash32) -> Result<(), StoreError> {
        self.blobs.remove(hash);
        Ok(())
    }
    fn put_state(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.state.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn get_state(&self, key: &str) -> Option<Vec<u8>> {
        self.state.get(key).cloned()
    }
    fn delete_state(&mut self, key: &str) -> Result<(), StoreError> {
        self.state.remove(key);
        Ok(())
    }
}

/// Cuts a sorted run of keys into `parts` pieces at the shortest bounds.
pub fn split_by_scan(keys: &[SyncKey], parts: usize) -> Vec<SyncKey> {
    let per = keys.len().div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    let mut i = per;
    while i < keys.len() {
        out.push(min_bound(&keys[i - 1], &keys[i]));
        i += per;
    }
    out
}

/// Counts and fingerprints of fixed-width time buckets, kept as records
/// arrive, so that the summary of any range costs two partial bucket scans
/// plus a walk over whole buckets, not a scan of the range.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BucketIndex {
    width: u64,
    buckets: BTreeMap<u64, (u64, Fingerprint)>,
    total: (u64, Fingerprint),
}

/// About 17 minutes of record time per bucket.
pub const BUCKET_WIDTH_MS: u64 = 1 << 20;
/// A range with at most this many records is split by reading its keys.
const SCAN_SPLIT_MAX: u64 = 4096;

impl Default for BucketIndex {
    fn default() -> Self {
        BucketIndex::new(BUCKET_WIDTH_MS)
    }
}

impl BucketIndex {
    pub fn new(width: u64) -> Self {
        BucketIndex { width: width.max(1), buckets: BTreeMap::new(), total: (0, Fingerprint::default()) }
    }

    /// How many keys it summarises.
    pub fn count(&self) -> u64 {
        self.total.0
    }

    pub fn add(&mut self, k: &SyncKey) {
        let b = self.buckets.entry(k.time / self.width).or_insert((0, Fingerprint::default()));
        b.0 += 1;
        b.1.add(&k.id);
        self.total.0 += 1;
        self.total.1.add(&k.id);
    }

    fn start(&self, bucket: u64) -> SyncKey {
        SyncKey { time: bucket.saturating_mul(self.width), id: Hash32::ZERO }
    }

    /// `scan(lo, hi)` summarises a range by reading its keys.
    pub fn summary(&self, lo: &SyncKey, hi: Option<&SyncKey>, scan: &RangeScan<'_>) -> (u64, Fingerprint) {
        if *lo == SyncKey::MIN && hi.is_none() {
            return self.total;
        }
        let first = lo.time / self.width;
        // Whole buckets: those starting after lo and ending at or before hi.
        let whole_from = if *lo == self.start(first) { first } else { first + 1 };
        let whole_to = match hi {
            Some(h) => h.time / self.width, // exclusive; the bucket holding hi is partial
            None => u64::MAX,
        };
        if whole_from >= whole_to {
            return scan(lo, hi);
        }
        let mut n = 0;
        let mut fp = Fingerprint::default();
        let mut add = |(c, f): (u64, Fingerprint)| {
            n += c;
            fp.merge(&f);
        };
        if whole_from > first {
            add(scan(lo, Some(&self.start(whole_from))));
        }
        for (_, (c, f)) in self.buckets.range(whole_from..whole_to) {
            add((*c, *f));
        }
        if let Some(h) = hi {
            if *h != self.start(whole_to) {
                add(scan(&self.start(whole_to), Some(h)));
            }
        }
        (n, fp)
    }

    /// Bounds cutting `[lo, hi)` into about `parts` pieces: at bucket starts
    /// when the range is large, else exactly by its keys.
    pub fn split_bounds(
        &self,
        lo: &SyncKey,
        hi: Option<&SyncKey>,
        parts: usize,
        count: u64,
        keys: &dyn Fn(&SyncKey, Option<&SyncKey>) -> Vec<SyncKey>,
    ) -> Vec<SyncKey> {
        if count <= SCAN_SPLIT_MAX {
            return split_by_scan(&keys(lo, hi), parts);
        }
        let first = lo.time / self.width + 1;
        let last = hi.map(|h| h.time / self.width + 1).unwrap_or(u64::MAX);
        let target = count / parts.max(1) as u64;
        let mut out = Vec::new();
        let mut acc = 0;
        for (b, (c, _)) in self.buckets.range(first.min(last)..last) {
            let bound = self.start(*b);
            if acc >= target && hi.is_none_or(|h| bound < *h) && bound > *lo {
                out.push(bound);
                acc = 0;
            }
            acc += c;
        }
        if out.is_empty() {
            // Everything sits in one bucket: read it.
            return split_by_scan(&keys(lo, hi), parts);
        }
        out
    }
}
