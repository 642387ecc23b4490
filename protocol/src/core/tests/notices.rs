//! Notice jobs: derived from a transition on the nodes that have the
//! notifier, claimed and sent by exactly one of them, recorded everywhere,
//! and sent by another when the claimant goes silent.

use super::*;
use crate::notify::{notice_job_id, notifier_label, NoticeEvent, NotifierSpec};

const ONE: &str = "[[builder]]\nname='check'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\n";

fn with_notifier(n: u64) -> NodeCore<MemStore> {
    let mut cfg = Config::new(vec!["os=linux".into(), notifier_label("mail")], 1);
    cfg.seed = n;
    cfg.repos = local_repo_allowed();
    cfg.notifiers = vec![NotifierSpec {
        name: "mail".into(),
        on: vec![NoticeEvent::Failure, NoticeEvent::Fixed],
        bisect_wait_ms: crate::notify::BISECT_WAIT_MS,
    }];
    NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
}

fn change(c: &str, parent: Option<&str>) -> CommitInfo {
    CommitInfo { parents: parent.map(|p| vec![p.to_string()]).unwrap_or_default(), recipe: Ok(ONE.into()), ..commit(c) }
}

/// Runs `nodes` for `ms`: builds end at once, passing unless their commit
/// is in `failing`; notices are answered when `answer` is set. Returns the
/// notice orders, by node index.
fn run(
    nodes: &mut [NodeCore<MemStore>],
    now: &mut Millis,
    ms: Millis,
    failing: &[&str],
    answer: bool,
) -> Vec<(usize, BuildOrder)> {
    let mut notices = Vec::new();
    let end = *now + ms;
    while *now < end {
        for (i, order) in settle(nodes, *now) {
            if order.notice.is_some() {
                if answer {
                    let o = NoticeOutcome {
                        job: order.job,
                        attempt: order.attempt,
                        delivered: true,
                        tries: 1,
                        error: None,
                    };
                    nodes[i].handle(*now, Input::NoticeFinished(o));
                }
                notices.push((i, order));
                continue;
            }
            let mut done = finished(&order, *now);
            if failing.contains(&order.commit.as_str()) {
                done.steps[0].exit_code = Some(1);
            }
            nodes[i].handle(*now, Input::BuildFinished(done));
        }
        *now += 500;
    }
    notices
}

fn result_of(n: &NodeCore<MemStore>, c: &str) -> Hash32 {
    n.results_of(&crate::recipe::job_id("/repo", c, "check"))[0]
}

#[test]
fn a_transition_is_notified_once_by_a_node_with_the_notifier_and_failed_over() {
    // Nodes 0 and 1 have the notifier; node 2 has none and takes no part.
    let mut nodes = vec![with_notifier(1), with_notifier(2), node(3, &["os=linux"])];
    let mut now = 1_000_000;
    run(&mut nodes, &mut now, 10_000, &[], true);
    nodes[2].announce(now, change("aaaa01", None)).unwrap();
    let sent = run(&mut nodes, &mut now, 10_000, &[], true);
    assert!(sent.is_empty(), "a first pass is no transition: {sent:?}");

    nodes[2].announce(now, change("aaaa02", Some("aaaa01"))).unwrap();
    let sent = run(&mut nodes, &mut now, 20_000, &["aaaa02"], true);
    assert_eq!(sent.len(), 1, "exactly one send: {sent:?}");
    let (sender, order) = &sent[0];
    assert!(*sender < 2, "only a node with the notifier sends");
    let notice = order.notice.as_ref().unwrap();
    assert_eq!((notice.notifier.as_str(), notice.event), ("mail", NoticeEvent::Failure));
    let broke = result_of(&nodes[0], "aaaa02");
    assert_eq!(notice.result, broke);
    for n in &nodes {
        let list = n.notices_of(&broke);
        assert_eq!(list.len(), 1, "the notice record reached every node");
        assert!(list[0].1.delivered);
        assert!(n.live_jobs().is_empty(), "nothing left open");
    }

    // The fix: its claimant goes silent before it reports; the other
    // node with the notifier sends it once the lease runs out.
    nodes[2].announce(now, change("aaaa03", Some("aaaa02"))).unwrap();
    let mut sent = Vec::new();
    while sent.is_empty() {
        sent = run(&mut nodes, &mut now, 500, &[], false);
    }
    assert_eq!(sent.len(), 1, "{sent:?}");
    let silent = sent[0].0;
    assert_eq!(sent[0].1.notice.as_ref().unwrap().event, NoticeEvent::Fixed);
    let dead = nodes.remove(silent);
    let again = run(&mut nodes, &mut now, 60_000, &[], true);
    assert_eq!(again.len(), 1, "sent again by the other node only: {again:?}");
    assert_eq!(again[0].1.job, sent[0].1.job);
    assert_ne!(nodes[again[0].0].peer_id(), dead.peer_id());
    let fixed = result_of(&nodes[0], "aaaa03");
    for n in &nodes {
        assert_eq!(n.notices_of(&fixed).len(), 1);
        assert_eq!(n.notices_of(&fixed)[0].1.job, notice_job_id("mail", &fixed));
    }
}

const BISECTING: &str = "[[builder]]\nname='check'\nrequires=['os=linux']\ncollapse=true\ntree_stable_secs=1\n\
                         [[builder.step]]\nrun='make'\n";

#[test]
fn a_failure_being_bisected_is_notified_once_its_first_failing_commit_is_found() {
    const BASE: Millis = 1_796_581_200_000;
    let mut nodes: Vec<NodeCore<MemStore>> = (1..=3)
        .map(|i| {
            let mut n = with_notifier(i);
            n.handle(BASE, Input::Tick);
            n
        })
        .collect();
    let info = |c: &str, parent: Option<&str>, author: &str| CommitInfo {
        recipe: Ok(BISECTING.into()),
        parents: parent.into_iter().map(str::to_string).collect(),
        author: author.into(),
        commit_time: i64::from_str_radix(c, 16).unwrap(),
        ..commit(c)
    };
    let bad = |c: &str| c >= "aaaa03";
    // Notices sent, with whether the bisection had found the culprit on the
    // sending node at that moment.
    let mut sent: Vec<(BuildOrder, bool)> = Vec::new();
    let mut t = BASE;
    let step = |nodes: &mut Vec<NodeCore<MemStore>>, t: Millis, sent: &mut Vec<(BuildOrder, bool)>| {
        let mut cancels = Vec::new();
        for (i, order) in settle_full(nodes, t, &mut cancels) {
            if cancels.contains(&(i, order.job)) {
                continue;
            }
            if let Some(n) = &order.notice {
                let Some(Body::Result(r)) = nodes[i].store().record(&n.result).map(|r| r.body.clone()) else {
                    panic!("the result is stored where its notice is sent")
                };
                let found = crate::bisect::bisection(nodes[i].store(), &r)
                    .is_some_and(|b| matches!(b.state, crate::bisect::State::Found { .. }));
                let o =
                    NoticeOutcome { job: order.job, attempt: order.attempt, delivered: true, tries: 1, error: None };
                nodes[i].handle(t, Input::NoticeFinished(o));
                sent.push((order, found));
                continue;
            }
            let code = if bad(&order.commit) { 1 } else { 0 };
            let s = StepOutcome { name: "s".into(), exit_code: Some(code), log: b"x\n".to_vec(), ..Default::default() };
            let o = BuildOutcome { steps: vec![s], ..finished(&order, t) };
            nodes[i].handle(t, Input::BuildFinished(o));
        }
    };
    while t < BASE + 15_000 {
        step(&mut nodes, t, &mut sent);
        t += 500;
    }
    nodes[0].announce(t, info("aaaa00", None, "Carol")).unwrap();
    let green = t + 5_000;
    while t < green {
        step(&mut nodes, t, &mut sent);
        t += 500;
    }
    for (i, a) in ["Alice", "Bob", "Mallory", "Dave", "Erin"].iter().enumerate() {
        nodes[0].announce(t, info(&format!("aaaa0{}", i + 1), Some(&format!("aaaa0{i}")), a)).unwrap();
    }
    let end = t + 90_000;
    while t < end {
        step(&mut nodes, t, &mut sent);
        t += 500;
    }
    let failures: Vec<&(BuildOrder, bool)> =
        sent.iter().filter(|(o, _)| o.notice.as_ref().unwrap().event == NoticeEvent::Failure).collect();
    assert_eq!(failures.len(), 1, "one notice of the failure: {sent:?}");
    assert!(failures[0].1, "sent only once the first failing commit was found");
    assert_eq!(failures[0].0.commit, "aaaa05", "about the collapsed build's failure");
}
