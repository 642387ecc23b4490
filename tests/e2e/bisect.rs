//! Automatic bisection on two real nodes and a real repository: five
//! commits land at once and are built once (collapsed); the third broke
//! the build. Bisect builds find the third, blame its author, and take at
//! most ⌈log2 5⌉ + 1 extra builds; a builder with `bisect = false` gets
//! none.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(240);

/// The tree-stable wait lets the five commits collapse into one build of
/// the newest; `quiet` fails alike but opts out of bisecting.
const RECIPE: &str = r#"
[[builder]]
name = "check"
tree_stable_secs = 2
collapse = true
[[builder.step]]
name = "check"
run = "test ! -e broken"

[[builder]]
name = "quiet"
tree_stable_secs = 2
collapse = true
bisect = false
[[builder.step]]
name = "check"
run = "test ! -e broken"
"#;

const CAROL: &str = "Carol Example <carol@example.org>";
const MALLORY: &str = "Mallory Example <mallory@example.org>";

fn wait_peers(n: &Node) {
    wait_for(&format!("{} to see a live peer", n.name), LONG, || {
        let v = n.get("/api/v1/node").ok()?;
        (v["peers_live"].as_u64()? >= 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
}

/// Every result of `builder` the node holds.
fn results(n: &Node, builder: &str) -> Vec<Value> {
    let v = n.get(&format!("/api/v1/builds?builder={builder}&limit=100")).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn five_commits_at_once_are_bisected_to_the_third_and_its_author() {
    let root = tempfile::Builder::new().prefix("peerbot-bisect-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let green = repo.commit_as(CAROL, &[(".peerbot.toml", RECIPE)], &[], "recipe").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let (da, db) = (root.path().join("a"), root.path().join("b"));
    let mut a_args = vec!["--watch".to_string(), watch, "--sandbox".into(), "none".into()];
    a_args.extend(keeper.admit(&da, &[]).unwrap());
    let a = Node::start(Path::new(BIN), "A", &da, &a_args).unwrap();
    // B builds the repository A watches: a local path, so it lists it.
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let mut b_args =
        ["--bootstrap", &a.multiaddr(), "--allow-repo", &allow, "--sandbox", "none"].map(String::from).to_vec();
    b_args.extend(keeper.admit(&db, &[]).unwrap());
    let b = Node::start(Path::new(BIN), "B", &db, &b_args).unwrap();
    wait_peers(&a);
    wait_peers(&b);
    for builder in ["check", "quiet"] {
        assert_eq!(a.build_of(&green, builder)["status"], "success");
    }

    // Five authors push together; the third adds the file the check refuses.
    let authors = [
        "Alice Example <alice@example.org>",
        "Bob Example <bob@example.org>",
        MALLORY,
        "Dave Example <dave@example.org>",
        "Erin Example <erin@example.org>",
    ];
    let mut commits = Vec::new();
    for (i, who) in authors.iter().enumerate() {
        let file = if *who == MALLORY { "broken".to_string() } else { format!("f{i}") };
        commits.push(repo.commit_as(who, &[(&file, "1\n")], &[], &format!("change {i}")).unwrap());
    }
    let head = commits.last().unwrap();
    let red = a.build_of(head, "check");
    assert_eq!(red["status"], "failure", "{red}");
    assert_eq!(red["first_tested"]["commits"].as_array().unwrap().len(), 5, "collapsed into one build: {red}");
    let red_id = red["id"].as_str().unwrap().to_string();

    // Both nodes come to the same answer from their own records.
    for n in [&a, &b] {
        let found = wait_for("the bisection to end", LONG, || {
            let v = n.get(&format!("/api/v1/builds/{red_id}")).ok()?;
            (v["bisect"]["state"] != "searching" && v["bisect"].is_object()).then_some(v)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
        let x = &found["bisect"];
        assert_eq!(x["state"], "found", "{x}");
        assert_eq!(x["first_bad"]["commit"], commits[2].as_str(), "{x}");
        assert_eq!(x["first_bad"]["author"], MALLORY);
        assert_eq!(x["good"], green.as_str());
        assert_eq!(x["max_builds"], 3);
    }

    // The bisect builds: each says whose failure it searches.
    let extra: Vec<Value> = results(&a, "check").into_iter().filter(|r| !r["bisect_of"].is_null()).collect();
    assert!((1..=4).contains(&extra.len()), "at most ⌈log2 5⌉ + 1 extra builds: {extra:?}");
    eprintln!("{} bisect build(s)", extra.len());
    for e in &extra {
        assert_eq!(e["bisect_of"]["job"], red["job"]);
        assert_eq!(e["bisect_of"]["build"], red_id.as_str());
        assert!(commits[..4].iter().any(|c| e["commit"] == c.as_str()), "only commits between: {e}");
        assert_eq!(e["blamelist"], serde_json::json!([]), "a bisect build moves no blame");
        let job = a.get(&format!("/api/v1/jobs/{}", e["job"].as_str().unwrap())).unwrap();
        assert_eq!((&job["reason"], &job["bisect_of"]), (&Value::from("bisect"), &red["job"]), "{job}");
    }
    assert_eq!(results(&a, "check").len(), 2 + extra.len());

    // The pages show the search and the bisect builds' origin.
    let page = a.get_text(&format!("/builds/{red_id}")).unwrap();
    assert!(page.contains("first failing commit") && page.contains("Mallory Example"), "{page}");
    let step = a.get_text(&format!("/builds/{}", extra[0]["id"].as_str().unwrap())).unwrap();
    assert!(step.contains("a bisect build of the failure of job"), "{step}");

    // The builder that opted out failed too, and is not bisected.
    let quiet = a.build_of(head, "quiet");
    assert_eq!(quiet["status"], "failure");
    assert!(quiet["bisect"].is_null(), "{quiet}");
    assert!(results(&a, "quiet").iter().all(|r| r["bisect_of"].is_null()));
    assert_eq!(results(&a, "quiet").len(), 2, "no extra build of the opted-out builder");
}
