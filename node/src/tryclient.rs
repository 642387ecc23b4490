//! `peerbot try`: sends the uncommitted state of a git work tree (tracked
//! changes, new untracked files, and local commits not pushed) as a patch
//! against its upstream commit, for a try build on the cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use peerbot_protocol::record::MAX_PATCH_BYTES;
use serde_json::Value;

use crate::client;

/// Runs git in `dir`; stdout, or an error with git's own message.
fn git(dir: &Path, index: Option<&Path>, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args).env("LC_ALL", "C").env("GIT_TERMINAL_PROMPT", "0");
    if let Some(i) = index {
        cmd.env("GIT_INDEX_FILE", i);
    }
    let out = cmd.output().context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

fn git_line(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&git(dir, None, args)?).trim().to_string())
}

/// What a work tree is tried against.
#[derive(Debug)]
pub struct Upstream {
    /// The repository as the cluster fetches it: the upstream remote's URL,
    /// a local path made absolute.
    pub repo: String,
    /// The upstream branch, without `refs/heads/`.
    pub branch: String,
    /// Where this work tree's history left the upstream branch.
    pub commit: String,
}

pub fn upstream(dir: &Path, repo: Option<&str>) -> anyhow::Result<Upstream> {
    let top = PathBuf::from(git_line(dir, &["rev-parse", "--show-toplevel"]).context("not in a git work tree")?);
    let head = git_line(&top, &["symbolic-ref", "-q", "HEAD"])
        .map_err(|_| anyhow::anyhow!("HEAD is detached: check out a branch that has an upstream"))?;
    let fmt = "--format=%(upstream:remotename)%00%(upstream:remoteref)";
    let up = git_line(&top, &["for-each-ref", fmt, &head])?;
    let (remote, remote_ref) = up.split_once('\0').unwrap_or(("", ""));
    let Some(branch) = remote_ref.strip_prefix("refs/heads/") else {
        bail!("{head} has no upstream branch: set one with `git branch --set-upstream-to REMOTE/BRANCH`");
    };
    let commit = git_line(&top, &["merge-base", "HEAD", "@{upstream}"])?;
    let repo = match repo {
        Some(r) => r.to_string(),
        None => {
            let url = git_line(&top, &["remote", "get-url", remote])?;
            if url.contains("://") || Path::new(&url).is_absolute() || url.contains(':') {
                url
            } else {
                // A relative path names a repository beside this one.
                std::fs::canonicalize(top.join(&url)).map(|p| p.to_string_lossy().into_owned()).unwrap_or(url)
            }
        }
    };
    let repo = client::repo_string(&repo);
    Ok(Upstream { repo, branch: branch.to_string(), commit })
}

/// The work tree against `base` as one binary patch, with untracked files
/// (not ignored ones), staged through a copy of the index so that the
/// user's own index is left as it was.
pub fn patch(dir: &Path, base: &str) -> anyhow::Result<Vec<u8>> {
    let top = PathBuf::from(git_line(dir, &["rev-parse", "--show-toplevel"])?);
    let tmp = tempfile::tempdir()?;
    let index = tmp.path().join("index");
    let own = PathBuf::from(git_line(&top, &["rev-parse", "--path-format=absolute", "--git-path", "index"])?);
    if own.exists() {
        std::fs::copy(&own, &index).context("copying the index")?;
    }
    git(&top, Some(&index), &["add", "-A", "--", "."])?;
    git(
        &top,
        Some(&index),
        &[
            "diff",
            "--cached",
            "--binary",
            "--full-index",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            "--submodule=short",
            "--ignore-submodules=none",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            base,
        ],
    )
}

pub struct TryArgs<'a> {
    pub node: &'a str,
    pub token: Option<&'a str>,
    pub dir: &'a Path,
    pub repo: Option<&'a str>,
    pub builders: &'a [String],
    pub wait: bool,
}

/// Sends the try; with `wait`, waits for its results and says whether
/// every build succeeded.
pub fn run(a: TryArgs) -> anyhow::Result<bool> {
    let up = upstream(a.dir, a.repo)?;
    let patch = patch(a.dir, &up.commit)?;
    if patch.is_empty() {
        bail!("nothing to try: the work tree is the same as its upstream commit {}", &up.commit[..12]);
    }
    if patch.len() as u64 > MAX_PATCH_BYTES {
        bail!("the patch is {} bytes, over the limit of {MAX_PATCH_BYTES}", patch.len());
    }
    let builders = a.builders.join(",");
    let mut query = vec![("repo", up.repo.as_str()), ("branch", up.branch.as_str()), ("commit", up.commit.as_str())];
    if !builders.is_empty() {
        query.push(("builders", &builders));
    }
    let v = client::post_bytes(a.node, a.token, "/api/v1/try", &query, &patch)?;
    let jobs: Vec<(String, String)> =
        v["jobs"].as_array().map(|a| a.iter().map(|j| (s(&j["builder"]), s(&j["job"]))).collect()).unwrap_or_default();
    println!(
        "try change {} on {}: {} bytes of patch against {} ({})",
        client::clean(&s(&v["id"])),
        client::clean(&s(&v["branch"])),
        patch.len(),
        &up.commit[..12.min(up.commit.len())],
        client::clean(&up.repo)
    );
    for (b, j) in &jobs {
        println!("  job {} {}", client::clean(b), client::clean(j));
    }
    if !a.wait {
        return Ok(true);
    }
    let mut all_good = true;
    for (b, j) in &jobs {
        let result = wait_for(a.node, j)?;
        let status = s(&result["status"]);
        all_good &= status == "success";
        println!("{}: {} (build {})", client::clean(b), client::clean(&status), client::clean(&s(&result["id"])));
    }
    Ok(all_good)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

/// How long `--wait` waits for one job.
const WAIT_LIMIT: Duration = Duration::from_secs(8 * 3600);

/// The job's first result, once it has one; a cancelled job ends the wait too.
fn wait_for(node: &str, job: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let v = client::get_json(node, &format!("/api/v1/jobs/{job}"), &[])?;
        if let Some(r) = v["results"].as_array().and_then(|r| r.first()) {
            return Ok(r.clone());
        }
        if v["state"] == "cancelled" {
            bail!("job {job} was cancelled before it was built");
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!("job {job} has no result after {} hours", WAIT_LIMIT.as_secs() / 3600);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
