//! A node whose data dir fills up during a build: it keeps serving, gives
//! the build back instead of losing it, says so once, and once space is
//! freed builds the job and stores its result and log.
//!
//! The node's database lives on a small tmpfs mounted for the test, so it
//! needs root (CI runs as root); its log and build dirs stay on the
//! ordinary disk, to be read when something goes wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(180);

/// The step sleeps long enough for the test to fill the disk, then prints
/// a log too large to fit.
const RECIPE: &str = r#"
[[builder]]
name = "big-log"
requires = ["os=linux"]
[[builder.step]]
name = "work"
run = "sleep 4; head -c 3000000 /dev/urandom | base64"
"#;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let ok =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status()?;
        anyhow::ensure!(ok.success(), "mount -t tmpfs failed");
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros until the file system is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let _ = Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", path.display())).arg("bs=64k").output();
    path
}

fn job_of(n: &Node, commit: &str) -> Option<Value> {
    n.get("/api/v1/jobs").ok()?.as_array()?.iter().find(|j| j["commit"] == commit).cloned()
}

#[test]
fn a_node_whose_disk_fills_keeps_serving_and_builds_the_job_once_space_is_freed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let root = tempfile::Builder::new().prefix("peerbot-diskfull-").tempdir().unwrap();
    let data = root.path().join("a");
    let disk = Tmpfs::mount(&data.join("db"), "256m").unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    let watch = format!("{}#main", repo.path().display());
    let n = Node::start(Path::new(BIN), "A", &data, &["--watch".into(), watch]).unwrap();
    let commit = repo.commit(&[(".peerbot.toml", RECIPE)], "big log").unwrap();
    wait_for("the build to start", LONG, || (job_of(&n, &commit)?["state"] == "running").then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));

    // The disk fills while the step runs: its log and result cannot be kept.
    let filler = fill(&disk.0);
    let failing = wait_for("storage reported failing", LONG, || {
        let node = n.get("/api/v1/node").ok()?;
        (node["storage"]["ok"] == false).then_some(node)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    assert!(failing["storage"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{failing}");
    let job = wait_for("the job given back", LONG, || {
        let j = job_of(&n, &commit)?;
        (j["state"] == "pending" && j["attempt"].as_u64()? >= 1).then_some(j)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    assert!(job["lost_attempts"].to_string().contains("could not be stored"), "{job}");
    assert!(n.get("/api/v1/builds").unwrap().as_array().unwrap().is_empty(), "no result while full");

    // Space is freed: the job is built and its result and log are stored.
    std::fs::remove_file(&filler).unwrap();
    let result = wait_for("a stored result", LONG, || {
        let builds = n.get(&format!("/api/v1/builds?commit={commit}")).ok()?;
        builds.as_array()?.first().cloned()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    assert_eq!(result["status"], "success", "{result}");
    let id = result["id"].as_str().unwrap();
    let log = n.get_text(&format!("/api/v1/builds/{id}/steps/work/log")).unwrap();
    assert!(log.len() > 3_000_000, "the whole log is kept ({} bytes)", log.len());
    wait_for("storage reported ok again", LONG, || {
        (n.get("/api/v1/node").ok()?["storage"]["ok"] == true).then_some(())
    })
    .unwrap();
    assert_eq!(job_of(&n, &commit).unwrap()["state"], "done");
    drop(n);
}
