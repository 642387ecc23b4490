//! The Core actor answering the API's questions about live state.

use actix::prelude::*;
use peerbot_protocol::core::views::results_disagree;
use peerbot_protocol::core::JobStatus;
use peerbot_protocol::ids::Hash32;
use serde_json::{json, Value};

use super::CoreActor;
use crate::now_ms;

impl CoreActor {
    fn job_json(&self, id: &Hash32, now: u64, queue: &[Hash32]) -> Option<Value> {
        let j = self.core.job(id)?;
        let statuses = self.core.result_statuses(id);
        let results: Vec<Value> = statuses
            .iter()
            .filter_map(|(r, _)| self.core.store().record(r))
            .map(|r| match &r.body {
                peerbot_protocol::Body::Result(b) => json!({
                    "id": r.id.to_hex(), "status": b.status.as_str(), "attempt": b.attempt, "signer": crate::core_actor::peer_text(&r.signer)
                }),
                _ => Value::Null,
            })
            .collect();
        let status = self.core.job_status(id);
        let eligible: Vec<String> = self.core.eligible(&j.spec.requires).iter().map(|p| p.to_string()).collect();
        Some(json!({
            "job": id.to_hex(),
            "repo": j.repo,
            "branch": j.branch,
            "commit": j.commit,
            "builder": j.spec.builder,
            "requires": j.spec.requires,
            "state": status.as_str(),
            "attempt": j.attempt,
            "claim": j.claim.as_ref().filter(|_| status != JobStatus::Done).map(|c| json!({
                "by": c.by.to_string(),
                "attempt": c.attempt,
                "lease_expires_in_ms": c.lease_until.saturating_sub(now),
                "step": c.step,
            })),
            "eligible_nodes": eligible,
            "waiting_reason": self.core.waiting_reason(now, id).map(|w| w.to_string()),
            "lost_attempts": j.lost.iter().map(|l| json!({"attempt": l.attempt, "by": l.holder.to_string(), "reason": l.reason})).collect::<Vec<_>>(),
            "results": results,
            "disagreeing_results": results_disagree(statuses.iter().map(|(_, s)| *s)),
            "queue_position": queue.iter().position(|q| q == id),
            "priority": j.spec.priority,
            "not_before_in_ms": j.not_before.saturating_sub(now),
            "superseded_by": j.superseded_by.map(|h| h.to_hex()),
            "cancelled": j.cancelled.as_ref().map(|(why, by)| json!({"reason": why, "by": by.to_string()})),
            "forced": j.forced,
            "try": j.patch.is_some(),
            "firing_ms": j.firing_ms,
            "bisect_of": j.bisect.map(|h| h.to_hex()),
            "reason": if j.firing_ms.is_some() {
                "schedule"
            } else if j.patch.is_some() {
                "try"
            } else if j.bisect.is_some() {
                "bisect"
            } else if j.forced {
                "force"
            } else {
                "change"
            },
            "depends_on": j.spec.depends_on,
            "seen_ms": j.seen_ms,
        }))
    }
}

impl CoreActor {
    /// Jobs newest first. A live state (pending, claimed, running) lists
    /// the jobs of the core's table seen before `before`'s, by `seen_ms`
    /// then id; no state lists the jobs of the newest changes. Finished
    /// states are paged from the store's index by the HTTP layer.
    fn jobs_json(&self, now: u64, state: Option<&str>, limit: usize, before: Option<Hash32>) -> Value {
        let queue = self.core.queue();
        let Some(state) = state else {
            let mut v = Vec::new();
            // `changes` stops at the first change kept: keep one only once
            // the page is full.
            self.core.store().changes(1, &mut |rec| {
                if let peerbot_protocol::Body::Change(c) = &rec.body {
                    v.extend(c.jobs.iter().filter_map(|s| self.job_json(&s.id, now, &queue)).take(limit - v.len()));
                }
                v.len() >= limit
            });
            return Value::Array(v);
        };
        let bound = match before.map(|b| (b, self.core.job(&b))) {
            Some((b, Some(j))) => Some((j.seen_ms, b)),
            Some((b, None)) => return json!({"error": format!("before: no job {}", b.to_hex())}),
            None => None,
        };
        let mut ids: Vec<(u64, Hash32)> = self.core.live_jobs().iter().map(|(id, j)| (j.seen_ms, *id)).collect();
        ids.retain(|k| bound.is_none_or(|b| *k < b));
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let wanted = |j: &Value| j["state"] == state;
        Value::Array(
            ids.iter().filter_map(|(_, id)| self.job_json(id, now, &queue)).filter(wanted).take(limit).collect(),
        )
    }
}

/// Live state for the API, as JSON.
#[derive(Message)]
#[rtype(result = "Value")]
pub enum Query {
    Node,
    Peers,
    Jobs {
        state: Option<String>,
        limit: usize,
        before: Option<Hash32>,
    },
    JobsOf(Vec<Hash32>),
    /// One job, by a unique id prefix.
    Job(String),
    /// Jobs built more than once, with whether their results disagree.
    Findings,
}

impl Handler<Query> for CoreActor {
    type Result = MessageResult<Query>;
    fn handle(&mut self, q: Query, _: &mut Context<Self>) -> Self::Result {
        let now = now_ms();
        let v = match q {
            Query::Node => {
                let p = self.core.sync_progress();
                let sync = json!({"to_fetch": p.to_fetch, "fetched": p.fetched, "sessions": p.sessions, "caught_up": self.core.caught_up(now)});
                let cfg = self.core.config();
                let live = self.core.live_peer_count();
                let connected = self.core.peers().values().filter(|v| v.connected).count();
                json!({
                    "peer_id": self.core.peer_id().to_string(),
                    "name": cfg.name,
                    "version": env!("CARGO_PKG_VERSION"),
                    "labels": cfg.labels,
                    "executors": cfg.executors,
                    "busy": self.core.running().len(),
                    "listen": self.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "http": self.http,
                    "uptime_ms": now.saturating_sub(self.started_ms),
                    "startup": {
                        "from_checkpoint": self.core.startup().from_checkpoint,
                        "records_read": self.core.startup().records_read,
                        "after_checkpoint": self.core.startup().after_checkpoint,
                    },
                    "peers_live": live,
                    "peers_connected": connected,
                    "jobs_live": self.core.live_jobs().len(),
                    "records_stored_since_start": self.records_stored,
                    "sync": sync,
                    "log_replicas": cfg.log_replicas,
                    "log_horizon_ms": cfg.log_horizon_ms,
                    "records_rejected_since_start": self.records_rejected,
                    "cluster": self.cluster,
                    "admission": {
                        "peers_admitted": self.core.admitted_peer_count(now),
                        "records_held": self.core.held_records(),
                        "rejections": self.metrics.rejected,
                    },
                    "builds": {
                        "work_root": self.jail.work_root().display().to_string(),
                        "sandbox": if self.jail.sandboxed() { "bwrap" } else { "none" },
                        "repos": {
                            "allow": cfg.repos.patterns(),
                            "watched": cfg.repos.watched(),
                            "remote_by_default": cfg.repos.remote_by_default(),
                        },
                    },
                    "storage": {
                        "ok": self.core.storage_health().ok(),
                        "error": self.core.storage_health().last_error(),
                        "failing_for_ms": self.core.storage_health().failing_since().map(|t| now.saturating_sub(t)),
                    },
                })
            }
            Query::Peers => {
                let mut v = vec![json!({
                    "peer_id": self.core.peer_id().to_string(),
                    "name": self.core.config().name,
                    "self": true,
                    "live": true,
                    "connected": false,
                    "labels": self.core.config().labels,
                    "executors": self.core.config().executors,
                    "busy": self.core.running().len(),
                })];
                for (p, view) in self.core.peers().iter() {
                    v.push(json!({
                        "peer_id": p.to_string(),
                        "name": self.core.peer_name(&p),
                        "self": false,
                        "live": self.core.is_live(&p),
                        "connected": view.connected,
                        "labels": &*view.labels,
                        "executors": view.executors,
                        "busy": view.busy,
                        "last_heard_ms_ago": if view.last_heard == 0 { None } else { Some(now.saturating_sub(view.last_heard)) },
                        "suspect": view.suspect,
                    }));
                }
                Value::Array(v)
            }
            Query::Jobs { state, limit, before } => self.jobs_json(now, state.as_deref(), limit, before),
            Query::JobsOf(ids) => {
                let queue = self.core.queue();
                Value::Array(ids.iter().filter_map(|id| self.job_json(id, now, &queue)).collect())
            }
            Query::Job(prefix) => match self.core.find_job(&prefix) {
                Ok(id) => {
                    let queue = self.core.queue();
                    self.job_json(&id, now, &queue).unwrap_or(Value::Null)
                }
                Err(e) => json!({ "error": e }),
            },
            Query::Findings => {
                let queue = self.core.queue();
                Value::Array(self.core.findings().iter().filter_map(|id| self.job_json(id, now, &queue)).collect())
            }
        };
        MessageResult(v)
    }
}
