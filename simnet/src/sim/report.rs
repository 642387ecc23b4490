//! The figures of a run.

use super::*;

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
    pub jobs_built_0: usize,
    pub jobs_built_1: usize,
    pub jobs_built_2_plus: usize,
    pub builds_started: u64,
    pub builds_cancelled: u64,
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

pub(super) struct RecordTrack {
    pub(super) born: u64,
    pub(super) is_change: bool,
    pub(super) job: Option<Hash32>,
    pub(super) arrivals: Vec<u64>,
}

impl Sim {
    pub(super) fn finish(mut self, wall: Instant) -> Result<Report, Box<Violation>> {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        // 1. Nothing badly signed is stored anywhere.
        let mut checked: HashMap<Hash32, bool> = HashMap::new();
        for &i in &live {
            let mut bad = None;
            let core = self.nodes[i].core.as_ref().expect("live");
            core.store().for_each_record(&mut |b| {
                let id = Hash32::of(b);
                let ok = *checked.entry(id).or_insert_with(|| record::verify(b).is_ok());
                if !ok && bad.is_none() {
                    bad = Some(id);
                }
            });
            if let Some(id) = bad {
                return Err(Box::new(self.violation(
                    "no record with a bad signature is stored",
                    format!("node {i} stores record {id} whose signature does not verify"),
                    None,
                    Some(i),
                )));
            }
        }
        // 2. Every buildable job was built; fault-free, exactly once.
        let fault_free = self.cfg.fault_free();
        let mut unbuildable = 0;
        for (id, j) in &self.jobs {
            let buildable = live.iter().any(|&i| satisfies(&self.nodes[i].labels, &j.requires));
            if !buildable {
                unbuildable += 1;
                if !j.results.is_empty() {
                    return Err(Box::new(self.violation(
                        "a job no node can build was not built",
                        format!("job {id} requiring {:?} has results", j.requires),
                        Some(*id),
                        None,
                    )));
                }
                continue;
            }
            let withdrawn = live.first().and_then(|&i| self.nodes[i].core.as_ref()).is_some_and(|c| {
                matches!(
                    c.job_state(id),
                    peerbot_protocol::core::JobState::Superseded | peerbot_protocol::core::JobState::Cancelled
                )
            });
            if withdrawn {
                continue;
            }
            if j.results.is_empty() {
                let mut views = Vec::new();
                for &i in live.iter().filter(|&&i| satisfies(&self.nodes[i].labels, &j.requires)).take(8) {
                    let core = self.nodes[i].core.as_ref().expect("live");
                    let view = core.jobs().get(id);
                    views.push(format!(
                        "node {i} {:?}: knows job {}, attempt {:?}, claim {:?}, running {:?} of {}",
                        self.nodes[i].labels,
                        view.is_some(),
                        view.map(|v| v.attempt),
                        view.and_then(|v| v.claim.as_ref()).map(|c| (
                            self.by_peer.get(&c.by).copied(),
                            c.attempt,
                            c.lease_until
                        )),
                        core.running()
                            .iter()
                            .map(|(j, a)| (
                                j.short(),
                                a.0,
                                self.jobs.get(j).map(|x| (x.born, x.results.len())),
                                self.nodes[i].builds.keys().map(|k| k.0.short()).collect::<Vec<_>>()
                            ))
                            .collect::<Vec<_>>(),
                        core.config().executors,
                    ));
                }
                return Err(Box::new(self.violation(
                    "every job some live node can build is built once the network is quiet",
                    format!(
                        "job {id} requiring {:?} has no result; eligible nodes see:\n  {}",
                        j.requires,
                        views.join("\n  ")
                    ),
                    Some(*id),
                    None,
                )));
            }
            if fault_free && j.results.len() != 1 {
                return Err(Box::new(self.violation(
                    "fault-free, every job is built exactly once",
                    format!("job {id} has {} results", j.results.len()),
                    Some(*id),
                    None,
                )));
            }
        }
        // 3. Once quiet, every live node holds the same records.
        if !self.converged() {
            let counts: Vec<(usize, u64)> = live
                .iter()
                .map(|&i| (i, self.nodes[i].core.as_ref().map(|c| c.store().record_count()).unwrap_or(0)))
                .collect();
            let min = counts.iter().min_by_key(|c| c.1).map(|c| c.0);
            return Err(Box::new(self.violation(
                "every live node holds the same set of records once the network is quiet",
                format!("record counts differ: {:?}", &counts[..counts.len().min(20)]),
                None,
                min,
            )));
        }
        // Figures.
        let mut r = std::mem::take(&mut self.report);
        r.simulated_ms = self.now;
        r.events = self.events;
        r.wall_ms = wall.elapsed().as_millis() as u64;
        r.trace_hash = self.trace.finalize().to_hex().to_string();
        r.jobs = self.jobs.len();
        r.jobs_unbuildable = unbuildable;
        let mut built = [0usize; 3];
        for j in self.jobs.values() {
            built[j.results.len().min(2)] += 1;
        }
        r.jobs_built_0 = built[0] - unbuildable.min(built[0]);
        r.jobs_built_1 = built[1];
        r.jobs_built_2_plus = built[2];
        let buildable = (r.jobs - unbuildable).max(1);
        r.duplicate_rate = built[2] as f64 / buildable as f64;
        let mut reach50 = vec![];
        let mut reach99 = vec![];
        let mut reach_all = vec![];
        let mut everywhere = vec![];
        for t in self.records.values() {
            let mut at: Vec<u64> = live.iter().map(|&i| t.arrivals[i]).collect();
            at.sort_unstable();
            let pick = |q: f64| -> Option<u64> {
                let k = ((at.len() as f64 * q).ceil() as usize).clamp(1, at.len());
                at.get(k - 1).filter(|x| **x != u64::MAX).map(|x| x - t.born)
            };
            if t.is_change {
                r.changes += 1;
                reach50.extend(pick(0.5));
                reach99.extend(pick(0.99));
                reach_all.extend(pick(1.0));
            } else if let Some(job) = t.job {
                if let (Some(all), Some(j)) = (pick(1.0), self.jobs.get(&job)) {
                    everywhere.push(t.born + all - j.born);
                }
            }
        }
        let claim: Vec<u64> = self.jobs.values().filter_map(|j| j.first_claim.map(|c| c - j.born)).collect();
        r.change_reach_p50_ms = percentile(&mut reach50, 0.5);
        r.change_reach_p99_ms = percentile(&mut reach99, 0.99);
        r.change_reach_all_ms = reach_all.iter().max().copied();
        r.change_to_claim_p50_ms = percentile(&mut claim.clone(), 0.5);
        r.change_to_claim_p99_ms = percentile(&mut claim.clone(), 0.99);
        r.change_to_result_everywhere_p50_ms = percentile(&mut everywhere.clone(), 0.5);
        r.change_to_result_everywhere_p99_ms = percentile(&mut everywhere, 0.99);
        let secs = (self.now as f64 / 1000.0).max(1.0);
        let n = self.nodes.len().max(1) as f64;
        r.msgs_per_node_per_sec = self.nodes.iter().map(|x| x.msgs_sent).sum::<u64>() as f64 / n / secs;
        r.bytes_per_node_per_sec = self.nodes.iter().map(|x| x.bytes_sent).sum::<u64>() as f64 / n / secs;
        r.max_hops = self.max_hops;
        r.sync_bytes_per_node_per_sec = self.sync_bytes as f64 / n / secs;
        r.log_bytes_per_node_per_sec = self.log_bytes as f64 / n / secs;
        r.convergence_after_heal_ms = self.heals.iter().map(|h| h.1).collect();
        for (k, (job, node, at)) in self.crashed_claims.iter().enumerate() {
            let other = self.jobs.get(job).map(|j| j.results.clone()).unwrap_or_default();
            let crashed_peer = self.nodes[*node].peer;
            let by_other = other.iter().any(|rid| {
                self.records.get(rid).is_some() && {
                    let any =
                        live.first().and_then(|&i| self.nodes[i].core.as_ref()).and_then(|c| c.store().get_record(rid));
                    any.and_then(|b| record::decode_stored(&b).ok()).is_some_and(|rec| rec.signer != crashed_peer)
                }
            });
            let reclaim = self.reclaims.get(&k).map(|t| t - at);
            r.failovers.push(FailoverFigure {
                job: job.to_hex(),
                crashed_ms: *at,
                rebuilt_by_other: by_other,
                crash_to_reclaim_ms: reclaim,
            });
        }
        if let Some(first) = self.first_build_start {
            let span = self.last_build_end.saturating_sub(first).max(1) as f64;
            let slots = (self.nodes.len() as f64) * self.cfg.executors as f64;
            r.slot_utilisation = self.busy_slot_ms as f64 / (span * slots);
        }
        r.live_nodes_at_end = live.len();
        r.records_per_node_at_end =
            live.first().and_then(|&i| self.nodes[i].core.as_ref()).map(|c| c.store().record_count()).unwrap_or(0);
        Ok(r)
    }
}

pub(super) fn percentile(v: &mut [u64], q: f64) -> Option<u64> {
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
            "changes {} · jobs {} (unbuildable, left pending: {})\n",
            self.changes, self.jobs, self.jobs_unbuildable
        ));
        s.push_str(&format!(
            "jobs built 0×: {}  1×: {}  2+×: {}  (duplicate rate {:.3}%) · builds started {} · cancelled {}\n",
            self.jobs_built_0,
            self.jobs_built_1,
            self.jobs_built_2_plus,
            self.duplicate_rate * 100.0,
            self.builds_started,
            self.builds_cancelled
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
