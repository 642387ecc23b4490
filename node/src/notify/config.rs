//! `[[notify]]` tables of the node's config file, checked at start: a
//! notifier that cannot work stops the node with a message naming the
//! table and the setting, rather than fail at its first failure.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use peerbot_protocol::notify::{check_name, NoticeEvent, NotifierSpec};
use serde::Deserialize;

/// How a mail notifier talks to its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// STARTTLS after connecting, required (the default).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// Plain text: only for a server on loopback or a trusted network.
    None,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Mail {
        host: String,
        port: u16,
        tls: Tls,
        /// User name and password (read from its file).
        auth: Option<(String, String)>,
        from: String,
        to: Vec<String>,
        to_blamelist: bool,
    },
    Webhook {
        url: String,
    },
    Slack {
        url: String,
    },
    CommitStatus {
        /// The forge's API root, e.g. `https://gitea.example.org/api/v1` or
        /// `https://api.github.com`.
        api: String,
        token: String,
        /// `owner/name`; by default read from the result's repository URL.
        repo: Option<String>,
        /// The status's context; by default `peerbot/<builder>`.
        context: Option<String>,
    },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Mail { .. } => "mail",
            Kind::Webhook { .. } => "webhook",
            Kind::Slack { .. } => "slack",
            Kind::CommitStatus { .. } => "commit-status",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Notifier {
    pub name: String,
    pub on: Vec<NoticeEvent>,
    pub kind: Kind,
    /// How long a failure being bisected waits for its first failing commit.
    pub bisect_wait_ms: u64,
}

impl Notifier {
    pub fn spec(&self) -> NotifierSpec {
        NotifierSpec { name: self.name.clone(), on: self.on.clone(), bisect_wait_ms: self.bisect_wait_ms }
    }
}

/// One `[[notify]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    kind: String,
    name: Option<String>,
    on: Option<Vec<String>>,
    bisect_wait: Option<String>,
    smtp: Option<String>,
    tls: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    from: Option<String>,
    to: Option<Vec<String>>,
    to_blamelist: Option<bool>,
    url: Option<String>,
    api: Option<String>,
    token_file: Option<PathBuf>,
    repo: Option<String>,
    context: Option<String>,
}

/// The files a notifier reads its secrets from, which build steps must
/// not see.
pub fn secret_files(value: &toml::Value) -> Vec<PathBuf> {
    let Some(list) = value.as_array() else { return vec![] };
    list.iter()
        .filter_map(|t| t.as_table())
        .flat_map(|t| ["password_file", "token_file"].into_iter().filter_map(|k| t.get(k)?.as_str().map(PathBuf::from)))
        .collect()
}

/// The `notify` value of a config file: an array of tables.
pub fn parse(value: &toml::Value) -> anyhow::Result<Vec<Notifier>> {
    let list = value.as_array().ok_or_else(|| anyhow!("notify must be [[notify]] tables"))?;
    let mut out: Vec<Notifier> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let raw: Raw = v.clone().try_into().map_err(|e| anyhow!("[[notify]] table {}: {e}", i + 1))?;
        let n = check(raw).with_context(|| format!("[[notify]] table {}", i + 1))?;
        if out.iter().any(|o| o.name == n.name) {
            bail!("[[notify]] table {}: a second notifier named {:?}: give each a `name`", i + 1, n.name);
        }
        out.push(n);
    }
    Ok(out)
}

fn http_url(key: &str, url: Option<String>) -> anyhow::Result<String> {
    let url = url.ok_or_else(|| anyhow!("`{key}` is required"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
        bail!("`{key}` {url:?} is not an http:// or https:// URL");
    }
    Ok(url)
}

fn secret(key: &str, path: Option<PathBuf>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("`{key}` {}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        bail!("`{key}` {} is empty", path.display());
    }
    Ok(Some(text))
}

fn check(r: Raw) -> anyhow::Result<Notifier> {
    let name = r.name.clone().unwrap_or_else(|| r.kind.clone());
    check_name(&name).map_err(|e| anyhow!("{e}"))?;
    let default_on: &[&str] = if r.kind == "commit-status" { &["every"] } else { &["failure", "fixed"] };
    let on_text = r.on.clone().unwrap_or_else(|| default_on.iter().map(|s| s.to_string()).collect());
    let mut on = Vec::new();
    for e in &on_text {
        on.push(
            NoticeEvent::parse(e).ok_or_else(|| anyhow!("`on` lists {e:?}; known: failure, fixed, warnings, every"))?,
        );
    }
    if on.is_empty() {
        bail!("`on` is empty: the notifier would never send");
    }
    let bisect_wait_ms = match &r.bisect_wait {
        None => peerbot_protocol::notify::BISECT_WAIT_MS,
        Some(t) if t.trim() == "0" => 0,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| anyhow!("`bisect_wait` {t:?}: {e} (try 30m, 2h, or 0 not to wait)"))?
            .as_millis() as u64,
    };
    let used = |keys: &[(&str, bool)]| -> anyhow::Result<()> {
        match keys.iter().find(|(_, set)| *set) {
            Some((k, _)) => bail!("`{k}` is not a setting of kind {:?}", r.kind),
            None => Ok(()),
        }
    };
    let kind = match r.kind.as_str() {
        "mail" => {
            used(&[
                ("url", r.url.is_some()),
                ("api", r.api.is_some()),
                ("token_file", r.token_file.is_some()),
                ("repo", r.repo.is_some()),
                ("context", r.context.is_some()),
            ])?;
            let smtp = r.smtp.ok_or_else(|| anyhow!("`smtp` (host:port) is required"))?;
            let (host, port) = smtp
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(|c| c == '[' || c == ']').to_string(), p.parse::<u16>().ok()?)))
                .filter(|(h, p)| !h.is_empty() && *p > 0)
                .ok_or_else(|| anyhow!("`smtp` {smtp:?} is not host:port"))?;
            let tls = match r.tls.as_deref().unwrap_or("starttls") {
                "starttls" => Tls::StartTls,
                "tls" => Tls::Implicit,
                "none" => Tls::None,
                other => bail!("`tls` {other:?}: one of starttls, tls, none"),
            };
            let auth = match (r.username, secret("password_file", r.password_file)?) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => bail!("`username` and `password_file` go together"),
            };
            let from = r.from.ok_or_else(|| anyhow!("`from` is required"))?;
            from.parse::<lettre::message::Mailbox>().map_err(|e| anyhow!("`from` {from:?}: {e}"))?;
            let to = r.to.unwrap_or_default();
            for t in &to {
                t.parse::<lettre::message::Mailbox>().map_err(|e| anyhow!("`to` {t:?}: {e}"))?;
            }
            let to_blamelist = r.to_blamelist.unwrap_or(false);
            if to.is_empty() && !to_blamelist {
                bail!("`to` is empty and `to_blamelist` is not set: nobody to mail");
            }
            Kind::Mail { host, port, tls, auth, from, to, to_blamelist }
        }
        "webhook" | "slack" => {
            used(&[
                ("smtp", r.smtp.is_some()),
                ("from", r.from.is_some()),
                ("to", r.to.is_some()),
                ("api", r.api.is_some()),
                ("token_file", r.token_file.is_some()),
            ])?;
            let url = http_url("url", r.url)?;
            if r.kind == "slack" {
                Kind::Slack { url }
            } else {
                Kind::Webhook { url }
            }
        }
        "commit-status" => {
            used(&[("smtp", r.smtp.is_some()), ("from", r.from.is_some()), ("url", r.url.is_some())])?;
            let api = http_url("api", r.api)?.trim_end_matches('/').to_string();
            let token = secret("token_file", r.token_file)?.ok_or_else(|| anyhow!("`token_file` is required"))?;
            if let Some(repo) = &r.repo {
                if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty()) {
                    bail!("`repo` {repo:?} is not owner/name");
                }
            }
            Kind::CommitStatus { api, token, repo: r.repo, context: r.context }
        }
        other => bail!("kind {other:?}: one of mail, webhook, slack, commit-status"),
    };
    Ok(Notifier { name, on, kind, bisect_wait_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(t: &str) -> anyhow::Result<Vec<Notifier>> {
        let table: toml::Table = toml::from_str(t).unwrap();
        parse(&table["notify"])
    }

    #[test]
    fn each_kind_parses_and_mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let text = format!(
            r#"
[[notify]]
kind = "mail"
smtp = "127.0.0.1:2525"
tls = "none"
from = "peerbot@example.org"
to = ["dev@example.org"]
to_blamelist = true
[[notify]]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
on = ["every"]
[[notify]]
kind = "slack"
url = "https://hooks.example.org/x"
[[notify]]
kind = "commit-status"
api = "https://gitea.example.org/api/v1/"
token_file = "{}"
"#,
            token.display()
        );
        let n = parse_text(&text).unwrap();
        assert_eq!(
            n.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["mail", "webhook", "slack", "commit-status"]
        );
        assert_eq!(n[0].on, [NoticeEvent::Failure, NoticeEvent::Fixed]);
        assert_eq!(n[3].on, [NoticeEvent::Every]);
        assert!(matches!(&n[0].kind, Kind::Mail { port: 2525, tls: Tls::None, to_blamelist: true, .. }));
        assert!(
            matches!(&n[3].kind, Kind::CommitStatus { api, token, .. } if api == "https://gitea.example.org/api/v1" && token == "s3cret")
        );

        let err = |t: &str| format!("{:#}", parse_text(t).unwrap_err());
        assert!(err("[[notify]]\nkind = \"pager\"").contains("kind \"pager\""));
        assert!(err("[[notify]]\nkind = \"mail\"\nsmtp = \"x\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]")
            .contains("not host:port"));
        assert!(err("[[notify]]\nkind = \"mail\"\nsmtp = \"h:25\"\nfrom = \"a@b.c\"").contains("nobody to mail"));
        assert!(err("[[notify]]\nkind = \"webhook\"\nurl = \"ftp://x\"").contains("not an http"));
        assert!(
            err("[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\non = [\"sometimes\"]").contains("\"sometimes\"")
        );
        assert!(err("[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\nsmtp = \"h:25\"")
            .contains("`smtp` is not a setting"));
        assert!(err("[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\ncolour = 1").contains("colour"));
        assert!(err(
            "[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\n[[notify]]\nkind = \"webhook\"\nurl = \"http://y\""
        )
        .contains("a second notifier named \"webhook\""));
        assert!(err("[[notify]]\nkind = \"commit-status\"\napi = \"http://x\"\ntoken_file = \"/nonexistent/t\"")
            .contains("token_file"));
        assert!(err("[[notify]]\nkind = \"webhook\"\nname = \"a b\"\nurl = \"http://x\"").contains("may hold only"));
        assert!(
            err("[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\nbisect_wait = \"soon\"").contains("bisect_wait")
        );
        let w = parse_text("[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\nbisect_wait = \"2m\"").unwrap();
        assert_eq!(w[0].bisect_wait_ms, 120_000);
        assert_eq!(n[0].bisect_wait_ms, peerbot_protocol::notify::BISECT_WAIT_MS);
    }
}
