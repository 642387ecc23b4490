//! The dashboard every node serves: server-rendered pages (maud), each
//! with its JSON twin under `/api/v1`, both built from the same data
//! (`data.rs`). A little plain JS refreshes pages and follows live logs;
//! every page works without it.
//!
//! Writes from pages (force, rebuild, cancel) need a login: the node's API
//! token, checked once, then a value derived from it kept in an
//! `HttpOnly`, `SameSite=Strict` cookie, and a CSRF
//! token derived from it in every form. The JSON API never accepts the
//! cookie: it wants `Authorization: Bearer`, which no other site's page
//! can make a browser send.

mod auth;
pub(crate) mod bisect;
mod build;
mod chart;
mod data;
mod pages;

use actix_web::{web, HttpResponse};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use serde_json::Value;

pub use auth::Session;

/// A name as one segment of a path.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(pages::console_page)
        .service(pages::console_json)
        .service(pages::waterfall_page)
        .service(pages::waterfall_json)
        .service(pages::builders_page)
        .service(pages::builders_json)
        .service(pages::builder_page)
        .service(pages::builder_json)
        .service(pages::builder_tests_json)
        .service(pages::nodes_page)
        .service(pages::nodes_json)
        .service(build::build_page)
        .service(build::job_page)
        .service(build::job_live)
        .service(build::change_page)
        .service(build::change_api)
        .service(auth::login_form)
        .service(auth::login)
        .service(auth::logout)
        .service(auth::force_form)
        .service(auth::cancel_form)
        .app_data(web::FormConfig::default().limit(16 * 1024));
}

/// Query of the list pages: which repository and branch, how many, from where.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub limit: Option<usize>,
    pub before: Option<String>,
}

const STYLE: &str = r#"
body { font: 14px system-ui, sans-serif; margin: 0; color: #1d2125; background: #fafbfc; }
header { background: #24292f; color: #fff; padding: .5em 1.5em; display: flex; gap: 1.2em; align-items: baseline; }
header a { color: #fff; text-decoration: none; } header a.here { text-decoration: underline; }
header .me { margin-left: auto; color: #ccd; } header form { display: inline; } header button { font-size: 12px; padding: 0 .5em; }
main { padding: 1em 1.5em; }
h1 { font-size: 1.3em; margin: .3em 0 .6em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; } th, td { text-align: left; padding: .25em .5em; border-bottom: 1px solid #e3e6e8; vertical-align: top; font-variant-numeric: tabular-nums; }
th { background: #f0f2f4; font-weight: 600; }
a { color: #0b5cad; } code, .sha { font: 12px ui-monospace, monospace; }
.muted { color: #6a737d; } .err { color: #b00020; font-weight: 600; } .recipe-error { font: 12px ui-monospace, monospace; color: #b00020; background: #fdecee; border: 1px solid #f5b5bd; padding: .5em; white-space: pre-wrap; }
.success { background: #8fd694; } .warnings { background: #ffd866; } .failure { background: #f2777a; }
.exception { background: #c59ae0; } .cancelled, .superseded { background: #d5d8dc; }
.done { background: #e8ecf0; } .pending { background: #fff; border: 1px dashed #9aa; } .claimed { background: #cfe3ff; } .running { background: #8cc4ff; animation: pulse 1.5s infinite; }
@keyframes pulse { 50% { opacity: .55; } }
td.cell { padding: 2px; min-width: 4.5em; } td.cell a { display: block; padding: .2em .3em; color: #111; text-decoration: none; border-radius: 3px; font-size: 12px; }
td.cell a.broke { outline: 3px solid #b00020; font-weight: 700; }
.badge { display: inline-block; padding: 0 .45em; border-radius: 3px; font-size: 12px; }
.box { border: 1px solid #bbb; border-radius: 4px; margin: 2px 0; font-size: 12px; }
.box .head { padding: .15em .3em; } .box .step { padding: 0 .3em; border-top: 1px solid #fff8; }
pre.log { background: #111; color: #ddd; padding: .6em; overflow: auto; max-height: 36em; font: 12px ui-monospace, monospace; white-space: pre-wrap; }
form.inline { display: inline; } button { font: inherit; padding: .15em .7em; cursor: pointer; }
.selectors { margin-bottom: .8em; } .selectors select { font: inherit; }
svg.chart { background: #fff; border: 1px solid #e3e6e8; margin: 0 1em 1em 0; }
.side { display: flex; gap: 1em; flex-wrap: wrap; }
"#;

/// Reloads the page every few seconds while it is shown, unless the
/// user is typing in a form.
const REFRESH_JS: &str = r#"
setInterval(() => { if (!document.hidden && !document.querySelector("input:focus, select:focus")) location.reload(); }, 10000);
"#;

pub struct Layout<'a> {
    pub title: String,
    pub here: &'a str,
    pub json: String,
    pub refresh: bool,
    pub session: &'a Session,
}

pub fn page(l: Layout, body: Markup) -> HttpResponse {
    let nav = [("Console", "/"), ("Waterfall", "/waterfall"), ("Builders", "/builders"), ("Nodes", "/nodes")];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (l.title) " · peerbot" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { a href="/" { "peerbot" } }
                    @for (name, href) in nav {
                        a href=(href) class=[(l.here == href).then_some("here")] { (name) }
                    }
                    span.me {
                        "node " (l.session.node_name) " · "
                        @if l.session.logged_in {
                            form method="post" action="/logout" { input type="hidden" name="csrf" value=(l.session.csrf); button { "log out" } }
                        } @else {
                            a href="/login" { "log in" }
                        }
                        " · " a href=(l.json) { "JSON" }
                    }
                }
                main { (body) }
                @if l.refresh { script { (PreEscaped(REFRESH_JS)) } }
            }
        }
    };
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(markup.into_string())
}

/// A page that could not be made, as a page.
pub fn error_page(session: &Session, code: actix_web::http::StatusCode, msg: &str) -> HttpResponse {
    let mut r = page(
        Layout { title: code.to_string(), here: "", json: "/api/v1/node".into(), refresh: false, session },
        html! { h1 { (code) } p.err { (msg) } p { a href="/" { "back to the console" } } },
    );
    *r.status_mut() = code;
    r
}

/// An error answer of the JSON API (`{"error": ..}`) as a page.
pub fn from_api(session: &Session, r: HttpResponse) -> HttpResponse {
    let code = r.status();
    use actix_web::body::MessageBody;
    let msg = match r.into_body().try_into_bytes() {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&b).into_owned()),
        Err(_) => String::new(),
    };
    error_page(session, code, &msg)
}

/// A JSON string, or "" for anything else.
pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A JSON list of strings (authors, labels) as one line.
pub fn names(v: &Value) -> String {
    v.as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

/// The first characters of a commit id (a peer may send any text: cut
/// at a character, never inside one).
pub fn short(sha: &str) -> &str {
    match sha.char_indices().nth(10) {
        Some((i, _)) => &sha[..i],
        None => sha,
    }
}

/// A commit time (seconds, as git gives it) in milliseconds.
pub fn commit_ms(secs: i64) -> u64 {
    (secs.max(0) as u64).saturating_mul(1000)
}

/// A time in milliseconds since the epoch, to the second, UTC.
pub fn when(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    // Past 9999-12-31 there is no such date to print: the number is what was sent.
    if ms > 253_402_300_799_999 {
        return format!("{ms} ms");
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

/// A PeerId shown short: its end (they all begin alike).
pub fn peer_short(peer: &str) -> String {
    let n = peer.chars().count();
    format!("…{}", peer.chars().skip(n.saturating_sub(8)).collect::<String>())
}

pub fn secs(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min {} s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The name a node is shown by: its `--name`, else the end of its PeerId.
pub fn node_label(name: &str, peer: &str) -> String {
    if name.is_empty() {
        peer_short(peer)
    } else {
        name.to_string()
    }
}

/// `?repo=..&branch=..` for links that keep the user's selection.
pub fn keep_query(repo: &Option<String>, branch: &Option<String>) -> String {
    let pairs: Vec<(&str, &str)> =
        [("repo", repo), ("branch", branch)].into_iter().filter_map(|(k, v)| Some((k, v.as_deref()?))).collect();
    if pairs.is_empty() {
        return String::new();
    }
    format!("?{}", serde_urlencoded::to_string(pairs).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_a_peer_sent_is_cut_and_dated_without_panics() {
        assert_eq!(short("0123456789abcdef"), "0123456789");
        assert_eq!(short("aaaaaaaaaé-and-more"), "aaaaaaaaaé");
        assert_eq!(short("é"), "é");
        assert_eq!(peer_short("ééééééééééé"), "…éééééééé");
        assert_eq!(when(1_000), "1970-01-01 00:00:01");
        assert_eq!(when(u64::MAX), format!("{} ms", u64::MAX));
        assert_eq!(commit_ms(i64::MAX), u64::MAX);
        assert_eq!(commit_ms(-5), 0);
    }
}
