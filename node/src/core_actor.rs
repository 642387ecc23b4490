//! The `Core` actor: owns the `NodeCore`, feeds it inputs with the wall
//! clock, routes its outputs to the network and the executor, and answers
//! the API's questions about live state (in `queries.rs`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::{Multiaddr, PeerId};
use peerbot_protocol::core::{Announced, CommitInfo, Event, Input, JobStatus, NodeCore, Output};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::store::Store;
use peerbot_protocol::Millis;
use serde_json::{json, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::executor::{BuildReport, CancelBuild, Executor, StartBuild};
use crate::net::{DropCount, NetCommand, NetEvent};
use crate::now_ms;
use crate::store::RocksStore;

const PEER_ADDRS_KEY: &str = "peer_addrs";
const MAX_REMEMBERED_PEERS: usize = 256;

/// Messages the Core actor's mailbox holds before `try_send` to it fails
/// (actix's `do_send` and `send` are not held to it).
pub const CORE_MAILBOX: usize = 256;

pub struct CoreActor {
    core: NodeCore<RocksStore>,
    net: mpsc::Sender<NetCommand>,
    /// Commands the full channel to the net task could not take.
    net_dropped: DropCount,
    net_gone: bool,
    executor: Option<Addr<Executor>>,
    data_dir: PathBuf,
    jail: std::sync::Arc<crate::sandbox::StepJail>,
    /// The cluster and this node's admission, as the API shows them.
    cluster: Value,
    metrics: crate::metrics::Metrics,
    timer: Option<SpawnHandle>,
    blob_waiters: HashMap<u64, oneshot::Sender<Result<(), String>>>,
    next_token: u64,
    listen: Vec<Multiaddr>,
    http: Option<String>,
    started_ms: u64,
    records_stored: u64,
    records_rejected: u64,
    /// The core's verifier, when large answers are checked off this thread.
    precheck: Option<std::sync::Arc<crate::precheck::Prechecked>>,
    /// Sends this node's notices; orders wait here until it is started.
    notifiers: Option<Addr<crate::notify::Notifiers>>,
    notices_waiting: Vec<peerbot_protocol::core::BuildOrder>,
}

/// Nodes whose admission was revoked, and from when: the HTTP API marks
/// their results, which it reads from the store without the core.
pub fn revoked_signers() -> &'static std::sync::RwLock<HashMap<PeerId, u64>> {
    static R: std::sync::OnceLock<std::sync::RwLock<HashMap<PeerId, u64>>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// A peer id as text, as the API shows signers: the base58 encoding costs
/// more than the rest of a listed record, and a page names few peers.
pub fn peer_text(p: &PeerId) -> String {
    thread_local!(static TEXT: std::cell::RefCell<HashMap<PeerId, String>> = Default::default());
    TEXT.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(s) = t.get(p) {
            return s.clone();
        }
        // Bounded: a cluster has few signers, anything past this is odd.
        if t.len() >= 1024 {
            t.clear();
        }
        let s = p.to_string();
        t.insert(*p, s.clone());
        s
    })
}

impl CoreActor {
    pub fn new(
        core: NodeCore<RocksStore>,
        net: mpsc::Sender<NetCommand>,
        data_dir: PathBuf,
        jail: std::sync::Arc<crate::sandbox::StepJail>,
    ) -> Self {
        if let Ok(mut r) = revoked_signers().write() {
            r.extend(core.revocations());
        }
        CoreActor {
            core,
            net,
            net_dropped: DropCount::default(),
            net_gone: false,
            executor: None,
            data_dir,
            jail,
            cluster: Value::Null,
            metrics: Default::default(),
            timer: None,
            blob_waiters: HashMap::new(),
            next_token: 1,
            listen: vec![],
            http: None,
            started_ms: now_ms(),
            records_stored: 0,
            records_rejected: 0,
            precheck: None,
            notifiers: None,
            notices_waiting: vec![],
        }
    }

    /// Large answers (fetched records) are checked on other threads first;
    /// `p` must be the core's verifier, which takes the results.
    pub fn with_precheck(mut self, p: std::sync::Arc<crate::precheck::Prechecked>) -> Self {
        self.precheck = Some(p);
        self
    }

    /// Hands an answer to the core, its records' signatures checked first
    /// on a blocking thread if it is large: the actor meanwhile goes on
    /// (storing the previous batch), and answers are handled as their
    /// checks end, in any order, as they may arrive in any order.
    fn on_response(&mut self, ctx: &mut Context<Self>, id: u64, bytes: Vec<u8>) {
        let p = match &self.precheck {
            Some(p) if bytes.len() >= crate::precheck::PRECHECK_MIN_BYTES => p.clone(),
            _ => return self.input(ctx, Input::Response { id, bytes }),
        };
        let task = tokio::task::spawn_blocking(move || {
            let recs = p.check_answer(&bytes);
            (bytes, recs)
        });
        ctx.spawn(actix::fut::wrap_future::<_, Self>(task).map(move |done, act, ctx| match done {
            Ok((bytes, recs)) => {
                let p = act.precheck.clone();
                if let Some(p) = &p {
                    p.hold(recs);
                }
                act.input(ctx, Input::Response { id, bytes });
                if let Some(p) = &p {
                    p.clear();
                }
            }
            Err(e) => act.input(ctx, Input::RequestFailed { id, reason: format!("checking the answer failed: {e}") }),
        }));
    }

    fn input(&mut self, ctx: &mut Context<Self>, input: Input) {
        match &input {
            Input::Request { bytes, .. } | Input::Response { bytes, .. } => self.metrics.bytes("in", bytes.len()),
            _ => {}
        }
        self.core.handle(now_ms(), input);
        self.drain(ctx);
    }

    /// Routes every pending output, then schedules the next tick.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.route_outputs();
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let wait = tick_delay(self.core.next_timeout(), now_ms());
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.input(ctx, Input::Tick);
        }));
    }

    fn route_outputs(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Broadcast(bytes) => self.send_net(NetCommand::Publish(bytes)),
                Output::Request { peer, id, bytes } => {
                    self.metrics.bytes("out", bytes.len());
                    self.send_net(NetCommand::Request { peer, id, bytes })
                }
                Output::Reply { id, bytes } => {
                    self.metrics.bytes("out", bytes.len());
                    self.send_net(NetCommand::Reply { id, bytes })
                }
                Output::Verdict { token, verdict } => self.send_net(NetCommand::Verdict { token, verdict }),
                Output::StartBuild(order) if order.notice.is_some() => match &self.notifiers {
                    Some(n) => n.do_send(crate::notify::SendNotice(order)),
                    None => self.notices_waiting.push(order),
                },
                Output::StartBuild(order) => self.send_executor(StartBuild(order)),
                Output::CancelBuild { job, attempt } => {
                    self.notices_waiting.retain(|o| o.job != job);
                    if let Some(n) = &self.notifiers {
                        n.do_send(crate::notify::StopNotice { job, attempt });
                    }
                    self.send_executor(CancelBuild { job, attempt })
                }
                Output::Disconnect { peer } => self.send_net(NetCommand::Disconnect { peer }),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Never waits for the net task. When its channel is full, a request
    /// fails back into the core at once, so the core never waits for an
    /// answer to a request that was not sent; anything else is dropped and
    /// counted: gossip is repeated (heartbeats) or repaired by
    /// reconciliation, a missing reply fails the requester at its timeout,
    /// and the net task gives up verdicts and replies that do not come.
    fn send_net(&mut self, cmd: NetCommand) {
        let (cmd, reason) = match self.net.try_send(cmd) {
            Ok(()) => return,
            Err(TrySendError::Full(cmd)) => {
                if let Some(n) = self.net_dropped.note(Instant::now()) {
                    warn!(dropped = n, total = self.net_dropped.total, "the network task is behind: dropping commands");
                }
                (cmd, "the queue to the network is full")
            }
            Err(TrySendError::Closed(cmd)) => {
                if !self.net_gone {
                    self.net_gone = true;
                    warn!("the network task has stopped");
                }
                (cmd, "the network task has stopped")
            }
        };
        if let NetCommand::Request { id, .. } = cmd {
            self.core.handle(now_ms(), Input::RequestFailed { id, reason: reason.into() });
        }
    }

    /// The executor's mailbox holds every order the core can have in flight
    /// (see `EXECUTOR_MAILBOX`); an order is never dropped, even if that
    /// bound were broken.
    fn send_executor<M>(&self, msg: M)
    where
        M: Message<Result = ()> + Send + 'static,
        Executor: Handler<M>,
    {
        let Some(ex) = &self.executor else { return };
        if let Err(SendError::Full(msg)) = ex.try_send(msg) {
            error!("the executor's mailbox is full, which the core's limit on running builds should prevent");
            ex.do_send(msg);
        }
    }

    fn on_event(&mut self, e: Event) {
        self.count(&e);
        match e {
            Event::RecordStored { id, kind, signer, from } => {
                self.records_stored += 1;
                match from {
                    None => info!(record = %id.short(), kind, signer = %signer, "record stored"),
                    Some(from) => debug!(record = %id.short(), kind, signer = %signer, %from, "record stored"), // a catch-up stores many
                }
            }
            Event::RecordRejected { from, reason } => {
                self.records_rejected += 1;
                warn!(peer = %from, "rejected a record: {reason}");
            }
            Event::MessageRejected { from, reason } => warn!(peer = %from, "rejected a message: {reason}"),
            Event::Claimed { job, attempt, by } => info!(job = %job.short(), attempt, by = %by, "job claimed"),
            Event::ClaimConflict { job, attempt, winner, loser } => {
                warn!(job = %job.short(), attempt, %winner, %loser, "two claims for one job; the better-ranked one stands")
            }
            Event::LeaseExpired { job, attempt, holder } => {
                warn!(job = %job.short(), attempt, %holder, "lease ran out with no result; job reopened")
            }
            Event::Released { job, attempt, by, reason } => {
                info!(job = %job.short(), attempt, %by, "claim released: {reason}")
            }
            Event::BuildStarted { job, attempt } => info!(job = %job.short(), attempt, "claimed; starting build"),
            Event::BuildGivenUp { job, attempt, ran_ms } => warn!(
                job = %job.short(),
                attempt,
                ran_secs = ran_ms / 1000,
                "no end reported for a build past its steps' timeouts; gave it up and released the claim"
            ),
            Event::BuildPublished { job, attempt, status, record } => {
                info!(job = %job.short(), attempt, status = status.as_str(), record = %record.short(), "build result published")
            }
            Event::NoticePublished { job, delivered, record } => {
                info!(job = %job.short(), delivered, record = %record.short(), "notice record published")
            }
            Event::BlobFetched { token, hash, ok, detail } => {
                debug!(blob = %hash.short(), ok, "blob fetch: {detail}");
                if let Some(tx) = self.blob_waiters.remove(&token) {
                    let _ = tx.send(if ok { Ok(()) } else { Err(detail) });
                }
            }
            Event::SyncFinished { peer, rounds, need, have, pushed } => {
                if need + have > 0 {
                    info!(%peer, rounds, lacked_here = need, lacked_there = have, pushed, "reconciled with peer");
                } else {
                    debug!(%peer, rounds, "in sync with peer");
                }
            }
            Event::SyncFailed { peer, reason } => debug!(%peer, "sync failed: {reason}"),
            Event::PeerAddrs { peer, addrs } => {
                let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                self.send_net(NetCommand::AddAddrs { peer, addrs: addrs.clone() });
                self.remember_peer(peer, addrs);
            }
            Event::CatchingUp { to_fetch, fetched } => {
                info!(to_fetch, fetched, "catching up with the cluster's history")
            }
            Event::LogsExpired { blobs } => info!(blobs, "dropped logs older than the log horizon"),
            // One line when writes start failing and one when they work
            // again, not one per record.
            Event::StoreFailed { reason } => debug!("storage error: {reason}"),
            Event::StorageFailing { reason } => {
                tracing::error!("storage is failing ({reason}); no new builds until it takes writes again")
            }
            Event::StorageRecovered { failing_ms } => info!(failing_ms, "storage takes writes again"),
            Event::GaveBack { job, attempt, reason } => {
                warn!(job = %job.short(), attempt, "gave the job back: {reason}")
            }
            Event::Revoked { peer, revoked_ms } => {
                if let Ok(mut r) = revoked_signers().write() {
                    r.insert(peer, revoked_ms);
                }
                warn!(%peer, revoked_ms, "admission revoked: its records from then on are refused")
            }
        }
    }

    /// Moves the counters of `/metrics`.
    fn count(&mut self, e: &Event) {
        use crate::metrics::Metrics as M;
        let m = &mut self.metrics;
        match e {
            Event::RecordStored { .. } => {
                m.records_stored.inc();
            }
            Event::RecordRejected { reason, .. } => m.record_rejected(reason),
            Event::MessageRejected { reason, .. } => m.message_rejected(reason),
            Event::ClaimConflict { winner, loser, .. } => {
                let me = self.core.peer_id();
                if *winner == me {
                    M::outcome(&m.claims, "won");
                } else if *loser == me {
                    M::outcome(&m.claims, "lost");
                }
            }
            Event::LeaseExpired { .. } => {
                m.lease_expiries.inc();
            }
            Event::BuildStarted { .. } => M::outcome(&m.builds, "started"),
            Event::BuildPublished { status, .. } => M::outcome(&m.builds, status.as_str()),
            Event::BuildGivenUp { .. } => M::outcome(&m.builds, "given_up"),
            Event::GaveBack { .. } => M::outcome(&m.builds, "gave_back"),
            Event::SyncFinished { .. } => M::outcome(&m.sync_rounds, "finished"),
            Event::SyncFailed { .. } => M::outcome(&m.sync_rounds, "failed"),
            _ => {}
        }
    }

    /// `/metrics`: the counters, and gauges read now.
    fn metrics_text(&mut self) -> String {
        use crate::metrics::Metrics as M;
        let peers = self.core.peers();
        let live = peers.values().filter(|v| v.live).count() as i64;
        let connected = peers.values().filter(|v| v.connected).count() as i64;
        M::set(&self.metrics.peers, "known", peers.len() as i64);
        M::set(&self.metrics.peers, "live", live);
        M::set(&self.metrics.peers, "connected", connected);
        M::set(&self.metrics.peers, "admitted", self.core.admitted_peer_count(now_ms()) as i64);
        self.metrics.records_held.set(self.core.held_records() as i64);
        let mut by_state = [0i64; 3];
        for id in self.core.live_jobs().keys() {
            match self.core.job_status(id) {
                JobStatus::Pending => by_state[0] += 1,
                JobStatus::Claimed => by_state[1] += 1,
                JobStatus::Running => by_state[2] += 1,
                _ => {}
            }
        }
        for (state, n) in ["pending", "claimed", "running"].iter().zip(by_state) {
            M::set(&self.metrics.jobs, state, n);
        }
        self.metrics.storage_ok.set(self.core.storage_health().ok() as i64);
        self.metrics.text()
    }

    fn write_node_json(&self) {
        let Some(http) = &self.http else { return };
        if self.listen.is_empty() {
            return;
        }
        let v = json!({
            "peer_id": self.core.peer_id().to_string(),
            "name": self.core.config().name,
            "listen": self.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "http": http,
            "cluster": self.cluster["id"],
        });
        let tmp = self.data_dir.join("node.json.tmp");
        let res = std::fs::write(&tmp, serde_json::to_vec_pretty(&v).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, self.data_dir.join("node.json")));
        if let Err(e) = res {
            warn!("writing node.json: {e}");
        }
    }

    fn remember_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let mut all = load_peer_addrs(self.core.store());
        all.insert(peer.to_string(), addrs.iter().map(|a| a.to_string()).collect());
        while all.len() > MAX_REMEMBERED_PEERS {
            let k = all.keys().next().cloned().unwrap_or_default();
            all.remove(&k);
        }
        let bytes = serde_json::to_vec(&all).unwrap_or_default();
        if let Err(e) = self.core.store_mut().put_state(PEER_ADDRS_KEY, &bytes) {
            warn!("remembering peer addresses: {e}");
        }
    }
}
/// How long the Core actor sleeps before it hands the core a `Tick`: until
/// the core's `next_timeout`, exactly, however far off, as the simulator
/// does. The floor of 1 ms is also the simulator's (it never schedules a
/// tick at the instant it is in): a deadline already past is met by the
/// next tick, and if the core ever left its deadline in the past after a
/// tick, the node would tick once a millisecond instead of spinning.
fn tick_delay(next_timeout: Millis, now: Millis) -> Duration {
    Duration::from_millis(next_timeout.saturating_sub(now).max(MIN_TICK_MS))
}

const MIN_TICK_MS: Millis = 1;

pub fn load_peer_addrs<S: Store>(store: &S) -> BTreeMap<String, Vec<String>> {
    store.get_state(PEER_ADDRS_KEY).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

impl Actor for CoreActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        let repos = self.core.config().repos.clone();
        let me = ctx.address();
        let ex = Executor::new(self.data_dir.clone(), self.jail.clone(), repos, me.clone().recipient(), me.recipient())
            .start();
        self.executor = Some(ex);
        self.drain(ctx);
    }
}

impl StreamHandler<NetEvent> for CoreActor {
    fn handle(&mut self, ev: NetEvent, ctx: &mut Context<Self>) {
        match ev {
            NetEvent::Listening(addrs) => {
                self.core.set_listen_addrs(addrs.iter().map(|a| a.to_string()).collect());
                self.listen = addrs;
                self.write_node_json();
            }
            NetEvent::Gossip { from, token, bytes } => self.input(ctx, Input::Gossip { from, token, bytes }),
            NetEvent::Connected(p) => self.input(ctx, Input::PeerConnected(p)),
            NetEvent::Disconnected(p) => self.input(ctx, Input::PeerDisconnected(p)),
            NetEvent::Request { from, id, bytes } => self.input(ctx, Input::Request { from, id, bytes }),
            NetEvent::Response { id, bytes } => self.on_response(ctx, id, bytes),
            NetEvent::RequestFailed { id, reason } => self.input(ctx, Input::RequestFailed { id, reason }),
            NetEvent::PeerAddrs { peer, addrs } => self.remember_peer(peer, addrs),
            NetEvent::Limited { peer, what } => {
                debug!(%peer, "{what}");
                self.metrics.message_rejected(what)
            }
        }
    }
    fn finished(&mut self, _: &mut Context<Self>) {
        warn!("the network task ended");
    }
}

/// The notifier actor, once the HTTP address (for links) is known.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetNotifiers(pub Addr<crate::notify::Notifiers>);

impl Handler<SetNotifiers> for CoreActor {
    type Result = ();
    fn handle(&mut self, msg: SetNotifiers, _: &mut Context<Self>) {
        for order in self.notices_waiting.drain(..) {
            msg.0.do_send(crate::notify::SendNotice(order));
        }
        self.notifiers = Some(msg.0);
    }
}

impl Handler<crate::notify::NoticeDone> for CoreActor {
    type Result = ();
    fn handle(&mut self, msg: crate::notify::NoticeDone, ctx: &mut Context<Self>) {
        self.input(ctx, Input::NoticeFinished(msg.0));
    }
}

impl Handler<BuildReport> for CoreActor {
    type Result = ();
    fn handle(&mut self, msg: BuildReport, ctx: &mut Context<Self>) {
        let input = match msg {
            BuildReport::Progress { job, attempt, step } => Input::BuildProgress { job, attempt, step },
            BuildReport::Finished(o) => Input::BuildFinished(o),
        };
        self.input(ctx, input);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetHttp(pub String);

#[derive(Message)]
#[rtype(result = "String")]
pub struct GetMetrics;

impl Handler<GetMetrics> for CoreActor {
    type Result = String;
    fn handle(&mut self, _: GetMetrics, _: &mut Context<Self>) -> String {
        self.metrics_text()
    }
}

/// The cluster the node was admitted to, for `/api/v1/node` and node.json.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCluster(pub Value);

impl Handler<SetCluster> for CoreActor {
    type Result = ();
    fn handle(&mut self, msg: SetCluster, _: &mut Context<Self>) {
        self.cluster = msg.0;
        self.write_node_json();
    }
}

impl Handler<SetHttp> for CoreActor {
    type Result = ();
    fn handle(&mut self, msg: SetHttp, _: &mut Context<Self>) {
        self.http = Some(msg.0);
        self.write_node_json();
    }
}

/// The node stops: save what the next start needs, and take no input
/// after it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for CoreActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        match self.core.checkpoint() {
            Ok(()) => info!("checkpoint saved: the next start reads no history"),
            Err(e) => warn!("no checkpoint saved, the next start reads what arrived since the last one: {e}"),
        }
        ctx.stop();
    }
}

#[derive(Message)]
#[rtype(result = "Result<Announced, String>")]
pub struct Announce(pub CommitInfo);

impl Handler<Announce> for CoreActor {
    type Result = Result<Announced, String>;
    fn handle(&mut self, msg: Announce, ctx: &mut Context<Self>) -> Self::Result {
        let r = self.core.announce(now_ms(), msg.0);
        self.drain(ctx);
        r
    }
}

#[derive(Message)]
#[rtype(result = "Result<Hash32, String>")]
pub struct Force {
    pub info: CommitInfo,
    pub builder: Option<String>,
    pub reason: String,
}

impl Handler<Force> for CoreActor {
    type Result = Result<Hash32, String>;
    fn handle(&mut self, msg: Force, ctx: &mut Context<Self>) -> Self::Result {
        let r = self.core.force(now_ms(), msg.info, msg.builder.as_deref(), msg.reason);
        self.drain(ctx);
        r
    }
}

/// A try build of a patch (see `trybuild`).
#[derive(Message)]
#[rtype(result = "Result<Hash32, String>")]
pub struct TryPatch {
    pub info: CommitInfo,
    pub builders: Vec<String>,
    pub patch: Vec<u8>,
    pub reason: String,
}

impl Handler<TryPatch> for CoreActor {
    type Result = Result<Hash32, String>;
    fn handle(&mut self, msg: TryPatch, ctx: &mut Context<Self>) -> Self::Result {
        let r = self.core.try_patch(now_ms(), msg.info, &msg.builders, &msg.patch, msg.reason);
        self.drain(ctx);
        r
    }
}

/// A blob's bytes, fetched from peers when this node does not hold it.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, String>")]
pub struct GetBlob {
    pub hash: Hash32,
    pub hint: Option<PeerId>,
}

impl Handler<GetBlob> for CoreActor {
    type Result = ResponseFuture<Result<Vec<u8>, String>>;
    fn handle(&mut self, msg: GetBlob, ctx: &mut Context<Self>) -> Self::Result {
        let store = self.core.store().clone();
        if let Some(bytes) = store.get_blob(&msg.hash) {
            return Box::pin(async move { Ok(bytes) });
        }
        let fetched = <Self as Handler<FetchBlob>>::handle(self, FetchBlob { hash: msg.hash, hint: msg.hint }, ctx);
        Box::pin(async move {
            fetched.await?;
            store.get_blob(&msg.hash).ok_or_else(|| format!("blob {} vanished from the store", msg.hash.short()))
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(Hash32, Hash32), String>")]
pub struct Cancel {
    pub job: String,
    pub reason: String,
}

/// A revocation's text, to check and publish.
#[derive(Message)]
#[rtype(result = "Result<Hash32, String>")]
pub struct Revoke(pub String);

impl Handler<Revoke> for CoreActor {
    type Result = Result<Hash32, String>;
    fn handle(&mut self, msg: Revoke, ctx: &mut Context<Self>) -> Self::Result {
        let r = peerbot_protocol::admission::Revocation::from_text(&msg.0).map_err(|e| e.to_string());
        let r = r.and_then(|r| self.core.publish_revocation(now_ms(), r));
        self.drain(ctx);
        r
    }
}

impl Handler<Cancel> for CoreActor {
    type Result = Result<(Hash32, Hash32), String>;
    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) -> Self::Result {
        let job = self.core.find_job(&msg.job)?;
        let r = self.core.cancel(now_ms(), job, msg.reason).map(|rec| (job, rec));
        self.drain(ctx);
        r
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct FetchBlob {
    pub hash: Hash32,
    pub hint: Option<PeerId>,
}

impl Handler<FetchBlob> for CoreActor {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, msg: FetchBlob, ctx: &mut Context<Self>) -> Self::Result {
        let token = self.next_token;
        self.next_token += 1;
        let (tx, rx) = oneshot::channel();
        self.blob_waiters.insert(token, tx);
        self.core.fetch_blob(now_ms(), token, msg.hash, msg.hint);
        self.drain(ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("the node is shutting down".into())) })
    }
}

mod queries;
pub use queries::Query;

#[cfg(test)]
mod tests {
    use super::*;
    use peerbot_protocol::core::Config;

    fn actor(net: mpsc::Sender<NetCommand>, dir: &std::path::Path) -> CoreActor {
        let store = RocksStore::open(&dir.join("db")).unwrap();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let core = NodeCore::new(Config::new(vec!["os=linux".into()], 1), key, store, now_ms());
        let work = crate::sandbox::default_work_root(dir);
        let jail = crate::sandbox::StepJail::prepare(crate::sandbox::SandboxMode::None, &work, dir, &[]).unwrap();
        CoreActor::new(core, net, dir.to_path_buf(), std::sync::Arc::new(jail))
    }

    #[test]
    fn the_node_sleeps_exactly_until_the_cores_next_timeout() {
        let now = 1_700_000_000_000;
        assert_eq!(tick_delay(now + 60_000, now), Duration::from_secs(60));
        assert_eq!(tick_delay(now + 3_600_000, now), Duration::from_secs(3600));
        assert_eq!(tick_delay(now + 7, now), Duration::from_millis(7));
        assert_eq!(tick_delay(now + 1, now), Duration::from_millis(1));
        // Due or overdue: the next tick, one millisecond on.
        assert_eq!(tick_delay(now, now), Duration::from_millis(1));
        assert_eq!(tick_delay(now - 500, now), Duration::from_millis(1));
    }

    /// A connected peer starts a reconciliation session: one request.
    fn connect_a_peer(a: &mut CoreActor) {
        a.core.handle(now_ms(), Input::PeerConnected(PeerId::random()));
        assert_eq!(a.core.sync_progress().sessions, 1);
        a.route_outputs();
    }

    #[test]
    fn a_request_the_net_channel_cannot_take_fails_back_into_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(NetCommand::Publish(vec![])).unwrap();
        let mut a = actor(tx, dir.path());
        connect_a_peer(&mut a);
        // Not sent, so never answered: the session must not wait for it.
        assert_eq!(a.core.sync_progress().sessions, 0);
        assert!(a.net_dropped.total >= 1);
        assert!(matches!(rx.try_recv(), Ok(NetCommand::Publish(_))));
    }

    #[test]
    fn a_request_the_net_channel_takes_is_left_to_the_net_task() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let mut a = actor(tx, dir.path());
        connect_a_peer(&mut a);
        assert_eq!(a.core.sync_progress().sessions, 1);
        assert_eq!(a.net_dropped.total, 0);
        let mut requests = 0;
        while let Ok(cmd) = rx.try_recv() {
            requests += matches!(cmd, NetCommand::Request { .. }) as usize;
        }
        assert_eq!(requests, 1);
    }
}
