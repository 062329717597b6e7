//! The handle to one shard: its store (for reads from any thread) and the mailbox of its writer.
//!
//! This file opens a single node's shard and starts its writer; the rest of the handle is split by
//! job: `writes.rs` (the write ops, answered once durable), `reads.rs` (point reads and scans),
//! `replicated.rs` (a replica of a Raft group: opening, status, leader gate, forwarded ops),
//! `test_hooks.rs` (failpoints, holds, in-process crash), `open.rs` (reading a store's state at
//! open), `mailbox.rs` (the way to the writer, and waiting for it at close) and `config.rs`
//! (`[shard]` knobs, counters).

mod config;
mod mailbox;
mod open;
mod reads;
mod replicated;
mod test_hooks;
mod writes;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_model::ShardId;
use openraft::Raft;

pub use self::config::{ShardConfig, ShardStats};
use self::mailbox::{Mailbox, SharedThread, WriterThread};
use self::open::{Opened, Running, StoreAt};
pub use self::replicated::{RaftStatus, Replication};
pub use self::test_hooks::WriterHold;
use crate::ShardError;
use crate::node_db::NodeDb;
use crate::raft::ShardRaft;
use crate::resources::SharedResources;
use crate::storage::Store;
use crate::writer::{Committed, Planner, ShardWriter, WriteOp, Writer, WriterCounters};

/// One shard. Shared (`Arc`) by the coordinator, which appends, and the delivery loop, which
/// reads the queue and settles; [`Shard::close`] stops its writer.
pub struct Shard {
    id: ShardId,
    node_id: u64,
    /// `meta/id_space`: bytes 2..10 of this shard's message ids.
    id_space: u64,
    store: Arc<Store>,
    tx: Mailbox,
    closed: AtomicBool,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    counters: Arc<WriterCounters>,
    committed: Arc<Committed>,
    identity_key: [u8; 32],
    queue_low_watermark: Arc<AtomicU64>,
    /// The webhook cursor (`u64::MAX` without a webhook); also the outbox compaction filter's floor.
    webhook_cursor: Arc<AtomicU64>,
    writer: Mutex<Option<WriterThread>>,
    /// Test support: set by [`Shard::crash_for_test`].
    crashed: Arc<AtomicBool>,
    /// The shard's Raft group, when replicated.
    raft: Option<Raft<ShardRaft>>,
    /// See [`Shard::leading`].
    leading: tokio::sync::watch::Receiver<bool>,
    /// A single node's `leading` sender (always true), kept so the channel stays open.
    always_leads: Option<tokio::sync::watch::Sender<bool>>,
}

impl Shard {
    /// Opens the shard's database in `dir` (a database of its own) and starts its writer thread.
    pub fn open(
        dir: &Path,
        id: ShardId,
        shard_count: u16,
        node_id: u64,
        resources: &SharedResources,
        config: &ShardConfig,
    ) -> Result<Shard, ShardError> {
        let opened = Opened::open(StoreAt::Dir(dir, resources), id, shard_count, node_id, config, None)?;
        tracing::info!(shard = %id, next_seq = opened.state.next_seq, dir = %dir.display(), "shard open");
        let mut shards = Shard::start_writer(vec![(id, opened)], node_id, config, format!("shard-{:02}-writer", id.0))?;
        Ok(shards.remove(0))
    }

    /// Opens every shard's column families in the node's shared database `db` (see
    /// [`crate::node_db`]) and starts the one writer thread of them all.
    pub fn open_all_in(
        db: &NodeDb,
        shard_count: u16,
        node_id: u64,
        config: &ShardConfig,
    ) -> Result<Vec<Shard>, ShardError> {
        let mut opened = Vec::with_capacity(usize::from(shard_count));
        for id in (0..shard_count).map(ShardId) {
            let shard = Opened::open(StoreAt::Shared(db), id, shard_count, node_id, config, None)?;
            tracing::info!(shard = %id, next_seq = shard.state.next_seq, "shard open (shared database)");
            opened.push((id, shard));
        }
        Shard::start_writer(opened, node_id, config, "node-writer".into())
    }

    /// A single node's shards of one database: one writer thread for all of them (`writer.rs`),
    /// and the node always leads them.
    fn start_writer(
        opened: Vec<(ShardId, Opened)>,
        node_id: u64,
        config: &ShardConfig,
        thread_name: String,
    ) -> Result<Vec<Shard>, ShardError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut slots = Vec::with_capacity(opened.len());
        let mut parts = Vec::with_capacity(opened.len());
        for (id, opened) in opened {
            let crashed = Arc::new(AtomicBool::new(false));
            let (done, done_rx) = crossbeam_channel::bounded(0);
            slots.push(Some(ShardWriter {
                store: opened.store.clone(),
                pending: opened.pending.clone(),
                counters: opened.counters.clone(),
                committed: opened.committed.clone(),
                queue_low_watermark: opened.queue_low_watermark.clone(),
                planner: Planner { next_seq: opened.state.next_seq, last_at_ms: opened.state.at_ms },
                state: opened.state.clone(),
                crashed: crashed.clone(),
                unsynced: std::collections::VecDeque::new(),
                _done: done,
            }));
            parts.push((id, opened, crashed, done_rx));
        }
        let writer = Writer {
            slots,
            max_batch_messages: config.max_batch_messages,
            lazy_sync_delay: std::time::Duration::from_millis(config.settle_sync_delay_ms),
        };
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || writer.run(rx))
            .map_err(|e| ShardError::Layout(format!("cannot start writer thread: {e}")))?;
        let thread = SharedThread::new(handle, parts.len());
        let shards = parts
            .into_iter()
            .enumerate()
            .map(|(slot, (id, opened, crashed, done))| {
                // A single node always leads its shards.
                let (leads, leading) = tokio::sync::watch::channel(true);
                let running = Running {
                    tx: Mailbox::Slot(tx.clone(), slot),
                    writer: WriterThread::Shared { done, thread: thread.clone() },
                    crashed,
                    raft: None,
                    leading,
                };
                let mut shard = opened.into_shard(id, node_id, config, running);
                shard.always_leads = Some(leads);
                shard
            })
            .collect();
        Ok(shards)
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// The node id this shard's database was created with (checked at open).
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Bytes 2..10 of every message id this shard issues (`meta/id_space`): decoded ids are this
    /// shard's only if their `space` is this. Equal to the node id for every single-node database;
    /// kept apart so that a replicated shard's ids do not depend on which node leads it.
    pub fn id_space(&self) -> u64 {
        self.id_space
    }

    /// The shard's long-term identity secret (32 bytes) for encryption sessions.
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity_key
    }

    /// Every queue key below this is deleted (as of the last durable batch, or open). Lowered when a
    /// held message below it is released into the queue.
    pub fn queue_low_watermark(&self) -> u64 {
        self.queue_low_watermark.load(Ordering::Acquire)
    }

    /// The sequence number below which every appended message is durable.
    pub fn committed_next_seq(&self) -> u64 {
        self.committed.next_seq.load(Ordering::Acquire)
    }

    /// Resolves after the next durable append (or at once if one happened since the last call):
    /// the delivery loop's wake-up. Meant for one waiter (the shard's delivery loop).
    ///
    /// Cancel safety: cancel-safe (a wake-up is never lost: `Notify` keeps one permit).
    pub async fn appended(&self) {
        self.committed.appended.notified().await
    }

    /// Compacts the whole queue column family now (drops the tombstones of delivered messages).
    pub fn compact_queue(&self) {
        self.store.compact_queue();
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            appended: self.counters.appended.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            synced_writes: self.counters.synced_writes.load(Ordering::Relaxed),
            unsynced_writes: self.counters.unsynced_writes.load(Ordering::Relaxed),
            settle_syncs: self.counters.settle_syncs.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            estimated_queue_len: self.store.estimated_queue_len(),
            estimated_held_len: self.store.estimated_held_len(),
            settled: self.counters.settled.load(Ordering::Relaxed),
        }
    }

    /// Whether [`Shard::close`] was called (the shard takes no more writes).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the thread that writes for this shard (a single node's writer, a replica's
    /// proposer) has died while the shard is open: a panic. Every write then fails at once with
    /// [`ShardError::Stopped`] (nothing hangs) and `/readyz` says so; only a restart of the node
    /// brings it back (its writes are durable up to the last answered one).
    pub fn writer_stopped(&self) -> bool {
        !self.is_closed()
            && self.writer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(WriterThread::is_done)
    }

    /// RocksDB's size figures (SST bytes, pending compaction bytes), for metrics.
    pub fn disk_usage(&self) -> crate::storage::DiskUsage {
        self.store.disk_usage()
    }

    /// Stops accepting ops, lets the writer commit everything already submitted, and joins it.
    /// Later calls return at once; ops submitted afterwards fail with [`ShardError::Stopped`].
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(WriteOp::Stop);
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            writer.wait();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.close();
    }
}
