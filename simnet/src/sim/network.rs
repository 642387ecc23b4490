//! The network model: mesh gossip, point-to-point requests, partitions.

use super::*;

pub(super) struct Wave {
    pub(super) from: PeerId,
    pub(super) bytes: Rc<Vec<u8>>,
    /// (arrival, node), latest first: arrivals are popped off the end.
    pub(super) arrivals: Vec<(u64, usize)>,
}

impl Sim {
    pub(super) fn linked(&self, a: usize, b: usize) -> bool {
        self.alive(b) && self.nodes[a].side == self.nodes[b].side
    }

    pub(super) fn latency(&mut self, to: usize) -> u64 {
        let (lo, hi) = self.cfg.latency_ms;
        let mut l = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
        if self.cfg.reorder > 0.0 && self.rng.gen::<f64>() < self.cfg.reorder {
            l += self.rng.gen_range(0..=hi * 10);
        }
        if self.nodes[to].slow {
            l = (l as f64 * self.cfg.slow_factor) as u64;
        }
        l.max(1)
    }

    /// Gossip over the mesh: every node that gets a message forwards it to
    /// its other mesh links. Each node's first arrival is computed like a
    /// shortest path over links with sampled latency and loss; later copies
    /// are counted as traffic and dropped, as gossipsub's seen-cache does.
    pub(super) fn broadcast(&mut self, src: usize, bytes: Vec<u8>) {
        let n = self.nodes.len();
        let size = bytes.len() as u64 + 64;
        let bytes = Rc::new(bytes);
        let from = self.nodes[src].peer;
        let mut dist = vec![u64::MAX; n];
        let mut hops = vec![0u32; n];
        let mut parent = vec![usize::MAX; n];
        let mut heap = BinaryHeap::new();
        dist[src] = 0;
        heap.push(std::cmp::Reverse((0u64, src)));
        while let Some(std::cmp::Reverse((d, u))) = heap.pop() {
            if d > dist[u] {
                continue;
            }
            let nb = std::mem::take(&mut self.nodes[u].neighbours);
            for &v in &nb {
                if v == parent[u] || !self.linked(u, v) {
                    continue;
                }
                self.nodes[u].msgs_sent += 1;
                self.nodes[u].bytes_sent += size;
                if self.cfg.loss > 0.0 && self.rng.gen::<f64>() < self.cfg.loss {
                    continue;
                }
                let nd = d + self.latency(v);
                if nd < dist[v] {
                    dist[v] = nd;
                    hops[v] = hops[u] + 1;
                    parent[v] = u;
                    heap.push(std::cmp::Reverse((nd, v)));
                }
            }
            self.nodes[u].neighbours = nb;
        }
        let mut arrivals = Vec::with_capacity(n);
        for v in 0..n {
            if v == src || dist[v] == u64::MAX {
                continue;
            }
            self.max_hops = self.max_hops.max(hops[v]);
            arrivals.push((self.now + dist[v], v));
            if self.cfg.duplicate > 0.0 && self.rng.gen::<f64>() < self.cfg.duplicate {
                let extra = self.latency(v);
                arrivals.push((self.now + dist[v] + extra, v));
            }
        }
        if arrivals.is_empty() {
            return;
        }
        arrivals.sort_unstable_by(|a, b| b.cmp(a));
        let first = arrivals[arrivals.len() - 1].0;
        let wave = Wave { from, bytes, arrivals };
        let id = match self.free_waves.pop() {
            Some(w) => {
                self.waves[w as usize] = Some(wave);
                w
            }
            None => {
                self.waves.push(Some(wave));
                (self.waves.len() - 1) as u32
            }
        };
        self.push(first, Ev::Wave { wave: id });
    }

    pub(super) fn count_transfer(&mut self, bytes: &[u8], request: bool) {
        use peerbot_protocol::wire::{decode_request, decode_response, Request, Response};
        let n = bytes.len() as u64 + 64;
        let is_log = if request {
            matches!(decode_request(bytes), Ok(Request::GetBlob { .. }))
        } else {
            matches!(decode_response(bytes), Ok(Response::Blob { .. }))
        };
        if is_log {
            self.log_bytes += n;
        } else {
            self.sync_bytes += n;
        }
    }

    pub(super) fn send_request(&mut self, i: usize, peer: PeerId, id: u64, bytes: Vec<u8>) {
        self.count_transfer(&bytes, true);
        let inc = self.nodes[i].inc;
        self.nodes[i].msgs_sent += 1;
        self.nodes[i].bytes_sent += bytes.len() as u64 + 64;
        let target = self.by_peer.get(&peer).copied();
        let lost = self.cfg.loss > 0.0 && self.rng.gen::<f64>() < self.cfg.loss;
        match target {
            Some(t) if self.linked(i, t) && !lost => {
                let lat = self.latency(t);
                self.push(self.now + lat, Ev::Request { to: t, from: i, from_inc: inc, id, bytes });
            }
            _ => {
                let at = self.now + self.cfg.request_timeout_ms;
                self.push(at, Ev::RequestFailed { to: i, inc, id });
            }
        }
    }

    pub(super) fn send_reply(&mut self, i: usize, inbound: u64, bytes: Vec<u8>) {
        let Some((to, inc, id)) = self.nodes[i].inbound.remove(&inbound) else { return };
        self.count_transfer(&bytes, false);
        self.nodes[i].msgs_sent += 1;
        self.nodes[i].bytes_sent += bytes.len() as u64 + 64;
        let lost = self.cfg.loss > 0.0 && self.rng.gen::<f64>() < self.cfg.loss;
        if self.linked(i, to) && self.nodes[to].inc == inc && !lost {
            let lat = self.latency(to);
            self.push(self.now + lat, Ev::Response { to, inc, id, bytes });
        } else {
            let at = self.now + self.cfg.request_timeout_ms;
            self.push(at, Ev::RequestFailed { to, inc, id });
        }
    }

    pub(super) fn crossing_links(&self) -> Vec<(usize, usize)> {
        let mut v = vec![];
        for (a, n) in self.nodes.iter().enumerate() {
            for &b in &n.neighbours {
                if a < b && self.nodes[a].side != self.nodes[b].side && self.alive(a) && self.alive(b) {
                    v.push((a, b));
                }
            }
        }
        v
    }

    pub(super) fn link_events(&mut self, up: bool) {
        for (a, b) in self.crossing_links() {
            let (pa, pb) = (self.nodes[a].peer, self.nodes[b].peer);
            if up {
                self.input(a, Input::PeerConnected(pb));
                self.input(b, Input::PeerConnected(pa));
            } else {
                self.input(a, Input::PeerDisconnected(pb));
                self.input(b, Input::PeerDisconnected(pa));
            }
        }
    }
}
