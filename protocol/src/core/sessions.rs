//! Reconciliation sessions this node started, and how far catching up has
//! come. "Caught up" has one definition here, read by the claim gate, by
//! log replication and by the API.

use std::collections::{BTreeMap, HashMap};

use libp2p_identity::PeerId;
use serde_bytes::ByteBuf;

use crate::ids::Hash32;
use crate::store::Store;
use crate::sync::{self, SyncRange};
use crate::wire::{self, Request};
use crate::Millis;

/// Rounds of one session before it is taken as finished.
pub const MAX_SYNC_ROUNDS: u32 = 64;
/// A batch of records in one fetch or push stays about this size.
pub const RECORD_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Ids wanted (queued or in flight) at once, from all sessions; what a
/// session finds beyond this waits for a later session, which starts as
/// soon as the list has drained to a quarter (`resume_after_overflow`).
pub const MAX_WANTED: usize = 256 * 1024;
/// Records pushed to a peer in one session, at most about this many bytes.
/// Pushing speeds up a peer that lacks a few records. A peer that lacks
/// more is catching up and fetches them in its own sessions, checked off
/// its core's thread; the session that finds it so ends there. Pushing it
/// the whole history as well sent each record about twice.
pub const MAX_PUSH_BYTES: usize = 4 * RECORD_BATCH_BYTES;
/// An id wanted for this long no longer keeps the node from claiming: a
/// peer that lists records it never delivers cannot stall the cluster.
pub const STALL_MS: Millis = 2 * 60_000;
/// Peers remembered as having listed records they did not deliver.
const MAX_STALLERS: usize = 1024;

/// How a late or returning node is doing at catching up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Records known to be missing and not yet fetched.
    pub to_fetch: usize,
    /// Records fetched by reconciliation since start.
    pub fetched: u64,
    /// Reconciliation sessions under way.
    pub sessions: usize,
}

#[derive(Default, Clone)]
struct SyncTally {
    need: usize,
    have: usize,
    pushed_bytes: usize,
    pushed: usize,
}

/// What to do after one round's answer.
pub struct RoundPlan {
    /// Fetches of missing records, a batch each.
    pub fetches: Vec<Vec<Hash32>>,
    /// Pushes of records the peer lacks, a batch each.
    pub pushes: Vec<Vec<ByteBuf>>,
    pub next: Next,
}

pub enum Next {
    /// Send these ranges as the next round.
    Round { ranges: Vec<SyncRange>, round: u32 },
    Finished {
        rounds: u32,
        need: usize,
        have: usize,
        /// Records pushed, of the `have` the peer lacked.
        pushed: usize,
    },
}

#[derive(Default, Clone)]
pub struct Sessions {
    open: BTreeMap<PeerId, SyncTally>,
    /// Ids being fetched from some peer, and since when: a record missing
    /// from two peers' answers is fetched once.
    wanted: HashMap<Hash32, (Millis, PeerId)>,
    /// Peers that listed records and then delivered none of them, and
    /// when: what they list does not hold the node back from claiming.
    stallers: HashMap<PeerId, Millis>,
    progress: SyncProgress,
    progress_said_ms: Millis,
    /// A reconciliation with some peer has completed since start.
    synced_once: bool,
    /// A session with this peer found more missing records than the
    /// want-list could take: another starts once the list has drained.
    overflowed: Option<PeerId>,
}

impl Sessions {
    /// Opens a session with `peer` unless one is under way.
    pub fn start<S: Store>(&mut self, store: &S, peer: PeerId) -> Option<Request> {
        if self.open.contains_key(&peer) {
            return None;
        }
        self.open.insert(peer, SyncTally::default());
        Some(Request::Reconcile { ranges: sync::initial(store) })
    }

    pub fn failed(&mut self, peer: &PeerId) {
        self.open.remove(peer);
    }

    /// Processes a peer's answer to round `round`.
    pub fn round<S: Store>(
        &mut self,
        now: Millis,
        store: &S,
        peer: PeerId,
        round: u32,
        ranges: &[SyncRange],
    ) -> Result<RoundPlan, sync::SyncError> {
        let out = sync::process(store, ranges, true)?;
        let mut new = Vec::new();
        for id in &out.need {
            if self.wanted.len() >= MAX_WANTED {
                self.overflowed = Some(peer);
                break;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = self.wanted.entry(*id) {
                e.insert((now, peer));
                new.push(*id);
            }
        }
        let fetches: Vec<Vec<Hash32>> = new.chunks(wire::MAX_RECORDS_PER_REQUEST).map(|c| c.to_vec()).collect();
        self.progress.to_fetch += new.len();
        let tally = self.open.entry(peer).or_default();
        let (pushes, peer_behind) = push_batches(store, &out.have, MAX_PUSH_BYTES.saturating_sub(tally.pushed_bytes));
        tally.pushed_bytes += pushes.iter().flatten().map(|r| r.len()).sum::<usize>();
        tally.pushed += pushes.iter().map(Vec::len).sum::<usize>();
        tally.need += out.need.len();
        tally.have += out.have.len();
        // With the want-list full, the rest of the session would only list
        // ids to drop, at the peer's cost: the next session goes on.
        let full = self.overflowed == Some(peer) && self.wanted.len() >= MAX_WANTED;
        let next = if out.finished() || round >= MAX_SYNC_ROUNDS || full || peer_behind {
            self.synced_once |= !full && !peer_behind;
            let t = self.open.remove(&peer).unwrap_or_default();
            Next::Finished { rounds: round, need: t.need, have: t.have, pushed: t.pushed }
        } else {
            Next::Round { ranges: out.reply, round: round + 1 }
        };
        Ok(RoundPlan { fetches, pushes, next })
    }

    /// A fetch of `ids` was answered and `fetched` new records stored (or
    /// held); `missing` are the ids still not stored; `delivered` says the
    /// answer carried any record at all. When the answer made
    /// progress but was cut short (a reply stops at a size), returns the
    /// ids to ask for again; otherwise the peer has no more of them.
    pub fn fetch_answered(
        &mut self,
        now: Millis,
        peer: PeerId,
        ids: &[Hash32],
        fetched: usize,
        missing: Vec<Hash32>,
        delivered: bool,
    ) -> Vec<Hash32> {
        self.progress.fetched += fetched as u64;
        if !delivered && !missing.is_empty() {
            // Records are never deleted: a peer that lists what it cannot give is not to be waited for.
            if self.stallers.len() >= MAX_STALLERS {
                self.stallers.retain(|_, at| now < *at + STALL_MS);
            }
            if self.stallers.len() < MAX_STALLERS {
                self.stallers.insert(peer, now);
            }
        }
        let again = if fetched > 0 { missing } else { vec![] };
        let done = ids.len() - again.len();
        let asked_again: std::collections::HashSet<&Hash32> = again.iter().collect();
        for id in ids {
            if !asked_again.contains(id) {
                self.wanted.remove(id);
            }
        }
        self.progress.to_fetch = self.progress.to_fetch.saturating_sub(done);
        crate::invariant!(self.progress.to_fetch <= self.wanted.len(), "every record to fetch is wanted");
        again
    }

    /// The peer to reconcile with again now: its last session found more
    /// than the want-list could take, and the list has drained to a
    /// quarter, so the next part is found while the rest is fetched
    /// rather than at the next periodic session.
    pub fn resume_after_overflow(&mut self) -> Option<PeerId> {
        let peer = self.overflowed?;
        if self.wanted.len() > MAX_WANTED / 4 || self.open.contains_key(&peer) {
            return None;
        }
        self.overflowed = None;
        Some(peer)
    }

    /// Progress to report while catching up, at most every two seconds.
    pub fn progress_to_report(&mut self, now: Millis) -> Option<SyncProgress> {
        if self.progress.to_fetch > 0 && now >= self.progress_said_ms + 2_000 {
            self.progress_said_ms = now;
            return Some(self.progress);
        }
        None
    }

    /// A fetch failed: a later session finds the ids again.
    pub fn fetch_failed(&mut self, ids: &[Hash32]) {
        for id in ids {
            self.wanted.remove(id);
        }
        self.progress.to_fetch = self.progress.to_fetch.saturating_sub(ids.len());
    }

    pub fn progress(&self) -> SyncProgress {
        SyncProgress { sessions: self.open.len(), ..self.progress }
    }

    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// Records known to be missing are being fetched, and not for so long
    /// that their sender looks like it will never deliver them.
    pub fn fetching(&self, now: Millis) -> bool {
        self.progress.to_fetch > 0
            && self.wanted.values().any(|(since, from)| now < since + STALL_MS && !self.stallers.contains_key(from))
    }

    /// Whether `peer` listed records it then did not deliver.
    pub fn stalled_by(&self, peer: &PeerId) -> bool {
        self.stallers.contains_key(peer)
    }
}

/// Records the peer lacks, in batches within the request limits, about
/// `budget` bytes in all; true when the budget left some out (a record
/// this node cannot read is only skipped).
fn push_batches<S: Store>(store: &S, have: &[Hash32], budget: usize) -> (Vec<Vec<ByteBuf>>, bool) {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    let mut total = 0;
    for id in have {
        if total >= budget {
            if !batch.is_empty() {
                batches.push(batch);
            }
            return (batches, true);
        }
        if let Some(b) = store.get_record(id) {
            size += b.len();
            total += b.len();
            batch.push(ByteBuf::from(b));
        }
        if batch.len() >= wire::MAX_RECORDS_PER_REQUEST || size > RECORD_BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            size = 0;
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use crate::sync::{RangeMode, SyncRange};

    #[test]
    fn a_peer_that_lists_records_it_never_delivers_stops_holding_claims_back() {
        let store = MemStore::new();
        let mut s = Sessions::default();
        let liar = crate::deterministic_key(1).public().to_peer_id();
        let honest = crate::deterministic_key(2).public().to_peer_id();
        let bogus = |n: u8| vec![Hash32::of(&[n]), Hash32::of(&[n, n])];
        let listing = |ids: Vec<Hash32>| vec![SyncRange { upper: None, mode: RangeMode::IdList { ids, answer: true } }];
        s.start(&store, liar);
        let plan = s.round(0, &store, liar, 1, &listing(bogus(1))).unwrap();
        assert_eq!(plan.fetches.concat(), bogus(1));
        assert!(s.fetching(0));
        // It answers the fetch with none of them.
        s.fetch_answered(1_000, liar, &bogus(1), 0, bogus(1), false);
        assert!(!s.fetching(1_000));
        // What it lists next does not hold claims back either; an honest
        // peer's listing does, until it is fetched or grows too old.
        s.start(&store, liar);
        s.round(2_000, &store, liar, 1, &listing(bogus(2))).unwrap();
        assert!(!s.fetching(2_000));
        s.start(&store, honest);
        s.round(3_000, &store, honest, 1, &listing(bogus(3))).unwrap();
        assert!(s.fetching(3_000));
        // It delivers records this node refuses: it is not a staller.
        s.fetch_answered(3_500, honest, &bogus(3)[..1], 0, bogus(3)[..1].to_vec(), true);
        assert!(!s.stalled_by(&honest) && s.fetching(3_500));
        assert!(!s.fetching(3_000 + STALL_MS));
    }

    #[test]
    fn a_session_pushes_a_peer_that_lacks_much_no_more_than_its_budget_and_ends() {
        let mut store = MemStore::new();
        let key = crate::deterministic_key(3);
        for i in 0..12_000u64 {
            let change = crate::record::Change {
                repo: "https://example.org/r.git".into(),
                branch: "main".into(),
                commit: format!("{i:040x}"),
                title: "x".repeat(600),
                announced_ms: i,
                ..Default::default()
            };
            store.put_record(&crate::record::sign(&key, &crate::record::Body::Change(change))).unwrap();
        }
        let peer = crate::deterministic_key(4).public().to_peer_id();
        let mut s = Sessions::default();
        s.start(&store, peer);
        // The peer says it holds nothing in any of twelve ranges: it is a
        // node catching up.
        let keys = store.keys_in(&sync::SyncKey::MIN, None, usize::MAX);
        let empty = || RangeMode::IdList { ids: vec![], answer: false };
        let mut listing: Vec<SyncRange> =
            keys.iter().step_by(1_000).skip(1).map(|k| SyncRange { upper: Some(*k), mode: empty() }).collect();
        listing.push(SyncRange { upper: None, mode: empty() });
        let plan = s.round(0, &store, peer, 1, &listing).unwrap();
        let pushed: usize = plan.pushes.iter().flatten().map(|r| r.len()).sum();
        assert!(pushed > MAX_PUSH_BYTES / 2, "a peer lacking records is pushed some: {pushed} bytes");
        assert!(pushed <= MAX_PUSH_BYTES + 1024, "pushed {pushed} bytes");
        assert!(matches!(plan.next, Next::Finished { .. }), "the session ends: the peer fetches the rest itself");
        assert!(!s.synced_once(), "a session cut short is no reconciliation");
        // A peer lacking a few is pushed them all, and the session goes on.
        s.start(&store, peer);
        let few = vec![
            SyncRange { upper: Some(keys[10]), mode: empty() },
            SyncRange { upper: None, mode: RangeMode::Fingerprint { fp: vec![0; 16] } },
        ];
        let plan = s.round(0, &store, peer, 1, &few).unwrap();
        assert_eq!(plan.pushes.concat().len(), 10);
        assert!(matches!(plan.next, Next::Round { .. }));
    }

    #[test]
    fn a_session_that_found_more_than_the_want_list_takes_resumes_once_the_list_drains() {
        let store = MemStore::new();
        let mut s = Sessions::default();
        let peer = crate::deterministic_key(1).public().to_peer_id();
        let ids: Vec<Hash32> = (0..MAX_WANTED as u64 + 1000).map(|i| Hash32::of(&i.to_le_bytes())).collect();
        s.start(&store, peer);
        let mut fetches = vec![];
        for (round, part) in ids.chunks(sync::MAX_IDS / 2).enumerate() {
            let listing = vec![SyncRange { upper: None, mode: RangeMode::IdList { ids: part.to_vec(), answer: true } }];
            fetches.extend(s.round(0, &store, peer, round as u32 + 1, &listing).unwrap().fetches);
            // Each listing is the last word on the range: a new session each time.
            s.start(&store, peer);
        }
        s.failed(&peer);
        assert_eq!(fetches.iter().map(Vec::len).sum::<usize>(), MAX_WANTED);
        assert_eq!(s.resume_after_overflow(), None, "not while the list is full");
        // A session that finds more while the list is full ends at once,
        // with ranges still to compare.
        s.start(&store, peer);
        let more = vec![
            SyncRange {
                upper: Some(sync::SyncKey { time: 5, id: Hash32::ZERO }),
                mode: RangeMode::IdList { ids: vec![Hash32::of(b"more")], answer: true },
            },
            SyncRange { upper: None, mode: RangeMode::Fingerprint { fp: vec![1; 16] } },
        ];
        let plan = s.round(0, &store, peer, 1, &more).unwrap();
        assert!(plan.fetches.is_empty() && matches!(plan.next, Next::Finished { .. }));
        assert_eq!(s.progress().sessions, 0);
        let (most, rest) = fetches.split_at(fetches.len() * 4 / 5);
        for f in most {
            s.fetch_answered(1, peer, f, f.len(), vec![], true);
        }
        assert!(s.progress().to_fetch <= MAX_WANTED / 4, "{}", s.progress().to_fetch);
        assert_eq!(s.resume_after_overflow(), Some(peer));
        assert_eq!(s.resume_after_overflow(), None, "once");
        for f in rest {
            s.fetch_answered(1, peer, f, f.len(), vec![], true);
        }
        assert_eq!(s.progress().to_fetch, 0);
    }
}
