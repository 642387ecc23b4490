//! The run's trace: hashed for replay checks, recent lines kept for violations.

use super::*;

#[derive(Clone)]
pub(super) struct TraceLine {
    pub(super) at: u64,
    pub(super) node: u32,
    pub(super) job: Option<Hash32>,
    pub(super) what: &'static str,
    pub(super) other: u64,
}

pub(super) const RING: usize = 20_000;

impl Sim {
    pub(super) fn note(&mut self, node: usize, job: Option<Hash32>, what: &'static str, other: u64) {
        if self.ring.len() >= RING {
            self.ring.pop_front();
        }
        if let (Some(j), Some(want)) = (job, self.debug_job.as_deref()) {
            if j.to_hex().starts_with(want) {
                eprintln!("t={} node={node} {what} {other}", self.now);
            }
        }
        self.ring.push_back(TraceLine { at: self.now, node: node as u32, job, what, other });
        let mut line = [0u8; 64];
        line[..8].copy_from_slice(&self.now.to_le_bytes());
        line[8..12].copy_from_slice(&(node as u32).to_le_bytes());
        line[12..20].copy_from_slice(&other.to_le_bytes());
        if let Some(j) = job {
            line[20..28].copy_from_slice(&j.0[..8]);
        }
        let w = what.as_bytes();
        let n = w.len().min(36);
        line[28..28 + n].copy_from_slice(&w[..n]);
        self.trace.update(&line);
    }
}
