//! The soak: deterministic figures, replay commands that replay, failures
//! reported with their command.

use std::process::Command;

use peerbot_simnet::soak::{self, Outcome, SoakPlan};
use peerbot_simnet::SimConfig;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot-simnet");

fn plan(first_seed: u64, seeds: u64, threads: usize) -> SoakPlan {
    SoakPlan { first_seed, seeds, nodes: (10, 30), duration_ms: (120_000, 240_000), threads }
}

/// Runs the binary with `args` and `--json`: its exit code and its JSON.
fn run_binary(args: &[String]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN).args(args).arg("--json").output().expect("run peerbot-simnet");
    let json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}

/// The flags after `peerbot-simnet` in a printed command.
fn command_args(command: &str) -> Vec<String> {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("peerbot-simnet"), "{command}");
    words.map(str::to_string).collect()
}

#[test]
fn small_soak_gives_the_same_figures_whatever_the_threads() {
    let a = soak::run(&plan(100, 20, 2), |s| plan(100, 20, 2).draw(s), |_| {});
    let b = soak::run(&plan(100, 20, 3), |s| plan(100, 20, 3).draw(s), |_| {});
    assert_eq!(a.figures.seeds_run, 20);
    assert_eq!(a.figures, b.figures, "{}\n{}", a.to_text(), b.to_text());
    assert_eq!(a.failures, b.failures);
    assert!(!a.failed(), "{:?}\n{}", a.failures, a.to_text());
    let runs = a.figures.with_partitions.runs + a.figures.without_partitions.runs;
    assert_eq!(runs, 20);
}

#[test]
fn printed_command_replays_the_seed_run() {
    for seed in [3, 11, 42] {
        let cfg = plan(0, 0, 1).draw(seed);
        let command = soak::replay_command(&cfg);
        let Outcome::Passed(report) = soak::run_one(cfg).outcome else { panic!("seed {seed} failed") };
        let (code, json) = run_binary(&command_args(&command));
        assert_eq!(code, 0, "{command}");
        assert_eq!(json["trace_hash"].as_str(), Some(report.trace_hash.as_str()), "{command}");
        assert_eq!(json["events"].as_u64(), Some(report.events), "{command}");
    }
}

/// Five seconds is too short a settle for builds of two seconds and more
/// still running when commits stop: the final check finds unbuilt jobs.
#[test]
fn broken_invariant_is_reported_with_the_command_that_replays_it() {
    let p = plan(7, 4, 2);
    let short_settle = |seed| SimConfig { settle_ms: 5_000, ..p.draw(seed) };
    let mut seen = vec![];
    let result = soak::run(&p, short_settle, |f| seen.push(f.clone()));
    assert!(result.failed(), "{}", result.to_text());
    assert_eq!(seen, result.failures, "each failure is reported as it is found, in seed order");
    assert_eq!(result.figures.violations as usize, result.failures.len());
    let f = &result.failures[0];
    assert_eq!(f.kind, "violation");
    assert!(f.command.contains("--settle 5s") && f.command.contains(&format!("--seed {} ", f.seed)), "{f}");
    let (code, json) = run_binary(&command_args(&f.command));
    assert_eq!(code, 1, "{}", f.command);
    assert!(f.message.contains(json["invariant"].as_str().expect("a violation")), "{f}\n{json}");
}

#[test]
fn soak_subcommand_prints_figures_and_exits_zero() {
    let args: Vec<String> =
        ["soak", "--seeds", "4", "--from", "100", "--nodes", "10..30", "--duration", "2m..4m", "--threads", "2"]
            .map(String::from)
            .to_vec();
    let (code, json) = run_binary(&args);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["figures"]["seeds_run"].as_u64(), Some(4));
    assert_eq!(json["failures"].as_array().map(Vec::len), Some(0));
    let with_lib = soak::run(&plan(100, 4, 1), |s| plan(100, 4, 1).draw(s), |_| {});
    assert_eq!(json["figures"]["digest"].as_str(), Some(with_lib.figures.digest.as_str()));
}

/// The soak CI runs with every `cargo test`: three hundred seeds of the
/// default draw, each its own cluster and mix of faults. A failure prints
/// the command that replays its seed.
#[test]
fn three_hundred_seeds_of_mixed_faults_hold_every_invariant() {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (code, json) =
        run_binary(&["soak".into(), "--seeds".into(), "300".into(), "--threads".into(), threads.to_string()]);
    assert_eq!(code, 0, "{}", serde_json::to_string_pretty(&json).unwrap_or_default());
    assert_eq!(json["figures"]["seeds_run"], 300);
    assert_eq!(json["figures"]["violations"], 0);
}

/// Seed 12904 of the default soak: a change is announced and then lost
/// with every store that held it (crashes that lose the store, under a
/// partition), so no node can know its 3 jobs; the run
/// must pass and count them apart, not wait for them (this used to wait
/// out the 3 h settle and fail, first found with seed 9424, whose run the
/// claim rules have since changed).
#[test]
fn jobs_whose_change_was_lost_with_every_store_are_counted_apart() {
    let cfg = soak::draw(12904, (10, 60), (120_000, 360_000));
    let Outcome::Passed(r) = soak::run_one(cfg).outcome else { panic!("seed 12904 failed") };
    assert_eq!(r.jobs_lost_with_change, 3, "{}", r.to_text());
    assert_eq!(r.jobs_built_0, 0, "{}", r.to_text());
    assert!(r.simulated_ms < 30 * 60_000, "went quiet without waiting for the lost jobs: {}", r.to_text());
}
