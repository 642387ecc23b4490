//! A node stopped cleanly starts again without reading its history: it
//! reads the few records its checkpoint names, and serves the same open
//! jobs and results. After a crash (SIGKILL) it reads the checkpoint and
//! the records that arrived after it, not the whole history either.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

/// One builder any node can build, one that needs a label nobody has: its
/// job stays open.
const RECIPE: &str = r#"
[[builder]]
name = "quick"
requires = ["os=linux"]
collapse = false
[[builder.step]]
name = "ok"
run = "true"

[[builder]]
name = "waits"
requires = ["gpu=yes"]
collapse = false
[[builder.step]]
name = "never"
run = "true"
"#;

fn jobs(n: &Node) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = n
        .get("/api/v1/jobs")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|j| (j["builder"].as_str().unwrap_or("").to_string(), j["state"].as_str().unwrap_or("").to_string()))
        .collect();
    v.sort();
    v
}

fn startup(n: &Node) -> Value {
    n.get("/api/v1/node").unwrap()["startup"].clone()
}

#[test]
fn a_clean_stop_restarts_from_its_checkpoint_and_a_crash_reads_only_what_came_after_it() {
    let root = tempfile::Builder::new().prefix("peerbot-startup-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let args = ["--watch".to_string(), watch, "--sandbox".into(), "none".into()];
    let mut n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &args).unwrap();
    for i in 0..3 {
        repo.commit(&[(".peerbot.toml", RECIPE), ("n", &format!("{i}\n"))], &format!("commit {i}")).unwrap();
        let want = i + 1;
        wait_for("the quick build", LONG, || {
            let done = jobs(&n).iter().filter(|(b, s)| b == "quick" && s == "done").count();
            (done == want).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    }
    let before = jobs(&n);
    assert_eq!(before.iter().filter(|(b, s)| b == "waits" && s == "pending").count(), 3, "{before:?}");
    let records = n.get("/api/v1/node").unwrap()["records"].as_u64().unwrap();
    assert_eq!(startup(&n)["from_checkpoint"], false, "a new node has no checkpoint");

    n.stop();
    n.start_again().unwrap();
    let s = startup(&n);
    assert_eq!(s["from_checkpoint"], true, "{s}\n{}", n.log_tail());
    // The three changes with an open job, and the node's admission.
    assert_eq!(s["records_read"], 4, "{s}");
    assert!(records > 4, "the history holds more: {records}");
    assert_eq!(jobs(&n), before);

    // One more commit built, then a crash before the next checkpoint.
    repo.commit(&[(".peerbot.toml", RECIPE), ("n", "3\n")], "commit 3").unwrap();
    wait_for("the fourth quick build", LONG, || {
        let done = jobs(&n).iter().filter(|(b, s)| b == "quick" && s == "done").count();
        (done == 4).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    let before = jobs(&n);
    n.kill();
    n.start_again().unwrap();
    let s = startup(&n);
    assert_eq!(s["from_checkpoint"], true, "{s}\n{}", n.log_tail());
    // The fourth result at least came after the last checkpoint (saved
    // every 10 s: it may have come between the fourth change and its
    // result, and then names that change as open too).
    let after = s["after_checkpoint"].as_u64().unwrap();
    assert!(after >= 1, "{s}");
    let from_checkpoint = s["records_read"].as_u64().unwrap() - after;
    assert!(from_checkpoint == 4 || (from_checkpoint == 5 && after < 2), "{s}");
    assert_eq!(jobs(&n), before);
}
