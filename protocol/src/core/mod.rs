//! `NodeCore`: the whole decision-making of one node, as a state machine.
//!
//! The runtime (the `peerbot` node, or the simulator) calls
//! [`NodeCore::handle`] with the current time and an input, drains
//! [`NodeCore::poll_output`], and calls `handle(now, Input::Tick)` again no
//! later than [`NodeCore::next_timeout`].
//!
//! `NodeCore` is a composition of sub-states, each owning its fields and
//! invariants and returning what happened; the files named here route
//! between them and are the only ones that emit outputs:
//!
//! - `mod.rs`: the struct, start-up, inputs, timers, heartbeats.
//! - `records.rs`: the one verify-store-apply pipeline, and the records
//!   this node signs (announce, force, cancel, results).
//! - `requests.rs`: requests served and answers taken (sync rounds,
//!   record transfers, log chunks).
//!
//! The sub-states: `members` (peers and liveness), `jobs` (the job table),
//! `claims` (claim and lease rules on it), `scheduler` (what to claim now),
//! `rank` (rendezvous ranking, pure), `builds` (own builds and results),
//! `sessions` (reconciliation sessions, catching up), `transfers`
//! (requests in flight, bounded transfers), `blobs` (logs), `retention`,
//! `timer` (all deadlines), `views` (read-only answers for the API).

mod admissions;
mod bisect;
mod blobs;
mod builds;
mod checkpoint;
mod claiming;
mod claims;
mod config;
mod depends;
mod health;
mod io;
mod jobs;
mod members;
mod notices;
mod peer_table;
pub mod rank;
mod records;
mod requests;
mod retention;
mod schedule;
mod scheduler;
mod sessions;
mod timer;
mod transfers;
pub mod views;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use self::blobs::MAX_LOG_BYTES;
pub use self::builds::{give_up_deadline, Running, RunningBuild};
pub use self::checkpoint::{Startup, CHECKPOINT_EVERY_MS, CHECKPOINT_EVERY_RECORDS, CHECKPOINT_KEY};
pub use self::claims::{ClaimOutcome, ClaimRules, Expired};
pub use self::config::{defaults, Config};
pub use self::health::StorageHealth;
pub use self::io::{
    Announced, BuildOrder, BuildOutcome, CommitInfo, Event, Input, NoticeOutcome, Output, StepOutcome, Verdict,
};
pub use self::jobs::{ClaimView, JobState, JobView, LostAttempt, NoticeRef};
pub use self::members::PeerView;
pub use self::peer_table::PeerTable;
pub use self::rank::{claim_winner, peer_key, rank, score};
pub use self::sessions::SyncProgress;
pub use self::views::{JobStatus, WaitingReason};

use self::admissions::Admissions;
use self::blobs::BlobServer;
use self::builds::OwnBuilds;
use self::claims::ClaimOutcome as Outcome;
use self::claims::RESTARTED;
use self::health::HealthChange;
use self::jobs::Jobs;
use self::members::Membership;
use self::retention::RETENTION_EVERY_MS;
use self::sessions::Sessions;
use self::timer::{Timer, TimerTable};
use self::transfers::Requests;
use crate::ids::Hash32;
use crate::record::{self, VerifiedRecord};
use crate::store::Store;
use crate::wire::{self, Gossip, Heartbeat, Lease};
use crate::Millis;

/// Why a build given up is released, as its `Release` says to every node.
pub const GIVEN_UP_REASON: &str = "no end reported within the steps' timeouts and the grace: build given up";

/// Checks a record's signature; the simulator shares one cache of results
/// across its many nodes, the node checks every time.
pub trait Verify: Send + Sync {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, record::RecordError>;
    /// Many records, answered in order: a catch-up's batches. A verifier
    /// may spread them over cores.
    fn verify_many(&self, batch: &[&[u8]]) -> Vec<Result<VerifiedRecord, record::RecordError>> {
        batch.iter().map(|b| self.verify(b)).collect()
    }
}

pub struct SignatureCheck;

impl Verify for SignatureCheck {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, record::RecordError> {
        record::verify(bytes)
    }
    fn verify_many(&self, batch: &[&[u8]]) -> Vec<Result<VerifiedRecord, record::RecordError>> {
        record::verify_batch(batch)
    }
}

/// Verifies a batch on `threads` threads at once, the caller's among them:
/// signatures are most of what a catch-up costs. Each thread checks its
/// part by one batch equation (`record::verify_batch`), which accepts
/// exactly what the single check accepts, and falls back to checking one
/// by one when the equation fails.
pub struct ParallelCheck {
    pub threads: usize,
}

impl Verify for ParallelCheck {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, record::RecordError> {
        record::verify(bytes)
    }
    fn verify_many(&self, batch: &[&[u8]]) -> Vec<Result<VerifiedRecord, record::RecordError>> {
        // Below this, a thread costs more than it saves.
        const MIN_PER_THREAD: usize = 32;
        let threads = self.threads.clamp(1, 64).min(batch.len() / MIN_PER_THREAD).max(1);
        let check = |part: &[&[u8]]| record::verify_batch(part);
        if threads == 1 {
            return check(batch);
        }
        let per = batch.len().div_ceil(threads);
        std::thread::scope(|s| {
            let others: Vec<_> = batch.chunks(per).skip(1).map(|part| s.spawn(move || check(part))).collect();
            let mut out = check(&batch[..per]);
            for h in others {
                out.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
            }
            out
        })
    }
}

/// Clone, so that an explorer can branch from a state (the model checker).
#[derive(Clone)]
pub struct NodeCore<S: Store> {
    cfg: Config,
    key: Keypair,
    me: PeerId,
    store: S,
    rng: ChaCha8Rng,
    started_ms: Millis,
    out: VecDeque<Output>,
    members: Membership,
    admissions: Admissions,
    jobs: Jobs,
    builds: OwnBuilds,
    requests: Requests,
    sessions: Sessions,
    blob_server: BlobServer,
    health: StorageHealth,
    next_replication: u64,
    timers: TimerTable,
    heartbeat_seq: u64,
    listen_addrs: Vec<String>,
    /// Applying the stored history at start-up: nothing is fetched for it.
    replaying: bool,
    verifier: Arc<dyn Verify>,
    /// Admission and revocation records applied, for the checkpoint.
    trust_records: Vec<Hash32>,
    /// The store's arrival position at the last checkpoint (or at start).
    checkpointed_at: u64,
    startup: checkpoint::Startup,
    schedules: schedule::Schedules,
    /// Bisection steps this node announces at their turn (`bisect.rs`).
    turns: bisect::Turns,
}

impl<S: Store> NodeCore<S> {
    pub fn new(cfg: Config, key: Keypair, store: S, now: Millis) -> Self {
        let me = key.public().to_peer_id();
        let mut timers = TimerTable::new();
        timers.set(Timer::Heartbeat, now);
        timers.set(Timer::Sync, now + cfg.sync_interval_ms);
        timers.set(Timer::Sweep, now);
        timers.set(Timer::Claims, now);
        timers.set(Timer::Retention, now + RETENTION_EVERY_MS);
        timers.set(Timer::Checkpoint, now + checkpoint::CHECKPOINT_EVERY_MS);
        timers.set(Timer::Schedule, now);
        let mut core = NodeCore {
            me,
            key,
            store,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            started_ms: now,
            out: VecDeque::new(),
            members: Membership::new(me, &cfg),
            admissions: Admissions::new(cfg.cluster.clone()),
            jobs: Jobs::default(),
            builds: OwnBuilds::new(),
            requests: Requests::new(),
            sessions: Sessions::default(),
            blob_server: BlobServer::default(),
            health: StorageHealth::default(),
            next_replication: 0,
            timers,
            heartbeat_seq: 0,
            listen_addrs: Vec::new(),
            replaying: true,
            verifier: Arc::new(SignatureCheck),
            trust_records: Vec::new(),
            checkpointed_at: 0,
            startup: checkpoint::Startup::default(),
            schedules: Default::default(),
            turns: Default::default(),
            cfg,
        };
        if let Some(own) = core.cfg.admission.clone() {
            if let Err(e) = core.admissions.learn(me, &own) {
                core.emit(Event::MessageRejected { from: me, reason: format!("not admitted: own admission: {e}") });
            }
        }
        core.load_schedules();
        core.load(now);
        core.release_claims_held_at_stop(now);
        core.publish_own_admission(now);
        core
    }

    /// Applies every stored record, as if heard again, a chunk at a time in
    /// (time, id) order: the history is never all in memory at once. The
    /// order does not matter to the outcome: records were screened when
    /// stored, and a result applied before its change settles the job all
    /// the same (the change's jobs are checked against the store).
    fn replay(&mut self, now: Millis) {
        const CHUNK: usize = 4096;
        let mut from = crate::keyspace::SyncKey::MIN;
        let mut first = true;
        loop {
            let keys = self.store.keys_in(&from, None, CHUNK + 1);
            let fresh: Vec<_> = keys.iter().filter(|k| first || **k != from).copied().collect();
            if fresh.is_empty() {
                break;
            }
            for k in &fresh {
                if let Some(r) = self.store.get_record(&k.id).and_then(|b| record::decode_stored(&b).ok()) {
                    self.apply(now, &r);
                    self.startup.records_read += 1;
                }
            }
            from = *fresh.last().expect("not empty");
            first = false;
        }
        self.replaying = false;
    }

    /// Claims held when the node stopped: their builds died with it. Say so
    /// rather than let the leases run out silently.
    fn release_claims_held_at_stop(&mut self, now: Millis) {
        for (job, attempt) in OwnBuilds::load_claims(&self.store) {
            if !self.jobs.is_open(&job) {
                continue;
            }
            self.builds.release_after_restart(job, attempt);
            if self.jobs.get(&job).is_some_and(|j| j.attempt <= attempt) {
                let lost = LostAttempt { attempt, holder: self.me, reason: RESTARTED.into() };
                self.jobs.reopen(now, &job, lost);
            }
        }
        self.save_own_claims(now);
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
    /// The jobs still to be decided: waiting, claimed, being built. Settled
    /// ones are read from the store (`job`, `job_state`, `results_of`).
    pub fn live_jobs(&self) -> &std::collections::HashMap<Hash32, JobView, rustc_hash::FxBuildHasher> {
        self.jobs.live()
    }
    pub fn peers(&self) -> &PeerTable {
        self.members.peers()
    }
    /// The name a peer gave itself (`--name`), if it gave one.
    pub fn peer_name(&self, p: &PeerId) -> Option<&str> {
        self.members.name_of(p)
    }
    pub fn running(&self) -> &Running {
        &self.builds.running
    }
    /// Where this node can be reached; sent with heartbeats.
    pub fn set_listen_addrs(&mut self, addrs: Vec<String>) {
        self.listen_addrs = addrs.into_iter().filter(|a| a.len() <= wire::MAX_ADDR_LEN).take(wire::MAX_ADDRS).collect();
    }
    pub fn set_verifier(&mut self, v: Arc<dyn Verify>) {
        self.verifier = v;
    }
    /// Live as the ranking sees it (as of the last sweep, a fraction of a
    /// heartbeat interval ago).
    pub fn is_live(&self, p: &PeerId) -> bool {
        self.members.is_live(p)
    }
    /// Live peers as the ranking counts them (this node not included).
    pub fn live_peer_count(&self) -> usize {
        self.members.live_count()
    }
    /// This node's heartbeat interval for the cluster size it sees.
    pub fn heartbeat_interval(&self) -> u64 {
        self.members.heartbeat_interval()
    }
    /// Live peers (this node included) that have every required label.
    pub fn eligible(&self, requires: &[String]) -> Vec<PeerId> {
        self.members.eligible(requires)
    }
    /// Waiting jobs in the order nodes take them: priority, then age.
    pub fn queue(&self) -> Vec<Hash32> {
        self.jobs.queue()
    }
    pub fn sync_progress(&self) -> SyncProgress {
        self.sessions.progress()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn next_timeout(&self) -> Millis {
        self.timers.next()
    }

    /// Something happened that may change what to claim: decide again now.
    fn reconsider(&mut self, now: Millis) {
        self.timers.set_earlier(Timer::Claims, now);
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn broadcast(&mut self, g: &Gossip) {
        self.out.push_back(Output::Broadcast(wire::encode_gossip(g)));
    }

    fn save_own_claims(&mut self, now: Millis) {
        match self.builds.save_claims(&mut self.store) {
            Ok(()) => self.storage_wrote(now),
            Err(e) => self.storage_failed(now, &e.to_string()),
        }
    }

    /// Whether durable writes work, for the API.
    pub fn storage_health(&self) -> &StorageHealth {
        &self.health
    }

    /// A durable write failed: reported per write as `StoreFailed`, and
    /// once as `StorageFailing` when writes start failing.
    fn storage_failed(&mut self, now: Millis, reason: &str) {
        self.emit(Event::StoreFailed { reason: reason.to_string() });
        if let HealthChange::Failing { reason } = self.health.failed(now, reason) {
            self.emit(Event::StorageFailing { reason });
        }
    }

    fn storage_wrote(&mut self, now: Millis) {
        if let HealthChange::Recovered { since } = self.health.wrote() {
            self.emit(Event::StorageRecovered { failing_ms: now.saturating_sub(since) });
            self.reconsider(now);
        }
    }

    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Tick => {}
            Input::Gossip { from, token, bytes } => {
                let verdict = self.on_gossip(now, from, &bytes);
                self.out.push_back(Output::Verdict { token, verdict });
            }
            Input::PeerConnected(p) => {
                self.members.set_connected(p, true);
                if !self.admissions.open() {
                    self.admissions.connected(p, now);
                    self.say_hello(p);
                }
                self.start_sync(now, p);
            }
            Input::PeerDisconnected(p) => {
                self.members.set_connected(p, false);
                self.admissions.disconnected(&p);
            }
            Input::Request { from, id, bytes } => {
                let resp = self.on_request(now, from, &bytes);
                self.out.push_back(Output::Reply { id, bytes: wire::encode_response(&resp) });
            }
            Input::Response { id, bytes } => self.on_response(now, id, &bytes),
            Input::RequestFailed { id, reason } => self.on_request_failed(id, reason),
            Input::BuildProgress { job, attempt, step } => {
                self.builds.set_step(&job, attempt, &step);
                self.jobs.set_own_step(self.me, &job, attempt, step);
            }
            Input::BuildFinished(o) => self.on_build_finished(now, o),
            Input::NoticeFinished(o) => self.on_notice_finished(now, o),
        }
        if now >= self.next_timeout() {
            self.on_timers(now);
        }
    }

    fn on_timers(&mut self, now: Millis) {
        if self.timers.is_due(Timer::Sweep, now) {
            self.members.sweep(now);
            self.gate_connections(now);
            self.timers.set(Timer::Sweep, now + (self.heartbeat_interval() / 4).max(500));
        }
        if self.timers.is_due(Timer::Heartbeat, now) {
            self.send_heartbeat(now);
            self.timers.set(Timer::Heartbeat, now + self.heartbeat_interval());
        }
        if self.timers.is_due(Timer::Renew, now) {
            self.send_renewals(now);
        }
        if self.timers.is_due(Timer::Retention, now) {
            self.timers.set(Timer::Retention, now + RETENTION_EVERY_MS);
            self.expire_logs(now);
        }
        if self.timers.is_due(Timer::GiveUp, now) {
            self.give_up_overdue_builds(now);
        }
        if self.timers.is_due(Timer::Checkpoint, now) {
            self.timers.set(Timer::Checkpoint, now + checkpoint::CHECKPOINT_EVERY_MS);
            self.checkpoint_if_any();
        }
        if self.timers.is_due(Timer::Sync, now) {
            let mut connected = self.members.connected_sorted();
            connected.retain(|p| self.admissions.admitted_at(p, now).is_ok());
            if let Some(p) = connected.choose(&mut self.rng).copied() {
                self.start_sync(now, p);
            }
            self.timers.set(Timer::Sync, now + self.cfg.sync_interval_ms);
        }
        if self.timers.is_due(Timer::Schedule, now) {
            self.on_schedule(now);
        }
        if self.timers.is_due(Timer::Bisect, now) {
            self.on_bisect(now);
        }
        self.expire_leases(now);
        self.consider_claims(now);
        crate::invariant!(
            self.builds.next_give_up().is_none_or(|t| self.timers.get(Timer::GiveUp).is_some_and(|at| at <= t)),
            "every running build's give-up deadline is in the timer table"
        );
    }

    /// Disconnects peers that showed no admission within the grace period,
    /// or whose admission ended; drops records held too long.
    fn gate_connections(&mut self, now: Millis) {
        if self.admissions.open() {
            return;
        }
        let connected = self.members.connected_sorted();
        for (peer, why) in self.admissions.overdue(now, self.cfg.admission_grace_ms, &connected) {
            let reason = format!(
                "not admitted: {} after {} ms connected: disconnected",
                why.as_str(),
                self.cfg.admission_grace_ms
            );
            self.emit(Event::MessageRejected { from: peer, reason });
            self.out.push_back(Output::Disconnect { peer });
        }
        self.admissions.expire_held(now);
    }

    /// Peers with a valid admission now (this node not included).
    pub fn admitted_peer_count(&self, now: Millis) -> usize {
        self.admissions.admitted_count(now).saturating_sub(1)
    }

    /// Records held until their signer's admission arrives.
    pub fn held_records(&self) -> usize {
        self.admissions.held_count()
    }

    /// Every revocation known: who, and from when.
    pub fn revocations(&self) -> Vec<(PeerId, Millis)> {
        self.admissions.revocations().map(|(p, t)| (*p, *t)).collect()
    }

    /// When `peer`'s admission was revoked, if it was.
    pub fn revoked_at(&self, peer: &PeerId) -> Option<Millis> {
        self.admissions.revoked_at(peer)
    }

    /// This node's running builds as leases, renewed in its own view too.
    fn own_leases(&mut self, now: Millis) -> Vec<Lease> {
        let leases: Vec<Lease> = self
            .builds
            .running
            .iter()
            .take(wire::MAX_RUNNING_IN_HEARTBEAT)
            .map(|(job, b)| Lease { job: *job, attempt: b.attempt, step: b.step.clone() })
            .collect();
        self.jobs.extend_own(now, self.me, leases.iter().map(|l| &l.job), self.cfg.lease_ms);
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
            busy: self.builds.builds_running(),
            running,
            addrs: self.listen_addrs.clone(),
            name: self.cfg.name.clone(),
        };
        self.broadcast(&Gossip::Heartbeat(hb));
        for (job, attempt) in self.builds.releases_to_repeat() {
            self.broadcast(&Gossip::Release { job, attempt, reason: RESTARTED.into(), sent_ms: now });
        }
    }

    /// The claimant renews its leases between heartbeats, which grow
    /// apart in large clusters.
    fn send_renewals(&mut self, now: Millis) {
        if self.builds.running.is_empty() {
            self.timers.stop(Timer::Renew);
            return;
        }
        let leases = self.own_leases(now);
        self.broadcast(&Gossip::Renew { sent_ms: now, leases });
        self.timers.set(Timer::Renew, now + (self.cfg.lease_ms / 3).max(100));
    }

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
        if !matches!(msg, Gossip::Record(_)) {
            if let Err(why) = self.admissions.admitted_at(&from, now) {
                self.emit(Event::MessageRejected { from, reason: format!("not admitted: {}", why.as_str()) });
                // Its relayer may be honest and ahead of us; a direct peer is not.
                return if self.members.peers().get(&from).is_some_and(|v| v.connected) {
                    Verdict::Reject
                } else {
                    Verdict::Ignore
                };
            }
        }
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
                self.reconsider(now);
                let outcome = self.take_claim(now, from, c);
                self.settle(now, outcome);
                Verdict::Accept
            }
            Gossip::Release { job, attempt, reason, .. } => {
                if self.jobs.release(now, from, &job, attempt, &reason) {
                    self.reconsider(now);
                    self.emit(Event::Released { job, attempt, by: from, reason });
                }
                Verdict::Accept
            }
        }
    }

    fn on_heartbeat(&mut self, now: Millis, from: PeerId, h: Heartbeat) -> Verdict {
        if let Some(l) = self.admissions.unpermitted(&from, &h.labels) {
            let reason = format!("not admitted: label {l:?} is not granted by its admission");
            self.emit(Event::MessageRejected { from, reason });
            return Verdict::Reject;
        }
        let summary = match self.members.on_heartbeat(now, from, &h) {
            Ok(s) => s,
            Err(why) => {
                self.emit(Event::MessageRejected { from, reason: why.into() });
                return Verdict::Reject;
            }
        };
        if summary.became_live {
            self.reconsider(now);
        }
        self.renew(now, from, h.running);
        if let Some(addrs) = summary.new_addrs {
            self.emit(Event::PeerAddrs { peer: from, addrs });
        }
        Verdict::Accept
    }

    fn renew(&mut self, now: Millis, from: PeerId, mut leases: Vec<Lease>) {
        leases.retain(|l| self.jobs.get(&l.job).is_none_or(|j| self.ineligible(&from, &j.spec).is_none()));
        for outcome in self.jobs.renew(now, self.me, from, leases, self.claim_rules()) {
            self.reconsider(now);
            self.settle(now, outcome);
        }
    }

    pub(super) fn claim_rules(&self) -> ClaimRules {
        ClaimRules { lease_ms: self.cfg.lease_ms, grace_ms: self.cfg.build_grace_ms }
    }

    /// Why `peer` may not build `spec`, if it may not: its admission does
    /// not grant a label the job requires, or its heartbeats lack one.
    pub(super) fn ineligible(&self, peer: &PeerId, spec: &crate::recipe::JobSpec) -> Option<&'static str> {
        if self.admissions.unpermitted(peer, &spec.requires).is_some() {
            return Some("its admission does not grant a label the job requires");
        }
        match self.members.peers().get(peer) {
            Some(v) if !v.labels.is_empty() && !crate::labels::satisfies(&v.labels, &spec.requires) => {
                Some("it lacks a label the job requires")
            }
            _ => None,
        }
    }

    /// A claim heard, for a job of the table or one not heard of yet; a job
    /// the store knows but the table does not is settled.
    fn take_claim(&mut self, now: Millis, from: PeerId, c: wire::Claim) -> Outcome {
        if self.jobs.get(&c.job).is_none() && self.store_knows_job(&c.job) {
            return Outcome::Stale;
        }
        if let Some(why) = self.jobs.get(&c.job).and_then(|j| self.ineligible(&from, &j.spec)) {
            return Outcome::Refused { job: c.job, by: from, why };
        }
        self.jobs.take_claim(now, from, c, self.claim_rules())
    }

    /// Turns what a claim did into events, and stops this node's build when
    /// it lost a conflict.
    fn settle(&mut self, now: Millis, outcome: Outcome) {
        match outcome {
            Outcome::Stale | Outcome::Early | Outcome::Extended => {}
            Outcome::Refused { job, by, why } => self.emit(Event::MessageRejected {
                from: by,
                reason: format!("claim refused: {why} (job {})", job.short()),
            }),
            Outcome::Claimed { job, attempt, by } => self.emit(Event::Claimed { job, attempt, by }),
            Outcome::Conflict { job, attempt, winner, loser } => {
                self.emit(Event::ClaimConflict { job, attempt, winner, loser });
                if loser == self.me {
                    if let Some(attempt) = self.stop_own_build(now, &job) {
                        self.out.push_back(Output::CancelBuild { job, attempt });
                    }
                }
            }
        }
    }

    /// Stops counting a build of this node's against its slots (the caller
    /// says why, and whether to stop the executor); its attempt if it ran.
    fn stop_own_build(&mut self, now: Millis, job: &Hash32) -> Option<u32> {
        let attempt = self.builds.stop(job)?;
        self.save_own_claims(now);
        self.timers.set_or_stop(Timer::GiveUp, self.builds.next_give_up());
        Some(attempt)
    }

    /// Builds whose end never came, well past their steps' timeouts: the
    /// executor lost them (a hung fetch, a crash of its own, a report that
    /// went missing). Stop waiting: tell the executor to stop, free the
    /// slot, and release the claim so that every node reopens the job at
    /// once. A late end of such a build is ignored.
    fn give_up_overdue_builds(&mut self, now: Millis) {
        let overdue = self.builds.give_up_overdue(now);
        self.timers.set_or_stop(Timer::GiveUp, self.builds.next_give_up());
        if overdue.is_empty() {
            return;
        }
        for (job, b) in overdue {
            self.out.push_back(Output::CancelBuild { job, attempt: b.attempt });
            self.emit(Event::BuildGivenUp { job, attempt: b.attempt, ran_ms: now.saturating_sub(b.started_ms) });
            // The job reopens here as the next attempt, as the release makes
            // it reopen everywhere (unless it is done or no longer ours).
            self.jobs.release(now, self.me, &job, b.attempt, GIVEN_UP_REASON);
            let reason = GIVEN_UP_REASON.to_string();
            self.broadcast(&Gossip::Release { job, attempt: b.attempt, reason, sent_ms: now });
        }
        self.builds.gave_up_ms = now;
        self.save_own_claims(now);
        self.reconsider(now);
    }

    fn expire_leases(&mut self, now: Millis) {
        for Expired { job, attempt, holder } in self.jobs.expire_leases(now, self.me) {
            self.members.mark_suspect(&holder);
            self.emit(Event::LeaseExpired { job, attempt, holder });
        }
    }

    /// Has this node the history its peers have? Nothing known missing, and
    /// one reconciliation finished (or no peer to reconcile with, or peers
    /// that never finish one: an older version must not keep a node from
    /// building for ever).
    pub fn caught_up(&self, now: Millis) -> bool {
        let waited_long = now > self.started_ms + 3 * self.cfg.sync_interval_ms;
        !self.sessions.fetching(now) && (self.sessions.synced_once() || !self.members.any_connected() || waited_long)
    }
}
