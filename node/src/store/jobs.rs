//! Finished jobs by state, for `GET /api/v1/jobs?state=`: the core's
//! table holds only the open jobs, so the past is paged from here.

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::VerifiedRecord;
use peerbot_protocol::store::{Lookup, Store};
use peerbot_protocol::Body;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use super::{parse_lookup_key, RocksStore};

/// State ‖ time ‖ id → job id. A result files a `Done` entry and a cancel
/// a `Cancelled` one, at the record's own (time, id), in the write that
/// stores it. Whether a job was superseded is not in the records (it
/// depends on whether it was claimed when the newer change arrived): its
/// entry is filed when the core files the `Superseded` lookup, at the
/// later of the two jobs' changes' times and the superseded job's id.
/// A job can have several entries (two results, a cancel and then a
/// result); a query lists it only at its canonical one, see `canonical`.
pub(super) const IX_JOB_STATE: &str = "ix_job_state";

/// The states a job leaves the core's table in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    Done = 1,
    Cancelled = 2,
    Superseded = 3,
}

/// A position in one state's list: time ‖ id, as the entry's key holds it.
pub type Position = [u8; 40];

/// One page of finished jobs, newest first.
#[derive(Debug, Default)]
pub struct JobsPage {
    pub jobs: Vec<Hash32>,
    /// Where the next page starts: set when the page is full or the scan
    /// budget ran out first, `None` at the end of the list.
    pub next: Option<Position>,
}

fn entry_key(state: Finished, pos: &Position) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = state as u8;
    k[1..].copy_from_slice(pos);
    k
}

/// The job-state entry a record files with itself, if any.
pub(super) fn file_job_entry(db: &DB, batch: &mut WriteBatch, rec: &VerifiedRecord, key: &Position) {
    let (state, job) = match &rec.body {
        Body::Result(r) => (Finished::Done, r.job),
        Body::Cancel(k) => (Finished::Cancelled, k.job),
        _ => return,
    };
    batch.put_cf(db.cf_handle(IX_JOB_STATE).expect("cf"), entry_key(state, key), job.0);
}

/// Up to `limit` ids filed under `key`, in id order.
fn lookup(s: &RocksStore, l: Lookup, key: &Hash32, limit: usize) -> Vec<Hash32> {
    Store::lookup(s, l, key, limit)
}

fn stored_position(s: &RocksStore, id: &Hash32) -> Option<Position> {
    let rec = s.cached_record(id)?;
    Some(super::order_key(&peerbot_protocol::sync::SyncKey { time: rec.time(), id: rec.id }))
}

/// Where a superseded job is listed: when the later of its change and the
/// change of the job in its place was stored, so after both were known.
fn superseded_position(s: &RocksStore, job: &Hash32, by: &Hash32) -> Position {
    let time = [job, by]
        .iter()
        .filter_map(|j| lookup(s, Lookup::JobChange, j, 1).first().and_then(|c| stored_position(s, c)))
        .max()
        .map_or([0; 8], |p| p[..8].try_into().expect("8 bytes"));
    let mut pos = [0u8; 40];
    pos[..8].copy_from_slice(&time);
    pos[8..].copy_from_slice(&job.0);
    pos
}

/// Files a superseded job's entry (with the core's `Superseded` lookup).
pub(super) fn file_superseded(s: &RocksStore, job: &Hash32, by: &Hash32) -> Result<(), rocksdb::Error> {
    let pos = superseded_position(s, job, by);
    s.db.put_cf(s.cf(IX_JOB_STATE), entry_key(Finished::Superseded, &pos), job.0)
}

/// Files the entries of every `Superseded` lookup again (a rebuild).
pub(super) fn refile_superseded(s: &RocksStore) -> anyhow::Result<u64> {
    let start = [Lookup::Superseded as u8];
    let mut n = 0;
    for item in s.lookups_iter(&start) {
        let (k, _) = item?;
        if !k.starts_with(&start) {
            break;
        }
        if let Some((job, by)) = parse_lookup_key(&k) {
            file_superseded(s, &job, &by)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The state the stored records (and the core's `Superseded` lookups) give
/// a job, in the core's order of precedence: a result makes it done
/// whatever else happened, then a cancel, then a newer job in its place.
/// `None` for a job still open, or whose change is not stored (nothing
/// could show it).
fn stored_state(s: &RocksStore, job: &Hash32) -> Option<(Finished, Vec<Hash32>)> {
    lookup(s, Lookup::JobChange, job, 1).first()?;
    let results = lookup(s, Lookup::JobResult, job, 64);
    if !results.is_empty() {
        return Some((Finished::Done, results));
    }
    let cancels = lookup(s, Lookup::JobCancel, job, 64);
    if !cancels.is_empty() {
        return Some((Finished::Cancelled, cancels));
    }
    let by = lookup(s, Lookup::Superseded, job, 1);
    (!by.is_empty()).then_some((Finished::Superseded, by))
}

/// A job's one place in `state`'s list: its earliest result for `Done`,
/// its earliest cancel for `Cancelled`; `None` if it is not in that state.
fn position(s: &RocksStore, state: Finished, job: &Hash32) -> Option<Position> {
    let (now, ids) = stored_state(s, job)?;
    if now != state {
        return None;
    }
    match state {
        Finished::Superseded => Some(superseded_position(s, job, &ids[0])),
        _ => ids.iter().filter_map(|id| stored_position(s, id)).min(),
    }
}

/// Whether the entry at `pos` is where `job` is listed in `state`.
fn canonical(s: &RocksStore, state: Finished, job: &Hash32, pos: &Position) -> bool {
    if state == Finished::Superseded {
        return position(s, state, job).as_ref() == Some(pos);
    }
    match stored_state(s, job) {
        // The common case, one result or one cancel: no record to read.
        Some((now, ids)) if now == state && ids.len() == 1 => ids[0].0[..] == pos[8..],
        Some((now, _)) if now == state => position(s, state, job).as_ref() == Some(pos),
        _ => false,
    }
}

impl RocksStore {
    /// Up to `limit` jobs in `state`, newest first, listed before `before`;
    /// stops after `budget` entries with `next` saying where it got to.
    pub fn finished_jobs(&self, state: Finished, before: Option<Position>, limit: usize, budget: usize) -> JobsPage {
        let mut page = JobsPage::default();
        if limit == 0 {
            return page;
        }
        let upper = entry_key(state, &before.unwrap_or([0xff; 40]));
        let mut examined = 0;
        for item in self.db.iterator_cf(self.cf(IX_JOB_STATE), IteratorMode::From(&upper, Direction::Reverse)) {
            let Ok((k, v)) = item else { break };
            if k.first() != Some(&(state as u8)) {
                break;
            }
            if k.as_ref() >= upper.as_slice() {
                continue;
            }
            let (Ok(pos), Ok(job)) = (<Position>::try_from(&k[1..]), <[u8; 32]>::try_from(v.as_ref())) else {
                continue;
            };
            let job = Hash32(job);
            if canonical(self, state, &job, &pos) {
                page.jobs.push(job);
            }
            examined += 1;
            if page.jobs.len() >= limit || examined >= budget {
                page.next = Some(pos);
                break;
            }
        }
        page
    }

    /// Where `job` is listed in `state`, for a `before` cursor naming a job.
    pub fn job_position(&self, state: Finished, job: &Hash32) -> Option<Position> {
        position(self, state, job)
    }

    /// Every entry of `state`, oldest first.
    #[cfg(test)]
    pub(super) fn job_entries(&self, state: Finished) -> Vec<(Position, Hash32)> {
        let start = [state as u8];
        self.db
            .iterator_cf(self.cf(IX_JOB_STATE), IteratorMode::From(&start, Direction::Forward))
            .map_while(|i| i.ok())
            .take_while(|(k, _)| k.starts_with(&start))
            .filter_map(|(k, v)| Some((k[1..].try_into().ok()?, Hash32(v.as_ref().try_into().ok()?))))
            .collect()
    }
}
