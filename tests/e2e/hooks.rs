//! Push webhooks: a push event signed with the node's hook secret (each
//! forge's own scheme) announces its commits, which are then built, with no
//! node polling the repository; a wrong signature is a 401 and announces
//! nothing; a repository the node's policy does not allow is a 403.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use peerbot_tests::{GitRepo, Node};
use serde_json::{json, Value};
use sha2::Sha256;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const SECRET: &str = "hook-secret-0123456789";
const RECIPE: &str = "[[builder]]\nname = \"unit\"\n[[builder.step]]\nrun = \"true\"\n";

fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn post(n: &Node, forge: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
    let mut req = ureq::post(&format!("{}/api/v1/hooks/{forge}", n.url())).timeout(Duration::from_secs(90));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

fn commits_announced(n: &Node) -> Vec<String> {
    let v = n.get("/api/v1/changes?limit=50").unwrap();
    v.as_array().unwrap().iter().map(|c| c["commit"].as_str().unwrap().to_string()).collect()
}

#[test]
fn signed_pushes_announce_their_commits_and_forged_ones_nothing() {
    let root = tempfile::Builder::new().prefix("peerbot-hooks-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let c1 = repo.commit(&[(".peerbot.toml", RECIPE), ("a", "1")], "one").unwrap();
    let c2 = repo.commit(&[("a", "2")], "two").unwrap();
    let path = repo.path().canonicalize().unwrap().display().to_string();
    let secret_file = root.path().join("hook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing watched: only the hooks announce.
    let args = ["--allow-repo", &path, "--sandbox", "none", "--hook-secret-file", secret_file.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    let n = Node::start(Path::new(BIN), "A", &root.path().join("a"), &args).unwrap();

    let github = json!({"ref": "refs/heads/main", "before": "0".repeat(40), "after": c2,
                        "repository": {"clone_url": path}, "commits": [{"id": c1}, {"id": c2}]})
    .to_string();
    let forged =
        [("X-GitHub-Event", "push".to_string()), ("X-Hub-Signature-256", format!("sha256={}", "00".repeat(32)))];
    let (code, v) = post(&n, "github", &forged, &github);
    assert_eq!(code, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not match"), "{v}");
    let (code, v) = post(&n, "github", &[("X-GitHub-Event", "push".into())], &github);
    assert_eq!(code, 401, "unsigned: {v}");
    assert!(commits_announced(&n).is_empty(), "a forged push announces nothing");

    let signed = [("X-GitHub-Event", "push".to_string()), ("X-Hub-Signature-256", format!("sha256={}", sign(&github)))];
    let (code, v) = post(&n, "github", &signed, &github);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["announced"].as_array().unwrap().len(), 2, "{v}");
    let built = n.build_of(&c2, "unit");
    assert_eq!(built["status"], "success", "{built}");
    assert_eq!(built["branch"], "main");
    let mut announced = commits_announced(&n);
    announced.sort();
    let mut want = vec![c1.clone(), c2.clone()];
    want.sort();
    assert_eq!(announced, want);
    // Another event than a push, signed, announces nothing.
    let ping = json!({"zen": "hello"}).to_string();
    let (code, v) = post(
        &n,
        "github",
        &[("X-GitHub-Event", "ping".into()), ("X-Hub-Signature-256", format!("sha256={}", sign(&ping)))],
        &ping,
    );
    assert_eq!((code, v["announced"].as_array().map(Vec::len)), (200, Some(0)), "{v}");

    // GitLab's token, and Gitea's signature.
    let c3 = repo.commit(&[("a", "3")], "three").unwrap();
    let gitlab = json!({"object_kind": "push", "ref": "refs/heads/main", "after": c3,
                        "project": {"git_http_url": path}, "commits": [{"id": c3}]})
    .to_string();
    let (code, _) = post(&n, "gitlab", &[("X-Gitlab-Token", "not-the-secret".into())], &gitlab);
    assert_eq!(code, 401);
    assert!(!commits_announced(&n).contains(&c3));
    let (code, v) = post(&n, "gitlab", &[("X-Gitlab-Token", SECRET.into())], &gitlab);
    assert_eq!(code, 200, "{v}");
    assert!(commits_announced(&n).contains(&c3));

    let c4 = repo.commit(&[("a", "4")], "four").unwrap();
    let gitea =
        json!({"ref": "refs/heads/main", "after": c4, "repository": {"clone_url": path}, "commits": [{"id": c4}]})
            .to_string();
    let (code, _) = post(&n, "gitea", &[("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", sign("{}"))], &gitea);
    assert_eq!(code, 401);
    let (code, v) = post(&n, "gitea", &[("X-Gitea-Event", "push".into()), ("X-Gitea-Signature", sign(&gitea))], &gitea);
    assert_eq!(code, 200, "{v}");
    assert_eq!(n.build_of(&c4, "unit")["status"], "success");

    // A repository the node may not build is refused, even signed.
    let other =
        json!({"ref": "refs/heads/main", "after": c4, "repository": {"clone_url": "/srv/elsewhere"}}).to_string();
    let (code, v) = post(
        &n,
        "github",
        &[("X-GitHub-Event", "push".into()), ("X-Hub-Signature-256", format!("sha256={}", sign(&other)))],
        &other,
    );
    assert_eq!(code, 403, "{v}");
}
