//! Try builds: the uncommitted state of a work tree, built on top of its
//! upstream commit with nothing committed or pushed. The node that takes
//! the patch reads the recipe of the patched tree and signs a change that
//! names the patch by its hash (the core keeps the patch as a blob); a
//! builder fetches the patch from that node, checks its hash, and applies
//! it to its checkout. Try changes live on `try:<branch>`, which no branch
//! history, collapsing or blame counts.

use std::path::Path;

use actix_web::{get, web, HttpRequest, HttpResponse};
use anyhow::{bail, Context};
use peerbot_protocol::record::{Body, PatchRef, MAX_PATCH_BYTES};
use peerbot_protocol::store::Store;
use peerbot_protocol::Hash32;
use serde::Deserialize;

use crate::core_actor::TryPatch;
use crate::git;
use crate::http::{authorize, bad_request, commit_info_for, not_found, stored_change_json, AppState};

/// The `.peerbot.toml` of `commit` with `patch` applied, read in the mirror
/// through a throwaway index: the mirror's refs and its own index are left
/// alone (the patch's new blobs join its objects, as a fetch's would).
pub async fn patched_recipe(mirror: &Path, commit: &str, patch: &[u8]) -> Result<String, String> {
    git::check_commit(commit).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary index: {e}"))?;
    let index = dir.path().join("index");
    let tree = async {
        git::git_fed(mirror, Some(&index), &["read-tree", commit], b"").await?;
        git::git_fed(mirror, Some(&index), &["apply", "--cached", "--whitespace=nowarn", "-"], patch)
            .await
            .map_err(|e| anyhow::anyhow!("the patch does not apply to {}: {e:#}", &commit[..commit.len().min(12)]))?;
        let tree = git::git_fed(mirror, Some(&index), &["write-tree"], b"").await?;
        anyhow::Ok(tree.trim().to_string())
    };
    let tree = tree.await.map_err(|e| format!("{e:#}"))?;
    git::recipe_at(mirror, &tree).await
}

/// Applies `patch` to the checkout `ws`, its index too.
pub async fn apply(ws: &Path, patch: &[u8]) -> anyhow::Result<()> {
    git::git_fed(ws, None, &["apply", "--index", "--whitespace=nowarn", "-"], patch)
        .await
        .context("the try patch does not apply to the checkout")?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TryQuery {
    repo: String,
    /// The upstream branch; the change goes on `try:<branch>`.
    branch: Option<String>,
    /// The upstream commit the patch applies to.
    commit: String,
    /// Comma-separated builders [default: every builder of the patched recipe].
    builders: Option<String>,
    reason: Option<String>,
}

/// Takes a patch (the body, as `git diff --binary` prints it) for a try
/// build of `commit`.
async fn post_try(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<TryQuery>,
    body: web::Payload,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &st) {
        return r;
    }
    // Read only once the token is good: nobody else makes the node hold a patch.
    let body = match read_body(body, MAX_PATCH_BYTES as usize).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let q = q.into_inner();
    if body.is_empty() {
        return bad_request("the patch is empty: there is nothing to try");
    }
    let mut info = match commit_info_for(&st, &q.repo, q.branch, &q.commit).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mirror = git::mirror_path(&st.data_dir, &info.repo);
    match patched_recipe(&mirror, &info.commit, &body).await {
        Ok(text) => info.recipe = Ok(text),
        Err(e) => return bad_request(e),
    }
    let builders: Vec<String> = q
        .builders
        .iter()
        .flat_map(|b| b.split(','))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(String::from)
        .collect();
    let reason = q.reason.unwrap_or_else(|| "try".into());
    match st.ask(TryPatch { info, builders, patch: body.to_vec(), reason }).await {
        Ok(Ok(id)) => HttpResponse::Created().json(stored_change_json(&st, &id)),
        Ok(Err(e)) => bad_request(e),
        Err(r) => r,
    }
}

/// A request's body, up to `limit` bytes (over it: 413).
pub async fn read_body(mut body: web::Payload, limit: usize) -> Result<web::Bytes, HttpResponse> {
    use futures::StreamExt;
    let mut out = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| bad_request(format!("reading the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(crate::http::error(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over {limit} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// The patch of a try change.
#[get("/api/v1/changes/{id}/patch")]
async fn get_patch(st: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    let Ok(id) = id.parse::<Hash32>() else { return bad_request("a change id is 64 hex digits") };
    let Some(rec) = st.store.record(&id) else { return not_found("no such change") };
    let Body::Change(c) = &rec.body else { return not_found("no such change") };
    let Some(p) = c.force.as_ref().and_then(|f| f.patch) else { return not_found("that change is not a try") };
    match st.store.get_blob(&p.hash) {
        Some(bytes) => HttpResponse::Ok()
            .content_type("text/x-diff; charset=utf-8")
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Content-Disposition", "attachment; filename=\"try.patch\""))
            .body(bytes),
        None => not_found("this node does not hold the patch; ask the node that signed the change"),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/try").route(web::post().to(post_try))).service(get_patch);
}

/// A patch checked against the size and hash its change signed.
pub fn checked_patch(bytes: Vec<u8>, want: &PatchRef) -> anyhow::Result<Vec<u8>> {
    if bytes.len() as u64 != want.size || want.size > MAX_PATCH_BYTES || Hash32::of(&bytes) != want.hash {
        bail!("the try patch does not match the size and hash its change signed");
    }
    Ok(bytes)
}
