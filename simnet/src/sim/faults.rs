//! Injected faults: crashes and restarts, outages, partitions and forged
//! records, plus the impairments each node draws at the start (clock skew,
//! slowness). Faults stop at the end of `--duration`; nodes that are down
//! still come back, and a partition that is on heals.

use std::collections::BTreeMap;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::store::Store;
use peerbot_protocol::wire::{encode_gossip, Gossip};
use peerbot_protocol::Input;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::events::{exp_delay, uniform_ms, Ev};
use super::Sim;
use crate::SimConfig;

/// How often convergence is checked after a heal or an outage's end.
const CONVERGENCE_CHECK_MS: u64 = 1_000;

/// How often, once faults are over, the run asks whether it is quiet.
pub(super) const QUIET_CHECK_MS: u64 = 5_000;

/// A forgery flips a bit of one of the first records of a store.
const FORGE_FROM: usize = 64;

/// A claimant crashed half-way through its build by `--crash-claimants`.
pub(super) struct CrashedClaim {
    pub(super) job: Hash32,
    pub(super) node: usize,
    pub(super) at: u64,
    /// When another node first started a build of the job after the crash.
    pub(super) reclaimed_at: Option<u64>,
}

/// A heal, or a node back from an outage, and how long until all live
/// nodes held the same records.
struct Heal {
    at: u64,
    took: Option<u64>,
}

/// Faults that happened.
#[derive(Default)]
pub(super) struct FaultCounts {
    pub(super) crashes: u64,
    pub(super) restarts: u64,
    pub(super) partitions: u64,
    pub(super) forged_sent: u64,
}

#[derive(Default)]
pub(super) struct Faults {
    over: bool,
    /// Nodes on a scheduled outage, and when it ends.
    outage_until: BTreeMap<usize, u64>,
    crashed_claims: Vec<CrashedClaim>,
    heals: Vec<Heal>,
    /// The heal whose convergence is being checked.
    converging: Option<usize>,
    counts: FaultCounts,
}

impl Faults {
    pub(super) fn over(&self) -> bool {
        self.over
    }

    pub(super) fn crashed_claims(&self) -> &[CrashedClaim] {
        &self.crashed_claims
    }

    /// Another node starts a build of a crashed claimant's job.
    pub(super) fn note_reclaim(&mut self, job: Hash32, node: usize, now: u64) {
        if let Some(c) = self.crashed_claims.iter_mut().find(|c| c.job == job && c.node != node && c.at <= now) {
            c.reclaimed_at.get_or_insert(now);
        }
    }

    pub(super) fn convergence_after_heal_ms(&self) -> Vec<Option<u64>> {
        self.heals.iter().map(|h| h.took).collect()
    }

    pub(super) fn counts(&self) -> &FaultCounts {
        &self.counts
    }
}

/// A node's clock offset, uniform in ±`--clock-skew`.
pub(super) fn draw_skew(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> i64 {
    if cfg.clock_skew_ms > 0 {
        rng.gen_range(-(cfg.clock_skew_ms as i64)..=cfg.clock_skew_ms as i64)
    } else {
        0
    }
}

pub(super) fn draw_slow(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> bool {
    rng.gen::<f64>() < cfg.slow_fraction
}

/// A delay as a slow node sees it.
pub(super) fn slowed(ms: u64, slow: bool, factor: f64) -> u64 {
    if slow {
        (ms as f64 * factor) as u64
    } else {
        ms
    }
}

impl Sim {
    /// Queues the scheduled faults and the first of each random kind.
    pub(super) fn schedule_faults(&mut self) {
        for (node, at, dur) in self.cfg.outages.clone() {
            if node < self.nodes.len() {
                self.queue.push(at, Ev::Outage { node, dur });
            }
        }
        for p in self.cfg.partitions.clone() {
            self.queue.push(p.at_ms, Ev::PartitionStart { dur: p.dur_ms, fraction: p.fraction });
        }
        if self.cfg.crash_rate_per_min > 0.0 {
            let rate = self.crash_rate_per_ms();
            let t = exp_delay(&mut self.rng, rate);
            self.queue.push(t, Ev::RandomCrash);
        }
        if self.cfg.random_partitions_per_hour > 0.0 {
            let t = exp_delay(&mut self.rng, self.cfg.random_partitions_per_hour / 3_600_000.0);
            self.queue.push(t, Ev::RandomPartition);
        }
        if self.cfg.forge_per_min > 0.0 {
            let t = exp_delay(&mut self.rng, self.cfg.forge_per_min / 60_000.0);
            self.queue.push(t.max(self.cfg.heartbeat_ms * 4), Ev::Forge);
        }
    }

    /// Cluster-wide.
    fn crash_rate_per_ms(&self) -> f64 {
        self.cfg.crash_rate_per_min * self.cfg.nodes as f64 / 60_000.0
    }

    /// The network heals and goes quiet: no new commits, crashes or cuts.
    pub(super) fn end_faults(&mut self) {
        self.faults.over = true;
        self.queue.push(self.now + QUIET_CHECK_MS, Ev::QuietCheck);
        if self.network.partitioned() {
            self.heal();
        }
    }

    /// The node goes down with its store kept, and restarts after a drawn time.
    pub(super) fn crash(&mut self, i: usize) {
        if !self.nodes[i].go_down() {
            return;
        }
        self.faults.counts.crashes += 1;
        self.workload.node_crashed(i);
        self.note(i, None, "crash", 0);
        let p = self.nodes[i].peer;
        for j in self.network.neighbours(i).to_vec() {
            self.input(j, Input::PeerDisconnected(p));
        }
        let d = uniform_ms(&mut self.rng, self.cfg.restart_after_ms);
        self.queue.push(self.now + d, Ev::Restart { node: i });
    }

    /// A crash until `now + dur`, whatever restart the crash drew.
    pub(super) fn on_outage(&mut self, node: usize, dur: u64) {
        if self.alive(node) {
            self.crash(node);
            self.faults.outage_until.insert(node, self.now + dur);
            self.queue.push(self.now + dur, Ev::Restart { node });
        }
    }

    pub(super) fn on_restart(&mut self, node: usize) {
        if self.alive(node) || self.faults.outage_until.get(&node).is_some_and(|t| *t > self.now) {
            return;
        }
        if self.rng.gen::<f64>() < self.cfg.lose_store {
            self.nodes[node].wipe_store(self.now);
        }
        self.faults.counts.restarts += 1;
        self.boot(node);
        if self.faults.outage_until.remove(&node).is_some() && self.faults.converging.is_none() {
            // Time for the returning node to hold what everyone holds.
            self.begin_convergence();
        }
        for j in self.network.neighbours(node).to_vec() {
            if self.linked(node, j) {
                self.link_changed(node, j, true);
            }
        }
    }

    /// Never the last live node.
    pub(super) fn on_random_crash(&mut self) {
        if self.faults.over {
            return;
        }
        let alive = self.live_nodes();
        if alive.len() > 1 {
            let i = alive[self.rng.gen_range(0..alive.len())];
            self.crash(i);
        }
        let rate = self.crash_rate_per_ms();
        let t = exp_delay(&mut self.rng, rate);
        self.queue.push(self.now + t, Ev::RandomCrash);
    }

    /// The claimant of one of the first `--crash-claimants` builds crashes at `at`.
    pub(super) fn maybe_crash_claimant(&mut self, node: usize, job: Hash32, at: u64) {
        if self.faults.crashed_claims.len() < self.cfg.crash_claimants && !self.faults.over {
            self.faults.crashed_claims.push(CrashedClaim { job, node, at, reclaimed_at: None });
            self.queue.push(at, Ev::Crash { node });
        }
    }

    /// One partition at a time: one due while another is on is skipped.
    pub(super) fn on_partition_start(&mut self, dur: u64, fraction: f64) {
        if self.network.partitioned() || self.faults.over {
            return;
        }
        self.partition(fraction);
        self.queue.push(self.now + dur, Ev::PartitionEnd);
    }

    pub(super) fn on_partition_end(&mut self) {
        if self.network.partitioned() {
            self.heal();
        }
    }

    pub(super) fn on_random_partition(&mut self) {
        if self.faults.over {
            return;
        }
        if !self.network.partitioned() {
            let dur = uniform_ms(&mut self.rng, self.cfg.random_partition_ms);
            let fraction = self.rng.gen_range(0.1..0.5);
            self.partition(fraction);
            self.queue.push(self.now + dur, Ev::PartitionEnd);
        }
        let t = exp_delay(&mut self.rng, self.cfg.random_partitions_per_hour / 3_600_000.0);
        self.queue.push(self.now + t, Ev::RandomPartition);
    }

    fn crossing_links(&self) -> Vec<(usize, usize)> {
        self.network.crossing_links(self.nodes.as_slice())
    }

    fn partition(&mut self, fraction: f64) {
        self.faults.counts.partitions += 1;
        let cut = self.network.cut(&mut self.rng, fraction);
        self.note(0, None, "partition", cut as u64);
        for (a, b) in self.crossing_links() {
            self.link_changed(a, b, false);
        }
    }

    fn heal(&mut self) {
        self.note(0, None, "heal", 0);
        let crossing = self.crossing_links();
        self.network.heal();
        for (a, b) in crossing {
            self.link_changed(a, b, true);
        }
        self.begin_convergence();
    }

    /// Starts timing how long until all live nodes hold the same records.
    fn begin_convergence(&mut self) {
        self.faults.heals.push(Heal { at: self.now, took: None });
        self.faults.converging = Some(self.faults.heals.len() - 1);
        self.queue.push(self.now + CONVERGENCE_CHECK_MS, Ev::ConvergenceCheck);
    }

    /// A new partition stops the timing; its figure stays empty.
    pub(super) fn convergence_check(&mut self) {
        let Some(k) = self.faults.converging else { return };
        if self.converged() {
            let heal = &mut self.faults.heals[k];
            heal.took = Some(self.now - heal.at);
            self.faults.converging = None;
        } else if !self.network.partitioned() {
            self.queue.push(self.now + CONVERGENCE_CHECK_MS, Ev::ConvergenceCheck);
        }
    }

    pub(super) fn on_forge(&mut self) {
        if self.faults.over {
            return;
        }
        self.forge();
        let t = exp_delay(&mut self.rng, self.cfg.forge_per_min / 60_000.0);
        self.queue.push(self.now + t, Ev::Forge);
    }

    /// A peer re-sends a stored record with one bit flipped.
    fn forge(&mut self) {
        let alive = self.live_nodes();
        if alive.is_empty() {
            return;
        }
        let i = alive[self.rng.gen_range(0..alive.len())];
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let mut all = Vec::new();
        core.store().for_each_record(&mut |b| {
            if all.len() < FORGE_FROM {
                all.push(b.to_vec())
            }
        });
        if all.is_empty() {
            return;
        }
        let mut bytes = all[self.rng.gen_range(0..all.len())].clone();
        let bit = self.rng.gen_range(0..bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        self.faults.counts.forged_sent += 1;
        self.note(i, None, "forge", bit as u64);
        self.broadcast(i, encode_gossip(&Gossip::Record(bytes)));
    }
}
