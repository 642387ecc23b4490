//! Who belongs to the cluster: the admission certificates and revocations
//! heard so far, peers connected but not yet admitted (their grace period
//! runs), and records held back until their signer's admission arrives.
//!
//! A core built without a cluster key (the simulator's default, unit tests)
//! counts every peer as admitted; the node always runs with one.

use std::collections::{HashMap, VecDeque};

use libp2p_identity::PeerId;

use crate::admission::{Admission, ClusterId};
use crate::record::VerifiedRecord;
use crate::Millis;

pub use crate::admission::ADMIN_LABEL;

/// Records held for a signer not known yet, at most this many and bytes.
pub const MAX_HELD_RECORDS: usize = 1024;
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;
/// A held record whose signer's admission has not come within this long
/// is dropped; reconciliation offers it again if it is real.
pub const HOLD_MS: Millis = 10 * 60_000;

/// Why a peer does not count as admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No valid admission for it has been heard.
    Unknown,
    Expired,
    Revoked,
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Unknown => "no admission known for this peer",
            Refusal::Expired => "its admission expired",
            Refusal::Revoked => "its admission was revoked",
        }
    }
}

struct Held {
    rec: VerifiedRecord,
    from: Option<PeerId>,
    at: Millis,
}

#[derive(Clone, Default)]
pub struct Admissions {
    cluster: Option<ClusterId>,
    known: HashMap<PeerId, Admission>,
    revoked: HashMap<PeerId, Millis>,
    /// Connected peers not admitted yet, and since when.
    unproven: HashMap<PeerId, Millis>,
    held: VecDeque<std::sync::Arc<Held>>,
    held_bytes: usize,
}

impl Admissions {
    pub fn new(cluster: Option<ClusterId>) -> Self {
        Admissions { cluster, ..Default::default() }
    }

    pub fn cluster(&self) -> Option<&ClusterId> {
        self.cluster.as_ref()
    }

    /// No cluster key: every peer counts (simulations, tests).
    pub fn open(&self) -> bool {
        self.cluster.is_none()
    }

    /// Takes a certificate for `peer` if the cluster key signed it. An
    /// expired one is kept too: it still vouches for the records the peer
    /// signed before it ran out. Of several, the latest issued counts.
    pub fn learn(&mut self, peer: PeerId, cert: &Admission) -> Result<bool, crate::admission::AdmissionError> {
        let Some(cluster) = &self.cluster else { return Ok(false) };
        cert.check(cluster, &peer, cert.issued_ms())?;
        if self.known.get(&peer).is_some_and(|k| k.issued_ms() >= cert.issued_ms()) {
            return Ok(false);
        }
        self.known.insert(peer, cert.clone());
        self.unproven.remove(&peer);
        Ok(true)
    }

    pub fn revoke(&mut self, peer: PeerId, at: Millis) -> bool {
        let earliest = self.revoked.get(&peer).map_or(at, |t| (*t).min(at));
        self.revoked.insert(peer, earliest) != Some(earliest)
    }

    pub fn revocations(&self) -> impl Iterator<Item = (&PeerId, &Millis)> {
        self.revoked.iter()
    }

    pub fn revoked_at(&self, peer: &PeerId) -> Option<Millis> {
        self.revoked.get(peer).copied()
    }

    /// Whether what `peer` says at time `at` counts.
    pub fn admitted_at(&self, peer: &PeerId, at: Millis) -> Result<(), Refusal> {
        if self.open() {
            return Ok(());
        }
        let cert = self.known.get(peer).ok_or(Refusal::Unknown)?;
        if self.revoked.get(peer).is_some_and(|t| at >= *t) {
            return Err(Refusal::Revoked);
        }
        if cert.expires_ms().is_some_and(|e| at >= e) {
            return Err(Refusal::Expired);
        }
        Ok(())
    }

    /// The first of `labels` that `peer`'s certificate does not permit.
    pub fn unpermitted<'a>(&self, peer: &PeerId, labels: &'a [String]) -> Option<&'a str> {
        if self.open() {
            return None;
        }
        let cert = self.known.get(peer);
        labels.iter().find(|l| !cert.is_some_and(|c| c.permits(l))).map(|l| l.as_str())
    }

    /// Whether `peer`'s certificate grants `label` (everyone's does in an open cluster).
    pub fn grants(&self, peer: &PeerId, label: &str) -> bool {
        self.open() || self.known.get(peer).is_some_and(|c| c.labels().iter().any(|l| l == label))
    }

    pub fn admitted_count(&self, now: Millis) -> usize {
        self.known.keys().filter(|p| self.admitted_at(p, now).is_ok()).count()
    }

    pub fn connected(&mut self, peer: PeerId, now: Millis) {
        if self.admitted_at(&peer, now).is_err() {
            self.unproven.entry(peer).or_insert(now);
        }
    }

    pub fn disconnected(&mut self, peer: &PeerId) {
        self.unproven.remove(peer);
    }

    /// Connected peers that proved no admission within `grace_ms`, and
    /// admitted ones whose admission ended: to be disconnected.
    pub fn overdue(&mut self, now: Millis, grace_ms: u64, connected: &[PeerId]) -> Vec<(PeerId, Refusal)> {
        let mut out = Vec::new();
        for p in connected {
            match self.admitted_at(p, now) {
                Ok(()) => {
                    self.unproven.remove(p);
                }
                Err(why) => {
                    let since = *self.unproven.entry(*p).or_insert(now);
                    if now >= since + grace_ms {
                        self.unproven.remove(p);
                        out.push((*p, why));
                    }
                }
            }
        }
        self.unproven.retain(|p, _| connected.contains(p));
        out
    }

    /// Keeps a record whose signer is not known yet; false if it was held already.
    pub fn hold(&mut self, rec: VerifiedRecord, from: Option<PeerId>, now: Millis) -> bool {
        if self.held.iter().any(|h| h.rec.id == rec.id) {
            return false;
        }
        self.held_bytes += rec.bytes.len();
        self.held.push_back(std::sync::Arc::new(Held { rec, from, at: now }));
        while self.held.len() > MAX_HELD_RECORDS || self.held_bytes > MAX_HELD_BYTES {
            self.drop_oldest();
        }
        true
    }

    fn drop_oldest(&mut self) {
        if let Some(h) = self.held.pop_front() {
            self.held_bytes -= h.rec.bytes.len();
        }
    }

    pub fn is_held(&self, id: &crate::ids::Hash32) -> bool {
        self.held.iter().any(|h| h.rec.id == *id)
    }

    /// The held records of `signer`, taken out.
    pub fn release(&mut self, signer: &PeerId) -> Vec<(VerifiedRecord, Option<PeerId>)> {
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = self.held.drain(..).partition(|h| h.rec.signer == *signer);
        self.held = rest;
        self.held_bytes = self.held.iter().map(|h| h.rec.bytes.len()).sum();
        mine.into_iter().map(|h| (h.rec.clone(), h.from)).collect()
    }

    /// Drops what has been held too long; how many.
    pub fn expire_held(&mut self, now: Millis) -> usize {
        let mut n = 0;
        while self.held.front().is_some_and(|h| now >= h.at + HOLD_MS) {
            self.drop_oldest();
            n += 1;
        }
        n
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ClusterKey;
    use crate::deterministic_key;
    use crate::record::{sign, Body, Cancel};

    fn peer(n: u64) -> PeerId {
        deterministic_key(n).public().to_peer_id()
    }

    #[test]
    fn only_certificates_of_the_cluster_admit_and_revocation_dates_count() {
        let key = ClusterKey::from_seed([1; 32]);
        let mut a = Admissions::new(Some(key.id()));
        assert_eq!(a.admitted_at(&peer(1), 5), Err(Refusal::Unknown));
        let other = ClusterKey::from_seed([2; 32]).admit(&peer(1), vec![], 1, None).unwrap();
        assert!(a.learn(peer(1), &other).is_err());
        // A certificate for another peer does not admit this one.
        assert!(a.learn(peer(1), &key.admit(&peer(2), vec![], 1, None).unwrap()).is_err());
        assert_eq!(a.learn(peer(1), &key.admit(&peer(1), vec!["gpu=yes".into()], 1, Some(100)).unwrap()), Ok(true));
        assert_eq!(a.admitted_at(&peer(1), 50), Ok(()));
        assert_eq!(a.admitted_at(&peer(1), 100), Err(Refusal::Expired));
        assert_eq!(a.unpermitted(&peer(1), &["os=linux".into(), "gpu=yes".into()]), None);
        assert_eq!(a.unpermitted(&peer(1), &["role=admin".into()]), Some("role=admin"));
        a.revoke(peer(1), 40);
        assert_eq!(a.admitted_at(&peer(1), 39), Ok(()));
        assert_eq!(a.admitted_at(&peer(1), 40), Err(Refusal::Revoked));
        assert!(Admissions::new(None).admitted_at(&peer(9), 0).is_ok());
    }

    #[test]
    fn unproven_peers_are_overdue_after_the_grace_and_held_records_are_bounded() {
        let key = ClusterKey::from_seed([3; 32]);
        let mut a = Admissions::new(Some(key.id()));
        a.connected(peer(1), 0);
        a.connected(peer(2), 0);
        a.learn(peer(2), &key.admit(&peer(2), vec![], 0, None).unwrap()).unwrap();
        assert!(a.overdue(500, 1_000, &[peer(1), peer(2)]).is_empty());
        assert_eq!(a.overdue(1_000, 1_000, &[peer(1), peer(2)]), vec![(peer(1), Refusal::Unknown)]);
        for i in 0..(MAX_HELD_RECORDS as u64 + 10) {
            let rec = sign(
                &deterministic_key(7),
                &Body::Cancel(Cancel {
                    job: crate::ids::Hash32::of(&i.to_le_bytes()),
                    reason: String::new(),
                    requested_ms: i,
                }),
            );
            a.hold(rec, None, i);
        }
        assert_eq!(a.held_count(), MAX_HELD_RECORDS);
        assert_eq!(a.release(&peer(7)).len(), MAX_HELD_RECORDS);
        assert_eq!(a.held_count(), 0);
    }
}
