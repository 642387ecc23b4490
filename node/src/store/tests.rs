use super::*;
use peerbot_protocol::record::{sign, BuildResult, Change, Status};
use peerbot_protocol::{deterministic_key, Body};

const RECIPE: &str = "[[builder]]\nname='linux'\n[[builder.step]]\nrun='make'\n";

fn change(commit: &str) -> VerifiedRecord {
    let jobs = peerbot_protocol::recipe::parse_recipe("/repo", commit, RECIPE).unwrap();
    let c = Change {
        repo: "/repo".into(),
        branch: "main".into(),
        commit: commit.into(),
        jobs,
        announced_ms: 1_000,
        ..Default::default()
    };
    sign(&deterministic_key(1), &Body::Change(c))
}

fn result(job: Hash32, attempt: u32) -> VerifiedRecord {
    sign(&deterministic_key(2), &Body::Result(result_body(job, attempt)))
}

fn result_body(job: Hash32, attempt: u32) -> BuildResult {
    BuildResult {
        job,
        repo: "/repo".into(),
        branch: "main".into(),
        commit: "abcd01".into(),
        builder: "linux".into(),
        attempt,
        labels: vec![],
        started_ms: 2_000,
        ended_ms: 3_000 + attempt as u64,
        status: Status::Success,
        steps: vec![],
        metrics: Default::default(),
        failed_step: None,
        error: None,
        author: String::new(),
        title: String::new(),
        node_name: String::new(),
    }
}

#[test]
fn the_summaries_are_saved_with_their_arrival_position_and_an_open_adds_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
    let first = change("abcd01");
    s.put_records(&[first.clone(), change("abcd02"), result(job, 0)]).unwrap();
    s.close().unwrap();
    // Stored after the close, then the process dies.
    let last = result(job, 1);
    s.put_record(&last).unwrap();
    let whole = s.summary(&SyncKey::MIN, None);
    assert_eq!(s.arrivals(), 4);
    // A key taken out of the order behind the store's back: an open that
    // scanned the order would miss it, one that reads the saved summaries
    // and the arrivals after them does not.
    s.db.delete_cf(s.cf(CF_ORDER), order_key(&SyncKey { time: first.time(), id: first.id })).unwrap();
    drop(s);
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!((s.record_count(), s.summary(&SyncKey::MIN, None)), (4, whole));
    assert_eq!(s.arrivals(), 4);
    assert_eq!(s.arrived_after(3, 10), vec![(4, last.id)]);
    assert_eq!(s.arrived_after(0, 2).len(), 2);
    assert!(s.arrived_after(4, 10).is_empty());
}

#[test]
fn a_schema_2_database_gets_its_records_numbered_in_arrival_order_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
    let recs = [change("abcd01"), result(job, 0), change("abcd02")];
    {
        let mut s = RocksStore::open(dir.path()).unwrap();
        s.put_records(&recs).unwrap();
        // As a schema 2 node left it: no arrival positions.
        for n in 1..=3u64 {
            s.db.delete_cf(s.cf(CF_ARRIVALS), arrival_key(n)).unwrap();
        }
        s.db.put_cf(s.cf(CF_META), b"schema", b"2").unwrap();
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.arrivals(), 3);
    let mut by_time: Vec<_> = recs.iter().map(|r| (r.time(), r.id)).collect();
    by_time.sort();
    let numbered: Vec<_> = s.arrived_after(0, 10).into_iter().map(|(_, id)| id).collect();
    assert_eq!(numbered, by_time.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
    assert_eq!(s.db.get_cf(s.cf(CF_META), b"schema").unwrap().as_deref(), Some(SCHEMA_VERSION));
}

#[test]
fn records_file_their_lookups_in_the_write_that_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let c = change("abcd01");
    let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
    s.put_record(&c).unwrap();
    s.put_records(&[result(job, 0), result(job, 1)]).unwrap();
    assert_eq!(s.change_for_job(&job), Some(c.id));
    assert_eq!(s.change_for_commit("/repo", "abcd01"), Some(c.id));
    assert_eq!(s.change_for_commit("/repo", "abcd02"), None);
    assert_eq!(s.results_for_job(&job).len(), 2);
    assert_eq!(s.lookup_prefix(Lookup::JobChange, &job.0[..3], 10), vec![(job, c.id)]);
    assert!(s.superseded_by(&job).is_none());
}

#[test]
fn a_schema_1_database_gets_its_lookups_filed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
    {
        let mut s = RocksStore::open(dir.path()).unwrap();
        s.put_record(&change("abcd01")).unwrap();
        s.put_record(&result(job, 0)).unwrap();
        // As a schema 1 node left it: no lookups.
        let all: Vec<_> = s.lookups_from(Lookup::JobChange, &[], 100);
        assert_eq!(all.len(), 1);
        for l in [Lookup::JobChange, Lookup::JobResult, Lookup::CommitChange] {
            for (k, v) in s.lookups_from(l, &[], 100) {
                s.db.delete_cf(s.cf(CF_LOOKUPS), lookup_key(l, &k, &v)).unwrap();
            }
        }
        s.db.put_cf(s.cf(CF_META), b"schema", b"1").unwrap();
        assert!(s.change_for_job(&job).is_none());
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert!(s.change_for_job(&job).is_some());
    assert_eq!(s.results_for_job(&job).len(), 1);
    assert!(s.change_for_commit("/repo", "abcd01").is_some());
    assert_eq!(s.db.get_cf(s.cf(CF_META), b"schema").unwrap().as_deref(), Some(SCHEMA_VERSION));
}

/// Results and changes over three repos, two branches, three builders,
/// every status, two signers and shared times (ties broken by id).
fn mixed() -> Vec<VerifiedRecord> {
    let statuses = [Status::Success, Status::Warnings, Status::Failure, Status::Exception, Status::Cancelled];
    let mut out = Vec::new();
    for i in 0..240u64 {
        let repo = format!("/repo{}", i % 3);
        let branch = if i % 4 == 0 { "dev" } else { "main" };
        let commit = format!("{:02x}{:038x}", (i % 7) * 17, i / 2);
        let r = BuildResult {
            repo: repo.clone(),
            branch: branch.into(),
            commit: if i % 11 == 0 { commit.to_ascii_uppercase() } else { commit.clone() },
            builder: ["linux", "mac", "win"][(i % 5 % 3) as usize].into(),
            started_ms: 0,
            ended_ms: 1_000 + i / 3,
            status: statuses[(i % 5) as usize],
            ..result_body(Hash32(*blake3::hash(&i.to_be_bytes()).as_bytes()), 0)
        };
        out.push(sign(&deterministic_key(1 + i % 2), &Body::Result(r)));
        if i % 2 == 0 {
            let c = Change { repo, branch: branch.into(), commit, announced_ms: 900 + i / 4, ..Default::default() };
            out.push(sign(&deterministic_key(3), &Body::Change(c)));
        }
    }
    out
}

fn filters() -> Vec<Filter> {
    let signer = deterministic_key(2).public().to_peer_id();
    let s = |x: &str| Some(x.to_string());
    vec![
        Filter::default(),
        Filter { repo: s("/repo1"), ..Default::default() },
        Filter { repo: s("/repo2"), branch: s("dev"), ..Default::default() },
        Filter { branch: s("dev"), ..Default::default() },
        Filter { builder: s("mac"), ..Default::default() },
        Filter { builder: s("nomatch"), ..Default::default() },
        Filter { status: Some(Status::Failure), ..Default::default() },
        Filter { signer: Some(signer), ..Default::default() },
        Filter { commit: s("22"), ..Default::default() },
        Filter { commit: s("3300000000000000000000000000000000000000"), ..Default::default() },
        Filter { commit: s("11000000000000000000000000000000000000001"), ..Default::default() },
        Filter { commit: s("4"), builder: s("win"), ..Default::default() },
        Filter { repo: s("/repo0"), builder: s("linux"), status: Some(Status::Success), ..Default::default() },
        Filter { repo: s("/repo1"), branch: s("main"), commit: s("00"), signer: Some(signer), ..Default::default() },
    ]
}

/// What the API answered before the indexes: every record of the kind,
/// newest first, checked one by one.
fn scan(s: &RocksStore, kind: Kind, f: &Filter) -> Vec<Hash32> {
    let cf = if kind == Kind::Results { CF_RESULTS } else { CF_CHANGES };
    s.newest(cf, usize::MAX, &mut |r| f.matches(r)).iter().map(|r| r.id).collect()
}

/// Every page of a query, following `next`.
fn paged(s: &RocksStore, kind: Kind, f: &Filter, limit: usize) -> Vec<Hash32> {
    let (mut out, mut before) = (Vec::new(), None);
    loop {
        let page = s.query(kind, f, before, limit, 1_000_000);
        assert!(page.records.len() <= limit);
        out.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(k) => before = Some(k),
            None => return out,
        }
    }
}

fn check_against_scan(s: &RocksStore) {
    for kind in [Kind::Results, Kind::Changes] {
        for f in filters() {
            let want = scan(s, kind, &f);
            let got = s.query(kind, &f, None, 1000, 1_000_000).records.iter().map(|r| r.id).collect::<Vec<_>>();
            assert_eq!(got, want, "{kind:?} {f:?}");
            for limit in [1, 7, 50] {
                assert_eq!(paged(s, kind, &f, limit), want, "{kind:?} {f:?} by {limit}");
            }
            // A page before the n-th match holds the matches after it.
            if want.len() > 3 {
                let rec = s.record(&want[2]).unwrap();
                let page = s.query(kind, &f, Some(SyncKey { time: rec.time(), id: rec.id }), 1000, 1_000_000);
                assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), want[3..].to_vec());
            }
        }
    }
}

#[test]
fn indexed_queries_answer_what_a_scan_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let recs = mixed();
    // Both write paths file the indexes.
    s.put_records_bulk(&recs[..150]).unwrap();
    for r in &recs[150..] {
        s.put_record(r).unwrap();
    }
    assert!(!scan(&s, Kind::Results, &filters()[11]).is_empty());
    check_against_scan(&s);
}

#[test]
fn a_query_stops_at_its_budget_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(dir.path()).unwrap();
    s.put_records_bulk(&mixed()).unwrap();
    let f = Filter { branch: Some("dev".into()), builder: Some("win".into()), ..Default::default() };
    let want = scan(&s, Kind::Results, &f);
    let (mut got, mut before, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = s.query(Kind::Results, &f, before, 1000, 10);
        got.extend(page.records.iter().map(|r| r.id));
        pages += 1;
        let Some(k) = page.next else { break };
        before = Some(k);
    }
    assert_eq!(got, want);
    assert!(pages > 3);
}

#[test]
fn a_store_without_indexes_rebuilds_them_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RocksStore::open(dir.path()).unwrap();
        s.put_records_bulk(&mixed()).unwrap();
        // As a node from before the indexes left it.
        for cf in INDEX_CFS {
            s.db.delete_range_cf(s.cf(cf), b"".as_slice(), [0xffu8; 256].as_slice()).unwrap();
        }
        s.db.delete_cf(s.cf(CF_META), INDEX_VERSION_KEY).unwrap();
        let f = Filter { builder: Some("mac".into()), ..Default::default() };
        assert!(s.query(Kind::Results, &f, None, 10, 1000).records.is_empty());
    }
    let s = RocksStore::open(dir.path()).unwrap();
    check_against_scan(&s);
    assert_eq!(s.db.get_cf(s.cf(CF_META), INDEX_VERSION_KEY).unwrap().as_deref(), Some(INDEX_VERSION));
    drop(s);
    // And `peerbot reindex` rebuilds current ones to the same answers.
    let (s, n) = RocksStore::open_reindexed(dir.path()).unwrap();
    assert_eq!(n, mixed().len() as u64);
    check_against_scan(&s);
}

fn cancel(job: Hash32, at: u64) -> VerifiedRecord {
    let k = peerbot_protocol::record::Cancel { job, reason: "no".into(), requested_ms: at };
    sign(&deterministic_key(1), &Body::Cancel(k))
}

fn result_at(job: Hash32, attempt: u32, at: u64) -> VerifiedRecord {
    sign(&deterministic_key(2), &Body::Result(BuildResult { ended_ms: at, ..result_body(job, attempt) }))
}

/// Jobs of a finished state, every page of `limit` followed.
fn finished(s: &RocksStore, state: Finished, limit: usize, budget: usize) -> Vec<Hash32> {
    let (mut out, mut before) = (Vec::new(), None);
    loop {
        let page = s.finished_jobs(state, before, limit, budget);
        assert!(page.jobs.len() <= limit);
        out.extend(page.jobs);
        match page.next {
            Some(p) => before = Some(p),
            None => return out,
        }
    }
}

#[test]
fn finished_jobs_are_listed_once_in_the_state_the_core_gives_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let job = |i: u32| peerbot_protocol::recipe::job_id("/repo", &format!("abcd{i:02}"), "linux");
    for i in 1..=6 {
        s.put_record(&change(&format!("abcd{i:02}"))).unwrap();
    }
    // 1 built once; 2 built twice (listed at its first result); 3
    // cancelled; 4 cancelled, then built all the same (done wins); 5
    // superseded by 6, still open; 7 built, its change not stored here.
    s.put_records(&[
        result_at(job(1), 0, 5_000),
        result_at(job(2), 0, 4_000),
        result_at(job(2), 1, 9_000),
        cancel(job(3), 6_000),
        cancel(job(4), 3_000),
    ])
    .unwrap();
    s.put_record(&result_at(job(4), 0, 7_000)).unwrap();
    s.put_record(&result_at(job(7), 0, 8_000)).unwrap();
    s.put_lookup(Lookup::Superseded, &job(5), &job(6)).unwrap();

    let check = |s: &RocksStore| {
        for (limit, budget) in [(1000, 1000), (1, 1000), (2, 1), (1, 1)] {
            assert_eq!(finished(s, Finished::Done, limit, budget), vec![job(4), job(1), job(2)]);
            assert_eq!(finished(s, Finished::Cancelled, limit, budget), vec![job(3)]);
            assert_eq!(finished(s, Finished::Superseded, limit, budget), vec![job(5)]);
        }
        // A page before a job holds the jobs listed after it.
        let at = s.job_position(Finished::Done, &job(1)).unwrap();
        assert_eq!(s.finished_jobs(Finished::Done, Some(at), 10, 10).jobs, vec![job(2)]);
        assert!(s.job_position(Finished::Cancelled, &job(4)).is_none(), "job 4 is done");
        assert!(s.job_position(Finished::Done, &job(6)).is_none(), "job 6 is open");
        // Two results and one cancel filed entries besides the listed ones.
        assert_eq!(s.job_entries(Finished::Done).len(), 5);
        assert_eq!(s.job_entries(Finished::Cancelled).len(), 2);
    };
    check(&s);
    drop(s);
    // Rebuilt from the records and the lookups, to the same lists.
    let (s, _) = RocksStore::open_reindexed(dir.path()).unwrap();
    check(&s);
}

#[test]
fn a_batch_of_ids_is_answered_in_order_from_the_memtable_and_from_tables_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let (a, b, c) = (change("abcd01"), change("abcd02"), change("abcd03"));
    s.put_records(&[a.clone()]).unwrap();
    // `a` into a table file with its bloom filter, `b` in the memtable.
    s.db.flush_cf(s.cf(CF_RECORDS)).unwrap();
    s.put_records(&[b.clone()]).unwrap();
    let ids = [c.id, a.id, b.id, c.id, a.id];
    assert_eq!(s.has_records(&ids), [false, true, true, false, true]);
    assert_eq!(s.has_records(&[]), Vec::<bool>::new());
}

#[test]
fn lookups_are_found_by_whole_and_short_prefixes_in_tables_and_the_memtable() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = RocksStore::open(dir.path()).unwrap();
    let jobs: Vec<Hash32> =
        (0..40).map(|i| peerbot_protocol::recipe::job_id("/repo", &format!("ab{i:04}"), "linux")).collect();
    // Half the results in table files (with the prefix bloom filters), the
    // rest in the memtable; jobs 0 and 1 have two results each.
    for (i, job) in jobs.iter().enumerate().take(20) {
        s.put_records(&[result(*job, 0)]).unwrap();
        if i < 2 {
            s.put_records(&[result(*job, 1)]).unwrap();
        }
    }
    s.db.flush_cf(s.cf(CF_LOOKUPS)).unwrap();
    for job in &jobs[20..30] {
        s.put_records(&[result(*job, 0)]).unwrap();
    }
    for (i, job) in jobs.iter().enumerate() {
        let want = match i {
            0 | 1 => 2,
            2..30 => 1,
            _ => 0,
        };
        assert_eq!(s.results_for_job(job).len(), want, "job {i}");
    }
    // A short prefix reads in key order across both, and stops at its end.
    let all = s.lookups_from(Lookup::JobResult, &[], 100);
    assert_eq!(all.len(), 32);
    assert!(all.windows(2).all(|w| w[0] <= w[1]), "in key order");
    let first = jobs[5].0[..1].to_vec();
    let by_byte = s.lookups_from(Lookup::JobResult, &first, 100);
    assert!(!by_byte.is_empty() && by_byte.iter().all(|(k, _)| k.0[0] == first[0]));
    assert_eq!(by_byte.len(), all.iter().filter(|(k, _)| k.0[0] == first[0]).count());
}

#[test]
fn a_cached_lookup_is_dropped_when_any_clone_of_the_store_files_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(dir.path()).unwrap();
    let mut writer = s.clone();
    let job = peerbot_protocol::recipe::job_id("/repo", "abcd01", "linux");
    let other = peerbot_protocol::recipe::job_id("/repo", "abcd02", "linux");
    // Asked before anything is filed: empty answers are cached too.
    assert_eq!(s.change_for_job(&job), None);
    assert!(s.results_for_job(&job).is_empty());
    assert_eq!(s.superseded_by(&job), None);
    let c = change("abcd01");
    writer.put_record(&c).unwrap();
    assert_eq!(s.change_for_job(&job), Some(c.id));
    assert_eq!(s.change_for_commit("/repo", "abcd01"), Some(c.id));
    writer.put_records(&[result(job, 0)]).unwrap();
    assert_eq!(s.results_for_job(&job).len(), 1);
    writer.put_lookup(Lookup::Superseded, &job, &other).unwrap();
    assert_eq!(s.superseded_by(&job), Some(other));
    // More ids than a cached entry holds: every limit gives the first in
    // id order, as the database does.
    let many: Vec<_> = (1..70).map(|a| result(job, a)).collect();
    writer.put_records(&many).unwrap();
    let all = s.lookup(Lookup::JobResult, &job, 1000);
    assert_eq!(all.len(), 70);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(s.lookup(Lookup::JobResult, &job, 64), all[..64]);
    assert_eq!(s.lookup(Lookup::JobResult, &job, 1), all[..1]);
    assert_eq!(s.results_for_job(&job), all[..64]);
    // A cached record is the stored one.
    for id in [c.id, all[0]] {
        let stored = decode_stored(&s.get_record(&id).unwrap()).unwrap();
        for _ in 0..2 {
            let r = s.record(&id).unwrap();
            assert_eq!((r.id, &r.bytes, r.signer), (stored.id, &stored.bytes, stored.signer));
        }
    }
    assert!(s.record(&Hash32([7; 32])).is_none());
}
