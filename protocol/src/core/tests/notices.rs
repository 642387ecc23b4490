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
    cfg.notifiers = vec![NotifierSpec { name: "mail".into(), on: vec![NoticeEvent::Failure, NoticeEvent::Fixed] }];
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
