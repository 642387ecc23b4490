//! The API's secondary indexes and the queries they answer.

use peerbot_protocol::record::{decode_stored, VerifiedRecord};
use peerbot_protocol::store::Store;
use peerbot_protocol::sync::SyncKey;
use peerbot_protocol::{Body, PeerId, Status};
use rocksdb::{BlockBasedOptions, Cache, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::jobs::{file_job_entry, refile_superseded, IX_JOB_STATE};
use super::{order_key, parse_order_key, RocksStore, CF_CHANGES, CF_LOOKUPS, CF_META, CF_RECORDS, CF_RESULTS};

/// Secondary indexes for the API's filters: field key ‖ order key → empty,
/// so newest first within one value is a reverse range read. Field keys
/// are the first 16 bytes of blake3 of the value, except the commit (lower
/// case, then 0) so that a commit prefix is a key prefix, and the status
/// (one byte).
const IX_RESULT_BUILDER: &str = "ix_result_builder";
const IX_RESULT_REPO: &str = "ix_result_repo";
const IX_RESULT_BRANCH: &str = "ix_result_repo_branch";
const IX_RESULT_STATUS: &str = "ix_result_status";
const IX_RESULT_SIGNER: &str = "ix_result_signer";
const IX_RESULT_COMMIT: &str = "ix_result_commit";
const IX_CHANGE_REPO: &str = "ix_change_repo";
const IX_CHANGE_BRANCH: &str = "ix_change_repo_branch";
const IX_CHANGE_COMMIT: &str = "ix_change_commit";
pub(super) const INDEX_CFS: [&str; 10] = [
    IX_RESULT_BUILDER,
    IX_RESULT_REPO,
    IX_RESULT_BRANCH,
    IX_RESULT_STATUS,
    IX_RESULT_SIGNER,
    IX_RESULT_COMMIT,
    IX_CHANGE_REPO,
    IX_CHANGE_BRANCH,
    IX_CHANGE_COMMIT,
    IX_JOB_STATE,
];
/// In CF_META: the layout of the index column families on disk. Older or
/// missing means they are rebuilt from CF_RECORDS at open.
pub(super) const INDEX_VERSION_KEY: &[u8] = b"api_indexes";
pub(super) const INDEX_VERSION: &[u8] = b"2";
/// A commit prefix matching more results than this is dense enough that
/// scanning by time finds its matches sooner than sorting the index's.
const COMMIT_PREFIX_CAP: usize = 100_000;
/// Index ranges are counted up to this many keys to pick the smallest.
const SELECTIVITY_CAP: usize = 10_000;

/// Megabytes of the block cache all column families share (`--db-cache-mb`).
static BLOCK_CACHE_MB: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(256);

pub fn set_block_cache_mb(mb: usize) {
    BLOCK_CACHE_MB.store(mb, std::sync::atomic::Ordering::Relaxed);
}

/// One block cache for the whole database, sized by `--db-cache-mb`.
pub(super) fn block_cache() -> Cache {
    Cache::new_lru_cache(BLOCK_CACHE_MB.load(std::sync::atomic::Ordering::Relaxed).max(8) << 20)
}

/// Reads of the API: RocksDB's default is a small cache per column family,
/// so a page of 50 records read from a few hundred megabytes of history
/// goes to the page cache for most blocks. A bloom filter on `records`
/// lets a point read skip the levels that do not hold the id, and index
/// and filter blocks stay in the cache.
pub(super) fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_cache_index_and_filter_blocks(true);
    t.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if name == CF_RECORDS || name == CF_LOOKUPS {
        t.set_bloom_filter(10.0, false);
    }
    if name == CF_LOOKUPS {
        // Filters on the lookup's kind and key (`LOOKUP_PREFIX`), not on
        // whole keys, which nothing reads by.
        t.set_whole_key_filtering(false);
    }
    let mut o = Options::default();
    o.set_block_based_table_factory(&t);
    o
}

fn field_hash(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    for p in parts {
        // Length first, so ("ab", "c") and ("a", "bc") differ.
        h.update(&(p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().as_bytes()[..16].to_vec()
}

fn commit_field(commit: &str) -> Vec<u8> {
    let mut k = commit.to_ascii_lowercase().into_bytes();
    k.push(0);
    k
}

fn status_code(s: Status) -> u8 {
    match s {
        Status::Success => 0,
        Status::Warnings => 1,
        Status::Failure => 2,
        Status::Exception => 3,
        Status::Cancelled => 4,
    }
}

/// (column family, field key) of each index entry of a record.
fn index_fields(rec: &VerifiedRecord) -> Vec<(&'static str, Vec<u8>)> {
    match &rec.body {
        Body::Result(r) => vec![
            (IX_RESULT_BUILDER, field_hash(&[r.builder.as_bytes()])),
            (IX_RESULT_REPO, field_hash(&[r.repo.as_bytes()])),
            (IX_RESULT_BRANCH, field_hash(&[r.repo.as_bytes(), r.branch.as_bytes()])),
            (IX_RESULT_STATUS, vec![status_code(r.status)]),
            (IX_RESULT_SIGNER, field_hash(&[rec.signer.to_bytes().as_slice()])),
            (IX_RESULT_COMMIT, commit_field(&r.commit)),
        ],
        Body::Change(c) => vec![
            (IX_CHANGE_REPO, field_hash(&[c.repo.as_bytes()])),
            (IX_CHANGE_BRANCH, field_hash(&[c.repo.as_bytes(), c.branch.as_bytes()])),
            (IX_CHANGE_COMMIT, commit_field(&c.commit)),
        ],
        _ => vec![],
    }
}

pub(super) fn file_indexes(db: &DB, batch: &mut WriteBatch, rec: &VerifiedRecord, key: &[u8; 40]) {
    for (cf, mut k) in index_fields(rec) {
        k.extend_from_slice(key);
        batch.put_cf(db.cf_handle(cf).expect("cf"), k, b"");
    }
    file_job_entry(db, batch, rec, key);
}

/// Empties the index column families and files every stored record's
/// entries again, in batches, then marks them current.
pub(super) fn rebuild_indexes(s: &RocksStore) -> anyhow::Result<u64> {
    let db = &*s.db;
    for cf in INDEX_CFS {
        // No key is 256 bytes of 0xff: this bound is past all of them.
        db.delete_range_cf(db.cf_handle(cf).expect("cf"), b"".as_slice(), [0xffu8; 256].as_slice())?;
    }
    let started = std::time::Instant::now();
    let mut batch = WriteBatch::default();
    let mut n = 0u64;
    for item in db.iterator_cf(db.cf_handle(CF_RECORDS).expect("cf"), IteratorMode::Start) {
        let (_, bytes) = item?;
        let Ok(rec) = decode_stored(&bytes) else { continue };
        file_indexes(db, &mut batch, &rec, &order_key(&SyncKey { time: rec.time(), id: rec.id }));
        n += 1;
        if batch.len() >= 50_000 {
            db.write(std::mem::take(&mut batch))?;
        }
        if n.is_multiple_of(100_000) {
            tracing::info!("indexing: {n} records, {:.1}s", started.elapsed().as_secs_f64());
        }
    }
    db.write(batch)?;
    let superseded = refile_superseded(s)?;
    tracing::info!("indexing: {superseded} superseded jobs");
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.put_cf_opt(db.cf_handle(CF_META).expect("cf"), INDEX_VERSION_KEY, INDEX_VERSION, &w)?;
    tracing::info!("indexed {n} records in {:.1}s", started.elapsed().as_secs_f64());
    Ok(n)
}

/// Which records an API query wants; every field given must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub repo: Option<String>,
    pub branch: Option<String>,
    /// A prefix, compared in lower case.
    pub commit: Option<String>,
    /// Results only, like `status` and `signer`.
    pub builder: Option<String>,
    pub status: Option<Status>,
    pub signer: Option<PeerId>,
}

impl Filter {
    pub fn matches(&self, rec: &VerifiedRecord) -> bool {
        let commit_ok = |c: &str| self.commit.as_ref().is_none_or(|q| c.starts_with(&q.to_ascii_lowercase()));
        let common = |repo: &str, branch: &str| {
            self.repo.as_ref().is_none_or(|x| x == repo) && self.branch.as_ref().is_none_or(|x| x == branch)
        };
        self.signer.is_none_or(|s| s == rec.signer)
            && match &rec.body {
                Body::Result(r) => {
                    common(&r.repo, &r.branch)
                        && commit_ok(&r.commit)
                        && self.builder.as_ref().is_none_or(|x| *x == r.builder)
                        && self.status.is_none_or(|s| s == r.status)
                }
                Body::Change(c) => common(&c.repo, &c.branch) && commit_ok(&c.commit),
                _ => false,
            }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Results,
    Changes,
}

/// One page of a query, newest first.
#[derive(Debug, Default)]
pub struct Page {
    /// Shared with the store's cache, not copied.
    pub records: Vec<std::sync::Arc<VerifiedRecord>>,
    /// Where the next page starts (pass as `before`): set when the page is
    /// full or the scan budget ran out first, `None` at the end of history.
    pub next: Option<SyncKey>,
}

/// Where the matches of a query are looked for.
enum Source {
    /// The order keys of one index value, read newest first.
    Range(&'static str, Vec<u8>),
    /// Order keys already collected and sorted newest first.
    Keys(Vec<SyncKey>),
    /// Every record of the kind, newest first.
    All(&'static str),
}

impl RocksStore {
    /// Records of one kind, newest first, passing `keep`, at most `limit`.
    pub(super) fn newest(
        &self,
        cf: &str,
        limit: usize,
        keep: &mut dyn FnMut(&VerifiedRecord) -> bool,
    ) -> Vec<VerifiedRecord> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::End) {
            let Ok((k, _)) = item else { break };
            let Some(key) = parse_order_key(&k) else { continue };
            let Some(rec) = self.record(&key.id) else { continue };
            if keep(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    pub fn changes(&self, limit: usize, keep: &mut dyn FnMut(&VerifiedRecord) -> bool) -> Vec<VerifiedRecord> {
        self.newest(CF_CHANGES, limit, keep)
    }

    /// Up to `limit` records of `kind` matching `filter`, newest first and
    /// strictly older than `before`. Reads one index range (the smallest
    /// of the filter's) and checks the other fields on each record; stops
    /// after decoding `budget` records, with `next` saying where it got to.
    pub fn query(&self, kind: Kind, filter: &Filter, before: Option<SyncKey>, limit: usize, budget: usize) -> Page {
        let bound = before.as_ref().map(order_key);
        let mut page = Page::default();
        if limit == 0 {
            return page;
        }
        let mut examined = 0usize;
        let mut visit = |key: SyncKey, page: &mut Page| -> bool {
            let read = || decode_stored(&self.get_record(&key.id)?).ok();
            if let Some(rec) = self.cache.record_if(&key.id, read, |r| filter.matches(r)) {
                if filter.matches(&rec) {
                    page.records.push(rec);
                }
            }
            examined += 1;
            if page.records.len() >= limit || examined >= budget {
                page.next = Some(key);
                return false;
            }
            true
        };
        match self.source(kind, filter, bound.as_ref()) {
            Source::Keys(keys) => {
                for k in keys {
                    if !visit(k, &mut page) {
                        break;
                    }
                }
            }
            Source::Range(cf, prefix) => {
                let mut upper = prefix.clone();
                upper.extend_from_slice(bound.as_ref().map_or(&[0xffu8; 40], |b| b));
                for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(&upper, Direction::Reverse)) {
                    let Ok((k, _)) = item else { break };
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    if k.as_ref() >= upper.as_slice() {
                        continue;
                    }
                    let Some(key) = parse_order_key(&k[prefix.len()..]) else { continue };
                    if !visit(key, &mut page) {
                        break;
                    }
                }
            }
            Source::All(cf) => {
                let upper = bound.unwrap_or([0xffu8; 40]);
                for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(&upper, Direction::Reverse)) {
                    let Ok((k, _)) = item else { break };
                    if k.as_ref() >= upper.as_slice() {
                        continue;
                    }
                    let Some(key) = parse_order_key(&k) else { continue };
                    if !visit(key, &mut page) {
                        break;
                    }
                }
            }
        }
        page
    }

    /// The index range with the fewest keys below `bound`, or all records.
    fn source(&self, kind: Kind, f: &Filter, bound: Option<&[u8; 40]>) -> Source {
        let results = kind == Kind::Results;
        let mut ranges: Vec<(&'static str, Vec<u8>)> = Vec::new();
        match (&f.repo, &f.branch) {
            (Some(r), Some(b)) => ranges.push((
                if results { IX_RESULT_BRANCH } else { IX_CHANGE_BRANCH },
                field_hash(&[r.as_bytes(), b.as_bytes()]),
            )),
            (Some(r), None) => {
                ranges.push((if results { IX_RESULT_REPO } else { IX_CHANGE_REPO }, field_hash(&[r.as_bytes()])))
            }
            _ => {}
        }
        if results {
            if let Some(b) = &f.builder {
                ranges.push((IX_RESULT_BUILDER, field_hash(&[b.as_bytes()])));
            }
            if let Some(s) = f.status {
                ranges.push((IX_RESULT_STATUS, vec![status_code(s)]));
            }
            if let Some(s) = &f.signer {
                ranges.push((IX_RESULT_SIGNER, field_hash(&[s.to_bytes().as_slice()])));
            }
        }
        let mut keys = None;
        if let Some(c) = &f.commit {
            let cf = if results { IX_RESULT_COMMIT } else { IX_CHANGE_COMMIT };
            keys = self.commit_keys(cf, &c.to_ascii_lowercase(), bound);
        }
        let all = Source::All(if results { CF_RESULTS } else { CF_CHANGES });
        match (keys, ranges.len()) {
            (None, 0) => all,
            (Some(keys), 0) => Source::Keys(keys),
            // One range: nothing to compare it with, so nothing to count.
            (None, 1) => ranges.pop().map_or(all, |(cf, p)| Source::Range(cf, p)),
            (keys, _) => {
                let cap = keys.as_ref().map_or(SELECTIVITY_CAP, |k| k.len().min(SELECTIVITY_CAP));
                match (self.smallest_range(&ranges, bound, cap), keys) {
                    (None, Some(keys)) => Source::Keys(keys),
                    (i, _) => {
                        let (cf, prefix) = ranges.swap_remove(i.unwrap_or(0));
                        Source::Range(cf, prefix)
                    }
                }
            }
        }
    }

    /// The range with the fewest keys below `bound`, if one has fewer than
    /// `cap`. Their iterators are stepped in turn, so this reads as many
    /// keys as the smallest range holds times the number of ranges, not
    /// all their keys up to the cap.
    fn smallest_range(
        &self,
        ranges: &[(&'static str, Vec<u8>)],
        bound: Option<&[u8; 40]>,
        cap: usize,
    ) -> Option<usize> {
        let mut iters: Vec<_> = ranges
            .iter()
            .map(|(cf, prefix)| {
                let mut upper = prefix.clone();
                upper.extend_from_slice(bound.map_or(&[0xffu8; 40], |b| b));
                let mut it = self.db.raw_iterator_cf(self.cf(cf));
                it.seek_for_prev(&upper);
                if it.key() == Some(upper.as_slice()) {
                    it.prev();
                }
                it
            })
            .collect();
        for _ in 0..cap {
            for (i, it) in iters.iter_mut().enumerate() {
                if !it.key().is_some_and(|k| k.starts_with(&ranges[i].1)) {
                    return Some(i);
                }
                it.prev();
            }
        }
        None
    }

    /// The order keys of every record whose commit starts with `prefix`,
    /// below `bound`, newest first; `None` past COMMIT_PREFIX_CAP.
    fn commit_keys(&self, cf: &str, prefix: &str, bound: Option<&[u8; 40]>) -> Option<Vec<SyncKey>> {
        let mut keys = Vec::new();
        let mut seen = 0usize;
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(prefix.as_bytes(), Direction::Forward)) {
            let Ok((k, _)) = item else { break };
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            seen += 1;
            if seen > COMMIT_PREFIX_CAP {
                return None;
            }
            // The order key is always the last 40 bytes.
            let Some(key) = k.len().checked_sub(40).and_then(|at| parse_order_key(&k[at..])) else { continue };
            if bound.is_none_or(|b| order_key(&key) < *b) {
                keys.push(key);
            }
        }
        keys.sort_by(|a, b| b.cmp(a));
        Some(keys)
    }
}
