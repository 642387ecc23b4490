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

/// Verifies each distinct record once for the whole simulated cluster. The
/// answer is a function of the bytes, so sharing it changes no outcome;
/// it only saves a thousand nodes from checking one signature a thousand
/// times.
#[derive(Default)]
struct SharedVerify {
    cache: Mutex<HashMap<Hash32, Result<VerifiedRecord, String>>>,
}

impl Verify for SharedVerify {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
        let key = Hash32::of(bytes);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let r = cache.entry(key).or_insert_with(|| record::verify(bytes).map_err(|e| e.to_string()));
        r.clone().map_err(RecordError::Invalid)
    }
}

#[derive(Debug)]
enum Ev {
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

struct SimNode {
    core: Option<NodeCore<MemStore>>,
    kept_store: Option<MemStore>,
    key: Keypair,
    peer: PeerId,
    labels: Vec<String>,
    skew: i64,
    slow: bool,
    inc: u32,
    timer_at: Option<u64>,
    side: u8,
    neighbours: Vec<usize>,
    inbound: HashMap<u64, (usize, u32, u64)>,
    next_inbound: u64,
    builds: BTreeMap<(Hash32, u32), bool>,
    msgs_sent: u64,
    bytes_sent: u64,
}

/// What a run shows. Times are simulated milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub simulated_ms: u64,
    pub events: u64,
    pub wall_ms: u64,
    pub trace_hash: String,
    pub changes: usize,
    pub jobs: usize,
    pub jobs_unbuildable: usize,
    pub jobs_built_0: usize,
    pub jobs_built_1: usize,
    pub jobs_built_2_plus: usize,
    pub builds_started: u64,
    pub builds_cancelled: u64,
    pub duplicate_rate: f64,
    pub change_reach_p50_ms: Option<u64>,
    pub change_reach_p99_ms: Option<u64>,
    pub change_reach_all_ms: Option<u64>,
    pub change_to_claim_p50_ms: Option<u64>,
    pub change_to_claim_p99_ms: Option<u64>,
    pub change_to_result_everywhere_p50_ms: Option<u64>,
    pub change_to_result_everywhere_p99_ms: Option<u64>,
    pub msgs_per_node_per_sec: f64,
    pub bytes_per_node_per_sec: f64,
    pub max_hops: u32,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    /// After each partition heal, and each scheduled outage's end.
    pub convergence_after_heal_ms: Vec<Option<u64>>,
    /// Distinct (job, attempt) whose lease some node saw run out.
    pub lease_expiries: u64,
    /// Distinct (job, attempt) claimed by two nodes.
    pub claim_conflicts: u64,
    pub forged_sent: u64,
    pub records_rejected: u64,
    pub failovers: Vec<FailoverFigure>,
    pub live_nodes_at_end: usize,
    pub records_per_node_at_end: u64,
    /// Reconciliation and record-transfer traffic, per node per second.
    pub sync_bytes_per_node_per_sec: f64,
    /// Log-chunk traffic (replication and on-demand fetches), per node per second.
    pub log_bytes_per_node_per_sec: f64,
    /// Share of the cluster's executor slots busy with builds between the
    /// first build's start and the last build's end.
    pub slot_utilisation: f64,
}

/// A crashed claimant's job: when the crash happened and when another
/// node's result for it was stored by the first node.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigure {
    pub job: String,
    pub crashed_ms: u64,
    pub rebuilt_by_other: bool,
    pub crash_to_reclaim_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub invariant: String,
    pub detail: String,
    pub recent_events: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invariant violated: {} (seed {}, at {} ms)", self.invariant, self.seed, self.at_ms)?;
        writeln!(f, "{}", self.detail)?;
        writeln!(f, "last events involved:")?;
        for e in &self.recent_events {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay with --seed {}", self.seed)
    }
}

#[derive(Clone)]
struct TraceLine {
    at: u64,
    node: u32,
    job: Option<Hash32>,
    what: &'static str,
    other: u64,
}

struct JobInfo {
    born: u64,
    requires: Vec<String>,
    first_claim: Option<u64>,
    results: Vec<Hash32>,
}

struct RecordTrack {
    born: u64,
    is_change: bool,
    job: Option<Hash32>,
    arrivals: Vec<u64>,
}

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

struct Wave {
    from: PeerId,
    bytes: Rc<Vec<u8>>,
    /// (arrival, node), latest first: arrivals are popped off the end.
    arrivals: Vec<(u64, usize)>,
}

const RING: usize = 20_000;

fn build_recipe(cfg: &SimConfig) -> String {
    let mut s = String::new();
    for i in 0..cfg.builders + cfg.unbuildable_builders {
        let req: Vec<String> = cfg.builder_requires(i).iter().map(|l| format!("{l:?}")).collect();
        s.push_str(&format!(
            "[[builder]]\nname = \"b{i}\"\nrequires = [{}]\n[[builder.step]]\nname = \"build\"\nrun = \"make\"\n",
            req.join(", ")
        ));
    }
    s
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

    fn note(&mut self, node: usize, job: Option<Hash32>, what: &'static str, other: u64) {
        if self.ring.len() >= RING {
            self.ring.pop_front();
        }
        if let (Some(j), Some(want)) = (job, self.debug_job.as_deref()) {
            if j.to_hex().starts_with(want) {
                eprintln!("t={} node={node} {what} {other}", self.now);
            }
        }
        self.ring.push_back(TraceLine { at: self.now, node: node as u32, job, what, other });
        let mut line = [0u8; 64];
        line[..8].copy_from_slice(&self.now.to_le_bytes());
        line[8..12].copy_from_slice(&(node as u32).to_le_bytes());
        line[12..20].copy_from_slice(&other.to_le_bytes());
        if let Some(j) = job {
            line[20..28].copy_from_slice(&j.0[..8]);
        }
        let w = what.as_bytes();
        let n = w.len().min(36);
        line[28..28 + n].copy_from_slice(&w[..n]);
        self.trace.update(&line);
    }

    fn core_config(&self, i: usize) -> Config {
        let mut c = Config::new(self.nodes[i].labels.clone(), self.cfg.executors);
        c.heartbeat_ms = self.cfg.heartbeat_ms;
        c.cluster_heartbeats_per_sec = self.cfg.cluster_heartbeats_per_sec;
        c.liveness_ms = 3 * self.cfg.heartbeat_ms + 1_000;
        c.warmup_ms = 2 * self.cfg.heartbeat_ms;
        c.claim_stagger_ms = self.cfg.claim_stagger_ms;
        c.lease_ms = self.cfg.lease_ms;
        c.sync_interval_ms = self.cfg.sync_ms;
        c.seed = self.cfg.seed ^ ((i as u64) << 20) ^ ((self.nodes[i].inc as u64) << 40);
        c.log_replicas = self.cfg.log_replicas;
        c
    }

    fn boot(&mut self, i: usize) {
        let store = self.nodes[i].kept_store.take().unwrap_or_default();
        let cfg = self.core_config(i);
        let now = self.local(i, self.now);
        let mut core = NodeCore::new(cfg, self.nodes[i].key.clone(), store, now);
        core.set_verifier(self.verifier.clone());
        self.nodes[i].core = Some(core);
        self.nodes[i].timer_at = None;
        self.note(i, None, "boot", self.nodes[i].inc as u64);
        self.drain(i);
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.alive(b) && self.nodes[a].side == self.nodes[b].side
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.local(i, self.now);
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.handle(now, input);
            self.drain(i);
        }
    }

    fn latency(&mut self, to: usize) -> u64 {
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

    /// Routes a node's outputs into the network model.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) else { break };
            match out {
                Output::Broadcast(bytes) => self.broadcast(i, bytes),
                Output::Request { peer, id, bytes } => self.send_request(i, peer, id, bytes),
                Output::Reply { id, bytes } => self.send_reply(i, id, bytes),
                Output::Verdict { .. } => {}
                Output::StartBuild(order) => {
                    if !satisfies(
                        &self.nodes[i].labels,
                        &self.jobs.get(&order.job).map(|j| j.requires.clone()).unwrap_or_default(),
                    ) {
                        self.violation_now(
                            "a job was claimed by a node that lacks a required label",
                            format!("node {i} with {:?} started job {}", self.nodes[i].labels, order.job.to_hex()),
                            Some(order.job),
                            Some(i),
                        );
                    }
                    let running = self.nodes[i].core.as_ref().map(|c| c.running().len()).unwrap_or(0);
                    if running > self.cfg.executors as usize {
                        self.violation_now(
                            "no node runs more builds than its executors",
                            format!("node {i} runs {running} builds with {} executors", self.cfg.executors),
                            Some(order.job),
                            Some(i),
                        );
                    }
                    self.report.builds_started += 1;
                    if let Some(k) =
                        self.crashed_claims.iter().position(|(j, n, at)| *j == order.job && *n != i && *at <= self.now)
                    {
                        self.reclaims.entry(k).or_insert(self.now);
                    }
                    self.note(i, Some(order.job), "build-start", order.attempt as u64);
                    let (lo, hi) = self.cfg.build_ms;
                    let mut d = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
                    if self.nodes[i].slow {
                        d = (d as f64 * self.cfg.slow_factor) as u64;
                    }
                    self.nodes[i].builds.insert((order.job, order.attempt), true);
                    self.build_starts.insert((i, order.job, order.attempt), self.now);
                    self.first_build_start.get_or_insert(self.now);
                    let inc = self.nodes[i].inc;
                    self.push(
                        self.now + d,
                        Ev::BuildDone { node: i, inc, job: order.job, attempt: order.attempt, cancelled: false },
                    );
                    if self.crashed_claims.len() < self.cfg.crash_claimants && !self.faults_over {
                        self.crashed_claims.push((order.job, i, self.now + d / 2));
                        self.push(self.now + d / 2, Ev::Crash { node: i });
                    }
                }
                Output::CancelBuild { job, attempt } => {
                    if self.nodes[i].builds.remove(&(job, attempt)).is_some() {
                        self.report.builds_cancelled += 1;
                        self.note(i, Some(job), "build-cancel", attempt as u64);
                        let inc = self.nodes[i].inc;
                        self.push(self.now + 10, Ev::BuildDone { node: i, inc, job, attempt, cancelled: true });
                    }
                }
                Output::Event(e) => self.on_event(i, e),
            }
        }
        self.schedule_tick(i);
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let local_next = core.next_timeout();
        let global = (local_next as i64 - self.nodes[i].skew).max(self.now as i64 + 1) as u64;
        if self.nodes[i].timer_at.is_none_or(|t| global < t) {
            self.nodes[i].timer_at = Some(global);
            let inc = self.nodes[i].inc;
            self.push(global, Ev::Tick { node: i, inc });
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::RecordStored { id, .. } => {
                let n = self.nodes.len();
                let now = self.now;
                if let Some(t) = self.records.get_mut(&id) {
                    if t.arrivals[i] == u64::MAX {
                        t.arrivals[i] = now;
                    }
                } else if let Some(core) = self.nodes[i].core.as_ref() {
                    // First sight anywhere: learn what it is.
                    let bytes = core.store().get_record(&id).unwrap_or_default();
                    let (is_change, job) = match record::decode_stored(&bytes).map(|r| r.body) {
                        Ok(peerbot_protocol::Body::Change(_)) => (true, None),
                        Ok(peerbot_protocol::Body::Result(r)) => (false, Some(r.job)),
                        Ok(peerbot_protocol::Body::Cancel(_)) | Err(_) => (false, None),
                    };
                    let mut arrivals = vec![u64::MAX; n];
                    arrivals[i] = now;
                    self.records.insert(id, RecordTrack { born: now, is_change, job, arrivals });
                }
                self.note(i, None, "stored", id.prefix_u64());
            }
            Event::RecordRejected { .. } | Event::MessageRejected { .. } => {
                self.report.records_rejected += 1;
                self.note(i, None, "rejected", 0);
            }
            Event::Claimed { job, attempt, by } => {
                if by == self.nodes[i].peer {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.first_claim.get_or_insert(self.now);
                    }
                }
                self.note(i, Some(job), "claimed", attempt as u64);
            }
            Event::ClaimConflict { job, attempt, .. } => {
                if self.conflicts_seen.insert((job, attempt)) {
                    self.report.claim_conflicts += 1;
                }
                self.note(i, Some(job), "conflict", attempt as u64);
            }
            Event::LeaseExpired { job, attempt, .. } => {
                if self.expiries_seen.insert((job, attempt)) {
                    self.report.lease_expiries += 1;
                }
                self.note(i, Some(job), "lease-expired", attempt as u64);
            }
            Event::BuildPublished { job, attempt, record, .. } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.results.push(record);
                }
                self.note(i, Some(job), "published", attempt as u64);
            }
            Event::Released { job, attempt, .. } => self.note(i, Some(job), "released", attempt as u64),
            Event::SyncFinished { need, have, .. } => self.note(i, None, "synced", (need + have) as u64),
            Event::BuildStarted { .. }
            | Event::BlobFetched { .. }
            | Event::SyncFailed { .. }
            | Event::StoreFailed { .. }
            | Event::CatchingUp { .. }
            | Event::PeerAddrs { .. }
            | Event::LogsExpired { .. } => {}
        }
    }

    /// Gossip over the mesh: every node that gets a message forwards it to
    /// its other mesh links. Each node's first arrival is computed like a
    /// shortest path over links with sampled latency and loss; later copies
    /// are counted as traffic and dropped, as gossipsub's seen-cache does.
    fn broadcast(&mut self, src: usize, bytes: Vec<u8>) {
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

    fn count_transfer(&mut self, bytes: &[u8], request: bool) {
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

    fn send_request(&mut self, i: usize, peer: PeerId, id: u64, bytes: Vec<u8>) {
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

    fn send_reply(&mut self, i: usize, inbound: u64, bytes: Vec<u8>) {
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

    fn violation_now(&mut self, invariant: &str, detail: String, job: Option<Hash32>, node: Option<usize>) {
        if self.pending_violation.is_none() {
            self.pending_violation = Some(self.violation(invariant, detail, job, node));
        }
    }

    fn violation(&self, invariant: &str, detail: String, job: Option<Hash32>, node: Option<usize>) -> Violation {
        let recent = self
            .ring
            .iter()
            .filter(|l| (job.is_some() && l.job == job) || node.is_some_and(|n| l.node as usize == n))
            .rev()
            .take(40)
            .map(|l| {
                format!(
                    "t={}ms node={} {}{} {}",
                    l.at,
                    l.node,
                    l.what,
                    l.job.map(|j| format!(" job={}", j.short())).unwrap_or_default(),
                    l.other
                )
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Violation {
            seed: self.cfg.seed,
            at_ms: self.now,
            invariant: invariant.to_string(),
            detail,
            recent_events: recent,
        }
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

    fn commit(&mut self) {
        self.commits += 1;
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        let Some(&announcer) = alive.get(self.rng.gen_range(0..alive.len().max(1))) else { return };
        let repo = format!("https://git.example.org/repo{}.git", self.rng.gen_range(0..self.cfg.repos.max(1)));
        let commit = Hash32::of_fields("simnet.commit", &[&self.cfg.seed.to_le_bytes(), &self.commits.to_le_bytes()])
            .to_hex()[..40]
            .to_string();
        let info = CommitInfo {
            repo: repo.clone(),
            branch: "main".into(),
            commit: commit.clone(),
            parents: vec![],
            author: "Sim Ulated <sim@example.org>".into(),
            committer: "Sim Ulated <sim@example.org>".into(),
            commit_time: (self.now / 1000) as i64,
            title: format!("commit {}", self.commits),
            files: vec!["src/lib.rs".into()],
            recipe: Ok(build_recipe(&self.cfg)),
        };
        for b in 0..self.cfg.builders + self.cfg.unbuildable_builders {
            let id = job_id(&repo, &commit, &format!("b{b}"));
            self.jobs.insert(
                id,
                JobInfo { born: self.now, requires: self.cfg.builder_requires(b), first_claim: None, results: vec![] },
            );
        }
        let now = self.local(announcer, self.now);
        if let Some(core) = self.nodes[announcer].core.as_mut() {
            match core.announce(now, info) {
                Ok(Announced::New(id)) => self.note(announcer, None, "announce", id.prefix_u64()),
                Ok(Announced::Known(_)) => {}
                Err(e) => {
                    self.violation_now("a valid commit could not be announced", e, None, Some(announcer));
                }
            }
        }
        self.drain(announcer);
    }

    fn crash(&mut self, i: usize) {
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

    fn partition(&mut self, fraction: f64) {
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

    fn heal(&mut self) {
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

    fn crossing_links(&self) -> Vec<(usize, usize)> {
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

    fn link_events(&mut self, up: bool) {
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

    /// Every live node holds the same record set (count and fingerprint).
    fn converged(&self) -> bool {
        let mut first = None;
        for n in &self.nodes {
            if let Some(core) = &n.core {
                let s = core.store().summary(&peerbot_protocol::sync::SyncKey::MIN, None);
                let s = (s.0, s.1.finish(s.0));
                match &first {
                    None => first = Some(s),
                    Some(f) if *f != s => return false,
                    _ => {}
                }
            }
        }
        true
    }

    /// Nothing left to do: every job a live node can build has a result,
    /// no build runs, no partition is on, and all live nodes agree.
    fn is_quiet(&self) -> bool {
        if self.partition_active || self.nodes.iter().any(|n| !n.builds.is_empty()) {
            return false;
        }
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        if live.len() < self.nodes.len() {
            return false;
        }
        let open = self
            .jobs
            .values()
            .any(|j| j.results.is_empty() && live.iter().any(|&i| satisfies(&self.nodes[i].labels, &j.requires)));
        !open && self.converged()
    }

    fn convergence_check(&mut self) {
        let Some(k) = self.converging else { return };
        if self.converged() {
            self.heals[k].1 = Some(self.now - self.heals[k].0);
            self.converging = None;
        } else if !self.partition_active {
            self.push(self.now + 1_000, Ev::ConvergenceCheck);
        }
    }

    /// A peer re-sends a stored record with one bit flipped.
    fn forge(&mut self) {
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

    fn finish(mut self, wall: Instant) -> Result<Report, Box<Violation>> {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        // 1. Nothing badly signed is stored anywhere.
        let mut checked: HashMap<Hash32, bool> = HashMap::new();
        for &i in &live {
            let mut bad = None;
            let core = self.nodes[i].core.as_ref().expect("live");
            core.store().for_each_record(&mut |b| {
                let id = Hash32::of(b);
                let ok = *checked.entry(id).or_insert_with(|| record::verify(b).is_ok());
                if !ok && bad.is_none() {
                    bad = Some(id);
                }
            });
            if let Some(id) = bad {
                return Err(Box::new(self.violation(
                    "no record with a bad signature is stored",
                    format!("node {i} stores record {id} whose signature does not verify"),
                    None,
                    Some(i),
                )));
            }
        }
        // 2. Every buildable job was built; fault-free, exactly once.
        let fault_free = self.cfg.fault_free();
        let mut unbuildable = 0;
        for (id, j) in &self.jobs {
            let buildable = live.iter().any(|&i| satisfies(&self.nodes[i].labels, &j.requires));
            if !buildable {
                unbuildable += 1;
                if !j.results.is_empty() {
                    return Err(Box::new(self.violation(
                        "a job no node can build was not built",
                        format!("job {id} requiring {:?} has results", j.requires),
                        Some(*id),
                        None,
                    )));
                }
                continue;
            }
            let withdrawn = live.first().and_then(|&i| self.nodes[i].core.as_ref()).is_some_and(|c| {
                matches!(
                    c.job_state(id),
                    peerbot_protocol::core::JobState::Superseded | peerbot_protocol::core::JobState::Cancelled
                )
            });
            if withdrawn {
                continue;
            }
            if j.results.is_empty() {
                let mut views = Vec::new();
                for &i in live.iter().filter(|&&i| satisfies(&self.nodes[i].labels, &j.requires)).take(8) {
                    let core = self.nodes[i].core.as_ref().expect("live");
                    let view = core.jobs().get(id);
                    views.push(format!(
                        "node {i} {:?}: knows job {}, attempt {:?}, claim {:?}, running {:?} of {}",
                        self.nodes[i].labels,
                        view.is_some(),
                        view.map(|v| v.attempt),
                        view.and_then(|v| v.claim.as_ref()).map(|c| (
                            self.by_peer.get(&c.by).copied(),
                            c.attempt,
                            c.lease_until
                        )),
                        core.running()
                            .iter()
                            .map(|(j, a)| (
                                j.short(),
                                a.0,
                                self.jobs.get(j).map(|x| (x.born, x.results.len())),
                                self.nodes[i].builds.keys().map(|k| k.0.short()).collect::<Vec<_>>()
                            ))
                            .collect::<Vec<_>>(),
                        core.config().executors,
                    ));
                }
                return Err(Box::new(self.violation(
                    "every job some live node can build is built once the network is quiet",
                    format!(
                        "job {id} requiring {:?} has no result; eligible nodes see:\n  {}",
                        j.requires,
                        views.join("\n  ")
                    ),
                    Some(*id),
                    None,
                )));
            }
            if fault_free && j.results.len() != 1 {
                return Err(Box::new(self.violation(
                    "fault-free, every job is built exactly once",
                    format!("job {id} has {} results", j.results.len()),
                    Some(*id),
                    None,
                )));
            }
        }
        // 3. Once quiet, every live node holds the same records.
        if !self.converged() {
            let counts: Vec<(usize, u64)> = live
                .iter()
                .map(|&i| (i, self.nodes[i].core.as_ref().map(|c| c.store().record_count()).unwrap_or(0)))
                .collect();
            let min = counts.iter().min_by_key(|c| c.1).map(|c| c.0);
            return Err(Box::new(self.violation(
                "every live node holds the same set of records once the network is quiet",
                format!("record counts differ: {:?}", &counts[..counts.len().min(20)]),
                None,
                min,
            )));
        }
        // Figures.
        let mut r = std::mem::take(&mut self.report);
        r.simulated_ms = self.now;
        r.events = self.events;
        r.wall_ms = wall.elapsed().as_millis() as u64;
        r.trace_hash = self.trace.finalize().to_hex().to_string();
        r.jobs = self.jobs.len();
        r.jobs_unbuildable = unbuildable;
        let mut built = [0usize; 3];
        for j in self.jobs.values() {
            built[j.results.len().min(2)] += 1;
        }
        r.jobs_built_0 = built[0] - unbuildable.min(built[0]);
        r.jobs_built_1 = built[1];
        r.jobs_built_2_plus = built[2];
        let buildable = (r.jobs - unbuildable).max(1);
        r.duplicate_rate = built[2] as f64 / buildable as f64;
        let mut reach50 = vec![];
        let mut reach99 = vec![];
        let mut reach_all = vec![];
        let mut everywhere = vec![];
        for t in self.records.values() {
            let mut at: Vec<u64> = live.iter().map(|&i| t.arrivals[i]).collect();
            at.sort_unstable();
            let pick = |q: f64| -> Option<u64> {
                let k = ((at.len() as f64 * q).ceil() as usize).clamp(1, at.len());
                at.get(k - 1).filter(|x| **x != u64::MAX).map(|x| x - t.born)
            };
            if t.is_change {
                r.changes += 1;
                reach50.extend(pick(0.5));
                reach99.extend(pick(0.99));
                reach_all.extend(pick(1.0));
            } else if let Some(job) = t.job {
                if let (Some(all), Some(j)) = (pick(1.0), self.jobs.get(&job)) {
                    everywhere.push(t.born + all - j.born);
                }
            }
        }
        let claim: Vec<u64> = self.jobs.values().filter_map(|j| j.first_claim.map(|c| c - j.born)).collect();
        r.change_reach_p50_ms = percentile(&mut reach50, 0.5);
        r.change_reach_p99_ms = percentile(&mut reach99, 0.99);
        r.change_reach_all_ms = reach_all.iter().max().copied();
        r.change_to_claim_p50_ms = percentile(&mut claim.clone(), 0.5);
        r.change_to_claim_p99_ms = percentile(&mut claim.clone(), 0.99);
        r.change_to_result_everywhere_p50_ms = percentile(&mut everywhere.clone(), 0.5);
        r.change_to_result_everywhere_p99_ms = percentile(&mut everywhere, 0.99);
        let secs = (self.now as f64 / 1000.0).max(1.0);
        let n = self.nodes.len().max(1) as f64;
        r.msgs_per_node_per_sec = self.nodes.iter().map(|x| x.msgs_sent).sum::<u64>() as f64 / n / secs;
        r.bytes_per_node_per_sec = self.nodes.iter().map(|x| x.bytes_sent).sum::<u64>() as f64 / n / secs;
        r.max_hops = self.max_hops;
        r.sync_bytes_per_node_per_sec = self.sync_bytes as f64 / n / secs;
        r.log_bytes_per_node_per_sec = self.log_bytes as f64 / n / secs;
        r.convergence_after_heal_ms = self.heals.iter().map(|h| h.1).collect();
        for (k, (job, node, at)) in self.crashed_claims.iter().enumerate() {
            let other = self.jobs.get(job).map(|j| j.results.clone()).unwrap_or_default();
            let crashed_peer = self.nodes[*node].peer;
            let by_other = other.iter().any(|rid| {
                self.records.get(rid).is_some() && {
                    let any =
                        live.first().and_then(|&i| self.nodes[i].core.as_ref()).and_then(|c| c.store().get_record(rid));
                    any.and_then(|b| record::decode_stored(&b).ok()).is_some_and(|rec| rec.signer != crashed_peer)
                }
            });
            let reclaim = self.reclaims.get(&k).map(|t| t - at);
            r.failovers.push(FailoverFigure {
                job: job.to_hex(),
                crashed_ms: *at,
                rebuilt_by_other: by_other,
                crash_to_reclaim_ms: reclaim,
            });
        }
        if let Some(first) = self.first_build_start {
            let span = self.last_build_end.saturating_sub(first).max(1) as f64;
            let slots = (self.nodes.len() as f64) * self.cfg.executors as f64;
            r.slot_utilisation = self.busy_slot_ms as f64 / (span * slots);
        }
        r.live_nodes_at_end = live.len();
        r.records_per_node_at_end =
            live.first().and_then(|&i| self.nodes[i].core.as_ref()).map(|c| c.store().record_count()).unwrap_or(0);
        Ok(r)
    }
}

fn percentile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    Some(v[k - 1])
}

impl Report {
    pub fn to_text(&self) -> String {
        let ms = |x: Option<u64>| x.map(|v| format!("{:.2}s", v as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let mut s = String::new();
        s.push_str(&format!(
            "seed {} · {} nodes · {:.1} simulated minutes\n",
            self.seed,
            self.nodes,
            self.simulated_ms as f64 / 60_000.0
        ));
        s.push_str(&format!(
            "changes {} · jobs {} (unbuildable, left pending: {})\n",
            self.changes, self.jobs, self.jobs_unbuildable
        ));
        s.push_str(&format!(
            "jobs built 0×: {}  1×: {}  2+×: {}  (duplicate rate {:.3}%) · builds started {} · cancelled {}\n",
            self.jobs_built_0,
            self.jobs_built_1,
            self.jobs_built_2_plus,
            self.duplicate_rate * 100.0,
            self.builds_started,
            self.builds_cancelled
        ));
        s.push_str(&format!(
            "change reaches 50% of nodes: {}  99%: {}  100%: {} (worst) · max hops {}\n",
            ms(self.change_reach_p50_ms),
            ms(self.change_reach_p99_ms),
            ms(self.change_reach_all_ms),
            self.max_hops
        ));
        s.push_str(&format!(
            "change → claim p50 {} p99 {} · change → result everywhere p50 {} p99 {}\n",
            ms(self.change_to_claim_p50_ms),
            ms(self.change_to_claim_p99_ms),
            ms(self.change_to_result_everywhere_p50_ms),
            ms(self.change_to_result_everywhere_p99_ms)
        ));
        s.push_str(&format!(
            "traffic per node: {:.1} msgs/s, {:.0} bytes/s (of which sync {:.0} B/s, logs {:.0} B/s)\n",
            self.msgs_per_node_per_sec,
            self.bytes_per_node_per_sec,
            self.sync_bytes_per_node_per_sec,
            self.log_bytes_per_node_per_sec
        ));
        s.push_str(&format!(
            "faults: {} crashes, {} restarts, {} partitions, {} lease expiries, {} claim conflicts, {} forged records sent, {} rejected\n",
            self.crashes, self.restarts, self.partitions, self.lease_expiries, self.claim_conflicts, self.forged_sent, self.records_rejected
        ));
        if !self.convergence_after_heal_ms.is_empty() {
            let c: Vec<String> = self.convergence_after_heal_ms.iter().map(|x| ms(*x)).collect();
            s.push_str(&format!("convergence after each heal: {}\n", c.join(", ")));
        }
        for f in &self.failovers {
            s.push_str(&format!(
                "claimant crash at {}: rebuilt by another node: {} · crash → new claim {}\n",
                ms(Some(f.crashed_ms)),
                f.rebuilt_by_other,
                ms(f.crash_to_reclaim_ms)
            ));
        }
        s.push_str(&format!(
            "slot utilisation {:.1}% · live nodes at end {} · records per node {} · {} events in {:.2}s wall · trace {}\n",
            self.slot_utilisation * 100.0,
            self.live_nodes_at_end, self.records_per_node_at_end, self.events, self.wall_ms as f64 / 1000.0, &self.trace_hash[..16]
        ));
        s
    }
}
