//! Events the simulation schedules, and the queue that orders them.

use super::*;

#[derive(Debug)]
pub(super) enum Ev {
    Tick {
        node: usize,
        inc: u32,
    },
    /// The next arrivals of one broadcast; one queue entry per broadcast
    /// in flight keeps the queue small.
    Wave {
        wave: u32,
    },
    Request {
        to: usize,
        from: usize,
        from_inc: u32,
        id: u64,
        bytes: Vec<u8>,
    },
    Response {
        to: usize,
        inc: u32,
        id: u64,
        bytes: Vec<u8>,
    },
    RequestFailed {
        to: usize,
        inc: u32,
        id: u64,
    },
    BuildDone {
        node: usize,
        inc: u32,
        job: Hash32,
        attempt: u32,
        cancelled: bool,
    },
    Commit,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Outage {
        node: usize,
        dur: u64,
    },
    RandomCrash,
    PartitionStart {
        dur: u64,
        fraction: f64,
    },
    PartitionEnd,
    RandomPartition,
    ConvergenceCheck,
    QuietCheck,
    Forge,
}

/// The heap holds small keys; events wait in a slab beside it.
pub(super) struct Queued {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) slot: u32,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: earliest first.
        o.at.cmp(&self.at).then_with(|| o.seq.cmp(&self.seq))
    }
}
