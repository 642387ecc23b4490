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
use crate::store::Store;
use crate::Millis;

pub const BUCKETS: usize = 16;
/// A differing range with at most this many items is listed, not split.
pub const LIST_THRESHOLD: u64 = 32;
/// The responder answers a listed range with its own list up to this size.
pub const ANSWER_MAX: usize = 1024;
/// Items (ids plus ranges) one message may carry; the rest is deferred.
pub const MESSAGE_BUDGET: usize = 16 * 1024;
pub const MAX_RANGES: usize = 64 * 1024;
pub const MAX_IDS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyncKey {
    pub time: Millis,
    pub id: Hash32,
}

impl SyncKey {
    pub const MIN: SyncKey = SyncKey { time: 0, id: Hash32::ZERO };
}

/// Sum of ids modulo 2^256: order-free and incrementally maintainable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    lanes: [u64; 4],
}

impl Fingerprint {
    pub fn add(&mut self, id: &Hash32) {
        let mut carry = 0u128;
        for i in 0..4 {
            let x = u64::from_le_bytes(id.0[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let s = self.lanes[i] as u128 + x as u128 + carry;
            self.lanes[i] = s as u64;
            carry = s >> 64;
        }
    }
    pub fn finish(&self, count: u64) -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        for l in self.lanes {
            h.update(&l.to_le_bytes());
        }
        h.update(&count.to_le_bytes());
        h.finalize().as_bytes()[..16].to_vec()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeMode {
    Skip,
    Fingerprint {
        count: u64,
        #[serde(with = "serde_bytes")]
        fp: Vec<u8>,
    },
    IdList {
        ids: Vec<Hash32>,
        /// True when this list answers the peer's list (the last word on the range).
        answer: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRange {
    /// Exclusive upper bound; `None` is the end of the key space. The lower
    /// bound is the previous range's upper bound.
    pub upper: Option<SyncKey>,
    pub mode: RangeMode,
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

/// The first message of a session: one range, everything, by fingerprint.
pub fn initial<S: Store + ?Sized>(store: &S) -> Vec<SyncRange> {
    let (count, fp) = store.summary(&SyncKey::MIN, None);
    vec![SyncRange { upper: None, mode: RangeMode::Fingerprint { count, fp: fp.finish(count) } }]
}

struct Reply {
    ranges: Vec<SyncRange>,
    budget: usize,
}

impl Reply {
    fn push(&mut self, upper: Option<SyncKey>, mode: RangeMode) {
        let cost = 1 + match &mode {
            RangeMode::IdList { ids, .. } => ids.len(),
            _ => 0,
        };
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
        self.push(hi, RangeMode::Fingerprint { count, fp: fp.finish(count) });
    }

    /// A range known to differ: list it when small, else split it in buckets.
    fn split_or_list<S: Store + ?Sized>(&mut self, store: &S, lo: &SyncKey, hi: Option<SyncKey>, count: u64) {
        if count <= LIST_THRESHOLD {
            let ids = store.keys_in(lo, hi.as_ref(), LIST_THRESHOLD as usize).into_iter().map(|k| k.id).collect();
            self.push(hi, RangeMode::IdList { ids, answer: false });
            return;
        }
        let keys = store.keys_in(lo, hi.as_ref(), usize::MAX);
        let per = keys.len().div_ceil(BUCKETS).max(1);
        let chunks: Vec<&[SyncKey]> = keys.chunks(per).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let upper = if i + 1 < chunks.len() { Some(chunks[i + 1][0]) } else { hi };
            let mut fp = Fingerprint::default();
            for k in chunk.iter() {
                fp.add(&k.id);
            }
            let n = chunk.len() as u64;
            self.push(upper, RangeMode::Fingerprint { count: n, fp: fp.finish(n) });
        }
    }
}

/// Processes one message from the peer and builds the reply.
pub fn process<S: Store + ?Sized>(store: &S, ranges: &[SyncRange], initiator: bool) -> Result<Outcome, SyncError> {
    if ranges.len() > MAX_RANGES {
        return Err(SyncError::TooMany);
    }
    let total_ids: usize = ranges
        .iter()
        .map(|r| match &r.mode {
            RangeMode::IdList { ids, .. } => ids.len(),
            _ => 0,
        })
        .sum();
    if total_ids > MAX_IDS {
        return Err(SyncError::TooMany);
    }
    match ranges.last() {
        Some(r) if r.upper.is_none() => {}
        _ => return Err(SyncError::Coverage),
    }
    let mut out = Outcome::default();
    let mut reply = Reply { ranges: Vec::new(), budget: MESSAGE_BUDGET };
    let mut lo = SyncKey::MIN;
    for (i, r) in ranges.iter().enumerate() {
        let hi = r.upper;
        match hi {
            Some(h) if h <= lo && i > 0 => return Err(SyncError::Order),
            None if i + 1 != ranges.len() => return Err(SyncError::Order),
            _ => {}
        }
        match &r.mode {
            RangeMode::Skip => reply.push(hi, RangeMode::Skip),
            RangeMode::Fingerprint { count, fp } => {
                if fp.len() != 16 {
                    return Err(SyncError::FingerprintLength);
                }
                let (mine, myfp) = store.summary(&lo, hi.as_ref());
                if mine == *count && myfp.finish(mine) == *fp {
                    reply.push(hi, RangeMode::Skip);
                } else if reply.budget < BUCKETS + LIST_THRESHOLD as usize {
                    reply.fingerprint_of(store, &lo, hi);
                } else {
                    reply.split_or_list(store, &lo, hi, mine);
                }
            }
            RangeMode::IdList { ids, answer } => {
                if initiator {
                    let theirs: HashSet<Hash32> = ids.iter().copied().collect();
                    let mine: Vec<Hash32> =
                        store.keys_in(&lo, hi.as_ref(), usize::MAX).into_iter().map(|k| k.id).collect();
                    let mine_set: HashSet<Hash32> = mine.iter().copied().collect();
                    out.have.extend(mine.iter().filter(|id| !theirs.contains(id)));
                    out.need.extend(ids.iter().filter(|id| !mine_set.contains(id)));
                    reply.push(hi, RangeMode::Skip);
                } else if *answer {
                    reply.push(hi, RangeMode::Skip);
                } else {
                    let mine = store.keys_in(&lo, hi.as_ref(), ANSWER_MAX + 1);
                    if mine.len() <= ANSWER_MAX && reply.budget > mine.len() {
                        let ids = mine.into_iter().map(|k| k.id).collect();
                        reply.push(hi, RangeMode::IdList { ids, answer: true });
                    } else if reply.budget < BUCKETS + LIST_THRESHOLD as usize {
                        reply.fingerprint_of(store, &lo, hi);
                    } else {
                        let (count, _) = store.summary(&lo, hi.as_ref());
                        reply.split_or_list(store, &lo, hi, count);
                    }
                }
            }
        }
        if let Some(h) = hi {
            lo = h;
        }
    }
    out.reply = reply.ranges;
    Ok(out)
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
        crate::record::Change {
            repo: "r".into(),
            branch: "b".into(),
            commit: "c".into(),
            parents: vec![],
            author: String::new(),
            committer: String::new(),
            commit_time: 0,
            title: String::new(),
            files: vec![],
            jobs: vec![],
            recipe_error: None,
            announced_ms: t,
            force: None,
        }
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
        let short = vec![SyncRange { upper: None, mode: RangeMode::Fingerprint { count: 0, fp: vec![1] } }];
        assert_eq!(process(&s, &short, false).unwrap_err(), SyncError::FingerprintLength);
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
