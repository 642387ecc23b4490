//! The notifier actor: sends the notices this node claimed (the core
//! decides which, `peerbot_protocol::notify`), with retries, and reports
//! each end to the core, which records it as a signed `Notice`.

pub mod config;
pub mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use peerbot_protocol::bisect::State;
use peerbot_protocol::core::{BuildOrder, NoticeOutcome};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::Body;
use peerbot_protocol::store::Store;
use tracing::{info, warn};

use self::config::Notifier;
use self::send::{deliver, tail, Content};
use crate::core_actor::{CoreActor, GetBlob};
use crate::store::RocksStore;

/// Waits between tries when a server fails: five tries in all, about half a
/// minute, well inside the claim's grace.
const BACKOFF: [Duration; 4] =
    [Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(8), Duration::from_secs(20)];
/// Waited after the claim, before the first try.
const CLAIM_SETTLE: Duration = Duration::from_millis(500);
/// How long the failed step's log may take to arrive from a peer.
const LOG_WAIT: Duration = Duration::from_secs(15);

pub struct Notifiers {
    by_name: HashMap<String, Arc<Notifier>>,
    store: RocksStore,
    core: Addr<CoreActor>,
    /// The base of this node's pages, for links.
    url: String,
    node: String,
    sending: HashMap<Hash32, (u32, actix_rt::task::JoinHandle<()>)>,
}

impl Notifiers {
    pub fn new(list: Vec<Notifier>, store: RocksStore, core: Addr<CoreActor>, url: String, node: String) -> Self {
        let by_name = list.into_iter().map(|n| (n.name.clone(), Arc::new(n))).collect();
        Notifiers { by_name, store, core, url: url.trim_end_matches('/').to_string(), node, sending: HashMap::new() }
    }
}

impl Actor for Notifiers {
    type Context = Context<Self>;
}

/// A notice job this node claimed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendNotice(pub BuildOrder);

/// Another node recorded it first, or the claim is lost: stop trying.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNotice {
    pub job: Hash32,
    pub attempt: u32,
}

/// A notice ended, for the core.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NoticeDone(pub NoticeOutcome);

#[derive(Message)]
#[rtype(result = "()")]
struct Ended(Hash32, u32);

impl Handler<SendNotice> for Notifiers {
    type Result = ();
    fn handle(&mut self, msg: SendNotice, ctx: &mut Context<Self>) {
        let order = msg.0;
        let (job, attempt) = (order.job, order.attempt);
        let Some(notice) = order.notice.clone() else { return };
        let core = self.core.clone();
        let Some(n) = self.by_name.get(&notice.notifier).cloned() else {
            let error = Some(format!("this node has no notifier {:?}", notice.notifier));
            core.do_send(NoticeDone(NoticeOutcome { job, attempt, delivered: false, tries: 0, error }));
            return;
        };
        let (store, url, node, me) = (self.store.clone(), self.url.clone(), self.node.clone(), ctx.address());
        let task = actix_rt::spawn(async move {
            // A claim that lost to a better-ranked one at the same moment
            // hears of it within this; then the task is stopped unsent.
            tokio::time::sleep(CLAIM_SETTLE).await;
            let outcome = match compose(&store, &core, &notice, &url, &node).await {
                Err(e) => NoticeOutcome { job, attempt, delivered: false, tries: 0, error: Some(e) },
                Ok(content) => try_deliver(&n, &content, job, attempt).await,
            };
            if outcome.delivered {
                info!(notifier = %n.name, job = %job.short(), tries = outcome.tries, "notice sent");
            } else {
                warn!(notifier = %n.name, job = %job.short(), "notice not sent: {}", outcome.error.as_deref().unwrap_or("?"));
            }
            core.do_send(NoticeDone(outcome));
            me.do_send(Ended(job, attempt));
        });
        self.sending.insert(job, (attempt, task));
    }
}

impl Handler<StopNotice> for Notifiers {
    type Result = ();
    fn handle(&mut self, msg: StopNotice, _: &mut Context<Self>) {
        if self.sending.get(&msg.job).is_some_and(|(a, _)| *a == msg.attempt) {
            if let Some((_, task)) = self.sending.remove(&msg.job) {
                task.abort();
            }
        }
    }
}

impl Handler<Ended> for Notifiers {
    type Result = ();
    fn handle(&mut self, msg: Ended, _: &mut Context<Self>) {
        if self.sending.get(&msg.0).is_some_and(|(a, _)| *a == msg.1) {
            self.sending.remove(&msg.0);
        }
    }
}

/// The notifications recorded about a result, oldest first: which
/// notifier, what for, whether it went out, and which node sent it.
pub fn notices_json(store: &RocksStore, result: &Hash32) -> serde_json::Value {
    let mut list: Vec<(u64, serde_json::Value)> = store
        .lookup(peerbot_protocol::store::Lookup::ResultNotice, result, 64)
        .iter()
        .filter_map(|id| {
            let rec = store.record(id)?;
            let Body::Notice(n) = &rec.body else { return None };
            Some((
                n.sent_ms,
                serde_json::json!({
                    "id": rec.id.to_hex(),
                    "notifier": n.notifier,
                    "event": n.event.as_str(),
                    "delivered": n.delivered,
                    "tries": n.tries,
                    "error": n.error,
                    "sent_ms": n.sent_ms,
                    "signer": rec.signer.to_string(),
                    "node_name": n.node_name,
                }),
            ))
        })
        .collect();
    list.sort_by_key(|(t, _)| *t);
    serde_json::Value::Array(list.into_iter().map(|(_, v)| v).collect())
}

async fn try_deliver(n: &Notifier, content: &Content, job: Hash32, attempt: u32) -> NoticeOutcome {
    let mut error = None;
    for tries in 1..=BACKOFF.len() as u32 + 1 {
        match deliver(&n.kind, content).await {
            Ok(()) => return NoticeOutcome { job, attempt, delivered: true, tries, error: None },
            Err(e) => {
                warn!(notifier = %n.name, tries, "sending a notice failed: {e:#}");
                error = Some(format!("{e:#}"));
            }
        }
        if let Some(wait) = BACKOFF.get(tries as usize - 1) {
            tokio::time::sleep(*wait).await;
        }
    }
    NoticeOutcome { job, attempt, delivered: false, tries: BACKOFF.len() as u32 + 1, error }
}

/// What the message says, from this node's store; the failed step's log
/// is fetched from a peer if this node has no copy.
async fn compose(
    store: &RocksStore,
    core: &Addr<CoreActor>,
    notice: &peerbot_protocol::core::NoticeRef,
    url: &str,
    node: &str,
) -> Result<Content, String> {
    let rec =
        store.record(&notice.result).ok_or_else(|| format!("result {} is not stored here", notice.result.short()))?;
    let Body::Result(r) = &rec.body else { return Err(format!("record {} is not a result", notice.result.short())) };
    let b = peerbot_protocol::blame::blame(store, r);
    let (culprit, bisect_note) = match peerbot_protocol::bisect::bisection(store, r).map(|b| b.state) {
        Some(State::Found { commit, author, title }) => (Some((commit, author, title)), None),
        Some(State::Searching { next }) => (None, Some(format!("still searching (next: {next}) when this was sent"))),
        Some(State::GaveUp { reason }) => (None, Some(format!("gave up: {reason}"))),
        None => (None, None),
    };
    let log =
        r.failed_step.as_ref().and_then(|name| r.steps.iter().find(|s| &s.name == name)).and_then(|s| s.log.clone());
    let tail = match log {
        None => None,
        Some(blob) => {
            let got =
                tokio::time::timeout(LOG_WAIT, core.send(GetBlob { hash: blob.hash, hint: Some(rec.signer) })).await;
            match got {
                Ok(Ok(Ok(bytes))) => Some(tail(&bytes)),
                _ => Some("(the log could not be fetched from the cluster in time; see the build page)".into()),
            }
        }
    };
    Ok(Content {
        event: notice.event,
        result_id: notice.result.to_hex(),
        result: r.clone(),
        blamelist: b.blamelist,
        fixed_by: b.fixed_by,
        commits: b.commits,
        tail,
        culprit,
        bisect_note,
        url: format!("{url}/builds/{}", notice.result.to_hex()),
        node: node.to_string(),
    })
}
