//! Only admitted nodes count. Three nodes admitted by one cluster key build
//! a commit (the gpu job by the node admitted with gpu=yes); a fourth with
//! a valid libp2p key and no admission bootstraps to them and publishes
//! its own repository's changes: nothing of it is stored or built on the
//! three, and their /metrics count what they refused. Then the keeper
//! revokes one of the three: within a sync interval the other two refuse
//! what it signs, and its old results stay, marked as from a revoked signer.

use std::path::Path;
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const RECIPE: &str = r#"
[[builder]]
name = "test"
requires = ["os=linux"]
[[builder.step]]
name = "build"
run = "echo built $PEERBOT_COMMIT"

[[builder]]
name = "cuda"
requires = ["gpu=yes"]
[[builder.step]]
name = "kernels"
run = "echo kernels"
"#;

fn builds(n: &Node, query: &str) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?{query}")).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn rejected_not_admitted(n: &Node) -> u64 {
    let text = n.get_text("/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("peerbot_") && l.contains("rejected_total{reason=\"not admitted\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn an_unadmitted_node_is_refused_and_a_revoked_one_is_cut_off() {
    let root = tempfile::Builder::new().prefix("peerbot-trust-").tempdir().unwrap();
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let repo = GitRepo::new().unwrap();
    repo.commit(&[("README", "x\n")], "start").unwrap();
    let dir = |n: &str| root.path().join(n);
    let start = |name: &str, mut extra: Vec<String>, labels: &[&str]| {
        extra.extend(keeper.admit(&dir(name), labels).unwrap());
        Node::start(Path::new(BIN), name, &dir(name), &extra).unwrap()
    };
    let a = start("a", vec!["--watch".into(), format!("{}#main", repo.path().display())], &[]);
    let boot = a.multiaddr();
    // B and C build the repository A watches: a local path, so they list it.
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let b = start("b", vec!["--bootstrap".into(), boot.clone(), "--allow-repo".into(), allow.clone()], &[]);
    // C takes its API token from a file an operator shares across nodes.
    let token_file = root.path().join("cluster.token");
    std::fs::write(&token_file, "shared-token-5b8e1f0a9c3d7e26\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c_args = vec!["--bootstrap".into(), boot.clone(), "--allow-repo".into(), allow];
    let c_args = [c_args, vec!["--api-token-file".into(), token_file.display().to_string()]].concat();
    let c = start("c", c_args, &["gpu=yes"]);
    let post = |token: &str| {
        let url = format!("{}/api/v1/revocations", c.url());
        match ureq::post(&url)
            .set("authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({"revocation": "x"}))
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(post("shared-token-5b8e1f0a9c3d7e26"), 400, "the shared token is taken; the revocation is not");
    assert_eq!(post(&b.api_token()), 401);
    for n in [&a, &b, &c] {
        wait_for("two live peers", LONG, || (n.get("/api/v1/node").ok()?["peers_live"].as_u64()? >= 2).then_some(()))
            .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    }

    // The outsider: its own cluster (no --cluster), a gpu label, its own repository.
    let own = GitRepo::new().unwrap();
    own.commit(&[(".peerbot.toml", RECIPE)], "outsider's recipe").unwrap();
    let own_watch = format!("{}#main", own.path().display());
    let d_args = vec!["--bootstrap".into(), boot, "--watch".into(), own_watch, "--label".into(), "gpu=yes".into()];
    let d = Node::start(Path::new(BIN), "d", &dir("d"), &d_args).unwrap();
    let d_peer = d.peer_id();
    wait_for("the outsider to build its own commit", LONG, || (builds(&d, "").len() == 2).then_some(()))
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    wait_for("the three to count the outsider refused", LONG, || {
        [&a, &b, &c].iter().all(|n| rejected_not_admitted(n) > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail()));

    // The cluster builds a commit of its own; the gpu job goes to C.
    let c1 = repo.commit(&[(".peerbot.toml", RECIPE)], "recipe").unwrap();
    for n in [&a, &b, &c] {
        let r = wait_for("both results", LONG, || {
            let r = builds(n, &format!("commit={c1}"));
            (r.len() == 2).then_some(r)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
        let gpu = r.iter().find(|r| r["builder"] == "cuda").unwrap();
        assert_eq!(gpu["signer"], c.peer_id().as_str());
    }
    // Nothing of the outsider on the three: no change of its repository,
    // no result it signed, no peer entry that counts it live.
    for n in [&a, &b, &c] {
        let changes = n.get("/api/v1/changes").unwrap();
        assert!(
            changes.as_array().unwrap().iter().all(|ch| ch["repo"] != own.path().to_str().unwrap()),
            "{}: {changes}",
            n.name
        );
        assert!(builds(n, "").iter().all(|r| r["signer"] != d_peer.as_str()));
        let node = n.get("/api/v1/node").unwrap();
        assert_eq!(node["admission"]["peers_admitted"], 2, "{node}");
        let peers = n.get("/api/v1/peers").unwrap();
        assert!(
            peers.as_array().unwrap().iter().all(|p| p["peer_id"] != d_peer.as_str() || p["live"] != true),
            "{peers}"
        );
    }

    // Revoke B: published through A, it reaches C within a sync interval.
    let b_peer = b.peer_id();
    let revocation = keeper.revoke(&b_peer).unwrap();
    let file = root.path().join("b.revocation");
    std::fs::write(&file, &revocation).unwrap();
    let out = a.cli(&["cluster", "publish", file.to_str().unwrap()]).unwrap();
    assert!(out.contains("published"), "{out}");
    let garbage = root.path().join("garbage.revocation");
    std::fs::write(&garbage, "peerbot-revocation-v1:00").unwrap();
    assert!(a.cli(&["cluster", "publish", garbage.to_str().unwrap()]).is_err());
    let old_b: Vec<Value> = builds(&a, "").into_iter().filter(|r| r["signer"] == b_peer.as_str()).collect();
    for n in [&a, &c] {
        wait_for("B's results marked as from a revoked signer", LONG, || {
            let all = builds(n, "");
            let mine: Vec<&Value> = all.iter().filter(|r| r["signer"] == b_peer.as_str()).collect();
            (mine.len() == old_b.len() && mine.iter().all(|r| r["signer_revoked_ms"].is_u64())).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
    }
    // New commits are built by A and C only, wherever B claims.
    for i in 0..3 {
        let commit = repo.commit(&[("n.txt", &format!("{i}\n"))], &format!("after revocation {i}")).unwrap();
        for n in [&a, &c] {
            let r = wait_for("both results", LONG, || {
                let r = builds(n, &format!("commit={commit}"));
                (r.len() == 2).then_some(r)
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
            assert!(r.iter().all(|r| r["signer"] != b_peer.as_str()), "{}: {r:?}", n.name);
        }
    }
    assert!(d.get("/api/v1/node").is_ok(), "the outsider is refused, not crashed");
}
