//! `peerbot seed-history`: a synthetic history for the benchmarks.

use crate::{identity, now_ms, store};

/// Stores `results` results of one repository, branch and builder, each
/// with the change announcing its commit, one second apart.
pub fn seed_history(data_dir: &std::path::Path, results: usize) -> anyhow::Result<()> {
    use peerbot_protocol::recipe::parse_recipe;
    use peerbot_protocol::record::{sign, Body, BuildResult, Change, Status};
    let key = identity::load_or_create(data_dir)?;
    let store = store::RocksStore::open(&data_dir.join("db"))?;
    let recipe = "[[builder]]\nname = \"unit\"\n[[builder.step]]\nname = \"test\"\nrun = \"true\"\n";
    let start = now_ms().saturating_sub(results as u64 * 1000);
    let mut batch = Vec::with_capacity(2048);
    for i in 0..results {
        let commit = format!("{:040x}", i as u128 + 1);
        let repo = "bench://synthetic".to_string();
        let jobs = parse_recipe(&repo, &commit, recipe).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = start + i as u64 * 1000;
        let change = Change {
            repo: repo.clone(),
            branch: "main".into(),
            commit: commit.clone(),
            parents: vec![],
            author: "Bench <bench@peerbot.invalid>".into(),
            committer: "Bench <bench@peerbot.invalid>".into(),
            commit_time: (t / 1000) as i64,
            title: format!("synthetic commit {i}"),
            files: vec![],
            jobs: jobs.clone(),
            recipe_error: None,
            announced_ms: t,
            force: None,
            ..Default::default()
        };
        let result = BuildResult {
            job: jobs[0].id,
            repo,
            branch: "main".into(),
            commit,
            builder: "unit".into(),
            attempt: 0,
            labels: vec!["os=linux".into()],
            started_ms: t + 10,
            ended_ms: t + 500,
            status: Status::Success,
            steps: vec![],
            metrics: Default::default(),
            failed_step: None,
            error: None,
            author: "Bench <bench@peerbot.invalid>".into(),
            title: format!("synthetic commit {i}"),
            node_name: String::new(),
        };
        batch.push(sign(&key, &Body::Change(change)));
        batch.push(sign(&key, &Body::Result(result)));
        if batch.len() >= 2048 {
            store.put_records_bulk(&batch)?;
            batch.clear();
        }
    }
    store.put_records_bulk(&batch)?;
    // A node's checkpoint still holds: the next start applies these as
    // records that arrived after it.
    println!("{} records in {}", 2 * results, data_dir.display());
    Ok(())
}
