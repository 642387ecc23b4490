//! Git through the `git` command: mirrors of watched repositories, commit
//! facts, the recipe at a commit, and build checkouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context};
use peerbot_protocol::core::CommitInfo;
use peerbot_protocol::recipe::{MAX_RECIPE_BYTES, RECIPE_FILE};
use tokio::process::Command;

const MAX_FILES: usize = 1000;
/// A git command still running after this is killed: a fetch from a
/// server that stopped answering must not hold a build or a poll for
/// ever. Inside the core's grace for a build's fetch and checkout.
pub const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs git; stdout on success, an error naming the command and git's
/// own message otherwise.
pub async fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    git_within(GIT_TIMEOUT, dir, args).await
}

/// `git`, killed after `limit`.
pub async fn git_within(limit: std::time::Duration, dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // kill_on_drop: the child dies with the future when the time is up.
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out.context("running git (is it installed?)")?,
        Err(_) => bail!("git {} did not finish within {} s: killed", args.join(" "), limit.as_secs()),
    };
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fetches into one mirror at a time; git's own ref locks would make a
/// second concurrent fetch fail.
fn mirror_lock(path: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut m = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    m.entry(path.to_path_buf()).or_default().clone()
}

pub fn mirror_path(data_dir: &Path, repo: &str) -> PathBuf {
    let h = blake3::hash(repo.as_bytes()).to_hex();
    data_dir.join("repos").join(format!("{}.git", &h[..16]))
}

/// A repository is a URL or a path; never something git would read as an option.
pub fn check_repo(repo: &str) -> anyhow::Result<()> {
    if repo.is_empty() || repo.starts_with('-') || repo.contains('\0') || repo.len() > 4096 {
        bail!("{repo:?} is not a repository URL or path");
    }
    Ok(())
}

/// Makes or updates a bare mirror of every branch of `repo`.
pub async fn fetch_mirror(data_dir: &Path, repo: &str) -> anyhow::Result<PathBuf> {
    check_repo(repo)?;
    let path = mirror_path(data_dir, repo);
    let lock = mirror_lock(&path);
    let _guard = lock.lock().await;
    if !path.join("HEAD").exists() {
        tokio::fs::create_dir_all(&path).await?;
        git(Some(&path), &["init", "--bare", "-q"]).await?;
    }
    git(Some(&path), &["fetch", "--quiet", "--prune", "--force", repo, "+refs/heads/*:refs/heads/*"])
        .await
        .with_context(|| format!("fetching {repo}"))?;
    Ok(path)
}

/// The branch the remote's HEAD points at.
pub async fn default_branch(repo: &str) -> anyhow::Result<String> {
    check_repo(repo)?;
    let out = git(None, &["ls-remote", "--symref", repo, "HEAD"]).await?;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("ref: refs/heads/") {
            if let Some((branch, _)) = rest.split_once('\t') {
                return Ok(branch.to_string());
            }
        }
    }
    bail!("{repo} has no HEAD branch; name one with #branch")
}

pub async fn resolve(mirror: &Path, rev: &str) -> anyhow::Result<String> {
    if rev.starts_with('-') {
        bail!("{rev:?} is not a revision");
    }
    let spec = format!("{rev}^{{commit}}");
    let out = git(Some(mirror), &["rev-parse", "--verify", "--quiet", &spec])
        .await
        .map_err(|_| anyhow!("no commit {rev:?} in the repository"))?;
    Ok(out.trim().to_string())
}

/// Commits in `old..new`, oldest first.
pub async fn commits_between(mirror: &Path, old: &str, new: &str) -> anyhow::Result<Vec<String>> {
    let range = format!("{old}..{new}");
    let out = git(Some(mirror), &["rev-list", "--reverse", &range]).await?;
    Ok(out.lines().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

/// What the core needs to announce one commit.
pub async fn commit_info(mirror: &Path, repo: &str, branch: &str, commit: &str) -> anyhow::Result<CommitInfo> {
    let out =
        git(Some(mirror), &["show", "-s", "--format=%H%x00%P%x00%an <%ae>%x00%cn <%ce>%x00%ct%x00%s", commit]).await?;
    let f: Vec<&str> = out.trim_end_matches('\n').split('\0').collect();
    if f.len() < 6 {
        bail!("unexpected output of git show for {commit}");
    }
    let files = git(Some(mirror), &["diff-tree", "--no-commit-id", "--name-only", "-r", "--root", commit])
        .await
        .map(|o| o.lines().take(MAX_FILES).map(str::to_string).collect())
        .unwrap_or_default();
    let spec = format!("{commit}:{RECIPE_FILE}");
    let recipe = match git(Some(mirror), &["cat-file", "-s", &spec]).await {
        Err(_) => Err(format!("no {RECIPE_FILE} at commit {}", &commit[..commit.len().min(12)])),
        Ok(size) if size.trim().parse::<usize>().unwrap_or(usize::MAX) > MAX_RECIPE_BYTES => {
            Err(format!("{RECIPE_FILE} is over the {MAX_RECIPE_BYTES}-byte limit"))
        }
        Ok(_) => git(Some(mirror), &["show", &spec]).await.map_err(|e| e.to_string()),
    };
    Ok(CommitInfo {
        repo: repo.to_string(),
        branch: branch.to_string(),
        commit: f[0].to_string(),
        parents: f[1].split_whitespace().map(str::to_string).collect(),
        author: f[2].to_string(),
        committer: f[3].to_string(),
        commit_time: f[4].parse().unwrap_or(0),
        title: f[5].chars().take(500).collect(),
        files,
        recipe,
    })
}

/// A working tree of `commit` that shares objects with the mirror.
pub async fn checkout(mirror: &Path, dest: &Path, commit: &str) -> anyhow::Result<()> {
    if dest.exists() {
        tokio::fs::remove_dir_all(dest).await?;
    }
    let m = mirror.to_string_lossy().into_owned();
    let d = dest.to_string_lossy().into_owned();
    git(None, &["clone", "--quiet", "--shared", "--no-checkout", &m, &d]).await?;
    git(Some(dest), &["checkout", "--quiet", "--detach", commit]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_git_command_that_never_ends_is_killed_at_its_limit() {
        // A remote whose transport never answers (git's ext:: transport
        // runs a command that says nothing), as a hung server does.
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(500);
        let args = ["-c", "protocol.ext.allow=always", "ls-remote", "ext::sleep 3600"];
        let err = git_within(limit, None, &args).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "killed, not waited for");
    }
}
