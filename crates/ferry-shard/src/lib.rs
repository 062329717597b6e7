//! One ferry shard: its column families in RocksDB (in a database shared by a single node's
//! shards, or one of its own: [`layout`]), and the writer thread of its database, which
//! group-commits every pending append (of every shard of that database) as a single synced
//! `WriteBatch`.
//!
//! Where it sits: `ferry-ingest` (gRPC) → `ferry-coordinator` (validate, route, idempotency) →
//! **`ferry-shard`** (durable append) → later the delivery loop reads the shard's queue.
//!
//! Invariants (written as absences):
//! - Only this crate opens RocksDB. Other crates see [`Shard`], [`QueueRecord`] and friends.
//! - No append is reported as done before the batch holding it was written with a synced WAL
//!   ([`writer`]). A failed write fails every request of its batch; none is reported durable.
//! - Nothing but the one writer thread of a database writes to it (a replicated shard: its
//!   proposer and Raft's apply), so sequence numbers are assigned in commit order without locks.
//! - The in-memory mailbox is bounded (in messages): a full shard answers
//!   [`ShardError::Overloaded`] at once instead of queueing without bound.
//!
//! - The queue and the status of a message change only together: an acked or failed message
//!   leaves the queue in the same synced batch that writes its status ([`settle`]).
//! - A held (paced template) message is never in the queue, and leaves `held` only in the synced
//!   batch that puts it in the queue under the same seq, or writes its `failed` status and event.
//! - No persisted queue low watermark passes a released held message that is still queued (the
//!   `released` column family, so also not after a restart).
//! - Applying a group commit ([`apply`]) reads nothing but the entry and the shard's database:
//!   no wall clock, no randomness, no writer memory.
//!
//! Modules: [`apply`] (a group commit's entry applied to the state machine, deterministically),
//! [`cf_options`] (column-family options and retention filters), [`auth_store`] (the node's users and hashed tokens, in `<data_dir>/auth/`, a RocksDB
//! apart from the shards), [`storage`] (on-disk format: column families, key and value encoding),
//! [`settle`] (recording acks, failures and receipts; statuses never go backwards),
//! [`resources`] (block cache, write-buffer manager and thread pools shared by all shards of a
//! node), [`writer`] (the group-commit thread), [`layout`] (the data dir: node file, its two
//! formats), [`node_db`] (a single node's shards in one database, one WAL),
//! [`shard`] (the handle the coordinator uses), and [`raft`] (replicated shards, issue #12: openraft
//! types, log store and state machine over the shard's database; not wired into the node yet).

pub mod apply;
pub mod auth_store;
pub mod cf_options;
pub mod layout;
pub mod node_db;
mod ops;
pub mod raft;
pub mod resources;
pub mod settle;
pub mod shard;
pub mod storage;
mod store;
#[doc(hidden)]
pub mod test_support;
mod wal_clock;
pub mod writer;

pub use apply::{EntryOp, OpOutcome, ShardApplied, ShardEntry, ShardState};
pub use layout::{NodeLayout, NodeMeta, StorageLayout};
pub use node_db::{NodeDb, open_node_shards};
pub use resources::{SharedResources, StorageTuning};
pub use settle::{FailureReason, InboundRecord, Settlement};
pub use shard::{RaftStatus, Replication, Shard, ShardConfig, ShardStats};
pub use storage::{
    CALLBACK_INBOUND, CALLBACK_STATUS, CallbackRecord, ContactRecord, HeldRecord, IdempotencyIntent, IdempotencyRecord,
    QueueRecord, StatusEvent, StatusRecord,
};
pub use writer::{AppendAnswer, AppendOutcome, HeldAction, IdempotencyPlacement, NewMessage, ResolvedHeld};

/// Errors of the shard layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    /// The shard's mailbox is full; the caller should back off (1015 / RESOURCE_EXHAUSTED).
    #[error("shard {shard} is overloaded: {pending} messages pending, capacity {capacity}")]
    Overloaded { shard: u16, pending: usize, capacity: usize },
    /// The shard is shutting down or its writer stopped.
    #[error("shard {0} is not accepting writes (stopped)")]
    Stopped(u16),
    #[error("rocksdb error in shard {shard}: {source}")]
    Rocks { shard: u16, source: rocksdb::Error },
    #[error("corrupt record in shard {shard}: {what}")]
    Corrupt { shard: u16, what: String },
    #[error("data dir error: {0}")]
    Layout(String),
    /// A replicated shard has no leader this node can reach (an election, a partition): nothing
    /// was written; retry.
    #[error("shard {shard} is unavailable: {detail}")]
    Unavailable { shard: u16, detail: String },
    /// A replicated shard's write was proposed (or forwarded) and its outcome is unknown (the
    /// leader changed or the call failed after it was sent): it may or may not be committed. A
    /// retry with the same idempotency key is safe.
    #[error("shard {shard}: the outcome of the write is unknown ({detail}); retry with the same idempotency key")]
    Indeterminate { shard: u16, detail: String },
    /// The shard's leader (another node) failed the op with this error.
    #[error("shard {shard}, on its leader: {detail}")]
    Remote { shard: u16, detail: String },
}
