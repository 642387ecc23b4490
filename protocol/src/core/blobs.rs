//! Step logs between nodes: where to look for one, taking it in chunks and
//! checking it against its hash, serving chunks, and which nodes keep a
//! copy of each new log.

use libp2p_identity::PeerId;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_bytes::ByteBuf;

use super::members::Membership;
use super::rank::score;
use super::transfers::BlobFetch;
use crate::codec::CodecError;
use crate::ids::Hash32;
use crate::store::Store;
use crate::wire::{self, Response};

/// Step logs are cut at this size, with a marker at the cut.
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

/// Where to ask for a log, in order: the hint (the signer, who built it),
/// then the nodes that keep copies of it, then anyone connected.
pub fn sources(
    hash: &Hash32,
    hint: Option<PeerId>,
    me: PeerId,
    members: &Membership,
    replicas: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<PeerId> {
    let mut holders: Vec<(u64, PeerId)> = members.all().map(|(p, v)| (score(hash, v.key), p)).collect();
    holders.sort_unstable_by(|a, b| b.cmp(a));
    let mut rest: Vec<PeerId> = members.connected_sorted();
    rest.shuffle(rng);
    for (_, p) in holders.into_iter().take(replicas).rev() {
        rest.retain(|x| *x != p);
        rest.insert(0, p);
    }
    if let Some(h) = hint.filter(|h| *h != me) {
        rest.retain(|x| *x != h);
        rest.insert(0, h);
    }
    rest
}

/// What a chunk of a log did to its fetch.
pub enum ChunkStep {
    /// Ask the same peer for the next chunk.
    More(BlobFetch, u64),
    /// The whole log, checked against its hash.
    Complete(BlobFetch),
    /// This source failed; try the next.
    NextSource(BlobFetch, &'static str),
}

/// Takes one answer to a chunk request.
pub fn on_chunk(mut f: BlobFetch, resp: Result<Response, CodecError>) -> ChunkStep {
    match resp {
        Ok(Response::Blob { bytes: Some(b), total })
            if total <= MAX_LOG_BYTES + 4096 && f.buf.len() + b.len() <= total as usize =>
        {
            f.buf.extend_from_slice(&b);
            if (f.buf.len() as u64) < total && !b.is_empty() {
                let offset = f.buf.len() as u64;
                ChunkStep::More(f, offset)
            } else if Hash32::of(&f.buf) == f.hash {
                ChunkStep::Complete(f)
            } else {
                ChunkStep::NextSource(f, "a peer sent bytes that do not match the hash")
            }
        }
        Ok(Response::Blob { bytes: Some(_), .. }) => ChunkStep::NextSource(f, "a peer sent a malformed log chunk"),
        _ => ChunkStep::NextSource(f, "no connected peer has it"),
    }
}

/// The log last asked for, kept while a peer takes it chunk by chunk.
#[derive(Default, Clone)]
pub struct BlobServer {
    current: Option<(Hash32, Vec<u8>)>,
}

impl BlobServer {
    pub fn serve<S: Store>(&mut self, store: &S, hash: Hash32, offset: u64) -> Response {
        if self.current.as_ref().is_none_or(|(h, _)| *h != hash) {
            self.current = store.get_blob(&hash).map(|b| (hash, b));
        }
        match &self.current {
            Some((h, b)) if *h == hash => {
                let start = (offset as usize).min(b.len());
                let end = (start + wire::BLOB_CHUNK).min(b.len());
                Response::Blob { bytes: Some(ByteBuf::from(b[start..end].to_vec())), total: b.len() as u64 }
            }
            _ => Response::Blob { bytes: None, total: 0 },
        }
    }
}
