//! The pages of one build, one job (with the live tail of its log) and
//! one change.

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped};
use peerbot_protocol::record::is_try_branch;
use peerbot_protocol::record::Body;
use peerbot_protocol::store::Store;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error_page, from_api, names, node_label, page, peer_short, s, secs, short, when, Layout, Session};
use crate::core_actor::Query;
use crate::http::{add_blame, change_json, find_result, not_found, result_json, AppState, State};
use crate::notify::notices_json;

/// The end of a log shown on a build's page; the raw link has all of it.
const LOG_SHOWN: usize = 512 * 1024;

/// A log as HTML, its ANSI colours kept; only its end when it is long.
fn render_log(bytes: &[u8]) -> (Markup, bool) {
    let cut = bytes.len() > LOG_SHOWN;
    let mut tail = &bytes[bytes.len().saturating_sub(LOG_SHOWN)..];
    if cut {
        // Start at a line.
        if let Some(nl) = tail.iter().position(|b| *b == b'\n') {
            tail = &tail[nl + 1..];
        }
    }
    let text = String::from_utf8_lossy(tail);
    let html = ansi_to_html::convert(&text).unwrap_or_else(|_| maud::html! { (text) }.into_string());
    (PreEscaped(html), cut)
}

fn force_button(
    session: &Session,
    label: &str,
    repo: &str,
    branch: &str,
    commit: &str,
    builder: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action="/ui/force" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="repo" value=(repo);
            input type="hidden" name="branch" value=(branch);
            input type="hidden" name="commit" value=(commit);
            @if let Some(b) = builder { input type="hidden" name="builder" value=(b); }
            button type="submit" title=(if session.logged_in { "new jobs for this commit" } else { "log in first" }) { (label) }
        }
    }
}

fn cancel_button(session: &Session, job: &str) -> Markup {
    html! {
        form.inline method="post" action="/ui/cancel" {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="job" value=(job);
            button type="submit" { "cancel" }
        }
    }
}

fn log_of(st: &AppState, step: &Value) -> Option<Vec<u8>> {
    let hash = s(&step["log"]["hash"]).parse().ok()?;
    st.store.get_blob(&hash)
}

#[get("/builds/{id}")]
pub async fn build_page(req: HttpRequest, st: State, id: web::Path<String>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let rec = match find_result(&st, &id) {
        Ok(r) => r,
        Err(r) => return from_api(&session, r),
    };
    let mut b = result_json(&rec, true);
    add_blame(&st.store, &rec, &mut b);
    b["notices"] = notices_json(&st.store, &rec.id);
    let job = st.ask(Query::Job(s(&b["job"]).to_string())).await.unwrap_or(Value::Null);
    let bid = s(&b["id"]).to_string();
    let results: Vec<&Value> = job["results"].as_array().into_iter().flatten().collect();
    let body = html! {
        h1 { span class={"badge " (s(&b["status"]))} { (s(&b["status"])) } " " (s(&b["builder"])) " · " (s(&b["title"])) }
        table {
            tr { th { "commit" } td { code { (s(&b["commit"])) } " on " (s(&b["branch"])) " of " code { (s(&b["repo"])) } } }
            tr { th { "author" } td { (s(&b["author"])) } }
            tr { th { "builder" } td { a href={"/builders/" (super::urlencode(s(&b["builder"])))} { (s(&b["builder"])) } } }
            tr { th { "built by" } td { strong { (node_label(s(&b["node_name"]), s(&b["signer"]))) } " · " code { (s(&b["signer"])) }
                " · labels " (names(&b["labels"])) } }
            tr { th { "signature" } td {
                @if b["verified"] == true { "verified" } @else { span.err { "does not verify" } }
                @if let Some(ms) = b["signer_revoked_ms"].as_u64() { " · " span.err { "signer revoked from " (when(ms)) } }
            } }
            tr { th { "attempt" } td { (b["attempt"])
                @for l in job["lost_attempts"].as_array().into_iter().flatten() {
                    br; span.muted { "attempt " (l["attempt"]) " lost by " code { (peer_short(s(&l["by"]))) } ": " (s(&l["reason"])) }
                } } }
            tr { th { "started" } td { (when(b["started_ms"].as_u64().unwrap_or(0))) " · took " (secs(b["duration_ms"].as_u64().unwrap_or(0))) } }
            @if let Some(e) = b["error"].as_str() { tr { th { "error" } td.err { (e) } } }
            tr { th { "blame" } td {
                @if b["broke_build"] == true { span.err { "broke the build" } " · blamelist: " strong { (names(&b["blamelist"])) } }
                @else if b["fixed_by"].as_array().is_some_and(|a| !a.is_empty()) { "fixed the build · fixed by: " strong { (names(&b["fixed_by"])) } }
                @else { span.muted { "no change of state" } }
                @if let Some(p) = b["previous_build"]["id"].as_str() { " · previous build " a href={"/builds/" (p)} { (s(&b["previous_build"]["status"])) } }
                " · first to test " (b["first_tested"]["commits"].as_array().map_or(0, |c| c.len())) " commit(s)"
            } }
            @if let Some(list) = b["notices"].as_array().filter(|l| !l.is_empty()) {
                tr { th { "notified" } td { @for (i, n) in list.iter().enumerate() {
                    @if i > 0 { br; }
                    code { (s(&n["notifier"])) } " (" (s(&n["event"])) "): "
                    @if n["delivered"] == true { "sent by " (s(&n["node_name"])) " " (when(n["sent_ms"].as_u64().unwrap_or(0))) }
                    @else { span.err { "not sent after " (n["tries"]) " tries: " (s(&n["error"])) } }
                } } }
            }
            (super::bisect::rows(&b))
            tr { th { "job" } td { a href={"/jobs/" (s(&b["job"]))} { code { (short(s(&b["job"]))) } }
                // A try is sent again with `peerbot try`: its patch is not the commit's.
                @if !is_try_branch(s(&b["branch"])) { " · "
                    (force_button(&session, "rebuild", s(&b["repo"]), s(&b["branch"]), s(&b["commit"]), b["builder"].as_str())) }
                @else { " · " span.muted { "a try build, kept out of the branch's history" } } } }
        }
        @if results.len() > 1 {
            h2 { "Results of this job" @if job["disagreeing_results"] == true { " · " span.err { "they disagree" } } }
            div.side { @for r in &results {
                div.box { a href={"/builds/" (s(&r["id"]))} { div class={"head " (s(&r["status"]))} {
                    (s(&r["status"])) " · attempt " (r["attempt"]) " · " code { (peer_short(s(&r["signer"]))) }
                    @if s(&r["id"]) == bid { " (this one)" }
                } } }
            } }
        }
        h2 { "Steps" }
        table {
            thead { tr { th { "step" } th { "status" } th { "exit" } th { "took" } th { "warnings" } th { "tests" } th { "log" } } }
            tbody { @for (i, step) in b["steps"].as_array().into_iter().flatten().enumerate() {
                @let ok = step["exit_code"] == 0 && step["timed_out"] != true;
                tr {
                    td { code { (s(&step["name"])) } }
                    td { span class={"badge " (if ok { "success" } else { "failure" })} { @if step["timed_out"] == true { "timed out" } @else if ok { "ok" } @else { "failed" } } }
                    td { (step["exit_code"].as_i64().map(|c| c.to_string()).unwrap_or("–".into())) }
                    td { (secs(step["duration_ms"].as_u64().unwrap_or(0))) }
                    td { (step["warnings"]) }
                    td { @if let Some(t) = step["tests"].as_object() { (t["passed"]) " passed, " (t["failed"]) " failed, " (t["skipped"]) " skipped" } }
                    td { @if step["log"].is_object() {
                        a href={"#log-" (i)} { "log" } " · " a href={"/api/v1/builds/" (bid) "/steps/" (i) "/log"} { "raw" }
                        " " span.muted { (step["log"]["size"]) " bytes" @if step["log"]["truncated"] == true { ", cut" } }
                    } }
                }
            } }
        }
        @for step in b["steps"].as_array().into_iter().flatten() {
            @if let Some(failed) = step["failed_tests"].as_array().filter(|f| !f.is_empty()) {
                h2 { "Failing tests of " code { (s(&step["name"])) } " (" (step["tests"]["failed"]) ", " (s(&step["test_format"])) ")" }
                @if step["tests"]["failed"].as_u64().is_some_and(|n| n > failed.len() as u64) { p.muted { "The first " (failed.len()) " are kept." } }
                table.failed-tests { tbody { @for f in failed {
                    tr { td { code { (s(&f["name"])) } } td { @if !s(&f["message"]).is_empty() { pre.log { (s(&f["message"])) } } } }
                } } }
            }
        }
        @for (i, step) in b["steps"].as_array().into_iter().flatten().enumerate() {
            @if let Some(lines) = step["warning_lines"].as_array().filter(|l| !l.is_empty()) {
                h2 { "Warnings of " code { (s(&step["name"])) } " (" (step["warnings"]) ")" }
                pre.log { @for l in lines { (s(l)) "\n" } }
            }
            @if step["log"].is_object() {
                h2 id={"log-" (i)} { "Log of " code { (s(&step["name"])) } }
                @match log_of(&st, step) {
                    Some(bytes) => {
                        @let (log, cut) = render_log(&bytes);
                        @if cut { p.muted { "The end of the log; " a href={"/api/v1/builds/" (bid) "/steps/" (i) "/log"} { "all of it" } "." } }
                        pre.log { (log) }
                    }
                    None => p.muted { "This node does not hold this log yet; " a href={"/api/v1/builds/" (bid) "/steps/" (i) "/log"} { "fetch it from its holders" } "." }
                }
            }
        }
    };
    let title = format!("{} {} {}", s(&b["status"]), s(&b["builder"]), short(s(&b["commit"])));
    page(Layout { title, here: "", json: format!("/api/v1/builds/{bid}"), refresh: false, session: &session }, body)
}

/// Follows the live log: asks for what came after the last offset.
const LIVE_JS: &str = r#"
(() => {
  const pre = document.getElementById("live"), info = document.getElementById("live-step");
  let offset = Number(pre.dataset.end), index = Number(pre.dataset.index);
  const strip = s => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
  async function poll() {
    const r = await fetch(`/api/v1/jobs/${pre.dataset.job}/live?offset=${offset}&index=${index}`);
    const c = await r.json();
    if (!c.running) { location.reload(); return; }
    if (c.index !== index) { pre.textContent = ""; index = c.index; info.textContent = c.step; }
    if (c.text) { pre.textContent += strip(c.text); pre.scrollTop = pre.scrollHeight; }
    offset = c.end;
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
"#;

#[get("/jobs/{id}")]
pub async fn job_page(req: HttpRequest, st: State, id: web::Path<String>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let j = match st.ask(Query::Job(id.into_inner())).await {
        Ok(v) if v.get("error").is_some() => return error_page(&session, StatusCode::NOT_FOUND, s(&v["error"])),
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let job = s(&j["job"]).to_string();
    let live = job.parse().ok().and_then(|h| crate::live::read(&h, 0, None));
    let open = matches!(s(&j["state"]), "pending" | "claimed" | "running");
    let body = html! {
        h1 { span class={"badge " (s(&j["state"]))} { (s(&j["state"])) } " " (s(&j["builder"])) " · " code { (short(s(&j["commit"]))) } }
        table {
            tr { th { "job" } td { code { (job) } } }
            tr { th { "commit" } td { code { (s(&j["commit"])) } " on " (s(&j["branch"])) " of " code { (s(&j["repo"])) } } }
            tr { th { "attempt" } td { (j["attempt"]) } }
            @if let Some(by) = j["claim"]["by"].as_str() { tr { th { "claimed by" } td { code { (by) }
                @if let Some(step) = j["claim"]["step"].as_str() { " · running " code { (step) } } } } }
            @if let Some(w) = j["waiting_reason"].as_str() { tr { th { "waiting" } td { (w) } } }
            @if let Some(c) = j["cancelled"].as_object() { tr { th { "cancelled" } td { (s(&c["reason"])) } } }
            @if let Some(sup) = j["superseded_by"].as_str() { tr { th { "superseded by" } td { a href={"/jobs/" (sup)} { code { (short(sup)) } } } } }
            @for l in j["lost_attempts"].as_array().into_iter().flatten() {
                tr { th { "lost attempt " (l["attempt"]) } td { code { (peer_short(s(&l["by"]))) } ": " (s(&l["reason"])) } }
            }
            tr { th { "results" } td {
                @for r in j["results"].as_array().into_iter().flatten() {
                    a class={"badge " (s(&r["status"]))} href={"/builds/" (s(&r["id"]))} { (s(&r["status"])) " · attempt " (r["attempt"]) } " "
                }
                @if open { (cancel_button(&session, &job)) }
            } }
        }
        @if let Some(c) = &live {
            h2 { "Live log of " code #live-step { (c.step) } }
            @if c.skipped > 0 || c.offset > 0 { p.muted { "The step wrote " (c.offset) " bytes before what is shown." } }
            pre.log #live data-job=(job) data-end=(c.end) data-index=(c.index) { (c.text) }
            script { (PreEscaped(LIVE_JS)) }
        } @else if s(&j["state"]) == "running" {
            p.muted { "The live log is served by the node running the build (" code { (s(&j["claim"]["by"])) } "); this page shows the log once the result arrives." }
        }
    };
    let title = format!("job {} {}", s(&j["builder"]), short(s(&j["commit"])));
    let refresh = open && live.is_none();
    page(Layout { title, here: "", json: format!("/api/v1/jobs/{job}"), refresh, session: &session }, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    offset: Option<u64>,
    index: Option<usize>,
}

/// What the running step of a job wrote after `offset`: `{"running":
/// false}` when the job is not running on this node.
#[get("/api/v1/jobs/{id}/live")]
pub async fn job_live(id: web::Path<String>, q: web::Query<LiveQuery>) -> HttpResponse {
    let Ok(job) = id.parse::<peerbot_protocol::Hash32>() else {
        return crate::http::bad_request(format!("{id:?} is not a job id (64 hex digits)"));
    };
    match crate::live::read(&job, q.offset.unwrap_or(0), q.index) {
        Some(c) => HttpResponse::Ok().json(c),
        None => HttpResponse::Ok().json(json!({"running": false})),
    }
}

/// A change with its jobs' states, as the change list shows each.
async fn change_data(st: &AppState, id: &str) -> Result<Value, HttpResponse> {
    let rec = match st.store.record_by_prefix(id) {
        Ok(Some(r)) if matches!(r.body, Body::Change(_)) => r,
        Ok(_) => return Err(not_found(format!("no change {id}"))),
        Err(e) => return Err(crate::http::bad_request(e)),
    };
    let mut v = change_json(&rec);
    let Body::Change(c) = &rec.body else { unreachable!("checked above") };
    let jobs = st.ask(Query::JobsOf(c.jobs.iter().map(|j| j.id).collect())).await?;
    v["jobs"] = jobs;
    Ok(v)
}

#[get("/api/v1/changes/{id}")]
pub async fn change_api(st: State, id: web::Path<String>) -> HttpResponse {
    match change_data(&st, &id).await {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

#[get("/changes/{id}")]
pub async fn change_page(req: HttpRequest, st: State, id: web::Path<String>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let c = match change_data(&st, &id).await {
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let body = html! {
        h1 { "Change " code { (short(s(&c["commit"]))) } " · " (s(&c["title"])) }
        @if let Some(e) = c["recipe_error"].as_str() {
            h2.err { "The recipe (.peerbot.toml) of this commit is broken" }
            div.recipe-error { (e) }
        }
        table {
            tr { th { "commit" } td { code { (s(&c["commit"])) } " on " (s(&c["branch"])) " of " code { (s(&c["repo"])) } } }
            tr { th { "author" } td { (s(&c["author"])) } }
            tr { th { "committed" } td { (when(super::commit_ms(c["commit_time"].as_i64().unwrap_or(0)))) } }
            tr { th { "announced" } td { (when(c["announced_ms"].as_u64().unwrap_or(0))) " by " code { (peer_short(s(&c["announced_by"]))) } } }
            tr { th { "parents" } td { @for p in c["parents"].as_array().into_iter().flatten() { code { (short(s(p))) } " " } } }
            @if let Some(f) = c["force"].as_object() { tr { th { "forced" } td { (s(&f["reason"])) } } }
            @if let Some(p) = c["force"]["patch"].as_object() { tr { th { "try patch" } td {
                a href={"/api/v1/changes/" (s(&c["id"])) "/patch"} { (p["size"].as_u64().unwrap_or(0)) " bytes" } " on top of the commit" } } }
            @if let Some(t) = c["firing_ms"].as_u64() { tr { th { "scheduled" } td { "reason: schedule, the firing at " (when(t)) } } }
            tr { th { "files" } td { (c["files"].as_array().map_or(0, |f| f.len())) " changed" } }
            @if c["try"] != true {
                tr { th { "" } td { (force_button(&session, "force a build", s(&c["repo"]), s(&c["branch"]), s(&c["commit"]), None)) } }
            }
        }
        h2 { "Jobs" }
        @if c["jobs"].as_array().is_none_or(|j| j.is_empty()) { p.muted { "None: " @if c["recipe_error"].is_string() { "the recipe could not be read." } @else { "no builder of the recipe matched this change." } } }
        @else { table {
            thead { tr { th { "builder" } th { "state" } th { "results" } th { "waiting" } } }
            tbody { @for j in c["jobs"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/jobs/" (s(&j["job"]))} { (s(&j["builder"])) } }
                    td { span class={"badge " (s(&j["state"]))} { (s(&j["state"])) } }
                    td { @for r in j["results"].as_array().into_iter().flatten() {
                        a class={"badge " (s(&r["status"]))} href={"/builds/" (s(&r["id"]))} { (s(&r["status"])) } " "
                    } }
                    td.muted { (s(&j["waiting_reason"])) }
                }
            } }
        } }
    };
    let title = format!("change {}", short(s(&c["commit"])));
    let json = format!("/api/v1/changes/{}", s(&c["id"]));
    page(Layout { title, here: "", json, refresh: false, session: &session }, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_keeps_its_colours_and_never_its_markup() {
        let (html, cut) = render_log(b"\x1b[31mred\x1b[0m <script>alert(1)</script> & \"q\"\n");
        let html = html.into_string();
        assert!(!cut);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("red") && html.contains("<span"), "{html}");
        // A long log shows its end, from the start of a line.
        let mut long = vec![b'x'; LOG_SHOWN];
        long.extend_from_slice(b"\nthe end\n");
        let (html, cut) = render_log(&long);
        assert!(cut);
        assert!(html.into_string().ends_with("the end\n"));
    }
}
