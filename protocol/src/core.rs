//! `NodeCore`: the whole decision-making of one node, as a state machine.
//!
//! The runtime (the `peerbot` node, or the simulator) calls
//! [`NodeCore::handle`] with the current time and an input, drains
//! [`NodeCore::poll_output`], and calls `handle(now, Input::Tick)` again no
//! later than [`NodeCore::next_timeout`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use libp2p_identity::{Keypair, PeerId};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_bytes::ByteBuf;

use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::labels::{satisfies, MAX_LABELS};
use crate::logparse::{count_tests, count_warnings};
use crate::recipe::{parse_recipe, JobSpec, StepSpec};
use crate::record::{self, BlobRef, Body, BuildResult, Change, Status, StepResult, VerifiedRecord};
use crate::store::Store;
use crate::sync;
use crate::wire::{self, Claim, Gossip, Heartbeat, Lease, Request, Response};
use crate::Millis;

/// Step logs are cut at this size, with a marker at the cut.
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
const MAX_SYNC_ROUNDS: u32 = 64;
const RECORD_BATCH_BYTES: usize = 2 * 1024 * 1024;
const OWN_CLAIMS_KEY: &str = "own_claims";
/// Claims for jobs not yet known are kept up to this many.
const MAX_EARLY_CLAIMS: usize = 10_000;
/// Record fetches, pushes and log copies in flight at once; the rest wait.
const MAX_TRANSFERS: usize = 4;
/// Tokens of blob fetches the core makes for itself (replication).
const REPLICATION_TOKEN: u64 = 1 << 63;
const RETENTION_KEY: &str = "retention_cursor";
const RETENTION_EVERY_MS: u64 = 60_000;
const RETENTION_BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct Config {
    /// All of this node's labels, platform ones included.
    pub labels: Vec<String>,
    pub executors: u32,
    /// Shortest interval between this node's heartbeats. The interval grows
    /// with the cluster so that all nodes together send about
    /// `cluster_heartbeats_per_sec` heartbeats a second.
    pub heartbeat_ms: u64,
    pub cluster_heartbeats_per_sec: u64,
    /// A peer is live while heard within max(this, 3 of its heartbeat
    /// intervals + 1 s).
    pub liveness_ms: u64,
    /// The node at rank r waits r times this before claiming.
    pub claim_stagger_ms: u64,
    pub lease_ms: u64,
    pub sync_interval_ms: u64,
    /// No claims until the node has been up this long, so that it has had
    /// time to hear its peers' heartbeats before it ranks anyone.
    pub warmup_ms: u64,
    /// Seed of the node's random choices (sync partner, blob source order).
    pub seed: u64,
    /// Every step log is kept by the this many live nodes that rank highest
    /// for its hash (the builder counts among them if it ranks there; it
    /// keeps its own logs anyway, as does anyone who asked for one).
    pub log_replicas: usize,
    /// Logs of results older than this are dropped locally; records stay.
    pub log_horizon_ms: Option<u64>,
}

impl Config {
    pub fn new(labels: Vec<String>, executors: u32) -> Self {
        let heartbeat_ms = 2_000;
        Config {
            labels,
            executors,
            heartbeat_ms,
            cluster_heartbeats_per_sec: 2,
            liveness_ms: 3 * heartbeat_ms + 1_000,
            claim_stagger_ms: 2_000,
            lease_ms: 30_000,
            sync_interval_ms: 15_000,
            warmup_ms: 2 * heartbeat_ms,
            seed: 0,
            log_replicas: 3,
            log_horizon_ms: None,
        }
    }
}

/// What the runtime feeds the core.
#[derive(Debug)]
pub enum Input {
    Tick,
    /// A gossip message; `token` identifies it for the verdict.
    Gossip {
        from: PeerId,
        token: u64,
        bytes: Vec<u8>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    Request {
        from: PeerId,
        id: u64,
        bytes: Vec<u8>,
    },
    Response {
        id: u64,
        bytes: Vec<u8>,
    },
    RequestFailed {
        id: u64,
        reason: String,
    },
    BuildProgress {
        job: Hash32,
        attempt: u32,
        step: String,
    },
    BuildFinished(BuildOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: forward it.
    Accept,
    /// Valid but nothing new: do not forward.
    Ignore,
    /// Invalid: do not forward, penalise the sender.
    Reject,
}

/// What the core asks the runtime to do.
#[derive(Debug)]
pub enum Output {
    Broadcast(Vec<u8>),
    Request { peer: PeerId, id: u64, bytes: Vec<u8> },
    Reply { id: u64, bytes: Vec<u8> },
    Verdict { token: u64, verdict: Verdict },
    StartBuild(BuildOrder),
    CancelBuild { job: Hash32, attempt: u32 },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildOrder {
    pub job: Hash32,
    pub attempt: u32,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub builder: String,
    pub steps: Vec<StepSpec>,
}

#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    pub name: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub log: Vec<u8>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Default)]
pub struct BuildOutcome {
    pub job: Hash32,
    pub attempt: u32,
    pub started_ms: Millis,
    pub ended_ms: Millis,
    pub steps: Vec<StepOutcome>,
    /// The build could not run (fetch or checkout failed, ...).
    pub error: Option<String>,
    pub cancelled: bool,
}

/// What happened, for logs, metrics and the UI.
#[derive(Debug, Clone)]
pub enum Event {
    RecordStored {
        id: Hash32,
        kind: &'static str,
        signer: PeerId,
        from: Option<PeerId>,
    },
    RecordRejected {
        from: PeerId,
        reason: String,
    },
    MessageRejected {
        from: PeerId,
        reason: String,
    },
    Claimed {
        job: Hash32,
        attempt: u32,
        by: PeerId,
    },
    ClaimConflict {
        job: Hash32,
        attempt: u32,
        winner: PeerId,
        loser: PeerId,
    },
    LeaseExpired {
        job: Hash32,
        attempt: u32,
        holder: PeerId,
    },
    Released {
        job: Hash32,
        attempt: u32,
        by: PeerId,
        reason: String,
    },
    BuildStarted {
        job: Hash32,
        attempt: u32,
    },
    BuildPublished {
        job: Hash32,
        attempt: u32,
        status: Status,
        record: Hash32,
    },
    BlobFetched {
        token: u64,
        hash: Hash32,
        ok: bool,
        detail: String,
    },
    SyncFinished {
        peer: PeerId,
        rounds: u32,
        need: usize,
        have: usize,
    },
    SyncFailed {
        peer: PeerId,
        reason: String,
    },
    /// A peer's heartbeat named new addresses to reach it at.
    PeerAddrs {
        peer: PeerId,
        addrs: Vec<String>,
    },
    /// Catching up: records still to fetch, and fetched so far.
    CatchingUp {
        to_fetch: usize,
        fetched: u64,
    },
    LogsExpired {
        blobs: usize,
    },
    StoreFailed {
        reason: String,
    },
}

/// What a watcher or an announce request saw at a commit.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub parents: Vec<String>,
    pub author: String,
    pub committer: String,
    pub commit_time: i64,
    pub title: String,
    pub files: Vec<String>,
    /// The text of `.peerbot.toml` at the commit, or why it could not be read.
    pub recipe: Result<String, String>,
}

impl CommitInfo {
    fn into_change(
        self,
        jobs: Vec<JobSpec>,
        recipe_error: Option<String>,
        now: Millis,
        force: Option<record::Force>,
    ) -> Change {
        Change {
            repo: self.repo,
            branch: self.branch,
            commit: self.commit,
            parents: self.parents,
            author: self.author,
            committer: self.committer,
            commit_time: self.commit_time,
            title: self.title,
            files: self.files.into_iter().take(1000).collect(),
            jobs,
            recipe_error,
            announced_ms: now,
            force,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Announced {
    New(Hash32),
    Known(Hash32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimView {
    pub by: PeerId,
    pub attempt: u32,
    pub claimed_ms: Millis,
    pub lease_until: Millis,
    pub step: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobView {
    pub spec: JobSpec,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub change: Hash32,
    pub attempt: u32,
    /// When the current attempt opened here; ranks count stagger from it.
    pub opened_ms: Millis,
    pub claim: Option<ClaimView>,
    /// Attempts whose claimant went silent or gave up, with who held them.
    pub lost: Vec<(u32, PeerId, String)>,
    /// When this node first learned of the job.
    pub seen_ms: Millis,
    /// Not claimable before this (the builder's tree-stable timer).
    pub not_before: Millis,
    /// A newer change on the branch took this job's place (collapsing).
    pub superseded_by: Option<Hash32>,
    /// A user cancelled the job: why, and through which node.
    pub cancelled: Option<(String, PeerId)>,
    pub commit_time: i64,
    pub forced: bool,
    /// Which eligible peers had a free slot when last ranked, and since when.
    free_sig: u64,
    free_since: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Claimed,
    Done,
    Superseded,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct PeerView {
    pub labels: Vec<String>,
    pub executors: u32,
    pub busy: u32,
    pub last_heard: Millis,
    /// Held a lease that ran out; out of the ranking until heard again.
    pub suspect: bool,
    pub connected: bool,
    /// The heartbeat interval the peer announced.
    pub interval_ms: u64,
    /// Liveness as of the last sweep; changes bump the membership generation.
    pub live: bool,
    /// Where the peer says it can be reached.
    pub addrs: Vec<String>,
    key: u64,
}

impl PeerView {
    fn new(peer: &PeerId) -> Self {
        PeerView {
            labels: vec![],
            executors: 0,
            busy: 0,
            last_heard: 0,
            suspect: false,
            connected: false,
            interval_ms: 0,
            live: false,
            addrs: vec![],
            key: peer_key(peer),
        }
    }
}

/// Checks a record's signature; the simulator shares one cache of results
/// across its many nodes, the node checks every time.
pub trait Verify: Send + Sync {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, record::RecordError>;
}

pub struct SignatureCheck;

impl Verify for SignatureCheck {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, record::RecordError> {
        record::verify(bytes)
    }
}

enum Pending {
    Sync { peer: PeerId, round: u32 },
    Fetch { peer: PeerId, count: usize },
    Push,
    Blob { token: u64, hash: Hash32, rest: Vec<PeerId>, peer: PeerId, buf: Vec<u8> },
}

/// How a late or returning node is doing at catching up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncProgress {
    /// Records known to be missing and not yet fetched.
    pub to_fetch: usize,
    /// Records fetched by reconciliation since start.
    pub fetched: u64,
    /// Reconciliation sessions under way.
    pub sessions: usize,
}

#[derive(Default)]
struct SyncTally {
    need: usize,
    have: usize,
}

pub struct NodeCore<S: Store> {
    cfg: Config,
    key: Keypair,
    me: PeerId,
    store: S,
    rng: ChaCha8Rng,
    started_ms: Millis,
    out: VecDeque<Output>,
    /// Hashed with fixed keys: iteration order must not vary between runs.
    peers: HashMap<PeerId, PeerView, rustc_hash::FxBuildHasher>,
    jobs: HashMap<Hash32, JobView, rustc_hash::FxBuildHasher>,
    /// Jobs with no result yet.
    open: BTreeSet<Hash32>,
    results_by_job: HashMap<Hash32, Vec<Hash32>, rustc_hash::FxBuildHasher>,
    changes_by_commit: BTreeMap<(String, String), Hash32>,
    /// Claims heard before the change that defines the job.
    early_claims: BTreeMap<Hash32, (PeerId, Claim, Millis)>,
    running: BTreeMap<Hash32, (u32, Option<String>)>,
    pending: BTreeMap<u64, Pending>,
    syncing: BTreeMap<PeerId, SyncTally>,
    next_request: u64,
    heartbeat_seq: u64,
    next_heartbeat: Millis,
    next_renew: Millis,
    next_sync: Millis,
    next_sweep: Millis,
    next_due: Millis,
    /// Something happened that may change what to claim.
    dirty: bool,
    /// When this node last finished a build: others learn it is free only
    /// when its result reaches them, so it waits a little before claiming.
    freed_ms: Millis,
    /// Cancel records, by job (the job may not be known yet).
    cancels: HashMap<Hash32, (String, PeerId), rustc_hash::FxBuildHasher>,
    /// Open jobs of collapsing builders, by (repo, branch, builder).
    collapsible: BTreeMap<(String, String, String), Vec<Hash32>>,
    listen_addrs: Vec<String>,
    /// A reconciliation with some peer has completed since start.
    synced_once: bool,
    transfers: VecDeque<(PeerId, Request, Pending)>,
    transfers_in_flight: usize,
    progress: SyncProgress,
    progress_said_ms: Millis,
    next_replication: u64,
    serving_blob: Option<(Hash32, Vec<u8>)>,
    next_retention: Millis,
    replaying: bool,
    /// Claims this node gave up at restart, repeated with early heartbeats.
    pending_releases: Vec<(Hash32, u32)>,
    release_repeats: u8,
    /// Bumped when the live peers or their labels change.
    generation: u64,
    live_peers: usize,
    eligible_cache: BTreeMap<Vec<String>, (u64, Vec<(u64, PeerId, u32)>)>,
    my_key: u64,
    verifier: std::sync::Arc<dyn Verify>,
}

/// A peer's fixed rendezvous key, hashed once.
pub fn peer_key(peer: &PeerId) -> u64 {
    Hash32::of_fields("peerbot.rank.v1", &[&peer.to_bytes()]).prefix_u64()
}

/// 64-bit finaliser (MurmurHash3's fmix64): a cheap, well-mixed function
/// of (job, peer), evaluated for every eligible peer of every job.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub fn score(job: &Hash32, key: u64) -> u64 {
    mix(job.prefix_u64() ^ key)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Rendezvous order: higher score first, PeerId breaks ties. Every node
/// computes the same order from the same set of peers.
pub fn rank(job: &Hash32, peers: &mut [PeerId]) {
    peers.sort_by_cached_key(|p| (std::cmp::Reverse(score(job, peer_key(p))), *p));
}

/// The winner of two claims for one job and attempt.
pub fn claim_winner(job: &Hash32, a: PeerId, b: PeerId) -> PeerId {
    let mut both = [a, b];
    rank(job, &mut both);
    both[0]
}

impl<S: Store> NodeCore<S> {
    pub fn new(mut cfg: Config, key: Keypair, store: S, now: Millis) -> Self {
        // Hear at least one round of lease renewals before claiming: a
        // restarted node must learn what others are building first.
        cfg.warmup_ms = cfg.warmup_ms.max(cfg.lease_ms / 3 + cfg.heartbeat_ms);
        let me = key.public().to_peer_id();
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut core = NodeCore {
            me,
            key,
            store,
            rng,
            started_ms: now,
            out: VecDeque::new(),
            peers: HashMap::default(),
            jobs: HashMap::default(),
            open: BTreeSet::new(),
            results_by_job: HashMap::default(),
            changes_by_commit: BTreeMap::new(),
            early_claims: BTreeMap::new(),
            running: BTreeMap::new(),
            pending: BTreeMap::new(),
            syncing: BTreeMap::new(),
            next_request: 1,
            heartbeat_seq: 0,
            next_heartbeat: now,
            next_renew: Millis::MAX,
            next_sync: now + cfg.sync_interval_ms,
            next_sweep: now,
            next_due: now,
            dirty: true,
            freed_ms: 0,
            cancels: HashMap::default(),
            collapsible: BTreeMap::new(),
            listen_addrs: Vec::new(),
            synced_once: false,
            transfers: VecDeque::new(),
            transfers_in_flight: 0,
            progress: SyncProgress::default(),
            progress_said_ms: 0,
            next_replication: 0,
            serving_blob: None,
            next_retention: now + RETENTION_EVERY_MS,
            replaying: true,
            pending_releases: Vec::new(),
            release_repeats: 3,
            generation: 0,
            live_peers: 0,
            eligible_cache: BTreeMap::new(),
            my_key: peer_key(&me),
            verifier: std::sync::Arc::new(SignatureCheck),
            cfg,
        };
        let mut stored = Vec::new();
        core.store.for_each_record(&mut |b| {
            if let Ok(r) = record::decode_stored(b) {
                stored.push(r)
            }
        });
        for r in stored {
            core.apply(now, &r);
        }
        core.replaying = false;
        // Claims held when the node stopped: their builds died with it.
        // Say so rather than let the leases run out silently.
        for (job, attempt) in core.load_own_claims() {
            if core.open.contains(&job) {
                // Sent with the next few heartbeats: right after a start
                // there is nobody to hear a broadcast yet.
                core.pending_releases.push((job, attempt));
                if let Some(j) = core.jobs.get_mut(&job) {
                    if j.attempt <= attempt {
                        j.lost.push((attempt, me, "claimant restarted".into()));
                        j.attempt = attempt + 1;
                        j.claim = None;
                        j.opened_ms = now;
                    }
                }
            }
        }
        core.save_own_claims();
        core
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
    /// Gives the store back, as a crash leaves the disk behind.
    pub fn into_store(self) -> S {
        self.store
    }
    pub fn jobs(&self) -> &HashMap<Hash32, JobView, rustc_hash::FxBuildHasher> {
        &self.jobs
    }
    pub fn results_of(&self, job: &Hash32) -> &[Hash32] {
        self.results_by_job.get(job).map(|v| v.as_slice()).unwrap_or(&[])
    }
    pub fn job_state(&self, job: &Hash32) -> JobState {
        let view = self.jobs.get(job);
        if self.results_by_job.contains_key(job) {
            JobState::Done
        } else if self.cancels.contains_key(job) {
            JobState::Cancelled
        } else if view.is_some_and(|j| j.superseded_by.is_some() && j.claim.is_none()) {
            JobState::Superseded
        } else if self.jobs.get(job).is_some_and(|j| j.claim.is_some()) {
            JobState::Claimed
        } else {
            JobState::Pending
        }
    }
    pub fn peers(&self) -> &HashMap<PeerId, PeerView, rustc_hash::FxBuildHasher> {
        &self.peers
    }
    pub fn running(&self) -> &BTreeMap<Hash32, (u32, Option<String>)> {
        &self.running
    }
    /// Where this node can be reached; sent with heartbeats.
    pub fn set_listen_addrs(&mut self, addrs: Vec<String>) {
        self.listen_addrs = addrs.into_iter().filter(|a| a.len() <= wire::MAX_ADDR_LEN).take(wire::MAX_ADDRS).collect();
    }

    pub fn set_verifier(&mut self, v: std::sync::Arc<dyn Verify>) {
        self.verifier = v;
    }

    fn peer_live(&self, now: Millis, v: &PeerView) -> bool {
        let window = self.cfg.liveness_ms.max(3 * v.interval_ms + 1_000);
        v.last_heard > 0 && !v.suspect && now.saturating_sub(v.last_heard) <= window
    }

    pub fn is_live(&self, now: Millis, p: &PeerId) -> bool {
        if *p == self.me {
            return true;
        }
        self.peers.get(p).is_some_and(|v| self.peer_live(now, v))
    }

    /// This node's heartbeat interval for the cluster size it sees.
    pub fn heartbeat_interval(&self) -> u64 {
        let n = self.live_peers as u64 + 1;
        self.cfg.heartbeat_ms.max(n * 1000 / self.cfg.cluster_heartbeats_per_sec.max(1))
    }

    /// Re-reads liveness; a peer going silent or coming back changes the
    /// membership generation, which the eligibility cache keys on.
    fn sweep(&mut self, now: Millis) {
        let mut changed = false;
        let mut live = 0;
        let peers: Vec<(PeerId, bool)> = self.peers.iter().map(|(p, v)| (*p, self.peer_live(now, v))).collect();
        for (p, l) in peers {
            if let Some(v) = self.peers.get_mut(&p) {
                if v.live != l {
                    v.live = l;
                    changed = true;
                }
            }
            live += l as usize;
        }
        self.live_peers = live;
        if changed {
            self.generation += 1;
            self.dirty = true;
        }
    }

    /// Live peers with all the labels, as (rendezvous key, id), cached per
    /// label set until membership changes.
    /// (rendezvous key, id, executors) of each eligible live peer.
    fn eligible_keys(&mut self, requires: &[String]) -> &[(u64, PeerId, u32)] {
        let gen = self.generation;
        let fresh = self.eligible_cache.get(requires).is_some_and(|(g, _)| *g == gen);
        if !fresh {
            let mut v: Vec<(u64, PeerId, u32)> = self
                .peers
                .iter()
                .filter(|(_, view)| view.live && satisfies(&view.labels, requires))
                .map(|(p, view)| (view.key, *p, view.executors.max(1)))
                .collect();
            if satisfies(&self.cfg.labels, requires) {
                v.push((self.my_key, self.me, self.cfg.executors));
            }
            if self.eligible_cache.len() > 256 {
                self.eligible_cache.clear();
            }
            self.eligible_cache.insert(requires.to_vec(), (gen, v));
        }
        &self.eligible_cache[requires].1
    }
    /// Live peers (this node included) that have every required label.
    pub fn eligible(&self, now: Millis, requires: &[String]) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, view)| self.is_live(now, p) && satisfies(&view.labels, requires))
            .map(|(p, _)| *p)
            .collect();
        if satisfies(&self.cfg.labels, requires) {
            v.push(self.me);
        }
        v
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn next_timeout(&self) -> Millis {
        self.next_heartbeat
            .min(self.next_sync)
            .min(self.next_due)
            .min(self.next_renew)
            .min(self.next_sweep)
            .min(self.next_retention)
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn broadcast(&mut self, g: &Gossip) {
        self.out.push_back(Output::Broadcast(wire::encode_gossip(g)));
    }

    fn request(&mut self, peer: PeerId, req: &Request, p: Pending) {
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, p);
        self.out.push_back(Output::Request { peer, id, bytes: wire::encode_request(req) });
    }

    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Tick => {}
            Input::Gossip { from, token, bytes } => {
                let verdict = self.on_gossip(now, from, &bytes);
                self.out.push_back(Output::Verdict { token, verdict });
            }
            Input::PeerConnected(p) => {
                self.peers.entry(p).or_insert_with(|| PeerView::new(&p)).connected = true;
                self.start_sync(p);
            }
            Input::PeerDisconnected(p) => {
                if let Some(v) = self.peers.get_mut(&p) {
                    v.connected = false;
                }
            }
            Input::Request { from, id, bytes } => {
                let resp = self.on_request(now, from, &bytes);
                self.out.push_back(Output::Reply { id, bytes: wire::encode_response(&resp) });
            }
            Input::Response { id, bytes } => self.on_response(now, id, &bytes),
            Input::RequestFailed { id, reason } => self.on_request_failed(id, reason),
            Input::BuildProgress { job, attempt, step } => {
                if let Some(r) = self.running.get_mut(&job) {
                    if r.0 == attempt {
                        r.1 = Some(step.clone());
                    }
                }
                if let Some(c) = self.jobs.get_mut(&job).and_then(|j| j.claim.as_mut()) {
                    if c.by == self.me && c.attempt == attempt {
                        c.step = Some(step);
                    }
                }
            }
            Input::BuildFinished(o) => self.on_build_finished(now, o),
        }
        if self.dirty || now >= self.next_timeout() {
            self.timers(now);
        }
    }

    fn timers(&mut self, now: Millis) {
        self.dirty = false;
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + (self.heartbeat_interval() / 4).max(500);
        }
        if now >= self.next_heartbeat {
            self.send_heartbeat(now);
            self.next_heartbeat = now + self.heartbeat_interval();
        }
        if now >= self.next_renew {
            self.send_renewals(now);
        }
        if now >= self.next_retention {
            self.next_retention = now + RETENTION_EVERY_MS;
            self.expire_logs(now);
        }
        if now >= self.next_sync {
            let mut connected: Vec<PeerId> = self.peers.iter().filter(|(_, v)| v.connected).map(|(p, _)| *p).collect();
            connected.sort_unstable();
            if let Some(p) = connected.choose(&mut self.rng).copied() {
                self.start_sync(p);
            }
            self.next_sync = now + self.cfg.sync_interval_ms;
        }
        self.check_leases(now);
        self.consider_claims(now);
    }

    /// This node's running builds as leases, renewed in its own view too.
    fn own_leases(&mut self, now: Millis) -> Vec<Lease> {
        let leases: Vec<Lease> = self
            .running
            .iter()
            .take(wire::MAX_RUNNING_IN_HEARTBEAT)
            .map(|(job, (attempt, step))| Lease { job: *job, attempt: *attempt, step: step.clone() })
            .collect();
        for l in &leases {
            if let Some(c) = self.jobs.get_mut(&l.job).and_then(|j| j.claim.as_mut()) {
                if c.by == self.me {
                    c.lease_until = now + self.cfg.lease_ms;
                }
            }
        }
        leases
    }

    fn send_heartbeat(&mut self, now: Millis) {
        self.heartbeat_seq += 1;
        let running = self.own_leases(now);
        let hb = Heartbeat {
            seq: self.heartbeat_seq,
            sent_ms: now,
            interval_ms: self.heartbeat_interval(),
            labels: self.cfg.labels.clone(),
            executors: self.cfg.executors,
            busy: self.running.len() as u32,
            running,
            addrs: self.listen_addrs.clone(),
        };
        self.broadcast(&Gossip::Heartbeat(hb));
        if !self.pending_releases.is_empty() && self.release_repeats > 0 {
            self.release_repeats -= 1;
            for (job, attempt) in self.pending_releases.clone() {
                self.broadcast(&Gossip::Release { job, attempt, reason: "claimant restarted".into(), sent_ms: now });
            }
            if self.release_repeats == 0 {
                self.pending_releases.clear();
            }
        }
    }

    /// The claimant renews its leases between heartbeats, which grow
    /// apart in large clusters.
    fn send_renewals(&mut self, now: Millis) {
        if self.running.is_empty() {
            self.next_renew = Millis::MAX;
            return;
        }
        let leases = self.own_leases(now);
        self.broadcast(&Gossip::Renew { sent_ms: now, leases });
        self.next_renew = now + (self.cfg.lease_ms / 3).max(100);
    }

    // ---- gossip ----

    fn on_gossip(&mut self, now: Millis, from: PeerId, bytes: &[u8]) -> Verdict {
        if from == self.me {
            return Verdict::Ignore;
        }
        let msg = match wire::decode_gossip(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.emit(Event::MessageRejected { from, reason: e.to_string() });
                return Verdict::Reject;
            }
        };
        match msg {
            Gossip::Record(b) => self.accept_record(now, &b, Some(from)),
            Gossip::Heartbeat(h) => self.on_heartbeat(now, from, h),
            Gossip::Renew { leases, .. } => {
                if leases.len() > wire::MAX_RUNNING_IN_HEARTBEAT {
                    self.emit(Event::MessageRejected { from, reason: "renewal over its limits".into() });
                    return Verdict::Reject;
                }
                self.renew(now, from, leases);
                Verdict::Accept
            }
            Gossip::Claim(c) => {
                self.on_claim(now, from, c);
                Verdict::Accept
            }
            Gossip::Release { job, attempt, reason, .. } => {
                self.on_release(now, from, job, attempt, reason);
                Verdict::Accept
            }
        }
    }

    /// Verifies and stores a record from the network; applies it if new.
    fn accept_record(&mut self, now: Millis, bytes: &[u8], from: Option<PeerId>) -> Verdict {
        let rec = match self.verifier.verify(bytes) {
            Ok(r) => r,
            Err(e) => {
                if let Some(from) = from {
                    self.emit(Event::RecordRejected { from, reason: e.to_string() });
                }
                return Verdict::Reject;
            }
        };
        if self.store.has_record(&rec.id) {
            return Verdict::Ignore;
        }
        match self.store.put_record(&rec) {
            Ok(true) => {}
            Ok(false) => return Verdict::Ignore,
            Err(e) => {
                self.emit(Event::StoreFailed { reason: e.to_string() });
                return Verdict::Ignore;
            }
        }
        self.emit(Event::RecordStored { id: rec.id, kind: rec.body.kind(), signer: rec.signer, from });
        self.apply(now, &rec);
        Verdict::Accept
    }

    /// Verifies a batch of records from one peer and stores the new valid
    /// ones in one durable write; returns how many were new.
    fn accept_records(&mut self, now: Millis, batch: &[ByteBuf], from: PeerId) -> usize {
        let mut fresh = Vec::new();
        for bytes in batch.iter().take(wire::MAX_RECORDS_PER_REQUEST) {
            match self.verifier.verify(bytes) {
                Ok(rec)
                    if !self.store.has_record(&rec.id) && !fresh.iter().any(|r: &VerifiedRecord| r.id == rec.id) =>
                {
                    fresh.push(rec)
                }
                Ok(_) => {}
                Err(e) => self.emit(Event::RecordRejected { from, reason: e.to_string() }),
            }
        }
        if let Err(e) = self.store.put_records(&fresh) {
            self.emit(Event::StoreFailed { reason: e.to_string() });
            return 0;
        }
        for rec in &fresh {
            self.emit(Event::RecordStored { id: rec.id, kind: rec.body.kind(), signer: rec.signer, from: Some(from) });
            self.apply(now, rec);
        }
        fresh.len()
    }

    fn apply(&mut self, now: Millis, rec: &VerifiedRecord) {
        self.dirty = true;
        match &rec.body {
            Body::Change(c) => {
                if c.force.is_none() {
                    self.changes_by_commit.entry((c.repo.clone(), c.commit.clone())).or_insert(rec.id);
                }
                for spec in &c.jobs {
                    if self.jobs.contains_key(&spec.id) {
                        continue;
                    }
                    self.jobs.insert(
                        spec.id,
                        JobView {
                            spec: spec.clone(),
                            repo: c.repo.clone(),
                            branch: c.branch.clone(),
                            commit: c.commit.clone(),
                            change: rec.id,
                            attempt: 0,
                            opened_ms: now,
                            claim: None,
                            lost: vec![],
                            seen_ms: c.announced_ms.min(now),
                            not_before: now + spec.tree_stable_secs * 1000,
                            superseded_by: None,
                            cancelled: None,
                            commit_time: c.commit_time,
                            forced: c.force.is_some(),
                            free_sig: 0,
                            free_since: now,
                        },
                    );
                    if !self.results_by_job.contains_key(&spec.id) && !self.cancels.contains_key(&spec.id) {
                        self.open.insert(spec.id);
                    }
                    if let Some((reason, by)) = self.cancels.get(&spec.id).cloned() {
                        if let Some(j) = self.jobs.get_mut(&spec.id) {
                            j.cancelled = Some((reason, by));
                        }
                    }
                    if let Some((by, claim, at)) = self.early_claims.remove(&spec.id) {
                        self.on_claim(at, by, claim);
                    }
                }
                if c.force.is_none() {
                    self.branch_activity(now, c, rec.id);
                }
            }
            Body::Cancel(k) => {
                self.cancels.insert(k.job, (k.reason.clone(), rec.signer));
                self.open.remove(&k.job);
                if let Some(j) = self.jobs.get_mut(&k.job) {
                    j.cancelled = Some((k.reason.clone(), rec.signer));
                }
                if let Some((attempt, _)) = self.running.get(&k.job).cloned() {
                    // Keep it as ours: the build ends as a `cancelled` result.
                    self.out.push_back(Output::CancelBuild { job: k.job, attempt });
                }
            }
            Body::Result(r) => {
                if !self.replaying {
                    self.replicate_logs(now, r, rec.signer);
                }
                self.results_by_job.entry(r.job).or_default().push(rec.id);
                self.open.remove(&r.job);
                self.early_claims.remove(&r.job);
                if let Some((attempt, _)) = self.running.get(&r.job).cloned() {
                    if rec.signer != self.me {
                        // Someone else finished it: our build is now redundant.
                        self.running.remove(&r.job);
                        self.out.push_back(Output::CancelBuild { job: r.job, attempt });
                        self.save_own_claims();
                    }
                }
            }
        }
    }

    fn on_heartbeat(&mut self, now: Millis, from: PeerId, h: Heartbeat) -> Verdict {
        if h.labels.len() > MAX_LABELS
            || h.running.len() > wire::MAX_RUNNING_IN_HEARTBEAT
            || h.addrs.len() > wire::MAX_ADDRS
            || h.addrs.iter().any(|a| a.len() > wire::MAX_ADDR_LEN)
        {
            self.emit(Event::MessageRejected { from, reason: "heartbeat over its limits".into() });
            return Verdict::Reject;
        }
        let view = self.peers.entry(from).or_insert_with(|| PeerView::new(&from));
        let was_live = view.live;
        if view.labels != h.labels {
            view.labels = h.labels;
            self.generation += 1;
        }
        if view.executors != h.executors {
            view.executors = h.executors;
            self.generation += 1;
        }
        view.busy = h.busy;
        view.last_heard = now;
        let was_suspect = std::mem::replace(&mut view.suspect, false);
        view.interval_ms = h.interval_ms.clamp(50, 3_600_000);
        let new_addrs = if view.addrs != h.addrs && !h.addrs.is_empty() {
            view.addrs = h.addrs.clone();
            Some(h.addrs)
        } else {
            None
        };
        view.live = true;
        if was_suspect {
            self.generation += 1;
        }
        if !was_live {
            self.live_peers += 1;
            self.generation += 1;
            self.dirty = true;
        }
        self.renew(now, from, h.running);
        if let Some(addrs) = new_addrs {
            self.emit(Event::PeerAddrs { peer: from, addrs });
        }
        Verdict::Accept
    }

    fn renew(&mut self, now: Millis, from: PeerId, leases: Vec<Lease>) {
        let lease_ms = self.cfg.lease_ms;
        for l in leases {
            let Some(job) = self.jobs.get_mut(&l.job) else { continue };
            if self.results_by_job.contains_key(&l.job) || l.attempt < job.attempt {
                continue;
            }
            match &mut job.claim {
                Some(c) if c.by == from && c.attempt == l.attempt => {
                    c.lease_until = now + lease_ms;
                    c.step = l.step;
                }
                Some(c) if c.attempt == l.attempt || l.attempt > c.attempt => {
                    // Someone else builds what we took for another's (or our
                    // own) claim: settle it as two claims are settled.
                    let claim = Claim { job: l.job, attempt: l.attempt, lease_ms, sent_ms: now };
                    self.on_claim(now, from, claim);
                }
                Some(_) => {}
                None => {
                    // We missed the claim itself; the heartbeat carries it.
                    job.attempt = l.attempt;
                    job.claim = Some(ClaimView {
                        by: from,
                        attempt: l.attempt,
                        claimed_ms: now,
                        lease_until: now + lease_ms,
                        step: l.step,
                    });
                }
            }
        }
    }

    fn on_claim(&mut self, now: Millis, from: PeerId, c: Claim) {
        self.dirty = true;
        if self.results_by_job.contains_key(&c.job) {
            return;
        }
        let lease_ms = c.lease_ms.min(self.cfg.lease_ms.saturating_mul(4));
        let Some(job) = self.jobs.get_mut(&c.job) else {
            if self.early_claims.len() < MAX_EARLY_CLAIMS {
                self.early_claims.insert(c.job, (from, c, now));
            }
            return;
        };
        if c.attempt < job.attempt {
            return;
        }
        if c.attempt > job.attempt {
            job.attempt = c.attempt;
            job.claim = None;
        }
        let fresh =
            ClaimView { by: from, attempt: c.attempt, claimed_ms: now, lease_until: now + lease_ms, step: None };
        match job.claim.clone() {
            None => {
                job.claim = Some(fresh);
                self.emit(Event::Claimed { job: c.job, attempt: c.attempt, by: from });
            }
            Some(cur) if cur.by == from => {
                if let Some(cl) = job.claim.as_mut() {
                    cl.lease_until = now + lease_ms;
                }
            }
            Some(cur) => {
                let winner = claim_winner(&c.job, cur.by, from);
                let loser = if winner == from { cur.by } else { from };
                if winner == from {
                    job.claim = Some(fresh);
                }
                self.emit(Event::ClaimConflict { job: c.job, attempt: c.attempt, winner, loser });
                if loser == self.me {
                    if let Some((attempt, _)) = self.running.remove(&c.job) {
                        self.out.push_back(Output::CancelBuild { job: c.job, attempt });
                        self.save_own_claims();
                    }
                }
            }
        }
    }

    fn on_release(&mut self, now: Millis, from: PeerId, job_id: Hash32, attempt: u32, reason: String) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let holds = job.claim.as_ref().is_some_and(|c| c.by == from && c.attempt == attempt);
        if !holds || self.results_by_job.contains_key(&job_id) {
            return;
        }
        job.lost.push((attempt, from, reason.clone()));
        job.attempt = attempt + 1;
        job.claim = None;
        job.opened_ms = now;
        self.dirty = true;
        self.emit(Event::Released { job: job_id, attempt, by: from, reason });
    }

    // ---- claims ----

    fn check_leases(&mut self, now: Millis) {
        let mut expired = Vec::new();
        for id in &self.open {
            if let Some(j) = self.jobs.get(id) {
                if let Some(c) = &j.claim {
                    if c.by != self.me && now > c.lease_until {
                        expired.push((*id, c.by, c.attempt));
                    }
                }
            }
        }
        for (id, holder, attempt) in expired {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.lost.push((attempt, holder, "lease expired".into()));
                j.attempt = attempt + 1;
                j.claim = None;
                j.opened_ms = now;
            }
            if let Some(p) = self.peers.get_mut(&holder) {
                p.suspect = true;
                p.live = false;
                self.generation += 1;
            }
            self.emit(Event::LeaseExpired { job: id, attempt, holder });
        }
    }

    /// Claims held on open jobs, by the holder's rendezvous key: how busy
    /// each peer is, as every node can tell from the same claims and results.
    fn held_claims(&self, now: Millis) -> HashMap<u64, u32, rustc_hash::FxBuildHasher> {
        let mut held: HashMap<u64, u32, rustc_hash::FxBuildHasher> = HashMap::default();
        for id in &self.open {
            if let Some(c) = self.jobs.get(id).and_then(|j| j.claim.as_ref()) {
                if c.lease_until >= now {
                    let key =
                        if c.by == self.me { self.my_key } else { self.peers.get(&c.by).map(|v| v.key).unwrap_or(0) };
                    *held.entry(key).or_default() += 1;
                }
            }
        }
        held
    }

    fn consider_claims(&mut self, now: Millis) {
        let mut next_due = now + self.heartbeat_interval();
        // Leases of others' claims run out on their own clock.
        for id in &self.open {
            if let Some(c) = self.jobs.get(id).and_then(|j| j.claim.as_ref()) {
                if c.by != self.me {
                    next_due = next_due.min(c.lease_until + 1);
                }
            }
        }
        if now < self.started_ms + self.cfg.warmup_ms {
            self.next_due = next_due.min(self.started_ms + self.cfg.warmup_ms);
            return;
        }
        // A node still catching up history would take old jobs whose
        // results it has not fetched yet for jobs waiting to be built.
        // Peers that never complete a session (an older version, say) must
        // not keep the node from building for ever.
        let connected = self.peers.values().any(|v| v.connected);
        let waited_long = now > self.started_ms + 3 * self.cfg.sync_interval_ms;
        if (connected && !self.synced_once && !waited_long) || self.progress.to_fetch > 0 {
            self.next_due = next_due;
            return;
        }
        let mut free = self.cfg.executors.saturating_sub(self.running.len() as u32);
        if free == 0 {
            // A busy node leaves waiting jobs to the next free one.
            self.next_due = next_due;
            return;
        }
        let mut candidates: Vec<Hash32> = Vec::new();
        for id in &self.open {
            if self.running.contains_key(id) {
                continue;
            }
            let Some(j) = self.jobs.get(id) else { continue };
            if j.claim.is_some() || !satisfies(&self.cfg.labels, &j.spec.requires) {
                continue;
            }
            if now < j.not_before {
                next_due = next_due.min(j.not_before);
                continue;
            }
            candidates.push(*id);
        }
        if candidates.is_empty() {
            self.next_due = next_due;
            return;
        }
        // Rank among the eligible peers that have a free slot. When that set
        // changes, the job's stagger starts again from that moment, so a job
        // that waited for capacity is not grabbed by all free nodes at once.
        let held = self.held_claims(now);
        let mut ready = Vec::new();
        for id in candidates {
            let (requires, opened, priority) = {
                let j = &self.jobs[&id];
                (j.spec.requires.clone(), j.opened_ms.max(j.not_before), j.spec.priority)
            };
            let me = (std::cmp::Reverse(score(&id, self.my_key)), self.me);
            let my_key = self.my_key;
            let (r, sig) = {
                let elig = self.eligible_keys(&requires);
                let mut r = 0u64;
                let mut sig = 0u64;
                for (k, p, executors) in elig.iter() {
                    if *k == my_key || held.get(k).copied().unwrap_or(0) >= *executors {
                        continue;
                    }
                    sig ^= *k;
                    if (std::cmp::Reverse(score(&id, *k)), *p) < me {
                        r += 1;
                    }
                }
                (r, sig)
            };
            let free_since = match self.jobs.get_mut(&id) {
                Some(j) if j.free_sig != sig => {
                    j.free_sig = sig;
                    j.free_since = now;
                    now
                }
                Some(j) => j.free_since,
                None => now,
            };
            let at = (opened.max(free_since) + r * self.cfg.claim_stagger_ms)
                .max(self.freed_ms + self.cfg.claim_stagger_ms / 4);
            if now >= at {
                ready.push((std::cmp::Reverse(priority), opened, id));
            } else {
                next_due = next_due.min(at);
            }
        }
        ready.sort();
        for (_, _, id) in ready {
            if free == 0 {
                break;
            }
            free -= 1;
            self.claim(now, id);
        }
        self.next_due = next_due;
    }

    fn claim(&mut self, now: Millis, id: Hash32) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        let attempt = j.attempt;
        j.claim =
            Some(ClaimView { by: self.me, attempt, claimed_ms: now, lease_until: now + self.cfg.lease_ms, step: None });
        let order = BuildOrder {
            job: id,
            attempt,
            repo: j.repo.clone(),
            branch: j.branch.clone(),
            commit: j.commit.clone(),
            builder: j.spec.builder.clone(),
            steps: j.spec.steps.clone(),
        };
        self.running.insert(id, (attempt, None));
        self.next_renew = self.next_renew.min(now + (self.cfg.lease_ms / 3).max(100));
        self.save_own_claims();
        self.broadcast(&Gossip::Claim(Claim { job: id, attempt, lease_ms: self.cfg.lease_ms, sent_ms: now }));
        self.emit(Event::Claimed { job: id, attempt, by: self.me });
        self.emit(Event::BuildStarted { job: id, attempt });
        self.out.push_back(Output::StartBuild(order));
    }

    fn load_own_claims(&self) -> Vec<(Hash32, u32)> {
        self.store
            .get_state(OWN_CLAIMS_KEY)
            .and_then(|b| decode::<Vec<(Hash32, u32)>>(&b, 1 << 20).ok())
            .unwrap_or_default()
    }

    fn save_own_claims(&mut self) {
        let v: Vec<(Hash32, u32)> = self.running.iter().map(|(j, (a, _))| (*j, *a)).collect();
        if let Err(e) = self.store.put_state(OWN_CLAIMS_KEY, &encode(&v)) {
            self.emit(Event::StoreFailed { reason: e.to_string() });
        }
    }

    // ---- builds ----

    fn on_build_finished(&mut self, now: Millis, o: BuildOutcome) {
        self.dirty = true;
        self.freed_ms = now;
        let still_ours = self.running.get(&o.job).is_some_and(|(a, _)| *a == o.attempt);
        self.running.remove(&o.job);
        self.save_own_claims();
        if !still_ours && o.cancelled {
            // We lost the claim or someone else finished first: nothing to publish.
            return;
        }
        let Some(job) = self.jobs.get(&o.job).cloned() else { return };
        let mut steps = Vec::with_capacity(o.steps.len());
        let mut failed_step = None;
        let mut warnings = 0;
        let mut tests: Option<record::TestCounts> = None;
        for s in &o.steps {
            let text = String::from_utf8_lossy(&s.log);
            let w = count_warnings(&text);
            let t = count_tests(&text);
            warnings += w;
            if let Some(t) = &t {
                let acc = tests.get_or_insert_with(Default::default);
                acc.passed += t.passed;
                acc.failed += t.failed;
                acc.skipped += t.skipped;
            }
            let hash = Hash32::of(&s.log);
            if let Err(e) = self.store.put_blob(&hash, &s.log) {
                self.emit(Event::StoreFailed { reason: e.to_string() });
            }
            if failed_step.is_none() && (s.exit_code != Some(0)) {
                failed_step = Some(s.name.clone());
            }
            steps.push(StepResult {
                name: s.name.clone(),
                command: s.command.clone(),
                exit_code: s.exit_code,
                duration_ms: s.duration_ms,
                timed_out: s.timed_out,
                log: Some(BlobRef { hash, size: s.log.len() as u64, truncated: s.truncated }),
                warnings: w,
                tests: t,
            });
        }
        let status = if o.error.is_some() {
            Status::Exception
        } else if o.cancelled {
            Status::Cancelled
        } else if failed_step.is_some() {
            Status::Failure
        } else if warnings > 0 {
            Status::Warnings
        } else {
            Status::Success
        };
        let mut metrics = BTreeMap::new();
        metrics.insert("build_secs".to_string(), o.ended_ms.saturating_sub(o.started_ms) as f64 / 1000.0);
        metrics.insert("warnings".to_string(), warnings as f64);
        if let Some(t) = &tests {
            metrics.insert("tests_passed".to_string(), t.passed as f64);
            metrics.insert("tests_failed".to_string(), t.failed as f64);
            metrics.insert("tests_skipped".to_string(), t.skipped as f64);
        }
        let (author, title) = match self.store.get_record(&job.change).and_then(|b| record::decode_stored(&b).ok()) {
            Some(VerifiedRecord { body: Body::Change(c), .. }) => (c.author, c.title),
            _ => (String::new(), String::new()),
        };
        let result = BuildResult {
            job: o.job,
            repo: job.repo.clone(),
            branch: job.branch.clone(),
            commit: job.commit.clone(),
            builder: job.spec.builder.clone(),
            attempt: o.attempt,
            labels: self.cfg.labels.clone(),
            started_ms: o.started_ms,
            ended_ms: o.ended_ms.max(o.started_ms),
            status,
            steps,
            metrics,
            failed_step: if status == Status::Failure { failed_step } else { None },
            error: o.error.clone(),
            author,
            title,
        };
        let rec = record::sign(&self.key, &Body::Result(result));
        if let Err(e) = self.store.put_record(&rec) {
            self.emit(Event::StoreFailed { reason: e.to_string() });
            return;
        }
        self.emit(Event::RecordStored { id: rec.id, kind: "result", signer: self.me, from: None });
        self.apply(now, &rec);
        self.broadcast(&Gossip::Record(rec.bytes.clone()));
        self.emit(Event::BuildPublished { job: o.job, attempt: o.attempt, status, record: rec.id });
    }

    // ---- announcing ----

    /// Turns a commit into a signed change, unless one is known already.
    pub fn announce(&mut self, now: Millis, info: CommitInfo) -> Result<Announced, String> {
        if info.repo.is_empty() || info.repo.len() > 4096 {
            return Err("repo must be 1 to 4096 bytes".into());
        }
        if info.commit.len() < 4 || info.commit.len() > 64 || !info.commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("commit {:?} is not a hex object id", info.commit));
        }
        if let Some(id) = self.changes_by_commit.get(&(info.repo.clone(), info.commit.clone())) {
            return Ok(Announced::Known(*id));
        }
        let (jobs, recipe_error) = match &info.recipe {
            Ok(text) => match parse_recipe(&info.repo, &info.commit, text) {
                Ok(j) => (j, None),
                Err(e) => (vec![], Some(e.to_string())),
            },
            Err(e) => (vec![], Some(e.clone())),
        };
        let change = info.into_change(jobs, recipe_error, now, None);
        self.publish(now, Body::Change(change)).map(Announced::New)
    }

    /// A new change on a branch restarts the tree-stable timers of the
    /// branch's waiting jobs, and supersedes older unclaimed jobs of
    /// collapsing builders.
    fn branch_activity(&mut self, now: Millis, c: &Change, _change: Hash32) {
        let open_waiting: Vec<Hash32> = self
            .open
            .iter()
            .filter(|id| {
                self.jobs.get(id).is_some_and(|j| {
                    j.repo == c.repo && j.branch == c.branch && j.claim.is_none() && j.spec.tree_stable_secs > 0
                })
            })
            .copied()
            .collect();
        for id in open_waiting {
            if let Some(j) = self.jobs.get_mut(&id) {
                j.not_before = j.not_before.max(now + j.spec.tree_stable_secs * 1000);
            }
        }
        for spec in c.jobs.iter().filter(|s| s.collapse) {
            let key = (c.repo.clone(), c.branch.clone(), spec.builder.clone());
            let mut group = self.collapsible.remove(&key).unwrap_or_default();
            if !group.contains(&spec.id) {
                group.push(spec.id);
            }
            group.retain(|id| self.open.contains(id));
            // The newest commit of the group stays; older unclaimed ones go.
            let newest = group
                .iter()
                .filter_map(|id| self.jobs.get(id).map(|j| ((j.commit_time, j.seen_ms, *id), *id)))
                .max()
                .map(|(_, id)| id);
            let mut keep = Vec::new();
            for id in group {
                let unclaimed = self.jobs.get(&id).is_some_and(|j| j.claim.is_none());
                if Some(id) != newest && unclaimed {
                    if let (Some(j), Some(n)) = (self.jobs.get_mut(&id), newest) {
                        j.superseded_by = Some(n);
                    }
                    self.open.remove(&id);
                } else {
                    keep.push(id);
                }
            }
            self.collapsible.insert(key, keep);
        }
    }

    /// A forced rebuild of a commit: new jobs, built even if the commit was
    /// built before. `builder` narrows it to one builder.
    pub fn force(
        &mut self,
        now: Millis,
        info: CommitInfo,
        builder: Option<&str>,
        reason: String,
    ) -> Result<Hash32, String> {
        let text = info.recipe.clone()?;
        let mut jobs = parse_recipe(&info.repo, &info.commit, &text).map_err(|e| e.to_string())?;
        if let Some(b) = builder {
            jobs.retain(|j| j.builder == b);
            if jobs.is_empty() {
                return Err(format!("the recipe at {} has no builder {b:?}", info.commit));
            }
        }
        let nonce = Hash32::of_fields(
            "peerbot.force",
            &[&self.me.to_bytes(), &now.to_le_bytes(), &rand::Rng::gen::<u64>(&mut self.rng).to_le_bytes()],
        );
        for j in jobs.iter_mut() {
            j.id = crate::recipe::forced_job_id(&info.repo, &info.commit, &j.builder, &nonce);
        }
        let force = record::Force { nonce, reason: clip(&reason, 1024) };
        let change = info.into_change(jobs, None, now, Some(force));
        self.publish(now, Body::Change(change))
    }

    /// Cancels a job everywhere: a signed record every node applies.
    pub fn cancel(&mut self, now: Millis, job: Hash32, reason: String) -> Result<Hash32, String> {
        match self.job_state(&job) {
            JobState::Done => return Err(format!("job {} is already done", job.short())),
            JobState::Cancelled => return Err(format!("job {} is already cancelled", job.short())),
            _ => {}
        }
        if !self.jobs.contains_key(&job) {
            return Err(format!("no job {}", job.to_hex()));
        }
        let body = Body::Cancel(record::Cancel { job, reason: clip(&reason, 1024), requested_ms: now });
        self.publish(now, body)
    }

    /// Signs, stores, applies and gossips a record of this node's.
    fn publish(&mut self, now: Millis, body: Body) -> Result<Hash32, String> {
        let rec = record::sign(&self.key, &body);
        self.store.put_record(&rec).map_err(|e| e.to_string())?;
        self.emit(Event::RecordStored { id: rec.id, kind: rec.body.kind(), signer: self.me, from: None });
        self.apply(now, &rec);
        self.broadcast(&Gossip::Record(rec.bytes.clone()));
        self.timers(now);
        Ok(rec.id)
    }

    /// A job by a unique hex prefix of its id.
    pub fn find_job(&self, prefix: &str) -> Result<Hash32, String> {
        let p = prefix.to_ascii_lowercase();
        if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("{prefix:?} is not a job id (at least 4 hex digits)"));
        }
        let mut found = self.jobs.keys().filter(|id| id.to_hex().starts_with(&p));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(*id),
            (None, _) => Err(format!("no job {prefix}")),
            _ => Err(format!("job id prefix {prefix} is ambiguous")),
        }
    }

    /// Waiting jobs in the order nodes take them: priority, then age.
    pub fn queue(&self) -> Vec<Hash32> {
        let mut q: Vec<(std::cmp::Reverse<i32>, Millis, Hash32)> = self
            .open
            .iter()
            .filter_map(|id| {
                self.jobs
                    .get(id)
                    .filter(|j| j.claim.is_none())
                    .map(|j| (std::cmp::Reverse(j.spec.priority), j.seen_ms, *id))
            })
            .collect();
        q.sort();
        q.into_iter().map(|(_, _, id)| id).collect()
    }

    // ---- blobs ----

    /// Fetches a blob this node lacks; `BlobFetched { token }` tells the end.
    pub fn fetch_blob(&mut self, now: Millis, token: u64, hash: Hash32, hint: Option<PeerId>) {
        let _ = now;
        if self.store.has_blob(&hash) {
            self.emit(Event::BlobFetched { token, hash, ok: true, detail: "local".into() });
            return;
        }
        // The signer first (it built the log), then the nodes that keep
        // copies of it, then anyone connected.
        let mut holders: Vec<(u64, PeerId)> = self.peers.iter().map(|(p, v)| (score(&hash, v.key), *p)).collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let mut rest: Vec<PeerId> = self.peers.iter().filter(|(_, v)| v.connected).map(|(p, _)| *p).collect();
        rest.sort_unstable();
        rest.shuffle(&mut self.rng);
        for (_, p) in holders.into_iter().take(self.cfg.log_replicas).rev() {
            rest.retain(|x| *x != p);
            rest.insert(0, p);
        }
        if let Some(h) = hint.filter(|h| *h != self.me) {
            rest.retain(|x| *x != h);
            rest.insert(0, h);
        }
        self.next_blob_source(token, hash, rest, "no connected peer has it".into());
    }

    fn next_blob_source(&mut self, token: u64, hash: Hash32, mut rest: Vec<PeerId>, why: String) {
        if rest.is_empty() {
            self.emit(Event::BlobFetched { token, hash, ok: false, detail: why });
            return;
        }
        let peer = rest.remove(0);
        let p = Pending::Blob { token, hash, rest, peer, buf: Vec::new() };
        self.request(peer, &Request::GetBlob { hash, offset: 0 }, p);
    }

    /// Keeps a copy of each log of a new result when this node is among the
    /// `log_replicas` live nodes ranking highest for the log's hash.
    fn replicate_logs(&mut self, now: Millis, r: &BuildResult, signer: PeerId) {
        // A node catching up has heard of too few peers to know whether it
        // is among a log's keepers; old logs stay with those who have them.
        if self.cfg.log_replicas == 0 || signer == self.me || !self.synced_once || self.progress.to_fetch > 0 {
            return;
        }
        if let Some(h) = self.cfg.log_horizon_ms {
            if r.ended_ms + h < now {
                return;
            }
        }
        for step in &r.steps {
            let Some(blob) = &step.log else { continue };
            if self.store.has_blob(&blob.hash) {
                continue;
            }
            let mine = score(&blob.hash, self.my_key);
            // Count better-ranked live nodes, stopping once there are enough.
            let mut better = 0;
            for v in self.peers.values() {
                if v.live && score(&blob.hash, v.key) > mine {
                    better += 1;
                    if better >= self.cfg.log_replicas {
                        break;
                    }
                }
            }
            if better < self.cfg.log_replicas {
                self.next_replication += 1;
                let token = REPLICATION_TOKEN | self.next_replication;
                let p = Pending::Blob { token, hash: blob.hash, rest: vec![], peer: signer, buf: Vec::new() };
                self.transfers.push_back((signer, Request::GetBlob { hash: blob.hash, offset: 0 }, p));
            }
        }
        self.pump_transfers();
    }

    /// Drops the logs of results older than the horizon, a batch at a time,
    /// from where the last batch stopped.
    fn expire_logs(&mut self, now: Millis) {
        let Some(h) = self.cfg.log_horizon_ms else { return };
        let cutoff = sync::SyncKey { time: now.saturating_sub(h), id: Hash32::ZERO };
        let from = self
            .store
            .get_state(RETENTION_KEY)
            .and_then(|b| decode::<sync::SyncKey>(&b, 1024).ok())
            .unwrap_or(sync::SyncKey::MIN);
        if from >= cutoff {
            return;
        }
        let keys = self.store.keys_in(&from, Some(&cutoff), RETENTION_BATCH);
        let mut dropped = 0;
        for k in &keys {
            let Some(bytes) = self.store.get_record(&k.id) else { continue };
            if let Ok(rec) = record::decode_stored(&bytes) {
                if let Body::Result(r) = rec.body {
                    for s in r.steps.iter().filter_map(|s| s.log.as_ref()) {
                        if self.store.has_blob(&s.hash) && self.store.delete_blob(&s.hash).is_ok() {
                            dropped += 1;
                        }
                    }
                }
            }
        }
        let next = match keys.last() {
            Some(k) if keys.len() == RETENTION_BATCH => {
                let mut id = k.id.0;
                // The key right after the last one done.
                for b in id.iter_mut().rev() {
                    *b = b.wrapping_add(1);
                    if *b != 0 {
                        break;
                    }
                }
                sync::SyncKey { time: k.time, id: Hash32(id) }
            }
            _ => cutoff,
        };
        if let Err(e) = self.store.put_state(RETENTION_KEY, &encode(&next)) {
            self.emit(Event::StoreFailed { reason: e.to_string() });
        }
        if dropped > 0 {
            self.emit(Event::LogsExpired { blobs: dropped });
        }
        if keys.len() == RETENTION_BATCH {
            self.next_retention = now;
        }
    }

    pub fn sync_progress(&self) -> SyncProgress {
        SyncProgress { sessions: self.syncing.len(), ..self.progress }
    }

    /// Sends queued transfers while fewer than `MAX_TRANSFERS` are out.
    fn pump_transfers(&mut self) {
        while self.transfers_in_flight < MAX_TRANSFERS {
            let Some((peer, req, p)) = self.transfers.pop_front() else { break };
            self.transfers_in_flight += 1;
            self.request(peer, &req, p);
        }
    }

    fn transfer_done(&mut self) {
        self.transfers_in_flight = self.transfers_in_flight.saturating_sub(1);
        self.pump_transfers();
    }

    // ---- requests ----

    fn on_request(&mut self, now: Millis, from: PeerId, bytes: &[u8]) -> Response {
        let req = match wire::decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.emit(Event::MessageRejected { from, reason: format!("request: {e}") });
                return Response::Error { message: e.to_string() };
            }
        };
        match req {
            Request::Reconcile { ranges } => match sync::process(&self.store, &ranges, false) {
                Ok(out) => Response::Reconcile { ranges: out.reply },
                Err(e) => {
                    self.emit(Event::MessageRejected { from, reason: format!("sync: {e}") });
                    Response::Error { message: e.to_string() }
                }
            },
            Request::GetRecords { ids } => {
                let mut records = Vec::new();
                let mut size = 0;
                for id in ids.iter().take(wire::MAX_RECORDS_PER_REQUEST) {
                    if let Some(b) = self.store.get_record(id) {
                        size += b.len();
                        records.push(ByteBuf::from(b));
                        if size > RECORD_BATCH_BYTES {
                            break;
                        }
                    }
                }
                Response::Records { records }
            }
            Request::PushRecords { records } => {
                let accepted = self.accept_records(now, &records, from) as u32;
                Response::Ack { accepted }
            }
            Request::GetBlob { hash, offset } => {
                if self.serving_blob.as_ref().is_none_or(|(h, _)| *h != hash) {
                    self.serving_blob = self.store.get_blob(&hash).map(|b| (hash, b));
                }
                match &self.serving_blob {
                    Some((h, b)) if *h == hash => {
                        let start = (offset as usize).min(b.len());
                        let end = (start + wire::BLOB_CHUNK).min(b.len());
                        Response::Blob { bytes: Some(ByteBuf::from(b[start..end].to_vec())), total: b.len() as u64 }
                    }
                    _ => Response::Blob { bytes: None, total: 0 },
                }
            }
        }
    }

    fn on_request_failed(&mut self, id: u64, reason: String) {
        match self.pending.remove(&id) {
            Some(Pending::Sync { peer, .. }) => {
                self.syncing.remove(&peer);
                self.emit(Event::SyncFailed { peer, reason });
            }
            Some(Pending::Blob { token, hash, rest, .. }) => {
                if token & REPLICATION_TOKEN != 0 {
                    self.transfer_done();
                }
                self.next_blob_source(token, hash, rest, reason)
            }
            Some(Pending::Fetch { count, .. }) => {
                self.progress.to_fetch = self.progress.to_fetch.saturating_sub(count);
                self.transfer_done();
            }
            Some(Pending::Push) => self.transfer_done(),
            None => {}
        }
    }

    fn on_response(&mut self, now: Millis, id: u64, bytes: &[u8]) {
        let Some(p) = self.pending.remove(&id) else { return };
        let resp = wire::decode_response(bytes);
        match p {
            Pending::Sync { peer, round } => match resp {
                Ok(Response::Reconcile { ranges }) => self.sync_round(peer, round, &ranges),
                Ok(other) => self.sync_failed(peer, format!("unexpected reply {other:?}")),
                Err(e) => self.sync_failed(peer, e.to_string()),
            },
            Pending::Fetch { peer, count } => {
                if let Ok(Response::Records { records }) = resp {
                    self.progress.fetched += self.accept_records(now, &records, peer) as u64;
                }
                self.progress.to_fetch = self.progress.to_fetch.saturating_sub(count);
                if self.progress.to_fetch > 0 && now >= self.progress_said_ms + 2_000 {
                    self.progress_said_ms = now;
                    self.emit(Event::CatchingUp { to_fetch: self.progress.to_fetch, fetched: self.progress.fetched });
                }
                self.transfer_done();
            }
            Pending::Push => self.transfer_done(),
            Pending::Blob { token, hash, rest, peer, mut buf } => {
                let done = |core: &mut Self| {
                    if token & REPLICATION_TOKEN != 0 {
                        core.transfer_done();
                    }
                };
                match resp {
                    Ok(Response::Blob { bytes: Some(b), total })
                        if total <= MAX_LOG_BYTES + 4096 && buf.len() + b.len() <= total as usize =>
                    {
                        buf.extend_from_slice(&b);
                        if (buf.len() as u64) < total && !b.is_empty() {
                            let offset = buf.len() as u64;
                            self.request(
                                peer,
                                &Request::GetBlob { hash, offset },
                                Pending::Blob { token, hash, rest, peer, buf },
                            );
                        } else if Hash32::of(&buf) == hash {
                            done(self);
                            match self.store.put_blob(&hash, &buf) {
                                Ok(()) => {
                                    self.emit(Event::BlobFetched { token, hash, ok: true, detail: "fetched".into() })
                                }
                                Err(e) => {
                                    self.emit(Event::BlobFetched { token, hash, ok: false, detail: e.to_string() })
                                }
                            }
                        } else {
                            done(self);
                            self.next_blob_source(
                                token,
                                hash,
                                rest,
                                "a peer sent bytes that do not match the hash".into(),
                            )
                        }
                    }
                    Ok(Response::Blob { bytes: Some(_), .. }) => {
                        done(self);
                        self.next_blob_source(token, hash, rest, "a peer sent a malformed log chunk".into())
                    }
                    _ => {
                        done(self);
                        self.next_blob_source(token, hash, rest, "no connected peer has it".into())
                    }
                }
            }
        }
    }

    // ---- anti-entropy ----

    fn start_sync(&mut self, peer: PeerId) {
        if self.syncing.contains_key(&peer) || peer == self.me {
            return;
        }
        self.syncing.insert(peer, SyncTally::default());
        let ranges = sync::initial(&self.store);
        self.request(peer, &Request::Reconcile { ranges }, Pending::Sync { peer, round: 1 });
    }

    fn sync_failed(&mut self, peer: PeerId, reason: String) {
        self.syncing.remove(&peer);
        self.emit(Event::SyncFailed { peer, reason });
    }

    fn sync_round(&mut self, peer: PeerId, round: u32, ranges: &[sync::SyncRange]) {
        let out = match sync::process(&self.store, ranges, true) {
            Ok(o) => o,
            Err(e) => return self.sync_failed(peer, e.to_string()),
        };
        for chunk in out.need.chunks(wire::MAX_RECORDS_PER_REQUEST) {
            self.progress.to_fetch += chunk.len();
            let p = Pending::Fetch { peer, count: chunk.len() };
            self.transfers.push_back((peer, Request::GetRecords { ids: chunk.to_vec() }, p));
        }
        let mut batch = Vec::new();
        let mut size = 0;
        for id in &out.have {
            if let Some(b) = self.store.get_record(id) {
                size += b.len();
                batch.push(ByteBuf::from(b));
            }
            if batch.len() >= wire::MAX_RECORDS_PER_REQUEST || size > RECORD_BATCH_BYTES {
                let req = Request::PushRecords { records: std::mem::take(&mut batch) };
                self.transfers.push_back((peer, req, Pending::Push));
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.transfers.push_back((peer, Request::PushRecords { records: batch }, Pending::Push));
        }
        self.pump_transfers();
        let tally = self.syncing.entry(peer).or_default();
        tally.need += out.need.len();
        tally.have += out.have.len();
        if out.finished() || round >= MAX_SYNC_ROUNDS {
            self.synced_once = true;
            self.dirty = true;
            let t = self.syncing.remove(&peer).unwrap_or_default();
            self.emit(Event::SyncFinished { peer, rounds: round, need: t.need, have: t.have });
        } else {
            self.request(peer, &Request::Reconcile { ranges: out.reply }, Pending::Sync { peer, round: round + 1 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;
    use crate::store::MemStore;
    use proptest::prelude::*;

    const RECIPE: &str = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\n\
                          [[builder]]\nname='gpu'\nrequires=['gpu=yes']\n[[builder.step]]\nrun='nvcc'\n";

    fn node(n: u64, labels: &[&str]) -> NodeCore<MemStore> {
        let mut cfg = Config::new(labels.iter().map(|s| s.to_string()).collect(), 1);
        cfg.seed = n;
        NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
    }

    fn commit(c: &str) -> CommitInfo {
        CommitInfo {
            repo: "/repo".into(),
            branch: "main".into(),
            commit: c.into(),
            parents: vec![],
            author: "A".into(),
            committer: "A".into(),
            commit_time: 0,
            title: "t".into(),
            files: vec![],
            recipe: Ok(RECIPE.into()),
        }
    }

    /// Delivers every broadcast to every other node until all is quiet;
    /// returns the builds started, by node index.
    fn settle(nodes: &mut [NodeCore<MemStore>], now: Millis) -> Vec<(usize, BuildOrder)> {
        settle_full(nodes, now, &mut Vec::new())
    }

    fn settle_full(
        nodes: &mut [NodeCore<MemStore>],
        now: Millis,
        cancels: &mut Vec<(usize, Hash32)>,
    ) -> Vec<(usize, BuildOrder)> {
        let mut started = Vec::new();
        let mut token = 0;
        loop {
            let mut msgs = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                n.handle(now, Input::Tick);
                while let Some(o) = n.poll_output() {
                    match o {
                        Output::Broadcast(b) => msgs.push((i, b)),
                        Output::StartBuild(order) => started.push((i, order)),
                        Output::CancelBuild { job, .. } => cancels.push((i, job)),
                        _ => {}
                    }
                }
            }
            if msgs.is_empty() {
                return started;
            }
            for (from, b) in msgs {
                let from_id = nodes[from].peer_id();
                for (j, n) in nodes.iter_mut().enumerate() {
                    if j != from {
                        token += 1;
                        n.handle(now, Input::Gossip { from: from_id, token, bytes: b.clone() });
                    }
                }
            }
        }
    }

    #[test]
    fn each_job_is_claimed_once_by_an_eligible_node() {
        let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"]), node(3, &["os=linux", "gpu=yes"])];
        let mut now = 0;
        settle(&mut nodes, now); // heartbeats: everyone learns everyone's labels
        now += 10_000;
        settle(&mut nodes, now);
        assert!(matches!(nodes[0].announce(now, commit("abcd01")), Ok(Announced::New(_))));
        let mut started = Vec::new();
        for _ in 0..10 {
            started.extend(settle(&mut nodes, now));
            now += 500;
        }
        assert_eq!(started.len(), 2, "{started:?}");
        let gpu = started.iter().find(|(_, o)| o.builder == "gpu").unwrap();
        assert_eq!(gpu.0, 2, "only node 3 has gpu=yes");
        // Every node agrees on who holds each claim.
        for (i, order) in &started {
            let holder = nodes[*i].peer_id();
            for n in &nodes {
                assert_eq!(n.jobs()[&order.job].claim.as_ref().unwrap().by, holder);
            }
        }
        // A second announcement of the same commit is recognised.
        assert!(matches!(nodes[1].announce(now, commit("abcd01")), Ok(Announced::Known(_))));
    }

    #[test]
    fn job_with_no_eligible_node_stays_pending() {
        let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"])];
        let mut now = 10_000;
        settle(&mut nodes, now);
        nodes[0].announce(now, commit("abcd02")).unwrap();
        let mut started = Vec::new();
        for _ in 0..20 {
            started.extend(settle(&mut nodes, now));
            now += 1_000;
        }
        assert!(started.iter().all(|(_, o)| o.builder == "linux"));
        let gpu = nodes[1].jobs().values().find(|j| j.spec.builder == "gpu").unwrap();
        assert_eq!(nodes[1].job_state(&gpu.spec.id), JobState::Pending);
        assert!(nodes[1].eligible(now, &gpu.spec.requires).is_empty());
    }

    #[test]
    fn forged_and_garbage_gossip_is_rejected_and_not_stored() {
        let mut a = node(1, &["os=linux"]);
        let mut b = node(2, &["os=linux"]);
        a.announce(1, commit("abcd03")).unwrap();
        let mut bytes = None;
        while let Some(o) = a.poll_output() {
            if let Output::Broadcast(bts) = o {
                if let Ok(Gossip::Record(r)) = wire::decode_gossip(&bts) {
                    bytes = Some(r);
                }
            }
        }
        let mut rec = bytes.unwrap();
        let n = rec.len();
        rec[n / 2] ^= 0x40;
        let forged = wire::encode_gossip(&Gossip::Record(rec));
        b.handle(2, Input::Gossip { from: a.peer_id(), token: 7, bytes: forged });
        b.handle(2, Input::Gossip { from: a.peer_id(), token: 8, bytes: vec![0xff, 0x00, 0x13] });
        let mut verdicts = vec![];
        while let Some(o) = b.poll_output() {
            if let Output::Verdict { token, verdict } = o {
                verdicts.push((token, verdict));
            }
        }
        assert_eq!(verdicts, vec![(7, Verdict::Reject), (8, Verdict::Reject)]);
        assert_eq!(b.store().record_count(), 0);
        assert!(b.jobs().is_empty());
    }

    fn commit_with(c: &str, time: i64, recipe: &str) -> CommitInfo {
        CommitInfo { commit_time: time, recipe: Ok(recipe.into()), ..commit(c) }
    }

    /// Runs the cluster from `from` to `to` in 500 ms steps, finishing
    /// every build at once when `finish` is set; returns the builds started.
    fn run_for(nodes: &mut [NodeCore<MemStore>], from: Millis, to: Millis, finish: bool) -> Vec<(usize, BuildOrder)> {
        let mut all = Vec::new();
        let mut now = from;
        while now <= to {
            let started = settle(nodes, now);
            for (i, o) in &started {
                if finish {
                    let outcome = BuildOutcome {
                        job: o.job,
                        attempt: o.attempt,
                        started_ms: now,
                        ended_ms: now,
                        steps: vec![StepOutcome {
                            name: "s".into(),
                            exit_code: Some(0),
                            log: format!("built {}\n", o.job).into_bytes(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    nodes[*i].handle(now, Input::BuildFinished(outcome));
                }
            }
            all.extend(started);
            now += 500;
        }
        settle(nodes, now);
        all
    }

    fn cluster() -> Vec<NodeCore<MemStore>> {
        let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"]), node(3, &["os=linux"])];
        settle(&mut nodes, 0);
        settle(&mut nodes, 10_000);
        nodes
    }

    const STABLE: &str = "[[builder]]\nname='slow'\ntree_stable_secs=60\n[[builder.step]]\nrun='make'\n";
    const COLLAPSE: &str = "[[builder]]\nname='c'\ntree_stable_secs=30\ncollapse=true\n[[builder.step]]\nrun='make'\n";

    #[test]
    fn tree_stable_timer_waits_for_a_quiet_branch() {
        let mut nodes = cluster();
        nodes[0].announce(10_000, commit_with("aaaa01", 1, STABLE)).unwrap();
        let early = run_for(&mut nodes, 10_000, 40_000, true);
        assert!(early.is_empty(), "nothing before the branch is quiet: {early:?}");
        // A second change at 40 s restarts the first job's timer too.
        nodes[1].announce(40_000, commit_with("aaaa02", 2, STABLE)).unwrap();
        let mid = run_for(&mut nodes, 40_000, 99_000, true);
        assert!(mid.is_empty(), "{mid:?}");
        let late = run_for(&mut nodes, 99_500, 110_000, true);
        assert_eq!(late.len(), 2, "both commits built once quiet: {late:?}");
    }

    #[test]
    fn collapsing_builds_only_the_newest_waiting_change() {
        let mut nodes = cluster();
        nodes[0].announce(10_000, commit_with("bbbb01", 1, COLLAPSE)).unwrap();
        run_for(&mut nodes, 10_000, 12_000, true);
        nodes[1].announce(12_500, commit_with("bbbb02", 2, COLLAPSE)).unwrap();
        run_for(&mut nodes, 12_500, 14_000, true);
        nodes[2].announce(14_500, commit_with("bbbb03", 3, COLLAPSE)).unwrap();
        let built = run_for(&mut nodes, 14_500, 60_000, true);
        assert_eq!(built.len(), 1, "{built:?}");
        assert_eq!(built[0].1.commit, "bbbb03");
        let newest = built[0].1.job;
        for n in &nodes {
            for c in ["bbbb01", "bbbb02"] {
                let j = n.jobs().values().find(|j| j.commit == c).unwrap();
                assert_eq!(n.job_state(&j.spec.id), JobState::Superseded);
                // Recorded, not silently dropped: the chain of supersessions ends at the newest.
                let mut at = j.superseded_by.expect("superseded_by is set");
                while let Some(next) = n.jobs()[&at].superseded_by {
                    at = next;
                }
                assert_eq!(at, newest);
            }
        }
    }

    #[test]
    fn force_builds_a_built_commit_again_as_a_new_job() {
        let mut nodes = cluster();
        nodes[0].announce(10_000, commit("cccc01")).unwrap();
        let first = run_for(&mut nodes, 10_000, 20_000, true);
        assert_eq!(first.len(), 1, "only the linux builder has nodes: {first:?}");
        let forced = nodes[1].force(20_000, commit("cccc01"), Some("linux"), "flaky?".into()).unwrap();
        let again = run_for(&mut nodes, 20_000, 30_000, true);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_ne!(again[0].1.job, first[0].1.job, "a forced build is a job of its own");
        for n in &nodes {
            assert!(n.store().has_record(&forced));
            assert_eq!(n.results_of(&first[0].1.job).len(), 1);
            assert_eq!(n.results_of(&again[0].1.job).len(), 1);
        }
        assert!(nodes[0].force(30_000, commit("cccc01"), Some("nope"), String::new()).is_err());
    }

    #[test]
    fn cancel_stops_waiting_and_running_jobs_everywhere() {
        let mut nodes = cluster();
        // Waiting (tree-stable) job: cancelled, never built.
        nodes[0].announce(10_000, commit_with("dddd01", 1, STABLE)).unwrap();
        run_for(&mut nodes, 10_000, 11_000, true);
        let waiting = nodes[0].jobs().values().find(|j| j.commit == "dddd01").unwrap().spec.id;
        nodes[2].cancel(11_000, waiting, "not needed".into()).unwrap();
        let built = run_for(&mut nodes, 11_000, 100_000, true);
        assert!(built.is_empty(), "{built:?}");
        for n in &nodes {
            assert_eq!(n.job_state(&waiting), JobState::Cancelled);
        }
        // Running job: the claimant is told to stop and records `cancelled`.
        nodes[0].announce(100_000, commit("dddd02")).unwrap();
        let started = run_for(&mut nodes, 100_000, 101_000, false);
        assert_eq!(started.len(), 1);
        let (who, order) = started[0].clone();
        nodes[(who + 1) % 3].cancel(101_000, order.job, "wrong branch".into()).unwrap();
        let mut cancels = Vec::new();
        settle_full(&mut nodes, 101_500, &mut cancels);
        assert_eq!(cancels, vec![(who, order.job)], "the claimant, and only it, was told to stop");
        let outcome = BuildOutcome {
            job: order.job,
            attempt: order.attempt,
            started_ms: 100_500,
            ended_ms: 101_600,
            cancelled: true,
            ..Default::default()
        };
        nodes[who].handle(101_600, Input::BuildFinished(outcome));
        settle(&mut nodes, 101_700);
        for n in &nodes {
            let r = n.results_of(&order.job);
            assert_eq!(r.len(), 1);
            let rec = record::decode_stored(&n.store().get_record(&r[0]).unwrap()).unwrap();
            assert!(matches!(rec.body, Body::Result(ref b) if b.status == Status::Cancelled));
        }
    }

    #[test]
    fn log_horizon_drops_old_logs_and_keeps_records() {
        let mut cfg = Config::new(vec!["os=linux".into()], 1);
        cfg.log_horizon_ms = Some(10 * 24 * 3600 * 1000);
        let n = NodeCore::new(cfg, deterministic_key(9), MemStore::new(), 0);
        let mut nodes = vec![n];
        let day = 24 * 3600 * 1000;
        let blob_of = |n: &NodeCore<MemStore>, job: &Hash32| {
            let rid = n.results_of(job)[0];
            match record::decode_stored(&n.store().get_record(&rid).unwrap()).unwrap().body {
                Body::Result(r) => r.steps[0].log.as_ref().unwrap().hash,
                _ => unreachable!(),
            }
        };
        nodes[0].announce(1_000, commit("ffff01")).unwrap();
        let old = run_for(&mut nodes, 1_000, 12_000, true);
        assert_eq!(old.len(), 1);
        let old_blob = blob_of(&nodes[0], &old[0].1.job);
        assert!(nodes[0].store().has_blob(&old_blob));
        // Twenty days on, the retention pass (on its own timer) runs.
        nodes[0].announce(20 * day, commit("ffff02")).unwrap();
        let new = run_for(&mut nodes, 20 * day, 20 * day + 120_000, true);
        assert_eq!(new.len(), 1);
        let new_blob = blob_of(&nodes[0], &new[0].1.job);
        assert!(!nodes[0].store().has_blob(&old_blob), "an old log is dropped");
        assert!(nodes[0].store().has_blob(&new_blob), "a recent log stays");
        assert_eq!(nodes[0].results_of(&old[0].1.job).len(), 1, "records stay");
    }

    #[test]
    fn busy_node_leaves_the_job_to_the_next_free_one() {
        let mut nodes = cluster();
        let mut now = 10_000;
        let mut running: BTreeMap<usize, usize> = BTreeMap::new();
        for k in 0..3 {
            nodes[k % 3].announce(now, commit(&format!("eeee0{k}"))).unwrap();
            for (i, _) in run_for(&mut nodes, now, now + 1_000, false) {
                *running.entry(i).or_default() += 1;
            }
            now += 1_500;
        }
        // Three jobs, three one-slot nodes: each node took one, none waited behind another.
        assert_eq!(running.len(), 3, "{running:?}");
        assert!(running.values().all(|n| *n == 1));
    }

    proptest! {
        #[test]
        fn ranking_is_the_same_whatever_order_peers_are_known_in(seed in 0u64..1000, n in 1usize..20) {
            let job = Hash32::of(&seed.to_le_bytes());
            let peers: Vec<PeerId> = (0..n as u64).map(|i| deterministic_key(i).public().to_peer_id()).collect();
            let mut a = peers.clone();
            let mut b: Vec<PeerId> = peers.into_iter().rev().collect();
            b.rotate_left((seed as usize) % n);
            rank(&job, &mut a);
            rank(&job, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}
