//! `cargo bench -p peerbot-simnet`: a thousand nodes, one simulated hour,
//! two commits a minute, five builders. Prints the wall time and peak
//! memory next to the run's own figures. Goal: under 60 s and 4 GiB on a
//! 2-core machine.

use std::time::Instant;

use peerbot_simnet::{Sim, SimConfig};

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let nodes = std::env::var("SIMNET_BENCH_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let cfg =
        SimConfig { nodes, seed: 7, duration_ms: 3_600_000, commits_per_min: 2.0, builders: 5, ..SimConfig::default() };
    let start = Instant::now();
    let report = match Sim::new(cfg).run() {
        Ok(r) => r,
        Err(v) => {
            eprintln!("{v}");
            std::process::exit(1);
        }
    };
    let wall = start.elapsed();
    print!("{}", report.to_text());
    println!(
        "bench: {nodes} nodes, 1 simulated hour: {:.1} s wall, {:.2} M events/s, peak RSS {} MiB",
        wall.as_secs_f64(),
        report.events as f64 / wall.as_secs_f64() / 1e6,
        peak_rss_kib().map(|k| (k / 1024).to_string()).unwrap_or_else(|| "?".into())
    );
}
