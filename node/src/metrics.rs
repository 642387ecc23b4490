//! What `GET /metrics` serves, in the Prometheus text format: counters the
//! Core actor moves as the core reports events, and gauges read from the
//! core when the page is asked for.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: String,
}

/// Distinct rejection reasons counted apart; later ones count as "other".
const MAX_REASONS: usize = 32;

pub struct Metrics {
    registry: Registry,
    pub records_stored: Counter,
    records_rejected: Family<Reason, Counter>,
    messages_rejected: Family<Reason, Counter>,
    reasons: std::collections::HashSet<String>,
    /// Rejections of records and messages together, by reason, for the API.
    pub rejected: std::collections::BTreeMap<String, u64>,
    pub claims: Family<Outcome, Counter>,
    pub lease_expiries: Counter,
    pub builds: Family<Outcome, Counter>,
    pub sync_rounds: Family<Outcome, Counter>,
    pub request_bytes: Family<Direction, Counter>,
    pub peers: Family<State, Gauge>,
    pub jobs: Family<State, Gauge>,
    pub storage_ok: Gauge,
    pub records_held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("peerbot"),
            records_stored: Counter::default(),
            records_rejected: Family::default(),
            messages_rejected: Family::default(),
            reasons: Default::default(),
            rejected: Default::default(),
            claims: Family::default(),
            lease_expiries: Counter::default(),
            builds: Family::default(),
            sync_rounds: Family::default(),
            request_bytes: Family::default(),
            peers: Family::default(),
            jobs: Family::default(),
            storage_ok: Gauge::default(),
            records_held: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register("records_stored", "Records stored since start", m.records_stored.clone());
        r.register("records_rejected", "Records rejected since start, by reason", m.records_rejected.clone());
        r.register(
            "messages_rejected",
            "Gossip and requests rejected since start, by reason",
            m.messages_rejected.clone(),
        );
        r.register("claims", "Claim conflicts this node took part in, by outcome (won, lost)", m.claims.clone());
        r.register("lease_expiries", "Leases of other nodes seen running out", m.lease_expiries.clone());
        r.register(
            "builds",
            "This node's builds, by outcome (started, success, failure, ..., given_up)",
            m.builds.clone(),
        );
        r.register("sync_rounds", "Reconciliations this node started, by outcome", m.sync_rounds.clone());
        r.register("request_bytes", "Request and response bytes between nodes, by direction", m.request_bytes.clone());
        r.register("peers", "Peers known, by state (known, live, connected)", m.peers.clone());
        r.register("jobs", "Jobs being decided, by state (pending, claimed, running)", m.jobs.clone());
        r.register("storage_ok", "1 while the database takes writes", m.storage_ok.clone());
        r.register("records_held", "Records held until their signer's admission arrives", m.records_held.clone());
        m
    }
}

impl Metrics {
    /// A reason as a label: its first clause, and a bounded set of them.
    fn reason(&mut self, text: &str) -> Reason {
        let head: String = text.split(':').next().unwrap_or("").trim().chars().take(60).collect();
        if self.reasons.contains(&head) || self.reasons.len() < MAX_REASONS {
            self.reasons.insert(head.clone());
            Reason { reason: head }
        } else {
            Reason { reason: "other".into() }
        }
    }

    pub fn record_rejected(&mut self, why: &str) {
        let r = self.reason(why);
        self.records_rejected.get_or_create(&r).inc();
        *self.rejected.entry(r.reason).or_default() += 1;
    }

    pub fn message_rejected(&mut self, why: &str) {
        let r = self.reason(why);
        self.messages_rejected.get_or_create(&r).inc();
        *self.rejected.entry(r.reason).or_default() += 1;
    }

    pub fn outcome(family: &Family<Outcome, Counter>, outcome: &str) {
        family.get_or_create(&Outcome { outcome: outcome.into() }).inc();
    }

    pub fn set(family: &Family<State, Gauge>, state: &str, v: i64) {
        family.get_or_create(&State { state: state.into() }).set(v);
    }

    pub fn bytes(&self, direction: &str, n: usize) {
        self.request_bytes.get_or_create(&Direction { direction: direction.into() }).inc_by(n as u64);
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_and_the_text_names_them() {
        let mut m = Metrics::default();
        m.record_rejected("bad signature: the key does not match");
        m.record_rejected("bad signature: another detail");
        for i in 0..100 {
            m.message_rejected(&format!("reason {i}: detail"));
        }
        let t = m.text();
        assert!(t.contains("peerbot_records_rejected_total{reason=\"bad signature\"} 2"), "{t}");
        assert!(t.contains("peerbot_messages_rejected_total{reason=\"other\"}"), "{t}");
        assert!(t.lines().filter(|l| l.starts_with("peerbot_messages_rejected_total")).count() <= MAX_REASONS + 1);
    }
}
