//! Keeping up with the builds: freed slots taken at once, a restarted node
//! that learns who took over the attempt it gave up, and records verified
//! on several cores.

use super::*;

pub(super) const QUEUE: &str =
    "[[builder]]\nname='q'\nrequires=['os=linux']\ncollapse=false\n[[builder.step]]\nrun='true'\n";

#[test]
fn a_node_that_finishes_a_build_claims_the_next_waiting_job_at_once() {
    let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"])];
    settle(&mut nodes, 0);
    let now = 10_000;
    settle(&mut nodes, now);
    for (i, c) in ["aa01", "aa02", "aa03", "aa04", "aa05"].iter().enumerate() {
        nodes[0].announce(now, commit_with(c, i as i64, QUEUE)).unwrap();
    }
    // Both free: each takes a job at once, a stagger apart at most.
    let mut started = Vec::new();
    let mut t = now;
    while started.len() < 2 && t < now + 5_000 {
        started.extend(settle(&mut nodes, t));
        t += 100;
    }
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ne!(started[0].0, started[1].0, "one build on each node");
    // One node's build ends; with no time passing, the freed slot takes
    // the next waiting job, and the other node, busy, takes none.
    let (x, done) = started[0].clone();
    nodes[x].handle(t, Input::BuildFinished(finished(&done, t)));
    let next = settle(&mut nodes, t);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].0, x);
    assert_ne!(next[0].1.job, started[1].1.job);
    // Every node saw the slot freed and taken again by the messages alone.
    let claimed_by = |n: &NodeCore<MemStore>| n.job(&next[0].1.job).unwrap().claim.as_ref().map(|c| c.by);
    assert!(nodes.iter().all(|n| claimed_by(n) == Some(nodes[x].peer_id())));
}

/// Delivers every broadcast to every other node until all is quiet, as
/// `settle` does, except what `mute` says once it has started a build:
/// it stopped right after claiming, before its claim left.
fn settle_muting_the_claimant(nodes: &mut [NodeCore<MemStore>], now: Millis) -> Option<(usize, BuildOrder)> {
    let mut claimant = None;
    let mut token = 1_000;
    loop {
        let mut msgs = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            if claimant.as_ref().is_some_and(|(c, _)| *c == i) {
                continue;
            }
            n.handle(now, Input::Tick);
            let mut said = Vec::new();
            while let Some(o) = n.poll_output() {
                match o {
                    Output::Broadcast(b) => said.push((i, b)),
                    Output::StartBuild(order) if claimant.is_none() => claimant = Some((i, order)),
                    _ => {}
                }
            }
            if claimant.as_ref().is_none_or(|(c, _)| *c != i) {
                msgs.extend(said);
            }
        }
        if msgs.is_empty() {
            return claimant;
        }
        for (from, b) in msgs {
            let from_id = nodes[from].peer_id();
            for (j, n) in nodes.iter_mut().enumerate() {
                if j != from && claimant.as_ref().is_none_or(|(c, _)| *c != j) {
                    token += 1;
                    n.handle(now, Input::Gossip { from: from_id, token, bytes: b.clone() });
                }
            }
        }
    }
}

/// X claims a job and stops before its claim leaves. Y, which never heard
/// it, claims the same attempt once X falls silent, and builds it. X
/// restarts on its store: it gives up the attempt it held and reopens the
/// job in its own view. Y's lease for that attempt then reaches it during
/// its warm-up, and X takes Y's claim as standing, as every other node
/// does, instead of building a later attempt nobody else would accept.
#[test]
fn a_restarted_node_takes_back_the_claim_it_missed_on_the_attempt_it_gave_up() {
    let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"])];
    settle(&mut nodes, 0);
    settle(&mut nodes, 10_000);
    nodes[0].announce(10_000, commit_with("cc01", 1, QUEUE)).unwrap();
    let mut t = 10_000;
    let mut claimed = None;
    while claimed.is_none() && t < 20_000 {
        claimed = settle_muting_the_claimant(&mut nodes, t);
        t += 100;
    }
    let (x, first) = claimed.expect("someone claims");
    assert_eq!(first.attempt, 0);
    let y = 1 - x;
    let saved = nodes[x].store().clone();
    let mut alone = vec![nodes.remove(y)];
    let mut by_y = Vec::new();
    while by_y.is_empty() && t < 120_000 {
        t += 500;
        by_y = settle(&mut alone, t);
    }
    assert_eq!(by_y.len(), 1, "y takes the job once x is silent");
    assert_eq!(by_y[0].1.job, first.job);
    assert_eq!(by_y[0].1.attempt, 0, "y never heard x's claim: the same attempt");
    // X restarts on its store, and both run for a while.
    let mut cfg = Config::new(vec!["os=linux".to_string()], 1);
    cfg.seed = (x + 1) as u64;
    cfg.repos = local_repo_allowed();
    let x_node = NodeCore::new(cfg, deterministic_key((x + 1) as u64), saved, t);
    let mut both = vec![x_node, alone.pop().unwrap()];
    let mut started = Vec::new();
    let until = t + 60_000;
    while t < until {
        t += 500;
        started.extend(settle(&mut both, t));
    }
    assert!(started.is_empty(), "nobody builds the job again: {started:?}");
    let y_id = both[1].peer_id();
    for n in &both {
        let j = n.job(&first.job).unwrap();
        assert_eq!((j.attempt, j.claim.as_ref().map(|c| c.by)), (0, Some(y_id)));
    }
    assert!(both[1].running().contains_key(&first.job), "y still builds it");
}

/// A jobless change signed by `key`, its title numbered `i`.
fn signed_change(key: &libp2p_identity::Keypair, i: i64) -> Vec<u8> {
    let c = commit_with(&format!("{i:04x}"), i, QUEUE);
    let change = crate::record::Change {
        repo: c.repo,
        branch: c.branch,
        commit: c.commit,
        parents: vec![],
        author: c.author,
        committer: c.committer,
        commit_time: c.commit_time,
        title: format!("commit {i}"),
        files: vec![],
        jobs: vec![],
        recipe_error: None,
        announced_ms: i as u64,
        force: None,
        ..Default::default()
    };
    crate::record::sign(key, &Body::Change(change)).bytes
}

#[test]
fn records_verified_on_several_threads_are_answered_in_order_and_judged_alike() {
    let key = deterministic_key(9);
    let mut batch: Vec<Vec<u8>> = (0..300).map(|i| signed_change(&key, i)).collect();
    // Every seventh signature broken, one record cut short.
    for b in batch.iter_mut().step_by(7) {
        let n = b.len();
        b[n - 3] ^= 1;
    }
    batch[100].truncate(10);
    let refs: Vec<&[u8]> = batch.iter().map(|b| b.as_slice()).collect();
    let one = SignatureCheck.verify_many(&refs);
    let many = ParallelCheck { threads: 3 }.verify_many(&refs);
    assert_eq!(many.len(), refs.len());
    let judged = |v: &[Result<VerifiedRecord, crate::record::RecordError>]| {
        v.iter().map(|r| r.as_ref().map(|r| r.id).map_err(|e| e.to_string())).collect::<Vec<_>>()
    };
    assert_eq!(judged(&many), judged(&one));
    assert_eq!(one.iter().filter(|r| r.is_err()).count(), 300usize.div_ceil(7) + 1);
    for (r, b) in many.iter().zip(&batch) {
        if let Ok(r) = r {
            assert_eq!(r.id, Hash32::of(b));
        }
    }
}

#[test]
fn a_fetched_batch_says_which_of_its_ids_are_stored_so_none_is_read_back() {
    let mut n = node(1, &["os=linux"]);
    let from = deterministic_key(9).public().to_peer_id();
    let signed: Vec<Vec<u8>> = (0..4).map(|i| signed_change(&deterministic_key(9), i)).collect();
    let old = crate::record::verify(&signed[0]).unwrap();
    n.store_mut().put_record(&old).unwrap();
    let mut broken = signed[3].clone();
    let len = broken.len();
    broken[len - 3] ^= 1;
    // One stored already, two new (one sent twice), one with a bad signature.
    let batch: Vec<serde_bytes::ByteBuf> =
        [&signed[0], &signed[1], &signed[2], &signed[1], &broken].map(|b| serde_bytes::ByteBuf::from(b.clone())).into();
    let got = n.accept_batch(0, &batch, from);
    assert_eq!(got.new, 2);
    let stored: std::collections::HashSet<Hash32> = signed[..3].iter().map(|b| Hash32::of(b)).collect();
    assert_eq!(got.stored, stored, "the stored one and the two new, not the refused one");
    assert!(stored.iter().all(|id| n.store().has_record(id)) && !n.store().has_record(&Hash32::of(&broken)));
}

#[test]
fn a_forged_record_in_a_fetched_batch_is_refused_alone_and_the_rest_stored() {
    let mut n = node(1, &["os=linux"]);
    n.set_verifier(std::sync::Arc::new(ParallelCheck { threads: 2 }));
    let from = deterministic_key(9).public().to_peer_id();
    let mut signed: Vec<Vec<u8>> = (0..200).map(|i| signed_change(&deterministic_key(9), i)).collect();
    // Signed by another key, under key 9's name: well formed, not valid.
    let theirs = crate::record::sign(&deterministic_key(8), &crate::record::verify(&signed[150]).unwrap().body);
    let forged = signed[150].len() - theirs.signature.len();
    signed[150][forged..].copy_from_slice(&theirs.signature);
    let batch: Vec<serde_bytes::ByteBuf> = signed.iter().map(|b| serde_bytes::ByteBuf::from(b.clone())).collect();
    let got = n.accept_batch(0, &batch, from);
    assert_eq!(got.new, 199);
    for (i, b) in signed.iter().enumerate() {
        assert_eq!(n.store().has_record(&Hash32::of(b)), i != 150, "record {i}");
    }
    let mut refusals = vec![];
    while let Some(o) = n.poll_output() {
        if let Output::Event(Event::RecordRejected { from: f, reason }) = o {
            refusals.push((f, reason));
        }
    }
    assert_eq!(refusals, vec![(from, "bad signature".to_string())]);
}
