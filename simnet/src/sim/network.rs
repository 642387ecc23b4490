//! The network model. A fixed random mesh carries broadcasts, as gossipsub's
//! mesh does; requests and replies go point to point. Every transmission
//! draws its own latency and loss. A partition puts the nodes on two sides
//! with no link between them.
//!
//! The model knows links, not nodes: it asks `Hosts` which nodes are up and
//! which are slow, and its callers schedule what it returns.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::rc::Rc;

use peerbot_protocol::wire::{self, decode_request, decode_response};
use peerbot_protocol::PeerId;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::events::uniform_ms;
use super::faults::slowed;
use crate::SimConfig;

/// Added to every message's encoded size for framing and headers: an
/// allowance, not a model of any transport.
const OVERHEAD: u64 = 64;

/// What the network needs to know of the nodes at its ends.
pub(super) trait Hosts {
    fn up(&self, i: usize) -> bool;
    /// Messages to a slow node take longer.
    fn slow(&self, i: usize) -> bool;
}

/// How links behave, from the run's settings.
struct LinkModel {
    latency_ms: (u64, u64),
    loss: f64,
    duplicate: f64,
    reorder: f64,
    slow_factor: f64,
    request_timeout_ms: u64,
}

/// Messages and bytes sent, cluster-wide, counted per link transmission.
#[derive(Default, Clone, Copy)]
pub(super) struct Traffic {
    pub(super) msgs: u64,
    pub(super) bytes: u64,
    /// Requests and replies other than logs: reconciliation and record transfer.
    pub(super) sync_bytes: u64,
    /// `GetBlob` requests and `Blob` replies.
    pub(super) log_bytes: u64,
}

/// One broadcast's deliveries still to come.
struct Wave {
    from: PeerId,
    bytes: Rc<Vec<u8>>,
    /// (arrival, node), latest first: arrivals are popped off the end.
    arrivals: Vec<(u64, usize)>,
}

/// One delivery of a broadcast.
pub(super) struct Arrival {
    pub(super) to: usize,
    pub(super) from: PeerId,
    pub(super) bytes: Rc<Vec<u8>>,
    /// When the same broadcast's next delivery is due, if any is left.
    pub(super) next_at: Option<u64>,
}

pub(super) enum Transfer {
    Request,
    Reply,
}

/// Where a point-to-point message is headed, as the caller found it.
pub(super) enum Dest {
    /// Down, unknown, or across a partition.
    Unreachable,
    Reachable {
        slow: bool,
    },
}

pub(super) struct Network {
    model: LinkModel,
    neighbours: Vec<Vec<usize>>,
    /// Each node's side of the partition; all 0 when there is none.
    side: Vec<u8>,
    partitioned: bool,
    waves: Vec<Option<Wave>>,
    free_waves: Vec<u32>,
    /// The most mesh hops on any first-arrival path.
    max_hops: u32,
    traffic: Traffic,
}

impl Network {
    /// Draws the mesh; the only draws made here, before any node boots.
    pub(super) fn new(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> Network {
        Network {
            model: LinkModel {
                latency_ms: cfg.latency_ms,
                loss: cfg.loss,
                duplicate: cfg.duplicate,
                reorder: cfg.reorder,
                slow_factor: cfg.slow_factor,
                request_timeout_ms: cfg.request_timeout_ms,
            },
            neighbours: random_mesh(rng, cfg.nodes, cfg.mesh_degree),
            side: vec![0; cfg.nodes],
            partitioned: false,
            waves: Vec::new(),
            free_waves: Vec::new(),
            max_hops: 0,
            traffic: Traffic::default(),
        }
    }

    pub(super) fn neighbours(&self, i: usize) -> &[usize] {
        &self.neighbours[i]
    }

    pub(super) fn partitioned(&self) -> bool {
        self.partitioned
    }

    pub(super) fn same_side(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b]
    }

    /// How long a requester waits before it is told its request failed.
    pub(super) fn request_timeout_ms(&self) -> u64 {
        self.model.request_timeout_ms
    }

    pub(super) fn max_hops(&self) -> u32 {
        self.max_hops
    }

    pub(super) fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn latency(&self, rng: &mut ChaCha8Rng, slow_receiver: bool) -> u64 {
        let (_, hi) = self.model.latency_ms;
        let mut l = uniform_ms(rng, self.model.latency_ms);
        if self.model.reorder > 0.0 && rng.gen::<f64>() < self.model.reorder {
            l += rng.gen_range(0..=hi * 10);
        }
        slowed(l, slow_receiver, self.model.slow_factor).max(1)
    }

    fn lost(&self, rng: &mut ChaCha8Rng) -> bool {
        self.model.loss > 0.0 && rng.gen::<f64>() < self.model.loss
    }

    /// Gossip over the mesh: every node that gets a message forwards it to
    /// its other mesh links. Each node's first arrival is computed like a
    /// shortest path over links with sampled latency and loss; later copies
    /// are counted as traffic and dropped, as gossipsub's seen-cache does.
    /// Returns the first arrival's time and the wave to deliver, if any
    /// node is reached.
    pub(super) fn broadcast(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: u64,
        src: usize,
        from: PeerId,
        bytes: Vec<u8>,
        hosts: &(impl Hosts + ?Sized),
    ) -> Option<(u64, u32)> {
        let size = bytes.len() as u64 + OVERHEAD;
        let (dist, hops) = self.first_arrivals(rng, src, size, hosts);
        let mut arrivals = Vec::with_capacity(dist.len());
        for v in 0..dist.len() {
            if v == src || dist[v] == u64::MAX {
                continue;
            }
            self.max_hops = self.max_hops.max(hops[v]);
            arrivals.push((now + dist[v], v));
            if self.model.duplicate > 0.0 && rng.gen::<f64>() < self.model.duplicate {
                let extra = self.latency(rng, hosts.slow(v));
                arrivals.push((now + dist[v] + extra, v));
            }
        }
        if arrivals.is_empty() {
            return None;
        }
        arrivals.sort_unstable_by(|a, b| b.cmp(a));
        let first = arrivals[arrivals.len() - 1].0;
        Some((first, self.add_wave(Wave { from, bytes: Rc::new(bytes), arrivals })))
    }

    /// Dijkstra from `src` over the links between live nodes on one side,
    /// each transmission drawing its loss and latency: every node's first
    /// arrival (`u64::MAX` if never) and its hops.
    fn first_arrivals(
        &mut self,
        rng: &mut ChaCha8Rng,
        src: usize,
        size: u64,
        hosts: &(impl Hosts + ?Sized),
    ) -> (Vec<u64>, Vec<u32>) {
        let n = self.neighbours.len();
        let mut dist = vec![u64::MAX; n];
        let mut hops = vec![0u32; n];
        let mut parent = vec![usize::MAX; n];
        let mut heap = BinaryHeap::new();
        dist[src] = 0;
        heap.push(Reverse((0u64, src)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if d > dist[u] {
                continue;
            }
            for &v in &self.neighbours[u] {
                if v == parent[u] || !hosts.up(v) || self.side[u] != self.side[v] {
                    continue;
                }
                self.traffic.msgs += 1;
                self.traffic.bytes += size;
                if self.lost(rng) {
                    continue;
                }
                let nd = d + self.latency(rng, hosts.slow(v));
                if nd < dist[v] {
                    dist[v] = nd;
                    hops[v] = hops[u] + 1;
                    parent[v] = u;
                    heap.push(Reverse((nd, v)));
                }
            }
        }
        (dist, hops)
    }

    fn add_wave(&mut self, wave: Wave) -> u32 {
        match self.free_waves.pop() {
            Some(w) => {
                self.waves[w as usize] = Some(wave);
                w
            }
            None => {
                self.waves.push(Some(wave));
                (self.waves.len() - 1) as u32
            }
        }
    }

    /// Takes a wave's next delivery; the wave is gone after its last one.
    pub(super) fn next_arrival(&mut self, wave: u32) -> Option<Arrival> {
        let w = self.waves[wave as usize].as_mut()?;
        let (_, to) = w.arrivals.pop().expect("a wave has arrivals left");
        let (from, bytes) = (w.from, w.bytes.clone());
        let next_at = w.arrivals.last().map(|&(at, _)| at);
        if next_at.is_none() {
            self.waves[wave as usize] = None;
            self.free_waves.push(wave);
        }
        Some(Arrival { to, from, bytes, next_at })
    }

    /// Counts one request or reply and draws its fate: its latency if it
    /// arrives, `None` if it is lost or cannot reach `dest`.
    pub(super) fn send(&mut self, rng: &mut ChaCha8Rng, bytes: &[u8], transfer: Transfer, dest: Dest) -> Option<u64> {
        self.count(bytes, transfer);
        let lost = self.lost(rng);
        match dest {
            Dest::Reachable { slow } if !lost => Some(self.latency(rng, slow)),
            _ => None,
        }
    }

    fn count(&mut self, bytes: &[u8], transfer: Transfer) {
        let n = bytes.len() as u64 + OVERHEAD;
        self.traffic.msgs += 1;
        self.traffic.bytes += n;
        let is_log = match transfer {
            Transfer::Request => matches!(decode_request(bytes), Ok(wire::Request::GetBlob { .. })),
            Transfer::Reply => matches!(decode_response(bytes), Ok(wire::Response::Blob { .. })),
        };
        if is_log {
            self.traffic.log_bytes += n;
        } else {
            self.traffic.sync_bytes += n;
        }
    }

    /// Cuts off a random `fraction` of the nodes; returns how many.
    pub(super) fn cut(&mut self, rng: &mut ChaCha8Rng, fraction: f64) -> usize {
        self.partitioned = true;
        let mut idx: Vec<usize> = (0..self.side.len()).collect();
        idx.shuffle(rng);
        let cut = ((self.side.len() as f64) * fraction).round() as usize;
        for (k, i) in idx.into_iter().enumerate() {
            self.side[i] = (k < cut) as u8;
        }
        cut
    }

    pub(super) fn heal(&mut self) {
        self.partitioned = false;
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    /// Mesh links across the cut whose two ends are up, each once.
    pub(super) fn crossing_links(&self, hosts: &(impl Hosts + ?Sized)) -> Vec<(usize, usize)> {
        let mut v = vec![];
        for (a, nb) in self.neighbours.iter().enumerate() {
            for &b in nb {
                if a < b && self.side[a] != self.side[b] && hosts.up(a) && hosts.up(b) {
                    v.push((a, b));
                }
            }
        }
        v
    }
}

/// Each node links to D/2 random others, so about D each; a ring keeps the
/// mesh connected whatever the draw.
fn random_mesh(rng: &mut ChaCha8Rng, n: usize, degree: usize) -> Vec<Vec<usize>> {
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    if n > 1 {
        let per = (degree / 2).max(1).min(n - 1);
        for i in 0..n {
            let mut added = 0;
            let mut tries = 0;
            while added < per && tries < per * 20 {
                tries += 1;
                let j = rng.gen_range(0..n);
                if j == i {
                    continue;
                }
                if edges.insert((i.min(j), i.max(j))) {
                    added += 1;
                }
            }
        }
        for i in 0..n {
            edges.insert((i.min((i + 1) % n), i.max((i + 1) % n)));
        }
    }
    let mut neighbours = vec![Vec::new(); n];
    for (a, b) in edges {
        if a != b {
            neighbours[a].push(b);
            neighbours[b].push(a);
        }
    }
    neighbours
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Every node up, none slow.
    struct AllUp;

    impl Hosts for AllUp {
        fn up(&self, _: usize) -> bool {
            true
        }
        fn slow(&self, _: usize) -> bool {
            false
        }
    }

    fn connected(neighbours: &[Vec<usize>]) -> bool {
        let mut seen = vec![false; neighbours.len()];
        let mut stack = vec![0];
        while let Some(u) = stack.pop() {
            if !std::mem::replace(&mut seen[u], true) {
                stack.extend(&neighbours[u]);
            }
        }
        seen.iter().all(|s| *s)
    }

    #[test]
    fn mesh_is_connected_and_symmetric() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1, 2, 3, 10, 50] {
            let mesh = random_mesh(&mut rng, n, 8);
            assert!(connected(&mesh), "{n} nodes");
            for (a, nb) in mesh.iter().enumerate() {
                assert!(nb.iter().all(|&b| b != a && mesh[b].contains(&a)));
            }
        }
    }

    #[test]
    fn nothing_crosses_a_cut() {
        let cfg = SimConfig { nodes: 20, ..SimConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut net = Network::new(&cfg, &mut rng);
        assert_eq!(net.cut(&mut rng, 0.5), 10);
        let sender = peerbot_protocol::deterministic_key(1).public().to_peer_id();
        let reached = net.broadcast(&mut rng, 0, 0, sender, vec![1], &AllUp);
        let (_, wave) = reached.expect("some node on the sender's side");
        while let Some(a) = net.next_arrival(wave) {
            assert!(net.same_side(0, a.to));
            if a.next_at.is_none() {
                break;
            }
        }
        assert!(!net.crossing_links(&AllUp).is_empty());
        net.heal();
        assert!(net.crossing_links(&AllUp).is_empty());
    }
}
