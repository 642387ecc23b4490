//! Blame by commit ancestry on a real node and a real repository: three
//! commits built once (collapsed) blame all three authors; a fix names its
//! author; the next breaker alone is blamed alone; a forced rebuild of an
//! old failing commit moves nothing.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

/// The tree-stable wait lets commits pushed together collapse into one
/// build of the newest.
const RECIPE: &str = r#"
[[builder]]
name = "check"
tree_stable_secs = 2
collapse = true
[[builder.step]]
name = "check"
run = "test ! -e broken"
"#;

const CAROL: &str = "Carol Example <carol@example.org>";
const ALICE: &str = "Alice Example <alice@example.org>";
const BOB: &str = "Bob Example <bob@example.org>";
const MALLORY: &str = "Mallory Example <mallory@example.org>";

/// A result of `commit` other than those in `except`, with its blame,
/// once it is stored.
fn build_of(n: &Node, commit: &str, except: &[&Value]) -> Value {
    let found = wait_for(&format!("a result for {commit}"), LONG, || {
        let list = n.get(&format!("/api/v1/builds?commit={commit}")).ok()?;
        let b = list.as_array()?.iter().find(|b| !except.contains(&&b["id"]))?;
        n.get(&format!("/api/v1/builds/{}", b["id"].as_str()?)).ok()
    });
    found.unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()))
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

#[test]
fn blame_follows_commit_ancestry_and_forced_rebuilds_move_nothing() {
    let root = tempfile::Builder::new().prefix("peerbot-blame-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let green = repo.commit_as(CAROL, &[(".peerbot.toml", RECIPE)], &[], "recipe").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let args = ["--watch".to_string(), watch, "--sandbox".into(), "none".into()];
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &args).unwrap();
    let b = build_of(&n, &green, &[]);
    assert_eq!(b["status"], "success");
    assert_eq!(b["blamelist"], json!([]));

    // Three authors push together: one build, of the newest, fails.
    repo.commit_as(ALICE, &[("a", "1\n")], &[], "alice's change").unwrap();
    repo.commit_as(BOB, &[("b", "1\n")], &[], "bob's change").unwrap();
    let broken = repo.commit_as(MALLORY, &[("broken", "1\n")], &[], "mallory's change").unwrap();
    let red = build_of(&n, &broken, &[]);
    assert_eq!(red["status"], "failure");
    assert_eq!(names(&red["blamelist"]), [MALLORY, BOB, ALICE], "{red}");
    assert_eq!(red["broke_build"], true);
    assert_eq!(red["first_tested"]["commits"].as_array().unwrap().len(), 3);
    assert_eq!(red["previous_build"]["id"], b["id"]);

    let fix = repo.commit_as(BOB, &[], &["broken"], "fix").unwrap();
    let fixed = build_of(&n, &fix, &[]);
    assert_eq!(fixed["status"], "success");
    assert_eq!(names(&fixed["fixed_by"]), [BOB]);

    let again = repo.commit_as(MALLORY, &[("broken", "2\n")], &[], "break it again").unwrap();
    let red2 = build_of(&n, &again, &[]);
    assert_eq!(names(&red2["blamelist"]), [MALLORY], "{red2}");

    // Rebuild the old failing commit: judged by nothing, and nothing moves.
    let body = json!({"repo": repo.path().display().to_string(), "commit": broken, "builder": "check"}).to_string();
    let (code, v) = n.request("POST", "/api/v1/force", Some(&body));
    assert_eq!(code, 201, "{v}");
    let forced = build_of(&n, &broken, &[&red["id"]]);
    assert_eq!(forced["blamelist"], json!([]));
    assert_eq!(forced["previous_build"], Value::Null);
    let red_now = n.get(&format!("/api/v1/builds/{}", red["id"].as_str().unwrap())).unwrap();
    assert_eq!(names(&red_now["blamelist"]), [MALLORY, BOB, ALICE]);
    let red2_now = n.get(&format!("/api/v1/builds/{}", red2["id"].as_str().unwrap())).unwrap();
    assert_eq!(names(&red2_now["blamelist"]), [MALLORY]);
    assert_eq!(red2_now["previous_build"]["id"], fixed["id"]);
}
