//! Injected faults: crashes, outages, partitions, forgeries.

use super::*;

impl Sim {
    pub(super) fn crash(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.take() else { return };
        self.report.crashes += 1;
        self.nodes[i].kept_store = Some(core.into_store());
        self.nodes[i].inc += 1;
        self.nodes[i].builds.clear();
        self.build_starts.retain(|(n, _, _), _| *n != i);
        self.nodes[i].inbound.clear();
        self.nodes[i].timer_at = None;
        self.note(i, None, "crash", 0);
        let p = self.nodes[i].peer;
        let nb = self.nodes[i].neighbours.clone();
        for j in nb {
            self.input(j, Input::PeerDisconnected(p));
        }
        let (lo, hi) = self.cfg.restart_after_ms;
        let d = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
        self.push(self.now + d, Ev::Restart { node: i });
    }

    pub(super) fn partition(&mut self, fraction: f64) {
        self.report.partitions += 1;
        self.partition_active = true;
        let mut idx: Vec<usize> = (0..self.nodes.len()).collect();
        idx.shuffle(&mut self.rng);
        let cut = ((self.nodes.len() as f64) * fraction).round() as usize;
        for (k, i) in idx.into_iter().enumerate() {
            self.nodes[i].side = (k < cut) as u8;
        }
        self.note(0, None, "partition", cut as u64);
        self.link_events(false);
    }

    pub(super) fn heal(&mut self) {
        self.partition_active = false;
        self.note(0, None, "heal", 0);
        let crossing: Vec<(usize, usize)> = self.crossing_links();
        for n in self.nodes.iter_mut() {
            n.side = 0;
        }
        for (a, b) in crossing {
            let (pa, pb) = (self.nodes[a].peer, self.nodes[b].peer);
            self.input(a, Input::PeerConnected(pb));
            self.input(b, Input::PeerConnected(pa));
        }
        self.heals.push((self.now, None));
        self.converging = Some(self.heals.len() - 1);
        self.push(self.now + 1_000, Ev::ConvergenceCheck);
    }

    pub(super) fn convergence_check(&mut self) {
        let Some(k) = self.converging else { return };
        if self.converged() {
            self.heals[k].1 = Some(self.now - self.heals[k].0);
            self.converging = None;
        } else if !self.partition_active {
            self.push(self.now + 1_000, Ev::ConvergenceCheck);
        }
    }

    /// A peer re-sends a stored record with one bit flipped.
    pub(super) fn forge(&mut self) {
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.rng.gen_range(0..alive.len())];
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let mut all = Vec::new();
        core.store().for_each_record(&mut |b| {
            if all.len() < 64 {
                all.push(b.to_vec())
            }
        });
        if all.is_empty() {
            return;
        }
        let mut bytes = all[self.rng.gen_range(0..all.len())].clone();
        let bit = self.rng.gen_range(0..bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        self.report.forged_sent += 1;
        self.note(i, None, "forge", bit as u64);
        let msg = peerbot_protocol::wire::encode_gossip(&peerbot_protocol::wire::Gossip::Record(bytes));
        self.broadcast(i, msg);
    }
}
