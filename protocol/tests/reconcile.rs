//! Reconciliation between a few nodes: different record sets end up equal.

mod harness;

use std::collections::BTreeSet;

use harness::{commit, jobless_changes, Net, Traffic, Wire, REQUEST_TIMEOUT_MS};
use peerbot_protocol::core::{Event, JobState};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::job_id;
use peerbot_protocol::store::Store;
use peerbot_protocol::wire::{Request, Response, MAX_RECORDS_PER_REQUEST};
use peerbot_protocol::{deterministic_key, record, Body, Change, VerifiedRecord};

fn ids_of(range: std::ops::Range<u64>) -> BTreeSet<Hash32> {
    jobless_changes(range).into_iter().map(|r| r.id).collect()
}

fn linux_job(n: u64) -> Hash32 {
    job_id("/repo", &commit(n).commit, "linux")
}

/// Records that reached node `to` in pushes and fetch replies.
fn records_carried_to(net: &Net, to: usize) -> usize {
    let carried = net.traffic().iter().filter(|t| t.to == to && !t.lost);
    carried
        .map(|t| match &t.wire {
            Wire::Request(Request::PushRecords { records }) | Wire::Response(Response::Records { records }) => {
                records.len()
            }
            _ => 0,
        })
        .sum()
}

/// Reconciliation sessions node `i` started and saw to the end.
fn sessions_finished(net: &Net, i: usize) -> usize {
    net.events(i).iter().filter(|(_, e)| matches!(e, Event::SyncFinished { .. })).count()
}

#[test]
fn returning_node_catches_up_on_what_was_published_while_it_was_down() {
    const N: u64 = 25;
    let mut net = Net::new(3);
    net.run_for(15_000).unwrap(); // past warm-up: everyone has heard everyone
    net.crash(2);
    let on_disk = net.ids(2);
    for n in 0..N {
        net.announce((n % 2) as usize, commit(n));
        net.run_for(300).unwrap();
    }
    let jobs: Vec<Hash32> = (0..N).map(linux_job).collect();
    net.run_until("every job built by nodes 0 and 1", 300_000, |net| {
        jobs.iter().all(|j| (0..2).all(|i| !net.node(i).results_of(j).is_empty()))
    })
    .unwrap();
    net.run_for(1_000).unwrap();
    assert_eq!(net.ids(2), on_disk, "a down node hears nothing");
    assert_eq!(net.ids(0), net.ids(1));
    assert!(net.ids(0).len() >= 2 * N as usize, "a change and a result per commit");

    let builds_before = net.started().len();
    net.restart(2);
    net.run_until("node 2 holds what node 0 holds", 60_000, |net| net.ids(2) == net.ids(0)).unwrap();
    net.run_for(30_000).unwrap();
    assert!(net.converged());
    for j in &jobs {
        assert_eq!(net.node(2).job_state(j), JobState::Done, "node 2 knows job {} is done", j.short());
    }
    assert!(
        net.started()[builds_before..].iter().all(|(_, i, _)| *i != 2),
        "the returning node rebuilt nothing: {:?}",
        &net.started()[builds_before..]
    );
    let carried = records_carried_to(&net, 2);
    assert!(carried >= net.ids(0).len(), "the missed records reached node 2 by reconciliation ({carried})");
}

#[test]
fn empty_node_takes_five_thousand_records_in_batches() {
    let history = jobless_changes(0..5_000);
    let mut net = Net::builder(2).records(0, &history).start();
    net.run_until("node 1 holds 5000 records", 60_000, |net| net.node(1).store().record_count() == 5_000).unwrap();
    assert_eq!(net.ids(1), ids_of(0..5_000));
    assert_eq!(net.ids(0), net.ids(1));
    net.run_for(5_000).unwrap();
    let mut batches = 0;
    for t in net.traffic() {
        let records = match t.request() {
            Some(Request::GetRecords { ids }) if t.from == 1 => ids.len(),
            Some(Request::PushRecords { records }) if t.from == 0 => records.len(),
            _ => continue,
        };
        assert!(records <= MAX_RECORDS_PER_REQUEST, "a batch of {records}");
        batches += 1;
    }
    assert!(batches >= 5_000 / MAX_RECORDS_PER_REQUEST, "{batches} batches carried 5000 records");
    let p = net.node(1).sync_progress();
    assert_eq!((p.to_fetch, p.sessions), (0, 0), "nothing left to fetch: {p:?}");
}

#[test]
fn overlapping_histories_of_three_nodes_converge_to_their_union() {
    let mut net = Net::builder(3)
        .records(0, &jobless_changes(0..2_000))
        .records(1, &jobless_changes(1_000..3_000))
        .records(2, &jobless_changes(2_500..3_500))
        .start();
    net.run_until("all three hold the union", 120_000, |net| (0..3).all(|i| net.ids(i).len() == 3_500)).unwrap();
    for i in 0..3 {
        assert_eq!(net.ids(i), ids_of(0..3_500), "node {i}");
    }
    // Each node lacked over a thousand records: more than one batch each way.
    let batches_to = |to: usize| {
        net.traffic()
            .iter()
            .filter(|t| match t.request() {
                Some(Request::GetRecords { .. }) => t.from == to,
                Some(Request::PushRecords { .. }) => t.to == to,
                _ => false,
            })
            .count()
    };
    for i in 0..3 {
        assert!(batches_to(i) >= 3, "node {i} got its records in {} batches", batches_to(i));
    }
}

#[test]
fn isolated_node_catches_up_after_it_rejoins() {
    let mut net = Net::new(3);
    net.run_for(15_000).unwrap();
    net.isolate(2);
    for n in 0..10 {
        net.announce(0, commit(100 + n));
        net.run_for(1_000).unwrap();
    }
    let jobs: Vec<Hash32> = (0..10).map(|n| linux_job(100 + n)).collect();
    net.run_until("jobs built on the majority side", 120_000, |net| {
        jobs.iter().all(|j| !net.node(1).results_of(j).is_empty())
    })
    .unwrap();
    net.run_for(REQUEST_TIMEOUT_MS).unwrap(); // node 2's syncs time out meanwhile
    assert!(net.node(2).store().record_count() == 0, "nothing crosses a cut link");
    let failed = net.events(2).iter().filter(|(_, e)| matches!(e, Event::SyncFailed { .. })).count();
    assert!(failed >= 1, "node 2's syncs over cut links failed");

    net.rejoin(2);
    net.run_until("node 2 caught up", 60_000, |net| net.converged()).unwrap();
    for j in &jobs {
        assert_eq!(net.node(2).job_state(j), JobState::Done);
    }
}

#[test]
fn a_lost_reconcile_reply_costs_one_retry() {
    let mut replies = 0;
    let mut net = Net::builder(2)
        .records(0, &jobless_changes(0..300))
        // Node 0's own sessions never get an answer: only node 1's sessions move records.
        .lose(usize::MAX, |t: &Traffic| t.from == 0 && matches!(t.wire, Wire::Request(Request::Reconcile { .. })))
        // Node 1's first session loses its reply (an empty node is sent
        // every id of so small a history in the first one).
        .lose(1, move |t: &Traffic| {
            replies += (t.to == 1 && matches!(t.wire, Wire::Response(Response::Reconcile { .. }))) as u32;
            replies == 1
        })
        .start();
    let done = net.run_until("node 1 holds all 300", 3 * REQUEST_TIMEOUT_MS, |net| net.ids(1).len() == 300).unwrap();
    assert_eq!(net.ids(1), net.ids(0));
    let failed_at = net.events(1).iter().find(|(_, e)| matches!(e, Event::SyncFailed { .. })).map(|(at, _)| *at);
    let failed_at = failed_at.expect("the session with the lost reply failed");
    assert!(failed_at >= REQUEST_TIMEOUT_MS, "it failed on the request timeout, at {failed_at}");
    assert!(done > failed_at, "the records came with the next session");
    assert_eq!(sessions_finished(&net, 1), 1, "one session finished: the retry");
}

/// Changes of about 40 KB each (a thousand files listed, the most a change keeps).
fn large_changes(range: std::ops::Range<u64>) -> Vec<VerifiedRecord> {
    let key = deterministic_key(2_000_000);
    range
        .map(|n| {
            let change = Change {
                repo: "/big".into(),
                branch: "main".into(),
                commit: format!("{n:040x}"),
                files: (0..1_000).map(|f| format!("src/module_{n}/a_rather_long_file_name_{f}.rs")).collect(),
                announced_ms: 1_000 + n * 60_000,
                ..Default::default()
            };
            record::sign(&key, &Body::Change(change))
        })
        .collect()
}

/// A `GetRecords` reply stops at about 2 MiB, but the requester counts the
/// whole batch as fetched: the session ends with `to_fetch` at 0 and most
/// records missing; each later sync (every 15 s) brings about 2 MiB more.
#[test]
fn a_session_fetches_every_record_it_found_missing() {
    let history = large_changes(0..600);
    let mut net = Net::builder(2)
        .records(0, &history)
        // Node 1 must fetch: what node 0 pushes is lost.
        .lose(usize::MAX, |t: &Traffic| t.from == 0 && matches!(t.wire, Wire::Request(Request::PushRecords { .. })))
        .start();
    net.run_until("node 1's first session and its fetches are done", 10_000, |net| {
        let p = net.node(1).sync_progress();
        sessions_finished(net, 1) > 0 && p.to_fetch == 0 && p.sessions == 0
    })
    .unwrap();
    assert_eq!(net.ids(1).len(), 600, "nothing the session found missing is left out");
}

/// The same history, fetched only: slow (see above), but complete.
#[test]
fn large_records_converge_even_when_only_fetched() {
    let mut net = Net::builder(2)
        .records(0, &large_changes(0..600))
        .lose(usize::MAX, |t: &Traffic| t.from == 0 && matches!(t.wire, Wire::Request(Request::PushRecords { .. })))
        .start();
    net.run_until("node 1 holds all 600", 300_000, |net| net.ids(1).len() == 600).unwrap();
    assert_eq!(net.ids(1), net.ids(0));
}
