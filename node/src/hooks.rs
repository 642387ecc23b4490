//! Push webhooks as change sources: GitHub, GitLab and Gitea (or Forgejo)
//! post a push event; the node checks it with the forge's secret scheme
//! before reading a byte of it as JSON, then announces the pushed commits
//! as `POST /api/v1/changes` would. So no node has to poll the forge.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//! - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>`
//! - GitLab: `X-Gitlab-Token: <secret>`, compared in constant time
//!
//! The repository announced is `?repo=` of the hook's URL when given (the
//! string the cluster knows the repository by), else the payload's clone
//! URL; either way this node's policy must allow it, as a forge is
//! reachable from far more places than the API's writers.

use actix_web::{post, web, HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::core_actor::Announce;
use crate::http::{bad_request, commit_info_for, error, AppState};
use peerbot_protocol::core::Announced;
use peerbot_protocol::repos::RepoPolicy;

/// A push event's body is read up to this size.
const MAX_HOOK_BYTES: usize = 8 << 20;
/// Commits of one push announced at most (the newest kept).
const MAX_PUSHED_COMMITS: usize = 100;

pub struct Hooks {
    /// None: no secret configured, and every hook is refused.
    pub secret: Option<String>,
    pub repos: RepoPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn hmac_ok(secret: &str, body: &[u8], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig.trim()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Whether the request carries this forge's proof of the secret.
fn signed(forge: Forge, req: &HttpRequest, secret: &str, body: &[u8]) -> Result<(), &'static str> {
    let ok = match forge {
        Forge::GitHub => {
            let sig = header(req, "x-hub-signature-256").ok_or("no X-Hub-Signature-256 header")?;
            sig.strip_prefix("sha256=").is_some_and(|h| hmac_ok(secret, body, h))
        }
        Forge::Gitea => {
            let sig = header(req, "x-gitea-signature").ok_or("no X-Gitea-Signature header")?;
            hmac_ok(secret, body, sig)
        }
        Forge::GitLab => {
            let token = header(req, "x-gitlab-token").ok_or("no X-Gitlab-Token header")?;
            crate::http::same_token(token, secret)
        }
    };
    if ok {
        Ok(())
    } else {
        Err("the signature does not match this node's hook secret")
    }
}

/// What a push event says, in the fields the three forges share.
#[derive(Debug, PartialEq)]
struct Push {
    repo: String,
    branch: String,
    commits: Vec<String>,
}

/// The branch and commits of a push event, or why there is nothing to
/// announce (a tag, a deleted branch) as `Ok(None)`.
fn parse_push(forge: Forge, body: &[u8]) -> Result<Option<Push>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the push event is not JSON: {e}"))?;
    if forge == Forge::GitLab && v["object_kind"] != "push" {
        return Ok(None);
    }
    let Some(branch) = v["ref"].as_str().and_then(|r| r.strip_prefix("refs/heads/")) else {
        return Ok(None);
    };
    let after = v["after"].as_str().unwrap_or_default();
    if v["deleted"] == true || after.is_empty() || after.bytes().all(|b| b == b'0') {
        return Ok(None);
    }
    let clone = match forge {
        Forge::GitLab => v["project"]["git_http_url"].as_str().or(v["repository"]["git_http_url"].as_str()),
        _ => v["repository"]["clone_url"].as_str(),
    };
    let mut commits: Vec<String> = v["commits"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if !commits.iter().any(|c| c == after) {
        commits.push(after.to_string());
    }
    let skip = commits.len().saturating_sub(MAX_PUSHED_COMMITS);
    Ok(Some(Push {
        repo: clone.unwrap_or_default().to_string(),
        branch: branch.to_string(),
        commits: commits.split_off(skip),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookQuery {
    repo: Option<String>,
}

async fn handle(
    forge: Forge,
    req: HttpRequest,
    st: web::Data<AppState>,
    hooks: web::Data<Hooks>,
    q: web::Query<HookQuery>,
    body: web::Payload,
) -> HttpResponse {
    let unauthorized = |why: &str| error(actix_web::http::StatusCode::UNAUTHORIZED, why);
    let Some(secret) = &hooks.secret else {
        return error(actix_web::http::StatusCode::FORBIDDEN, "this node has no hook secret (--hook-secret-file)");
    };
    // Without the forge's header there is nothing to check the body with:
    // refused before it is read.
    let proof = match forge {
        Forge::GitHub => "x-hub-signature-256",
        Forge::Gitea => "x-gitea-signature",
        Forge::GitLab => "x-gitlab-token",
    };
    if header(&req, proof).is_none() {
        return unauthorized(&format!("no {proof} header"));
    }
    let body = match crate::trybuild::read_body(body, MAX_HOOK_BYTES).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(why) = signed(forge, &req, secret, &body) {
        return unauthorized(why);
    }
    // GitHub and Gitea say which event it is; only pushes announce.
    let event = header(&req, "x-github-event").or(header(&req, "x-gitea-event"));
    if forge != Forge::GitLab && event.is_some_and(|e| e != "push") {
        return HttpResponse::Ok().json(json!({"announced": [], "ignored": format!("{} event", event.unwrap_or(""))}));
    }
    let push = match parse_push(forge, &body) {
        Ok(Some(p)) => p,
        Ok(None) => return HttpResponse::Ok().json(json!({"announced": [], "ignored": "not a push to a branch"})),
        Err(e) => return bad_request(e),
    };
    let repo = q.into_inner().repo.unwrap_or(push.repo);
    if repo.is_empty() {
        return bad_request("the push event names no repository; give ?repo= in the hook's URL");
    }
    if !hooks.repos.allows(&repo) {
        return error(
            actix_web::http::StatusCode::FORBIDDEN,
            format!("repository {repo:?} is not allowed by this node's policy (--allow-repo)"),
        );
    }
    let mut announced = Vec::new();
    for commit in &push.commits {
        let info = match commit_info_for(&st, &repo, Some(push.branch.clone()), commit).await {
            Ok(i) => i,
            Err(r) => return r,
        };
        match st.ask(Announce(info)).await {
            Ok(Ok(a)) => announced.push(match a {
                Announced::New(id) => json!({"commit": commit, "change": id.to_hex(), "already_known": false}),
                Announced::Known(id) => json!({"commit": commit, "change": id.to_hex(), "already_known": true}),
                Announced::Disputed { ours, theirs } => {
                    json!({"commit": commit, "change": ours.to_hex(), "disputes": theirs.to_hex()})
                }
            }),
            Ok(Err(e)) => return bad_request(e),
            Err(r) => return r,
        }
    }
    HttpResponse::Ok().json(json!({"repo": repo, "branch": push.branch, "announced": announced}))
}

/// `POST /api/v1/hooks/{github,gitlab,gitea}`.
#[post("/api/v1/hooks/{forge}")]
async fn push_event(
    req: HttpRequest,
    st: web::Data<AppState>,
    h: web::Data<Hooks>,
    forge: web::Path<String>,
    q: web::Query<HookQuery>,
    b: web::Payload,
) -> HttpResponse {
    let forge = match forge.as_str() {
        "github" => Forge::GitHub,
        "gitlab" => Forge::GitLab,
        "gitea" => Forge::Gitea,
        other => return crate::http::not_found(format!("no hook for {other:?}: github, gitlab or gitea")),
    };
    handle(forge, req, st, h, q, b).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(push_event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    const SECRET: &str = "a-hook-secret-of-some-length";

    fn hmac_hex(body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn each_forge_proves_the_secret_its_own_way() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = hmac_hex(body);
        let gh =
            TestRequest::default().insert_header(("X-Hub-Signature-256", format!("sha256={sig}"))).to_http_request();
        assert_eq!(signed(Forge::GitHub, &gh, SECRET, body), Ok(()));
        assert!(signed(Forge::GitHub, &gh, SECRET, b"{}").is_err(), "another body");
        assert!(signed(Forge::GitHub, &gh, "another-secret-entirely", body).is_err());
        let bare = TestRequest::default().insert_header(("X-Hub-Signature-256", sig.clone())).to_http_request();
        assert!(signed(Forge::GitHub, &bare, SECRET, body).is_err(), "GitHub's needs its sha256= prefix");
        let gitea = TestRequest::default().insert_header(("X-Gitea-Signature", sig)).to_http_request();
        assert_eq!(signed(Forge::Gitea, &gitea, SECRET, body), Ok(()));
        let gl = TestRequest::default().insert_header(("X-Gitlab-Token", SECRET)).to_http_request();
        assert_eq!(signed(Forge::GitLab, &gl, SECRET, body), Ok(()));
        let wrong = TestRequest::default().insert_header(("X-Gitlab-Token", "nope")).to_http_request();
        assert!(signed(Forge::GitLab, &wrong, SECRET, body).is_err());
        let none = TestRequest::default().to_http_request();
        for f in [Forge::GitHub, Forge::Gitea, Forge::GitLab] {
            assert!(signed(f, &none, SECRET, body).unwrap_err().starts_with("no X-"), "{f:?}");
        }
    }

    #[test]
    fn pushes_to_branches_announce_their_commits_and_the_rest_nothing() {
        let a = "1111111111111111111111111111111111111111";
        let b = "2222222222222222222222222222222222222222";
        let github = json!({"ref": "refs/heads/main", "after": b, "repository": {"clone_url": "https://h/o/r.git"},
                            "commits": [{"id": a}, {"id": b}]});
        let p = parse_push(Forge::GitHub, github.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!(
            p,
            Push { repo: "https://h/o/r.git".into(), branch: "main".into(), commits: vec![a.into(), b.into()] }
        );
        let gitlab = json!({"object_kind": "push", "ref": "refs/heads/dev", "after": b,
                            "project": {"git_http_url": "https://gl/o/r.git"}, "commits": [{"id": b}]});
        let p = parse_push(Forge::GitLab, gitlab.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!((p.repo.as_str(), p.branch.as_str(), p.commits.len()), ("https://gl/o/r.git", "dev", 1));
        // A force-push with no new commits still announces the new head.
        let bare = json!({"ref": "refs/heads/main", "after": b, "commits": []});
        assert_eq!(parse_push(Forge::Gitea, bare.to_string().as_bytes()).unwrap().unwrap().commits, vec![b]);
        let tag = json!({"ref": "refs/tags/v1", "after": b});
        assert_eq!(parse_push(Forge::GitHub, tag.to_string().as_bytes()).unwrap(), None);
        let deleted =
            json!({"ref": "refs/heads/gone", "after": "0000000000000000000000000000000000000000", "deleted": true});
        assert_eq!(parse_push(Forge::GitHub, deleted.to_string().as_bytes()).unwrap(), None);
        let mr = json!({"object_kind": "merge_request", "ref": "refs/heads/main", "after": b});
        assert_eq!(parse_push(Forge::GitLab, mr.to_string().as_bytes()).unwrap(), None);
        assert!(parse_push(Forge::GitHub, b"not json").unwrap_err().contains("not JSON"));
        let many: Vec<Value> = (0..150).map(|i| json!({"id": format!("{i:040x}")})).collect();
        let big = json!({"ref": "refs/heads/main", "after": format!("{:040x}", 149), "commits": many});
        let p = parse_push(Forge::GitHub, big.to_string().as_bytes()).unwrap().unwrap();
        assert_eq!((p.commits.len(), p.commits.last().unwrap().clone()), (MAX_PUSHED_COMMITS, format!("{:040x}", 149)));
    }
}
