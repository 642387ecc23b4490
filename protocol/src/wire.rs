//! Messages between nodes: gossip on one topic, and request-response pairs.
//! Everything is CBOR; sizes are checked before decoding.

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, CodecError};
use crate::ids::Hash32;
use crate::sync::SyncRange;
use crate::Millis;

/// The gossipsub topic every node subscribes to.
pub const TOPIC: &str = "peerbot/v1";
/// The request-response protocol name.
pub const REQUEST_PROTOCOL: &str = "/peerbot/req/1";

pub const MAX_GOSSIP_BYTES: usize = 1024 * 1024 + 4096;
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Logs travel in chunks of this size.
pub const BLOB_CHUNK: usize = 1024 * 1024;
/// A response carries at most a chunk or a batch of records, with room to spare.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Records one `GetRecords` or `PushRecords` carries at most. A batch also
/// stops at about 2 MiB (`core::sessions::RECORD_BATCH_BYTES`), which at
/// records of about 700 bytes is near 2048 of them: fewer requests for a
/// catch-up, under the same per-peer request rate.
pub const MAX_RECORDS_PER_REQUEST: usize = 2048;
pub const MAX_RUNNING_IN_HEARTBEAT: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub job: Hash32,
    pub attempt: u32,
    pub step: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub sent_ms: Millis,
    /// When to expect the next one.
    #[serde(default)]
    pub interval_ms: u64,
    pub labels: Vec<String>,
    pub executors: u32,
    pub busy: u32,
    /// Jobs this node is building; each entry renews that claim's lease.
    pub running: Vec<Lease>,
    /// Where to reach the node (multiaddrs, as text).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// The name its operator gave it (`--name`), shown instead of its
    /// PeerId; at most `MAX_NAME_LEN` bytes, no control characters.
    #[serde(default)]
    pub name: String,
}

pub const MAX_NAME_LEN: usize = 64;

/// A node name as a heartbeat or a result may carry it.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

pub const MAX_ADDRS: usize = 8;
pub const MAX_ADDR_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub job: Hash32,
    pub attempt: u32,
    pub lease_ms: u64,
    /// Makes every message distinct, so gossip never drops one as a repeat.
    #[serde(default)]
    pub sent_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gossip {
    /// A signed record envelope, bytes as signed.
    Record(#[serde(with = "serde_bytes")] Vec<u8>),
    Heartbeat(Heartbeat),
    Claim(Claim),
    /// The claimant's leases, renewed between heartbeats.
    Renew {
        sent_ms: Millis,
        leases: Vec<Lease>,
    },
    /// The claimant gives a job up without a result (today: it restarted
    /// while holding the claim); the job reopens as the next attempt.
    Release {
        job: Hash32,
        attempt: u32,
        reason: String,
        sent_ms: Millis,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// One round of range-based set reconciliation.
    Reconcile {
        #[serde(with = "crate::sync::wire_ranges")]
        ranges: Vec<SyncRange>,
    },
    GetRecords {
        ids: Vec<Hash32>,
    },
    PushRecords {
        records: Vec<serde_bytes::ByteBuf>,
    },
    /// Up to `BLOB_CHUNK` bytes of a blob from `offset` on.
    GetBlob {
        hash: Hash32,
        #[serde(default)]
        offset: u64,
    },
    /// The first request on a connection: the sender's admission. Nothing
    /// else is answered before the receiver has checked it.
    Hello {
        admission: Option<crate::admission::Admission>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Reconcile {
        #[serde(with = "crate::sync::wire_ranges")]
        ranges: Vec<SyncRange>,
    },
    Records {
        records: Vec<serde_bytes::ByteBuf>,
    },
    Ack {
        accepted: u32,
    },
    /// A chunk of the blob, and the blob's whole size.
    Blob {
        bytes: Option<serde_bytes::ByteBuf>,
        #[serde(default)]
        total: u64,
    },
    Error {
        message: String,
    },
    Hello {
        admission: Option<crate::admission::Admission>,
    },
}

pub fn encode_gossip(g: &Gossip) -> Vec<u8> {
    encode(g)
}
pub fn decode_gossip(b: &[u8]) -> Result<Gossip, CodecError> {
    decode(b, MAX_GOSSIP_BYTES)
}
pub fn encode_request(r: &Request) -> Vec<u8> {
    encode(r)
}
pub fn decode_request(b: &[u8]) -> Result<Request, CodecError> {
    decode(b, MAX_REQUEST_BYTES)
}
pub fn encode_response(r: &Response) -> Vec<u8> {
    encode(r)
}
pub fn decode_response(b: &[u8]) -> Result<Response, CodecError> {
    decode(b, MAX_RESPONSE_BYTES)
}

/// Who a message came from, for logs.
pub fn short_peer(p: &PeerId) -> String {
    let s = p.to_base58();
    s[s.len().saturating_sub(8)..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let msgs = vec![
            Gossip::Record(vec![1, 2, 3]),
            Gossip::Heartbeat(Heartbeat {
                seq: 9,
                sent_ms: 10,
                interval_ms: 2000,
                labels: vec!["os=linux".into()],
                executors: 2,
                busy: 1,
                running: vec![Lease { job: Hash32::of(b"j"), attempt: 0, step: Some("build".into()) }],
                addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
                name: String::new(),
            }),
            Gossip::Claim(Claim { job: Hash32::of(b"j"), attempt: 1, lease_ms: 30_000, sent_ms: 5 }),
            Gossip::Renew { sent_ms: 6, leases: vec![] },
            Gossip::Release { job: Hash32::of(b"j"), attempt: 1, reason: "lost".into(), sent_ms: 7 },
        ];
        for m in msgs {
            assert_eq!(decode_gossip(&encode_gossip(&m)).unwrap(), m);
        }
        let reqs = vec![
            Request::GetRecords { ids: vec![Hash32::of(b"a")] },
            Request::GetBlob { hash: Hash32::of(b"b"), offset: 5 },
            Request::PushRecords { records: vec![serde_bytes::ByteBuf::from(vec![7u8; 3])] },
        ];
        for r in reqs {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        }
        let resp = Response::Blob { bytes: Some(serde_bytes::ByteBuf::from(b"log".to_vec())), total: 3 };
        assert_eq!(decode_response(&encode_response(&resp)).unwrap(), resp);
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let big = vec![0u8; MAX_GOSSIP_BYTES + 1];
        assert!(matches!(decode_gossip(&big), Err(CodecError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_gossip(&bytes);
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
