//! The output of the steps running on this node now, kept for the live
//! tail (`/jobs/{id}`, `GET /api/v1/jobs/{id}/live`, `peerbot log
//! --follow`). Only the end of each running step is kept, so memory is
//! bounded by the executors, not by what steps write.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use peerbot_protocol::Hash32;
use serde::Serialize;

/// Bytes of a running step's output kept for readers who start late.
pub const LIVE_KEEP: usize = 256 * 1024;

struct LiveStep {
    attempt: u32,
    step: String,
    index: usize,
    /// The last `LIVE_KEEP` bytes written; `total` counts all of them.
    kept: VecDeque<u8>,
    total: u64,
}

fn table() -> &'static Mutex<HashMap<Hash32, LiveStep>> {
    static T: OnceLock<Mutex<HashMap<Hash32, LiveStep>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// A step of `job` starts: its output so far is empty.
pub fn begin(job: Hash32, attempt: u32, step: &str, index: usize) {
    if let Ok(mut t) = table().lock() {
        t.insert(job, LiveStep { attempt, step: step.to_string(), index, kept: VecDeque::new(), total: 0 });
    }
}

pub fn push(job: &Hash32, bytes: &[u8]) {
    let Ok(mut t) = table().lock() else { return };
    let Some(s) = t.get_mut(job) else { return };
    s.total += bytes.len() as u64;
    let bytes = &bytes[bytes.len().saturating_sub(LIVE_KEEP)..];
    let over = (s.kept.len() + bytes.len()).saturating_sub(LIVE_KEEP);
    s.kept.drain(..over);
    s.kept.extend(bytes);
}

/// The build of `job` at `attempt` ended (its result is published or
/// lost); a later attempt's output stays.
pub fn end(job: &Hash32, attempt: u32) {
    if let Ok(mut t) = table().lock() {
        if t.get(job).is_some_and(|s| s.attempt == attempt) {
            t.remove(job);
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Chunk {
    pub running: bool,
    pub attempt: u32,
    pub step: String,
    pub index: usize,
    /// Where `text` starts in the step's output, and where it ends: ask
    /// again with `offset = end`.
    pub offset: u64,
    pub end: u64,
    /// Bytes before `offset` that were asked for but are no longer kept.
    pub skipped: u64,
    pub text: String,
}

/// What the running step of `job` wrote from `offset` on (a new step
/// starts again at 0: compare `index`). `None` when `job` is not running
/// here.
pub fn read(job: &Hash32, offset: u64, index: Option<usize>) -> Option<Chunk> {
    let t = table().lock().ok()?;
    let s = t.get(job)?;
    let first = s.total - s.kept.len() as u64;
    // A reader still on an earlier step reads this one from its start.
    let offset = if index.is_some_and(|i| i != s.index) { 0 } else { offset.min(s.total) };
    let from = offset.max(first);
    let bytes: Vec<u8> = s.kept.iter().skip((from - first) as usize).copied().collect();
    Some(Chunk {
        running: true,
        attempt: s.attempt,
        step: s.step.clone(),
        index: s.index,
        offset: from,
        end: s.total,
        skipped: from - offset,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_what_was_written_after_its_offset_and_late_readers_the_kept_end() {
        let job = Hash32([7; 32]);
        begin(job, 1, "compile", 0);
        push(&job, b"hello ");
        push(&job, b"world\n");
        let c = read(&job, 0, None).unwrap();
        assert_eq!((c.text.as_str(), c.offset, c.end, c.skipped), ("hello world\n", 0, 12, 0));
        let c = read(&job, 6, Some(0)).unwrap();
        assert_eq!(c.text, "world\n");
        // Past the kept window: the reader is told how much it missed.
        push(&job, &vec![b'x'; LIVE_KEEP]);
        let c = read(&job, 0, Some(0)).unwrap();
        assert_eq!((c.offset, c.skipped, c.text.len()), (12, 12, LIVE_KEEP));
        // The next step starts again at 0 for a reader of the previous one.
        begin(job, 1, "test", 1);
        push(&job, b"ok\n");
        let c = read(&job, 5000, Some(0)).unwrap();
        assert_eq!((c.step.as_str(), c.index, c.offset, c.text.as_str()), ("test", 1, 0, "ok\n"));
        end(&job, 0);
        assert!(read(&job, 0, None).is_some(), "another attempt's end leaves this one");
        end(&job, 1);
        assert!(read(&job, 0, None).is_none());
    }
}
