//! The workload: commits arrive as a Poisson process, each announced by a
//! random live node with a recipe of `--builders` builders; a build that a
//! core starts runs for a drawn time and ends in a simulated outcome.

use std::collections::{BTreeMap, BTreeSet};

use peerbot_protocol::core::{Announced, BuildOutcome, CommitInfo, Input, StepOutcome};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::job_id;
use peerbot_protocol::Millis;
use rand::Rng;

use super::events::{exp_delay, uniform_ms, Ev};
use super::faults::slowed;
use super::Sim;
use crate::SimConfig;

/// How long a cancelled build takes to stop.
const CANCEL_MS: u64 = 10;

/// A job of an announced commit, as the simulator saw it come and go.
pub(super) struct JobInfo {
    pub(super) born: u64,
    /// The node that announced its change, and the change's record id.
    pub(super) announcer: usize,
    pub(super) change: Option<Hash32>,
    pub(super) requires: Vec<String>,
    pub(super) first_claim: Option<u64>,
    /// Result records published for it.
    pub(super) results: Vec<Hash32>,
    /// The job of the same commit it depends on (`depends_on`).
    pub(super) dependency: Option<Hash32>,
}

/// How busy the executor slots were. A build counts from its start until it
/// finishes or is cancelled; one cut short by a crash does not count.
#[derive(Default)]
struct SlotUse {
    starts: BTreeMap<(usize, Hash32, u32), u64>,
    first_start: Option<u64>,
    last_end: u64,
    busy_ms: u64,
}

pub(super) struct Workload {
    recipe: String,
    commits: u64,
    jobs: BTreeMap<Hash32, JobInfo>,
    /// Builds running on each node, as (job, attempt).
    running: Vec<BTreeSet<(Hash32, u32)>>,
    /// Builds told to stop, until their cancelled outcome is reported.
    stopping: Vec<BTreeSet<(Hash32, u32)>>,
    /// Running builds whose end the executor will never report.
    hung: Vec<BTreeSet<(Hash32, u32)>>,
    slots: SlotUse,
    builds_started: u64,
    builds_cancelled: u64,
    builds_given_up: u64,
    /// Scheduled jobs: their firing time and how many builds started.
    pub(super) firings: BTreeMap<Hash32, (Millis, u32)>,
    /// When each repository's first commit was announced.
    pub(super) first_commit: BTreeMap<String, u64>,
}

/// What a `CancelBuild` did to a build in the executor model.
#[derive(PartialEq)]
enum Cancelled {
    NotRunning,
    /// It ends as cancelled shortly.
    Stopping,
    /// A hung build ignores the cancel too: the node abandons it.
    Abandoned,
}

impl Workload {
    pub(super) fn new(cfg: &SimConfig) -> Workload {
        Workload {
            recipe: build_recipe(cfg),
            commits: 0,
            jobs: BTreeMap::new(),
            running: vec![BTreeSet::new(); cfg.nodes],
            stopping: vec![BTreeSet::new(); cfg.nodes],
            hung: vec![BTreeSet::new(); cfg.nodes],
            slots: SlotUse::default(),
            builds_started: 0,
            builds_cancelled: 0,
            builds_given_up: 0,
            firings: BTreeMap::new(),
            first_commit: BTreeMap::new(),
        }
    }

    pub(super) fn jobs(&self) -> &BTreeMap<Hash32, JobInfo> {
        &self.jobs
    }

    /// The labels a job requires; none for a job the simulator did not make.
    pub(super) fn requires(&self, job: &Hash32) -> Vec<String> {
        self.jobs.get(job).map(|j| j.requires.clone()).unwrap_or_default()
    }

    pub(super) fn claimed(&mut self, job: Hash32, now: u64) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.first_claim.get_or_insert(now);
        }
    }

    pub(super) fn published(&mut self, job: Hash32, record: Hash32) {
        if let Some(j) = self.jobs.get_mut(&job) {
            j.results.push(record);
        }
    }

    fn add_jobs(&mut self, cfg: &SimConfig, info: &CommitInfo, announcer: usize, now: u64) -> Vec<Hash32> {
        let mut ids = Vec::new();
        for b in 0..cfg.builders + cfg.unbuildable_builders {
            let id = job_id(&info.repo, &info.commit, &format!("b{b}"));
            let job = JobInfo {
                born: now,
                announcer,
                change: None,
                requires: cfg.builder_requires(b),
                first_claim: None,
                results: vec![],
                dependency: (cfg.depends_on && b == 1).then(|| job_id(&info.repo, &info.commit, "b0")),
            };
            self.jobs.insert(id, job);
            ids.push(id);
        }
        ids
    }

    fn build_started(&mut self, node: usize, job: Hash32, attempt: u32, now: u64) {
        self.builds_started += 1;
        self.running[node].insert((job, attempt));
        self.slots.starts.insert((node, job, attempt), now);
        self.slots.first_start.get_or_insert(now);
    }

    /// The build is told to stop.
    fn build_cancelled(&mut self, node: usize, job: Hash32, attempt: u32) -> Cancelled {
        if !self.running[node].remove(&(job, attempt)) {
            return Cancelled::NotRunning;
        }
        self.builds_cancelled += 1;
        if self.hung[node].remove(&(job, attempt)) {
            self.slots.starts.remove(&(node, job, attempt));
            return Cancelled::Abandoned;
        }
        self.stopping[node].insert((job, attempt));
        Cancelled::Stopping
    }

    /// Frees the build's slot; false if it was no longer running (or, for a
    /// cancelled outcome, no longer stopping).
    fn build_ended(&mut self, node: usize, job: Hash32, attempt: u32, now: u64, cancelled: bool) -> bool {
        let was_running = if cancelled {
            self.stopping[node].remove(&(job, attempt))
        } else {
            self.running[node].remove(&(job, attempt))
        };
        if was_running {
            if let Some(t) = self.slots.starts.remove(&(node, job, attempt)) {
                self.slots.busy_ms += now - t;
                self.slots.last_end = now;
            }
        }
        was_running
    }

    /// A crash ends the node's builds without an outcome.
    pub(super) fn node_crashed(&mut self, node: usize) {
        self.running[node].clear();
        self.stopping[node].clear();
        self.hung[node].clear();
        self.slots.starts.retain(|(n, _, _), _| *n != node);
    }

    pub(super) fn any_running(&self) -> bool {
        self.running.iter().chain(&self.stopping).any(|r| !r.is_empty())
    }

    /// A build a core counts as running, as the executor sees it: job,
    /// attempt, when it started, and whether it is running or stopping.
    pub(super) fn describe_build(&self, node: usize, build: (Hash32, u32)) -> String {
        let state = if self.running[node].contains(&build) {
            "running"
        } else if self.stopping[node].contains(&build) {
            "stopping"
        } else {
            "not run by the executor"
        };
        let since =
            self.slots.starts.get(&(node, build.0, build.1)).map(|t| format!(" since t={t}ms")).unwrap_or_default();
        format!("{} attempt {}{since}, {state}", build.0.short(), build.1)
    }

    /// Whether a build is running, or stopping, on the node.
    pub(super) fn holds(&self, node: usize, build: &(Hash32, u32)) -> bool {
        self.running[node].contains(build) || self.stopping[node].contains(build)
    }

    pub(super) fn running_on(&self, node: usize) -> impl Iterator<Item = &(Hash32, u32)> {
        self.running[node].iter()
    }

    pub(super) fn builds_started(&self) -> u64 {
        self.builds_started
    }

    pub(super) fn builds_cancelled(&self) -> u64 {
        self.builds_cancelled
    }

    pub(super) fn given_up(&mut self) {
        self.builds_given_up += 1;
    }

    pub(super) fn builds_given_up(&self) -> u64 {
        self.builds_given_up
    }

    /// Busy share of `slots` executor slots between the first build's start
    /// and the last build's end.
    pub(super) fn slot_utilisation(&self, slots: f64) -> f64 {
        let Some(first) = self.slots.first_start else { return 0.0 };
        let span = self.slots.last_end.saturating_sub(first).max(1) as f64;
        self.slots.busy_ms as f64 / (span * slots)
    }
}

/// Builder `i` requires the labels `SimConfig::builder_requires` gives it
/// and has one step, `make`.
fn build_recipe(cfg: &SimConfig) -> String {
    let mut s = String::new();
    for i in 0..cfg.builders + cfg.unbuildable_builders {
        let req: Vec<String> = cfg.builder_requires(i).iter().map(|l| format!("{l:?}")).collect();
        let depends = if cfg.depends_on && i == 1 { "depends_on = [\"b0\"]\n" } else { "" };
        s.push_str(&format!(
            "[[builder]]\nname = \"b{i}\"\nrequires = [{}]\n{depends}[[builder.step]]\nname = \"build\"\nrun = \"make\"\n",
            req.join(", ")
        ));
        if let Some(ms) = cfg.step_timeout_ms {
            s.push_str(&format!("timeout_secs = {}\n", (ms / 1000).max(1)));
        }
    }
    if let Some(expr) = &cfg.schedule {
        s.push_str(&format!(
            "[[builder]]\nname = \"sched\"\nschedule = {expr:?}\n[[builder.step]]\nname = \"build\"\nrun = \"make\"\n"
        ));
    }
    s
}

/// A one-step build that exited 0, or 2 if it failed, or was cancelled.
/// The simulated duration is not recorded: the step takes 1 ms.
pub(crate) fn simulated_outcome(job: Hash32, attempt: u32, now: Millis, cancelled: bool, failed: bool) -> BuildOutcome {
    BuildOutcome {
        job,
        attempt,
        started_ms: now.saturating_sub(1),
        ended_ms: now,
        steps: vec![StepOutcome {
            name: "build".into(),
            command: "make".into(),
            exit_code: if cancelled { None } else { Some(if failed { 2 } else { 0 }) },
            duration_ms: 1,
            timed_out: false,
            log: format!("simulated build of {} attempt {attempt}\n", job.short()).into_bytes(),
            truncated: false,
            metrics: Default::default(),
            report_files: vec![],
        }],
        error: None,
        cancelled,
    }
}

impl Sim {
    /// Commits start once the nodes have heard each other.
    pub(super) fn schedule_first_commit(&mut self) {
        let first = self.cfg.heartbeat_ms * 3 + exp_delay(&mut self.rng, self.cfg.commits_per_min / 60_000.0);
        if self.cfg.commits_per_min > 0.0 {
            self.queue.push(first, Ev::Commit);
        }
    }

    pub(super) fn on_commit(&mut self) {
        if self.faults.over() {
            return;
        }
        self.commit();
        let t = exp_delay(&mut self.rng, self.cfg.commits_per_min / 60_000.0);
        self.queue.push(self.now + t, Ev::Commit);
    }

    /// A random live node announces a new commit, as its watcher would.
    fn commit(&mut self) {
        self.workload.commits += 1;
        let alive = self.live_nodes();
        let Some(&announcer) = alive.get(self.rng.gen_range(0..alive.len().max(1))) else { return };
        let info = self.next_commit_info();
        let jobs = self.workload.add_jobs(&self.cfg, &info, announcer, self.now);
        self.workload.first_commit.entry(info.repo.clone()).or_insert(self.now);
        let now = self.local_now(announcer);
        if let Some(core) = self.nodes[announcer].core.as_mut() {
            match core.announce(now, info) {
                Ok(Announced::New(id)) => {
                    for j in &jobs {
                        if let Some(info) = self.workload.jobs.get_mut(j) {
                            info.change = Some(id);
                        }
                    }
                    self.note(announcer, None, "announce", id.prefix_u64())
                }
                Ok(Announced::Known(_)) => {}
                Ok(Announced::Disputed { .. }) => {
                    self.violation_now(
                        "one recipe read twice disagreed with itself",
                        String::new(),
                        None,
                        Some(announcer),
                    );
                }
                Err(e) => {
                    self.violation_now("a valid commit could not be announced", e, None, Some(announcer));
                }
            }
        }
        self.drain(announcer);
    }

    fn next_commit_info(&mut self) -> CommitInfo {
        let n = self.workload.commits;
        let repo = format!("https://git.example.org/repo{}.git", self.rng.gen_range(0..self.cfg.repos.max(1)));
        let commit = Hash32::of_fields("simnet.commit", &[&self.cfg.seed.to_le_bytes(), &n.to_le_bytes()]).to_hex()
            [..40]
            .to_string();
        CommitInfo {
            repo,
            branch: "main".into(),
            commit,
            parents: vec![],
            author: "Sim Ulated <sim@example.org>".into(),
            committer: "Sim Ulated <sim@example.org>".into(),
            commit_time: (self.now / 1000) as i64,
            title: format!("commit {n}"),
            files: vec!["src/lib.rs".into()],
            recipe: Ok(self.workload.recipe.clone()),
        }
    }

    /// A core's `StartBuild`: the build ends after a drawn time, unless it
    /// hangs (`--hang-rate`; no draw when that is 0).
    pub(super) fn start_build(&mut self, i: usize, job: Hash32, attempt: u32) {
        self.check_build_start(i, job);
        self.check_build_order(i, job);
        self.faults.note_reclaim(job, i, self.now);
        self.note(i, Some(job), "build-start", attempt as u64);
        let d = slowed(uniform_ms(&mut self.rng, self.cfg.build_ms), self.nodes[i].slow, self.cfg.slow_factor);
        self.workload.build_started(i, job, attempt, self.now);
        let hangs = self.cfg.hang_rate > 0.0 && self.rng.gen::<f64>() < self.cfg.hang_rate;
        if hangs {
            self.workload.hung[i].insert((job, attempt));
            self.note(i, Some(job), "build-hangs", attempt as u64);
        } else {
            let incarnation = self.nodes[i].incarnation;
            self.queue.push(self.now + d, Ev::BuildDone { node: i, incarnation, job, attempt, cancelled: false });
        }
        self.maybe_crash_claimant(i, job, self.now + d / 2);
    }

    pub(super) fn cancel_build(&mut self, i: usize, job: Hash32, attempt: u32) {
        let cancelled = self.workload.build_cancelled(i, job, attempt);
        if cancelled != Cancelled::NotRunning {
            self.note(i, Some(job), "build-cancel", attempt as u64);
        }
        if cancelled == Cancelled::Stopping {
            let incarnation = self.nodes[i].incarnation;
            self.queue
                .push(self.now + CANCEL_MS, Ev::BuildDone { node: i, incarnation, job, attempt, cancelled: true });
        }
    }

    pub(super) fn on_build_done(&mut self, node: usize, incarnation: u32, job: Hash32, attempt: u32, cancelled: bool) {
        if self.nodes[node].incarnation != incarnation || !self.alive(node) {
            return;
        }
        if !self.workload.build_ended(node, job, attempt, self.now, cancelled) {
            return;
        }
        let failed = !cancelled && self.rng.gen::<f64>() < self.cfg.build_failure_rate;
        let outcome = simulated_outcome(job, attempt, self.local_now(node), cancelled, failed);
        self.note(node, Some(job), "build-done", attempt as u64);
        self.input(node, Input::BuildFinished(outcome));
    }
}
