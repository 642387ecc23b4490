//! The soak: many seeds, each its own cluster and its own mix of faults.
//!
//! A soak seed is one ordinary run. `draw` turns the seed alone (and the
//! soak's ranges of sizes and durations) into a `SimConfig`: the cluster's
//! size, label mix, executors and workload, the network's latency, loss,
//! duplication and reordering, and every kind of fault the simulator has,
//! each present or not and at its own intensity. `replay_args` spells that
//! config out as the flags of a plain `peerbot-simnet` run, every flag
//! given, so a failing seed is replayed alone with the printed command.
//!
//! `run` spreads the seeds over worker threads (a shared counter is the
//! work queue) and folds their results in seed order, so the figures and
//! the failures it reports do not depend on the number of threads or on
//! which thread finished first. A seed fails when its run breaks an
//! invariant, panics, or, without a partition, builds 1% or more of its
//! jobs twice.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{LabelClass, Partition, Report, Sim, SimConfig, Violation};

/// A run without a partition must build fewer than this share of its
/// buildable jobs twice.
pub const DUPLICATE_LIMIT: f64 = 0.01;

/// Mixed into the seed for the draw of the config, so that the draw's
/// stream is not the run's own stream.
const DRAW_STREAM: u64 = 0x736f_616b_2064_7261;

/// Drawn durations are whole multiples of this.
const DURATION_STEP_MS: u64 = 10_000;

/// Settling times are whole hours, one at least.
const SETTLE_STEP_MS: u64 = 3_600_000;

/// What a soak covers.
#[derive(Clone, Debug, Serialize)]
pub struct SoakPlan {
    pub first_seed: u64,
    pub seeds: u64,
    /// Cluster sizes, both ends included.
    pub nodes: (usize, usize),
    /// `--duration` of each run, both ends included, in steps of 10 s.
    pub duration_ms: (u64, u64),
    /// Worker threads.
    pub threads: usize,
}

impl SoakPlan {
    /// The config a seed of this plan runs.
    pub fn draw(&self, seed: u64) -> SimConfig {
        draw(seed, self.nodes, self.duration_ms)
    }
}

/// `10..60`, or a single size.
pub fn parse_nodes_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let a: usize = a.trim().parse().map_err(|_| format!("bad node count in {s:?}"))?;
    let b: usize = b.trim().parse().map_err(|_| format!("bad node count in {s:?}"))?;
    if a == 0 || b < a {
        return Err(format!("node range {s:?} must be LOW..HIGH with 1 <= LOW <= HIGH"));
    }
    Ok((a, b))
}

// ---------------------------------------------------------------------------
// The draw.

/// The config of soak seed `seed`: a function of its arguments alone.
/// The order of the draws is part of what a soak seed means: a change to it
/// gives a seed another run (the printed command still replays the old one).
pub fn draw(seed: u64, nodes: (usize, usize), duration_ms: (u64, u64)) -> SimConfig {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DRAW_STREAM);
    let steps = (duration_ms.1 - duration_ms.0) / DURATION_STEP_MS;
    let mut cfg = SimConfig {
        seed,
        nodes: rng.gen_range(nodes.0..=nodes.1),
        duration_ms: duration_ms.0 + rng.gen_range(0..=steps) * DURATION_STEP_MS,
        ..SimConfig::default()
    };
    draw_cluster(&mut cfg, &mut rng);
    draw_network(&mut cfg, &mut rng);
    draw_crashes(&mut cfg, &mut rng);
    draw_partitions(&mut cfg, &mut rng);
    draw_impairments(&mut cfg, &mut rng);
    cfg.settle_ms = settle_for(&cfg);
    cfg
}

/// Long enough for the longest queue one node may be left with: the jobs
/// of the label the most builders require, for half again the expected
/// changes and five more, at the longest build time, slowed down, all on
/// one node (the rare kind may have one). A run that goes quiet stops
/// early, so only a run that never settles pays for a long settle.
fn settle_for(cfg: &SimConfig) -> u64 {
    let mut per_label: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for i in 0..cfg.builders {
        *per_label.entry(cfg.builder_requires(i)).or_default() += 1;
    }
    let jobs_per_change = per_label.values().max().copied().unwrap_or(0) as f64;
    let changes = 1.5 * cfg.commits_per_min * cfg.duration_ms as f64 / 60_000.0 + 5.0;
    let slow = if cfg.slow_fraction > 0.0 { cfg.slow_factor } else { 1.0 };
    let queue_ms = changes * jobs_per_change * cfg.build_ms.1 as f64 * slow;
    (queue_ms as u64).div_ceil(SETTLE_STEP_MS).max(1) * SETTLE_STEP_MS
}

/// A value in `lo..hi` with `decimals` decimals.
fn rounded(rng: &mut ChaCha8Rng, lo: f64, hi: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (rng.gen_range(lo..hi) * scale).round() / scale
}

/// Whole seconds in `lo..=hi`, as milliseconds.
fn seconds(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    rng.gen_range(lo..=hi) * 1000
}

/// Node kinds beside plain `os=linux`, which every mix has.
const KINDS: [&str; 4] = ["os=macos", "os=linux+arch=arm64", "os=windows", "os=linux+arch=arm64+big=yes"];

/// Labels, executors and workload.
fn draw_cluster(cfg: &mut SimConfig, rng: &mut ChaCha8Rng) {
    let mut mix = vec![LabelClass { labels: vec!["os=linux".into()], weight: rounded(rng, 0.3, 1.0, 2) }];
    for kind in KINDS {
        if rng.gen_bool(0.4) {
            let labels = kind.split('+').map(str::to_string).collect();
            mix.push(LabelClass { labels, weight: rounded(rng, 0.05, 1.0, 2) });
        }
    }
    if rng.gen_bool(0.5) {
        // A rare kind: about one node in the cluster, sometimes none.
        let total: f64 = mix.iter().map(|c| c.weight).sum();
        let weight = ((total / cfg.nodes as f64) * 1000.0).round().max(1.0) / 1000.0;
        mix.push(LabelClass { labels: vec!["os=linux".into(), "gpu=yes".into()], weight });
    }
    cfg.label_mix = mix;
    // One builder per distinct label at least, so the rare ones are built.
    let labels = distinct_labels(&cfg.label_mix);
    cfg.builders = labels + rng.gen_range(0..=2);
    cfg.unbuildable_builders = usize::from(rng.gen_bool(0.15));
    cfg.executors = *[1, 1, 1, 2, 3].get(rng.gen_range(0..5)).unwrap_or(&1);
    cfg.repos = rng.gen_range(1..=3);
    cfg.commits_per_min = rounded(rng, 0.3, 4.0, 1);
    let low = seconds(rng, 2, 30);
    cfg.build_ms = (low, low + seconds(rng, 0, 90));
    cfg.build_failure_rate = rounded(rng, 0.0, 0.3, 2);
    cfg.log_replicas = rng.gen_range(1..=5);
}

fn distinct_labels(mix: &[LabelClass]) -> usize {
    let mut all: Vec<&String> = mix.iter().flat_map(|c| c.labels.iter()).collect();
    all.sort();
    all.dedup();
    all.len()
}

/// Latency, loss, duplication, reordering and the mesh.
fn draw_network(cfg: &mut SimConfig, rng: &mut ChaCha8Rng) {
    let low = rng.gen_range(5..=50);
    cfg.latency_ms = (low, low + rng.gen_range(10..=300));
    cfg.loss = if rng.gen_bool(0.5) { rounded(rng, 0.001, 0.15, 3) } else { 0.0 };
    cfg.duplicate = if rng.gen_bool(0.4) { rounded(rng, 0.001, 0.1, 3) } else { 0.0 };
    cfg.reorder = if rng.gen_bool(0.4) { rounded(rng, 0.001, 0.1, 3) } else { 0.0 };
    // From gossipsub's D (6) to its D_hi (12). The model's mesh is fixed
    // (no grafting), so with fewer links a node whose neighbours are all
    // down is cut off: a partition that the figures do not count.
    cfg.mesh_degree = rng.gen_range(6..=12);
}

/// Random crashes (with or without the store), claimant crashes, outages.
fn draw_crashes(cfg: &mut SimConfig, rng: &mut ChaCha8Rng) {
    if rng.gen_bool(0.4) {
        cfg.crash_rate_per_min = rounded(rng, 0.001, 0.03, 3);
        let low = seconds(rng, 5, 60);
        cfg.restart_after_ms = (low, low + seconds(rng, 0, 180));
        cfg.lose_store = if rng.gen_bool(0.5) { rounded(rng, 0.05, 1.0, 2) } else { 0.0 };
    }
    if rng.gen_bool(0.2) {
        cfg.crash_claimants = rng.gen_range(1..=3);
    }
    if rng.gen_bool(0.3) {
        for _ in 0..rng.gen_range(1..=2) {
            let node = rng.gen_range(0..cfg.nodes);
            let at = seconds(rng, 0, cfg.duration_ms / 1000);
            cfg.outages.push((node, at, seconds(rng, 20, 600)));
        }
    }
}

/// Scheduled and random partitions.
fn draw_partitions(cfg: &mut SimConfig, rng: &mut ChaCha8Rng) {
    if rng.gen_bool(0.3) {
        for _ in 0..rng.gen_range(1..=2) {
            let at_ms = seconds(rng, 0, cfg.duration_ms / 1000);
            let dur_ms = seconds(rng, 10, 300);
            cfg.partitions.push(Partition { at_ms, dur_ms, fraction: rounded(rng, 0.1, 0.9, 2) });
        }
    }
    if rng.gen_bool(0.3) {
        cfg.random_partitions_per_hour = rounded(rng, 1.0, 12.0, 1);
    }
}

/// Clock skew, slow nodes and forged records.
fn draw_impairments(cfg: &mut SimConfig, rng: &mut ChaCha8Rng) {
    if rng.gen_bool(0.4) {
        cfg.clock_skew_ms = rng.gen_range(1..=3000);
    }
    if rng.gen_bool(0.3) {
        cfg.slow_fraction = rounded(rng, 0.05, 0.3, 2);
        cfg.slow_factor = rounded(rng, 1.5, 5.0, 1);
    }
    if rng.gen_bool(0.3) {
        cfg.forge_per_min = rounded(rng, 0.1, 3.0, 1);
    }
}

// ---------------------------------------------------------------------------
// The replay command.

/// A duration as `peerbot-simnet` reads it, in the largest whole unit.
fn duration_flag(ms: u64) -> String {
    match ms {
        0 => "0ms".into(),
        ms if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        ms if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        ms if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

fn range_flag((lo, hi): (u64, u64)) -> String {
    if lo == hi {
        duration_flag(lo)
    } else {
        format!("{}..{}", duration_flag(lo), duration_flag(hi))
    }
}

fn labels_flag(mix: &[LabelClass]) -> String {
    mix.iter().map(|c| format!("{}:{}", c.labels.join("+"), c.weight)).collect::<Vec<_>>().join(",")
}

/// Every flag of a plain run that gives `cfg`, defaults included, so the
/// command means the same run whatever the defaults become. (Floats print
/// in their shortest form that parses back to the same value.)
pub fn replay_args(cfg: &SimConfig) -> Vec<String> {
    let mut flags: Vec<(&str, String)> = vec![
        ("seed", cfg.seed.to_string()),
        ("nodes", cfg.nodes.to_string()),
        ("duration", duration_flag(cfg.duration_ms)),
        ("settle", duration_flag(cfg.settle_ms)),
        ("labels", labels_flag(&cfg.label_mix)),
        ("executors", cfg.executors.to_string()),
        ("repos", cfg.repos.to_string()),
        ("commits-per-min", cfg.commits_per_min.to_string()),
        ("builders", cfg.builders.to_string()),
        ("unbuildable-builders", cfg.unbuildable_builders.to_string()),
        ("build-time", range_flag(cfg.build_ms)),
        ("failure-rate", cfg.build_failure_rate.to_string()),
        ("latency", range_flag(cfg.latency_ms)),
        ("loss", cfg.loss.to_string()),
        ("duplicate", cfg.duplicate.to_string()),
        ("reorder", cfg.reorder.to_string()),
        ("mesh-degree", cfg.mesh_degree.to_string()),
    ];
    for p in &cfg.partitions {
        flags.push(("partition", format!("{}+{}@{}", duration_flag(p.at_ms), duration_flag(p.dur_ms), p.fraction)));
    }
    flags.extend([
        ("random-partitions-per-hour", cfg.random_partitions_per_hour.to_string()),
        ("crash-rate", format!("{}/min", cfg.crash_rate_per_min)),
        ("restart-after", range_flag(cfg.restart_after_ms)),
        ("lose-store", cfg.lose_store.to_string()),
        ("clock-skew", duration_flag(cfg.clock_skew_ms)),
        ("slow-fraction", cfg.slow_fraction.to_string()),
        ("slow-factor", cfg.slow_factor.to_string()),
        ("crash-claimants", cfg.crash_claimants.to_string()),
    ]);
    for (node, at, dur) in &cfg.outages {
        flags.push(("outage", format!("{node}@{}+{}", duration_flag(*at), duration_flag(*dur))));
    }
    flags.extend([
        ("log-replicas", cfg.log_replicas.to_string()),
        ("forge-per-min", cfg.forge_per_min.to_string()),
        ("claim-stagger", duration_flag(cfg.claim_stagger_ms)),
        ("lease", duration_flag(cfg.lease_ms)),
        ("sync", duration_flag(cfg.sync_ms)),
        ("cluster-heartbeats-per-sec", cfg.cluster_heartbeats_per_sec.to_string()),
    ]);
    flags.into_iter().flat_map(|(flag, value)| [format!("--{flag}"), value]).collect()
}

/// The shell command that replays `cfg` alone.
pub fn replay_command(cfg: &SimConfig) -> String {
    format!("peerbot-simnet {}", replay_args(cfg).join(" "))
}

// ---------------------------------------------------------------------------
// Running the seeds.

/// How one seed's run ended.
pub enum Outcome {
    Passed(Box<Report>),
    Violated(Box<Violation>),
    Panicked(String),
}

/// One seed: its config and how its run ended.
pub struct SeedRun {
    pub config: SimConfig,
    pub outcome: Outcome,
    pub wall_ms: u64,
}

/// Runs one config, a panic included in the outcome.
pub fn run_one(config: SimConfig) -> SeedRun {
    let wall = Instant::now();
    let cfg = config.clone();
    let outcome = match catch_unwind(AssertUnwindSafe(move || Sim::new(cfg).run())) {
        Ok(Ok(r)) => Outcome::Passed(Box::new(r)),
        Ok(Err(v)) => Outcome::Violated(v),
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    };
    SeedRun { config, outcome, wall_ms: wall.elapsed().as_millis() as u64 }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".into()
    }
}

/// A seed that failed, and the command that replays it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub seed: u64,
    /// `violation`, `panic` or `duplicates`.
    pub kind: &'static str,
    pub message: String,
    pub command: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed ({}):", self.seed, self.kind)?;
        writeln!(f, "{}", self.message)?;
        write!(f, "replay: {}", self.command)
    }
}

/// Runs that passed, of one kind (with or without a partition).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunClass {
    pub runs: u64,
    pub jobs: u64,
    pub buildable_jobs: u64,
    /// Jobs whose change was lost with every store that held it.
    pub lost_with_change: u64,
    /// Jobs with two or more results.
    pub built_twice: u64,
    pub builds_started: u64,
    /// The run with the highest duplicate share: (seed, share).
    pub worst: Option<(u64, f64)>,
}

impl RunClass {
    /// Jobs built twice or more ÷ buildable jobs.
    pub fn duplicate_share(&self) -> f64 {
        self.built_twice as f64 / (self.buildable_jobs.max(1)) as f64
    }

    fn add(&mut self, r: &Report) {
        self.runs += 1;
        self.jobs += r.jobs as u64;
        self.buildable_jobs += (r.jobs - r.jobs_unbuildable - r.jobs_lost_with_change) as u64;
        self.lost_with_change += r.jobs_lost_with_change as u64;
        self.built_twice += r.jobs_built_2_plus as u64;
        self.builds_started += r.builds_started;
        if self.worst.is_none_or(|(_, w)| r.duplicate_rate > w) {
            self.worst = Some((r.seed, r.duplicate_rate));
        }
    }
}

/// What a soak found; the same seeds give the same figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    pub seeds_run: u64,
    pub violations: u64,
    pub panics: u64,
    /// Runs without a partition that built `DUPLICATE_LIMIT` or more of
    /// their jobs twice.
    pub duplicate_breaches: u64,
    /// Runs that passed, by whether a partition happened in them.
    pub with_partitions: RunClass,
    pub without_partitions: RunClass,
    /// Runs in which no fault was configured (exactly-once is checked).
    pub fault_free_runs: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub forged_sent: u64,
    pub claim_conflicts: u64,
    pub lease_expiries: u64,
    pub simulated_ms: u64,
    pub events: u64,
    /// blake3 over every seed's trace hash (or failure) in seed order.
    pub digest: String,
}

/// A soak's result: the figures, the failures in seed order, the timing.
#[derive(Clone, Debug, Serialize)]
pub struct SoakResult {
    pub plan: SoakPlan,
    pub figures: Figures,
    pub failures: Vec<Failure>,
    pub wall_ms: u64,
    pub seeds_per_sec: f64,
    /// The seed that took the longest, and its wall time.
    pub slowest: Option<(u64, u64)>,
}

impl SoakResult {
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }
}

/// Folds seed runs, in seed order, into the figures and the failures.
struct Tally {
    figures: Figures,
    failures: Vec<Failure>,
    digest: blake3::Hasher,
    slowest: Option<(u64, u64)>,
}

impl Tally {
    fn new() -> Tally {
        Tally { figures: Figures::default(), failures: vec![], digest: blake3::Hasher::new(), slowest: None }
    }

    /// Returns the failure this run is, if any.
    fn add(&mut self, run: &SeedRun) -> Option<Failure> {
        let seed = run.config.seed;
        let f = &mut self.figures;
        f.seeds_run += 1;
        if self.slowest.is_none_or(|(_, ms)| run.wall_ms > ms) {
            self.slowest = Some((seed, run.wall_ms));
        }
        let failure = |kind, message| Failure { seed, kind, message, command: replay_command(&run.config) };
        let (line, failed) = match &run.outcome {
            Outcome::Violated(v) => {
                f.violations += 1;
                (format!("{seed} violation {}", v.invariant), Some(failure("violation", v.to_string())))
            }
            Outcome::Panicked(msg) => {
                f.panics += 1;
                (format!("{seed} panic {msg}"), Some(failure("panic", format!("the run panicked: {msg}"))))
            }
            Outcome::Passed(r) => {
                let breach = Tally::add_report(f, r, run.config.fault_free());
                (format!("{seed} {}", r.trace_hash), breach.map(|m| failure("duplicates", m)))
            }
        };
        self.digest.update(line.as_bytes());
        self.digest.update(b"\n");
        self.failures.extend(failed.clone());
        failed
    }

    /// Counts a passed run; a message if it breaks the duplicate limit.
    fn add_report(f: &mut Figures, r: &Report, fault_free: bool) -> Option<String> {
        f.fault_free_runs += u64::from(fault_free);
        f.crashes += r.crashes;
        f.partitions += r.partitions;
        f.forged_sent += r.forged_sent;
        f.claim_conflicts += r.claim_conflicts;
        f.lease_expiries += r.lease_expiries;
        f.simulated_ms += r.simulated_ms;
        f.events += r.events;
        if r.partitions > 0 {
            f.with_partitions.add(r);
            return None;
        }
        f.without_partitions.add(r);
        if r.duplicate_rate < DUPLICATE_LIMIT {
            return None;
        }
        f.duplicate_breaches += 1;
        Some(format!(
            "{} of {} buildable jobs built twice or more ({:.2}%) in a run without a partition; the limit is {}%\n{}",
            r.jobs_built_2_plus,
            r.jobs - r.jobs_unbuildable - r.jobs_lost_with_change,
            r.duplicate_rate * 100.0,
            DUPLICATE_LIMIT * 100.0,
            r.to_text().trim_end()
        ))
    }

    fn finish(mut self, plan: &SoakPlan, wall: Instant) -> SoakResult {
        self.figures.digest = self.digest.finalize().to_hex()[..16].to_string();
        let wall_ms = wall.elapsed().as_millis() as u64;
        SoakResult {
            plan: plan.clone(),
            seeds_per_sec: self.figures.seeds_run as f64 * 1000.0 / wall_ms.max(1) as f64,
            figures: self.figures,
            failures: self.failures,
            wall_ms,
            slowest: self.slowest,
        }
    }
}

/// Runs every seed of `plan` with the config `draw` gives it, on
/// `plan.threads` threads. `on_failure` sees each failure as soon as every
/// earlier seed is done, in seed order.
pub fn run(
    plan: &SoakPlan,
    draw: impl Fn(u64) -> SimConfig + Sync,
    mut on_failure: impl FnMut(&Failure),
) -> SoakResult {
    let wall = Instant::now();
    let next = AtomicU64::new(0);
    let mut tally = Tally::new();
    let workers = (plan.threads.max(1) as u64).min(plan.seeds.max(1));
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(u64, SeedRun)>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, draw) = (&next, &draw);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.seeds {
                    break;
                }
                let run = run_one(draw(plan.first_seed.wrapping_add(i)));
                if tx.send((i, run)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Runs that finished ahead of an earlier seed wait here.
        let mut waiting = BTreeMap::new();
        let mut due = 0u64;
        for (i, run) in rx {
            waiting.insert(i, run);
            while let Some(run) = waiting.remove(&due) {
                if let Some(f) = tally.add(&run) {
                    on_failure(&f);
                }
                due += 1;
            }
        }
    });
    tally.finish(plan, wall)
}

// ---------------------------------------------------------------------------
// The summary.

fn class_line(name: &str, c: &RunClass) -> String {
    let worst = match c.worst {
        Some((seed, share)) if share > 0.0 => format!("; worst run {:.2}% (seed {seed})", share * 100.0),
        _ => String::new(),
    };
    format!(
        "runs {name} {}: {} jobs ({} buildable, {} lost with their change), {} built twice or more ({:.3}%), {} builds started{worst}\n",
        c.runs,
        c.jobs,
        c.buildable_jobs,
        c.lost_with_change,
        c.built_twice,
        c.duplicate_share() * 100.0,
        c.builds_started
    )
}

impl SoakResult {
    /// The figures as text, after the failures.
    pub fn to_text(&self) -> String {
        let (p, f) = (&self.plan, &self.figures);
        let mut s = format!(
            "soak: seeds {}..={} · {}..{} nodes · duration {} · {} threads\n",
            p.first_seed,
            p.first_seed.wrapping_add(p.seeds.saturating_sub(1)),
            p.nodes.0,
            p.nodes.1,
            range_flag(p.duration_ms),
            p.threads
        );
        s += &format!(
            "seeds run {} · violations {} · panics {} · duplicate breaches {} (a run without a partition must build under {}% of its jobs twice)\n",
            f.seeds_run,
            f.violations,
            f.panics,
            f.duplicate_breaches,
            DUPLICATE_LIMIT * 100.0
        );
        s += &class_line("with partitions", &f.with_partitions);
        s += &class_line("without partitions", &f.without_partitions);
        s += &format!(
            "fault-free runs {} · crashes {} · partitions {} · forgeries {} · claim conflicts {} · lease expiries {}\n",
            f.fault_free_runs, f.crashes, f.partitions, f.forged_sent, f.claim_conflicts, f.lease_expiries
        );
        s += &format!(
            "simulated {:.1} h · {} events · digest {}\n",
            f.simulated_ms as f64 / 3_600_000.0,
            f.events,
            f.digest
        );
        let slowest = match self.slowest {
            Some((seed, ms)) => format!(" · slowest seed {seed} ({:.2} s)", ms as f64 / 1000.0),
            None => String::new(),
        };
        s += &format!("wall {:.1} s · {:.2} seeds/s{slowest}\n", self.wall_ms as f64 / 1000.0, self.seeds_per_sec);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_on_the_seed_alone() {
        let a = draw(7, (10, 60), (120_000, 360_000));
        let b = draw(7, (10, 60), (120_000, 360_000));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(replay_command(&a), replay_command(&draw(8, (10, 60), (120_000, 360_000))));
        assert_eq!(a.seed, 7);
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        for seed in 0..500 {
            let c = draw(seed, (10, 60), (120_000, 360_000));
            assert!((10..=60).contains(&c.nodes));
            assert!((120_000..=360_000).contains(&c.duration_ms) && c.duration_ms.is_multiple_of(DURATION_STEP_MS));
            assert!(c.outages.iter().all(|o| o.0 < c.nodes));
            assert!(c.partitions.iter().all(|p| p.fraction > 0.0 && p.fraction < 1.0));
            assert!(c.builders >= distinct_labels(&c.label_mix));
            assert!(c.settle_ms >= 3_600_000 && (6..=12).contains(&c.mesh_degree));
        }
    }

    #[test]
    fn durations_print_in_their_largest_unit() {
        assert_eq!(duration_flag(0), "0ms");
        assert_eq!(duration_flag(1500), "1500ms");
        assert_eq!(duration_flag(90_000), "90s");
        assert_eq!(duration_flag(3_600_000), "1h");
        assert_eq!(range_flag((20, 120)), "20ms..120ms");
        assert_eq!(parse_nodes_range("10..60"), Ok((10, 60)));
        assert!(parse_nodes_range("0..3").is_err());
    }
}
