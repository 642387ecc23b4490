//! Git through the `git` command: mirrors of watched repositories, commit
//! facts, the recipe at a commit, and build checkouts.
//!
//! What reaches git's command line may come from a peer (a repository, a
//! commit, a branch) and is checked first: a repository is never read as
//! an option or a transport helper, a commit is a hex object id, a branch
//! is a well-formed branch name; `--` ends the options where git takes it.
//! Whatever the URL, git may only use the file, git, http, https and ssh
//! transports (`GIT_ALLOW_PROTOCOL`), so `ext::` (which runs a command) and
//! the other helpers are refused by git itself too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context};
use peerbot_protocol::core::CommitInfo;
use peerbot_protocol::recipe::{MAX_RECIPE_BYTES, RECIPE_FILE};
use peerbot_protocol::repos::{kind_of, RepoKind, MAX_REPO_LEN};
use tokio::process::Command;

const MAX_FILES: usize = 1000;
/// A git command still running after this is killed: a fetch from a
/// server that stopped answering must not hold a build or a poll for
/// ever. Inside the core's grace for a build's fetch and checkout.
pub const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The transports git may use, whatever a URL or git's config asks for.
const ALLOWED_PROTOCOLS: &str = "file:git:http:https:ssh";
/// A branch name longer than this is refused.
const MAX_BRANCH_LEN: usize = 255;

/// Runs git; stdout on success, an error naming the command and git's
/// own message otherwise.
pub async fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    git_within(GIT_TIMEOUT, dir, args).await
}

/// `git`, killed after `limit`.
pub async fn git_within(limit: std::time::Duration, dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    run_git(limit, git_command(dir, args), args, None).await
}

/// `git` in `dir` with `input` on its standard input, and `GIT_INDEX_FILE`
/// set to `index` when given.
pub async fn git_fed(dir: &Path, index: Option<&Path>, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
    let mut cmd = git_command(Some(dir), args);
    if let Some(i) = index {
        cmd.env("GIT_INDEX_FILE", i);
    }
    run_git(GIT_TIMEOUT, cmd, args, Some(input)).await
}

async fn run_git(
    limit: std::time::Duration,
    mut cmd: Command,
    args: &[&str],
    input: Option<&[u8]>,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let stdin = if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    let mut child = cmd
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running git (is it installed?)")?;
    // Fed beside the wait: git may answer before it has read everything.
    let feed = match (child.stdin.take(), input) {
        (Some(mut pipe), Some(bytes)) => {
            let bytes = bytes.to_vec();
            Some(tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
            }))
        }
        _ => None,
    };
    // kill_on_drop: the child dies with the future when the time is up.
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.context("running git")?,
        Err(_) => bail!("git {} did not finish within {} s: killed", args.join(" "), limit.as_secs()),
    };
    if let Some(f) = feed {
        let _ = f.await;
    }
    if !out.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn git_command(dir: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS)
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    cmd
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

/// A repository is a URL or a path; never something git would read as an
/// option, nor a transport-helper address (`ext::`, `fd::`) or a URL of a
/// transport git may not use.
pub fn check_repo(repo: &str) -> anyhow::Result<()> {
    if repo.is_empty() || repo.starts_with('-') || repo.contains(['\0', '\n', '\r']) || repo.len() > MAX_REPO_LEN {
        bail!("{repo:?} is not a repository URL or path");
    }
    if kind_of(repo) == RepoKind::Other {
        bail!(
            "{repo:?}: transport helpers (ext::, fd::, ...) and transports other than {ALLOWED_PROTOCOLS} are refused"
        );
    }
    Ok(())
}

/// A commit is named by its object id, 4 to 64 hex digits: never a
/// revision expression, a ref or an option.
pub fn check_commit(commit: &str) -> anyhow::Result<()> {
    if !(4..=64).contains(&commit.len()) || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{commit:?} is not a commit id (4 to 64 hex digits)");
    }
    Ok(())
}

/// A branch name as `git check-ref-format --branch` would take it, and
/// not an option: no control characters, space, `~ ^ : ? * [ \`, `..`,
/// `@{`, `//`; no leading `-` or `/`; no component starting with `.` or
/// ending with `.lock`; not `@`; not ending with `/` or `.`.
pub fn check_branch(branch: &str) -> anyhow::Result<()> {
    let bad_char = |c: char| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\');
    let bad = branch.is_empty()
        || branch.len() > MAX_BRANCH_LEN
        || branch == "@"
        || branch.starts_with(['-', '/'])
        || branch.ends_with(['/', '.'])
        || branch.chars().any(bad_char)
        || ["..", "@{", "//"].iter().any(|s| branch.contains(s))
        || branch.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock"));
    if bad {
        bail!("{branch:?} is not a valid branch name");
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
    git(Some(&path), &["fetch", "--quiet", "--prune", "--force", "--", repo, "+refs/heads/*:refs/heads/*"])
        .await
        .with_context(|| format!("fetching {repo}"))?;
    Ok(path)
}

/// The branch the remote's HEAD points at.
pub async fn default_branch(repo: &str) -> anyhow::Result<String> {
    check_repo(repo)?;
    let out = git(None, &["ls-remote", "--symref", "--", repo, "HEAD"]).await?;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("ref: refs/heads/") {
            if let Some((branch, _)) = rest.split_once('\t') {
                check_branch(branch).with_context(|| format!("the HEAD of {repo}"))?;
                return Ok(branch.to_string());
            }
        }
    }
    bail!("{repo} has no HEAD branch; name one with #branch")
}

/// The commit a revision (a commit id, a branch, `HEAD~2`...) names.
pub async fn resolve(mirror: &Path, rev: &str) -> anyhow::Result<String> {
    if rev.is_empty() || rev.starts_with('-') || rev.contains(['\0', '\n', '\r']) || rev.len() > MAX_REPO_LEN {
        bail!("{rev:?} is not a revision");
    }
    let spec = format!("{rev}^{{commit}}");
    let out = git(Some(mirror), &["rev-parse", "--verify", "--quiet", &spec])
        .await
        .map_err(|_| anyhow!("no commit {rev:?} in the repository"))?;
    let commit = out.trim().to_string();
    check_commit(&commit)?;
    Ok(commit)
}

/// Commits in `old..new`, oldest first.
pub async fn commits_between(mirror: &Path, old: &str, new: &str) -> anyhow::Result<Vec<String>> {
    check_commit(old)?;
    check_commit(new)?;
    let range = format!("{old}..{new}");
    let out = git(Some(mirror), &["rev-list", "--reverse", &range]).await?;
    Ok(out.lines().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

/// What the core needs to announce one commit.
pub async fn commit_info(mirror: &Path, repo: &str, branch: &str, commit: &str) -> anyhow::Result<CommitInfo> {
    check_commit(commit)?;
    check_branch(branch)?;
    // Three git processes at once: an announcement waits for the slowest.
    let show = ["show", "-s", "--format=%H%x00%P%x00%an <%ae>%x00%cn <%ce>%x00%ct%x00%s", commit];
    let diff = ["diff-tree", "--no-commit-id", "--name-only", "-r", "--root", commit];
    let (out, files, recipe) =
        tokio::join!(git(Some(mirror), &show), git(Some(mirror), &diff), recipe_at(mirror, commit));
    let out = out?;
    let f: Vec<&str> = out.trim_end_matches('\n').split('\0').collect();
    if f.len() < 6 {
        bail!("unexpected output of git show for {commit}");
    }
    let files = files.map(|o| o.lines().take(MAX_FILES).map(str::to_string).collect()).unwrap_or_default();
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

/// The text of `.peerbot.toml` at `commit` of a mirror, or why it cannot
/// be read (none there, over `MAX_RECIPE_BYTES`, git failed): what the
/// watcher announces, and what a builder checks an announcement against.
pub async fn recipe_at(mirror: &Path, commit: &str) -> Result<String, String> {
    check_commit(commit).map_err(|e| e.to_string())?;
    let read = tokio::time::timeout(GIT_TIMEOUT, read_recipe(mirror, commit));
    match read.await {
        Ok(r) => r,
        Err(_) => Err(format!("reading {RECIPE_FILE}: git did not answer within {} s", GIT_TIMEOUT.as_secs())),
    }
}

/// One `git cat-file --batch` for the size and the text: the size is read
/// first, and a recipe over the limit is never read into memory.
async fn read_recipe(mirror: &Path, commit: &str) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let failed = |e: std::io::Error| format!("reading {RECIPE_FILE} with git: {e}");
    let mut child = git_command(Some(mirror), &["cat-file", "--batch"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("running git (is it installed?): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(format!("{commit}:{RECIPE_FILE}\n").as_bytes()).await.map_err(failed)?;
    drop(stdin);
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut header = String::new();
    out.read_line(&mut header).await.map_err(failed)?;
    // "<id> blob <size>", or "<name> missing" (no file, no such commit).
    let f: Vec<&str> = header.split_whitespace().collect();
    let size = match f.as_slice() {
        [_, "blob", size] => size.parse::<usize>().unwrap_or(usize::MAX),
        [_, "missing"] | [] => return Err(format!("no {RECIPE_FILE} at commit {}", &commit[..commit.len().min(12)])),
        _ => return Err(format!("{RECIPE_FILE} at commit {} is not a file", &commit[..commit.len().min(12)])),
    };
    if size > MAX_RECIPE_BYTES {
        return Err(format!("{RECIPE_FILE} is over the {MAX_RECIPE_BYTES}-byte limit"));
    }
    let mut text = vec![0u8; size];
    out.read_exact(&mut text).await.map_err(failed)?;
    let _ = child.wait().await;
    String::from_utf8(text).map_err(|_| format!("{RECIPE_FILE} is not UTF-8"))
}

/// A working tree of `commit` that shares objects with the mirror.
pub async fn checkout(mirror: &Path, dest: &Path, commit: &str) -> anyhow::Result<()> {
    check_commit(commit)?;
    if dest.exists() {
        tokio::fs::remove_dir_all(dest).await?;
    }
    // What `clone --shared` makes, without its remote, refs and hooks:
    // an empty repository that borrows the mirror's objects. A third of
    // the time of the clone, which took most of a quick build's.
    let objects = tokio::fs::canonicalize(mirror.join("objects"))
        .await
        .with_context(|| format!("{} is not a git directory", mirror.display()))?;
    let d = dest.to_string_lossy().into_owned();
    git(None, &["init", "--quiet", "--template=", "--", &d]).await?;
    let info = dest.join(".git/objects/info");
    tokio::fs::create_dir_all(&info).await?;
    tokio::fs::write(info.join("alternates"), format!("{}\n", objects.display())).await?;
    git(Some(dest), &["checkout", "--quiet", "--detach", commit]).await?;
    Ok(())
}

/// Nesting of submodules followed at most, and submodules per build.
const MAX_SUBMODULE_DEPTH: usize = 4;
const MAX_SUBMODULES: usize = 64;

/// The submodules the commit checked out in `dir` records, recursively,
/// each checked out at its recorded commit from a mirror of its own
/// repository, as the build's own checkout is. What `.gitmodules` names
/// comes from the repository: each URL (resolved against its parent's
/// when relative) must pass the same checks as a repository and be one
/// that `allowed` (this node's policy) lets it fetch; each path must stay
/// inside its parent's checkout. Returns the mirrors the checkouts borrow
/// objects from.
pub async fn checkout_submodules(
    data_dir: &Path,
    dir: &Path,
    repo: &str,
    allowed: &(dyn Fn(&str) -> bool + Sync),
) -> anyhow::Result<Vec<PathBuf>> {
    let mut mirrors = Vec::new();
    let mut queue = vec![(dir.to_path_buf(), repo.to_string(), 0usize)];
    let mut count = 0;
    while let Some((parent, parent_repo, depth)) = queue.pop() {
        for (path, url) in submodules_of(&parent).await? {
            count += 1;
            if count > MAX_SUBMODULES {
                bail!("over {MAX_SUBMODULES} submodules");
            }
            if depth >= MAX_SUBMODULE_DEPTH {
                bail!("submodule {path:?} is nested over {MAX_SUBMODULE_DEPTH} deep");
            }
            let url = resolve_submodule_url(&parent_repo, &url);
            check_repo(&url).with_context(|| format!("submodule {path:?}"))?;
            if !allowed(&url) {
                bail!("submodule {path:?}: repository {url:?} is not allowed by this node's policy");
            }
            // From the index, not HEAD: a try's patch may move a submodule.
            let line = git(Some(&parent), &["ls-files", "-s", "-z", "--", &path]).await?;
            // "160000 <id> 0<TAB><path><NUL>": a gitlink, at exactly that path.
            let entry = line.split('\0').next().unwrap_or_default();
            let commit = match entry.split_once('\t') {
                Some((meta, p)) if p == path => match meta.split(' ').collect::<Vec<_>>().as_slice() {
                    ["160000", id, "0"] => id.to_string(),
                    _ => bail!("submodule {path:?} is not a gitlink at this commit"),
                },
                _ => bail!("submodule {path:?} is not a gitlink at this commit"),
            };
            refuse_links(&parent, &path)?;
            let object = format!("{commit}^{{commit}}");
            let object = &object;
            let (mirror, ()) = with_commit(data_dir, &url, &commit, |m| async move {
                git(Some(&m), &["cat-file", "-e", object]).await.map(|_| ())
            })
            .await
            .with_context(|| format!("submodule {path:?} at {commit}"))?;
            let dest = parent.join(&path);
            checkout(&mirror, &dest, &commit).await.with_context(|| format!("submodule {path:?}"))?;
            mirrors.push(tokio::fs::canonicalize(&mirror).await?);
            queue.push((dest, url, depth + 1));
        }
    }
    Ok(mirrors)
}

/// Refuses a path with a symbolic link on the way: a checkout there would
/// write wherever the link points.
fn refuse_links(root: &Path, path: &str) -> anyhow::Result<()> {
    let mut at = root.to_path_buf();
    for part in Path::new(path).components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => bail!("submodule {path:?}: {} is a symbolic link", at.display()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("submodule {path:?}")),
        }
    }
    Ok(())
}

/// (path, url) of each submodule `.gitmodules` in `dir` lists.
async fn submodules_of(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    if !dir.join(".gitmodules").is_file() {
        return Ok(vec![]);
    }
    // `--null`: key, newline, value, NUL; names and values may hold spaces.
    let args = ["config", "-f", ".gitmodules", "--null", "--get-regexp", r"^submodule\..*\.(path|url)$"];
    let listed = match git(Some(dir), &args).await {
        Ok(l) => l,
        // Exit 1 with nothing said: nothing matched. Anything else: a broken .gitmodules.
        Err(e) if e.to_string().trim_end().ends_with(':') => String::new(),
        Err(e) => return Err(e).context(".gitmodules cannot be read"),
    };
    let mut by_name: std::collections::BTreeMap<String, (Option<String>, Option<String>)> = Default::default();
    for item in listed.split('\0').filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('\n') else { continue };
        let Some(rest) = key.strip_prefix("submodule.") else { continue };
        if let Some(name) = rest.strip_suffix(".path") {
            by_name.entry(name.to_string()).or_default().0 = Some(value.to_string());
        } else if let Some(name) = rest.strip_suffix(".url") {
            by_name.entry(name.to_string()).or_default().1 = Some(value.to_string());
        }
    }
    let mut out = Vec::new();
    for (name, (path, url)) in by_name {
        let (Some(path), Some(url)) = (path, url) else { bail!("submodule {name:?} lacks a path or a url") };
        let inside = !path.is_empty()
            && Path::new(&path).components().all(|c| matches!(c, std::path::Component::Normal(_)))
            && !path.split('/').any(|c| c == ".git");
        if !inside {
            bail!("submodule {name:?}: path {path:?} leaves the checkout");
        }
        out.push((path, url));
    }
    Ok(out)
}

/// A submodule URL as git resolves it: `./x` and `../x` against the
/// parent's repository, anything else as it is.
fn resolve_submodule_url(parent: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_string();
    }
    let mut base: Vec<&str> = parent.trim_end_matches('/').split('/').collect();
    for part in url.split('/') {
        match part {
            "." | "" => {}
            ".." => {
                if base.len() > 1 {
                    base.pop();
                }
            }
            p => base.push(p),
        }
    }
    base.join("/")
}

/// Reads `commit` out of the mirror of `repo` with `read`: at once when
/// the mirror exists, and once more after a fetch if that fails. A commit
/// the node has seen (most builds, and announcements of commits a watcher
/// fetched) costs no round trip to the repository, and no git process to
/// ask whether the mirror holds it.
pub async fn with_commit<T, F, Fut>(data_dir: &Path, repo: &str, commit: &str, read: F) -> anyhow::Result<(PathBuf, T)>
where
    F: Fn(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    check_repo(repo)?;
    check_commit(commit)?;
    let path = mirror_path(data_dir, repo);
    if path.join("HEAD").exists() {
        if let Ok(t) = read(path.clone()).await {
            return Ok((path, t));
        }
    }
    let path = fetch_mirror(data_dir, repo).await?;
    let t = read(path.clone()).await?;
    Ok((path, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_git_command_that_never_ends_is_killed_at_its_limit() {
        // A git daemon that takes the connection and never answers, as a
        // hung server does (the kernel accepts it into the listener's backlog).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/repo", silent.local_addr().unwrap());
        let started = std::time::Instant::now();
        let limit = std::time::Duration::from_millis(500);
        let err = git_within(limit, None, &["ls-remote", "--", &url]).await.unwrap_err().to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "killed, not waited for");
    }

    #[tokio::test]
    async fn git_refuses_transport_helpers_even_when_its_config_allows_them() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let url = format!("ext::sh -c touch% {}", marker.display());
        let args = ["-c", "protocol.allow=always", "-c", "protocol.ext.allow=always", "ls-remote", "--", &url];
        let err = git(None, &args).await.unwrap_err().to_string();
        assert!(err.contains("transport 'ext' not allowed"), "{err}");
        assert!(!marker.exists(), "the helper's command ran");
        let err = git(None, &["ls-remote", "--", "fd::3"]).await.unwrap_err().to_string();
        assert!(err.contains("not allowed"), "{err}");
    }

    #[test]
    fn relative_submodule_urls_resolve_against_their_parent() {
        assert_eq!(resolve_submodule_url("/srv/git/app", "../lib"), "/srv/git/lib");
        assert_eq!(resolve_submodule_url("/srv/git/app/", "./vendored"), "/srv/git/app/vendored");
        assert_eq!(resolve_submodule_url("https://h/org/app.git", "../lib.git"), "https://h/org/lib.git");
        assert_eq!(resolve_submodule_url("/srv/app", "https://h/x.git"), "https://h/x.git");
    }

    #[test]
    fn repositories_that_git_could_read_as_options_or_helpers_are_refused() {
        for ok in ["https://github.com/org/x.git", "/srv/git/x", "git@host:x.git", "file:///srv/x", "ssh://h/x"] {
            assert!(check_repo(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-uhelp", "--upload-pack=touch /tmp/x", "ext::sh -c id", "fd::3", "ftp://h/x", "a\0b", "a\nb"] {
            assert!(check_repo(bad).is_err(), "{bad:?}");
        }
        assert!(check_repo(&"a".repeat(MAX_REPO_LEN + 1)).is_err());
        assert!(check_repo("ext::x").unwrap_err().to_string().contains("transport helpers"));
    }

    #[test]
    fn commits_are_hex_object_ids() {
        for ok in ["abcd", "0123456789abcdef0123456789abcdef01234567", "f".repeat(64).as_str(), "ABCDEF12"] {
            assert!(check_commit(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "abc", "f".repeat(65).as_str(), "HEAD", "main", "--output=/tmp/x", "abcd~1", "abcd^{tree}", "ab cd"]
        {
            assert!(check_commit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn branch_names_follow_gits_rules_and_never_look_like_options() {
        for ok in ["main", "release/1.2", "fixü-分支-ünïcødé", "feature/a-b_c.d", "v1@2"] {
            assert!(check_branch(ok).is_ok(), "{ok}");
        }
        let options = ["-f", "--force"];
        let shapes =
            ["", "@", "/main", "main/", "main.", "a..b", "a//b", "a@{1}", ".hidden", "a/.b", "a.lock", "a/b.lock/c"];
        let chars = ["a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "a\nb", "a\u{1b}[2J"];
        for b in options.iter().chain(&shapes).chain(&chars) {
            assert!(check_branch(b).is_err(), "{b:?}");
        }
        assert!(check_branch(&"b".repeat(MAX_BRANCH_LEN + 1)).is_err());
    }

    fn run(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=T", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn the_recipe_is_read_at_a_commit_within_its_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        run(repo, &["init", "-q", "-b", "main"]);
        run(repo, &["commit", "-q", "--allow-empty", "-m", "none"]);
        let none = run(repo, &["rev-parse", "HEAD"]);
        std::fs::write(repo.join(RECIPE_FILE), "[[builder]]\n").unwrap();
        run(repo, &["add", "-A"]);
        run(repo, &["commit", "-q", "-m", "recipe"]);
        let with = run(repo, &["rev-parse", "HEAD"]);
        std::fs::write(repo.join(RECIPE_FILE), "#".repeat(MAX_RECIPE_BYTES + 1)).unwrap();
        run(repo, &["commit", "-q", "-am", "huge"]);
        let huge = run(repo, &["rev-parse", "HEAD"]);
        let git_dir = repo.join(".git");
        assert_eq!(recipe_at(&git_dir, &with).await.unwrap(), "[[builder]]\n");
        assert!(recipe_at(&git_dir, &none).await.unwrap_err().starts_with("no .peerbot.toml at commit"));
        assert!(recipe_at(&git_dir, &huge).await.unwrap_err().contains("limit"));
        assert!(recipe_at(&git_dir, "HEAD").await.unwrap_err().contains("not a commit id"));
        let dest = dir.path().join("checkout");
        checkout(&git_dir, &dest, &with).await.unwrap();
        assert!(dest.join(RECIPE_FILE).exists());
        assert!(checkout(&git_dir, &dest, "--orphan").await.is_err());
        // The checkout is a repository of its own that borrows the objects.
        assert_eq!(run(&dest, &["rev-parse", "HEAD"]), with);
        assert_eq!(run(&dest, &["log", "--format=%s"]), "recipe\nnone");
        assert_eq!(run(&dest, &["status", "--porcelain"]), "");
    }

    #[tokio::test]
    async fn a_mirror_that_holds_the_commit_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("origin");
        std::fs::create_dir(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        run(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let one = run(&repo, &["rev-parse", "HEAD"]);
        let data = dir.path().join("data");
        let url = repo.to_string_lossy().into_owned();
        let title = |m: PathBuf| {
            let one = one.clone();
            async move { git(Some(&m), &["show", "-s", "--format=%s", &one]).await }
        };
        let (mirror, t) = with_commit(&data, &url, &one, title).await.unwrap();
        assert!(mirror.join("HEAD").exists());
        assert_eq!(t.trim(), "one");
        // The origin goes away: a commit the mirror holds is still read, a
        // new one cannot be fetched.
        std::fs::rename(&repo, dir.path().join("gone")).unwrap();
        assert_eq!(with_commit(&data, &url, &one, title).await.unwrap().0, mirror);
        let other = "1".repeat(40);
        let read_other = |m: PathBuf| {
            let other = other.clone();
            async move { git(Some(&m), &["show", "-s", &other]).await }
        };
        let err = with_commit(&data, &url, &other, read_other).await.unwrap_err();
        assert!(format!("{err:#}").contains("fetching"), "{err:#}");
    }
}
