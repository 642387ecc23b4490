//! Membership: who the peers are, what they offer, and which of them are
//! live. Liveness has one definition here; the ranking and the API read
//! the same answer. The live count and the generation (bumped whenever the
//! set of live peers or what they offer changes) are kept by this table,
//! which owns what they count.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use libp2p_identity::PeerId;

use super::peer_table::PeerTable;
use super::rank::peer_key;
use crate::labels::{satisfies, MAX_LABELS};
use crate::wire::{self, Heartbeat};
use crate::Millis;

#[derive(Debug, Clone)]
pub struct PeerView {
    /// Shared with the other peers that have the same set.
    pub labels: Arc<[String]>,
    pub executors: u32,
    pub busy: u32,
    pub last_heard: Millis,
    /// Held a lease that ran out; out of the ranking until heard again.
    pub suspect: bool,
    pub connected: bool,
    /// The heartbeat interval the peer announced.
    pub interval_ms: u32,
    /// Liveness as of the last sweep; changes bump the membership generation.
    pub live: bool,
    /// A hash of where the peer last said it can be reached: the node keeps
    /// the addresses themselves (`Event::PeerAddrs`).
    addrs_sig: u64,
    pub(crate) key: u64,
}

impl PeerView {
    pub(crate) fn new(peer: &PeerId) -> Self {
        PeerView {
            labels: Arc::new([]),
            executors: 0,
            busy: 0,
            last_heard: 0,
            suspect: false,
            connected: false,
            interval_ms: 0,
            live: false,
            addrs_sig: 0,
            key: peer_key(peer),
        }
    }
}

/// The one liveness rule: heard within max(the configured window, three of
/// the peer's own heartbeat intervals and a second), and not suspect.
fn heard_recently(liveness_ms: u64, now: Millis, v: &PeerView) -> bool {
    let window = liveness_ms.max(3 * v.interval_ms as u64 + 1_000);
    v.last_heard > 0 && !v.suspect && now.saturating_sub(v.last_heard) <= window
}

/// What a heartbeat changed.
pub struct HeartbeatSummary {
    /// The peer was not live before.
    pub became_live: bool,
    /// New addresses to reach the peer at.
    pub new_addrs: Option<Vec<String>>,
}

/// A peer that is not connected and has not been heard for this long is
/// forgotten (so is one never heard from once it disconnects): peer entries
/// do not pile up from nodes long gone or from one-off keys.
pub const FORGET_PEER_MS: Millis = 24 * 3_600_000;

/// An eligible live peer as the ranking sees it: (rendezvous key, executors).
pub type Eligible = (u64, u32);

#[derive(Clone)]
pub struct Membership {
    me: PeerId,
    my_key: u64,
    my_labels: Vec<String>,
    my_executors: u32,
    liveness_ms: u64,
    heartbeat_ms: u64,
    cluster_heartbeats_per_sec: u64,
    peers: PeerTable,
    live_peers: usize,
    generation: u64,
    eligible_cache: BTreeMap<Vec<String>, (u64, Vec<Eligible>)>,
    /// Names peers gave themselves, for peers that have one: kept apart
    /// from `PeerView` so that unnamed peers cost nothing.
    names: HashMap<PeerId, Arc<str>>,
}

impl Membership {
    pub fn new(me: PeerId, cfg: &super::Config) -> Self {
        Membership {
            me,
            my_key: peer_key(&me),
            my_labels: cfg.labels.clone(),
            my_executors: cfg.executors,
            liveness_ms: cfg.liveness_ms(),
            heartbeat_ms: cfg.heartbeat_ms,
            cluster_heartbeats_per_sec: cfg.cluster_heartbeats_per_sec,
            peers: PeerTable::default(),
            live_peers: 0,
            generation: 0,
            eligible_cache: BTreeMap::new(),
            names: HashMap::new(),
        }
    }

    pub fn my_key(&self) -> u64 {
        self.my_key
    }
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }
    pub fn key_of(&self, p: &PeerId) -> Option<u64> {
        if *p == self.me {
            return Some(self.my_key);
        }
        self.peers.get(p).map(|v| v.key)
    }

    /// Live as of the last sweep: the ranking, the heartbeat interval and
    /// the API all read this one answer.
    pub fn is_live(&self, p: &PeerId) -> bool {
        *p == self.me || self.peers.get(p).is_some_and(|v| v.live)
    }

    /// This node's heartbeat interval for the cluster size it sees.
    pub fn heartbeat_interval(&self) -> u64 {
        let n = self.live_peers as u64 + 1;
        self.heartbeat_ms.max(n * 1000 / self.cluster_heartbeats_per_sec.max(1))
    }

    /// Re-reads liveness; true when a peer went silent or came back.
    pub fn sweep(&mut self, now: Millis) -> bool {
        self.check();
        let mut changed = false;
        let mut live = 0;
        let (liveness_ms, mut peers) = (self.liveness_ms, std::mem::take(&mut self.peers));
        for v in peers.values_mut() {
            let l = heard_recently(liveness_ms, now, v);
            if v.live != l {
                v.live = l;
                changed = true;
            }
            live += l as usize;
        }
        let forget = |v: &PeerView| {
            !v.connected && !v.live && (v.last_heard == 0 || now.saturating_sub(v.last_heard) > FORGET_PEER_MS)
        };
        peers.retain(|v| !forget(v));
        self.peers = peers;
        if self.names.len() > self.peers.len() {
            let peers = &self.peers;
            self.names.retain(|p, _| peers.get(p).is_some());
        }
        self.live_peers = live;
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// The name a peer gave itself in its last heartbeat.
    pub fn name_of(&self, p: &PeerId) -> Option<&str> {
        self.names.get(p).map(|n| &**n)
    }

    pub fn set_connected(&mut self, p: PeerId, connected: bool) {
        if connected {
            self.peers.get_or_insert(&p, || PeerView::new(&p)).connected = true;
        } else if let Some(v) = self.peers.get_mut(&p) {
            v.connected = false;
        }
    }

    pub fn any_connected(&self) -> bool {
        self.peers.values().any(|v| v.connected)
    }

    /// Connected peers in a fixed order, for seeded random choices.
    pub fn connected_sorted(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.peers.filtered(|v| v.connected).map(|(p, _)| p).collect();
        v.sort_unstable();
        v
    }

    /// Takes a peer's heartbeat; an error names the limit it broke.
    pub fn on_heartbeat(&mut self, now: Millis, from: PeerId, h: &Heartbeat) -> Result<HeartbeatSummary, &'static str> {
        if h.labels.len() > MAX_LABELS
            || h.running.len() > wire::MAX_RUNNING_IN_HEARTBEAT
            || h.addrs.len() > wire::MAX_ADDRS
            || h.addrs.iter().any(|a| a.len() > wire::MAX_ADDR_LEN)
            || !wire::valid_name(&h.name)
        {
            return Err("heartbeat over its limits");
        }
        let labels = match self.peers.get(&from) {
            Some(v) if *v.labels == *h.labels => None,
            _ => Some(self.peers.shared_labels(&h.labels)),
        };
        if h.name.is_empty() {
            self.names.remove(&from);
        } else if self.names.get(&from).is_none_or(|n| **n != *h.name) {
            self.names.insert(from, h.name.as_str().into());
        }
        let view = self.peers.get_or_insert(&from, || PeerView::new(&from));
        let was_live = view.live;
        let mut changed = false;
        if let Some(labels) = labels {
            view.labels = labels;
            changed = true;
        }
        if view.executors != h.executors {
            view.executors = h.executors;
            changed = true;
        }
        view.busy = h.busy;
        view.last_heard = now;
        let was_suspect = std::mem::replace(&mut view.suspect, false);
        view.interval_ms = h.interval_ms.clamp(50, 3_600_000) as u32;
        let sig = rustc_hash::FxBuildHasher.hash_one(&h.addrs);
        let new_addrs = if view.addrs_sig != sig && !h.addrs.is_empty() {
            view.addrs_sig = sig;
            Some(h.addrs.clone())
        } else {
            None
        };
        view.live = true;
        if !was_live {
            self.live_peers += 1;
        }
        if changed || was_suspect || !was_live {
            self.generation += 1;
        }
        crate::invariant!(self.live_peers <= self.peers.len(), "more live peers than peers");
        Ok(HeartbeatSummary { became_live: !was_live, new_addrs })
    }

    /// A peer let a lease run out: out of the ranking until heard again.
    pub fn mark_suspect(&mut self, p: &PeerId) {
        if let Some(v) = self.peers.get_mut(p) {
            v.suspect = true;
            if std::mem::replace(&mut v.live, false) {
                self.live_peers -= 1;
            }
            self.generation += 1;
        }
    }

    /// Live peers, as the ranking and the heartbeat interval count them.
    pub fn live_count(&self) -> usize {
        self.live_peers
    }

    /// (rendezvous key, executors) of each eligible live peer, this node
    /// included when it has the labels; cached per label set until the
    /// membership changes.
    pub fn eligible_keys(&mut self, requires: &[String]) -> &[Eligible] {
        let gen = self.generation;
        let fresh = self.eligible_cache.get(requires).is_some_and(|(g, _)| *g == gen);
        if !fresh {
            let mut v: Vec<Eligible> = self
                .peers
                .iter()
                .filter(|(_, view)| view.live && satisfies(&view.labels, requires))
                .map(|(_, view)| (view.key, view.executors.max(1)))
                .collect();
            if satisfies(&self.my_labels, requires) {
                v.push((self.my_key, self.my_executors));
            }
            if self.eligible_cache.len() > 256 {
                self.eligible_cache.clear();
            }
            self.eligible_cache.insert(requires.to_vec(), (gen, v));
        }
        &self.eligible_cache[requires].1
    }

    /// Live peers (this node included) that have every required label.
    pub fn eligible(&self, requires: &[String]) -> Vec<PeerId> {
        let mut v: Vec<PeerId> =
            self.peers.filtered(|view| view.live && satisfies(&view.labels, requires)).map(|(p, _)| p).collect();
        if satisfies(&self.my_labels, requires) {
            v.push(self.me);
        }
        v
    }

    /// Keys of the peers marked live, for replication decisions.
    pub fn live_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.values().filter(|v| v.live).map(|v| v.key)
    }

    /// Every known peer, in the order first heard of.
    pub fn all(&self) -> impl Iterator<Item = (PeerId, &PeerView)> {
        self.peers.iter()
    }

    /// The live count is the number of peers marked live. Checked where the
    /// table is walked anyway (every sweep), not on every heartbeat.
    fn check(&self) {
        crate::invariant!(
            self.live_peers == self.peers.values().filter(|v| v.live).count(),
            "the live count is the number of peers marked live"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;

    fn heartbeat(interval_ms: u64) -> Heartbeat {
        Heartbeat {
            seq: 1,
            sent_ms: 0,
            interval_ms,
            labels: vec!["os=linux".into()],
            executors: 1,
            busy: 0,
            running: vec![],
            addrs: vec![],
            name: String::new(),
        }
    }

    fn table() -> (Membership, Vec<PeerId>) {
        let me = deterministic_key(0).public().to_peer_id();
        let peers = (1..4).map(|i| deterministic_key(i).public().to_peer_id()).collect();
        (Membership::new(me, &super::super::Config::new(vec!["os=linux".into()], 1)), peers)
    }

    #[test]
    fn a_suspect_peer_leaves_the_live_count_at_once() {
        let (mut m, peers) = table();
        for p in &peers {
            m.on_heartbeat(1_000, *p, &heartbeat(2_000)).unwrap();
        }
        assert_eq!(m.live_count(), 3);
        let before = m.heartbeat_interval();
        m.mark_suspect(&peers[0]);
        assert_eq!(m.live_count(), 2, "the live count follows the live flags");
        assert!(m.heartbeat_interval() <= before);
        assert_eq!(m.eligible_keys(&["os=linux".to_string()]).len(), 3, "two peers and this node");
        // Marking it again changes nothing; hearing it again brings it back.
        m.mark_suspect(&peers[0]);
        assert_eq!(m.live_count(), 2);
        m.on_heartbeat(2_000, peers[0], &heartbeat(2_000)).unwrap();
        assert_eq!(m.live_count(), 3);
        assert!(!m.sweep(2_000), "the sweep agrees with the count it finds");
        assert_eq!(m.live_count(), 3);
    }

    #[test]
    fn peers_long_gone_are_forgotten_unless_connected() {
        let (mut m, peers) = table();
        for p in &peers {
            m.on_heartbeat(1_000, *p, &heartbeat(2_000)).unwrap();
        }
        m.set_connected(peers[0], true);
        let stranger = deterministic_key(99).public().to_peer_id();
        m.set_connected(stranger, true);
        m.set_connected(stranger, false);
        m.sweep(2_000);
        assert!(m.peers().get(&stranger).is_none(), "never heard from, and gone");
        assert_eq!(m.peers().len(), 3, "heard a second ago");
        m.sweep(1_000 + FORGET_PEER_MS + 1);
        assert_eq!(m.peers().len(), 1, "silent for a day");
        assert!(m.peers().get(&peers[0]).is_some(), "still connected");
        assert_eq!(m.live_count(), 0);
    }

    #[test]
    fn silence_and_a_heartbeat_over_its_limits() {
        let (mut m, peers) = table();
        m.on_heartbeat(1_000, peers[0], &heartbeat(2_000)).unwrap();
        assert!(m.is_live(&peers[0]));
        assert!(m.sweep(1_000 + 8_000), "silent past the window: no longer live");
        assert_eq!(m.live_count(), 0);
        assert!(!m.is_live(&peers[0]) && m.eligible(&["os=linux".to_string()]).len() == 1);
        let mut big = heartbeat(2_000);
        big.addrs = vec!["x".repeat(wire::MAX_ADDR_LEN + 1)];
        assert!(m.on_heartbeat(9_000, peers[1], &big).is_err());
        assert!(m.peers().get(&peers[1]).is_none(), "nothing is kept of a rejected heartbeat");
    }

    #[test]
    fn a_peer_is_known_by_the_name_its_heartbeat_gives_until_it_is_forgotten() {
        let (mut m, peers) = table();
        let mut named = heartbeat(2_000);
        named.name = "build-07".into();
        m.on_heartbeat(1_000, peers[0], &named).unwrap();
        m.on_heartbeat(1_000, peers[1], &heartbeat(2_000)).unwrap();
        assert_eq!(m.name_of(&peers[0]), Some("build-07"));
        assert_eq!(m.name_of(&peers[1]), None);
        for bad in ["x".repeat(wire::MAX_NAME_LEN + 1), "evil\u{1b}[2J".to_string()] {
            let mut h = heartbeat(2_000);
            h.name = bad;
            assert!(m.on_heartbeat(1_500, peers[0], &h).is_err());
        }
        assert_eq!(m.name_of(&peers[0]), Some("build-07"), "a refused heartbeat changes nothing");
        m.on_heartbeat(2_000, peers[0], &heartbeat(2_000)).unwrap();
        assert_eq!(m.name_of(&peers[0]), None, "it gave its name up");
        m.on_heartbeat(3_000, peers[0], &named).unwrap();
        m.sweep(3_000 + FORGET_PEER_MS + 1);
        assert_eq!(m.name_of(&peers[0]), None, "forgotten with the peer");
    }
}
