//! RocksDB storage: the core's `Store`, plus the read paths the HTTP API
//! uses directly.

use std::path::Path;
use std::sync::Arc;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{decode_stored, VerifiedRecord};
use peerbot_protocol::store::{lookups_of, BucketIndex, Lookup, Store, StoreError};
use peerbot_protocol::sync::{Fingerprint, SyncKey};

use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

mod cache;
mod jobs;
mod query;

pub use cache::set_read_cache_mb;
pub use jobs::{Finished, Position};
use query::{file_indexes, rebuild_indexes, INDEX_CFS, INDEX_VERSION, INDEX_VERSION_KEY};
pub use query::{set_block_cache_mb, Filter, Kind, Page};

const CF_RECORDS: &str = "records";
const CF_ORDER: &str = "order";
const CF_CHANGES: &str = "idx_changes";
const CF_RESULTS: &str = "idx_results";
const CF_BLOBS: &str = "blobs";
const CF_STATE: &str = "state";
const CF_META: &str = "meta";
/// Lookup ‖ key ‖ id → empty: the store's lookups by job and commit.
const CF_LOOKUPS: &str = "lookups";
/// Bytes of a lookup key that name what is looked up: its kind and key.
const LOOKUP_PREFIX: usize = 33;
/// Arrival position (u64, big-endian) → order key: the records in the
/// order they were stored, so that a checkpoint or a saved summary names
/// what it covers by one number, and what came after is a range read.
const CF_ARRIVALS: &str = "arrivals";
const SCHEMA_VERSION: &[u8] = b"3";
/// Schema 1 had no lookups; opening it files every record's (see `migrate`).
const SCHEMA_WITHOUT_LOOKUPS: &[u8] = b"1";
/// Schema 2 had no arrival positions; opening it numbers the records in
/// (time, id) order (see `number_arrivals`).
const SCHEMA_WITHOUT_ARRIVALS: &[u8] = b"2";
/// The range summaries are saved after this many records arrive (and at a
/// clean close), so that an open after a crash reads at most these.
const SUMMARY_EVERY: u64 = 100_000;
/// Bytes all column families' memtables hold together before flushing.
const MEMTABLE_BUDGET: usize = 64 << 20;

#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    /// Counted once at open, then kept up to date.
    count: Arc<std::sync::atomic::AtomicU64>,
    /// Range summaries for reconciliation, built at open, kept up to date.
    index: Arc<std::sync::RwLock<BucketIndex>>,
    /// Held across each write of records: their arrival positions are
    /// given out in the order the writes land.
    arrivals: Arc<std::sync::Mutex<Arrivals>>,
    /// Decoded records and lookups the API reads again and again.
    cache: Arc<cache::ReadCache>,
}

#[derive(Default)]
struct Arrivals {
    /// The newest record's position.
    last: u64,
    /// The position the saved summaries cover.
    summarised: u64,
}

/// Where the range summaries are saved with the arrival position they
/// cover, so that an open reads only the keys that arrived after.
const SUMMARY_KEY: &[u8] = b"summary";
/// Schema 2 kept them here, valid only after a clean close.
const OLD_SUMMARY_KEY: &[u8] = b"order_summary";

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSummary {
    arrivals: u64,
    index: BucketIndex,
}

fn arrival_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn order_key(k: &SyncKey) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&k.time.to_be_bytes());
    out[8..].copy_from_slice(&k.id.0);
    out
}

fn parse_order_key(b: &[u8]) -> Option<SyncKey> {
    if b.len() != 40 {
        return None;
    }
    let time = u64::from_be_bytes(b[..8].try_into().ok()?);
    let id = Hash32(b[8..].try_into().ok()?);
    Some(SyncKey { time, id })
}

fn lookup_key(lookup: Lookup, key: &Hash32, id: &Hash32) -> [u8; 65] {
    let mut out = [0u8; 65];
    out[0] = lookup as u8;
    out[1..33].copy_from_slice(&key.0);
    out[33..].copy_from_slice(&id.0);
    out
}

fn parse_lookup_key(b: &[u8]) -> Option<(Hash32, Hash32)> {
    if b.len() != 65 {
        return None;
    }
    Some((Hash32(b[1..33].try_into().ok()?), Hash32(b[33..].try_into().ok()?)))
}
/// A catch-up asks whether each fetched id is stored: mostly it is not,
/// and bloom filters answer that without searching the memtable or
/// reading a table's blocks.
/// The shared block cache and table options of `query::cf_options`, and
/// for records, bloom filters in the memtable too: while catching up most
/// ids asked about are not stored, and the filter answers that at once.
fn cf_options(name: &str, cache: &rocksdb::Cache) -> Options {
    let mut opts = query::cf_options(name, cache);
    if name == CF_RECORDS {
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.02);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(256);
        opts.set_blob_cache(cache);
    }
    if name == CF_LOOKUPS {
        // Most lookups made while catching up find nothing (a change's jobs
        // have no result yet): prefix bloom filters say so without reading
        // a table's blocks. Scans by a shorter prefix read in total order.
        opts.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(LOOKUP_PREFIX));
        opts.set_memtable_prefix_bloom_ratio(0.05);
    }
    opts
}

fn err(e: rocksdb::Error) -> StoreError {
    StoreError(e.to_string())
}

/// Files the lookups of every stored record, in batches, then marks the
/// database as schema 2. Safe to run again if it stops half way.
fn migrate(db: &DB) -> anyhow::Result<u64> {
    let (records, lookups) = (db.cf_handle(CF_RECORDS).expect("cf"), db.cf_handle(CF_LOOKUPS).expect("cf"));
    let mut batch = WriteBatch::default();
    let mut n = 0u64;
    for item in db.iterator_cf(records, IteratorMode::Start) {
        let (_, bytes) = item?;
        let Ok(rec) = decode_stored(&bytes) else { continue };
        for (l, k, v) in lookups_of(&rec) {
            batch.put_cf(lookups, lookup_key(l, &k, &v), b"");
        }
        n += 1;
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    db.write(batch)?;
    mark_schema(db, SCHEMA_WITHOUT_ARRIVALS)?;
    Ok(n)
}

/// Records the schema a migration brought the database to, durably.
fn mark_schema(db: &DB, version: &[u8]) -> anyhow::Result<()> {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.put_cf_opt(db.cf_handle(CF_META).expect("cf"), b"schema", version, &w)?;
    Ok(())
}

/// Gives every stored record an arrival position, in (time, id) order, then
/// marks the database as schema 3. Starts again from nothing if it stopped
/// half way.
fn number_arrivals(db: &DB) -> anyhow::Result<u64> {
    let (order, arrivals) = (db.cf_handle(CF_ORDER).expect("cf"), db.cf_handle(CF_ARRIVALS).expect("cf"));
    db.delete_range_cf(arrivals, arrival_key(0).as_slice(), arrival_key(u64::MAX).as_slice())?;
    let mut batch = WriteBatch::default();
    let mut n = 0u64;
    for item in db.iterator_cf(order, IteratorMode::Start) {
        let (k, _) = item?;
        n += 1;
        batch.put_cf(arrivals, arrival_key(n), &k);
        if batch.len() >= 50_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    db.write(batch)?;
    mark_schema(db, SCHEMA_VERSION)?;
    Ok(n)
}

/// The newest arrival position stored (0 when none).
fn last_arrival(db: &DB) -> anyhow::Result<u64> {
    let cf = db.cf_handle(CF_ARRIVALS).expect("cf");
    match db.iterator_cf(cf, IteratorMode::End).next() {
        Some(item) => {
            let (k, _) = item?;
            Ok(u64::from_be_bytes(k.as_ref().try_into().map_err(|_| anyhow::anyhow!("bad arrival key"))?))
        }
        None => Ok(0),
    }
}

impl RocksStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, false)
    }

    /// Opens the database and rebuilds the API's indexes whether or not
    /// they are current (`peerbot reindex`, on a stopped node).
    pub fn open_reindexed(dir: &Path) -> anyhow::Result<(Self, u64)> {
        let s = Self::open_with(dir, true)?;
        let n = rebuild_indexes(&s)?;
        Ok((s, n))
    }

    fn open_with(dir: &Path, reindex: bool) -> anyhow::Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        // Every column family has its own write buffers (64 MiB each by
        // default): with nineteen of them a catch-up could hold a gigabyte
        // in memtables. One budget for all, flushed when it is reached.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cache = query::block_cache();
        let cfs = [CF_RECORDS, CF_ORDER, CF_CHANGES, CF_RESULTS, CF_BLOBS, CF_STATE, CF_META, CF_LOOKUPS, CF_ARRIVALS]
            .into_iter()
            .chain(INDEX_CFS)
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(n, &cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .map_err(|e| anyhow::anyhow!("opening the database in {}: {e}", dir.display()))?;
        let meta = db.cf_handle(CF_META).expect("meta column family");
        match db.get_cf(meta, b"schema")? {
            None => {
                // A new database: its indexes are complete from the start.
                db.put_cf(meta, INDEX_VERSION_KEY, INDEX_VERSION)?;
                db.put_cf(meta, b"schema", SCHEMA_VERSION)?
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v == SCHEMA_WITHOUT_LOOKUPS || v == SCHEMA_WITHOUT_ARRIVALS => {
                if v == SCHEMA_WITHOUT_LOOKUPS {
                    let filed = migrate(&db)?;
                    tracing::info!(
                        "database in {}: filed the lookups of {filed} records (schema 1 to 2)",
                        dir.display()
                    );
                }
                let n = number_arrivals(&db)?;
                tracing::info!("database in {}: numbered {n} records in arrival order (schema 2 to 3)", dir.display());
            }
            Some(v) => anyhow::bail!(
                "database in {} has schema {:?}, this peerbot reads schema {:?}",
                dir.display(),
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(SCHEMA_VERSION)
            ),
        }
        let stale_indexes = !reindex && db.get_cf(meta, INDEX_VERSION_KEY)?.as_deref() != Some(INDEX_VERSION);
        if db.get_cf(meta, OLD_SUMMARY_KEY)?.is_some() {
            db.delete_cf(meta, OLD_SUMMARY_KEY)?;
        }
        let last = last_arrival(&db)?;
        let saved = db
            .get_cf(meta, SUMMARY_KEY)?
            .and_then(|b| peerbot_protocol::codec::decode::<SavedSummary>(&b, 256 << 20).ok())
            .filter(|s| s.arrivals <= last);
        let (index, summarised) = match saved {
            // What arrived after the summaries were saved is added to them.
            Some(SavedSummary { arrivals, mut index }) => {
                let from = arrival_key(arrivals + 1);
                let cf = db.cf_handle(CF_ARRIVALS).expect("cf");
                for item in db.iterator_cf(cf, IteratorMode::From(&from, Direction::Forward)) {
                    let (_, v) = item?;
                    if let Some(key) = parse_order_key(&v) {
                        index.add(&key);
                    }
                }
                (index, arrivals)
            }
            None => {
                let mut index = BucketIndex::default();
                for item in db.iterator_cf(db.cf_handle(CF_ORDER).expect("order column family"), IteratorMode::Start) {
                    let (k, _) = item?;
                    if let Some(key) = parse_order_key(&k) {
                        index.add(&key);
                    }
                }
                (index, 0)
            }
        };
        let n = index.count();
        let s = RocksStore {
            db: Arc::new(db),
            count: Arc::new(std::sync::atomic::AtomicU64::new(n)),
            index: Arc::new(std::sync::RwLock::new(index)),
            arrivals: Arc::new(std::sync::Mutex::new(Arrivals { last, summarised })),
            cache: Arc::new(cache::ReadCache::configured()),
        };
        if stale_indexes {
            tracing::info!("database in {}: building the API's indexes", dir.display());
            rebuild_indexes(&s)?;
        }
        Ok(s)
    }

    /// Saves the range summaries for the next open, so that it reads no
    /// keys; call it last, when no more records will be stored.
    pub fn close(&self) -> anyhow::Result<()> {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        self.save_summary(&mut arrivals)
    }

    /// Saves the summaries as of `arrivals.last`; the caller holds the
    /// write lock, so that no record lands between the two.
    fn save_summary(&self, arrivals: &mut Arrivals) -> anyhow::Result<()> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner()).clone();
        let bytes = peerbot_protocol::codec::encode(&SavedSummary { arrivals: arrivals.last, index });
        self.db.put_cf_opt(self.cf(CF_META), SUMMARY_KEY, bytes, &Self::sync_write())?;
        arrivals.summarised = arrivals.last;
        Ok(())
    }

    /// Writes `recs` (not stored yet) in one synced batch with their
    /// arrival positions, then counts them.
    fn write_records(&self, recs: &[&VerifiedRecord]) -> anyhow::Result<()> {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        // A memtable inserts keys that come in ascending order for less
        // than random ones (each search starts where the last one ended):
        // the keys that are hashes go in sorted, the others come in time
        // or arrival order already.
        let mut by_id: Vec<&VerifiedRecord> = recs.to_vec();
        by_id.sort_unstable_by_key(|r| r.id);
        for rec in by_id {
            batch.put_cf(self.cf(CF_RECORDS), rec.id.0, &rec.bytes);
        }
        let filed: Vec<(Lookup, Hash32, Hash32)> = recs.iter().flat_map(|r| lookups_of(r)).collect();
        let mut lookups: Vec<[u8; 65]> = filed.iter().map(|(l, k, v)| lookup_key(*l, k, v)).collect();
        lookups.sort_unstable();
        for k in lookups {
            batch.put_cf(self.cf(CF_LOOKUPS), k, b"");
        }
        let mut at = arrivals.last;
        for rec in recs {
            let key = order_key(&SyncKey { time: rec.time(), id: rec.id });
            batch.put_cf(self.cf(CF_ORDER), key, b"");
            at += 1;
            batch.put_cf(self.cf(CF_ARRIVALS), arrival_key(at), key);
            match rec.body {
                peerbot_protocol::Body::Change(_) => batch.put_cf(self.cf(CF_CHANGES), key, b""),
                peerbot_protocol::Body::Result(_) => batch.put_cf(self.cf(CF_RESULTS), key, b""),
                _ => {}
            }
            file_indexes(&self.db, &mut batch, rec, &key);
        }
        self.db.write_opt(batch, &Self::sync_write())?;
        self.cache.filed(filed.into_iter().map(|(l, k, _)| (l, k)));
        // Only what is on disk counts: a failed write (a full disk) must not
        // leave the count or the reconciliation index ahead of the database.
        arrivals.last = at;
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for rec in recs {
                index.add(&SyncKey { time: rec.time(), id: rec.id });
            }
        }
        self.count.fetch_add(recs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if arrivals.last - arrivals.summarised >= SUMMARY_EVERY {
            // The records are stored whether or not this works; a failure
            // only means the next open reads more keys.
            if let Err(e) = self.save_summary(&mut arrivals) {
                tracing::warn!("saving the range summaries: {e}");
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    fn sync_write() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }
}

impl RocksStore {
    /// Writes many new records in one batch with one sync.
    pub fn put_records_bulk(&self, recs: &[VerifiedRecord]) -> anyhow::Result<()> {
        self.write_records(&recs.iter().collect::<Vec<_>>())
    }

    /// Up to `limit` lookups of one kind whose key starts with `prefix`
    /// (all 32 bytes of it for one key's ids).
    fn lookups_from(&self, lookup: Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)> {
        let mut start = vec![lookup as u8];
        start.extend_from_slice(&prefix[..prefix.len().min(32)]);
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        for item in self.lookups_iter(&start) {
            let Ok((k, _)) = item else { break };
            if !k.starts_with(&start) {
                break;
            }
            out.extend(parse_lookup_key(&k));
            // Stopping here spares a step to the next key.
            if out.len() >= limit {
                break;
            }
        }
        out
    }

    /// The `lookups` family from `start` on: a whole lookup prefix uses the
    /// prefix bloom filters and stops at the prefix's end; a shorter one
    /// reads in total order (the caller stops at its prefix).
    fn lookups_iter(&self, start: &[u8]) -> rocksdb::DBIteratorWithThreadMode<'_, DB> {
        let mut ro = rocksdb::ReadOptions::default();
        if start.len() >= LOOKUP_PREFIX {
            ro.set_prefix_same_as_start(true);
        } else {
            ro.set_total_order_seek(true);
        }
        self.db.iterator_cf_opt(self.cf(CF_LOOKUPS), ro, IteratorMode::From(start, Direction::Forward))
    }

    pub fn record(&self, id: &Hash32) -> Option<VerifiedRecord> {
        self.cached_record(id).map(Arc::unwrap_or_clone)
    }

    fn cached_record(&self, id: &Hash32) -> Option<Arc<VerifiedRecord>> {
        self.cache.record(id, || decode_stored(&self.get_record(id)?).ok())
    }

    /// Finds a record by a unique hex prefix of its id.
    pub fn record_by_prefix(&self, prefix: &str) -> Result<Option<VerifiedRecord>, String> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{prefix:?} is not a record id (at least 4 hex digits)"));
        }
        if let Ok(h) = prefix.parse::<Hash32>() {
            return Ok(self.record(&h));
        }
        // Whole hex bytes of the prefix bound the scan.
        let even = &prefix[..prefix.len() & !1];
        let start = hex::decode(even).map_err(|e| e.to_string())?;
        let mut found = None;
        let iter = self.db.iterator_cf(self.cf(CF_RECORDS), IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let Ok((k, _)) = item else { break };
            if !k.starts_with(&start) {
                break;
            }
            if hex::encode(&k).starts_with(&prefix) {
                if found.is_some() {
                    return Err(format!("record id prefix {prefix:?} is ambiguous"));
                }
                found = Some(Hash32(k.as_ref().try_into().map_err(|_| "bad key".to_string())?));
            }
        }
        Ok(found.and_then(|h| self.record(&h)))
    }
}

impl Store for RocksStore {
    fn put_record(&mut self, rec: &VerifiedRecord) -> Result<bool, StoreError> {
        if self.has_record(&rec.id) {
            return Ok(false);
        }
        self.write_records(&[rec]).map_err(|e| StoreError(e.to_string()))?;
        Ok(true)
    }

    fn put_records(&mut self, recs: &[VerifiedRecord]) -> Result<(), StoreError> {
        self.put_records_bulk(recs).map_err(|e| StoreError(e.to_string()))
    }

    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>> {
        self.db.get_cf(self.cf(CF_RECORDS), id.0).ok().flatten()
    }

    fn record(&self, id: &Hash32) -> Option<Arc<VerifiedRecord>> {
        self.cached_record(id)
    }

    fn has_record(&self, id: &Hash32) -> bool {
        matches!(self.db.get_pinned_cf(self.cf(CF_RECORDS), id.0), Ok(Some(_)))
    }

    fn has_records(&self, ids: &[Hash32]) -> Vec<bool> {
        let keys = ids.iter().map(|id| &id.0);
        self.db
            .batched_multi_get_cf(self.cf(CF_RECORDS), keys, false)
            .into_iter()
            .map(|r| matches!(r, Ok(Some(_))))
            .collect()
    }

    fn record_count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keys_in(&self, lo: &SyncKey, hi: Option<&SyncKey>, limit: usize) -> Vec<SyncKey> {
        let start = order_key(lo);
        let end = hi.map(order_key);
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_ORDER), IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let Ok((k, _)) = item else { break };
            if let Some(e) = &end {
                if k.as_ref() >= e.as_slice() {
                    break;
                }
            }
            if let Some(key) = parse_order_key(&k) {
                out.push(key);
            }
        }
        out
    }

    fn summary(&self, lo: &SyncKey, hi: Option<&SyncKey>) -> (u64, Fingerprint) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.summary(lo, hi, &|lo, hi| {
            let mut fp = Fingerprint::default();
            let keys = self.keys_in(lo, hi, usize::MAX);
            for k in &keys {
                fp.add(&k.id);
            }
            (keys.len() as u64, fp)
        })
    }

    fn split_bounds(&self, lo: &SyncKey, hi: Option<&SyncKey>, parts: usize) -> Vec<SyncKey> {
        let (count, _) = self.summary(lo, hi);
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.split_bounds(lo, hi, parts, count, &|lo, hi| self.keys_in(lo, hi, usize::MAX))
    }

    fn for_each_record(&self, f: &mut dyn FnMut(&[u8])) {
        for item in self.db.iterator_cf(self.cf(CF_ORDER), IteratorMode::Start) {
            let Ok((k, _)) = item else { break };
            if let Some(key) = parse_order_key(&k) {
                if let Some(b) = self.get_record(&key.id) {
                    f(&b);
                }
            }
        }
    }

    fn arrivals(&self) -> u64 {
        self.arrivals.lock().unwrap_or_else(|e| e.into_inner()).last
    }

    fn arrived_after(&self, after: u64, limit: usize) -> Vec<(u64, Hash32)> {
        let Some(first) = after.checked_add(1) else { return Vec::new() };
        let from = arrival_key(first);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_ARRIVALS), IteratorMode::From(&from, Direction::Forward)) {
            if out.len() >= limit {
                break;
            }
            let Ok((k, v)) = item else { break };
            let (Ok(n), Some(key)) = (<[u8; 8]>::try_from(k.as_ref()), parse_order_key(&v)) else { continue };
            out.push((u64::from_be_bytes(n), key.id));
        }
        out
    }

    fn put_lookup(&mut self, lookup: Lookup, key: &Hash32, value: &Hash32) -> Result<(), StoreError> {
        // No sync needed: derived again from the records applied at start,
        // and the synced write of a checkpoint makes the earlier ones
        // durable with it (one write-ahead log).
        self.db.put_cf(self.cf(CF_LOOKUPS), lookup_key(lookup, key, value), b"").map_err(err)?;
        self.cache.filed([(lookup, *key)]);
        if lookup == Lookup::Superseded {
            jobs::file_superseded(self, key, value).map_err(err)?;
        }
        Ok(())
    }

    fn lookup(&self, lookup: Lookup, key: &Hash32, limit: usize) -> Vec<Hash32> {
        let read = |n: usize| self.lookups_from(lookup, &key.0, n).into_iter().map(|(_, id)| id).collect();
        if limit > cache::LOOKUP_READ {
            return read(limit);
        }
        let filed = self.cache.lookup(lookup, key, read);
        filed[..filed.len().min(limit)].to_vec()
    }

    fn lookup_prefix(&self, lookup: Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)> {
        self.lookups_from(lookup, prefix, limit)
    }

    fn put_blob(&mut self, hash: &Hash32, bytes: &[u8]) -> Result<(), StoreError> {
        if self.has_blob(hash) {
            return Ok(());
        }
        let z = zstd::encode_all(bytes, 3).map_err(|e| StoreError(e.to_string()))?;
        self.db.put_cf_opt(self.cf(CF_BLOBS), hash.0, z, &Self::sync_write()).map_err(err)
    }

    fn get_blob(&self, hash: &Hash32) -> Option<Vec<u8>> {
        let z = self.db.get_cf(self.cf(CF_BLOBS), hash.0).ok().flatten()?;
        zstd::decode_all(z.as_slice()).ok()
    }

    fn has_blob(&self, hash: &Hash32) -> bool {
        matches!(self.db.get_pinned_cf(self.cf(CF_BLOBS), hash.0), Ok(Some(_)))
    }

    fn delete_blob(&mut self, hash: &Hash32) -> Result<(), StoreError> {
        self.db.delete_cf_opt(self.cf(CF_BLOBS), hash.0, &Self::sync_write()).map_err(err)
    }

    fn put_state(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.db.put_cf_opt(self.cf(CF_STATE), key, value, &Self::sync_write()).map_err(err)
    }

    fn get_state(&self, key: &str) -> Option<Vec<u8>> {
        self.db.get_cf(self.cf(CF_STATE), key).ok().flatten()
    }

    fn delete_state(&mut self, key: &str) -> Result<(), StoreError> {
        self.db.delete_cf_opt(self.cf(CF_STATE), key, &Self::sync_write()).map_err(err)
    }
}

#[cfg(test)]
mod tests;
