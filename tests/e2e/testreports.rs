//! Test reports of real projects built through a real node: a Rust crate
//! (libtest's JSON), a Python project (pytest's JUnit XML), a shell TAP
//! script and, where `go` is installed, a Go module (`go test -json`). Each
//! result's counts and failing tests are those the tool reports when run
//! directly. A test that fails and then passes on one commit (a forced
//! rebuild) is reported flaky by the builder's test history.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");

fn start(repo: &GitRepo, name: &str, root: &Path) -> Node {
    let path = repo.path().display().to_string();
    let args =
        ["--watch".to_string(), format!("{path}#main"), "--allow-repo".into(), path, "--sandbox".into(), "none".into()];
    Node::start(Path::new(BIN), name, &root.join(name), &args).unwrap()
}

/// (passed, failed, skipped) and the failing names of the step `step`.
fn reported(b: &Value, step: &str) -> ((u64, u64, u64), BTreeSet<String>) {
    let s = b["steps"].as_array().unwrap().iter().find(|s| s["name"] == step).unwrap_or_else(|| panic!("{b}"));
    let t = &s["tests"];
    let counts = (t["passed"].as_u64().unwrap(), t["failed"].as_u64().unwrap(), t["skipped"].as_u64().unwrap());
    let names =
        s["failed_tests"].as_array().into_iter().flatten().map(|f| f["name"].as_str().unwrap().to_string()).collect();
    (counts, names)
}

fn message_of(b: &Value, step: &str, test: &str) -> String {
    let s = b["steps"].as_array().unwrap().iter().find(|s| s["name"] == step).unwrap();
    let f = s["failed_tests"].as_array().unwrap().iter().find(|f| f["name"] == test).unwrap();
    f["message"].as_str().unwrap().to_string()
}

/// A copy of the repository's newest commit, for running the tool directly.
fn clone(repo: &GitRepo) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("peerbot-direct-").tempdir().unwrap();
    let out = Command::new("git").arg("clone").arg("-q").arg(repo.path()).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The numbers before `word` in a summary line (`3 passed`, `1 failed;`).
fn number_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[1].trim_end_matches([',', ';', '.']) == word)
        .map(|w| w[0].parse::<u64>().unwrap())
        .sum()
}

const CRATE_TOML: &str = "[package]\nname = \"calc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n";
const CRATE_LIB: &str = r#"
pub fn add(a: i32, b: i32) -> i32 { a + b }

#[cfg(test)]
mod tests {
    #[test]
    fn adds() { assert_eq!(super::add(1, 2), 3); }
    #[test]
    fn subtracts_wrongly() { assert_eq!(super::add(1, 2), 4, "one and two"); }
    #[test]
    #[ignore]
    fn slow() {}
}
"#;

#[test]
fn a_rust_crates_libtest_json_report_matches_cargo_test() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let rustup = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup"));
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    // Steps get a fresh HOME: rustup and cargo are told where they live.
    let recipe = format!(
        "[[builder]]\nname = \"rust\"\n[[builder.step]]\nname = \"test\"\n\
         run = \"cargo test --offline -- -Z unstable-options --format json\"\n\
         env = {{ RUSTC_BOOTSTRAP = \"1\", CARGO_TARGET_DIR = \"target\", RUSTUP_HOME = {rustup:?}, CARGO_HOME = {cargo_home:?} }}\n\
         tests = {{ format = \"libtest-json\" }}\n"
    );
    let root = tempfile::Builder::new().prefix("peerbot-tr-rust-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo
        .commit(&[(".peerbot.toml", &recipe), ("Cargo.toml", CRATE_TOML), ("src/lib.rs", CRATE_LIB)], "crate")
        .unwrap();
    let n = start(&repo, "rust", root.path());

    // What cargo says when run directly, in its usual text.
    let direct = clone(&repo);
    let target = direct.path().join("target");
    let text = run(Command::new("cargo")
        .args(["test", "--offline", "-q"])
        .current_dir(direct.path())
        .env("CARGO_TARGET_DIR", &target));
    let summary = text.lines().find(|l| l.starts_with("test result:")).unwrap_or_else(|| panic!("{text}"));
    let want = (number_before(summary, "passed"), number_before(summary, "failed"), number_before(summary, "ignored"));
    let failing: BTreeSet<String> = text
        .lines()
        .skip_while(|l| *l != "failures:")
        .skip(1)
        .skip_while(|l| *l != "failures:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(want, (1, 1, 1), "{text}");
    assert_eq!(failing, BTreeSet::from(["tests::subtracts_wrongly".to_string()]), "{text}");

    let b = n.build_of(&commit, "rust");
    assert_eq!(b["status"], "failure", "{b}");
    assert_eq!(reported(&b, "test"), (want, failing));
    assert_eq!(b["steps"][0]["test_format"], "libtest-json");
    assert!(message_of(&b, "test", "tests::subtracts_wrongly").contains("one and two"), "{b}");
    assert_eq!((b["metrics"]["tests_passed"].as_f64(), b["metrics"]["tests_failed"].as_f64()), (Some(1.0), Some(1.0)));
}

/// A Python that can run pytest: the system's (`python3-pytest`), since
/// `python3` on PATH may be another without it.
fn python_with_pytest() -> String {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py).args(["-c", "import pytest"]).output().is_ok_and(|o| o.status.success());
        if ok {
            return py.to_string();
        }
    }
    panic!("pytest is missing: install python3-pytest (apt-get install -y python3-pytest; CI's .ci/run does)");
}

const PY_TESTS: &str = r#"
import pytest

def test_adds():
    assert 1 + 2 == 3

def test_subtracts_wrongly():
    assert 1 - 2 == 1, "one minus two"

@pytest.mark.skip(reason="later")
def test_later():
    pass
"#;

#[test]
fn a_python_projects_junit_report_matches_pytest() {
    let py = python_with_pytest();
    let recipe = format!(
        "[[builder]]\nname = \"py\"\n[[builder.step]]\nname = \"pytest\"\n\
         run = \"{py} -m pytest -p no:cacheprovider --junitxml=out/report.xml\"\n\
         tests = {{ format = \"junit\", path = \"out/*.xml\" }}\n"
    );
    let root = tempfile::Builder::new().prefix("peerbot-tr-py-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[(".peerbot.toml", &recipe), ("test_calc.py", PY_TESTS)], "py").unwrap();
    let n = start(&repo, "py", root.path());

    let direct = clone(&repo);
    let text =
        run(Command::new(&py).args(["-m", "pytest", "-p", "no:cacheprovider", "-rf"]).current_dir(direct.path()));
    let summary =
        text.lines().rev().find(|l| l.contains(" in ") && l.starts_with('=')).unwrap_or_else(|| panic!("{text}"));
    let want = (number_before(summary, "passed"), number_before(summary, "failed"), number_before(summary, "skipped"));
    // `FAILED test_calc.py::test_subtracts_wrongly - ...`, named `test_calc.test_subtracts_wrongly` in JUnit.
    let failing: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FAILED "))
        .map(|l| l.split(" - ").next().unwrap().replace(".py::", "."))
        .collect();
    assert_eq!(want, (1, 1, 1), "{text}");

    let b = n.build_of(&commit, "py");
    assert_eq!(b["status"], "failure", "{b}");
    assert_eq!(reported(&b, "pytest"), (want, failing));
    assert!(message_of(&b, "pytest", "test_calc.test_subtracts_wrongly").contains("one minus two"), "{b}");
}

const TAP_SCRIPT: &str = r#"#!/bin/sh
echo "TAP version 13"
echo "1..4"
echo "ok 1 - parses"
echo "not ok 2 - rounds half up"
echo "  ---"
echo "  message: 'got 2, want 3'"
echo "  ..."
echo "ok 3 - prints # SKIP no terminal"
echo "ok 4 - exits"
exit 1
"#;

#[test]
fn a_tap_scripts_report_is_counted_and_shown_on_the_build_page() {
    let recipe = "[[builder]]\nname = \"tap\"\n[[builder.step]]\nname = \"tap\"\nrun = \"sh t.sh\"\ntests = { format = \"tap\" }\n";
    let root = tempfile::Builder::new().prefix("peerbot-tr-tap-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[(".peerbot.toml", recipe), ("t.sh", TAP_SCRIPT)], "tap").unwrap();
    let n = start(&repo, "tap", root.path());

    // What the script says, run directly: its `ok`/`not ok` lines.
    let direct = clone(&repo);
    let text = run(Command::new("sh").arg("t.sh").current_dir(direct.path()));
    let skipped = text.lines().filter(|l| l.starts_with("ok ") && l.contains("# SKIP")).count() as u64;
    let passed = text.lines().filter(|l| l.starts_with("ok ")).count() as u64 - skipped;
    let failing: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("not ok "))
        .map(|l| l.split_once(" - ").unwrap().1.to_string())
        .collect();

    let b = n.build_of(&commit, "tap");
    assert_eq!(reported(&b, "tap"), ((passed, failing.len() as u64, skipped), failing));
    assert_eq!(reported(&b, "tap").0, (2, 1, 1));
    assert_eq!(message_of(&b, "tap", "rounds half up"), "message: 'got 2, want 3'");
    let page = n.get_text(&format!("/builds/{}", b["id"].as_str().unwrap())).unwrap();
    assert!(page.contains("Failing tests of") && page.contains("rounds half up") && page.contains("got 2, want 3"));
}

const GO_TEST: &str = r#"package calc

import "testing"

func TestAdds(t *testing.T) {
	if 1+2 != 3 {
		t.Fatal("no")
	}
}

func TestSubtractsWrongly(t *testing.T) {
	if 1-2 != 1 {
		t.Errorf("one minus two: got %d", 1-2)
	}
}

func TestLater(t *testing.T) { t.Skip("later") }
"#;

#[test]
fn a_go_modules_json_report_matches_go_test() {
    if !Command::new("go").arg("version").output().is_ok_and(|o| o.status.success()) {
        println!("skipped: `go` is not installed here, so the go-test-json report is not tried end to end");
        return;
    }
    let gopath = tempfile::Builder::new().prefix("peerbot-gopath-").tempdir().unwrap();
    let recipe = format!(
        "[[builder]]\nname = \"go\"\n[[builder.step]]\nname = \"test\"\nrun = \"go test -json ./...\"\n\
         env = {{ GOFLAGS = \"-mod=mod\", GOPATH = {:?}, GOCACHE = \"gocache\", GOTOOLCHAIN = \"local\" }}\n\
         tests = {{ format = \"go-test-json\" }}\n",
        gopath.path().display().to_string()
    );
    let root = tempfile::Builder::new().prefix("peerbot-tr-go-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let files = [
        (".peerbot.toml", recipe.as_str()),
        ("go.mod", "module example.org/calc\n\ngo 1.18\n"),
        ("calc_test.go", GO_TEST),
    ];
    let commit = repo.commit(&files, "go").unwrap();
    let n = start(&repo, "go", root.path());

    let direct = clone(&repo);
    let text =
        run(Command::new("go").args(["test", "-v", "./..."]).current_dir(direct.path()).env("GOTOOLCHAIN", "local"));
    let count = |w: &str| text.lines().filter(|l| l.trim_start().starts_with(w)).count() as u64;
    let failing: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--- FAIL: "))
        .map(|l| format!("example.org/calc.{}", l.split_whitespace().next().unwrap()))
        .collect();
    let want = (count("--- PASS"), count("--- FAIL"), count("--- SKIP"));
    assert_eq!(want, (1, 1, 1), "{text}");

    let b = n.build_of(&commit, "go");
    assert_eq!(reported(&b, "test"), (want, failing));
    assert!(message_of(&b, "test", "example.org/calc.TestSubtractsWrongly").contains("one minus two: got -1"), "{b}");
}

#[test]
fn a_test_that_fails_then_passes_on_one_commit_is_flaky() {
    let state = tempfile::Builder::new().prefix("peerbot-tr-flaky-state-").tempdir().unwrap();
    let mark = state.path().join("ran-once");
    // `flappy` fails on its first run and passes after; `broken` always fails.
    let script = format!(
        "echo 1..3\necho ok 1 - steady\n\
         if [ -e {m:?} ]; then echo ok 2 - flappy; else touch {m:?}; echo not ok 2 - flappy; fi\n\
         echo not ok 3 - broken\nexit 1\n",
        m = mark.display().to_string()
    );
    let recipe = "[[builder]]\nname = \"flaky\"\n[[builder.step]]\nname = \"tap\"\nrun = \"sh t.sh\"\ntests = { format = \"tap\" }\n";
    let root = tempfile::Builder::new().prefix("peerbot-tr-flaky-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[(".peerbot.toml", recipe), ("t.sh", &script)], "flaky").unwrap();
    let n = start(&repo, "flaky", root.path());

    let first = n.build_of(&commit, "flaky");
    assert_eq!(reported(&first, "tap").1, BTreeSet::from(["flappy".to_string(), "broken".to_string()]));
    let tests = n.get("/api/v1/builders/flaky/tests").unwrap();
    assert_eq!(tests["flaky"], json!([]), "one run flips nothing: {tests}");

    let body = json!({"repo": repo.path().display().to_string(), "commit": commit, "builder": "flaky"}).to_string();
    let (code, v) = n.request("POST", "/api/v1/force", Some(&body));
    assert_eq!(code, 201, "{v}");
    let second = wait_for("the forced rebuild's result", Duration::from_secs(120), || {
        let list = n.get(&format!("/api/v1/builds?commit={commit}&builder=flaky")).ok()?;
        let other = list.as_array()?.iter().find(|b| b["id"] != first["id"])?;
        n.get(&format!("/api/v1/builds/{}", other["id"].as_str()?)).ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    assert_eq!(reported(&second, "tap").1, BTreeSet::from(["broken".to_string()]));

    let tests = n.get("/api/v1/builders/flaky/tests").unwrap();
    let names =
        |k: &str| -> Vec<String> { tests[k].as_array().unwrap().iter().map(|t| t["name"].to_string()).collect() };
    assert_eq!(names("flaky"), ["\"flappy\""], "{tests}");
    assert_eq!(names("failing"), ["\"broken\""], "a real failure is not flaky: {tests}");
    assert_eq!(tests["flaky"][0]["recent"], json!([false, true]));
    assert_eq!(tests["builds"], 2);
    let page = n.get_text("/builders/flaky").unwrap();
    let (failing_at, flaky_at) = (page.find("Failing tests").unwrap(), page.find("Flaky tests").unwrap());
    assert!(page[failing_at..flaky_at].contains("broken") && page[flaky_at..].contains("flappy"), "{page}");
}
