//! The CLI's side of the HTTP API: results, log, peers, announce.

use anyhow::{bail, Context};
use serde_json::Value;

/// `host:port` is taken as `http://host:port`.
fn base(node: &str) -> String {
    let node = node.trim_end_matches('/');
    if node.contains("://") {
        node.to_string()
    } else {
        format!("http://{node}")
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(120)).build()
}

fn fail(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, resp) => {
            let body = resp.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            anyhow::anyhow!("{url}: HTTP {code}: {msg}")
        }
        other => anyhow::anyhow!("{url}: {other}"),
    }
}

pub fn get_json(node: &str, path: &str, query: &[(&str, Option<&str>)]) -> anyhow::Result<Value> {
    let url = format!("{}{}", base(node), path);
    let mut req = agent().get(&url);
    for (k, v) in query {
        if let Some(v) = v {
            req = req.query(k, v);
        }
    }
    let resp = req.call().map_err(|e| fail(&url, e))?;
    resp.into_json().with_context(|| format!("{url}: not JSON"))
}

pub fn get_text(node: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("{}{}", base(node), path);
    let resp = agent().get(&url).call().map_err(|e| fail(&url, e))?;
    Ok(resp.into_string()?)
}

pub fn post_json(node: &str, token: Option<&str>, path: &str, body: &Value) -> anyhow::Result<Value> {
    let url = format!("{}{}", base(node), path);
    let mut req = agent().post(&url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {}", t.trim()));
    }
    let resp = req.send_json(body.clone()).map_err(|e| fail(&url, e))?;
    resp.into_json().with_context(|| format!("{url}: not JSON"))
}

/// A repository as it is sent to a node: a local path made absolute, so
/// that every node fetches the same repository; a URL as it is.
pub fn repo_string(repo: &str) -> String {
    match std::fs::canonicalize(repo) {
        Ok(p) if !repo.contains("://") => p.to_string_lossy().into_owned(),
        _ => repo.to_string(),
    }
}

/// Posts raw bytes (a patch) with a query; the answer is JSON.
pub fn post_bytes(
    node: &str,
    token: Option<&str>,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Value> {
    let url = format!("{}{}", base(node), path);
    let mut req = agent().post(&url).set("Content-Type", "application/octet-stream");
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {}", t.trim()));
    }
    for (k, v) in query {
        req = req.query(k, v);
    }
    let resp = req.send_bytes(body).map_err(|e| fail(&url, e))?;
    resp.into_json().with_context(|| format!("{url}: not JSON"))
}

/// At most `n` characters from the start.
fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// At most `n` characters from the end.
fn tail(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

/// Characters a terminal would act on rather than show: controls, and the
/// marks that reorder text (bidirectional overrides).
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text that came from a node, and so perhaps from any peer or repository,
/// made safe to print: what a terminal would act on is shown escaped.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if acts_on_terminal(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A step's log for a terminal: lines, tabs and colours (SGR sequences,
/// `ESC [ ... m`) as the build printed them, anything else a terminal would
/// act on (cursor moves, titles, lone carriage returns) escaped.
pub fn clean_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\u{1b}' if chars.peek() == Some(&'[') => {
                let rest: String = chars.clone().skip(1).take_while(|d| d.is_ascii_digit() || *d == ';').collect();
                let after = chars.clone().nth(1 + rest.len());
                if after == Some('m') && rest.len() <= 32 {
                    out.push(c);
                    out.push('[');
                    out.push_str(&rest);
                    out.push('m');
                    for _ in 0..rest.len() + 2 {
                        chars.next();
                    }
                } else {
                    out.extend(c.escape_unicode());
                }
            }
            c if acts_on_terminal(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

pub fn print_results(v: &Value) -> anyhow::Result<()> {
    let Some(items) = v.as_array() else { bail!("unexpected answer: {v}") };
    if items.is_empty() {
        println!("no results");
        return Ok(());
    }
    println!(
        "{:<12} {:<9} {:<16} {:<10} {:<10} {:>3} {:>8}  {:<10} {}",
        "ID", "STATUS", "BUILDER", "COMMIT", "BRANCH", "ATT", "TOOK", "BUILT BY", "FAILED STEP"
    );
    for b in items {
        let s = |k: &str| clean(b[k].as_str().unwrap_or(""));
        println!(
            "{:<12} {:<9} {:<16} {:<10} {:<10} {:>3} {:>7.1}s  {:<10} {}",
            short(&s("id"), 12),
            s("status"),
            short(&s("builder"), 16),
            short(&s("commit"), 10),
            short(&s("branch"), 10),
            b["attempt"].as_u64().unwrap_or(0),
            b["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            match s("node_name") {
                n if n.is_empty() => format!("…{}", tail(&s("signer"), 8)),
                n => short(&n, 10),
            },
            s("failed_step"),
        );
    }
    Ok(())
}

/// Changes newest first, each with its builders' job states.
pub fn print_changes(v: &Value) -> anyhow::Result<()> {
    let Some(items) = v.as_array() else { bail!("unexpected answer: {v}") };
    if items.is_empty() {
        println!("no changes");
        return Ok(());
    }
    println!("{:<12} {:<10} {:<10} {:<20} {:<30} {}", "ID", "COMMIT", "BRANCH", "AUTHOR", "TITLE", "JOBS");
    for c in items {
        let s = |k: &str| clean(c[k].as_str().unwrap_or(""));
        let jobs: Vec<String> = c["jobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|j| {
                        let state = j["state"].as_str().unwrap_or("?");
                        format!("{}={}", clean(j["builder"].as_str().unwrap_or("")), clean(state))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut note = jobs.join(" ");
        if let Some(e) = c["recipe_error"].as_str() {
            note = format!("recipe error: {}", clean(e));
        } else if c["force"].is_object() {
            note = format!("forced; {note}");
        }
        println!(
            "{:<12} {:<10} {:<10} {:<20} {:<30} {}",
            short(&s("id"), 12),
            short(&s("commit"), 10),
            short(&s("branch"), 10),
            short(&s("author"), 20),
            short(&s("title"), 30),
            note,
        );
    }
    Ok(())
}

pub fn print_peers(v: &Value) -> anyhow::Result<()> {
    let Some(items) = v.as_array() else { bail!("unexpected answer: {v}") };
    println!("{:<16} {:<54} {:<5} {:<9} {:>9}  {}", "NAME", "PEER", "LIVE", "CONNECTED", "BUSY", "LABELS");
    for p in items {
        let labels: Vec<String> = p["labels"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l.as_str()).map(clean).collect())
            .unwrap_or_default();
        let me = if p["self"].as_bool().unwrap_or(false) { " (this node)" } else { "" };
        println!(
            "{:<16} {:<54} {:<5} {:<9} {:>4}/{:<4}  {}{}",
            short(&clean(p["name"].as_str().unwrap_or("")), 16),
            clean(p["peer_id"].as_str().unwrap_or("")),
            p["live"].as_bool().unwrap_or(false),
            p["connected"].as_bool().unwrap_or(false),
            p["busy"].as_u64().unwrap_or(0),
            p["executors"].as_u64().unwrap_or(0),
            labels.join(","),
            me
        );
    }
    Ok(())
}

pub fn print_jobs(v: &Value) -> anyhow::Result<()> {
    let Some(items) = v.as_array() else { bail!("unexpected answer: {v}") };
    println!(
        "{:<12} {:<10} {:<16} {:<10} {:>3} {:>5}  {:<10} {:<12} {}",
        "JOB", "STATE", "BUILDER", "COMMIT", "ATT", "QUEUE", "CLAIMED BY", "STEP", "NOTE"
    );
    for j in items {
        let s = |k: &str| clean(j[k].as_str().unwrap_or(""));
        let by = j["claim"]["by"].as_str().map(|b| format!("…{}", tail(&clean(b), 8))).unwrap_or_default();
        let note = if let Some(w) = j["waiting_reason"].as_str() {
            clean(w)
        } else if let Some(c) = j["cancelled"]["reason"].as_str() {
            format!("cancelled: {}", clean(c))
        } else if let Some(n) = j["superseded_by"].as_str() {
            format!("superseded by {}", short(&clean(n), 12))
        } else if j["disagreeing_results"].as_bool().unwrap_or(false) {
            "results disagree".to_string()
        } else {
            String::new()
        };
        println!(
            "{:<12} {:<10} {:<16} {:<10} {:>3} {:>5}  {:<10} {:<12} {}",
            short(&s("job"), 12),
            s("state"),
            short(&s("builder"), 16),
            short(&s("commit"), 10),
            j["attempt"].as_u64().unwrap_or(0),
            j["queue_position"].as_u64().map(|p| (p + 1).to_string()).unwrap_or_default(),
            by,
            clean(j["claim"]["step"].as_str().unwrap_or("")),
            note
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_cut_characters_not_bytes() {
        assert_eq!(short("fix-ünïcødé-分支", 10), "fix-ünïcød");
        assert_eq!(tail("…分支x", 2), "支x");
        assert_eq!(short("ab", 10), "ab");
    }

    #[test]
    fn what_a_terminal_acts_on_is_escaped() {
        assert_eq!(clean("ok\u{1b}]0;pwned\u{7}"), "ok\\u{1b}]0;pwned\\u{7}");
        assert_eq!(clean("a\u{202e}b\nc"), "a\\u{202e}b\\u{a}c");
        assert_eq!(clean("ünïcødé 分支"), "ünïcødé 分支");
    }

    #[test]
    fn logs_keep_lines_and_colours_only() {
        let log = "\u{1b}[1;31merror\u{1b}[0m: x\r\n\tat y\u{1b}[2J\u{1b}]0;t\u{7}\rover";
        assert_eq!(clean_log(log), "\u{1b}[1;31merror\u{1b}[0m: x\n\tat y\\u{1b}[2J\\u{1b}]0;t\\u{7}\\u{d}over");
    }
}

/// Writes log text as `peerbot log` does: raw into a pipe or a file, made
/// safe for a terminal.
fn emit(text: &str) {
    use std::io::{IsTerminal, Write};
    let mut out = std::io::stdout().lock();
    let _ = if std::io::stdout().is_terminal() {
        out.write_all(clean_log(text).as_bytes())
    } else {
        out.write_all(text.as_bytes())
    };
    let _ = out.flush();
}

/// `peerbot log --follow JOB`: prints the running step's output as it
/// comes (from the node running the job), each step under a header, then,
/// once the job's result is stored, what the live tail did not show and
/// the result's status. Returns that status.
pub fn follow_log(node: &str, job: &str) -> anyhow::Result<String> {
    let j = get_json(node, &format!("/api/v1/jobs/{job}"), &[])?;
    let job = j["job"].as_str().context("the node's answer names no job")?.to_string();
    // (step index, bytes of it printed)
    let mut seen: Option<(usize, u64)> = None;
    let mut told_elsewhere = false;
    loop {
        let (offset, index) = seen.map_or((0, None), |(i, o)| (o, Some(i.to_string())));
        let offset = offset.to_string();
        let q = [("offset", Some(offset.as_str())), ("index", index.as_deref())];
        let c = get_json(node, &format!("/api/v1/jobs/{job}/live"), &q)?;
        if c["running"] == true {
            let i = c["index"].as_u64().unwrap_or(0) as usize;
            if seen.is_none_or(|(was, _)| was != i) {
                emit(&format!("== step {} ==\n", c["step"].as_str().unwrap_or("?")));
            }
            if c["skipped"].as_u64().unwrap_or(0) > 0 {
                emit(&format!("[{} bytes before this are no longer kept]\n", c["skipped"]));
            }
            emit(c["text"].as_str().unwrap_or_default());
            seen = Some((i, c["end"].as_u64().unwrap_or(0)));
        } else {
            let j = get_json(node, &format!("/api/v1/jobs/{job}"), &[])?;
            let state = j["state"].as_str().unwrap_or_default();
            if let Some(r) = j["results"].as_array().and_then(|r| r.iter().max_by_key(|r| r["attempt"].as_u64())) {
                let id = r["id"].as_str().unwrap_or_default();
                finish_log(node, id, seen)?;
                let status = r["status"].as_str().unwrap_or_default().to_string();
                emit(&format!("== {status}: build {id} ==\n"));
                return Ok(status);
            }
            if matches!(state, "cancelled" | "superseded") {
                emit(&format!("== the job was {state} before it was built ==\n"));
                return Ok(state.to_string());
            }
            if state == "running" && !told_elsewhere {
                let by = j["claim"]["by"].as_str().unwrap_or("another node");
                emit(&format!("== running on {by}; its live log is served by that node; waiting for the result ==\n"));
                told_elsewhere = true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The rest of a followed build from its stored result: the end of the
/// step being followed and every step after it.
fn finish_log(node: &str, build: &str, seen: Option<(usize, u64)>) -> anyhow::Result<()> {
    let b = get_json(node, &format!("/api/v1/builds/{build}"), &[])?;
    for (i, step) in b["steps"].as_array().into_iter().flatten().enumerate() {
        let from = match seen {
            Some((s, _)) if i < s => continue,
            Some((s, off)) if i == s => {
                // A log cut at the cap no longer lines up with the live offsets.
                if step["log"]["truncated"] == true {
                    continue;
                }
                off as usize
            }
            _ => {
                emit(&format!("== step {} ==\n", step["name"].as_str().unwrap_or("?")));
                0
            }
        };
        if step["log"].is_object() {
            let text = get_text(node, &format!("/api/v1/builds/{build}/steps/{i}/log"))?;
            emit(text.get(from.min(text.len())..).unwrap_or_default());
        }
    }
    Ok(())
}
