//! Long fuzz runs: `fuzz [--target NAME] [--execs N] [--seed S]`; every
//! target by default, 10 million inputs each. Prints executions per second,
//! or the input that made a target panic (and exits 1).

use std::time::Instant;

use peerbot_protocol::fuzz::{self, TARGETS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let execs: u64 = flag("--execs").map(|v| v.parse().expect("--execs N")).unwrap_or(10_000_000);
    let seed: u64 = flag("--seed").map(|v| v.parse().expect("--seed S")).unwrap_or(1);
    let names: Vec<String> = match flag("--target") {
        Some(t) => vec![t],
        None => TARGETS.iter().map(|t| t.to_string()).collect(),
    };
    let corpus = fuzz::record_corpus();
    for name in names {
        let Some(mut t) = fuzz::target(&name, &corpus) else {
            eprintln!("no target {name:?}; targets: {}", TARGETS.join(", "));
            std::process::exit(2);
        };
        let started = Instant::now();
        match fuzz::run(&mut t, seed, execs) {
            None => {
                let secs = started.elapsed().as_secs_f64();
                println!("{name}: {execs} inputs, no panic, {secs:.1} s ({:.0}/s), seed {seed}", execs as f64 / secs);
            }
            Some(f) => {
                println!("{name}: PANIC at input {} (seed {seed}): {}\ninput: {}", f.exec, f.panic, f.input_hex);
                std::process::exit(1);
            }
        }
    }
}
