//! Idempotency keys: stage "deduplicate" of a send.
//!
//! A key's record lives on its *key shard* (`routing::shard_for_idempotency_key`). When that is
//! the message's own shard, the record is written in the message's batch. Otherwise the message's
//! batch carries an *intent* (the record to write), and the record follows on the key shard:
//!
//! 1. the message and its intent are durable (one synced batch on the message's shard);
//! 2. the record is put in [`Keys::pending`] before the key's lock is released, so a retry that
//!    takes the lock next finds it even though the key shard does not have it yet;
//! 3. the record is written to the key shard (never refused for capacity: such a write is weight
//!    0 in the writer's mailbox); once durable, it leaves `pending` and the intent is cleared. A
//!    failed write is retried with backoff by a task of its own until it lands or the node closes
//!    (then the intent on disk is replayed at the next open, [`Keys::replay_intents`]).
//!
//! All of this runs in the send's own task (`send.rs`), never in the caller's future, so a caller
//! whose deadline fires or whose connection drops cannot leave a key half written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ahash::AHashMap;
use ferry_model::{ApiError, ErrorCode};
use ferry_shard::{IdempotencyRecord, Shard, ShardError};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::routing;
use crate::send::Core;

/// Stripes of the in-process lock that serializes sends sharing an idempotency key.
const KEY_LOCK_STRIPES: usize = 1024;
/// First and longest pause between two tries of a failed key-shard write.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A validated send's key, as stored: `storage_key` on `key_shard`, `payload_hash` to tell a retry
/// of the same message from a reuse of the key for another one.
pub(crate) struct KeyInfo {
    pub(crate) raw: String,
    pub(crate) storage_key: Vec<u8>,
    pub(crate) key_shard: ferry_model::ShardId,
    pub(crate) payload_hash: Vec<u8>,
}

/// Records for the key shards, grouped by key shard, and the intents each clears on its message's
/// shard.
pub(crate) struct KeyShardWrites {
    pub(crate) records: Vec<Vec<(Vec<u8>, IdempotencyRecord)>>,
    pub(crate) intents: Vec<Vec<u64>>,
}

impl KeyShardWrites {
    pub(crate) fn new(shards: usize) -> KeyShardWrites {
        KeyShardWrites { records: vec![Vec::new(); shards], intents: vec![Vec::new(); shards] }
    }

    fn is_empty(&self) -> bool {
        self.records.iter().all(Vec::is_empty)
    }
}

/// The node's idempotency state in memory: the key locks and the records not yet durable on their
/// key shard.
pub(crate) struct Keys {
    locks: Vec<Arc<Mutex<()>>>,
    /// Storage key → record, for messages that are durable (with an intent) whose record is not
    /// yet durable on its key shard. Consulted before the key shard by every lookup.
    pending: parking_lot::Mutex<AHashMap<Vec<u8>, IdempotencyRecord>>,
    /// Failpoint for tests: skip the key-shard write (and `pending`), as a crash there would.
    skip_key_shard_write: AtomicBool,
    /// Test hook: see [`crate::Coordinator::failpoint_hold_key_shard_writes`].
    hold_key_shard_write: AtomicBool,
}

impl Keys {
    pub(crate) fn new() -> Keys {
        Keys {
            locks: (0..KEY_LOCK_STRIPES).map(|_| Arc::new(Mutex::new(()))).collect(),
            pending: parking_lot::Mutex::new(AHashMap::new()),
            skip_key_shard_write: AtomicBool::new(false),
            hold_key_shard_write: AtomicBool::new(false),
        }
    }

    /// Locks every stripe the keys hash to, in ascending order (no deadlock between two sends).
    ///
    /// Cancel safety: cancel-safe (a guard taken is released when the future is dropped).
    pub(crate) async fn lock<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<OwnedMutexGuard<()>> {
        let stripes: std::collections::BTreeSet<usize> =
            keys.map(|k| (routing::routing_hash(k) % KEY_LOCK_STRIPES as u64) as usize).collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.locks[s].clone().lock_owned().await);
        }
        guards
    }

    /// The record a key answers now: pending first, then the key shard's. Call with the key's
    /// stripe locked.
    pub(crate) fn lookup(
        &self,
        key_shard: &Shard,
        key: &[u8],
        now_ms: i64,
    ) -> Result<Option<IdempotencyRecord>, ShardError> {
        if let Some(r) = self.pending.lock().get(key) {
            return Ok(Some(r.clone()));
        }
        key_shard.get_idempotency(key, now_ms)
    }

    pub(crate) fn set_skip_key_shard_write(&self, skip: bool) {
        self.skip_key_shard_write.store(skip, Ordering::Relaxed);
    }

    pub(crate) fn set_hold_key_shard_write(&self, hold: bool) {
        self.hold_key_shard_write.store(hold, Ordering::Relaxed);
    }

    /// Writes the records of `writes` to their key shards; call with their stripes locked and the
    /// messages durable. Returns once each record is findable: durable on its key shard, or (if
    /// that write failed) in `pending`, with a task retrying the write.
    ///
    /// Cancel safety: not cancel-safe; run it in a task nobody cancels (the send's own task).
    pub(crate) async fn write_records(core: &Arc<Core>, writes: KeyShardWrites) {
        let keys = &core.keys;
        if writes.is_empty() || keys.skip_key_shard_write.load(Ordering::Relaxed) {
            return;
        }
        if keys.hold_key_shard_write.load(Ordering::Relaxed) {
            // Test hook: the messages and intents are durable, the records nowhere; never answer.
            return std::future::pending().await;
        }
        {
            let mut pending = keys.pending.lock();
            for (key, record) in writes.records.iter().flatten() {
                pending.insert(key.clone(), record.clone());
            }
        }
        if let Err(left) = Keys::try_write(core, writes).await {
            let core = core.clone();
            tokio::spawn(async move { Keys::retry_until_written(&core, left).await });
        }
    }

    /// One try at every key shard; what failed comes back.
    async fn try_write(core: &Core, writes: KeyShardWrites) -> Result<(), KeyShardWrites> {
        let mut left = KeyShardWrites::new(core.shards.len());
        let mut failed = false;
        for (key_shard, entries) in writes.records.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let outcome = match core.shards[key_shard].put_idempotency_durably(entries.clone()) {
                Ok(wait) => wait.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    let mut pending = core.keys.pending.lock();
                    for (key, _) in &entries {
                        pending.remove(key);
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(shard = key_shard, error = %e, "idempotency records not written yet; retrying");
                    left.records[key_shard] = entries;
                }
            }
        }
        // Intents are cleared only when every record of this send is durable (a partial failure
        // keeps them all: replaying a record that is already there is harmless).
        if failed {
            left.intents = writes.intents;
            return Err(left);
        }
        for (shard, seqs) in writes.intents.into_iter().enumerate() {
            if !seqs.is_empty() {
                core.shards[shard].clear_intents(seqs);
            }
        }
        Ok(())
    }

    async fn retry_until_written(core: &Arc<Core>, mut writes: KeyShardWrites) {
        let mut pause = RETRY_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            if core.closed.load(Ordering::Acquire) {
                tracing::warn!("node closing with idempotency records unwritten: their intents are replayed at open");
                return;
            }
            match Keys::try_write(core, writes).await {
                Ok(()) => return,
                Err(left) => writes = left,
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Writes every idempotency record still pending as an intent to its key shard, then clears
    /// the intents. Runs at open, before any send.
    ///
    /// Cancel safety: not cancel-safe (runs to completion inside `Coordinator::open`).
    pub(crate) async fn replay_intents(shards: &[Arc<Shard>]) -> Result<(), ShardError> {
        let mut replayed = 0usize;
        for shard in shards {
            let intents = shard.idempotency_intents()?;
            if intents.is_empty() {
                continue;
            }
            let mut by_key_shard: Vec<Vec<(Vec<u8>, IdempotencyRecord)>> = vec![Vec::new(); shards.len()];
            let mut seqs = Vec::with_capacity(intents.len());
            for (seq, intent) in intents {
                seqs.push(seq);
                let (Some(record), Some(target)) = (intent.record, by_key_shard.get_mut(intent.key_shard as usize))
                else {
                    tracing::warn!(shard = %shard.id(), seq, "dropping malformed idempotency intent");
                    continue;
                };
                target.push((intent.key, record));
            }
            for (key_shard, entries) in by_key_shard.into_iter().enumerate() {
                if !entries.is_empty() {
                    replayed += entries.len();
                    shards[key_shard].put_idempotency_durably(entries)?.await?;
                }
            }
            shard.clear_intents(seqs);
        }
        if replayed > 0 {
            tracing::info!(replayed, "replayed idempotency intents left by an unclean stop");
        }
        Ok(())
    }
}

pub(crate) fn conflict(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyConflict,
        "idempotency_key",
        format!(
            "idempotency key `{key}` was already used by this sender in the last 24 h for a different message: \
             expected the same message, or a new key"
        ),
    )
}
