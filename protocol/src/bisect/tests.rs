use proptest::prelude::*;

use super::*;
use crate::deterministic_key;
use crate::record::{sign, verify};
use crate::testkit::{History, REPO};

const RECIPE: &str = "[[builder]]\nname='linux'\ncollapse=true\n[[builder.step]]\nrun='make'\n";

/// Runs a search to its end against a range whose first bad commit is
/// `bad`; returns the decision and the builds made.
fn run(n: usize, bad: usize) -> (Decision, usize) {
    let mut built: Vec<usize> = Vec::new();
    loop {
        let status = |i: usize| built.contains(&i).then_some(if i >= bad { Status::Failure } else { Status::Success });
        match search(n, status) {
            (_, Decision::Next(i)) => {
                assert!(i < n - 1, "the known failing commit is never built again");
                assert!(!built.contains(&i), "nothing is built twice");
                built.push(i);
            }
            (path, d) => {
                assert_eq!(path.len(), built.len());
                return (d, built.len());
            }
        }
    }
}

#[test]
fn every_range_finds_its_first_bad_commit_within_the_bound() {
    assert_eq!((max_builds(1), max_builds(2), max_builds(4), max_builds(5), max_builds(64)), (0, 1, 2, 3, 6));
    for n in 1..=MAX_CANDIDATES {
        for bad in 0..n {
            let (d, builds) = run(n, bad);
            assert_eq!(d, Decision::Found(bad), "n={n} bad={bad}");
            assert!(builds <= max_builds(n), "n={n} bad={bad}: {builds} builds");
        }
    }
}

proptest! {
    #[test]
    fn a_build_that_neither_passes_nor_fails_ends_the_search(n in 2usize..64, bad in 0usize..64, s in 0usize..2) {
        let bad = bad % n;
        let odd = [Status::Exception, Status::Cancelled][s];
        let (path, d) = search(n, |i| Some(if i == (n - 1) / 2 { odd } else if i >= bad { Status::Failure } else { Status::Success }));
        prop_assert_eq!(path, vec![(n - 1) / 2]);
        prop_assert_eq!(d, Decision::Inconclusive((n - 1) / 2, odd));
    }
}

/// Announces the next step as a node would, and builds it: it fails
/// from `bad` on.
fn step(h: &mut History, red: &BuildResult, order: &[&str], bad: &str) -> Step {
    let b = bisection(&h.store, red).unwrap();
    let now = h.tick();
    let c = b.step_change(&h.store, now).unwrap();
    let rec = verify(&sign(&deterministic_key(3), &Body::Change(c.clone())).bytes).expect("a valid change");
    h.store.put_record(&rec).unwrap();
    let pos = |x: &str| order.iter().position(|o| *o == x).unwrap();
    let status = if pos(&c.commit) >= pos(bad) { Status::Failure } else { Status::Success };
    let r = h.result(c.jobs[0].id, &c.commit, status);
    assert_eq!(origin_of(&h.store, &r).unwrap(), *red, "a bisect build leads to its origin");
    assert_eq!(bisect_ref(&h.store, &r.job).unwrap().origin, red.job);
    bisection(&h.store, red).unwrap().steps.into_iter().find(|s| s.commit == c.commit).unwrap()
}

#[test]
fn five_commits_at_once_find_the_third_in_at_most_three_builds() {
    let mut h = History::new(RECIPE);
    h.commit("a0", &[], "Carol");
    h.build("a0", Status::Success);
    let order = ["a1", "a2", "a3", "a4", "a5"];
    let authors = ["Alice", "Bob", "Mallory", "Dave", "Erin"];
    let mut parent = "a0";
    for (c, a) in order.iter().zip(authors) {
        h.commit(c, &[parent], a);
        parent = c;
    }
    let red = h.build("a5", Status::Failure);
    let b = bisection(&h.store, &red).unwrap();
    assert_eq!(b.good, "a0");
    assert_eq!(b.candidates.iter().map(|c| c.commit.as_str()).collect::<Vec<_>>(), order);
    assert_eq!(b.max_builds, 3);
    assert_eq!(b.state, State::Searching { next: "a3".into() });
    assert!(!b.steps[0].announced && b.steps[0].status.is_none());
    // The job is the same whoever announces it.
    assert_eq!(b.next_step().unwrap().1, step_job(REPO, "a3", "linux", &red.job));

    let s = step(&mut h, &red, &order, "a3");
    assert_eq!((s.commit.as_str(), s.status, s.announced), ("a3", Some(Status::Failure), true));
    let b = bisection(&h.store, &red).unwrap();
    assert_eq!(b.state, State::Searching { next: "a2".into() });
    let s = step(&mut h, &red, &order, "a3");
    assert_eq!((s.commit.as_str(), s.status), ("a2", Some(Status::Success)));
    let b = bisection(&h.store, &red).unwrap();
    assert_eq!(
        b.state,
        State::Found { commit: "a3".into(), author: "Mallory".into(), title: "Mallory's change".into() }
    );
    assert_eq!(b.steps.len(), 2);
    assert!(b.next_step().is_none() && b.step_change(&h.store, 0).is_none());
    // Blame is unmoved by the bisect builds.
    assert_eq!(crate::blame::blame(&h.store, &red).commits.len(), 5);
    // A bisect build's own result starts no search of its own.
    let step = h.store.record(&b.steps[0].result.unwrap()).unwrap();
    let Body::Result(step) = &step.body else { unreachable!() };
    assert!(bisection(&h.store, step).is_none());
}

#[test]
fn no_search_without_a_range_a_pass_before_or_the_builders_consent() {
    let mut h = History::new(RECIPE);
    h.commit("b0", &[], "Carol");
    h.build("b0", Status::Success);
    h.commit("b1", &["b0"], "Alice");
    let one = h.build("b1", Status::Failure);
    assert!(bisection(&h.store, &one).is_none(), "one commit: blame names it already");
    h.commit("b2", &["b1"], "Bob");
    h.commit("b3", &["b2"], "Bob");
    let still = h.build("b3", Status::Failure);
    assert!(bisection(&h.store, &still).is_none(), "the previous result failed");
    // Opted out.
    let off = "[[builder]]\nname='linux'\nbisect=false\n[[builder.step]]\nrun='make'\n";
    h.commit_with("c0", &[], "Carol", off);
    h.build("c0", Status::Success);
    h.commit_with("c1", &["c0"], "Alice", off);
    h.commit_with("c2", &["c1"], "Bob", off);
    let r = h.build("c2", Status::Failure);
    assert!(bisection(&h.store, &r).is_none());
    // An exception is not a failure to search for.
    h.commit("d0", &[], "Carol");
    h.build("d0", Status::Success);
    h.commit("d1", &["d0"], "Alice");
    h.commit("d2", &["d1"], "Bob");
    let r = h.build("d2", Status::Exception);
    assert!(bisection(&h.store, &r).is_none());
    let red = h.build("d2", Status::Failure);
    assert!(bisection(&h.store, &red).is_some());
}

#[test]
fn a_bisect_change_must_carry_the_nonce_its_origin_and_commit_make() {
    let mut h = History::new(RECIPE);
    h.commit("e0", &[], "Carol");
    h.build("e0", Status::Success);
    h.commit("e1", &["e0"], "Alice");
    h.commit("e2", &["e1"], "Bob");
    let red = h.build("e2", Status::Failure);
    let b = bisection(&h.store, &red).unwrap();
    let mut c = b.step_change(&h.store, 99).unwrap();
    assert!(verify(&sign(&deterministic_key(3), &Body::Change(c.clone())).bytes).is_ok());
    // Another nonce, with job ids made to match it: refused all the same.
    let other = Hash32::of(b"mine");
    c.force.as_mut().unwrap().nonce = other;
    c.jobs[0].id = forced_job_id(REPO, &c.commit, "linux", &other);
    assert!(verify(&sign(&deterministic_key(3), &Body::Change(c.clone())).bytes).is_err());
    // A forced rebuild without the field encodes as before.
    let f = Force { nonce: other, reason: "r".into(), patch: None, bisect: None };
    assert!(!crate::codec::encode(&f).windows(6).any(|w| w == b"bisect"));
}

#[test]
fn a_commit_whose_recipe_lacks_the_builder_ends_the_search() {
    let mut h = History::new(RECIPE);
    h.commit("f0", &[], "Carol");
    h.build("f0", Status::Success);
    h.commit_with("f1", &["f0"], "Alice", "[[builder]]\nname='other'\n[[builder.step]]\nrun='x'\n");
    h.commit("f2", &["f1"], "Bob");
    let r = h.build("f2", Status::Failure);
    let b = bisection(&h.store, &r).unwrap();
    assert!(matches!(b.state, State::GaveUp { ref reason } if reason.contains("no builder")), "{:?}", b.state);
    assert!(b.next_step().is_none());
}
