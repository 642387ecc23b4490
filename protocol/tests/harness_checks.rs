//! The harness itself: deterministic, bounded, and waking nodes when asked.

mod harness;

use harness::{commit, Net};

fn scenario() -> Net {
    let mut net = Net::new(3);
    net.run_for(15_000).unwrap();
    for n in 0..5 {
        net.announce(n as usize % 3, commit(n));
        net.run_for(700).unwrap();
    }
    net.run_for(30_000).unwrap();
    net
}

#[test]
fn same_inputs_give_the_same_run() {
    let (a, b) = (scenario(), scenario());
    assert_eq!(a.traffic_text(), b.traffic_text());
    assert_eq!(a.started().len(), 5, "each job built once");
    for i in 0..3 {
        assert_eq!(a.ids(i), b.ids(i));
        assert_eq!(a.events(i).len(), b.events(i).len());
    }
}

#[test]
fn the_clock_jumps_to_the_earliest_wake_up_and_handles_all_that_is_due() {
    let mut net = Net::new(3);
    for _ in 0..200 {
        let wake = net.next_wake();
        net.step().unwrap();
        assert_eq!(net.now(), wake);
        for i in 0..3 {
            assert!(net.node(i).next_timeout() > net.now(), "node {i} was left with a timer due");
        }
    }
    assert!(net.now() > 10_000, "heartbeats and syncs moved the clock on, to {}", net.now());
}

#[test]
fn run_until_gives_up_with_a_description() {
    let mut net = Net::new(2);
    let err = net.run_until("a condition that never holds", 20_000, |_| false).unwrap_err();
    assert!(err.0.contains("not done within 20000 ms"), "{err:?}");
    assert!(err.0.contains("node 1:"), "{err:?}");
    assert!(net.now() <= 20_000);
}

#[test]
fn a_cut_link_carries_nothing_until_healed() {
    let mut net = Net::new(2);
    net.run_for(15_000).unwrap();
    net.cut(0, 1);
    net.announce(0, commit(1));
    net.run_for(1_000).unwrap();
    assert_eq!(net.ids(1).len(), 0);
    net.heal(0, 1);
    net.announce(0, commit(2));
    net.run_for(1_000).unwrap();
    assert_eq!(net.ids(1).len(), 1, "gossip flows again; the first change waits for a sync");
    net.run_until("a periodic sync brings the rest", 60_000, |net| net.converged()).unwrap();
}
