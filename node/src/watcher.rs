//! Polls watched repositories and announces each new commit, like
//! Buildbot's GitPoller. The first sight of a branch announces its head.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use peerbot_protocol::core::Announced;
use peerbot_protocol::store::Store;
use tracing::{info, warn};

use crate::core_actor::{Announce, CoreActor};
use crate::git;
use crate::store::RocksStore;

/// At most this many new commits are announced per branch per poll.
const MAX_NEW_COMMITS: usize = 100;
/// A watched repository whose polls keep failing is tried at least this often.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How long to wait before polling again a repository whose last `failures`
/// polls (one or more) failed: the poll interval after the first failure,
/// doubled after each further one, up to [`MAX_RETRY_DELAY`], but never
/// less than the poll interval.
pub fn retry_delay(failures: u32, poll: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    poll.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY).max(poll)
}

/// The failed polls in a row of one watched repository, and when to try it again.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    next_try: Option<Instant>,
}

impl Retry {
    /// Polls come every `poll`, each a little late: half a poll of slack
    /// keeps a retry due at a poll from slipping to the next one.
    fn is_due(&self, now: Instant, poll: Duration) -> bool {
        self.next_try.is_none_or(|t| now + poll / 2 >= t)
    }

    /// A poll that began at `began` failed: returns how long until the next try.
    fn failed(&mut self, began: Instant, poll: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = retry_delay(self.failures, poll);
        self.next_try = Some(began + delay);
        delay
    }

    /// A poll succeeded: returns how many had failed before it.
    fn succeeded(&mut self) -> u32 {
        std::mem::take(self).failures
    }
}

#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub repo: String,
    pub branch: Option<String>,
}

impl std::str::FromStr for WatchSpec {
    type Err = String;
    /// `PATH_OR_URL[#branch]`
    fn from_str(s: &str) -> Result<Self, String> {
        let (repo, branch) = match s.rsplit_once('#') {
            Some((r, b)) if !b.is_empty() => (r, Some(b.to_string())),
            Some((r, _)) => (r, None),
            None => (s, None),
        };
        if repo.is_empty() {
            return Err(format!("--watch {s:?}: no repository"));
        }
        // A relative path means the same repository whatever the node's cwd later is.
        let repo = if !repo.contains("://") && !repo.contains('@') && std::path::Path::new(repo).exists() {
            std::fs::canonicalize(repo).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| repo.to_string())
        } else {
            repo.to_string()
        };
        git::check_repo(&repo).map_err(|e| e.to_string())?;
        if let Some(b) = &branch {
            git::check_branch(b).map_err(|e| format!("--watch {s:?}: {e}"))?;
        }
        Ok(WatchSpec { repo, branch })
    }
}

pub struct Watcher {
    specs: Vec<WatchSpec>,
    poll: Duration,
    data_dir: PathBuf,
    store: RocksStore,
    core: Addr<CoreActor>,
    busy: bool,
    /// One per spec, in the same order.
    retries: Vec<Retry>,
}

impl Watcher {
    pub fn new(
        specs: Vec<WatchSpec>,
        poll: Duration,
        data_dir: PathBuf,
        store: RocksStore,
        core: Addr<CoreActor>,
    ) -> Self {
        let retries = specs.iter().map(|_| Retry::default()).collect();
        Watcher { specs, poll, data_dir, store, core, busy: false, retries }
    }

    /// Polls every repository that is not backing off after failures.
    fn poll_all(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let began = Instant::now();
        let due: Vec<(usize, WatchSpec)> = self
            .specs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.retries[*i].is_due(began, self.poll))
            .map(|(i, spec)| (i, spec.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        self.busy = true;
        let data_dir = self.data_dir.clone();
        let store = self.store.clone();
        let core = self.core.clone();
        let fut = async move {
            let mut outcomes = Vec::with_capacity(due.len());
            for (i, spec) in due {
                outcomes.push((i, poll_one(&spec, &data_dir, store.clone(), &core).await));
            }
            outcomes
        };
        ctx.spawn(fut.into_actor(self).map(move |outcomes, act, _| {
            act.busy = false;
            for (i, outcome) in outcomes {
                act.note_outcome(i, outcome, began);
            }
        }));
    }

    /// A failure is logged once, with the time to the next try.
    fn note_outcome(&mut self, i: usize, outcome: anyhow::Result<()>, began: Instant) {
        let repo = &self.specs[i].repo;
        match outcome {
            Ok(()) => {
                let failures = self.retries[i].succeeded();
                if failures > 0 {
                    info!(%repo, failures, "polling works again");
                }
            }
            Err(e) => {
                let delay = self.retries[i].failed(began, self.poll);
                let failures = self.retries[i].failures;
                let next = humantime::format_duration(delay);
                // git's message may span lines; the log keeps one line per failure.
                let why = format!("{e:#}").replace('\n', " ");
                warn!(%repo, failures, "polling failed, next try in {next}: {why}");
            }
        }
    }
}

async fn poll_one(
    spec: &WatchSpec,
    data_dir: &std::path::Path,
    mut store: RocksStore,
    core: &Addr<CoreActor>,
) -> anyhow::Result<()> {
    let mirror = git::fetch_mirror(data_dir, &spec.repo).await?;
    let branch = match &spec.branch {
        Some(b) => b.clone(),
        None => git::default_branch(&spec.repo).await?,
    };
    let head = git::resolve(&mirror, &format!("refs/heads/{branch}")).await?;
    let key = format!("watch/{}#{}", spec.repo, branch);
    let last = store.get_state(&key).map(|b| String::from_utf8_lossy(&b).into_owned());
    if last.as_deref() == Some(head.as_str()) {
        return Ok(());
    }
    let commits = match &last {
        None => vec![head.clone()],
        Some(old) => match git::commits_between(&mirror, old, &head).await {
            // Oldest first, a bounded batch per poll; the rest next time.
            Ok(c) if !c.is_empty() => c.into_iter().take(MAX_NEW_COMMITS).collect(),
            // History was rewritten (force push): build the new head.
            _ => vec![head.clone()],
        },
    };
    for c in &commits {
        let info = git::commit_info(&mirror, &spec.repo, &branch, c).await?;
        match core.send(Announce(info)).await {
            Ok(Ok(Announced::New(id))) => {
                info!(repo = %spec.repo, %branch, commit = %c, change = %id.short(), "announced new commit")
            }
            Ok(Ok(Announced::Known(_))) => {}
            Ok(Ok(Announced::Disputed { ours, theirs })) => warn!(
                repo = %spec.repo, %branch, commit = %c, change = %ours.short(), other = %theirs.short(),
                "another node announced this commit with another recipe; published ours beside it"
            ),
            Ok(Err(e)) => warn!(commit = %c, "cannot announce: {e}"),
            Err(e) => anyhow::bail!("core is gone: {e}"),
        }
    }
    let upto = commits.last().cloned().unwrap_or(head);
    store.put_state(&key, upto.as_bytes())?;
    Ok(())
}

impl Actor for Watcher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.poll_all(ctx);
        ctx.run_interval(self.poll, |act, ctx| act.poll_all(ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_the_poll_interval_up_to_five_minutes() {
        let s = Duration::from_secs;
        let every_second = [(1, 1), (2, 2), (3, 4), (4, 8), (8, 128), (9, 256), (10, 300), (11, 300), (64, 300)];
        for (failures, secs) in every_second {
            assert_eq!(retry_delay(failures, s(1)), s(secs), "{failures} failures, polling every second");
        }
        let every_30s = [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (6, 300)];
        for (failures, secs) in every_30s {
            assert_eq!(retry_delay(failures, s(30)), s(secs), "{failures} failures, polling every 30 s");
        }
        assert_eq!(retry_delay(u32::MAX, s(1)), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX, Duration::from_millis(1)), MAX_RETRY_DELAY);
    }

    #[test]
    fn retry_delay_is_never_shorter_than_the_poll_interval() {
        let hourly = Duration::from_secs(3600);
        for failures in [0, 1, 2, 40] {
            assert_eq!(retry_delay(failures, hourly), hourly);
        }
    }

    #[test]
    fn a_failing_repository_is_skipped_until_its_retry_and_a_success_resets_it() {
        let poll = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut r = Retry::default();
        assert!(r.is_due(t0, poll));
        assert_eq!(r.failed(t0, poll), poll);
        assert_eq!(r.failed(t0 + poll, poll), 2 * poll);
        let began = t0 + poll;
        assert!(!r.is_due(began + poll, poll));
        // The poll meant to retry may come a little early or late.
        assert!(r.is_due(began + 2 * poll - poll / 4, poll));
        assert!(r.is_due(began + 3 * poll, poll));
        assert_eq!(r.failed(began + 2 * poll, poll), 4 * poll);
        assert_eq!(r.succeeded(), 3);
        assert!(r.is_due(began + 2 * poll, poll));
        assert_eq!(r.failed(began + 3 * poll, poll), poll);
    }
}
