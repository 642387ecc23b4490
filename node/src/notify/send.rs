//! What a notice says, and sending it: mail over SMTP (lettre), a JSON
//! webhook, a Slack-compatible message, a Gitea/GitHub commit status.

use std::time::Duration;

use anyhow::{anyhow, Context};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use peerbot_protocol::notify::NoticeEvent;
use peerbot_protocol::record::{BuildResult, Status};
use serde_json::{json, Value};

use super::config::{Kind, Tls};

/// One try at a server takes at most this long.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// The log tail a message carries.
pub const TAIL_LINES: usize = 40;
pub const TAIL_BYTES: usize = 4096;

/// Everything a message says, read from the store before the first try.
#[derive(Debug, Clone)]
pub struct Content {
    pub event: NoticeEvent,
    pub result_id: String,
    pub result: BuildResult,
    pub blamelist: Vec<String>,
    pub fixed_by: Vec<String>,
    pub commits: Vec<String>,
    pub tail: Option<String>,
    /// The first failing commit, as the bisection found it: commit,
    /// author, title.
    pub culprit: Option<(String, String, String)>,
    /// The bisection's state when it did not find one (searching past the
    /// wait, or given up).
    pub bisect_note: Option<String>,
    /// The build page on the sending node.
    pub url: String,
    pub node: String,
}

/// The first `n` characters: names and commits come from peers and
/// repositories, and need not be ASCII.
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn short(commit: &str) -> String {
    cut(commit, 12)
}

/// The last lines of a log, at most `TAIL_BYTES`, cut at a line.
pub fn tail(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = Vec::new();
    let mut size = 0;
    for l in lines.iter().rev().take(TAIL_LINES) {
        if size + l.len() + 1 > TAIL_BYTES {
            break;
        }
        size += l.len() + 1;
        out.push(l);
    }
    out.reverse();
    out.join("\n")
}

impl Content {
    fn headline(&self) -> &'static str {
        match (self.event, self.result.status) {
            (NoticeEvent::Failure, _) => "broken",
            (NoticeEvent::Fixed, _) => "fixed",
            (NoticeEvent::Warnings, _) => "warnings",
            (NoticeEvent::Every, s) => s.as_str(),
        }
    }

    pub fn subject(&self) -> String {
        let r = &self.result;
        format!("[peerbot] {} on {}: {} at {} ({})", r.builder, r.branch, self.headline(), short(&r.commit), r.title)
    }

    pub fn text(&self) -> String {
        let r = &self.result;
        let mut t = format!(
            "Builder {} on branch {} of {}: {}.\n\nCommit {}: {}\nAuthor: {}\n",
            r.builder,
            r.branch,
            r.repo,
            r.status.as_str(),
            r.commit,
            r.title,
            r.author
        );
        if let Some((commit, author, title)) = &self.culprit {
            t += &format!("First failing commit (found by bisection): {commit} by {author}: {title}\n");
        } else if let Some(note) = &self.bisect_note {
            t += &format!("Bisection: {note}\n");
        }
        if !self.blamelist.is_empty() {
            t += &format!("Blamelist (broke the build): {}\n", self.blamelist.join(", "));
        }
        if !self.fixed_by.is_empty() {
            t += &format!("Fixed by: {}\n", self.fixed_by.join(", "));
        }
        if self.commits.len() > 1 {
            t += &format!(
                "First tested here: {} commits ({})\n",
                self.commits.len(),
                self.commits.iter().map(|c| short(c)).collect::<Vec<_>>().join(" ")
            );
        }
        if let Some(step) = &r.failed_step {
            t += &format!("Failed step: {step}\n");
        }
        if let Some(e) = &r.error {
            t += &format!("Error: {e}\n");
        }
        t += &format!("\nBuild: {}\n", self.url);
        if let Some(tail) = &self.tail {
            t += &format!("\nThe end of the failed step's log:\n\n{tail}\n");
        }
        t += &format!("\n-- peerbot node {}\n", self.node);
        t
    }

    pub fn json(&self) -> Value {
        let r = &self.result;
        json!({
            "event": self.event.as_str(),
            "status": r.status.as_str(),
            "build": self.result_id,
            "url": self.url,
            "repo": r.repo,
            "branch": r.branch,
            "commit": r.commit,
            "builder": r.builder,
            "title": r.title,
            "author": r.author,
            "blamelist": self.blamelist,
            "fixed_by": self.fixed_by,
            "commits": self.commits,
            "failed_step": r.failed_step,
            "error": r.error,
            "log_tail": self.tail,
            "first_failing": self.culprit.as_ref().map(|(commit, author, title)| json!({"commit": commit, "author": author, "title": title})),
            "bisect": self.bisect_note,
            "node": self.node,
        })
    }
}

/// Sends one message; an error says what the server or the network said.
pub async fn deliver(kind: &Kind, c: &Content) -> anyhow::Result<()> {
    match kind {
        Kind::Mail { host, port, tls, auth, from, to, to_blamelist } => {
            let mut rcpt: Vec<Mailbox> = to.iter().filter_map(|t| t.parse().ok()).collect();
            if *to_blamelist {
                // A bisection that found the culprit narrows the blamelist to its author.
                let found: Vec<String> = c.culprit.iter().map(|(_, a, _)| a.clone()).collect();
                let people = match c.event {
                    NoticeEvent::Fixed => &c.fixed_by,
                    _ if !found.is_empty() => &found,
                    _ => &c.blamelist,
                };
                // An author git recorded without a usable address is left out.
                for p in people {
                    if let Ok(m) = p.parse::<Mailbox>() {
                        if !rcpt.iter().any(|r| r.email == m.email) {
                            rcpt.push(m);
                        }
                    }
                }
            }
            if rcpt.is_empty() {
                return Err(anyhow!("nobody to mail: no `to`, and no address on the blamelist"));
            }
            let mut b = Message::builder().from(from.parse().context("from")?).subject(c.subject());
            for r in rcpt {
                b = b.to(r);
            }
            let msg = b.header(ContentType::TEXT_PLAIN).body(c.text()).context("composing the mail")?;
            let builder = match tls {
                Tls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str()),
                Tls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)?,
                Tls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host)?,
            };
            let mut builder = builder.port(*port).timeout(Some(SEND_TIMEOUT));
            if let Some((u, p)) = auth {
                builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
            }
            builder.build().send(msg).await.map_err(|e| anyhow!("SMTP {host}:{port}: {e}"))?;
            Ok(())
        }
        Kind::Webhook { url } => post(url.clone(), None, c.json()).await,
        Kind::Slack { url } => {
            let icon = if matches!(c.result.status, Status::Success | Status::Warnings) {
                ":white_check_mark:"
            } else {
                ":x:"
            };
            let mut text = format!("{icon} *{}* — <{}|build>", slack_escape(&c.subject()), c.url);
            if let Some((commit, author, _)) = &c.culprit {
                text += &format!("\nFirst failing commit: {} by {}", short(commit), slack_escape(author));
            }
            if !c.blamelist.is_empty() {
                text += &format!("\nBlamelist: {}", slack_escape(&c.blamelist.join(", ")));
            }
            if let Some(step) = &c.result.failed_step {
                text += &format!("\nFailed step: {}", slack_escape(step));
            }
            if let Some(tail) = &c.tail {
                text += &format!("\n```{}```", slack_escape(tail));
            }
            post(url.clone(), None, json!({ "text": text })).await
        }
        Kind::CommitStatus { api, token, repo, context } => {
            let r = &c.result;
            let repo = match repo {
                Some(r) => r.clone(),
                None => owner_name(&r.repo)
                    .ok_or_else(|| anyhow!("cannot tell owner/name from repository {:?}: set `repo`", r.repo))?,
            };
            // The commit and the repository come from a peer's record: only
            // a plain object id and plain names go into the API path that
            // the token is sent to.
            let hex = r.commit.chars().all(|c| c.is_ascii_hexdigit());
            if !(hex && (r.commit.len() == 40 || r.commit.len() == 64)) {
                return Err(anyhow!("commit {:?} is not a full object id: no status set", cut(&r.commit, 80)));
            }
            if repo.split('/').count() != 2 || !repo.split('/').all(path_name) {
                return Err(anyhow!("repository {:?} is not owner/name: no status set", cut(&repo, 80)));
            }
            let state = match r.status {
                Status::Success | Status::Warnings => "success",
                Status::Failure => "failure",
                Status::Exception | Status::Cancelled => "error",
            };
            let mut description = format!("{} {}", r.builder, r.status.as_str());
            if let Some(step) = &r.failed_step {
                description += &format!(": step {step} failed");
            }
            let description = cut(&description, 140);
            let body = json!({
                "state": state,
                "target_url": c.url,
                "description": description,
                "context": context.clone().unwrap_or_else(|| format!("peerbot/{}", r.builder)),
            });
            let url = format!("{api}/repos/{repo}/statuses/{}", r.commit);
            post(url, Some(format!("token {token}")), body).await
        }
    }
}

/// `owner/name` from a forge URL (`https://host/owner/name.git`, `git@host:owner/name`).
pub fn owner_name(repo: &str) -> Option<String> {
    let path = match repo.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => repo.split_once(':')?.1,
    };
    let parts: Vec<&str> =
        path.trim_end_matches('/').trim_end_matches(".git").split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [.., owner, name] => Some(format!("{owner}/{name}")),
        _ => None,
    }
}

/// A path segment of plain characters, not `.` or `..`.
fn path_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Scheme and host of a URL: webhook URLs often hold their secret in the
/// path or query, and errors go into records every node shows.
fn host_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/…", rest.split(['/', '?', '#']).next().unwrap_or_default()),
        None => "(url)".into(),
    }
}

async fn post(url: String, auth: Option<String>, body: Value) -> anyhow::Result<()> {
    let shown = host_of(&url);
    let task = tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(SEND_TIMEOUT).redirects(0).build();
        let mut req = agent.post(&url).set("User-Agent", concat!("peerbot/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = auth {
            req = req.set("Authorization", &a);
        }
        req.send_json(body).map(|_| ())
    });
    match task.await.context("the sending task")? {
        Ok(()) => Ok(()),
        Err(ureq::Error::Status(code, resp)) => {
            let text: String = resp.into_string().unwrap_or_default().chars().take(200).collect();
            Err(anyhow!("POST {shown}: HTTP {code}: {text}"))
        }
        // ureq's own text names the whole URL: only the kind of failure.
        Err(ureq::Error::Transport(t)) => Err(anyhow!("POST {shown}: {}", t.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_name_come_from_forge_urls() {
        assert_eq!(owner_name("https://gitea.example.org/o/r.git").as_deref(), Some("o/r"));
        assert_eq!(owner_name("https://github.com/o/r").as_deref(), Some("o/r"));
        assert_eq!(owner_name("git@github.com:o/r.git").as_deref(), Some("o/r"));
        assert_eq!(owner_name("https://host/"), None);
    }

    #[test]
    fn errors_show_only_the_host_and_odd_text_cuts_at_characters() {
        assert_eq!(host_of("https://hooks.slack.com/services/T0/B0/SECRET?x=1"), "https://hooks.slack.com/…");
        assert!(!host_of("http://h:8080/a?token=s").contains("token"));
        assert_eq!(short("ééééééééééééééé"), "éééééééééééé");
        assert!(path_name("o-r.g_1") && !path_name("..") && !path_name("a b") && !path_name(""));
    }

    #[tokio::test]
    async fn a_commit_status_refuses_a_commit_or_repository_that_is_not_plain() {
        let kind =
            Kind::CommitStatus { api: "http://127.0.0.1:9".into(), token: "t".into(), repo: None, context: None };
        let mut r: BuildResult = serde_json::from_value(json!({
            "job": peerbot_protocol::ids::Hash32::of(b"j"), "repo": "https://forge.example/o/r.git", "branch": "main",
            "commit": "../../../admin", "builder": "é".repeat(64), "attempt": 0, "labels": [], "started_ms": 0,
            "ended_ms": 0, "status": "failure", "steps": [], "metrics": {}, "failed_step": "ü".repeat(64), "error": null
        }))
        .unwrap();
        let c = |r: &BuildResult| Content {
            event: NoticeEvent::Every,
            result_id: "x".into(),
            result: r.clone(),
            blamelist: vec![],
            fixed_by: vec![],
            commits: vec![],
            tail: None,
            culprit: None,
            bisect_note: None,
            url: "http://n/builds/x".into(),
            node: "n".into(),
        };
        let e = deliver(&kind, &c(&r)).await.unwrap_err().to_string();
        assert!(e.contains("not a full object id"), "{e}");
        r.commit = "a".repeat(40);
        r.repo = "https://forge.example/o/../r".into();
        let e = deliver(&kind, &c(&r)).await.unwrap_err().to_string();
        assert!(e.contains("not owner/name"), "{e}");
        // Long non-ASCII names are cut, not split: the subject and text are made.
        assert!(c(&r).subject().contains('é') && c(&r).text().contains('ü'));
    }

    #[test]
    fn a_tail_is_the_last_lines_within_bounds() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(log.as_bytes());
        assert!(t.starts_with("line 60") && t.ends_with("line 99"), "{t}");
        let long = "x".repeat(10_000) + "\nlast\n";
        assert_eq!(tail(long.as_bytes()), "last");
    }
}
