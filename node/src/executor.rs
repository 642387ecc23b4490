//! Runs builds as child processes: a checkout of the commit, then each step
//! with `sh -c`, stdout and stderr captured together, with timeouts and
//! cancellation. Reports back to the core; decides nothing.
//!
//! The steps run are those of `.peerbot.toml` in the commit as this node's
//! own mirror holds it, and only when they are the ones announced
//! (`recipe::check_announced`); otherwise nothing runs and the build ends as
//! an exception naming the difference. A repository this node's policy
//! refuses is not fetched at all (the core does not claim such jobs; this is
//! the second line).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use peerbot_protocol::core::{BuildOrder, BuildOutcome, StepOutcome, MAX_LOG_BYTES};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::{check_announced, JobSpec, StepSpec};
use peerbot_protocol::repos::{RepoPolicy, NOT_ALLOWED};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::core_actor::GetBlob;
use crate::sandbox::StepJail;
use crate::{git, now_ms};

#[derive(Message)]
#[rtype(result = "()")]
pub struct StartBuild(pub BuildOrder);

#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelBuild {
    pub job: Hash32,
    pub attempt: u32,
}

/// What the executor tells the core.
#[derive(Message)]
#[rtype(result = "()")]
pub enum BuildReport {
    Progress { job: Hash32, attempt: u32, step: String },
    Finished(BuildOutcome),
}

/// Builds a node may run at once (`--executors`).
pub const MAX_EXECUTORS: u32 = 1024;

/// Messages the executor's mailbox holds before `try_send` to it fails. The
/// core runs at most `--executors` builds, and each build in flight has at
/// most an order, a cancel and the executor's own note that it is done
/// queued at once, so this is never reached.
pub const EXECUTOR_MAILBOX: usize = 4 * MAX_EXECUTORS as usize;

pub struct Executor {
    data_dir: PathBuf,
    jail: Arc<StepJail>,
    report: Recipient<BuildReport>,
    /// Where a try build's patch comes from (the core, which fetches it).
    blobs: Recipient<GetBlob>,
    cancels: HashMap<(Hash32, u32), watch::Sender<bool>>,
    log_limit: u64,
    /// The repositories this node builds (the core's `Config::repos`).
    repos: Arc<RepoPolicy>,
}

impl Executor {
    pub fn new(
        data_dir: PathBuf,
        jail: Arc<StepJail>,
        repos: RepoPolicy,
        report: Recipient<BuildReport>,
        blobs: Recipient<GetBlob>,
    ) -> Self {
        let repos = Arc::new(repos);
        Executor { data_dir, jail, report, blobs, cancels: HashMap::new(), log_limit: MAX_LOG_BYTES, repos }
    }
}

impl Actor for Executor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(EXECUTOR_MAILBOX);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Done(Hash32, u32);

impl Handler<StartBuild> for Executor {
    type Result = ();
    fn handle(&mut self, msg: StartBuild, ctx: &mut Context<Self>) {
        let order = msg.0;
        let (tx, rx) = watch::channel(false);
        self.cancels.insert((order.job, order.attempt), tx);
        let data_dir = self.data_dir.clone();
        let jail = self.jail.clone();
        let report = self.report.clone();
        let me = ctx.address();
        let limit = self.log_limit;
        let repos = self.repos.clone();
        let blobs = self.blobs.clone();
        actix::spawn(async move {
            let key = (order.job, order.attempt);
            let outcome = run_build(&data_dir, &jail, &repos, &blobs, order, rx, &report, limit).await;
            // One outcome and one note per build, and the core runs at most
            // `--executors` builds: these are bounded without a capacity, and
            // neither may be lost.
            if !SHUTTING_DOWN.load(std::sync::atomic::Ordering::SeqCst) {
                report.do_send(BuildReport::Finished(outcome));
            }
            me.do_send(Done(key.0, key.1));
        });
    }
}

impl Handler<CancelBuild> for Executor {
    type Result = ();
    fn handle(&mut self, msg: CancelBuild, _: &mut Context<Self>) {
        if let Some(tx) = self.cancels.get(&(msg.job, msg.attempt)) {
            info!(job = %msg.job.short(), attempt = msg.attempt, "cancelling build");
            let _ = tx.send(true);
        }
    }
}

impl Handler<Done> for Executor {
    type Result = ();
    fn handle(&mut self, msg: Done, _: &mut Context<Self>) {
        self.cancels.remove(&(msg.0, msg.1));
    }
}

/// What an order must pass before anything is fetched: this node's policy
/// allows its repository, and what reaches git or the steps' environment
/// is well formed (a repository, a hex commit id, a branch name).
fn check_order(order: &BuildOrder, repos: &RepoPolicy) -> anyhow::Result<()> {
    if !repos.allows(&order.repo) {
        anyhow::bail!("{NOT_ALLOWED}: {:?}", order.repo);
    }
    git::check_repo(&order.repo)?;
    git::check_commit(&order.commit)?;
    git::check_branch(upstream_branch(&order.branch))?;
    Ok(())
}

/// A try build's branch names the branch it was tried against.
fn upstream_branch(branch: &str) -> &str {
    branch.strip_prefix(peerbot_protocol::record::TRY_BRANCH_PREFIX).unwrap_or(branch)
}

/// The patch of a try build, fetched from the node that signed it if
/// need be, and checked against its signed hash.
async fn try_patch(order: &BuildOrder, blobs: &Recipient<GetBlob>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some((p, from)) = order.patch else {
        if peerbot_protocol::record::is_try_branch(&order.branch) {
            anyhow::bail!("a try build whose patch is not known here");
        }
        return Ok(None);
    };
    let fetch = blobs.send(GetBlob { hash: p.hash, hint: Some(from) });
    let bytes = match tokio::time::timeout(PATCH_FETCH_LIMIT, fetch).await {
        Ok(Ok(Ok(b))) => b,
        Ok(Ok(Err(e))) => anyhow::bail!("cannot fetch the try patch {}: {e}", p.hash.short()),
        Ok(Err(e)) => anyhow::bail!("cannot fetch the try patch {}: {e}", p.hash.short()),
        Err(_) => anyhow::bail!(
            "the try patch {} could not be fetched within {} s",
            p.hash.short(),
            PATCH_FETCH_LIMIT.as_secs()
        ),
    };
    crate::trybuild::checked_patch(bytes, &p).map(Some)
}

const PATCH_FETCH_LIMIT: Duration = Duration::from_secs(120);

/// The job as the commit's own `.peerbot.toml` in `mirror` defines it (of
/// the patched tree, for a try build), if it is what was announced; else
/// why not ("recipe mismatch: ...").
async fn own_recipe(mirror: &Path, order: &BuildOrder, patch: Option<&[u8]>) -> anyhow::Result<JobSpec> {
    let text = match patch {
        None => git::recipe_at(mirror, &order.commit).await,
        Some(p) => crate::trybuild::patched_recipe(mirror, &order.commit, p).await,
    };
    let text = text.as_deref().map_err(String::as_str);
    Ok(check_announced(&order.announced, &order.repo, &order.commit, text)?)
}

async fn run_build(
    data_dir: &Path,
    jail: &StepJail,
    repos: &RepoPolicy,
    blobs: &Recipient<GetBlob>,
    order: BuildOrder,
    mut cancel: watch::Receiver<bool>,
    report: &Recipient<BuildReport>,
    log_limit: u64,
) -> BuildOutcome {
    let started = now_ms();
    let mut outcome =
        BuildOutcome { job: order.job, attempt: order.attempt, started_ms: started, ..Default::default() };
    let name = format!("{}-{}", order.job.short(), order.attempt);
    let ws = jail.work_root().join(&name);
    let home = jail.work_root().join(format!("{name}.home"));
    let prepared = async {
        check_order(&order, repos)?;
        let patch = try_patch(&order, blobs).await?;
        let (ws, order, patch) = (&ws, &order, patch.as_deref());
        let (mirror, spec) = git::with_commit(data_dir, &order.repo, &order.commit, |mirror| async move {
            let (checked_out, spec) =
                tokio::join!(git::checkout(&mirror, ws, &order.commit), own_recipe(&mirror, order, patch));
            checked_out?;
            spec
        })
        .await?;
        // Not inside the read above: a patch that does not apply is no
        // reason to fetch the repository again.
        if let Some(p) = patch {
            crate::trybuild::apply(ws, p).await?;
        }
        // The paths the checkouts borrow objects from, as the jail binds them.
        let mut mirrors = vec![tokio::fs::canonicalize(&mirror).await?];
        if spec.submodules {
            let allowed = |url: &str| repos.allows(url);
            mirrors.extend(git::checkout_submodules(data_dir, ws, &order.repo, &allowed).await?);
        }
        let _ = tokio::fs::remove_dir_all(&home).await;
        tokio::fs::create_dir_all(&home).await?;
        anyhow::Ok((mirrors, spec))
    }
    .await;
    let (mirrors, spec) = match prepared {
        Ok(m) => m,
        Err(e) => {
            warn!(job = %order.job.short(), "cannot prepare the build: {e:#}");
            let _ = tokio::fs::remove_dir_all(&ws).await;
            outcome.error = Some(format!("{e:#}"));
            outcome.ended_ms = now_ms();
            return outcome;
        }
    };
    info!(job = %order.job.short(), builder = %order.builder, commit = %order.commit, "build started");
    let mut halted = false;
    for (index, step) in spec.steps.iter().enumerate() {
        if !peerbot_protocol::recipe::step_runs(step, halted) {
            continue;
        }
        crate::live::begin(order.job, order.attempt, &step.name, index);
        // Progress may be lost when the core's mailbox is full: the next step or the outcome says more.
        let progress = BuildReport::Progress { job: order.job, attempt: order.attempt, step: step.name.clone() };
        if report.try_send(progress).is_err() {
            debug!(job = %order.job.short(), step = %step.name, "the core is busy; step progress not reported");
        }
        let mut envs: Vec<(&str, String)> = step.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        envs.extend([
            ("PEERBOT_JOB", order.job.to_hex()),
            ("PEERBOT_ATTEMPT", order.attempt.to_string()),
            ("PEERBOT_REPO", order.repo.clone()),
            ("PEERBOT_BRANCH", upstream_branch(&order.branch).to_string()),
            ("PEERBOT_COMMIT", order.commit.clone()),
            ("PEERBOT_BUILDER", order.builder.clone()),
            ("PEERBOT_STEP", step.name.clone()),
        ]);
        if order.patch.is_some() {
            envs.push(("PEERBOT_TRY", "1".into()));
        }
        let so = match step_dir(&ws, step.workdir.as_deref()).await {
            Ok(cwd) => {
                let readable: Vec<&Path> = mirrors.iter().map(PathBuf::as_path).collect();
                let cmd = jail.command(&ws, &cwd, &home, &readable, &step.run, &envs);
                let timeout = Duration::from_secs(step.timeout_secs);
                let so = run_step(cmd, &step.run, timeout, &mut cancel, log_limit, order.job).await;
                let place = Place { jail, ws: &ws, cwd: &cwd, home: &home, mirrors: &readable };
                match so {
                    Ok(mut so) if !*cancel.borrow() => {
                        so.metrics = measure(&place, step, &envs).await;
                        if let Some(p) = step.tests.as_ref().and_then(|t| t.path.clone()) {
                            let (files, note) = read_reports(&ws, &cwd, p).await;
                            so.report_files = files;
                            so.log.extend_from_slice(note.as_bytes());
                        }
                        Ok(so)
                    }
                    other => other,
                }
            }
            Err(e) => Err(e),
        };
        let so = match so {
            Ok(mut so) => {
                so.name = step.name.clone();
                so
            }
            Err(e) => StepOutcome {
                name: step.name.clone(),
                command: step.run.clone(),
                log: format!("peerbot: could not run the step: {e:#}\n").into_bytes(),
                ..Default::default()
            },
        };
        let log = String::from_utf8_lossy(&so.log);
        let (warnings, _) = peerbot_protocol::logparse::find_warnings(&log, step.warnings.as_ref(), 0);
        let verdict = peerbot_protocol::recipe::step_verdict(Some(step), so.exit_code, so.timed_out, warnings);
        outcome.steps.push(so);
        if *cancel.borrow() {
            outcome.cancelled = true;
            break;
        }
        halted |= verdict == peerbot_protocol::recipe::StepVerdict::Failure && step.halt_on_failure;
    }
    crate::live::end(&order.job, order.attempt);
    let _ = tokio::fs::remove_dir_all(&ws).await;
    let _ = tokio::fs::remove_dir_all(&home).await;
    outcome.ended_ms = now_ms();
    outcome
}

/// Where a step ran: what its metrics' commands run in too.
struct Place<'a> {
    jail: &'a StepJail,
    ws: &'a Path,
    cwd: &'a Path,
    home: &'a Path,
    mirrors: &'a [&'a Path],
}

/// How long a metric's command may take.
const METRIC_TIMEOUT: Duration = Duration::from_secs(60);

/// A step's `metrics`, measured after it ran: a file's size (the file must
/// be inside the checkout), or the first word a command prints, read as a
/// number. A metric that cannot be measured is left out of the result.
async fn measure(at: &Place<'_>, step: &StepSpec, envs: &[(&str, String)]) -> std::collections::BTreeMap<String, f64> {
    use peerbot_protocol::recipe::{metric_source, MetricSource};
    let mut out = std::collections::BTreeMap::new();
    for (name, spec) in &step.metrics {
        let value = match metric_source(spec) {
            Ok(MetricSource::FileSize(p)) => file_size(at.ws, p).await,
            Ok(MetricSource::Command(c)) => {
                let mut cmd =
                    tokio::process::Command::from(at.jail.command(at.ws, at.cwd, at.home, at.mirrors, c, envs));
                cmd.stdin(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
                match tokio::time::timeout(METRIC_TIMEOUT, cmd.output()).await {
                    Ok(Ok(o)) if o.status.success() => {
                        String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|w| w.parse::<f64>().ok())
                    }
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                out.insert(name.clone(), v);
            }
            None => debug!(step = %step.name, metric = %name, "metric not measured"),
        }
    }
    out
}

async fn file_size(ws: &Path, p: &str) -> Option<f64> {
    let f = in_checkout(ws, p).await.ok()?;
    let meta = tokio::fs::metadata(&f).await.ok()?;
    meta.is_file().then_some(meta.len() as f64)
}

/// `rel` in the checkout `ws`, symbolic links followed; an error when it
/// does not exist or leads out of the checkout.
async fn in_checkout(ws: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let root = tokio::fs::canonicalize(ws).await?;
    let p = tokio::fs::canonicalize(ws.join(rel)).await.map_err(|e| anyhow::anyhow!("{rel:?}: {e}"))?;
    if !p.starts_with(&root) {
        anyhow::bail!("{rel:?} leads out of the checkout");
    }
    Ok(p)
}

/// The directory a step runs in: the checkout, or its `workdir`, which
/// must exist and, symbolic links followed, stay inside the checkout.
async fn step_dir(ws: &Path, workdir: Option<&str>) -> anyhow::Result<PathBuf> {
    let Some(w) = workdir else { return Ok(ws.to_path_buf()) };
    let dir = in_checkout(ws, w).await.map_err(|e| anyhow::anyhow!("workdir {e:#}"))?;
    if !dir.is_dir() {
        anyhow::bail!("workdir {w:?} is not a directory inside the checkout");
    }
    Ok(dir)
}

/// Paths a report glob may visit before the search gives up: a checkout
/// with millions of files must not hold the build.
const MAX_GLOB_VISITS: usize = 10_000;

/// The files of a step's `tests.path` (a glob under the step's directory),
/// those that stay inside the checkout once links are followed, read up
/// to the report limits; and a line for the log when none was read.
async fn read_reports(ws: &Path, cwd: &Path, pattern: String) -> (Vec<Vec<u8>>, String) {
    use peerbot_protocol::testreport::{check_report_glob, MAX_REPORT_BYTES, MAX_REPORT_FILES};
    let (ws, cwd) = (ws.to_path_buf(), cwd.to_path_buf());
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<u8>>> {
        check_report_glob(&pattern).map_err(anyhow::Error::msg)?;
        let root = std::fs::canonicalize(&ws)?;
        let full = format!("{}/{pattern}", glob::Pattern::escape(&cwd.to_string_lossy()));
        let opts = glob::MatchOptions { require_literal_separator: true, ..Default::default() };
        let mut files = Vec::new();
        let mut budget = MAX_REPORT_BYTES as u64;
        for p in glob::glob_with(&full, opts)?.take(MAX_GLOB_VISITS).flatten() {
            let Ok(real) = std::fs::canonicalize(&p) else { continue };
            if !real.starts_with(&root) || !real.is_file() || files.len() >= MAX_REPORT_FILES || budget == 0 {
                continue;
            }
            let mut bytes = Vec::new();
            std::fs::File::open(&real)?.take(budget).read_to_end(&mut bytes)?;
            budget -= bytes.len() as u64;
            files.push(bytes);
        }
        Ok(files)
    })
    .await;
    match found {
        Ok(Ok(files)) if !files.is_empty() => (files, String::new()),
        Ok(Ok(_)) => (vec![], "\npeerbot: no test report file matched tests.path inside the checkout\n".into()),
        Ok(Err(e)) => (vec![], format!("\npeerbot: the test reports could not be read: {e:#}\n")),
        Err(e) => (vec![], format!("\npeerbot: the test reports could not be read: {e}\n")),
    }
}

/// Process groups of steps running now, so a stopping node takes them along.
fn live_groups() -> &'static std::sync::Mutex<std::collections::HashSet<u32>> {
    static G: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> = std::sync::OnceLock::new();
    G.get_or_init(Default::default)
}

static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Kills every running step; called when the node shuts down. Builds cut
/// short this way publish nothing: the claim is released at the next start.
pub fn kill_all_steps() {
    SHUTTING_DOWN.store(true, std::sync::atomic::Ordering::SeqCst);
    let groups: Vec<u32> = live_groups().lock().map(|g| g.iter().copied().collect()).unwrap_or_default();
    for pid in groups {
        kill_group(pid);
    }
}

fn kill_group(pid: u32) {
    if pid == 0 {
        return;
    }
    // The step ran in its own process group: take all its children too.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

async fn run_step(
    mut std_cmd: std::process::Command,
    run: &str,
    timeout: Duration,
    cancel: &mut watch::Receiver<bool>,
    log_limit: u64,
    job: Hash32,
) -> anyhow::Result<StepOutcome> {
    let (reader, writer) = std::io::pipe()?;
    let writer2 = writer.try_clone()?;
    std_cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    // Drop our copies of the pipe's write end so EOF comes when the step ends.
    drop(cmd);
    let pid = child.id().unwrap_or(0);
    if let Ok(mut g) = live_groups().lock() {
        g.insert(pid);
    }
    let collector = tokio::task::spawn_blocking(move || collect_log(reader, log_limit, job));
    let mut timed_out = false;
    let status = tokio::select! {
        s = child.wait() => Some(s?),
        _ = tokio::time::sleep(timeout) => { timed_out = true; None }
        _ = wait_cancel(cancel) => None,
    };
    let status = match status {
        Some(s) => Some(s),
        None => {
            kill_group(pid);
            Some(child.wait().await?)
        }
    };
    // Background children that keep the pipe open must not hold the build.
    kill_group(pid);
    if let Ok(mut g) = live_groups().lock() {
        g.remove(&pid);
    }
    let (mut log, truncated) = match tokio::time::timeout(Duration::from_secs(10), collector).await {
        Ok(Ok(r)) => r,
        _ => (b"peerbot: the step's output could not be collected\n".to_vec(), false),
    };
    if timed_out {
        log.extend_from_slice(
            format!("\npeerbot: step timed out after {}s and was killed\n", timeout.as_secs()).as_bytes(),
        );
    }
    let exit_code = if timed_out { None } else { status.and_then(|s| s.code()) };
    Ok(StepOutcome {
        name: String::new(),
        command: run.to_string(),
        exit_code,
        duration_ms: start.elapsed().as_millis() as u64,
        timed_out,
        log,
        truncated,
        metrics: Default::default(),
        report_files: Vec::new(),
    })
}

async fn wait_cancel(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads the whole output, keeping at most `limit` bytes: the first half
/// and the last half of what was written (the end usually holds the
/// error), with a line in the middle saying what was left out.
fn collect_log(mut r: std::io::PipeReader, limit: u64, job: Hash32) -> (Vec<u8>, bool) {
    let mut kept = HeadTail::new(limit as usize);
    let mut buf = [0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.push(&buf[..n]);
                crate::live::push(&job, &buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    kept.finish()
}

/// The beginning and the end of a stream, in memory bounded by `limit`.
struct HeadTail {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl HeadTail {
    fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        HeadTail { head: Vec::new(), tail: Default::default(), head_cap, tail_cap: limit - head_cap, total: 0 }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head.len();
        let (first, rest) = bytes.split_at(bytes.len().min(room));
        self.head.extend_from_slice(first);
        bytes = rest;
        if bytes.len() >= self.tail_cap {
            self.tail.clear();
            bytes = &bytes[bytes.len() - self.tail_cap..];
        } else {
            let over = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..over);
        }
        self.tail.extend(bytes);
    }

    fn finish(self) -> (Vec<u8>, bool) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let truncated = self.total > kept;
        let mut out = self.head;
        if truncated {
            let left_out = self.total - kept;
            out.extend_from_slice(
                format!(
                    "\n[peerbot: log cut: the step wrote {} bytes; the {left_out} bytes after the first {} are left out, the last {} follow]\n",
                    self.total,
                    out.len(),
                    self.tail.len()
                )
                .as_bytes(),
            );
        }
        out.extend(self.tail);
        (out, truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(repo: &str, commit: &str, branch: &str) -> BuildOrder {
        let recipe = "[[builder]]\nname = 'b'\n[[builder.step]]\nrun = 'true'\n";
        let spec = peerbot_protocol::recipe::parse_recipe(repo, commit, recipe).unwrap().remove(0);
        BuildOrder {
            job: spec.id,
            attempt: 0,
            repo: repo.into(),
            branch: branch.into(),
            commit: commit.into(),
            builder: "b".into(),
            announced: spec,
            patch: None,
            notice: None,
        }
    }

    #[test]
    fn a_log_over_the_cap_keeps_its_beginning_and_its_end() {
        let mut h = HeadTail::new(10);
        h.push(b"abc");
        assert_eq!(h.finish(), (b"abc".to_vec(), false));
        let mut h = HeadTail::new(10);
        for chunk in [&b"start-"[..], b"middle middle middle ", b"err", b"or: boom"] {
            h.push(chunk);
        }
        let (log, truncated) = h.finish();
        let log = String::from_utf8(log).unwrap();
        assert!(truncated);
        assert!(log.starts_with("start"), "{log}");
        assert!(log.ends_with(" boom"), "{log}");
        assert!(log.contains("the step wrote 38 bytes; the 28 bytes after the first 5 are left out"), "{log}");
        // Exactly at the cap: nothing is cut.
        let mut h = HeadTail::new(4);
        h.push(b"ab");
        h.push(b"cd");
        assert_eq!(h.finish(), (b"abcd".to_vec(), false));
    }

    #[test]
    fn an_order_is_refused_before_any_fetch_unless_policy_and_names_allow_it() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let default = RepoPolicy::default();
        assert!(check_order(&order("https://example.org/x.git", commit, "main"), &default).is_ok());
        let e = check_order(&order("/srv/git/x", commit, "main"), &default).unwrap_err().to_string();
        assert_eq!(e, "repository not allowed by this node's policy: \"/srv/git/x\"");
        let listed = RepoPolicy::new(&["/srv/git/*".to_string()], &[]).unwrap();
        assert!(check_order(&order("/srv/git/x", commit, "main"), &listed).is_ok());
        let e = check_order(&order("https://example.org/x.git", commit, "main"), &listed).unwrap_err().to_string();
        assert!(e.starts_with(NOT_ALLOWED), "{e}");
        let watched = RepoPolicy::new(&[], &["/home/ci/repo".to_string()]).unwrap();
        assert!(check_order(&order("/home/ci/repo", commit, "main"), &watched).is_ok());
        let e = check_order(&order("https://example.org/x.git", "HEAD", "main"), &default).unwrap_err();
        assert!(e.to_string().contains("not a commit id"), "{e}");
        let e = check_order(&order("https://example.org/x.git", commit, "--force"), &default).unwrap_err();
        assert!(e.to_string().contains("not a valid branch name"), "{e}");
    }
}
