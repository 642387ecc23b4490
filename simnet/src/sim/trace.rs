//! The run's trace. Every line goes into one hash, the trace hash: two runs
//! with the same hash went the same way. The latest lines are kept for
//! violation reports.

use std::collections::VecDeque;

use peerbot_protocol::ids::Hash32;

/// Lines kept for violation reports.
const RING: usize = 20_000;

/// Lines about one job or node that a violation report shows.
const SHOWN: usize = 40;

struct TraceLine {
    at: u64,
    node: u32,
    job: Option<Hash32>,
    what: &'static str,
    other: u64,
}

pub(super) struct Trace {
    hasher: blake3::Hasher,
    recent: VecDeque<TraceLine>,
    /// `SIMNET_DEBUG_JOB`: print every line of the jobs whose id starts so.
    debug_job: Option<String>,
}

impl Trace {
    pub(super) fn new() -> Trace {
        Trace {
            hasher: blake3::Hasher::new(),
            recent: VecDeque::with_capacity(RING),
            debug_job: std::env::var("SIMNET_DEBUG_JOB").ok(),
        }
    }

    pub(super) fn note(&mut self, at: u64, node: usize, job: Option<Hash32>, what: &'static str, other: u64) {
        if self.recent.len() >= RING {
            self.recent.pop_front();
        }
        if let (Some(j), Some(want)) = (job, self.debug_job.as_deref()) {
            if j.to_hex().starts_with(want) {
                eprintln!("t={at} node={node} job={} {what} {other}", j.short());
            }
        }
        self.recent.push_back(TraceLine { at, node: node as u32, job, what, other });
        // A fixed layout, hashed in one update: the hash is part of the
        // replay format, so this must not change.
        let mut line = [0u8; 64];
        line[..8].copy_from_slice(&at.to_le_bytes());
        line[8..12].copy_from_slice(&(node as u32).to_le_bytes());
        line[12..20].copy_from_slice(&other.to_le_bytes());
        if let Some(j) = job {
            line[20..28].copy_from_slice(&j.0[..8]);
        }
        let w = what.as_bytes();
        let n = w.len().min(36);
        line[28..28 + n].copy_from_slice(&w[..n]);
        self.hasher.update(&line);
    }

    /// The latest lines about `job` or `node`, oldest first.
    pub(super) fn recent(&self, job: Option<Hash32>, node: Option<usize>) -> Vec<String> {
        let mut shown: Vec<String> = self
            .recent
            .iter()
            .rev()
            .filter(|l| (job.is_some() && l.job == job) || node.is_some_and(|n| l.node as usize == n))
            .take(SHOWN)
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
            .collect();
        shown.reverse();
        shown
    }

    pub(super) fn hash_hex(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}
