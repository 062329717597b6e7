//! Whether this node delivers for a replicated shard: the leader gate (design §5).
//!
//! Open while this node leads the group, its term's blank entry is applied (the proposer is
//! ready) and a quorum acknowledged it within the lease (`election_timeout_min`). The quorum age
//! is openraft's `millis_since_quorum_ack` *plus* the time since those metrics were published,
//! measured on this node's monotonic clock: a leader resumed after a pause (SIGSTOP) sees the whole
//! pause and closes before it delivers anything, since followers elect a new leader only after
//! `election_timeout_max` and more.

use std::time::Duration;

use openraft::Raft;
use tokio::sync::watch;
use tokio::time::Instant;

use super::proposer::ready_term;
use super::types::ShardRaft;

/// How often the gate re-checks the quorum age between metrics updates.
const TICK: Duration = Duration::from_millis(100);

/// A watch of the gate, kept current by a task that ends with the group.
pub(crate) fn watch(raft: &Raft<ShardRaft>, me: u64, lease: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let mut published = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        tx.send_replace(false);
                        return;
                    }
                    published = Instant::now();
                }
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            let open = {
                let m = metrics.borrow();
                ready_term(&m, me).is_some()
                    && m.millis_since_quorum_ack
                        .is_some_and(|ms| Duration::from_millis(ms) + published.elapsed() < lease)
            };
            tx.send_if_modified(|v| std::mem::replace(v, open) != open);
        }
    });
    rx
}

/// Waits until `leading` is open; `false` if `shutdown` turned true (or the group stopped) first.
pub(crate) async fn wait_leading(mut leading: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) -> bool {
    let led = tokio::select! {
        led = leading.wait_for(|l| *l) => led.is_ok(),
        _ = shutdown.wait_for(|s| *s) => false,
    };
    led && !*shutdown.borrow()
}

/// A stop signal for work that may run only while `leading` is open: it turns true when
/// `shutdown` does or the gate closes, whichever is first.
pub(crate) fn stop_when_not_leading(
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*shutdown.borrow() || !*leading.borrow());
    tokio::spawn(async move {
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tx.closed() => return,
        }
        tx.send_replace(true);
    });
    rx
}
