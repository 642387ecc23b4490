//! Histories for tests: changes and results of one repository's `main`,
//! stored commit by commit, one second apart, for the tests of blame and
//! bisection.

use crate::deterministic_key;
use crate::ids::Hash32;
use crate::recipe::job_id;
use crate::record::{sign, BuildResult, Change, Status};
use crate::store::{MemStore, Store};
use crate::Body;

pub const REPO: &str = "https://example.org/r.git";

/// A result of the "linux" builder at `commit`: one attempt, no steps,
/// ended at `at`.
pub fn linux_result(job: Hash32, repo: &str, commit: &str, status: Status, at: u64) -> BuildResult {
    BuildResult {
        job,
        repo: repo.into(),
        branch: "main".into(),
        commit: commit.into(),
        builder: "linux".into(),
        attempt: 0,
        labels: vec![],
        started_ms: at,
        ended_ms: at,
        status,
        steps: vec![],
        metrics: Default::default(),
        failed_step: None,
        error: None,
        author: String::new(),
        title: String::new(),
        node_name: String::new(),
    }
}

pub struct History {
    pub store: MemStore,
    recipe: &'static str,
    t: u64,
}

impl History {
    /// Commits announce the jobs of `recipe` unless they name their own.
    pub fn new(recipe: &'static str) -> Self {
        History { store: MemStore::new(), recipe, t: 1_000 }
    }

    pub fn tick(&mut self) -> u64 {
        self.t += 1_000;
        self.t
    }

    pub fn commit(&mut self, commit: &str, parents: &[&str], author: &str) {
        self.commit_with(commit, parents, author, self.recipe)
    }

    pub fn commit_with(&mut self, commit: &str, parents: &[&str], author: &str, recipe: &str) {
        let jobs = crate::recipe::parse_recipe(REPO, commit, recipe).unwrap();
        let c = Change {
            repo: REPO.into(),
            branch: "main".into(),
            commit: commit.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            author: author.into(),
            title: format!("{author}'s change"),
            jobs,
            announced_ms: self.tick(),
            ..Default::default()
        };
        self.store.put_record(&sign(&deterministic_key(1), &Body::Change(c))).unwrap();
    }

    /// A result of job `job` at `commit`, signed by another node and stored.
    pub fn result(&mut self, job: Hash32, commit: &str, status: Status) -> BuildResult {
        let at = self.tick();
        let r = linux_result(job, REPO, commit, status, at);
        self.store.put_record(&sign(&deterministic_key(2), &Body::Result(r.clone()))).unwrap();
        r
    }

    pub fn build(&mut self, commit: &str, status: Status) -> BuildResult {
        self.result(job_id(REPO, commit, "linux"), commit, status)
    }
}
