//! Whether this node's storage takes writes. A failed durable write (a
//! full disk, say) is reported once, when it starts, and once when writes
//! work again; meanwhile the node claims no new builds, backing off, since
//! it could not keep their results.

use crate::Millis;

const FIRST_BACKOFF_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 60_000;

/// What a storage event changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Writes started failing.
    Failing {
        reason: String,
    },
    /// Writes work again after failing since `since`.
    Recovered {
        since: Millis,
    },
    Unchanged,
}

#[derive(Debug, Clone, Default)]
pub struct StorageHealth {
    failing_since: Option<Millis>,
    last_error: Option<String>,
    /// Failures since writes last worked.
    failures: u32,
    claims_paused_until: Millis,
}

impl StorageHealth {
    pub fn failed(&mut self, now: Millis, reason: &str) -> HealthChange {
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF_MS.saturating_mul(1 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF_MS);
        self.claims_paused_until = now + backoff;
        self.last_error = Some(reason.to_string());
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
            return HealthChange::Failing { reason: reason.to_string() };
        }
        HealthChange::Unchanged
    }

    pub fn wrote(&mut self) -> HealthChange {
        match self.failing_since.take() {
            Some(since) => {
                self.failures = 0;
                self.last_error = None;
                HealthChange::Recovered { since }
            }
            None => HealthChange::Unchanged,
        }
    }

    pub fn ok(&self) -> bool {
        self.failing_since.is_none()
    }
    pub fn failing_since(&self) -> Option<Millis> {
        self.failing_since
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// No new claims before this while writes fail.
    pub fn claims_paused_until(&self) -> Option<Millis> {
        self.failing_since.map(|_| self.claims_paused_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_once_each_way_with_a_growing_pause() {
        let mut h = StorageHealth::default();
        assert_eq!(h.wrote(), HealthChange::Unchanged);
        assert_eq!(
            h.failed(10, "No space left on device"),
            HealthChange::Failing { reason: "No space left on device".into() }
        );
        assert_eq!(h.claims_paused_until(), Some(1_010));
        assert_eq!(h.failed(20, "No space left on device"), HealthChange::Unchanged);
        assert_eq!(h.claims_paused_until(), Some(2_020));
        for _ in 0..20 {
            h.failed(100, "x");
        }
        assert_eq!(h.claims_paused_until(), Some(100 + MAX_BACKOFF_MS));
        assert!(!h.ok());
        assert_eq!(h.wrote(), HealthChange::Recovered { since: 10 });
        assert!(h.ok() && h.claims_paused_until().is_none() && h.last_error().is_none());
    }
}
