//! The one pipeline every record goes through, whoever made it: verify
//! (records from the network), store durably, report, apply to the
//! sub-states. And the records this node signs: changes, forced
//! rebuilds, cancels and build results.

use libp2p_identity::PeerId;
use serde_bytes::ByteBuf;

use super::builds::assemble_result;
use super::io::{Announced, BuildOutcome, CommitInfo, Event, Output, Verdict};
use super::jobs::{encode_lost, lost_key, JobState, LostAttempt};
use super::{admissions, ClaimOutcome as Outcome, NodeCore};
use crate::ids::Hash32;
use crate::recipe::parse_recipe;
use crate::record::{self, Body, VerifiedRecord};
use crate::store::{Lookup, Store, StoreError};
use crate::wire::{self, Gossip};
use crate::Millis;

/// At most `max` bytes of `s`, cut at a character boundary.
pub(super) fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Two announcements of one commit agree: the same builders with the same
/// recipe sections, or both found no usable recipe.
fn same_recipe(a: &[crate::recipe::JobSpec], a_err: bool, b: &[crate::recipe::JobSpec], b_err: bool) -> bool {
    let key = |j: &[crate::recipe::JobSpec]| {
        let mut v: Vec<(String, Hash32)> = j.iter().map(|j| (j.builder.clone(), j.recipe_hash)).collect();
        v.sort();
        v
    };
    a_err == b_err && key(a) == key(b)
}

/// A job out of the table for good: built, cancelled, or superseded.
pub(super) fn settled_in<S: Store>(store: &S, job: &Hash32) -> bool {
    store.lookup(Lookup::JobResult, job, 1).len() == 1
        || store.cancel_for_job(job).is_some()
        || store.superseded_by(job).is_some()
        || !store.lookup(Lookup::JobNotice, job, 1).is_empty()
}

/// What became of a batch of records from a peer.
#[derive(Default)]
pub(super) struct Accepted {
    /// New records stored, or held for their signer's admission.
    pub new: usize,
    /// Ids of the batch stored now, new or not.
    pub stored: std::collections::HashSet<Hash32>,
}

/// What the cluster's membership says of a verified record.
enum Screen {
    Take,
    /// Its signer's admission has not arrived yet.
    Hold,
    Refuse(String),
}

impl<S: Store> NodeCore<S> {
    /// Whether a record's signer counted when it signed it. Admissions and
    /// revocations carry the cluster's own signature.
    fn screen(&self, now: Millis, rec: &VerifiedRecord) -> Screen {
        // A hostile peer may announce firings that are not.
        if let Some(why) = match &rec.body {
            Body::Change(c) => self.bad_firing(now, c),
            _ => None,
        } {
            return Screen::Refuse(why);
        }
        let Some(cluster) = self.admissions.cluster() else { return Screen::Take };
        match &rec.body {
            Body::Admission(a) => match a.check(cluster, &rec.signer, a.issued_ms()) {
                Ok(()) => Screen::Take,
                Err(e) => Screen::Refuse(format!("not admitted: an admission record that does not hold: {e}")),
            },
            Body::Revocation(r) => match r.check(cluster) {
                Ok(_) => Screen::Take,
                Err(e) => Screen::Refuse(format!("not admitted: a revocation that does not hold: {e}")),
            },
            _ => match self.admissions.admitted_at(&rec.signer, rec.time()) {
                Ok(()) => match &rec.body {
                    Body::Cancel(k) => match self.may_cancel(&rec.signer, &k.job) {
                        Ok(()) => Screen::Take,
                        Err(why) => Screen::Refuse(why),
                    },
                    Body::Change(c) if c.force.as_ref().is_some_and(|f| f.patch.is_some()) => {
                        match self.may_try(&rec.signer) {
                            Ok(()) => Screen::Take,
                            Err(why) => Screen::Refuse(why),
                        }
                    }
                    _ => Screen::Take,
                },
                Err(admissions::Refusal::Unknown) => Screen::Hold,
                Err(why) => {
                    Screen::Refuse(format!("not admitted: the signer's {}", why.as_str().trim_start_matches("its ")))
                }
            },
        }
    }

    /// A cancel counts from the node that announced the job's change, or
    /// from one whose admission grants `role=admin`.
    fn may_cancel(&self, who: &PeerId, job: &Hash32) -> Result<(), String> {
        if self.admissions.grants(who, admissions::ADMIN_LABEL) {
            return Ok(());
        }
        let announcer = self
            .store
            .lookup(Lookup::JobChange, job, 1)
            .first()
            .and_then(|id| self.store.get_record(id))
            .and_then(|b| record::decode_stored(&b).ok())
            .map(|r| r.signer);
        match announcer {
            Some(a) if a == *who => Ok(()),
            Some(_) => Err(format!(
                "not allowed: only the node that announced job {} or one admitted with {} may cancel it",
                job.short(),
                admissions::ADMIN_LABEL
            )),
            None => Err(format!("not allowed: a cancel of job {}, whose change is not known here", job.short())),
        }
    }

    /// Verifies a record from the network; stores and applies it if new.
    pub(super) fn accept_record(&mut self, now: Millis, bytes: &[u8], from: Option<PeerId>) -> Verdict {
        let rec = match self.verifier.verify(bytes) {
            Ok(r) => r,
            Err(e) => {
                if let Some(from) = from {
                    self.emit(Event::RecordRejected { from, reason: e.to_string() });
                }
                return Verdict::Reject;
            }
        };
        if self.store.has_record(&rec.id) {
            return Verdict::Ignore;
        }
        match self.screen(now, &rec) {
            Screen::Take => {}
            Screen::Hold => {
                self.admissions.hold(rec, from, now);
                return Verdict::Ignore;
            }
            Screen::Refuse(reason) => {
                if let Some(from) = from {
                    self.emit(Event::RecordRejected { from, reason });
                }
                return Verdict::Reject;
            }
        }
        match self.commit(now, std::slice::from_ref(&rec), from) {
            Ok(()) => Verdict::Accept,
            Err(_) => Verdict::Ignore,
        }
    }

    /// Verifies a batch of records from one peer and stores the new valid
    /// ones in one durable write; returns how many were new or held for
    /// their signer's admission.
    pub(super) fn accept_records(&mut self, now: Millis, batch: &[ByteBuf], from: PeerId) -> usize {
        self.accept_batch(now, batch, from).new
    }

    /// `accept_records`, also telling which ids of the batch are stored
    /// now, so that the caller of a fetch need not read them back.
    pub(super) fn accept_batch(&mut self, now: Millis, batch: &[ByteBuf], from: PeerId) -> Accepted {
        let mut fresh: Vec<VerifiedRecord> = Vec::new();
        let mut held = 0;
        let batch = &batch[..batch.len().min(wire::MAX_RECORDS_PER_REQUEST)];
        // A record's id is the hash of its bytes: those stored already are
        // not verified again.
        let ids: Vec<Hash32> = batch.iter().map(|b| Hash32::of(b)).collect();
        let known = self.store.has_records(&ids);
        let mut stored: std::collections::HashSet<Hash32> =
            ids.iter().zip(&known).filter(|(_, k)| **k).map(|(id, _)| *id).collect();
        let mut seen = std::collections::HashSet::new();
        let unknown: Vec<&[u8]> = batch
            .iter()
            .zip(&ids)
            .zip(&known)
            .filter(|((_, id), known)| !**known && seen.insert(**id))
            .map(|((b, _), _)| b.as_slice())
            .collect();
        for verified in self.verifier.verify_many(&unknown) {
            match verified {
                Ok(rec) => match self.screen(now, &rec) {
                    Screen::Take => fresh.push(rec),
                    Screen::Hold => held += self.admissions.hold(rec, Some(from), now) as usize,
                    Screen::Refuse(reason) => self.emit(Event::RecordRejected { from, reason }),
                },
                Err(e) => self.emit(Event::RecordRejected { from, reason: e.to_string() }),
            }
        }
        // Admissions first: the records they vouch for may be in this batch.
        fresh.sort_by_key(|r| !matches!(r.body, Body::Admission(_) | Body::Revocation(_)));
        match self.commit(now, &fresh, Some(from)) {
            Ok(()) => {
                stored.extend(fresh.iter().map(|r| r.id));
                Accepted { new: fresh.len() + held, stored }
            }
            Err(_) => Accepted { new: 0, stored },
        }
    }

    /// Takes a peer's admission; records held for it are taken too. False
    /// (and the refusal reported) if it does not hold.
    pub(super) fn learn_admission(&mut self, now: Millis, peer: PeerId, cert: &crate::admission::Admission) -> bool {
        match self.admissions.learn(peer, cert) {
            Ok(true) => {
                self.reconsider(now);
                self.take_held(now, &peer);
                self.admissions.admitted_at(&peer, now).is_ok()
            }
            Ok(false) => self.admissions.admitted_at(&peer, now).is_ok(),
            Err(e) => {
                self.emit(Event::MessageRejected { from: peer, reason: format!("not admitted: {e}") });
                false
            }
        }
    }

    fn take_held(&mut self, now: Millis, signer: &PeerId) {
        for (rec, from) in self.admissions.release(signer) {
            if self.store.has_record(&rec.id) {
                continue;
            }
            match self.screen(now, &rec) {
                Screen::Take => {
                    let _ = self.commit(now, std::slice::from_ref(&rec), from);
                }
                Screen::Hold => {}
                Screen::Refuse(reason) => {
                    if let Some(from) = from {
                        self.emit(Event::RecordRejected { from, reason });
                    }
                }
            }
        }
    }

    /// Publishes this node's admission as a record once, so that nodes
    /// that never meet it can still check what it signed.
    pub(super) fn publish_own_admission(&mut self, now: Millis) {
        let Some(cert) = self.cfg.admission.clone() else { return };
        if self.admissions.open() {
            return;
        }
        let rec = record::sign(&self.key, &Body::Admission(cert));
        if !self.store.has_record(&rec.id) {
            let _ = self.publish(now, &rec.body);
        }
    }

    /// Stores new records in one durable write, then reports and applies
    /// each. Nothing is applied that is not stored.
    fn commit(&mut self, now: Millis, recs: &[VerifiedRecord], from: Option<PeerId>) -> Result<(), StoreError> {
        crate::invariant!(recs.iter().all(|r| !self.store.has_record(&r.id)), "only new records are committed");
        if let Err(e) = self.store.put_records(recs) {
            self.storage_failed(now, &e.to_string());
            return Err(e);
        }
        self.storage_wrote(now);
        for rec in recs {
            self.emit(Event::RecordStored { id: rec.id, kind: rec.body.kind(), signer: rec.signer, from });
            self.apply(now, rec);
        }
        self.checkpoint_if_many();
        Ok(())
    }

    /// Signs a record of this node's, commits it and gossips it.
    pub(super) fn publish(&mut self, now: Millis, body: &Body) -> Result<VerifiedRecord, StoreError> {
        let rec = record::sign(&self.key, body);
        self.commit(now, std::slice::from_ref(&rec), None)?;
        self.broadcast(&Gossip::Record(rec.bytes.clone()));
        Ok(rec)
    }

    /// What a stored record means to the sub-states.
    pub(super) fn apply(&mut self, now: Millis, rec: &VerifiedRecord) {
        self.reconsider(now);
        match &rec.body {
            Body::Change(c) => {
                self.note_schedules(now, rec.id, c);
                let store = &self.store;
                for (by, claim, at) in self.jobs.add_change(now, c, rec.id, &|job| settled_in(store, job)) {
                    self.reconsider(now);
                    let why = self.jobs.get(&claim.job).and_then(|j| self.ineligible(&by, &j.spec));
                    let outcome = match why {
                        Some(why) => Outcome::Refused { job: claim.job, by, why },
                        None => self.jobs.take_claim(at, by, claim, self.claim_rules()),
                    };
                    self.settle(now, outcome);
                }
                // Forced and scheduled changes are extra builds, not branch activity.
                if c.force.is_none() && c.firing_ms.is_none() {
                    for s in self.jobs.branch_activity(now, c) {
                        self.file_superseded(now, &s.job, &s.by);
                        self.keep_lost(now, &s.job, &s.lost);
                    }
                }
            }
            Body::Admission(a) => {
                self.note_trust_record(rec.id);
                if self.admissions.learn(rec.signer, a).unwrap_or(false) && !self.replaying {
                    self.take_held(now, &rec.signer);
                }
            }
            Body::Revocation(r) => {
                self.note_trust_record(rec.id);
                let Some(peer) = self.admissions.cluster().and_then(|c| r.check(c).ok()) else { return };
                if self.admissions.revoke(peer, r.revoked_ms()) && !self.replaying {
                    self.emit(Event::Revoked { peer, revoked_ms: r.revoked_ms() });
                    if self.members.peers().get(&peer).is_some_and(|v| v.connected)
                        && self.admissions.admitted_at(&peer, now).is_err()
                    {
                        self.out.push_back(Output::Disconnect { peer });
                    }
                }
            }
            Body::Cancel(k) => {
                let lost = self.jobs.settle(&k.job);
                self.keep_lost(now, &k.job, &lost);
                if let Some(attempt) = self.builds.attempt_of(&k.job) {
                    // Keep it as ours: the build ends as a `cancelled` result.
                    self.out.push_back(Output::CancelBuild { job: k.job, attempt });
                }
            }
            Body::Result(r) => {
                if !self.replaying {
                    self.replicate_logs(now, r, rec.signer);
                }
                let lost = self.jobs.settle(&r.job);
                self.keep_lost(now, &r.job, &lost);
                if self.store.lookup(Lookup::JobResult, &r.job, 2).len() > 1 {
                    self.jobs.note_finding(rec.time(), r.job);
                }
                self.note_bisect(now, rec.signer, r);
                if rec.signer != self.me {
                    if let Some(attempt) = self.stop_own_build(now, &r.job) {
                        // Someone else finished it: our build is now redundant.
                        self.out.push_back(Output::CancelBuild { job: r.job, attempt });
                    }
                }
                self.derive_notices(now, rec.id, r);
                if !self.cfg.notifiers.is_empty() {
                    self.wake_notices(now);
                }
            }
            Body::Notice(n) => self.apply_notice(now, rec.signer, n),
        }
    }

    /// Past the checkpoint's bound the list stops growing, and the
    /// checkpoint is refused.
    fn note_trust_record(&mut self, id: Hash32) {
        if self.trust_records.len() <= super::checkpoint::MAX_TRUST_RECORDS && !self.trust_records.contains(&id) {
            self.trust_records.push(id);
        }
    }

    /// Files that a newer job took a job's place. The replay at start-up
    /// derives it again, so a lost write loses nothing; it is reported.
    fn file_superseded(&mut self, now: Millis, job: &Hash32, by: &Hash32) {
        if let Err(e) = self.store.put_lookup(Lookup::Superseded, job, by) {
            self.storage_failed(now, &e.to_string());
        }
    }

    /// Keeps a settled job's lost attempts, which no record holds.
    pub(super) fn keep_lost(&mut self, now: Millis, job: &Hash32, lost: &[LostAttempt]) {
        if lost.is_empty() {
            return;
        }
        if let Err(e) = self.store.put_state(&lost_key(job), &encode_lost(lost)) {
            self.storage_failed(now, &e.to_string());
        }
    }

    /// The end of an attempt of this node's, a build's or a notice's:
    /// `None` when it was given up (its slot and claim went long ago; the
    /// job may be running elsewhere, or here as a later attempt), else
    /// whether it was still the attempt running, whose end frees its slot.
    pub(super) fn end_attempt(&mut self, now: Millis, job: &Hash32, attempt: u32) -> Option<bool> {
        if self.builds.was_given_up(job, attempt) {
            return None;
        }
        self.reconsider(now);
        let still_ours = self.builds.attempt_of(job) == Some(attempt);
        if still_ours {
            self.stop_own_build(now, job);
        }
        Some(still_ours)
    }

    pub(super) fn on_build_finished(&mut self, now: Millis, o: BuildOutcome) {
        let Some(still_ours) = self.end_attempt(now, &o.job, o.attempt) else { return };
        if !still_ours && o.cancelled {
            // We lost the claim or someone else finished first: nothing to publish.
            return;
        }
        let Some(job) = self.job(&o.job) else { return };
        for s in &o.steps {
            if let Err(e) = self.store.put_blob(&Hash32::of(&s.log), &s.log) {
                self.storage_failed(now, &e.to_string());
                return self.give_back(now, o.job, o.attempt, format!("its log could not be stored: {e}"));
            }
        }
        let (author, title) = match self.store.get_record(&job.change).and_then(|b| record::decode_stored(&b).ok()) {
            Some(VerifiedRecord { body: Body::Change(c), .. }) => (c.author, c.title),
            _ => (String::new(), String::new()),
        };
        let result = assemble_result(&o, &job, &self.cfg.labels, author, title, &self.cfg.name);
        let status = result.status;
        match self.publish(now, &Body::Result(result)) {
            Ok(rec) => self.emit(Event::BuildPublished { job: o.job, attempt: o.attempt, status, record: rec.id }),
            Err(e) => self.give_back(now, o.job, o.attempt, format!("its result could not be stored: {e}")),
        }
    }

    /// A build this node cannot keep the result of: the job opens again,
    /// here and (by a release) everywhere, rather than stay claimed.
    pub(super) fn give_back(&mut self, now: Millis, job: Hash32, attempt: u32, reason: String) {
        self.emit(Event::GaveBack { job, attempt, reason: reason.clone() });
        if self.jobs.release(now, self.me, &job, attempt, &reason) {
            self.broadcast(&Gossip::Release { job, attempt, reason: reason.clone(), sent_ms: now });
            self.emit(Event::Released { job, attempt, by: self.me, reason });
        }
        self.reconsider(now);
    }

    /// Turns a commit into a signed change, unless one is known already.
    pub fn announce(&mut self, now: Millis, info: CommitInfo) -> Result<Announced, String> {
        if info.repo.is_empty() || info.repo.len() > 4096 {
            return Err("repo must be 1 to 4096 bytes".into());
        }
        if info.commit.len() < 4 || info.commit.len() > 64 || !info.commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("commit {:?} is not a hex object id", info.commit));
        }
        let (jobs, recipe_error) = match &info.recipe {
            Ok(text) => match parse_recipe(&info.repo, &info.commit, text) {
                Ok(j) => (j, None),
                Err(e) => (vec![], Some(e.to_string())),
            },
            Err(e) => (vec![], Some(e.clone())),
        };
        let known = self.store.change_for_commit(&info.repo, &info.commit);
        if let Some(id) = known {
            let theirs = self.store.get_record(&id).and_then(|b| record::decode_stored(&b).ok());
            match theirs.map(|r| r.body) {
                Some(Body::Change(c))
                    if same_recipe(
                        &[&c.jobs[..], &c.schedules].concat(),
                        c.recipe_error.is_some(),
                        &jobs,
                        recipe_error.is_some(),
                    ) =>
                {
                    return Ok(Announced::Known(id));
                }
                // Another node announced this commit with a recipe that is not
                // the one read here: both stay visible, neither silently wins.
                _ => {}
            }
        }
        let change = info.into_change(jobs, recipe_error, now, None);
        let ours = self.publish_now(now, Body::Change(change))?;
        Ok(match known {
            Some(theirs) => Announced::Disputed { ours, theirs },
            None => Announced::New(ours),
        })
    }

    /// A forced rebuild of a commit: new jobs, built even if the commit was
    /// built before. `builder` narrows it to one builder.
    pub fn force(
        &mut self,
        now: Millis,
        info: CommitInfo,
        builder: Option<&str>,
        reason: String,
    ) -> Result<Hash32, String> {
        let builders: Vec<String> = builder.into_iter().map(str::to_string).collect();
        self.forced_change(now, info, &builders, reason, None)
    }

    /// A try build: `patch` applied on top of `info.commit`, whose recipe
    /// (`info.recipe`) is the patched one, as jobs of the branch
    /// `try:<info.branch>`, which no branch history counts. The patch is
    /// kept here as a blob; its hash in the signed change signs it.
    pub fn try_patch(
        &mut self,
        now: Millis,
        mut info: CommitInfo,
        builders: &[String],
        patch: &[u8],
        reason: String,
    ) -> Result<Hash32, String> {
        if patch.len() as u64 > record::MAX_PATCH_BYTES {
            return Err(format!("the patch is {} bytes, over the limit of {}", patch.len(), record::MAX_PATCH_BYTES));
        }
        if record::is_try_branch(&info.branch) {
            return Err(format!("branch {:?} is already a try branch", info.branch));
        }
        self.may_try(&self.me)?;
        info.branch = format!("{}{}", record::TRY_BRANCH_PREFIX, info.branch);
        self.forced_change(now, info, builders, reason, Some(patch))
    }

    /// A try change counts from a node admitted with `role=try` or
    /// `role=admin`: builders run what its patch says.
    fn may_try(&self, who: &PeerId) -> Result<(), String> {
        let a = &self.admissions;
        if a.grants(who, admissions::ADMIN_LABEL) || a.grants(who, crate::admission::TRY_LABEL) {
            return Ok(());
        }
        Err(format!(
            "not allowed: only a node admitted with {} or {} may sign a try",
            crate::admission::TRY_LABEL,
            admissions::ADMIN_LABEL
        ))
    }

    fn forced_change(
        &mut self,
        now: Millis,
        info: CommitInfo,
        builders: &[String],
        reason: String,
        patch: Option<&[u8]>,
    ) -> Result<Hash32, String> {
        let text = info.recipe.clone()?;
        let mut jobs = parse_recipe(&info.repo, &info.commit, &text).map_err(|e| e.to_string())?;
        if let Some(b) = builders.iter().find(|b| !jobs.iter().any(|j| &j.builder == *b)) {
            return Err(format!("the recipe at {} has no builder {b:?}", info.commit));
        }
        if !builders.is_empty() {
            jobs.retain(|j| builders.contains(&j.builder));
        }

        let nonce = Hash32::of_fields(
            "peerbot.force",
            &[&self.me.to_bytes(), &now.to_le_bytes(), &rand::Rng::gen::<u64>(&mut self.rng).to_le_bytes()],
        );
        let patch_ref = patch.map(|p| record::PatchRef { hash: Hash32::of(p), size: p.len() as u64 });
        let force = record::Force { nonce, reason: clip(&reason, 1024), patch: patch_ref, bisect: None };
        for j in jobs.iter_mut() {
            j.id = crate::recipe::forced_job_id(&info.repo, &info.commit, &j.builder, &force.job_nonce());
        }
        if let (Some(bytes), Some(p)) = (patch, patch_ref) {
            self.store.put_blob(&p.hash, bytes).map_err(|e| format!("cannot keep the patch: {e}"))?;
        }
        let change = info.into_change(jobs, None, now, Some(force));
        self.publish_now(now, Body::Change(change))
    }

    /// Cancels a job everywhere: a signed record every node applies.
    pub fn cancel(&mut self, now: Millis, job: Hash32, reason: String) -> Result<Hash32, String> {
        if self.jobs.get(&job).is_none() && !self.store_knows_job(&job) {
            return Err(format!("no job {}", job.to_hex()));
        }
        match self.job_state(&job) {
            JobState::Done => return Err(format!("job {} is already done", job.short())),
            JobState::Cancelled => return Err(format!("job {} is already cancelled", job.short())),
            _ => {}
        }
        self.may_cancel(&self.me, &job)?;
        let body = Body::Cancel(record::Cancel { job, reason: clip(&reason, 1024), requested_ms: now });
        self.publish_now(now, body)
    }

    /// Publishes a revocation the cluster's keeper signed: every node
    /// refuses what the revoked node signs from then on.
    pub fn publish_revocation(&mut self, now: Millis, r: crate::admission::Revocation) -> Result<Hash32, String> {
        let Some(cluster) = self.admissions.cluster() else {
            return Err("this node has no cluster key to check a revocation with".into());
        };
        let peer = r.check(cluster).map_err(|e| e.to_string())?;
        if peer == self.me {
            return Err("this node cannot publish its own revocation; give it to another node".into());
        }
        self.publish_now(now, Body::Revocation(r))
    }

    /// Publishes a record a user asked for, and acts on it at once.
    fn publish_now(&mut self, now: Millis, body: Body) -> Result<Hash32, String> {
        let rec = self.publish(now, &body).map_err(|e| e.to_string())?;
        self.on_timers(now);
        Ok(rec.id)
    }
}
