//! Step logs: copied to the nodes that rank highest for them, fetched on
//! demand in chunks, checked against their hash.

mod harness;

use std::cmp::Reverse;
use std::collections::BTreeSet;

use harness::{commit, results, BuildPlan, Net, Traffic, Wire, REQUEST_TIMEOUT_MS};
use peerbot_protocol::core::{peer_key, score, Event};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::job_id;
use peerbot_protocol::record::BuildResult;
use peerbot_protocol::store::Store;
use peerbot_protocol::wire::{Request, BLOB_CHUNK};

const MIB: usize = 1024 * 1024;

/// A cluster of `n` nodes that built commit 1 once, with logs of the given
/// sizes; returns it with the result and the builder.
fn built(n: usize, replicas: usize, step_logs: Vec<usize>) -> (Net, BuildResult, usize) {
    let plan = BuildPlan { duration_ms: 1_000, step_logs };
    let mut net = Net::builder(n).config(|_, c| c.log_replicas = replicas).builds(Some(plan)).start();
    net.run_for(15_000).unwrap(); // warm-up: every node has heard every other
    let job = job_id("/repo", &commit(1).commit, "linux");
    net.announce(0, commit(1));
    net.run_until("the result reached every node", 60_000, |net| {
        (0..n).all(|i| !net.node(i).results_of(&job).is_empty())
    })
    .unwrap();
    net.run_for(5_000).unwrap(); // log copies
    let builds: Vec<usize> = net.started().iter().filter(|s| s.2.job == job).map(|s| s.1).collect();
    assert_eq!(builds.len(), 1, "one build: {builds:?}");
    let result = results(&net, 0, &job).pop().unwrap();
    (net, result, builds[0])
}

fn log_hashes(r: &BuildResult) -> Vec<Hash32> {
    r.steps.iter().filter_map(|s| s.log.as_ref()).map(|b| b.hash).collect()
}

fn holders(net: &Net, hash: &Hash32) -> BTreeSet<usize> {
    (0..net.len()).filter(|i| net.is_up(*i) && net.node(*i).store().has_blob(hash)).collect()
}

/// The `replicas` nodes ranking highest for the log, and its builder.
fn keepers(net: &Net, hash: &Hash32, replicas: usize, builder: usize) -> BTreeSet<usize> {
    let mut ranked: Vec<usize> = (0..net.len()).collect();
    ranked.sort_by_key(|i| Reverse(score(hash, peer_key(&net.peer(*i)))));
    ranked.into_iter().take(replicas).chain([builder]).collect()
}

/// (to, offset) of every chunk request node `i` sent for `hash`.
fn chunk_requests(net: &Net, i: usize, hash: &Hash32) -> Vec<(usize, u64)> {
    net.traffic()
        .iter()
        .filter(|t| t.from == i)
        .filter_map(|t| match t.request() {
            Some(Request::GetBlob { hash: h, offset }) if h == hash => Some((t.to, *offset)),
            _ => None,
        })
        .collect()
}

/// The end of node `i`'s fetch `token`: (ok, detail).
fn fetch_end(net: &Net, i: usize, token: u64) -> Option<(bool, String)> {
    net.events(i).iter().find_map(|(_, e)| match e {
        Event::BlobFetched { token: t, ok, detail, .. } if *t == token => Some((*ok, detail.clone())),
        _ => None,
    })
}

fn fetch(net: &mut Net, i: usize, token: u64, hash: Hash32, hint: Option<usize>) -> (bool, String) {
    let hint = hint.map(|h| net.peer(h));
    net.act(i, |c, now| c.fetch_blob(now, token, hash, hint));
    net.run_until("the fetch ended", 10 * REQUEST_TIMEOUT_MS, |net| fetch_end(net, i, token).is_some()).unwrap();
    fetch_end(net, i, token).unwrap()
}

fn chunk_offsets(len: usize) -> Vec<u64> {
    (0..len.div_ceil(BLOB_CHUNK)).map(|k| (k * BLOB_CHUNK) as u64).collect()
}

#[test]
fn step_logs_end_up_on_the_highest_ranked_nodes() {
    let (net, result, builder) = built(7, 2, vec![300, 400, 500, 600]);
    let hashes = log_hashes(&result);
    assert_eq!(hashes.len(), 4);
    let mut sets = BTreeSet::new();
    for h in &hashes {
        let want = keepers(&net, h, 2, builder);
        assert_eq!(holders(&net, h), want, "log {}", h.short());
        sets.insert(want);
    }
    assert!(sets.len() > 1, "each log has its own keepers: {sets:?}");
}

#[test]
fn a_large_log_is_copied_in_chunks_from_its_builder() {
    let len = 5 * MIB / 2;
    let (net, result, builder) = built(5, 3, vec![len]);
    let hash = log_hashes(&result)[0];
    let copies = holders(&net, &hash);
    assert_eq!(copies, keepers(&net, &hash, 3, builder));
    for i in copies.iter().copied().filter(|i| *i != builder) {
        let want: Vec<(usize, u64)> = chunk_offsets(len).into_iter().map(|o| (builder, o)).collect();
        assert_eq!(chunk_requests(&net, i, &hash), want, "node {i} copied the log chunk by chunk");
        assert_eq!(net.node(i).store().get_blob(&hash), net.node(builder).store().get_blob(&hash));
    }
}

#[test]
fn fetch_blob_gets_a_missing_log_in_chunks_from_a_holder() {
    let len = 5 * MIB / 2;
    let (mut net, result, builder) = built(5, 2, vec![len]);
    let hash = log_hashes(&result)[0];
    let had = holders(&net, &hash);
    let x = (0..5).find(|i| !had.contains(i)).expect("a node without the log");
    assert_eq!(fetch(&mut net, x, 7, hash, None), (true, "fetched".into()));
    let asked = chunk_requests(&net, x, &hash);
    let source = asked[0].0;
    assert!(had.contains(&source), "asked node {source}, a holder ({had:?})");
    let want: Vec<(usize, u64)> = chunk_offsets(len).into_iter().map(|o| (source, o)).collect();
    assert_eq!(asked, want, "three chunks from one source");
    assert_eq!(net.node(x).store().get_blob(&hash), net.node(builder).store().get_blob(&hash));
}

#[test]
fn fetch_blob_rejects_bytes_that_do_not_match_the_hash_and_tries_the_next_source() {
    let len = 5 * MIB / 2;
    let (mut net, result, builder) = built(5, 2, vec![len]);
    let hash = log_hashes(&result)[0];
    let had = holders(&net, &hash);
    let liar = *had.iter().find(|i| **i != builder).expect("a replica besides the builder");
    let x = (0..5).find(|i| !had.contains(i)).unwrap();
    // The replica's copy goes bad on its disk, same length, other bytes.
    let garbage = vec![b'x'; len];
    net.act(liar, |c, _| c.store_mut().put_blob(&hash, &garbage)).unwrap();

    assert_eq!(fetch(&mut net, x, 9, hash, Some(liar)), (true, "fetched".into()));
    let stored = net.node(x).store().get_blob(&hash).unwrap();
    assert_eq!(Hash32::of(&stored), hash, "only the bytes that match were kept");
    let asked = chunk_requests(&net, x, &hash);
    let n = chunk_offsets(len).len();
    assert_eq!(asked.len(), 2 * n, "every chunk from the liar, then every chunk again: {asked:?}");
    assert!(asked[..n].iter().all(|(to, _)| *to == liar));
    let second = asked[n].0;
    assert!(second != liar && had.contains(&second), "then a real holder, node {second}");
    let offsets: Vec<u64> = asked[n..].iter().map(|a| a.1).collect();
    assert_eq!(offsets, chunk_offsets(len), "from offset 0 again");
}

#[test]
fn fetch_blob_moves_past_an_unreachable_source() {
    let (mut net, result, builder) = built(5, 2, vec![2_000]);
    let hash = log_hashes(&result)[0];
    let had = holders(&net, &hash);
    let gone = *had.iter().find(|i| **i != builder).unwrap();
    let x = (0..5).find(|i| !had.contains(i)).unwrap();
    net.cut(x, gone);
    let start = net.now();
    assert_eq!(fetch(&mut net, x, 11, hash, Some(gone)), (true, "fetched".into()));
    assert!(net.now() >= start + REQUEST_TIMEOUT_MS, "the unreachable source was given up on a timeout");
    let asked = chunk_requests(&net, x, &hash);
    assert_eq!(asked[0].0, gone);
    assert!(asked.len() == 2 && had.contains(&asked[1].0), "{asked:?}");
}

#[test]
fn fetch_blob_of_a_log_nobody_holds_fails_after_asking_every_peer() {
    let (mut net, _, _) = built(4, 2, vec![100]);
    let hash = Hash32::of(b"no such log");
    let (ok, detail) = fetch(&mut net, 3, 13, hash, None);
    assert!(!ok, "{detail}");
    let mut asked: Vec<usize> = chunk_requests(&net, 3, &hash).into_iter().map(|(to, _)| to).collect();
    asked.sort();
    assert_eq!(asked, vec![0, 1, 2], "each peer asked once");
}

#[test]
fn a_failed_log_copy_frees_its_transfer_slot() {
    // Only node 0 builds; nodes 1 and 2 copy every log (three replicas).
    // Node 2's first four copies, every slot it has, are lost.
    let plan = BuildPlan { duration_ms: 1_000, step_logs: vec![100, 200, 300, 400] };
    let mut net = Net::builder(3)
        .config(|i, c| {
            c.log_replicas = 3;
            if i > 0 {
                c.labels = vec!["os=mac".into()];
            }
        })
        .builds(Some(plan))
        .lose(4, |t: &Traffic| t.from == 2 && matches!(t.wire, Wire::Request(Request::GetBlob { .. })))
        .start();
    net.run_for(15_000).unwrap();
    let jobs: Vec<Hash32> = (1..=2).map(|n| job_id("/repo", &commit(n).commit, "linux")).collect();
    net.announce(0, commit(1));
    net.run_for(3_000).unwrap();
    net.announce(0, commit(2));
    net.run_until("both results everywhere", 60_000, |net| {
        (0..3).all(|i| jobs.iter().all(|j| !net.node(i).results_of(j).is_empty()))
    })
    .unwrap();
    net.run_for(REQUEST_TIMEOUT_MS + 5_000).unwrap();
    let second = log_hashes(&results(&net, 0, &jobs[1]).pop().unwrap());
    for h in &second {
        assert_eq!(holders(&net, h), BTreeSet::from([0, 1, 2]), "log {} copied once slots freed", h.short());
    }
    let lost_at = net.traffic().iter().find(|t| t.lost).map(|t| t.at).unwrap();
    let is_copy = |t: &&Traffic| t.from == 2 && !t.lost && matches!(t.wire, Wire::Request(Request::GetBlob { .. }));
    let first_copy = net.traffic().iter().find(is_copy).unwrap();
    assert!(first_copy.at >= lost_at + REQUEST_TIMEOUT_MS, "the second result's copies waited for the failures");
}
