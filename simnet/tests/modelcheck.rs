//! The model checker's small bound: every schedule of 3 nodes x 2 jobs
//! within the first second after an announce.

use peerbot_simnet::modelcheck::{explore, Bounds};

#[test]
fn every_schedule_of_three_nodes_and_two_jobs_builds_each_job_with_one_winner() {
    let b = Bounds { losses: 0, dups: 0, reorders: 0, crashes: 0, horizon_ms: 1_000, ..Bounds::default() };
    let r = explore(&b);
    assert!(r.counterexample.is_none(), "{}", r.to_text());
    assert!(r.complete, "{}", r.to_text());
    // The exploration branched (deliveries against timers and build ends)
    // and reached final states whose quiet spell it checked.
    assert!(r.states > 10_000, "{}", r.to_text());
    assert!(r.finals > 0, "{}", r.to_text());
}
