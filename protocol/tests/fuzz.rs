//! Every fuzz target, briefly: mutated real messages handed to the core and
//! to the decoders must never panic. The long runs are
//! `cargo run --release -p peerbot-protocol --example fuzz` (docs/security.md).

use peerbot_protocol::fuzz::{self, TARGETS};

#[test]
fn the_recorded_exchange_has_every_kind_of_message() {
    let c = fuzz::record_corpus();
    assert!(c.gossip.len() > 10, "{}", c.gossip.len());
    assert!(!c.requests.is_empty() && !c.responses.is_empty() && c.records.len() >= 4);
}

#[test]
fn no_target_panics_on_twenty_thousand_mutated_inputs() {
    let corpus = fuzz::record_corpus();
    for name in TARGETS {
        let mut t = fuzz::target(name, &corpus).unwrap();
        if let Some(f) = fuzz::run(&mut t, 1, 20_000) {
            panic!("{} panicked at exec {}: {}\ninput: {}", f.target, f.exec, f.panic, f.input_hex);
        }
    }
}
