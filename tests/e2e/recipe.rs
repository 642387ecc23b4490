//! A node builds only the repositories its policy allows.
//!
//! 1. A node watching a local repository builds its commits.
//! 2. A job of a local repository is not built by a node whose policy does
//!    not list it, even while that node is free and claims other work; a
//!    node that lists it builds it.
//!
//! Steps run without a sandbox here (`--sandbox none`), so that a step that
//! ran would leave its marker file where the test looks.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

fn start(name: &str, dir: &Path, args: &[String]) -> Node {
    let mut all = vec!["--sandbox".to_string(), "none".into()];
    all.extend(args.iter().cloned());
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
fn a_node_builds_the_commits_of_a_local_repository_it_watches() {
    let root = tempfile::Builder::new().prefix("peerbot-recipe-").tempdir().unwrap();
    let marker = root.path().join("built");
    let repo = GitRepo::new().unwrap();
    let run = format!("touch {}", marker.display());
    let commit = repo.commit(&[(".peerbot.toml", &recipe("unit", "os=linux", &run, 0))], "a recipe").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let a = start("A", &root.path().join("a"), &["--watch".into(), watch]);

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

#[test]
fn a_local_repository_is_built_only_by_a_node_whose_policy_lists_it() {
    let root = tempfile::Builder::new().prefix("peerbot-recipe-").tempdir().unwrap();
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
    let a = start("A", &root.path().join("a"), &a_args.map(String::from));
    // B builds, but only the other repository.
    let b_args = ["--bootstrap", &a.multiaddr(), "--label", "role=builder", "--allow-repo", &other_path];
    let b = start("B", &root.path().join("b"), &b_args.map(String::from));
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
    let c = start("C", &root.path().join("c"), &c_args.map(String::from));
    let r = first_result(&c, &format!("commit={job_commit}"));
    assert_eq!((r["status"].as_str(), r["signer"].as_str()), (Some("success"), Some(c.peer_id().as_str())), "{r}");
    assert!(local_marker.exists());
}
