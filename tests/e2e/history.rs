//! History everywhere, with real processes: a node that joins after 200
//! builds serves all 200 results and their logs; a node killed with
//! SIGKILL while it catches up ends, after a restart, with the whole
//! history and a database that opens.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(180);
const BUILDS: usize = 200;

const RECIPE: &str = r#"
[[builder]]
name = "unit"
requires = ["os=linux"]
[[builder.step]]
name = "test"
run = "cat n.txt; echo 'test result: ok. 1 passed; 0 failed; 0 ignored'"
"#;

fn results(n: &Node) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?limit={}", BUILDS + 50)).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn ids(n: &Node) -> BTreeSet<String> {
    results(n).iter().filter_map(|r| r["id"].as_str().map(str::to_string)).collect()
}

fn record_count(n: &Node) -> u64 {
    n.get("/api/v1/node").ok().and_then(|v| v["records"].as_u64()).unwrap_or(0)
}

#[test]
fn late_joiner_and_killed_syncer_end_with_the_whole_history() {
    let root = tempfile::Builder::new().prefix("peerbot-history-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[(".peerbot.toml", RECIPE), ("n.txt", "0\n")], "start").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let fast = ["--lease-secs", "6", "--executors", "4", "--log-replicas", "1", "--allow-repo", &allow];
    let fast = fast.map(String::from).to_vec();
    let mut extra = fast.clone();
    extra.extend(["--watch".to_string(), watch]);
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let admitted = |dir: &str, mut extra: Vec<String>| {
        extra.extend(keeper.admit(&root.path().join(dir), &[]).unwrap());
        extra
    };
    let a = Node::start(Path::new(BIN), "A", &root.path().join("a"), &admitted("a", extra)).unwrap();
    let mut extra = fast.clone();
    extra.extend(["--bootstrap".to_string(), a.multiaddr()]);
    let b = Node::start(Path::new(BIN), "B", &root.path().join("b"), &admitted("b", extra)).unwrap();
    wait_for("A's first build", LONG, || (results(&a).len() == 1).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail()));

    // 200 commits, 200 builds (the first commit's build makes 201).
    for i in 1..=BUILDS {
        repo.commit(&[("n.txt", &format!("{i}\n"))], &format!("commit {i}")).unwrap();
    }
    let total = BUILDS + 1;
    for n in [&a, &b] {
        wait_for(&format!("{total} results on {}", n.name), LONG, || (results(n).len() >= total).then_some(()))
            .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    }
    // With 6 s leases on a loaded machine a lease may lapse and a job be
    // built twice (failover, by design): the history to catch up is what
    // A and B agree on, every job of it built.
    let want = wait_for("A and B to hold the same results", LONG, || {
        let (x, y) = (ids(&a), ids(&b));
        (x == y && record_count(&a) == record_count(&b)).then_some(x)
    })
    .unwrap();
    let jobs: BTreeSet<String> = results(&a).iter().filter_map(|r| r["job"].as_str().map(str::to_string)).collect();
    assert_eq!(jobs.len(), total, "every commit built");
    let want_records = record_count(&a);

    // A late joiner with an empty data dir catches up the whole history.
    let mut extra = fast.clone();
    extra.extend(["--bootstrap".to_string(), b.multiaddr()]);
    let c = Node::start(Path::new(BIN), "C", &root.path().join("c"), &admitted("c", extra)).unwrap();
    wait_for("C to catch up", LONG, || (ids(&c) == want).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail()));
    let node = c.get("/api/v1/node").unwrap();
    assert_eq!(node["records"], want_records + 1, "A's records and C's own admission");
    wait_for("C to report it is caught up", LONG, || {
        (c.get("/api/v1/node").ok()?["sync"]["caught_up"] == true).then_some(())
    })
    .unwrap();
    // Every result's signature checks out on C, and logs are readable there.
    for r in results(&c).iter().step_by(20) {
        let id = r["id"].as_str().unwrap();
        let d = c.get(&format!("/api/v1/builds/{id}")).unwrap();
        assert_eq!(d["verified"], true);
        let log = c.get_text(&format!("/api/v1/builds/{id}/steps/test/log")).unwrap_or_else(|e| {
            panic!(
                "{e:#}\n{:?}\n{}",
                c.request("GET", &format!("/api/v1/builds/{id}/steps/test/log"), None),
                c.log_tail()
            )
        });
        assert!(log.contains("1 passed"), "{log}");
    }

    // A node killed with SIGKILL while catching up a larger history ends,
    // restarted, with all of it. The history is synthetic signed records
    // written straight into a stopped node's store.
    let s_dir = root.path().join("s");
    let out = std::process::Command::new(BIN)
        .args(["seed-history", "--results", "30000", "--data-dir"])
        .arg(&s_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = Node::start(Path::new(BIN), "S", &s_dir, &admitted("s", fast.clone())).unwrap();
    let total = record_count(&s);
    assert_eq!(total, 60_001, "the seeded history and S's admission");
    let mut extra = fast.clone();
    extra.extend(["--bootstrap".to_string(), s.multiaddr()]);
    let mut d = Node::start(Path::new(BIN), "D", &root.path().join("d"), &admitted("d", extra)).unwrap();
    let total = total + 1; // D's own admission
    let mut kills = 0;
    for _ in 0..3 {
        let had = wait_for("D to be part-way through catching up", LONG, || {
            let n = record_count(&d);
            // More than its own admission: some of S's history.
            (n > 1).then_some(n)
        })
        .unwrap();
        if had >= total {
            break;
        }
        d.kill();
        kills += 1;
        eprintln!("D killed with {had} of {total} records stored");
        d.restart().unwrap();
    }
    assert!(kills > 0, "D caught up before it could be killed part-way");
    wait_for("D to catch up after the kills", LONG, || (record_count(&d) >= total).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    assert_eq!(record_count(&d), total);
    // Restarted once more, its database opens and still holds everything.
    d.restart().unwrap();
    assert_eq!(record_count(&d), total);
    assert_eq!(results(&d).len(), results(&s).len());
}
