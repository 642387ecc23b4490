//! `peerbot-simnet`: run a simulated peerbot cluster from the shell.

use clap::Parser;
use peerbot_simnet::{parse_label_mix, parse_ms, parse_partition, parse_range_ms, parse_rate_per_min, Sim, SimConfig};

#[derive(Parser)]
#[command(
    name = "peerbot-simnet",
    version,
    about = "Deterministic simulation of a peerbot cluster: the real NodeCore over a modelled network with faults."
)]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Seed of the run; the same seed and flags replay the same run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time with commits and faults (e.g. 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_ms)]
    duration: u64,
    /// After it, faults healed, how long the cluster may go without storing a
    /// new record before the final checks, if it has not gone quiet (every
    /// buildable job built, all live nodes agree); at most 24 h in all.
    #[arg(long, default_value = "1h", value_parser = parse_ms)]
    settle: u64,
    /// Node kinds, LABELS:WEIGHT,... with LABELS like os=linux or os=linux+gpu=yes.
    #[arg(long, default_value = "os=linux:0.7,os=macos:0.2,os=linux+gpu=yes:0.1")]
    labels: String,
    /// Builds each node runs at once.
    #[arg(long, default_value_t = 1)]
    executors: u32,
    /// Repositories commits land in.
    #[arg(long, default_value_t = 1)]
    repos: usize,
    /// Commits per simulated minute, cluster-wide.
    #[arg(long, default_value_t = 2.0)]
    commits_per_min: f64,
    /// Builders per recipe; each requires one label of the mix, most common first.
    #[arg(long, default_value_t = 5)]
    builders: usize,
    /// Extra builders requiring a label no node has (their jobs must stay pending).
    #[arg(long, default_value_t = 0)]
    unbuildable_builders: usize,
    /// Build duration range.
    #[arg(long, default_value = "20s..2m", value_parser = parse_range_ms)]
    build_time: (u64, u64),
    /// Share of builds that fail.
    #[arg(long, default_value_t = 0.1)]
    failure_rate: f64,
    /// Share of builds whose end the executor never reports, not even after a cancel.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// The recipe step's timeout (timeout_secs); the recipe's default (1h) if not given.
    #[arg(long, value_parser = parse_ms)]
    step_timeout: Option<u64>,
    /// Link latency range.
    #[arg(long, default_value = "20ms..120ms", value_parser = parse_range_ms)]
    latency: (u64, u64),
    /// Chance that any one message on a link is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Chance that a delivered gossip message is delivered twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Chance that a message is held back (reordering).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Mesh links per node.
    #[arg(long, default_value_t = 8)]
    mesh_degree: usize,
    /// Scheduled partition START+LENGTH[@FRACTION], e.g. 10m+5m; repeatable.
    #[arg(long, value_parser = parse_partition)]
    partition: Vec<peerbot_simnet::Partition>,
    /// Random partitions per simulated hour.
    #[arg(long, default_value_t = 0.0)]
    random_partitions_per_hour: f64,
    /// Crashes per node, e.g. 0.01/min or 0.5/h.
    #[arg(long, default_value = "0/min", value_parser = parse_rate_per_min)]
    crash_rate: f64,
    /// How long a crashed node stays down.
    #[arg(long, default_value = "10s..2m", value_parser = parse_range_ms)]
    restart_after: (u64, u64),
    /// Chance a crashed node restarts with an empty store.
    #[arg(long, default_value_t = 0.0)]
    lose_store: f64,
    /// Largest clock offset of a node, either way.
    #[arg(long, default_value = "0ms", value_parser = parse_ms)]
    clock_skew: u64,
    /// Share of nodes that are slow (links and builds slower by --slow-factor).
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    #[arg(long, default_value_t = 3.0)]
    slow_factor: f64,
    /// Crash the claimant of each of the first N builds half-way through.
    #[arg(long, default_value_t = 0)]
    crash_claimants: usize,
    /// Take node N down at START for LENGTH, keeping its store: N@START+LENGTH; repeatable.
    #[arg(long, value_parser = peerbot_simnet::parse_outage)]
    outage: Vec<(usize, u64, u64)>,
    /// Nodes that keep a copy of each step log.
    #[arg(long, default_value_t = 3)]
    log_replicas: usize,
    /// Forged (bit-flipped) records injected per simulated minute.
    #[arg(long, default_value_t = 0.0)]
    forge_per_min: f64,
    /// The nodes' claim stagger.
    #[arg(long, default_value = "2s", value_parser = parse_ms)]
    claim_stagger: u64,
    /// The nodes' lease length.
    #[arg(long, default_value = "30s", value_parser = parse_ms)]
    lease: u64,
    /// The nodes' sync interval.
    #[arg(long, default_value = "15s", value_parser = parse_ms)]
    sync: u64,
    /// Cluster-wide heartbeats per second the nodes aim for.
    #[arg(long, default_value_t = 2)]
    cluster_heartbeats_per_sec: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    let a = Args::parse();
    let label_mix = match parse_label_mix(&a.labels) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("peerbot-simnet: --labels: {e}");
            std::process::exit(2);
        }
    };
    let cfg = SimConfig {
        nodes: a.nodes,
        seed: a.seed,
        duration_ms: a.duration,
        settle_ms: a.settle,
        label_mix,
        executors: a.executors,
        repos: a.repos,
        commits_per_min: a.commits_per_min,
        builders: a.builders,
        unbuildable_builders: a.unbuildable_builders,
        build_ms: a.build_time,
        build_failure_rate: a.failure_rate,
        hang_rate: a.hang_rate,
        step_timeout_ms: a.step_timeout,
        latency_ms: a.latency,
        loss: a.loss,
        duplicate: a.duplicate,
        reorder: a.reorder,
        mesh_degree: a.mesh_degree,
        partitions: a.partition,
        random_partitions_per_hour: a.random_partitions_per_hour,
        crash_rate_per_min: a.crash_rate,
        restart_after_ms: a.restart_after,
        lose_store: a.lose_store,
        clock_skew_ms: a.clock_skew,
        slow_fraction: a.slow_fraction,
        slow_factor: a.slow_factor,
        crash_claimants: a.crash_claimants,
        forge_per_min: a.forge_per_min,
        outages: a.outage,
        log_replicas: a.log_replicas,
        claim_stagger_ms: a.claim_stagger,
        lease_ms: a.lease,
        sync_ms: a.sync,
        cluster_heartbeats_per_sec: a.cluster_heartbeats_per_sec,
        ..SimConfig::default()
    };
    if cfg.nodes == 0 {
        eprintln!("peerbot-simnet: --nodes must be at least 1");
        std::process::exit(2);
    }
    match Sim::new(cfg).run() {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.to_text());
            }
        }
        Err(v) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("{v}");
            }
            std::process::exit(1);
        }
    }
}
