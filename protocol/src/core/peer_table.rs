//! The peers a node knows, packed: every node of a cluster knows every
//! other, so this table is the one structure that grows with the square of
//! the cluster across a simulation, and with the cluster on each node. The
//! entries live in one vector (insertion order, grown by an eighth at a
//! time rather than doubled); a hash table of `u32` slots finds them by
//! PeerId, which is kept in its 44-byte encoding rather than libp2p's
//! 80-byte value. Peers' label sets are shared: a cluster has few distinct
//! ones.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use libp2p_identity::PeerId;
use multihash::Multihash;

use super::members::PeerView;

/// Distinct label sets kept for sharing; past this, a new set is stored on
/// its own (a hostile peer cannot grow the cache without bound).
const MAX_SHARED_LABEL_SETS: usize = 1024;

/// A PeerId's byte encoding: its multihash code (identity or sha256, each
/// one byte as a varint), the digest's length (at most 42, one byte) and the
/// digest. Every PeerId fits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Packed([u8; 44]);

impl Packed {
    fn of(p: &PeerId) -> Packed {
        let mh: &Multihash<64> = p.as_ref();
        let d = mh.digest();
        let n = d.len().min(42);
        let mut b = [0u8; 44];
        b[0] = mh.code() as u8;
        b[1] = n as u8;
        b[2..2 + n].copy_from_slice(&d[..n]);
        Packed(b)
    }

    fn peer(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.0[..2 + self.0[1] as usize]).ok()
    }
}

#[derive(Clone, Default)]
pub struct PeerTable {
    slots: Vec<(Packed, PeerView)>,
    index: HashTable<u32>,
    label_sets: HashMap<Arc<[String]>, (), rustc_hash::FxBuildHasher>,
}

fn hash_of(p: &Packed) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(p)
}

impl PeerTable {
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot_of(&self, p: &PeerId) -> Option<usize> {
        let (slots, packed) = (&self.slots, Packed::of(p));
        self.index.find(hash_of(&packed), |&i| slots[i as usize].0 == packed).map(|&i| i as usize)
    }

    pub fn get(&self, p: &PeerId) -> Option<&PeerView> {
        self.slot_of(p).map(|i| &self.slots[i].1)
    }

    pub fn get_mut(&mut self, p: &PeerId) -> Option<&mut PeerView> {
        self.slot_of(p).map(move |i| &mut self.slots[i].1)
    }

    /// The peer's entry, made with `new` if it has none.
    pub fn get_or_insert(&mut self, p: &PeerId, new: impl FnOnce() -> PeerView) -> &mut PeerView {
        let i = match self.slot_of(p) {
            Some(i) => i,
            None => {
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact((self.slots.len() / 8).max(4));
                }
                let (i, packed) = (self.slots.len(), Packed::of(p));
                self.slots.push((packed, new()));
                let slots = &self.slots;
                self.index.insert_unique(hash_of(&packed), i as u32, |&j| hash_of(&slots[j as usize].0));
                i
            }
        };
        &mut self.slots[i].1
    }

    /// Keeps only the entries whose view passes `keep`; returns how many
    /// went. The slots left are renumbered, in the same order.
    pub fn retain(&mut self, keep: impl Fn(&PeerView) -> bool) -> usize {
        let before = self.slots.len();
        self.slots.retain(|(_, v)| keep(v));
        let gone = before - self.slots.len();
        if gone > 0 {
            if self.slots.capacity() > 2 * self.slots.len() + 16 {
                self.slots.shrink_to(self.slots.len() + self.slots.len() / 8);
            }
            self.index.clear();
            for (i, (p, _)) in self.slots.iter().enumerate() {
                let slots = &self.slots;
                self.index.insert_unique(hash_of(p), i as u32, |&j| hash_of(&slots[j as usize].0));
            }
        }
        gone
    }

    /// Entries in the order they were first heard of.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, &PeerView)> {
        self.slots.iter().filter_map(|(p, v)| Some((p.peer()?, v)))
    }

    /// The entries whose view passes `keep`; only those ids are unpacked.
    pub fn filtered<'a>(
        &'a self,
        keep: impl Fn(&PeerView) -> bool + 'a,
    ) -> impl Iterator<Item = (PeerId, &'a PeerView)> {
        self.slots.iter().filter(move |(_, v)| keep(v)).filter_map(|(p, v)| Some((p.peer()?, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &PeerView> {
        self.slots.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut PeerView> {
        self.slots.iter_mut().map(|(_, v)| v)
    }

    /// One shared copy of a label set.
    pub fn shared_labels(&mut self, labels: &[String]) -> Arc<[String]> {
        if let Some((k, _)) = self.label_sets.get_key_value(labels) {
            return k.clone();
        }
        let set: Arc<[String]> = labels.into();
        if self.label_sets.len() < MAX_SHARED_LABEL_SETS {
            self.label_sets.insert(set.clone(), ());
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;

    #[test]
    fn finds_every_peer_it_was_given_and_no_other() {
        let ids: Vec<PeerId> = (0..300).map(|i| deterministic_key(i).public().to_peer_id()).collect();
        let mut t = PeerTable::default();
        for (n, p) in ids.iter().enumerate().take(200) {
            t.get_or_insert(p, || PeerView::new(p)).executors = n as u32;
        }
        // A second sight of a peer keeps its entry.
        t.get_or_insert(&ids[7], || unreachable!()).busy = 3;
        assert_eq!(t.len(), 200);
        for (n, p) in ids.iter().enumerate() {
            assert_eq!(t.get(p).map(|v| v.executors), (n < 200).then_some(n as u32), "peer {n}");
        }
        assert_eq!(t.get(&ids[7]).unwrap().busy, 3);
        let order: Vec<PeerId> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(order, ids[..200].to_vec(), "insertion order");
        // Dropping some keeps the others findable, in their order.
        assert_eq!(t.retain(|v| v.executors % 3 != 0), 67);
        for (n, p) in ids.iter().enumerate().take(200) {
            assert_eq!(t.get(p).map(|v| v.executors), (n % 3 != 0).then_some(n as u32), "peer {n}");
        }
        let kept: Vec<PeerId> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(
            kept,
            ids[..200].iter().enumerate().filter(|(n, _)| n % 3 != 0).map(|(_, p)| *p).collect::<Vec<_>>()
        );
        t.get_or_insert(&ids[0], || PeerView::new(&ids[0]));
        assert!(t.get(&ids[0]).is_some() && t.len() == 134);
    }

    #[test]
    fn packing_keeps_every_kind_of_peer_id() {
        let mut ids: Vec<PeerId> = (0..20).map(|i| deterministic_key(i).public().to_peer_id()).collect();
        // Hashed ids (sha256), as keys too large to inline make.
        ids.extend((0..20u8).map(|i| {
            let mh = Multihash::<64>::wrap(0x12, &[i; 32]).unwrap();
            PeerId::from_multihash(mh).unwrap()
        }));
        for p in &ids {
            assert_eq!(Packed::of(p).peer(), Some(*p));
            assert_eq!(&Packed::of(p).0[..p.to_bytes().len()], p.to_bytes().as_slice());
        }
    }

    #[test]
    fn label_sets_are_shared_up_to_a_bound() {
        let mut t = PeerTable::default();
        let a = t.shared_labels(&["os=linux".to_string()]);
        let b = t.shared_labels(&["os=linux".to_string()]);
        assert!(Arc::ptr_eq(&a, &b));
        for i in 0..MAX_SHARED_LABEL_SETS + 10 {
            t.shared_labels(&[format!("x={i}")]);
        }
        assert_eq!(t.label_sets.len(), MAX_SHARED_LABEL_SETS);
        let c = t.shared_labels(&["y=1".to_string()]);
        assert_eq!(&*c, &["y=1".to_string()], "a set past the bound is still stored, unshared");
    }
}
