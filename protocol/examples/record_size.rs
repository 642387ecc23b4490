//! Bytes per build before compression: a one-step build's signed result
//! and the signed change it built, with realistic names, as they are
//! stored and sent.
//!
//!     cargo run --release -p peerbot-protocol --example record_size

use peerbot_protocol::recipe::parse_recipe;
use peerbot_protocol::record::*;

fn main() {
    let key = peerbot_protocol::deterministic_key(1);
    let repo = "https://git.example.org/team/project.git".to_string();
    let commit = "4f2a9c1d0e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49".to_string();
    let recipe = "[[builder]]\nname = \"linux\"\nrequires = [\"os=linux\"]\n[[builder.step]]\nname = \"test\"\nrun = \"cargo test --release\"\n";
    let jobs = parse_recipe(&repo, &commit, recipe).unwrap();
    let change = Change {
        repo: repo.clone(),
        branch: "main".into(),
        commit: commit.clone(),
        parents: vec!["0f9e8d7c6b5a494f2a9c1d0e8b7a6f5e4d3c2b1a".into()],
        author: "Ada Lovelace <ada@example.org>".into(),
        committer: "Ada Lovelace <ada@example.org>".into(),
        commit_time: 1_765_000_000,
        title: "Fix the off-by-one in the parser".into(),
        files: vec!["src/parser.rs".into()],
        jobs: jobs.clone(),
        recipe_error: None,
        announced_ms: 1_765_000_000_000,
        force: None,
        ..Default::default()
    };
    let result = BuildResult {
        job: jobs[0].id,
        repo,
        branch: "main".into(),
        commit,
        builder: "linux".into(),
        attempt: 0,
        labels: vec!["os=linux".into(), "arch=x86_64".into()],
        started_ms: 1_765_000_001_000,
        ended_ms: 1_765_000_061_000,
        status: Status::Success,
        steps: vec![StepResult {
            name: "test".into(),
            command: "cargo test --release".into(),
            exit_code: Some(0),
            duration_ms: 60_000,
            timed_out: false,
            log: Some(BlobRef { hash: peerbot_protocol::ids::Hash32::of(b"x"), size: 12345, truncated: false }),
            warnings: 0,
            tests: Some(Default::default()),
            warning_lines: vec![],
            failed_tests: vec![],
            test_format: None,
        }],
        metrics: Default::default(),
        failed_step: None,
        error: None,
        author: "Ada Lovelace <ada@example.org>".into(),
        title: "Fix the off-by-one in the parser".into(),
        node_name: "build-07".into(),
    };
    let c = sign(&key, &Body::Change(change));
    let r = sign(&key, &Body::Result(result));
    println!("change record   {:>5} bytes", c.bytes.len());
    println!("result record   {:>5} bytes", r.bytes.len());
    println!(
        "per build       {:>5} bytes (before compression; the store adds its keys and indexes)",
        c.bytes.len() + r.bytes.len()
    );
}
