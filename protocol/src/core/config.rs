//! What a node is and how it paces itself. Every default lives here; the
//! node's flags and the simulator start from these.

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
    /// A build of this node's whose end is not reported within the sum of
    /// its steps' timeouts and this much more is given up: its slot frees
    /// and its claim is released. The grace covers what the step timeouts
    /// do not: fetch and checkout, log collection, a loaded machine.
    pub build_grace_ms: u64,
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
            build_grace_ms: 15 * 60_000,
        }
    }
}
