//! What must hold in every run, and the report of a violation.

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub invariant: String,
    pub detail: String,
    pub recent_events: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invariant violated: {} (seed {}, at {} ms)", self.invariant, self.seed, self.at_ms)?;
        writeln!(f, "{}", self.detail)?;
        writeln!(f, "last events involved:")?;
        for e in &self.recent_events {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay with --seed {}", self.seed)
    }
}

impl Sim {
    pub(super) fn violation_now(&mut self, invariant: &str, detail: String, job: Option<Hash32>, node: Option<usize>) {
        if self.pending_violation.is_none() {
            self.pending_violation = Some(self.violation(invariant, detail, job, node));
        }
    }

    pub(super) fn violation(
        &self,
        invariant: &str,
        detail: String,
        job: Option<Hash32>,
        node: Option<usize>,
    ) -> Violation {
        let recent = self
            .ring
            .iter()
            .filter(|l| (job.is_some() && l.job == job) || node.is_some_and(|n| l.node as usize == n))
            .rev()
            .take(40)
            .map(|l| {
                format!(
                    "t={}ms node={} {}{} {}",
                    l.at,
                    l.node,
                    l.what,
                    l.job.map(|j| format!(" job={}", j.short())).unwrap_or_default(),
                    l.other
                )
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Violation {
            seed: self.cfg.seed,
            at_ms: self.now,
            invariant: invariant.to_string(),
            detail,
            recent_events: recent,
        }
    }

    /// Every live node holds the same record set (count and fingerprint).
    pub(super) fn converged(&self) -> bool {
        let mut first = None;
        for n in &self.nodes {
            if let Some(core) = &n.core {
                let s = core.store().summary(&peerbot_protocol::sync::SyncKey::MIN, None);
                let s = (s.0, s.1.finish(s.0));
                match &first {
                    None => first = Some(s),
                    Some(f) if *f != s => return false,
                    _ => {}
                }
            }
        }
        true
    }

    /// Nothing left to do: every job a live node can build has a result,
    /// no build runs, no partition is on, and all live nodes agree.
    pub(super) fn is_quiet(&self) -> bool {
        if self.partition_active || self.nodes.iter().any(|n| !n.builds.is_empty()) {
            return false;
        }
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.alive(*i)).collect();
        if live.len() < self.nodes.len() {
            return false;
        }
        let open = self
            .jobs
            .values()
            .any(|j| j.results.is_empty() && live.iter().any(|&i| satisfies(&self.nodes[i].labels, &j.requires)));
        !open && self.converged()
    }
}
