//! What the past holds lives in the store: the job table keeps only the
//! jobs still to be decided, and settled jobs are answered from the
//! store's lookups, before and after a restart.

mod harness;

use harness::{commit, Net};
use peerbot_protocol::core::{JobState, JobStatus};
use peerbot_protocol::ids::Hash32;
use peerbot_protocol::recipe::job_id;
use peerbot_protocol::store::Store;
use peerbot_protocol::wire::{encode_gossip, Claim, Gossip};
use peerbot_protocol::Input;

fn linux_job(n: u64) -> Hash32 {
    job_id("/repo", &commit(n).commit, "linux")
}

/// A cluster that has built `n` commits, each once.
fn built(n: u64) -> (Net, Vec<Hash32>) {
    let mut net = Net::new(3);
    net.run_for(15_000).unwrap();
    for c in 0..n {
        net.announce((c % 3) as usize, commit(c));
        net.run_for(200).unwrap();
    }
    let jobs: Vec<Hash32> = (0..n).map(linux_job).collect();
    net.run_until("every job built everywhere", 600_000, |net| {
        jobs.iter().all(|j| (0..3).all(|i| !net.node(i).results_of(j).is_empty()))
    })
    .unwrap();
    net.run_for(1_000).unwrap();
    (net, jobs)
}

#[test]
fn settled_jobs_leave_the_table_and_are_answered_from_the_store() {
    let (net, jobs) = built(40);
    for i in 0..3 {
        let core = net.node(i);
        assert!(core.live_jobs().is_empty(), "node {i} keeps only jobs still to be decided");
        for j in &jobs {
            assert_eq!(core.job_state(j), JobState::Done);
            assert_eq!(core.job_status(j), JobStatus::Done);
            let view = core.job(j).expect("a settled job is read from the store");
            assert_eq!(view.spec.builder, "linux");
            assert_eq!(view.spec.id, *j);
            assert!(view.claim.is_none());
            assert_eq!(core.result_statuses(j).len(), 1);
            assert_eq!(core.find_job(&j.to_hex()[..10]), Ok(*j));
        }
        assert!(core.findings().is_empty(), "each job was built once");
    }
}

#[test]
fn a_restarted_node_reads_its_history_from_the_store_not_into_the_table() {
    let (mut net, jobs) = built(20);
    net.crash(1);
    net.restart(1);
    net.run_for(1_000).unwrap();
    let core = net.node(1);
    assert!(core.live_jobs().is_empty());
    for j in &jobs {
        assert_eq!(core.job_state(j), JobState::Done);
        assert_eq!(core.results_of(j).len(), 1);
    }
    // The commit is known: announcing it again makes no new change.
    let before = core.store().record_count();
    net.act(1, |c, now| {
        let known = c.announce(now, commit(3)).unwrap();
        assert!(matches!(known, peerbot_protocol::core::Announced::Known(_)), "{known:?}");
    });
    assert_eq!(net.node(1).store().record_count(), before);
}

#[test]
fn a_late_claim_for_a_settled_job_is_stale_and_opens_nothing() {
    let (mut net, jobs) = built(5);
    let late = Claim { job: jobs[0], attempt: 0, lease_ms: 30_000, sent_ms: net.now() };
    let from = net.peer(2);
    net.act(0, |c, now| {
        c.handle(now, Input::Gossip { from, token: 1, bytes: encode_gossip(&Gossip::Claim(late)) });
        assert_eq!(c.job_state(&jobs[0]), JobState::Done);
        assert!(!c.live_jobs().contains_key(&jobs[0]), "no claim brings a built job back");
    });
}

#[test]
fn a_settled_job_keeps_the_attempts_this_node_saw_lost() {
    let plan = harness::BuildPlan { duration_ms: 20_000, ..Default::default() };
    let mut net = Net::builder(3).builds(Some(plan)).start();
    net.run_for(15_000).unwrap();
    net.announce(0, commit(1));
    let job = linux_job(1);
    net.run_until("the job claimed", 60_000, |net| !net.started().is_empty()).unwrap();
    let holder = net.started()[0].1;
    net.crash(holder);
    net.run_until("built by another node", 600_000, |net| {
        (0..3).filter(|i| *i != holder).all(|i| !net.node(i).results_of(&job).is_empty())
    })
    .unwrap();
    for i in (0..3).filter(|i| *i != holder) {
        let core = net.node(i);
        assert!(!core.live_jobs().contains_key(&job));
        let lost = core.job(&job).unwrap().lost;
        assert!(lost.iter().any(|l| l.attempt == 0 && l.holder == net.peer(holder)), "node {i}: {lost:?}");
    }
}
