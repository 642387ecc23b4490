//! The simulation engine: one event queue, one RNG, many `NodeCore`s.
//!
//! `Sim` is the composition; each part of its state belongs to one module:
//!
//! - `events`: the event queue, the virtual clock and the random delays;
//! - `nodes`: the node adapter (boot, inputs, outputs, requests and replies);
//! - `network`: the mesh, links, waves of gossip, partitions, traffic;
//! - `workload`: commits, recipes, jobs and simulated builds;
//! - `faults`: crashes, outages, partitions, forgeries, skew and slow nodes;
//! - `invariants`: the checks and `Violation`;
//! - `report`: what nodes report while running, and the `Report`;
//! - `trace`: the trace hash and the recent lines.
//!
//! Each module's `impl Sim` block handles the events of its concern; `step`
//! below routes each event to one of them. Every random draw goes through
//! `Sim::rng` in event order, so the order of draws is part of the replay
//! format: a change that moves one changes the trace hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::PeerId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::SimConfig;

mod byzantine;
mod events;
mod faults;
mod invariants;
mod network;
mod nodes;
mod report;
mod scheduled;
mod trace;
pub(crate) mod workload;

use events::{Ev, EventQueue};
use faults::Faults;
pub use invariants::Violation;
use network::Network;
use nodes::{SharedVerify, SimNode};
use report::Observed;
pub use report::{FailoverFigure, Report};
use trace::Trace;
use workload::Workload;

pub struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    /// Events taken off the queue so far.
    events: u64,
    queue: EventQueue,
    nodes: Vec<SimNode>,
    by_peer: HashMap<PeerId, usize>,
    verifier: Arc<SharedVerify>,
    network: Network,
    workload: Workload,
    faults: Faults,
    observed: Observed,
    trace: Trace,
    pending_violation: Option<Box<Violation>>,
    /// The cluster went quiet after the faults: the run is over.
    quiet: bool,
    /// When a node last stored a record it did not have: the settling
    /// phase lasts while the cluster still gets somewhere.
    progress_at: u64,
    /// With hostile nodes, the cluster's key and each node's admission.
    cluster: Option<(peerbot_protocol::admission::ClusterId, Vec<peerbot_protocol::admission::Admission>)>,
}

/// However much progress it makes, a run settles for at most this long
/// (or `--settle`, if longer) after `--duration`.
const SETTLE_CAP_MS: u64 = 24 * 3_600_000;

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        // The order of these draws is part of the replay format.
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let nodes = nodes::make_nodes(&cfg, &mut rng);
        let network = Network::new(&cfg, &mut rng);
        let by_peer = nodes.iter().enumerate().map(|(i, n)| (n.peer, i)).collect();
        // No draw from `rng`: runs without hostile nodes replay as before.
        let cluster = (cfg.byzantine > 0).then(|| {
            let peers: Vec<_> = nodes.iter().map(|n| (n.peer, n.labels.clone())).collect();
            let (key, certs) = byzantine::admissions(cfg.seed, &peers);
            (key.id(), certs)
        });
        let mut sim = Sim {
            workload: Workload::new(&cfg),
            cfg,
            rng,
            now: 0,
            events: 0,
            queue: EventQueue::default(),
            nodes,
            by_peer,
            verifier: Arc::new(SharedVerify::default()),
            network,
            faults: Faults::default(),
            observed: Observed::default(),
            trace: Trace::new(),
            pending_violation: None,
            quiet: false,
            progress_at: 0,
            cluster,
        };
        sim.boot_all();
        sim.schedule_first_commit();
        sim.schedule_faults();
        sim.schedule_byzantine();
        sim
    }

    /// Runs to the end and checks every invariant.
    pub fn run(mut self) -> Result<Report, Box<Violation>> {
        let wall = Instant::now();
        let end_faults = self.cfg.duration_ms;
        let mut end = self.settle_end();
        while let Some((at, ev)) = self.queue.pop() {
            end = self.settle_end();
            if at > end {
                break;
            }
            if !self.faults.over() && at >= end_faults {
                self.end_faults();
            }
            self.now = at;
            self.events += 1;
            self.step(ev);
            if let Some(v) = self.pending_violation.take() {
                return Err(v);
            }
            if self.quiet {
                break;
            }
        }
        if !self.quiet {
            self.now = end;
        }
        if !self.faults.over() {
            self.end_faults();
        }
        self.finish(wall)
    }

    /// Settling ends `--settle` after `--duration` or after the last
    /// progress, whichever is later: a cluster still building its queue is
    /// given the time, one that is stuck fails the final checks.
    fn settle_end(&self) -> u64 {
        let cap = self.cfg.duration_ms + self.cfg.settle_ms.max(SETTLE_CAP_MS);
        (self.cfg.duration_ms.max(self.progress_at) + self.cfg.settle_ms).min(cap)
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Tick { node, incarnation } => self.on_tick(node, incarnation),
            Ev::Wave { wave } => self.on_wave(wave),
            Ev::Request { to, caller, bytes } => self.on_request(to, caller, bytes),
            Ev::Response { caller, bytes } => self.on_response(caller, bytes),
            Ev::RequestFailed { caller } => self.on_request_failed(caller),
            Ev::BuildDone { node, incarnation, job, attempt, cancelled } => {
                self.on_build_done(node, incarnation, job, attempt, cancelled)
            }
            Ev::Commit => self.on_commit(),
            Ev::Crash { node } => self.crash(node),
            Ev::Outage { node, dur } => self.on_outage(node, dur),
            Ev::Restart { node } => self.on_restart(node),
            Ev::RandomCrash => self.on_random_crash(),
            Ev::PartitionStart { dur, fraction } => self.on_partition_start(dur, fraction),
            Ev::PartitionEnd => self.on_partition_end(),
            Ev::RandomPartition => self.on_random_partition(),
            Ev::ConvergenceCheck => self.convergence_check(),
            Ev::QuietCheck => self.on_quiet_check(),
            Ev::Forge => self.on_forge(),
            Ev::Byzantine => self.on_byzantine(),
        }
    }

    /// The final checks run even if the cluster never went quiet: a cluster
    /// that does not settle shows up as a violation.
    fn finish(&self, wall: Instant) -> Result<Report, Box<Violation>> {
        let live = self.live_nodes();
        let left = self.check_final(&live)?;
        Ok(self.figures(wall, &live, left))
    }

    fn note(&mut self, node: usize, job: Option<Hash32>, what: &'static str, other: u64) {
        self.trace.note(self.now, node, job, what, other);
    }
}
