//! Builders' `schedule` and `depends_on` with real nodes: three nodes
//! build each firing of a schedule once, and a dependent builder waits for
//! its dependency's result and is skipped when it failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(180);

/// A firing every 10 s (six fields: seconds first).
const SCHEDULED: &str = r#"
[[builder]]
name = "tick"
schedule = "*/10 * * * * *"
[[builder.step]]
run = "echo scheduled build of $PEERBOT_COMMIT"
"#;

fn results(n: &Node, builder: &str) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?builder={builder}&limit=200"))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Result ids by job.
fn by_job(results: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in results {
        m.entry(r["job"].as_str().unwrap().to_string()).or_default().push(r["id"].as_str().unwrap().to_string());
    }
    m
}

#[test]
fn three_nodes_build_each_firing_of_a_schedule_exactly_once() {
    let root = tempfile::Builder::new().prefix("peerbot-schedule-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let head = repo.commit(&[(".peerbot.toml", SCHEDULED)], "a scheduled builder").unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let dir = |d: &str| root.path().join(d);
    let watch = format!("{}#main", repo.path().display());
    let mut a_args = vec!["--watch".to_string(), watch, "--sandbox".into(), "none".into()];
    a_args.extend(keeper.admit(&dir("a"), &[]).unwrap());
    let a = Node::start(Path::new(BIN), "A", &dir("a"), &a_args).unwrap();
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let mut nodes = vec![a];
    for name in ["B", "C"] {
        let d = dir(&name.to_lowercase());
        let mut args = ["--bootstrap", &nodes[0].multiaddr(), "--allow-repo", &allow, "--sandbox", "none"]
            .map(String::from)
            .to_vec();
        args.extend(keeper.admit(&d, &[]).unwrap());
        nodes.push(Node::start(Path::new(BIN), name, &d, &args).unwrap());
    }
    // Four firings built on A: the first three are long over by the time
    // the fourth is, and every node must hold the same single result of each.
    let jobs: Vec<String> = wait_for("four firings built on A", LONG, || {
        let m = by_job(&results(&nodes[0], "tick"));
        (m.len() >= 4).then(|| m.into_keys().collect())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].log_tail()));
    let firings: Vec<Value> = {
        let r = results(&nodes[0], "tick");
        let mut by_start: Vec<Value> =
            r.into_iter().filter(|r| jobs.contains(&r["job"].as_str().unwrap().into())).collect();
        by_start.sort_by_key(|r| r["started_ms"].as_u64().unwrap());
        by_start
    };
    let early: BTreeSet<String> = firings.iter().take(3).map(|r| r["job"].as_str().unwrap().to_string()).collect();
    assert_eq!(early.len(), 3, "three different firings: {firings:?}");
    for n in &nodes {
        let seen = wait_for(&format!("the three firings' results on {}", n.name), LONG, || {
            let m = by_job(&results(n, "tick"));
            early.iter().all(|j| m.contains_key(j)).then_some(m)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
        for j in &early {
            assert_eq!(seen[j].len(), 1, "firing job {j}: one build, on {}: {seen:?}", n.name);
        }
    }
    for r in firings.iter().take(3) {
        assert_eq!(r["commit"], head.as_str(), "the branch head is built: {r}");
        assert_eq!(r["status"], "success", "{r}");
    }
    // The changes behind them say why: the schedule, with the firing time,
    // one announcement per firing, a whole multiple of 10 s, before the build.
    let changes = nodes[1].get("/api/v1/changes?limit=200").unwrap();
    let scheduled: Vec<&Value> = changes.as_array().unwrap().iter().filter(|c| c["reason"] == "schedule").collect();
    for r in firings.iter().take(3) {
        let job = r["job"].as_str().unwrap();
        let of_job: Vec<&&Value> =
            scheduled.iter().filter(|c| c["jobs"].as_array().unwrap().iter().any(|j| j["job"] == job)).collect();
        assert_eq!(of_job.len(), 1, "one scheduled change for {job}: {changes}");
        let at = of_job[0]["firing_ms"].as_u64().unwrap();
        assert_eq!(at % 10_000, 0, "{}", of_job[0]);
        assert!(r["started_ms"].as_u64().unwrap() >= at, "built after its firing: {r}");
    }
}

const DEPENDS: &str = r#"
[[builder]]
name = "build"
[[builder.step]]
run = "sleep 1; test -f ok"

[[builder]]
name = "test"
depends_on = ["build"]
[[builder.step]]
run = "echo testing"
"#;

#[test]
fn a_dependent_builder_waits_for_its_dependency_and_is_skipped_when_it_fails() {
    let root = tempfile::Builder::new().prefix("peerbot-depends-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let good = repo.commit(&[(".peerbot.toml", DEPENDS), ("ok", "")], "passes").unwrap();
    let path = repo.path().display().to_string();
    // Two executors: without the dependency both builds would start at once.
    let args = ["--watch", &format!("{path}#main"), "--allow-repo", &path, "--sandbox", "none", "--executors", "2"]
        .map(String::from)
        .to_vec();
    let n = Node::start(Path::new(BIN), "deps", &root.path().join("n"), &args).unwrap();

    let build = n.build_of(&good, "build");
    let test = n.build_of(&good, "test");
    assert_eq!(build["status"], "success", "{build}");
    assert_eq!(test["status"], "success", "{test}");
    assert!(
        test["started_ms"].as_u64().unwrap() >= build["ended_ms"].as_u64().unwrap(),
        "test starts after build's result: {build} {test}"
    );

    let bad = repo.commit_as("Alice Example <alice@example.org>", &[], &["ok"], "fails").unwrap();
    let build = n.build_of(&bad, "build");
    assert_eq!(build["status"], "failure", "{build}");
    let test = n.build_of(&bad, "test");
    assert_eq!(test["status"], "cancelled", "{test}");
    assert_eq!(test["error"], "skipped: dependency \"build\" ended failure", "{test}");
    assert_eq!(test["steps"].as_array().unwrap().len(), 0, "nothing ran: {test}");
}
