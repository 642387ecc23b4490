//! A deterministic discrete-event simulator for peerbot clusters.
//!
//! It runs the very `NodeCore` that `peerbot node` runs, hundreds to
//! thousands of them, over a modelled network: a gossipsub-like mesh for
//! broadcasts, point-to-point links for requests, with latency, loss,
//! duplication, partitions, crashes, clock skew and slow nodes. Time is
//! virtual; one seeded RNG drives every choice, so one seed and one set of
//! flags give one run, byte for byte.

pub mod modelcheck;
pub mod sim;
pub mod soak;

use peerbot_protocol::core::defaults;

pub use sim::{Report, Sim, Violation};

/// Nodes of one kind: their labels and their share of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelClass {
    pub labels: Vec<String>,
    pub weight: f64,
}

/// A scheduled partition: at `at_ms`, a `fraction` of the nodes is cut off
/// from the rest for `dur_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub at_ms: u64,
    pub dur_ms: u64,
    pub fraction: f64,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Commits and faults happen during this time...
    pub duration_ms: u64,
    /// ...then the network heals and the run goes on until it is quiet
    /// (every buildable job built, all nodes agree), or until no node has
    /// stored a new record for this long (and at most 24 h, or this if
    /// longer, after `duration_ms`).
    pub settle_ms: u64,
    pub label_mix: Vec<LabelClass>,
    pub executors: u32,
    pub repos: usize,
    pub commits_per_min: f64,
    pub builders: usize,
    /// Extra builders whose labels no node has: their jobs must stay pending.
    pub unbuildable_builders: usize,
    pub build_ms: (u64, u64),
    pub build_failure_rate: f64,
    /// Chance that a build's end is never reported, not even after a
    /// cancel, as with an executor wedged in a fetch that hangs.
    pub hang_rate: f64,
    /// The recipe's `timeout_secs` for its step; `None` leaves it out
    /// (the recipe's default, an hour).
    pub step_timeout_ms: Option<u64>,
    pub latency_ms: (u64, u64),
    pub loss: f64,
    pub duplicate: f64,
    /// Chance that a message is held back by up to 10 times the top latency.
    pub reorder: f64,
    /// Mesh links per node (gossipsub's D).
    pub mesh_degree: usize,
    pub partitions: Vec<Partition>,
    pub random_partitions_per_hour: f64,
    pub random_partition_ms: (u64, u64),
    /// Crashes per node per minute.
    pub crash_rate_per_min: f64,
    pub restart_after_ms: (u64, u64),
    /// Chance that a crashed node comes back with an empty store.
    pub lose_store: f64,
    /// Each node's clock is off by up to this much, either way.
    pub clock_skew_ms: u64,
    pub slow_fraction: f64,
    pub slow_factor: f64,
    /// Crash the claimant of each of the first N builds half-way through it.
    pub crash_claimants: usize,
    /// Forged records injected per minute (a peer flips bits in a record).
    pub forge_per_min: f64,
    /// The last N nodes are hostile insiders (admitted, with valid keys):
    /// they replay records, claim jobs with made-up attempts and leases,
    /// sign cancels of others' jobs, and answer reconciliation with ids
    /// they never deliver. All nodes then run with a cluster key.
    pub byzantine: usize,
    /// Scheduled outages: (node, start, length); the node keeps its store.
    pub outages: Vec<(usize, u64, u64)>,
    pub log_replicas: usize,
    pub heartbeat_ms: u64,
    pub cluster_heartbeats_per_sec: u64,
    pub claim_stagger_ms: u64,
    pub lease_ms: u64,
    pub sync_ms: u64,
    pub request_timeout_ms: u64,
    /// A builder `sched` (any node) built on this cron schedule; the
    /// simulated clock starts at 1970-01-01 00:00 UTC.
    pub schedule: Option<String>,
    /// Builder b1 depends on b0 (with two builders or more).
    pub depends_on: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 100,
            seed: 1,
            duration_ms: 10 * 60_000,
            settle_ms: 60 * 60_000,
            label_mix: default_label_mix(),
            executors: 1,
            repos: 1,
            commits_per_min: 2.0,
            builders: 5,
            unbuildable_builders: 0,
            build_ms: (20_000, 120_000),
            build_failure_rate: 0.1,
            hang_rate: 0.0,
            step_timeout_ms: None,
            latency_ms: (20, 120),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            mesh_degree: 8,
            partitions: vec![],
            random_partitions_per_hour: 0.0,
            random_partition_ms: (30_000, 300_000),
            crash_rate_per_min: 0.0,
            restart_after_ms: (10_000, 120_000),
            lose_store: 0.0,
            clock_skew_ms: 0,
            slow_fraction: 0.0,
            slow_factor: 3.0,
            crash_claimants: 0,
            forge_per_min: 0.0,
            byzantine: 0,
            outages: vec![],
            log_replicas: defaults::LOG_REPLICAS,
            heartbeat_ms: defaults::HEARTBEAT_MS,
            cluster_heartbeats_per_sec: defaults::CLUSTER_HEARTBEATS_PER_SEC,
            claim_stagger_ms: defaults::CLAIM_STAGGER_MS,
            lease_ms: defaults::LEASE_MS,
            sync_ms: defaults::SYNC_INTERVAL_MS,
            request_timeout_ms: 10_000,
            schedule: None,
            depends_on: false,
        }
    }
}

impl SimConfig {
    /// No fault of any kind is configured: every job must be built exactly once.
    pub fn fault_free(&self) -> bool {
        self.loss == 0.0
            && self.duplicate == 0.0
            && self.partitions.is_empty()
            && self.random_partitions_per_hour == 0.0
            && self.crash_rate_per_min == 0.0
            && self.crash_claimants == 0
            && self.outages.is_empty()
            && self.hang_rate == 0.0
    }

    /// The labels builder `i` requires: the mix's labels, most common first.
    pub fn builder_requires(&self, i: usize) -> Vec<String> {
        if i >= self.builders {
            return vec!["os=plan9".to_string()];
        }
        let mut weights: Vec<(String, f64)> = Vec::new();
        for c in &self.label_mix {
            for l in &c.labels {
                match weights.iter_mut().find(|(x, _)| x == l) {
                    Some(w) => w.1 += c.weight,
                    None => weights.push((l.clone(), c.weight)),
                }
            }
        }
        weights.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        match weights.get(i % weights.len().max(1)) {
            Some((l, _)) => vec![l.clone()],
            None => vec![],
        }
    }
}

pub fn default_label_mix() -> Vec<LabelClass> {
    parse_label_mix("os=linux:0.7,os=macos:0.2,os=linux+gpu=yes:0.1").expect("default label mix")
}

/// `LABELS:WEIGHT,...` where LABELS is `k=v` or `k=v+k2=v2`.
pub fn parse_label_mix(s: &str) -> Result<Vec<LabelClass>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (labels, weight) =
            part.rsplit_once(':').ok_or_else(|| format!("label mix entry {part:?} has no :WEIGHT"))?;
        let weight: f64 = weight.trim().trim_end_matches('%').parse().map_err(|_| format!("bad weight in {part:?}"))?;
        let labels = labels
            .split('+')
            .map(|l| peerbot_protocol::labels::parse_label(l).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if weight <= 0.0 {
            return Err(format!("weight in {part:?} must be positive"));
        }
        out.push(LabelClass { labels, weight });
    }
    if out.is_empty() {
        return Err("empty label mix".into());
    }
    Ok(out)
}

/// `20ms..120ms`, or a single duration.
pub fn parse_range_ms(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let a = parse_ms(a)?;
    let b = parse_ms(b)?;
    if b < a {
        return Err(format!("range {s:?} ends before it starts"));
    }
    Ok((a, b))
}

/// A duration such as `2s` or `10m`; a bare number is milliseconds.
pub fn parse_ms(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.trim().parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_duration(s.trim()).map(|d| d.as_millis() as u64).map_err(|e| format!("{s:?}: {e}"))
}

/// `START+LENGTH[@FRACTION]`, e.g. `10m+5m` or `10m+5m@0.3` (default half).
pub fn parse_partition(s: &str) -> Result<Partition, String> {
    let (spec, fraction) = match s.split_once('@') {
        Some((a, f)) => (a, f.parse::<f64>().map_err(|_| format!("bad fraction in {s:?}"))?),
        None => (s, 0.5),
    };
    let (at, dur) = spec.split_once('+').ok_or_else(|| format!("partition {s:?} is not START+LENGTH"))?;
    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
        return Err(format!("partition fraction in {s:?} must be between 0 and 1"));
    }
    Ok(Partition { at_ms: parse_ms(at)?, dur_ms: parse_ms(dur)?, fraction })
}

/// `NODE@START+LENGTH`, e.g. `3@10m+24h`.
pub fn parse_outage(s: &str) -> Result<(usize, u64, u64), String> {
    let (node, rest) = s.split_once('@').ok_or_else(|| format!("outage {s:?} is not NODE@START+LENGTH"))?;
    let (at, dur) = rest.split_once('+').ok_or_else(|| format!("outage {s:?} is not NODE@START+LENGTH"))?;
    Ok((node.parse().map_err(|_| format!("bad node in {s:?}"))?, parse_ms(at)?, parse_ms(dur)?))
}

/// `0.01/min`, `0.5/h`, or a bare number per minute.
pub fn parse_rate_per_min(s: &str) -> Result<f64, String> {
    let (n, unit) = s.split_once('/').unwrap_or((s, "min"));
    let n: f64 = n.trim().parse().map_err(|_| format!("bad rate {s:?}"))?;
    let per_min = match unit.trim() {
        "s" | "sec" => n * 60.0,
        "m" | "min" => n,
        "h" | "hour" => n / 60.0,
        u => return Err(format!("unknown rate unit {u:?} in {s:?}")),
    };
    if per_min < 0.0 {
        return Err(format!("rate {s:?} is negative"));
    }
    Ok(per_min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        assert_eq!(parse_range_ms("20ms..120ms").unwrap(), (20, 120));
        assert_eq!(parse_partition("10m+5m").unwrap(), Partition { at_ms: 600_000, dur_ms: 300_000, fraction: 0.5 });
        assert_eq!(parse_rate_per_min("0.01/min").unwrap(), 0.01);
        assert_eq!(parse_rate_per_min("6/h").unwrap(), 0.1);
        let mix = parse_label_mix("os=linux:70,os=macos:20,os=linux+gpu=yes:10").unwrap();
        assert_eq!(mix[2].labels, vec!["os=linux".to_string(), "gpu=yes".to_string()]);
        assert!(parse_label_mix("linux:1").is_err());
        assert!(parse_partition("10m").is_err());
        let cfg = SimConfig::default();
        assert_eq!(cfg.builder_requires(0), vec!["os=linux".to_string()]);
        assert_eq!(cfg.builder_requires(1), vec!["os=macos".to_string()]);
        assert_eq!(cfg.builder_requires(2), vec!["gpu=yes".to_string()]);
        assert_eq!(cfg.builder_requires(5), vec!["os=plan9".to_string()]);
    }
}
