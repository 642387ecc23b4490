//! Polls watched repositories and announces each new commit, like
//! Buildbot's GitPoller. The first sight of a branch announces its head.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use peerbot_protocol::core::Announced;
use peerbot_protocol::store::Store;
use tracing::{info, warn};

use crate::core_actor::{Announce, CoreActor};
use crate::git;
use crate::store::RocksStore;

/// At most this many new commits are announced per branch per poll.
const MAX_NEW_COMMITS: usize = 100;

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
}

impl Watcher {
    pub fn new(
        specs: Vec<WatchSpec>,
        poll: Duration,
        data_dir: PathBuf,
        store: RocksStore,
        core: Addr<CoreActor>,
    ) -> Self {
        Watcher { specs, poll, data_dir, store, core, busy: false }
    }

    fn poll_all(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let specs = self.specs.clone();
        let data_dir = self.data_dir.clone();
        let store = self.store.clone();
        let core = self.core.clone();
        let fut = async move {
            for spec in specs {
                if let Err(e) = poll_one(&spec, &data_dir, store.clone(), &core).await {
                    warn!(repo = %spec.repo, "polling: {e:#}");
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|_, act, _| act.busy = false));
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
