//! Every deadline of the core in one table: the next wake-up is the
//! earliest entry, and a tick handles the entries that are due.

use crate::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Re-read peers' liveness.
    Sweep,
    Heartbeat,
    /// Renew the leases of this node's running builds between heartbeats.
    Renew,
    /// Drop logs past the horizon, a batch at a time.
    Retention,
    /// Reconcile with a random connected peer.
    Sync,
    /// Look for jobs to claim and leases that ran out: the earliest moment
    /// a claim decision can change without new input.
    Claims,
    /// The earliest moment a build of this node's has run past its steps'
    /// timeouts and the grace with no end reported: give it up.
    GiveUp,
    /// Save a checkpoint if records arrived since the last one.
    Checkpoint,
    /// Announce the scheduled builds that are due (`schedule.rs`).
    Schedule,
    /// Announce a bisection's next step that no node announced (`bisect.rs`).
    Bisect,
}

const TIMERS: [Timer; 10] = [
    Timer::Sweep,
    Timer::Heartbeat,
    Timer::Renew,
    Timer::Retention,
    Timer::Sync,
    Timer::Claims,
    Timer::GiveUp,
    Timer::Checkpoint,
    Timer::Schedule,
    Timer::Bisect,
];

#[derive(Debug, Clone)]
pub struct TimerTable {
    at: [Option<Millis>; TIMERS.len()],
}

impl TimerTable {
    pub fn new() -> Self {
        TimerTable { at: [None; TIMERS.len()] }
    }
    pub fn set(&mut self, t: Timer, at: Millis) {
        self.at[t as usize] = Some(at);
    }
    /// Moves a timer earlier, never later.
    pub fn set_earlier(&mut self, t: Timer, at: Millis) {
        let slot = &mut self.at[t as usize];
        *slot = Some(slot.map_or(at, |cur| cur.min(at)));
    }
    pub fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }
    /// Sets the timer, or stops it when there is nothing to wait for.
    pub fn set_or_stop(&mut self, t: Timer, at: Option<Millis>) {
        self.at[t as usize] = at;
    }
    pub fn get(&self, t: Timer) -> Option<Millis> {
        self.at[t as usize]
    }
    pub fn is_due(&self, t: Timer, now: Millis) -> bool {
        self.get(t).is_some_and(|at| now >= at)
    }
    /// The earliest deadline; `Millis::MAX` when none is set.
    pub fn next(&self) -> Millis {
        self.at.iter().flatten().copied().min().unwrap_or(Millis::MAX)
    }
}

impl Default for TimerTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_earliest_set_timer() {
        let mut t = TimerTable::new();
        assert_eq!(t.next(), Millis::MAX);
        t.set(Timer::Heartbeat, 50);
        t.set(Timer::Sync, 20);
        assert_eq!(t.next(), 20);
        t.stop(Timer::Sync);
        assert_eq!(t.next(), 50);
        t.set_earlier(Timer::Heartbeat, 70);
        assert_eq!(t.get(Timer::Heartbeat), Some(50));
        t.set_earlier(Timer::Heartbeat, 10);
        assert!(t.is_due(Timer::Heartbeat, 10) && !t.is_due(Timer::Renew, 10));
    }
}
