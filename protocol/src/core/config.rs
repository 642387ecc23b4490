//! What a node is and how it paces itself. Every default lives here; the
//! node's flags and the simulator start from these.

use crate::repos::RepoPolicy;

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
    /// The node at rank r waits r times this before claiming.
    pub claim_stagger_ms: u64,
    pub lease_ms: u64,
    pub sync_interval_ms: u64,
    /// Seed of the node's random choices (sync partner, blob source order).
    pub seed: u64,
    /// Every step log is kept by the this many live nodes that rank highest
    /// for its hash (the builder counts among them if it ranks there; it
    /// keeps its own logs anyway, as does anyone who asked for one).
    pub log_replicas: usize,
    /// Logs of results older than this are dropped locally; records stay.
    pub log_horizon_ms: Option<u64>,
    /// A build of this node's whose end is not reported within the sum of
    /// its steps' timeouts and this much more is given up: its slot frees
    /// and its claim is released. The grace covers what the step timeouts
    /// do not: fetch and checkout, log collection, a loaded machine.
    pub build_grace_ms: u64,
    /// The cluster this node belongs to; `None` counts every peer as
    /// admitted (simulations and tests only: the node always has one).
    pub cluster: Option<crate::admission::ClusterId>,
    /// This node's own admission, sent on every connection and published.
    pub admission: Option<crate::admission::Admission>,
    /// A connected peer that shows no admission within this long is
    /// disconnected.
    pub admission_grace_ms: u64,
    /// Which repositories this node builds; a job of any other is left to
    /// the nodes that allow it. Default: remote URLs, no local paths.
    pub repos: RepoPolicy,
    /// The operator's name for this node, sent in heartbeats and results.
    pub name: String,
    /// A scheduled firing is announced at most this long after its time
    /// (the cluster was down): later, it is skipped for the next one.
    pub schedule_catchup_ms: u64,
    /// This node's notifiers (`notify.rs`): it derives their notice jobs
    /// and claims them among the nodes labelled with the same ones.
    pub notifiers: Vec<crate::notify::NotifierSpec>,
}

/// The defaults, named once; the node's flags and the simulator's options
/// show these.
pub mod defaults {
    pub const HEARTBEAT_MS: u64 = 2_000;
    pub const CLUSTER_HEARTBEATS_PER_SEC: u64 = 2;
    pub const CLAIM_STAGGER_MS: u64 = 2_000;
    pub const LEASE_MS: u64 = 30_000;
    pub const SYNC_INTERVAL_MS: u64 = 15_000;
    pub const LOG_REPLICAS: usize = 3;
    pub const ADMISSION_GRACE_MS: u64 = 10_000;
    pub const SCHEDULE_CATCHUP_MS: u64 = 3_600_000;
}

impl Config {
    pub fn new(labels: Vec<String>, executors: u32) -> Self {
        Config {
            labels,
            executors,
            heartbeat_ms: defaults::HEARTBEAT_MS,
            cluster_heartbeats_per_sec: defaults::CLUSTER_HEARTBEATS_PER_SEC,
            claim_stagger_ms: defaults::CLAIM_STAGGER_MS,
            lease_ms: defaults::LEASE_MS,
            sync_interval_ms: defaults::SYNC_INTERVAL_MS,
            seed: 0,
            log_replicas: defaults::LOG_REPLICAS,
            log_horizon_ms: None,
            build_grace_ms: 15 * 60_000,
            cluster: None,
            admission: None,
            admission_grace_ms: defaults::ADMISSION_GRACE_MS,
            repos: RepoPolicy::default(),
            name: String::new(),
            schedule_catchup_ms: defaults::SCHEDULE_CATCHUP_MS,
            notifiers: vec![],
        }
    }

    /// A peer is live while heard within max(this, 3 of its own heartbeat
    /// intervals + 1 s).
    pub fn liveness_ms(&self) -> u64 {
        3 * self.heartbeat_ms + 1_000
    }

    /// No claims until the node has been up this long: time to hear its
    /// peers' heartbeats, and a round of lease renewals, so that a
    /// restarted node learns what others are building before it ranks.
    pub fn warmup_ms(&self) -> u64 {
        (2 * self.heartbeat_ms).max(self.lease_ms / 3 + self.heartbeat_ms)
    }
}
