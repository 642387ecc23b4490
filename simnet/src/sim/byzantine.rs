//! Hostile insiders (`--byzantine N`): the last N nodes are admitted to
//! the cluster and run an honest core, but the simulator also makes them
//! lie. At a steady pace each replays a stored record, claims an open job
//! with a made-up attempt and keeps leasing it, equivocates (claims one
//! attempt twice), leases every open job, and signs cancels of jobs it did
//! not announce; and every reconciliation answer it
//! gives lists ids it never delivers, while its record fetches come back
//! empty. The invariants must hold and every buildable job must still be
//! built: the claim rules bound what a hostile claimant can hold up.

use peerbot_protocol::admission::{Admission, ClusterKey};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{self, Body, Cancel};
use peerbot_protocol::store::Store;
use peerbot_protocol::sync::{RangeMode, SyncRange};
use peerbot_protocol::wire::{self, encode_gossip, Claim, Gossip, Lease, Response};
use rand::Rng;

use super::events::Ev;
use super::Sim;

/// How often each hostile node acts.
const ACT_EVERY_MS: u64 = 2_000;
/// Made-up ids in each reconciliation answer of a hostile node.
const BOGUS_IDS: usize = 256;

/// The simulation's cluster key, and each node's admission to it.
pub(super) fn admissions(seed: u64, peers: &[(peerbot_protocol::PeerId, Vec<String>)]) -> (ClusterKey, Vec<Admission>) {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let key = ClusterKey::from_seed(bytes);
    let certs = peers
        .iter()
        .map(|(p, labels)| key.admit(p, labels.clone(), 0, None).expect("simulated labels are valid"))
        .collect();
    (key, certs)
}

impl Sim {
    pub(super) fn hostile(&self, i: usize) -> bool {
        i >= self.nodes.len().saturating_sub(self.cfg.byzantine)
    }

    pub(super) fn schedule_byzantine(&mut self) {
        if self.cfg.byzantine > 0 {
            self.queue.push(self.cfg.heartbeat_ms * 4, Ev::Byzantine);
        }
    }

    pub(super) fn on_byzantine(&mut self) {
        if self.faults.over() {
            return;
        }
        let hostile: Vec<usize> = (0..self.nodes.len()).filter(|i| self.hostile(*i) && self.alive(*i)).collect();
        for i in hostile {
            let what = self.rng.gen_range(0..5u8);
            if self.act(i, what) {
                self.observed.byzantine_acted();
                self.note(i, None, "byzantine", what as u64);
            }
        }
        self.queue.push(self.now + ACT_EVERY_MS, Ev::Byzantine);
    }

    /// One lie of node `i`; false if it had nothing to lie about.
    fn act(&mut self, i: usize, what: u8) -> bool {
        let Some(core) = self.nodes[i].core.as_ref() else { return false };
        let mut open: Vec<(Hash32, u32)> = core.live_jobs().iter().map(|(id, j)| (*id, j.attempt)).collect();
        open.sort_unstable();
        let key = self.nodes[i].key().clone();
        let now = self.local_now(i);
        let gossip = match what {
            // Replays one of its stored records.
            0 => {
                let mut some = Vec::new();
                core.store().for_each_record(&mut |b| {
                    if some.len() < 64 {
                        some.push(b.to_vec())
                    }
                });
                if some.is_empty() {
                    return false;
                }
                vec![Gossip::Record(some.swap_remove(self.rng.gen_range(0..some.len())))]
            }
            // Claims an open job with a made-up later attempt, and leases it.
            1 | 2 if !open.is_empty() => {
                let (job, attempt) = open[self.rng.gen_range(0..open.len())];
                let attempt = attempt + if what == 1 { self.rng.gen_range(1..4) } else { 0 };
                let claim = Claim { job, attempt, lease_ms: self.cfg.lease_ms * 4, sent_ms: now };
                let lease = Lease { job, attempt, step: None };
                vec![Gossip::Claim(claim), Gossip::Renew { sent_ms: now, leases: vec![lease] }]
            }
            // Cancels a job it did not announce (or did: then it may).
            3 if !open.is_empty() => {
                let (job, _) = open[self.rng.gen_range(0..open.len())];
                let cancel = Body::Cancel(Cancel { job, reason: "hostile".into(), requested_ms: now });
                vec![Gossip::Record(record::sign(&key, &cancel).bytes)]
            }
            // Keeps leasing every open job, claimed by it or not.
            4 if !open.is_empty() => {
                let leases = open.iter().take(wire::MAX_RUNNING_IN_HEARTBEAT).map(|(job, attempt)| Lease {
                    job: *job,
                    attempt: *attempt,
                    step: Some("hostile".into()),
                });
                vec![Gossip::Renew { sent_ms: now, leases: leases.collect() }]
            }
            _ => return false,
        };
        for g in gossip {
            self.broadcast(i, encode_gossip(&g));
        }
        true
    }

    /// What a hostile node answers instead of its core's reply: ids it will
    /// not deliver for a reconciliation round, nothing for a fetch.
    pub(super) fn tamper_reply(&mut self, i: usize, bytes: Vec<u8>) -> Vec<u8> {
        if !self.hostile(i) {
            return bytes;
        }
        match wire::decode_response(&bytes) {
            Ok(Response::Reconcile { .. }) => {
                let mut ids: Vec<Hash32> = (0..BOGUS_IDS).map(|_| Hash32::of(&self.rng.gen::<[u8; 16]>())).collect();
                ids.sort_unstable();
                let ranges = vec![SyncRange { upper: None, mode: RangeMode::IdList { ids, answer: true } }];
                wire::encode_response(&Response::Reconcile { ranges })
            }
            Ok(Response::Records { .. }) => wire::encode_response(&Response::Records { records: vec![] }),
            _ => bytes,
        }
    }

    /// With a cluster key, every stored cancel was signed by the node that
    /// announced its job (no node is an admin here): hostile cancels of
    /// others' jobs are refused everywhere.
    pub(super) fn check_cancels(&self, live: &[usize]) -> Result<(), Box<super::Violation>> {
        if self.cluster.is_none() {
            return Ok(());
        }
        for &i in live {
            let Some(core) = self.nodes[i].core.as_ref() else { continue };
            let store = core.store();
            let mut bad = None;
            store.for_each_record(&mut |b| {
                let Ok(rec) = record::decode_stored(b) else { return };
                let Body::Cancel(k) = rec.body else { return };
                let announcer = store
                    .lookup(peerbot_protocol::store::Lookup::JobChange, &k.job, 1)
                    .first()
                    .and_then(|id| store.get_record(id))
                    .and_then(|b| record::decode_stored(&b).ok())
                    .map(|r| r.signer);
                if announcer != Some(rec.signer) && bad.is_none() {
                    bad = Some((k.job, rec.signer));
                }
            });
            if let Some((job, signer)) = bad {
                return Err(self.violation(
                    "a job is cancelled only by its announcer or an admin",
                    format!("node {i} stores a cancel of job {job} signed by {signer}, who did not announce it"),
                    Some(job),
                    Some(i),
                ));
            }
        }
        Ok(())
    }
}
