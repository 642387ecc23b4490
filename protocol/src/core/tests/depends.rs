//! `depends_on`: a dependent job is built only after its dependency passed,
//! and settled by a "skipped" result when it did not.

use super::*;

const DEPS: &str = "[[builder]]\nname='build'\nrequires=['os=linux']\n[[builder.step]]\nrun='make'\n\
                    [[builder]]\nname='test'\nrequires=['os=linux']\ndepends_on=['build']\n\
                    [[builder.step]]\nrun='make test'\n";

/// One node with two executors builds commit aaaa; `build` exits with
/// `exit`. Returns the builds started, in order, and the node.
fn run(exit: i32) -> (Vec<BuildOrder>, NodeCore<MemStore>) {
    let mut cfg = Config::new(vec!["os=linux".into()], 2);
    cfg.repos = local_repo_allowed();
    let mut n = NodeCore::new(cfg, deterministic_key(1), MemStore::new(), 0);
    n.announce(0, CommitInfo { recipe: Ok(DEPS.into()), ..commit("aaaa") }).unwrap();
    let mut started = Vec::new();
    for t in (0..120_000).step_by(500) {
        n.handle(t, Input::Tick);
        let mut orders = Vec::new();
        while let Some(o) = n.poll_output() {
            if let Output::StartBuild(order) = o {
                orders.push(order);
            }
        }
        for order in orders {
            if order.builder == "test" {
                let build = crate::recipe::job_id("/repo", "aaaa", "build");
                let passed = n.result_statuses(&build).iter().any(|(_, s)| *s == Status::Success);
                assert!(passed, "test starts only once build's success is stored here");
            }
            let mut done = finished(&order, t);
            if order.builder == "build" {
                done.steps[0].exit_code = Some(exit);
            }
            n.handle(t, Input::BuildFinished(done));
            started.push(order);
        }
    }
    (started, n)
}

#[test]
fn a_dependent_builds_after_its_dependency_passed() {
    let (started, n) = run(0);
    let order: Vec<&str> = started.iter().map(|o| o.builder.as_str()).collect();
    assert_eq!(order, ["build", "test"]);
    let test = crate::recipe::job_id("/repo", "aaaa", "test");
    assert_eq!(n.result_statuses(&test).iter().map(|(_, s)| *s).collect::<Vec<_>>(), [Status::Success]);
}

#[test]
fn a_dependent_is_skipped_when_its_dependency_failed() {
    let (started, n) = run(1);
    let order: Vec<&str> = started.iter().map(|o| o.builder.as_str()).collect();
    assert_eq!(order, ["build"], "test is never built");
    let test = crate::recipe::job_id("/repo", "aaaa", "test");
    assert_eq!(n.job_state(&test), JobState::Done);
    let results = n.results_of(&test);
    assert_eq!(results.len(), 1, "one skipped result");
    let Some(Body::Result(r)) = n.store.record(&results[0]).map(|r| r.body.clone()) else { panic!("a result") };
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(r.error.as_deref(), Some("skipped: dependency \"build\" ended failure"));
    assert!(r.steps.is_empty());
}

#[test]
fn a_dependent_waits_while_its_dependency_is_not_built() {
    // Nobody can build `build` (it needs a GPU): `test` waits, unclaimed.
    let recipe = DEPS.replacen("requires=['os=linux']", "requires=['gpu=yes']", 1);
    let mut n = node(1, &["os=linux"]);
    n.announce(0, CommitInfo { recipe: Ok(recipe), ..commit("aaaa") }).unwrap();
    for t in (0..60_000).step_by(500) {
        n.handle(t, Input::Tick);
        while let Some(o) = n.poll_output() {
            assert!(!matches!(o, Output::StartBuild(_)), "nothing is buildable here yet");
        }
    }
    let test = crate::recipe::job_id("/repo", "aaaa", "test");
    assert_eq!(n.job_state(&test), JobState::Pending);
    assert_eq!(n.waiting_reason(60_000, &test), Some(WaitingReason::Dependencies { builders: vec!["build".into()] }));
}
