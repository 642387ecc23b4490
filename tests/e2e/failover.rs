//! Claims that survive failure, with real processes: the node building a
//! long job is killed with SIGKILL, another node rebuilds it; a node
//! restarted mid-claim loses no job; force and cancel from the CLI.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const RECIPE: &str = r#"
[[builder]]
name = "long"
requires = ["os=linux"]
[[builder.step]]
name = "work"
run = "echo start; sleep 4; echo finished"
"#;

fn job_of(n: &Node, commit: &str) -> Option<Value> {
    let jobs = n.get("/api/v1/jobs").ok()?;
    jobs.as_array()?.iter().find(|j| j["commit"] == commit).cloned()
}

fn wait_job<T>(n: &Node, what: &str, commit: &str, f: impl Fn(&Value) -> Option<T>) -> T {
    wait_for(&format!("{what} on {}", n.name), LONG, || job_of(n, commit).as_ref().and_then(&f))
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()))
}

fn success_results(n: &Node, commit: &str) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?commit={commit}")).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

#[test]
fn killed_claimant_job_is_rebuilt_and_restarted_claimant_loses_nothing() {
    let root = tempfile::Builder::new().prefix("peerbot-failover-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    // Node settings from a config file: flags and environment override it.
    let config = root.path().join("node.toml");
    std::fs::write(&config, "lease_secs = 3\nclaim_stagger_ms = 500\n").unwrap();
    let common = vec!["--config".to_string(), config.to_string_lossy().into_owned()];
    let watch = format!("{}#main", repo.path().display());
    let mut extra = common.clone();
    extra.extend(["--watch".to_string(), watch]);
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    // B cancels a job A announced: its admission makes it an admin.
    let admitted = |dir: &str, mut extra: Vec<String>| {
        let labels: &[&str] = if dir == "b" { &["role=admin"] } else { &[] };
        extra.extend(keeper.admit(&root.path().join(dir), labels).unwrap());
        extra
    };
    let a = Node::start(Path::new(BIN), "A", &root.path().join("a"), &admitted("a", extra)).unwrap();
    let mut extra = common.clone();
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    extra.extend(["--bootstrap".to_string(), a.multiaddr(), "--allow-repo".into(), allow]);
    let mut nodes = vec![a];
    nodes.push(Node::start(Path::new(BIN), "B", &root.path().join("b"), &admitted("b", extra.clone())).unwrap());
    nodes.push(Node::start(Path::new(BIN), "C", &root.path().join("c"), &admitted("c", extra)).unwrap());
    for n in &nodes {
        wait_for("peers", LONG, || (n.get("/api/v1/node").ok()?["peers_live"].as_u64()? >= 2).then_some(())).unwrap();
    }

    // 1. Kill -9 the node building a long job.
    let c1 = repo.commit(&[(".peerbot.toml", RECIPE)], "long job").unwrap();
    let holder = wait_job(&nodes[0], "the job running", &c1, |j| {
        (j["state"] == "running").then(|| j["claim"]["by"].as_str().unwrap().to_string())
    });
    let victim = nodes.iter().position(|n| n.peer_id() == holder).unwrap();
    nodes[victim].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    for &i in &survivors {
        let n = &nodes[i];
        let results = wait_for(&format!("a result for {c1} on {}", n.name), LONG, || {
            let r = success_results(n, &c1);
            (!r.is_empty()).then_some(r)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0]["status"], "success");
        // With 3 s leases on a loaded machine a later attempt may also be
        // lost to a late renewal; the first one died with its node.
        assert!(results[0]["attempt"].as_u64().unwrap() >= 1, "the first attempt died with its node");
        assert_ne!(results[0]["signer"], holder.as_str());
        // The lost first attempt is on record: seen expiring here, or taken
        // over by the other survivor before this node's own expiry came.
        let job = job_of(n, &c1).unwrap();
        let lost = job["lost_attempts"].as_array().unwrap();
        assert!(
            lost.iter().any(|l| l["attempt"] == 0
                && l["by"] == holder.as_str()
                && (l["reason"] == "lease expired" || l["reason"].as_str().unwrap_or("").starts_with("taken over"))),
            "{job}"
        );
    }
    nodes[victim].restart().unwrap();

    // 2. Restart a node in the middle of its claim: the job is not lost.
    let c2 = repo.commit(&[("README", "y\n")], "second long job").unwrap();
    let holder = wait_job(&nodes[survivors[0]], "the second job running", &c2, |j| {
        (j["state"] == "running").then(|| j["claim"]["by"].as_str().unwrap().to_string())
    });
    let restarted = nodes.iter().position(|n| n.peer_id() == holder).unwrap();
    nodes[restarted].restart().unwrap();
    for n in &nodes {
        let results = wait_for(&format!("a result for {c2} on {}", n.name), LONG, || {
            let r = success_results(n, &c2);
            (!r.is_empty()).then_some(r)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(results[0]["status"], "success");
        assert!(results[0]["attempt"].as_u64().unwrap() >= 1);
        let job = job_of(n, &c2).unwrap();
        assert!(!job["lost_attempts"].as_array().unwrap().is_empty(), "{job}");
    }

    // 3. Cancel a running build from any node: recorded as cancelled everywhere.
    let c3 = repo.commit(&[("README", "z\n")], "third").unwrap();
    let job = wait_job(&nodes[0], "the third job running", &c3, |j| {
        (j["state"] == "running").then(|| j["job"].as_str().unwrap().to_string())
    });
    let out = nodes[1].cli(&["cancel", &job[..12], "--reason", "not wanted"]).unwrap();
    assert!(out.contains(&job), "{out}");
    for n in &nodes {
        let r = wait_for(&format!("the cancelled result on {}", n.name), LONG, || {
            let r = success_results(n, &c3);
            (!r.is_empty()).then_some(r)
        })
        .unwrap();
        assert_eq!(r[0]["status"], "cancelled", "{r:?}");
        let j = job_of(n, &c3).unwrap();
        assert_eq!(j["cancelled"]["reason"], "not wanted");
    }

    // 4. Force a rebuild of the first commit from the CLI: a new job, built once.
    let out = nodes[2]
        .cli(&["force", "--repo", repo.path().to_str().unwrap(), "--commit", &c1[..8], "--reason", "check"])
        .unwrap();
    assert!(out.contains("forced change"), "{out}");
    for n in &nodes {
        wait_for(&format!("the forced build on {}", n.name), LONG, || {
            let r = success_results(n, &c1);
            (r.len() == 2).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    }
    // Bad input is an error naming what was wrong.
    let err = nodes[0].cli(&["cancel", "zz"]).unwrap_err().to_string();
    assert!(err.contains("not a job id"), "{err}");
}
