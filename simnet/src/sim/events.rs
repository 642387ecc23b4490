//! The event queue and the virtual clock.
//!
//! Time is simulated milliseconds. Events due at the same time run in the
//! order they were queued, so a run depends on its seed and nothing else.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::Millis;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::nodes::Caller;

/// Something due at a simulated time. Events aimed at one incarnation of a
/// node are ignored once it has crashed since they were queued.
#[derive(Debug)]
pub(super) enum Ev {
    Tick {
        node: usize,
        incarnation: u32,
    },
    /// The next arrivals of one broadcast; one queue entry per broadcast
    /// in flight keeps the queue small.
    Wave {
        wave: u32,
    },
    Request {
        to: usize,
        caller: Caller,
        bytes: Vec<u8>,
    },
    Response {
        caller: Caller,
        bytes: Vec<u8>,
    },
    RequestFailed {
        caller: Caller,
    },
    BuildDone {
        node: usize,
        incarnation: u32,
        job: Hash32,
        attempt: u32,
        cancelled: bool,
    },
    Commit,
    /// The hostile nodes act.
    Byzantine,
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
struct Queued {
    at: u64,
    seq: u64,
    slot: u32,
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

#[derive(Default)]
pub(super) struct EventQueue {
    /// Events queued so far: the tie-break between equal times.
    seq: u64,
    heap: BinaryHeap<Queued>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
}

impl EventQueue {
    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.heap.push(Queued { at, seq: self.seq, slot });
    }

    /// The earliest event and its time, taken off the queue.
    pub(super) fn pop(&mut self) -> Option<(u64, Ev)> {
        let q = self.heap.pop()?;
        let ev = self.slab[q.slot as usize].take().expect("queued event");
        self.free.push(q.slot);
        Some((q.at, ev))
    }
}

/// What a clock `skew` ms off reads at simulated time `t`; no clock reads
/// below zero.
pub(super) fn local_time(t: u64, skew: i64) -> Millis {
    (t as i64 + skew).max(0) as u64
}

/// The simulated time at which a clock `skew` ms off reads `local`, but no
/// earlier than `earliest`.
pub(super) fn global_time(local: Millis, skew: i64, earliest: u64) -> u64 {
    (local as i64 - skew).max(earliest as i64) as u64
}

/// Time to the next event of a Poisson process with this rate; a zero rate
/// means never, and draws nothing.
pub(super) fn exp_delay(rng: &mut ChaCha8Rng, rate_per_ms: f64) -> u64 {
    if rate_per_ms <= 0.0 {
        return u64::MAX / 4;
    }
    let u: f64 = rng.gen::<f64>().max(1e-12);
    (-u.ln() / rate_per_ms) as u64 + 1
}

/// A duration drawn uniformly from `lo..=hi`; a range of one value draws
/// nothing, which keeps the random stream of such runs unchanged.
pub(super) fn uniform_ms(rng: &mut ChaCha8Rng, (lo, hi): (u64, u64)) -> u64 {
    if hi > lo {
        rng.gen_range(lo..=hi)
    } else {
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_queue_order() {
        let mut q = EventQueue::default();
        q.push(20, Ev::Restart { node: 1 });
        q.push(10, Ev::Restart { node: 2 });
        q.push(20, Ev::Restart { node: 3 });
        let order: Vec<(u64, usize)> = std::iter::from_fn(|| {
            q.pop().map(|(at, ev)| match ev {
                Ev::Restart { node } => (at, node),
                other => panic!("unexpected {other:?}"),
            })
        })
        .collect();
        assert_eq!(order, vec![(10, 2), (20, 1), (20, 3)]);
    }

    #[test]
    fn freed_slots_are_reused() {
        let mut q = EventQueue::default();
        q.push(1, Ev::Commit);
        q.pop();
        q.push(2, Ev::Forge);
        assert_eq!(q.slab.len(), 1);
        assert!(matches!(q.pop(), Some((2, Ev::Forge))));
    }

    #[test]
    fn skewed_clocks() {
        assert_eq!(local_time(1_000, -300), 700);
        assert_eq!(local_time(100, -300), 0);
        assert_eq!(global_time(700, -300, 0), 1_000);
        assert_eq!(global_time(700, -300, 5_000), 5_000);
    }
}
