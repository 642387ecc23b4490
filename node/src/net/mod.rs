//! The libp2p swarm, run on a thread of its own (`thread.rs`) and bridged
//! to the core by channels. It moves bytes; the core decides what they
//! mean.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{dial_opts::DialOpts, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, multiaddr::Protocol, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use peerbot_protocol::core::Verdict;
use peerbot_protocol::wire::{self, MAX_GOSSIP_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, REQUEST_PROTOCOL, TOPIC};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

#[derive(Debug)]
pub enum NetCommand {
    Publish(Vec<u8>),
    Request {
        peer: PeerId,
        id: u64,
        bytes: Vec<u8>,
    },
    Reply {
        id: u64,
        bytes: Vec<u8>,
    },
    Verdict {
        token: u64,
        verdict: Verdict,
    },
    /// Addresses a peer announced: so requests to it can dial it.
    AddAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A peer not admitted: close its connections and refuse it for a while.
    Disconnect {
        peer: PeerId,
    },
}

/// A peer disconnected for want of an admission, or for flooding, is refused this long.
const REFUSE_FOR: Duration = Duration::from_secs(60);
/// Gossip messages a peer may hand this node, per second and at once.
const GOSSIP_PER_SEC: u32 = 200;
const GOSSIP_BURST: u32 = 1000;
/// Requests a peer may make of this node, per second and at once.
const REQUESTS_PER_SEC: u32 = 50;
const REQUESTS_BURST: u32 = 200;
/// A peer over its limits this many times within a minute is disconnected.
const MAX_STRIKES: u32 = 1000;

type PeerLimiter = governor::DefaultKeyedRateLimiter<PeerId>;

fn limiter(per_sec: u32, burst: u32) -> PeerLimiter {
    let n = |v: u32| std::num::NonZeroU32::new(v.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_second(n(per_sec)).allow_burst(n(burst)))
}

/// gossipsub's peer scoring: messages the core rejects count against the
/// peer that forwarded them (P4), heavily, and decay quickly; a peer with
/// many is graylisted. Mesh delivery rates (P3) are off: the cluster's
/// traffic is too sparse for them to mean anything; so is IP colocation,
/// as several nodes of one machine or one NAT are normal here.
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams { ip_colocation_factor_weight: 0.0, ..Default::default() };
    params.topics.insert(IdentTopic::new(TOPIC).hash(), topic);
    (params, gossipsub::PeerScoreThresholds::default())
}

#[derive(Debug)]
pub enum NetEvent {
    Listening(Vec<Multiaddr>),
    Gossip {
        from: PeerId,
        token: u64,
        bytes: Vec<u8>,
    },
    Connected(PeerId),
    Disconnected(PeerId),
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
    PeerAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A peer sent more than its share: what was dropped (counted, logged).
    Limited {
        peer: PeerId,
        what: &'static str,
    },
}

/// Requests and responses are opaque byte strings, one per stream, read
/// with a hard size limit; the core decodes them.
#[derive(Clone, Default)]
pub struct BytesCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message over {limit} bytes")));
    }
    Ok(buf)
}

#[async_trait::async_trait]
impl request_response::Codec for BytesCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_limited(io, MAX_REQUEST_BYTES).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_limited(io, MAX_RESPONSE_BYTES).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&resp).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    rr: request_response::Behaviour<BytesCodec>,
}

pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub known: Vec<(PeerId, Vec<Multiaddr>)>,
}

struct Backoff {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next: Instant,
    delay: Duration,
}

const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn build_swarm(key: &Keypair) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let gcfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(700))
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                // One author's identical payloads are one message, whoever
                // forwards them; two authors' are two (rival claims must both arrive).
                .message_id_fn(|m: &gossipsub::Message| {
                    let mut h = blake3::Hasher::new();
                    if let Some(src) = &m.source {
                        h.update(&src.to_bytes());
                    }
                    h.update(&m.data);
                    MessageId::from(h.finalize().as_bytes().to_vec())
                })
                .build()
                .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)
                .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
            let (params, thresholds) = peer_score();
            gossipsub.with_peer_score(params, thresholds).map_err(|e| anyhow::anyhow!("gossipsub scoring: {e}"))?;
            let identify = identify::Behaviour::new(identify::Config::new("/peerbot/1".into(), key.public()));
            let me = key.public().to_peer_id();
            let mut kcfg = kad::Config::new(StreamProtocol::new("/peerbot/kad/1"));
            kcfg.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(me, kad::store::MemoryStore::new(me), kcfg);
            // Without AutoNAT nothing confirms an external address, and a
            // client-mode node would never be found by others.
            kad.set_mode(Some(kad::Mode::Server));
            let rr = request_response::Behaviour::with_codec(
                BytesCodec,
                [(StreamProtocol::new(REQUEST_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
            );
            Ok(Behaviour { gossipsub, identify, kad, rr })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Commands the core may have queued for the swarm task at once.
pub const NET_COMMAND_CAPACITY: usize = 1024;
/// Events the swarm task may have queued for the core at once.
pub const NET_EVENT_CAPACITY: usize = 1024;
/// Events the core must see, held back while its channel is full. At this
/// many the swarm is not polled until the core takes some, so that what the
/// swarm produces stays bounded too; commands are still carried out.
const MAX_EVENT_BACKLOG: usize = 4096;
/// Gossip messages awaiting the core's verdict; beyond this the oldest is ignored.
const MAX_PENDING_VERDICTS: usize = 4096;
/// Inbound requests awaiting the core's reply; beyond this the oldest is failed.
const MAX_PENDING_REPLIES: usize = 1024;
/// A warning about what was dropped under pressure is logged at most this often.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts what was dropped under pressure, and says when a warning is due:
/// at the first drop, then at most once per [`DROP_WARN_EVERY`].
#[derive(Debug, Default)]
pub struct DropCount {
    pub total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl DropCount {
    /// Counts one drop; returns how many to report (those since the last
    /// warning) if a warning is due now.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unreported += 1;
        if self.last_warning.is_some_and(|t| now.duration_since(t) < DROP_WARN_EVERY) {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// What the net task holds for the core's answer (a gossip verdict, the
/// channel to answer a request on), under ids it hands to the core. At most
/// `cap`: beyond it the oldest is given up, so answers the core never sends
/// (dropped under pressure) cannot pile up.
struct Awaiting<T> {
    held: BTreeMap<u64, T>,
    next_id: u64,
    cap: usize,
}

impl<T> Awaiting<T> {
    fn new(cap: usize) -> Self {
        Awaiting { held: BTreeMap::new(), next_id: 1, cap }
    }

    /// Holds `v` under a new id; gives back the oldest held thing if there are now too many.
    fn hold(&mut self, v: T) -> (u64, Option<T>) {
        let id = self.next_id;
        self.next_id += 1;
        self.held.insert(id, v);
        let given_up = if self.held.len() > self.cap { self.held.pop_first().map(|(_, v)| v) } else { None };
        (id, given_up)
    }

    fn take(&mut self, id: u64) -> Option<T> {
        self.held.remove(&id)
    }

    fn len(&self) -> usize {
        self.held.len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.held.retain(|_, v| keep(v));
    }
}

/// The swarm task's end of the bounded channel to the core. It never waits
/// for the core: an event the core may miss is handed back when the channel
/// is full, for the caller to answer (ignore the gossip, fail the request);
/// an event the core must see (a request's outcome, a connection change) is
/// held, in order, until the channel has room.
struct ToCore {
    tx: mpsc::Sender<NetEvent>,
    backlog: VecDeque<NetEvent>,
    shed: DropCount,
}

impl ToCore {
    fn new(tx: mpsc::Sender<NetEvent>) -> Self {
        ToCore { tx, backlog: VecDeque::new(), shed: DropCount::default() }
    }

    /// An event the core may miss: given back if the channel is full or closed.
    fn offer(&mut self, ev: NetEvent) -> Result<(), NetEvent> {
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(ev)) => {
                if let Some(n) = self.shed.note(Instant::now()) {
                    warn!(
                        shed = n,
                        total = self.shed.total,
                        "the core is behind: shedding gossip and inbound requests"
                    );
                }
                Err(ev)
            }
            Err(TrySendError::Closed(ev)) => Err(ev),
        }
    }

    /// An event the core must see: sent now if nothing is held and the channel has room, else held.
    fn deliver(&mut self, ev: NetEvent) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(ev);
            return;
        }
        if let Err(TrySendError::Full(ev)) = self.tx.try_send(ev) {
            self.backlog.push_back(ev);
        }
    }

    /// Sends held events, the first with `permit`, the rest while the channel has room.
    fn flush(&mut self, permit: Result<mpsc::OwnedPermit<NetEvent>, mpsc::error::SendError<()>>) {
        let Ok(permit) = permit else {
            // The core is gone: nobody will read these.
            self.backlog.clear();
            return;
        };
        if let Some(ev) = self.backlog.pop_front() {
            permit.send(ev);
        }
        while let Some(ev) = self.backlog.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Whether the swarm may be polled for more events.
    fn has_room(&self) -> bool {
        self.backlog.len() < MAX_EVENT_BACKLOG
    }
}

/// The swarm and what the net task keeps beside it.
struct NetTask {
    swarm: Swarm<Behaviour>,
    me: PeerId,
    topic: IdentTopic,
    to_core: ToCore,
    verdicts: Awaiting<(MessageId, PeerId)>,
    replies: Awaiting<ResponseChannel<Vec<u8>>>,
    outbound: HashMap<OutboundRequestId, u64>,
    /// Gossip and requests given up because the core's answer did not come.
    unanswered: DropCount,
    dialers: Vec<Backoff>,
    connected: HashSet<PeerId>,
    /// Peers the core disconnected, until when their connections are closed at once.
    refused: HashMap<PeerId, Instant>,
    gossip_limit: PeerLimiter,
    request_limit: PeerLimiter,
    /// Times each peer went over its limits since `strikes_since`.
    strikes: HashMap<PeerId, u32>,
    strikes_since: Instant,
    listen_addrs: Vec<Multiaddr>,
    last_kad_bootstrap: Instant,
}

/// Runs the swarm until the command channel closes.
pub async fn run(
    key: Keypair,
    cfg: NetConfig,
    mut commands: mpsc::Receiver<NetCommand>,
    events: mpsc::Sender<NetEvent>,
) -> anyhow::Result<()> {
    let mut task = NetTask::start(&key, cfg, events)?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let backlogged = task.to_core.has_backlog();
        let swarm_open = task.to_core.has_room();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => task.on_command(cmd),
                None => break,
            },
            permit = task.to_core.tx.clone().reserve_owned(), if backlogged => task.to_core.flush(permit),
            _ = tick.tick() => task.on_tick(),
            ev = task.swarm.select_next_some(), if swarm_open => task.on_swarm_event(ev),
        }
    }
    Ok(())
}

impl NetTask {
    fn start(key: &Keypair, cfg: NetConfig, events: mpsc::Sender<NetEvent>) -> anyhow::Result<NetTask> {
        let mut swarm = build_swarm(key)?;
        let me = *swarm.local_peer_id();
        let topic = IdentTopic::new(TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        for addr in &cfg.listen {
            swarm.listen_on(addr.clone()).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        }
        for (peer, addrs) in &cfg.known {
            for a in addrs {
                swarm.behaviour_mut().kad.add_address(peer, a.clone());
            }
        }
        let dialers: Vec<Backoff> = cfg
            .bootstrap
            .iter()
            .map(|a| Backoff { addr: a.clone(), peer: peer_of(a), next: Instant::now(), delay: Duration::from_secs(1) })
            .collect();
        for (peer, addrs) in cfg.known.iter().take(32) {
            if let Err(e) = swarm.dial(DialOpts::peer_id(*peer).addresses(addrs.clone()).build()) {
                debug!(%peer, "dialling a known peer: {e}");
            }
        }
        Ok(NetTask {
            swarm,
            me,
            topic,
            to_core: ToCore::new(events),
            verdicts: Awaiting::new(MAX_PENDING_VERDICTS),
            replies: Awaiting::new(MAX_PENDING_REPLIES),
            outbound: HashMap::new(),
            unanswered: DropCount::default(),
            dialers,
            connected: HashSet::new(),
            refused: HashMap::new(),
            gossip_limit: limiter(GOSSIP_PER_SEC, GOSSIP_BURST),
            request_limit: limiter(REQUESTS_PER_SEC, REQUESTS_BURST),
            strikes: HashMap::new(),
            strikes_since: Instant::now(),
            listen_addrs: Vec::new(),
            last_kad_bootstrap: Instant::now() - Duration::from_secs(3600),
        })
    }

    fn on_command(&mut self, cmd: NetCommand) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            NetCommand::Publish(bytes) => {
                if let Err(e) = b.gossipsub.publish(self.topic.clone(), bytes) {
                    // No subscribed peer yet is normal at start, for a lone
                    // node and in partitions; reconciliation delivers what
                    // gossip could not. Every heartbeat would log it.
                    tracing::trace!("publish: {e}");
                }
            }
            NetCommand::Request { peer, id, bytes } => {
                // Every request ends in a Response or a RequestFailed event.
                let rid = b.rr.send_request(&peer, bytes);
                self.outbound.insert(rid, id);
            }
            NetCommand::Reply { id, bytes } => {
                if let Some(ch) = self.replies.take(id) {
                    if b.rr.send_response(ch, bytes).is_err() {
                        debug!("reply {id}: the requester went away");
                    }
                }
            }
            NetCommand::AddAddrs { peer, addrs } => {
                for a in addrs {
                    b.kad.add_address(&peer, a);
                }
            }
            NetCommand::Disconnect { peer } => {
                self.refused.retain(|_, until| *until > Instant::now());
                self.refused.insert(peer, Instant::now() + REFUSE_FOR);
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            NetCommand::Verdict { token, verdict } => {
                if let Some((mid, source)) = self.verdicts.take(token) {
                    let acc = match verdict {
                        Verdict::Accept => MessageAcceptance::Accept,
                        Verdict::Ignore => MessageAcceptance::Ignore,
                        Verdict::Reject => MessageAcceptance::Reject,
                    };
                    b.gossipsub.report_message_validation_result(&mid, &source, acc);
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.strikes_since) > Duration::from_secs(60) {
            self.strikes.clear();
            self.strikes_since = now;
            self.gossip_limit.retain_recent();
            self.request_limit.retain_recent();
        }
        for b in self.dialers.iter_mut() {
            let up = b.peer.is_some_and(|p| self.connected.contains(&p));
            if up || now < b.next {
                continue;
            }
            if b.peer.is_none() && !self.connected.is_empty() {
                continue;
            }
            debug!(addr = %b.addr, "dialling bootstrap");
            if let Err(e) = self.swarm.dial(b.addr.clone()) {
                warn!(addr = %b.addr, "bootstrap dial failed: {e}; retrying in {:?}", b.delay);
            }
            b.next = now + b.delay;
            b.delay = (b.delay * 2).min(MAX_BACKOFF);
        }
        if !self.connected.is_empty() && now.duration_since(self.last_kad_bootstrap) > Duration::from_secs(30) {
            self.last_kad_bootstrap = now;
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.clone().with(Protocol::P2p(self.me));
                info!(addr = %full, "listening");
                self.listen_addrs.push(full);
                self.to_core.deliver(NetEvent::Listening(self.listen_addrs.clone()));
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if self.refused.get(&peer_id).is_some_and(|until| *until > Instant::now()) {
                    debug!(peer = %peer_id, "closing a connection from a peer refused for want of an admission");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if num_established.get() == 1 {
                    self.connected.insert(peer_id);
                    info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                    for b in self.dialers.iter_mut().filter(|b| b.peer == Some(peer_id)) {
                        b.delay = Duration::from_secs(1);
                    }
                    self.to_core.deliver(NetEvent::Connected(peer_id));
                    if self.last_kad_bootstrap.elapsed() > Duration::from_secs(5) {
                        self.last_kad_bootstrap = Instant::now();
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if num_established == 0 {
                    self.connected.remove(&peer_id);
                    info!(peer = %peer_id, cause = ?cause, "disconnected");
                    self.to_core.deliver(NetEvent::Disconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let boot = self.dialers.iter().any(|b| b.peer.is_some() && b.peer == peer_id);
                if boot {
                    warn!(peer = ?peer_id, "cannot reach bootstrap peer: {error}");
                } else {
                    debug!(peer = ?peer_id, "outgoing connection failed: {error}");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let addrs: Vec<Multiaddr> = info.listen_addrs.iter().take(16).cloned().collect();
                for a in &addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                }
                // Identify repeats itself, and heartbeats carry the addresses too.
                let _ = self.to_core.offer(NetEvent::PeerAddrs { peer: peer_id, addrs });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. })) => {
                if peer != self.me && !self.connected.contains(&peer) {
                    let _ = self.swarm.dial(DialOpts::peer_id(peer).addresses(addresses.into_vec()).build());
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message { peer, message, .. })) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        self.on_request(peer, request, channel)
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some(id) = self.outbound.remove(&request_id) {
                            self.to_core.deliver(NetEvent::Response { id, bytes: response });
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            })) => {
                if let Some(id) = self.outbound.remove(&request_id) {
                    debug!(%peer, "request failed: {error}");
                    self.to_core.deliver(NetEvent::RequestFailed { id, reason: error.to_string() });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::InboundFailure {
                peer, error, ..
            })) => {
                debug!(%peer, "inbound request failed: {error}");
            }
            _ => {}
        }
    }

    /// Holds a gossip message for the core's verdict, or ignores it at once
    /// if the core is too far behind to judge it.
    /// A peer went over a limit: counted, and disconnected if it keeps at it.
    fn strike(&mut self, peer: PeerId, what: &'static str) {
        let n = self.strikes.entry(peer).or_default();
        *n += 1;
        if *n == 1 {
            warn!(%peer, "{what}: over its limit; dropping the excess");
        }
        if *n >= MAX_STRIKES {
            warn!(%peer, strikes = *n, "over its limits again and again: disconnected");
            self.strikes.remove(&peer);
            self.refused.insert(peer, Instant::now() + REFUSE_FOR);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let _ = self.to_core.offer(NetEvent::Limited { peer, what });
    }

    fn on_gossip(&mut self, source: PeerId, message_id: MessageId, message: gossipsub::Message) {
        if self.gossip_limit.check_key(&source).is_err() {
            let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
            gossipsub.report_message_validation_result(&message_id, &source, MessageAcceptance::Ignore);
            return self.strike(source, "rate limited: gossip");
        }
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        let Some(from) = message.source else {
            gossipsub.report_message_validation_result(&message_id, &source, MessageAcceptance::Reject);
            return;
        };
        let (token, given_up) = self.verdicts.hold((message_id, source));
        if let Some((mid, src)) = given_up {
            gossipsub.report_message_validation_result(&mid, &src, MessageAcceptance::Ignore);
            self.note_unanswered();
        }
        if self.to_core.offer(NetEvent::Gossip { from, token, bytes: message.data }).is_err() {
            if let Some((mid, src)) = self.verdicts.take(token) {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &mid,
                    &src,
                    MessageAcceptance::Ignore,
                );
            }
        }
    }

    /// Hands an inbound request to the core, or fails it at once if the
    /// core is too far behind: dropping the response channel tells the
    /// requester now, rather than at its timeout.
    fn on_request(&mut self, from: PeerId, bytes: Vec<u8>, channel: ResponseChannel<Vec<u8>>) {
        if self.request_limit.check_key(&from).is_err() {
            let busy =
                wire::encode_response(&wire::Response::Error { message: "rate limited: too many requests".into() });
            let _ = self.swarm.behaviour_mut().rr.send_response(channel, busy);
            return self.strike(from, "rate limited: requests");
        }
        if self.replies.len() >= MAX_PENDING_REPLIES {
            // Requesters that went away need no answer.
            self.replies.retain(|ch| ch.is_open());
        }
        let (id, given_up) = self.replies.hold(channel);
        if given_up.is_some() {
            self.note_unanswered();
        }
        if self.to_core.offer(NetEvent::Request { from, id, bytes }).is_err() {
            self.replies.take(id);
        }
    }

    fn note_unanswered(&mut self) {
        if let Some(n) = self.unanswered.note(Instant::now()) {
            warn!(
                given_up = n,
                total = self.unanswered.total,
                "no answer from the core in time: gave up the oldest gossip or requests waiting for it"
            );
        }
    }
}

pub mod thread;

#[cfg(test)]
mod tests;
