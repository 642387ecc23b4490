//! The model checker's small bounds: every schedule of 3 nodes x 2 jobs
//! shortly after an announce, without faults, with a lost message, and
//! with a crash; under a delay bound, a crash that outlasts a lease, and
//! a loss, a duplicate, a reordering and a crash in one run.

use peerbot_simnet::modelcheck::{explore, Bounds, Report};

fn holds(b: Bounds) -> Report {
    let r = explore(&b);
    assert!(r.counterexample.is_none(), "{}", r.to_text());
    assert!(r.complete, "{}", r.to_text());
    // It branched (deliveries against timers and build ends) and reached
    // final states whose quiet spell it checked.
    assert!(r.states > 10_000 && r.finals > 0, "{}", r.to_text());
    r
}

fn no_faults(horizon_ms: u64) -> Bounds {
    Bounds { losses: 0, dups: 0, reorders: 0, crashes: 0, horizon_ms, ..Bounds::default() }
}

#[test]
fn every_schedule_without_faults_builds_each_job_with_one_winner() {
    holds(no_faults(1_000));
}

#[test]
fn every_schedule_with_one_lost_message_builds_each_job_and_agrees_on_results() {
    holds(Bounds { losses: 1, ..no_faults(500) });
}

#[test]
fn every_schedule_with_one_crash_builds_each_job_and_agrees_on_results() {
    holds(Bounds { crashes: 1, ..no_faults(500) });
}

/// Delay bounding reaches past a lease: the clock and build ends wait for
/// what is in flight but once, so a crashed claimant can stay down while
/// its lease runs out on the others, who reopen and build the job.
#[test]
fn every_schedule_with_a_crash_that_outlasts_a_lease_reopens_and_builds_each_job() {
    let r = holds(Bounds { crashes: 1, delays: Some(1), ..no_faults(5_000) });
    assert!(r.finals_after_lease_expiry > 0, "no path let a lease run out: {}", r.to_text());
}

/// All four fault kinds in one run: one lost message, one duplicate, one
/// reordering and one crash, anywhere after the announce. The clock waits
/// for what is in flight (a delay bound of zero), so this covers the
/// claims, the first build, a crash and the restarted node catching up,
/// each with the other faults placed in every way among them.
#[test]
fn every_schedule_with_a_loss_a_duplicate_a_reordering_and_a_crash_builds_each_job() {
    let all = Bounds { losses: 1, dups: 1, reorders: 1, crashes: 1, delays: Some(0), ..no_faults(0) };
    let r = holds(all);
    // Each fault was taken on the way to some final state, so none of them
    // was left unexplored.
    assert!(
        r.finals_after_loss > 0 && r.finals_after_dup > 0 && r.finals_after_reorder > 0 && r.finals_after_crash > 0,
        "a fault kind reached no final state: {}",
        r.to_text()
    );
}

/// The checker finds what it looks for: with a quiet spell too short for a
/// reconciliation round (every 20 s in the model), a lost result is not
/// repaired in time, and it says which job the nodes disagree on.
#[test]
fn a_quiet_spell_too_short_to_repair_a_lost_result_is_reported_with_its_steps() {
    let r = explore(&Bounds { losses: 1, quiet_ms: 1_000, ..no_faults(500) });
    let text = r.to_text();
    let c = r.counterexample.unwrap_or_else(|| panic!("no violation found:\n{text}"));
    assert!(
        c.violation.contains("hold different results") || c.violation.contains("after the network turned quiet"),
        "{}",
        c.violation
    );
    assert!(c.trail.iter().any(|s| s.contains("lose")), "{:?}", c.trail);
}
