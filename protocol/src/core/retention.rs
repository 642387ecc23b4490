//! Log retention: logs of results older than the horizon are dropped a
//! batch at a time, from a persisted cursor; records stay.

use crate::codec::{decode, encode};
use crate::ids::Hash32;
use crate::keyspace::SyncKey;
use crate::record::{self, Body};
use crate::store::{Store, StoreError};
use crate::Millis;

const RETENTION_KEY: &str = "retention_cursor";
pub const RETENTION_EVERY_MS: u64 = 60_000;
const RETENTION_BATCH: usize = 500;

/// What one pass of retention did.
pub struct Swept {
    pub blobs_dropped: usize,
    /// More is past the horizon: run again at once.
    pub more: bool,
    pub cursor_error: Option<StoreError>,
}

/// Drops the logs of the next batch of results older than `now - horizon`.
pub fn expire_logs<S: Store>(store: &mut S, now: Millis, horizon: u64) -> Swept {
    let cutoff = SyncKey { time: now.saturating_sub(horizon), id: Hash32::ZERO };
    let from = store.get_state(RETENTION_KEY).and_then(|b| decode::<SyncKey>(&b, 1024).ok()).unwrap_or(SyncKey::MIN);
    if from >= cutoff {
        return Swept { blobs_dropped: 0, more: false, cursor_error: None };
    }
    let keys = store.keys_in(&from, Some(&cutoff), RETENTION_BATCH);
    let mut dropped = 0;
    for k in &keys {
        let Some(bytes) = store.get_record(&k.id) else { continue };
        if let Ok(rec) = record::decode_stored(&bytes) {
            if let Body::Result(r) = rec.body {
                for s in r.steps.iter().filter_map(|s| s.log.as_ref()) {
                    if store.has_blob(&s.hash) && store.delete_blob(&s.hash).is_ok() {
                        dropped += 1;
                    }
                }
            }
        }
    }
    let full = keys.len() == RETENTION_BATCH;
    let next = match keys.last() {
        Some(k) if full => key_after(k),
        _ => cutoff,
    };
    let cursor_error = store.put_state(RETENTION_KEY, &encode(&next)).err();
    Swept { blobs_dropped: dropped, more: full, cursor_error }
}

/// The smallest key greater than `k`.
fn key_after(k: &SyncKey) -> SyncKey {
    let mut id = k.id.0;
    for b in id.iter_mut().rev() {
        *b = b.wrapping_add(1);
        if *b != 0 {
            break;
        }
    }
    SyncKey { time: k.time, id: Hash32(id) }
}
