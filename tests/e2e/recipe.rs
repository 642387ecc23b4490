//! The repository decides what runs, and a node builds only the
//! repositories its policy allows.
//!
//! 1. A node watching a repository builds a commit with the steps of that
//!    commit's `.peerbot.toml`.
//! 2. A node whose git says a commit holds another recipe (its mirror has a
//!    replace ref: the commit reads as another one) announces that commit
//!    with steps of its own. The node that builds it reads the recipe from
//!    its own mirror, runs nothing, and publishes an exception that names
//!    the difference.
//! 3. A job of a local repository is not built by a node whose policy does
//!    not list it, even while that node is free and claims other work; a
//!    node that lists it builds it.
//!
//! Steps run without a sandbox here (`--sandbox none`), so that a step that
//! ran would leave its marker file where the test looks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

/// Starts a node admitted to the test's cluster with the labels its
/// `--label` flags name.
fn start(keeper: &Keeper, name: &str, dir: &Path, args: &[String]) -> Node {
    let mut all = vec!["--sandbox".to_string(), "none".into()];
    let mut labels = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.clone().next()) {
            ("--label", Some(l)) => {
                labels.push(l.as_str());
                it.next();
            }
            _ => all.push(a.clone()),
        }
    }
    all.extend(keeper.admit(dir, &labels).unwrap());
    Node::start(Path::new(BIN), name, dir, &all).unwrap()
}

/// A recipe with one builder `name` that needs `role=builder` (unless
/// `requires` says otherwise) and one step "build" running `run`.
fn recipe(name: &str, requires: &str, run: &str, priority: i32) -> String {
    format!(
        "[[builder]]\nname = \"{name}\"\nrequires = [\"{requires}\"]\npriority = {priority}\n\
         [[builder.step]]\nname = \"build\"\nrun = \"{run}\"\ntimeout_secs = 120\n"
    )
}

fn results(n: &Node, query: &str) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?{query}")).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn first_result(n: &Node, query: &str) -> Value {
    wait_for(&format!("a result for {query} on {}", n.name), LONG, || results(n, query).first().cloned())
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()))
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap().display().to_string()
}

#[test]
fn a_node_builds_a_watched_commit_with_the_steps_of_its_own_recipe() {
    let root = tempfile::Builder::new().prefix("peerbot-recipe-").tempdir().unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let marker = root.path().join("built");
    let repo = GitRepo::new().unwrap();
    let run = format!("touch {}", marker.display());
    let commit = repo.commit(&[(".peerbot.toml", &recipe("unit", "os=linux", &run, 0))], "a recipe").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let a = start(&keeper, "A", &root.path().join("a"), &["--watch".into(), watch]);

    // A local path: built because this node watches it, with no --allow-repo.
    let node = a.get("/api/v1/node").unwrap();
    let policy = &node["builds"]["repos"];
    assert_eq!(policy["remote_by_default"], true, "{node}");
    assert_eq!(policy["allow"], serde_json::json!([]), "{node}");
    assert_eq!(policy["watched"], serde_json::json!([canonical(repo.path())]), "{node}");

    let r = first_result(&a, &format!("commit={commit}"));
    assert_eq!(r["status"], "success", "{r}\n{}", a.log_tail());
    assert_eq!(r["steps"][0]["name"], "build", "{r}");
    assert_eq!(r["steps"][0]["command"], run.as_str(), "{r}");
    assert!(marker.exists(), "the commit's step ran");
}

/// The only bare repository under `data/repos`: a node's mirror.
fn mirror_of(data: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(data.join("repos")).ok()?.filter_map(|e| Some(e.ok()?.path()));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

fn git_in(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn an_announcement_whose_steps_differ_from_the_commit_runs_nothing_and_ends_as_an_exception() {
    let root = tempfile::Builder::new().prefix("peerbot-recipe-").tempdir().unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let (honest_marker, forged_marker) = (root.path().join("honest-ran"), root.path().join("forged-ran"));
    let honest = format!("touch {}", honest_marker.display());
    let forged = format!("touch {}", forged_marker.display());
    let repo = GitRepo::new().unwrap();
    let c0 = repo.commit(&[("README", "x\n")], "start").unwrap();
    let path = canonical(repo.path());

    // A watches the repository but has no role=builder label: it announces
    // and does not build. B builds, and allows the repository.
    let a_dir = root.path().join("a");
    let a = start(&keeper, "A", &a_dir, &["--watch".into(), format!("{path}#main")]);
    let b_args = ["--bootstrap", &a.multiaddr(), "--label", "role=builder", "--allow-repo", &path];
    let b = start(&keeper, "B", &root.path().join("b"), &b_args.map(String::from));

    // The commit to build (its recipe runs `honest`), and on another branch
    // a commit whose recipe runs `forged`.
    repo.git(&["checkout", "-q", "-b", "side"]).unwrap();
    let commit = repo.commit(&[(".peerbot.toml", &recipe("unit", "role=builder", &honest, 0))], "honest").unwrap();
    repo.git(&["checkout", "-q", "-b", "decoy", &c0]).unwrap();
    let decoy = repo.commit(&[(".peerbot.toml", &recipe("unit", "role=builder", &forged, 0))], "decoy").unwrap();
    repo.git(&["checkout", "-q", "main"]).unwrap();

    // A's mirror fetches both branches; then A's git is made to read the
    // commit as the decoy, and main moves to the commit.
    let mirror = wait_for("A's mirror to hold both commits", LONG, || {
        let m = mirror_of(&a_dir)?;
        let has = |c: &str| git_in(&m, &["cat-file", "-e", &format!("{c}^{{commit}}")]).is_ok();
        (has(&commit) && has(&decoy)).then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail()));
    wait_for("the replace ref in A's mirror", LONG, || git_in(&mirror, &["replace", &commit, &decoy]).ok()).unwrap();
    let read_by_a = git_in(&mirror, &["cat-file", "blob", &format!("{commit}:.peerbot.toml")]).unwrap();
    assert!(read_by_a.contains("forged-ran"), "{read_by_a}");
    repo.git(&["update-ref", "refs/heads/main", &commit]).unwrap();

    let r = first_result(&b, &format!("commit={commit}"));
    let change = wait_for("A's change", LONG, || {
        let v = a.get(&format!("/api/v1/changes?commit={commit}")).ok()?;
        v.as_array()?.first().cloned()
    })
    .unwrap();
    assert_eq!(change["announced_by"], a.peer_id().as_str(), "{change}");
    assert_eq!(r["status"], "exception", "{r}\n{}", b.log_tail());
    assert_eq!(r["signer"], b.peer_id().as_str(), "{r}");
    let want = format!(
        "recipe mismatch: the announced step \"build\" runs `{forged}`, the commit's .peerbot.toml says `{honest}`"
    );
    assert_eq!(r["error"], want.as_str(), "{r}");
    assert_eq!(r["steps"], serde_json::json!([]), "no step ran: {r}");
    assert!(!forged_marker.exists(), "the announced step ran");
    assert!(!honest_marker.exists(), "a step ran though the announcement did not match");
}

#[test]
fn a_local_repository_is_built_only_by_a_node_whose_policy_lists_it() {
    let root = tempfile::Builder::new().prefix("peerbot-recipe-").tempdir().unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let local_marker = root.path().join("local-built");
    let local = GitRepo::new().unwrap();
    let run = format!("touch {}", local_marker.display());
    // High priority: a node that could build it would take it first.
    let job_commit = local.commit(&[(".peerbot.toml", &recipe("local", "role=builder", &run, 10))], "local").unwrap();
    let other = GitRepo::new().unwrap();
    other.commit(&[("README", "x\n")], "start").unwrap();
    let (local_path, other_path) = (canonical(local.path()), canonical(other.path()));

    // A announces both repositories and builds neither (no role=builder).
    let a_args = ["--watch", &format!("{local_path}#main"), "--watch", &format!("{other_path}#main")];
    let a = start(&keeper, "A", &root.path().join("a"), &a_args.map(String::from));
    // B builds, but only the other repository.
    let b_args = ["--bootstrap", &a.multiaddr(), "--label", "role=builder", "--allow-repo", &other_path];
    let b = start(&keeper, "B", &root.path().join("b"), &b_args.map(String::from));
    let node = b.get("/api/v1/node").unwrap();
    assert_eq!(node["builds"]["repos"]["allow"], serde_json::json!([other_path]), "{node}");
    assert_eq!(node["builds"]["repos"]["remote_by_default"], false, "{node}");

    let local_job = |n: &Node| -> Option<Value> {
        let jobs = n.get("/api/v1/jobs").ok()?;
        jobs.as_array()?.iter().find(|j| j["commit"] == job_commit.as_str()).cloned()
    };
    wait_for("B to know the local job", LONG, || local_job(&b)).unwrap_or_else(|e| panic!("{e}\n{}", b.log_tail()));

    // B is free and claims the other repository's job once it exists.
    let other_commit = other.commit(&[(".peerbot.toml", &recipe("other", "role=builder", "true", 0))], "go").unwrap();
    let r = first_result(&b, &format!("commit={other_commit}"));
    assert_eq!((r["status"].as_str(), r["signer"].as_str()), (Some("success"), Some(b.peer_id().as_str())), "{r}");
    let job = local_job(&b).unwrap();
    assert_eq!(job["state"], "pending", "{job}");
    assert_eq!(job["claim"], Value::Null, "never claimed: {job}");
    assert_eq!(job["lost_attempts"], serde_json::json!([]), "never claimed: {job}");
    assert!(results(&b, &format!("commit={job_commit}")).is_empty());
    assert!(!local_marker.exists());

    // A node whose policy lists the repository builds it.
    let c_args =
        ["--bootstrap", &a.multiaddr(), "--label", "role=builder", "--allow-repo", &format!("{local_path}/../*")];
    assert!(
        Node::start(Path::new(BIN), "C0", &root.path().join("c0"), &c_args.map(String::from)).is_err(),
        "a pattern with .. is refused at start"
    );
    let c_args = ["--bootstrap", &a.multiaddr(), "--label", "role=builder", "--allow-repo", &local_path];
    let c = start(&keeper, "C", &root.path().join("c"), &c_args.map(String::from));
    let r = first_result(&c, &format!("commit={job_commit}"));
    assert_eq!((r["status"].as_str(), r["signer"].as_str()), (Some("success"), Some(c.peer_id().as_str())), "{r}");
    assert!(local_marker.exists());
}
