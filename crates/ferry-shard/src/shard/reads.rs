//! Reads of a shard's store, from any thread (point reads and scans; nothing here writes).

use std::sync::atomic::Ordering;

use super::Shard;
use crate::ShardError;
use crate::storage::{
    CallbackRecord, ContactRecord, DispatchRecord, HeldRecord, IdempotencyIntent, IdempotencyRecord,
    META_WEBHOOK_CURSOR, QueueRecord, StatusRecord,
};

impl Shard {
    /// Up to `max` seqs of held messages released into the queue since the last call (durable;
    /// usually below the delivery loop's cursor, so the loop point-reads them). Meant for one
    /// taker: the shard's delivery loop. [`Shard::appended`] resolves after each release.
    pub fn take_released(&self, max: usize) -> Vec<u64> {
        let mut released = self.committed.released.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(released.len());
        released.drain(..n).collect()
    }

    /// A held message (a paced template's, not yet released or dropped).
    pub fn get_held(&self, seq: u64) -> Result<Option<HeldRecord>, ShardError> {
        self.store.get_held(seq)
    }

    /// Up to `limit` held messages from sequence `from`, in seq (= acceptance) order.
    pub fn scan_held(&self, from: u64, limit: usize) -> Result<Vec<(u64, HeldRecord)>, ShardError> {
        self.store.scan_held(from, limit)
    }

    /// The queued messages with a dispatch mark: after a crash, those that may have been posted
    /// to the upstream. Reads the (small) `dispatched` column family.
    pub fn dispatch_marks(&self) -> Result<Vec<(u64, DispatchRecord)>, ShardError> {
        self.store.dispatch_marks()
    }

    /// The seq of the message the upstream knows as `upstream_id` (recorded with its `sent`
    /// status; see "Upstream ids" in the storage docs). A point read.
    pub fn seq_for_upstream_id(&self, upstream_id: &str) -> Result<Option<u64>, ShardError> {
        self.store.seq_for_upstream_id(upstream_id)
    }

    /// The status-event sequence number below which every event is durable.
    pub fn committed_next_outbox_seq(&self) -> u64 {
        *self.committed.next_outbox_seq.borrow()
    }

    /// Follows [`Shard::committed_next_outbox_seq`]: changes after every durable write that added
    /// status events. Any number of webhook senders and status streams may subscribe.
    pub fn subscribe_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.next_outbox_seq.subscribe()
    }

    /// Status events with sequence in `[from, until)`, at most `limit`, in order.
    pub fn scan_outbox(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, CallbackRecord)>, ShardError> {
        self.store.scan_outbox(from, until, limit)
    }

    /// The first status event the webhook receiver has not accepted yet (`u64::MAX` when the shard
    /// was opened without a webhook).
    pub fn webhook_cursor(&self) -> u64 {
        let cursor = self.webhook_cursor.load(Ordering::Acquire);
        if self.raft.is_none() || cursor == u64::MAX {
            return cursor;
        }
        // A replicated shard: the leader that persisted the cursor may have been another node.
        match self.store.get_meta_u64(META_WEBHOOK_CURSOR) {
            Ok(Some(persisted)) => self.webhook_cursor.fetch_max(persisted, Ordering::AcqRel).max(persisted),
            Ok(None) => cursor,
            Err(e) => {
                tracing::warn!(shard = %self.id, error = %e, "webhook cursor not read; resending from the last known");
                cursor
            }
        }
    }

    /// When `user` last wrote to `business` (the customer-service window), if ever.
    pub fn get_contact(&self, business: &str, user: &str) -> Result<Option<ContactRecord>, ShardError> {
        self.store.get_contact(business, user)
    }

    pub fn get_status(&self, seq: u64) -> Result<Option<StatusRecord>, ShardError> {
        self.store.get_status(seq)
    }

    pub fn get_session(&self, sender: &str, recipient: &str) -> Result<Option<Vec<u8>>, ShardError> {
        self.store.get_session(sender, recipient)
    }

    /// Queued messages with sequence in `[from, until)`, at most `limit`, in order.
    pub fn scan_queue_range(&self, from: u64, until: u64, limit: usize) -> Result<Vec<(u64, QueueRecord)>, ShardError> {
        self.store.scan_queue_range(from, until, limit)
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
}
