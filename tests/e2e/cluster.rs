//! Three real nodes on loopback build real commits of a real repository,
//! and every node serves every signed result and its logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use peerbot_tests::{wait_for, GitRepo, Keeper, Node};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const LONG: Duration = Duration::from_secs(120);

const RECIPE_OK: &str = r#"
[[builder]]
name = "test"
requires = ["os=linux"]
[[builder.step]]
name = "build"
run = "echo compiling $PEERBOT_COMMIT; cat hello.txt"
[[builder.step]]
name = "check"
run = "echo 'test result: ok. 4 passed; 0 failed; 1 ignored'"

[[builder]]
name = "cuda"
requires = ["gpu=yes"]
[[builder.step]]
name = "kernels"
run = "echo gpu kernels for $PEERBOT_BUILDER"
"#;

fn builds(n: &Node, commit: &str) -> Vec<Value> {
    n.get(&format!("/api/v1/builds?commit={commit}")).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn wait_builds(nodes: &[&Node], commit: &str, count: usize) -> Vec<Vec<Value>> {
    nodes
        .iter()
        .map(|n| {
            wait_for(&format!("{} results for {commit} on {}", count, n.name), LONG, || {
                let b = builds(n, commit);
                (b.len() >= count).then_some(b)
            })
            .unwrap_or_else(|e| panic!("{e}\n--- {} log ---\n{}", n.name, n.log_tail()))
        })
        .collect()
}

fn by_builder<'a>(results: &'a [Value], builder: &str) -> &'a Value {
    results.iter().find(|r| r["builder"] == builder).unwrap_or_else(|| panic!("no {builder} result in {results:?}"))
}

fn wait_peers(n: &Node, live: usize) {
    wait_for(&format!("{} to see {live} live peers", n.name), LONG, || {
        let v = n.get("/api/v1/node").ok()?;
        (v["peers_live"].as_u64()? as usize >= live).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", n.log_tail()));
}

fn dirs(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (root.join("a"), root.join("b"), root.join("c"))
}

#[test]
fn three_nodes_build_a_real_commit_and_all_serve_the_signed_results() {
    let root = tempfile::Builder::new().prefix("peerbot-cluster-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    // A commit with no recipe: announced, with the error shown, and nothing built.
    let c0 = repo.commit(&[("hello.txt", "hello from the first commit\n")], "initial import").unwrap();

    let (da, db, dc) = dirs(root.path());
    let watch = format!("{}#main", repo.path().display());
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let with = |mut v: Vec<String>, flags: Vec<String>| {
        v.extend(flags);
        v
    };
    let a =
        Node::start(Path::new(BIN), "A", &da, &with(vec!["--watch".into(), watch], keeper.admit(&da, &[]).unwrap()))
            .unwrap();
    let boot = a.multiaddr();
    // B and C build the repository A watches: a local path, so they list it.
    let allow = repo.path().canonicalize().unwrap().display().to_string();
    let b_args = ["--bootstrap", &boot, "--allow-repo", &allow].map(String::from).to_vec();
    let b = Node::start(Path::new(BIN), "B", &db, &with(b_args, keeper.admit(&db, &[]).unwrap())).unwrap();
    let c_args = ["--bootstrap", &boot, "--allow-repo", &allow, "--name", "gpu-box"].map(String::from).to_vec();
    let mut c = Node::start(Path::new(BIN), "C", &dc, &with(c_args, keeper.admit(&dc, &["gpu=yes"]).unwrap())).unwrap();

    // Identity: a key in the data dir, mode 0600, whose PeerId the node uses.
    let id_out = a.cli(&["id", "--data-dir", da.to_str().unwrap()]).unwrap();
    assert_eq!(id_out.trim(), a.peer_id());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(da.join("node.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    for n in [&a, &b, &c] {
        wait_peers(n, 2);
    }
    // B and C joined through A only; they found each other by discovery.
    wait_for("B to connect to C directly", LONG, || {
        let peers = b.get("/api/v1/peers").ok()?;
        peers.as_array()?.iter().any(|p| p["peer_id"] == c.peer_id().as_str() && p["connected"] == true).then_some(())
    })
    .unwrap();
    // C's name reaches the others in its heartbeats.
    wait_for("C's name on A", LONG, || {
        let peers = a.get("/api/v1/peers").ok()?;
        peers.as_array()?.iter().any(|p| p["peer_id"] == c.peer_id().as_str() && p["name"] == "gpu-box").then_some(())
    })
    .unwrap();

    let change0 = wait_for("the recipe-less change on B", LONG, || {
        let v = b.get(&format!("/api/v1/changes?commit={}", &c0[..8])).ok()?;
        v.as_array()?.first().cloned()
    })
    .unwrap();
    assert!(change0["recipe_error"].as_str().unwrap().contains("no .peerbot.toml"), "{change0}");
    assert_eq!(change0["jobs"].as_array().unwrap().len(), 0);

    // Commit 1: two builders, one any Linux node can build, one only C.
    let c1 = repo.commit(&[(".peerbot.toml", RECIPE_OK), ("hello.txt", "hello, world\n")], "add a recipe").unwrap();
    let all = wait_builds(&[&a, &b, &c], &c1, 2);
    for (n, results) in [&a, &b, &c].iter().zip(&all) {
        assert_eq!(results.len(), 2, "{} serves {results:?}", n.name);
        let gpu = by_builder(results, "cuda");
        assert_eq!(gpu["signer"], c.peer_id().as_str(), "the gpu=yes job must be built by C");
        assert_eq!(gpu["node_name"], "gpu-box", "the builder's name travels in its result");
        assert_eq!(gpu["status"], "success");
        let test = by_builder(results, "test");
        assert_eq!(test["status"], "success");
        assert_eq!(test["metrics"]["tests_passed"], 4.0);
        assert_eq!(test["metrics"]["tests_skipped"], 1.0);
    }
    // Every node serves the same records, and each log, fetching it if need be.
    let test1 = by_builder(&all[0], "test").clone();
    let gpu1 = by_builder(&all[0], "cuda").clone();
    for n in [&a, &b, &c] {
        for r in [&test1, &gpu1] {
            let id = r["id"].as_str().unwrap();
            let detail = n.get(&format!("/api/v1/builds/{}", &id[..12])).unwrap();
            assert_eq!(detail["record_id"], id);
            assert_eq!(detail["signer"], r["signer"]);
            assert_eq!(detail["verified"], true);
            assert!(detail["signature"].as_str().unwrap().len() == 128);
        }
        let log = n.get_text(&format!("/api/v1/builds/{}/steps/build/log", test1["id"].as_str().unwrap())).unwrap();
        assert!(log.contains(&format!("compiling {c1}")) && log.contains("hello, world"), "{}: {log}", n.name);
        let log = n.get_text(&format!("/api/v1/builds/{}/steps/0/log", gpu1["id"].as_str().unwrap())).unwrap();
        assert_eq!(log, "gpu kernels for cuda\n");
    }
    // Prometheus text: C built the gpu job and sees both others live.
    let metrics = c.get_text("/metrics").unwrap();
    for line in ["peerbot_peers{state=\"live\"} 2", "peerbot_storage_ok 1", "peerbot_builds_total{outcome=\"success\"}"]
    {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("peerbot_records_stored_total") && metrics.contains("peerbot_request_bytes_total"),
        "{metrics}"
    );
    // The CLI, with a short commit prefix.
    let table = b.cli(&["results", "--commit", &c1[..7]]).unwrap();
    assert!(table.contains(&test1["id"].as_str().unwrap()[..12]) && table.contains("cuda"), "{table}");
    let log = c.cli(&["log", &test1["id"].as_str().unwrap()[..10], "check"]).unwrap();
    assert!(log.contains("4 passed"), "{log}");
    let peers = a.cli(&["peers"]).unwrap();
    assert!(peers.contains(&c.peer_id()) && peers.contains("gpu=yes"), "{peers}");

    // Commit 2: a failing step gives a failure naming it.
    let failing = RECIPE_OK.replace("echo 'test result: ok. 4 passed; 0 failed; 1 ignored'", "echo broken; exit 3");
    let c2 = repo.commit(&[(".peerbot.toml", &failing)], "break the check").unwrap();
    let all2 = wait_builds(&[&a, &b, &c], &c2, 2);
    for results in &all2 {
        assert_eq!(results.len(), 2);
        let t = by_builder(results, "test");
        assert_eq!(t["status"], "failure", "{t}");
        assert_eq!(t["failed_step"], "check");
        assert_eq!(t["steps"][1]["exit_code"], 3);
        // The result names the commit's author, and that this commit broke the builder.
        assert_eq!(t["author"], "Alice Example <alice@example.org>");
        assert_eq!(t["title"], "break the check");
        assert_eq!(t["broke_build"], true, "{t}");
        assert_eq!(t["blamelist"].as_array().map(Vec::len), Some(1), "{t}");
        assert_eq!(t["blamelist"][0], "Alice Example <alice@example.org>");
        assert_eq!(by_builder(results, "cuda")["status"], "success");
    }

    // Pages of two, newest first, each continuing from the cursor the last one gave.
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = before.as_ref().map(|c| format!("&before={c}")).unwrap_or_default();
        let resp = ureq::get(&format!("{}/api/v1/builds?limit=2{q}", b.url())).call().unwrap();
        let next = resp.header("x-next-before").map(str::to_string);
        let page: Value = resp.into_json().unwrap();
        seen.extend(page.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match next {
            Some(c) => before = Some(c),
            None => break,
        }
    }
    let all = b.get("/api/v1/builds").unwrap();
    let all: Vec<String> = all.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert!(all.len() >= 4, "{all:?}");
    assert_eq!(seen, all, "paging with before= walks the same list as one request");
    let listed = b.get("/api/v1/builds?builder=test").unwrap();
    let newest = &listed.as_array().unwrap()[0];
    assert_eq!(newest["commit"], c2.as_str());
    assert_eq!(newest["broke_build"], true, "{newest}");
    assert_eq!(listed[1]["broke_build"], false);

    // Announcing through another node's API (like sendchange) builds nothing twice.
    let again = b
        .cli(&["announce", "--repo", repo.path().to_str().unwrap(), "--branch", "main", "--commit", &c2[..8]])
        .unwrap();
    assert!(again.contains("already known"), "{again}");

    // A broken recipe is an error on the change, not a crash.
    let c3 = repo.commit(&[(".peerbot.toml", "[[builder]\nname = ")], "garble the recipe").unwrap();
    let change3 = wait_for("the broken-recipe change on C", LONG, || {
        let v = c.get(&format!("/api/v1/changes?commit={c3}")).ok()?;
        v.as_array()?.first().cloned()
    })
    .unwrap();
    assert!(change3["recipe_error"].as_str().unwrap().contains("not valid TOML"), "{change3}");
    for n in [&a, &b, &c] {
        assert!(n.get("/api/v1/node").is_ok(), "{} must still be up", n.name);
    }

    // Writes need the node's token.
    let url = format!("{}/api/v1/changes", a.url());
    let body = format!("{{\"repo\":\"{}\",\"commit\":\"{}\"}}", repo.path().display(), c2);
    match ureq::post(&url).set("content-type", "application/json").send_string(&body) {
        Err(ureq::Error::Status(code, resp)) => {
            assert_eq!(code, 401);
            assert!(resp.into_string().unwrap().contains("API token"));
        }
        other => panic!("a write without the token must be refused: {other:?}"),
    }
    let mode = std::fs::metadata(da.join("api.token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Bad requests get a clear error.
    let (code, body) = a.request("POST", "/api/v1/changes", Some("{\"repo\": 5}"));
    assert_eq!(code, 400, "{body}");
    let (code, body) = a.request(
        "POST",
        "/api/v1/changes",
        Some(&format!("{{\"repo\":\"{}\",\"commit\":\"0000000\"}}", repo.path().display())),
    );
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("no commit"), "{body}");
    let (code, body) = a.request("GET", "/api/v1/jobs/zz", None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = a.request("GET", "/api/v1/builds/0000000000", None);
    assert_eq!(code, 404, "{body}");
    let (code, body) = a.request("GET", "/api/v1/builds?status=great", None);
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("great"), "{body}");

    // C built the gpu job; kill it, and A and B still serve that result.
    let c_peer = c.peer_id();
    c.kill();
    for n in [&a, &b] {
        let d = n.get(&format!("/api/v1/builds/{}", gpu1["id"].as_str().unwrap())).unwrap();
        assert_eq!(d["signer"], c_peer.as_str());
        assert_eq!(builds(n, &c1).len(), 2);
    }

    // C restarts: same identity, same history, back in the cluster.
    c.restart().unwrap();
    assert_eq!(c.peer_id(), c_peer);
    assert_eq!(builds(&c, &c1).len(), 2);
    assert_eq!(builds(&c, &c2).len(), 2);
    wait_peers(&c, 2);
}

#[test]
fn a_bootstrap_that_is_down_is_retried_until_it_comes_up() {
    let root = tempfile::Builder::new().prefix("peerbot-bootstrap-").tempdir().unwrap();
    let a_dir = root.path().join("a");
    // A's identity exists before A runs; its port is one the OS picked.
    let out = std::process::Command::new(BIN).args(["id", "--data-dir", a_dir.to_str().unwrap()]).output().unwrap();
    let a_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let boot = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{a_id}");
    let keeper = Keeper::new(Path::new(BIN), &root.path().join("keeper")).unwrap();
    let mut b_args = vec!["--bootstrap".to_string(), boot];
    b_args.extend(keeper.admit(&root.path().join("b"), &[]).unwrap());
    let b = Node::start(Path::new(BIN), "B", &root.path().join("b"), &b_args).unwrap();
    wait_for("B to say why the bootstrap is unreachable", LONG, || {
        let log = std::fs::read_to_string(root.path().join("b").join("node.log")).ok()?;
        log.contains("cannot reach bootstrap peer").then_some(())
    })
    .unwrap();
    let mut a_args = vec!["--listen".to_string(), format!("/ip4/127.0.0.1/tcp/{port}")];
    a_args.extend(keeper.admit(&a_dir, &[]).unwrap());
    let a = Node::start(Path::new(BIN), "A", &a_dir, &a_args).unwrap();
    assert_eq!(a.peer_id(), a_id);
    wait_for("B to reach A once it is up", LONG, || {
        let v = b.get("/api/v1/peers").ok()?;
        v.as_array()?.iter().any(|p| p["peer_id"] == a_id.as_str() && p["connected"] == true).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log_tail()));
}

#[test]
fn a_watched_repository_that_cannot_be_fetched_is_tried_less_and_less_often_until_it_can() {
    let root = tempfile::Builder::new().prefix("peerbot-watch-").tempdir().unwrap();
    let repo = GitRepo::new().unwrap();
    let commit = repo.commit(&[("hello.txt", "hello\n")], "first").unwrap();
    // The watched path is a link made only later: until then every fetch fails.
    let link = root.path().join("repo-link");
    let watch = format!("{}#main", link.display());
    let a = Node::start(Path::new(BIN), "A", &root.path().join("a"), &["--watch".into(), watch]).unwrap();
    let log = || std::fs::read_to_string(a.data_dir.join("node.log")).unwrap_or_default();
    let failures = wait_for("three failed polls", LONG, || {
        let f: Vec<String> = log().lines().filter(|l| l.contains("polling failed")).map(str::to_string).collect();
        (f.len() >= 3).then_some(f)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail()));
    // Polled every second (the harness's --poll-secs 1), a failing repository
    // is tried again after 1 s, 2 s, 4 s, each failure logged once.
    for (line, next) in failures.iter().zip(["next try in 1s", "next try in 2s", "next try in 4s"]) {
        assert!(line.contains(next), "expected {next:?} in {line:?}");
    }
    std::os::unix::fs::symlink(repo.path(), &link).unwrap();
    wait_for("the commit announced once the repository can be fetched", LONG, || {
        let log = log();
        (log.contains("polling works again") && log.contains(&format!("commit={commit}"))).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail()));
}
