//! The transfer queue: record fetches and pushes, at most a few in flight.

mod harness;

use std::collections::BTreeSet;

use harness::{jobless_changes, Net, Traffic, Wire, REQUEST_TIMEOUT_MS};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::wire::{Request, Response, MAX_RECORDS_PER_REQUEST};

/// Records in one fetch.
const BATCH: u64 = MAX_RECORDS_PER_REQUEST as u64;

/// The core's `MAX_TRANSFERS`, which is not public.
const TRANSFER_LIMIT: usize = 4;

fn ids_of(range: std::ops::Range<u64>) -> BTreeSet<Hash32> {
    jobless_changes(range).into_iter().map(|r| r.id).collect()
}

fn is_push(t: &Traffic) -> bool {
    matches!(t.wire, Wire::Request(Request::PushRecords { .. }))
}

fn is_fetch(t: &Traffic) -> bool {
    matches!(t.wire, Wire::Request(Request::GetRecords { .. }))
}

/// (when sent, to whom, ids, lost) of each record fetch node `i` made.
fn fetches_by(net: &Net, i: usize) -> Vec<(u64, usize, Vec<Hash32>, bool)> {
    net.traffic()
        .iter()
        .filter(|t| t.from == i)
        .filter_map(|t| match t.request() {
            Some(Request::GetRecords { ids }) => Some((t.at, t.to, ids.clone(), t.lost)),
            _ => None,
        })
        .collect()
}

#[test]
fn record_transfers_stay_within_the_in_flight_limit() {
    // Pushes to node 2 are lost, so it must fetch all the records itself,
    // from two peers at once: eight batches for four slots.
    let mut net = Net::builder(3)
        .records(0, &jobless_changes(0..4 * BATCH))
        .records(1, &jobless_changes(4 * BATCH..8 * BATCH))
        .lose(usize::MAX, |t: &Traffic| t.to == 2 && is_push(t))
        .start();
    let all = 8 * BATCH as usize;
    net.run_until("all hold them all", 120_000, |net| (0..3).all(|i| net.ids(i).len() == all)).unwrap();
    for i in 0..3 {
        assert_eq!(net.ids(i), ids_of(0..8 * BATCH), "node {i}");
        let peak = net.peak_record_transfers(i);
        assert!(peak <= TRANSFER_LIMIT, "node {i} had {peak} record transfers out at once");
    }
    assert_eq!(net.peak_record_transfers(2), TRANSFER_LIMIT, "node 2 had enough queued to fill every slot");
    let sources: BTreeSet<usize> = fetches_by(&net, 2).iter().map(|f| f.1).collect();
    assert_eq!(sources, BTreeSet::from([0, 1]), "one queue for fetches from both peers");
}

#[test]
fn failed_fetches_free_their_slots_and_catch_up_completes() {
    // Six batches; the first four fetches, every slot, are lost. Pushes
    // are lost too, so fetches are the only way in.
    let n = 6 * BATCH - 72;
    let mut net = Net::builder(2)
        .records(0, &jobless_changes(0..n))
        .lose(usize::MAX, is_push)
        .lose(TRANSFER_LIMIT, |t: &Traffic| t.from == 1 && is_fetch(t))
        .start();
    net.run_until("node 1 holds them all", 600_000, |net| net.ids(1).len() == n as usize).unwrap();
    assert_eq!(net.ids(1), ids_of(0..n));

    let fetches = fetches_by(&net, 1);
    let lost: Vec<_> = fetches.iter().filter(|f| f.3).collect();
    assert_eq!(lost.len(), TRANSFER_LIMIT);
    let fifth = &fetches[TRANSFER_LIMIT];
    assert!(
        fifth.0 >= lost[0].0 + REQUEST_TIMEOUT_MS,
        "the fifth fetch waited for a failure to free a slot: sent at {}, first loss at {}",
        fifth.0,
        lost[0].0
    );
    // The lost batches' records came with a later session.
    let refetched: BTreeSet<Hash32> = fetches.iter().filter(|f| !f.3).flat_map(|f| f.2.iter().copied()).collect();
    assert!(lost.iter().all(|f| f.2.iter().all(|id| refetched.contains(id))));
    assert!(net.peak_record_transfers(1) <= TRANSFER_LIMIT);
    net.run_for(1_000).unwrap();
    let p = net.node(1).sync_progress();
    assert_eq!((p.to_fetch, p.sessions), (0, 0), "nothing left hanging: {p:?}");
}

#[test]
fn fetches_to_a_crashed_peer_fail_and_another_peer_supplies_the_records() {
    // Nodes 0 and 1 hold the same history; node 2 fetches it (pushes lost)
    // and node 0 crashes as the first fetches leave for it.
    let history = jobless_changes(0..3_000);
    let mut net = Net::builder(3)
        .records(0, &history)
        .records(1, &history)
        .lose(usize::MAX, |t: &Traffic| t.to == 2 && is_push(t))
        .start();
    net.run_until("node 2 fetches from node 0", 10_000, |net| fetches_by(net, 2).iter().any(|f| f.1 == 0)).unwrap();
    net.crash(0);
    net.run_until("node 2 holds 3000", 600_000, |net| net.ids(2).len() == 3_000).unwrap();
    assert_eq!(net.ids(2), net.ids(1));
    assert!(net.peak_record_transfers(2) <= TRANSFER_LIMIT);
    let is_records = |t: &&Traffic| matches!(t.wire, Wire::Response(Response::Records { .. }));
    let answered = net.traffic().iter().filter(|t| t.from == 0 && t.to == 2).filter(is_records);
    assert_eq!(answered.count(), 0, "node 0 went down before it answered a fetch");
    net.run_for(REQUEST_TIMEOUT_MS + 1_000).unwrap();
    let p = net.node(2).sync_progress();
    assert_eq!(p.to_fetch, 0, "the requests to the crashed peer failed and released their slots: {p:?}");
    assert_eq!(net.outstanding(2).count(), 0);
}

/// Node 2 reconciles with two peers that hold the same 3000 records. Each
/// session queues every missing id, so the records are fetched from both.
#[test]
fn catching_up_from_two_peers_fetches_each_record_once() {
    let history = jobless_changes(0..3_000);
    let mut net = Net::builder(3)
        .records(0, &history)
        .records(1, &history)
        .lose(usize::MAX, |t: &Traffic| t.to == 2 && is_push(t))
        .start();
    net.run_until("node 2 holds 3000", 120_000, |net| net.ids(2).len() == 3_000).unwrap();
    net.run_for(5_000).unwrap();
    let asked: usize = fetches_by(&net, 2).iter().map(|f| f.2.len()).sum();
    assert_eq!(asked, 3_000, "record ids node 2 asked for, counted with repeats");
}
