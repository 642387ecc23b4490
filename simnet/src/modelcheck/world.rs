//! One state of the modelled cluster, and the steps out of it. Each node is
//! a real `NodeCore` on a `MemStore`; the network is the set of messages in
//! flight, any of which may be delivered next (reordering), lost or
//! duplicated while the fault budget lasts; the executor is a set of builds
//! that end when the explorer says so. Time is one clock that jumps to the
//! next node timeout, so every order of deliveries against timers is tried.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use peerbot_protocol::core::{BuildOutcome, CommitInfo, Config, Event, Input, JobState, NodeCore, Output, Verify};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::store::{MemStore, Store};
use peerbot_protocol::{deterministic_key, Keypair, Millis, PeerId};

use super::Bounds;

/// Fault budgets left: losses, duplicates, reorderings, crashes, delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Budgets(pub(super) [u8; 5]);

impl Budgets {
    /// Every budget at least as large as in `other`.
    pub(super) fn covers(&self, other: &Budgets) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a >= b)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Payload {
    Gossip(Vec<u8>),
    /// `back`: the incarnation of the sender, which the answer must reach.
    Request {
        id: u64,
        bytes: Vec<u8>,
        back: u32,
    },
    Reply {
        id: u64,
        bytes: Vec<u8>,
    },
    Failed {
        id: u64,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Msg {
    pub(super) from: usize,
    pub(super) to: usize,
    /// The incarnation of the node that is to take it.
    pub(super) incarnation: u32,
    pub(super) payload: Payload,
    heartbeat: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Deliver(usize),
    Lose(usize),
    Duplicate(usize),
    Finish { node: usize, build: usize },
    Crash(usize),
    Restart(usize),
    Tick,
}

#[derive(Clone)]
pub(super) struct Node {
    core: Option<NodeCore<MemStore>>,
    kept: Option<MemStore>,
    key: Keypair,
    pub(super) peer: PeerId,
    incarnation: u32,
    /// Builds the executor is running: (job, attempt).
    builds: Vec<(Hash32, u32)>,
}

#[derive(Clone)]
pub(super) struct World {
    pub(super) now: Millis,
    pub(super) nodes: Vec<Node>,
    pub(super) inflight: Vec<Msg>,
    pub(super) losses: u32,
    pub(super) reorders: u32,
    pub(super) dups: u32,
    pub(super) crashes: u32,
    /// What is left of the delay bound (`Bounds::delays`).
    pub(super) delays: Option<u32>,
    /// Some node saw a lease run out on the way here (not part of the
    /// state: it only says which paths the bound reached).
    pub(super) lease_expired: bool,
    pub(super) jobs: Vec<Hash32>,
    executors: u32,
    /// The winner each conflict was given, by (job, attempt), by any node.
    winners: BTreeMap<(Hash32, u32, (PeerId, PeerId)), PeerId>,
    /// The answer to the request being delivered.
    reply: Option<(u64, Vec<u8>)>,
    /// What happened outside the explored steps (the announce, the quiet
    /// spell); the explorer tells the steps themselves from its stack.
    pub(super) trail: Vec<String>,
    pub(super) violation: Option<String>,
    verifier: Arc<dyn Verify>,
}

/// The model's node configuration: short timers, so that leases run out
/// and jobs reopen within a few steps of the clock.
pub(super) fn model_config(executors: u32, seed: u64) -> Config {
    let mut c = Config::new(vec!["os=linux".into()], executors);
    c.heartbeat_ms = 1_000;
    c.cluster_heartbeats_per_sec = 1_000;
    c.claim_stagger_ms = 500;
    c.lease_ms = 3_000;
    c.sync_interval_ms = 20_000;
    c.seed = seed;
    c.build_grace_ms = 60_000;
    c
}

fn recipe(jobs: usize) -> String {
    (0..jobs)
        .map(|b| format!("[[builder]]\nname = \"b{b}\"\n[[builder.step]]\nname = \"build\"\nrun = \"make\"\n"))
        .collect()
}

fn commit_info(jobs: usize) -> CommitInfo {
    CommitInfo {
        repo: "https://git.example.org/model.git".into(),
        branch: "main".into(),
        commit: "c0ffee".repeat(7)[..40].to_string(),
        parents: vec![],
        author: "Model <model@example.org>".into(),
        committer: "Model <model@example.org>".into(),
        commit_time: 1,
        title: "the commit".into(),
        files: vec!["src/lib.rs".into()],
        recipe: Ok(recipe(jobs)),
    }
}

impl World {
    /// The cluster booted and warmed up with no fault, then node 0 announces
    /// one commit with `bounds.jobs` jobs: the state exploration starts from.
    pub(super) fn start(b: &Bounds, verifier: Arc<dyn Verify>) -> World {
        let nodes = (0..b.nodes)
            .map(|i| {
                let key = deterministic_key(9_000 + i as u64);
                let peer = key.public().to_peer_id();
                Node { core: None, kept: Some(MemStore::new()), key, peer, incarnation: 0, builds: vec![] }
            })
            .collect();
        let mut w = World {
            now: 0,
            nodes,
            inflight: vec![],
            losses: b.losses,
            reorders: b.reorders,
            dups: b.dups,
            crashes: b.crashes,
            delays: b.delays,
            lease_expired: false,
            jobs: vec![],
            executors: b.executors,
            winners: BTreeMap::new(),
            reply: None,
            trail: vec![],
            violation: None,
            verifier,
        };
        for i in 0..b.nodes {
            w.boot(i);
        }
        let warm = model_config(b.executors, 0).warmup_ms() + 500;
        w.run_quietly(warm);
        let now = w.now;
        let core = w.nodes[0].core.as_mut().expect("node 0 is up");
        core.announce(now, commit_info(b.jobs)).expect("the model's commit announces");
        w.jobs = core.live_jobs().keys().copied().collect();
        w.jobs.sort();
        w.drain(0);
        w.trail.push(format!("t={now} node 0 announces a commit with {} jobs", w.jobs.len()));
        w
    }

    fn boot(&mut self, i: usize) {
        let store = self.nodes[i].kept.take().unwrap_or_default();
        let cfg = model_config(self.executors, i as u64);
        let mut core = NodeCore::new(cfg, self.nodes[i].key.clone(), store, self.now);
        core.set_verifier(self.verifier.clone());
        self.nodes[i].core = Some(core);
        self.drain(i);
        for j in 0..self.nodes.len() {
            if j != i && self.up(j) {
                let (pi, pj) = (self.nodes[i].peer, self.nodes[j].peer);
                self.input(i, Input::PeerConnected(pj));
                self.input(j, Input::PeerConnected(pi));
            }
        }
    }

    pub(super) fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.handle(now, input);
            self.drain(i);
        }
    }

    /// Routes a node's outputs into the network and its executor.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) {
            match out {
                Output::Broadcast(bytes) => self.broadcast(i, bytes),
                Output::Request { peer, id, bytes } => {
                    let back = self.nodes[i].incarnation;
                    match self.index_of(&peer) {
                        Some(to) => {
                            let inc = self.nodes[to].incarnation;
                            self.send(i, to, inc, Payload::Request { id, bytes, back }, false);
                        }
                        None => self.send(i, i, back, Payload::Failed { id }, false),
                    }
                }
                // Requests are answered at once; `deliver` routes the reply.
                Output::Reply { id, bytes } => self.reply = Some((id, bytes)),
                Output::Verdict { .. } => {}
                Output::StartBuild(order) => {
                    self.nodes[i].builds.push((order.job, order.attempt));
                    self.check_slots(i);
                }
                Output::CancelBuild { job, attempt } => self.nodes[i].builds.retain(|b| *b != (job, attempt)),
                Output::Disconnect { .. } => {}
                Output::Event(e) => self.on_event(i, e),
            }
        }
    }

    /// Each pair of claimants of one attempt must be settled the same way
    /// wherever it meets (three claimants make three pairs).
    fn on_event(&mut self, i: usize, e: Event) {
        if matches!(e, Event::LeaseExpired { .. }) {
            self.lease_expired = true;
        }
        if let Event::ClaimConflict { job, attempt, winner, loser } = e {
            let pair = if winner < loser { (winner, loser) } else { (loser, winner) };
            match self.winners.get(&(job, attempt, pair)) {
                Some(w) if *w != winner => {
                    let first = self.index_of(w).unwrap_or(usize::MAX);
                    let now = self.index_of(&winner).unwrap_or(usize::MAX);
                    self.fail(format!(
                        "nodes disagree on the winner of the conflict for job {} attempt {attempt}: node {first} and, at node {i}, node {now}",
                        job.short()
                    ));
                }
                Some(_) => {}
                None => {
                    self.winners.insert((job, attempt, pair), winner);
                }
            }
        }
    }

    fn check_slots(&mut self, i: usize) {
        let running = self.nodes[i].core.as_ref().map_or(0, |c| c.running().len());
        let building = self.nodes[i].builds.len();
        if running > self.executors as usize || building > self.executors as usize {
            self.fail(format!(
                "node {i} runs {building} builds ({running} in its core) on {} executors",
                self.executors
            ));
        }
    }

    pub(super) fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(why);
        }
    }

    fn index_of(&self, p: &PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer == *p)
    }

    fn broadcast(&mut self, from: usize, bytes: Vec<u8>) {
        let heartbeat = is_heartbeat(&bytes);
        for to in 0..self.nodes.len() {
            if to != from && self.up(to) {
                let inc = self.nodes[to].incarnation;
                self.send(from, to, inc, Payload::Gossip(bytes.clone()), heartbeat);
            }
        }
    }

    /// A newer heartbeat replaces an older one in flight on the same link:
    /// fewer states. The receiver does not check heartbeat sequence
    /// numbers, so the schedules in which the older one still arrives are
    /// not explored (see `docs/protocol.md`, "Model checking").
    fn send(&mut self, from: usize, to: usize, incarnation: u32, payload: Payload, heartbeat: bool) {
        if heartbeat {
            self.inflight.retain(|m| !(m.heartbeat && m.from == from && m.to == to));
        }
        self.inflight.push(Msg { from, to, incarnation, payload, heartbeat });
    }

    /// What may happen next.
    pub(super) fn actions(&self, horizon: Millis) -> Vec<Action> {
        let mut acts = vec![];
        for k in 0..self.inflight.len() {
            // Messages arrive oldest first; another one may overtake it
            // while the reordering budget lasts.
            if k == 0 || self.reorders > 0 {
                acts.push(Action::Deliver(k));
            }
            // A lost gossip message, or a lost failure notice, leaves no
            // trace but its absence, which only tells once it would be the
            // oldest: so it is lost then, or never (see `docs/protocol.md`).
            // A lost request or reply fails at once at its sender, so it
            // may be lost wherever it is.
            let traceless = matches!(self.inflight[k].payload, Payload::Gossip(_) | Payload::Failed { .. });
            if self.losses > 0 && (k == 0 || !traceless) {
                acts.push(Action::Lose(k));
            }
            if self.dups > 0 && matches!(self.inflight[k].payload, Payload::Gossip(_)) {
                acts.push(Action::Duplicate(k));
            }
        }
        // Under a delay bound, time and build ends wait for what is in
        // flight, unless a delay is spent.
        let may_wait = self.inflight.is_empty() || self.delays != Some(0);
        for (i, n) in self.nodes.iter().enumerate() {
            for b in 0..n.builds.len() {
                if may_wait {
                    acts.push(Action::Finish { node: i, build: b });
                }
            }
            if n.core.is_some() && self.crashes > 0 {
                acts.push(Action::Crash(i));
            }
            if n.core.is_none() {
                acts.push(Action::Restart(i));
            }
        }
        if may_wait && self.next_tick().is_some_and(|t| t <= horizon) {
            acts.push(Action::Tick);
        }
        acts
    }

    fn next_tick(&self) -> Option<Millis> {
        self.nodes.iter().filter_map(|n| n.core.as_ref()).map(|c| c.next_timeout().max(self.now)).min()
    }

    pub(super) fn apply(&mut self, a: &Action) {
        if matches!(a, Action::Tick | Action::Finish { .. }) && !self.inflight.is_empty() {
            if let Some(d) = self.delays.as_mut() {
                *d -= 1;
            }
        }
        match *a {
            Action::Deliver(k) => {
                if k > 0 {
                    self.reorders -= 1;
                }
                let m = self.inflight.remove(k);
                self.deliver(m);
            }
            Action::Lose(k) => {
                self.losses -= 1;
                let m = self.inflight.remove(k);
                match m.payload {
                    Payload::Request { id, back, .. } => self.send(m.from, m.from, back, Payload::Failed { id }, false),
                    Payload::Reply { id, .. } => self.send(m.to, m.to, m.incarnation, Payload::Failed { id }, false),
                    _ => {}
                }
            }
            Action::Duplicate(k) => {
                self.dups -= 1;
                let m = self.inflight[k].clone();
                self.inflight.push(m);
            }
            Action::Finish { node, build } => {
                let (job, attempt) = self.nodes[node].builds.remove(build);
                self.input(node, Input::BuildFinished(outcome(job, attempt, self.now)));
            }
            Action::Crash(i) => self.crash(i),
            Action::Restart(i) => self.boot(i),
            Action::Tick => self.tick(),
        }
        for i in 0..self.nodes.len() {
            self.check_slots(i);
        }
    }

    pub(super) fn describe(&self, a: &Action) -> String {
        let msg = |k: usize| {
            let m = &self.inflight[k];
            format!("{} from node {} to node {}", kind(&m.payload), m.from, m.to)
        };
        match *a {
            Action::Deliver(k) => format!("deliver {}", msg(k)),
            Action::Lose(k) => format!("lose {}", msg(k)),
            Action::Duplicate(k) => format!("duplicate {}", msg(k)),
            Action::Finish { node, build } => {
                let (job, attempt) = self.nodes[node].builds[build];
                format!("node {node} finishes job {} attempt {attempt}", job.short())
            }
            Action::Crash(i) => format!("node {i} crashes (its store kept)"),
            Action::Restart(i) => format!("node {i} restarts"),
            Action::Tick => format!("clock to {}", self.next_tick().unwrap_or(self.now)),
        }
    }

    fn deliver(&mut self, m: Msg) {
        if !self.up(m.to) || self.nodes[m.to].incarnation != m.incarnation {
            return;
        }
        let from = self.nodes[m.from].peer;
        match m.payload {
            Payload::Gossip(bytes) => self.input(m.to, Input::Gossip { from, token: 0, bytes }),
            Payload::Request { id, bytes, back } => {
                self.reply = None;
                self.input(m.to, Input::Request { from, id, bytes });
                let reply = self.reply.take().filter(|(r, _)| *r == id).map(|(_, b)| b);
                let payload = match reply {
                    Some(bytes) => Payload::Reply { id, bytes },
                    None => Payload::Failed { id },
                };
                self.send(m.to, m.from, back, payload, false);
            }
            Payload::Reply { id, bytes } => self.input(m.to, Input::Response { id, bytes }),
            Payload::Failed { id } => self.input(m.to, Input::RequestFailed { id, reason: "lost".into() }),
        }
    }

    fn crash(&mut self, i: usize) {
        self.crashes -= 1;
        let core = self.nodes[i].core.take().expect("up");
        self.nodes[i].kept = Some(core.into_store());
        self.nodes[i].incarnation += 1;
        self.nodes[i].builds.clear();
        // Its links drop: requests to it fail, the rest to it is gone.
        let mut failed = vec![];
        self.inflight.retain(|m| {
            if m.to != i {
                return true;
            }
            if let Payload::Request { id, back, .. } = m.payload {
                failed.push((m.from, back, id));
            }
            false
        });
        for (caller, inc, id) in failed {
            self.send(caller, caller, inc, Payload::Failed { id }, false);
        }
        let p = self.nodes[i].peer;
        for j in 0..self.nodes.len() {
            if j != i {
                self.input(j, Input::PeerDisconnected(p));
            }
        }
    }

    fn tick(&mut self) {
        let Some(t) = self.next_tick() else { return };
        self.now = t;
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.as_ref().is_some_and(|c| c.next_timeout() <= t) {
                self.input(i, Input::Tick);
            }
        }
    }

    /// No fault from here on: down nodes come back, every message is
    /// delivered in order, every build ends at once, and the clock runs
    /// until `until`, or until nothing is left to do.
    pub(super) fn run_quietly(&mut self, until: Millis) {
        for i in 0..self.nodes.len() {
            if !self.up(i) {
                self.boot(i);
            }
        }
        loop {
            while !self.inflight.is_empty() {
                let m = self.inflight.remove(0);
                self.deliver(m);
            }
            for i in 0..self.nodes.len() {
                while let Some((job, attempt)) = self.nodes[i].builds.pop() {
                    self.input(i, Input::BuildFinished(outcome(job, attempt, self.now)));
                }
            }
            if !self.inflight.is_empty() {
                continue;
            }
            match self.next_tick() {
                Some(t) if t <= until => self.tick(),
                _ => break,
            }
            if !self.jobs.is_empty() && self.settled() {
                break;
            }
        }
    }

    /// Every job done on every node with the same results everywhere,
    /// nothing in flight, no build running.
    fn settled(&self) -> bool {
        let idle = self.inflight.is_empty()
            && self.nodes.iter().all(|n| {
                n.builds.is_empty()
                    && n.core.as_ref().is_some_and(|c| {
                        self.jobs.iter().all(|j| c.job_state(j) == JobState::Done) && c.running().is_empty()
                    })
            });
        idle && self.jobs.iter().all(|j| self.nodes.iter().all(|n| results(n, j) == results(&self.nodes[0], j)))
    }

    /// Each node's record count and reconciliation progress, for a report.
    fn sync_states(&self) -> String {
        let per_node: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.core.as_ref().map(|c| (i, c)))
            .map(|(i, c)| format!("node {i}: {} records, {:?}", c.store().record_count(), c.sync_progress()))
            .collect();
        per_node.join("; ")
    }

    pub(super) fn check_quiet(&mut self, quiet_ms: Millis) {
        let until = self.now + quiet_ms;
        self.trail.push(format!("t={} the network turns quiet", self.now));
        self.run_quietly(until);
        for i in 0..self.nodes.len() {
            let core = self.nodes[i].core.as_ref().expect("up after quiet");
            for j in self.jobs.clone() {
                let state = core.job_state(&j);
                if state != JobState::Done {
                    let why = format!(
                        "job {} is {state:?} on node {i} {} ms after the network turned quiet",
                        j.short(),
                        quiet_ms
                    );
                    return self.fail(why);
                }
            }
        }
        for j in &self.jobs {
            let want = results(&self.nodes[0], j);
            for (i, n) in self.nodes.iter().enumerate().skip(1) {
                if results(n, j) != want {
                    let why = format!(
                        "nodes 0 and {i} hold different results for job {} once quiet ({})",
                        j.short(),
                        self.sync_states()
                    );
                    return self.fail(why);
                }
            }
        }
    }

    /// What is left of each fault budget, packed one per byte (no delay
    /// bound counts as the most). With more of every budget left, a state
    /// can take every step it could with less.
    pub(super) fn budgets(&self) -> Budgets {
        let delays = self.delays.map_or(u8::MAX, |d| d.min(254) as u8);
        let b = |v: u32| v.min(255) as u8;
        Budgets([b(self.losses), b(self.dups), b(self.reorders), b(self.crashes), delays])
    }

    /// Everything the claim rules read but the fault budgets, hashed: two
    /// states with the same fingerprint and budgets are explored once, and
    /// so is one whose budgets are all no larger than those of a state
    /// already explored with the same fingerprint.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.now.hash(&mut h);
        for n in &self.nodes {
            n.incarnation.hash(&mut h);
            n.builds.hash(&mut h);
            let Some(c) = n.core.as_ref() else {
                // A node that is down restarts from its store: what it
                // holds is what it will know.
                0u8.hash(&mut h);
                if let Some(s) = n.kept.as_ref() {
                    s.ids().hash(&mut h);
                    s.get_state("own_claims").hash(&mut h);
                    for j in &self.jobs {
                        s.get_state(&format!("lost/{}", j.to_hex())).hash(&mut h);
                    }
                }
                continue;
            };
            1u8.hash(&mut h);
            (c.next_timeout(), c.store().record_count(), c.caught_up(self.now)).hash(&mut h);
            for (job, b) in c.running() {
                (job, b.attempt).hash(&mut h);
            }
            for j in &self.jobs {
                (c.job_state(j) as u8).hash(&mut h);
                if let Some(v) = c.live_jobs().get(j) {
                    (v.attempt, v.opened_ms, v.not_before).hash(&mut h);
                    if let Some(cl) = &v.claim {
                        (cl.by, cl.attempt, cl.lease_until).hash(&mut h);
                    }
                }
            }
            for m in &self.nodes {
                c.is_live(&m.peer).hash(&mut h);
            }
        }
        let msgs: Vec<u64> = self
            .inflight
            .iter()
            .map(|m| {
                let mut mh = DefaultHasher::new();
                (m.from, m.to, m.incarnation, &m.payload).hash(&mut mh);
                mh.finish()
            })
            .collect();
        // In order: which message is oldest decides what comes next.
        msgs.hash(&mut h);
        self.winners.hash(&mut h);
        h.finish()
    }
}

/// A node's results for a job, in id order; none while it is down.
fn results(n: &Node, job: &Hash32) -> Vec<Hash32> {
    let mut r = n.core.as_ref().map(|c| c.results_of(job)).unwrap_or_default();
    r.sort();
    r
}

fn is_heartbeat(bytes: &[u8]) -> bool {
    matches!(peerbot_protocol::wire::decode_gossip(bytes), Ok(peerbot_protocol::wire::Gossip::Heartbeat(_)))
}

fn kind(p: &Payload) -> String {
    match p {
        Payload::Gossip(b) => match peerbot_protocol::wire::decode_gossip(b) {
            Ok(g) => gossip_kind(&g).to_string(),
            Err(_) => "gossip".into(),
        },
        Payload::Request { .. } => "request".into(),
        Payload::Reply { .. } => "reply".into(),
        Payload::Failed { .. } => "request failure".into(),
    }
}

fn gossip_kind(g: &peerbot_protocol::wire::Gossip) -> &'static str {
    use peerbot_protocol::wire::Gossip;
    match g {
        Gossip::Record(_) => "record",
        Gossip::Heartbeat(_) => "heartbeat",
        Gossip::Renew { .. } => "renewal",
        Gossip::Claim(_) => "claim",
        Gossip::Release { .. } => "release",
    }
}

fn outcome(job: Hash32, attempt: u32, now: Millis) -> BuildOutcome {
    crate::sim::workload::simulated_outcome(job, attempt, now, false, false)
}
