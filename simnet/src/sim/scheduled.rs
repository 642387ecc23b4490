//! Builders' `schedule` and `depends_on` in the simulator. At each build
//! start: a dependent build starts only once its dependency's success is
//! stored on its claimant, and a scheduled build no earlier than its firing
//! by the claimant's clock. At the end: every firing since the cluster knew
//! a head was built; fault-free, each by exactly one build.

use peerbot_protocol::core::JobState;
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::schedule::{next_firing, scheduled_job_id};
use peerbot_protocol::record::Status;

use super::{Sim, Violation};

/// Firings this soon after a repository's first commit, or before the end
/// of the run's faults, are not required: the head may not have spread.
const MARGIN_MS: u64 = 60_000;

impl Sim {
    pub(super) fn check_build_order(&mut self, i: usize, job: Hash32) {
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        if let Some(dep) = self.workload.jobs().get(&job).and_then(|j| j.dependency) {
            let passed =
                core.result_statuses(&dep).iter().any(|(_, s)| matches!(s, Status::Success | Status::Warnings));
            if !passed {
                self.violation_now(
                    "a dependent build starts only once its dependency's success is stored on its claimant",
                    format!("node {i} started job {} before a success of {}", job.to_hex(), dep.to_hex()),
                    Some(job),
                    Some(i),
                );
                return;
            }
        }
        if let Some(at) = core.job(&job).and_then(|j| j.firing_ms) {
            let local = self.local_now(i);
            if local < at {
                self.violation_now(
                    "a scheduled build starts no earlier than its firing",
                    format!("node {i} started job {} at {local}, its firing is at {at}", job.to_hex()),
                    Some(job),
                    Some(i),
                );
            }
            self.workload.firings.entry(job).or_insert((at, 0)).1 += 1;
        }
    }

    /// Every firing of the schedule from a minute after a repository's first
    /// commit to a minute before the end is built (a result on every live
    /// node); fault-free, by exactly one build with one result.
    pub(super) fn check_firings(&self, live: &[usize]) -> Result<(), Box<Violation>> {
        let Some(expr) = &self.cfg.schedule else { return Ok(()) };
        let Some(core) = live.first().and_then(|&i| self.nodes[i].core.as_ref()) else { return Ok(()) };
        let end = self.cfg.duration_ms.saturating_sub(MARGIN_MS);
        let mut checked = 0;
        for (repo, first) in &self.workload.first_commit {
            let mut t = first + MARGIN_MS;
            while let Some(at) = next_firing(expr, t).filter(|at| *at <= end) {
                t = at;
                checked += 1;
                let id = scheduled_job_id(repo, "main", "sched", at);
                let results = core.results_of(&id).len();
                let starts = self.workload.firings.get(&id).map_or(0, |f| f.1);
                if core.job_state(&id) != JobState::Done || results == 0 {
                    return Err(self.violation(
                        "every firing of a schedule is built",
                        format!(
                            "the firing at {at} ms of {repo} (job {}) has no result; {starts} builds started",
                            id.to_hex()
                        ),
                        Some(id),
                        None,
                    ));
                }
                if self.cfg.fault_free() && (results != 1 || starts != 1) {
                    return Err(self.violation(
                        "fault-free, each firing is built by exactly one build",
                        format!("the firing at {at} ms (job {}): {starts} builds, {results} results", id.to_hex()),
                        Some(id),
                        None,
                    ));
                }
            }
        }
        // A run whose firings all fell outside the window checked nothing.
        if checked == 0 && !self.workload.first_commit.is_empty() {
            return Err(self.violation("a run with a schedule checks some firing", String::new(), None, None));
        }
        Ok(())
    }
}
