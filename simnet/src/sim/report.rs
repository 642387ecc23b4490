//! The figures of a run: what the nodes reported while it ran, and the
//! `Report` made of them and of the other modules' counts at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record;
use peerbot_protocol::store::Store;
use serde::Serialize;

use super::invariants::JobsLeft;
use super::workload::JobInfo;
use super::Sim;

/// What a run shows. Times are simulated milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub simulated_ms: u64,
    pub events: u64,
    pub wall_ms: u64,
    pub trace_hash: String,
    pub changes: usize,
    pub jobs: usize,
    pub jobs_unbuildable: usize,
    /// Jobs whose change was lost with every store that held it, before it
    /// reached another node: nobody can know them.
    pub jobs_lost_with_change: usize,
    /// Jobs superseded by a newer commit or cancelled before anyone built them.
    pub jobs_withdrawn: usize,
    /// Buildable jobs, not withdrawn, with no result.
    pub jobs_built_0: usize,
    pub jobs_built_1: usize,
    pub jobs_built_2_plus: usize,
    pub builds_started: u64,
    pub builds_cancelled: u64,
    /// Builds a core gave up because their end never came (`--hang-rate`).
    pub builds_given_up: u64,
    pub duplicate_rate: f64,
    pub change_reach_p50_ms: Option<u64>,
    pub change_reach_p99_ms: Option<u64>,
    pub change_reach_all_ms: Option<u64>,
    pub change_to_claim_p50_ms: Option<u64>,
    pub change_to_claim_p99_ms: Option<u64>,
    pub change_to_result_everywhere_p50_ms: Option<u64>,
    pub change_to_result_everywhere_p99_ms: Option<u64>,
    pub msgs_per_node_per_sec: f64,
    pub bytes_per_node_per_sec: f64,
    pub max_hops: u32,
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    /// After each partition heal, and each scheduled outage's end.
    pub convergence_after_heal_ms: Vec<Option<u64>>,
    /// Distinct (job, attempt) whose lease some node saw run out.
    pub lease_expiries: u64,
    /// Distinct (job, attempt) claimed by two nodes.
    pub claim_conflicts: u64,
    pub forged_sent: u64,
    pub records_rejected: u64,
    /// Lies told by `--byzantine` nodes.
    pub byzantine_acts: u64,
    pub failovers: Vec<FailoverFigure>,
    pub live_nodes_at_end: usize,
    pub records_per_node_at_end: u64,
    /// Reconciliation and record-transfer traffic, per node per second.
    pub sync_bytes_per_node_per_sec: f64,
    /// Log-chunk traffic (replication and on-demand fetches), per node per second.
    pub log_bytes_per_node_per_sec: f64,
    /// Share of the cluster's executor slots busy with builds between the
    /// first build's start and the last build's end.
    pub slot_utilisation: f64,
}

/// A crashed claimant's job: when the crash happened and when another
/// node's result for it was stored by the first node.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigure {
    pub job: String,
    pub crashed_ms: u64,
    pub rebuilt_by_other: bool,
    pub crash_to_reclaim_ms: Option<u64>,
}

/// A record stored somewhere: what it is and when each node first stored it.
struct RecordTrack {
    born: u64,
    is_change: bool,
    /// The job of a result record.
    job: Option<Hash32>,
    /// By node; `u64::MAX` for never.
    arrivals: Vec<u64>,
}

/// What the nodes reported while the run went on, for the figures.
#[derive(Default)]
pub(super) struct Observed {
    records: HashMap<Hash32, RecordTrack>,
    conflicts_seen: BTreeSet<(Hash32, u32)>,
    expiries_seen: BTreeSet<(Hash32, u32)>,
    records_rejected: u64,
    byzantine_acts: u64,
}

/// How fast records spread to the nodes that are up at the end.
#[derive(Default)]
struct Spread {
    changes: usize,
    reach50: Vec<u64>,
    reach99: Vec<u64>,
    reach_all: Vec<u64>,
    /// Per result record, from its job's commit until every live node stored it.
    everywhere: Vec<u64>,
}

impl Observed {
    /// Node `i` stored a record that some node stored before; false if none did.
    pub(super) fn record_arrived(&mut self, id: Hash32, i: usize, now: u64) -> bool {
        let Some(t) = self.records.get_mut(&id) else { return false };
        if t.arrivals[i] == u64::MAX {
            t.arrivals[i] = now;
        }
        true
    }

    pub(super) fn record_first_seen(&mut self, id: Hash32, i: usize, now: u64, nodes: usize, bytes: &[u8]) {
        let (is_change, job) = match record::decode_stored(bytes).map(|r| r.body) {
            Ok(peerbot_protocol::Body::Change(_)) => (true, None),
            Ok(peerbot_protocol::Body::Result(r)) => (false, Some(r.job)),
            Ok(_) | Err(_) => (false, None),
        };
        let mut arrivals = vec![u64::MAX; nodes];
        arrivals[i] = now;
        self.records.insert(id, RecordTrack { born: now, is_change, job, arrivals });
    }

    /// The nodes that stored a record, with when they first did.
    pub(super) fn stored_by(&self, id: &Hash32) -> Vec<(usize, u64)> {
        self.records
            .get(id)
            .map(|t| t.arrivals.iter().enumerate().filter(|(_, at)| **at != u64::MAX).map(|(i, at)| (i, *at)).collect())
            .unwrap_or_default()
    }

    /// Counted at every node that rejects one.
    pub(super) fn byzantine_acted(&mut self) {
        self.byzantine_acts += 1;
    }

    pub(super) fn rejected(&mut self) {
        self.records_rejected += 1;
    }

    pub(super) fn claim_conflict(&mut self, job: Hash32, attempt: u32) {
        self.conflicts_seen.insert((job, attempt));
    }

    pub(super) fn lease_expired(&mut self, job: Hash32, attempt: u32) {
        self.expiries_seen.insert((job, attempt));
    }

    fn spread(&self, live: &[usize], jobs: &BTreeMap<Hash32, JobInfo>) -> Spread {
        let mut s = Spread::default();
        for t in self.records.values() {
            let mut at: Vec<u64> = live.iter().map(|&i| t.arrivals[i]).collect();
            at.sort_unstable();
            // Time from birth until a share of the live nodes stored it.
            let pick = |q: f64| -> Option<u64> {
                let k = ((at.len() as f64 * q).ceil() as usize).clamp(1, at.len());
                at.get(k - 1).filter(|x| **x != u64::MAX).map(|x| x - t.born)
            };
            if t.is_change {
                s.changes += 1;
                s.reach50.extend(pick(0.5));
                s.reach99.extend(pick(0.99));
                s.reach_all.extend(pick(1.0));
            } else if let Some(job) = t.job {
                if let (Some(all), Some(j)) = (pick(1.0), jobs.get(&job)) {
                    s.everywhere.push(t.born + all - j.born);
                }
            }
        }
        s
    }
}

impl Sim {
    /// The figures, once the final checks have passed.
    pub(super) fn figures(&self, wall: Instant, live: &[usize], left: JobsLeft) -> Report {
        let faults = self.faults.counts();
        let mut r = Report {
            seed: self.cfg.seed,
            nodes: self.cfg.nodes,
            simulated_ms: self.now,
            events: self.events,
            wall_ms: wall.elapsed().as_millis() as u64,
            trace_hash: self.trace.hash_hex(),
            builds_started: self.workload.builds_started(),
            builds_cancelled: self.workload.builds_cancelled(),
            builds_given_up: self.workload.builds_given_up(),
            max_hops: self.network.max_hops(),
            crashes: faults.crashes,
            restarts: faults.restarts,
            partitions: faults.partitions,
            convergence_after_heal_ms: self.faults.convergence_after_heal_ms(),
            lease_expiries: self.observed.expiries_seen.len() as u64,
            claim_conflicts: self.observed.conflicts_seen.len() as u64,
            forged_sent: faults.forged_sent,
            records_rejected: self.observed.records_rejected,
            byzantine_acts: self.observed.byzantine_acts,
            failovers: self.failover_figures(live),
            live_nodes_at_end: live.len(),
            records_per_node_at_end: self.first_store(live).map(|s| s.record_count()).unwrap_or(0),
            slot_utilisation: self.workload.slot_utilisation(self.nodes.len() as f64 * self.cfg.executors as f64),
            ..Default::default()
        };
        self.job_figures(&mut r, left);
        self.timing_figures(&mut r, live);
        self.traffic_figures(&mut r);
        r
    }

    /// The store of the first live node; all live nodes hold the same records.
    fn first_store(&self, live: &[usize]) -> Option<&peerbot_protocol::store::MemStore> {
        live.first().and_then(|&i| self.nodes[i].core.as_ref()).map(|c| c.store())
    }

    fn job_figures(&self, r: &mut Report, left: JobsLeft) {
        let jobs = self.workload.jobs();
        r.jobs = jobs.len();
        r.jobs_unbuildable = left.unbuildable;
        r.jobs_lost_with_change = left.lost;
        r.jobs_withdrawn = left.withdrawn;
        let unbuildable = left.unbuildable + left.lost;
        let mut built = [0usize; 3];
        for j in jobs.values() {
            built[j.results.len().min(2)] += 1;
        }
        r.jobs_built_0 = built[0].saturating_sub(unbuildable + left.withdrawn);
        r.jobs_built_1 = built[1];
        r.jobs_built_2_plus = built[2];
        let buildable = (r.jobs - unbuildable).max(1);
        r.duplicate_rate = built[2] as f64 / buildable as f64;
    }

    fn timing_figures(&self, r: &mut Report, live: &[usize]) {
        let jobs = self.workload.jobs();
        let mut s = self.observed.spread(live, jobs);
        let claim: Vec<u64> = jobs.values().filter_map(|j| j.first_claim.map(|c| c - j.born)).collect();
        r.changes = s.changes;
        r.change_reach_p50_ms = percentile(&mut s.reach50, 0.5);
        r.change_reach_p99_ms = percentile(&mut s.reach99, 0.99);
        r.change_reach_all_ms = s.reach_all.iter().max().copied();
        r.change_to_claim_p50_ms = percentile(&mut claim.clone(), 0.5);
        r.change_to_claim_p99_ms = percentile(&mut claim.clone(), 0.99);
        r.change_to_result_everywhere_p50_ms = percentile(&mut s.everywhere.clone(), 0.5);
        r.change_to_result_everywhere_p99_ms = percentile(&mut s.everywhere, 0.99);
    }

    /// Per node per second of the whole run, settling included.
    fn traffic_figures(&self, r: &mut Report) {
        let t = self.network.traffic();
        let secs = (self.now as f64 / 1000.0).max(1.0);
        let n = self.nodes.len().max(1) as f64;
        r.msgs_per_node_per_sec = t.msgs as f64 / n / secs;
        r.bytes_per_node_per_sec = t.bytes as f64 / n / secs;
        r.sync_bytes_per_node_per_sec = t.sync_bytes as f64 / n / secs;
        r.log_bytes_per_node_per_sec = t.log_bytes as f64 / n / secs;
    }

    fn failover_figures(&self, live: &[usize]) -> Vec<FailoverFigure> {
        let store = self.first_store(live);
        let mut figures = Vec::new();
        for c in self.faults.crashed_claims() {
            let results = self.workload.jobs().get(&c.job).map(|j| j.results.clone()).unwrap_or_default();
            let crashed_peer = self.nodes[c.node].peer;
            let by_other = results.iter().any(|rid| {
                self.observed.records.contains_key(rid)
                    && store
                        .and_then(|s| s.get_record(rid))
                        .and_then(|b| record::decode_stored(&b).ok())
                        .is_some_and(|rec| rec.signer != crashed_peer)
            });
            figures.push(FailoverFigure {
                job: c.job.to_hex(),
                crashed_ms: c.at,
                rebuilt_by_other: by_other,
                crash_to_reclaim_ms: c.reclaimed_at.map(|t| t - c.at),
            });
        }
        figures
    }
}

/// The smallest value with at least a share `q` of `v` at or below it.
fn percentile(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    Some(v[k - 1])
}

impl Report {
    pub fn to_text(&self) -> String {
        let ms = |x: Option<u64>| x.map(|v| format!("{:.2}s", v as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        let mut s = String::new();
        s.push_str(&format!(
            "seed {} · {} nodes · {:.1} simulated minutes\n",
            self.seed,
            self.nodes,
            self.simulated_ms as f64 / 60_000.0
        ));
        s.push_str(&format!(
            "changes {} · jobs {} (unbuildable, left pending: {}; lost with their change: {}; withdrawn unbuilt: {})\n",
            self.changes, self.jobs, self.jobs_unbuildable, self.jobs_lost_with_change, self.jobs_withdrawn
        ));
        s.push_str(&format!(
            "jobs built 0×: {}  1×: {}  2+×: {}  (duplicate rate {:.3}%) · builds started {} · cancelled {} · given up {}\n",
            self.jobs_built_0,
            self.jobs_built_1,
            self.jobs_built_2_plus,
            self.duplicate_rate * 100.0,
            self.builds_started,
            self.builds_cancelled,
            self.builds_given_up
        ));
        s.push_str(&format!(
            "change reaches 50% of nodes: {}  99%: {}  100%: {} (worst) · max hops {}\n",
            ms(self.change_reach_p50_ms),
            ms(self.change_reach_p99_ms),
            ms(self.change_reach_all_ms),
            self.max_hops
        ));
        s.push_str(&format!(
            "change → claim p50 {} p99 {} · change → result everywhere p50 {} p99 {}\n",
            ms(self.change_to_claim_p50_ms),
            ms(self.change_to_claim_p99_ms),
            ms(self.change_to_result_everywhere_p50_ms),
            ms(self.change_to_result_everywhere_p99_ms)
        ));
        s.push_str(&format!(
            "traffic per node: {:.1} msgs/s, {:.0} bytes/s (of which sync {:.0} B/s, logs {:.0} B/s)\n",
            self.msgs_per_node_per_sec,
            self.bytes_per_node_per_sec,
            self.sync_bytes_per_node_per_sec,
            self.log_bytes_per_node_per_sec
        ));
        s.push_str(&format!(
            "faults: {} crashes, {} restarts, {} partitions, {} lease expiries, {} claim conflicts, {} forged records sent, {} rejected\n",
            self.crashes, self.restarts, self.partitions, self.lease_expiries, self.claim_conflicts, self.forged_sent, self.records_rejected
        ));
        if self.byzantine_acts > 0 {
            s.push_str(&format!("hostile insiders told {} lies\n", self.byzantine_acts));
        }
        if !self.convergence_after_heal_ms.is_empty() {
            let c: Vec<String> = self.convergence_after_heal_ms.iter().map(|x| ms(*x)).collect();
            s.push_str(&format!("convergence after each heal: {}\n", c.join(", ")));
        }
        for f in &self.failovers {
            s.push_str(&format!(
                "claimant crash at {}: rebuilt by another node: {} · crash → new claim {}\n",
                ms(Some(f.crashed_ms)),
                f.rebuilt_by_other,
                ms(f.crash_to_reclaim_ms)
            ));
        }
        s.push_str(&format!(
            "slot utilisation {:.1}% · live nodes at end {} · records per node {} · {} events in {:.2}s wall · trace {}\n",
            self.slot_utilisation * 100.0,
            self.live_nodes_at_end, self.records_per_node_at_end, self.events, self.wall_ms as f64 / 1000.0, &self.trace_hash[..16]
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&mut [], 0.5), None);
        assert_eq!(percentile(&mut [30, 10, 20], 0.5), Some(20));
        assert_eq!(percentile(&mut [30, 10, 20], 0.99), Some(30));
        assert_eq!(percentile(&mut [5], 0.01), Some(5));
    }
}
