//! Signed, immutable, replicated records: changes and build results.
//!
//! The signer signs the encoded bytes of the body; the record id is the
//! blake3 hash of the whole encoded envelope. The signature is checked over
//! the body bytes as received; the envelope must be in its one canonical
//! encoding, so that one record has one id.

use std::collections::BTreeMap;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::recipe::JobSpec;
use crate::sigcheck::{self, SignerKey};
use crate::Millis;

pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
const SIGN_DOMAIN: &[u8] = b"peerbot-record-v1\0";
const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub parents: Vec<String>,
    pub author: String,
    pub committer: String,
    /// Commit time, seconds since the epoch, as git records it.
    pub commit_time: i64,
    pub title: String,
    pub files: Vec<String>,
    pub jobs: Vec<JobSpec>,
    /// Set when the recipe at this commit could not be read or parsed; then
    /// `jobs` is empty.
    pub recipe_error: Option<String>,
    pub announced_ms: Millis,
    /// Set on a forced rebuild: its jobs are new jobs named by the nonce.
    #[serde(default)]
    pub force: Option<Force>,
    /// The recipe's builders that build on a `schedule`, not at each
    /// change: kept so that any node can fire them from the records alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<JobSpec>,
    /// Set on a scheduled build of the branch head: the firing time, and
    /// `jobs` are that firing's (ids from repo, branch, builder and time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing_ms: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Force {
    pub nonce: Hash32,
    pub reason: String,
    /// Set on a try build: the patch its builds apply on top of the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchRef>,
    /// Set on a bisect build (`crate::bisect`): the failing job whose
    /// range it searches. Its nonce is then `bisect::nonce`, so every node
    /// that announces the same step makes the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bisect: Option<BisectRef>,
}

/// What a bisect build searches for: the first failing commit of the
/// range a failing job was the first to test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BisectRef {
    /// The failing (unforced) job.
    pub origin: Hash32,
}

impl Force {
    /// What the jobs' ids are made with: the nonce, and for a try the
    /// patch too, so that nobody can sign another patch under the same jobs.
    pub fn job_nonce(&self) -> Hash32 {
        match &self.patch {
            None => self.nonce,
            Some(p) => Hash32::of_fields("peerbot.try.nonce.v1", &[&self.nonce.0, &p.hash.0, &p.size.to_le_bytes()]),
        }
    }
}

/// A patch (what `git diff --binary` prints) kept as a blob by the node
/// that signed the change; its hash in the signed change signs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRef {
    pub hash: Hash32,
    pub size: u64,
}

/// A try build's patch is at most this big.
pub const MAX_PATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Try changes are filed on a branch named `try:<branch>`: git refuses `:`
/// in branch names, so no real branch shares their history, collapsing or
/// blame.
pub const TRY_BRANCH_PREFIX: &str = "try:";

pub fn is_try_branch(branch: &str) -> bool {
    branch.starts_with(TRY_BRANCH_PREFIX)
}

/// A user's request to stop a job: the claimant kills the build and
/// publishes a `cancelled` result; a job not yet claimed is never built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    pub job: Hash32,
    pub reason: String,
    pub requested_ms: Millis,
}

/// A notification a notifier sent (or gave up on) about a result: stored,
/// it settles the notice job, so no node sends it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `notify::notice_job_id(notifier, result)`.
    pub job: Hash32,
    pub notifier: String,
    /// The record id of the result it speaks of.
    pub result: Hash32,
    pub event: crate::notify::NoticeEvent,
    pub sent_ms: Millis,
    /// False when every try failed; `error` says the last failure.
    pub delivered: bool,
    pub tries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The sending node's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    Warnings,
    Failure,
    Exception,
    Cancelled,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Warnings => "warnings",
            Status::Failure => "failure",
            Status::Exception => "exception",
            Status::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "success" => Status::Success,
            "warnings" => Status::Warnings,
            "failure" => Status::Failure,
            "exception" => Status::Exception,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub hash: Hash32,
    pub size: u64,
    /// The log hit the size limit and was cut, with a marker at the cut.
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// A failing test as a step's test report names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTest {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub command: String,
    /// None when the step was killed (timeout, cancel) or never started.
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub log: Option<BlobRef>,
    pub warnings: u64,
    pub tests: Option<TestCounts>,
    /// The first warning lines of the build, cut to 200 characters each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warning_lines: Vec<String>,
    /// The step's failing tests from its `tests` report, the first
    /// `testreport::MAX_FAILURES` of them; absent from older results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tests: Vec<FailedTest>,
    /// The format of the step's test report, when it had one: then a test
    /// not in `failed_tests` (while they are all kept) did not fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub job: Hash32,
    pub repo: String,
    pub branch: String,
    pub commit: String,
    pub builder: String,
    pub attempt: u32,
    pub labels: Vec<String>,
    pub started_ms: Millis,
    pub ended_ms: Millis,
    pub status: Status,
    pub steps: Vec<StepResult>,
    pub metrics: BTreeMap<String, f64>,
    pub failed_step: Option<String>,
    /// Why the build could not run (status `exception`), e.g. a failed fetch.
    pub error: Option<String>,
    /// The commit's author and title, from its change, so that a result
    /// names who to ask about it without a second lookup.
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub title: String,
    /// The building node's name (`--name`); absent from older results.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Change(Change),
    Result(BuildResult),
    Cancel(Cancel),
    /// The signer's admission to the cluster, so that any node can check
    /// the signer's records, now or when it catches up years later.
    Admission(crate::admission::Admission),
    /// A cluster-signed revocation, carried by whichever node published it.
    Revocation(crate::admission::Revocation),
    /// A notification sent about a result (`notify.rs`).
    Notice(Notice),
}

impl Body {
    /// The record's place in (time, id) order, used by reconciliation.
    pub fn time(&self) -> Millis {
        match self {
            Body::Change(c) => c.announced_ms,
            Body::Result(r) => r.ended_ms,
            Body::Cancel(c) => c.requested_ms,
            Body::Admission(a) => a.issued_ms(),
            Body::Revocation(r) => r.revoked_ms(),
            Body::Notice(n) => n.sent_ms,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Change(_) => "change",
            Body::Result(_) => "result",
            Body::Cancel(_) => "cancel",
            Body::Admission(_) => "admission",
            Body::Revocation(_) => "revocation",
            Body::Notice(_) => "notice",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    #[serde(with = "serde_bytes")]
    signer: Vec<u8>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// A record whose signature has been checked, with its bytes as received.
#[derive(Debug, Clone)]
pub struct VerifiedRecord {
    pub id: Hash32,
    pub signer: PeerId,
    pub body: Body,
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

impl VerifiedRecord {
    pub fn time(&self) -> Millis {
        self.body.time()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record envelope: {0}")]
    Envelope(crate::codec::CodecError),
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("signer is not an ed25519 public key")]
    Signer,
    #[error("bad signature")]
    Signature,
    #[error("record envelope is not in canonical encoding")]
    NonCanonical,
    #[error("record body: {0}")]
    Body(crate::codec::CodecError),
    #[error("record body is invalid: {0}")]
    Invalid(String),
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + body.len());
    m.extend_from_slice(SIGN_DOMAIN);
    m.extend_from_slice(body);
    m
}

/// Signer keys already parsed, per thread: a cluster has few signers, and
/// parsing a key (a point decompression) cost more than a sixth of a
/// node's start-up, once per record.
const SIGNER_CACHE: usize = 4096;

thread_local! {
    static SIGNERS: std::cell::RefCell<std::collections::HashMap<Vec<u8>, (SignerKey, PeerId)>> = Default::default();
}

fn signer_key(raw: &[u8]) -> Result<(SignerKey, PeerId), RecordError> {
    if let Some(hit) = SIGNERS.with(|c| c.borrow().get(raw).cloned()) {
        return Ok(hit);
    }
    let ed = libp2p_identity::ed25519::PublicKey::try_from_bytes(raw).map_err(|_| RecordError::Signer)?;
    let key = SignerKey::from_bytes(raw).ok_or(RecordError::Signer)?;
    let peer = PublicKey::from(ed).to_peer_id();
    SIGNERS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= SIGNER_CACHE {
            c.clear();
        }
        c.insert(raw.to_vec(), (key.clone(), peer));
    });
    Ok((key, peer))
}

/// Signs a body with the node's key, giving the record as it goes on the wire.
pub fn sign(key: &Keypair, body: &Body) -> VerifiedRecord {
    let body_bytes = encode(body);
    let ed = key.clone().try_into_ed25519().expect("node keys are ed25519");
    let signature = ed.sign(&signed_message(&body_bytes));
    let env = Envelope {
        v: ENVELOPE_VERSION,
        signer: ed.public().to_bytes().to_vec(),
        body: body_bytes,
        sig: signature.clone(),
    };
    let bytes = encode(&env);
    VerifiedRecord { id: Hash32::of(&bytes), signer: key.public().to_peer_id(), body: body.clone(), bytes, signature }
}

/// Checks a record as received: size, envelope, signature, then body.
pub fn verify(bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
    let (env, signer, sig) = open(bytes)?;
    if !sig.as_ref().is_some_and(sigcheck::check_one) {
        return Err(RecordError::Signature);
    }
    finish(bytes, env, signer)
}

/// `verify` for many records at once, answered in order: their
/// signatures are checked by one batch equation, and only if it fails
/// one by one, to tell the bad from the good.
pub fn verify_batch(batch: &[&[u8]]) -> Vec<Result<VerifiedRecord, RecordError>> {
    let opened: Vec<_> = batch.iter().map(|b| open(b)).collect();
    let sigs: Vec<sigcheck::Prepared> =
        opened.iter().filter_map(|o| o.as_ref().ok().and_then(|(_, _, sig)| sig.clone())).collect();
    let all_hold = sigcheck::check_batch(&sigs);
    batch
        .iter()
        .zip(opened)
        .map(|(bytes, o)| {
            let (env, signer, sig) = o?;
            // A batch that holds vouches for each of its signatures.
            if !sig.is_some_and(|s| all_hold || sigcheck::check_one(&s)) {
                return Err(RecordError::Signature);
            }
            finish(bytes, env, signer)
        })
        .collect()
}

/// The envelope checked and decoded, with its signature ready to check
/// (`None`: malformed, so bad).
fn open(bytes: &[u8]) -> Result<(Envelope, PeerId, Option<sigcheck::Prepared>), RecordError> {
    let env: Envelope = decode(bytes, MAX_RECORD_BYTES).map_err(RecordError::Envelope)?;
    if env.v != ENVELOPE_VERSION {
        return Err(RecordError::Version(env.v));
    }
    // One record, one encoding, one id: another encoding of the same
    // envelope would be the same signed content under a second id.
    if encode(&env) != bytes {
        return Err(RecordError::NonCanonical);
    }
    let (key, signer) = signer_key(&env.signer)?;
    let sig = sigcheck::prepare(&key, &[SIGN_DOMAIN, &env.body], &env.sig);
    Ok((env, signer, sig))
}

/// The body of a record whose signature holds, decoded and checked.
fn finish(bytes: &[u8], env: Envelope, signer: PeerId) -> Result<VerifiedRecord, RecordError> {
    let body: Body = decode(&env.body, MAX_RECORD_BYTES).map_err(RecordError::Body)?;
    validate_body(&body)?;
    Ok(VerifiedRecord { id: Hash32::of(bytes), signer, body, bytes: bytes.to_vec(), signature: env.sig })
}

fn validate_body(body: &Body) -> Result<(), RecordError> {
    let bad = |s: &str| Err(RecordError::Invalid(s.to_string()));
    match body {
        Body::Change(c) => {
            if c.repo.is_empty() || c.commit.is_empty() {
                return bad("change without repo or commit");
            }
            if c.force.as_ref().is_some_and(|f| f.reason.len() > 1024) {
                return bad("force reason over 1024 bytes");
            }
            let patch = c.force.as_ref().and_then(|f| f.patch);
            if is_try_branch(&c.branch) != patch.is_some() {
                return bad("a change on a try: branch must carry a patch, and only such a change may");
            }
            if patch.is_some_and(|p| p.size > MAX_PATCH_BYTES) {
                return bad("try patch over 4 MiB");
            }
            if let Some(f) = &c.force {
                if let Some(b) = &f.bisect {
                    if patch.is_some() || f.nonce != crate::bisect::nonce(&b.origin, &c.commit) {
                        return bad("a bisect change's nonce is not the one its origin and commit make");
                    }
                }
            }
            if c.jobs.len() + c.schedules.len() > crate::recipe::MAX_BUILDERS {
                return bad("change lists more jobs than a recipe may have builders");
            }
            for j in &c.schedules {
                crate::recipe::check_spec(j).map_err(|e| RecordError::Invalid(format!("change: {e}")))?;
                if j.schedule.is_none() {
                    return bad("change lists a scheduled builder without a schedule");
                }
            }
            if let Some(at) = c.firing_ms {
                check_firing(c, at)?;
            }
            for j in &c.jobs {
                if let Err(e) = crate::recipe::check_spec(j) {
                    return Err(RecordError::Invalid(format!("change: {e}")));
                }
                let want = match (&c.force, c.firing_ms) {
                    (None, None) => crate::recipe::job_id(&c.repo, &c.commit, &j.builder),
                    (Some(f), _) => crate::recipe::forced_job_id(&c.repo, &c.commit, &j.builder, &f.job_nonce()),
                    (None, Some(at)) => crate::recipe::schedule::scheduled_job_id(&c.repo, &c.branch, &j.builder, at),
                };
                if j.id != want {
                    return bad("change lists a job whose id does not match its repo, commit and builder");
                }
            }
        }
        Body::Cancel(c) => {
            if c.reason.len() > 1024 {
                return bad("cancel reason over 1024 bytes");
            }
        }
        Body::Result(r) => {
            if r.ended_ms < r.started_ms {
                return bad("result ends before it starts");
            }
            if !crate::wire::valid_name(&r.node_name) {
                return bad("result's node name is over 64 bytes or holds control characters");
            }
            if r.steps.iter().any(|s| s.failed_tests.len() > crate::testreport::MAX_FAILURES) {
                return bad("result's step lists more failing tests than a node keeps");
            }
        }
        Body::Notice(n) => {
            if let Err(e) = crate::notify::check_name(&n.notifier) {
                return Err(RecordError::Invalid(format!("notice: {e}")));
            }
            if n.job != crate::notify::notice_job_id(&n.notifier, &n.result) {
                return bad("notice's job id is not its notifier's and result's");
            }
            if n.error.as_ref().is_some_and(|e| e.len() > crate::notify::MAX_ERROR) {
                return bad("notice's error is over 1000 bytes");
            }
            if !crate::wire::valid_name(&n.node_name) {
                return bad("notice's node name is over 64 bytes or holds control characters");
            }
        }
        // Checked against the cluster key by the core, which knows it.
        Body::Admission(_) | Body::Revocation(_) => {}
    }
    Ok(())
}

/// A scheduled build's change: jobs of builders whose schedule fires at
/// `at`, announced no earlier than a little before it (clocks differ), and
/// no scheduled builders of its own to fire again.
fn check_firing(c: &Change, at: Millis) -> Result<(), RecordError> {
    let bad = |s: &str| Err(RecordError::Invalid(format!("scheduled change: {s}")));
    if c.force.is_some() || !c.schedules.is_empty() || c.jobs.is_empty() {
        return bad("forced, with schedules, or without jobs");
    }
    if at > c.announced_ms.saturating_add(crate::recipe::schedule::MAX_EARLY_MS) {
        return bad("announced before its firing time");
    }
    for j in &c.jobs {
        if !j.schedule.as_deref().is_some_and(|s| crate::recipe::schedule::is_firing(s, at)) {
            return bad("a job whose schedule does not fire at the change's firing time");
        }
    }
    Ok(())
}

/// Decodes a record this node stored after verifying it, without checking
/// the signature again (start-up would otherwise cost a verify per record).
pub fn decode_stored(bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
    let env: Envelope = decode(bytes, MAX_RECORD_BYTES).map_err(RecordError::Envelope)?;
    if env.v != ENVELOPE_VERSION {
        return Err(RecordError::Version(env.v));
    }
    let (_, signer) = signer_key(&env.signer)?;
    let body: Body = decode(&env.body, MAX_RECORD_BYTES).map_err(RecordError::Body)?;
    Ok(VerifiedRecord { id: Hash32::of(bytes), signer, body, bytes: bytes.to_vec(), signature: env.sig })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn sample_change() -> Body {
        let jobs = crate::recipe::parse_recipe(
            "/r",
            "abc",
            "[[builder]]\nname='t'\nrequires=['os=linux']\n[[builder.step]]\nrun='true'",
        )
        .unwrap();
        Body::Change(Change {
            repo: "/r".into(),
            branch: "main".into(),
            commit: "abc".into(),
            parents: vec!["p".into()],
            author: "A <a@x>".into(),
            committer: "A <a@x>".into(),
            commit_time: 1,
            title: "t".into(),
            files: vec!["f".into()],
            jobs,
            recipe_error: None,
            announced_ms: 5,
            force: None,
            ..Default::default()
        })
    }

    #[test]
    fn round_trip_and_id() {
        let key = crate::deterministic_key(1);
        let rec = sign(&key, &sample_change());
        let back = verify(&rec.bytes).unwrap();
        assert_eq!(back.id, rec.id);
        assert_eq!(back.signer, key.public().to_peer_id());
        assert_eq!(back.body, rec.body);
        assert_eq!(rec.id, Hash32::of(&rec.bytes));
    }

    #[test]
    fn a_try_change_and_only_a_try_change_carries_a_patch() {
        let key = crate::deterministic_key(1);
        let make = |branch: &str, patch: Option<PatchRef>| {
            let Body::Change(mut c) = sample_change() else { unreachable!() };
            let force = Force { nonce: Hash32::of(b"n"), reason: "try".into(), patch, bisect: None };
            c.branch = branch.into();
            for j in c.jobs.iter_mut() {
                j.id = crate::recipe::forced_job_id(&c.repo, &c.commit, &j.builder, &force.job_nonce());
            }
            c.force = Some(force);
            verify(&sign(&key, &Body::Change(c)).bytes)
        };
        let patch = PatchRef { hash: Hash32::of(b"diff"), size: 4 };
        assert!(make("try:main", Some(patch)).is_ok());
        assert!(make("main", None).is_ok(), "a forced rebuild");
        assert!(make("try:main", None).is_err(), "a try branch without a patch");
        assert!(make("main", Some(patch)).is_err(), "a patch on a real branch");
        let big = PatchRef { size: MAX_PATCH_BYTES + 1, ..patch };
        assert!(make("try:main", Some(big)).is_err());
        // Another patch under the same nonce makes other jobs: a try's jobs
        // cannot be taken over by a change with another patch.
        let other = PatchRef { hash: Hash32::of(b"other diff"), size: 10 };
        let nonce = Hash32::of(b"n");
        let ids = |p| Force { nonce, reason: String::new(), patch: Some(p), bisect: None }.job_nonce();
        assert_ne!(ids(patch), ids(other));
        let Body::Change(mut c) = sample_change() else { unreachable!() };
        c.branch = "try:main".into();
        for j in c.jobs.iter_mut() {
            j.id = crate::recipe::forced_job_id(&c.repo, &c.commit, &j.builder, &nonce);
        }
        c.force = Some(Force { nonce, reason: "try".into(), patch: Some(patch), bisect: None });
        assert!(verify(&sign(&key, &Body::Change(c)).bytes).is_err(), "ids made without the patch");
        // A forced rebuild encodes as before the patch field was added.
        let f = Force { nonce: Hash32::of(b"n"), reason: "r".into(), patch: None, bisect: None };
        assert!(!crate::codec::encode(&f).windows(5).any(|w| w == b"patch"));
    }

    #[test]
    fn a_signed_change_is_held_to_the_recipe_limits() {
        let key = crate::deterministic_key(1);
        assert!(verify(&sign(&key, &sample_change()).bytes).is_ok());
        let bend = |f: &dyn Fn(&mut crate::recipe::JobSpec)| {
            let Body::Change(mut c) = sample_change() else { unreachable!() };
            f(&mut c.jobs[0]);
            verify(&sign(&key, &Body::Change(c)).bytes)
        };
        assert!(bend(&|j| j.steps[0].timeout_secs = u64::MAX).is_err());
        assert!(bend(&|j| j.steps[0].timeout_secs = 0).is_err());
        assert!(bend(&|j| j.steps = vec![j.steps[0].clone(); crate::recipe::MAX_STEPS + 1]).is_err());
        assert!(bend(&|j| j.steps[0].run = "x".repeat(crate::recipe::MAX_COMMAND_LEN + 1)).is_err());
        assert!(bend(&|j| j.requires = vec!["not a label".into()]).is_err());
        assert!(bend(&|j| j.tree_stable_secs = u64::MAX).is_err());
    }

    #[test]
    fn forged_signer_rejected() {
        let key = crate::deterministic_key(1);
        let other = crate::deterministic_key(2);
        let rec = sign(&key, &sample_change());
        let mut env: Envelope = decode(&rec.bytes, MAX_RECORD_BYTES).unwrap();
        env.signer = other.clone().try_into_ed25519().unwrap().public().to_bytes().to_vec();
        assert!(matches!(verify(&encode(&env)), Err(RecordError::Signature)));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let key = crate::deterministic_key(3);
        let rec = sign(&key, &sample_change());
        for bit in 0..rec.bytes.len() * 8 {
            let mut bytes = rec.bytes.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(verify(&bytes).is_err(), "bit {bit} flipped was accepted");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn any_flipped_bit_is_rejected(bit in 0usize..100_000) {
            let key = crate::deterministic_key(1);
            let rec = sign(&key, &sample_change());
            let bit = bit % (rec.bytes.len() * 8);
            let mut bytes = rec.bytes.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            // Either it no longer parses or its signature fails: never accepted.
            prop_assert!(verify(&bytes).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify(&bytes);
        }
    }
}
