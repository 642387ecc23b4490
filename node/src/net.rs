//! The libp2p swarm, run as a tokio task and bridged to the core by
//! channels. It moves bytes; the core decides what they mean.

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{dial_opts::DialOpts, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, multiaddr::Protocol, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use peerbot_protocol::core::Verdict;
use peerbot_protocol::wire::{MAX_GOSSIP_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, REQUEST_PROTOCOL, TOPIC};
use tokio::sync::mpsc;
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
}

#[derive(Debug)]
pub enum NetEvent {
    Listening(Vec<Multiaddr>),
    Gossip { from: PeerId, token: u64, bytes: Vec<u8> },
    Connected(PeerId),
    Disconnected(PeerId),
    Request { from: PeerId, id: u64, bytes: Vec<u8> },
    Response { id: u64, bytes: Vec<u8> },
    RequestFailed { id: u64, reason: String },
    PeerAddrs { peer: PeerId, addrs: Vec<Multiaddr> },
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
            let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gcfg)
                .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
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

/// Runs the swarm until the command channel closes.
pub async fn run(
    key: Keypair,
    cfg: NetConfig,
    mut commands: mpsc::UnboundedReceiver<NetCommand>,
    events: mpsc::UnboundedSender<NetEvent>,
) -> anyhow::Result<()> {
    let mut swarm = build_swarm(&key)?;
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
    let mut dialers: Vec<Backoff> = cfg
        .bootstrap
        .iter()
        .map(|a| Backoff { addr: a.clone(), peer: peer_of(a), next: Instant::now(), delay: Duration::from_secs(1) })
        .collect();
    for (peer, addrs) in cfg.known.iter().take(32) {
        if let Err(e) = swarm.dial(DialOpts::peer_id(*peer).addresses(addrs.clone()).build()) {
            debug!(%peer, "dialling a known peer: {e}");
        }
    }
    let mut connected: HashSet<PeerId> = HashSet::new();
    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    let mut verdicts: HashMap<u64, (MessageId, PeerId)> = HashMap::new();
    let mut next_token = 1u64;
    let mut outbound: HashMap<OutboundRequestId, u64> = HashMap::new();
    let mut inbound: HashMap<u64, ResponseChannel<Vec<u8>>> = HashMap::new();
    let mut next_inbound = 1u64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_kad_bootstrap = Instant::now() - Duration::from_secs(3600);

    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    NetCommand::Publish(bytes) => {
                        if let Err(e) = swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes) {
                            // No subscribed peer yet is normal at start and in partitions;
                            // reconciliation delivers what gossip could not.
                            debug!("publish: {e}");
                        }
                    }
                    NetCommand::Request { peer, id, bytes } => {
                        let rid = swarm.behaviour_mut().rr.send_request(&peer, bytes);
                        outbound.insert(rid, id);
                    }
                    NetCommand::Reply { id, bytes } => {
                        if let Some(ch) = inbound.remove(&id) {
                            if swarm.behaviour_mut().rr.send_response(ch, bytes).is_err() {
                                debug!("reply {id}: the requester went away");
                            }
                        }
                    }
                    NetCommand::AddAddrs { peer, addrs } => {
                        for a in addrs {
                            swarm.behaviour_mut().kad.add_address(&peer, a);
                        }
                    }
                    NetCommand::Verdict { token, verdict } => {
                        if let Some((mid, source)) = verdicts.remove(&token) {
                            let acc = match verdict {
                                Verdict::Accept => MessageAcceptance::Accept,
                                Verdict::Ignore => MessageAcceptance::Ignore,
                                Verdict::Reject => MessageAcceptance::Reject,
                            };
                            swarm.behaviour_mut().gossipsub.report_message_validation_result(&mid, &source, acc);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for b in dialers.iter_mut() {
                    let up = b.peer.is_some_and(|p| connected.contains(&p));
                    if up || now < b.next {
                        continue;
                    }
                    if b.peer.is_none() && !connected.is_empty() {
                        continue;
                    }
                    debug!(addr = %b.addr, "dialling bootstrap");
                    if let Err(e) = swarm.dial(b.addr.clone()) {
                        warn!(addr = %b.addr, "bootstrap dial failed: {e}; retrying in {:?}", b.delay);
                    }
                    b.next = now + b.delay;
                    b.delay = (b.delay * 2).min(MAX_BACKOFF);
                }
                if !connected.is_empty() && now.duration_since(last_kad_bootstrap) > Duration::from_secs(30) {
                    last_kad_bootstrap = now;
                    let _ = swarm.behaviour_mut().kad.bootstrap();
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let full = address.clone().with(Protocol::P2p(me));
                    info!(addr = %full, "listening");
                    listen_addrs.push(full);
                    let _ = events.send(NetEvent::Listening(listen_addrs.clone()));
                }
                SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                    if num_established.get() == 1 {
                        connected.insert(peer_id);
                        info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                        for b in dialers.iter_mut().filter(|b| b.peer == Some(peer_id)) {
                            b.delay = Duration::from_secs(1);
                        }
                        let _ = events.send(NetEvent::Connected(peer_id));
                        if last_kad_bootstrap.elapsed() > Duration::from_secs(5) {
                            last_kad_bootstrap = Instant::now();
                            let _ = swarm.behaviour_mut().kad.bootstrap();
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                    if num_established == 0 {
                        connected.remove(&peer_id);
                        info!(peer = %peer_id, cause = ?cause, "disconnected");
                        let _ = events.send(NetEvent::Disconnected(peer_id));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    let boot = dialers.iter().any(|b| b.peer.is_some() && b.peer == peer_id);
                    if boot {
                        warn!(peer = ?peer_id, "cannot reach bootstrap peer: {error}");
                    } else {
                        debug!(peer = ?peer_id, "outgoing connection failed: {error}");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) => {
                    let Some(from) = message.source else {
                        swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, MessageAcceptance::Reject);
                        continue;
                    };
                    let token = next_token;
                    next_token += 1;
                    verdicts.insert(token, (message_id, propagation_source));
                    let _ = events.send(NetEvent::Gossip { from, token, bytes: message.data });
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    let addrs: Vec<Multiaddr> = info.listen_addrs.iter().take(16).cloned().collect();
                    for a in &addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
                    }
                    let _ = events.send(NetEvent::PeerAddrs { peer: peer_id, addrs });
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, addresses, .. })) => {
                    if peer != me && !connected.contains(&peer) {
                        let _ = swarm.dial(DialOpts::peer_id(peer).addresses(addresses.into_vec()).build());
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message { peer, message, .. })) => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let id = next_inbound;
                        next_inbound += 1;
                        inbound.insert(id, channel);
                        let _ = events.send(NetEvent::Request { from: peer, id, bytes: request });
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some(id) = outbound.remove(&request_id) {
                            let _ = events.send(NetEvent::Response { id, bytes: response });
                        }
                    }
                },
                SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::OutboundFailure { request_id, error, peer, .. })) => {
                    if let Some(id) = outbound.remove(&request_id) {
                        debug!(%peer, "request failed: {error}");
                        let _ = events.send(NetEvent::RequestFailed { id, reason: error.to_string() });
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::InboundFailure { peer, error, .. })) => {
                    debug!(%peer, "inbound request failed: {error}");
                }
                _ => {}
            }
        }
        // Channels to replies that will never come must not pile up.
        if inbound.len() > 10_000 {
            inbound.retain(|_, ch| ch.is_open());
        }
    }
    Ok(())
}
