//! Who broke a builder, and who fixed it, judged by commit ancestry.
//!
//! A result's previous result is the nearest result of the same builder on
//! the commit's first-parent line (the branch's own history), not the one
//! that finished before it: a forced rebuild of an old commit, or results
//! arriving out of order, change nothing. When a failure follows a pass,
//! the blamelist names the authors of every announced commit after that
//! pass up to and including this one (a collapsed build tested several),
//! walking all parents so that merged commits count too. Only the store's
//! records decide, so every node and every page size gives one answer.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use crate::ids::Hash32;
use crate::recipe::job_id;
use crate::record::{Body, BuildResult, Change, Status, VerifiedRecord};
use crate::store::Store;

/// First parents followed looking for the previous result.
pub const MAX_WALK: usize = 256;
/// Commits a blamelist covers at most; past it, `truncated` is set.
pub const MAX_RANGE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blame {
    /// The previous result of this builder in commit order: its record
    /// and status. `None` when there is none within reach, or for a
    /// forced rebuild, which is never judged.
    pub previous: Option<(Hash32, Status)>,
    /// This result failed right after a pass: the authors of the commits
    /// it was the first to test, newest first.
    pub blamelist: Vec<String>,
    /// This result passed right after a failure: the same, for the fix.
    pub fixed_by: Vec<String>,
    /// The commits this result was the first of its builder to test,
    /// newest first (this one included).
    pub commits: Vec<String>,
    /// More than `MAX_RANGE` commits: the lists hold the newest.
    pub truncated: bool,
}

fn failed(s: Status) -> bool {
    matches!(s, Status::Failure | Status::Exception)
}

fn passed(s: Status) -> bool {
    matches!(s, Status::Success | Status::Warnings)
}

fn read<S: Store + ?Sized>(store: &S, id: &Hash32) -> Option<Arc<VerifiedRecord>> {
    store.record(id)
}

/// The unforced change announcing `commit`: its record, shared with the
/// store's cache rather than copied (see `unforced`).
fn change<S: Store + ?Sized>(store: &S, repo: &str, commit: &str) -> Option<Arc<VerifiedRecord>> {
    let rec = read(store, &store.change_for_commit(repo, commit)?)?;
    unforced(&rec)?;
    Some(rec)
}

fn unforced(rec: &VerifiedRecord) -> Option<&Change> {
    match &rec.body {
        Body::Change(c) if c.force.is_none() => Some(c),
        _ => None,
    }
}

/// The verdict of `builder` on `commit`: its earliest result that is not
/// `cancelled` (a cancelled build tested nothing).
fn verdict<S: Store + ?Sized>(store: &S, repo: &str, commit: &str, builder: &str) -> Option<(Hash32, Status)> {
    let job = job_id(repo, commit, builder);
    let mut found: Option<(u64, Hash32, Status)> = None;
    for id in store.results_for_job(&job) {
        let Some(rec) = read(store, &id) else { continue };
        let Body::Result(r) = &rec.body else { continue };
        if r.status == Status::Cancelled {
            continue;
        }
        let key = (rec.time(), rec.id, r.status);
        if found.is_none_or(|f| (key.0, key.1) < (f.0, f.1)) {
            found = Some(key);
        }
    }
    found.map(|(_, id, s)| (id, s))
}

/// Judges a result against its builder's previous one in commit order.
pub fn blame<S: Store + ?Sized>(store: &S, result: &BuildResult) -> Blame {
    let r = result;
    if r.job != job_id(&r.repo, &r.commit, &r.builder) {
        // A forced rebuild (or a try build) moves no blame.
        return Blame::default();
    }
    let Some(own) = change(store, &r.repo, &r.commit) else { return Blame::default() };
    let mut out = Blame::default();
    let mut parent = unforced(&own).and_then(|c| c.parents.first().cloned());
    for _ in 0..MAX_WALK {
        let Some(p) = parent.take() else { break };
        if let Some(v) = verdict(store, &r.repo, &p, &r.builder) {
            out.previous = Some(v);
            break;
        }
        parent = change(store, &r.repo, &p).and_then(|c| unforced(&c)?.parents.first().cloned());
    }
    // The commits first tested here: this one, and its ancestors back to
    // commits with a verdict of this builder, along every parent.
    let mut authors: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: VecDeque<(String, Arc<VerifiedRecord>)> = VecDeque::from([(r.commit.clone(), own)]);
    seen.insert(r.commit.to_ascii_lowercase());
    while let Some((commit, rec)) = queue.pop_front() {
        // `change` gave only unforced changes.
        let Some(c) = unforced(&rec) else { continue };
        if out.commits.len() >= MAX_RANGE {
            out.truncated = true;
            break;
        }
        out.commits.push(commit);
        if !authors.contains(&c.author) {
            authors.push(c.author.clone());
        }
        for p in &c.parents {
            if !seen.insert(p.to_ascii_lowercase()) || verdict(store, &r.repo, p, &r.builder).is_some() {
                continue;
            }
            // A commit never announced ends its path: nothing says who wrote it.
            if let Some(pc) = change(store, &r.repo, p) {
                queue.push_back((p.clone(), pc));
            }
        }
    }
    match out.previous {
        Some((_, prev)) if failed(r.status) && passed(prev) => out.blamelist = authors,
        Some((_, prev)) if passed(r.status) && failed(prev) => out.fixed_by = authors,
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deterministic_key;
    use crate::record::{sign, Force};
    use crate::testkit::{History, REPO};

    const RECIPE: &str = "[[builder]]\nname='linux'\n[[builder.step]]\nrun='make'\n";

    #[test]
    fn a_collapsed_failure_blames_every_author_since_the_last_pass_and_the_next_breaker_alone() {
        let mut h = History::new(RECIPE);
        h.commit("a0", &[], "Carol");
        let green = h.build("a0", Status::Success);
        assert_eq!(blame(&h.store, &green), Blame { commits: vec!["a0".into()], ..Default::default() });
        // Three commits, built once (the older two collapsed into the newest).
        h.commit("a1", &["a0"], "Alice");
        h.commit("a2", &["a1"], "Bob");
        h.commit("a3", &["a2"], "Mallory");
        let red = h.build("a3", Status::Failure);
        let b = blame(&h.store, &red);
        assert_eq!(b.blamelist, vec!["Mallory", "Bob", "Alice"]);
        assert_eq!(b.commits, vec!["a3", "a2", "a1"]);
        assert!(matches!(b.previous, Some((_, Status::Success))));
        // Fixed by Bob; then Mallory alone breaks the green branch.
        h.commit("a4", &["a3"], "Bob");
        let fixed = h.build("a4", Status::Success);
        assert_eq!(blame(&h.store, &fixed).fixed_by, vec!["Bob"]);
        assert!(blame(&h.store, &fixed).blamelist.is_empty());
        h.commit("a5", &["a4"], "Mallory");
        let red2 = h.build("a5", Status::Failure);
        assert_eq!(blame(&h.store, &red2).blamelist, vec!["Mallory"]);
        // Still red: nobody new is blamed.
        h.commit("a6", &["a5"], "Alice");
        let still = h.build("a6", Status::Failure);
        assert!(blame(&h.store, &still).blamelist.is_empty());
        assert!(matches!(blame(&h.store, &still).previous, Some((_, Status::Failure))));

        // A forced rebuild of the old failing commit, passing now: it is
        // not judged, and the later results' blame does not move.
        let nonce = Hash32::of(b"force");
        let forced = h.result(crate::recipe::forced_job_id(REPO, "a3", "linux", &nonce), "a3", Status::Success);
        assert_eq!(blame(&h.store, &forced), Blame::default());
        let f = Change {
            repo: REPO.into(),
            commit: "a3".into(),
            parents: vec!["a2".into()],
            author: "Mallory".into(),
            force: Some(Force { nonce, reason: "again".into(), patch: None, bisect: None }),
            ..Default::default()
        };
        h.store.put_record(&sign(&deterministic_key(1), &Body::Change(f))).unwrap();
        assert_eq!(blame(&h.store, &red).blamelist, vec!["Mallory", "Bob", "Alice"]);
        assert_eq!(blame(&h.store, &fixed).fixed_by, vec!["Bob"]);
        assert_eq!(blame(&h.store, &red2).blamelist, vec!["Mallory"]);
    }

    #[test]
    fn results_arriving_out_of_order_are_judged_by_ancestry_not_by_time() {
        let mut h = History::new(RECIPE);
        h.commit("b0", &[], "Carol");
        h.commit("b1", &["b0"], "Alice");
        h.commit("b2", &["b1"], "Bob");
        // The newest commit's failure is stored first; then its parent's pass.
        let red = h.build("b2", Status::Failure);
        assert!(blame(&h.store, &red).previous.is_none(), "nothing built before it yet");
        h.build("b1", Status::Success);
        assert_eq!(blame(&h.store, &red).blamelist, vec!["Bob"]);
        // A cancelled build of a commit tested nothing: it stays in range.
        h.commit("b3", &["b2"], "Dave");
        h.build("b3", Status::Cancelled);
        h.commit("b4", &["b3"], "Erin");
        let fix = h.build("b4", Status::Success);
        assert_eq!(blame(&h.store, &fix).fixed_by, vec!["Erin", "Dave"]);
    }

    #[test]
    fn a_merge_blames_the_commits_it_brings_in_up_to_their_own_results() {
        let mut h = History::new(RECIPE);
        h.commit("m0", &[], "Carol");
        h.build("m0", Status::Success);
        // A side branch: f1 built and passing, f2 not built.
        h.commit("f1", &["m0"], "Frank");
        h.build("f1", Status::Success);
        h.commit("f2", &["f1"], "Grace");
        h.commit("m1", &["m0"], "Heidi");
        h.commit("m2", &["m1", "f2"], "Ivan");
        let red = h.build("m2", Status::Failure);
        let b = blame(&h.store, &red);
        assert_eq!(b.blamelist, vec!["Ivan", "Heidi", "Grace"]);
        assert_eq!(b.commits, vec!["m2", "m1", "f2"]);
        // A parent never announced ends its path.
        h.commit("x1", &["unknown"], "Judy");
        let lone = h.build("x1", Status::Failure);
        assert_eq!(blame(&h.store, &lone), Blame { commits: vec!["x1".into()], ..Default::default() });
    }
}
