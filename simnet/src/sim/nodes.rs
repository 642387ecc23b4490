//! The node adapter. Each simulated node is a real `NodeCore`: booted on
//! its kept store, fed `Input`s at its own clock's time, drained of
//! `Output`s, and woken at its next timeout, as `node/src/core_actor.rs`
//! does with real I/O. Outputs go to the network model and the workload;
//! requests and replies are matched up here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use peerbot_protocol::core::{Config, Event, Input, NodeCore, Output, Verify};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{self, RecordError, VerifiedRecord};
use peerbot_protocol::store::{MemStore, RecordPool, Store};
use peerbot_protocol::{deterministic_key, Keypair, Millis, PeerId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::events::{global_time, local_time, Ev};
use super::faults::{draw_skew, draw_slow};
use super::network::{Dest, Hosts, Transfer};
use super::Sim;
use crate::SimConfig;

/// Verifies each distinct record once for the whole simulated cluster. The
/// answer is a function of the bytes, so sharing it changes no outcome;
/// it only saves a thousand nodes from checking one signature a thousand
/// times.
#[derive(Default)]
pub(super) struct SharedVerify {
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

/// Who sent a request, so that its reply, or its failure, reaches the same
/// incarnation of the same node.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caller {
    pub(super) node: usize,
    pub(super) incarnation: u32,
    /// The request's id in the caller's core.
    pub(super) id: u64,
}

pub(super) struct SimNode {
    /// `None` while the node is down.
    pub(super) core: Option<NodeCore<MemStore>>,
    /// The store of a node that is down, kept as its disk would keep it.
    kept_store: Option<MemStore>,
    key: Keypair,
    pub(super) peer: PeerId,
    pub(super) labels: Vec<String>,
    /// How far this node's clock is off, either way.
    skew: i64,
    /// Messages to this node, and its builds, take longer.
    pub(super) slow: bool,
    /// Crashes so far: events queued for an earlier incarnation are stale.
    pub(super) incarnation: u32,
    /// When its next tick is due; a tick queued for another time is stale.
    timer_at: Option<u64>,
    /// Requests it is answering, by the id its core knows them by.
    inbound: HashMap<u64, Caller>,
    next_inbound: u64,
    /// When it came back with an empty store.
    pub(super) wiped_at: Vec<u64>,
    /// Record bytes shared with the other nodes' stores.
    pool: RecordPool,
}

impl SimNode {
    pub(super) fn key(&self) -> &Keypair {
        &self.key
    }

    /// Draws the node's labels, clock skew and slowness, in that order.
    fn new(cfg: &SimConfig, i: usize, rng: &mut ChaCha8Rng, pool: &RecordPool) -> SimNode {
        let key = deterministic_key(cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let peer = key.public().to_peer_id();
        let labels = draw_labels(cfg, rng);
        let skew = draw_skew(cfg, rng);
        let slow = draw_slow(cfg, rng);
        SimNode {
            core: None,
            kept_store: Some(MemStore::with_pool(pool.clone())),
            key,
            peer,
            labels,
            skew,
            slow,
            incarnation: 0,
            timer_at: None,
            inbound: HashMap::new(),
            next_inbound: 1,
            wiped_at: Vec::new(),
            pool: pool.clone(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.core.is_some()
    }

    /// Takes the node down: its core, timers and pending requests are gone,
    /// its store is kept. False if it was down already.
    pub(super) fn go_down(&mut self) -> bool {
        let Some(core) = self.core.take() else { return false };
        self.kept_store = Some(core.into_store());
        self.incarnation += 1;
        self.inbound.clear();
        self.timer_at = None;
        true
    }

    /// The node will come back with an empty store, as after a lost disk.
    pub(super) fn wipe_store(&mut self, now: u64) {
        self.kept_store = Some(MemStore::with_pool(self.pool.clone()));
        self.wiped_at.push(now);
    }
}

impl Hosts for [SimNode] {
    fn up(&self, i: usize) -> bool {
        self[i].is_up()
    }
    fn slow(&self, i: usize) -> bool {
        self[i].slow
    }
}

/// The cluster's nodes, each drawing its make-up in turn.
pub(super) fn make_nodes(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> Vec<SimNode> {
    let pool = RecordPool::default();
    let nodes: Vec<SimNode> = (0..cfg.nodes).map(|i| SimNode::new(cfg, i, rng, &pool)).collect();
    if std::env::var("SIMNET_DEBUG_LABELS").is_ok() {
        let mut counts: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for n in &nodes {
            *counts.entry(n.labels.clone()).or_default() += 1;
        }
        eprintln!("labels: {counts:?}");
    }
    nodes
}

/// One label set of the mix, in proportion to the weights.
fn draw_labels(cfg: &SimConfig, rng: &mut ChaCha8Rng) -> Vec<String> {
    let total_weight: f64 = cfg.label_mix.iter().map(|c| c.weight).sum();
    let mut pick = rng.gen::<f64>() * total_weight;
    for c in &cfg.label_mix {
        if pick < c.weight {
            return c.labels.clone();
        }
        pick -= c.weight;
    }
    cfg.label_mix[0].labels.clone()
}

impl Sim {
    pub(super) fn alive(&self, i: usize) -> bool {
        self.nodes[i].is_up()
    }

    pub(super) fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.alive(*i)).collect()
    }

    /// Node `a` can reach node `b`.
    pub(super) fn linked(&self, a: usize, b: usize) -> bool {
        self.alive(b) && self.network.same_side(a, b)
    }

    /// What node `i`'s clock reads now.
    pub(super) fn local_now(&self, i: usize) -> Millis {
        local_time(self.now, self.nodes[i].skew)
    }

    /// The settings `peerbot node` would derive from the same flags.
    fn core_config(&self, i: usize) -> Config {
        let mut c = Config::new(self.nodes[i].labels.clone(), self.cfg.executors);
        c.heartbeat_ms = self.cfg.heartbeat_ms;
        c.cluster_heartbeats_per_sec = self.cfg.cluster_heartbeats_per_sec;
        c.claim_stagger_ms = self.cfg.claim_stagger_ms;
        c.lease_ms = self.cfg.lease_ms;
        c.sync_interval_ms = self.cfg.sync_ms;
        c.seed = self.cfg.seed ^ ((i as u64) << 20) ^ ((self.nodes[i].incarnation as u64) << 40);
        c.log_replicas = self.cfg.log_replicas;
        if let Some((cluster, certs)) = &self.cluster {
            c.cluster = Some(cluster.clone());
            c.admission = certs.get(i).cloned();
        }
        c
    }

    /// Every node boots at time 0, then the mesh's links come up.
    pub(super) fn boot_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.boot(i);
        }
        for i in 0..self.nodes.len() {
            for j in self.network.neighbours(i).to_vec() {
                let p = self.nodes[j].peer;
                self.input(i, Input::PeerConnected(p));
            }
        }
    }

    pub(super) fn boot(&mut self, i: usize) {
        let store = self.nodes[i].kept_store.take().unwrap_or_default();
        let cfg = self.core_config(i);
        let now = self.local_now(i);
        let mut core = NodeCore::new(cfg, self.nodes[i].key.clone(), store, now);
        core.set_verifier(self.verifier.clone());
        self.nodes[i].core = Some(core);
        self.nodes[i].timer_at = None;
        self.note(i, None, "boot", self.nodes[i].incarnation as u64);
        self.drain(i);
    }

    /// Tells two nodes that their link came up, or went down.
    pub(super) fn link_changed(&mut self, a: usize, b: usize, up: bool) {
        let (pa, pb) = (self.nodes[a].peer, self.nodes[b].peer);
        if up {
            self.input(a, Input::PeerConnected(pb));
            self.input(b, Input::PeerConnected(pa));
        } else {
            self.input(a, Input::PeerDisconnected(pb));
            self.input(b, Input::PeerDisconnected(pa));
        }
    }

    pub(super) fn input(&mut self, i: usize, input: Input) {
        let now = self.local_now(i);
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.handle(now, input);
            self.drain(i);
        }
    }

    /// Routes a node's outputs, then queues its next tick.
    pub(super) fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) {
            match out {
                Output::Broadcast(bytes) => self.broadcast(i, bytes),
                Output::Request { peer, id, bytes } => self.send_request(i, peer, id, bytes),
                Output::Reply { id, bytes } => self.send_reply(i, id, bytes),
                Output::Verdict { .. } => {}
                Output::StartBuild(order) => self.start_build(i, order.job, order.attempt),
                Output::CancelBuild { job, attempt } => self.cancel_build(i, job, attempt),
                Output::Disconnect { .. } => {}
                Output::Event(e) => self.on_event(i, e),
            }
        }
        self.check_builds_agree(i);
        self.schedule_tick(i);
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let at = global_time(core.next_timeout(), self.nodes[i].skew, self.now + 1);
        if self.nodes[i].timer_at.is_none_or(|t| at < t) {
            self.nodes[i].timer_at = Some(at);
            let incarnation = self.nodes[i].incarnation;
            self.queue.push(at, Ev::Tick { node: i, incarnation });
        }
    }

    pub(super) fn on_tick(&mut self, node: usize, incarnation: u32) {
        let n = &self.nodes[node];
        if n.incarnation != incarnation || !n.is_up() || n.timer_at != Some(self.now) {
            return;
        }
        self.nodes[node].timer_at = None;
        self.input(node, Input::Tick);
    }

    /// Turns what a core reports into trace lines and figures.
    fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::RecordStored { id, .. } => {
                self.progress_at = self.now;
                self.track_record(i, id);
                self.note(i, None, "stored", id.prefix_u64());
            }
            Event::RecordRejected { .. } | Event::MessageRejected { .. } => {
                self.observed.rejected();
                self.note(i, None, "rejected", 0);
            }
            Event::Claimed { job, attempt, by } => {
                if by == self.nodes[i].peer {
                    self.workload.claimed(job, self.now);
                }
                self.note(i, Some(job), "claimed", attempt as u64);
            }
            Event::ClaimConflict { job, attempt, .. } => {
                self.observed.claim_conflict(job, attempt);
                self.note(i, Some(job), "conflict", attempt as u64);
            }
            Event::LeaseExpired { job, attempt, .. } => {
                self.observed.lease_expired(job, attempt);
                self.note(i, Some(job), "lease-expired", attempt as u64);
            }
            Event::BuildPublished { job, attempt, record, .. } => {
                self.workload.published(job, record);
                self.note(i, Some(job), "published", attempt as u64);
            }
            Event::Released { job, attempt, .. } => self.note(i, Some(job), "released", attempt as u64),
            Event::BuildGivenUp { job, attempt, .. } => {
                self.workload.given_up();
                self.note(i, Some(job), "build-given-up", attempt as u64);
            }
            Event::SyncFinished { need, have, .. } => self.note(i, None, "synced", (need + have) as u64),
            Event::BuildStarted { .. }
            | Event::BlobFetched { .. }
            | Event::SyncFailed { .. }
            | Event::StoreFailed { .. }
            | Event::StorageFailing { .. }
            | Event::StorageRecovered { .. }
            | Event::GaveBack { .. }
            | Event::Revoked { .. }
            | Event::CatchingUp { .. }
            | Event::PeerAddrs { .. }
            | Event::LogsExpired { .. }
            | Event::NoticePublished { .. } => {}
        }
    }

    fn track_record(&mut self, i: usize, id: Hash32) {
        if self.observed.record_arrived(id, i, self.now) {
            return;
        }
        // First sight anywhere: learn what it is.
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let bytes = core.store().get_record(&id).unwrap_or_default();
        self.observed.record_first_seen(id, i, self.now, self.nodes.len(), &bytes);
    }

    pub(super) fn broadcast(&mut self, src: usize, bytes: Vec<u8>) {
        let from = self.nodes[src].peer;
        let wave = self.network.broadcast(&mut self.rng, self.now, src, from, bytes, self.nodes.as_slice());
        if let Some((first, wave)) = wave {
            self.queue.push(first, Ev::Wave { wave });
        }
    }

    pub(super) fn on_wave(&mut self, wave: u32) {
        let Some(arrival) = self.network.next_arrival(wave) else { return };
        if let Some(next) = arrival.next_at {
            self.queue.push(next, Ev::Wave { wave });
        }
        if self.alive(arrival.to) {
            let token = self.events;
            let bytes = arrival.bytes.as_ref().clone();
            self.input(arrival.to, Input::Gossip { from: arrival.from, token, bytes });
        }
    }

    fn send_request(&mut self, i: usize, peer: PeerId, id: u64, bytes: Vec<u8>) {
        let caller = Caller { node: i, incarnation: self.nodes[i].incarnation, id };
        let target = self.by_peer.get(&peer).copied().filter(|&t| self.linked(i, t));
        let dest = match target {
            Some(t) => Dest::Reachable { slow: self.nodes[t].slow },
            None => Dest::Unreachable,
        };
        match (self.network.send(&mut self.rng, &bytes, Transfer::Request, dest), target) {
            (Some(latency), Some(to)) => self.queue.push(self.now + latency, Ev::Request { to, caller, bytes }),
            _ => self.fail_request(caller),
        }
    }

    /// The caller hears nothing, and gives up after the request timeout.
    fn fail_request(&mut self, caller: Caller) {
        let at = self.now + self.network.request_timeout_ms();
        self.queue.push(at, Ev::RequestFailed { caller });
    }

    fn send_reply(&mut self, i: usize, inbound: u64, bytes: Vec<u8>) {
        let bytes = self.tamper_reply(i, bytes);
        let Some(caller) = self.nodes[i].inbound.remove(&inbound) else { return };
        let to = caller.node;
        let dest = if self.linked(i, to) && self.nodes[to].incarnation == caller.incarnation {
            Dest::Reachable { slow: self.nodes[to].slow }
        } else {
            Dest::Unreachable
        };
        match self.network.send(&mut self.rng, &bytes, Transfer::Reply, dest) {
            Some(latency) => self.queue.push(self.now + latency, Ev::Response { caller, bytes }),
            None => self.fail_request(caller),
        }
    }

    pub(super) fn on_request(&mut self, to: usize, caller: Caller, bytes: Vec<u8>) {
        if !self.alive(to) {
            self.fail_request(caller);
            return;
        }
        let n = &mut self.nodes[to];
        let local_id = n.next_inbound;
        n.next_inbound += 1;
        n.inbound.insert(local_id, caller);
        let from = self.nodes[caller.node].peer;
        self.input(to, Input::Request { from, id: local_id, bytes });
    }

    pub(super) fn on_response(&mut self, caller: Caller, bytes: Vec<u8>) {
        if self.nodes[caller.node].incarnation == caller.incarnation {
            self.input(caller.node, Input::Response { id: caller.id, bytes });
        }
    }

    pub(super) fn on_request_failed(&mut self, caller: Caller) {
        if self.nodes[caller.node].incarnation == caller.incarnation {
            self.input(caller.node, Input::RequestFailed { id: caller.id, reason: "timed out".into() });
        }
    }
}
