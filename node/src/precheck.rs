//! Signatures of fetched batches, checked on other threads while the Core
//! actor goes on with its work (storing the previous batch): when the
//! answer then reaches the core, its verifier takes the records checked
//! here instead of checking them again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use peerbot_protocol::core::{ParallelCheck, Verify};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{RecordError, VerifiedRecord};
use peerbot_protocol::wire::{self, Response};

/// Answers at least this large are checked off the actor's thread; the
/// small ones are not worth a thread hop.
pub const PRECHECK_MIN_BYTES: usize = 64 * 1024;

pub struct Prechecked {
    check: ParallelCheck,
    /// Records of the answer being handed to the core, by id (the hash of
    /// their bytes, so only those very bytes get a record from here).
    held: Mutex<HashMap<Hash32, VerifiedRecord>>,
}

impl Prechecked {
    pub fn new(threads: usize) -> Arc<Prechecked> {
        Arc::new(Prechecked { check: ParallelCheck { threads }, held: Mutex::default() })
    }

    /// The valid records of a `Records` answer; run off the actor's thread.
    pub fn check_answer(&self, bytes: &[u8]) -> Vec<VerifiedRecord> {
        let Ok(Response::Records { records }) = wire::decode_response(bytes) else { return vec![] };
        let batch = &records[..records.len().min(wire::MAX_RECORDS_PER_REQUEST)];
        let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
        self.check.verify_many(&refs).into_iter().filter_map(Result::ok).collect()
    }

    /// Holds an answer's checked records while the core handles it.
    pub fn hold(&self, recs: Vec<VerifiedRecord>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.extend(recs.into_iter().map(|r| (r.id, r)));
    }

    /// Drops what the core did not take (records it had already), so that
    /// no more than one answer's records are ever held.
    pub fn clear(&self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn take(&self, bytes: &[u8]) -> Option<VerifiedRecord> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_empty() {
            return None;
        }
        held.remove(&Hash32::of(bytes))
    }
}

impl Verify for Prechecked {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
        match self.take(bytes) {
            Some(r) => Ok(r),
            None => self.check.verify(bytes),
        }
    }

    fn verify_many(&self, batch: &[&[u8]]) -> Vec<Result<VerifiedRecord, RecordError>> {
        let mut out: Vec<Option<Result<VerifiedRecord, RecordError>>> =
            batch.iter().map(|b| self.take(b).map(Ok)).collect();
        let missed: Vec<&[u8]> = batch.iter().zip(&out).filter(|(_, o)| o.is_none()).map(|(b, _)| *b).collect();
        let mut checked = self.check.verify_many(&missed).into_iter();
        for slot in out.iter_mut().filter(|o| o.is_none()) {
            *slot = checked.next();
        }
        out.into_iter().map(|o| o.unwrap_or(Err(RecordError::Signature))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerbot_protocol::record::{sign, Body, Change};

    fn signed(i: u64) -> Vec<u8> {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([3u8; 32]).unwrap();
        let change = Change { repo: "/r".into(), commit: format!("{i:08x}"), announced_ms: i, ..Default::default() };
        sign(&key, &Body::Change(change)).bytes
    }

    #[test]
    fn an_answer_checked_ahead_is_taken_by_its_bytes_and_the_rest_is_checked_as_it_comes() {
        let p = Prechecked::new(2);
        let mut good: Vec<Vec<u8>> = (0..100).map(signed).collect();
        let mut forged = good[40].clone();
        let n = forged.len();
        forged[n - 5] ^= 4;
        good[40] = forged.clone();
        let answer =
            wire::encode_response(&Response::Records { records: good.iter().map(|b| b.clone().into()).collect() });
        let checked = p.check_answer(&answer);
        assert_eq!(checked.len(), 99, "all but the forged one");
        p.hold(checked);
        // The core's view: the same batch, one more record not seen before.
        let late = signed(1000);
        let mut batch: Vec<&[u8]> = good.iter().map(|b| b.as_slice()).collect();
        batch.push(&late);
        let got = p.verify_many(&batch);
        assert_eq!(got.len(), 101);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 40, "record {i}");
            if let Ok(r) = r {
                assert_eq!(r.id, Hash32::of(batch[i]));
            }
        }
        assert!(p.held.lock().unwrap().is_empty(), "each held record is taken once");
        // Nothing held stands in for other bytes.
        p.hold(p.check_answer(&answer));
        assert!(p.verify(&forged).is_err());
        p.clear();
        assert!(p.held.lock().unwrap().is_empty());
    }
}
