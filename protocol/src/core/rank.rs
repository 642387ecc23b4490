//! Rendezvous ranking as pure functions: every node computes the same order
//! of peers for a job, or for a log's hash, from the same set of peers.

use libp2p_identity::PeerId;

use crate::ids::Hash32;

/// A peer's fixed rendezvous key, hashed once.
pub fn peer_key(peer: &PeerId) -> u64 {
    Hash32::of_fields("peerbot.rank.v1", &[&peer.to_bytes()]).prefix_u64()
}

/// 64-bit finaliser (MurmurHash3's fmix64): a cheap, well-mixed function
/// of (job, peer), evaluated for every eligible peer of every job.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub fn score(job: &Hash32, key: u64) -> u64 {
    mix(job.prefix_u64() ^ key)
}

/// Rendezvous order: higher score first, PeerId breaks ties. Every node
/// computes the same order from the same set of peers.
pub fn rank(job: &Hash32, peers: &mut [PeerId]) {
    peers.sort_by_cached_key(|p| (std::cmp::Reverse(score(job, peer_key(p))), *p));
}

/// The winner of two claims for one job and attempt.
pub fn claim_winner(job: &Hash32, a: PeerId, b: PeerId) -> PeerId {
    let mut both = [a, b];
    rank(job, &mut both);
    both[0]
}

/// Where this node stands for a job among its eligible peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Better-ranked eligible peers with a free slot.
    pub ahead: u64,
    /// A signature of the set of free eligible peers: it changes when the set does.
    pub sig: u64,
    /// No eligible peer ranks better, busy or free: the job is this node's
    /// own whoever is busy.
    pub first: bool,
}

/// Where this node stands for a job among the eligible peers with a free
/// slot. `eligible` holds (rendezvous key, executors); `held` counts the
/// claims each key holds. A score is a bijection of the key, so only a
/// peer with this node's own key could tie, and that one is passed over:
/// no PeerId is needed to break ties.
pub fn position_among_free(job: &Hash32, my_key: u64, eligible: &[(u64, u32)], held: impl Fn(u64) -> u32) -> Position {
    let mine = score(job, my_key);
    let mut pos = Position { ahead: 0, sig: 0, first: true };
    for &(k, executors) in eligible {
        if k == my_key {
            continue;
        }
        let better = score(job, k) > mine;
        pos.first &= !better;
        if held(k) >= executors {
            continue;
        }
        pos.sig ^= k;
        pos.ahead += better as u64;
    }
    pos
}

/// Whether a node is among the `replicas` live nodes ranking highest for
/// `hash`, given the keys of the live peers.
pub fn among_keepers(hash: &Hash32, my_key: u64, live_keys: impl Iterator<Item = u64>, replicas: usize) -> bool {
    let mine = score(hash, my_key);
    // Count better-ranked live nodes, stopping once there are enough.
    let mut better = 0;
    for k in live_keys {
        if score(hash, k) > mine {
            better += 1;
            if better >= replicas {
                return false;
            }
        }
    }
    better < replicas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranking_is_the_same_whatever_order_peers_are_known_in(seed in 0u64..1000, n in 1usize..20) {
            let job = Hash32::of(&seed.to_le_bytes());
            let peers: Vec<PeerId> = (0..n as u64).map(|i| deterministic_key(i).public().to_peer_id()).collect();
            let mut a = peers.clone();
            let mut b: Vec<PeerId> = peers.into_iter().rev().collect();
            b.rotate_left((seed as usize) % n);
            rank(&job, &mut a);
            rank(&job, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn position_counts_only_better_ranked_peers_with_a_free_slot() {
        let job = Hash32::of(b"job");
        let ids: Vec<PeerId> = (0..6).map(|i| deterministic_key(i).public().to_peer_id()).collect();
        let elig: Vec<(u64, u32)> = ids.iter().map(|p| (peer_key(p), 1)).collect();
        let mut order = ids.clone();
        rank(&job, &mut order);
        for (r, p) in order.iter().enumerate() {
            let pos = position_among_free(&job, peer_key(p), &elig, |_| 0);
            assert_eq!(pos.ahead, r as u64);
            assert_eq!(pos.first, r == 0);
        }
        // The best peer busy: everyone behind it moves up one place.
        let best = peer_key(&order[0]);
        let last = order[5];
        let pos = position_among_free(&job, peer_key(&last), &elig, |k| (k == best) as u32);
        assert_eq!(pos.ahead, 4);
        assert!(!pos.first);
        let second = position_among_free(&job, peer_key(&order[1]), &elig, |k| (k == best) as u32);
        assert_eq!((second.ahead, second.first), (0, false));
    }

    #[test]
    fn keepers_are_the_top_replicas_by_score() {
        let hash = Hash32::of(b"log");
        let keys: Vec<u64> = (0..10u64).map(|i| peer_key(&deterministic_key(i).public().to_peer_id())).collect();
        let mut by_score = keys.clone();
        by_score.sort_by_key(|k| std::cmp::Reverse(score(&hash, *k)));
        for (i, k) in by_score.iter().enumerate() {
            let others = keys.iter().copied().filter(|x| x != k);
            assert_eq!(among_keepers(&hash, *k, others, 3), i < 3, "rank {i}");
        }
    }
}
