//! The CLI prints what peers and repositories send without panicking and
//! without letting a terminal act on it: a branch named in several scripts,
//! a cancel reason (free text any node's user may give, replicated to all)
//! that carries escape sequences, and a reader that goes away. And what
//! the CLI reads itself: a recipe to check, a ref for `--commit`, a node
//! given as `host:port`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Node};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);
const BRANCH: &str = "fixü-分支-ünïcødé";

const RECIPE: &str =
    "[[builder]]\nname = \"t\"\nrequires = [\"os=linux\"]\n[[builder.step]]\nname = \"wait\"\nrun = \"sleep 60\"\n";
/// Clears the screen and sets the window title.
const REASON: &str = "stop\u{1b}[2J\u{1b}]0;pwned\u{7}now";

#[test]
fn peer_strings_are_printed_safely_and_a_closed_pipe_ends_quietly() {
    let root = tempfile::Builder::new().prefix("peerbot-cli-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    repo.git(&["checkout", "-q", "-b", BRANCH]).unwrap();
    let commit = repo.commit(&[(".peerbot.toml", RECIPE)], "escape").unwrap();
    let watch = format!("{}#{BRANCH}", repo.path().display());
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &["--watch".into(), watch]).unwrap();
    let job = wait_for("the build running", LONG, || {
        let jobs = n.get("/api/v1/jobs").ok()?;
        let j = jobs.as_array()?.iter().find(|j| j["commit"] == commit.as_str())?.clone();
        (j["state"] == "running").then(|| j["job"].as_str().unwrap().to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    n.cli(&["cancel", &job[..12], "--reason", REASON]).unwrap();
    wait_for("the cancelled result", LONG, || {
        let v = n.get(&format!("/api/v1/builds?commit={commit}")).ok()?;
        (v.as_array()?.first()?["status"] == "cancelled").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));

    let out = n.cli(&["results"]).unwrap();
    assert!(out.contains("fixü-分支-ün "), "the branch, cut at 10 characters: {out}");
    let jobs = n.cli(&["jobs"]).unwrap();
    assert!(!jobs.contains('\u{1b}') && !jobs.contains('\u{7}'), "raw escapes reached the terminal: {jobs:?}");
    assert!(jobs.contains("cancelled: stop\\u{1b}[2J\\u{1b}]0;pwned\\u{7}now"), "{jobs}");

    // `peerbot jobs | head -0`: the reader is gone before the CLI writes.
    for args in [&["jobs"][..], &["results"], &["peers"]] {
        let mut child = Command::new(BIN)
            .args(args)
            .env("PEERBOT_NODE", n.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "peerbot {args:?}: {err}");
    }
}

/// A page on another site that points its own name at the node's address
/// (DNS rebinding) sends that name as `Host`: the node refuses it.
#[test]
fn http_answers_only_to_the_names_the_node_is_known_by() {
    let root = tempfile::Builder::new().prefix("peerbot-host-").tempdir().unwrap();
    let extra = ["--http-host".to_string(), "ci.example.org".into()];
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &extra).unwrap();
    let port = n.url().rsplit(':').next().unwrap().to_string();
    let ask = |host: &str| {
        let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        use std::io::{Read, Write};
        write!(stream, "GET /api/v1/node HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    for good in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "CI.example.org".into()] {
        let a = ask(&good);
        assert!(a.starts_with("HTTP/1.1 200"), "{good}: {a}");
    }
    let a = ask(&format!("attacker.example:{port}"));
    assert!(a.starts_with("HTTP/1.1 421"), "{a}");
    assert!(a.contains("--http-host attacker.example"), "{a}");
}

#[test]
fn check_reads_a_recipe_and_the_cli_takes_refs_and_host_port() {
    let root = tempfile::Builder::new().prefix("peerbot-cli-").tempdir().unwrap();
    let good = root.path().join("good.toml");
    std::fs::write(&good, RECIPE).unwrap();
    let out = Command::new(BIN).arg("check").arg(&good).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 builder") && text.contains("t (needs os=linux)") && text.contains("1. wait: sleep 60"),
        "{text}"
    );
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "[[builder]]\nname = \"t\"\nstep = 3\n").unwrap();
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
    assert!(!err.contains(".peerbot.toml"), "the file read is named, once: {err}");
    // The default file, named once.
    let dir = root.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".peerbot.toml"), "[[builder]]\nname = \"t\"\n").unwrap();
    let out = Command::new(BIN).arg("check").current_dir(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("peerbot: .peerbot.toml: builder \"t\" has no"), "{err}");

    // `--commit HEAD` and a branch name, resolved in the local clone;
    // `--node host:port` without a scheme.
    let repo = GitRepo::new().unwrap();
    let first = repo.commit(&[(".peerbot.toml", RECIPE)], "first").unwrap();
    repo.git(&["branch", "older"]).unwrap();
    let head = repo.commit(&[("x", "1\n")], "second").unwrap();
    let path = repo.path().display().to_string();
    let args = ["--allow-repo".into(), path.clone(), "--name".into(), "build-07".into()];
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &args).unwrap();
    assert_eq!(n.get("/api/v1/node").unwrap()["name"], "build-07");
    let peers = n.cli(&["peers"]).unwrap();
    assert!(peers.lines().nth(1).is_some_and(|l| l.starts_with("build-07 ")), "{peers}");
    let host_port = n.url().trim_start_matches("http://").to_string();
    for (name, want) in [("HEAD", &head), ("older", &first)] {
        let out = Command::new(BIN)
            .args(["announce", "--node", &host_port, "--repo", &path, "--branch", "main", "--commit", name])
            .env("PEERBOT_API_TOKEN", n.api_token())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let changes = n.get(&format!("/api/v1/changes?commit={want}")).unwrap();
        assert_eq!(changes.as_array().unwrap().len(), 1, "{name} announced {want}: {changes}");
    }
    let listed = n.cli(&["changes"]).unwrap();
    for (commit, title) in [(&head, "second"), (&first, "first")] {
        let line = listed.lines().find(|l| l.contains(&commit[..10])).unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains(title) && line.contains("t="), "{listed}");
    }
    let out = Command::new(BIN)
        .args(["announce", "--node", &host_port, "--repo", &path, "--commit", "no-such-ref"])
        .env("PEERBOT_API_TOKEN", n.api_token())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"no-such-ref\" names no commit"), "{err}");
}

/// A listen address the transport cannot serve: the node stops with status
/// 1 and names it, instead of running on without a network.
#[test]
fn a_node_that_cannot_listen_stops_and_names_the_address() {
    let root = tempfile::Builder::new().prefix("peerbot-cli-").tempdir().unwrap();
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    let err = match Node::start(Path::new(BIN), "A", &root.path().join("a"), &["--listen".into(), quic.into()]) {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("exited with exit status: 1"), "{err}");
    assert!(err.contains(&format!("the network failed: cannot listen on {quic}")), "{err}");
}
