//! What must hold in every run: checked at each build start and commit while
//! running, and over the live nodes at the end. A violation stops the run
//! with the seed to replay and the latest trace lines of the job or node.

use std::collections::HashMap;

use peerbot_protocol::core::JobState;
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::labels::satisfies;
use peerbot_protocol::record;
use peerbot_protocol::store::Store;
use serde::Serialize;

use super::events::Ev;
use super::faults::QUIET_CHECK_MS;
use super::workload::JobInfo;
use super::Sim;

/// Jobs rightly left without a result at the end.
#[derive(Clone, Copy, Default)]
pub(super) struct JobsLeft {
    /// No live node has the labels.
    pub(super) unbuildable: usize,
    /// Their change was lost with every store that held it.
    pub(super) lost: usize,
    /// Superseded or cancelled before anyone built them.
    pub(super) withdrawn: usize,
}

/// Eligible nodes whose view of an unbuilt job a violation shows.
const VIEWS_SHOWN: usize = 8;

/// Nodes whose record count a convergence violation shows.
const COUNTS_SHOWN: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub invariant: String,
    pub detail: String,
    pub recent_events: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invariant violated: {} (seed {}, at {} ms)", self.invariant, self.seed, self.at_ms)?;
        writeln!(f, "{}", self.detail)?;
        writeln!(f, "last events involved:")?;
        for e in &self.recent_events {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay with --seed {}", self.seed)
    }
}

impl Sim {
    pub(super) fn violation(
        &self,
        invariant: &str,
        detail: String,
        job: Option<Hash32>,
        node: Option<usize>,
    ) -> Box<Violation> {
        Box::new(Violation {
            seed: self.cfg.seed,
            at_ms: self.now,
            invariant: invariant.to_string(),
            detail,
            recent_events: self.trace.recent(job, node),
        })
    }

    /// Stops the run after the current event; the first violation wins.
    pub(super) fn violation_now(&mut self, invariant: &str, detail: String, job: Option<Hash32>, node: Option<usize>) {
        if self.pending_violation.is_none() {
            self.pending_violation = Some(self.violation(invariant, detail, job, node));
        }
    }

    /// At each `StartBuild`, before the build is counted.
    pub(super) fn check_build_start(&mut self, i: usize, job: Hash32) {
        if !satisfies(&self.nodes[i].labels, &self.workload.requires(&job)) {
            self.violation_now(
                "a job was claimed by a node that lacks a required label",
                format!("node {i} with {:?} started job {}", self.nodes[i].labels, job.to_hex()),
                Some(job),
                Some(i),
            );
        }
        let running = self.nodes[i].core.as_ref().map(|c| c.running().len()).unwrap_or(0);
        if running > self.cfg.executors as usize {
            self.violation_now(
                "no node runs more builds than its executors",
                format!("node {i} runs {running} builds with {} executors", self.cfg.executors),
                Some(job),
                Some(i),
            );
        }
    }

    /// After each turn of a node's core: the builds its core counts against
    /// its slots are the builds its executor runs (or is stopping), and
    /// every build the executor runs is counted. A core that counts a build
    /// nobody runs holds a slot for ever; one that forgets a running build
    /// runs more builds than its executors.
    pub(super) fn check_builds_agree(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let counted: Vec<(Hash32, u32)> = core.running().iter().map(|(j, b)| (*j, b.attempt)).collect();
        let phantom = counted.iter().find(|b| !self.workload.holds(i, b));
        let forgotten = self.workload.running_on(i).find(|b| !counted.contains(b));
        let (what, (job, attempt)) = match (phantom, forgotten) {
            (Some(b), _) => ("counts a build its executor does not run", *b),
            (None, Some(b)) => ("forgot a build its executor runs", *b),
            (None, None) => return,
        };
        self.violation_now(
            "a node's core and its executor agree on the builds running",
            format!("node {i}'s core {what}: job {} attempt {attempt}", job.to_hex()),
            Some(job),
            Some(i),
        );
    }

    /// Every live node holds the same record set (count and fingerprint).
    pub(super) fn converged(&self) -> bool {
        let mut first = None;
        for n in &self.nodes {
            if let Some(core) = &n.core {
                let s = core.store().summary(&peerbot_protocol::sync::SyncKey::MIN, None);
                let s = (s.0, s.1.finish(s.0));
                match &first {
                    None => first = Some(s),
                    Some(f) if *f != s => return false,
                    _ => {}
                }
            }
        }
        true
    }

    /// Nothing left to do: every node is up, no build runs, no partition is
    /// on, every job a live node can build has a result, and all agree.
    fn is_quiet(&self) -> bool {
        if self.network.partitioned() || self.workload.any_running() {
            return false;
        }
        let live = self.live_nodes();
        if live.len() < self.nodes.len() {
            return false;
        }
        let open = self
            .workload
            .jobs()
            .values()
            .any(|j| j.results.is_empty() && self.buildable(j, &live) && !self.change_lost(j));
        !open && self.converged()
    }

    pub(super) fn on_quiet_check(&mut self) {
        if self.is_quiet() {
            self.quiet = true;
        } else {
            self.queue.push(self.now + QUIET_CHECK_MS, Ev::QuietCheck);
        }
    }

    fn buildable(&self, job: &JobInfo, live: &[usize]) -> bool {
        live.iter().any(|&i| satisfies(&self.nodes[i].labels, &job.requires))
    }

    /// The job's change was destroyed with every copy: each node that ever
    /// stored it came back with an empty store afterwards, so no node can
    /// know the job. (A real node's watcher announces again only the branch
    /// head it finds after such a loss.)
    pub(super) fn change_lost(&self, job: &JobInfo) -> bool {
        let Some(change) = job.change else { return false };
        let stored = self.observed.stored_by(&change);
        !stored.is_empty() && stored.iter().all(|&(i, at)| self.nodes[i].wiped_at.iter().any(|&w| w > at))
    }

    /// The checks at the end, over the live nodes; returns how many jobs
    /// were rightly left unbuilt.
    pub(super) fn check_final(&self, live: &[usize]) -> Result<JobsLeft, Box<Violation>> {
        self.check_signatures(live)?;
        self.check_cancels(live)?;
        let left = self.check_jobs(live)?;
        self.check_firings(live)?;
        self.check_same_records(live)?;
        Ok(left)
    }

    /// Nothing badly signed is stored anywhere. Verified afresh, not through
    /// the shared cache the cores used.
    fn check_signatures(&self, live: &[usize]) -> Result<(), Box<Violation>> {
        let mut checked: HashMap<Hash32, bool> = HashMap::new();
        for &i in live {
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
                return Err(self.violation(
                    "no record with a bad signature is stored",
                    format!("node {i} stores record {id} whose signature does not verify"),
                    None,
                    Some(i),
                ));
            }
        }
        Ok(())
    }

    /// Every buildable job was built, exactly once if no fault was
    /// configured; no unbuildable one was.
    fn check_jobs(&self, live: &[usize]) -> Result<JobsLeft, Box<Violation>> {
        let fault_free = self.cfg.fault_free();
        let mut unbuildable = 0;
        let mut lost = 0;
        let mut withdrawn = 0;
        for (id, j) in self.workload.jobs() {
            if j.results.is_empty() && self.change_lost(j) {
                lost += 1;
                continue;
            }
            if self.buildable(j, live) {
                if self.check_buildable_job(id, j, live, fault_free)? && j.results.is_empty() {
                    withdrawn += 1;
                }
                continue;
            }
            unbuildable += 1;
            if !j.results.is_empty() {
                return Err(self.violation(
                    "a job no node can build was not built",
                    format!("job {id} requiring {:?} has results", j.requires),
                    Some(*id),
                    None,
                ));
            }
        }
        Ok(JobsLeft { unbuildable, lost, withdrawn })
    }

    fn check_buildable_job(
        &self,
        id: &Hash32,
        j: &JobInfo,
        live: &[usize],
        fault_free: bool,
    ) -> Result<bool, Box<Violation>> {
        // The first live node's view decides whether the job was withdrawn.
        let withdrawn = live
            .first()
            .and_then(|&i| self.nodes[i].core.as_ref())
            .is_some_and(|c| matches!(c.job_state(id), JobState::Superseded | JobState::Cancelled));
        if withdrawn {
            return Ok(true);
        }
        if j.results.is_empty() {
            return Err(self.violation(
                "every job some live node can build is built once the network is quiet",
                format!(
                    "job {id} requiring {:?} has no result{}; {}; eligible nodes see:\n  {}",
                    j.requires,
                    if self.quiet { "" } else { " (the run ended without going quiet)" },
                    self.change_whereabouts(j, live),
                    self.unbuilt_job_views(id, j, live).join("\n  ")
                ),
                Some(*id),
                None,
            ));
        }
        if fault_free && j.results.len() != 1 {
            return Err(self.violation(
                "fault-free, every job is built exactly once",
                format!("job {id} has {} results", j.results.len()),
                Some(*id),
                None,
            ));
        }
        Ok(false)
    }

    /// Who announced a job's change, which nodes stored it and when, and
    /// which live nodes hold it now.
    fn change_whereabouts(&self, j: &JobInfo, live: &[usize]) -> String {
        let Some(change) = j.change else {
            return format!("node {} announced its commit at {} ms and it was not new there", j.announcer, j.born);
        };
        let stored: Vec<String> =
            self.observed.stored_by(&change).iter().map(|(i, at)| format!("{i}@{at}ms")).collect();
        let holding: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.store().has_record(&change)))
            .collect();
        format!(
            "node {} announced its change {} at {} ms; stored by [{}]; live nodes holding it now: {:?}",
            j.announcer,
            change.short(),
            j.born,
            stored.join(", "),
            holding
        )
    }

    /// What some eligible nodes know of a job: its attempt, the claim they
    /// see as (claimant node, attempt, lease end), and the builds their
    /// cores count as running, with when each started and whether the
    /// executor still runs it.
    fn unbuilt_job_views(&self, id: &Hash32, j: &JobInfo, live: &[usize]) -> Vec<String> {
        let mut views = Vec::new();
        for &i in live.iter().filter(|&&i| satisfies(&self.nodes[i].labels, &j.requires)).take(VIEWS_SHOWN) {
            let core = self.nodes[i].core.as_ref().expect("live");
            let view = core.job(id);
            let view = view.as_ref();
            let claim = view
                .and_then(|v| v.claim.as_ref())
                .map(|c| (self.by_peer.get(&c.by).copied(), c.attempt, c.lease_until));
            let running: Vec<String> =
                core.running().iter().map(|(rj, b)| self.workload.describe_build(i, (*rj, b.attempt))).collect();
            views.push(format!(
                "node {i} {:?}: knows job {}, attempt {:?}, claim {:?}, running [{}] of {}",
                self.nodes[i].labels,
                view.is_some(),
                view.map(|v| v.attempt),
                claim,
                running.join(", "),
                core.config().executors,
            ));
        }
        views
    }

    /// Once quiet, every live node holds the same records.
    fn check_same_records(&self, live: &[usize]) -> Result<(), Box<Violation>> {
        if self.converged() {
            return Ok(());
        }
        let counts: Vec<(usize, u64)> = live
            .iter()
            .map(|&i| (i, self.nodes[i].core.as_ref().map(|c| c.store().record_count()).unwrap_or(0)))
            .collect();
        let min = counts.iter().min_by_key(|c| c.1).map(|c| c.0);
        Err(self.violation(
            "every live node holds the same set of records once the network is quiet",
            format!("record counts differ: {:?}", &counts[..counts.len().min(COUNTS_SHOWN)]),
            None,
            min,
        ))
    }
}
