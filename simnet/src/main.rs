//! `peerbot-simnet`: run a simulated peerbot cluster from the shell.

use clap::{Parser, Subcommand};
use peerbot_protocol::core::defaults;
use peerbot_simnet::modelcheck;
use peerbot_simnet::soak::{self, SoakPlan};
use peerbot_simnet::{parse_label_mix, parse_ms, parse_partition, parse_range_ms, parse_rate_per_min, Sim, SimConfig};

#[derive(Parser)]
#[command(
    name = "peerbot-simnet",
    version,
    about = "Deterministic simulation of a peerbot cluster: the real NodeCore over a modelled network with faults.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run many seeds, each drawing its own cluster and faults; print each
    /// failure with the command that replays it, then the figures.
    Soak(SoakArgs),
    /// Explore every schedule of a small cluster (deliveries, losses,
    /// duplicates, a crash, build ends) and check the claim and lease
    /// rules in each; print the state count, or the steps to a violation.
    Modelcheck(ModelcheckArgs),
}

#[derive(clap::Args)]
struct ModelcheckArgs {
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Jobs of the one commit announced.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Executors of each node.
    #[arg(long, default_value_t = 1)]
    executors: u32,
    /// Messages that may be lost.
    #[arg(long, default_value_t = 1)]
    losses: u32,
    /// Gossip messages that may be delivered twice.
    #[arg(long, default_value_t = 1)]
    dups: u32,
    /// Deliveries that may overtake the oldest message in flight.
    #[arg(long, default_value_t = 1)]
    reorders: u32,
    /// Node crashes (each restarts later, its store kept).
    #[arg(long, default_value_t = 1)]
    crashes: u32,
    /// Delay bound: times the clock may move on (or a build end) while messages are in flight; all orders if not given.
    #[arg(long)]
    delays: Option<u32>,
    /// How long after the announce faults and reordering may happen.
    #[arg(long, default_value = "4s", value_parser = parse_ms)]
    horizon: u64,
    /// Give up (incomplete) after this many states.
    #[arg(long, default_value_t = 50_000_000)]
    max_states: u64,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Cluster sizes to draw from, LOW..HIGH.
    #[arg(long, default_value = "10..60", value_parser = soak::parse_nodes_range)]
    nodes: (usize, usize),
    /// Simulated time with commits and faults, drawn from LOW..HIGH in steps of 10 s.
    #[arg(long, default_value = "2m..6m", value_parser = parse_range_ms)]
    duration: (u64, u64),
    /// Runs at once (default: one per core).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Print the figures and the failures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RunArgs {
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
    #[arg(long, default_value_t = defaults::LOG_REPLICAS)]
    log_replicas: usize,
    /// Forged (bit-flipped) records injected per simulated minute.
    #[arg(long, default_value_t = 0.0)]
    forge_per_min: f64,
    /// Make the last N nodes hostile insiders: they replay records, claim
    /// with made-up attempts and leases, cancel others' jobs, and answer
    /// reconciliation with ids they never deliver (all nodes then run with
    /// a cluster key and admissions).
    #[arg(long, default_value_t = 0)]
    byzantine: usize,
    /// The nodes' claim stagger (a duration such as 2s, or milliseconds).
    #[arg(long, default_value_t = defaults::CLAIM_STAGGER_MS, value_parser = parse_ms)]
    claim_stagger: u64,
    /// The nodes' lease length (a duration, or milliseconds).
    #[arg(long, default_value_t = defaults::LEASE_MS, value_parser = parse_ms)]
    lease: u64,
    /// The nodes' sync interval (a duration, or milliseconds).
    #[arg(long, default_value_t = defaults::SYNC_INTERVAL_MS, value_parser = parse_ms)]
    sync: u64,
    /// Cluster-wide heartbeats per second the nodes aim for.
    #[arg(long, default_value_t = defaults::CLUSTER_HEARTBEATS_PER_SEC)]
    cluster_heartbeats_per_sec: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Soak(a)) => run_soak(a),
        Some(Command::Modelcheck(a)) => run_modelcheck(a),
        None => run_one(cli.run),
    }
}

/// The run's settings, or what is wrong with the flags.
fn config(a: RunArgs) -> Result<SimConfig, String> {
    let label_mix = parse_label_mix(&a.labels).map_err(|e| format!("--labels: {e}"))?;
    if a.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    Ok(SimConfig {
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
        byzantine: a.byzantine,
        outages: a.outage,
        log_replicas: a.log_replicas,
        claim_stagger_ms: a.claim_stagger,
        lease_ms: a.lease,
        sync_ms: a.sync,
        cluster_heartbeats_per_sec: a.cluster_heartbeats_per_sec,
        ..SimConfig::default()
    })
}

fn run_one(a: RunArgs) {
    let json = a.json;
    let cfg = config(a).unwrap_or_else(|e| {
        eprintln!("peerbot-simnet: {e}");
        std::process::exit(2);
    });
    match Sim::new(cfg).run() {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print!("{}", r.to_text());
            }
        }
        Err(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                eprintln!("{v}");
            }
            std::process::exit(1);
        }
    }
}

/// Exits 1 on a violation, 3 when the bound on states cut it short.
fn run_modelcheck(a: ModelcheckArgs) {
    if a.nodes < 2 || a.jobs == 0 || a.executors == 0 {
        eprintln!("peerbot-simnet modelcheck: needs --nodes >= 2, --jobs >= 1 and --executors >= 1");
        std::process::exit(2);
    }
    let b = modelcheck::Bounds {
        nodes: a.nodes,
        jobs: a.jobs,
        executors: a.executors,
        losses: a.losses,
        dups: a.dups,
        reorders: a.reorders,
        crashes: a.crashes,
        delays: a.delays,
        horizon_ms: a.horizon,
        max_states: a.max_states,
        ..modelcheck::Bounds::default()
    };
    let r = modelcheck::explore(&b);
    print!("{}", r.to_text());
    if r.counterexample.is_some() {
        std::process::exit(1);
    }
    if !r.complete {
        std::process::exit(3);
    }
}

/// Exits 1 if any seed failed.
fn run_soak(a: SoakArgs) {
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let plan = SoakPlan { first_seed: a.from, seeds: a.seeds, nodes: a.nodes, duration_ms: a.duration, threads };
    let result = soak::run(
        &plan,
        |seed| plan.draw(seed),
        |failure| {
            if !a.json {
                println!("{failure}\n");
            }
        },
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
    } else {
        print!("{}", result.to_text());
    }
    if result.failed() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags a soak prints for a seed parse back into the config it ran.
    #[test]
    fn soak_replay_commands_parse_back_to_the_same_config() {
        for seed in 0..200 {
            let drawn = soak::draw(seed, (10, 60), (120_000, 360_000));
            let args = std::iter::once("peerbot-simnet".to_string()).chain(soak::replay_args(&drawn));
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert!(cli.command.is_none());
            let parsed = config(cli.run).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(format!("{parsed:?}"), format!("{drawn:?}"), "seed {seed}");
        }
    }
}
