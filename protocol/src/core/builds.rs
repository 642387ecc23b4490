//! This node's own builds: which it is running and until when it waits for
//! their end, the claims it gave up at a restart, and turning a finished
//! build into a signed result's body.

use std::collections::{BTreeMap, VecDeque};

use super::io::BuildOutcome;
use super::jobs::JobView;
use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::logparse::{count_tests, find_warnings, MAX_WARNING_LINES};
use crate::recipe::{StepSpec, StepVerdict};
use crate::record::{self, BlobRef, BuildResult, Status, StepResult};
use crate::store::{Store, StoreError};
use crate::testreport::parse as parse_report;
use crate::Millis;

const OWN_CLAIMS_KEY: &str = "own_claims";
/// Releases after a restart go out with this many heartbeats: right after a
/// start there may be nobody to hear the first.
const RELEASE_REPEATS: u8 = 3;
/// Builds given up are remembered this many at a time, so that their late
/// ends are ignored.
const GIVEN_UP_KEPT: usize = 256;

/// A build of this node's in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningBuild {
    pub attempt: u32,
    /// The step running now, as the executor last reported.
    pub step: Option<String>,
    pub started_ms: Millis,
    /// No end reported by then: the build is given up (see `give_up_deadline`).
    pub give_up_at: Millis,
    /// A notice being sent: it takes none of the executors.
    pub notice: bool,
}

/// This node's builds in progress, by job.
pub type Running = BTreeMap<Hash32, RunningBuild>;

/// When to stop waiting for a build's end: every step may run to its
/// timeout, and the executor may take `grace_ms` more (fetch, checkout,
/// log collection, a slow machine). A build past this is lost, not slow.
pub fn give_up_deadline(started_ms: Millis, steps: &[StepSpec], grace_ms: u64) -> Millis {
    let steps_ms = steps.iter().fold(0u64, |sum, s| sum.saturating_add(s.timeout_secs.saturating_mul(1000)));
    started_ms.saturating_add(steps_ms).saturating_add(grace_ms)
}

#[derive(Clone)]
pub struct OwnBuilds {
    pub(crate) running: Running,
    /// When this node last gave up a build whose end never came. It waits
    /// a little before it claims again, so that a job its executor lost
    /// goes to another node if one is free.
    pub(crate) gave_up_ms: Millis,
    /// Claims this node gave up at restart, repeated with early heartbeats.
    pending_releases: Vec<(Hash32, u32)>,
    release_repeats: u8,
    /// Builds given up, newest last, at most `GIVEN_UP_KEPT`.
    given_up: VecDeque<(Hash32, u32)>,
}

impl OwnBuilds {
    pub fn new() -> Self {
        OwnBuilds {
            running: BTreeMap::new(),
            gave_up_ms: 0,
            pending_releases: vec![],
            release_repeats: RELEASE_REPEATS,
            given_up: VecDeque::new(),
        }
    }

    pub fn is_running(&self, job: &Hash32) -> bool {
        self.running.contains_key(job)
    }
    pub fn attempt_of(&self, job: &Hash32) -> Option<u32> {
        self.running.get(job).map(|b| b.attempt)
    }
    pub fn free_slots(&self, executors: u32) -> u32 {
        executors.saturating_sub(self.builds_running())
    }
    /// Builds running, notices left out.
    pub fn builds_running(&self) -> u32 {
        self.running.values().filter(|b| !b.notice).count() as u32
    }
    /// Notices this node may start sending now.
    pub fn free_notice_slots(&self) -> u32 {
        let sending = self.running.values().filter(|b| b.notice).count() as u32;
        crate::notify::NOTICE_SLOTS.saturating_sub(sending)
    }

    pub fn start(&mut self, job: Hash32, attempt: u32, started_ms: Millis, give_up_at: Millis, notice: bool) {
        self.running.insert(job, RunningBuild { attempt, step: None, started_ms, give_up_at, notice });
    }
    /// Stops tracking a build; its attempt if it was running.
    pub fn stop(&mut self, job: &Hash32) -> Option<u32> {
        self.running.remove(job).map(|b| b.attempt)
    }
    pub fn set_step(&mut self, job: &Hash32, attempt: u32, step: &str) {
        if let Some(b) = self.running.get_mut(job) {
            if b.attempt == attempt {
                b.step = Some(step.to_string());
            }
        }
    }

    /// The earliest moment a running build is due to be given up.
    pub fn next_give_up(&self) -> Option<Millis> {
        self.running.values().map(|b| b.give_up_at).min()
    }
    /// Stops tracking the builds whose end is overdue at `now`, and
    /// remembers them so that a late end is ignored; returns them.
    pub fn give_up_overdue(&mut self, now: Millis) -> Vec<(Hash32, RunningBuild)> {
        let overdue: Vec<Hash32> = self.running.iter().filter(|(_, b)| now >= b.give_up_at).map(|(j, _)| *j).collect();
        let mut out = Vec::with_capacity(overdue.len());
        for job in overdue {
            let Some(b) = self.running.remove(&job) else { continue };
            if self.given_up.len() >= GIVEN_UP_KEPT {
                self.given_up.pop_front();
            }
            self.given_up.push_back((job, b.attempt));
            out.push((job, b));
        }
        crate::invariant!(self.next_give_up().is_none_or(|t| t > now), "no overdue build is left running");
        out
    }
    /// This attempt was given up: its end, if it ever comes, is ignored.
    pub fn was_given_up(&self, job: &Hash32, attempt: u32) -> bool {
        self.given_up.contains(&(*job, attempt))
    }

    /// Claims held when the node last stopped; their builds died with it.
    pub fn load_claims<S: Store>(store: &S) -> Vec<(Hash32, u32)> {
        store.get_state(OWN_CLAIMS_KEY).and_then(|b| decode::<Vec<(Hash32, u32)>>(&b, 1 << 20).ok()).unwrap_or_default()
    }
    pub fn save_claims<S: Store>(&self, store: &mut S) -> Result<(), StoreError> {
        let v: Vec<(Hash32, u32)> = self.running.iter().map(|(j, b)| (*j, b.attempt)).collect();
        store.put_state(OWN_CLAIMS_KEY, &encode(&v))
    }

    pub fn release_after_restart(&mut self, job: Hash32, attempt: u32) {
        self.pending_releases.push((job, attempt));
    }
    /// The releases to repeat with this heartbeat, if any are left.
    pub fn releases_to_repeat(&mut self) -> Vec<(Hash32, u32)> {
        if self.pending_releases.is_empty() || self.release_repeats == 0 {
            return vec![];
        }
        self.release_repeats -= 1;
        let out = self.pending_releases.clone();
        if self.release_repeats == 0 {
            self.pending_releases.clear();
        }
        out
    }
}

impl Default for OwnBuilds {
    fn default() -> Self {
        Self::new()
    }
}

/// A finished build as a result body. Its step logs are stored by the
/// caller under the hashes the body names.
pub fn assemble_result(
    o: &BuildOutcome,
    job: &JobView,
    labels: &[String],
    author: String,
    title: String,
    node_name: &str,
) -> BuildResult {
    let mut steps = Vec::with_capacity(o.steps.len());
    let mut failed_step = None;
    let mut warned = false;
    let mut kept_lines = 0;
    let mut warnings = 0;
    let mut tests: Option<record::TestCounts> = None;
    for s in &o.steps {
        let text = String::from_utf8_lossy(&s.log);
        let spec = job.spec.steps.iter().find(|x| x.name == s.name);
        let keep = MAX_WARNING_LINES.saturating_sub(kept_lines);
        let (w, warning_lines) = find_warnings(&text, spec.and_then(|x| x.warnings.as_ref()), keep);
        kept_lines += warning_lines.len();
        // A step's own report, when its recipe names one, over log summaries.
        let report =
            spec.and_then(|x| x.tests.as_ref()).map(|t| (t.format, parse_report(t.format, &s.log, &s.report_files)));
        let t = match &report {
            Some((_, r)) => Some(r.counts.clone()),
            None => count_tests(&text),
        };
        warnings += w;
        if let Some(t) = &t {
            let acc = tests.get_or_insert_with(Default::default);
            acc.passed += t.passed;
            acc.failed += t.failed;
            acc.skipped += t.skipped;
        }
        let hash = Hash32::of(&s.log);
        match crate::recipe::step_verdict(spec, s.exit_code, s.timed_out, w) {
            StepVerdict::Failure if failed_step.is_none() => failed_step = Some(s.name.clone()),
            StepVerdict::Warnings => warned = true,
            _ => {}
        }
        steps.push(StepResult {
            name: s.name.clone(),
            command: s.command.clone(),
            exit_code: s.exit_code,
            duration_ms: s.duration_ms,
            timed_out: s.timed_out,
            log: Some(BlobRef { hash, size: s.log.len() as u64, truncated: s.truncated }),
            warnings: w,
            tests: t,
            warning_lines,
            test_format: report.as_ref().map(|(f, _)| f.as_str().to_string()),
            failed_tests: report.map(|(_, r)| r.failures).unwrap_or_default(),
        });
    }
    let status = status_of(o, failed_step.is_some(), warned || warnings > 0);
    let result = BuildResult {
        job: o.job,
        repo: job.repo.clone(),
        branch: job.branch.clone(),
        commit: job.commit.clone(),
        builder: job.spec.builder.clone(),
        attempt: o.attempt,
        labels: labels.to_vec(),
        started_ms: o.started_ms,
        ended_ms: o.ended_ms.max(o.started_ms),
        status,
        steps,
        metrics: metrics_of(o, warnings, tests.as_ref(), &job.spec.steps),
        failed_step: if status == Status::Failure { failed_step } else { None },
        error: o.error.clone(),
        author,
        title,
        node_name: node_name.to_string(),
    };
    result
}

fn status_of(o: &BuildOutcome, failed: bool, warned: bool) -> Status {
    if o.error.is_some() {
        Status::Exception
    } else if o.cancelled {
        Status::Cancelled
    } else if failed {
        Status::Failure
    } else if warned {
        Status::Warnings
    } else {
        Status::Success
    }
}

/// The build's own figures, each step's duration (`step_secs_NAME`), and
/// what the steps measured under names their recipe declares.
fn metrics_of(
    o: &BuildOutcome,
    warnings: u64,
    tests: Option<&record::TestCounts>,
    spec: &[StepSpec],
) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    for s in &o.steps {
        let declared = spec.iter().find(|x| x.name == s.name).map(|x| &x.metrics);
        for (k, v) in &s.metrics {
            if declared.is_some_and(|d| d.contains_key(k)) && v.is_finite() {
                metrics.insert(k.clone(), *v);
            }
        }
        metrics.insert(format!("step_secs_{}", s.name), s.duration_ms as f64 / 1000.0);
    }
    metrics.insert("build_secs".to_string(), o.ended_ms.saturating_sub(o.started_ms) as f64 / 1000.0);
    metrics.insert("warnings".to_string(), warnings as f64);
    if let Some(t) = tests {
        metrics.insert("tests_passed".to_string(), t.passed as f64);
        metrics.insert("tests_failed".to_string(), t.failed as f64);
        metrics.insert("tests_skipped".to_string(), t.skipped as f64);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::io::StepOutcome;
    use crate::record::Change;

    #[test]
    fn a_steps_report_gives_its_counts_and_failing_tests_over_log_summaries() {
        let recipe = "[[builder]]\nname = 'b'\n[[builder.step]]\nname = 'py'\nrun = 'pytest'\n\
                      tests = { format = 'junit', path = 'r.xml' }\n[[builder.step]]\nname = 'plain'\nrun = 'x'\n";
        let spec = crate::recipe::parse_recipe("r", "c", recipe).unwrap().remove(0);
        let change = Change { repo: "r".into(), branch: "main".into(), commit: "c".into(), ..Default::default() };
        let job = super::super::jobs::new_job(0, &change, Hash32::of(b"ch"), &spec);
        let xml = br#"<testsuite><testcase classname="t" name="ok"/><testcase classname="t" name="bad"><failure message="no"/></testcase></testsuite>"#;
        let o = BuildOutcome {
            steps: vec![
                StepOutcome {
                    name: "py".into(),
                    exit_code: Some(1),
                    // The report wins over a summary line in the log.
                    log: b"9 passed, 9 failed\n".to_vec(),
                    report_files: vec![xml.to_vec()],
                    ..Default::default()
                },
                StepOutcome {
                    name: "plain".into(),
                    exit_code: Some(0),
                    log: b"3 passed\n".to_vec(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = assemble_result(&o, &job, &[], String::new(), String::new(), "n");
        let py = &r.steps[0];
        assert_eq!(py.tests, Some(record::TestCounts { passed: 1, failed: 1, skipped: 0 }));
        assert_eq!(py.failed_tests, [record::FailedTest { name: "t.bad".into(), message: "no".into() }]);
        assert_eq!(py.test_format.as_deref(), Some("junit"));
        let plain = &r.steps[1];
        assert_eq!((plain.failed_tests.len(), plain.test_format.as_deref()), (0, None));
        assert_eq!(r.metrics["tests_passed"], 4.0);
        assert_eq!(r.metrics["tests_failed"], 1.0);
    }
}
