//! `peerbot check [FILE]`: a recipe read by the parser every node uses,
//! before it is committed, and `--commit` refs resolved in a local clone.

use std::path::Path;

use anyhow::Context;
use peerbot_protocol::recipe::{parse_recipe, RECIPE_FILE};

/// Parses `file` (default `.peerbot.toml`) and prints what each builder
/// would run; an error names what is wrong.
pub fn check(file: Option<&Path>) -> anyhow::Result<()> {
    let path = file.unwrap_or(Path::new(RECIPE_FILE));
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let jobs = match parse_recipe("check://local", "0", &text) {
        Ok(jobs) => jobs,
        Err(e) => {
            // The parser's message spans lines (it points at the column):
            // printed as it is, not through the CLI's one-line cleaning.
            // The parser names the file `.peerbot.toml`: name the one read.
            let e = e.to_string();
            let rest = e.strip_prefix(RECIPE_FILE).unwrap_or(&e);
            eprintln!(
                "peerbot: {}{}",
                path.display(),
                if rest.starts_with([':', ' ']) { rest.to_string() } else { format!(": {rest}") }
            );
            std::process::exit(1);
        }
    };
    println!("{}: {} builder{}", path.display(), jobs.len(), if jobs.len() == 1 { "" } else { "s" });
    for j in &jobs {
        let needs = if j.requires.is_empty() { "any node".to_string() } else { j.requires.join(", ") };
        let mut how = vec![format!("needs {needs}")];
        if j.priority != 0 {
            how.push(format!("priority {}", j.priority));
        }
        if j.collapse {
            how.push("collapses".into());
        }
        if j.tree_stable_secs > 0 {
            how.push(format!("tree stable {} s", j.tree_stable_secs));
        }
        println!("  {} ({})", j.builder, how.join("; "));
        for (i, s) in j.steps.iter().enumerate() {
            println!("    {}. {}: {} (timeout {} s)", i + 1, s.name, s.run, s.timeout_secs);
        }
    }
    Ok(())
}

/// The commit id `commit` names in `repo`: a ref (`HEAD`, a branch, a tag)
/// or a short id is resolved with git when `repo` is a local clone; a full
/// id, or any name for a remote repository, is sent as it is, for the node
/// to resolve in its mirror.
pub fn resolve_commit(repo: &str, commit: &str) -> anyhow::Result<String> {
    let full = matches!(commit.len(), 40 | 64) && crate::git::check_commit(commit).is_ok();
    if full || repo.contains("://") || !Path::new(repo).is_dir() {
        return Ok(commit.to_string());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    rt.block_on(crate::git::resolve(Path::new(repo), commit))
        .map_err(|_| anyhow::anyhow!("--commit {commit:?} names no commit in {repo}"))
}
