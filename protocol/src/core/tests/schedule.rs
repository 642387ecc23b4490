//! Scheduled builds: one build per firing whoever announces it, and what a
//! peer announces is held to the schedule.

use super::*;
use crate::recipe::schedule::scheduled_job_id;

/// 2026-12-06 18:20:00 UTC, a firing of every schedule below.
const BASE: Millis = 1_796_581_200_000;

const SCHEDULED: &str = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\n\
                         [[builder]]\nname='nightly'\nrequires=['os=linux']\nschedule='*/20 * * * * *'\n\
                         [[builder.step]]\nrun='make all'\n";

fn nodes_at(n: u64, at: Millis) -> Vec<NodeCore<MemStore>> {
    (1..=n)
        .map(|i| {
            let mut cfg = Config::new(vec!["os=linux".into()], 1);
            cfg.seed = i;
            cfg.repos = local_repo_allowed();
            NodeCore::new(cfg, deterministic_key(i), MemStore::new(), at)
        })
        .collect()
}

fn info(c: &str) -> CommitInfo {
    CommitInfo { recipe: Ok(SCHEDULED.into()), ..commit(c) }
}

/// Runs the nodes from `from` to `to` in half seconds, every build ending
/// at once; returns the builds started with when.
fn run(nodes: &mut [NodeCore<MemStore>], from: Millis, to: Millis) -> Vec<(Millis, usize, BuildOrder)> {
    let mut started = Vec::new();
    let mut t = from;
    while t <= to {
        for (i, order) in settle(nodes, t) {
            nodes[i].handle(t, Input::BuildFinished(finished(&order, t)));
            started.push((t, i, order));
        }
        t += 500;
    }
    started
}

#[test]
fn each_firing_is_built_once_by_one_of_three_nodes() {
    let mut nodes = nodes_at(3, BASE - 30_000);
    run(&mut nodes, BASE - 30_000, BASE - 20_000);
    nodes[0].announce(BASE - 20_000, info("aaaa01")).unwrap();
    let started = run(&mut nodes, BASE - 20_000, BASE + 65_000);
    let scheduled: Vec<&(Millis, usize, BuildOrder)> =
        started.iter().filter(|(_, _, o)| o.builder == "nightly").collect();
    // Firings at BASE, +20 s, +40 s, +60 s; the one at BASE - 20 s came
    // before the nodes had warmed up and caught up, and is built late.
    let firings: Vec<Millis> = (-1..=3).map(|k: i64| (BASE as i64 + k * 20_000) as Millis).collect();
    for at in &firings {
        let id = scheduled_job_id("/repo", "main", "nightly", *at);
        let builds: Vec<_> = scheduled.iter().filter(|(_, _, o)| o.job == id).collect();
        assert_eq!(builds.len(), 1, "firing {at}: one build, got {builds:?}");
        assert!(builds[0].0 >= *at, "not built before its firing");
        assert_eq!(builds[0].2.commit, "aaaa01", "the branch head");
        for n in &nodes {
            assert_eq!(n.job_state(&id), JobState::Done);
            assert_eq!(n.job(&id).unwrap().firing_ms, Some(*at));
        }
    }
    assert_eq!(scheduled.len(), firings.len(), "{scheduled:?}");
    // A scheduled builder is not built at each change.
    assert!(!started.iter().any(|(_, _, o)| o.job == crate::recipe::job_id("/repo", "aaaa01", "nightly")));
    assert_eq!(started.iter().filter(|(_, _, o)| o.builder == "linux").count(), 1);
    // One announcement per firing: the best-ranked node's, the others saw it.
    for at in &firings[1..] {
        let id = scheduled_job_id("/repo", "main", "nightly", *at);
        assert_eq!(nodes[0].store.lookup(crate::store::Lookup::JobChange, &id, 4).len(), 1);
    }
}

#[test]
fn a_new_head_is_built_at_the_next_firing_and_the_catch_up_is_bounded() {
    let mut nodes = nodes_at(2, BASE - 30_000);
    run(&mut nodes, BASE - 30_000, BASE - 25_000);
    nodes[0].announce(BASE - 25_000, info("aaaa01")).unwrap();
    run(&mut nodes, BASE - 25_000, BASE + 1_000);
    nodes[1].announce(BASE + 5_000, CommitInfo { parents: vec!["aaaa01".into()], ..info("bbbb02") }).unwrap();
    let started = run(&mut nodes, BASE + 1_000, BASE + 21_000);
    let next = scheduled_job_id("/repo", "main", "nightly", BASE + 20_000);
    let built: Vec<_> = started.iter().filter(|(_, _, o)| o.job == next).collect();
    assert_eq!(built.len(), 1);
    assert_eq!(built[0].2.commit, "bbbb02", "the head as of the firing");
    // Every node down for two hours: only the latest missed firing is
    // built (late, once warmed up), none of the hundreds before it.
    let later = BASE + 2 * 3_600_000;
    let mut fresh = nodes_at(1, later);
    let mut records = Vec::new();
    nodes[0].store.for_each_record(&mut |b| records.push(b.to_vec()));
    let from = deterministic_key(7).public().to_peer_id();
    for (token, rec) in records.into_iter().enumerate() {
        let bytes = wire::encode_gossip(&Gossip::Record(rec));
        fresh[0].handle(later, Input::Gossip { from, token: token as u64, bytes });
    }
    let started = run(&mut fresh, later, later + 30_000);
    let fired: Vec<Hash32> = started.iter().filter(|(_, _, o)| o.builder == "nightly").map(|(_, _, o)| o.job).collect();
    let id = |at: Millis| scheduled_job_id("/repo", "main", "nightly", at);
    assert_eq!(fired, [id(later), id(later + 20_000)]);
}

#[test]
fn a_peer_cannot_announce_a_firing_that_is_not() {
    let key = deterministic_key(9);
    let mut n = nodes_at(1, BASE).remove(0);
    n.announce(BASE, info("aaaa01")).unwrap();
    let jobs = crate::recipe::parse_recipe("/repo", "aaaa01", SCHEDULED).unwrap();
    let nightly = jobs.into_iter().find(|j| j.builder == "nightly").unwrap();
    let firing = |at: Millis, announced: Millis, schedule: &str| {
        let mut j = nightly.clone();
        j.id = scheduled_job_id("/repo", "main", "nightly", at);
        j.schedule = Some(schedule.into());
        let c = crate::record::Change {
            repo: "/repo".into(),
            branch: "main".into(),
            commit: "aaaa01".into(),
            jobs: vec![j],
            announced_ms: announced,
            firing_ms: Some(at),
            ..Default::default()
        };
        crate::record::sign(&key, &Body::Change(c))
    };
    // Not a firing of its schedule: the record does not verify.
    assert!(crate::record::verify(&firing(BASE + 7_000, BASE + 7_000, "*/20 * * * * *").bytes).is_err());
    // Announced before its time: does not verify either.
    assert!(crate::record::verify(&firing(BASE + 60_000, BASE, "*/20 * * * * *").bytes).is_err());
    let from = nodes_at(2, BASE)[1].peer_id();
    let heard = |n: &mut NodeCore<MemStore>, rec: &crate::record::VerifiedRecord| {
        n.handle(
            BASE + 1_000,
            Input::Gossip { from, token: 7, bytes: wire::encode_gossip(&Gossip::Record(rec.bytes.clone())) },
        );
        n.store.has_record(&rec.id)
    };
    // A firing far ahead of this node's clock, however its signer dated it.
    assert!(!heard(&mut n, &firing(BASE + 60_000, BASE + 60_000, "*/20 * * * * *")));
    // A schedule that is not the commit's.
    assert!(!heard(&mut n, &firing(BASE, BASE, "* * * * * *")));
    // The real thing is taken.
    assert!(heard(&mut n, &firing(BASE, BASE + 500, "*/20 * * * * *")));
}

#[test]
fn a_commit_with_a_scheduled_builder_is_announced_once() {
    let mut n = nodes_at(1, BASE).remove(0);
    let first = n.announce(BASE, info("aaaa01")).unwrap();
    assert!(matches!(first, Announced::New(_)));
    assert!(matches!(n.announce(BASE + 1, info("aaaa01")), Ok(Announced::Known(_))), "not a dispute");
    let Announced::New(id) = first else { unreachable!() };
    let Some(Body::Change(c)) = n.store.record(&id).map(|r| r.body.clone()) else { panic!("a change") };
    assert_eq!(c.jobs.iter().map(|j| j.builder.as_str()).collect::<Vec<_>>(), ["linux"]);
    assert_eq!(c.schedules.iter().map(|j| j.builder.as_str()).collect::<Vec<_>>(), ["nightly"]);
}

#[test]
fn two_announcements_of_one_firing_converge_on_the_smaller_record_id() {
    let spec = |commit: &str| {
        let mut j = crate::recipe::parse_recipe("/repo", commit, SCHEDULED).unwrap().remove(1);
        j.id = scheduled_job_id("/repo", "main", "nightly", BASE);
        j
    };
    let firing = |key: u64, commit: &str| {
        let c = crate::record::Change {
            repo: "/repo".into(),
            branch: "main".into(),
            commit: commit.into(),
            jobs: vec![spec(commit)],
            announced_ms: BASE,
            firing_ms: Some(BASE),
            ..Default::default()
        };
        crate::record::sign(&deterministic_key(key), &Body::Change(c))
    };
    let (x, y) = (firing(8, "aaaa01"), firing(9, "bbbb02"));
    let smaller = if x.id < y.id { &x } else { &y };
    let Body::Change(want) = &smaller.body else { unreachable!() };
    let from = deterministic_key(7).public().to_peer_id();
    for order in [[&x, &y], [&y, &x]] {
        let mut n = nodes_at(1, BASE).remove(0);
        for (token, rec) in order.iter().enumerate() {
            let bytes = wire::encode_gossip(&Gossip::Record(rec.bytes.clone()));
            n.handle(BASE + 1_000, Input::Gossip { from, token: token as u64, bytes });
        }
        let job = n.job(&spec("aaaa01").id).unwrap();
        assert_eq!((job.commit.as_str(), job.change), (want.commit.as_str(), smaller.id));
    }
}
