//! `peerbot try` on a dirty work tree: the patch (an edited file, an
//! untracked file, an unpushed commit and an edited recipe) is signed by
//! the node that takes it, fetched by the node that builds it, and built
//! on top of the upstream commit; the branch's history and blame are left
//! as they were, and bad patches are refused with a reason.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const RECIPE: &str = r#"
[[builder]]
name = "check"
requires = ["runner=yes"]
[[builder.step]]
name = "show"
run = "cat greeting.txt new.txt"
"#;

const EXTRA: &str = r#"
[[builder]]
name = "extra"
requires = ["runner=yes"]
[[builder.step]]
name = "more"
run = "cat committed.txt"
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Bob Example", "-c", "user.email=bob@example.org", "-c", "commit.gpgsign=false"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn post_patch(n: &Node, query: &str, patch: &[u8], token: bool) -> (u16, Value) {
    let mut req = ureq::post(&format!("{}/api/v1/try?{query}", n.url())).timeout(Duration::from_secs(90));
    if token {
        req = req.set("authorization", &format!("Bearer {}", n.api_token()));
    }
    match req.send_bytes(patch) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[test]
fn a_dirty_work_tree_is_built_as_a_try_and_the_branch_history_is_untouched() {
    let root = tempfile::Builder::new().prefix("peerbot-try-").tempdir().unwrap();
    let origin = GitRepo::new().unwrap();
    let base = origin.commit(&[(".peerbot.toml", RECIPE), ("greeting.txt", "hello from main\n")], "base").unwrap();
    let allow = origin.path().canonicalize().unwrap().display().to_string();

    // A takes the try and signs it (admitted with role=try) but builds
    // nothing (no runner label); B builds, so it must fetch the patch from A.
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let (da, db) = (root.path().join("a"), root.path().join("b"));
    let mut a_args = vec!["--watch".to_string(), format!("{allow}#main"), "--sandbox".into(), "none".into()];
    a_args.extend(keeper.admit(&da, &["role=try"]).unwrap());
    let a = Node::start(Path::new(BIN), "A", &da, &a_args).unwrap();
    let mut b_args =
        ["--bootstrap", &a.multiaddr(), "--allow-repo", &allow, "--sandbox", "none"].map(String::from).to_vec();
    b_args.extend(keeper.admit(&db, &["runner=yes"]).unwrap());
    let b = Node::start(Path::new(BIN), "B", &db, &b_args).unwrap();

    // The branch's own build fails: new.txt is not committed.
    let main_build = a.build_of(&base, "check");
    assert_eq!(main_build["status"], "failure", "{main_build}");
    assert_eq!(main_build["signer"], b.peer_id().as_str(), "B builds");

    // A work tree with an edited file, a new untracked file, an unpushed
    // commit and a recipe with one more builder.
    let work = root.path().join("work");
    git(root.path(), &["clone", "-q", &allow, work.to_str().unwrap()]);
    std::fs::write(work.join("committed.txt"), "from an unpushed commit\n").unwrap();
    git(&work, &["add", "committed.txt"]);
    git(&work, &["commit", "-q", "-m", "local only"]);
    std::fs::write(work.join("greeting.txt"), "hello from the work tree\n").unwrap();
    std::fs::write(work.join("new.txt"), "an untracked file\n").unwrap();
    std::fs::write(work.join(".peerbot.toml"), format!("{RECIPE}{EXTRA}")).unwrap();
    let status_before = git(&work, &["status", "--porcelain"]);

    let out = a.cli(&["try", "--wait", "--dir", work.to_str().unwrap()]).unwrap();
    assert!(out.contains("check: success"), "{out}");
    assert!(out.contains("extra: success"), "{out}");
    assert!(out.contains("on try:main"), "{out}");
    assert_eq!(git(&work, &["status", "--porcelain"]), status_before, "the user's index is left alone");

    // The try's results, on the try branch: built with the patch applied.
    let tries = wait_for("both try results on A", LONG, || {
        let v = a.get("/api/v1/builds?branch=try:main").ok()?;
        (v.as_array()?.len() == 2).then_some(v)
    })
    .unwrap();
    let check = tries.as_array().unwrap().iter().find(|r| r["builder"] == "check").unwrap();
    assert_eq!(check["commit"], base.as_str(), "built on top of the upstream commit");
    assert_eq!(check["try"], true, "a try says so wherever results are listed");
    let id = check["id"].as_str().unwrap();
    let log = a.get_text(&format!("/api/v1/builds/{id}/steps/show/log")).unwrap();
    assert_eq!(log, "hello from the work tree\nan untracked file\n");
    let page = a.get_text(&format!("/builds/{id}")).unwrap();
    assert!(page.contains("a try build"), "the page says it is a try");
    assert!(!page.contains("rebuild"), "a try has no rebuild button");
    let job = a.get(&format!("/api/v1/jobs/{}", check["job"].as_str().unwrap())).unwrap();
    assert_eq!(job["try"], true, "{job}");
    let change = a.get("/api/v1/changes?limit=1").unwrap()[0].clone();
    assert_eq!(change["try"], true, "{change}");
    let patch = a.get_text(&format!("/api/v1/changes/{}/patch", change["id"].as_str().unwrap())).unwrap();
    assert!(patch.contains("+an untracked file"), "{patch}");

    // The branch's history, console and blame are as they were.
    let main = a.get("/api/v1/builds?branch=main").unwrap();
    assert_eq!(main.as_array().unwrap().len(), 1, "{main}");
    let again = a.get(&format!("/api/v1/builds/{}", main_build["id"].as_str().unwrap())).unwrap();
    for k in ["broke_build", "blamelist", "fixed_by", "previous_build"] {
        assert_eq!(again[k], main_build[k], "{k}");
    }
    let console = a.get("/api/v1/console").unwrap();
    assert!(!console.to_string().contains("try:main"), "{console}");
    let builder = a.get("/api/v1/builders/check").unwrap();
    assert_eq!(builder["builds"].as_array().unwrap().len(), 1, "{builder}");

    // Bad tries are refused with a reason, and nothing is announced.
    let changes = a.get("/api/v1/changes?limit=50").unwrap().as_array().unwrap().len();
    let q = format!("repo={allow}&branch=main&commit={base}");
    let (code, v) = post_patch(&a, &q, patch.as_bytes(), false);
    assert_eq!(code, 401, "{v}");
    let broken = patch.replace("hello from main", "hello from elsewhere");
    let (code, v) = post_patch(&a, &q, broken.as_bytes(), true);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not apply"), "{v}");
    let (code, v) = post_patch(&a, &q, &vec![b'x'; 5 << 20], true);
    assert_eq!(code, 413, "{v}");
    let (code, v) = post_patch(&a, &format!("{q}&builders=nope"), patch.as_bytes(), true);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no builder \"nope\""), "{v}");
    assert_eq!(a.get("/api/v1/changes?limit=50").unwrap().as_array().unwrap().len(), changes);

    // A patched recipe without builders has nothing to build.
    std::fs::write(work.join(".peerbot.toml"), "# nothing yet\n").unwrap();
    let err = a.cli(&["try", "--dir", work.to_str().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("no [[builder]] is defined"), "{err}");
    assert_eq!(a.get("/api/v1/changes?limit=50").unwrap().as_array().unwrap().len(), changes);

    // B was not admitted to sign tries: it refuses one, and so would every
    // node refuse a try change B signed.
    let (code, v) = post_patch(&b, &q, patch.as_bytes(), true);
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("role=try"), "{v}");

    // A clean work tree has nothing to try.
    git(&work, &["stash", "-u", "-q"]);
    git(&work, &["reset", "-q", "--hard", "@{upstream}"]);
    let err = a.cli(&["try", "--dir", work.to_str().unwrap()]).unwrap_err().to_string();
    assert!(err.contains("nothing to try"), "{err}");
}
