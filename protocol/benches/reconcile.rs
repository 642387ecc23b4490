//! `cargo bench -p peerbot-protocol --bench reconcile`: bytes and round
//! trips to reconcile two record sets that differ by 1, 100 and 10 000
//! records, for stores of 10k, 100k and 1M records spread over a year.
//! Only reconciliation messages are counted, not the records then fetched.

use std::time::Instant;

use peerbot_protocol::ids::Hash32;
use peerbot_protocol::record::{Body, Change, VerifiedRecord};
use peerbot_protocol::store::{MemStore, Store};
use peerbot_protocol::sync::{initial, process};
use peerbot_protocol::wire::{encode_request, encode_response, Request, Response};

const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

fn fill(store: &mut MemStore, from: u64, to: u64, signer: peerbot_protocol::PeerId, body: &Body) {
    for i in from..to {
        let id = Hash32::of(&i.to_le_bytes());
        let time = 1_600_000_000_000 + (i.wrapping_mul(2_654_435_761) % YEAR_MS);
        let mut b = body.clone();
        if let Body::Change(c) = &mut b {
            c.announced_ms = time;
        }
        let rec = VerifiedRecord { id, signer, body: b, bytes: Vec::new(), signature: Vec::new() };
        store.put_record(&rec).expect("memory store");
    }
}

fn main() {
    let signer = peerbot_protocol::deterministic_key(1).public().to_peer_id();
    let body = Body::Change(Change::default());

    println!("{:>9} {:>7} {:>7} {:>12} {:>10}", "records", "diff", "rounds", "sync bytes", "time");
    for &n in &[10_000u64, 100_000, 1_000_000] {
        let mut full = MemStore::new();
        fill(&mut full, 0, n, signer, &body);
        for &d in &[1u64, 100, 10_000] {
            // `a` lacks the last d records that `b` has.
            let mut a = MemStore::new();
            fill(&mut a, 0, n - d, signer, &body);
            let b = &full;
            let start = Instant::now();
            let mut msg = initial(&a);
            let mut bytes = 0usize;
            let mut need = 0usize;
            let mut rounds = 0;
            loop {
                rounds += 1;
                bytes += encode_request(&Request::Reconcile { ranges: msg.clone() }).len();
                let resp = process(b, &msg, false).expect("valid message");
                bytes += encode_response(&Response::Reconcile { ranges: resp.reply.clone() }).len();
                let out = process(&a, &resp.reply, true).expect("valid message");
                if std::env::var("RECONCILE_DEBUG").is_ok() {
                    let modes = |r: &[peerbot_protocol::sync::SyncRange]| {
                        let mut c = [0usize; 3];
                        let mut ids = 0;
                        for x in r {
                            match &x.mode {
                                peerbot_protocol::sync::RangeMode::Skip => c[0] += 1,
                                peerbot_protocol::sync::RangeMode::Fingerprint { .. } => c[1] += 1,
                                peerbot_protocol::sync::RangeMode::IdList { ids: v, .. } => {
                                    c[2] += 1;
                                    ids += v.len()
                                }
                                peerbot_protocol::sync::RangeMode::Prefixes { prefixes } => {
                                    c[2] += 1;
                                    ids += prefixes.len()
                                }
                                peerbot_protocol::sync::RangeMode::Answer { extra, .. } => {
                                    c[2] += 1;
                                    ids += extra.len()
                                }
                            }
                        }
                        (c, ids)
                    };
                    eprintln!(
                        "n={n} d={d} round {rounds}: sent {:?} {} B, answered {:?} {} B",
                        modes(&msg),
                        encode_request(&Request::Reconcile { ranges: msg.clone() }).len(),
                        modes(&resp.reply),
                        encode_response(&Response::Reconcile { ranges: resp.reply.clone() }).len()
                    );
                }
                need += out.need.len();
                if out.finished() {
                    break;
                }
                msg = out.reply;
            }
            assert_eq!(need as u64, d, "found every difference");
            println!("{:>9} {:>7} {:>7} {:>12} {:>8.1}ms", n, d, rounds, bytes, start.elapsed().as_secs_f64() * 1000.0);
        }
    }
}
