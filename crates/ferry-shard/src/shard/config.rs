//! A shard's knobs (`[shard]`) and its point-in-time counters.

use serde::{Deserialize, Serialize};

/// Per-shard knobs (config keys under `[shard]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// Messages that may wait for the writer before sends are refused with 1015.
    pub queue_capacity: usize,
    /// Most messages committed in one synced write (in a shared database, of all its shards).
    pub max_batch_messages: usize,
    /// How long a batch of delivery bookkeeping (settles, the webhook cursor) written without a
    /// sync may wait for another write's WAL sync to make it durable before the writer syncs the
    /// WAL itself, in milliseconds. Its callers are answered only once it is durable. `0` syncs
    /// every batch at once (settles then hold the next appends behind fsyncs of their own).
    pub settle_sync_delay_ms: u64,
    /// How long the status of a message that left the queue is kept (for `GetMessage`), in
    /// seconds. Records older than this are dropped at compaction.
    pub status_retention_secs: u64,
    /// How long status events (the outbox read by `WatchStatuses` and the webhook sender) are
    /// kept, in seconds. An event the webhook has not accepted yet is kept however old it is.
    pub status_events_retention_secs: u64,
    /// Whether a webhook is configured: the shard then keeps a webhook cursor and no status event
    /// at or past it is dropped. Set by the node when a webhook URL is configured; not a config key
    /// of its own.
    #[serde(skip)]
    pub callbacks: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            queue_capacity: 16_384,
            max_batch_messages: 4_096,
            settle_sync_delay_ms: 2,
            status_retention_secs: 30 * 24 * 3600,
            status_events_retention_secs: 3600,
            callbacks: false,
        }
    }
}

impl ShardConfig {
    /// `status_retention_secs` and `status_events_retention_secs` in milliseconds.
    pub(crate) fn retention_ms(&self) -> (i64, i64) {
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        (ms(self.status_retention_secs), ms(self.status_events_retention_secs))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.queue_capacity == 0 || self.max_batch_messages == 0 {
            return Err("shard.queue_capacity and shard.max_batch_messages must be at least 1".into());
        }
        if self.settle_sync_delay_ms > 1_000 {
            return Err(format!(
                "shard.settle_sync_delay_ms must be at most 1000 (a settle waits that long to be durable), got {}",
                self.settle_sync_delay_ms
            ));
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
    /// Batches of delivery bookkeeping written unsynced (made durable by a later sync).
    pub unsynced_writes: u64,
    /// WAL syncs a writer made itself for such batches (no other write covered them in time).
    pub settle_syncs: u64,
    pub pending: usize,
    pub estimated_queue_len: u64,
    /// Approximate number of held messages (paced templates), from RocksDB's estimate.
    pub estimated_held_len: u64,
    /// Messages that left the queue (acked or failed).
    pub settled: u64,
}
