//! Range-based set reconciliation over the (time, id) order of records.
//!
//! The initiator sends ranges that cover the whole key space, each with a
//! mode: skip it, compare this fingerprint, or here are my ids. The other
//! side answers range by range: equal fingerprints are skipped, differing
//! ones are split into sub-ranges (or listed when small). Only the
//! initiator computes the outcome: the ids it needs and the ids it has
//! that the peer lacks. Each message is processed without session state,
//! so a lost round only costs a retry.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::ids::Hash32;
pub use crate::keyspace::{min_bound, Fingerprint, SyncKey};
use crate::store::Store;

pub const BUCKETS: usize = 16;
/// A differing range with at most this many items is listed, not split.
pub const LIST_THRESHOLD: u64 = 16;
/// The responder answers a listed range with its own list up to this size.
pub const ANSWER_MAX: usize = 1024;
/// Items (ids plus ranges) one message may carry; the rest is deferred.
pub const MESSAGE_BUDGET: usize = 16 * 1024;
pub const MAX_RANGES: usize = 64 * 1024;
pub const MAX_IDS: usize = 64 * 1024;
/// An id list from a peer is compared with at most this many of this
/// node's own keys in its range; a range holding more here is split and
/// compared again in the next round, as a fingerprint would be.
pub const LIST_LIMIT: usize = 4 * ANSWER_MAX;
/// Keys of its own one message may make this node read for id lists.
pub const MAX_SCAN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum RangeMode {
    Skip,
    /// Hash of the range's id sum and count.
    Fingerprint {
        fp: Vec<u8>,
    },
    IdList {
        ids: Vec<Hash32>,
        /// True when this list answers the peer's list (the last word on the range).
        answer: bool,
    },
    /// The initiator's ids in the range, by their first 8 bytes, in order.
    Prefixes {
        prefixes: Vec<[u8; 8]>,
    },
    /// The responder's reply to `Prefixes`: its ids the initiator lacks, and
    /// one bit per listed prefix, set when the responder has that record.
    Answer {
        extra: Vec<Hash32>,
        have: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncRange {
    /// Exclusive upper bound; `None` is the end of the key space. The lower
    /// bound is the previous range's upper bound.
    pub upper: Option<SyncKey>,
    pub mode: RangeMode,
}

/// The compact wire form of ranges: each bound as (time delta from the
/// previous bound, id prefix without trailing zeros); skip as null, a
/// fingerprint as bytes, a list as [ids, answer]. Sizes grow with the
/// number of differing ranges, not with the history.
pub mod wire_ranges {
    use super::*;
    use serde::{Deserializer, Serializer};
    use serde_bytes::ByteBuf;

    const PREFIXES: u8 = 1;
    const ANSWER: u8 = 2;

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Skip,
        Fingerprint(ByteBuf),
        IdList(Vec<Hash32>, bool),
        Prefixes(u8, ByteBuf),
        Answer(u8, Vec<Hash32>, ByteBuf),
    }

    type Wire = (Option<(u64, ByteBuf)>, Mode);

    pub fn serialize<S: Serializer>(ranges: &[SyncRange], s: S) -> Result<S::Ok, S::Error> {
        let mut prev = 0u64;
        let mut out: Vec<Wire> = Vec::with_capacity(ranges.len());
        for r in ranges {
            let bound = r.upper.map(|k| {
                let delta = k.time.saturating_sub(prev);
                prev = k.time;
                let len = k.id.0.iter().rposition(|b| *b != 0).map(|i| i + 1).unwrap_or(0);
                (delta, ByteBuf::from(k.id.0[..len].to_vec()))
            });
            let mode = match &r.mode {
                RangeMode::Skip => Mode::Skip,
                RangeMode::Fingerprint { fp } => Mode::Fingerprint(ByteBuf::from(fp.clone())),
                RangeMode::IdList { ids, answer } => Mode::IdList(ids.clone(), *answer),
                RangeMode::Prefixes { prefixes } => Mode::Prefixes(PREFIXES, ByteBuf::from(prefixes.concat())),
                RangeMode::Answer { extra, have } => Mode::Answer(ANSWER, extra.clone(), ByteBuf::from(have.clone())),
            };
            out.push((bound, mode));
        }
        out.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SyncRange>, D::Error> {
        let wire: Vec<Wire> = Deserialize::deserialize(d)?;
        let mut prev = 0u64;
        let mut out = Vec::with_capacity(wire.len());
        for (bound, mode) in wire {
            let upper = match bound {
                None => None,
                Some((delta, prefix)) => {
                    if prefix.len() > 32 {
                        return Err(serde::de::Error::custom("sync bound id prefix over 32 bytes"));
                    }
                    let time =
                        prev.checked_add(delta).ok_or_else(|| serde::de::Error::custom("sync bound time overflows"))?;
                    prev = time;
                    let mut id = [0u8; 32];
                    id[..prefix.len()].copy_from_slice(&prefix);
                    Some(SyncKey { time, id: Hash32(id) })
                }
            };
            let mode = match mode {
                Mode::Skip => RangeMode::Skip,
                Mode::Fingerprint(fp) => RangeMode::Fingerprint { fp: fp.into_vec() },
                Mode::IdList(ids, answer) => RangeMode::IdList { ids, answer },
                Mode::Prefixes(PREFIXES, bytes) if bytes.len() % 8 == 0 => {
                    RangeMode::Prefixes { prefixes: bytes.chunks(8).map(|c| c.try_into().expect("8 bytes")).collect() }
                }
                Mode::Answer(ANSWER, extra, have) => RangeMode::Answer { extra, have: have.into_vec() },
                _ => return Err(serde::de::Error::custom("unknown sync range mode")),
            };
            out.push(SyncRange { upper, mode });
        }
        Ok(out)
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Vec<SyncRange>,
    /// Ids the peer has and we lack (initiator only).
    pub need: Vec<Hash32>,
    /// Ids we have and the peer lacks (initiator only).
    pub have: Vec<Hash32>,
}

impl Outcome {
    /// Nothing left to compare: every range in the reply is skipped.
    pub fn finished(&self) -> bool {
        self.reply.iter().all(|r| r.mode == RangeMode::Skip)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SyncError {
    #[error("sync ranges are not in ascending order")]
    Order,
    #[error("sync message has too many ranges or ids")]
    TooMany,
    #[error("sync message does not cover the key space")]
    Coverage,
    #[error("fingerprint of the wrong length")]
    FingerprintLength,
}

/// Stores at least this large open a session already split in buckets.
pub const INITIAL_SPLIT_MIN: u64 = 4096;

/// The first message of a session: everything by one fingerprint, or, for
/// a large store, by bucket fingerprints, which saves a round trip when
/// the stores differ.
pub fn initial<S: Store + ?Sized>(store: &S) -> Vec<SyncRange> {
    let (count, fp) = store.summary(&SyncKey::MIN, None);
    if count < INITIAL_SPLIT_MIN {
        return vec![SyncRange { upper: None, mode: RangeMode::Fingerprint { fp: fp.finish(count) } }];
    }
    let mut reply = Reply { ranges: Vec::new(), budget: MESSAGE_BUDGET, scan: MAX_SCAN, initiator: true };
    reply.split_or_list(store, &SyncKey::MIN, None, count);
    reply.ranges
}

struct Reply {
    ranges: Vec<SyncRange>,
    budget: usize,
    /// Keys this node may still read to compare a peer's id lists with its
    /// own: one message cannot make it read its whole index.
    scan: usize,
    /// The initiator lists small ranges by id prefixes; the responder by ids.
    initiator: bool,
}

fn prefix(id: &Hash32) -> [u8; 8] {
    id.0[..8].try_into().expect("8 bytes")
}

impl Reply {
    fn push(&mut self, upper: Option<SyncKey>, mode: RangeMode) {
        let cost = 1 + mode_items(&mode);
        self.budget = self.budget.saturating_sub(cost);
        if mode == RangeMode::Skip {
            if let Some(last) = self.ranges.last_mut() {
                if last.mode == RangeMode::Skip {
                    last.upper = upper;
                    return;
                }
            }
        }
        self.ranges.push(SyncRange { upper, mode });
    }

    fn fingerprint_of<S: Store + ?Sized>(&mut self, store: &S, lo: &SyncKey, hi: Option<SyncKey>) {
        let (count, fp) = store.summary(lo, hi.as_ref());
        self.push(hi, RangeMode::Fingerprint { fp: fp.finish(count) });
    }

    /// A range known to differ: list it when small, else split it in buckets.
    fn split_or_list<S: Store + ?Sized>(&mut self, store: &S, lo: &SyncKey, hi: Option<SyncKey>, count: u64) {
        if count <= LIST_THRESHOLD {
            let keys = store.keys_in(lo, hi.as_ref(), LIST_THRESHOLD as usize);
            let mode = if self.initiator {
                RangeMode::Prefixes { prefixes: keys.iter().map(|k| prefix(&k.id)).collect() }
            } else {
                RangeMode::IdList { ids: keys.into_iter().map(|k| k.id).collect(), answer: false }
            };
            self.push(hi, mode);
            return;
        }
        let mut sub_lo = *lo;
        for b in store.split_bounds(lo, hi.as_ref(), BUCKETS) {
            self.fingerprint_of(store, &sub_lo, Some(b));
            sub_lo = b;
        }
        self.fingerprint_of(store, &sub_lo, hi);
    }
}

fn mode_items(m: &RangeMode) -> usize {
    match m {
        RangeMode::IdList { ids, .. } => ids.len(),
        RangeMode::Prefixes { prefixes } => prefixes.len(),
        RangeMode::Answer { extra, have } => extra.len() + have.len(),
        _ => 0,
    }
}

/// Checks a message's size and shape before any range is looked at.
fn check_message(ranges: &[SyncRange]) -> Result<(), SyncError> {
    if ranges.len() > MAX_RANGES {
        return Err(SyncError::TooMany);
    }
    let total_ids: usize = ranges.iter().map(|r| mode_items(&r.mode)).sum();
    if total_ids > MAX_IDS {
        return Err(SyncError::TooMany);
    }
    match ranges.last() {
        Some(r) if r.upper.is_none() => Ok(()),
        _ => Err(SyncError::Coverage),
    }
}

/// Processes one message from the peer and builds the reply.
pub fn process<S: Store + ?Sized>(store: &S, ranges: &[SyncRange], initiator: bool) -> Result<Outcome, SyncError> {
    check_message(ranges)?;
    let mut out = Outcome::default();
    let mut reply = Reply { ranges: Vec::new(), budget: MESSAGE_BUDGET, scan: MAX_SCAN, initiator };
    let mut lo = SyncKey::MIN;
    for (i, r) in ranges.iter().enumerate() {
        let hi = r.upper;
        match hi {
            Some(h) if h <= lo && i > 0 => return Err(SyncError::Order),
            None if i + 1 != ranges.len() => return Err(SyncError::Order),
            _ => {}
        }
        let span = Span { lo, hi };
        match &r.mode {
            RangeMode::Skip => reply.push(hi, RangeMode::Skip),
            RangeMode::Fingerprint { fp } => on_fingerprint(store, &span, fp, &mut reply)?,
            RangeMode::IdList { ids, answer } => on_id_list(store, &span, ids, *answer, &mut reply, &mut out),
            RangeMode::Prefixes { prefixes } => on_prefixes(store, &span, prefixes, &mut reply),
            RangeMode::Answer { extra, have } => on_answer(store, &span, extra, have, &mut reply, &mut out),
        }
        if let Some(h) = hi {
            lo = h;
        }
    }
    out.reply = reply.ranges;
    Ok(out)
}

/// The range `[lo, hi)` one entry of a message covers.
struct Span {
    lo: SyncKey,
    hi: Option<SyncKey>,
}

/// When a range's ids are too many to list, answer with its fingerprint
/// (message nearly full) or split it (room left).
fn describe<S: Store + ?Sized>(store: &S, span: &Span, reply: &mut Reply, count: Option<u64>) {
    if reply.budget < BUCKETS + LIST_THRESHOLD as usize {
        reply.fingerprint_of(store, &span.lo, span.hi);
    } else {
        let count = count.unwrap_or_else(|| store.summary(&span.lo, span.hi.as_ref()).0);
        reply.split_or_list(store, &span.lo, span.hi, count);
    }
}

/// The responder's answer to a range the initiator holds nothing of (a
/// new node's whole history): its ids, as many as the message has room
/// for, and the rest of the range by fingerprint for the next round. A
/// fresh node then learns 16,000 ids a round instead of one 1,024-id leaf
/// per range after splitting its way down to it, and the serving node
/// reads each of its keys once instead of summing ranges at every level.
/// False when the message has no room left (then the range is described
/// as usual).
fn list_for_empty<S: Store + ?Sized>(store: &S, span: &Span, reply: &mut Reply) -> bool {
    let room = reply.budget.saturating_sub(BUCKETS + LIST_THRESHOLD as usize + 2).min(reply.scan);
    if reply.initiator || room == 0 {
        return false;
    }
    let mine = store.keys_in(&span.lo, span.hi.as_ref(), room + 1);
    reply.scan = reply.scan.saturating_sub(mine.len());
    if mine.is_empty() {
        reply.push(span.hi, RangeMode::Skip);
        return true;
    }
    if mine.len() <= room {
        let extra = mine.into_iter().map(|k| k.id).collect();
        reply.push(span.hi, RangeMode::Answer { extra, have: vec![] });
        return true;
    }
    let cut = min_bound(&mine[room - 1], &mine[room]);
    let extra = mine[..room].iter().map(|k| k.id).collect();
    reply.push(Some(cut), RangeMode::Answer { extra, have: vec![] });
    reply.fingerprint_of(store, &cut, span.hi);
    true
}

/// A fingerprint of nothing: the sender holds no record in the range.
fn is_empty_fingerprint(fp: &[u8]) -> bool {
    static EMPTY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    fp == EMPTY.get_or_init(|| Fingerprint::default().finish(0)).as_slice()
}

fn on_fingerprint<S: Store + ?Sized>(store: &S, span: &Span, fp: &[u8], reply: &mut Reply) -> Result<(), SyncError> {
    if fp.len() != 16 {
        return Err(SyncError::FingerprintLength);
    }
    if is_empty_fingerprint(fp) && list_for_empty(store, span, reply) {
        return Ok(());
    }
    let (mine, myfp) = store.summary(&span.lo, span.hi.as_ref());
    if myfp.finish(mine) == *fp {
        reply.push(span.hi, RangeMode::Skip);
    } else {
        describe(store, span, reply, Some(mine));
    }
    Ok(())
}

fn on_id_list<S: Store + ?Sized>(
    store: &S,
    span: &Span,
    ids: &[Hash32],
    answer: bool,
    reply: &mut Reply,
    out: &mut Outcome,
) {
    if reply.initiator {
        let limit = LIST_LIMIT.min(reply.scan);
        let mine: Vec<Hash32> =
            store.keys_in(&span.lo, span.hi.as_ref(), limit + 1).into_iter().map(|k| k.id).collect();
        reply.scan = reply.scan.saturating_sub(mine.len());
        if mine.len() > limit {
            // Far more here than a peer lists: take what it has that this
            // node lacks, and compare the rest by fingerprint.
            out.need.extend(ids.iter().filter(|id| !store.has_record(id)));
            describe(store, span, reply, None);
            return;
        }
        let theirs: HashSet<Hash32> = ids.iter().copied().collect();
        let mine_set: HashSet<Hash32> = mine.iter().copied().collect();
        out.have.extend(mine.iter().filter(|id| !theirs.contains(id)));
        out.need.extend(ids.iter().filter(|id| !mine_set.contains(id)));
        reply.push(span.hi, RangeMode::Skip);
    } else if answer {
        reply.push(span.hi, RangeMode::Skip);
    } else {
        let mine = store.keys_in(&span.lo, span.hi.as_ref(), ANSWER_MAX + 1);
        if mine.len() <= ANSWER_MAX && reply.budget > mine.len() {
            let ids = mine.into_iter().map(|k| k.id).collect();
            reply.push(span.hi, RangeMode::IdList { ids, answer: true });
        } else {
            describe(store, span, reply, None);
        }
    }
}

fn on_prefixes<S: Store + ?Sized>(store: &S, span: &Span, prefixes: &[[u8; 8]], reply: &mut Reply) {
    if reply.initiator {
        reply.push(span.hi, RangeMode::Skip);
        return;
    }
    if prefixes.is_empty() && list_for_empty(store, span, reply) {
        return;
    }
    let mine = store.keys_in(&span.lo, span.hi.as_ref(), ANSWER_MAX + 1);
    if mine.len() <= ANSWER_MAX && reply.budget > mine.len() {
        let theirs: HashSet<[u8; 8]> = prefixes.iter().copied().collect();
        let ours: HashSet<[u8; 8]> = mine.iter().map(|k| prefix(&k.id)).collect();
        let extra = mine.iter().map(|k| k.id).filter(|id| !theirs.contains(&prefix(id))).collect();
        let mut have = vec![0u8; prefixes.len().div_ceil(8)];
        for (i, p) in prefixes.iter().enumerate() {
            if ours.contains(p) {
                have[i / 8] |= 1 << (i % 8);
            }
        }
        reply.push(span.hi, RangeMode::Answer { extra, have });
    } else {
        describe(store, span, reply, None);
    }
}

fn on_answer<S: Store + ?Sized>(
    store: &S,
    span: &Span,
    extra: &[Hash32],
    have: &[u8],
    reply: &mut Reply,
    out: &mut Outcome,
) {
    if reply.initiator {
        // The bits follow the order of the prefixes this node sent for the
        // range; if its records changed since, they may not line up, and
        // the next session mends what this misses.
        let mine = store.keys_in(&span.lo, span.hi.as_ref(), LIST_THRESHOLD as usize + 1);
        if mine.len().div_ceil(8) == have.len() {
            for (i, k) in mine.iter().enumerate() {
                if have[i / 8] & (1 << (i % 8)) == 0 {
                    out.have.push(k.id);
                }
            }
        }
        // One batched look-up: a fresh node's answers carry thousands.
        let known = store.has_records(extra);
        out.need.extend(extra.iter().zip(known).filter(|(_, k)| !k).map(|(id, _)| *id));
    }
    reply.push(span.hi, RangeMode::Skip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::VerifiedRecord;
    use crate::store::MemStore;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// A store holding bare keys: reconciliation only looks at (time, id).
    fn store_with(keys: &[(u64, u32)]) -> MemStore {
        let mut s = MemStore::new();
        for (t, n) in keys {
            let id = Hash32::of(&n.to_le_bytes());
            let rec = VerifiedRecord {
                id,
                signer: libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap().public().to_peer_id(),
                body: crate::record::Body::Change(dummy_change(*t)),
                bytes: vec![],
                signature: vec![],
            };
            s.put_record(&rec).unwrap();
        }
        s
    }

    fn dummy_change(t: u64) -> crate::record::Change {
        crate::record::Change { announced_ms: t, ..Default::default() }
    }

    /// Runs a whole session; returns (need, have, rounds).
    pub(crate) fn reconcile(a: &MemStore, b: &MemStore) -> (BTreeSet<Hash32>, BTreeSet<Hash32>, usize) {
        let mut msg = initial(a);
        let (mut need, mut have) = (BTreeSet::new(), BTreeSet::new());
        for round in 1..200 {
            let resp = process(b, &msg, false).unwrap();
            let out = process(a, &resp.reply, true).unwrap();
            need.extend(out.need.iter().copied());
            have.extend(out.have.iter().copied());
            if out.finished() {
                return (need, have, round);
            }
            msg = out.reply;
        }
        panic!("reconciliation did not finish");
    }

    #[test]
    fn a_new_node_is_sent_ids_by_the_message_full() {
        let keys: Vec<(u64, u32)> = (0..40_000).map(|i| (i as u64 / 2, i)).collect();
        let (fresh, full) = (MemStore::new(), store_with(&keys));
        let (need, have, rounds) = reconcile(&fresh, &full);
        assert_eq!(need, full.ids());
        assert!(have.is_empty());
        // 40,000 ids in answers of under 16,384: three of them, not one
        // 1,024-id leaf per range after splitting down to it.
        assert!(rounds <= 4, "{rounds} rounds");
        // A node holding some of the history is still told only the rest.
        let half = store_with(&keys[..20_000]);
        let (need, _, _) = reconcile(&half, &full);
        assert_eq!(need.len(), 20_000);
    }

    #[test]
    fn equal_sets_take_one_round() {
        let keys: Vec<(u64, u32)> = (0..1000).map(|i| (i as u64 / 3, i)).collect();
        let a = store_with(&keys);
        let (need, have, rounds) = reconcile(&a, &a.clone());
        assert!(need.is_empty() && have.is_empty());
        assert_eq!(rounds, 1);
    }

    #[test]
    fn empty_side_gets_everything() {
        let keys: Vec<(u64, u32)> = (0..5000).map(|i| (i as u64, i)).collect();
        let a = MemStore::new();
        let b = store_with(&keys);
        let (need, have, _) = reconcile(&a, &b);
        assert_eq!(need, b.ids());
        assert!(have.is_empty());
        let (need, have, _) = reconcile(&b, &a);
        assert!(need.is_empty());
        assert_eq!(have, b.ids());
    }

    #[test]
    fn an_id_list_over_a_large_range_reads_a_bounded_part_of_the_store() {
        let keys: Vec<(u64, u32)> = (0..20_000).map(|i| (i as u64, i)).collect();
        let big = store_with(&keys);
        // A peer "lists" the whole key space with three ids of its own.
        let theirs = vec![Hash32::of(b"x"), Hash32::of(b"y"), Hash32::of(b"z")];
        let msg = vec![SyncRange { upper: None, mode: RangeMode::IdList { ids: theirs.clone(), answer: false } }];
        let out = process(&big, &msg, true).unwrap();
        assert_eq!(out.need, theirs);
        assert!(out.have.is_empty(), "nothing pushed from a range this large: {}", out.have.len());
        assert!(out.reply.iter().any(|r| !matches!(r.mode, RangeMode::Skip)), "the range is compared further");
        // And an honest exchange between such stores still converges.
        let mut other_keys = keys.clone();
        other_keys.truncate(19_990);
        let (need, have, _) = reconcile(&store_with(&other_keys), &big);
        assert_eq!((need.len(), have.len()), (10, 0));
    }

    #[test]
    fn malformed_messages_are_errors() {
        let s = MemStore::new();
        assert_eq!(process(&s, &[], false).unwrap_err(), SyncError::Coverage);
        let k = SyncKey { time: 5, id: Hash32::ZERO };
        let bad = vec![
            SyncRange { upper: Some(k), mode: RangeMode::Skip },
            SyncRange { upper: Some(k), mode: RangeMode::Skip },
            SyncRange { upper: None, mode: RangeMode::Skip },
        ];
        assert_eq!(process(&s, &bad, false).unwrap_err(), SyncError::Order);
        let short = vec![SyncRange { upper: None, mode: RangeMode::Fingerprint { fp: vec![1] } }];
        assert_eq!(process(&s, &short, false).unwrap_err(), SyncError::FingerprintLength);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn index_summaries_match_a_scan(
            times in proptest::collection::vec(0u64..(1u64 << 34), 1..400),
            cuts in proptest::collection::vec(0u64..(1u64 << 34), 2),
        ) {
            let keys: Vec<(u64, u32)> = times.iter().enumerate().map(|(i, t)| (*t, i as u32)).collect();
            let s = store_with(&keys);
            let all: Vec<SyncKey> = s.keys_in(&SyncKey::MIN, None, usize::MAX);
            let (x, y) = (cuts[0].min(cuts[1]), cuts[0].max(cuts[1]));
            let lo = SyncKey { time: x, id: Hash32::ZERO };
            let hi = SyncKey { time: y, id: Hash32::of(b"mid") };
            for (l, h) in [(lo, Some(hi)), (lo, None), (SyncKey::MIN, Some(hi))] {
                let (n, fp) = s.summary(&l, h.as_ref());
                prop_assert_eq!((n, fp.finish(n)), brute(&all, &l, h.as_ref()));
            }
        }
    }

    fn brute(keys: &[SyncKey], lo: &SyncKey, hi: Option<&SyncKey>) -> (u64, Vec<u8>) {
        let mut fp = Fingerprint::default();
        let mut n = 0;
        for k in keys.iter().filter(|k| *k >= lo && hi.is_none_or(|h| *k < h)) {
            fp.add(&k.id);
            n += 1;
        }
        (n, fp.finish(n))
    }

    #[test]
    fn large_spread_sets_reconcile_through_the_bucket_index() {
        // Twenty thousand records over about a year, five missing on each side.
        let keys: Vec<(u64, u32)> =
            (0..20_000u32).map(|i| ((i as u64).wrapping_mul(1_576_800_013) % 31_536_000_000, i)).collect();
        let a_keys: Vec<_> = keys.iter().filter(|(_, n)| n % 4001 != 7).copied().collect();
        let b_keys: Vec<_> = keys.iter().filter(|(_, n)| n % 3999 != 11).copied().collect();
        let a = store_with(&a_keys);
        let b = store_with(&b_keys);
        let (need, have, rounds) = reconcile(&a, &b);
        let want_need: BTreeSet<_> = b.ids().difference(&a.ids()).copied().collect();
        let want_have: BTreeSet<_> = a.ids().difference(&b.ids()).copied().collect();
        assert_eq!(need, want_need);
        assert_eq!(have, want_have);
        assert!(rounds <= 6, "{rounds} rounds");
    }

    #[test]
    fn ranges_survive_the_compact_wire_form() {
        let k1 = SyncKey { time: 1_700_000_000_000, id: Hash32::ZERO };
        let mut id = [0u8; 32];
        id[0] = 0xab;
        let k2 = SyncKey { time: 1_700_000_000_000, id: Hash32(id) };
        let ranges = vec![
            SyncRange { upper: Some(k1), mode: RangeMode::Skip },
            SyncRange { upper: Some(k2), mode: RangeMode::Fingerprint { fp: vec![7; 16] } },
            SyncRange {
                upper: Some(SyncKey { time: 1_700_000_000_001, id: Hash32::ZERO }),
                mode: RangeMode::Prefixes { prefixes: vec![[1; 8], [2; 8]] },
            },
            SyncRange {
                upper: Some(SyncKey { time: 1_700_000_000_002, id: Hash32::ZERO }),
                mode: RangeMode::Answer { extra: vec![Hash32::of(b"y")], have: vec![0b10] },
            },
            SyncRange { upper: None, mode: RangeMode::IdList { ids: vec![Hash32::of(b"x")], answer: true } },
        ];
        let req = crate::wire::Request::Reconcile { ranges: ranges.clone() };
        let bytes = crate::wire::encode_request(&req);
        assert_eq!(crate::wire::decode_request(&bytes).unwrap(), req);
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_brute_force(
            common in proptest::collection::vec((0u64..500, 0u32..1_000_000), 0..600),
            only_a in proptest::collection::vec((0u64..500, 1_000_000u32..2_000_000), 0..80),
            only_b in proptest::collection::vec((0u64..500, 2_000_000u32..3_000_000), 0..80),
        ) {
            let a_keys: Vec<_> = common.iter().chain(only_a.iter()).copied().collect();
            let b_keys: Vec<_> = common.iter().chain(only_b.iter()).copied().collect();
            let a = store_with(&a_keys);
            let b = store_with(&b_keys);
            let (need, have, _) = reconcile(&a, &b);
            let want_need: BTreeSet<_> = b.ids().difference(&a.ids()).copied().collect();
            let want_have: BTreeSet<_> = a.ids().difference(&b.ids()).copied().collect();
            prop_assert_eq!(need, want_need);
            prop_assert_eq!(have, want_have);
        }
    }
}
