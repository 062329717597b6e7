//! Replicated shards (issue #12, `docs/replication-design.md`): every shard a Raft group
//! (openraft 0.9), whose log entries are the writer's group commits ([`crate::apply::ShardEntry`]).
//!
//! Slice 1 (this module): the type configuration and encodings ([`types`]), the log storage over
//! the shard's RocksDB ([`log_store`]) and the state machine applying entries with
//! [`crate::apply`] ([`state_machine`]). Nothing here is wired into the node yet: single-node mode
//! (the default) does not open a Raft log and writes exactly as before.

// openraft's `StorageError` (224 bytes) is the storage traits' error type, so every helper
// returns it as is.
pub mod forward;
pub(crate) mod leadership;
#[allow(clippy::result_large_err)]
pub mod log_store;
#[allow(clippy::result_large_err)]
pub(crate) mod proposer;
pub mod stages;
#[allow(clippy::result_large_err)]
pub mod state_machine;
pub(crate) mod tail_cache;
pub mod types;

pub use forward::{ForwardError, ForwardFuture, Forwarder};
pub use log_store::{LogReader, LogStore, decode_log_entry, encode_log_entry};
/// The Raft library, for crates that wire groups (its types appear in this module's API).
pub use openraft;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use types::{
    CheckpointSnapshot, DecodeError, OpReply, PeerNode, ShardRaft, ShardResponse, decode_entry, decode_response,
    encode_entry, encode_response,
};
