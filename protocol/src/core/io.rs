//! The core's boundary: what the runtime feeds it, what it asks the runtime
//! to do, and what it reports happened.

use libp2p_identity::PeerId;

use crate::ids::Hash32;
use crate::recipe::JobSpec;
use crate::record::{self, Change, Status};
use crate::Millis;

/// What the runtime feeds the core.
#[derive(Debug)]
pub enum Input {
    Tick,
    /// A gossip message; `token` identifies it for the verdict.
    Gossip {
        from: PeerId,
        token: u64,
        bytes: Vec<u8>,
    },
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    Request {
        from: PeerId,
        id: u64,
        bytes: Vec<u8>,
    },
    Response {
        id: u64,
        bytes: Vec<u8>,
    },
    RequestFailed {
        id: u64,
        reason: String,
    },
    BuildProgress {
        job: Hash32,
        attempt: u32,
        step: String,
    },
    BuildFinished(BuildOutcome),
    /// A notice job ended: sent, or given up after its tries.
    NoticeFinished(NoticeOutcome),
}

#[derive(Debug, Clone)]
pub struct NoticeOutcome {
    pub job: Hash32,
    pub attempt: u32,
    pub delivered: bool,
    pub tries: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: forward it.
    Accept,
    /// Valid but nothing new: do not forward.
    Ignore,
    /// Invalid: do not forward, penalise the sender.
    Reject,
}

/// What the core asks the runtime to do.
#[derive(Debug, Clone)]
pub enum Output {
    Broadcast(Vec<u8>),
    Request {
        peer: PeerId,
        id: u64,
        bytes: Vec<u8>,
    },
    Reply {
        id: u64,
        bytes: Vec<u8>,
    },
    Verdict {
        token: u64,
        verdict: Verdict,
    },
    StartBuild(BuildOrder),
    CancelBuild {
        job: Hash32,
        attempt: u32,
    },
    /// Close every connection to a peer that is not (or no longer) admitted.
    Disconnect {
        peer: PeerId,
    },
    Event(Event),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildOrder {
    pub job: Hash32,
    pub attempt: u32,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub builder: String,
    /// The job as its change announced it. The executor runs the steps of
    /// the commit's own recipe, and only when they are these.
    pub announced: JobSpec,
    /// A try build's patch, and the node that holds it (the change's signer).
    pub patch: Option<(crate::record::PatchRef, PeerId)>,
    /// A notice job: send this, build nothing.
    pub notice: Option<super::jobs::NoticeRef>,
}

#[derive(Debug, Clone, Default)]
pub struct StepOutcome {
    pub name: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub log: Vec<u8>,
    pub truncated: bool,
    /// What the step's `metrics` measured after it ran.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The step's test report files (its `tests.path`), as read, bounded.
    pub report_files: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Default)]
pub struct BuildOutcome {
    pub job: Hash32,
    pub attempt: u32,
    pub started_ms: Millis,
    pub ended_ms: Millis,
    pub steps: Vec<StepOutcome>,
    /// The build could not run (fetch or checkout failed, ...).
    pub error: Option<String>,
    pub cancelled: bool,
}

/// What happened, for logs, metrics and the UI.
#[derive(Debug, Clone)]
pub enum Event {
    RecordStored {
        id: Hash32,
        kind: &'static str,
        signer: PeerId,
        from: Option<PeerId>,
    },
    RecordRejected {
        from: PeerId,
        reason: String,
    },
    MessageRejected {
        from: PeerId,
        reason: String,
    },
    Claimed {
        job: Hash32,
        attempt: u32,
        by: PeerId,
    },
    ClaimConflict {
        job: Hash32,
        attempt: u32,
        winner: PeerId,
        loser: PeerId,
    },
    LeaseExpired {
        job: Hash32,
        attempt: u32,
        holder: PeerId,
    },
    Released {
        job: Hash32,
        attempt: u32,
        by: PeerId,
        reason: String,
    },
    BuildStarted {
        job: Hash32,
        attempt: u32,
    },
    /// No end of this build was reported within its steps' timeouts and the
    /// grace: it was given up after `ran_ms`, its slot freed and its claim
    /// released. A late end of it is ignored.
    BuildGivenUp {
        job: Hash32,
        attempt: u32,
        ran_ms: u64,
    },
    BuildPublished {
        job: Hash32,
        attempt: u32,
        status: Status,
        record: Hash32,
    },
    /// This node's notice record for a notice job it sent (or gave up).
    NoticePublished {
        job: Hash32,
        delivered: bool,
        record: Hash32,
    },
    BlobFetched {
        token: u64,
        hash: Hash32,
        ok: bool,
        detail: String,
    },
    SyncFinished {
        peer: PeerId,
        rounds: u32,
        /// Ids this node lacked, and ids the peer lacked.
        need: usize,
        have: usize,
        /// Records pushed to the peer (at most `MAX_PUSH_BYTES` of them).
        pushed: usize,
    },
    SyncFailed {
        peer: PeerId,
        reason: String,
    },
    /// A peer's heartbeat named new addresses to reach it at.
    PeerAddrs {
        peer: PeerId,
        addrs: Vec<String>,
    },
    /// Catching up: records still to fetch, and fetched so far.
    CatchingUp {
        to_fetch: usize,
        fetched: u64,
    },
    LogsExpired {
        blobs: usize,
    },
    StoreFailed {
        reason: String,
    },
    /// Durable writes started failing (reported once, not per record).
    StorageFailing {
        reason: String,
    },
    /// Durable writes work again after failing this long.
    StorageRecovered {
        failing_ms: u64,
    },
    /// A revocation arrived: what `peer` signs from `revoked_ms` on is refused.
    Revoked {
        peer: PeerId,
        revoked_ms: Millis,
    },
    /// This node gave a job back instead of publishing its result.
    GaveBack {
        job: Hash32,
        attempt: u32,
        reason: String,
    },
}

/// What a watcher or an announce request saw at a commit.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub parents: Vec<String>,
    pub author: String,
    pub committer: String,
    pub commit_time: i64,
    pub title: String,
    pub files: Vec<String>,
    /// The text of `.peerbot.toml` at the commit, or why it could not be read.
    pub recipe: Result<String, String>,
}

impl CommitInfo {
    pub(crate) fn into_change(
        self,
        jobs: Vec<JobSpec>,
        recipe_error: Option<String>,
        now: Millis,
        force: Option<record::Force>,
    ) -> Change {
        // Scheduled builders build at their firings; a forced change builds them now.
        let (schedules, jobs) = match force {
            None => jobs.into_iter().partition(|j| j.schedule.is_some()),
            Some(_) => (vec![], jobs),
        };
        Change {
            repo: self.repo,
            branch: self.branch,
            commit: self.commit,
            parents: self.parents,
            author: self.author,
            committer: self.committer,
            commit_time: self.commit_time,
            title: self.title,
            files: self.files.into_iter().take(1000).collect(),
            jobs,
            recipe_error,
            announced_ms: now,
            force,
            schedules,
            firing_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Announced {
    New(Hash32),
    Known(Hash32),
    /// Another node announced the commit with another recipe than the one
    /// read here: this node published its own change beside that one.
    Disputed {
        ours: Hash32,
        theirs: Hash32,
    },
}
