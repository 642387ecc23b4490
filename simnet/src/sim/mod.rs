//! The simulation engine: one event queue, one RNG, many `NodeCore`s.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use peerbot_protocol::core::{
    Announced, BuildOutcome, CommitInfo, Config, Event, Input, NodeCore, Output, StepOutcome, Verify,
};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::labels::satisfies;
use peerbot_protocol::recipe::job_id;
use peerbot_protocol::record::{self, RecordError, VerifiedRecord};
use peerbot_protocol::store::{MemStore, Store};
use peerbot_protocol::{deterministic_key, Keypair, Millis, PeerId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::SimConfig;

mod events;
mod faults;
mod invariants;
mod network;
mod nodes;
mod report;
mod trace;
mod workload;

use events::{Ev, Queued};
pub use invariants::Violation;
use network::Wave;
use nodes::{SharedVerify, SimNode};
use report::RecordTrack;
pub use report::{FailoverFigure, Report};
use trace::{TraceLine, RING};
use workload::JobInfo;

pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    nodes: Vec<SimNode>,
    by_peer: HashMap<PeerId, usize>,
    verifier: Arc<SharedVerify>,
    trace: blake3::Hasher,
    ring: VecDeque<TraceLine>,
    events: u64,
    commits: u64,
    jobs: BTreeMap<Hash32, JobInfo>,
    records: HashMap<Hash32, RecordTrack>,
    partition_active: bool,
    heals: Vec<(u64, Option<u64>)>,
    converging: Option<usize>,
    report: Report,
    crashed_claims: Vec<(Hash32, usize, u64)>,
    faults_over: bool,
    max_hops: u32,
    pending_violation: Option<Violation>,
    quiet: bool,
    /// `SIMNET_DEBUG_JOB`: print every event of jobs whose id starts so.
    debug_job: Option<String>,
    waves: Vec<Option<Wave>>,
    free_waves: Vec<u32>,
    conflicts_seen: BTreeSet<(Hash32, u32)>,
    expiries_seen: BTreeSet<(Hash32, u32)>,
    build_starts: BTreeMap<(usize, Hash32, u32), u64>,
    first_build_start: Option<u64>,
    last_build_end: u64,
    busy_slot_ms: u64,
    reclaims: BTreeMap<usize, u64>,
    outage_until: BTreeMap<usize, u64>,
    sync_bytes: u64,
    log_bytes: u64,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let total_weight: f64 = cfg.label_mix.iter().map(|c| c.weight).sum();
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let mut by_peer = HashMap::new();
        for i in 0..cfg.nodes {
            let key = deterministic_key(cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            let peer = key.public().to_peer_id();
            let mut pick = rng.gen::<f64>() * total_weight;
            let mut labels = cfg.label_mix[0].labels.clone();
            for c in &cfg.label_mix {
                if pick < c.weight {
                    labels = c.labels.clone();
                    break;
                }
                pick -= c.weight;
            }
            let skew = if cfg.clock_skew_ms > 0 {
                rng.gen_range(-(cfg.clock_skew_ms as i64)..=cfg.clock_skew_ms as i64)
            } else {
                0
            };
            let slow = rng.gen::<f64>() < cfg.slow_fraction;
            by_peer.insert(peer, i);
            nodes.push(SimNode {
                core: None,
                kept_store: Some(MemStore::new()),
                key,
                peer,
                labels,
                skew,
                slow,
                inc: 0,
                timer_at: None,
                side: 0,
                neighbours: vec![],
                inbound: HashMap::new(),
                next_inbound: 1,
                builds: BTreeMap::new(),
                msgs_sent: 0,
                bytes_sent: 0,
            });
        }
        if std::env::var("SIMNET_DEBUG_LABELS").is_ok() {
            let mut counts: BTreeMap<Vec<String>, usize> = BTreeMap::new();
            for n in &nodes {
                *counts.entry(n.labels.clone()).or_default() += 1;
            }
            eprintln!("labels: {counts:?}");
        }
        // A random mesh: each node links to D/2 others, so about D each.
        let n = cfg.nodes;
        let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
        if n > 1 {
            let per = (cfg.mesh_degree / 2).max(1).min(n - 1);
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
            // A ring keeps the mesh connected whatever the draw.
            for i in 0..n {
                edges.insert((i.min((i + 1) % n), i.max((i + 1) % n)));
            }
        }
        for (a, b) in edges {
            if a != b {
                nodes[a].neighbours.push(b);
                nodes[b].neighbours.push(a);
            }
        }
        let mut sim = Sim {
            report: Report { seed: cfg.seed, nodes: cfg.nodes, ..Default::default() },
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            nodes,
            by_peer,
            verifier: Arc::new(SharedVerify::default()),
            trace: blake3::Hasher::new(),
            ring: VecDeque::with_capacity(RING),
            events: 0,
            commits: 0,
            jobs: BTreeMap::new(),
            records: HashMap::new(),
            partition_active: false,
            heals: vec![],
            converging: None,
            crashed_claims: vec![],
            faults_over: false,
            max_hops: 0,
            pending_violation: None,
            quiet: false,
            debug_job: std::env::var("SIMNET_DEBUG_JOB").ok(),
            waves: Vec::new(),
            free_waves: Vec::new(),
            conflicts_seen: BTreeSet::new(),
            expiries_seen: BTreeSet::new(),
            build_starts: BTreeMap::new(),
            first_build_start: None,
            last_build_end: 0,
            busy_slot_ms: 0,
            reclaims: BTreeMap::new(),
            outage_until: BTreeMap::new(),
            sync_bytes: 0,
            log_bytes: 0,
        };
        for i in 0..sim.nodes.len() {
            sim.boot(i);
        }
        // Everyone is up; the mesh's links come up.
        for i in 0..sim.nodes.len() {
            let nb = sim.nodes[i].neighbours.clone();
            for j in nb {
                let p = sim.nodes[j].peer;
                sim.input(i, Input::PeerConnected(p));
            }
        }
        // Commits start once the nodes have heard each other.
        let first = sim.cfg.heartbeat_ms * 3 + sim.next_exp(sim.cfg.commits_per_min / 60_000.0);
        if sim.cfg.commits_per_min > 0.0 {
            sim.push(first, Ev::Commit);
        }
        for (node, at, dur) in sim.cfg.outages.clone() {
            if node < sim.nodes.len() {
                sim.push(at, Ev::Outage { node, dur });
            }
        }
        for p in sim.cfg.partitions.clone() {
            sim.push(p.at_ms, Ev::PartitionStart { dur: p.dur_ms, fraction: p.fraction });
        }
        if sim.cfg.crash_rate_per_min > 0.0 {
            let t = sim.next_exp(sim.cfg.crash_rate_per_min * sim.cfg.nodes as f64 / 60_000.0);
            sim.push(t, Ev::RandomCrash);
        }
        if sim.cfg.random_partitions_per_hour > 0.0 {
            let t = sim.next_exp(sim.cfg.random_partitions_per_hour / 3_600_000.0);
            sim.push(t, Ev::RandomPartition);
        }
        if sim.cfg.forge_per_min > 0.0 {
            let t = sim.next_exp(sim.cfg.forge_per_min / 60_000.0);
            sim.push(t.max(sim.cfg.heartbeat_ms * 4), Ev::Forge);
        }
        sim
    }

    fn next_exp(&mut self, rate_per_ms: f64) -> u64 {
        if rate_per_ms <= 0.0 {
            return u64::MAX / 4;
        }
        let u: f64 = self.rng.gen::<f64>().max(1e-12);
        (-u.ln() / rate_per_ms) as u64 + 1
    }

    fn push(&mut self, at: u64, ev: Ev) {
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
        self.queue.push(Queued { at, seq: self.seq, slot });
    }

    fn local(&self, i: usize, t: u64) -> Millis {
        (t as i64 + self.nodes[i].skew).max(0) as u64
    }
}

impl Sim {
    /// Runs to the end and checks every invariant.
    pub fn run(mut self) -> Result<Report, Box<Violation>> {
        let wall = Instant::now();
        let end_faults = self.cfg.duration_ms;
        let end = self.cfg.duration_ms + self.cfg.settle_ms;
        while let Some(q) = self.queue.pop() {
            if q.at > end {
                break;
            }
            if !self.faults_over && q.at >= end_faults {
                self.end_faults();
            }
            self.now = q.at;
            self.events += 1;
            let ev = self.slab[q.slot as usize].take().expect("queued event");
            self.free.push(q.slot);
            self.step(ev);
            if let Some(v) = self.pending_violation.take() {
                return Err(Box::new(v));
            }
            if self.quiet {
                break;
            }
        }
        if !self.quiet {
            self.now = end;
        }
        if !self.faults_over {
            self.end_faults();
        }
        self.finish(wall)
    }

    /// The network heals and goes quiet: no new commits, crashes or cuts.
    fn end_faults(&mut self) {
        self.faults_over = true;
        self.push(self.now + 5_000, Ev::QuietCheck);
        if self.partition_active {
            self.heal();
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc != inc || !self.alive(node) || self.nodes[node].timer_at != Some(self.now) {
                    return;
                }
                self.nodes[node].timer_at = None;
                self.input(node, Input::Tick);
            }
            Ev::Wave { wave } => {
                let Some(w) = self.waves[wave as usize].as_mut() else { return };
                let (_, to) = w.arrivals.pop().expect("a wave has arrivals left");
                let (from, bytes) = (w.from, w.bytes.clone());
                match w.arrivals.last() {
                    Some(&(next, _)) => self.push(next, Ev::Wave { wave }),
                    None => {
                        self.waves[wave as usize] = None;
                        self.free_waves.push(wave);
                    }
                }
                if self.alive(to) {
                    let token = self.events;
                    self.input(to, Input::Gossip { from, token, bytes: bytes.as_ref().clone() });
                }
            }
            Ev::Request { to, from, from_inc, id, bytes } => {
                if !self.alive(to) {
                    let at = self.now + self.cfg.request_timeout_ms;
                    self.push(at, Ev::RequestFailed { to: from, inc: from_inc, id });
                    return;
                }
                let local_id = self.nodes[to].next_inbound;
                self.nodes[to].next_inbound += 1;
                self.nodes[to].inbound.insert(local_id, (from, from_inc, id));
                let peer = self.nodes[from].peer;
                self.input(to, Input::Request { from: peer, id: local_id, bytes });
            }
            Ev::Response { to, inc, id, bytes } => {
                if self.nodes[to].inc == inc {
                    self.input(to, Input::Response { id, bytes });
                }
            }
            Ev::RequestFailed { to, inc, id } => {
                if self.nodes[to].inc == inc {
                    self.input(to, Input::RequestFailed { id, reason: "timed out".into() });
                }
            }
            Ev::BuildDone { node, inc, job, attempt, cancelled } => {
                if self.nodes[node].inc != inc || !self.alive(node) {
                    return;
                }
                let running = self.nodes[node].builds.remove(&(job, attempt)).is_some();
                if let Some(t) = self.build_starts.remove(&(node, job, attempt)) {
                    self.busy_slot_ms += self.now - t;
                    self.last_build_end = self.now;
                }
                if !running && !cancelled {
                    return;
                }
                let failed = !cancelled && self.rng.gen::<f64>() < self.cfg.build_failure_rate;
                let now = self.local(node, self.now);
                let outcome = BuildOutcome {
                    job,
                    attempt,
                    started_ms: now.saturating_sub(1),
                    ended_ms: now,
                    steps: vec![StepOutcome {
                        name: "build".into(),
                        command: "make".into(),
                        exit_code: if cancelled { None } else { Some(if failed { 2 } else { 0 }) },
                        duration_ms: 1,
                        timed_out: false,
                        log: format!("simulated build of {} attempt {attempt}\n", job.short()).into_bytes(),
                        truncated: false,
                    }],
                    error: None,
                    cancelled,
                };
                self.note(node, Some(job), "build-done", attempt as u64);
                self.input(node, Input::BuildFinished(outcome));
            }
            Ev::Commit => {
                if self.faults_over {
                    return;
                }
                self.commit();
                let t = self.next_exp(self.cfg.commits_per_min / 60_000.0);
                self.push(self.now + t, Ev::Commit);
            }
            Ev::Crash { node } => self.crash(node),
            Ev::Outage { node, dur } => {
                if self.alive(node) {
                    self.crash(node);
                    // crash() scheduled a restart; this one replaces it.
                    self.outage_until.insert(node, self.now + dur);
                    self.push(self.now + dur, Ev::Restart { node });
                }
            }
            Ev::Restart { node } => {
                if self.alive(node) || self.outage_until.get(&node).is_some_and(|t| *t > self.now) {
                    return;
                }
                if self.rng.gen::<f64>() < self.cfg.lose_store {
                    self.nodes[node].kept_store = Some(MemStore::new());
                }
                self.report.restarts += 1;
                self.boot(node);
                if self.outage_until.remove(&node).is_some() && self.converging.is_none() {
                    // Time for the returning node to hold what everyone holds.
                    self.heals.push((self.now, None));
                    self.converging = Some(self.heals.len() - 1);
                    self.push(self.now + 1_000, Ev::ConvergenceCheck);
                }
                let nb = self.nodes[node].neighbours.clone();
                for j in nb {
                    if self.linked(node, j) {
                        let (pj, pn) = (self.nodes[j].peer, self.nodes[node].peer);
                        self.input(node, Input::PeerConnected(pj));
                        self.input(j, Input::PeerConnected(pn));
                    }
                }
            }
            Ev::RandomCrash => {
                if self.faults_over {
                    return;
                }
                let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
                if alive.len() > 1 {
                    let i = alive[self.rng.gen_range(0..alive.len())];
                    self.crash(i);
                }
                let t = self.next_exp(self.cfg.crash_rate_per_min * self.cfg.nodes as f64 / 60_000.0);
                self.push(self.now + t, Ev::RandomCrash);
            }
            Ev::PartitionStart { dur, fraction } => {
                if self.partition_active || self.faults_over {
                    return;
                }
                self.partition(fraction);
                self.push(self.now + dur, Ev::PartitionEnd);
            }
            Ev::PartitionEnd => {
                if self.partition_active {
                    self.heal();
                }
            }
            Ev::RandomPartition => {
                if self.faults_over {
                    return;
                }
                if !self.partition_active {
                    let (lo, hi) = self.cfg.random_partition_ms;
                    let dur = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
                    let fraction = self.rng.gen_range(0.1..0.5);
                    self.partition(fraction);
                    self.push(self.now + dur, Ev::PartitionEnd);
                }
                let t = self.next_exp(self.cfg.random_partitions_per_hour / 3_600_000.0);
                self.push(self.now + t, Ev::RandomPartition);
            }
            Ev::ConvergenceCheck => self.convergence_check(),
            Ev::QuietCheck => {
                if self.is_quiet() {
                    self.quiet = true;
                } else {
                    self.push(self.now + 5_000, Ev::QuietCheck);
                }
            }
            Ev::Forge => {
                if self.faults_over {
                    return;
                }
                self.forge();
                let t = self.next_exp(self.cfg.forge_per_min / 60_000.0);
                self.push(self.now + t, Ev::Forge);
            }
        }
    }
}
