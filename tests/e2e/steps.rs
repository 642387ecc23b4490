//! Step options on a real node and a real repository: `env` and `workdir`
//! reach the step; a failure halts the build but for `always_run` steps;
//! `warn_on_failure` turns a failure into warnings and halts nothing;
//! `flunk_on_warnings` fails a step whose log has warnings; `warnings`
//! counts the lines of its own pattern, less those suppressed, and the
//! result keeps them.

use std::path::Path;

use peerbot_tests::{GitRepo, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");

const RECIPE: &str = r#"
[[builder]]
name = "halts"
[[builder.step]]
name = "setup"
workdir = "sub"
env = { GREETING = "hello from env" }
run = "echo \"$GREETING in $(basename \"$PWD\")\""
[[builder.step]]
name = "lint"
warn_on_failure = true
run = "echo lint found things; exit 1"
[[builder.step]]
name = "test"
run = "exit 3"
[[builder.step]]
name = "never"
run = "echo should not run"
[[builder.step]]
name = "cleanup"
always_run = true
run = "echo cleaned"

[[builder]]
name = "soft"
[[builder.step]]
name = "optional"
warn_on_failure = true
run = "exit 1"
[[builder.step]]
name = "after"
run = "echo still ran"

[[builder]]
name = "lint"
[[builder.step]]
name = "lint"
warnings = { pattern = "^LINT W[0-9]+", suppress = ["vendor/"] }
run = "echo 'LINT W001 src/a.rs'; echo 'LINT W002 vendor/b.rs'; echo 'LINT W003 src/c.rs'; echo 'warning: not ours'"

[[builder]]
name = "strict"
[[builder.step]]
name = "compile"
flunk_on_warnings = true
run = "echo 'warning: unused variable'"
[[builder.step]]
name = "after"
run = "true"
"#;

fn step_names(b: &Value) -> Vec<&str> {
    b["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect()
}

#[test]
fn step_options_decide_what_runs_and_what_the_build_is() {
    let root = tempfile::Builder::new().prefix("peerbot-steps-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[(".peerbot.toml", RECIPE), ("sub/.keep", "")], "steps").unwrap();
    let path = repo.path().display().to_string();
    let args =
        ["--watch".to_string(), format!("{path}#main"), "--allow-repo".into(), path, "--sandbox".into(), "none".into()];
    let n = Node::start(Path::new(BIN), "steps", &root.path().join("n"), &args).unwrap();

    let b = n.build_of(&commit, "halts");
    assert_eq!(b["status"], "failure", "{b}");
    assert_eq!(b["failed_step"], "test");
    assert_eq!(step_names(&b), ["setup", "lint", "test", "cleanup"], "never is skipped, cleanup runs");
    let id = b["id"].as_str().unwrap();
    let setup = n.get_text(&format!("/api/v1/builds/{id}/steps/setup/log")).unwrap();
    assert_eq!(setup, "hello from env in sub\n");
    let cleanup = n.get_text(&format!("/api/v1/builds/{id}/steps/cleanup/log")).unwrap();
    assert_eq!(cleanup, "cleaned\n");

    let b = n.build_of(&commit, "soft");
    assert_eq!(b["status"], "warnings", "{b}");
    assert_eq!(step_names(&b), ["optional", "after"]);
    assert!(b["failed_step"].is_null());

    let b = n.build_of(&commit, "lint");
    assert_eq!(b["status"], "warnings", "{b}");
    assert_eq!(b["steps"][0]["warnings"], 2);
    assert_eq!(b["steps"][0]["warning_lines"], serde_json::json!(["LINT W001 src/a.rs", "LINT W003 src/c.rs"]));

    let b = n.build_of(&commit, "strict");
    assert_eq!(b["steps"][0]["warning_lines"], serde_json::json!(["warning: unused variable"]));
    assert_eq!(b["status"], "failure", "{b}");
    assert_eq!(b["failed_step"], "compile");
    assert_eq!(step_names(&b), ["compile"], "a flunked step halts the build");
}

/// `size` is the image's size at each commit; `lines` a command's number.
const METRICS: &str = r#"
[[builder]]
name = "image"
[[builder.step]]
name = "build"
run = "mkdir -p out && head -c $(cat size) /dev/zero > out/app.img && ln -sf /etc/hostname out/outside"
metrics = { image_size = "file_size:out/app.img", lines = "cmd:printf '%s lines\n' 42", outside = "file_size:out/outside", absent = "file_size:out/none" }
"#;

#[test]
fn metrics_are_measured_and_tracked_over_commits_on_the_builder_page() {
    let root = tempfile::Builder::new().prefix("peerbot-metrics-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let path = repo.path().display().to_string();
    let args =
        ["--watch".to_string(), format!("{path}#main"), "--allow-repo".into(), path, "--sandbox".into(), "none".into()];
    let mut commits = Vec::new();
    let mut n = None;
    for size in [1000, 1500, 1200] {
        let c =
            repo.commit(&[(".peerbot.toml", METRICS), ("size", &size.to_string())], &format!("size {size}")).unwrap();
        let node =
            n.get_or_insert_with(|| Node::start(Path::new(BIN), "metrics", &root.path().join("n"), &args).unwrap());
        let b = node.build_of(&c, "image");
        assert_eq!(b["status"], "success", "{b}");
        assert_eq!(b["metrics"]["image_size"], size as f64, "{b}");
        assert_eq!(b["metrics"]["lines"], 42.0);
        assert!(b["metrics"]["step_secs_build"].is_number());
        // A link out of the checkout and a file that is not there measure nothing.
        assert!(b["metrics"].get("outside").is_none() && b["metrics"].get("absent").is_none(), "{b}");
        commits.push(c);
    }
    let n = n.unwrap();
    let page = n.get("/api/v1/builders/image").unwrap();
    let points: Vec<(String, f64)> = page["series"]["image_size"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["commit"].as_str().unwrap().to_string(), p["value"].as_f64().unwrap()))
        .collect();
    let want: Vec<(String, f64)> = commits.iter().cloned().zip([1000.0, 1500.0, 1200.0]).collect();
    assert_eq!(points, want, "oldest first");
    let html = n.get_text("/builders/image").unwrap();
    assert!(html.contains("aria-label=\"image_size\""), "the builder page draws the metric");
}

/// A step past its timeout is killed, a cleanup still runs, and a log
/// over the cap (64 MiB) keeps its beginning and its end.
const LIMITS: &str = r#"
[[builder]]
name = "slow"
[[builder.step]]
name = "hang"
timeout_secs = 1
run = "echo started; sleep 300; echo never"
[[builder.step]]
name = "cleanup"
always_run = true
run = "echo cleaned"

[[builder]]
name = "chatty"
[[builder.step]]
name = "flood"
run = "echo FIRST-LINE; yes 'a line of output that goes on' | head -c 70000000; echo LAST-LINE"
"#;

#[test]
fn a_step_is_killed_at_its_timeout_and_a_huge_log_keeps_both_ends() {
    let root = tempfile::Builder::new().prefix("peerbot-limits-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[(".peerbot.toml", LIMITS)], "limits").unwrap();
    let path = repo.path().display().to_string();
    let args =
        ["--watch".to_string(), format!("{path}#main"), "--allow-repo".into(), path, "--sandbox".into(), "none".into()];
    let n = Node::start(Path::new(BIN), "limits", &root.path().join("n"), &args).unwrap();

    let b = n.build_of(&commit, "slow");
    assert_eq!(b["status"], "failure", "{b}");
    assert_eq!(b["failed_step"], "hang");
    assert_eq!(b["steps"][0]["timed_out"], true, "{b}");
    assert!(b["steps"][0]["exit_code"].is_null(), "killed, not exited: {b}");
    assert!(b["steps"][0]["duration_ms"].as_u64().unwrap() < 60_000, "killed at its timeout, not at the sleep's end");
    assert_eq!(step_names(&b), ["hang", "cleanup"]);
    let id = b["id"].as_str().unwrap();
    let hang = n.get_text(&format!("/api/v1/builds/{id}/steps/hang/log")).unwrap();
    assert!(hang.starts_with("started\n") && !hang.contains("never"), "{hang}");

    let b = n.build_of(&commit, "chatty");
    assert_eq!(b["status"], "success", "{b}");
    let log_ref = &b["steps"][0]["log"];
    assert_eq!(log_ref["truncated"], true, "{b}");
    assert!(log_ref["size"].as_u64().unwrap() <= 64 * 1024 * 1024 + 1024, "{b}");
    let id = b["id"].as_str().unwrap();
    // Read as bytes: the log is bigger than the harness reads as text.
    let url = format!("{}/api/v1/builds/{id}/steps/flood/log", n.url());
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut ureq::get(&url).call().unwrap().into_reader(), &mut bytes).unwrap();
    let log = String::from_utf8_lossy(&bytes);
    assert!(log.starts_with("FIRST-LINE\na line of output"), "the beginning is kept");
    assert!(log.ends_with("LAST-LINE\n"), "the end is kept");
    assert!(log.contains("bytes after the first"), "the cut is marked");
}
