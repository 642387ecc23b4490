//! Bisection across nodes: the steps are announced once each, built once
//! each, and the search ends on the first failing commit.

use super::*;
use crate::bisect::{bisection, State};
use crate::store::Lookup;

const BASE: Millis = 1_796_581_200_000;

const BISECTING: &str = "[[builder]]\nname='linux'\nrequires=['os=linux']\ncollapse=true\ntree_stable_secs=1\n\
                         [[builder.step]]\nrun='make'\n\
                         [[builder]]\nname='quiet'\nrequires=['os=linux']\ncollapse=true\ntree_stable_secs=1\n\
                         bisect=false\n[[builder.step]]\nrun='make'\n";

fn nodes(n: u64) -> Vec<NodeCore<MemStore>> {
    (1..=n)
        .map(|i| {
            let mut cfg = Config::new(vec!["os=linux".into()], 1);
            cfg.seed = i;
            cfg.repos = local_repo_allowed();
            NodeCore::new(cfg, deterministic_key(i), MemStore::new(), BASE)
        })
        .collect()
}

fn info(c: &str, parent: Option<&str>, author: &str) -> CommitInfo {
    CommitInfo {
        recipe: Ok(BISECTING.into()),
        parents: parent.into_iter().map(str::to_string).collect(),
        author: author.into(),
        // Collapsing keeps the newest commit by commit time.
        commit_time: i64::from_str_radix(c, 16).unwrap(),
        ..commit(c)
    }
}

/// Runs the nodes in half seconds, each build ending at once unless it
/// lost a claim conflict: it fails when `bad` says so of its commit.
/// Returns the builds that ran to their end.
fn run(nodes: &mut [NodeCore<MemStore>], from: Millis, to: Millis, bad: &dyn Fn(&str) -> bool) -> Vec<BuildOrder> {
    let mut started = Vec::new();
    let mut t = from;
    while t <= to {
        let mut cancels = Vec::new();
        let orders = settle_full(nodes, t, &mut cancels);
        for (i, order) in orders {
            if cancels.contains(&(i, order.job)) {
                continue;
            }
            let code = if bad(&order.commit) { 1 } else { 0 };
            let step =
                StepOutcome { name: "s".into(), exit_code: Some(code), log: b"x\n".to_vec(), ..Default::default() };
            let o = BuildOutcome { steps: vec![step], ..finished(&order, t) };
            nodes[i].handle(t, Input::BuildFinished(o));
            started.push(order);
        }
        t += 500;
    }
    started
}

#[test]
fn five_commits_at_once_are_bisected_once_by_three_nodes() {
    let mut nodes = nodes(3);
    let bad = |c: &str| c >= "aaaa03";
    let mut t = BASE;
    run(&mut nodes, t, t + 15_000, &bad);
    t += 15_000;
    nodes[0].announce(t, info("aaaa00", None, "Carol")).unwrap();
    let first = run(&mut nodes, t, t + 5_000, &bad);
    assert_eq!(first.len(), 2, "both builders build the green commit");
    t += 5_000;
    let authors = ["Alice", "Bob", "Mallory", "Dave", "Erin"];
    for (i, a) in authors.iter().enumerate() {
        let c = format!("aaaa0{}", i + 1);
        let p = format!("aaaa0{i}");
        nodes[0].announce(t, info(&c, Some(&p), a)).unwrap();
    }
    let builds = run(&mut nodes, t, t + 60_000, &bad);
    let ordinary: Vec<&BuildOrder> =
        builds.iter().filter(|o| o.job == crate::recipe::job_id("/repo", &o.commit, &o.builder)).collect();
    assert_eq!(ordinary.len(), 2, "collapsed: the newest commit, once per builder: {ordinary:?}");
    let extra: Vec<&BuildOrder> = builds.iter().filter(|o| !ordinary.contains(o)).collect();
    assert!(!extra.is_empty() && extra.len() <= 3, "at most ⌈log2 5⌉ bisect builds: {extra:?}");
    assert!(extra.iter().all(|o| o.builder == "linux"), "the builder that opted out is not bisected");
    let red =
        crate::bisect::first_result(nodes[1].store(), &crate::recipe::job_id("/repo", "aaaa05", "linux")).unwrap();
    assert_eq!(red.status, Status::Failure);
    for n in &nodes {
        let b = bisection(n.store(), &red).unwrap();
        assert!(matches!(&b.state, State::Found { commit, author, .. } if commit == "aaaa03" && author == "Mallory"));
        assert_eq!(
            b.steps.len(),
            extra.len(),
            "{:?} {:?}",
            b.steps,
            extra.iter().map(|o| (&o.commit, o.job.short(), o.attempt)).collect::<Vec<_>>()
        );
        for s in &b.steps {
            // Announced once, built once.
            assert_eq!(n.store().lookup(Lookup::JobChange, &s.job, 4).len(), 1);
            assert_eq!(n.store().lookup(Lookup::JobResult, &s.job, 4).len(), 1);
        }
    }
}

/// A result of the "linux" builder at `commit`, signed by another node.
fn result_of(commit: &str, status: Status, ended_ms: Millis) -> Vec<u8> {
    let r = crate::testkit::linux_result(
        crate::recipe::job_id("/repo", commit, "linux"),
        "/repo",
        commit,
        status,
        ended_ms,
    );
    let rec = crate::record::sign(&deterministic_key(9), &Body::Result(r));
    crate::wire::encode_gossip(&crate::wire::Gossip::Record(rec.bytes))
}

#[test]
fn an_old_failure_starts_nothing_and_a_fresh_one_is_taken_over_at_the_turn() {
    // This node cannot build: it only announces.
    let mut cfg = Config::new(vec!["os=mac".into()], 1);
    cfg.repos = local_repo_allowed();
    let stagger = cfg.claim_stagger_ms;
    let mut n = NodeCore::new(cfg, deterministic_key(1), MemStore::new(), BASE);
    let t = BASE + 20_000;
    n.announce(t, info("bbbb00", None, "Carol")).unwrap();
    n.announce(t, info("bbbb01", Some("bbbb00"), "Alice")).unwrap();
    n.announce(t, info("bbbb02", Some("bbbb01"), "Bob")).unwrap();
    let from = deterministic_key(9).public().to_peer_id();
    let mut token = 0;
    let mut hear = |n: &mut NodeCore<MemStore>, now: Millis, bytes: Vec<u8>| {
        token += 1;
        n.handle(now, Input::Gossip { from, token, bytes });
    };
    let step = crate::bisect::step_job("/repo", "bbbb01", "linux", &crate::recipe::job_id("/repo", "bbbb02", "linux"));
    hear(&mut n, t, result_of("bbbb00", Status::Success, t));
    // Ended over half an hour ago: a search nobody waits for.
    let old = t - super::super::bisect::FRESH_MS - 1;
    hear(&mut n, t, result_of("bbbb02", Status::Failure, old));
    n.handle(t + 10 * stagger, Input::Tick);
    assert!(n.store().change_for_job(&step).is_none());
    // A fresh one: its signer announces at once; this node only at its turn.
    let now = t + 10 * stagger;
    hear(&mut n, now, result_of("bbbb02", Status::Failure, now));
    n.handle(now + stagger - 1, Input::Tick);
    assert!(n.store().change_for_job(&step).is_none(), "not before its turn");
    n.handle(now + stagger, Input::Tick);
    assert!(n.store().change_for_job(&step).is_some(), "taken over at its turn");
}
