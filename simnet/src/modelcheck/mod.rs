//! Exhaustive exploration of the claim and lease rules on a small cluster.
//!
//! Where the simulator draws one schedule per seed, this tries them all,
//! up to a bound: from a warmed-up cluster of real `NodeCore`s that has
//! just heard of a commit, every order of message deliveries against every
//! node's timers, every loss, duplication and crash the budget allows, and
//! every moment a build may end. States are told apart by what the claim
//! rules read (each node's job states, attempts, claims and leases, its
//! running builds and next timer, who it holds live, its record count; the
//! messages in flight; the clock), so two paths to the same state are
//! explored once, and a state is skipped when it was explored with at
//! least as much of every fault budget left. Checked:
//!
//! - in every state, no node runs more builds than it has executors;
//! - every node that sees a conflict names the same winner for it;
//! - from every final state (the horizon reached, nothing in flight,
//!   nothing left to do but crash), once the network is quiet every job is
//!   built on every node, and every node holds the same results.

mod world;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerbot_protocol::core::SignatureCheck;
use peerbot_protocol::Millis;

use self::world::{Action, Budgets, World};

/// How much of the state space to explore.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub nodes: usize,
    pub jobs: usize,
    pub executors: u32,
    /// Messages that may be lost in one run (a lost request fails at its sender).
    pub losses: u32,
    /// Gossip messages that may be delivered twice.
    pub dups: u32,
    /// Deliveries that may overtake the oldest message in flight.
    pub reorders: u32,
    /// Crashes (the store kept); a crashed node restarts at any later step.
    pub crashes: u32,
    /// Delay bounding: `Some(d)` lets the clock move on, or a build end,
    /// while messages are in flight at most `d` times; otherwise what is in
    /// flight is delivered first. `None` tries every such order, which
    /// limits the horizon to about a second; a bound of one or two reaches
    /// horizons past a lease, so that leases run out under faults.
    pub delays: Option<u32>,
    /// Faults and reordering happen within this long after the announce.
    pub horizon_ms: Millis,
    /// How long the quiet spell after the horizon may take.
    pub quiet_ms: Millis,
    /// Stop (incomplete) after this many distinct states.
    pub max_states: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            nodes: 3,
            jobs: 2,
            executors: 1,
            losses: 1,
            dups: 1,
            reorders: 1,
            crashes: 1,
            delays: None,
            horizon_ms: 4_000,
            quiet_ms: 60_000,
            max_states: 50_000_000,
        }
    }
}

#[derive(Debug)]
pub struct Counterexample {
    pub violation: String,
    /// The steps from the announce to the violation.
    pub trail: Vec<String>,
}

#[derive(Debug)]
pub struct Report {
    pub bounds: Bounds,
    /// Distinct states explored.
    pub states: u64,
    /// Steps taken, revisits included.
    pub transitions: u64,
    /// Final states whose quiet spell was checked.
    pub finals: u64,
    /// Of those, the ones reached through a lease that ran out.
    pub finals_after_lease_expiry: u64,
    /// Of those, the ones reached through a loss, a duplicate, a reordering
    /// and a crash (each counts the final states whose path spent at least
    /// one of that budget).
    pub finals_after_loss: u64,
    pub finals_after_dup: u64,
    pub finals_after_reorder: u64,
    pub finals_after_crash: u64,
    pub max_depth: usize,
    /// False if `max_states` cut the exploration short.
    pub complete: bool,
    pub elapsed: Duration,
    pub counterexample: Option<Counterexample>,
}

impl Report {
    pub fn to_text(&self) -> String {
        let b = &self.bounds;
        let delays = b.delays.map(|d| format!(", {d} delayed")).unwrap_or_default();
        let mut s = format!(
            "model: {} nodes x {} executor(s), {} jobs; at most {} lost, {} duplicated, {} reordered, {} crashed{delays}; horizon {} ms\n",
            b.nodes, b.executors, b.jobs, b.losses, b.dups, b.reorders, b.crashes, b.horizon_ms
        );
        s += &format!(
            "explored: {} states, {} transitions, {} final states checked once quiet ({} reached through a lease that ran out), depth {}, in {:.1} s{}\n",
            self.states,
            self.transitions,
            self.finals,
            self.finals_after_lease_expiry,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            if self.complete { "" } else { " (cut short by --max-states)" }
        );
        s += &format!(
            "final states reached through a loss: {}, a duplicate: {}, a reordering: {}, a crash: {}\n",
            self.finals_after_loss, self.finals_after_dup, self.finals_after_reorder, self.finals_after_crash
        );
        match &self.counterexample {
            None => s += "no violation\n",
            Some(c) => {
                s += &format!("VIOLATION: {}\nsteps:\n", c.violation);
                for step in &c.trail {
                    s += &format!("  {step}\n");
                }
            }
        }
        s
    }
}

struct Frame {
    /// The state, until its last step is taken: that step takes it over
    /// instead of a copy, and leaves its description in `told`.
    world: Option<World>,
    told: String,
    actions: Vec<Action>,
    next: usize,
}

impl Frame {
    fn new(world: World, actions: Vec<Action>) -> Frame {
        Frame { world: Some(world), told: String::new(), actions, next: 0 }
    }

    /// The step last taken from this state, as the counterexample tells it.
    fn step(&self) -> String {
        match &self.world {
            Some(w) => format!("t={} {}", w.now, w.describe(&self.actions[self.next - 1])),
            None => self.told.clone(),
        }
    }
}

/// Explores every state within `b`, depth first; stops at the first
/// violation, with the steps that led to it.
pub fn explore(b: &Bounds) -> Report {
    let started = Instant::now();
    let start = World::start(b, Arc::new(SignatureCheck));
    let horizon = start.now + b.horizon_ms;
    let mut report = Report {
        bounds: b.clone(),
        states: 1,
        transitions: 0,
        finals: 0,
        finals_after_lease_expiry: 0,
        finals_after_loss: 0,
        finals_after_dup: 0,
        finals_after_reorder: 0,
        finals_after_crash: 0,
        max_depth: 0,
        complete: true,
        elapsed: Duration::ZERO,
        counterexample: None,
    };
    let mut seen = Seen::default();
    seen.insert(start.fingerprint(), start.budgets());
    let start_trail = start.trail.len();
    let actions = start.actions(horizon);
    let mut stack = vec![Frame::new(start, actions)];
    while let Some(top) = stack.last_mut() {
        if top.next == top.actions.len() {
            stack.pop();
            continue;
        }
        let action = top.actions[top.next].clone();
        top.next += 1;
        let mut w = if top.next == top.actions.len() {
            let w = top.world.take().expect("a state until its last step");
            top.told = format!("t={} {}", w.now, w.describe(&action));
            w
        } else {
            top.world.clone().expect("a state until its last step")
        };
        report.transitions += 1;
        if let Err(why) = catch_unwind(AssertUnwindSafe(|| w.apply(&action))) {
            w.fail(format!("the core panicked: {}", panic_text(&why)));
        }
        if w.violation.is_none() && !seen.insert(w.fingerprint(), w.budgets()) {
            continue;
        }
        report.states += 1;
        report.max_depth = report.max_depth.max(stack.len());
        let actions = if w.violation.is_none() { w.actions(horizon) } else { vec![] };
        // Final: nothing left to do but crash. Whether the budget holds a
        // crash does not decide it, so a state is final or not whatever its
        // budgets, as `Seen` needs; the crashes from it are explored too.
        if w.violation.is_none() && actions.iter().all(|a| matches!(a, Action::Crash(_))) {
            let mut end = w.clone();
            report.finals += 1;
            report.finals_after_lease_expiry += end.lease_expired as u64;
            report.finals_after_loss += (end.losses < b.losses) as u64;
            report.finals_after_dup += (end.dups < b.dups) as u64;
            report.finals_after_reorder += (end.reorders < b.reorders) as u64;
            report.finals_after_crash += (end.crashes < b.crashes) as u64;
            if let Err(why) = catch_unwind(AssertUnwindSafe(|| end.check_quiet(b.quiet_ms))) {
                end.fail(format!("the core panicked once quiet: {}", panic_text(&why)));
            }
            if end.violation.is_some() {
                w = end;
            }
        }
        if let Some(violation) = w.violation.take() {
            // The steps are told from the stack, each by the state it left.
            let mut trail = w.trail[..start_trail].to_vec();
            trail.extend(stack.iter().map(Frame::step));
            trail.extend_from_slice(&w.trail[start_trail..]);
            report.counterexample = Some(Counterexample { violation, trail });
            break;
        }
        if report.states >= b.max_states {
            report.complete = false;
            break;
        }
        if !actions.is_empty() {
            stack.push(Frame::new(w, actions));
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// The states explored: per fingerprint, the budgets it was explored
/// with, none of which covers another.
#[derive(Default)]
struct Seen {
    one: HashMap<u64, Budgets>,
    more: HashMap<u64, Vec<Budgets>>,
}

impl Seen {
    /// False if a state with this fingerprint was explored with budgets
    /// that cover `b`: every step open to this one was open to it, so
    /// whatever this one reaches, it reached.
    fn insert(&mut self, fp: u64, b: Budgets) -> bool {
        let Some(first) = self.one.get_mut(&fp) else {
            self.one.insert(fp, b);
            return true;
        };
        let rest = self.more.get_mut(&fp);
        if first.covers(&b) || rest.as_ref().is_some_and(|r| r.iter().any(|x| x.covers(&b))) {
            return false;
        }
        if b.covers(first) {
            *first = b;
            if let Some(r) = rest {
                r.retain(|x| !b.covers(x));
            }
        } else {
            let r = self.more.entry(fp).or_default();
            r.retain(|x| !b.covers(x));
            r.push(b);
        }
        true
    }
}
