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

use serde::{Deserialize, Serialize};

use crate::ids::Hash32;
use crate::labels::{parse_label, MAX_LABELS};

pub const RECIPE_FILE: &str = ".peerbot.toml";
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;
pub const MAX_BUILDERS: usize = 64;
pub const MAX_STEPS: usize = 64;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_COMMAND_LEN: usize = 16 * 1024;
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 3600;
pub const MAX_STEP_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
pub const MAX_TREE_STABLE_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub run: String,
    pub timeout_secs: u64,
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
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    run: String,
    timeout_secs: Option<u64>,
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
            steps.push(StepSpec { name, run: s.run.clone(), timeout_secs });
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
        let recipe_hash =
            Hash32::of(&crate::codec::encode(&(&b.name, &requires, &steps, tree_stable_secs, b.collapse, b.priority)));
        jobs.push(JobSpec {
            id: job_id(repo, commit, &b.name),
            builder: b.name.clone(),
            requires,
            steps,
            recipe_hash,
            tree_stable_secs,
            collapse: b.collapse,
            priority: b.priority,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[builder]]
name = "test"
requires = ["os=linux"]
[[builder.step]]
name = "build"
run = "make"
timeout_secs = 600
[[builder.step]]
run = "make test"

[[builder]]
name = "gpu"
requires = ["gpu=yes"]
tree_stable_secs = 60
collapse = true
priority = 5
[[builder.step]]
name = "cuda"
run = "nvidia-smi"
"#;

    #[test]
    fn parses_builders_and_steps() {
        let jobs = parse_recipe("r", "c", GOOD).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].builder, "test");
        assert_eq!(jobs[0].steps[0].timeout_secs, 600);
        assert_eq!(jobs[0].steps[1].name, "step1");
        assert_eq!(jobs[0].steps[1].timeout_secs, DEFAULT_STEP_TIMEOUT_SECS);
        assert_eq!(jobs[1].requires, vec!["gpu=yes".to_string()]);
        assert_eq!((jobs[1].tree_stable_secs, jobs[1].collapse, jobs[1].priority), (60, true, 5));
        assert_eq!((jobs[0].tree_stable_secs, jobs[0].collapse, jobs[0].priority), (0, false, 0));
        assert_eq!(jobs[0].id, job_id("r", "c", "test"));
        assert_ne!(jobs[0].id, jobs[1].id);
    }

    #[test]
    fn broken_recipes_name_the_problem() {
        let e = parse_recipe("r", "c", "[[builder]]\nname=1").unwrap_err();
        assert!(matches!(e, RecipeError::Syntax(_)), "{e}");
        let e = parse_recipe("r", "c", "").unwrap_err();
        assert!(e.to_string().contains("no [[builder]]"), "{e}");
        let e = parse_recipe("r", "c", "[[builder]]\nname='x'\n").unwrap_err();
        assert!(e.to_string().contains("no [[builder.step]]"), "{e}");
        let e =
            parse_recipe("r", "c", "[[builder]]\nname='x'\nrequires=['gpu']\n[[builder.step]]\nrun='a'").unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        let e = parse_recipe("r", "c", "[[builder]]\nname='x'\nfoo=1\n[[builder.step]]\nrun='a'").unwrap_err();
        assert!(e.to_string().contains("foo"), "{e}");
        let e = parse_recipe(
            "r",
            "c",
            "[[builder]]\nname='x'\n[[builder.step]]\nrun='a'\n[[builder]]\nname='x'\n[[builder.step]]\nrun='a'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
