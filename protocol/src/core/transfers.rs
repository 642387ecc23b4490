//! Requests in flight and the queue of bulk transfers behind them: every
//! outgoing request gets an id and a note of what it was for; record
//! fetches, pushes and log copies wait in a queue so that no more than
//! `MAX_TRANSFERS` of them are out at once.

use std::collections::{BTreeMap, VecDeque};

use libp2p_identity::PeerId;

use super::io::Output;
use crate::ids::Hash32;
use crate::wire::{self, Request};

/// Record fetches, pushes and log copies in flight at once; the rest wait.
pub const MAX_TRANSFERS: usize = 4;
/// Tokens of blob fetches the core makes for itself (replication).
pub const REPLICATION_TOKEN: u64 = 1 << 63;

/// What an outgoing request was for.
#[derive(Clone)]
pub enum Pending {
    Sync {
        peer: PeerId,
        round: u32,
    },
    /// Records asked for by id; the ids not returned are asked for again.
    Fetch {
        peer: PeerId,
        ids: Vec<Hash32>,
    },
    Push,
    Blob(BlobFetch),
    /// This node's admission, sent on connecting.
    Hello {
        peer: PeerId,
    },
}

/// A log being fetched in chunks, with the sources still to try.
#[derive(Clone)]
pub struct BlobFetch {
    pub token: u64,
    pub hash: Hash32,
    pub rest: Vec<PeerId>,
    pub peer: PeerId,
    pub buf: Vec<u8>,
}

impl BlobFetch {
    /// Replication copies count against the transfer limit; fetches a user
    /// asked for do not wait behind them.
    pub fn is_transfer(&self) -> bool {
        self.token & REPLICATION_TOKEN != 0
    }
}

impl Pending {
    fn is_transfer(&self) -> bool {
        match self {
            Pending::Sync { .. } | Pending::Hello { .. } => false,
            Pending::Fetch { .. } | Pending::Push => true,
            Pending::Blob(b) => b.is_transfer(),
        }
    }
}

#[derive(Clone)]
pub struct Requests {
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    queue: VecDeque<(PeerId, Request, Pending)>,
    in_flight: usize,
}

impl Requests {
    pub fn new() -> Self {
        Requests { pending: BTreeMap::new(), next_id: 1, queue: VecDeque::new(), in_flight: 0 }
    }

    /// Sends a request now.
    pub fn send(&mut self, peer: PeerId, req: &Request, p: Pending) -> Output {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, p);
        Output::Request { peer, id, bytes: wire::encode_request(req) }
    }

    /// The request an answer or a failure belongs to.
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        self.pending.remove(&id)
    }

    /// Queues a transfer behind the ones in flight.
    pub fn enqueue(&mut self, peer: PeerId, req: Request, p: Pending) {
        crate::invariant!(p.is_transfer(), "only transfers wait in the queue");
        self.queue.push_back((peer, req, p));
    }

    /// Sends queued transfers while fewer than `MAX_TRANSFERS` are out.
    pub fn pump(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while self.in_flight < MAX_TRANSFERS {
            let Some((peer, req, p)) = self.queue.pop_front() else { break };
            self.in_flight += 1;
            out.push(self.send(peer, &req, p));
        }
        self.check();
        out
    }

    /// A transfer ended (answered or failed): its slot goes to the next.
    pub fn transfer_done(&mut self) -> Vec<Output> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.pump()
    }

    fn check(&self) {
        crate::invariant!(self.in_flight <= MAX_TRANSFERS, "no more than MAX_TRANSFERS transfers out");
    }
}

impl Default for Requests {
    fn default() -> Self {
        Self::new()
    }
}
