//! Starting from a checkpoint reads only what decides the future and what
//! arrived after it, and ends in the state reading the whole history gives.

use super::claiming::QUEUE;
use super::*;

fn restart(n: u64, store: MemStore, now: Millis) -> NodeCore<MemStore> {
    let mut cfg = Config::new(vec!["os=linux".to_string()], 1);
    cfg.seed = n;
    cfg.repos = local_repo_allowed();
    NodeCore::new(cfg, deterministic_key(n), store, now)
}

fn open_jobs(n: &NodeCore<MemStore>) -> Vec<(Hash32, u32, Vec<String>)> {
    let mut v: Vec<_> = n
        .live_jobs()
        .values()
        .map(|j| (j.spec.id, j.attempt, j.lost.iter().map(|l| l.reason.clone()).collect()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_clean_stop_starts_again_from_its_checkpoint_in_the_state_the_history_gives() {
    let mut nodes = vec![node(1, &["os=linux"])];
    settle(&mut nodes, 0);
    let mut t = 10_000;
    // Twelve commits, ten of them built, two waiting.
    for i in 0..12 {
        nodes[0].announce(t, commit_with(&format!("dd{i:02}"), i, QUEUE)).unwrap();
        t += 100;
    }
    let mut built = 0;
    while built < 10 && t < 200_000 {
        for (_, order) in settle(&mut nodes, t) {
            nodes[0].handle(t, Input::BuildFinished(finished(&order, t)));
            built += 1;
        }
        t += 500;
    }
    let why: Vec<_> = nodes[0].live_jobs().keys().map(|id| nodes[0].waiting_reason(t, id)).collect();
    assert_eq!(built, 10, "{why:?}");
    let n = &mut nodes[0];
    n.handle(t, Input::Tick);
    let open = open_jobs(n);
    assert_eq!(open.len(), 2, "{open:?}");
    let history = n.store().record_count();
    n.checkpoint().unwrap();
    let store = n.store().clone();
    assert!(store.get_state(CHECKPOINT_KEY).is_some());

    let fast = restart(1, store.clone(), t + 1);
    assert_eq!(fast.startup(), Startup { from_checkpoint: true, records_read: 2, after_checkpoint: 0 });
    let mut whole = store.clone();
    whole.delete_state(CHECKPOINT_KEY).unwrap();
    let slow = restart(1, whole, t + 1);
    assert_eq!(slow.startup(), Startup { from_checkpoint: false, records_read: history, after_checkpoint: 0 });
    assert_eq!(open_jobs(&fast), open_jobs(&slow));
    assert_eq!(open_jobs(&fast).iter().map(|j| j.0).collect::<Vec<_>>(), open.iter().map(|j| j.0).collect::<Vec<_>>());
}

/// Builds every job that is offered until `done` results are in.
fn build(nodes: &mut [NodeCore<MemStore>], t: &mut Millis, done: usize) {
    let mut built = 0;
    while built < done && *t < 1_000_000 {
        for (_, order) in settle(nodes, *t) {
            nodes[0].handle(*t, Input::BuildFinished(finished(&order, *t)));
            built += 1;
        }
        *t += 500;
    }
    assert_eq!(built, done);
}

#[test]
fn after_a_crash_the_records_that_arrived_since_the_checkpoint_are_applied_on_top_of_it() {
    let mut nodes = vec![node(1, &["os=linux"])];
    settle(&mut nodes, 0);
    let mut t = 10_000;
    for i in 0..6 {
        nodes[0].announce(t, commit_with(&format!("ee{i:02}"), i, QUEUE)).unwrap();
        t += 100;
    }
    build(&mut nodes, &mut t, 3);
    nodes[0].checkpoint().unwrap();
    let at_checkpoint = nodes[0].store().arrivals();
    // After it: results closing jobs the checkpoint holds open, and changes
    // whose jobs are partly built. Then the node dies without a word.
    for i in 6..10 {
        nodes[0].announce(t, commit_with(&format!("ee{i:02}"), i, QUEUE)).unwrap();
        t += 100;
    }
    build(&mut nodes, &mut t, 5);
    let store = nodes[0].store().clone();
    let since = store.arrivals() - at_checkpoint;
    assert!(since >= 9, "{since} records after the checkpoint");

    let fast = restart(1, store.clone(), t + 1);
    assert!(fast.startup().from_checkpoint);
    assert_eq!(fast.startup().after_checkpoint, since);
    let mut whole = store.clone();
    whole.delete_state(CHECKPOINT_KEY).unwrap();
    let slow = restart(1, whole, t + 1);
    assert!(!slow.startup().from_checkpoint);
    assert_eq!(open_jobs(&fast), open_jobs(&slow));
    assert_eq!(open_jobs(&fast).len(), 2);
}

#[test]
fn the_core_saves_a_checkpoint_on_its_own_while_records_arrive() {
    let mut n = node(1, &["os=linux"]);
    n.handle(0, Input::Tick);
    n.announce(1_000, commit_with("ef01", 1, QUEUE)).unwrap();
    assert!(n.store().get_state(CHECKPOINT_KEY).is_none());
    n.handle(CHECKPOINT_EVERY_MS + 1, Input::Tick);
    let saved = n.store().get_state(CHECKPOINT_KEY).expect("saved by the timer");
    let again = restart(1, n.store().clone(), CHECKPOINT_EVERY_MS + 2);
    assert_eq!(again.startup(), Startup { from_checkpoint: true, records_read: 1, after_checkpoint: 0 });
    // Nothing arrived since: the next interval leaves it as it is.
    n.handle(2 * CHECKPOINT_EVERY_MS + 2, Input::Tick);
    assert_eq!(n.store().get_state(CHECKPOINT_KEY), Some(saved));
}

#[test]
fn a_checkpoint_naming_a_record_the_store_lacks_is_passed_over() {
    let mut n = node(1, &["os=linux"]);
    n.announce(1_000, commit_with("ff01", 1, QUEUE)).unwrap();
    n.checkpoint().unwrap();
    // Another store, with another change in its place, given the same
    // checkpoint.
    let mut m = node(1, &["os=linux"]);
    m.announce(1_000, commit_with("ff02", 2, QUEUE)).unwrap();
    let mut other = m.store().clone();
    other.put_state(CHECKPOINT_KEY, &n.store().get_state(CHECKPOINT_KEY).unwrap()).unwrap();
    let fresh = restart(1, other, 2_000);
    assert!(!fresh.startup().from_checkpoint);
    assert_eq!(open_jobs(&fresh), open_jobs(&m));
}
