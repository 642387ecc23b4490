//! peerbot's sans-IO core.
//!
//! Everything that decides lives here: wire types and their CBOR codec, ids
//! and signatures, recipe parsing and checking, label matching, which
//! repositories a node builds, claim ranking, set reconciliation, and
//! [`NodeCore`], which composes them. Nothing in this crate reads a clock,
//! touches a disk or a socket, or draws global randomness: the node and the
//! simulator feed it inputs with the current time and route the outputs it
//! hands back.

/// Asserts an invariant of the core in debug builds and wherever the
/// `invariants` feature is on (the simulator turns it on, so every simnet
/// run checks them, in release builds too). A node built for release
/// without the feature pays nothing.
#[macro_export]
macro_rules! invariant {
    ($cond:expr, $($msg:tt)+) => {
        if cfg!(any(debug_assertions, feature = "invariants")) {
            assert!($cond, $($msg)+);
        }
    };
}

pub mod admission;
pub mod bisect;
pub mod blame;
pub mod codec;
pub mod core;
#[doc(hidden)]
pub mod fuzz;
pub mod ids;
pub mod keyspace;
pub mod labels;
pub mod logparse;
pub mod notify;
pub mod recipe;
pub mod record;
pub mod repos;
pub mod sigcheck;
pub mod store;
pub mod sync;
pub mod testhistory;
#[cfg(test)]
mod testkit;
pub mod testreport;
pub mod wire;

pub use crate::core::{Config, Event, Input, NodeCore, Output};
pub use ids::Hash32;
pub use libp2p_identity::{Keypair, PeerId};
pub use record::{Body, BuildResult, Change, Status, VerifiedRecord};
pub use store::{MemStore, Store};

/// Milliseconds since the Unix epoch (virtual in the simulator).
pub type Millis = u64;

/// A key derived from a number: for the simulator and tests, where runs
/// must be reproducible. Real nodes generate theirs from the OS's RNG.
pub fn deterministic_key(n: u64) -> Keypair {
    let seed = Hash32::of_fields("peerbot.test-key", &[&n.to_le_bytes()]);
    Keypair::ed25519_from_bytes(seed.0).expect("32 bytes make an ed25519 key")
}
