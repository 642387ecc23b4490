//! Starting from a clean stop's checkpoint reads only what decides the
//! future, and ends in the state reading the whole history gives.

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
    assert_eq!(fast.startup(), Startup { from_checkpoint: true, records_read: 2 });
    assert!(fast.store().get_state(CHECKPOINT_KEY).is_none(), "taken away at start");
    let mut whole = store.clone();
    whole.delete_state(CHECKPOINT_KEY).unwrap();
    let slow = restart(1, whole, t + 1);
    assert_eq!(slow.startup(), Startup { from_checkpoint: false, records_read: history });
    assert_eq!(open_jobs(&fast), open_jobs(&slow));
    assert_eq!(open_jobs(&fast).iter().map(|j| j.0).collect::<Vec<_>>(), open.iter().map(|j| j.0).collect::<Vec<_>>());
}

#[test]
fn a_record_stored_after_the_checkpoint_spoils_it() {
    let mut n = node(1, &["os=linux"]);
    n.announce(1_000, commit_with("ee01", 1, QUEUE)).unwrap();
    n.checkpoint().unwrap();
    assert!(n.store().get_state(CHECKPOINT_KEY).is_some());
    n.announce(2_000, commit_with("ee02", 2, QUEUE)).unwrap();
    assert!(n.store().get_state(CHECKPOINT_KEY).is_none());
    let again = restart(1, n.store().clone(), 3_000);
    assert!(!again.startup().from_checkpoint);
    assert_eq!(open_jobs(&again).len(), 2);
}

#[test]
fn a_checkpoint_naming_a_record_the_store_lacks_is_passed_over() {
    let mut n = node(1, &["os=linux"]);
    n.announce(1_000, commit_with("ff01", 1, QUEUE)).unwrap();
    n.checkpoint().unwrap();
    // Another store, without that change, given the same checkpoint.
    let mut other = MemStore::new();
    other.put_state(CHECKPOINT_KEY, &n.store().get_state(CHECKPOINT_KEY).unwrap()).unwrap();
    let fresh = restart(1, other, 2_000);
    assert!(!fresh.startup().from_checkpoint);
    assert!(open_jobs(&fresh).is_empty());
}
