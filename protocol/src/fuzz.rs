//! An in-tree fuzzer for everything a peer, a repository or a cluster's
//! keeper can hand the core: gossip, requests and responses (through
//! `NodeCore::handle`, the real path, behind the decoders), records,
//! admission certificates and recipes. The seeds are recorded from a real
//! exchange between two cores; each run mutates them (bit flips, bytes set
//! to CBOR length headers and other edge values, cuts, inserts, repeats,
//! splices) with a seeded RNG, so a failing input replays from its seed.
//! `protocol/tests/fuzz.rs` runs every target briefly in CI;
//! `cargo run --release -p peerbot-protocol --example fuzz` runs long.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::admission::{Admission, ClusterKey, Revocation};
use crate::core::{BuildOutcome, CommitInfo, Config, Input, NodeCore, Output, StepOutcome};
use crate::store::{MemStore, Store};
use crate::{deterministic_key, record, Millis, PeerId};

pub const TARGETS: &[&str] = &["gossip", "request", "response", "record", "admission", "recipe"];

const RECIPE: &str = "[[builder]]\nname = \"linux\"\nrequires = [\"os=linux\"]\ntree_stable_secs = 0\n\
                      [[builder.step]]\nname = \"build\"\nrun = \"make\"\ntimeout_secs = 60\n\
                      [[builder]]\nname = \"docs\"\ncollapse = true\npriority = 5\n[[builder.step]]\nrun = \"make docs\"\n";

/// Real messages to start from.
#[derive(Default, Clone)]
pub struct Corpus {
    pub gossip: Vec<Vec<u8>>,
    pub requests: Vec<Vec<u8>>,
    pub responses: Vec<Vec<u8>>,
    pub records: Vec<Vec<u8>>,
}

/// A core of the fuzzing cluster: admitted, so that hellos, admission
/// records and the screening of records are on the paths fuzzed.
fn core(n: u64) -> NodeCore<MemStore> {
    let mut cfg = Config::new(vec!["os=linux".into()], 1);
    cfg.seed = n;
    cfg.sync_interval_ms = 2_000;
    let key = ClusterKey::from_seed([9; 32]);
    let me = deterministic_key(n).public().to_peer_id();
    cfg.cluster = Some(key.id());
    cfg.admission = key.admit(&me, vec![], 0, None).ok();
    NodeCore::new(cfg, deterministic_key(n), MemStore::new(), 0)
}

fn commit(c: &str) -> CommitInfo {
    CommitInfo {
        repo: "https://git.example.org/fuzz.git".into(),
        branch: "main".into(),
        commit: c.into(),
        parents: vec![],
        author: "A <a@example.org>".into(),
        committer: "A <a@example.org>".into(),
        commit_time: 1,
        title: "t".into(),
        files: vec!["src/lib.rs".into()],
        recipe: Ok(RECIPE.into()),
    }
}

/// Two cores announce, claim, build, reconcile and copy logs for a minute
/// of virtual time; every message between them is kept.
pub fn record_corpus() -> Corpus {
    let mut nodes = [core(1), core(2)];
    let ids = [nodes[0].peer_id(), nodes[1].peer_id()];
    let mut c = Corpus::default();
    nodes[0].handle(0, Input::PeerConnected(ids[1]));
    nodes[1].handle(0, Input::PeerConnected(ids[0]));
    let mut now: Millis = 0;
    let mut next_id = 1u64;
    for step in 0..240u64 {
        now += 500;
        if step == 20 || step == 60 {
            let _ = nodes[0].announce(now, commit(&format!("{:040x}", step)));
        }
        for i in 0..2 {
            nodes[i].handle(now, Input::Tick);
            while let Some(o) = nodes[i].poll_output() {
                let other = 1 - i;
                match o {
                    Output::Broadcast(b) => {
                        c.gossip.push(b.clone());
                        nodes[other].handle(now, Input::Gossip { from: ids[i], token: next_id, bytes: b });
                        next_id += 1;
                    }
                    Output::Request { id, bytes, .. } => {
                        c.requests.push(bytes.clone());
                        let rid = next_id;
                        next_id += 1;
                        nodes[other].handle(now, Input::Request { from: ids[i], id: rid, bytes });
                        while let Some(r) = nodes[other].poll_output() {
                            if let Output::Reply { id: got, bytes } = r {
                                if got == rid {
                                    c.responses.push(bytes.clone());
                                    nodes[i].handle(now, Input::Response { id, bytes });
                                }
                            }
                        }
                    }
                    Output::StartBuild(order) => {
                        let step = StepOutcome {
                            name: "build".into(),
                            exit_code: Some(0),
                            log: b"warning: x\ntest result: ok. 3 passed; 0 failed\n".to_vec(),
                            ..Default::default()
                        };
                        let out = BuildOutcome {
                            job: order.job,
                            attempt: order.attempt,
                            started_ms: now,
                            ended_ms: now,
                            steps: vec![step],
                            ..Default::default()
                        };
                        nodes[i].handle(now, Input::BuildFinished(out));
                    }
                    _ => {}
                }
            }
        }
    }
    nodes[0].store().for_each_record(&mut |b| c.records.push(b.to_vec()));
    c
}

/// Byte values that make decoders work hardest: CBOR headers announcing
/// huge arrays, maps, strings and tags, and integer edges.
const EDGES: &[u8] = &[
    0x00, 0x01, 0x17, 0x18, 0x1b, 0x3b, 0x5b, 0x7b, 0x7f, 0x80, 0x9b, 0x9f, 0xbb, 0xbf, 0xc2, 0xdb, 0xf4, 0xf6, 0xf9,
    0xfb, 0xff,
];

/// Mutates `input` in place: one to eight edits, now and then a splice
/// from `other`.
pub fn mutate(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    for _ in 0..rng.gen_range(1..=8) {
        let len = input.len();
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] = EDGES[rng.gen_range(0..EDGES.len())];
            }
            2 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] = rng.gen();
            }
            3 if len > 0 => {
                let cut = rng.gen_range(0..len);
                input.truncate(cut);
            }
            4 => {
                let at = rng.gen_range(0..=len);
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> =
                    (0..n).map(|_| if rng.gen() { rng.gen() } else { EDGES[rng.gen_range(0..EDGES.len())] }).collect();
                input.splice(at..at, bytes);
            }
            5 if len > 1 => {
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..len.min(a + 64));
                input.drain(a..=b);
            }
            6 if len > 0 => {
                let a = rng.gen_range(0..len);
                let b = rng.gen_range(a..len.min(a + 64));
                let chunk = input[a..=b].to_vec();
                let at = rng.gen_range(0..=input.len());
                input.splice(at..at, chunk);
            }
            7 if !other.is_empty() => {
                let a = rng.gen_range(0..other.len());
                let b = rng.gen_range(a..other.len());
                let at = rng.gen_range(0..=len);
                input.truncate(at);
                input.extend_from_slice(&other[a..=b]);
            }
            _ => {}
        }
    }
    input.truncate(max_len);
}

/// What one input is fed to.
type Feed = Box<dyn FnMut(&[u8])>;

/// A target: what one input is fed to.
pub struct Target {
    pub name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Feed,
}

/// A core that has seen the corpus's exchange, to hand hostile input to.
fn warmed(corpus: &Corpus) -> (NodeCore<MemStore>, PeerId) {
    let mut n = core(3);
    let peer = deterministic_key(1).public().to_peer_id();
    n.handle(1_000, Input::PeerConnected(peer));
    for (i, g) in corpus.gossip.iter().enumerate() {
        n.handle(1_000, Input::Gossip { from: peer, token: i as u64, bytes: g.clone() });
    }
    while n.poll_output().is_some() {}
    (n, peer)
}

/// Asks `n` for its next request to `peer`, moving its clock on.
fn next_request(n: &mut NodeCore<MemStore>, now: &mut Millis) -> Option<u64> {
    for _ in 0..64 {
        *now = (*now + 1).max(n.next_timeout());
        n.handle(*now, Input::Tick);
        let mut found = None;
        while let Some(o) = n.poll_output() {
            if let (Output::Request { id, .. }, None) = (&o, found) {
                found = Some(*id);
            }
        }
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Hands each input from a peer to a warmed core, as `input` makes it
/// (with a fresh token or request id).
fn inbound(name: &'static str, corpus: &Corpus, seeds: &[Vec<u8>], input: fn(PeerId, u64, Vec<u8>) -> Input) -> Target {
    let (mut n, peer) = warmed(corpus);
    let mut token = 1 << 32;
    Target {
        name,
        seeds: seeds.to_vec(),
        run: Box::new(move |b| {
            token += 1;
            n.handle(2_000, input(peer, token, b.to_vec()));
            while n.poll_output().is_some() {}
        }),
    }
}

pub fn target(name: &str, corpus: &Corpus) -> Option<Target> {
    let t = match name {
        "gossip" => {
            inbound("gossip", corpus, &corpus.gossip, |from, token, bytes| Input::Gossip { from, token, bytes })
        }
        "request" => inbound("request", corpus, &corpus.requests, |from, id, bytes| Input::Request { from, id, bytes }),
        "response" => {
            let (mut n, _) = warmed(corpus);
            let mut now = 2_000;
            let mut pending = None;
            Target {
                name: "response",
                seeds: corpus.responses.clone(),
                run: Box::new(move |b| {
                    if pending.is_none() {
                        pending = next_request(&mut n, &mut now);
                    }
                    if let Some(id) = pending.take() {
                        n.handle(now, Input::Response { id, bytes: b.to_vec() });
                        while let Some(o) = n.poll_output() {
                            if let Output::Request { id, .. } = o {
                                pending.get_or_insert(id);
                            }
                        }
                    }
                }),
            }
        }
        "record" => Target {
            name: "record",
            seeds: corpus.records.clone(),
            run: Box::new(|b| {
                let _ = record::verify(b);
                let _ = record::decode_stored(b);
            }),
        },
        "admission" => {
            let key = ClusterKey::from_seed([7; 32]);
            let me = deterministic_key(1).public().to_peer_id();
            let cert = key.admit(&me, vec!["gpu=yes".into()], 1, Some(1 << 50)).expect("a valid admission");
            let text = cert.to_text();
            let bin = hex::decode(text.split_once(':').map(|(_, h)| h).unwrap_or_default()).unwrap_or_default();
            let id = key.id();
            let revocation = key.revoke(&me, 5).to_text();
            let rbin = hex::decode(revocation.split_once(':').map(|(_, h)| h).unwrap_or_default()).unwrap_or_default();
            Target {
                name: "admission",
                seeds: vec![bin, rbin],
                run: Box::new(move |b| {
                    if let Ok(a) = Admission::from_text(&format!("peerbot-admission-v1:{}", hex::encode(b))) {
                        let _ = a.check(&id, &me, 2);
                        let _ = a.grants_all(&["gpu=yes".into()]);
                        let _ = a.permits("role=admin");
                    }
                    if let Ok(r) = Revocation::from_text(&format!("peerbot-revocation-v1:{}", hex::encode(b))) {
                        let _ = r.check(&id);
                    }
                }),
            }
        }
        "recipe" => Target {
            name: "recipe",
            seeds: vec![RECIPE.as_bytes().to_vec()],
            run: Box::new(|b| {
                let _ = crate::recipe::parse_recipe("r", "c", &String::from_utf8_lossy(b));
            }),
        },
        _ => return None,
    };
    Some(t)
}

/// What a run found.
#[derive(Debug)]
pub struct Finding {
    pub target: &'static str,
    pub exec: u64,
    pub input_hex: String,
    pub panic: String,
}

/// Runs `execs` mutated inputs through `t`; the first panic, if any.
pub fn run(t: &mut Target, seed: u64, execs: u64) -> Option<Finding> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut found = None;
    for exec in 0..execs {
        let mut input = t.seeds[rng.gen_range(0..t.seeds.len())].clone();
        let other = &t.seeds[rng.gen_range(0..t.seeds.len())];
        mutate(&mut rng, &mut input, other, 1 << 20);
        let run = &mut t.run;
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(&input))) {
            let panic = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            found = Some(Finding { target: t.name, exec, input_hex: hex::encode(&input), panic });
            break;
        }
    }
    std::panic::set_hook(hook);
    found
}
