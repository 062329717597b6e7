//! Supervision of the delivery tasks: stage "keep every loop alive" of delivery.
//!
//! - [`TaskSet`]: the loop's background tasks (session set-ups, settle writes), each joined with
//!   its task id and what it holds (a recipient, a settle batch). A task that panics is reported
//!   as [`Joined::Panicked`] with what it held, so the loop treats it as a temporary failure of
//!   that (the recipient retries its session, the batch is written again) instead of dropping it
//!   and leaving a recipient stuck and the low watermark pinned.
//! - [`supervise_shard`]: runs one shard's upstream and delivery loop; when the loop panics it is
//!   logged, counted (`task_panics`, `loop_restarts`), shown in health (`delivery_restarting`:
//!   `/readyz` answers 503, `/v1/health` says `disconnected`), and both are started again after a
//!   backoff, from the shard's low watermark like a restart: what was in flight is resent (the
//!   server dedups by id) and sessions reload from the shard (their counters were reserved
//!   durably, so none is reused).
//!
//! Invariant (written as an absence): no spawned delivery task ends without the loop hearing of
//! it, and no shard's loop stays dead while health says it delivers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_model::clock::SharedClock;
use ferry_shard::Shard;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

use crate::DeliveryConfig;
use crate::engine::ShardLoop;
use crate::stats::{LinkState, ShardDeliveryStats};
use crate::upstream::Connect;

/// How a supervised task ended.
pub(crate) enum Joined<T, H> {
    /// It returned `output`; `held` is handed back.
    Done { output: T, held: H },
    /// It panicked (or was cancelled) while holding `H`.
    Panicked { held: H, reason: String },
}

/// Background tasks, each with what it holds until it ends.
pub(crate) struct TaskSet<T, H> {
    set: JoinSet<T>,
    held: HashMap<Id, H>,
}

impl<T: Send + 'static, H> TaskSet<T, H> {
    pub(crate) fn new() -> Self {
        TaskSet { set: JoinSet::new(), held: HashMap::new() }
    }

    /// Spawns `task`, which holds `held` until it ends.
    pub(crate) fn spawn<F>(&mut self, held: H, task: F)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.held.insert(handle.id(), held);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next task to end, with its output, or what it held if it panicked. `None` when no task
    /// is left.
    ///
    /// Cancel-safe: a task that ended is only taken out of the set when this returns.
    pub(crate) async fn join_next(&mut self) -> Option<Joined<T, H>> {
        loop {
            match self.set.join_next_with_id().await? {
                Ok((id, output)) => {
                    if let Some(held) = self.held.remove(&id) {
                        return Some(Joined::Done { output, held });
                    }
                }
                Err(error) => {
                    let reason = panic_reason(&error);
                    if let Some(held) = self.held.remove(&error.id()) {
                        return Some(Joined::Panicked { held, reason });
                    }
                }
            }
        }
    }
}

fn panic_reason(error: &tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    match error.to_string().as_str() {
        "" => "panicked".to_owned(),
        s => s.to_owned(),
    }
}

/// Longest wait before restarting a shard loop that keeps panicking.
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A loop that ran this long before it panicked restarts after the shortest wait again.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

/// What one shard's delivery needs; cloned into every (re)start.
pub(crate) struct ShardDelivery<C> {
    pub(crate) shard: Arc<Shard>,
    pub(crate) all_shards: Arc<[Arc<Shard>]>,
    pub(crate) config: DeliveryConfig,
    pub(crate) clock: SharedClock,
    /// Opens the shard's upstream for every (re)start.
    pub(crate) connect: C,
    pub(crate) stats: Arc<ShardDeliveryStats>,
}

/// Runs one shard's upstream and delivery loop until `shutdown`, restarting both when the loop
/// panics (see the module docs).
///
/// Cancel-safe in the sense that matters: dropping it drops the loop's and the upstream's tasks'
/// handles, not the tasks; shut down through `shutdown`.
pub(crate) async fn supervise_shard<C: Connect>(d: ShardDelivery<C>, shutdown: watch::Receiver<bool>) {
    let initial = Duration::from_millis(d.config.reconnect_initial_ms);
    let mut backoff = initial;
    loop {
        // A replicated shard is delivered by its leader only (always true on a single node).
        if !d.shard.wait_leading(shutdown.clone()).await {
            return;
        }
        let stop = d.shard.stop_when_not_leading(shutdown.clone());
        let (upstream, link) = d.connect.connect(stop.clone());
        let shard_loop = ShardLoop::new(
            d.shard.clone(),
            d.all_shards.clone(),
            d.config.clone(),
            d.clock.clone(),
            upstream,
            d.stats.clone(),
            stop,
        );
        let started = tokio::time::Instant::now();
        d.stats.delivery_restarting.store(false, Ordering::Relaxed);
        let ended = tokio::spawn(shard_loop.run()).await;
        link.abort();
        let _ = link.await;
        let Err(error) = ended else {
            if *shutdown.borrow() {
                return;
            }
            // Leadership moved: what is in flight stays queued for the next leader, which sends it
            // again (the server dedups by id).
            tracing::info!(shard = %d.shard.id(), "no longer leading the shard: delivery stops here");
            d.stats.link_state.store(LinkState::Disconnected as u8, Ordering::Relaxed);
            d.stats.in_flight.store(0, Ordering::Relaxed);
            continue;
        };
        d.stats.delivery_restarting.store(true, Ordering::Relaxed);
        d.stats.link_state.store(LinkState::Disconnected as u8, Ordering::Relaxed);
        d.stats.add(&d.stats.task_panics, 1);
        d.stats.add(&d.stats.loop_restarts, 1);
        d.stats.in_flight.store(0, Ordering::Relaxed);
        tracing::error!(shard = %d.shard.id(), reason = %panic_reason(&error), "delivery loop panicked; restarting it");
        if *shutdown.borrow() {
            return;
        }
        if started.elapsed() >= RESTART_RESET_AFTER {
            backoff = initial;
        }
        // Settle writes the dead loop submitted are applied before an empty one (the writer keeps
        // order), so the new loop's first scan no longer finds what they removed.
        if let Ok(barrier) = d.shard.settle_durably(Vec::new(), None) {
            let _ = barrier.await;
        }
        let mut shutdown_wait = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown_wait.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}
