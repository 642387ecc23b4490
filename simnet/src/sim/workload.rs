//! The workload: commits, their recipes and jobs.

use super::*;

pub(super) struct JobInfo {
    pub(super) born: u64,
    pub(super) requires: Vec<String>,
    pub(super) first_claim: Option<u64>,
    pub(super) results: Vec<Hash32>,
}

pub(super) fn build_recipe(cfg: &SimConfig) -> String {
    let mut s = String::new();
    for i in 0..cfg.builders + cfg.unbuildable_builders {
        let req: Vec<String> = cfg.builder_requires(i).iter().map(|l| format!("{l:?}")).collect();
        s.push_str(&format!(
            "[[builder]]\nname = \"b{i}\"\nrequires = [{}]\n[[builder.step]]\nname = \"build\"\nrun = \"make\"\n",
            req.join(", ")
        ));
    }
    s
}

impl Sim {
    pub(super) fn commit(&mut self) {
        self.commits += 1;
        let alive: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        let Some(&announcer) = alive.get(self.rng.gen_range(0..alive.len().max(1))) else { return };
        let repo = format!("https://git.example.org/repo{}.git", self.rng.gen_range(0..self.cfg.repos.max(1)));
        let commit = Hash32::of_fields("simnet.commit", &[&self.cfg.seed.to_le_bytes(), &self.commits.to_le_bytes()])
            .to_hex()[..40]
            .to_string();
        let info = CommitInfo {
            repo: repo.clone(),
            branch: "main".into(),
            commit: commit.clone(),
            parents: vec![],
            author: "Sim Ulated <sim@example.org>".into(),
            committer: "Sim Ulated <sim@example.org>".into(),
            commit_time: (self.now / 1000) as i64,
            title: format!("commit {}", self.commits),
            files: vec!["src/lib.rs".into()],
            recipe: Ok(build_recipe(&self.cfg)),
        };
        for b in 0..self.cfg.builders + self.cfg.unbuildable_builders {
            let id = job_id(&repo, &commit, &format!("b{b}"));
            self.jobs.insert(
                id,
                JobInfo { born: self.now, requires: self.cfg.builder_requires(b), first_claim: None, results: vec![] },
            );
        }
        let now = self.local(announcer, self.now);
        if let Some(core) = self.nodes[announcer].core.as_mut() {
            match core.announce(now, info) {
                Ok(Announced::New(id)) => self.note(announcer, None, "announce", id.prefix_u64()),
                Ok(Announced::Known(_)) => {}
                Err(e) => {
                    self.violation_now("a valid commit could not be announced", e, None, Some(announcer));
                }
            }
        }
        self.drain(announcer);
    }
}
