//! `.peerbot.toml`: what to build for a commit.
//!
//! ```toml
//! [[builder]]
//! name = "test"
//! requires = ["os=linux"]
//! [[builder.step]]
//! name = "build"
//! run = "make"
//! timeout_secs = 600
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::Hash32;
use crate::labels::{parse_label, MAX_LABELS};
pub use crate::testreport::{TestFormat, TestReportSpec};

pub mod schedule;

pub const RECIPE_FILE: &str = ".peerbot.toml";
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;
pub const MAX_BUILDERS: usize = 64;
pub const MAX_STEPS: usize = 64;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_COMMAND_LEN: usize = 16 * 1024;
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 3600;
pub const MAX_STEP_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
pub const MAX_TREE_STABLE_SECS: u64 = 24 * 3600;

/// Checks a job as a peer announced it against the limits a recipe read
/// here must keep: what a peer sends is held to the same bounds.
pub fn check_spec(j: &JobSpec) -> Result<(), String> {
    if j.builder.is_empty() || j.builder.len() > MAX_NAME_LEN {
        return Err(format!("builder name of 1 to {MAX_NAME_LEN} bytes expected"));
    }
    if j.steps.is_empty() || j.steps.len() > MAX_STEPS {
        return Err(format!("builder {:?}: 1 to {MAX_STEPS} steps expected", j.builder));
    }
    if j.requires.len() > crate::labels::MAX_LABELS
        || j.requires.iter().any(|l| crate::labels::parse_label(l).ok().as_deref() != Some(l.as_str()))
    {
        return Err(format!("builder {:?}: its required labels are not valid labels", j.builder));
    }
    if j.tree_stable_secs > MAX_TREE_STABLE_SECS {
        return Err(format!("builder {:?}: tree_stable_secs over {MAX_TREE_STABLE_SECS}", j.builder));
    }
    for s in &j.steps {
        if s.name.is_empty() || s.name.len() > MAX_NAME_LEN || s.run.len() > MAX_COMMAND_LEN {
            return Err(format!("builder {:?}: a step's name or command is over its limit", j.builder));
        }
        if s.timeout_secs == 0 || s.timeout_secs > MAX_STEP_TIMEOUT_SECS {
            return Err(format!("builder {:?}: a step's timeout is not 1 to {MAX_STEP_TIMEOUT_SECS} s", j.builder));
        }
        check_step_options(&s.env, s.workdir.as_deref())
            .map_err(|e| format!("builder {:?} step {:?}: {e}", j.builder, s.name))?;
        if let Some(w) = &s.warnings {
            w.compile().map_err(|e| format!("builder {:?} step {:?}: {e}", j.builder, s.name))?;
        }
        check_metrics(&s.metrics).map_err(|e| format!("builder {:?} step {:?}: {e}", j.builder, s.name))?;
        if let Some(t) = &s.tests {
            t.check().map_err(|e| format!("builder {:?} step {:?}: {e}", j.builder, s.name))?;
        }
    }
    if let Some(s) = &j.schedule {
        schedule::check(s).map_err(|e| format!("builder {:?}: {e}", j.builder))?;
    }
    if j.depends_on.len() > MAX_BUILDERS || j.depends_on.iter().any(|d| d.is_empty() || d.len() > MAX_NAME_LEN) {
        return Err(format!("builder {:?}: depends_on names over its limits", j.builder));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub run: String,
    pub timeout_secs: u64,
    /// Variables added to the step's environment (never `PEERBOT_*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Where the step runs, relative to the checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// A failure stops the build: later steps run only if `always_run`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub halt_on_failure: bool,
    /// A failure makes the build `warnings`, not `failure`, and halts nothing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub warn_on_failure: bool,
    /// Warnings in the step's log make it a failure.
    #[serde(default, skip_serializing_if = "is_false")]
    pub flunk_on_warnings: bool,
    /// Runs even after an earlier step halted the build (cleanup).
    #[serde(default, skip_serializing_if = "is_false")]
    pub always_run: bool,
    /// Which log lines are warnings; Buildbot's default pattern when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<WarningRule>,
    /// Numbers measured after the step: name to `file_size:PATH` or
    /// `cmd:COMMAND` (which prints a number).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, String>,
    /// Where the step's test report is: its format, and for JUnit the
    /// files (a glob under the step's directory). Log summaries otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestReportSpec>,
}

/// How a step's metric is measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricSource<'a> {
    /// The size in bytes of a file of the checkout.
    FileSize(&'a str),
    /// The first word a shell command prints, as a number.
    Command(&'a str),
}

pub const MAX_STEP_METRICS: usize = 16;
pub const MAX_METRIC_COMMAND_LEN: usize = 1024;
/// Metrics every result has; a recipe cannot name its own after them.
pub const BUILT_IN_METRICS: [&str; 5] = ["build_secs", "warnings", "tests_passed", "tests_failed", "tests_skipped"];

pub fn metric_source(spec: &str) -> Result<MetricSource<'_>, String> {
    if let Some(p) = spec.strip_prefix("file_size:") {
        if !inside_checkout(p) {
            return Err(format!("file_size: {p:?} must be a relative path inside the checkout, without '..'"));
        }
        Ok(MetricSource::FileSize(p))
    } else if let Some(c) = spec.strip_prefix("cmd:") {
        if c.trim().is_empty() || c.len() > MAX_METRIC_COMMAND_LEN {
            return Err(format!("cmd: a command of 1 to {MAX_METRIC_COMMAND_LEN} bytes expected"));
        }
        Ok(MetricSource::Command(c))
    } else {
        Err(format!("{spec:?} is neither \"file_size:PATH\" nor \"cmd:COMMAND\""))
    }
}

fn check_metrics(metrics: &BTreeMap<String, String>) -> Result<(), String> {
    if metrics.len() > MAX_STEP_METRICS {
        return Err(format!("over {MAX_STEP_METRICS} metrics"));
    }
    for (name, spec) in metrics {
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(format!("metric name {name:?} may only use a-z, 0-9 and '_'"));
        }
        if BUILT_IN_METRICS.contains(&name.as_str()) || name.starts_with("step_secs_") {
            return Err(format!("metric {name:?} is one every result has already"));
        }
        metric_source(spec).map_err(|e| format!("metric {name:?}: {e}"))?;
    }
    Ok(())
}

/// `warnings = { pattern = "REGEX", suppress = ["REGEX", ...] }`: a line is
/// a warning when it matches `pattern` (or the default) and no `suppress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarningRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppress: Vec<String>,
}

pub const MAX_PATTERN_LEN: usize = 1024;
pub const MAX_SUPPRESS: usize = 32;
/// Compiled size of one expression: enough for any sane pattern, and a
/// bound on what a recipe can make a node allocate.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

type Compiled = (Option<regex::Regex>, Vec<regex::Regex>);

impl WarningRule {
    pub fn compile(&self) -> Result<Compiled, String> {
        let one = |p: &str| {
            if p.len() > MAX_PATTERN_LEN {
                return Err(format!(
                    "the pattern {:?}… is over {MAX_PATTERN_LEN} bytes",
                    &p[..p.floor_char_boundary(40)]
                ));
            }
            regex::RegexBuilder::new(p)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                // The parser's message spans lines; one line reads everywhere it is shown.
                .map_err(|e| {
                    let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                    format!("the pattern {p:?} is not a regular expression: {why}")
                })
        };
        if self.suppress.len() > MAX_SUPPRESS {
            return Err(format!("warnings.suppress has over {MAX_SUPPRESS} patterns"));
        }
        let pattern = self.pattern.as_deref().map(one).transpose()?;
        let suppress = self.suppress.iter().map(|p| one(p)).collect::<Result<_, _>>()?;
        Ok((pattern, suppress))
    }
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}

impl StepSpec {
    /// A step with the defaults: halts on failure, nothing else set.
    pub fn new(name: impl Into<String>, run: impl Into<String>, timeout_secs: u64) -> StepSpec {
        StepSpec {
            name: name.into(),
            run: run.into(),
            timeout_secs,
            env: BTreeMap::new(),
            workdir: None,
            halt_on_failure: true,
            warn_on_failure: false,
            flunk_on_warnings: false,
            always_run: false,
            warnings: None,
            metrics: BTreeMap::new(),
            tests: None,
        }
    }
}

/// How a step ended, as its build's status counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepVerdict {
    Success,
    Warnings,
    Failure,
}

/// Judges a step that ran: a non-zero exit or a timeout fails it, unless
/// `warn_on_failure`; warnings in its log fail it under `flunk_on_warnings`.
/// `spec` is `None` for a step the recipe does not name (defaults apply).
pub fn step_verdict(spec: Option<&StepSpec>, exit_code: Option<i32>, timed_out: bool, warnings: u64) -> StepVerdict {
    let failed = timed_out || exit_code != Some(0);
    match (failed, warnings > 0) {
        (true, _) if spec.is_some_and(|s| s.warn_on_failure) => StepVerdict::Warnings,
        (true, _) => StepVerdict::Failure,
        (false, true) if spec.is_some_and(|s| s.flunk_on_warnings) => StepVerdict::Failure,
        (false, true) => StepVerdict::Warnings,
        (false, false) => StepVerdict::Success,
    }
}

/// Whether a step runs, given that an earlier one has halted the build or not.
pub fn step_runs(spec: &StepSpec, halted: bool) -> bool {
    !halted || spec.always_run
}

pub const MAX_STEP_ENV: usize = 64;
pub const MAX_ENV_VALUE_LEN: usize = 4096;
pub const MAX_WORKDIR_LEN: usize = 256;

/// A step's `env` and `workdir` as a recipe may set them: names of shell
/// variables outside `PEERBOT_`, values of bounded size without NUL, and a
/// relative path that stays inside the checkout.
fn check_step_options(env: &BTreeMap<String, String>, workdir: Option<&str>) -> Result<(), String> {
    if env.len() > MAX_STEP_ENV {
        return Err(format!("env has over {MAX_STEP_ENV} variables"));
    }
    for (k, v) in env {
        let shell_name = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && k.len() <= MAX_NAME_LEN;
        if !shell_name {
            return Err(format!("env name {k:?} is not a variable name (letters, digits, '_'; not first a digit)"));
        }
        if k.starts_with("PEERBOT_") || matches!(k.as_str(), "PATH" | "HOME") {
            return Err(format!("env name {k:?} is set by the node and cannot be changed"));
        }
        if v.len() > MAX_ENV_VALUE_LEN || v.contains('\0') {
            return Err(format!("env {k:?}: its value is over {MAX_ENV_VALUE_LEN} bytes or holds a NUL"));
        }
    }
    if let Some(w) = workdir.filter(|w| !inside_checkout(w)) {
        return Err(format!("workdir {w:?} must be a relative path inside the checkout, without '..'"));
    }
    Ok(())
}

/// A path relative to the checkout that names nothing outside it (links
/// are the executor's to follow and check).
fn inside_checkout(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_WORKDIR_LEN
        && !p.contains('\0')
        && std::path::Path::new(p)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: Hash32,
    pub builder: String,
    pub requires: Vec<String>,
    pub steps: Vec<StepSpec>,
    /// blake3 of this builder's section as parsed, so two announcements of
    /// one commit can be compared.
    pub recipe_hash: Hash32,
    /// Build only once the branch has had no new change for this long.
    #[serde(default)]
    pub tree_stable_secs: u64,
    /// A newer change on the branch supersedes this job while unclaimed.
    #[serde(default)]
    pub collapse: bool,
    /// Higher goes first when nodes pick among waiting jobs.
    #[serde(default)]
    pub priority: i32,
    /// Check out the commit's git submodules too (each from a mirror of
    /// its own, which the building node's policy must allow).
    #[serde(default, skip_serializing_if = "is_false")]
    pub submodules: bool,
    /// A cron expression (UTC, seconds optional): the builder builds the
    /// branch head at each firing instead of each change (`schedule.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Builders whose jobs on the same commit must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// A failure that covers several commits is bisected (`crate::bisect`);
    /// `bisect = false` opts out. Left out of the encoding when true, so
    /// jobs of recipes that do not say encode as before.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bisect: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecipeError {
    #[error("{RECIPE_FILE} is {0} bytes, over the {MAX_RECIPE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("{RECIPE_FILE} is not valid TOML for a recipe: {0}")]
    Syntax(String),
    #[error("{RECIPE_FILE}: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    #[serde(default)]
    builder: Vec<RawBuilder>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawBuilder {
    name: String,
    #[serde(default)]
    requires: Vec<String>,
    tree_stable_secs: Option<u64>,
    #[serde(default)]
    collapse: bool,
    #[serde(default)]
    priority: i32,
    schedule: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    submodules: bool,
    #[serde(default = "yes")]
    bisect: bool,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    run: String,
    timeout_secs: Option<u64>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    halt_on_failure: Option<bool>,
    #[serde(default)]
    warn_on_failure: bool,
    #[serde(default)]
    flunk_on_warnings: bool,
    #[serde(default)]
    always_run: bool,
    warnings: Option<WarningRule>,
    #[serde(default)]
    metrics: BTreeMap<String, String>,
    tests: Option<TestReportSpec>,
}

/// The job id every node derives for one builder at one commit.
pub fn job_id(repo: &str, commit: &str, builder: &str) -> Hash32 {
    Hash32::of_fields("peerbot.job.v1", &[repo.as_bytes(), commit.as_bytes(), builder.as_bytes()])
}

/// A forced rebuild is a job of its own, named by the force's nonce.
pub fn forced_job_id(repo: &str, commit: &str, builder: &str, nonce: &Hash32) -> Hash32 {
    Hash32::of_fields("peerbot.job.forced.v1", &[repo.as_bytes(), commit.as_bytes(), builder.as_bytes(), &nonce.0])
}

fn check_name(what: &str, name: &str) -> Result<(), RecipeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(RecipeError::Invalid(format!("{what} name {name:?} must be 1 to {MAX_NAME_LEN} bytes")));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(RecipeError::Invalid(format!(
            "{what} name {name:?} may only use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Parses a recipe into the jobs it asks for at `commit` of `repo`.
pub fn parse_recipe(repo: &str, commit: &str, text: &str) -> Result<Vec<JobSpec>, RecipeError> {
    if text.len() > MAX_RECIPE_BYTES {
        return Err(RecipeError::TooLarge(text.len()));
    }
    let raw: RawRecipe = toml::from_str(text).map_err(|e| RecipeError::Syntax(e.to_string()))?;
    if raw.builder.is_empty() {
        return Err(RecipeError::Invalid("no [[builder]] is defined".into()));
    }
    if raw.builder.len() > MAX_BUILDERS {
        return Err(RecipeError::Invalid(format!("more than {MAX_BUILDERS} builders")));
    }
    let mut jobs = Vec::with_capacity(raw.builder.len());
    for b in &raw.builder {
        check_name("builder", &b.name)?;
        if jobs.iter().any(|j: &JobSpec| j.builder == b.name) {
            return Err(RecipeError::Invalid(format!("builder {:?} is defined twice", b.name)));
        }
        if b.requires.len() > MAX_LABELS {
            return Err(RecipeError::Invalid(format!("builder {:?} requires over {MAX_LABELS} labels", b.name)));
        }
        let mut requires = Vec::with_capacity(b.requires.len());
        for r in &b.requires {
            let l = parse_label(r).map_err(|e| RecipeError::Invalid(format!("builder {:?}: {e}", b.name)))?;
            requires.push(l);
        }
        if b.step.is_empty() {
            return Err(RecipeError::Invalid(format!("builder {:?} has no [[builder.step]]", b.name)));
        }
        if b.step.len() > MAX_STEPS {
            return Err(RecipeError::Invalid(format!("builder {:?} has over {MAX_STEPS} steps", b.name)));
        }
        let mut steps: Vec<StepSpec> = Vec::with_capacity(b.step.len());
        for (i, s) in b.step.iter().enumerate() {
            let name = s.name.clone().unwrap_or_else(|| format!("step{i}"));
            check_name("step", &name)?;
            if steps.iter().any(|x| x.name == name) {
                return Err(RecipeError::Invalid(format!("builder {:?} has two steps named {name:?}", b.name)));
            }
            if s.run.trim().is_empty() || s.run.len() > MAX_COMMAND_LEN {
                return Err(RecipeError::Invalid(format!(
                    "builder {:?} step {name:?}: run must be a non-empty command under {MAX_COMMAND_LEN} bytes",
                    b.name
                )));
            }
            let timeout_secs = s.timeout_secs.unwrap_or(DEFAULT_STEP_TIMEOUT_SECS);
            if timeout_secs == 0 || timeout_secs > MAX_STEP_TIMEOUT_SECS {
                return Err(RecipeError::Invalid(format!(
                    "builder {:?} step {name:?}: timeout_secs must be 1 to {MAX_STEP_TIMEOUT_SECS}",
                    b.name
                )));
            }
            check_step_options(&s.env, s.workdir.as_deref())
                .map_err(|e| RecipeError::Invalid(format!("builder {:?} step {name:?}: {e}", b.name)))?;
            if let Some(w) = &s.warnings {
                w.compile().map_err(|e| RecipeError::Invalid(format!("builder {:?} step {name:?}: {e}", b.name)))?;
            }
            check_metrics(&s.metrics)
                .map_err(|e| RecipeError::Invalid(format!("builder {:?} step {name:?}: {e}", b.name)))?;
            if let Some(t) = &s.tests {
                t.check().map_err(|e| RecipeError::Invalid(format!("builder {:?} step {name:?}: {e}", b.name)))?;
            }
            steps.push(StepSpec {
                env: s.env.clone(),
                workdir: s.workdir.clone(),
                halt_on_failure: s.halt_on_failure.unwrap_or(true),
                warn_on_failure: s.warn_on_failure,
                flunk_on_warnings: s.flunk_on_warnings,
                always_run: s.always_run,
                warnings: s.warnings.clone(),
                metrics: s.metrics.clone(),
                tests: s.tests.clone(),
                ..StepSpec::new(name, s.run.clone(), timeout_secs)
            });
        }
        let tree_stable_secs = b.tree_stable_secs.unwrap_or(0);
        if tree_stable_secs > MAX_TREE_STABLE_SECS {
            return Err(RecipeError::Invalid(format!(
                "builder {:?}: tree_stable_secs must be at most {MAX_TREE_STABLE_SECS}",
                b.name
            )));
        }
        if !(-1000..=1000).contains(&b.priority) {
            return Err(RecipeError::Invalid(format!("builder {:?}: priority must be -1000 to 1000", b.name)));
        }
        if let Some(s) = &b.schedule {
            schedule::check(s).map_err(|e| RecipeError::Invalid(format!("builder {:?}: {e}", b.name)))?;
        }
        let base = (&b.name, &requires, &steps, tree_stable_secs, b.collapse, b.priority);
        // Builders without the newer fields hash as before, so the recipe
        // hashes of existing recipes (and their announcements) stay the same.
        let mut recipe_hash = if b.schedule.is_none() && b.depends_on.is_empty() {
            Hash32::of(&crate::codec::encode(&base))
        } else {
            Hash32::of(&crate::codec::encode(&(base, &b.schedule, &b.depends_on)))
        };
        if b.submodules {
            recipe_hash = Hash32::of(&crate::codec::encode(&(recipe_hash, "submodules")));
        }
        if !b.bisect {
            recipe_hash = Hash32::of(&crate::codec::encode(&(recipe_hash, "no-bisect")));
        }
        jobs.push(JobSpec {
            id: job_id(repo, commit, &b.name),
            builder: b.name.clone(),
            requires,
            steps,
            recipe_hash,
            tree_stable_secs,
            collapse: b.collapse,
            priority: b.priority,
            submodules: b.submodules,
            schedule: b.schedule.clone(),
            depends_on: b.depends_on.clone(),
            bisect: b.bisect,
        });
    }
    check_dependencies(&jobs).map_err(RecipeError::Invalid)?;
    Ok(jobs)
}

/// `depends_on` names builders of the same recipe, without cycles, and
/// only builders that run alongside: a builder built at each change
/// cannot wait for a scheduled one (it never builds that commit), and a
/// scheduled one waits only for builders of each change or of its own
/// schedule.
pub fn check_dependencies(jobs: &[JobSpec]) -> Result<(), String> {
    for j in jobs {
        if j.depends_on.len() > MAX_BUILDERS {
            return Err(format!("builder {:?} depends on over {MAX_BUILDERS} builders", j.builder));
        }
        for d in &j.depends_on {
            let Some(dep) = jobs.iter().find(|o| o.builder == *d) else {
                return Err(format!("builder {:?} depends on {d:?}, which is not a builder of this recipe", j.builder));
            };
            if dep.schedule.is_some() && dep.schedule != j.schedule {
                return Err(format!(
                    "builder {:?} depends on {d:?}, which builds only on its own schedule {:?}",
                    j.builder,
                    dep.schedule.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    // A cycle: a builder reachable from itself through depends_on.
    for j in jobs {
        let mut path = vec![j.builder.as_str()];
        let mut todo: Vec<(&str, usize)> = j.depends_on.iter().map(|d| (d.as_str(), 1)).collect();
        let mut seen = std::collections::BTreeSet::new();
        while let Some((name, depth)) = todo.pop() {
            path.truncate(depth);
            path.push(name);
            if name == j.builder {
                return Err(format!("depends_on makes a cycle: {}", path.join(" -> ")));
            }
            if !seen.insert(name) {
                continue;
            }
            if let Some(o) = jobs.iter().find(|o| o.builder == name) {
                todo.extend(o.depends_on.iter().map(|d| (d.as_str(), depth + 1)));
            }
        }
    }
    Ok(())
}

/// The steps a builder runs are those of the commit's own recipe; an
/// announcement only names them. Why the announced job is not what the
/// commit's `.peerbot.toml` says, for the build's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipe mismatch: {0}")]
pub struct RecipeMismatch(pub String);

/// Commands are shown on one line and cut to this many characters.
const SHOWN_COMMAND_CHARS: usize = 200;

fn shown(command: &str) -> String {
    let one_line: String = command.trim().escape_debug().collect();
    match one_line.char_indices().nth(SHOWN_COMMAND_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The job `announced` names, as the commit's own recipe (`recipe`: the
/// text of `.peerbot.toml` read from the builder's copy of `commit`, or
/// why it could not be read) defines it, when it is what was announced:
/// the same builder with the same requirements, steps (names, commands,
/// timeouts in order), tree-stable time, collapsing, priority and recipe
/// hash. Otherwise the first difference. The job id is not compared: a
/// forced job's is made with its nonce, and verification checked it.
pub fn check_announced(
    announced: &JobSpec,
    repo: &str,
    commit: &str,
    recipe: Result<&str, &str>,
) -> Result<JobSpec, RecipeMismatch> {
    let b = &announced.builder;
    let text = recipe.map_err(|why| RecipeMismatch(format!("builder {b:?} was announced, but {why}")))?;
    let jobs = parse_recipe(repo, commit, text)
        .map_err(|e| RecipeMismatch(format!("builder {b:?} was announced, but the commit's {e}")))?;
    let Some(own) = jobs.into_iter().find(|j| j.builder == *b) else {
        return Err(RecipeMismatch(format!(
            "builder {b:?} was announced, the commit's {RECIPE_FILE} has no such builder"
        )));
    };
    compare_steps(&announced.steps, &own.steps).map_err(RecipeMismatch)?;
    let differs = |what: &str, a: String, o: String| {
        Err(RecipeMismatch(format!("the announced builder {b:?} {what} {a}, the commit's {RECIPE_FILE} says {o}")))
    };
    if announced.requires != own.requires {
        return differs("requires", format!("{:?}", announced.requires), format!("{:?}", own.requires));
    }
    if announced.tree_stable_secs != own.tree_stable_secs {
        return differs(
            "has tree_stable_secs",
            announced.tree_stable_secs.to_string(),
            own.tree_stable_secs.to_string(),
        );
    }
    if announced.collapse != own.collapse {
        return differs("has collapse", announced.collapse.to_string(), own.collapse.to_string());
    }
    if announced.priority != own.priority {
        return differs("has priority", announced.priority.to_string(), own.priority.to_string());
    }
    if announced.submodules != own.submodules {
        return differs("has submodules", announced.submodules.to_string(), own.submodules.to_string());
    }
    if announced.schedule != own.schedule {
        return differs("has schedule", format!("{:?}", announced.schedule), format!("{:?}", own.schedule));
    }
    if announced.bisect != own.bisect {
        return differs("has bisect", announced.bisect.to_string(), own.bisect.to_string());
    }
    if announced.depends_on != own.depends_on {
        return differs("depends on", format!("{:?}", announced.depends_on), format!("{:?}", own.depends_on));
    }
    if announced.recipe_hash != own.recipe_hash {
        return differs("has recipe hash", announced.recipe_hash.short(), own.recipe_hash.short());
    }
    Ok(own)
}

/// The first difference between the announced steps and the commit's, in order.
fn compare_steps(announced: &[StepSpec], own: &[StepSpec]) -> Result<(), String> {
    for i in 0..announced.len().max(own.len()) {
        let (a, o) = match (announced.get(i), own.get(i)) {
            (Some(a), Some(o)) => (a, o),
            (Some(a), None) => {
                return Err(format!(
                    "the announced step {:?} is not in the commit's {RECIPE_FILE}, which has {} steps",
                    a.name,
                    own.len()
                ))
            }
            (None, Some(o)) => {
                return Err(format!("the commit's {RECIPE_FILE} has a step {:?} that was not announced", o.name))
            }
            (None, None) => break,
        };
        if a.name != o.name {
            return Err(format!(
                "the announced step {} is {:?}, the commit's {RECIPE_FILE} has {:?} there",
                i + 1,
                a.name,
                o.name
            ));
        }
        if a.run != o.run {
            return Err(format!(
                "the announced step {:?} runs `{}`, the commit's {RECIPE_FILE} says `{}`",
                a.name,
                shown(&a.run),
                shown(&o.run)
            ));
        }
        if a.timeout_secs != o.timeout_secs {
            return Err(format!(
                "the announced step {:?} times out after {} s, the commit's {RECIPE_FILE} says {} s",
                a.name, a.timeout_secs, o.timeout_secs
            ));
        }
        if a.tests != o.tests {
            let shown = |t: &Option<TestReportSpec>| match t {
                None => "none".to_string(),
                Some(t) => format!("{} {}", t.format.as_str(), t.path.as_deref().map(|p| shown(p)).unwrap_or_default()),
            };
            return Err(format!(
                "the announced step {:?} reads tests as {}, the commit's {RECIPE_FILE} says {}",
                a.name,
                shown(&a.tests).trim(),
                shown(&o.tests).trim()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
