//! The node adapter: boots `NodeCore`s, feeds them inputs, routes their outputs.

use super::*;

/// Verifies each distinct record once for the whole simulated cluster. The
/// answer is a function of the bytes, so sharing it changes no outcome;
/// it only saves a thousand nodes from checking one signature a thousand
/// times.
#[derive(Default)]
pub(super) struct SharedVerify {
    pub(super) cache: Mutex<HashMap<Hash32, Result<VerifiedRecord, String>>>,
}

impl Verify for SharedVerify {
    fn verify(&self, bytes: &[u8]) -> Result<VerifiedRecord, RecordError> {
        let key = Hash32::of(bytes);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let r = cache.entry(key).or_insert_with(|| record::verify(bytes).map_err(|e| e.to_string()));
        r.clone().map_err(RecordError::Invalid)
    }
}

pub(super) struct SimNode {
    pub(super) core: Option<NodeCore<MemStore>>,
    pub(super) kept_store: Option<MemStore>,
    pub(super) key: Keypair,
    pub(super) peer: PeerId,
    pub(super) labels: Vec<String>,
    pub(super) skew: i64,
    pub(super) slow: bool,
    pub(super) inc: u32,
    pub(super) timer_at: Option<u64>,
    pub(super) side: u8,
    pub(super) neighbours: Vec<usize>,
    pub(super) inbound: HashMap<u64, (usize, u32, u64)>,
    pub(super) next_inbound: u64,
    pub(super) builds: BTreeMap<(Hash32, u32), bool>,
    pub(super) msgs_sent: u64,
    pub(super) bytes_sent: u64,
}

impl Sim {
    pub(super) fn core_config(&self, i: usize) -> Config {
        let mut c = Config::new(self.nodes[i].labels.clone(), self.cfg.executors);
        c.heartbeat_ms = self.cfg.heartbeat_ms;
        c.cluster_heartbeats_per_sec = self.cfg.cluster_heartbeats_per_sec;
        c.liveness_ms = 3 * self.cfg.heartbeat_ms + 1_000;
        c.warmup_ms = 2 * self.cfg.heartbeat_ms;
        c.claim_stagger_ms = self.cfg.claim_stagger_ms;
        c.lease_ms = self.cfg.lease_ms;
        c.sync_interval_ms = self.cfg.sync_ms;
        c.seed = self.cfg.seed ^ ((i as u64) << 20) ^ ((self.nodes[i].inc as u64) << 40);
        c.log_replicas = self.cfg.log_replicas;
        c
    }

    pub(super) fn boot(&mut self, i: usize) {
        let store = self.nodes[i].kept_store.take().unwrap_or_default();
        let cfg = self.core_config(i);
        let now = self.local(i, self.now);
        let mut core = NodeCore::new(cfg, self.nodes[i].key.clone(), store, now);
        core.set_verifier(self.verifier.clone());
        self.nodes[i].core = Some(core);
        self.nodes[i].timer_at = None;
        self.note(i, None, "boot", self.nodes[i].inc as u64);
        self.drain(i);
    }

    pub(super) fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    pub(super) fn input(&mut self, i: usize, input: Input) {
        let now = self.local(i, self.now);
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.handle(now, input);
            self.drain(i);
        }
    }

    /// Routes a node's outputs into the network model.
    pub(super) fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) else { break };
            match out {
                Output::Broadcast(bytes) => self.broadcast(i, bytes),
                Output::Request { peer, id, bytes } => self.send_request(i, peer, id, bytes),
                Output::Reply { id, bytes } => self.send_reply(i, id, bytes),
                Output::Verdict { .. } => {}
                Output::StartBuild(order) => {
                    if !satisfies(
                        &self.nodes[i].labels,
                        &self.jobs.get(&order.job).map(|j| j.requires.clone()).unwrap_or_default(),
                    ) {
                        self.violation_now(
                            "a job was claimed by a node that lacks a required label",
                            format!("node {i} with {:?} started job {}", self.nodes[i].labels, order.job.to_hex()),
                            Some(order.job),
                            Some(i),
                        );
                    }
                    let running = self.nodes[i].core.as_ref().map(|c| c.running().len()).unwrap_or(0);
                    if running > self.cfg.executors as usize {
                        self.violation_now(
                            "no node runs more builds than its executors",
                            format!("node {i} runs {running} builds with {} executors", self.cfg.executors),
                            Some(order.job),
                            Some(i),
                        );
                    }
                    self.report.builds_started += 1;
                    if let Some(k) =
                        self.crashed_claims.iter().position(|(j, n, at)| *j == order.job && *n != i && *at <= self.now)
                    {
                        self.reclaims.entry(k).or_insert(self.now);
                    }
                    self.note(i, Some(order.job), "build-start", order.attempt as u64);
                    let (lo, hi) = self.cfg.build_ms;
                    let mut d = if hi > lo { self.rng.gen_range(lo..=hi) } else { lo };
                    if self.nodes[i].slow {
                        d = (d as f64 * self.cfg.slow_factor) as u64;
                    }
                    self.nodes[i].builds.insert((order.job, order.attempt), true);
                    self.build_starts.insert((i, order.job, order.attempt), self.now);
                    self.first_build_start.get_or_insert(self.now);
                    let inc = self.nodes[i].inc;
                    self.push(
                        self.now + d,
                        Ev::BuildDone { node: i, inc, job: order.job, attempt: order.attempt, cancelled: false },
                    );
                    if self.crashed_claims.len() < self.cfg.crash_claimants && !self.faults_over {
                        self.crashed_claims.push((order.job, i, self.now + d / 2));
                        self.push(self.now + d / 2, Ev::Crash { node: i });
                    }
                }
                Output::CancelBuild { job, attempt } => {
                    if self.nodes[i].builds.remove(&(job, attempt)).is_some() {
                        self.report.builds_cancelled += 1;
                        self.note(i, Some(job), "build-cancel", attempt as u64);
                        let inc = self.nodes[i].inc;
                        self.push(self.now + 10, Ev::BuildDone { node: i, inc, job, attempt, cancelled: true });
                    }
                }
                Output::Event(e) => self.on_event(i, e),
            }
        }
        self.schedule_tick(i);
    }

    pub(super) fn schedule_tick(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else { return };
        let local_next = core.next_timeout();
        let global = (local_next as i64 - self.nodes[i].skew).max(self.now as i64 + 1) as u64;
        if self.nodes[i].timer_at.is_none_or(|t| global < t) {
            self.nodes[i].timer_at = Some(global);
            let inc = self.nodes[i].inc;
            self.push(global, Ev::Tick { node: i, inc });
        }
    }

    pub(super) fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::RecordStored { id, .. } => {
                let n = self.nodes.len();
                let now = self.now;
                if let Some(t) = self.records.get_mut(&id) {
                    if t.arrivals[i] == u64::MAX {
                        t.arrivals[i] = now;
                    }
                } else if let Some(core) = self.nodes[i].core.as_ref() {
                    // First sight anywhere: learn what it is.
                    let bytes = core.store().get_record(&id).unwrap_or_default();
                    let (is_change, job) = match record::decode_stored(&bytes).map(|r| r.body) {
                        Ok(peerbot_protocol::Body::Change(_)) => (true, None),
                        Ok(peerbot_protocol::Body::Result(r)) => (false, Some(r.job)),
                        Ok(peerbot_protocol::Body::Cancel(_)) | Err(_) => (false, None),
                    };
                    let mut arrivals = vec![u64::MAX; n];
                    arrivals[i] = now;
                    self.records.insert(id, RecordTrack { born: now, is_change, job, arrivals });
                }
                self.note(i, None, "stored", id.prefix_u64());
            }
            Event::RecordRejected { .. } | Event::MessageRejected { .. } => {
                self.report.records_rejected += 1;
                self.note(i, None, "rejected", 0);
            }
            Event::Claimed { job, attempt, by } => {
                if by == self.nodes[i].peer {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.first_claim.get_or_insert(self.now);
                    }
                }
                self.note(i, Some(job), "claimed", attempt as u64);
            }
            Event::ClaimConflict { job, attempt, .. } => {
                if self.conflicts_seen.insert((job, attempt)) {
                    self.report.claim_conflicts += 1;
                }
                self.note(i, Some(job), "conflict", attempt as u64);
            }
            Event::LeaseExpired { job, attempt, .. } => {
                if self.expiries_seen.insert((job, attempt)) {
                    self.report.lease_expiries += 1;
                }
                self.note(i, Some(job), "lease-expired", attempt as u64);
            }
            Event::BuildPublished { job, attempt, record, .. } => {
                if let Some(j) = self.jobs.get_mut(&job) {
                    j.results.push(record);
                }
                self.note(i, Some(job), "published", attempt as u64);
            }
            Event::Released { job, attempt, .. } => self.note(i, Some(job), "released", attempt as u64),
            Event::SyncFinished { need, have, .. } => self.note(i, None, "synced", (need + have) as u64),
            Event::BuildStarted { .. }
            | Event::BlobFetched { .. }
            | Event::SyncFailed { .. }
            | Event::StoreFailed { .. }
            | Event::CatchingUp { .. }
            | Event::PeerAddrs { .. }
            | Event::LogsExpired { .. } => {}
        }
    }
}
