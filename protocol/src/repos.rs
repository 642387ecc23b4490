//! Which repositories a node builds: its allow-list and the repositories
//! it watches. A pure rule, read by the scheduler (a job of a refused
//! repository is not claimed, so a node that allows it builds it) and by
//! the executor (a second line: such a build is refused, not run).
//!
//! - A repository the node watches is always allowed.
//! - With no pattern given, remote URLs (`https://`, `http://`, `ssh://`,
//!   `git://`, `user@host:path`) are allowed and local paths (absolute or
//!   relative, `file://`) are not.
//! - With patterns given, a repository is allowed only when one matches.
//!   A pattern with `*`, `?` or `[` is a glob in which `*` and `?` stop at
//!   `/` and `**` crosses it (`https://github.com/org/*`, `/srv/git/**`);
//!   a pattern without them names one repository and everything under it
//!   (`/srv/git` allows `/srv/git/a`, not `/srv/gitx`).
//! - Never allowed: git transport-helper addresses (`ext::cmd`,
//!   `fd::0`), and repositories with `.` or `..` path segments, which a
//!   pattern would otherwise let escape the directory it names.

use glob::{MatchOptions, Pattern};

/// What a node's executor answers to a build of a repository it refuses.
pub const NOT_ALLOWED: &str = "repository not allowed by this node's policy";
/// A pattern or a repository longer than this is refused.
pub const MAX_REPO_LEN: usize = 4096;
/// At most this many `--allow-repo` patterns.
pub const MAX_PATTERNS: usize = 256;

/// URL schemes of remote repositories, lower case.
const REMOTE_SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "git+ssh://", "ssh+git://"];

const GLOB: MatchOptions =
    MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

/// How git would reach a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A URL of a remote transport, or `user@host:path`.
    Remote,
    /// A path on this machine, or a `file://` URL.
    Local,
    /// A transport-helper address (`<helper>::<address>`) or a URL of a
    /// scheme git is not allowed to use.
    Other,
}

/// How git reads `repo`: a helper address has `::` before any `/`; a URL
/// has `<scheme>://`; `host:path` (a `:` before any `/`) is ssh; the rest
/// are paths.
pub fn kind_of(repo: &str) -> RepoKind {
    let before_slash = |i: usize| !repo[..i].contains('/');
    if repo.find("::").is_some_and(before_slash) {
        return RepoKind::Other;
    }
    let lower = repo.to_ascii_lowercase();
    if REMOTE_SCHEMES.iter().any(|s| lower.starts_with(s)) {
        return RepoKind::Remote;
    }
    if lower.starts_with("file://") {
        return RepoKind::Local;
    }
    if repo.find("://").is_some_and(before_slash) {
        return RepoKind::Other;
    }
    match repo.find(':') {
        Some(i) if i > 0 && before_slash(i) => RepoKind::Remote,
        _ => RepoKind::Local,
    }
}

/// Whether `repo` has a `.` or `..` segment (between `/` or `:`).
pub fn has_dot_segment(repo: &str) -> bool {
    repo.split(['/', ':']).any(|s| s == "." || s == "..")
}

#[derive(Debug, Clone)]
struct RepoPattern {
    text: String,
    glob: Option<Pattern>,
}

impl RepoPattern {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_REPO_LEN || text.contains('\0') {
            return Err(format!("{text:?} is not a repository pattern"));
        }
        if has_dot_segment(text) {
            return Err(format!("{text:?}: a pattern may not have . or .. segments"));
        }
        let kind = kind_of(text);
        if kind == RepoKind::Other {
            return Err(format!("{text:?}: transport-helper addresses and unknown URL schemes are never built"));
        }
        if kind == RepoKind::Local && !text.starts_with('/') && !text.to_ascii_lowercase().starts_with("file://") {
            return Err(format!("{text:?}: a local path pattern must be absolute"));
        }
        let glob = if text.contains(['*', '?', '[']) {
            Some(Pattern::new(text).map_err(|e| format!("{text:?} is not a glob: {e}"))?)
        } else {
            None
        };
        Ok(RepoPattern { text: text.to_string(), glob })
    }

    fn matches(&self, repo: &str) -> bool {
        match &self.glob {
            Some(g) => g.matches_with(repo, GLOB),
            None => {
                let base = self.text.trim_end_matches('/');
                repo == base || repo.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// A node's rule for which repositories it builds (see the module's head).
#[derive(Debug, Clone, Default)]
pub struct RepoPolicy {
    allow: Vec<RepoPattern>,
    watched: Vec<String>,
}

impl RepoPolicy {
    /// `allow`: the `--allow-repo` patterns (none: the default rule);
    /// `watched`: the repositories the node watches, as it fetches them.
    pub fn new(allow: &[String], watched: &[String]) -> Result<Self, String> {
        if allow.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} repository patterns"));
        }
        let allow = allow.iter().map(|p| RepoPattern::parse(p.trim())).collect::<Result<Vec<_>, _>>()?;
        Ok(RepoPolicy { allow, watched: watched.to_vec() })
    }

    /// Whether this node builds `repo`.
    pub fn allows(&self, repo: &str) -> bool {
        let kind = kind_of(repo);
        if kind == RepoKind::Other || repo.is_empty() || repo.len() > MAX_REPO_LEN {
            return false;
        }
        if self.watched.iter().any(|w| w == repo) {
            return true;
        }
        if has_dot_segment(repo) {
            return false;
        }
        if self.allow.is_empty() {
            return kind == RepoKind::Remote;
        }
        self.allow.iter().any(|p| p.matches(repo))
    }

    /// The patterns given, as written; empty when the default rule applies.
    pub fn patterns(&self) -> Vec<&str> {
        self.allow.iter().map(|p| p.text.as_str()).collect()
    }

    pub fn watched(&self) -> &[String] {
        &self.watched
    }

    /// No pattern given: remote URLs are allowed, local paths are not.
    pub fn remote_by_default(&self) -> bool {
        self.allow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], watched: &[&str]) -> RepoPolicy {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        RepoPolicy::new(&s(allow), &s(watched)).unwrap()
    }

    #[test]
    fn repositories_are_told_apart_as_git_reads_them() {
        let cases = [
            ("https://github.com/org/x.git", RepoKind::Remote),
            ("HTTP://example.org/x", RepoKind::Remote),
            ("ssh://git@host/x", RepoKind::Remote),
            ("git://host/x", RepoKind::Remote),
            ("git@github.com:org/x.git", RepoKind::Remote),
            ("host:x", RepoKind::Remote),
            ("/srv/git/x", RepoKind::Local),
            ("relative/x", RepoKind::Local),
            ("./a:b", RepoKind::Local),
            ("file:///srv/git/x", RepoKind::Local),
            ("ext::sh -c touch% /tmp/pwned", RepoKind::Other),
            ("fd::0", RepoKind::Other),
            ("ftp://host/x", RepoKind::Other),
            ("weird+helper::https://host/x", RepoKind::Other),
        ];
        for (repo, kind) in cases {
            assert_eq!(kind_of(repo), kind, "{repo}");
        }
    }

    #[test]
    fn by_default_remote_urls_are_built_and_local_paths_only_when_watched() {
        let p = policy(&[], &["/home/ci/repo"]);
        assert!(p.remote_by_default());
        for remote in ["https://github.com/org/x", "http://h/x", "ssh://h/x", "git://h/x", "git@h:org/x.git"] {
            assert!(p.allows(remote), "{remote}");
        }
        for local in ["/srv/git/x", "file:///srv/git/x", "relative", "/home/ci/repo2", "/home/ci"] {
            assert!(!p.allows(local), "{local}");
        }
        assert!(p.allows("/home/ci/repo"), "a watched repository");
        for never in ["ext::sh -c id", "fd::3", "ftp://h/x", "", "https://h/a/../b"] {
            assert!(!p.allows(never), "{never:?}");
        }
    }

    #[test]
    fn patterns_allow_what_they_match_and_nothing_else() {
        let p = policy(&["https://github.com/org/*", "/srv/git/**", "/opt/repos"], &["/home/ci/repo"]);
        assert!(!p.remote_by_default());
        let allowed = [
            "https://github.com/org/x.git",
            "/srv/git/a",
            "/srv/git/a/b.git",
            "/opt/repos",
            "/opt/repos/x",
            "/home/ci/repo",
        ];
        for repo in allowed {
            assert!(p.allows(repo), "{repo}");
        }
        let refused = [
            "https://github.com/org/x/y",
            "https://github.com/org2/x",
            "https://github.com/org",
            "https://github.com.evil.example/org/x",
            "https://gitlab.com/x",
            "/opt/reposx",
            "/srv/git/../etc",
            "/srv/git/a/../../etc",
            "/opt/repos/../../etc",
            "/srv/gitx/a",
            "file:///srv/git/a",
        ];
        for repo in refused {
            assert!(!p.allows(repo), "{repo}");
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        let err = |p: &str| RepoPolicy::new(&[p.to_string()], &[]).unwrap_err();
        assert!(err("").contains("not a repository pattern"));
        assert!(err("repos/*").contains("must be absolute"));
        assert!(err("/srv/../etc").contains(". or .."));
        assert!(err("ext::*").contains("never built"));
        assert!(err("/srv/a**").contains("not a glob"));
        assert!(err("/srv/[").contains("not a glob"));
        assert!(RepoPolicy::new(&["file:///srv/git/*".into(), " /srv/x ".into()], &[]).is_ok());
    }
}
