//! The HTTP API (JSON) and a small web page. Reads of history go straight
//! to RocksDB; anything that changes state goes through the Core actor.

use std::path::PathBuf;
use std::time::Duration;

use actix::Addr;
use actix_web::{get, post, web, HttpResponse};
use peerbot_protocol::core::{Announced, JobStatus};
use peerbot_protocol::record::{self, Body, VerifiedRecord};
use peerbot_protocol::store::Store;
use peerbot_protocol::sync::SyncKey;
use peerbot_protocol::Status;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core_actor::{Announce, Cancel, CoreActor, FetchBlob, Force, Query};
use crate::git;
use crate::store::{Filter, Finished, Kind, Position, RocksStore};

pub struct AppState {
    pub core: Addr<CoreActor>,
    pub store: RocksStore,
    pub data_dir: PathBuf,
    /// Writes (announce, force, cancel) need `Authorization: Bearer <token>`.
    pub api_token: String,
    /// Messages to the Core actor in flight from HTTP handlers; beyond
    /// them a request is answered 503 at once instead of queueing.
    pub core_slots: tokio::sync::Semaphore,
    /// Log fetches from peers in flight (each may wait up to a minute).
    pub fetch_slots: tokio::sync::Semaphore,
    /// Host names requests may be addressed to (lower case, no port): a
    /// page of another site that points its own name at this address
    /// (DNS rebinding) is refused.
    pub hosts: Vec<String>,
    /// This node's `--name`, shown on every page.
    pub name: String,
}

/// See `AppState::core_slots`: actix queues `send` past a mailbox's
/// capacity, so HTTP bounds what it hands the core itself.
pub const MAX_CORE_QUERIES: usize = 256;
pub const MAX_LOG_FETCHES: usize = 16;

impl AppState {
    pub fn new(
        core: Addr<CoreActor>,
        store: RocksStore,
        data_dir: PathBuf,
        api_token: String,
        hosts: Vec<String>,
        name: String,
    ) -> Self {
        AppState {
            core,
            store,
            data_dir,
            api_token,
            hosts,
            name,
            core_slots: tokio::sync::Semaphore::new(MAX_CORE_QUERIES),
            fetch_slots: tokio::sync::Semaphore::new(MAX_LOG_FETCHES),
        }
    }

    /// Asks the Core actor, unless too many requests already wait for it.
    pub(crate) async fn ask<M>(&self, msg: M) -> Result<M::Result, HttpResponse>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        CoreActor: actix::Handler<M>,
    {
        let Ok(_slot) = self.core_slots.try_acquire() else {
            return Err(unavailable(format!(
                "the node is busy: {MAX_CORE_QUERIES} requests are already waiting for its core; try again"
            )));
        };
        self.core.send(msg).await.map_err(|e| unavailable(e.to_string()))
    }
}

/// Checks the bearer token of a write; blake3 hashes compare in constant time.
/// Whether a token given matches the node's: compared as blake3 hashes,
/// whose equality takes the same time whatever differs.
pub(crate) fn same_token(given: &str, token: &str) -> bool {
    !given.is_empty() && blake3::hash(given.as_bytes()) == blake3::hash(token.as_bytes())
}

pub(crate) fn authorize(req: &actix_web::HttpRequest, st: &AppState) -> Result<(), HttpResponse> {
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same_token(given, &st.api_token) {
        return Ok(());
    }
    Err(error(
        actix_web::http::StatusCode::UNAUTHORIZED,
        "writes need the node's API token: Authorization: Bearer <token> (the CLI reads PEERBOT_API_TOKEN or --token; the node keeps it in DATA_DIR/api.token)",
    ))
}

pub(crate) type State = web::Data<AppState>;

/// The names a node answers to: localhost and the loopback addresses, the
/// address it is bound to unless that is a wildcard, and `--http-host`.
pub fn allowed_hosts(bind: &str, extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|h| h.to_string()).collect();
    if let Ok(addr) = bind.parse::<std::net::SocketAddr>() {
        if !addr.ip().is_unspecified() {
            hosts.push(addr.ip().to_string());
        }
    }
    hosts.extend(extra.iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()));
    hosts
}

/// The name in a `Host` header, without its port or an IPv6 literal's brackets.
pub(crate) fn host_name(header: &str) -> String {
    let h = header.trim().to_ascii_lowercase();
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => h,
    }
}

/// Answers 421 to a request addressed to a name this node does not answer to.
pub async fn check_host(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let header = req.headers().get(actix_web::http::header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    let refused = match (header, req.app_data::<State>()) {
        (Some(h), Some(st)) => {
            let name = host_name(h);
            (!st.hosts.contains(&name)).then_some(name)
        }
        _ => None,
    };
    if let Some(name) = refused {
        let msg = format!(
            "this node does not answer to the host name {name:?}; start it with --http-host {name} if that name is meant to reach it"
        );
        let resp = error(actix_web::http::StatusCode::MISDIRECTED_REQUEST, msg);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

pub(crate) const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

pub(crate) fn error(code: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(code).json(json!({ "error": msg.into() }))
}
pub(crate) fn bad_request(msg: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, msg)
}
pub(crate) fn not_found(msg: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::NOT_FOUND, msg)
}
pub(crate) fn unavailable(msg: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, msg)
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(node)
        .service(metrics)
        .service(peers)
        .service(list_changes)
        .service(post_change)
        .service(list_builds)
        .service(get_build)
        .service(get_log)
        .service(list_jobs)
        .service(get_job)
        .service(cancel_job)
        .service(force)
        .service(findings)
        .service(post_revocation)
        .app_data(web::JsonConfig::default().limit(64 * 1024).error_handler(|e, _| {
            actix_web::error::InternalError::from_response("", bad_request(format!("request body: {e}"))).into()
        }))
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            actix_web::error::InternalError::from_response("", bad_request(format!("query: {e}"))).into()
        }));
}

pub fn result_json(rec: &VerifiedRecord, detail: bool) -> Value {
    let Body::Result(r) = &rec.body else { return Value::Null };
    let steps: Vec<Value> = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "index": i,
                "name": s.name,
                "command": s.command,
                "exit_code": s.exit_code,
                "duration_ms": s.duration_ms,
                "timed_out": s.timed_out,
                "warnings": s.warnings,
                "warning_lines": s.warning_lines,
                "tests": s.tests,
                "test_format": s.test_format,
                "failed_tests": s.failed_tests,
                "log": s.log.as_ref().map(|l| json!({"hash": l.hash.to_hex(), "size": l.size, "truncated": l.truncated})),
            })
        })
        .collect();
    let mut v = json!({
        "id": rec.id.to_hex(),
        "job": r.job.to_hex(),
        "repo": r.repo,
        "branch": r.branch,
        "try": peerbot_protocol::record::is_try_branch(&r.branch),
        "commit": r.commit,
        "builder": r.builder,
        "attempt": r.attempt,
        "status": r.status.as_str(),
        "failed_step": r.failed_step,
        "error": r.error,
        "author": r.author,
        "title": r.title,
        "node_name": r.node_name,
        "started_ms": r.started_ms,
        "ended_ms": r.ended_ms,
        "duration_ms": r.ended_ms.saturating_sub(r.started_ms),
        "signer": crate::core_actor::peer_text(&rec.signer),
        "signer_revoked_ms": crate::core_actor::revoked_signers().read().ok().and_then(|m| m.get(&rec.signer).copied()),
        "labels": r.labels,
        "steps": steps,
        "metrics": r.metrics,
    });
    if detail {
        v["record_id"] = json!(rec.id.to_hex());
        v["signature"] = json!(hex::encode(&rec.signature));
        // Checked again now, on the bytes as stored.
        v["verified"] = json!(record::verify(&rec.bytes).is_ok());
    }
    v
}

pub(crate) fn change_json(rec: &VerifiedRecord) -> Value {
    let Body::Change(c) = &rec.body else { return Value::Null };
    json!({
        "id": rec.id.to_hex(),
        "repo": c.repo,
        "branch": c.branch,
        "commit": c.commit,
        "parents": c.parents,
        "author": c.author,
        "committer": c.committer,
        "commit_time": c.commit_time,
        "title": c.title,
        "files": c.files,
        "recipe_error": c.recipe_error,
        "announced_ms": c.announced_ms,
        "announced_by": crate::core_actor::peer_text(&rec.signer),
        "force": c.force.as_ref().map(|f| json!({
            "nonce": f.nonce.to_hex(),
            "reason": f.reason,
            "patch": f.patch.map(|p| json!({"hash": p.hash.to_hex(), "size": p.size})),
        })),
        "try": peerbot_protocol::record::is_try_branch(&c.branch),
        // A scheduled build of the branch head: the firing it is for.
        "firing_ms": c.firing_ms,
        "reason": if c.firing_ms.is_some() {
            "schedule"
        } else if peerbot_protocol::record::is_try_branch(&c.branch) {
            "try"
        } else if c.force.is_some() {
            "force"
        } else {
            "change"
        },
        "jobs": c.jobs.iter().map(|j| json!({"job": j.id.to_hex(), "builder": j.builder, "requires": j.requires})).collect::<Vec<_>>(),
    })
}

/// A change this node just announced, as the API shows changes.
pub(crate) fn stored_change_json(st: &AppState, id: &peerbot_protocol::Hash32) -> Value {
    st.store.record(id).as_ref().map(change_json).unwrap_or(json!({"id": id.to_hex()}))
}

#[get("/api/v1/node")]
async fn node(st: State) -> HttpResponse {
    match st.ask(Query::Node).await {
        Ok(mut v) => {
            v["records"] = json!(st.store.record_count());
            HttpResponse::Ok().json(v)
        }
        Err(r) => r,
    }
}

/// Prometheus text: rejections by reason, peers, jobs by state, claims
/// won and lost, builds, sync rounds and bytes, storage.
#[get("/metrics")]
async fn metrics(st: State) -> HttpResponse {
    match st.ask(crate::core_actor::GetMetrics).await {
        Ok(text) => HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text),
        Err(r) => r,
    }
}

#[get("/api/v1/peers")]
async fn peers(st: State) -> HttpResponse {
    match st.ask(Query::Peers).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    repo: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// Records a filtered list reads at most per request: past it the page
/// comes back short, with `X-Next-Before` saying where to go on.
pub(crate) const SCAN_BUDGET: usize = 20_000;

/// The order key of the `before` cursor: a record id or a unique prefix.
pub(crate) fn before_key(st: &AppState, before: &Option<String>) -> Result<Option<SyncKey>, HttpResponse> {
    let Some(b) = before else { return Ok(None) };
    match st.store.record_by_prefix(b) {
        Ok(Some(rec)) => Ok(Some(SyncKey { time: rec.time(), id: rec.id })),
        Ok(None) => Err(bad_request(format!("before: no record {b}"))),
        Err(e) => Err(bad_request(format!("before: {e}"))),
    }
}

/// A list page, with the cursor of the next one (if any) in a header so
/// the body stays the array it always was.
fn page_response(out: Vec<Value>, next: Option<SyncKey>) -> HttpResponse {
    let mut r = HttpResponse::Ok();
    if let Some(k) = next {
        r.insert_header(("X-Next-Before", k.id.to_hex()));
    }
    r.json(out)
}

#[get("/api/v1/changes")]
async fn list_changes(st: State, q: web::Query<ChangesQuery>) -> HttpResponse {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let before = match before_key(&st, &q.before) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let filter =
        Filter { repo: q.repo.clone(), branch: q.branch.clone(), commit: q.commit.clone(), ..Default::default() };
    let page = st.store.query(Kind::Changes, &filter, before, limit, SCAN_BUDGET);
    // One question to the core for the whole page's jobs.
    let ids: Vec<_> = page
        .records
        .iter()
        .filter_map(|r| match &r.body {
            Body::Change(c) => Some(c.jobs.iter().map(|j| j.id)),
            _ => None,
        })
        .flatten()
        .collect();
    let states = match st.ask(Query::JobsOf(ids)).await {
        Ok(Value::Array(v)) => v,
        _ => vec![],
    };
    let by_id: std::collections::HashMap<&str, &Value> =
        states.iter().filter_map(|j| Some((j["job"].as_str()?, j))).collect();
    let mut out = Vec::new();
    for rec in &page.records {
        let mut v = change_json(rec);
        if let Body::Change(c) = &rec.body {
            let jobs: Vec<Value> =
                c.jobs.iter().filter_map(|j| by_id.get(j.id.to_hex().as_str()).map(|v| (*v).clone())).collect();
            v["jobs"] = Value::Array(jobs);
        }
        out.push(v);
    }
    page_response(out, page.next)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnnounceBody {
    repo: String,
    branch: Option<String>,
    commit: String,
}

#[post("/api/v1/changes")]
async fn post_change(req: actix_web::HttpRequest, st: State, body: web::Json<AnnounceBody>) -> HttpResponse {
    if let Err(r) = authorize(&req, &st) {
        return r;
    }
    let b = body.into_inner();
    let info = match commit_info_for(&st, &b.repo, b.branch, &b.commit).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    match st.ask(Announce(info)).await {
        Ok(Ok(a)) => {
            let (id, known, disputes) = match a {
                Announced::New(id) => (id, false, None),
                Announced::Known(id) => (id, true, None),
                Announced::Disputed { ours, theirs } => (ours, false, Some(theirs.to_hex())),
            };
            let mut v = stored_change_json(&st, &id);
            v["already_known"] = json!(known);
            if let Some(theirs) = disputes {
                // Another node announced the commit with another recipe.
                v["disputes"] = json!(theirs);
            }
            if known {
                HttpResponse::Ok().json(v)
            } else {
                HttpResponse::Created().json(v)
            }
        }
        Ok(Err(e)) => bad_request(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildsQuery {
    repo: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    builder: Option<String>,
    status: Option<String>,
    signer: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

#[get("/api/v1/builds")]
async fn list_builds(st: State, q: web::Query<BuildsQuery>) -> HttpResponse {
    let status = match q.status.as_deref().map(|s| (s, Status::parse(s))) {
        Some((s, None)) => {
            return bad_request(format!("status {s:?} is not one of success, warnings, failure, exception, cancelled"))
        }
        Some((_, st)) => st,
        None => None,
    };
    let signer = match q.signer.as_deref().map(|s| (s, s.parse::<peerbot_protocol::PeerId>())) {
        Some((s, Err(_))) => return bad_request(format!("signer {s:?} is not a peer id")),
        Some((_, Ok(p))) => Some(p),
        None => None,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let before = match before_key(&st, &q.before) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let filter = Filter {
        repo: q.repo.clone(),
        branch: q.branch.clone(),
        commit: q.commit.clone(),
        builder: q.builder.clone(),
        status,
        signer,
    };
    let page = st.store.query(Kind::Results, &filter, before, limit, SCAN_BUDGET);
    let out: Vec<Value> = page
        .records
        .iter()
        .map(|r| {
            let mut v = result_json(r, false);
            add_blame(&st.store, r, &mut v);
            v
        })
        .collect();
    page_response(out, page.next)
}

pub(crate) fn find_result(st: &AppState, id: &str) -> Result<VerifiedRecord, HttpResponse> {
    match st.store.record_by_prefix(id) {
        Ok(Some(rec)) if matches!(rec.body, Body::Result(_)) => Ok(rec),
        Ok(_) => Err(not_found(format!("no build result {id}"))),
        Err(e) => Err(bad_request(e)),
    }
}

#[get("/api/v1/builds/{id}")]
async fn get_build(st: State, id: web::Path<String>) -> HttpResponse {
    let rec = match find_result(&st, &id) {
        Ok(rec) => rec,
        Err(r) => return r,
    };
    let mut v = result_json(&rec, true);
    add_blame(&st.store, &rec, &mut v);
    v["notices"] = crate::notify::notices_json(&st.store, &rec.id);
    HttpResponse::Ok().json(v)
}

/// Who broke or fixed the builder with this result, by commit ancestry
/// (`peerbot_protocol::blame`): the same answer on every node and page.
pub(crate) fn add_blame(store: &RocksStore, rec: &VerifiedRecord, v: &mut Value) {
    let Body::Result(r) = &rec.body else { return };
    let b = peerbot_protocol::blame::blame(store, r);
    v["broke_build"] = json!(!b.blamelist.is_empty());
    v["blamelist"] = json!(b.blamelist);
    v["fixed_by"] = json!(b.fixed_by);
    v["previous_build"] = json!(b.previous.map(|(id, s)| json!({"id": id.to_hex(), "status": s})));
    v["first_tested"] = json!({"commits": b.commits, "truncated": b.truncated});
    crate::web::bisect::add_bisect(store, r, v);
}

#[get("/api/v1/builds/{id}/steps/{step}/log")]
async fn get_log(st: State, path: web::Path<(String, String)>) -> HttpResponse {
    let (id, step) = path.into_inner();
    let rec = match find_result(&st, &id) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Body::Result(r) = &rec.body else { return not_found("not a result") };
    let s = r.steps.iter().find(|s| s.name == step).or_else(|| step.parse::<usize>().ok().and_then(|i| r.steps.get(i)));
    let Some(s) = s else {
        let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
        return not_found(format!("build {id} has no step {step:?}; its steps are {names:?}"));
    };
    let Some(blob) = &s.log else { return not_found(format!("step {step:?} has no log")) };
    // A node that has just joined may not know where the log's holders
    // are yet: a few tries, a second apart, before giving up.
    let mut tries = 0;
    while !st.store.has_blob(&blob.hash) {
        tries += 1;
        let Ok(_slot) = st.fetch_slots.try_acquire() else {
            return unavailable(format!("{MAX_LOG_FETCHES} logs are being fetched from peers already; try again"));
        };
        let fetch = st.ask(FetchBlob { hash: blob.hash, hint: Some(rec.signer) });
        match tokio::time::timeout(Duration::from_secs(60), fetch).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if tries >= 3 => {
                return unavailable(format!(
                    "log {} is not on this node and could not be fetched: {e}",
                    blob.hash.short()
                ))
            }
            Ok(Ok(Err(_))) => tokio::time::sleep(Duration::from_secs(1)).await,
            Ok(Err(r)) => return r,
            Err(_) => return unavailable("timed out fetching the log from peers"),
        }
    }
    match st.store.get_blob(&blob.hash) {
        Some(bytes) => HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(bytes),
        None => unavailable("log vanished from the store"),
    }
}

#[get("/api/v1/jobs/{id}")]
async fn get_job(st: State, id: web::Path<String>) -> HttpResponse {
    match st.ask(Query::Job(id.into_inner())).await {
        Ok(v) if v.get("error").is_some() => {
            let msg = v["error"].as_str().unwrap_or("");
            let code = if msg.contains("is not a job id") || msg.contains("ambiguous") {
                actix_web::http::StatusCode::BAD_REQUEST
            } else {
                actix_web::http::StatusCode::NOT_FOUND
            };
            error(code, msg)
        }
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

#[post("/api/v1/jobs/{id}/cancel")]
async fn cancel_job(
    req: actix_web::HttpRequest,
    st: State,
    id: web::Path<String>,
    body: Option<web::Json<CancelBody>>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &st) {
        return r;
    }
    let reason = body.and_then(|b| b.into_inner().reason).unwrap_or_else(|| "cancelled by a user".into());
    match st.ask(Cancel { job: id.into_inner(), reason }).await {
        Ok(Ok((job, rec))) => HttpResponse::Ok().json(json!({"job": job.to_hex(), "cancel_record": rec.to_hex()})),
        Ok(Err(e)) => bad_request(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationBody {
    /// `peerbot cluster revoke` printed it.
    revocation: String,
}

/// Takes a revocation the cluster's keeper signed and publishes it: every
/// node refuses what the revoked node signs from its date on.
#[post("/api/v1/revocations")]
async fn post_revocation(req: actix_web::HttpRequest, st: State, body: web::Json<RevocationBody>) -> HttpResponse {
    if let Err(r) = authorize(&req, &st) {
        return r;
    }
    match st.ask(crate::core_actor::Revoke(body.into_inner().revocation)).await {
        Ok(Ok(rec)) => HttpResponse::Ok().json(json!({"revocation_record": rec.to_hex()})),
        Ok(Err(e)) => bad_request(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceBody {
    repo: String,
    branch: Option<String>,
    commit: String,
    builder: Option<String>,
    reason: Option<String>,
}

/// Resolves a commit of a repository, fetching it first, into what the core needs.
pub(crate) async fn commit_info_for(
    st: &AppState,
    repo: &str,
    branch: Option<String>,
    commit: &str,
) -> Result<peerbot_protocol::core::CommitInfo, HttpResponse> {
    git::check_repo(repo).map_err(|e| bad_request(e.to_string()))?;
    // A full commit id the mirror already holds needs no fetch; a ref or a
    // short id may have moved or be ambiguous until the mirror is fresh.
    let full_id = matches!(commit.len(), 40 | 64) && git::check_commit(commit).is_ok();
    let branch = match branch {
        Some(b) => b,
        None => git::default_branch(repo).await.map_err(|e| bad_request(format!("{e:#}")))?,
    };
    let branch = &branch;
    if full_id {
        let read = |mirror: std::path::PathBuf| async move { git::commit_info(&mirror, repo, branch, commit).await };
        let (_, info) =
            git::with_commit(&st.data_dir, repo, commit, read).await.map_err(|e| bad_request(format!("{e:#}")))?;
        return Ok(info);
    }
    let mirror = git::fetch_mirror(&st.data_dir, repo).await.map_err(|e| bad_request(format!("{e:#}")))?;
    let commit = git::resolve(&mirror, commit).await.map_err(|e| bad_request(format!("{e:#}")))?;
    git::commit_info(&mirror, repo, branch, &commit).await.map_err(|e| bad_request(format!("{e:#}")))
}

#[post("/api/v1/force")]
async fn force(req: actix_web::HttpRequest, st: State, body: web::Json<ForceBody>) -> HttpResponse {
    if let Err(r) = authorize(&req, &st) {
        return r;
    }
    let b = body.into_inner();
    let info = match commit_info_for(&st, &b.repo, b.branch, &b.commit).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let reason = b.reason.unwrap_or_else(|| "forced by a user".into());
    match st.ask(Force { info, builder: b.builder, reason }).await {
        Ok(Ok(id)) => {
            let mut v = stored_change_json(&st, &id);
            v["forced"] = json!(true);
            HttpResponse::Created().json(v)
        }
        Ok(Err(e)) => bad_request(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

#[get("/api/v1/findings")]
async fn findings(st: State, q: web::Query<LimitQuery>) -> HttpResponse {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    match st.ask(Query::Findings).await {
        Ok(Value::Array(mut v)) => {
            v.truncate(limit);
            HttpResponse::Ok().json(v)
        }
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    limit: Option<usize>,
    before: Option<String>,
}

/// `before` of a finished state's list: the `X-Next-Before` of the page
/// before (80 hex digits: a position in the list), or a job id (64 hex
/// digits) listed in that state.
fn job_cursor(st: &AppState, state: Finished, name: &str, before: &str) -> Result<Position, HttpResponse> {
    let b = before.to_ascii_lowercase();
    match (b.len(), hex::decode(&b)) {
        (80, Ok(bytes)) => Ok(bytes.try_into().expect("40 bytes")),
        (64, Ok(bytes)) => {
            let job = peerbot_protocol::Hash32(bytes.try_into().expect("32 bytes"));
            st.store.job_position(state, &job).ok_or_else(|| bad_request(format!("before: job {before} is not {name}")))
        }
        _ => Err(bad_request(format!(
            "before: {before:?} is neither a job id (64 hex digits) nor an X-Next-Before cursor (80 hex digits)"
        ))),
    }
}

#[get("/api/v1/jobs")]
async fn list_jobs(st: State, q: web::Query<JobsQuery>) -> HttpResponse {
    let state = match q.state.as_deref().map(|s| (s, JobStatus::parse(s))) {
        Some((s, None)) => {
            return bad_request(format!(
                "state {s:?} is not one of pending, claimed, running, done, superseded, cancelled"
            ))
        }
        Some((_, s)) => s,
        None => None,
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let finished = match state {
        Some(JobStatus::Done) => Some(Finished::Done),
        Some(JobStatus::Cancelled) => Some(Finished::Cancelled),
        Some(JobStatus::Superseded) => Some(Finished::Superseded),
        _ => None,
    };
    if let (Some(f), Some(name)) = (finished, q.state.as_deref()) {
        let before = match q.before.as_deref().map(|b| job_cursor(&st, f, name, b)).transpose() {
            Ok(b) => b,
            Err(r) => return r,
        };
        let page = st.store.finished_jobs(f, before, limit, SCAN_BUDGET);
        let jobs = match st.ask(Query::JobsOf(page.jobs)).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let mut r = HttpResponse::Ok();
        if let Some(next) = page.next {
            r.insert_header(("X-Next-Before", hex::encode(next)));
        }
        return r.json(jobs);
    }
    let before = match (&q.before, &q.state) {
        (None, _) => None,
        (Some(_), None) => return bad_request("before: pages one state's list; give state too"),
        (Some(b), Some(_)) => match b.parse::<peerbot_protocol::Hash32>() {
            Ok(h) => Some(h),
            Err(_) => return bad_request(format!("before: {b:?} is not a job id (64 hex digits)")),
        },
    };
    match st.ask(Query::Jobs { state: q.state.clone(), limit, before }).await {
        Ok(v) if v.get("error").is_some() => bad_request(v["error"].as_str().unwrap_or_default()),
        Ok(v) => {
            let mut r = HttpResponse::Ok();
            let full = v.as_array().is_some_and(|a| a.len() == limit && limit > 0);
            if let (true, Some(_), Some(last)) = (full, &q.state, v.as_array().and_then(|a| a.last())) {
                r.insert_header(("X-Next-Before", last["job"].as_str().unwrap_or_default()));
            }
            r.json(v)
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn host_names_are_compared_without_ports() {
        assert_eq!(host_name("LocalHost:7401"), "localhost");
        assert_eq!(host_name("[::1]:7401"), "::1");
        assert_eq!(host_name("ci.example.org"), "ci.example.org");
        let hosts = allowed_hosts("0.0.0.0:7401", &["CI.example.org".into()]);
        assert!(hosts.contains(&"ci.example.org".to_string()));
        assert!(!hosts.contains(&"0.0.0.0".to_string()));
        assert!(allowed_hosts("10.1.2.3:80", &[]).contains(&"10.1.2.3".to_string()));
    }
}
