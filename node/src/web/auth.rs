//! Logging in to a node's pages, and the writes its buttons make.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::{error_page, from_api, page, Layout};
use crate::core_actor::{Cancel, Force};
use crate::http::{commit_info_for, same_token, AppState, State};

const COOKIE: &str = "peerbot_session";

/// Who is looking at a page: logged in or not, and the CSRF token their
/// forms carry.
pub struct Session {
    pub logged_in: bool,
    pub csrf: String,
    pub node_name: String,
}

/// The CSRF token of a login: derived from the token, so it needs no
/// server state, and a page of another site can neither read nor make it.
fn csrf_for(token: &str) -> String {
    blake3::keyed_hash(blake3::hash(token.as_bytes()).as_bytes(), b"peerbot page forms").to_hex().to_string()
}

/// What the login cookie holds: derived from the token, so the browser
/// never keeps the token itself, and a stolen cookie opens the pages'
/// forms only, never the JSON API (which takes the token alone).
fn session_for(token: &str) -> String {
    blake3::keyed_hash(blake3::hash(token.as_bytes()).as_bytes(), b"peerbot page session").to_hex().to_string()
}

impl Session {
    pub fn of(req: &HttpRequest, st: &AppState) -> Session {
        let logged_in = req.cookie(COOKIE).is_some_and(|c| same_token(c.value(), &session_for(&st.api_token)));
        Session {
            logged_in,
            csrf: if logged_in { csrf_for(&st.api_token) } else { String::new() },
            node_name: st.name.clone(),
        }
    }
}

/// Why a write from a page is refused, if it is: no login, a CSRF token
/// that is not this login's, or a request sent by a page of another origin.
fn check_write(req: &HttpRequest, st: &AppState, csrf: &str) -> Result<Session, HttpResponse> {
    let session = Session::of(req, st);
    if !session.logged_in {
        return Err(error_page(
            &session,
            StatusCode::UNAUTHORIZED,
            "log in with this node's API token first (the node keeps it in DATA_DIR/api.token)",
        ));
    }
    if !same_token(csrf, &session.csrf) {
        return Err(error_page(
            &session,
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or stale: reload the page",
        ));
    }
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let Some(o) = origin {
        let host = o.split_once("://").map(|(_, h)| h).unwrap_or(o);
        let host = crate::http::host_name(host);
        if !st.hosts.contains(&host) {
            return Err(error_page(&session, StatusCode::FORBIDDEN, &format!("a write from origin {o:?} is refused")));
        }
    }
    Ok(session)
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, to.to_string())).finish()
}

/// Only paths of this site are followed after a login.
fn local_path(next: &Option<String>) -> String {
    match next.as_deref() {
        // Browsers drop tabs and newlines from a URL: "/\t/x" would become "//x".
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.chars().any(|c| c == '\\' || c.is_control() || c.is_whitespace()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextQuery {
    next: Option<String>,
}

#[get("/login")]
pub async fn login_form(req: HttpRequest, st: State, q: web::Query<NextQuery>) -> HttpResponse {
    let session = Session::of(&req, &st);
    let next = local_path(&q.next);
    page(
        Layout { title: "Log in".into(), here: "", json: "/api/v1/node".into(), refresh: false, session: &session },
        html! {
            h1 { "Log in to " (session.node_name) }
            @if session.logged_in { p { "You are logged in." } }
            p.muted { "Forcing, rebuilding and cancelling builds need this node's API token. The node prints where it keeps it when it starts (by default DATA_DIR/api.token)." }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "API token " input type="password" name="token" autocomplete="current-password" autofocus; }
                " " button type="submit" { "log in" }
            }
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

#[post("/login")]
pub async fn login(req: HttpRequest, st: State, form: web::Form<LoginForm>) -> HttpResponse {
    if !same_token(&form.token, &st.api_token) {
        let session = Session::of(&req, &st);
        return error_page(&session, StatusCode::UNAUTHORIZED, "that is not this node's API token");
    }
    // Secure when the page came over TLS (directly or, as a proxy says, to it).
    let tls = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, session_for(&st.api_token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(tls)
        .finish();
    let mut r = see_other(&local_path(&form.next));
    let _ = r.add_cookie(&cookie);
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfOnly {
    csrf: String,
}

#[post("/logout")]
pub async fn logout(req: HttpRequest, st: State, form: web::Form<CsrfOnly>) -> HttpResponse {
    if let Err(r) = check_write(&req, &st, &form.csrf) {
        return r;
    }
    let mut r = see_other("/");
    let mut gone = Cookie::build(COOKIE, "").path("/").http_only(true).same_site(SameSite::Strict).finish();
    gone.make_removal();
    let _ = r.add_cookie(&gone);
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceForm {
    csrf: String,
    repo: String,
    branch: Option<String>,
    commit: String,
    builder: Option<String>,
    reason: Option<String>,
}

/// The force and rebuild buttons: new jobs for a commit, then its change page.
#[post("/ui/force")]
pub async fn force_form(req: HttpRequest, st: State, form: web::Form<ForceForm>) -> HttpResponse {
    let session = match check_write(&req, &st, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let f = form.into_inner();
    let info = match commit_info_for(&st, &f.repo, f.branch.filter(|b| !b.is_empty()), &f.commit).await {
        Ok(i) => i,
        Err(r) => return from_api(&session, r),
    };
    let builder = f.builder.filter(|b| !b.is_empty());
    let reason = f.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "forced from the web page".into());
    match st.ask(Force { info, builder, reason }).await {
        Ok(Ok(id)) => see_other(&format!("/changes/{}", id.to_hex())),
        Ok(Err(e)) => error_page(&session, StatusCode::BAD_REQUEST, &e),
        Err(r) => from_api(&session, r),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelForm {
    csrf: String,
    job: String,
}

#[post("/ui/cancel")]
pub async fn cancel_form(req: HttpRequest, st: State, form: web::Form<CancelForm>) -> HttpResponse {
    let session = match check_write(&req, &st, &form.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let job = form.into_inner().job;
    match st.ask(Cancel { job: job.clone(), reason: "cancelled from the web page".into() }).await {
        Ok(Ok((id, _))) => see_other(&format!("/jobs/{}", id.to_hex())),
        Ok(Err(e)) => error_page(&session, StatusCode::BAD_REQUEST, &e),
        Err(r) => from_api(&session, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(local_path(&Some("/builds/ab".into())), "/builds/ab");
        for evil in
            ["//evil.example/x", "https://evil.example/", "/\\evil.example", "builds", "/\t/evil.example", "/\n/evil"]
        {
            assert_eq!(local_path(&Some(evil.into())), "/", "{evil}");
        }
    }

    #[test]
    fn the_csrf_token_depends_on_the_api_token() {
        assert_eq!(csrf_for("a"), csrf_for("a"));
        assert_ne!(csrf_for("a"), csrf_for("b"));
        assert!(!same_token("", ""));
    }
}
