//! The handle to one shard: its store (for reads from any thread) and the mailbox of its writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use ferry_model::ShardId;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::ShardError;
use crate::resources::SharedResources;
use crate::storage::{
    FORMAT_VERSION, IdempotencyIntent, IdempotencyRecord, META_FORMAT_VERSION, META_NEXT_SEQ, META_NODE_ID,
    META_SHARD, QueueRecord, Store,
};
use crate::writer::{AppendOutcome, NewMessage, WriteOp, Writer, WriterCounters};

/// Per-shard knobs (config keys under `[shard]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// Messages that may wait for the writer before sends are refused with 1015.
    pub queue_capacity: usize,
    /// Most messages committed in one synced write.
    pub max_batch_messages: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig { queue_capacity: 16_384, max_batch_messages: 4_096 }
    }
}

impl ShardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 || self.max_batch_messages == 0 {
            return Err("shard.queue_capacity and shard.max_batch_messages must be at least 1".into());
        }
        Ok(())
    }
}

/// Point-in-time counters of a shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub appended: u64,
    pub batches: u64,
    pub synced_writes: u64,
    pub pending: usize,
    pub estimated_queue_len: u64,
}

/// Releases a held writer when dropped.
#[doc(hidden)]
pub struct WriterHold {
    _tx: crossbeam_channel::Sender<()>,
}

pub struct Shard {
    id: ShardId,
    store: Arc<Store>,
    tx: Option<Sender<WriteOp>>,
    pending: Arc<AtomicUsize>,
    capacity: usize,
    counters: Arc<WriterCounters>,
    writer: Option<JoinHandle<()>>,
}

impl Shard {
    /// Opens the shard's database in `dir` and starts its writer thread.
    pub fn open(
        dir: &Path,
        id: ShardId,
        shard_count: u16,
        node_id: u64,
        resources: &SharedResources,
        config: &ShardConfig,
    ) -> Result<Shard, ShardError> {
        let store = Arc::new(Store::open(dir, id.0, resources)?);
        let next_seq = init_meta(&store, id, shard_count, node_id)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let pending = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(WriterCounters::default());
        let writer = Writer {
            store: store.clone(),
            shard: id,
            node_id,
            next_seq,
            max_batch_messages: config.max_batch_messages,
            pending: pending.clone(),
            counters: counters.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-{:02}-writer", id.0))
            .spawn(move || writer.run(rx))
            .map_err(|e| ShardError::Layout(format!("cannot start writer thread: {e}")))?;
        tracing::info!(shard = %id, next_seq, dir = %dir.display(), "shard open");
        Ok(Shard {
            id,
            store,
            tx: Some(tx),
            pending,
            capacity: config.queue_capacity,
            counters,
            writer: Some(handle),
        })
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Submits an op, or refuses at once with [`ShardError::Overloaded`] when the mailbox holds
    /// `queue_capacity` messages already.
    fn submit(&self, op: WriteOp) -> Result<(), ShardError> {
        let weight = op.weight();
        let mut current = self.pending.load(Ordering::Acquire);
        loop {
            // An op bigger than the whole capacity is still admitted into an empty mailbox.
            if current > 0 && current + weight > self.capacity {
                return Err(ShardError::Overloaded { shard: self.id.0, pending: current, capacity: self.capacity });
            }
            match self.pending.compare_exchange_weak(current, current + weight, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let tx = self.tx.as_ref().ok_or(ShardError::Stopped(self.id.0))?;
        tx.send(op).map_err(|_| {
            self.pending.fetch_sub(weight, Ordering::AcqRel);
            ShardError::Stopped(self.id.0)
        })
    }

    /// Appends `messages` to the queue and resolves once they are durable (WAL synced), with one
    /// outcome per message in order. The submission is synchronous (it fails fast when the shard
    /// is overloaded); the returned future only awaits the writer.
    ///
    /// Cancel safety: dropping the future does not cancel the write; the messages may still be
    /// committed.
    pub fn append_durably(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<impl Future<Output = Result<Vec<AppendOutcome>, ShardError>> + use<>, ShardError> {
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::Append { messages, reply })?;
        let shard = self.id.0;
        Ok(async move { rx.await.unwrap_or(Err(ShardError::Stopped(shard))) })
    }

    /// Writes idempotency records durably (used for keys whose key shard is this one).
    pub fn put_idempotency_durably(
        &self,
        entries: Vec<(Vec<u8>, IdempotencyRecord)>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::PutIdempotency { entries, reply })?;
        let shard = self.id.0;
        Ok(async move { rx.await.unwrap_or(Err(ShardError::Stopped(shard))) })
    }

    /// Removes messages from the queue durably (synced). Removing an absent sequence is a no-op.
    pub fn remove_durably(
        &self,
        seqs: Vec<u64>,
    ) -> Result<impl Future<Output = Result<(), ShardError>> + use<>, ShardError> {
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::Remove { seqs, reply })?;
        let shard = self.id.0;
        Ok(async move { rx.await.unwrap_or(Err(ShardError::Stopped(shard))) })
    }

    /// Deletes idempotency intents whose records reached their key shard. Rides on the next batch;
    /// a crash before that only means the intents are replayed (idempotently) at start-up.
    pub fn clear_intents(&self, seqs: Vec<u64>) {
        if let Err(e) = self.submit(WriteOp::ClearIntents { seqs }) {
            tracing::debug!(shard = %self.id, error = %e, "intents not cleared now; replayed at start-up");
        }
    }

    /// Test support: blocks this shard's writer and fills its mailbox until the returned guard
    /// is dropped, so tests can observe backpressure deterministically.
    #[doc(hidden)]
    pub fn hold_writer_for_test(&self) -> WriterHold {
        let (tx, release) = crossbeam_channel::bounded(0);
        self.pending.fetch_add(self.capacity, Ordering::AcqRel);
        if let Some(mailbox) = &self.tx
            && mailbox.send(WriteOp::Hold { release, weight: self.capacity }).is_ok()
        {
            return WriterHold { _tx: tx };
        }
        self.pending.fetch_sub(self.capacity, Ordering::AcqRel);
        WriterHold { _tx: tx }
    }

    pub fn get_queued(&self, seq: u64) -> Result<Option<QueueRecord>, ShardError> {
        self.store.get_queued(seq)
    }

    pub fn get_idempotency(&self, key: &[u8], now_ms: i64) -> Result<Option<IdempotencyRecord>, ShardError> {
        self.store.get_idempotency(key, now_ms)
    }

    pub fn idempotency_intents(&self) -> Result<Vec<(u64, IdempotencyIntent)>, ShardError> {
        self.store.idempotency_intents()
    }

    pub fn scan_queue(&self, from: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        self.store.scan_queue(from, limit)
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            appended: self.counters.appended.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            synced_writes: self.counters.synced_writes.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            estimated_queue_len: self.store.estimated_queue_len(),
        }
    }

    /// Stops accepting ops, lets the writer commit everything already submitted, and joins it.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks (or, for a new database, writes) the shard's identity and returns its next sequence
/// number.
fn init_meta(store: &Store, id: ShardId, shard_count: u16, node_id: u64) -> Result<u64, ShardError> {
    let corrupt = |what: String| ShardError::Corrupt { shard: id.0, what };
    let mut shard_value = id.0.to_be_bytes().to_vec();
    shard_value.extend_from_slice(&shard_count.to_be_bytes());
    match store.get_meta(META_FORMAT_VERSION)? {
        None => {
            let mut batch = rocksdb::WriteBatch::default();
            let meta = store.cf(crate::storage::CF_META);
            batch.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, META_SHARD, &shard_value);
            batch.put_cf(meta, META_NODE_ID, node_id.to_be_bytes());
            batch.put_cf(meta, META_NEXT_SEQ, 1u64.to_be_bytes());
            let mut sync = rocksdb::WriteOptions::default();
            sync.set_sync(true);
            store.db.write_opt(batch, &sync).map_err(|source| ShardError::Rocks { shard: id.0, source })?;
            Ok(1)
        }
        Some(v) => {
            if v.as_slice() != FORMAT_VERSION.to_be_bytes() {
                return Err(corrupt(format!("storage format {v:?}, this ferry reads {FORMAT_VERSION}")));
            }
            if store.get_meta(META_SHARD)?.as_deref() != Some(shard_value.as_slice()) {
                return Err(corrupt(format!("database is not shard {id} of {shard_count}")));
            }
            if store.get_meta_u64(META_NODE_ID)? != Some(node_id) {
                return Err(corrupt("database belongs to another node (node_id differs)".into()));
            }
            store.get_meta_u64(META_NEXT_SEQ)?.ok_or_else(|| corrupt("missing next_seq".into()))
        }
    }
}
