//! The console, the waterfall, the builder pages and the node list.

use actix_web::{get, web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde_json::Value;

use super::chart::chart;
use super::{data, from_api, keep_query, names, node_label, page, s, secs, short, when, Layout, PageQuery, Session};
use crate::http::State;

fn json_or(r: Result<Value, HttpResponse>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(r) => r,
    }
}

/// A link to the next page, keeping the selection.
fn older(path: &str, q: &PageQuery, next: &Value) -> Markup {
    let Some(n) = next.as_str() else { return html! {} };
    let keep = keep_query(&q.repo, &q.branch);
    let sep = if keep.is_empty() { "?" } else { "&" };
    html! { p { a href={(path) (keep) (sep) "before=" (n)} { "older →" } } }
}

/// A person as "Name", without the address.
fn who(author: &str) -> &str {
    author.split(" <").next().unwrap_or(author)
}

fn cell(c: &Value) -> Markup {
    let status = c["status"].as_str().unwrap_or_else(|| s(&c["state"]));
    let broke = c["broke_build"] == true;
    let mut tip = status.to_string();
    if broke {
        tip = format!("{tip}: broke the build; blamelist {}", names(&c["blamelist"]));
    } else if c["fixed_by"].as_array().is_some_and(|a| !a.is_empty()) {
        tip = format!("{tip}: fixed by {}", names(&c["fixed_by"]));
    }
    if let Some(step) = c["step"].as_str() {
        tip = format!("{tip} ({step})");
    }
    let href = match c["build"].as_str() {
        Some(b) => format!("/builds/{b}"),
        None => format!("/jobs/{}", s(&c["job"])),
    };
    html! {
        td.cell {
            @if c["job"].is_string() || c["build"].is_string() {
                a class={(status) @if broke { " broke" }} href=(href) title=(tip) {
                    (status) @if broke { " ✗ broke" }
                }
            }
            @for r in c["rebuilds"].as_array().into_iter().flatten() {
                @let rs = r["status"].as_str().unwrap_or_else(|| s(&r["state"]));
                @let href = match r["build"].as_str() { Some(b) => format!("/builds/{b}"), None => format!("/jobs/{}", s(&r["job"])) };
                a class=(rs) href=(href) title={"forced rebuild: " (rs)} { "↻ " (rs) }
            }
        }
    }
}

#[get("/")]
pub async fn console_page(req: HttpRequest, st: State, q: web::Query<PageQuery>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let v = match data::console(&st, &q).await {
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let builders: Vec<&str> = v["builders"].as_array().into_iter().flatten().map(s).collect();
    let json = format!("/api/v1/console{}", keep_query(&q.repo, &q.branch));
    let body = html! {
        h1 { "Console" @if let (Some(r), Some(b)) = (v["repo"].as_str(), v["branch"].as_str()) { ": " code { (r) } " · " (b) } }
        form.selectors method="get" action="/" {
            label { "repository " select name="repo" {
                @for r in v["repos"].as_array().into_iter().flatten() {
                    option value=(s(&r["repo"])) selected[r["repo"] == v["repo"]] { (s(&r["repo"])) }
                }
            } }
            " " label { "branch " select name="branch" {
                @for r in v["repos"].as_array().into_iter().flatten().filter(|r| r["repo"] == v["repo"]) {
                    @for b in r["branches"].as_array().into_iter().flatten() {
                        option value=(s(b)) selected[*b == v["branch"]] { (s(b)) }
                    }
                }
            } }
            " " button type="submit" { "show" }
        }
        @if v["rows"].as_array().is_none_or(|r| r.is_empty()) {
            p.muted { "No changes yet. Announce one with " code { "peerbot announce" } " or watch a repository with " code { "--watch" } "." }
        } @else {
            table {
                thead { tr { th { "commit" } th { "title" } th { "author" } th { "time" }
                    @for b in &builders { th { a href={"/builders/" (super::urlencode(b))} { (b) } } } } }
                tbody {
                    @for row in v["rows"].as_array().into_iter().flatten() {
                        tr {
                            td { a.sha href={"/changes/" (s(&row["change"]))} { (short(s(&row["commit"]))) } }
                            td { (s(&row["title"]))
                                 @if let Some(e) = row["recipe_error"].as_str() { " " span.err title=(e) { "recipe error" } } }
                            td { (who(s(&row["author"]))) }
                            td.muted { (when(super::commit_ms(row["commit_time"].as_i64().unwrap_or(0)))) }
                            @for b in &builders {
                                @match row["cells"].get(*b) { Some(c) => (cell(c)), None => td.cell {} }
                            }
                        }
                    }
                }
            }
            (older("/", &q, &v["next_before"]))
        }
    };
    page(Layout { title: "Console".into(), here: "/", json, refresh: true, session: &session }, body)
}

#[get("/api/v1/console")]
pub async fn console_json(st: State, q: web::Query<PageQuery>) -> HttpResponse {
    json_or(data::console(&st, &q).await)
}

fn step_boxes(e: &Value) -> Markup {
    html! {
        @for step in e["steps"].as_array().into_iter().flatten() {
            div class={"step " (s(&step["status"]))} title={"exit " (step["exit_code"])} {
                (s(&step["name"])) " · " (secs(step["duration_ms"].as_u64().unwrap_or(0)))
                @if step["timed_out"] == true { " · timed out" }
                @if let Some(w) = step["warnings"].as_u64().filter(|w| *w > 0) { " · " (w) " warnings" }
            }
        }
    }
}

#[get("/waterfall")]
pub async fn waterfall_page(req: HttpRequest, st: State, q: web::Query<PageQuery>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let v = match data::waterfall(&st, &q).await {
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let builders: Vec<&str> = v["builders"].as_array().into_iter().flatten().map(s).collect();
    let body = html! {
        h1 { "Waterfall" }
        p.muted { "Newest first; builds running now on top. Each box is a build, with its steps." }
        table {
            thead { tr { th { "time" } @for b in &builders { th { a href={"/builders/" (super::urlencode(b))} { (b) } } } } }
            tbody {
                @for e in v["entries"].as_array().into_iter().flatten() {
                    tr {
                        td.muted { @if e["kind"] == "live" { "now" } @else { (when(e["started_ms"].as_u64().unwrap_or(0))) } }
                        @for b in &builders {
                            td {
                                @if e["builder"] == *b {
                                    @if e["kind"] == "live" {
                                        a href={"/jobs/" (s(&e["job"]))} { div.box { div class={"head " (s(&e["state"]))} {
                                            (s(&e["state"])) " · " code { (short(s(&e["commit"]))) }
                                            @if let Some(step) = e["step"].as_str() { " · " (step) }
                                        } } }
                                    } @else {
                                        div.box {
                                            a href={"/builds/" (s(&e["build"]))} { div class={"head " (s(&e["status"]))} {
                                                (s(&e["status"])) " · " code { (short(s(&e["commit"]))) } " · " (secs(e["duration_ms"].as_u64().unwrap_or(0)))
                                            } }
                                            div.step.muted { (who(s(&e["author"]))) ": " (s(&e["title"])) }
                                            (step_boxes(e))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (older("/waterfall", &q, &v["next_before"]))
    };
    let json = format!("/api/v1/waterfall{}", keep_query(&q.repo, &q.branch));
    page(Layout { title: "Waterfall".into(), here: "/waterfall", json, refresh: true, session: &session }, body)
}

#[get("/api/v1/waterfall")]
pub async fn waterfall_json(st: State, q: web::Query<PageQuery>) -> HttpResponse {
    json_or(data::waterfall(&st, &q).await)
}

#[get("/builders")]
pub async fn builders_page(req: HttpRequest, st: State) -> HttpResponse {
    let session = Session::of(&req, &st);
    let v = data::builders(&st);
    let body = html! {
        h1 { "Builders" }
        table {
            thead { tr { th { "builder" } th { "last build" } th { "commit" } th { "finished" } th { "builds among the newest " (v["from_results"]) } } }
            tbody { @for b in v["builders"].as_array().into_iter().flatten() {
                tr {
                    td { a href={"/builders/" (super::urlencode(s(&b["builder"])))} { (s(&b["builder"])) } }
                    td { a class={"badge " (s(&b["last_status"]))} href={"/builds/" (s(&b["last_build"]))} { (s(&b["last_status"])) } }
                    td.sha { (short(s(&b["last_commit"]))) }
                    td.muted { (when(b["last_ended_ms"].as_u64().unwrap_or(0))) }
                    td { (b["recent_builds"]) }
                }
            } }
        }
    };
    page(
        Layout {
            title: "Builders".into(),
            here: "/builders",
            json: "/api/v1/builders".into(),
            refresh: false,
            session: &session,
        },
        body,
    )
}

#[get("/api/v1/builders")]
pub async fn builders_json(st: State) -> HttpResponse {
    HttpResponse::Ok().json(data::builders(&st))
}

#[get("/builders/{name}")]
pub async fn builder_page(
    req: HttpRequest,
    st: State,
    name: web::Path<String>,
    q: web::Query<PageQuery>,
) -> HttpResponse {
    let session = Session::of(&req, &st);
    let v = match data::builder(&st, &name, &q) {
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let tests = data::builder_tests(&st, &name, &q);
    let rate = v["success_rate"].as_f64().map(|r| format!("{:.0} %", r * 100.0)).unwrap_or_else(|| "–".into());
    let median = v["median_duration_ms"].as_u64().map(secs).unwrap_or_else(|| "–".into());
    let body = html! {
        h1 { "Builder " (name.as_str()) }
        p { "Success rate " strong { (rate) } " · median duration " strong { (median) } " · over the " (v["builds"].as_array().map_or(0, |b| b.len())) " builds below" }
        h2 { "Trends over commits" }
        div.side { @for (metric, pts) in v["series"].as_object().into_iter().flatten() {
            (chart(metric, pts.as_array().map(|a| a.as_slice()).unwrap_or_default()))
        } }
        @if let Ok(t) = &tests {
            @let (flaky, failing) = (t["flaky"].as_array().cloned().unwrap_or_default(), t["failing"].as_array().cloned().unwrap_or_default());
            @if !failing.is_empty() { h2 { "Failing tests" } (tests_table(&failing)) }
            @if !flaky.is_empty() { h2 { "Flaky tests" } p.muted { "They failed and passed on one commit, or went pass, fail, pass." } (tests_table(&flaky)) }
        }
        h2 { "Recent builds" }
        table {
            thead { tr { th { "status" } th { "commit" } th { "title" } th { "author" } th { "branch" } th { "built by" } th { "finished" } th { "took" } th { "failed step" } } }
            tbody { @for b in v["builds"].as_array().into_iter().flatten() {
                tr {
                    td { a class={"badge " (s(&b["status"]))} href={"/builds/" (s(&b["build"]))} { (s(&b["status"])) } }
                    td.sha { (short(s(&b["commit"]))) }
                    td { (s(&b["title"])) }
                    td { (who(s(&b["author"]))) }
                    td { (s(&b["branch"])) }
                    td { (node_label(s(&b["node_name"]), s(&b["signer"]))) }
                    td.muted { (when(b["ended_ms"].as_u64().unwrap_or(0))) }
                    td { (secs(b["duration_ms"].as_u64().unwrap_or(0))) }
                    td { (s(&b["failed_step"])) }
                }
            } }
        }
        (older(&format!("/builders/{}", super::urlencode(&name)), &q, &v["next_before"]))
    };
    let json = format!("/api/v1/builders/{}{}", super::urlencode(&name), keep_query(&q.repo, &q.branch));
    page(Layout { title: format!("Builder {name}"), here: "/builders", json, refresh: false, session: &session }, body)
}

#[get("/api/v1/builders/{name}/tests")]
pub async fn builder_tests_json(st: State, name: web::Path<String>, q: web::Query<PageQuery>) -> HttpResponse {
    json_or(data::builder_tests(&st, &name, &q))
}

/// A table of tests from the builder's test history.
fn tests_table(tests: &[Value]) -> Markup {
    html! {
        table.tests { thead { tr { th { "test" } th { "recent runs (oldest first)" } th { "failed" } th { "last failure" } } }
            tbody { @for t in tests {
                tr {
                    td { code { (s(&t["name"])) } }
                    td.runs { @for r in t["recent"].as_array().into_iter().flatten() {
                        span class={"badge " (if r == true { "success" } else { "failure" })} { (if r == true { "✓" } else { "✗" }) }
                    } }
                    td { (t["failures"]) " of " (t["runs"]) }
                    td { span.sha { (short(s(&t["last_failure_commit"]))) } " " span.muted { (s(&t["last_failure_message"]).lines().next().unwrap_or("")) } }
                }
            } }
        }
    }
}

#[get("/api/v1/builders/{name}")]
pub async fn builder_json(st: State, name: web::Path<String>, q: web::Query<PageQuery>) -> HttpResponse {
    json_or(data::builder(&st, &name, &q))
}

#[get("/nodes")]
pub async fn nodes_page(req: HttpRequest, st: State) -> HttpResponse {
    let session = Session::of(&req, &st);
    let v = match data::nodes(&st).await {
        Ok(v) => v,
        Err(r) => return from_api(&session, r),
    };
    let body = html! {
        h1 { "Nodes" }
        table {
            thead { tr { th { "name" } th { "peer id" } th { "labels" } th { "executors" } th { "building now" } th { "last heard" } th { "state" } } }
            tbody { @for n in v["nodes"].as_array().into_iter().flatten() {
                tr {
                    td { strong { (node_label(s(&n["name"]), s(&n["peer_id"]))) } @if n["self"] == true { " (this node)" } }
                    td { code { (s(&n["peer_id"])) } }
                    td { (n["labels"].as_array().into_iter().flatten().map(s).collect::<Vec<_>>().join(", ")) }
                    td { (n["busy"]) " / " (n["executors"]) }
                    td { @for j in n["building"].as_array().into_iter().flatten() {
                        a class={"badge " (s(&j["state"]))} href={"/jobs/" (s(&j["job"]))} { (s(&j["builder"])) " " (short(s(&j["commit"]))) @if let Some(step) = j["step"].as_str() { " · " (step) } } " "
                    } }
                    td.muted { @if n["self"] == true { "–" } @else if let Some(ms) = n["last_heard_ms_ago"].as_u64() { (secs(ms)) " ago" } @else { "never" } }
                    td {
                        @if n["self"] == true {
                            @if n["sync"]["caught_up"] == true { "caught up" } @else { "catching up: " (n["sync"]["fetched"]) " fetched, " (n["sync"]["to_fetch"]) " to fetch" }
                            " · " (n["records"]) " records"
                        } @else {
                            (if n["live"] == true { "live" } else { "not heard lately" })
                            @if n["connected"] == true { ", connected" }
                            @if n["suspect"] == true { ", suspect" }
                        }
                    }
                }
            } }
        }
    };
    page(
        Layout {
            title: "Nodes".into(),
            here: "/nodes",
            json: "/api/v1/nodes".into(),
            refresh: true,
            session: &session,
        },
        body,
    )
}

#[get("/api/v1/nodes")]
pub async fn nodes_json(st: State) -> HttpResponse {
    json_or(data::nodes(&st).await)
}
