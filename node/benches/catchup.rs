//! `cargo bench -p peerbot --bench catchup`: time for a fresh node to catch
//! up a history of 100 000 build results (200 000 signed records, with
//! their changes) from one other node, two real processes over loopback.
//! Every record is verified by the joining node before it is stored.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use peerbot_tests::{wait_for, Node};

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");

fn main() {
    let results: usize = std::env::var("CATCHUP_RESULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let root = tempfile::Builder::new().prefix("peerbot-catchup-").tempdir().expect("temp dir");
    let a_dir = root.path().join("a");
    let seeded = Instant::now();
    let out = Command::new(BIN)
        .args(["seed-history", "--results", &results.to_string(), "--data-dir"])
        .arg(&a_dir)
        .output()
        .expect("peerbot seed-history");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!("seeded {} results in {:.1} s", results, seeded.elapsed().as_secs_f64());
    let a = Node::start(Path::new(BIN), "A", &a_dir, &[]).expect("start A");
    let total = a.get("/api/v1/node").expect("A's node info")["records"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let b = Node::start(Path::new(BIN), "B", &root.path().join("b"), &["--bootstrap".into(), a.multiaddr()])
        .expect("start B");
    let mut last_print = Instant::now();
    wait_for("B to hold every record", Duration::from_secs(1800), || {
        let n = b.get("/api/v1/node").ok()?["records"].as_u64()?;
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("  {n} of {total} records after {:.1} s", started.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        (n >= total).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log_tail()));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "catch-up: {total} records ({results} results) in {secs:.1} s from B's start, {:.0} records/s",
        total as f64 / secs
    );
}
