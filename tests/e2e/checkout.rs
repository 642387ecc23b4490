//! A builder with `submodules = true` builds with the commit's submodules
//! checked out, each at its recorded commit from a mirror of its own
//! (inside the sandbox too, where git reads their objects); a builder
//! without it does not get them; a submodule whose repository the node's
//! policy does not allow fails the build with the reason.

use std::path::Path;

use peerbot_tests::{GitRepo, Node};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");

const RECIPE: &str = r#"
[[builder]]
name = "with"
submodules = true
[[builder.step]]
name = "show"
run = "cat vendor/lib/lib.txt && git -C vendor/lib log --format=%s -1"

[[builder]]
name = "without"
[[builder.step]]
name = "show"
run = "test ! -e vendor/lib/lib.txt && echo no submodule"
"#;

fn add_submodule(app: &GitRepo, url: &str, path: &str) {
    app.git(&["-c", "protocol.file.allow=always", "submodule", "add", "-q", url, path]).unwrap();
}

#[test]
fn submodules_are_checked_out_when_asked_and_only_from_allowed_repositories() {
    let root = tempfile::Builder::new().prefix("peerbot-checkout-").tempdir().unwrap();
    let lib = GitRepo::new().unwrap();
    lib.commit(&[("lib.txt", "library v1\n")], "lib v1").unwrap();
    let lib_path = lib.path().canonicalize().unwrap().display().to_string();
    let secret = GitRepo::new().unwrap();
    secret.commit(&[("key.txt", "not for builds\n")], "secret").unwrap();
    let secret_path = secret.path().canonicalize().unwrap().display().to_string();

    let app = GitRepo::new().unwrap();
    app.commit(&[(".peerbot.toml", RECIPE)], "recipe").unwrap();
    add_submodule(&app, &lib_path, "vendor/lib");
    let first = app.commit(&[], "vendor lib v1").unwrap();
    // The library moves on; the app still records v1 until it is bumped.
    lib.commit(&[("lib.txt", "library v2\n")], "lib v2").unwrap();

    let app_path = app.path().canonicalize().unwrap().display().to_string();
    let args = ["--watch", &format!("{app_path}#main"), "--allow-repo", &app_path, "--allow-repo", &lib_path]
        .map(String::from)
        .to_vec();
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &args).unwrap();

    let b = n.build_of(&first, "with");
    assert_eq!(b["status"], "success", "{b}\n{}", n.log_tail());
    let log = n.get_text(&format!("/api/v1/builds/{}/steps/show/log", b["id"].as_str().unwrap())).unwrap();
    assert_eq!(log, "library v1\nlib v1\n", "the recorded commit, with its history readable");
    let b = n.build_of(&first, "without");
    assert_eq!(b["status"], "success", "{b}");

    // A bump to v2, then a submodule from a repository the node may not fetch.
    app.git(&["-C", "vendor/lib", "pull", "-q", "origin", "main"]).unwrap();
    let bumped = app.commit(&[], "bump lib").unwrap();
    let b = n.build_of(&bumped, "with");
    let log = n.get_text(&format!("/api/v1/builds/{}/steps/show/log", b["id"].as_str().unwrap())).unwrap();
    assert_eq!(log, "library v2\nlib v2\n");

    add_submodule(&app, &secret_path, "vendor/secret");
    let bad = app.commit(&[], "vendor a secret").unwrap();
    let b = n.build_of(&bad, "with");
    assert_eq!(b["status"], "exception", "{b}");
    let why = b["error"].as_str().unwrap_or_default();
    assert!(why.contains("vendor/secret") && why.contains("not allowed by this node's policy"), "{b}");
    let b = n.build_of(&bad, "without");
    assert_eq!(b["status"], "success", "a builder without submodules never fetches them: {b}");
}
