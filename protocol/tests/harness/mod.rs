//! A small network of `NodeCore<MemStore>`s for protocol tests.
//!
//! After quinn-proto's test `Pair` and raft-rs's test `Network`: a virtual
//! clock that jumps straight to the next thing that happens (the earliest
//! `next_timeout()` of any node, or the earliest message arrival), a full
//! mesh that carries gossip, requests and replies with a fixed latency,
//! and controls to cut links, isolate or crash nodes and lose chosen
//! messages. Nodes are woken exactly when they ask to be, never more
//! often, so a core that forgets to ask for a wake-up shows up here.
//!
//! Gossip goes straight from sender to every other node (no relaying): a
//! cut link loses the gossip between its two ends.
#![allow(dead_code)] // each test file uses its own part of it

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use peerbot_protocol::core::{
    BuildOrder, BuildOutcome, CommitInfo, Config, Event, Input, NodeCore, Output, StepOutcome, Verify,
};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{self, Body, BuildResult, Change, RecordError, VerifiedRecord};
use peerbot_protocol::repos::RepoPolicy;
use peerbot_protocol::store::{MemStore, Store};
use peerbot_protocol::wire::{self, Gossip, Request, Response};
use peerbot_protocol::{deterministic_key, Keypair, Millis, PeerId};

/// Steps one `run_until` or `run_for` may take, whatever the virtual time.
const MAX_STEPS: usize = 1_000_000;
/// Rounds of deliveries and ticks at one instant before calling it a livelock.
const MAX_ROUNDS_PER_INSTANT: usize = 1_000;

pub const LATENCY_MS: Millis = 10;
/// As the node's request-response config: a lost request or reply is
/// reported to the requester this long after the request left.
pub const REQUEST_TIMEOUT_MS: Millis = 60_000;

/// A message as the harness carried it, decoded for tests to inspect.
#[derive(Debug, Clone)]
pub enum Wire {
    Gossip(Gossip),
    Request(Request),
    Response(Response),
    Undecodable(usize),
}

/// One message sent, in the order sent. `from` and `to` are node indexes;
/// for a reply `from` is the responder.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub at: Millis,
    pub from: usize,
    pub to: usize,
    pub wire: Wire,
    /// A `lose` rule took it. (Messages on a cut link are not marked.)
    pub lost: bool,
}

impl Traffic {
    pub fn request(&self) -> Option<&Request> {
        match &self.wire {
            Wire::Request(r) => Some(r),
            _ => None,
        }
    }
}

/// What the harness's builder does with each `StartBuild`.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub duration_ms: Millis,
    /// One step per entry, with a log of that many bytes.
    pub step_logs: Vec<usize>,
}

impl Default for BuildPlan {
    fn default() -> Self {
        BuildPlan { duration_ms: 1_000, step_logs: vec![200] }
    }
}

/// Why a run stopped short: the condition, the clock and every node's state.
pub struct Stuck(pub String);

impl fmt::Debug for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks each distinct record once for all nodes: the answer depends on
/// the bytes only, and thousands of records would otherwise be checked
/// once per node and per copy received.
#[derive(Default)]
struct CachedVerify {
    seen: Mutex<HashMap<Hash32, Result<VerifiedRecord, String>>>,
}

impl Verify for CachedVerify {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let r = seen.entry(Hash32::of(bytes)).or_insert_with(|| record::verify(bytes).map_err(|e| e.to_string()));
        r.clone().map_err(RecordError::Invalid)
    }
}

enum Carry {
    Gossip { from: usize, to: usize, bytes: Vec<u8> },
    Request { from: usize, from_inc: u32, to: usize, id: u64, sent: Millis, bytes: Vec<u8> },
    Reply { from: usize, to: usize, to_inc: u32, id: u64, sent: Millis, bytes: Vec<u8> },
    Failed { to: usize, to_inc: u32, id: u64, reason: String },
    BuildDone { node: usize, inc: u32, outcome: BuildOutcome },
}

/// Who asked a request a node is answering.
struct Inbound {
    from: usize,
    from_inc: u32,
    id: u64,
    sent: Millis,
}

struct Member {
    core: Option<NodeCore<MemStore>>,
    kept: Option<MemStore>,
    key: Keypair,
    peer: PeerId,
    cfg: Config,
    /// Bumped at each crash: replies and build ends meant for an earlier
    /// life are dropped, as the core's request ids start again at 1.
    inc: u32,
    inbound: BTreeMap<u64, Inbound>,
    next_inbound: u64,
    /// Requests sent and not yet answered or failed, by the node's own id.
    outstanding: BTreeMap<u64, Request>,
    peak_record_transfers: usize,
    building: BTreeSet<(Hash32, u32)>,
    events: Vec<(Millis, Event)>,
}

struct LossRule {
    left: usize,
    pred: Box<dyn FnMut(&Traffic) -> bool>,
}

pub struct NetBuilder {
    cfgs: Vec<Config>,
    stores: Vec<MemStore>,
    plan: Option<BuildPlan>,
    losses: Vec<LossRule>,
}

impl NetBuilder {
    /// Adjusts node `i`'s config (by default one executor, `os=linux`, seed `i`).
    pub fn config(mut self, f: impl Fn(usize, &mut Config)) -> Self {
        for (i, c) in self.cfgs.iter_mut().enumerate() {
            f(i, c);
        }
        self
    }
    /// Puts records into node `i`'s store before it boots, as if it had them on disk.
    pub fn records(mut self, i: usize, recs: &[VerifiedRecord]) -> Self {
        for r in recs {
            self.stores[i].put_record(r).expect("MemStore never fails");
        }
        self
    }
    /// As `Net::lose`, in force from the start (links come up at time 0).
    pub fn lose(mut self, count: usize, pred: impl FnMut(&Traffic) -> bool + 'static) -> Self {
        self.losses.push(LossRule { left: count, pred: Box::new(pred) });
        self
    }
    /// `None`: builds never finish unless the test finishes them.
    pub fn builds(mut self, plan: Option<BuildPlan>) -> Self {
        self.plan = plan;
        self
    }

    /// Boots the nodes at time 0 and connects every pair of them.
    pub fn start(self) -> Net {
        let mut net = Net {
            now: 0,
            members: Vec::new(),
            by_peer: HashMap::new(),
            flights: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            losses: self.losses,
            plan: self.plan,
            traffic: Vec::new(),
            started: Vec::new(),
            verifier: Arc::new(CachedVerify::default()),
        };
        for (i, (cfg, store)) in self.cfgs.into_iter().zip(self.stores).enumerate() {
            let key = deterministic_key(i as u64 + 1);
            let peer = key.public().to_peer_id();
            net.by_peer.insert(peer, i);
            net.members.push(Member {
                core: None,
                kept: Some(store),
                key,
                peer,
                cfg,
                inc: 0,
                inbound: BTreeMap::new(),
                next_inbound: 1,
                outstanding: BTreeMap::new(),
                peak_record_transfers: 0,
                building: BTreeSet::new(),
                events: Vec::new(),
            });
        }
        for i in 0..net.len() {
            net.boot(i);
        }
        for a in 0..net.len() {
            for b in a + 1..net.len() {
                net.link_up(a, b);
            }
        }
        net
    }
}

pub struct Net {
    now: Millis,
    members: Vec<Member>,
    by_peer: HashMap<PeerId, usize>,
    /// Messages and build ends on their way, by (arrival, send order).
    flights: BTreeMap<(Millis, u64), Carry>,
    seq: u64,
    cut: BTreeSet<(usize, usize)>,
    losses: Vec<LossRule>,
    plan: Option<BuildPlan>,
    traffic: Vec<Traffic>,
    started: Vec<(Millis, usize, BuildOrder)>,
    verifier: Arc<CachedVerify>,
}

impl Net {
    /// `n` nodes; node `i` has key `deterministic_key(i + 1)`, an empty
    /// store, and a builder that finishes each build per `BuildPlan::default()`.
    pub fn builder(n: usize) -> NetBuilder {
        let cfgs = (0..n)
            .map(|i| {
                let mut c = Config::new(vec!["os=linux".into()], 1);
                c.seed = i as u64;
                c.repos = RepoPolicy::new(&["/repo".to_string()], &[]).expect("a valid pattern");
                c
            })
            .collect();
        NetBuilder { cfgs, stores: vec![MemStore::new(); n], plan: Some(BuildPlan::default()), losses: Vec::new() }
    }

    pub fn new(n: usize) -> Net {
        Net::builder(n).start()
    }

    // ---- looking ----

    pub fn now(&self) -> Millis {
        self.now
    }
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn peer(&self, i: usize) -> PeerId {
        self.members[i].peer
    }
    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].core.is_some()
    }
    /// Node `i`'s core; panics when it is down.
    pub fn node(&self, i: usize) -> &NodeCore<MemStore> {
        self.members[i].core.as_ref().unwrap_or_else(|| panic!("node {i} is down"))
    }
    /// The ids of the records node `i` holds (up or down).
    pub fn ids(&self, i: usize) -> BTreeSet<Hash32> {
        match (&self.members[i].core, &self.members[i].kept) {
            (Some(c), _) => c.store().ids(),
            (None, Some(s)) => s.ids(),
            (None, None) => BTreeSet::new(),
        }
    }
    pub fn events(&self, i: usize) -> &[(Millis, Event)] {
        &self.members[i].events
    }
    pub fn traffic(&self) -> &[Traffic] {
        &self.traffic
    }
    /// Builds started, as (when, node, order).
    pub fn started(&self) -> &[(Millis, usize, BuildOrder)] {
        &self.started
    }
    /// Node `i`'s requests sent and not yet answered or failed.
    pub fn outstanding(&self, i: usize) -> impl Iterator<Item = &Request> {
        self.members[i].outstanding.values()
    }
    /// The most record fetches and pushes node `i` ever had out at once.
    pub fn peak_record_transfers(&self, i: usize) -> usize {
        self.members[i].peak_record_transfers
    }

    // ---- acting ----

    /// Calls `f` on node `i`'s core at the current time and carries what it sends.
    pub fn act<R>(&mut self, i: usize, f: impl FnOnce(&mut NodeCore<MemStore>, Millis) -> R) -> R {
        let now = self.now;
        let core = self.members[i].core.as_mut().unwrap_or_else(|| panic!("node {i} is down"));
        let r = f(core, now);
        self.drain(i);
        r
    }

    /// Announces `info` at node `i`; returns the change's id.
    pub fn announce(&mut self, i: usize, info: CommitInfo) -> Hash32 {
        match self.act(i, |c, now| c.announce(now, info)) {
            Ok(peerbot_protocol::core::Announced::New(id)) => id,
            other => panic!("node {i} did not announce a new change: {other:?}"),
        }
    }

    /// Loses the next `count` messages for which `pred` holds. A lost
    /// request or reply fails at the requester after the request timeout.
    pub fn lose(&mut self, count: usize, pred: impl FnMut(&Traffic) -> bool + 'static) {
        self.losses.push(LossRule { left: count, pred: Box::new(pred) });
    }

    /// Silently loses everything between `a` and `b`, in flight or to come.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
    }
    pub fn heal(&mut self, a: usize, b: usize) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }
    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }
    /// Cuts `i` off from everyone, silently: nobody is told the links went down.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }
    /// Heals every link of `i`; both ends of each are told it is up again.
    pub fn rejoin(&mut self, i: usize) {
        for j in 0..self.len() {
            if j != i {
                self.connect(i, j);
            }
        }
    }
    /// Heals the link and tells both ends it is up (each starts a sync).
    pub fn connect(&mut self, a: usize, b: usize) {
        self.heal(a, b);
        self.link_up(a, b);
    }

    /// Stops node `i`; its store stays, as a disk does. Its peers see the
    /// connection close.
    pub fn crash(&mut self, i: usize) {
        let Some(core) = self.members[i].core.take() else { return };
        let m = &mut self.members[i];
        m.kept = Some(core.into_store());
        m.inc += 1;
        m.inbound.clear();
        m.outstanding.clear();
        m.building.clear();
        let p = m.peer;
        for j in 0..self.len() {
            if j != i {
                self.input(j, Input::PeerDisconnected(p));
            }
        }
    }
    /// Boots node `i` again from its store; its links that are not cut come up.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.is_up(i), "node {i} is already up");
        self.boot(i);
        for j in 0..self.len() {
            if j != i {
                self.link_up(i, j);
            }
        }
    }

    // ---- running ----

    /// When the next thing happens: a node's timer or an arrival.
    pub fn next_wake(&self) -> Millis {
        let timers = self.members.iter().filter_map(|m| m.core.as_ref()).map(|c| c.next_timeout());
        let arrival = self.flights.keys().next().map(|(at, _)| *at);
        timers.chain(arrival).min().unwrap_or(Millis::MAX)
    }

    /// Jumps to the next wake-up and handles everything due then.
    pub fn step(&mut self) -> Result<(), Stuck> {
        let at = self.next_wake();
        if at == Millis::MAX {
            return Err(self.stuck("nothing will ever happen: no node is up and nothing is in flight"));
        }
        self.now = self.now.max(at);
        for _ in 0..MAX_ROUNDS_PER_INSTANT {
            let mut busy = false;
            while let Some(entry) = self.flights.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let carry = entry.remove();
                self.deliver(carry);
                busy = true;
            }
            for i in 0..self.len() {
                if self.members[i].core.as_ref().is_some_and(|c| c.next_timeout() <= self.now) {
                    self.input(i, Input::Tick);
                    busy = true;
                }
            }
            if !busy {
                return Ok(());
            }
        }
        Err(self.stuck("livelock: still busy at one instant after many rounds (a timer that never moves on?)"))
    }

    /// Steps until `done` holds; an error with every node's state if it
    /// does not within `max_ms` of virtual time.
    pub fn run_until(
        &mut self,
        what: &str,
        max_ms: Millis,
        mut done: impl FnMut(&Net) -> bool,
    ) -> Result<Millis, Stuck> {
        let deadline = self.now + max_ms;
        for _ in 0..MAX_STEPS {
            if done(self) {
                return Ok(self.now);
            }
            if self.next_wake() > deadline {
                return Err(self.stuck(&format!("{what}: not done within {max_ms} ms")));
            }
            self.step()?;
        }
        Err(self.stuck(&format!("{what}: not done within {MAX_STEPS} steps")))
    }

    /// Runs `ms` of virtual time.
    pub fn run_for(&mut self, ms: Millis) -> Result<(), Stuck> {
        let until = self.now + ms;
        for _ in 0..MAX_STEPS {
            if self.next_wake() > until {
                self.now = until;
                return Ok(());
            }
            self.step()?;
        }
        Err(self.stuck(&format!("run_for({ms}): more than {MAX_STEPS} steps")))
    }

    /// One line per message sent, for reading a failing test.
    pub fn traffic_text(&self) -> String {
        let mut s = String::new();
        for t in &self.traffic {
            let what = match &t.wire {
                Wire::Gossip(g) => format!("{g:?}").chars().take(60).collect(),
                Wire::Request(r) => request_kind(r).to_string(),
                Wire::Response(r) => format!("{r:?}").chars().take(60).collect(),
                Wire::Undecodable(n) => format!("{n} undecodable bytes"),
            };
            let lost = if t.lost { " LOST" } else { "" };
            s += &format!("t={} {}->{} {what}{lost}\n", t.at, t.from, t.to);
        }
        s
    }

    /// Every up node holds the same records.
    pub fn converged(&self) -> bool {
        let up: Vec<usize> = (0..self.len()).filter(|i| self.is_up(*i)).collect();
        up.windows(2).all(|w| self.node(w[0]).store().ids() == self.node(w[1]).store().ids())
    }

    fn stuck(&self, what: &str) -> Stuck {
        let mut s = format!("{what}\nat t={} ms, {} messages in flight\n", self.now, self.flights.len());
        for (i, m) in self.members.iter().enumerate() {
            let Some(c) = &m.core else {
                s += &format!("node {i}: down, {} records on disk\n", self.ids(i).len());
                continue;
            };
            let p = c.sync_progress();
            let kinds: Vec<&str> = m.outstanding.values().map(request_kind).collect();
            s += &format!(
                "node {i}: {} records, to_fetch {}, fetched {}, sessions {}, next timeout {}, requests out {:?}\n",
                c.store().record_count(),
                p.to_fetch,
                p.fetched,
                p.sessions,
                c.next_timeout(),
                kinds
            );
        }
        Stuck(s)
    }

    // ---- plumbing ----

    fn boot(&mut self, i: usize) {
        let m = &mut self.members[i];
        let store = m.kept.take().unwrap_or_default();
        let mut core = NodeCore::new(m.cfg.clone(), m.key.clone(), store, self.now);
        core.set_verifier(self.verifier.clone());
        m.core = Some(core);
        self.drain(i);
    }

    fn link_up(&mut self, a: usize, b: usize) {
        if self.is_up(a) && self.is_up(b) && !self.is_cut(a, b) {
            self.input(a, Input::PeerConnected(self.peer(b)));
            self.input(b, Input::PeerConnected(self.peer(a)));
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        if let Some(core) = self.members[i].core.as_mut() {
            core.handle(now, input);
            self.drain(i);
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.members[i].core.as_mut().and_then(|c| c.poll_output()) {
            self.route(i, out);
        }
    }

    fn route(&mut self, i: usize, out: Output) {
        match out {
            Output::Broadcast(bytes) => {
                for j in (0..self.len()).filter(|j| *j != i) {
                    let wire = decode_gossip(&bytes);
                    self.send(i, j, wire, Carry::Gossip { from: i, to: j, bytes: bytes.clone() });
                }
            }
            Output::Request { peer, id, bytes } => self.send_request(i, peer, id, bytes),
            Output::Reply { id, bytes } => {
                let Some(asked) = self.members[i].inbound.remove(&id) else { return };
                let wire = wire::decode_response(&bytes).map(Wire::Response).unwrap_or(Wire::Undecodable(bytes.len()));
                let (to, to_inc, id, sent) = (asked.from, asked.from_inc, asked.id, asked.sent);
                self.send(i, to, wire, Carry::Reply { from: i, to, to_inc, id, sent, bytes });
            }
            // A full mesh: every node got the message from its sender, nothing to forward.
            Output::Verdict { .. } => {}
            Output::StartBuild(order) => self.start_build(i, order),
            Output::CancelBuild { job, attempt } => {
                if self.members[i].building.remove(&(job, attempt)) {
                    let outcome = BuildOutcome { job, attempt, cancelled: true, ..Default::default() };
                    let inc = self.members[i].inc;
                    self.schedule(self.now + 1, Carry::BuildDone { node: i, inc, outcome });
                }
            }
            Output::Disconnect { .. } => {}
            Output::Event(e) => self.members[i].events.push((self.now, e)),
        }
    }

    fn send_request(&mut self, i: usize, peer: PeerId, id: u64, bytes: Vec<u8>) {
        let req = wire::decode_request(&bytes).expect("the core sends well-formed requests");
        let m = &mut self.members[i];
        m.outstanding.insert(id, req.clone());
        let transfers = m.outstanding.values().filter(|r| is_record_transfer(r)).count();
        m.peak_record_transfers = m.peak_record_transfers.max(transfers);
        let from_inc = m.inc;
        match self.by_peer.get(&peer).copied() {
            Some(to) => {
                let carry = Carry::Request { from: i, from_inc, to, id, sent: self.now, bytes };
                self.send(i, to, Wire::Request(req), carry);
            }
            None => self.fail(i, from_inc, id, self.now, "unknown peer"),
        }
    }

    fn start_build(&mut self, i: usize, order: BuildOrder) {
        self.started.push((self.now, i, order.clone()));
        self.members[i].building.insert((order.job, order.attempt));
        let Some(plan) = self.plan.clone() else { return };
        let steps = plan
            .step_logs
            .iter()
            .enumerate()
            .map(|(k, len)| StepOutcome {
                name: format!("step{k}"),
                command: "make".into(),
                exit_code: Some(0),
                duration_ms: plan.duration_ms,
                log: log_text(&order.job, order.attempt, k, *len),
                ..Default::default()
            })
            .collect();
        let end = self.now + plan.duration_ms;
        let outcome = BuildOutcome {
            job: order.job,
            attempt: order.attempt,
            started_ms: self.now,
            ended_ms: end,
            steps,
            ..Default::default()
        };
        let inc = self.members[i].inc;
        self.schedule(end, Carry::BuildDone { node: i, inc, outcome });
    }

    /// Logs the message, applies the loss rules and puts it on the wire.
    fn send(&mut self, from: usize, to: usize, wire: Wire, carry: Carry) {
        let mut t = Traffic { at: self.now, from, to, wire, lost: false };
        t.lost = self.losses.iter_mut().any(|r| {
            let take = r.left > 0 && (r.pred)(&t);
            r.left -= take as usize;
            take
        });
        self.traffic.push(t);
        if self.traffic.last().is_some_and(|t| t.lost) {
            match carry {
                Carry::Request { from, from_inc, id, sent, .. } => self.fail(from, from_inc, id, sent, "lost"),
                Carry::Reply { to, to_inc, id, sent, .. } => self.fail(to, to_inc, id, sent, "lost"),
                _ => {}
            }
            return;
        }
        self.schedule(self.now + LATENCY_MS, carry);
    }

    /// The requester hears of the failure when its request times out.
    fn fail(&mut self, to: usize, to_inc: u32, id: u64, sent: Millis, why: &str) {
        let at = (sent + REQUEST_TIMEOUT_MS).max(self.now);
        self.schedule(at, Carry::Failed { to, to_inc, id, reason: format!("timed out ({why})") });
    }

    fn schedule(&mut self, at: Millis, carry: Carry) {
        self.seq += 1;
        self.flights.insert((at, self.seq), carry);
    }

    fn alive(&self, i: usize, inc: u32) -> bool {
        self.is_up(i) && self.members[i].inc == inc
    }

    fn deliver(&mut self, carry: Carry) {
        match carry {
            Carry::Gossip { from, to, bytes } => {
                if self.is_up(to) && !self.is_cut(from, to) {
                    self.seq += 1;
                    let input = Input::Gossip { from: self.peer(from), token: self.seq, bytes };
                    self.input(to, input);
                }
            }
            Carry::Request { from, from_inc, to, id, sent, bytes } => {
                if !self.is_up(to) || self.is_cut(from, to) {
                    return self.fail(from, from_inc, id, sent, "unreachable");
                }
                let m = &mut self.members[to];
                let local = m.next_inbound;
                m.next_inbound += 1;
                m.inbound.insert(local, Inbound { from, from_inc, id, sent });
                self.input(to, Input::Request { from: self.peer(from), id: local, bytes });
            }
            Carry::Reply { from, to, to_inc, id, sent, bytes } => {
                if !self.alive(to, to_inc) {
                    return;
                }
                if self.is_cut(from, to) {
                    return self.fail(to, to_inc, id, sent, "unreachable");
                }
                self.members[to].outstanding.remove(&id);
                self.input(to, Input::Response { id, bytes });
            }
            Carry::Failed { to, to_inc, id, reason } => {
                if self.alive(to, to_inc) && self.members[to].outstanding.remove(&id).is_some() {
                    self.input(to, Input::RequestFailed { id, reason });
                }
            }
            Carry::BuildDone { node, inc, outcome } => {
                if !self.alive(node, inc) {
                    return;
                }
                let ran = self.members[node].building.remove(&(outcome.job, outcome.attempt));
                if ran || outcome.cancelled {
                    self.input(node, Input::BuildFinished(outcome));
                }
            }
        }
    }
}

fn decode_gossip(bytes: &[u8]) -> Wire {
    wire::decode_gossip(bytes).map(Wire::Gossip).unwrap_or(Wire::Undecodable(bytes.len()))
}

/// Record fetches and pushes, which each take one of the core's transfer
/// slots. Log copies for replication take one too, but on the wire they
/// look like `fetch_blob`'s chunk requests, which take none.
pub fn is_record_transfer(r: &Request) -> bool {
    matches!(r, Request::GetRecords { .. } | Request::PushRecords { .. })
}

pub fn request_kind(r: &Request) -> &'static str {
    match r {
        Request::Reconcile { .. } => "reconcile",
        Request::GetRecords { .. } => "get_records",
        Request::PushRecords { .. } => "push_records",
        Request::GetBlob { .. } => "get_blob",
        Request::Hello { .. } => "hello",
    }
}

// ---- fixtures ----

pub const RECIPE: &str = "[[builder]]\nname = 'linux'\nrequires = ['os=linux']\n[[builder.step]]\nrun = 'make'\n";

/// Commit number `n` of `/repo` on `main`, with a one-builder recipe.
pub fn commit(n: u64) -> CommitInfo {
    CommitInfo {
        repo: "/repo".into(),
        branch: "main".into(),
        commit: format!("{n:040x}"),
        parents: vec![],
        author: "A <a@example.org>".into(),
        committer: "A <a@example.org>".into(),
        commit_time: n as i64,
        title: format!("commit {n}"),
        files: vec![],
        recipe: Ok(RECIPE.into()),
    }
}

/// Changes with no jobs, numbered `range`, signed by a key no node uses,
/// one virtual minute apart: history to reconcile without builds.
pub fn jobless_changes(range: std::ops::Range<u64>) -> Vec<VerifiedRecord> {
    let key = deterministic_key(1_000_000);
    range
        .map(|n| {
            let change = Change {
                repo: "/history".into(),
                branch: "main".into(),
                commit: format!("{n:040x}"),
                title: format!("old commit {n}"),
                recipe_error: Some("no recipe".into()),
                announced_ms: 1_000 + n * 60_000,
                ..Default::default()
            };
            record::sign(&key, &Body::Change(change))
        })
        .collect()
}

/// A build log of exactly `len` bytes, different for each job, attempt and
/// step, with nothing that reads as a warning or a test summary.
pub fn log_text(job: &Hash32, attempt: u32, step: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 80);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("job {} attempt {attempt} step {step} line {line}\n", job.short()).as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// The build results node `i` holds for `job`.
pub fn results(net: &Net, i: usize, job: &Hash32) -> Vec<BuildResult> {
    let core = net.node(i);
    core.results_of(job)
        .iter()
        .filter_map(|id| core.store().get_record(id))
        .filter_map(|b| match record::decode_stored(&b).ok()?.body {
            Body::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}
