//! Storage as the core sees it. `MemStore` here; RocksDB in the node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ids::Hash32;
use crate::record::VerifiedRecord;
use crate::sync::{Fingerprint, SyncKey};

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

pub trait Store {
    /// Stores a verified record durably; `Ok(false)` if it was already there.
    fn put_record(&mut self, rec: &VerifiedRecord) -> Result<bool, StoreError>;
    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>>;
    fn has_record(&self, id: &Hash32) -> bool;
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
    /// Calls `f` with the bytes of every stored record (used at start-up).
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8]));

    fn put_blob(&mut self, hash: &Hash32, bytes: &[u8]) -> Result<(), StoreError>;
    fn get_blob(&self, hash: &Hash32) -> Option<Vec<u8>>;
    fn has_blob(&self, hash: &Hash32) -> bool;

    /// Small node-local state (own claims, watcher positions).
    fn put_state(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn get_state(&self, key: &str) -> Option<Vec<u8>>;
    fn delete_state(&mut self, key: &str) -> Result<(), StoreError>;
}

#[derive(Default, Clone)]
pub struct MemStore {
    records: HashMap<Hash32, Vec<u8>>,
    order: BTreeSet<SyncKey>,
    blobs: HashMap<Hash32, Vec<u8>>,
    state: BTreeMap<String, Vec<u8>>,
    /// Fingerprint of everything, kept up to date: an in-sync peer costs O(1).
    total: Fingerprint,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
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
        self.records.insert(rec.id, rec.bytes.clone());
        self.order.insert(SyncKey { time: rec.time(), id: rec.id });
        self.total.add(&rec.id);
        Ok(true)
    }
    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>> {
        self.records.get(id).cloned()
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
        if *lo == SyncKey::MIN && hi.is_none() {
            return (self.records.len() as u64, self.total);
        }
        let mut fp = Fingerprint::default();
        let mut n = 0;
        for k in self.order.range(*lo..).take_while(|k| hi.is_none_or(|h| *k < h)) {
            fp.add(&k.id);
            n += 1;
        }
        (n, fp)
    }
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8])) {
        for k in &self.order {
            if let Some(b) = self.records.get(&k.id) {
                f(b)
            }
        }
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
