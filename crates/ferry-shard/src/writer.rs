//! The group-commit writer: stage "append durably" of a single node's shards.
//!
//! Every database has exactly one writer, an OS thread: a node's shared database (format 2 of the
//! data dir, [`crate::node_db`]) one for all its shards, a shard's database of its own one for
//! that shard. The writer owns each of its shards' sequence counters (a [`ShardWriter`] per
//! shard, a *slot*). It blocks for the first pending [`WriteOp`] of any of its shards, takes every
//! other op already waiting (up to `max_batch_messages` messages, and as many ops, in all),
//! plans each shard's ops into that shard's entry, writes all of them as **one** RocksDB
//! `WriteBatch` with `sync = true` (the WAL is fsynced before `write` returns; lazy batches,
//! below, are synced later), and only then completes each op's reply. So many concurrent sends,
//! of every shard, share one write and one fsync (group commit) and one wake-up of one thread, and
//! no reply is sent before its data is on disk. If the write fails, every op of the batch (of
//! every shard in it) gets the error and nothing of it is reported durable.
//!
//! A group commit is planned by [`Planner`] (`ops.rs`: it moves a shard's ops out of their
//! requests into a [`crate::apply::ShardEntry`] and decides what only the writer may: the first
//! sequence number, hence every appended message's id, and the entry's clock) and applied by
//! [`crate::apply`], which adds the entry's writes to the batch from the entry and the shard's
//! on-disk state alone (each shard's writes go to its own column families) and returns one
//! outcome per op, from which the replies are sent once the batch is durable.
//!
//! **Lazy batches.** A batch of nothing but ops no client waits on ([`WriteOp::is_lazy`]: the
//! delivery loop's settles, the webhook cursor, intent and dispatch-mark clean-ups) is written
//! *without* a sync, so that it does not hold the next appends behind an fsync of its own. Its
//! callers are answered, and what it changed is published to readers (the status-event
//! watermark, the queue's low watermark), only once it is durable: when a later synced write of
//! the same database covers it (the writer's next batch with an append; see
//! [`crate::wal_clock`]), or else when the writer syncs the WAL itself after
//! `shard.settle_sync_delay_ms` (2 ms; `0` turns lazy batches off). Until then its writes are
//! visible to point reads (`GetMessage` may show `sent` a few milliseconds before it is durable)
//! but to no stream, webhook or delivery decision.
//!
//! The writer is a thread rather than a tokio task because RocksDB's synced write blocks; the
//! async side only awaits a oneshot reply.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rocksdb::WriteBatch;

use crate::ShardError;
use crate::apply::{OpOutcome, ShardApplied, ShardEntry, ShardState, apply};
use crate::storage::Store;

pub use crate::ops::{AppendAnswer, AppendOutcome, HeldAction, IdempotencyPlacement, NewMessage, ResolvedHeld};
pub(crate) use crate::ops::{Planner, Reply, Waiter, WriteOp, join_op, split_op};

/// An op for one of the writer's shards: the shard's slot in the writer, and the op.
pub(crate) type SlotOp = (usize, WriteOp);

/// Counters the writer keeps (read by metrics and benchmarks).
#[derive(Debug, Default)]
pub struct WriterCounters {
    pub appended: AtomicU64,
    pub batches: AtomicU64,
    pub synced_writes: AtomicU64,
    /// Lazy batches written unsynced (see the module docs).
    pub unsynced_writes: AtomicU64,
    /// WAL syncs the writer made itself because no other write covered its lazy batches in time.
    pub settle_syncs: AtomicU64,
    pub settled: AtomicU64,
}

/// What the writer publishes to readers after each durable commit: the sequence number below which
/// every appended message is durable, and a wake-up for the delivery loop.
#[derive(Debug)]
pub struct Committed {
    pub next_seq: AtomicU64,
    pub appended: tokio::sync::Notify,
    /// The status-event (outbox) sequence below which every event is durable; every webhook
    /// sender and status-stream watcher subscribes to it.
    pub next_outbox_seq: tokio::sync::watch::Sender<u64>,
    /// Held messages released into the queue (durably), most likely below the delivery loop's
    /// read cursor: the loop takes them and point-reads them (`Shard::take_released`).
    pub released: std::sync::Mutex<Vec<u64>>,
}

/// What a durable commit tells readers and callers.
pub(crate) struct Publication {
    /// The status-event watermark after the commit, if the commit added events.
    next_outbox_seq: Option<u64>,
    low_watermark: Option<u64>,
    released: Vec<u64>,
    replies: Vec<(Waiter, OpOutcome)>,
}

/// A lazy batch written unsynced, waiting to be durable.
pub(crate) struct Unsynced {
    ticket: u64,
    written_at: Instant,
    publication: Publication,
}

/// One shard's part of a writer: its planner, its state and what it publishes.
pub(crate) struct ShardWriter {
    pub(crate) store: Arc<Store>,
    pub(crate) pending: Arc<AtomicUsize>,
    pub(crate) counters: Arc<WriterCounters>,
    pub(crate) committed: Arc<Committed>,
    /// `meta/queue_low_watermark` as persisted, published to readers after each commit.
    pub(crate) queue_low_watermark: Arc<AtomicU64>,
    pub(crate) planner: Planner,
    /// The state machine's in-memory part as of the last durable batch (see [`crate::apply`]).
    pub(crate) state: ShardState,
    /// Test support (`Shard::crash_for_test`): set, the writer commits nothing more of this shard
    /// and drops it.
    pub(crate) crashed: Arc<AtomicBool>,
    /// Lazy batches written but not yet known durable, oldest first.
    pub(crate) unsynced: VecDeque<Unsynced>,
    /// Dropped once the writer is done with the shard: what `Shard::close` waits for.
    pub(crate) _done: Sender<()>,
}

/// The ops of one shard in a group commit.
struct SlotOps {
    slot: usize,
    ops: Vec<WriteOp>,
    weight: usize,
}

/// One shard's entry of a group commit, applied to the batch, before the write.
struct Planned {
    slot: usize,
    weight: usize,
    entry: ShardEntry,
    waiters: Vec<Waiter>,
    applied: ShardApplied,
}

/// The writer of one database: its shards (`None` once stopped) and its loop.
pub(crate) struct Writer {
    pub(crate) slots: Vec<Option<ShardWriter>>,
    pub(crate) max_batch_messages: usize,
    /// How long a lazy batch waits for another write's sync (`shard.settle_sync_delay_ms`; zero:
    /// none is lazy).
    pub(crate) lazy_sync_delay: Duration,
}

impl Writer {
    /// Runs until every shard is stopped (or every sender of `rx` is dropped); then returns after
    /// finishing what it took.
    pub(crate) fn run(mut self, rx: Receiver<SlotOp>) {
        let Some(syncs) = self.slots.iter().flatten().next().map(|w| w.store.watch_syncs()) else { return };
        loop {
            self.drop_crashed();
            if self.slots.iter().all(Option::is_none) {
                break;
            }
            self.publish_durable();
            let first = match self.oldest_unsynced() {
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                Some(written_at) => {
                    let wait = (written_at + self.lazy_sync_delay).saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        // Due: sync before taking more. `select!` prefers a ready op to its
                        // timeout, so a steady stream of lazy ops would otherwise put this off
                        // for as long as the stream lasts.
                        self.sync_unsynced();
                        continue;
                    }
                    crossbeam_channel::select! {
                        recv(rx) -> op => match op {
                            Ok(op) => op,
                            Err(_) => break,
                        },
                        // Some write synced the WAL: publish what it covered, then wait again.
                        recv(syncs) -> _ => continue,
                        default(wait) => {
                            self.sync_unsynced();
                            continue;
                        }
                    }
                }
            };
            let mut group: Vec<SlotOps> = Vec::new();
            let (mut weight, mut count) = (0, 0);
            let mut stopping = None;
            let mut next = Some(first);
            while let Some((slot, op)) = next.take() {
                match op {
                    WriteOp::PanicForTest => panic!("the writer panicked (test support)"),
                    WriteOp::Stop => {
                        // Commits what was taken so far, then stops the shard; its later ops
                        // find no slot (their callers see `Stopped`).
                        stopping = Some(slot);
                        break;
                    }
                    WriteOp::Hold { release, weight: held } => {
                        self.commit(std::mem::take(&mut group));
                        self.sync_unsynced();
                        let _ = release.recv();
                        if let Some(Some(w)) = self.slots.get(slot) {
                            w.pending.fetch_sub(held, Ordering::AcqRel);
                        }
                    }
                    op => {
                        if matches!(self.slots.get(slot), Some(Some(_))) {
                            weight += op.weight();
                            count += 1;
                            match group.iter_mut().find(|g| g.slot == slot) {
                                Some(g) => {
                                    g.weight += op.weight();
                                    g.ops.push(op);
                                }
                                None => group.push(SlotOps { slot, weight: op.weight(), ops: vec![op] }),
                            }
                        }
                    }
                }
                // Bounded by ops too: settles and clean-ups weigh nothing, and a steady stream of
                // them would otherwise keep one batch open for as long as it lasts.
                if weight < self.max_batch_messages && count < self.max_batch_messages {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(group);
            if let Some(slot) = stopping {
                self.stop(slot);
            }
        }
        self.sync_unsynced();
        tracing::debug!(shards = self.slots.len(), "writer stopped");
    }

    /// Drops the shards `Shard::crash_for_test` crashed: what they had not made durable is lost
    /// (their callers see `Stopped`).
    fn drop_crashed(&mut self) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|w| w.crashed.load(Ordering::Acquire)) {
                *slot = None;
            }
        }
    }

    /// Stops one shard: its lazy batches are made durable and answered, then it is dropped.
    fn stop(&mut self, slot: usize) {
        self.drop_crashed();
        self.sync_unsynced();
        if let Some(w) = self.slots.get_mut(slot).and_then(Option::take) {
            tracing::debug!(shard = %w.state.shard, "shard's writer stopped");
        }
    }

    /// When the oldest lazy batch not known durable was written, if any.
    fn oldest_unsynced(&self) -> Option<Instant> {
        self.slots.iter().flatten().filter_map(|w| w.unsynced.front().map(|u| u.written_at)).min()
    }

    /// One group commit: each shard's ops planned and applied into one batch, one write (synced
    /// unless every op is lazy), then the replies once it is durable.
    fn commit(&mut self, group: Vec<SlotOps>) {
        let lazy = !self.lazy_sync_delay.is_zero() && group.iter().all(|g| g.ops.iter().all(WriteOp::is_lazy));
        let mut batch = WriteBatch::default();
        let mut planned = Vec::with_capacity(group.len());
        for SlotOps { slot, ops, weight } in group {
            let Some(Some(w)) = self.slots.get_mut(slot) else { continue };
            if ops.is_empty() {
                continue;
            }
            if w.crashed.load(Ordering::Acquire) {
                // A crash: what was not committed is lost (its callers see `Stopped`).
                w.pending.fetch_sub(weight, Ordering::AcqRel);
                continue;
            }
            let (entry, waiters) = w.planner.plan(ops);
            let applied = apply(&entry, &mut batch, &w.store, &w.state);
            planned.push(Planned { slot, weight, entry, waiters, applied });
        }
        let Some(store) = planned.first().and_then(|p| self.slots[p.slot].as_ref()).map(|w| w.store.clone()) else {
            return;
        };
        // Every shard's failpoint is consulted (a test may arm any of them): one failed write
        // fails the whole batch, as a failed RocksDB write does.
        let injected =
            planned.iter().filter_map(|p| self.slots[p.slot].as_ref()).find_map(|w| w.store.take_write_failure());
        let result = match injected {
            Some(e) => Err(e),
            None if lazy => store.write_unsynced(batch).map(Some),
            None => store.write_synced(batch).map(|()| None),
        };
        if matches!(result, Ok(None)) {
            // Durable, and so is every lazy batch written before it, of every shard.
            self.publish_durable();
        }
        for Planned { slot, weight, entry, waiters, applied } in planned {
            let Some(Some(w)) = self.slots.get_mut(slot) else { continue };
            w.finish(weight, lazy, &result, &entry, waiters, applied);
        }
    }

    /// Publishes the lazy batches some sync has made durable, in the order each shard wrote them.
    fn publish_durable(&mut self) {
        for w in self.slots.iter_mut().flatten() {
            w.publish_durable();
        }
    }

    /// Makes every lazy batch durable now (a WAL sync unless one already covered them), and
    /// publishes them. If the sync fails, their callers get the error (they write them again).
    fn sync_unsynced(&mut self) {
        self.drop_crashed();
        let newest = self.slots.iter().flatten().filter_map(|w| w.unsynced.back().map(|u| u.ticket)).max();
        let Some(newest) = newest else { return };
        let Some(store) = self.slots.iter().flatten().next().map(|w| w.store.clone()) else { return };
        if !store.is_durable(newest) {
            for w in self.slots.iter().flatten().filter(|w| !w.unsynced.is_empty()) {
                w.counters.settle_syncs.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = store.sync_wal() {
                tracing::error!(error = %e, "WAL sync failed; failing the batches it was to make durable");
                for w in self.slots.iter_mut().flatten() {
                    let shard = w.state.shard;
                    for done in w.unsynced.drain(..) {
                        for (waiter, _) in done.publication.replies {
                            waiter.fail(ShardError::Rocks { shard: shard.0, source: e.clone() });
                        }
                    }
                }
                return;
            }
        }
        self.publish_durable();
    }
}

impl ShardWriter {
    /// After the group commit's write: the shard's state and replies, as the write went.
    fn finish(
        &mut self,
        weight: usize,
        lazy: bool,
        result: &Result<Option<u64>, rocksdb::Error>,
        entry: &ShardEntry,
        waiters: Vec<Waiter>,
        applied: ShardApplied,
    ) {
        let shard = self.state.shard;
        if lazy {
            self.counters.unsynced_writes.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.synced_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.pending.fetch_sub(weight, Ordering::AcqRel);
        let outbox_before = self.state.next_outbox_seq;
        match result {
            Ok(ticket) => {
                self.state.commit(entry, &applied);
                self.counters.appended.fetch_add(applied.appended, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters.settled.fetch_add(applied.settled, Ordering::Relaxed);
                let publication = Publication {
                    next_outbox_seq: (self.state.next_outbox_seq != outbox_before)
                        .then_some(self.state.next_outbox_seq),
                    low_watermark: applied.low_watermark,
                    released: applied.released,
                    replies: waiters.into_iter().zip(applied.ops).collect(),
                };
                match ticket {
                    Some(ticket) => {
                        self.unsynced.push_back(Unsynced { ticket: *ticket, written_at: Instant::now(), publication })
                    }
                    None => {
                        if applied.appended > 0 {
                            self.committed.next_seq.store(self.state.next_seq, Ordering::Release);
                            self.committed.appended.notify_one();
                        }
                        self.publish(publication);
                    }
                }
            }
            Err(e) => {
                tracing::error!(%shard, error = %e, lazy, "batch write failed; failing its batch");
                // Sequence numbers of a failed batch are not reused (the planner handed them out),
                // nor are its status-event numbers: a later success persists higher ones, so ids
                // and event seqs stay unique whether or not the failed write reached disk.
                self.state.next_outbox_seq = applied.next_outbox_seq;
                for (waiter, outcome) in waiters.into_iter().zip(applied.ops) {
                    match outcome {
                        OpOutcome::Failed(err) => waiter.fail(err),
                        _ => waiter.fail(ShardError::Rocks { shard: shard.0, source: e.clone() }),
                    }
                }
            }
        }
    }

    /// Tells readers and callers what a durable commit changed.
    fn publish(&self, publication: Publication) {
        let shard = self.state.shard;
        if let Some(next) = publication.next_outbox_seq {
            self.committed.next_outbox_seq.send_replace(next);
        }
        if let Some(mark) = publication.low_watermark {
            self.queue_low_watermark.store(mark, Ordering::Release);
        }
        if !publication.released.is_empty() {
            self.committed.released.lock().unwrap_or_else(|e| e.into_inner()).extend(&publication.released);
            self.committed.appended.notify_one();
        }
        for (waiter, outcome) in publication.replies {
            waiter.answer(shard, outcome);
        }
    }

    /// Publishes this shard's lazy batches some sync has made durable, in the order written.
    fn publish_durable(&mut self) {
        while let Some(oldest) = self.unsynced.front()
            && self.store.is_durable(oldest.ticket)
        {
            if let Some(done) = self.unsynced.pop_front() {
                self.publish(done.publication);
            }
        }
    }
}
