//! RocksDB storage: the core's `Store`, plus the read paths the HTTP API
//! uses directly.

use std::path::Path;
use std::sync::Arc;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{decode_stored, VerifiedRecord};
use peerbot_protocol::store::{lookups_of, BucketIndex, Lookup, Store, StoreError};
use peerbot_protocol::sync::{Fingerprint, SyncKey};
use peerbot_protocol::{Body, PeerId, Status};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

const CF_RECORDS: &str = "records";
const CF_ORDER: &str = "order";
const CF_CHANGES: &str = "idx_changes";
const CF_RESULTS: &str = "idx_results";
const CF_BLOBS: &str = "blobs";
const CF_STATE: &str = "state";
const CF_META: &str = "meta";
/// Lookup ‖ key ‖ id → empty: the store's lookups by job and commit.
const CF_LOOKUPS: &str = "lookups";
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
const INDEX_CFS: [&str; 9] = [
    IX_RESULT_BUILDER,
    IX_RESULT_REPO,
    IX_RESULT_BRANCH,
    IX_RESULT_STATUS,
    IX_RESULT_SIGNER,
    IX_RESULT_COMMIT,
    IX_CHANGE_REPO,
    IX_CHANGE_BRANCH,
    IX_CHANGE_COMMIT,
];
/// In CF_META: the layout of the index column families on disk. Older or
/// missing means they are rebuilt from CF_RECORDS at open.
const INDEX_VERSION_KEY: &[u8] = b"api_indexes";
const INDEX_VERSION: &[u8] = b"1";
/// A commit prefix matching more results than this is dense enough that
/// scanning by time finds its matches sooner than sorting the index's.
const COMMIT_PREFIX_CAP: usize = 100_000;
/// Index ranges are counted up to this many keys to pick the smallest.
const SELECTIVITY_CAP: usize = 10_000;
const SCHEMA_VERSION: &[u8] = b"2";
/// Schema 1 had no lookups; opening it files every record's (see `migrate`).
const SCHEMA_WITHOUT_LOOKUPS: &[u8] = b"1";

#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    /// Counted once at open, then kept up to date.
    count: Arc<std::sync::atomic::AtomicU64>,
    /// Range summaries for reconciliation, built at open, kept up to date.
    index: Arc<std::sync::RwLock<BucketIndex>>,
    /// `close` saved the summaries and no record was stored since.
    summary_saved: Arc<std::sync::atomic::AtomicBool>,
}

/// Where a clean close keeps the range summaries, so that the next open
/// does not read every key.
const SUMMARY_KEY: &[u8] = b"order_summary";

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

fn file_indexes(db: &DB, batch: &mut WriteBatch, rec: &VerifiedRecord, key: &[u8; 40]) {
    for (cf, mut k) in index_fields(rec) {
        k.extend_from_slice(key);
        batch.put_cf(db.cf_handle(cf).expect("cf"), k, b"");
    }
}

/// Empties the index column families and files every stored record's
/// entries again, in batches, then marks them current.
fn rebuild_indexes(db: &DB) -> anyhow::Result<u64> {
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
    pub records: Vec<VerifiedRecord>,
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
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.put_cf_opt(db.cf_handle(CF_META).expect("cf"), b"schema", SCHEMA_VERSION, &w)?;
    Ok(n)
}

impl RocksStore {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_with(dir, false)
    }

    /// Opens the database and rebuilds the API's indexes whether or not
    /// they are current (`peerbot reindex`, on a stopped node).
    pub fn open_reindexed(dir: &Path) -> anyhow::Result<(Self, u64)> {
        let s = Self::open_with(dir, true)?;
        let n = rebuild_indexes(&s.db)?;
        Ok((s, n))
    }

    fn open_with(dir: &Path, reindex: bool) -> anyhow::Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        let cfs = [CF_RECORDS, CF_ORDER, CF_CHANGES, CF_RESULTS, CF_BLOBS, CF_STATE, CF_META, CF_LOOKUPS]
            .into_iter()
            .chain(INDEX_CFS)
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
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
            Some(v) if v == SCHEMA_WITHOUT_LOOKUPS => {
                let filed = migrate(&db)?;
                tracing::info!("database in {}: filed the lookups of {filed} records (schema 1 to 2)", dir.display());
            }
            Some(v) => anyhow::bail!(
                "database in {} has schema {:?}, this peerbot reads schema {:?}",
                dir.display(),
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(SCHEMA_VERSION)
            ),
        }
        if !reindex && db.get_cf(meta, INDEX_VERSION_KEY)?.as_deref() != Some(INDEX_VERSION) {
            tracing::info!("database in {}: building the API's indexes", dir.display());
            rebuild_indexes(&db)?;
        }
        // A clean close saved the summaries; taken away before use, so that
        // a crash after this open scans again.
        let saved = db.get_cf(meta, SUMMARY_KEY)?;
        db.delete_cf_opt(meta, SUMMARY_KEY, &Self::sync_write())?;
        let saved = saved.and_then(|b| peerbot_protocol::codec::decode::<BucketIndex>(&b, 256 << 20).ok());
        let (index, n) = match saved {
            Some(index) => {
                let n = index.count();
                (index, n)
            }
            None => {
                let mut n = 0u64;
                let mut index = BucketIndex::default();
                for item in db.iterator_cf(db.cf_handle(CF_ORDER).expect("order column family"), IteratorMode::Start) {
                    let (k, _) = item?;
                    if let Some(key) = parse_order_key(&k) {
                        index.add(&key);
                    }
                    n += 1;
                }
                (index, n)
            }
        };
        Ok(RocksStore {
            db: Arc::new(db),
            count: Arc::new(std::sync::atomic::AtomicU64::new(n)),
            index: Arc::new(std::sync::RwLock::new(index)),
            summary_saved: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Saves the range summaries for the next open; call it last, when no
    /// more records will be stored. A record stored after it takes them
    /// away again.
    pub fn close(&self) -> anyhow::Result<()> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let bytes = peerbot_protocol::codec::encode(&*index);
        self.db.put_cf_opt(self.cf(CF_META), SUMMARY_KEY, bytes, &Self::sync_write())?;
        self.summary_saved.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// A record is about to be stored: saved summaries would no longer
    /// hold.
    fn spoil_summary(&self) -> Result<(), rocksdb::Error> {
        if self.summary_saved.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.db.delete_cf_opt(self.cf(CF_META), SUMMARY_KEY, &Self::sync_write())?;
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

    /// Records of one kind, newest first, passing `keep`, at most `limit`.
    fn newest(&self, cf: &str, limit: usize, keep: &mut dyn FnMut(&VerifiedRecord) -> bool) -> Vec<VerifiedRecord> {
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
            if let Some(rec) = self.record(&key.id) {
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
        let mut best: Option<(usize, Source)> = None;
        if let Some(c) = &f.commit {
            let cf = if results { IX_RESULT_COMMIT } else { IX_CHANGE_COMMIT };
            if let Some(keys) = self.commit_keys(cf, &c.to_ascii_lowercase(), bound) {
                best = Some((keys.len(), Source::Keys(keys)));
            }
        }
        for (cf, prefix) in ranges {
            if best.as_ref().is_some_and(|(n, _)| *n == 0) {
                break;
            }
            let n = self.count_range(cf, &prefix, bound, SELECTIVITY_CAP);
            if best.as_ref().is_none_or(|(b, _)| n < *b) {
                best = Some((n, Source::Range(cf, prefix)));
            }
        }
        best.map(|(_, s)| s).unwrap_or(Source::All(if results { CF_RESULTS } else { CF_CHANGES }))
    }

    /// Keys of one index value below `bound`, counted up to `cap`.
    fn count_range(&self, cf: &str, prefix: &[u8], bound: Option<&[u8; 40]>, cap: usize) -> usize {
        let mut upper = prefix.to_vec();
        upper.extend_from_slice(bound.map_or(&[0xffu8; 40], |b| b));
        let mut n = 0;
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::From(&upper, Direction::Reverse)) {
            let Ok((k, _)) = item else { break };
            if !k.starts_with(prefix) || n >= cap {
                break;
            }
            if k.as_ref() < upper.as_slice() {
                n += 1;
            }
        }
        n
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

    /// Writes many new records in one batch with one sync.
    pub fn put_records_bulk(&self, recs: &[VerifiedRecord]) -> anyhow::Result<()> {
        self.spoil_summary()?;
        let mut batch = WriteBatch::default();
        for rec in recs {
            let key = order_key(&SyncKey { time: rec.time(), id: rec.id });
            batch.put_cf(self.cf(CF_RECORDS), rec.id.0, &rec.bytes);
            batch.put_cf(self.cf(CF_ORDER), key, b"");
            match rec.body {
                peerbot_protocol::Body::Change(_) => batch.put_cf(self.cf(CF_CHANGES), key, b""),
                peerbot_protocol::Body::Result(_) => batch.put_cf(self.cf(CF_RESULTS), key, b""),
                _ => {}
            }
            file_indexes(&self.db, &mut batch, rec, &key);
            self.file_lookups(&mut batch, rec);
        }
        self.db.write_opt(batch, &Self::sync_write())?;
        // Only what is on disk counts: a failed write (a full disk) must not
        // leave the count or the reconciliation index ahead of the database.
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for rec in recs {
            index.add(&SyncKey { time: rec.time(), id: rec.id });
        }
        self.count.fetch_add(recs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn file_lookups(&self, batch: &mut WriteBatch, rec: &VerifiedRecord) {
        for (l, k, v) in lookups_of(rec) {
            batch.put_cf(self.cf(CF_LOOKUPS), lookup_key(l, &k, &v), b"");
        }
    }

    /// Up to `limit` lookups of one kind whose key starts with `prefix`
    /// (all 32 bytes of it for one key's ids).
    fn lookups_from(&self, lookup: Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)> {
        let mut start = vec![lookup as u8];
        start.extend_from_slice(&prefix[..prefix.len().min(32)]);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LOOKUPS), IteratorMode::From(&start, Direction::Forward)) {
            let Ok((k, _)) = item else { break };
            if !k.starts_with(&start) || out.len() >= limit {
                break;
            }
            out.extend(parse_lookup_key(&k));
        }
        out
    }

    pub fn record(&self, id: &Hash32) -> Option<VerifiedRecord> {
        let b = self.get_record(id)?;
        decode_stored(&b).ok()
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
        self.spoil_summary().map_err(err)?;
        let key = order_key(&SyncKey { time: rec.time(), id: rec.id });
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RECORDS), rec.id.0, &rec.bytes);
        batch.put_cf(self.cf(CF_ORDER), key, b"");
        let idx = match rec.body {
            peerbot_protocol::Body::Change(_) => Some(CF_CHANGES),
            peerbot_protocol::Body::Result(_) => Some(CF_RESULTS),
            _ => None,
        };
        if let Some(idx) = idx {
            batch.put_cf(self.cf(idx), key, b"");
        }
        file_indexes(&self.db, &mut batch, rec, &key);
        self.file_lookups(&mut batch, rec);
        self.db.write_opt(batch, &Self::sync_write()).map_err(err)?;
        self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.index.write().unwrap_or_else(|e| e.into_inner()).add(&SyncKey { time: rec.time(), id: rec.id });
        Ok(true)
    }

    fn put_records(&mut self, recs: &[VerifiedRecord]) -> Result<(), StoreError> {
        self.put_records_bulk(recs).map_err(|e| StoreError(e.to_string()))
    }

    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>> {
        self.db.get_cf(self.cf(CF_RECORDS), id.0).ok().flatten()
    }

    fn has_record(&self, id: &Hash32) -> bool {
        matches!(self.db.get_pinned_cf(self.cf(CF_RECORDS), id.0), Ok(Some(_)))
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

    fn put_lookup(&mut self, lookup: Lookup, key: &Hash32, value: &Hash32) -> Result<(), StoreError> {
        // Derived again by the replay at start-up: no sync needed.
        self.db.put_cf(self.cf(CF_LOOKUPS), lookup_key(lookup, key, value), b"").map_err(err)
    }

    fn lookup(&self, lookup: Lookup, key: &Hash32, limit: usize) -> Vec<Hash32> {
        self.lookups_from(lookup, &key.0, limit).into_iter().map(|(_, id)| id).collect()
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
mod tests {
    use super::*;
    use peerbot_protocol::record::{sign, BuildResult, Change, Status};
    use peerbot_protocol::{deterministic_key, Body};

    const RECIPE: &str = "[[builder]]\nname='linux'\n[[builder.step]]\nrun='make'\n";

    fn change(commit: &str) -> VerifiedRecord {
        let jobs = peerbot_protocol::recipe::parse_recipe("/repo", commit, RECIPE).unwrap();
        let c = Change {
            repo: "/repo".into(),
            branch: "main".into(),
            commit: commit.into(),
            jobs,
            announced_ms: 1_000,
            ..Default::default()
        };
        sign(&deterministic_key(1), &Body::Change(c))
    }

    fn result(job: Hash32, attempt: u32) -> VerifiedRecord {
        let r = BuildResult {
            job,
            repo: "/repo".into(),
            branch: "main".into(),
            commit: "abcd01".into(),
            builder: "linux".into(),
            attempt,
            labels: vec![],
            started_ms: 2_000,
            ended_ms: 3_000 + attempt as u64,
            status: Status::Success,
            steps: vec![],
            metrics: Default::default(),
            failed_step: None,
            error: None,
            author: String::new(),
            title: String::new(),
        };
        sign(&deterministic_key(2), &Body::Result(r))
    }

    #[test]
    fn a_clean_close_saves_the_range_summaries_and_a_later_write_takes_them_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStore::open(dir.path()).unwrap();
        let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
        s.put_records(&[change("abcd01"), change("abcd02"), result(job, 0)]).unwrap();
        let whole = s.summary(&SyncKey::MIN, None);
        let saved = |s: &RocksStore| s.db.get_cf(s.cf(CF_META), SUMMARY_KEY).unwrap().is_some();
        s.close().unwrap();
        assert!(saved(&s));
        drop(s);
        // Opened again: read from what close saved (and taken away).
        let mut s = RocksStore::open(dir.path()).unwrap();
        assert!(!saved(&s));
        assert_eq!((s.record_count(), s.summary(&SyncKey::MIN, None)), (3, whole));
        s.close().unwrap();
        s.put_record(&result(job, 1)).unwrap();
        assert!(!saved(&s), "a record stored after close spoils the summaries");
        drop(s);
        let s = RocksStore::open(dir.path()).unwrap();
        assert_eq!(s.record_count(), 4);
        assert_ne!(s.summary(&SyncKey::MIN, None), whole);
    }

    #[test]
    fn records_file_their_lookups_in_the_write_that_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStore::open(dir.path()).unwrap();
        let c = change("abcd01");
        let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
        s.put_record(&c).unwrap();
        s.put_records(&[result(job, 0), result(job, 1)]).unwrap();
        assert_eq!(s.change_for_job(&job), Some(c.id));
        assert_eq!(s.change_for_commit("/repo", "abcd01"), Some(c.id));
        assert_eq!(s.change_for_commit("/repo", "abcd02"), None);
        assert_eq!(s.results_for_job(&job).len(), 2);
        assert_eq!(s.lookup_prefix(Lookup::JobChange, &job.0[..3], 10), vec![(job, c.id)]);
        assert!(s.superseded_by(&job).is_none());
    }

    #[test]
    fn a_schema_1_database_gets_its_lookups_filed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
        {
            let mut s = RocksStore::open(dir.path()).unwrap();
            s.put_record(&change("abcd01")).unwrap();
            s.put_record(&result(job, 0)).unwrap();
            // As a schema 1 node left it: no lookups.
            let all: Vec<_> = s.lookups_from(Lookup::JobChange, &[], 100);
            assert_eq!(all.len(), 1);
            for l in [Lookup::JobChange, Lookup::JobResult, Lookup::CommitChange] {
                for (k, v) in s.lookups_from(l, &[], 100) {
                    s.db.delete_cf(s.cf(CF_LOOKUPS), lookup_key(l, &k, &v)).unwrap();
                }
            }
            s.db.put_cf(s.cf(CF_META), b"schema", b"1").unwrap();
            assert!(s.change_for_job(&job).is_none());
        }
        let s = RocksStore::open(dir.path()).unwrap();
        assert!(s.change_for_job(&job).is_some());
        assert_eq!(s.results_for_job(&job).len(), 1);
        assert!(s.change_for_commit("/repo", "abcd01").is_some());
        assert_eq!(s.db.get_cf(s.cf(CF_META), b"schema").unwrap().as_deref(), Some(SCHEMA_VERSION));
    }

    /// Results and changes over three repos, two branches, three builders,
    /// every status, two signers and shared times (ties broken by id).
    fn mixed() -> Vec<VerifiedRecord> {
        let statuses = [Status::Success, Status::Warnings, Status::Failure, Status::Exception, Status::Cancelled];
        let mut out = Vec::new();
        for i in 0..240u64 {
            let repo = format!("/repo{}", i % 3);
            let branch = if i % 4 == 0 { "dev" } else { "main" };
            let commit = format!("{:02x}{:038x}", (i % 7) * 17, i / 2);
            let r = BuildResult {
                job: Hash32(*blake3::hash(&i.to_be_bytes()).as_bytes()),
                repo: repo.clone(),
                branch: branch.into(),
                commit: if i % 11 == 0 { commit.to_ascii_uppercase() } else { commit.clone() },
                builder: ["linux", "mac", "win"][(i % 5 % 3) as usize].into(),
                attempt: 0,
                labels: vec![],
                started_ms: 0,
                ended_ms: 1_000 + i / 3,
                status: statuses[(i % 5) as usize],
                steps: vec![],
                metrics: Default::default(),
                failed_step: None,
                error: None,
                author: String::new(),
                title: String::new(),
            };
            out.push(sign(&deterministic_key(1 + i % 2), &Body::Result(r)));
            if i % 2 == 0 {
                let c = Change { repo, branch: branch.into(), commit, announced_ms: 900 + i / 4, ..Default::default() };
                out.push(sign(&deterministic_key(3), &Body::Change(c)));
            }
        }
        out
    }

    fn filters() -> Vec<Filter> {
        let signer = deterministic_key(2).public().to_peer_id();
        let s = |x: &str| Some(x.to_string());
        vec![
            Filter::default(),
            Filter { repo: s("/repo1"), ..Default::default() },
            Filter { repo: s("/repo2"), branch: s("dev"), ..Default::default() },
            Filter { branch: s("dev"), ..Default::default() },
            Filter { builder: s("mac"), ..Default::default() },
            Filter { builder: s("nomatch"), ..Default::default() },
            Filter { status: Some(Status::Failure), ..Default::default() },
            Filter { signer: Some(signer), ..Default::default() },
            Filter { commit: s("22"), ..Default::default() },
            Filter { commit: s("3300000000000000000000000000000000000000"), ..Default::default() },
            Filter { commit: s("11000000000000000000000000000000000000001"), ..Default::default() },
            Filter { commit: s("4"), builder: s("win"), ..Default::default() },
            Filter { repo: s("/repo0"), builder: s("linux"), status: Some(Status::Success), ..Default::default() },
            Filter {
                repo: s("/repo1"),
                branch: s("main"),
                commit: s("00"),
                signer: Some(signer),
                ..Default::default()
            },
        ]
    }

    /// What the API answered before the indexes: every record of the kind,
    /// newest first, checked one by one.
    fn scan(s: &RocksStore, kind: Kind, f: &Filter) -> Vec<Hash32> {
        let cf = if kind == Kind::Results { CF_RESULTS } else { CF_CHANGES };
        s.newest(cf, usize::MAX, &mut |r| f.matches(r)).iter().map(|r| r.id).collect()
    }

    /// Every page of a query, following `next`.
    fn paged(s: &RocksStore, kind: Kind, f: &Filter, limit: usize) -> Vec<Hash32> {
        let (mut out, mut before) = (Vec::new(), None);
        loop {
            let page = s.query(kind, f, before, limit, 1_000_000);
            assert!(page.records.len() <= limit);
            out.extend(page.records.iter().map(|r| r.id));
            match page.next {
                Some(k) => before = Some(k),
                None => return out,
            }
        }
    }

    fn check_against_scan(s: &RocksStore) {
        for kind in [Kind::Results, Kind::Changes] {
            for f in filters() {
                let want = scan(s, kind, &f);
                let got = s.query(kind, &f, None, 1000, 1_000_000).records.iter().map(|r| r.id).collect::<Vec<_>>();
                assert_eq!(got, want, "{kind:?} {f:?}");
                for limit in [1, 7, 50] {
                    assert_eq!(paged(s, kind, &f, limit), want, "{kind:?} {f:?} by {limit}");
                }
                // A page before the n-th match holds the matches after it.
                if want.len() > 3 {
                    let rec = s.record(&want[2]).unwrap();
                    let page = s.query(kind, &f, Some(SyncKey { time: rec.time(), id: rec.id }), 1000, 1_000_000);
                    assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), want[3..].to_vec());
                }
            }
        }
    }

    #[test]
    fn indexed_queries_answer_what_a_scan_would() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RocksStore::open(dir.path()).unwrap();
        let recs = mixed();
        // Both write paths file the indexes.
        s.put_records_bulk(&recs[..150]).unwrap();
        for r in &recs[150..] {
            s.put_record(r).unwrap();
        }
        assert!(!scan(&s, Kind::Results, &filters()[11]).is_empty());
        check_against_scan(&s);
    }

    #[test]
    fn a_query_stops_at_its_budget_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let s = RocksStore::open(dir.path()).unwrap();
        s.put_records_bulk(&mixed()).unwrap();
        let f = Filter { branch: Some("dev".into()), builder: Some("win".into()), ..Default::default() };
        let want = scan(&s, Kind::Results, &f);
        let (mut got, mut before, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = s.query(Kind::Results, &f, before, 1000, 10);
            got.extend(page.records.iter().map(|r| r.id));
            pages += 1;
            let Some(k) = page.next else { break };
            before = Some(k);
        }
        assert_eq!(got, want);
        assert!(pages > 3);
    }

    #[test]
    fn a_store_without_indexes_rebuilds_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(dir.path()).unwrap();
            s.put_records_bulk(&mixed()).unwrap();
            // As a node from before the indexes left it.
            for cf in INDEX_CFS {
                s.db.delete_range_cf(s.cf(cf), b"".as_slice(), [0xffu8; 256].as_slice()).unwrap();
            }
            s.db.delete_cf(s.cf(CF_META), INDEX_VERSION_KEY).unwrap();
            let f = Filter { builder: Some("mac".into()), ..Default::default() };
            assert!(s.query(Kind::Results, &f, None, 10, 1000).records.is_empty());
        }
        let s = RocksStore::open(dir.path()).unwrap();
        check_against_scan(&s);
        assert_eq!(s.db.get_cf(s.cf(CF_META), INDEX_VERSION_KEY).unwrap().as_deref(), Some(INDEX_VERSION));
        drop(s);
        // And `peerbot reindex` rebuilds current ones to the same answers.
        let (s, n) = RocksStore::open_reindexed(dir.path()).unwrap();
        assert_eq!(n, mixed().len() as u64);
        check_against_scan(&s);
    }
}
