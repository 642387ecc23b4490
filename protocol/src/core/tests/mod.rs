//! Whole-core scenarios: a few nodes wired by hand.

use std::collections::BTreeMap;

use super::*;
use crate::deterministic_key;
use crate::recipe::StepSpec;
use crate::record::{Body, Status};
use crate::repos::RepoPolicy;
use crate::store::MemStore;

const RECIPE: &str = "[[builder]]\nname='linux'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\n\
                      [[builder]]\nname='gpu'\nrequires=['gpu=yes']\n[[builder.step]]\nrun='nvcc'\n";

/// The local repository of these tests; a node builds it only when its
/// policy lists it.
fn local_repo_allowed() -> RepoPolicy {
    RepoPolicy::new(&["/repo".to_string()], &[]).unwrap()
}

fn node(n: u64, labels: &[&str]) -> NodeCore<MemStore> {
    let mut cfg = Config::new(labels.iter().map(|s| s.to_string()).collect(), 1);
    cfg.seed = n;
    cfg.repos = local_repo_allowed();
    NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
}

fn commit(c: &str) -> CommitInfo {
    CommitInfo {
        repo: "/repo".into(),
        branch: "main".into(),
        commit: c.into(),
        parents: vec![],
        author: "A".into(),
        committer: "A".into(),
        commit_time: 0,
        title: "t".into(),
        files: vec![],
        recipe: Ok(RECIPE.into()),
    }
}

/// Delivers every broadcast to every other node until all is quiet;
/// returns the builds started, by node index.
fn settle(nodes: &mut [NodeCore<MemStore>], now: Millis) -> Vec<(usize, BuildOrder)> {
    settle_full(nodes, now, &mut Vec::new())
}

fn settle_full(
    nodes: &mut [NodeCore<MemStore>],
    now: Millis,
    cancels: &mut Vec<(usize, Hash32)>,
) -> Vec<(usize, BuildOrder)> {
    let mut started = Vec::new();
    let mut token = 0;
    loop {
        let mut msgs = Vec::new();
        for (i, n) in nodes.iter_mut().enumerate() {
            n.handle(now, Input::Tick);
            while let Some(o) = n.poll_output() {
                match o {
                    Output::Broadcast(b) => msgs.push((i, b)),
                    Output::StartBuild(order) => started.push((i, order)),
                    Output::CancelBuild { job, .. } => cancels.push((i, job)),
                    _ => {}
                }
            }
        }
        if msgs.is_empty() {
            return started;
        }
        for (from, b) in msgs {
            let from_id = nodes[from].peer_id();
            for (j, n) in nodes.iter_mut().enumerate() {
                if j != from {
                    token += 1;
                    n.handle(now, Input::Gossip { from: from_id, token, bytes: b.clone() });
                }
            }
        }
    }
}

#[test]
fn each_job_is_claimed_once_by_an_eligible_node() {
    let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"]), node(3, &["os=linux", "gpu=yes"])];
    let mut now = 0;
    settle(&mut nodes, now); // heartbeats: everyone learns everyone's labels
    now += 10_000;
    settle(&mut nodes, now);
    assert!(matches!(nodes[0].announce(now, commit("abcd01")), Ok(Announced::New(_))));
    let mut started = Vec::new();
    for _ in 0..10 {
        started.extend(settle(&mut nodes, now));
        now += 500;
    }
    assert_eq!(started.len(), 2, "{started:?}");
    let gpu = started.iter().find(|(_, o)| o.builder == "gpu").unwrap();
    assert_eq!(gpu.0, 2, "only node 3 has gpu=yes");
    // Every node agrees on who holds each claim.
    for (i, order) in &started {
        let holder = nodes[*i].peer_id();
        for n in &nodes {
            assert_eq!(n.job(&order.job).unwrap().claim.as_ref().unwrap().by, holder);
        }
    }
    // A second announcement of the same commit is recognised.
    assert!(matches!(nodes[1].announce(now, commit("abcd01")), Ok(Announced::Known(_))));
}

#[test]
fn job_with_no_eligible_node_stays_pending() {
    let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"])];
    let mut now = 10_000;
    settle(&mut nodes, now);
    nodes[0].announce(now, commit("abcd02")).unwrap();
    let mut started = Vec::new();
    for _ in 0..20 {
        started.extend(settle(&mut nodes, now));
        now += 1_000;
    }
    assert!(started.iter().all(|(_, o)| o.builder == "linux"));
    let gpu = nodes[1].live_jobs().values().find(|j| j.spec.builder == "gpu").unwrap();
    assert_eq!(nodes[1].job_state(&gpu.spec.id), JobState::Pending);
    assert!(nodes[1].eligible(&gpu.spec.requires).is_empty());
    let id = gpu.spec.id;
    assert_eq!(nodes[1].job_status(&id), JobStatus::Pending);
    assert_eq!(
        nodes[1].waiting_reason(now, &id),
        Some(WaitingReason::NoEligibleNode { requires: vec!["gpu=yes".to_string()] })
    );
    let linux = nodes[1].live_jobs().values().find(|j| j.spec.builder == "linux").unwrap().spec.id;
    assert_eq!(nodes[1].waiting_reason(now, &linux), None, "a job being built does not wait");
}

#[test]
fn a_job_only_this_node_could_build_says_its_repository_is_not_allowed_here() {
    let mut cfg = Config::new(vec!["os=linux".to_string()], 1);
    cfg.repos = RepoPolicy::default();
    let mut n = NodeCore::new(cfg, deterministic_key(1), MemStore::new(), 0);
    let now = 10_000;
    n.handle(now, Input::Tick);
    n.announce(now, commit("abcd05")).unwrap();
    n.handle(now + 5_000, Input::Tick);
    let linux = n.live_jobs().values().find(|j| j.spec.builder == "linux").unwrap().spec.id;
    assert_eq!(n.job_status(&linux), JobStatus::Pending, "a local path is not built by default");
    assert_eq!(n.waiting_reason(now + 5_000, &linux), Some(WaitingReason::NotAllowedHere { repo: "/repo".into() }));
}

#[test]
fn forged_and_garbage_gossip_is_rejected_and_not_stored() {
    let mut a = node(1, &["os=linux"]);
    let mut b = node(2, &["os=linux"]);
    a.announce(1, commit("abcd03")).unwrap();
    let mut bytes = None;
    while let Some(o) = a.poll_output() {
        if let Output::Broadcast(bts) = o {
            if let Ok(Gossip::Record(r)) = wire::decode_gossip(&bts) {
                bytes = Some(r);
            }
        }
    }
    let mut rec = bytes.unwrap();
    let n = rec.len();
    rec[n / 2] ^= 0x40;
    let forged = wire::encode_gossip(&Gossip::Record(rec));
    b.handle(2, Input::Gossip { from: a.peer_id(), token: 7, bytes: forged });
    b.handle(2, Input::Gossip { from: a.peer_id(), token: 8, bytes: vec![0xff, 0x00, 0x13] });
    let mut verdicts = vec![];
    while let Some(o) = b.poll_output() {
        if let Output::Verdict { token, verdict } = o {
            verdicts.push((token, verdict));
        }
    }
    assert_eq!(verdicts, vec![(7, Verdict::Reject), (8, Verdict::Reject)]);
    assert_eq!(b.store().record_count(), 0);
    assert!(b.live_jobs().is_empty());
}

fn commit_with(c: &str, time: i64, recipe: &str) -> CommitInfo {
    CommitInfo { commit_time: time, recipe: Ok(recipe.into()), ..commit(c) }
}

/// Runs the cluster from `from` to `to` in 500 ms steps, finishing
/// every build at once when `finish` is set; returns the builds started.
fn run_for(nodes: &mut [NodeCore<MemStore>], from: Millis, to: Millis, finish: bool) -> Vec<(usize, BuildOrder)> {
    let mut all = Vec::new();
    let mut now = from;
    while now <= to {
        let started = settle(nodes, now);
        for (i, o) in &started {
            if finish {
                let outcome = BuildOutcome {
                    job: o.job,
                    attempt: o.attempt,
                    started_ms: now,
                    ended_ms: now,
                    steps: vec![StepOutcome {
                        name: "s".into(),
                        exit_code: Some(0),
                        log: format!("built {}\n", o.job).into_bytes(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                nodes[*i].handle(now, Input::BuildFinished(outcome));
            }
        }
        all.extend(started);
        now += 500;
    }
    settle(nodes, now);
    all
}

fn cluster() -> Vec<NodeCore<MemStore>> {
    let mut nodes = vec![node(1, &["os=linux"]), node(2, &["os=linux"]), node(3, &["os=linux"])];
    settle(&mut nodes, 0);
    settle(&mut nodes, 10_000);
    nodes
}

const STABLE: &str = "[[builder]]\nname='slow'\ntree_stable_secs=60\n[[builder.step]]\nrun='make'\n";
const COLLAPSE: &str = "[[builder]]\nname='c'\ntree_stable_secs=30\ncollapse=true\n[[builder.step]]\nrun='make'\n";

#[test]
fn tree_stable_timer_waits_for_a_quiet_branch() {
    let mut nodes = cluster();
    nodes[0].announce(10_000, commit_with("aaaa01", 1, STABLE)).unwrap();
    let early = run_for(&mut nodes, 10_000, 40_000, true);
    assert!(early.is_empty(), "nothing before the branch is quiet: {early:?}");
    // A second change at 40 s restarts the first job's timer too.
    nodes[1].announce(40_000, commit_with("aaaa02", 2, STABLE)).unwrap();
    let mid = run_for(&mut nodes, 40_000, 99_000, true);
    assert!(mid.is_empty(), "{mid:?}");
    let late = run_for(&mut nodes, 99_500, 110_000, true);
    assert_eq!(late.len(), 2, "both commits built once quiet: {late:?}");
}

#[test]
fn collapsing_builds_only_the_newest_waiting_change() {
    let mut nodes = cluster();
    nodes[0].announce(10_000, commit_with("bbbb01", 1, COLLAPSE)).unwrap();
    run_for(&mut nodes, 10_000, 12_000, true);
    nodes[1].announce(12_500, commit_with("bbbb02", 2, COLLAPSE)).unwrap();
    run_for(&mut nodes, 12_500, 14_000, true);
    nodes[2].announce(14_500, commit_with("bbbb03", 3, COLLAPSE)).unwrap();
    let built = run_for(&mut nodes, 14_500, 60_000, true);
    assert_eq!(built.len(), 1, "{built:?}");
    assert_eq!(built[0].1.commit, "bbbb03");
    let newest = built[0].1.job;
    for n in &nodes {
        for c in ["bbbb01", "bbbb02"] {
            let j = n.job(&crate::recipe::job_id("/repo", c, "c")).unwrap();
            assert_eq!(n.job_state(&j.spec.id), JobState::Superseded);
            assert!(!n.live_jobs().contains_key(&j.spec.id), "a superseded job leaves the table");
            // Recorded, not silently dropped: the chain of supersessions ends at the newest.
            let mut at = j.superseded_by.expect("superseded_by is set");
            while let Some(next) = n.job(&at).unwrap().superseded_by {
                at = next;
            }
            assert_eq!(at, newest);
        }
    }
}

#[test]
fn force_builds_a_built_commit_again_as_a_new_job() {
    let mut nodes = cluster();
    nodes[0].announce(10_000, commit("cccc01")).unwrap();
    let first = run_for(&mut nodes, 10_000, 20_000, true);
    assert_eq!(first.len(), 1, "only the linux builder has nodes: {first:?}");
    let forced = nodes[1].force(20_000, commit("cccc01"), Some("linux"), "flaky?".into()).unwrap();
    let again = run_for(&mut nodes, 20_000, 30_000, true);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].1.job, first[0].1.job, "a forced build is a job of its own");
    for n in &nodes {
        assert!(n.store().has_record(&forced));
        assert_eq!(n.results_of(&first[0].1.job).len(), 1);
        assert_eq!(n.results_of(&again[0].1.job).len(), 1);
    }
    assert!(nodes[0].force(30_000, commit("cccc01"), Some("nope"), String::new()).is_err());
}

#[test]
fn cancel_stops_waiting_and_running_jobs_everywhere() {
    let mut nodes = cluster();
    // Waiting (tree-stable) job: cancelled, never built.
    nodes[0].announce(10_000, commit_with("dddd01", 1, STABLE)).unwrap();
    run_for(&mut nodes, 10_000, 11_000, true);
    let waiting = nodes[0].live_jobs().values().find(|j| j.commit == "dddd01").unwrap().spec.id;
    nodes[2].cancel(11_000, waiting, "not needed".into()).unwrap();
    let built = run_for(&mut nodes, 11_000, 100_000, true);
    assert!(built.is_empty(), "{built:?}");
    for n in &nodes {
        assert_eq!(n.job_state(&waiting), JobState::Cancelled);
    }
    // Running job: the claimant is told to stop and records `cancelled`.
    nodes[0].announce(100_000, commit("dddd02")).unwrap();
    let started = run_for(&mut nodes, 100_000, 101_000, false);
    assert_eq!(started.len(), 1);
    let (who, order) = started[0].clone();
    nodes[(who + 1) % 3].cancel(101_000, order.job, "wrong branch".into()).unwrap();
    let mut cancels = Vec::new();
    settle_full(&mut nodes, 101_500, &mut cancels);
    assert_eq!(cancels, vec![(who, order.job)], "the claimant, and only it, was told to stop");
    let outcome = BuildOutcome {
        job: order.job,
        attempt: order.attempt,
        started_ms: 100_500,
        ended_ms: 101_600,
        cancelled: true,
        ..Default::default()
    };
    nodes[who].handle(101_600, Input::BuildFinished(outcome));
    settle(&mut nodes, 101_700);
    for n in &nodes {
        let r = n.results_of(&order.job);
        assert_eq!(r.len(), 1);
        let rec = record::decode_stored(&n.store().get_record(&r[0]).unwrap()).unwrap();
        assert!(matches!(rec.body, Body::Result(ref b) if b.status == Status::Cancelled));
    }
}

#[test]
fn log_horizon_drops_old_logs_and_keeps_records() {
    let mut cfg = Config::new(vec!["os=linux".into()], 1);
    cfg.repos = local_repo_allowed();
    cfg.log_horizon_ms = Some(10 * 24 * 3600 * 1000);
    let n = NodeCore::new(cfg, deterministic_key(9), MemStore::new(), 0);
    let mut nodes = vec![n];
    let day = 24 * 3600 * 1000;
    let blob_of = |n: &NodeCore<MemStore>, job: &Hash32| {
        let rid = n.results_of(job)[0];
        match record::decode_stored(&n.store().get_record(&rid).unwrap()).unwrap().body {
            Body::Result(r) => r.steps[0].log.as_ref().unwrap().hash,
            _ => unreachable!(),
        }
    };
    nodes[0].announce(1_000, commit("ffff01")).unwrap();
    let old = run_for(&mut nodes, 1_000, 12_000, true);
    assert_eq!(old.len(), 1);
    let old_blob = blob_of(&nodes[0], &old[0].1.job);
    assert!(nodes[0].store().has_blob(&old_blob));
    // Twenty days on, the retention pass (on its own timer) runs.
    nodes[0].announce(20 * day, commit("ffff02")).unwrap();
    let new = run_for(&mut nodes, 20 * day, 20 * day + 120_000, true);
    assert_eq!(new.len(), 1);
    let new_blob = blob_of(&nodes[0], &new[0].1.job);
    assert!(!nodes[0].store().has_blob(&old_blob), "an old log is dropped");
    assert!(nodes[0].store().has_blob(&new_blob), "a recent log stays");
    assert_eq!(nodes[0].results_of(&old[0].1.job).len(), 1, "records stay");
}

#[test]
fn busy_node_leaves_the_job_to_the_next_free_one() {
    let mut nodes = cluster();
    let mut now = 10_000;
    let mut running: BTreeMap<usize, usize> = BTreeMap::new();
    for k in 0..3 {
        nodes[k % 3].announce(now, commit(&format!("eeee0{k}"))).unwrap();
        for (i, _) in run_for(&mut nodes, now, now + 1_000, false) {
            *running.entry(i).or_default() += 1;
        }
        now += 1_500;
    }
    // Three jobs, three one-slot nodes: each node took one, none waited behind another.
    assert_eq!(running.len(), 3, "{running:?}");
    assert!(running.values().all(|n| *n == 1));
}

/// A store whose durable writes fail while `full` is set, like a full disk.
struct FullableStore {
    inner: MemStore,
    full: std::rc::Rc<std::cell::Cell<bool>>,
}

impl FullableStore {
    fn check(&self) -> Result<(), crate::store::StoreError> {
        match self.full.get() {
            true => Err(crate::store::StoreError("No space left on device".into())),
            false => Ok(()),
        }
    }
}

impl Store for FullableStore {
    fn put_record(&mut self, rec: &VerifiedRecord) -> Result<bool, crate::store::StoreError> {
        self.check()?;
        self.inner.put_record(rec)
    }
    fn get_record(&self, id: &Hash32) -> Option<Vec<u8>> {
        self.inner.get_record(id)
    }
    fn has_record(&self, id: &Hash32) -> bool {
        self.inner.has_record(id)
    }
    fn record_count(&self) -> u64 {
        self.inner.record_count()
    }
    fn keys_in(
        &self,
        lo: &crate::keyspace::SyncKey,
        hi: Option<&crate::keyspace::SyncKey>,
        limit: usize,
    ) -> Vec<crate::keyspace::SyncKey> {
        self.inner.keys_in(lo, hi, limit)
    }
    fn for_each_record(&self, f: &mut dyn FnMut(&[u8])) {
        self.inner.for_each_record(f)
    }
    fn arrivals(&self) -> u64 {
        self.inner.arrivals()
    }
    fn arrived_after(&self, after: u64, limit: usize) -> Vec<(u64, Hash32)> {
        self.inner.arrived_after(after, limit)
    }
    fn put_lookup(
        &mut self,
        lookup: crate::store::Lookup,
        key: &Hash32,
        value: &Hash32,
    ) -> Result<(), crate::store::StoreError> {
        self.check()?;
        self.inner.put_lookup(lookup, key, value)
    }
    fn lookup(&self, lookup: crate::store::Lookup, key: &Hash32, limit: usize) -> Vec<Hash32> {
        self.inner.lookup(lookup, key, limit)
    }
    fn lookup_prefix(&self, lookup: crate::store::Lookup, prefix: &[u8], limit: usize) -> Vec<(Hash32, Hash32)> {
        self.inner.lookup_prefix(lookup, prefix, limit)
    }
    fn put_blob(&mut self, hash: &Hash32, bytes: &[u8]) -> Result<(), crate::store::StoreError> {
        self.check()?;
        self.inner.put_blob(hash, bytes)
    }
    fn get_blob(&self, hash: &Hash32) -> Option<Vec<u8>> {
        self.inner.get_blob(hash)
    }
    fn has_blob(&self, hash: &Hash32) -> bool {
        self.inner.has_blob(hash)
    }
    fn delete_blob(&mut self, hash: &Hash32) -> Result<(), crate::store::StoreError> {
        self.inner.delete_blob(hash)
    }
    fn put_state(&mut self, key: &str, value: &[u8]) -> Result<(), crate::store::StoreError> {
        self.check()?;
        self.inner.put_state(key, value)
    }
    fn get_state(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.get_state(key)
    }
    fn delete_state(&mut self, key: &str) -> Result<(), crate::store::StoreError> {
        self.inner.delete_state(key)
    }
}

#[test]
fn a_full_disk_gives_the_job_back_and_it_is_built_once_space_is_freed() {
    let full = std::rc::Rc::new(std::cell::Cell::new(false));
    let store = FullableStore { inner: MemStore::new(), full: full.clone() };
    let mut cfg = Config::new(vec!["os=linux".into()], 1);
    cfg.repos = local_repo_allowed();
    let mut n = NodeCore::new(cfg, deterministic_key(5), store, 0);
    let mut now = 20_000;
    n.handle(now, Input::Tick);
    n.announce(now, commit("dddd01")).unwrap();
    let mut orders = Vec::new();
    let mut events = Vec::new();
    let drain = |n: &mut NodeCore<FullableStore>, orders: &mut Vec<BuildOrder>, events: &mut Vec<Event>| {
        while let Some(o) = n.poll_output() {
            match o {
                Output::StartBuild(b) => orders.push(b),
                Output::Event(e) => events.push(e),
                _ => {}
            }
        }
    };
    drain(&mut n, &mut orders, &mut events);
    let order = orders.pop().expect("the linux job starts");
    // The disk fills while the build runs: its log and result cannot be kept.
    full.set(true);
    now += 5_000;
    let outcome = BuildOutcome {
        job: order.job,
        attempt: order.attempt,
        started_ms: now - 5_000,
        ended_ms: now,
        steps: vec![StepOutcome { name: "s".into(), exit_code: Some(0), log: b"ok\n".to_vec(), ..Default::default() }],
        ..Default::default()
    };
    n.handle(now, Input::BuildFinished(outcome.clone()));
    drain(&mut n, &mut orders, &mut events);
    assert!(events.iter().any(|e| matches!(e, Event::StorageFailing { .. })), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Event::GaveBack { job, .. } if *job == order.job)));
    assert!(n.results_of(&order.job).is_empty());
    assert_eq!(n.job_state(&order.job), JobState::Pending, "given back, not stuck as claimed");
    assert_eq!(n.job(&order.job).unwrap().attempt, order.attempt + 1);
    // A tick; a build it starts finishes at once like the first. True when
    // one started.
    let mut tick = |n: &mut NodeCore<FullableStore>, now: Millis, events: &mut Vec<Event>| {
        n.handle(now, Input::Tick);
        drain(n, &mut orders, events);
        let Some(o) = orders.pop() else { return false };
        n.handle(now, Input::BuildFinished(BuildOutcome { attempt: o.attempt, ..outcome.clone() }));
        drain(n, &mut orders, events);
        true
    };
    // While writes fail, retries come only after a growing pause, each
    // failing the same way; the trouble is reported once.
    for _ in 0..30 {
        now += 1_000;
        tick(&mut n, now, &mut events);
    }
    assert_eq!(events.iter().filter(|e| matches!(e, Event::StorageFailing { .. })).count(), 1);
    assert!(n.storage_health().failing_since().is_some());
    // Space is freed: the next attempt is built and its result stored.
    full.set(false);
    let built = (0..120).any(|_| {
        now += 1_000;
        tick(&mut n, now, &mut events)
    });
    assert!(built, "the job is claimed again once writes work");
    assert_eq!(n.results_of(&order.job).len(), 1, "and its result is stored");
    assert!(n.storage_health().ok());
    assert!(events.iter().any(|e| matches!(e, Event::StorageRecovered { .. })));
}

/// Two steps of 60 s and 30 s; with a grace of 30 s a build is given up
/// 120 s after it started.
const TIMED: &str = "[[builder]]\nname='t'\nrequires=['os=linux']\n\
                     [[builder.step]]\nrun='make'\ntimeout_secs=60\n[[builder.step]]\nrun='test'\ntimeout_secs=30\n";

fn node_with_grace(n: u64, grace_ms: u64) -> NodeCore<MemStore> {
    let mut cfg = Config::new(vec!["os=linux".into()], 1);
    cfg.seed = n;
    cfg.repos = local_repo_allowed();
    cfg.build_grace_ms = grace_ms;
    NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
}

fn finished(order: &BuildOrder, at: Millis) -> BuildOutcome {
    BuildOutcome {
        job: order.job,
        attempt: order.attempt,
        started_ms: at,
        ended_ms: at,
        steps: vec![StepOutcome { name: "s".into(), exit_code: Some(0), log: b"ok\n".to_vec(), ..Default::default() }],
        ..Default::default()
    }
}

fn given_up(n: &mut NodeCore<MemStore>) -> Vec<(Hash32, u32)> {
    let mut out = Vec::new();
    while let Some(o) = n.poll_output() {
        if let Output::Event(Event::BuildGivenUp { job, attempt, .. }) = o {
            out.push((job, attempt));
        }
    }
    out
}

#[test]
fn give_up_deadline_is_the_steps_timeouts_and_the_grace() {
    let steps = |secs: &[u64]| -> Vec<StepSpec> { secs.iter().map(|s| StepSpec::new("s", "x", *s)).collect() };
    assert_eq!(give_up_deadline(1_000, &steps(&[60, 30]), 30_000), 1_000 + 90_000 + 30_000);
    assert_eq!(give_up_deadline(5, &[], 7), 12, "no steps: the grace alone");
    assert_eq!(give_up_deadline(1, &steps(&[u64::MAX, 1]), 1), Millis::MAX, "saturates, never wraps");
}

#[test]
fn a_build_whose_end_never_comes_frees_its_slot_and_another_node_takes_the_job() {
    let mut nodes = vec![node_with_grace(1, 30_000), node_with_grace(2, 30_000)];
    settle(&mut nodes, 0);
    settle(&mut nodes, 10_000);
    nodes[0].announce(13_000, commit_with("abab01", 1, TIMED)).unwrap();
    let started = run_for(&mut nodes, 13_000, 20_000, false);
    assert_eq!(started.len(), 1, "{started:?}");
    let (x, order) = started[0].clone();
    let y = 1 - x;
    let give_up_at = nodes[x].running()[&order.job].give_up_at;
    assert_eq!(give_up_at, nodes[x].running()[&order.job].started_ms + 120_000);
    // The executor never reports. Until the deadline the build holds the
    // slot and its lease, renewed; nobody else starts it.
    let mut cancels = Vec::new();
    let mut now = 20_000;
    while now < give_up_at {
        assert!(settle_full(&mut nodes, now, &mut cancels).is_empty());
        now += 500;
    }
    assert!(cancels.is_empty(), "{cancels:?}");
    assert_eq!(nodes[y].job(&order.job).unwrap().claim.as_ref().map(|c| c.by), Some(nodes[x].peer_id()));
    assert_eq!(nodes[x].running().len(), 1);
    // At the deadline: the executor is told to stop, the slot frees, the
    // release reaches the other node, which reopens the job at once and
    // claims the next attempt once its stagger is over.
    let mut restarted = settle_full(&mut nodes, give_up_at, &mut cancels);
    assert_eq!(cancels, vec![(x, order.job)]);
    assert!(nodes[x].running().is_empty(), "the slot is free");
    assert!(nodes[x].next_timeout() > give_up_at, "the give-up timer moved on");
    let seen_by_y = &nodes[y].job(&order.job).unwrap();
    assert_eq!(seen_by_y.attempt, 1, "reopened on the release, not on a lease running out");
    assert_eq!(seen_by_y.lost.last().map(|l| l.reason.as_str()), Some(GIVEN_UP_REASON));
    let mut t = give_up_at;
    while restarted.is_empty() && t < give_up_at + 10_000 {
        t += 500;
        restarted = settle_full(&mut nodes, t, &mut cancels);
    }
    assert_eq!(restarted.len(), 1, "the job is claimed again");
    assert_eq!(restarted[0].1.attempt, 1);
    let (z, next) = restarted[0].clone();
    // The lost attempt's end finally arrives: ignored, nothing published.
    nodes[x].handle(t, Input::BuildFinished(finished(&order, t)));
    settle(&mut nodes, t);
    assert!(nodes.iter().all(|n| n.results_of(&order.job).is_empty()));
    assert_eq!(nodes[z].running().get(&order.job).map(|b| b.attempt), Some(1));
    nodes[z].handle(t + 1, Input::BuildFinished(finished(&next, t + 1)));
    settle(&mut nodes, t + 1);
    for n in &nodes {
        assert_eq!(n.results_of(&order.job).len(), 1, "built once, by attempt 1");
    }
}

#[test]
fn the_only_eligible_node_gives_up_a_lost_build_and_builds_the_job_again() {
    // As a cluster's only gpu node would: nobody else can take the job.
    let mut nodes = vec![node_with_grace(1, 30_000)];
    settle(&mut nodes, 0);
    nodes[0].announce(13_000, commit_with("abab02", 1, TIMED)).unwrap();
    let started = run_for(&mut nodes, 13_000, 14_000, false);
    let (_, first) = started[0].clone();
    let build = nodes[0].running()[&first.job].clone();
    let give_up_at = build.give_up_at;
    assert_eq!(give_up_at, build.started_ms + 120_000, "steps' timeouts (90 s) and the grace (30 s)");
    nodes[0].handle(give_up_at - 1, Input::Tick);
    assert!(given_up(&mut nodes[0]).is_empty());
    nodes[0].handle(give_up_at, Input::Tick);
    assert_eq!(given_up(&mut nodes[0]), vec![(first.job, 0)]);
    let again = run_for(&mut nodes, give_up_at, give_up_at + 5_000, false);
    assert_eq!(again.iter().map(|(_, o)| (o.job, o.attempt)).collect::<Vec<_>>(), vec![(first.job, 1)]);
    // A late end of attempt 0 neither frees attempt 1's slot nor publishes.
    let now = give_up_at + 5_000;
    nodes[0].handle(now, Input::BuildFinished(finished(&first, now)));
    assert_eq!(nodes[0].running().get(&first.job).map(|b| b.attempt), Some(1));
    assert!(nodes[0].results_of(&first.job).is_empty());
    nodes[0].handle(now + 1, Input::BuildFinished(finished(&again[0].1, now + 1)));
    assert!(nodes[0].running().is_empty());
    assert_eq!(nodes[0].results_of(&first.job).len(), 1);
}

#[test]
fn a_node_that_hears_a_later_attempt_before_its_own_expiry_keeps_the_lost_one() {
    let mut nodes = cluster();
    nodes[0].announce(13_000, commit_with("abab03", 1, RECIPE)).unwrap();
    let started = run_for(&mut nodes, 13_000, 16_000, false);
    assert_eq!(started.len(), 1, "{started:?}");
    let (x, first) = started[0].clone();
    let (y, z) = match x {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    // x dies. y alone runs on until its lease of x's attempt runs out and it
    // claims the next one; z hears nothing until then.
    let mut gossip = Vec::new();
    let mut second = None;
    let mut now = 16_500;
    while second.is_none() && now < 600_000 {
        nodes[y].handle(now, Input::Tick);
        while let Some(o) = nodes[y].poll_output() {
            match o {
                Output::Broadcast(b) => gossip.push(b),
                Output::StartBuild(order) => second = Some(order),
                _ => {}
            }
        }
        now += 500;
    }
    let second = second.expect("y claims the job once x's lease runs out");
    assert_eq!(second.attempt, 1);
    nodes[y].handle(now, Input::BuildFinished(finished(&second, now)));
    while let Some(o) = nodes[y].poll_output() {
        if let Output::Broadcast(b) = o {
            gossip.push(b);
        }
    }
    // z gets it all while its own view of x's lease has not run out yet
    // (it heard x's last renewal a little later than y did).
    let y_id = nodes[y].peer_id();
    for (token, bytes) in gossip.into_iter().enumerate() {
        nodes[z].handle(now - 5_000, Input::Gossip { from: y_id, token: token as u64, bytes });
    }
    assert_eq!(nodes[z].results_of(&first.job).len(), 1, "z has y's result");
    let x_id = nodes[x].peer_id();
    let lost = |n: &NodeCore<MemStore>| {
        n.job(&first.job).unwrap().lost.iter().map(|l| (l.attempt, l.holder, l.reason.clone())).collect::<Vec<_>>()
    };
    assert_eq!(lost(&nodes[z]), vec![(0, x_id, "taken over by attempt 1".to_string())]);
    assert_eq!(lost(&nodes[y]), vec![(0, x_id, "lease expired".to_string())]);
}

mod bisect;
mod claiming;
mod depends;
mod notices;
mod schedule;
mod startup;
mod trust;
