//! Requests between nodes: answering a peer's (a sync round, records, a log
//! chunk), and taking the answers to this node's own (the next sync round,
//! fetched records, the next chunk of a log).

use libp2p_identity::PeerId;
use serde_bytes::ByteBuf;

use super::blobs::{self, ChunkStep};
use super::io::Event;
use super::rank::among_keepers;
use super::retention;
use super::sessions::{Next, RECORD_BATCH_BYTES};
use super::timer::Timer;
use super::transfers::{BlobFetch, Pending, REPLICATION_TOKEN};
use super::NodeCore;
use crate::ids::Hash32;
use crate::record::BuildResult;
use crate::store::Store;
use crate::sync;
use crate::wire::{self, Request, Response};
use crate::Millis;

impl<S: Store> NodeCore<S> {
    fn send(&mut self, peer: PeerId, req: &Request, p: Pending) {
        let o = self.requests.send(peer, req, p);
        self.out.push_back(o);
    }

    fn pump_transfers(&mut self) {
        let sent = self.requests.pump();
        self.out.extend(sent);
    }

    fn transfer_done(&mut self) {
        let sent = self.requests.transfer_done();
        self.out.extend(sent);
    }

    /// Answers a peer's request; this is where a sync round is answered.
    pub(super) fn on_request(&mut self, now: Millis, from: PeerId, bytes: &[u8]) -> Response {
        let req = match wire::decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.emit(Event::MessageRejected { from, reason: format!("request: {e}") });
                return Response::Error { message: e.to_string() };
            }
        };
        if let Request::Hello { admission } = req {
            return self.on_hello(now, from, admission);
        }
        if let Err(why) = self.admissions.admitted_at(&from, now) {
            self.emit(Event::MessageRejected { from, reason: format!("not admitted: {}", why.as_str()) });
            return Response::Error { message: format!("not admitted to this cluster: {}", why.as_str()) };
        }
        match req {
            Request::Hello { .. } => unreachable!("answered above"),
            Request::Reconcile { ranges } => match sync::process(&self.store, &ranges, false) {
                Ok(out) => Response::Reconcile { ranges: out.reply },
                Err(e) => {
                    self.emit(Event::MessageRejected { from, reason: format!("sync: {e}") });
                    Response::Error { message: e.to_string() }
                }
            },
            Request::GetRecords { ids } => Response::Records { records: self.records_for(&ids) },
            Request::PushRecords { records } => {
                let accepted = self.accept_records(now, &records, from) as u32;
                Response::Ack { accepted }
            }
            Request::GetBlob { hash, offset } => self.blob_server.serve(&self.store, hash, offset),
        }
    }

    /// Stored records of those asked for, within a batch's size.
    fn records_for(&self, ids: &[Hash32]) -> Vec<ByteBuf> {
        let mut records = Vec::new();
        let mut size = 0;
        for id in ids.iter().take(wire::MAX_RECORDS_PER_REQUEST) {
            if let Some(b) = self.store.get_record(id) {
                size += b.len();
                records.push(ByteBuf::from(b));
                if size > RECORD_BATCH_BYTES {
                    break;
                }
            }
        }
        records
    }

    pub(super) fn on_request_failed(&mut self, id: u64, reason: String) {
        match self.requests.take(id) {
            Some(Pending::Sync { peer, .. }) => self.sync_failed(peer, reason),
            Some(Pending::Blob(f)) => {
                if f.is_transfer() {
                    self.transfer_done();
                }
                self.next_blob_source(f.token, f.hash, f.rest, reason)
            }
            Some(Pending::Fetch { ids, .. }) => {
                self.sessions.fetch_failed(&ids);
                self.transfer_done();
            }
            Some(Pending::Push) => self.transfer_done(),
            // The grace period decides what a peer that never answers gets.
            Some(Pending::Hello { .. }) | None => {}
        }
    }

    pub(super) fn on_response(&mut self, now: Millis, id: u64, bytes: &[u8]) {
        let Some(p) = self.requests.take(id) else { return };
        let resp = wire::decode_response(bytes);
        match p {
            Pending::Sync { peer, round } => match resp {
                Ok(Response::Reconcile { ranges }) => self.sync_round(now, peer, round, &ranges),
                Ok(other) => self.sync_failed(peer, format!("unexpected reply {other:?}")),
                Err(e) => self.sync_failed(peer, e.to_string()),
            },
            Pending::Fetch { peer, ids } => {
                let (accepted, delivered) = match resp {
                    Ok(Response::Records { records }) => (self.accept_batch(now, &records, peer), !records.is_empty()),
                    _ => (Default::default(), false),
                };
                let fetched = accepted.new;
                // Only what the answer did not bring is looked up again.
                let missing: Vec<Hash32> = ids
                    .iter()
                    .filter(|id| !accepted.stored.contains(id))
                    .filter(|id| !self.store.has_record(id) && !self.admissions.is_held(id))
                    .copied()
                    .collect();
                // Records it sent that were refused here were still delivered.
                let again = self.sessions.fetch_answered(now, peer, &ids, fetched, missing, delivered);
                if !delivered && !ids.is_empty() && self.sessions.stalled_by(&peer) {
                    let reason = format!("sync: listed {} records it did not deliver", ids.len());
                    self.emit(Event::MessageRejected { from: peer, reason });
                }
                if !again.is_empty() {
                    // The answer stopped at its size limit: the rest next.
                    self.requests.enqueue(
                        peer,
                        Request::GetRecords { ids: again.clone() },
                        Pending::Fetch { peer, ids: again },
                    );
                }
                if let Some(p) = self.sessions.progress_to_report(now) {
                    self.emit(Event::CatchingUp { to_fetch: p.to_fetch, fetched: p.fetched });
                }
                if let Some(next) = self.sessions.resume_after_overflow() {
                    self.start_sync(now, next);
                }
                self.transfer_done();
            }
            Pending::Push => self.transfer_done(),
            Pending::Blob(f) => self.on_blob_chunk(f, resp),
            Pending::Hello { peer } => match resp {
                Ok(Response::Hello { admission: Some(cert) }) => {
                    if self.learn_admission(now, peer, &cert) {
                        self.start_sync(now, peer);
                    }
                }
                Ok(Response::Error { message }) => self.emit(Event::MessageRejected {
                    from: peer,
                    reason: format!("not admitted: it refused ours: {message}"),
                }),
                _ => self.emit(Event::MessageRejected {
                    from: peer,
                    reason: "not admitted: its answer to hello carried no admission".into(),
                }),
            },
        }
    }

    /// Sends this node's admission to a peer just connected.
    pub(super) fn say_hello(&mut self, peer: PeerId) {
        let req = Request::Hello { admission: self.cfg.admission.clone() };
        self.send(peer, &req, Pending::Hello { peer });
    }

    /// A peer's hello: its admission, answered with ours if it holds.
    fn on_hello(&mut self, now: Millis, from: PeerId, admission: Option<crate::admission::Admission>) -> Response {
        if self.admissions.open() {
            return Response::Hello { admission: self.cfg.admission.clone() };
        }
        let Some(cert) = admission else {
            self.emit(Event::MessageRejected { from, reason: "not admitted: hello without an admission".into() });
            return Response::Error { message: "not admitted to this cluster: no admission".into() };
        };
        if !self.learn_admission(now, from, &cert) {
            return Response::Error { message: "not admitted to this cluster: the admission does not hold".into() };
        }
        Response::Hello { admission: self.cfg.admission.clone() }
    }

    fn on_blob_chunk(&mut self, f: BlobFetch, resp: Result<Response, crate::codec::CodecError>) {
        let transfer = f.is_transfer();
        match blobs::on_chunk(f, resp) {
            ChunkStep::More(f, offset) => {
                let (peer, hash) = (f.peer, f.hash);
                self.send(peer, &Request::GetBlob { hash, offset }, Pending::Blob(f));
            }
            ChunkStep::Complete(f) => {
                if transfer {
                    self.transfer_done();
                }
                let (token, hash) = (f.token, f.hash);
                let event = match self.store.put_blob(&hash, &f.buf) {
                    Ok(()) => Event::BlobFetched { token, hash, ok: true, detail: "fetched".into() },
                    Err(e) => Event::BlobFetched { token, hash, ok: false, detail: e.to_string() },
                };
                self.emit(event);
            }
            ChunkStep::NextSource(f, why) => {
                if transfer {
                    self.transfer_done();
                }
                self.next_blob_source(f.token, f.hash, f.rest, why.into())
            }
        }
    }

    pub(super) fn start_sync(&mut self, now: Millis, peer: PeerId) {
        if peer == self.me || self.admissions.admitted_at(&peer, now).is_err() {
            return;
        }
        if let Some(req) = self.sessions.start(&self.store, peer) {
            self.send(peer, &req, Pending::Sync { peer, round: 1 });
        }
    }

    fn sync_failed(&mut self, peer: PeerId, reason: String) {
        self.sessions.failed(&peer);
        self.emit(Event::SyncFailed { peer, reason });
    }

    fn sync_round(&mut self, now: Millis, peer: PeerId, round: u32, ranges: &[sync::SyncRange]) {
        let plan = match self.sessions.round(now, &self.store, peer, round, ranges) {
            Ok(p) => p,
            Err(e) => return self.sync_failed(peer, e.to_string()),
        };
        for ids in plan.fetches {
            self.requests.enqueue(peer, Request::GetRecords { ids: ids.clone() }, Pending::Fetch { peer, ids });
        }
        for records in plan.pushes {
            self.requests.enqueue(peer, Request::PushRecords { records }, Pending::Push);
        }
        self.pump_transfers();
        match plan.next {
            Next::Finished { rounds, need, have, pushed } => {
                self.reconsider(now);
                self.emit(Event::SyncFinished { peer, rounds, need, have, pushed });
            }
            Next::Round { ranges, round } => {
                self.send(peer, &Request::Reconcile { ranges }, Pending::Sync { peer, round });
            }
        }
    }

    /// Fetches a blob this node lacks; `BlobFetched { token }` tells the end.
    pub fn fetch_blob(&mut self, _now: Millis, token: u64, hash: Hash32, hint: Option<PeerId>) {
        if self.store.has_blob(&hash) {
            self.emit(Event::BlobFetched { token, hash, ok: true, detail: "local".into() });
            return;
        }
        let rest = blobs::sources(&hash, hint, self.me, &self.members, self.cfg.log_replicas, &mut self.rng);
        self.next_blob_source(token, hash, rest, "no connected peer has it".into());
    }

    fn next_blob_source(&mut self, token: u64, hash: Hash32, mut rest: Vec<PeerId>, why: String) {
        if rest.is_empty() {
            self.emit(Event::BlobFetched { token, hash, ok: false, detail: why });
            return;
        }
        let peer = rest.remove(0);
        let f = BlobFetch { token, hash, rest, peer, buf: Vec::new() };
        self.send(peer, &Request::GetBlob { hash, offset: 0 }, Pending::Blob(f));
    }

    /// Keeps a copy of each log of a new result when this node is among the
    /// `log_replicas` live nodes ranking highest for the log's hash.
    pub(super) fn replicate_logs(&mut self, now: Millis, r: &BuildResult, signer: PeerId) {
        // A node catching up has heard of too few peers to know whether it
        // is among a log's keepers; old logs stay with those who have them.
        if self.cfg.log_replicas == 0 || signer == self.me || !self.caught_up(now) {
            return;
        }
        if let Some(h) = self.cfg.log_horizon_ms {
            if r.ended_ms + h < now {
                return;
            }
        }
        for step in &r.steps {
            let Some(blob) = &step.log else { continue };
            if self.store.has_blob(&blob.hash) {
                continue;
            }
            let keeper =
                among_keepers(&blob.hash, self.members.my_key(), self.members.live_keys(), self.cfg.log_replicas);
            if keeper {
                self.next_replication += 1;
                let token = REPLICATION_TOKEN | self.next_replication;
                let f = BlobFetch { token, hash: blob.hash, rest: vec![], peer: signer, buf: Vec::new() };
                self.requests.enqueue(signer, Request::GetBlob { hash: blob.hash, offset: 0 }, Pending::Blob(f));
            }
        }
        self.pump_transfers();
    }

    /// Drops the logs of results older than the horizon, a batch at a time.
    pub(super) fn expire_logs(&mut self, now: Millis) {
        let Some(h) = self.cfg.log_horizon_ms else { return };
        let swept = retention::expire_logs(&mut self.store, now, h);
        if let Some(e) = swept.cursor_error {
            self.storage_failed(now, &e.to_string());
        }
        if swept.blobs_dropped > 0 {
            self.emit(Event::LogsExpired { blobs: swept.blobs_dropped });
        }
        if swept.more {
            self.timers.set(Timer::Retention, now);
        }
    }
}
