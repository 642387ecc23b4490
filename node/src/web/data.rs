//! What the pages show, as JSON: each page renders it, and its twin
//! under `/api/v1` returns it as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use actix_web::HttpResponse;
use peerbot_protocol::record::{Body, BuildResult, VerifiedRecord};
use peerbot_protocol::store::Store;
use peerbot_protocol::Hash32;
use serde_json::{json, Value};

use super::PageQuery;
use crate::core_actor::Query;
use crate::http::{bad_request, before_key, AppState, MAX_LIMIT, SCAN_BUDGET};
use crate::store::{Filter, Kind};

/// Changes read to list the repositories and branches a node knows of.
const RECENT_CHANGES: usize = 300;
/// Results read to list the builders.
const RECENT_RESULTS: usize = 500;

fn limit(q: &PageQuery, default: usize) -> usize {
    q.limit.unwrap_or(default).clamp(1, MAX_LIMIT)
}

fn next(page: &crate::store::Page) -> Value {
    json!(page.next.map(|k| k.id.to_hex()))
}

/// Job states as the core tells them, by job id.
async fn jobs_of(st: &AppState, ids: Vec<Hash32>) -> Result<HashMap<String, Value>, HttpResponse> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let v = st.ask(Query::JobsOf(ids)).await?;
    let list = match v {
        Value::Array(a) => a,
        _ => vec![],
    };
    Ok(list.into_iter().filter_map(|j| Some((j["job"].as_str()?.to_string(), j))).collect())
}

fn result_of(rec: &VerifiedRecord) -> Option<&BuildResult> {
    match &rec.body {
        Body::Result(r) => Some(r),
        _ => None,
    }
}

/// One console cell or waterfall box for a result: its status and blame.
fn judged(st: &AppState, id: &str) -> Option<Value> {
    let rec = st.store.record(&id.parse::<Hash32>().ok()?)?;
    let r = result_of(&rec)?;
    let b = peerbot_protocol::blame::blame(&st.store, r);
    Some(json!({
        "build": rec.id.to_hex(),
        "status": r.status.as_str(),
        "attempt": r.attempt,
        "failed_step": r.failed_step,
        "duration_ms": r.ended_ms.saturating_sub(r.started_ms),
        "broke_build": !b.blamelist.is_empty(),
        "blamelist": b.blamelist,
        "fixed_by": b.fixed_by,
    }))
}

/// The newest result of a job, by attempt.
fn newest_result(job: &Value) -> Option<&str> {
    job["results"].as_array()?.iter().max_by_key(|r| r["attempt"].as_u64().unwrap_or(0))?["id"].as_str()
}

/// The console: the newest commits of one branch, each with a cell per
/// builder. Forced rebuilds join their commit's row; they never make one.
pub async fn console(st: &AppState, q: &PageQuery) -> Result<Value, HttpResponse> {
    let recent = st.store.query(Kind::Changes, &Filter::default(), None, RECENT_CHANGES, SCAN_BUDGET);
    let mut repos: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut newest: Vec<(String, String)> = Vec::new();
    for rec in &recent.records {
        if let Body::Change(c) = &rec.body {
            if peerbot_protocol::record::is_try_branch(&c.branch) {
                continue;
            }
            repos.entry(c.repo.clone()).or_default().insert(c.branch.clone());
            if c.force.is_none() {
                newest.push((c.repo.clone(), c.branch.clone()));
            }
        }
    }
    // Unless asked, the branch where something happened last.
    let pick =
        newest.iter().find(|(r, b)| q.repo.as_ref().is_none_or(|x| x == r) && q.branch.as_ref().is_none_or(|x| x == b));
    let repo = q.repo.clone().or_else(|| pick.map(|p| p.0.clone()));
    let branch = q.branch.clone().or_else(|| pick.map(|p| p.1.clone()));
    let before = before_key(st, &q.before)?;
    let filter = Filter { repo: repo.clone(), branch: branch.clone(), ..Default::default() };
    let page = if repo.is_some() || branch.is_some() {
        st.store.query(Kind::Changes, &filter, before, limit(q, 30), SCAN_BUDGET)
    } else {
        Default::default()
    };

    struct Row<'a> {
        change: &'a VerifiedRecord,
        regular: Vec<Hash32>,
        forced: Vec<Hash32>,
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut by_commit: HashMap<&str, usize> = HashMap::new();
    // Oldest first, so that a forced rebuild finds the row of its commit.
    for rec in page.records.iter().rev() {
        let Body::Change(c) = &rec.body else { continue };
        let ids = c.jobs.iter().map(|j| j.id);
        match (by_commit.get(c.commit.as_str()), c.force.is_some()) {
            (Some(&i), true) => rows[i].forced.extend(ids),
            (Some(&i), false) => rows[i].regular.extend(ids),
            (None, true) => {}
            (None, false) => {
                by_commit.insert(&c.commit, rows.len());
                rows.push(Row { change: rec, regular: ids.collect(), forced: vec![] });
            }
        }
    }
    rows.reverse();
    let all: Vec<Hash32> = rows.iter().flat_map(|r| r.regular.iter().chain(&r.forced).copied()).collect();
    let jobs = jobs_of(st, all).await?;

    let mut builders = BTreeSet::new();
    let mut out_rows = Vec::new();
    for row in &rows {
        let Body::Change(c) = &row.change.body else { continue };
        let mut cells: BTreeMap<String, Value> = BTreeMap::new();
        for id in &row.regular {
            let Some(j) = jobs.get(&id.to_hex()) else { continue };
            let builder = j["builder"].as_str().unwrap_or_default().to_string();
            let mut cell = json!({"job": id.to_hex(), "state": j["state"], "step": j["claim"]["step"]});
            if let Some(judged) = newest_result(j).and_then(|r| judged(st, r)) {
                merge(&mut cell, judged);
            }
            builders.insert(builder.clone());
            cells.insert(builder, cell);
        }
        for id in &row.forced {
            let Some(j) = jobs.get(&id.to_hex()) else { continue };
            let builder = j["builder"].as_str().unwrap_or_default().to_string();
            let rebuild = json!({"job": id.to_hex(), "state": j["state"], "build": newest_result(j),
                "status": j["results"].as_array().and_then(|r| r.last()).map(|r| r["status"].clone())});
            builders.insert(builder.clone());
            let cell = cells.entry(builder).or_insert_with(|| json!({"state": "forced only"}));
            match cell["rebuilds"].as_array_mut() {
                Some(a) => a.push(rebuild),
                None => cell["rebuilds"] = json!([rebuild]),
            }
        }
        out_rows.push(json!({
            "commit": c.commit,
            "title": c.title,
            "author": c.author,
            "commit_time": c.commit_time,
            "announced_ms": c.announced_ms,
            "change": row.change.id.to_hex(),
            "recipe_error": c.recipe_error,
            "cells": cells,
        }));
    }
    let repos: Vec<Value> = repos.into_iter().map(|(r, b)| json!({"repo": r, "branches": b})).collect();
    Ok(json!({
        "repo": repo, "branch": branch, "repos": repos,
        "builders": builders, "rows": out_rows, "next_before": next(&page),
    }))
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// A step's colour: its status as a build's would be.
/// (The result does not carry the step's recipe options: the default
/// verdict, and a step killed other than by its timeout is `cancelled`.)
fn step_status(s: &peerbot_protocol::record::StepResult) -> &'static str {
    use peerbot_protocol::recipe::{step_verdict, StepVerdict};
    if s.exit_code.is_none() && !s.timed_out {
        return "cancelled";
    }
    match step_verdict(None, s.exit_code, s.timed_out, s.warnings) {
        StepVerdict::Success => "success",
        StepVerdict::Warnings => "warnings",
        StepVerdict::Failure => "failure",
    }
}

fn steps_json(r: &BuildResult) -> Vec<Value> {
    r.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"index": i, "name": s.name, "status": step_status(s), "exit_code": s.exit_code,
                   "duration_ms": s.duration_ms, "timed_out": s.timed_out, "warnings": s.warnings})
        })
        .collect()
}

/// The waterfall: builds newest first (running ones on top), each in its
/// builder's column, with its steps.
pub async fn waterfall(st: &AppState, q: &PageQuery) -> Result<Value, HttpResponse> {
    let before = before_key(st, &q.before)?;
    let filter = Filter { repo: q.repo.clone(), branch: q.branch.clone(), ..Default::default() };
    let page = st.store.query(Kind::Results, &filter, before, limit(q, 50), SCAN_BUDGET);
    let mut entries = Vec::new();
    let mut builders = BTreeSet::new();
    if before.is_none() {
        for state in ["running", "claimed"] {
            let v = st.ask(Query::Jobs { state: Some(state.into()), limit: 100, before: None }).await?;
            for j in v.as_array().into_iter().flatten() {
                if !filter.repo.as_ref().is_none_or(|r| j["repo"] == *r)
                    || !filter.branch.as_ref().is_none_or(|b| j["branch"] == *b)
                {
                    continue;
                }
                builders.insert(j["builder"].as_str().unwrap_or_default().to_string());
                entries.push(json!({
                    "kind": "live", "job": j["job"], "state": j["state"], "builder": j["builder"],
                    "commit": j["commit"], "branch": j["branch"], "step": j["claim"]["step"],
                    "claimed_by": j["claim"]["by"], "attempt": j["attempt"],
                }));
            }
        }
    }
    for rec in &page.records {
        let Some(r) = result_of(rec) else { continue };
        builders.insert(r.builder.clone());
        entries.push(json!({
            "kind": "build", "build": rec.id.to_hex(), "job": r.job.to_hex(), "status": r.status.as_str(),
            "builder": r.builder, "commit": r.commit, "branch": r.branch, "title": r.title, "author": r.author,
            "node_name": r.node_name, "signer": rec.signer.to_string(), "started_ms": r.started_ms,
            "ended_ms": r.ended_ms, "duration_ms": r.ended_ms.saturating_sub(r.started_ms),
            "steps": steps_json(r), "error": r.error,
        }));
    }
    Ok(
        json!({"repo": q.repo, "branch": q.branch, "builders": builders, "entries": entries, "next_before": next(&page)}),
    )
}

/// Every builder seen in recent results, with its last build.
pub fn builders(st: &AppState) -> Value {
    let page = st.store.query(Kind::Results, &Filter::default(), None, RECENT_RESULTS, SCAN_BUDGET);
    let mut seen: BTreeMap<&str, Value> = BTreeMap::new();
    for rec in &page.records {
        let Some(r) = result_of(rec) else { continue };
        if peerbot_protocol::record::is_try_branch(&r.branch) {
            continue;
        }
        let e = seen.entry(&r.builder).or_insert_with(|| {
            json!({"builder": r.builder, "last_build": rec.id.to_hex(), "last_status": r.status.as_str(),
                   "last_ended_ms": r.ended_ms, "last_commit": r.commit, "recent_builds": 0})
        });
        e["recent_builds"] = json!(e["recent_builds"].as_u64().unwrap_or(0) + 1);
    }
    json!({"builders": seen.into_values().collect::<Vec<_>>(), "from_results": page.records.len()})
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

/// One builder: its recent builds, success rate, median duration, and a
/// series per metric over commits, oldest first, for the trend charts.
pub fn builder(st: &AppState, name: &str, q: &PageQuery) -> Result<Value, HttpResponse> {
    if name.is_empty() || name.len() > 200 {
        return Err(bad_request("a builder name has 1 to 200 characters"));
    }
    let before = before_key(st, &q.before)?;
    let filter = Filter {
        repo: q.repo.clone(),
        branch: q.branch.clone(),
        builder: Some(name.to_string()),
        ..Default::default()
    };
    let page = st.store.query(Kind::Results, &filter, before, limit(q, 100), SCAN_BUDGET);
    // Try builds tested patches, not the branch: they stay out of its trends
    // unless their own try branch is asked for.
    let tries = q.branch.as_deref().is_some_and(peerbot_protocol::record::is_try_branch);
    let results: Vec<(&VerifiedRecord, &BuildResult)> = page
        .records
        .iter()
        .filter_map(|rec| Some((&**rec, result_of(rec)?)))
        .filter(|(_, r)| tries || !peerbot_protocol::record::is_try_branch(&r.branch))
        .collect();
    let judged: Vec<&BuildResult> =
        results.iter().map(|(_, r)| *r).filter(|r| r.status != peerbot_protocol::Status::Cancelled).collect();
    let good = judged
        .iter()
        .filter(|r| matches!(r.status, peerbot_protocol::Status::Success | peerbot_protocol::Status::Warnings))
        .count();
    let durations: Vec<u64> = judged.iter().map(|r| r.ended_ms.saturating_sub(r.started_ms)).collect();
    let mut series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (rec, r) in results.iter().rev() {
        let point =
            |v: f64| json!({"commit": r.commit, "build": rec.id.to_hex(), "status": r.status.as_str(), "value": v});
        // Results record their duration as `build_secs`; older ones did not.
        if !r.metrics.contains_key("build_secs") {
            let secs = r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0;
            series.entry("build_secs".into()).or_default().push(point(secs));
        }
        for (k, v) in &r.metrics {
            series.entry(k.clone()).or_default().push(point(*v));
        }
    }
    let builds: Vec<Value> = results
        .iter()
        .map(|(rec, r)| {
            json!({"build": rec.id.to_hex(), "status": r.status.as_str(), "commit": r.commit, "branch": r.branch,
                   "title": r.title, "author": r.author, "node_name": r.node_name, "signer": rec.signer.to_string(),
                   "ended_ms": r.ended_ms, "duration_ms": r.ended_ms.saturating_sub(r.started_ms),
                   "failed_step": r.failed_step, "attempt": r.attempt})
        })
        .collect();
    Ok(json!({
        "builder": name, "repo": q.repo, "branch": q.branch,
        "builds": builds,
        "success_rate": if judged.is_empty() { Value::Null } else { json!(good as f64 / judged.len() as f64) },
        "median_duration_ms": median(durations),
        "series": series,
        "next_before": next(&page),
    }))
}

/// Builds read for a builder's test history: enough to see a test flip,
/// and a bound on what one request holds in memory however long the history.
pub const TEST_HISTORY_BUILDS: usize = 200;

fn test_json(t: &peerbot_protocol::testhistory::TestSummary) -> Value {
    json!({"name": t.name, "runs": t.runs, "failures": t.failures, "recent": t.recent, "flaky": t.flaky,
           "failing": t.failing, "last_failure_commit": t.last_failure_commit,
           "last_failure_message": t.last_failure_message})
}

/// The tests that failed in a builder's recent builds: flaky ones apart
/// from those failing now and those that failed and pass again.
pub fn builder_tests(st: &AppState, name: &str, q: &PageQuery) -> Result<Value, HttpResponse> {
    use peerbot_protocol::testhistory::{observations, summarize};
    if name.is_empty() || name.len() > 200 {
        return Err(bad_request("a builder name has 1 to 200 characters"));
    }
    let filter = Filter {
        repo: q.repo.clone(),
        branch: q.branch.clone(),
        builder: Some(name.to_string()),
        ..Default::default()
    };
    let page = st.store.query(Kind::Results, &filter, None, TEST_HISTORY_BUILDS, SCAN_BUDGET);
    // The store answers newest first; a history reads oldest first.
    let results: Vec<&BuildResult> = page.records.iter().rev().filter_map(|rec| result_of(rec)).collect();
    let tests = summarize(&observations(&results));
    let pick = |f: &dyn Fn(&peerbot_protocol::testhistory::TestSummary) -> bool| -> Vec<Value> {
        tests.iter().filter(|t| f(t)).map(test_json).collect()
    };
    Ok(json!({
        "builder": name, "repo": q.repo, "branch": q.branch,
        "builds": results.len(),
        "flaky": pick(&|t| t.flaky),
        "failing": pick(&|t| !t.flaky && t.failing),
        "passing_again": pick(&|t| !t.flaky && !t.failing),
    }))
}

/// Every node this one knows, with what it is building now.
pub async fn nodes(st: &AppState) -> Result<Value, HttpResponse> {
    let me = st.ask(Query::Node).await?;
    let peers = st.ask(Query::Peers).await?;
    let mut building: HashMap<String, Vec<Value>> = HashMap::new();
    for state in ["running", "claimed"] {
        let v = st.ask(Query::Jobs { state: Some(state.into()), limit: MAX_LIMIT, before: None }).await?;
        for j in v.as_array().into_iter().flatten() {
            let by = j["claim"]["by"].as_str().unwrap_or_default().to_string();
            building.entry(by).or_default().push(json!({
                "job": j["job"], "builder": j["builder"], "commit": j["commit"], "state": j["state"], "step": j["claim"]["step"],
            }));
        }
    }
    let nodes: Vec<Value> = peers
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut p = p.clone();
            let id = p["peer_id"].as_str().unwrap_or_default().to_string();
            p["building"] = json!(building.remove(&id).unwrap_or_default());
            if p["self"] == true {
                p["sync"] = me["sync"].clone();
                p["records"] = json!(st.store.record_count());
            }
            p
        })
        .collect();
    Ok(json!({"nodes": nodes}))
}
