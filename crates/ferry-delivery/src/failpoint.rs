//! Test failpoints of the delivery loops: make a task panic, or a write fail, for one recipient,
//! a given number of times. Hidden from the docs; tests of supervision and retries arm them
//! (`tests/delivery.rs`). Keyed by recipient wa_id, so tests running in parallel in one process
//! do not trip each other's. Disarmed (the default) it costs one relaxed atomic load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where a failpoint trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The background session task (load or set up a session) panics.
    SessionTask,
    /// A settle task panics after its batch is durable, before it reports.
    SettleTask,
    /// The shard's delivery loop panics while dispatching to the recipient.
    ShardLoop,
    /// Recording an inbound message from the user (`recipient` = the user's wa_id) in its
    /// owner shard, when that is another shard than the stream's, fails as if the write failed.
    InboundWrite,
}

static ARMED: AtomicBool = AtomicBool::new(false);
static POINTS: Mutex<Vec<(Point, String, u32)>> = Mutex::new(Vec::new());

/// Arms `point` for `recipient` (a wa_id) for its next `times` hits.
pub fn arm(point: Point, recipient: &str, times: u32) {
    let mut points = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    points.push((point, recipient.to_owned(), times));
    ARMED.store(true, Ordering::Release);
}

/// Whether `point` trips now for `recipient` (counts the hit).
pub(crate) fn hit(point: Point, recipient: &str) -> bool {
    if !ARMED.load(Ordering::Acquire) {
        return false;
    }
    let mut points = POINTS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = points.iter().position(|(p, r, n)| *p == point && r == recipient && *n > 0) else { return false };
    points[i].2 -= 1;
    if points[i].2 == 0 {
        points.swap_remove(i);
    }
    if points.is_empty() {
        ARMED.store(false, Ordering::Release);
    }
    true
}
