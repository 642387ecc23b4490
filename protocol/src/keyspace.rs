//! The key space every record has a place in: (time, id) order, the
//! order-free fingerprint of a set of ids, and the shortest bounds between
//! keys. Storage indexes by it and reconciliation walks it; neither owns it.

use serde::{Deserialize, Serialize};

use crate::ids::Hash32;
use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyncKey {
    pub time: Millis,
    pub id: Hash32,
}

impl SyncKey {
    pub const MIN: SyncKey = SyncKey { time: 0, id: Hash32::ZERO };
}

/// Sum of ids modulo 2^256: order-free and incrementally maintainable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Adds another sum (of a disjoint set).
    pub fn merge(&mut self, other: &Fingerprint) {
        let mut carry = 0u128;
        for i in 0..4 {
            let s = self.lanes[i] as u128 + other.lanes[i] as u128 + carry;
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

/// The shortest bound `b` with `prev < b <= next`: the time alone when the
/// times differ, else the shortest id prefix (padded with zeros) that does it.
pub fn min_bound(prev: &SyncKey, next: &SyncKey) -> SyncKey {
    if prev.time < next.time {
        return SyncKey { time: next.time, id: Hash32::ZERO };
    }
    let common = prev.id.0.iter().zip(next.id.0.iter()).take_while(|(a, b)| a == b).count();
    let mut id = [0u8; 32];
    let n = (common + 1).min(32);
    id[..n].copy_from_slice(&next.id.0[..n]);
    SyncKey { time: next.time, id: Hash32(id) }
}
