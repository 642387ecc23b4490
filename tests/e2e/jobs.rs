//! `GET /api/v1/jobs?state=` over history: finished jobs page from the
//! store's index with a cursor, live ones come from the core, and bad
//! cursors or states are refused with a reason.

use std::collections::BTreeSet;
use std::path::Path;

use peerbot_tests::Node;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_peerbot");
const RESULTS: usize = 120;

fn jobs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap().to_string()).collect()
}

#[test]
fn finished_jobs_page_through_history_and_bad_cursors_are_refused() {
    let root = tempfile::Builder::new().prefix("peerbot-jobs-").tempdir().unwrap();
    let dir = root.path().join("a");
    let out = std::process::Command::new(BIN)
        .args(["seed-history", "--results", &RESULTS.to_string(), "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = Node::start(Path::new(BIN), "A", &dir, &[]).unwrap();

    // Every seeded job is done: pages of 50 reach all of them, newest
    // first, each once, then stop.
    let (mut all, mut before, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let (code, v, next) = n.get_page(&format!("/api/v1/jobs?state=done&limit=50{before}"));
        assert_eq!(code, 200, "{v}");
        assert!(v.as_array().unwrap().iter().all(|j| j["state"] == "done"), "{v}");
        all.extend(jobs(&v));
        pages += 1;
        match next {
            Some(k) => before = format!("&before={k}"),
            None => break,
        }
    }
    assert_eq!((all.len(), pages), (RESULTS, 3));
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), RESULTS);
    let first = n.get("/api/v1/jobs?state=done&limit=60").unwrap();
    let commits: Vec<&str> = first.as_array().unwrap().iter().map(|j| j["commit"].as_str().unwrap()).collect();
    assert!(commits.windows(2).all(|w| w[0] > w[1]), "newest first: {commits:?}");
    // A job id as the cursor: the jobs listed after it.
    let (_, after, _) = n.get_page(&format!("/api/v1/jobs?state=done&limit=10&before={}", all[49]));
    assert_eq!(jobs(&after), all[50..60].to_vec());

    for state in ["cancelled", "superseded", "pending", "running"] {
        let (code, v, next) = n.get_page(&format!("/api/v1/jobs?state={state}&limit=50"));
        assert_eq!((code, v, next), (200, Value::Array(vec![]), None), "{state}");
    }
    // A change lists its jobs' states, asked of the core once per page.
    let changes = n.get("/api/v1/changes?limit=5").unwrap();
    for c in changes.as_array().unwrap() {
        assert_eq!(c["jobs"][0]["state"], "done", "{c}");
    }

    let refused = |path: &str, says: &str| {
        let (code, v, _) = n.get_page(path);
        assert_eq!(code, 400, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{path}: {v}");
    };
    refused("/api/v1/jobs?state=finished", "state \"finished\" is not one of");
    refused("/api/v1/jobs?state=done&before=xyz", "before: \"xyz\" is neither a job id");
    refused(&format!("/api/v1/jobs?state=cancelled&before={}", all[0]), "is not cancelled");
    refused(&format!("/api/v1/jobs?state=done&before={}", "ab".repeat(32)), "is not done");
    refused(&format!("/api/v1/jobs?state=pending&before={}", "ab".repeat(32)), "before: no job");
    refused("/api/v1/jobs?state=pending&before=12", "is not a job id");
    refused(&format!("/api/v1/jobs?before={}", all[0]), "give state too");
}
